"""One op's sparse kernel call replayed alone, on one thread: a kernel's rate without the
rest of the model, under several lowering settings compared in one process.

The suite's model (``--model``, ``--profile``, 90 %) is compiled once per setting
(``NAME=value;...``, op_ab's ``--set`` items: module constants by dotted name, else
environment variables; "" for the code as it stands). For each build
the first sparse-kernel call of op ``--op`` is taken with its own weights (the constants the
lowering derived) and its geometry evaluated at ``--n`` samples (default 1: the per-sample
head runs its calls on one sample a thread at a time), its tensors on fresh aligned buffers
of random values. The builds' calls then run in turn, ``--rounds`` times, on this thread.
Prints each one's median time, its share of one core's measured FMA peak (native.probe),
and its ratio to the first setting.

What it shows and what it does not (2026-12-06, Zen 3): the loop's own limits. With x's
offsets confined to a few lines (a hacked build) ResNet-18 b16's layer1 3x3 kernels ran
1.2-1.4x faster than as emitted, so L1 misses on x hold them; rounding every offset to 8
floats changed nothing. But each call here meets the caches its previous run left: in the
model 60-odd other ops run in between. Store and residual prefetches that made calls here
0.71-0.88x the time (over 16 samples' buffers, or 1 sample's with a residual) were level
in whole plain calls (``bench/op_ab.py --plain``). Take a finding here to op_ab before
believing it.

Usage:
  .venv/bin/python bench/replay_call.py --model resnet18 --batch 16 --op 3 \\
      "" "sparsecc.codegen.llvm.kernels.MIN_PANEL_ROW_NNZ=8"
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
from op_ab import applied  # noqa: E402  (bench/ is the script's directory)

from sparsecc.benchmarks import suite  # noqa: E402
from sparsecc.codegen.llvm import emit as E  # noqa: E402
from sparsecc.codegen.llvm import kernels as LK  # noqa: E402
from sparsecc.native.expr import lift  # noqa: E402
from sparsecc.native.probe import fma_peak_gflops  # noqa: E402
from sparsecc.runtime.ops.registry import aligned_empty  # noqa: E402

KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


class Replay:
    """The op's first sparse call of one build, bound to buffers of its own."""

    def __init__(self, spec, model, inputs, op: int, n: int, setting: str, rng):
        with applied([item.strip() for item in setting.split(";") if item.strip()]):
            # (the suite's compile: Hugging Face models traced by their input names)
            prog = suite._compile(spec, model, inputs, False).native.lib.program
            calls = [c for c in prog.calls
                     if c.op == op and prog.kernels[c.kernel].kind == "sparse"]
            if not calls:
                raise SystemExit(f"op {op} has no sparse kernel call "
                                 f"({prog.labels.get(op, 'no such op')})")
            call = calls[0]
            spec = prog.kernels[call.kernel].spec
            self.fn = KERNEL(LK.build(spec).addr)

        def value(e):
            return 0 if e is None else lift(e)(n)

        self.keep, tensors = [], {}
        self.args = np.zeros(E.N_ARGS, np.int64)
        for i, s in enumerate(call.args[:E.N_ARGS]):
            if s.kind == "int":
                self.args[i] = value(s.expr)
            elif s.kind == "weight":
                w = prog.weights[s.name]
                a = aligned_empty((w.nbytes + 64,), np.uint8)
                a[:w.nbytes] = w.view(np.uint8).reshape(-1)
                self.keep.append(a)
                self.args[i] = a.ctypes.data + value(s.expr)
            elif s.kind == "tensor":
                if s.name not in tensors:
                    nbytes = value(prog.buffers[s.name].nbytes)
                    a = aligned_empty((nbytes // 4 + 64,), np.float32)
                    a[:] = rng.standard_normal(a.size).astype(np.float32) * 0.1
                    tensors[s.name] = a
                self.args[i] = tensors[s.name].ctypes.data + value(s.expr)
        self.keep.append(tensors)
        self.items = value(call.items)
        nnz = prog.weights[call.args[E.A_DATA].name].size
        # (FLOPs: a nonzero is tile FMAs of vw lanes an item of a row block; a column-blocked
        # call's item covers every tile of its samples, so there the n samples' tiles count)
        if spec.kcols:
            self.flops = 2.0 * n * int(self.args[E.A_NTILES]) * nnz * spec.tile * spec.vw
        else:
            self.flops = 2.0 * self.items * nnz * spec.tile * spec.vw / max(
                int(self.args[E.A_NRB]), 1)
        self.label = (f"{prog.labels.get(op, '')}; tile {spec.tile}, "
                      f"{int(self.args[E.A_NPANEL])} panels, {self.items} items")

    def __call__(self) -> float:
        t = time.perf_counter()
        self.fn(0, self.items, self.args.ctypes.data)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--profile", default="uniform", choices=suite.PROFILES)
    ap.add_argument("--batch", type=int, default=16, help="the batch compiled for")
    ap.add_argument("--op", type=int, required=True, help="plan op index (op_ab's)")
    ap.add_argument("--n", type=int, default=1, help="samples a call covers")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("settings", nargs="*", default=[""])
    a = ap.parse_args()
    spec = suite.model_specs()[a.model]
    model = suite.prune_profile(spec.build(), 0.9, a.profile)
    inputs = spec.inputs(a.batch)
    rng = np.random.default_rng(0)
    runs = [Replay(spec, model, inputs, a.op, a.n, s, rng) for s in a.settings or [""]]
    peak = (fma_peak_gflops(1) or 0.0) * 1e9  # one core's FLOP/s
    for s, r in zip(a.settings, runs):
        print(f"[{s or 'as is'}] op {a.op}: {r.label}")
    for r in runs:
        r()
    times = [[] for _ in runs]
    for _ in range(a.rounds):
        for t, r in zip(times, runs):
            t.append(r())
    base = float(np.median(times[0]))
    for s, t, r in zip(a.settings, times, runs):
        med = float(np.median(t))
        share = f", {r.flops / med / peak:.0%} of the core's FMA peak" if peak else ""
        print(f"{s or 'as is'}: {med * 1e3:.3f} ms [{np.percentile(t, 10) * 1e3:.3f}-"
              f"{np.percentile(t, 90) * 1e3:.3f}]{share}, {med / base:.3f}x")


if __name__ == "__main__":
    main()
