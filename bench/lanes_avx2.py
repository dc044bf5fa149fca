"""Samples in the vector lanes for the whole-batch tail on AVX2: the generic kernel over
(group of 8 samples, channel, padded row, padded column, 8 lanes) against the kernel the
model runs, one ResNet-18 3x3 / 1 conv at a time, on one core.

The tail's 3x3 convs over 14 x 14 and 7 x 7 maps run their wide rows (a shared padding
column a row, whole vectors a tile): 224 positions computed a channel for 196, 56 for 49.
With 8 samples side by side in the lanes, a tile is ``--tile`` output positions of one row
(7: a row of 7 x 7 maps; 14: a row of 14 x 14), every x operand one aligned vector of the
padded planes (no dual copies) and every computed lane a real output; the next conv's
padded planes are written in place (their zero border left alone), so no crop either.

The model's own call comes from ``bench/replay_call.Replay`` (its real weights, the
geometry at ``--batch`` samples, fresh buffers); the lanes kernel runs the same layer's
pruned weights (same nonzeros, so the same useful FLOPs) over ``--batch`` / 8 groups,
after a check against torch. Both on this thread, alternating, medians of ``--rounds``.
GFLOP/s count the useful FLOPs (2 x nonzeros x outputs), % of one core's measured peak.
A channel's planes take an odd number of cache lines (2064 floats at 14 x 14, not 2048):
with 8 KB between channels every channel's lines fell on the same L1 sets, and the 14 x 14
conv with a residual ran 1.15-1.29x the model's time, against 1.03-1.08x padded.

First runs (2026-12-07, the AVX2 Zen 3, ResNet-18 uniform 90 %, batch 16, 13 or 20 column
panels; the model's calls 8-13 ms): layer4.1.conv1 0.91-0.92x the model's time (the model's
call also stores the dual copy), layer4.1.conv2 1.00-1.01x, layer3.1.conv1 0.92-0.98x,
layer3.1.conv2 1.03-1.08x (tiles of 7 or 14 positions alike). The 12.5 % (7 x 7) and 10 %
(14 x 14) of lanes the wide rows compute past the maps do not come back: a tile of one row
reads three rows of x a channel for 7 positions, where the model's tile reads a sample's
whole 9 x 8 plane for its 49, so x's lines are fetched into L1 more often.

Usage: .venv/bin/python bench/lanes_avx2.py [--layers layer4.1.conv2,layer3.1.conv2]
           [--panels 8,13,20] [--tiles 7,14] [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_call import KERNEL, Replay  # noqa: E402

import sparsecc  # noqa: E402,F401
from sparsecc.benchmarks import suite  # noqa: E402
from sparsecc.codegen.llvm import kernels as LK  # noqa: E402
from sparsecc.codegen.llvm.emit import A_NPANEL, A_NRB, A_OUT, A_RES, A_X, KernelSpec  # noqa: E402
from sparsecc.native.probe import fma_peak_gflops  # noqa: E402
from sparsecc.runtime.ops.registry import aligned_empty  # noqa: E402

LANES = 8


class Lanes:
    """One 3x3 / 1 conv (weight ``w``: (O, C, 3, 3)) over ``groups`` groups of 8 samples,
    laid out (group, channel, H + 2, W + 2, 8) with zero borders; tiles of ``tile``
    positions of one output row (W a multiple of it)."""

    def __init__(self, w: np.ndarray, h: int, groups: int, tile: int, panels: int,
                 residual: bool, rng):
        o, c = w.shape[:2]
        wp = h + 2
        self.h, self.o, self.c = h, o, c
        plane = wp * wp * LANES
        if (plane // 16) % 2 == 0:  # an odd number of lines a channel (no set aliasing)
            plane += 16
        self.plane = plane
        nz_o, nz_c, nz_dy, nz_dx = np.nonzero(w)
        indptr = np.zeros(o + 1, np.int64)
        np.cumsum(np.bincount(nz_o, minlength=o), out=indptr[1:])
        offs = nz_c * plane + (nz_dy * wp + nz_dx) * LANES  # padded (y + dy, x + dx)
        data = w[nz_o, nz_c, nz_dy, nz_dx].astype(np.float32)
        tpr = h // tile  # tiles a row: one call each (x and out moved on by its columns)
        if tpr * tile != h:
            raise SystemExit(f"tiles of {tile} positions do not split rows of {h}")
        spec = KernelSpec(family="spmm", vw=LANES, tile=tile, act="relu", has_bias=True,
                          idx_bits=32, residual=residual, xts=wp * LANES, ots=wp * LANES,
                          rts=wp * LANES if residual else 0)
        self.kernel = LK.build(spec)
        self.x = aligned_empty((groups * c * plane + 64,), np.float32)
        self.x[:] = 0
        xv = self.maps(self.x, groups, c)
        xv[:, :, 1:-1, 1:-1] = rng.standard_normal((groups, c, h, h, LANES)) * 0.1
        self.out = aligned_empty((groups * o * plane + 64,), np.float32)
        self.out[:] = 0
        self.res = None
        self.bias = (rng.standard_normal(o) * 0.1).astype(np.float32)
        off = (wp + 1) * LANES  # out (and the residual) at padded (1, 1)
        if residual:
            self.res = aligned_empty((groups * o * plane + 64,), np.float32)
            self.res[:] = rng.standard_normal(self.res.size).astype(np.float32) * 0.1
        pan = None
        if panels > 1:
            per = -(-c // panels)
            pan = (nz_c.astype(np.int64) // per, -(-c // per))
        ntiles = h
        launch = LK.spmm_launch(self.kernel, indptr, offs.astype(np.uint32), data, self.bias,
                                self.x, self.out, n=groups, L=ntiles * tile * LANES, xrs=1,
                                ors=plane, xns=c * plane, ons=o * plane, threads=1,
                                panels=pan)
        self.launch = launch  # (holds the weights' arrays its args point at)
        self.blocks = []
        for j in range(tpr):
            args = launch.args.copy()
            col = 4 * j * tile * LANES
            args[A_X] = self.x.ctypes.data + col
            args[A_OUT] = self.out.ctypes.data + 4 * off + col
            if residual:
                args[A_RES] = self.res.ctypes.data + 4 * off + col
            self.blocks.append(args)
        self.args = self.blocks[0]
        self.items = groups * ntiles * int(self.args[A_NRB])
        self.fn = KERNEL(self.kernel.addr)
        self.w = w

    def maps(self, a: np.ndarray, groups: int, c: int) -> np.ndarray:
        """(groups, c, H + 2, W + 2, 8) view of a buffer laid out with this conv's strides."""
        wp = self.h + 2
        return a[:groups * c * self.plane].reshape(groups, c, self.plane)[
            ..., :wp * wp * LANES].reshape(groups, c, wp, wp, LANES)

    def __call__(self) -> float:
        t = time.perf_counter()
        for args in self.blocks:
            self.fn(0, self.items, args.ctypes.data)
        return time.perf_counter() - t

    def check(self) -> float:
        """Max relative error of group 0 against torch's conv (bias, residual, relu)."""
        self()
        c, o = self.c, self.o
        xv = self.maps(self.x, 1, c)[0]
        xt = torch.from_numpy(np.ascontiguousarray(xv[:, 1:-1, 1:-1].transpose(3, 0, 1, 2)))
        ref = torch.nn.functional.conv2d(xt, torch.from_numpy(self.w), torch.from_numpy(
            self.bias), padding=1).numpy()
        if self.res is not None:
            rv = self.maps(self.res, 1, o)[0]
            ref = ref + rv[:, 1:-1, 1:-1].transpose(3, 0, 1, 2)
        ref = np.maximum(ref, 0)
        ov = self.maps(self.out, 1, o)[0]
        got = ov[:, 1:-1, 1:-1].transpose(3, 0, 1, 2)
        border = np.abs(ov[:, 0]).max() + np.abs(ov[:, -1]).max() + \
            np.abs(ov[:, :, 0]).max() + np.abs(ov[:, :, -1]).max()
        if border:
            raise SystemExit("the lanes kernel wrote the padded border")
        return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="layer4.1.conv2,layer4.1.conv1,layer3.1.conv2,"
                    "layer3.1.conv1")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--panels", default="8,13,20", help="column panels of the lanes kernel")
    ap.add_argument("--tiles", default="7,14", help="positions a tile (a row's or a part)")
    ap.add_argument("--rounds", type=int, default=40)
    a = ap.parse_args()
    spec = suite.model_specs()["resnet18"]
    model = suite.prune_profile(spec.build(), 0.9, "uniform")
    inputs = tuple(torch.from_numpy(x) for x in spec.inputs(a.batch))
    plan = sparsecc.compile(model, inputs).native.plan
    mods = dict(model.named_modules())
    rng = np.random.default_rng(0)
    peak = (fma_peak_gflops(1) or 0.0)
    print(suite.machine_line())
    for layer in a.layers.split(","):
        op = next(i for i, o in enumerate(plan.ops) if (o.layer or o.name) == layer)
        w = mods[layer].weight.detach().numpy().astype(np.float32)
        h = int(plan.tensors[plan.ops[op].output].shape[2])  # (square maps)
        real = Replay(model, inputs, op, a.batch, "", rng)
        runs = [("model", real)]
        for tile in [int(v) for v in a.tiles.split(",") if h % int(v) == 0]:
            for p in [int(v) for v in a.panels.split(",")]:
                ln = Lanes(w, h, -(-a.batch // LANES), tile, p, layer.endswith("conv2"), rng)
                err = ln.check()
                runs.append((f"lanes, tile {tile}, {int(ln.args[A_NPANEL])} panels "
                             f"(err {err:.1e})", ln))
        for _, r in runs:
            r()
        times = [[] for _ in runs]
        for _ in range(a.rounds):
            for t, (_, r) in zip(times, runs):
                t.append(r())
        flops = 2.0 * np.count_nonzero(w) * a.batch * h * h
        base = float(np.median(times[0]))
        print(f"{layer} (op {op}; {real.label}), batch {a.batch}, one thread:")
        for (name, _), t in zip(runs, times):
            med = float(np.median(t))
            gf = flops / med / 1e9
            pk = f", {gf / peak:.0%} of the core's peak" if peak else ""
            print(f"  {name}: {med * 1e3:.3f} ms [{np.percentile(t, 10) * 1e3:.3f}-"
                  f"{np.percentile(t, 90) * 1e3:.3f}], {gf:.1f} GFLOP/s{pk}, "
                  f"{med / base:.3f}x the model's")


if __name__ == "__main__":
    main()
