"""sparsecc against DeepSparse layer by layer: which layers lose, and by how much.

For each model: the bench's pruned copy (``--profile``, ``--sparsity``), exported to ONNX as
`sparsecc bench` does; DeepSparse's own per-layer profile of that file
(``deepsparse.debug_analysis`` in the venv ``./dev peers`` sets up) and sparsecc's report
(per-op cycle counts of the native library, the same batch and threads), joined by module
(sparsecc/benchmarks/peer_layers.py). GFLOP/s are of the sparse FLOPs, with the % of this
machine's FMA peak (suite.peak(): the cores' FMA loop, measured). Both profiles are
medians of their own runs, taken one after the other: the ratios mean more than either
total (this machine is shared).

Usage:
  .venv/bin/python bench/peer_layers.py --models resnet18 --batch 16
  .venv/bin/python bench/peer_layers.py --models resnet18,resnet50,mobilenet_v2 --batch 1,16
Writes results/peer_layers/<stamp>.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparsecc.benchmarks import engines as E  # noqa: E402
from sparsecc.benchmarks import peer_layers as PL  # noqa: E402
from sparsecc.benchmarks import suite  # noqa: E402

PEAK = suite.PEAK_GFLOPS


def deepsparse_layers(onnx: Path, batch: int, threads: int, iters: int) -> str:
    py = E.deepsparse_python()
    if py is None:
        raise SystemExit("DeepSparse is not set up (./dev peers creates .venv-deepsparse)")
    tool = Path(py).with_name("deepsparse.debug_analysis")
    env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
    res = subprocess.run([str(tool), "-ncores", str(threads), "-b", str(batch), "-bi",
                          str(iters), "-wi", str(max(2, iters // 4)), str(onnx)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode:
        raise SystemExit(f"deepsparse.debug_analysis failed: {res.stderr[-400:]}")
    return res.stdout


def one(name: str, profile: str, sparsity: float, batch: int, threads: int, iters: int,
        tmp: Path) -> list[str]:
    spec = suite.model_specs()[name]
    model = suite.prune_profile(spec.build(), sparsity, profile).eval()
    ex = spec.inputs(batch)
    onnx = E.onnx_export(model, ex, spec.names, tmp / f"{name}_{batch}.onnx")
    peer, total = PL.parse_analysis(deepsparse_layers(onnx, batch, threads, iters))
    torch.set_num_threads(threads)
    cm = suite._compile(spec, model, ex, False, None)
    rows = cm.report(measure=True, repeats=iters).rows
    ops = PL.join(peer, rows)
    arrs = [np.ascontiguousarray(a) for a in ex]
    call = E.time_call(lambda: cm(*arrs), min_runs=10, min_time=2.0)
    head = [f"## {name}, {profile} {sparsity:.0%}, batch {batch}, {threads} threads", "",
            f"DeepSparse's profiled total {total} ms; sparsecc's ops sum "
            f"{sum(o.ours_ms for o in ops):.2f} ms (a plain call: {call}).", ""]
    return head + PL.table(ops, batch, PEAK) + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--profile", default="uniform", choices=suite.PROFILES)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", default="16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="profiled runs of each engine")
    ap.add_argument("--out", default="results/peer_layers")
    a = ap.parse_args()
    lines = [f"# sparsecc vs DeepSparse per layer ({time.strftime('%Y-%m-%d %H:%M')})", "",
             suite.machine_line(), ""]
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            for b in (int(v) for v in a.batch.split(",")):
                part = one(name, a.profile, a.sparsity, b, a.threads, a.iters, Path(d))
                print("\n".join(part), flush=True)
                lines += part
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M')}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
