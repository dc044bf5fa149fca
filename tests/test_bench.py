"""The suite's timing method (the CLI runs of ``sparsecc bench`` are in test_cli.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sparsecc.benchmarks.engines import MIN_CALLS, time_call


def _counter(seconds: float):
    calls = []

    def fn():
        calls.append(1)
        time.sleep(seconds)

    return fn, calls


def test_time_call_fast_engine_gets_two_warmups_and_min_runs():
    fn, calls = _counter(0.0)
    t = time_call(fn, min_runs=7, min_time=60.0)
    assert t.runs == 7 and len(calls) == 2 + 7
    assert t.p10_ms <= t.median_ms <= t.p90_ms


def test_time_call_slow_engine_one_warmup_then_until_min_time():
    fn, calls = _counter(0.3)  # one warm-up call already exceeds the warm-up budget
    t = time_call(fn, min_runs=30, min_time=0.5)  # 2 timed calls pass min_time
    assert t.runs == 2 and len(calls) == 1 + 2
    assert t.median_ms >= 300
    calls.clear()
    t = time_call(fn, min_runs=30, min_time=0.8)  # the third call is needed for 0.8 s
    assert t.runs == 3 and len(calls) == 1 + 3
    calls.clear()
    t = time_call(fn, min_runs=30, min_time=0.25)  # one call alone takes min_time
    assert t.runs == MIN_CALLS == 1 and len(calls) == 1 + 1
    assert t.p10_ms == t.median_ms == t.p90_ms


def test_time_call_counts_the_callers_warm_call():
    fn, calls = _counter(0.0)
    time_call(fn, min_runs=4, min_time=60.0, warmed_s=0.01)  # one more warm-up: 2 in all
    assert len(calls) == 1 + 4
    calls.clear()
    time_call(fn, min_runs=4, min_time=60.0, warmed_s=1.0)  # warm enough already
    assert len(calls) == 4


def _tiny_suite(tmp_path, engines):
    import numpy as np

    from sparsecc import zoo
    from sparsecc.benchmarks.suite import ModelSpec, SuiteConfig, _randn, run_suite

    spec = ModelSpec("tiny", lambda: zoo.mlp((24, 40, 7)), _randn((24,)))
    cfg = SuiteConfig(models=["tiny"], sparsities=[0.0, 0.8], batches=[1, 3], threads=[1, 2],
                      engines=engines, min_runs=3, min_time=0.01, out=tmp_path)
    rows = run_suite(cfg, {"tiny": spec}, log=lambda m: None)
    assert len(rows) == 2 * 2 * 2 * len(engines)
    assert all(np.isfinite(r["max_rel_err"]) and r["max_rel_err"] < 1e-5 for r in rows)
    return rows


def test_suite_correctness_column_uses_torchs_own_output_as_reference(tmp_path):
    rows = _tiny_suite(tmp_path, ["torch", "sparsecc"])
    # torch's first cell of each batch is the reference itself
    first = [r for r in rows if r["engine"] == "torch" and r["threads"] == 1]
    assert first and all(r["max_rel_err"] == 0.0 for r in first)
    assert all("speedup_vs_torch" in r for r in rows)


def test_suite_without_torch_engine_still_checks_correctness(tmp_path):
    rows = _tiny_suite(tmp_path, ["sparsecc"])
    assert all("speedup_vs_torch" not in r for r in rows)


@pytest.mark.parametrize("scale,wrong", [(1.001, True), (1.00001, False), (np.nan, True)])
def test_suite_flags_a_wrong_output(tmp_path, monkeypatch, scale, wrong):
    """A sparsecc cell whose output is off torch's by more than WRONG_REL_ERR (or NaN) is
    marked in its row, logged as it happens, flagged in table.md, and `sparsecc bench`
    exits with status 1; within the limit nothing is said."""
    from sparsecc import bench as B
    from sparsecc import zoo
    from sparsecc.benchmarks import engines as E
    from sparsecc.benchmarks import report
    from sparsecc.benchmarks import suite as S
    from sparsecc.cli import make_parser

    real = E.sparsecc_engine

    def off(cm, inputs, threads):
        fn = real(cm, inputs, threads)
        return lambda: np.asarray(fn()) * np.float32(scale)

    monkeypatch.setattr(E, "sparsecc_engine", off)
    spec = S.ModelSpec("tiny", lambda: zoo.mlp((24, 40, 7)), S._randn((24,)))
    cfg = S.SuiteConfig(models=["tiny"], sparsities=[0.8], batches=[3], threads=[1],
                        engines=["torch", "sparsecc"], min_runs=2, min_time=0.01, out=tmp_path)
    logs: list[str] = []
    rows = S.run_suite(cfg, {"tiny": spec}, log=logs.append)
    ours = [r for r in rows if r["engine"] == "sparsecc"]
    assert len(ours) == 1 and bool(ours[0].get("wrong")) == wrong, ours
    assert not any(r.get("wrong") for r in rows if r["engine"] == "torch")
    said = [m for m in logs if "WRONG OUTPUT" in m]
    assert (len(said) == 1 and "tiny" in said[0] and "batch 3" in said[0]) if wrong else \
        not said, logs
    assert ("**wrong**" in report.markdown(rows)) == wrong
    # the command's exit status (the suite's rows as computed above)
    monkeypatch.setattr(S, "run_suite", lambda cfg, specs: rows)
    args = make_parser().parse_args(["bench", "--models", "mlp", "--sparsities", "0.8",
                                     "--batch", "3", "--threads", "1", "--vs", "torch",
                                     "--out", str(tmp_path / "cli")])
    assert B.bench_command(args) == (1 if wrong else 0)


def test_uniform_profile_keeps_first_conv_and_classifier_dense(seed):
    import torch

    from sparsecc import zoo
    from sparsecc.benchmarks.suite import prune_profile
    from sparsecc.passes.prune import prunable_layers

    model = zoo.resnet18()
    uniform = dict(prunable_layers(prune_profile(model, 0.9, "uniform")))
    assert torch.count_nonzero(uniform["conv1"].weight) == uniform["conv1"].weight.numel()
    assert torch.count_nonzero(uniform["fc"].weight) == uniform["fc"].weight.numel()
    for name, mod in uniform.items():
        if name not in ("conv1", "fc"):
            density = torch.count_nonzero(mod.weight).item() / mod.weight.numel()
            assert abs(density - 0.1) < 2e-3, (name, density)
    # global: one threshold, so layer densities spread (the first conv is pruned too)
    spread = [torch.count_nonzero(m.weight).item() / m.weight.numel()
              for m in dict(prunable_layers(prune_profile(model, 0.9, "global"))).values()]
    assert max(spread) - min(spread) > 0.05
    assert prune_profile(model, 0.0, "uniform") is model


def test_suite_int8_engines_and_their_versus_table(tmp_path):
    """sparsecc-int8 and ONNX Runtime on its QDQ file run in the same cells; their outputs
    are within int8 error of torch's; the int8 versus table is based on sparsecc-int8."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from sparsecc import zoo
    from sparsecc.benchmarks import report
    from sparsecc.benchmarks.suite import ModelSpec, SuiteConfig, _randn, run_suite

    spec = ModelSpec("tiny", lambda: zoo.mlp((24, 40, 7)), _randn((24,)))
    engines = ["onnxruntime", "sparsecc", "onnxruntime-int8", "sparsecc-int8"]
    cfg = SuiteConfig(models=["tiny"], sparsities=[0.0, 0.8], batches=[1, 3], threads=[2],
                      engines=engines, min_runs=3, min_time=0.01, out=tmp_path, rounds=1)
    rows = run_suite(cfg, {"tiny": spec}, log=print)
    assert len(rows) == 2 * 2 * len(engines)
    for r in rows:
        assert "skipped" not in r, r
        assert np.isfinite(r["max_rel_err"]) and r["max_rel_err"] < (
            0.3 if r["engine"].endswith("int8") else 1e-5), r
    assert (tmp_path / "onnx" / "tiny_80_qdq.onnx").exists()
    table = report.versus(rows, 0.8, base="sparsecc-int8")
    assert "sparsecc-int8 ms" in table and "vs onnxruntime-int8" in table


