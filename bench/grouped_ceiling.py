"""The grouped sparse kernel's ceiling on this core: its instruction mix alone, x from L1 / L2
/ L3, on 4 KB and 2 MB pages.

A synthetic body in the grouped kernel's form (emit_specialized._group_asm): per column one
64-byte x load into a register, then ``--fmas`` FMAs into 30 accumulators, each with its value
broadcast from memory (``vfmadd231ps zmm, zmm, [mem]{1to16}``), ``--cols`` columns of
straight-line code (3000 x 3 FMAs is ~100 KB: a real group's size), looped. Variants:

  fma only      the FMAs with register operands, no loads: the core's FMA peak
  x in L1       x loads from a 4 KB block (the FMAs broadcast from memory, as the kernel)
  x in L2 / L3  column c reads x at c * 37 lines (a channel stride) modulo 512 KB / 4 MB,
                on 4 KB pages and on 2 MB ones (madvise; granted only where THP allows it)
  3x3 taps      x in L2, column c shifted by c % 3 floats (a 3x3 conv's dx: two loads of
                three cross a cache line); all shifted by 1 (every load crosses); the same
                taps as two aligned loads a triple and a valignd a tap (29 accumulators)

One thread. Prints GFLOP/s and the fraction of the measured FMA peak; medians of alternating
rounds.

Usage: .venv/bin/python bench/grouped_ceiling.py [--cols 3000] [--fmas 3] [--rounds 8]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import time

import numpy as np
from llvmlite import ir

from sparsecc.benchmarks.suite import machine_line
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit

LINE = 16  # floats
MADV_HUGEPAGE = 14


def body(cols: int, fmas: int, span: int, stride: int, x_load: bool, bcast: bool,
         shifts: tuple[int, ...] = (0,), align: bool = False, seed: int = 0) -> list[str]:
    """``shifts``: floats added to column c's x offset, cycling (a 3x3 conv's dx taps: 0, 1,
    2, two of three loads crossing a cache line). ``align``: columns in triples, two aligned
    loads a triple and each column's vector shifted out of them (``valignd``; 29 rows)."""
    rng = np.random.default_rng(seed)
    out = [".p2align 4", "f:", "1:"]
    q = 0
    for c in range(cols):
        xr, rows = 30, 30
        if x_load and align:  # two aligned loads a tap triple, each tap shifted out of them
            base = (c // 3 * 3 * stride) % span
            if c % 3 == 0:
                out.append(f"vmovaps zmm30, zmmword ptr [rsi + {base * 4}]")
                out.append(f"vmovaps zmm31, zmmword ptr [rsi + {base * 4 + 64}]")
            out.append(f"valignd zmm29, zmm31, zmm30, {7 + c % 3}")
            xr, rows = 29, 29
        elif x_load:
            off = (c * stride) % span + shifts[c % len(shifts)]
            out.append(f"vmovups zmm30, zmmword ptr [rsi + {off * 4}]")
        for r in rng.choice(rows, fmas, replace=False):
            if bcast:
                out.append(f"vfmadd231ps zmm{r}, zmm{xr}, dword ptr [rdi + "
                           f"{(q % 120) * 4 - 256}]{{1to16}}")
            else:
                out.append(f"vfmadd231ps zmm{r}, zmm{xr}, zmm31")
            q += 1
    return out + ["dec rdx", "jnz 1b", "vzeroupper", "ret"]


def build(lines: list[str]):
    mod = ir.Module("ceiling")
    ir.Function(mod, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] * 2 +
                                     [ir.IntType(64)]), "f")
    mod.__dict__["sparsecc_asm"] = lines
    addr = jit.load_object(jit.compile_ir(ES.module_text(mod)), ["f"])["f"]
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(addr)


_KEEP: list[mmap.mmap] = []


def floats(n: int, huge: bool) -> np.ndarray:
    """n floats (ones) on a 2 MB boundary; with ``huge`` the range advised for 2 MB pages."""
    step = 2 << 20
    size = -(-(n * 4) // step) * step + step
    buf = mmap.mmap(-1, size)
    _KEEP.append(buf)
    raw = np.frombuffer(buf, np.uint8)
    off = (-raw.ctypes.data) % step
    if huge:
        libc = ctypes.CDLL(None)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise(raw.ctypes.data + off, size - step, MADV_HUGEPAGE)
    a = raw[off:off + n * 4].view(np.float32)
    a[:] = 1.0
    return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, default=3000)
    ap.add_argument("--fmas", type=int, default=3, help="FMAs a column (rows sharing it)")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    stride = 37 * LINE
    l2, l3 = (512 << 10) // 4, (4 << 20) // 4
    cases = [("fma only", False, False, 64, False, (0,)),
             ("x in L1", True, True, 64 * LINE, False, (0,)),
             ("x in L2, 4 KB pages", True, True, l2, False, (0,)),
             ("x in L2, 2 MB pages", True, True, l2, True, (0,)),
             ("x in L3, 4 KB pages", True, True, l3, False, (0,)),
             ("x in L3, 2 MB pages", True, True, l3, True, (0,)),
             ("x in L2, 3x3 taps", True, True, l2, False, (0, 1, 2)),
             ("x in L2, all crossing", True, True, l2, False, (1,)),
             ("x in L2, 3x3 via valignd", True, True, l2, False, None)]
    vals = np.ones(1024, np.float32)
    iters = max(2, 1_500_000 // (a.cols * a.fmas))
    flops = 2 * 16 * a.cols * a.fmas * iters
    runs = []
    for name, load, bcast, span, huge, shifts in cases:
        f = build(body(a.cols, a.fmas, span, stride if span > 64 * LINE else LINE, load, bcast,
                       shifts or (0,), align=shifts is None))
        runs.append((name, f, floats(span + 64, huge)))
    rates: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(a.rounds):
        for name, f, x in runs:
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                f(vals.ctypes.data + 512, x.ctypes.data, iters)
                best = min(best, time.perf_counter() - t)
            rates[name].append(flops / best / 1e9)
    print(machine_line())
    print(f"{a.cols} columns x {a.fmas} FMAs (~{a.cols * (a.fmas * 8 + 7) // 1024} KB of code), "
          f"1 thread, medians of {a.rounds} rounds")
    peak = float(np.median(rates["fma only"]))
    for name, r in rates.items():
        med = float(np.median(r))
        print(f"  {name:22s} {med:6.1f} GFLOP/s  {med / peak:5.0%} of the FMA peak "
              f"[{min(r):.1f}-{max(r):.1f}]")


if __name__ == "__main__":
    main()
