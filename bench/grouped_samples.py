"""The grouped kernel's real code over a batch's x: where each sample's x comes from.

``bench/grouped_body.py`` runs the emitted code over one sample's x, which then stays in L2.
A model's call walks 16 samples, so each sample's first group reads its x from L3 (the conv
before wrote the batch). This times the code ``emit_specialized.spmm_row_chunks`` emits for
a 1x1 conv (``--cols`` input channels, ``--rows`` output channels, 30 rows a group, channel
rows 208 floats apart as at 14 x 14, ``--density``) on one core, in native loops over 16
samples' x (13 tiles of 16 positions each):

  one sample     every sample's walk reads sample 0's x and writes its out (x from L2: the
                 harness of grouped_body.py)
  16 samples     as the model's calls run: every group over a sample's tiles, then the next
                 group, sample by sample (x from L3 for each sample's first group)
  + prefetch     the same, the next sample's x prefetched (prefetcht1) in equal parts before
                 every call of the sample
  + next tile    the same, every x load followed by a prefetcht0 of the line after it (the
                 next tile's)
  tiles outer    every group over a tile before the next tile (emit.A_GRR < 0)
  + packed       tiles outer with x packed by tile (a tile's channel lines contiguous)

GFLOP/s of the layer's sparse FLOPs; medians of ``--rounds`` alternating rounds.

Usage: .venv/bin/python bench/grouped_samples.py [--cols 1024] [--rows 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from llvmlite import ir

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm.emit import I32, I64, KernelSpec, Pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grouped_body import aligned, counted, driver, emitted, load_driver, random_layer  # noqa: E402

LANES, GROUP, SAMPLES, TILES, XRS = 16, 30, 16, 13, 208
I8P = ir.IntType(8).as_pointer()
X_LOAD = re.compile(r"^vmovups zmm\d+, zmmword ptr \[(\w+)(?: ([+-]) (\d+))?\]$")


def next_tile(lines: list[str]) -> list[str]:
    """A prefetcht0 of the next tile's line (64 bytes on) after every x load."""
    out = []
    for ln in lines:
        out.append(ln)
        m = X_LOAD.match(ln)
        if m:
            d = int(m.group(3) or 0) * (-1 if m.group(2) == "-" else 1) + 64
            out.append(f"prefetcht0 byte ptr [{m.group(1)} {'+' if d >= 0 else '-'} {abs(d)}]")
    return out


def build(pattern: Pattern, cols: int, mode: str, xrs: int = XRS, edit=None):
    """``drv(data, x, out, bias, ors, reps)`` for one variant (see the module doc)."""
    rows = len(pattern.indptr) - 1
    spec = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=16,
                      pattern_hash="samples", xrs=xrs, span=LANES * TILES, group=GROUP)
    mod, chunks = emitted("grouped_samples", spec, pattern, edit)
    prefetch = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P, I32, I32, I32]),
                           "llvm.prefetch.p0")
    b, (data, x, out, bias, ors, reps) = driver(mod)
    xns, ons = cols * XRS, rows * XRS
    per_call = -(-(xns // LANES) // (len(chunks) * TILES))  # lines of the next sample

    def sample(s):
        s_ = I64(0) if mode == "one" else s
        xs, os_ = b.gep(x, [b.mul(s_, I64(xns))]), b.gep(out, [b.mul(s_, I64(ons))])
        nx = b.gep(x, [b.mul(b.urem(b.add(s, I64(1)), I64(SAMPLES)), I64(xns))])
        step = cols * LANES if xrs == LANES else LANES  # (packed: a tile's lines together)

        def run(fn, t):
            xt, ot = b.gep(xs, [b.mul(t, I64(step))]), b.gep(os_, [b.mul(t, I64(LANES))])
            b.call(fn, [data, xt, ot, bias, I64(xrs), ors])

        if mode == "outer":
            counted(b, I64(TILES), lambda t: [run(fn, t) for fn in chunks])
            return
        for ci, fn in enumerate(chunks):
            def tile(t, ci=ci, fn=fn):
                if mode == "prefetch":
                    first = b.mul(b.add(I64(ci * TILES), t), I64(per_call * LANES))
                    for j in range(per_call):
                        line = b.gep(nx, [b.add(first, I64(j * LANES))])
                        b.call(prefetch, [b.bitcast(line, I8P), I32(0), I32(2), I32(1)])
                run(fn, t)
            counted(b, I64(TILES), tile)

    counted(b, reps, lambda _: counted(b, I64(SAMPLES), sample))
    return load_driver(mod, b, opt=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    if jit.host().vector_width != LANES:
        sys.exit("the grouped kernel is AVX-512 assembly: this CPU has no AVX-512")
    pattern, nnz, data, bias = random_layer(np.random.default_rng(0), a.rows, a.cols,
                                            a.density)
    x = aligned(SAMPLES * a.cols * XRS + 64)
    out = aligned(SAMPLES * a.rows * XRS + 64)
    variants = {
        "one sample": build(pattern, a.cols, "one"),
        "16 samples": build(pattern, a.cols, "all"),
        "+ prefetch": build(pattern, a.cols, "prefetch"),
        "+ next tile": build(pattern, a.cols, "all", edit=next_tile),
        "tiles outer": build(pattern, a.cols, "outer"),
        "+ packed": build(pattern, a.cols, "outer", xrs=LANES),
    }
    flops = 2 * nnz * LANES * TILES * SAMPLES
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn(data.ctypes.data, x.ctypes.data, out.ctypes.data, bias.ctypes.data, XRS, 1)
            rates[name].append(flops / (time.perf_counter() - t) / 1e9)
    print(machine_line())
    print(f"grouped kernel, 1x1 conv {a.cols} -> {a.rows} channels, {a.density:.0%} dense, "
          f"{SAMPLES} samples of {TILES} tiles (x {a.cols * XRS * 4 / 1e6:.2f} MB a sample), "
          f"one core, medians of {a.rounds} rounds")
    for name, r in rates.items():
        print(f"  {name:12s} {np.median(r):6.1f} GFLOP/s  (range {min(r):.1f}-{max(r):.1f})")


if __name__ == "__main__":
    main()
