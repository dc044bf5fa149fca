"""Pattern-specialised LLVM kernels vs the generic LLVM kernels vs the best numba kernel.

Cells: linear 1024^2 and 4096^2 and ResNet-50 1x1 layers, sparsity 0.90 / 0.95 / 0.98, batch 1
and 16, 2 threads. Per cell: median ms [p10-p90] of each engine (warm blocks alternating over
rounds, as bench/kernels.py), specialised speedup over the best numba kernel and over the
generic LLVM kernel, compile time (cold: an empty kernel cache), compile time per million
nonzeros, object-code size; and the load time of a saved ResNet-50-sized artifact with its
cached object code (``load(native=True)`` in a fresh process).

Usage: .venv/bin/python bench/llvm_specialized.py [--max-nnz 400000] [--out results/llvm]
Layers above --max-nnz are not compiled (their compile time is extrapolated from the per-nnz
figure and reported as such).
"""

from __future__ import annotations

import os

# Before numpy loads OpenBLAS: its idle workers would otherwise spin ~0.1 s after each 2-thread
# call and take the cores from the next engine's threads (a 50x slowdown measured).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import kernels as KB  # noqa: E402  (bench/kernels.py: layers, binding helpers, timing)

import sparsecc  # noqa: E402
from sparsecc.benchmarks.suite import machine_info  # noqa: E402
from sparsecc.codegen.llvm import kernels as LK  # noqa: E402
from sparsecc.runtime.ops.registry import aligned_empty  # noqa: E402

LAYERS = ["linear 1024x1024", "linear 4096x4096", "r50 1x1 64>256 @56", "r50 1x1 256>64 @56",
          "r50 1x1 512>128 @28", "r50 1x1 1024>256 @14", "r50 1x1 2048>512 @7"]


def _bind(layer, w, x, y, backend, specialize):
    with LK.recording() as used:
        t0 = time.perf_counter()
        step = KB._bound(layer, w, "csr", x, y, backend, specialize=specialize)
        bind_s = time.perf_counter() - t0
    code = sum(k.code_bytes for k in used.values() if k.spec.pattern_hash)
    return KB._blas1(step, True), bind_s, code


def run_cell(layer, sparsity, batch, repeats, max_nnz):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((layer.cout, layer.cin, layer.k, layer.k)).astype(np.float32)
    if layer.kind == "linear":
        w0 = w0.reshape(layer.cout, layer.cin)
    w = KB._prune(w0, sparsity)
    nnz = int(np.count_nonzero(w))
    x = KB._input(layer, batch, rng)
    ref = (KB.F.linear(torch.from_numpy(x), torch.from_numpy(w)) if layer.kind == "linear" else
           KB.F.conv2d(torch.from_numpy(x), torch.from_numpy(w))).numpy()
    fns, info = {}, {}
    for name, backend, spec in (("numba CSR", "numba", False), ("llvm generic", "llvm", False),
                                ("llvm specialised", "llvm", True)):
        if spec and nnz > max_nnz:
            continue
        y = aligned_empty(ref.shape)
        fn, bind_s, code = _bind(layer, w, x, y, backend, spec)
        fn()
        err = float(np.max(np.abs(y - ref)) / (np.max(np.abs(ref)) + 1e-12))
        fns[name] = fn
        info[name] = {"bind_s": bind_s, "code_bytes": code, "max_rel_err": err}
    timings = KB.time_blocks(fns, repeats)
    row = {"layer": layer.name, "sparsity": sparsity, "batch": batch, "nnz": nnz,
           **{f"{k} ms": v.median_ms for k, v in timings.items()},
           **{f"{k} p10-p90": [v.p10_ms, v.p90_ms] for k, v in timings.items()},
           "max_rel_err": max(i["max_rel_err"] for i in info.values())}
    if "llvm specialised" in timings:
        s = timings["llvm specialised"].median_ms
        row.update(spec_vs_numba=timings["numba CSR"].median_ms / s,
                   spec_vs_generic=timings["llvm generic"].median_ms / s,
                   compile_s=info["llvm specialised"]["bind_s"],
                   compile_s_per_mnnz=info["llvm specialised"]["bind_s"] / max(nnz, 1) * 1e6,
                   code_kb=info["llvm specialised"]["code_bytes"] / 1024)
    else:
        row["skipped"] = f"{nnz} nonzeros > --max-nnz {max_nnz}"
    row["generic_vs_numba"] = timings["numba CSR"].median_ms / timings["llvm generic"].median_ms
    return row