def test_peak_gflops_follows_the_machine():
    """The % of peak the bench reports is of this machine's FMA peak: cores x "cpu MHz" x 2
    FMA units x lanes (16 with avx512f in the flags, 8 with avx2, 4 without) x 2."""
    from sparsecc.benchmarks.suite import peak_gflops

    xeon = "model name\t: Xeon\ncpu MHz\t\t: 2500.000\nflags\t\t: fpu avx2 fma avx512f\n" * 2
    zen3 = "cpu MHz\t\t: 2445.404\nflags\t\t: fpu avx avx2 fma sha_ni\n"
    assert peak_gflops(xeon, 2) == pytest.approx(320.0)
    assert peak_gflops(zen3, 2) == pytest.approx(2 * 2.445404 * 2 * 8 * 2)
    assert peak_gflops("flags\t: sse2\n", 1) == pytest.approx(2.5 * 2 * 4 * 2)


def test_measured_peak_is_an_fma_rate():
    """The bench's peak is measured (native.probe.fma_peak_gflops), since a KVM guest's
    "cpu MHz" is the nominal clock: one core's FMA loop runs within 0.25-3x the nominal
    one-core figure (a loop folded away or not run would be far off), and the suite's
    PEAK_GFLOPS is that measurement on every core, not below one core's."""
    from sparsecc.benchmarks import suite
    from sparsecc.native.probe import fma_peak_gflops

    one = fma_peak_gflops(1)
    nominal = suite.peak_gflops(cores=1)
    assert one is not None and 0.25 * nominal < one < 3 * nominal, (one, nominal)
    assert suite.PEAK_GFLOPS == suite.peak() >= 0.9 * one


