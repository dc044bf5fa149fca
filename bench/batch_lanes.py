"""Samples side by side in the vector lanes for small maps: a timing model against positions
in the lanes.

ResNet's layer4 maps are 7 x 7: a sample's 49 positions fill 49 of the 64 lanes of the
grouped kernel's four tiles. With the batch in the lanes (x laid out channel, position,
16 samples), every tile is one position of 16 samples: all lanes live, every x load aligned.
This times the grouped kernel's emitted code (``emit_specialized.spmm_row_chunks``) both ways
on one core for a 3x3 conv (``--channels`` in and out, ``--size`` maps, batch 16, 10 %
dense, a random pattern), in a native loop that runs every group over all tiles of all
samples before the next (x 2 MB either way):

  positions  x (sample, channel, rows planes: a zero row above and below, no padded
             columns), 64-float channel rows, 4 tiles a sample; a tap's x off a cache line
             through the aligned pair (xalign), 29 rows a group
  batch      x (channel, rows-planes position, 16 samples), one tile per output position;
             a tap reads one aligned line, 30 rows a group

Both leave out the edge masks (the taps that cross a row's left or right edge: per lane for
positions, per tile for batch) and so compute the wrong values at the edges: the FMAs and
the loads are those of the real kernels. GFLOP/s count the useful FMAs (49 positions).

Usage: .venv/bin/python bench/batch_lanes.py [--channels 512] [--size 7] [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm.emit import I64, KernelSpec, Pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grouped_body import aligned, counted, driver, emitted, load_driver  # noqa: E402

BATCH, LANES = 16, 16


def build(pattern: Pattern, spec: KernelSpec, tiles: int, samples: int, xns: int, ons: int):
    """``drv(data, x, out, bias, ors, reps)``: every chunk (group) over ``samples`` x
    ``tiles`` tiles (tile t of sample s at x + s * xns + 16 t floats, out likewise)."""
    mod, chunks = emitted("batch_lanes", spec, pattern)
    b, (data, x, out, bias, ors, reps) = driver(mod)

    def call(fn, s, t):
        xt = b.gep(x, [b.add(b.mul(s, I64(xns)), b.mul(t, I64(LANES)))])
        ot = b.gep(out, [b.add(b.mul(s, I64(ons)), b.mul(t, I64(LANES)))])
        b.call(fn, [data, xt, ot, bias, I64(spec.xrs), ors])

    def groups(_):
        for fn in chunks:
            counted(b, I64(samples), lambda s, fn=fn: counted(b, I64(tiles),
                                                             lambda t: call(fn, s, t)))

    counted(b, reps, groups)
    return load_driver(mod, b, opt=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--size", type=int, default=7)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    if jit.host().vector_width != LANES:
        sys.exit("the grouped kernel is AVX-512 assembly: this CPU has no AVX-512")
    c, h = a.channels, a.size
    w, hw = h, h * h
    rows_planes = (h + 2) * w  # positions of a channel's rows plane
    rng = np.random.default_rng(0)
    mask = rng.random((c, c * 9)) < a.density  # columns (channel, tap)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    col = np.nonzero(mask)[1]
    ch, dy, dx = col // 9, col % 9 // 3 - 1, col % 3 - 1
    nnz = int(indptr[-1])
    data = np.full(nnz + 64, 0.01, np.float32)
    bias = np.zeros(c, np.float32)
    tiles = -(-hw // LANES)
    cs = -(-rows_planes // LANES) * LANES
    pos = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=32,
                     pattern_hash="positions", xrs=1, span=tiles * LANES, group=29,
                     xalign=True)
    bat = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=32,
                     pattern_hash="batch", xrs=1, span=hw * LANES, group=30)
    ons = c * tiles * LANES
    cases = {
        "positions": (build(Pattern(indptr, (ch * cs + (1 + dy) * w + dx).astype(np.int32)),
                            pos, tiles, BATCH, c * cs, ons),
                      aligned(BATCH * c * cs + 4096), aligned(BATCH * ons + 4096),
                      tiles * LANES, LANES),
        "batch": (build(Pattern(indptr, (ch * rows_planes * LANES + ((1 + dy) * w + dx)
                                         * LANES).astype(np.int32)), bat, hw, 1, 0, 0),
                  aligned(c * rows_planes * LANES + 4096), aligned(c * hw * LANES + 4096),
                  hw * LANES, w * LANES),
    }
    useful = 2 * nnz * hw * BATCH
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.rounds):
        for name, (fn, x, out, ors, skip) in cases.items():
            t = time.perf_counter()
            fn(data.ctypes.data, x.ctypes.data + 4 * skip, out.ctypes.data, bias.ctypes.data,
               ors, 1)
            times[name].append(time.perf_counter() - t)
    print(machine_line())
    print(f"3x3 conv {c} -> {c} channels on {h} x {w} maps, batch {BATCH}, {a.density:.0%} "
          f"dense ({nnz} nonzeros), one core, medians of {a.rounds} rounds")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"  {name:9s} lanes: {med * 1e3:7.2f} ms  {useful / med / 1e9:6.1f} GFLOP/s "
              f"(useful FMAs; fastest {min(ts) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