LOAD_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import numpy as np, sparsecc
rt = sparsecc.load(sys.argv[1], native=True)
t1 = time.perf_counter()
rt(np.zeros((1, 3, 224, 224), np.float32))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def artifact_load(tmp: Path) -> dict:
    """ResNet-50 at 90 %: save with object code, then load + first call in a fresh process
    with an empty kernel cache (so nothing can come from this machine's cache)."""
    from sparsecc import zoo

    model = sparsecc.prune(zoo.resnet50(), 0.9)
    cm = sparsecc.compile(model, torch.randn(1, 3, 224, 224))
    path = cm.save(tmp / "r50.scc")
    env = dict(os.environ, SPARSECC_CACHE_DIR=str(tmp / "empty"))
    script = tmp / "load.py"
    script.write_text(LOAD_SCRIPT)
    out = {}
    for label, extra in (("native", []),):
        res = subprocess.run([sys.executable, str(script), str(path), *extra],
                             capture_output=True, text=True, env=env, timeout=600)
        load_s, first_call_s = (float(v) for v in res.stdout.split())
        out[label] = {"load_s": load_s, "first_call_s": first_call_s}
    out["artifact_mb"] = path.stat().st_size / 1e6
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-nnz", type=int, default=400_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--layers", default="")
    ap.add_argument("--out", default="results/llvm")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # Cold compiles: a private, empty kernel cache for this run.
    os.environ["SPARSECC_CACHE_DIR"] = tempfile.mkdtemp(prefix="scc-bench-")
    torch.set_num_threads(2)
    numba.set_num_threads(2)
    info = machine_info()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    names = [n for n in LAYERS if not a.layers or any(s in n for s in a.layers.split(","))]
    with (out / f"{stamp}.jsonl").open("w") as f:
        f.write(json.dumps({"machine": info}) + "\n")
        for name in names:
            layer = next(lay for lay in KB.LAYERS if lay.name == name)
            for s in (0.9, 0.95, 0.98):
                for b in (1, 16):
                    row = run_cell(layer, s, b, a.repeats, a.max_nnz)
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in row.items() if "p10" not in k}), flush=True)
        load = artifact_load(Path(tempfile.mkdtemp()))
        f.write(json.dumps({"artifact_load": load}) + "\n")
    print(json.dumps({"artifact_load": load}))
    lines = ["| layer | sp | batch | nnz | numba CSR | llvm generic | llvm specialised | "
             "spec/numba | spec/generic | compile s | s per M nnz | code KB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp_ = r.get("llvm specialised ms")
        lines.append(
            f"| {r['layer']} | {r['sparsity']} | {r['batch']} | {r['nnz']} | "
            f"{r['numba CSR ms']:.3f} | {r['llvm generic ms']:.3f} | "
            + (f"{sp_:.3f} | {r['spec_vs_numba']:.2f}x | {r['spec_vs_generic']:.2f}x | "
               + (f"{r['compile_s']:.1f} | {r['compile_s_per_mnnz']:.0f} | "
                  if r["compile_s"] > 0.01 else "cached (same kernel as batch 1) | | ")
               + f"{r['code_kb']:.0f} |"
               if sp_ is not None else f"{r['skipped']} | | | | | |"))
    md = "\n".join(lines)
    (out / f"{stamp}.md").write_text(f"# llvm specialised kernels {info['date']}\n\n"
                                     f"{json.dumps(info)}\n\n{md}\n\nartifact load: "
                                     f"{json.dumps(load)}\n")
    print(md)


if __name__ == "__main__":
    main()
