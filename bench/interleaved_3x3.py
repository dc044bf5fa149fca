"""A 7 x 7 3x3 conv over 16 samples: per-sample padded planes against batch-interleaved ones.

The whole-batch tail runs ResNet-50's layer4 3x3 convs (512 -> 512 at 7 x 7) over per-sample
padded planes (9 x 9, plane stride 96 floats): a sample's 7 wide rows of 9 are 4 vectors of
positions for 49 outputs, and the taps at dx = 1, 2 need the aligned pair and a valignd
(xalign). Interleaving the batch into the positions instead, a vector the 16 samples at one
position and a channel's plane (9 x 9, 16), makes it 49 vectors for 16 samples (3.06 a
sample: 1.31x fewer FMAs) and every tap one aligned load, but every tap a line of its own
(512 x 9 lines a tile against ~2048). This times the grouped kernel's emitted code (one
core, ``--density`` dense, the same pattern) four ways before building that layout:

  plain         every group over the 16 samples' 4 tiles (the tail's one block)
  plain, samples outer   a sample's x (197 KB) in L2 while every group runs over it
  interleaved   every group over the 49 tiles of the interleaved block
  interleaved, rows outer   an output row's 3 input rows (885 KB) in L2 over the groups

GFLOP/s count the useful FMAs only (2 x nonzeros x 49 x 16 a call); medians of ``--rounds``
alternating rounds. Measured 2026-12-03 (Zen 5, 10 %, six runs): plain 106-124 GFLOP/s,
interleaved 111-125 (0.96-1.15x plain, the 1.15x in a run of 2 rounds), rows outer
110-124, plain samples outer 95-101. Most of the 1.31x in lanes is spent on x's locality,
so the layout was not built for a few percent at best.

Usage: .venv/bin/python bench/interleaved_3x3.py [--channels 512] [--density 0.1] [--rounds 7]
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

from grouped_body import aligned, counted, driver, emitted, load_driver, print_rates  # noqa: E402

S, PS = 16, 96  # samples; a per-sample plane's stride (9 x 9 rounded up to 16 floats)
MODES = {"plain": "plain", "plain, samples outer": "plain_so",
         "interleaved": "inter", "interleaved, rows outer": "inter_ro"}


def layer(rng, c: int, density: float):
    """(rows, channels, dy, dx of each nonzero, row pointers) of a random 3x3 c -> c weight."""
    mask = rng.random((c, c * 9)) < density
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    rows, cols = np.nonzero(mask)
    return rows, cols // 9, cols % 9 // 3, cols % 3, indptr


def build(c: int, w, mode: str):
    """``drv(data, x, out, bias, ors, reps)`` for one layout and loop order."""
    rows, ch, dy, dx, indptr = w
    plain = mode.startswith("plain")
    if plain:  # offsets in a sample's planes; tiles of 16 wide-row positions
        idx = ch * PS + dy * 9 + dx
        spec = KernelSpec("spmm", 16, tile=1, act="relu", has_bias=True, idx_bits=32,
                          pattern_hash=f"i3{mode}", xrs=1, span=64, group=29, xalign=True)
    else:  # offsets in the interleaved planes: a position is 16 floats
        idx = (ch * 81 + dy * 9 + dx) * 16
        spec = KernelSpec("spmm", 16, tile=1, act="relu", has_bias=True, idx_bits=32,
                          pattern_hash=f"i3{mode}", xrs=1, span=784, group=30)
    order = np.lexsort((idx, rows))
    mod, chunks = emitted(f"interleaved_{mode}", spec,
                          Pattern(indptr, idx[order].astype(np.int32)))
    b, (data, x, out, bias, ors, reps) = driver(mod)

    def run(fn, xo, oo):
        b.call(fn, [data, b.gep(x, [xo]), b.gep(out, [oo]), bias, I64(1), ors])

    def sample_tile(fn, s, t):  # a sample's tile t of its 4 (wide rows of 9)
        run(fn, b.add(b.mul(s, I64(c * PS)), b.mul(t, I64(16))),
            b.add(b.mul(s, I64(c * 64)), b.mul(t, I64(16))))

    def position(fn, y, xx):  # output (y, xx) of the interleaved block
        run(fn, b.mul(b.add(b.mul(y, I64(9)), xx), I64(16)),
            b.mul(b.add(b.mul(y, I64(7)), xx), I64(16)))

    def call(_):
        if mode == "plain":
            for fn in chunks:
                counted(b, I64(S), lambda s, fn=fn: counted(
                    b, I64(4), lambda t: sample_tile(fn, s, t)))
        elif mode == "plain_so":
            counted(b, I64(S), lambda s: [counted(b, I64(4), lambda t, fn=fn: sample_tile(
                fn, s, t)) for fn in chunks])
        elif mode == "inter":
            for fn in chunks:
                counted(b, I64(7), lambda y, fn=fn: counted(
                    b, I64(7), lambda xx: position(fn, y, xx)))
        else:
            counted(b, I64(7), lambda y: [counted(b, I64(7), lambda xx, fn=fn: position(
                fn, y, xx)) for fn in chunks])

    counted(b, reps, call)
    return load_driver(mod, b, opt=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    if jit.host().vector_width != 16:
        sys.exit("the grouped kernel with xalign is AVX-512 assembly: this CPU has no AVX-512")
    c = a.channels
    w = layer(np.random.default_rng(0), c, a.density)
    nnz = len(w[0])
    data = np.full(nnz + 64, 0.01, np.float32)
    bias = np.zeros(c, np.float32)
    cases = {}
    for name, mode in MODES.items():
        plain = mode.startswith("plain")
        cases[name] = (build(c, w, mode),
                       aligned(S * c * PS + 256) if plain else aligned(c * 81 * 16 + 256),
                       aligned(S * c * 64 + 64) if plain else aligned(c * 784 + 64),
                       64 if plain else 784)
    reps = 2
    flops = 2 * nnz * 49 * S * reps
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.rounds):
        for name, (fn, x, out, ors) in cases.items():
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                fn(data.ctypes.data, x.ctypes.data, out.ctypes.data, bias.ctypes.data, ors,
                   reps)
                best = min(best, time.perf_counter() - t)
            rates[name].append(flops / best / 1e9)
    print(machine_line())
    print(f"grouped kernel, 3x3 conv {c} -> {c} channels at 7 x 7, {a.density:.0%} dense, "
          f"{S} samples, one core, useful FMAs only, medians of {a.rounds} rounds")
    print_rates(rates, "plain", 26)


if __name__ == "__main__":
    main()
