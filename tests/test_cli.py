"""The command line: compile -> run -> report, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    def small():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def broken():
        raise RuntimeError("no weights here")
""")


def sparsecc_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparsecc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(MODEL_FILE)
    return p


def test_compile_run_report(model_file, tmp_path, seed):
    out = tmp_path / "m.scc"
    res = sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape", "1,1,8,8",
                       "--sparsity", "0.5")
    assert res.returncode == 0, res.stderr
    assert out.is_file()
    x = np.random.default_rng(seed).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = sparsecc_cli("run", out, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.returncode == 0, res.stderr
    import sparsecc
    from sparsecc.cli import resolve_factory

    ref_model = sparsecc.prune(resolve_factory(f"{model_file}:small")(), 0.5)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-4, atol=1e-5)
    res = sparsecc_cli("report", out, "--repeats", "2")
    assert res.returncode == 0, res.stderr
    assert "conv2d+relu" in res.stdout and "linear" in res.stdout


def test_compile_int8_with_calibration_file(model_file, tmp_path, seed):
    rng = np.random.default_rng(seed)
    np.save(tmp_path / "cal.npy", rng.standard_normal((20, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "q.scc"
    res = sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape", "1,1,8,8",
                       "--quantize", "int8", "--calibration", tmp_path / "cal.npy", "--report")
    assert res.returncode == 0, res.stderr
    # the 1-channel 3x3 conv stays float32 for the direct kernel by default (and says why)
    assert "precision" in res.stdout and "direct conv kernel" in res.stdout
    (tmp_path / "all8.yaml").write_text("quantize:\n  direct_max_k: 0\n")
    res = sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape", "1,1,8,8",
                       "--quantize", "int8", "--calibration", tmp_path / "cal.npy", "--report",
                       "--recipe", tmp_path / "all8.yaml")
    assert res.returncode == 0, res.stderr
    assert "precision" in res.stdout and "qconv2d" in res.stdout
    import sparsecc

    cm = sparsecc.load(out)
    assert any(op.kind == "qconv2d" for op in cm.plan.ops)
    np.save(tmp_path / "bad.npy", np.zeros((4, 2, 8, 8), np.float32))
    res = sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape", "1,1,8,8",
                       "--quantize", "int8", "--calibration", tmp_path / "bad.npy")
    assert res.returncode == 2 and "bad.npy" in res.stderr and "expected (N, 1, 8, 8)" in \
        res.stderr


def test_compile_zoo_model_without_shape(tmp_path):
    res = sparsecc_cli("compile", "sparsecc.zoo:lenet", "-o", tmp_path / "l.scc")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("args, needle", [
    (["compile", "nope.module:f", "-o", "x.scc"], "cannot import nope.module"),
    (["compile", "sparsecc.zoo", "-o", "x.scc"], "expected 'package.module:factory'"),
    (["compile", "sparsecc.zoo:not_there", "-o", "x.scc"], "no callable 'not_there'"),
    (["run", "missing.scc", "--input", "x.npy"], "missing.scc"),
])
def test_errors_are_one_line(args, needle, tmp_path):
    res = sparsecc_cli(*args, cwd=tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsecc: error:"), res.stderr
    assert needle in lines[0]


@pytest.mark.parametrize("args", [
    ["compile", "sparsecc.zoo:mlp", "-o", "x.scc", "--sparsity", "1.5"],
    ["compile", "sparsecc.zoo:mlp", "-o", "x.scc", "--input-shape", "99999999999999999999,64"],
    ["compile", "sparsecc.zoo:mlp", "-o", "."],
    ["compile", "sparsecc.zoo:mlp", "-o", "new/dir/x.scc"],
    ["bench", "sparsecc.zoo:mlp", "--batch", "abc"],
    ["report", "missing.scc", "--repeats", "0"],
    ["run", "x.scc", "--input", "x.npy", "-o", "missing/y.npy"],
    ["frobnicate"],
])
def test_misuse_is_one_line_with_exit_2(args, tmp_path):
    res = sparsecc_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsecc: error:"), res.stderr
    assert not (tmp_path / "new").exists()  # no folder tree made behind the user's back


def test_run_writes_exactly_the_named_file(model_file, tmp_path):
    art = tmp_path / "m.scc"
    assert sparsecc_cli("compile", f"{model_file}:small", "-o", art,
                        "--input-shape", "1,1,8,8").returncode == 0
    np.save(tmp_path / "x.npy", np.ones((2, 1, 8, 8), np.float32))
    res = sparsecc_cli("run", art, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.bin")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.bin").is_file() and not (tmp_path / "out.bin.npy").exists()
    assert np.load(tmp_path / "out.bin").shape == (2, 3)


def test_factory_error_and_bad_input(model_file, tmp_path):
    res = sparsecc_cli("compile", f"{model_file}:broken", "-o", tmp_path / "b.scc")
    assert res.returncode != 0 and "no weights here" in res.stderr
    out = tmp_path / "m.scc"
    assert sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape",
                        "1,1,8,8").returncode == 0
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.float32))
    res = sparsecc_cli("run", out, "--input", tmp_path / "bad.npy")
    assert res.returncode != 0
    assert "expected 4 dims" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bench_model_vs_peers(model_file, tmp_path):
    out = tmp_path / "bench"
    res = sparsecc_cli("bench", f"{model_file}:small", "--input-shape", "1,1,8,8", "--batch",
                       "1,4", "--threads", "1", "--sparsity", "0.8", "--vs",
                       "torch,onnxruntime,nope", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "engine 'nope' is unknown" in res.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cells = {(r["sparsity"], r["batch"], r["engine"]) for r in rows}
    assert {(s, b, e) for s in (0.0, 0.8) for b in (1, 4)
            for e in ("torch", "onnxruntime", "sparsecc")} <= cells
    for r in rows:
        if r["engine"] == "sparsecc":
            assert r["max_rel_err"] < 1e-4 and r["speedup_vs_torch"] > 0
    assert (out / "table.md").read_text().count("| model | sparsity |") == 1
    assert "| small | 80% |" in (out / "table.md").read_text()
    assert (out / "latency_small.png").is_file()
    versus = (out / "versus.md").read_text()
    assert "sparsecc at 80% sparsity" in versus and "| small | 4 | 1 |" in versus
    assert all(r["wall_s"] >= 0 for r in rows)
    # the peak the rows' % of peak divide by, recorded beside the run
    peak = json.loads((out / "machine.json").read_text())["peak_gflops"]
    assert f"peak {peak:.0f} GFLOP/s" in versus
    for r in rows:
        if r.get("pct_peak") is not None:
            assert abs(r["pct_peak"] - 100 * r["gflops"] / peak) < 0.2


def test_bench_model_report_and_save(model_file, tmp_path):
    art = tmp_path / "s.scc"
    res = sparsecc_cli("bench", f"{model_file}:small", "--input-shape", "1,1,8,8", "--batch", "1",
                       "--threads", "1", "--sparsity", "0.9", "--vs", "torch", "--report",
                       "--save", art, "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert "per-layer report at batch 1" in res.stdout and "conv2d+relu" in res.stdout
    assert art.is_file() and "| model | sparsity |" in res.stdout


def test_bench_artifact(model_file, tmp_path):
    out = tmp_path / "m.scc"
    assert sparsecc_cli("compile", f"{model_file}:small", "-o", out, "--input-shape",
                        "1,1,8,8").returncode == 0
    res = sparsecc_cli("bench", out, "--batch", "1,2", "--repeats", "5")
    assert res.returncode == 0 and "batch    2" in res.stdout, res.stderr
