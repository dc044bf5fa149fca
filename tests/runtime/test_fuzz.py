"""The structural artifact fuzzer in CI: a few hundred tampered artifacts (checksums
recomputed), each loaded and run in a worker process; no crash, hang, raw exception or silent
wrong answer. ``python -m sparsecc.fuzz --cases 10000`` is the long run."""

from __future__ import annotations

import os

import pytest

from sparsecc import fuzz

CASES = int(os.environ.get("SPARSECC_FUZZ_CASES", "300"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def test_campaign_has_no_failures(seeds, tmp_path, seed):
    summary = fuzz.campaign(seeds, CASES, workers=2, seed=seed, timeout=60,
                            work=tmp_path / "work")
    print(summary.table())
    for name, counts in sorted(summary.by_mutation.items()):
        print(name, dict(counts))
    assert summary.failed == 0, summary.failures[:5]
    assert sum(summary.counts.values()) == CASES
    # the campaign did reach both sides: edits refused, and harmless edits accepted
    assert summary.counts["rejected"] > CASES // 4
    assert summary.counts["same"] + summary.counts["changed"] > 0
    # loading never allocates beyond the (tiny) seed models' own size; running is bounded by
    # the campaign's SPARSECC_MAX_MEMORY (2G) plus numba/LLVM compiling kernels in the worker
    assert summary.max_load_growth_mb < 64, summary.max_load_growth_mb


@pytest.mark.parametrize("what, status", [("abort", "crash"), ("hang", "hang")])
def test_harness_sees_crashes_and_hangs(what, status):
    worker = fuzz.Worker(dict(os.environ))
    try:
        assert worker.ask({"selftest": what}, timeout=20)["status"] == status
    finally:
        worker.close()


def test_every_seed_runs_unmutated(seeds, tmp_path):
    worker = fuzz.Worker(dict(os.environ))
    try:
        for path in seeds:
            res = worker.ask({"path": str(path), "batches": [1, 2], "seed": 1,
                              "out": str(tmp_path / "o.npz")}, timeout=300)
            assert res["status"] == "ok", (path, res)
    finally:
        worker.close()