def test_peak_keeps_the_highest_measurement(tmp_path, monkeypatch):
    """suite.peak() keeps the highest FMA peak measured on this host (a run that meets a busy
    neighbour measures low), in the cache directory; a corrupt or NaN record is replaced."""
    import json

    from sparsecc.benchmarks import suite
    from sparsecc.native import probe

    monkeypatch.setenv("SPARSECC_CACHE_DIR", str(tmp_path))
    got = []
    for measured in (300.0, 200.0, 400.0):
        monkeypatch.setattr(probe, "fma_peak_gflops", lambda m=measured: m)
        suite.peak.cache_clear()
        got.append(suite.peak())
    assert got == [300.0, 300.0, 400.0]
    for bad in ("{not json", '{"%s": NaN}'):
        records = list(tmp_path.glob("fma_peak.json"))
        assert len(records) == 1
        key = next(iter(json.loads(records[0].read_text())))
        records[0].write_text(bad.replace("%s", key) if "%s" in bad else bad)
        monkeypatch.setattr(probe, "fma_peak_gflops", lambda: 250.0)
        suite.peak.cache_clear()
        assert suite.peak() == 250.0
    suite.peak.cache_clear()


def test_bench_results_folders_never_shared(tmp_path, monkeypatch):
    """Two bench runs started in the same minute get folders of their own (the second wrote
    over the first's results.jsonl and tables)."""
    from sparsecc import bench

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261204-1900")
    first = bench._fresh_dir(tmp_path)
    assert first == tmp_path / "20261204-1900"
    first.mkdir()
    second = bench._fresh_dir(tmp_path)
    assert second == tmp_path / "20261204-1900-2"
    second.mkdir()
    assert bench._fresh_dir(tmp_path) == tmp_path / "20261204-1900-3"


def test_suite_rounds_rewarm_only_fast_engines(monkeypatch, tmp_path):
    """Later rounds warm an engine up again only when its calls are shorter than WARM_S: a
    call that long reloads the caches in its first moments, and warming it every round
    cost ResNet-18's batch-64 cells 1.4x the time."""
    from sparsecc import zoo
    from sparsecc.benchmarks import engines as E
    from sparsecc.benchmarks import suite as S

    monkeypatch.setattr(E, "WARM_S", 0.02)
    spec = S.ModelSpec("tiny", lambda: zoo.mlp((24, 40, 7)), S._randn((24,)))
    counts = {}
    for seconds in (0.0, 0.03):
        fn, calls = _counter(seconds)
        monkeypatch.setattr(E, "torch_eager",
                            lambda model, inputs, threads, fn=fn: lambda: (fn(), np.ones(3))[1])
        cfg = S.SuiteConfig(models=["tiny"], sparsities=[0.8], batches=[1], threads=[1],
                            engines=["torch"], min_runs=3, min_time=1e-4, rounds=3,
                            out=tmp_path)
        rows = S.run_suite(cfg, {"tiny": spec}, log=lambda m: None)
        assert rows[0]["runs"] == 3
        counts[seconds] = len(calls)
    # the correctness call, then per round up to 2 warm-up calls (the first round counts the
    # correctness call) and 1 timed call
    assert counts[0.0] == 1 + (1 + 1) + 2 * (2 + 1)
    assert counts[0.03] == 1 + 3 * 1


def test_deepsparse_worker_warmup_and_output_call(monkeypatch, tmp_path):
    """The DeepSparse worker (run here on a stand-in `deepsparse` package): with an output
    file its first call saves the output and counts as warm-up; without one it makes only
    the warm-up calls ``warm_s`` asks for (none at 0) and the timed ones."""
    import sys

    from sparsecc.benchmarks import engines as E

    pkg = tmp_path / "fake" / "deepsparse"
    pkg.mkdir(parents=True)
    log = tmp_path / "calls.txt"
    (pkg / "__init__.py").write_text(
        "class Engine:\n"
        "    def __init__(self, model, batch_size, num_cores):\n"
        "        pass\n"
        "    def run(self, xs):\n"
        f"        open({str(log)!r}, 'a').write('x')\n"
        "        return [xs[0] * 2]\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    ds = E.DeepSparse()
    ds.python = sys.executable
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    def calls(*args, **kw):
        log.write_text("")
        times, out = ds.samples(str(tmp_path / "m.onnx"), [x], 1, *args, **kw)
        return len(log.read_text()), len(times), out

    try:
        n, timed, out = calls(3, 60.0)
        assert (n, timed) == (1 + 1 + 3, 3) and np.array_equal(out, 2 * x)
        assert calls(3, 60.0, output=False)[:3] == (2 + 3, 3, None)
        assert calls(3, 60.0, warm_s=0.0, output=False)[:2] == (3, 3)
        assert calls(1, 0.0, warm_s=0.0, output=False)[:2] == (1, 1)
    finally:
        ds.proc.stdin.close()
        ds.proc.wait(timeout=30)
