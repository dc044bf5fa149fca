"""The grouped sparse kernel's real code on one core: what bounds it, x or the code.

``bench/grouped_ceiling.py`` times a synthetic body in the kernel's form; this one times the
code the compiler emits (``emit_specialized.spmm_row_chunks``, 30 rows a group, a 1x1 conv's
columns: channel rows ``--xrs`` floats apart, 208 as a 14 x 14 map's padded planes) for a
random pattern at ``--density``, called from a native loop over ``--tiles`` tiles of 16
positions (a sample), every group over all tiles before the next, as the model's calls run.
Variants, built from the same pattern:

  as emitted   x from L2: each column's line is new to L1 in every tile's walk
  x one line   every x load rewritten to one address: the same code and FMAs, x always in
               L1 (what the code and the values cost alone)
  x packed     x in tiles, each tile's channel rows one line apart (``xrs`` 16): a tile's
               lines in a few pages instead of one page per ~5 channels (the difference to
               "as emitted" is the TLB's share)

per column count in ``--cols`` (64 .. 4608: a 1x1 conv's input channels up to a 3x3 conv's
9 x 512). One thread; GFLOP/s in the layer's sparse FLOPs and the fraction of this core's
FMA peak (grouped_ceiling's register-only body, its best round); medians of alternating
rounds.

Usage: .venv/bin/python bench/grouped_body.py [--cols 256,512,1024,2048,4608] [--rounds 8]
"""

from __future__ import annotations

import argparse
import ctypes
import re
import sys
import time
from pathlib import Path

import numpy as np
from llvmlite import ir

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm.emit import F32, I64, KernelSpec, Pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grouped_ceiling as GC  # noqa: E402  (bench/grouped_ceiling.py: the FMA-peak body)

GROUP = 30
LANES = 16
X_LOAD = re.compile(r"^vmovups zmm\d+, zmmword ptr \[.*\]$")


def one_line(lines: list[str]) -> list[str]:
    """Every x load (the body's only vector loads) reading x's first line."""
    return [re.sub(r"\[.*\]", "[rsi]", ln) if X_LOAD.match(ln) else ln for ln in lines]


def emitted(name: str, spec: KernelSpec, pattern: Pattern, edit=None):
    """(module, full-tile chunk functions) of the grouped code the compiler emits for
    ``pattern``; ``edit`` rewrites its assembly lines first."""
    mod = ir.Module(name)
    chunks = [full for full, _ in ES.spmm_row_chunks(mod, "k", spec, pattern)]
    if edit is not None:
        asm = mod.__dict__["sparsecc_asm"]
        asm[:] = edit(asm)
    return mod, chunks


def driver(mod: ir.Module):
    """A native entry ``drv(data, x, out, bias, ors, reps)`` in ``mod``: (its builder, its
    arguments) to emit the loops into."""
    fp = F32.as_pointer()
    drv = ir.Function(mod, ir.FunctionType(ir.VoidType(), [fp] * 4 + [I64, I64]), "drv")
    return ir.IRBuilder(drv.append_basic_block("entry")), drv.args


def counted(b: ir.IRBuilder, n, body) -> None:
    """``for i in range(n): body(i)`` at ``b`` (n > 0, an i64 value)."""
    fn, pre = b.block.parent, b.block
    head, done = fn.append_basic_block(), fn.append_basic_block()
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(I64(0), pre)
    body(i)
    nxt = b.add(i, I64(1))
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, n), head, done)
    b.position_at_end(done)


def load_driver(mod: ir.Module, b: ir.IRBuilder, opt: int = 0):
    """Close the driver ``b`` emits into, compile ``mod`` and return ``drv`` callable."""
    b.ret_void()
    addr = jit.load_object(jit.compile_ir(ES.module_text(mod), opt=opt), ["drv"])["drv"]
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_int64, ctypes.c_int64)(addr)


def build(pattern: Pattern, xrs: int, tiles: int, x_step: int, edit=None):
    """The chunk functions of ``pattern`` and a driver ``drv(data, x, out, bias, ors,
    reps)``: reps x (every chunk over ``tiles`` tiles; tile t's x at x + t * x_step floats,
    its out at out + 16 t, out's rows ``ors`` floats apart)."""
    spec = KernelSpec("spmm", LANES, tile=1, act="relu", has_bias=True, idx_bits=16,
                      pattern_hash="body", xrs=xrs, span=LANES * tiles, group=GROUP)
    mod, chunks = emitted("grouped_body", spec, pattern, edit)
    b, (data, x, out, bias, ors, reps) = driver(mod)

    def tiles_of(fn):
        def tile(t):
            xt, ot = b.gep(x, [b.mul(t, I64(x_step))]), b.gep(out, [b.mul(t, I64(LANES))])
            b.call(fn, [data, xt, ot, bias, I64(xrs), ors])
        counted(b, I64(tiles), tile)

    counted(b, reps, lambda _: [tiles_of(fn) for fn in chunks])
    return load_driver(mod, b)


