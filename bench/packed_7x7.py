"""A 1x1 conv on 7 x 7 maps at batch 16: NCHW against the batch packed into the positions.

ResNet-50's layer4 1x1 convs run in the whole-batch tail at 63-79 GFLOP/s against
DeepSparse's 96-105 (bench/peer_layers.py). In NCHW a sample's 49 positions take 4 vectors of
16 (64 lanes, channels 64 floats apart): 23 % of every FMA's lanes are waste. Packed, the 16
samples' positions of a channel are contiguous, (N / 16, C, 16 x 49): 784 floats a channel,
49 whole vectors, no waste. Before building that layout (every tail op, and the batch-1
path) this times the grouped kernel's own emitted code (30 rows a group, ``--density``
dense, one core) both ways, over the same weights:

  nchw, samples outer   each sample's 4 tiles, every group over them, sample by sample
  nchw, groups outer    every group over all 64 tiles of the batch (the tail's one block)
  nchw, blocks          samples in blocks whose x fits ~1 MB, every group over a block's
                        tiles before the next block (native.lower.group_block's choice)
  packed                every group over the 49 tiles of the packed batch
  packed, panels        the packed tiles in panels whose x fits ~1 MB (L2 holds it), every
                        group over a panel before the next panel
  packed, column blocks the columns in blocks of ``--kcols`` channels (native.lower.KBLOCK),
                        the tiles in panels whose x of one block fits ``--kx-bytes``: each
                        group's code for a block (6-20 KB) reused from L1 over a panel

Measured 2026-12-03 (Zen 5, L2 1 MB a core; 2048 -> 512): panels 73-100 GFLOP/s from run to
run, column blocks 52-91 over kcols 128-1024 and 16 KB-1 MB panels, never clearly ahead. So
a group's code streaming from L2 is not what holds these convs at ~30 % of the core's peak
(bench/grouped_ceiling.py: the same instruction mix reaches 75 % with x in L1, where its 4
loads for 3 FMAs bound it); the column-blocked packed convs were tried in the model too
(level, per op) and not kept.

GFLOP/s count the useful FMAs only (2 x nonzeros x 49 x 16 a call); medians of ``--rounds``
alternating rounds.

Usage: .venv/bin/python bench/packed_7x7.py [--cols 2048] [--rows 512] [--rounds 9]
         [--kcols 576] [--kx-bytes 262144]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm.emit import I64, KernelSpec, Pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grouped_body import aligned, counted, driver, emitted, load_driver, print_rates, random_layer  # noqa: E402

LANES, GROUP, SAMPLES, HW = 16, 30, 16, 49
NCHW_CS, NCHW_TILES = 64, 4  # a sample's channel: 49 floats rounded up to 64, 4 vectors
PACKED_CS, PACKED_TILES = SAMPLES * HW, SAMPLES * HW // LANES  # 784 floats, 49 vectors
PANEL_BYTES = 1 << 20


def build(pattern: Pattern, cols: int, mode: str, kcols: int = 576,
          kx_bytes: int = 256 << 10, range_groups: int = 8):
    """``drv(data, x, out, bias, ors, reps)`` for one layout and order (see the module
    doc)."""
    rows = len(pattern.indptr) - 1
    packed = mode.startswith("packed")
    tm = mode.endswith("_tm")  # x tile-major: a tile's channels 64 bytes apart
    mode = mode.removesuffix("_tm")
    cs = LANES if tm else PACKED_CS if packed else NCHW_CS
    tiles = PACKED_TILES if packed else NCHW_TILES
    kcols = kcols if mode == "packed_kblocks" else 0
    spec = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=16,
                      pattern_hash=f"p7{mode[0]}", xrs=cs, span=LANES * tiles, group=GROUP,
                      kcols=kcols)
    mod, chunks = emitted(f"packed_7x7_{mode}", spec, pattern)
    b, (data, x, out, bias, ors, reps) = driver(mod)
    xns, ons = cols * cs, rows * (PACKED_CS if packed else NCHW_CS)

    def run(fn, s, t):
        xt = b.gep(x, [b.add(b.mul(s, I64(xns)), b.mul(t, I64(cols * LANES if tm else LANES)))])
        ot = b.gep(out, [b.add(b.mul(s, I64(ons)), b.mul(t, I64(LANES)))])
        b.call(fn, [data, xt, ot, bias, I64(cs), ors])

    # (panels: tiles whose x, every channel's line, fits PANEL_BYTES)
    per = max(1, PANEL_BYTES // (cols * LANES * 4)) if mode == "packed_panels" else tiles

    def call(_):
        if kcols:  # panels whose x of a column block fits kx_bytes, the blocks in turn
            tp = max(1, kx_bytes // (kcols * LANES * 4))
            nk = ES.kblock_count(pattern.indices, kcols)
            ng = len(chunks) // nk
            for p0 in range(0, tiles, tp):
                n = min(tp, tiles - p0)
                for kb in range(nk):
                    for fn in chunks[kb * ng:(kb + 1) * ng]:
                        counted(b, I64(n), lambda t, fn=fn, p0=p0: run(fn, I64(0),
                                                                         b.add(t, I64(p0))))
        elif mode == "packed_ranges":  # tiles outer within ranges of range_groups groups
            for g0 in range(0, len(chunks), range_groups):
                def one_tile(t, g0=g0):
                    for fn in chunks[g0:g0 + range_groups]:
                        run(fn, I64(0), t)
                counted(b, I64(tiles), one_tile)
        elif packed:
            for p0 in range(0, tiles, per):
                n = min(per, tiles - p0)
                for fn in chunks:
                    counted(b, I64(n), lambda t, fn=fn, p0=p0: run(fn, I64(0),
                                                                     b.add(t, I64(p0))))
        elif mode == "samples":
            def sample(s):
                for fn in chunks:
                    counted(b, I64(tiles), lambda t, fn=fn: run(fn, s, t))
            counted(b, I64(SAMPLES), sample)
        else:  # (groups outer: one block of every sample)
            sb = max(1, PANEL_BYTES // (cols * cs * 4)) if mode == "blocks" else SAMPLES
            for s0 in range(0, SAMPLES, sb):
                n = min(sb, SAMPLES - s0)
                for fn in chunks:
                    counted(b, I64(n), lambda s, fn=fn, s0=s0: counted(
                        b, I64(tiles), lambda t: run(fn, b.add(s, I64(s0)), t)))

    counted(b, reps, call)
    return load_driver(mod, b, opt=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--kcols", type=int, default=576, help="channels a column block")
    ap.add_argument("--kx-bytes", type=int, default=256 << 10,
                    help="x of one column block a panel holds")
    ap.add_argument("--range-groups", type=int, default=8,
                    help="groups a range (packed, tiles outer in ranges)")
    a = ap.parse_args()
    if jit.host().vector_width != LANES:
        sys.exit("the grouped kernel is AVX-512 assembly: this CPU has no AVX-512")
    pattern, nnz, data, bias = random_layer(np.random.default_rng(0), a.rows, a.cols,
                                            a.density)
    size = max(SAMPLES * NCHW_CS, PACKED_CS)
    x = aligned(max(a.cols, a.rows) * size + 64)
    x[:] = 0.5
    out = aligned(a.rows * size + 64)
    variants = {name: (build(pattern, a.cols, mode, a.kcols, a.kx_bytes, a.range_groups), cs)
                for name, mode, cs in (
        ("nchw, samples outer", "samples", NCHW_CS), ("nchw, groups outer", "groups", NCHW_CS),
        ("nchw, blocks", "blocks", NCHW_CS),
        ("packed", "packed", PACKED_CS), ("packed, panels", "packed_panels", PACKED_CS),
        ("packed, column blocks", "packed_kblocks", PACKED_CS),
        ("packed, tiles outer in ranges", "packed_ranges", PACKED_CS),
        ("packed, x tile-major", "packed_tm", PACKED_CS),
        ("packed, x tile-major, ranges", "packed_ranges_tm", PACKED_CS))}
    flops = 2 * nnz * HW * SAMPLES
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, (fn, cs) in variants.items():
            t = time.perf_counter()
            fn(data.ctypes.data, x.ctypes.data, out.ctypes.data, bias.ctypes.data, cs, 1)
            rates[name].append(flops / (time.perf_counter() - t) / 1e9)
    print(machine_line())
    print(f"grouped kernel, 1x1 conv {a.cols} -> {a.rows} channels at 7 x 7, {a.density:.0%} "
          f"dense, batch {SAMPLES}, one core, useful FMAs only, medians of {a.rounds} rounds")
    print_rates(rates, "nchw, samples outer", 20)


if __name__ == "__main__":
    main()
