"""The grouped kernel with its columns in blocks (KernelSpec.kcols): a 3x3 conv at 7 x 7 or
14 x 14, batch 16, the emitted code in native loops, one block order against another.

A 3x3 conv over 512 channels at 7 x 7 has 4608 columns: a 29-row group's code is ~140 KB
and walks ~100 KB of a tile's x, so both come from L2 for every tile. With the columns in
blocks of ``--channels`` input channels (all nine taps), each block's code is a twelfth or so
of that and its x a few lines a channel. Variants, over the same weights and x:

  blocks        samples in blocks whose x fits 1 MB, every group over a block's tiles
                before the next block (native.lower.group_block's choice; no column blocks)
  cb C, T S     column blocks of C channels; samples in sets of S, and for each set: every
                block in turn, each block's groups in turn, each group over the set's tiles
                (the model's order: emit._kblocked_items, one item a set)

GFLOP/s count the FMAs of the wide rows (the junk columns included); with ``--threads 2``
a second thread runs the same call on its own copies of x and out (the two vCPUs' shared
resources, as in the model). Medians of ``--rounds`` alternating rounds; every variant's
output is checked against the first's, bit for bit (the FMAs run in the same order).

Usage: .venv/bin/python bench/column_blocks.py [--maps 7|14] [--channels 64,128]
       [--sets 4,16] [--threads 1|2] [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from llvmlite import ir

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm.emit import I64, KernelSpec, Pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grouped_body import aligned, counted, driver, load_driver, print_rates  # noqa: E402

GROUP, LANES, SAMPLES = 29, 16, 16
# (channels, plane stride, padded width, wide-row floats) of the model's padded planes
MAPS = {7: (512, 96, 9, 64), 14: (256, 272, 16, 224)}


def layer(rng, cin: int, cout: int, ps: int, wq: int, density: float):
    """(pattern, dense values by (row, column)) of a random 3x3 conv over padded planes:
    column offsets channel * ps + dy * wq + dx, ascending."""
    taps = np.array([dy * wq + dx for dy in range(3) for dx in range(3)])
    mask = rng.random((cout, cin * 9)) < density
    w = (rng.standard_normal((cout, cin * 9)) * mask).astype(np.float32)
    rows, cols = np.nonzero(mask)
    idx = ((cols // 9) * ps + taps[cols % 9]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    return Pattern(indptr, idx), w[rows, cols]


def build(pattern: Pattern, vals: np.ndarray, spec: KernelSpec, xns: int, ons: int,
          tiles: int, sets: int):
    """``drv(data, x, out, bias, ors, reps)`` and its values (in the kernel's order)."""
    mod = ir.Module(spec.pattern_hash)
    chunks = [f for f, _ in ES.spmm_row_chunks(mod, "k", spec, pattern)]
    data = np.concatenate([vals[ES.group_order(pattern.indptr, pattern.indices, GROUP,
                                               spec.kcols)], np.zeros(64, np.float32)])
    b, (d, x, out, bias, ors, reps) = driver(mod)

    def run(fn, s, t):
        xt = b.gep(x, [b.add(b.mul(s, I64(xns)), b.mul(t, I64(LANES)))])
        ot = b.gep(out, [b.add(b.mul(s, I64(ons)), b.mul(t, I64(LANES)))])
        b.call(fn, [d, xt, ot, bias, I64(1), ors])

    def over(fn, s0, n):
        counted(b, I64(n), lambda s: counted(b, I64(tiles),
                                             lambda t: run(fn, b.add(s, I64(s0)), t)))

    def call(_):
        if not spec.kcols:  # (blocks of samples whose x fits 1 MB)
            sb = max(1, (1 << 20) // (xns * 4))
            for s0 in range(0, SAMPLES, sb):
                for fn in chunks:
                    over(fn, s0, min(sb, SAMPLES - s0))
            return
        for s0 in range(0, SAMPLES, sets):
            for fn in chunks:  # (block-major: every group of a block before the next)
                over(fn, s0, min(sets, SAMPLES - s0))

    counted(b, reps, call)
    return load_driver(mod, b, opt=2), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=7, choices=sorted(MAPS))
    ap.add_argument("--channels", default="64,128")
    ap.add_argument("--sets", default="4,16")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1, choices=(1, 2))
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    if jit.host().vector_width != LANES:
        sys.exit("the grouped kernel is AVX-512 assembly: this CPU has no AVX-512")
    cin, ps, wq, span = MAPS[a.maps]
    rng = np.random.default_rng(0)
    pattern, vals = layer(rng, cin, cin, ps, wq, a.density)
    tiles = span // LANES
    xns, ons = cin * ps, cin * span
    base = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=32,
                      pattern_hash="cb", xrs=1, span=span, group=GROUP, xalign=True)
    variants = {"blocks": build(pattern, vals, base, xns, ons, tiles, 0)}
    for c in (int(v) for v in a.channels.split(",")):
        for s in (int(v) for v in a.sets.split(",")):
            spec = replace(base, pattern_hash=f"cb{c}s{s}", kcols=c * ps)
            variants[f"cb {c}, T {s}"] = build(pattern, vals, spec, xns, ons, tiles, s)
    bias = rng.standard_normal(cin).astype(np.float32)
    xs = [aligned(SAMPLES * xns + 4096) for _ in range(a.threads)]
    for x in xs:
        x[:] = rng.standard_normal(len(x)).astype(np.float32)
    outs = {k: [aligned(SAMPLES * ons + 64) for _ in range(a.threads)] for k in variants}
    datas = {k: [d.copy() for _ in range(a.threads)] for k, (_, d) in variants.items()}

    def once(k, i):
        variants[k][0](datas[k][i].ctypes.data, xs[i].ctypes.data, outs[k][i].ctypes.data,
                       bias.ctypes.data, span, 1)

    for k in variants:
        once(k, 0)
        if not np.array_equal(outs[k][0], outs["blocks"][0]):
            sys.exit(f"{k}: the output differs from the blocks order's")
    flops = 2 * len(vals) * span * SAMPLES * a.threads
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k in variants:
            other = [threading.Thread(target=once, args=(k, i)) for i in range(1, a.threads)]
            t = time.perf_counter()
            for th in other:
                th.start()
            once(k, 0)
            for th in other:
                th.join()
            rates[k].append(flops / (time.perf_counter() - t) / 1e9)
    print(machine_line())
    print(f"grouped kernel, 3x3 conv {cin} -> {cin} channels at {a.maps} x {a.maps} (padded "
          f"planes), {a.density:.0%} dense, batch {SAMPLES}, {a.threads} thread(s), wide-row "
          f"FMAs, medians of {a.rounds} rounds")
    print_rates(rates, "blocks", 14)


if __name__ == "__main__":
    main()