def random_layer(rng, rows: int, cols: int, density: float):
    """(pattern, nonzeros, values, bias) of a random ``density`` dense rows x cols weight:
    the values 0.01 (with 64 floats of slack after them), the bias zeros."""
    mask = rng.random((rows, cols)) < density
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    nnz = int(indptr[-1])
    return (Pattern(indptr, np.nonzero(mask)[1].astype(np.int32)), nnz,
            np.full(nnz + 64, 0.01, np.float32), np.zeros(rows, np.float32))


def print_rates(rates: dict[str, list[float]], base: str, width: int) -> None:
    """Each variant's median GFLOP/s over its rounds, their range, and the median's ratio to
    variant ``base``'s (names padded to ``width``)."""
    ref = np.median(rates[base])
    for name, r in rates.items():
        print(f"  {name:{width}s} {np.median(r):6.1f} GFLOP/s  (range {min(r):.1f}-{max(r):.1f}; "
              f"{np.median(r) / ref:.2f}x {base})")


def aligned(n: int) -> np.ndarray:
    """n float32 ones starting on a cache line."""
    raw = np.ones(n + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", default="64,256,512,1024,2048,4608")
    ap.add_argument("--rows", type=int, default=GROUP * 4)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--xrs", type=int, default=208, help="floats from one channel row to the next")
    ap.add_argument("--tiles", type=int, default=13, help="tiles of 16 positions (13: 14 x 14)")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    if a.xrs < LANES * a.tiles:
        ap.error("--xrs must hold --tiles tiles of 16 floats")
    rng = np.random.default_rng(0)
    peak_fn = GC.build(GC.body(3000, 3, 64, LANES, False, False))
    vals = np.ones(1024, np.float32)
    # (name, x row stride, x tile step (None: the columns' span), edit)
    variants = [("as emitted", a.xrs, LANES, None), ("x one line", a.xrs, LANES, one_line),
                ("x packed", LANES, None, None)]
    cases = []  # (cols, variant, fn, x, out, reps, flops)
    for cols in (int(c) for c in a.cols.split(",")):
        pattern, nnz, data, bias = random_layer(rng, a.rows, cols, a.density)
        reps = max(1, 4_000_000 // max(nnz * a.tiles, 1))
        for name, xrs, step, edit in variants:
            step = cols * LANES if step is None else step
            fn = build(pattern, xrs, a.tiles, step, edit)
            x = aligned(max(cols * xrs, step * a.tiles) + 64)
            out = aligned(a.rows * a.xrs + 64)
            cases.append((cols, name, fn, (data, x, out, bias), reps,
                          2 * nnz * LANES * a.tiles * reps))
    peak_flops = 2 * LANES * 3000 * 3 * 500
    rates: dict[tuple[int, str], list[float]] = {(c[0], c[1]): [] for c in cases}
    peaks = []
    for _ in range(a.rounds):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            peak_fn(vals.ctypes.data + 512, vals.ctypes.data, 500)
            best = min(best, time.perf_counter() - t)
        peaks.append(peak_flops / best / 1e9)
        for cols, name, fn, (data, x, out, bias), reps, flops in cases:
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                fn(data.ctypes.data, x.ctypes.data, out.ctypes.data, bias.ctypes.data, a.xrs,
                   reps)
                best = min(best, time.perf_counter() - t)
            rates[(cols, name)].append(flops / best / 1e9)
    peak = max(peaks)  # (the register-only body's best round: the core's FMA peak)
    print(machine_line())
    print(f"grouped kernel as emitted: {a.rows} rows in groups of {GROUP}, {a.density:.0%} "
          f"dense, {a.tiles} tiles of 16, x rows {a.xrs} floats apart; 1 thread, medians "
          f"of {a.rounds} rounds; FMA peak {peak:.1f} GFLOP/s")
    print(f"{'columns':>8s} " + " ".join(f"{n:>20s}" for n, *_ in variants))
    for cols in dict.fromkeys(c[0] for c in cases):
        cells = []
        for name, *_ in variants:
            med = float(np.median(rates[(cols, name)]))
            cells.append(f"{med:7.1f} ({med / peak:4.0%})".rjust(20))
        print(f"{cols:8d} " + " ".join(cells))


if __name__ == "__main__":
    main()
