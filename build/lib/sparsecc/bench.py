"""``sparsecc bench``: sparsecc vs torch eager on the same (pruned) weights, in one process.

Method: warm-up, then ``repeats`` timed calls per engine, interleaved engine by engine per
round so drift on a noisy machine hits both alike; medians with p10/p90 and the ratio of
medians. A correctness column gives the max relative error against torch.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms [{self.p10_ms:.3f}-{self.p90_ms:.3f}]"


def time_engines(fns: dict[str, Callable[[], object]], repeats: int,
                 warmup: int = 3) -> dict[str, Timing]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: Timing(float(np.median(v)), float(np.percentile(v, 10)),
                      float(np.percentile(v, 90))) for k, v in samples.items()}


def max_rel_err(got, ref) -> float:
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = 0.0
    for g, r in zip(got, ref):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        err = max(err, float(np.max(np.abs(g - r)) / (np.max(np.abs(r)) + 1e-12)))
    return err


def machine_line() -> str:
    import numba

    return (f"{platform.processor() or platform.machine()}, {numba.config.NUMBA_NUM_THREADS} "
            f"threads, python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {numba.__version__}")


def bench_command(args) -> int:
    import sparsecc

    batches = [int(b) for b in str(args.batch).split(",") if b]
    peers = [p.strip() for p in str(args.vs).split(",") if p.strip()]
    unknown = sorted(set(peers) - {"torch"})
    print(f"machine: {machine_line()}")
    for p in unknown:
        print(f"note: peer {p!r} is not available in this build of sparsecc bench; skipped")
    if args.target.endswith(".scc"):
        cm, model = sparsecc.load(args.target), None
        print("note: an artifact has no torch model; timing sparsecc only")
    else:
        from sparsecc.cli import build_model

        model, x = build_model(args.target, args.input_shape)
        if args.sparsity:
            model = sparsecc.prune(model, args.sparsity)
        cm = sparsecc.compile(model, x)
        if getattr(args, "save", None):
            print(f"saved {cm.save(args.save)}")
    if getattr(args, "report", False):
        print(cm.report())
    print(f"{'batch':>5}  {'sparsecc':>30}  {'torch':>30}  {'speedup':>7}  {'max rel err':>11}")
    for b in batches:
        _bench_batch(cm, model, b, args.repeats, "torch" in peers)
    return 0


def _bench_batch(cm, model, batch: int, repeats: int, with_torch: bool) -> None:
    if not cm.plan.dynamic_batch and batch != cm.plan.example_batch:
        print(f"{batch:>5}  skipped: the model is compiled for batch {cm.plan.example_batch} only")
        return
    inputs = cm.example_inputs(batch=batch)
    fns = {"sparsecc": lambda: cm(*inputs)}
    err = "-"
    if model is not None and with_torch:
        import torch

        tin = [torch.from_numpy(a) for a in inputs]

        def run_torch():
            with torch.no_grad():
                return model(*tin)

        ref = run_torch()
        ref = tuple(r.numpy() for r in ref) if isinstance(ref, tuple) else ref.numpy()
        err = f"{max_rel_err(cm(*inputs), ref):.1e}"
        fns["torch"] = run_torch
    t = time_engines(fns, repeats)
    tt = t.get("torch")
    speed = f"{tt.median_ms / t['sparsecc'].median_ms:6.2f}x" if tt else "-"
    print(f"{batch:>5}  {str(t['sparsecc']):>30}  {str(tt) if tt else '-':>30}  {speed:>7}  "
          f"{err:>11}")
