"""Compiled LLVM sparse kernels: spec (+ pattern) -> object code -> a callable address.

``build`` goes through the disk cache (``jit.compile_ir``); ``from_object`` links object code an
artifact carried, without LLVM's optimiser. Kernels are memoised per process by their key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sparsecc.codegen.llvm import driver, emit, emit_specialized, jit

_MEMO: dict[str, LlvmKernel] = {}
_MEMO_LOCK = threading.Lock()
_RECORD = threading.local()


@dataclass(frozen=True)
class LlvmKernel:
    spec: emit.KernelSpec
    addr: int
    obj: bytes

    @property
    def code_bytes(self) -> int:
        return len(self.obj)


def pattern_hash(indptr: np.ndarray, indices: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indptr, np.int64).tobytes())
    h.update(np.ascontiguousarray(indices, np.uint32).tobytes())
    return h.hexdigest()[:20]


def kernel_ir(spec: emit.KernelSpec, pattern: emit.Pattern | None = None,
              name: str = "kernel") -> str:
    """The kernel's module; its one exported function is ``name``."""
    mod = emit.new_module(spec.key)
    if spec.family in ("spmm", "bsr", "nm"):
        emit.emit_spmm(mod, name, spec, pattern)
    elif spec.family == "spmv":
        emit.emit_spmv(mod, name, spec, pattern)
    else:
        raise ValueError(f"unknown kernel family {spec.family!r}")
    return emit_specialized.module_text(mod)


def kernel_object(spec: emit.KernelSpec, pattern: emit.Pattern | None = None,
                  name: str = "kernel") -> bytes:
    """Object code of the kernel (via the disk cache); specialised kernels skip the IR
    optimiser (see jit.compile_ir)."""
    return jit.compile_ir(kernel_ir(spec, pattern, name), opt=0 if spec.pattern_hash else 3)


def build(spec: emit.KernelSpec, pattern: emit.Pattern | None = None) -> LlvmKernel:
    """Compile (or fetch from the caches) the kernel for ``spec``."""
    with _MEMO_LOCK:
        hit = _MEMO.get(spec.key)
    if hit is None:
        hit = from_object(spec, kernel_object(spec, pattern))
    rec = getattr(_RECORD, "kernels", None)
    if rec is not None:
        rec[spec.key] = hit
    return hit


@contextmanager
def recording():
    """Collect {key: kernel} of every kernel built (or reused) in this thread meanwhile."""
    prev = getattr(_RECORD, "kernels", None)
    _RECORD.kernels = out = {}
    try:
        yield out
    finally:
        _RECORD.kernels = prev


def spec_from_dict(d: dict) -> emit.KernelSpec:
    """A KernelSpec from its saved fields (an artifact's native-code index); strict types."""
    fields = {f.name: f.type for f in dataclasses.fields(emit.KernelSpec)}
    # indexes written before a field existed: its default (the kernel the key names did not
    # have it either)
    d = {"residual": False, "panels": False, "kcols": 0, "edge_h": 0, "dual_out": False,
         "wrap": (0, 0), "xts": 0, "ots": 0, "rts": 0, **d}
    if set(d) != set(fields):
        raise ValueError(f"kernel spec fields {sorted(d)} != {sorted(fields)}")
    vals = dict(d)
    vals["block"] = tuple(int(v) for v in d["block"])
    for name in ("vw", "tile", "idx_bits", "xrs", "span", "kcols", "edge", "edge_h", "xts",
                 "ots", "rts"):
        vals[name] = int(d[name])
    # (a pair, as block: JSON gives it back as a list, which a frozen spec cannot hash)
    vals["wrap"] = tuple(int(v) for v in d["wrap"])
    if len(vals["wrap"]) != 2:
        raise ValueError(f"kernel spec wrap {d['wrap']!r} is not a pair")
    for name in ("act_a", "act_b"):
        vals[name] = float(d[name])
    vals["has_bias"] = bool(d["has_bias"])
    vals["residual"] = bool(d["residual"])
    vals["panels"] = bool(d["panels"])
    vals["dual_out"] = bool(d["dual_out"])
    return emit.KernelSpec(**vals)


def from_object(spec: emit.KernelSpec, obj: bytes) -> LlvmKernel:
    """Link ``obj`` as the kernel for ``spec``, unless this process already has that kernel
    (each link keeps an execution engine alive for the process)."""
    with _MEMO_LOCK:
        hit = _MEMO.get(spec.key)
    if hit is not None:
        return hit
    k = LlvmKernel(spec, jit.load_object(obj, ["kernel"])["kernel"], obj)
    with _MEMO_LOCK:
        return _MEMO.setdefault(spec.key, k)


class Launch:
    """One kernel bound to fixed buffers: its args block and its work split, ready to run.

    ``spmm``: ``x`` holds ``n`` samples of (K rows of length >= L) at ``xns`` floats apart, read
    at ``x[idx * xrs + j]``; ``out`` holds (rows, L) per sample at row stride ``ors``.
    """

    def __init__(self, kernel: LlvmKernel, arrays: dict[str, np.ndarray], ints: dict[str, int],
                 splits: np.ndarray):
        args = np.zeros(emit.N_ARGS, np.int64)
        for slot, name in ((emit.A_INDPTR, "indptr"), (emit.A_IDX, "indices"),
                           (emit.A_DATA, "data"), (emit.A_X, "x"), (emit.A_OUT, "out"),
                           (emit.A_BIAS, "bias"), (emit.A_RSPLIT, "rsplit")):
            if name in arrays:
                args[slot] = arrays[name].ctypes.data
        for slot, name in ((emit.A_ROWS, "rows"), (emit.A_L, "L"), (emit.A_XRS, "xrs"),
                           (emit.A_ORS, "ors"), (emit.A_NTILES, "ntiles"), (emit.A_XNS, "xns"),
                           (emit.A_ONS, "ons"), (emit.A_NRB, "nrb"), (emit.A_GN, "gn"),
                           (emit.A_NPANEL, "npanel")):
            args[slot] = int(ints.get(name, 1 if name == "npanel" else 0))
        self.kernel, self.args, self.splits = kernel, args, splits
        self._keep = arrays  # the addresses in args stay valid while self lives

    def __call__(self) -> None:
        driver.run_split(self.kernel.addr, self.splits, self.args)


def spmm_tile(L: int, vw: int, block_rows: int = 1) -> int:
    """Vectors per work item: wide enough to amortise the row's index/value loads, not wider
    than the data, and few enough that block_rows x tile accumulators stay in registers
    (32 vector registers with AVX-512, 16 with AVX2)."""
    need = -(-L // vw)
    regs = 32 if vw >= 16 else 16
    for t in (4, 2, 1):
        if need >= t and block_rows * t + t <= regs - 4:
            return t
    return 1


def wide_tile(L: int, vw: int) -> int:
    """The generic AVX2 kernel's vectors per work item over L positions: 5-9 (WIDE_TILES;
    one index and value load for that many FMAs, and a 3x3 conv's x window per channel that
    many vectors + 2 rows wide instead of 4 + 2 rows), the one whose tiles compute the fewest
    lanes past L (the larger on a tie; 9 for a 3x3 conv over 14 x 14 maps, 210 positions in
    rows 15 wide, 216 in whole vectors; 7 for 7 x 7, 56), unless 4-vector tiles would
    compute fewer; else spmm_tile's."""
    if vw != 8 or L <= 32:
        return spmm_tile(L, vw)

    def lanes(t):
        return -(-L // (8 * t)) * 8 * t

    best = min(WIDE_TILES, key=lambda t: (lanes(t), -t), default=4)
    return best if lanes(best) <= lanes(4) else spmm_tile(L, vw)


# The wide tiles' candidates (vectors a tile; 9 accumulators + the broadcast value fit
# AVX2's 16 registers). A 3x3 conv over 14 x 14 maps (224 positions a channel) ran 1.07x
# slower in tiles of 8 (256 lanes) than of 4. With rows 15 wide (lower.SHIFT_SHARE: 210
# positions, 216 in whole vectors) tiles of 9 (three, no masked lanes) against 7 (a last
# tile of 6 vectors, masked loads and stores): ResNet-18 batch 16 layer3's 3x3 convs
# 0.72-0.75x the time, ResNet-50's 0.71-0.75x (Zen 3, bench/op_ab.py, one process).
WIDE_TILES = (9, 8, 7, 6, 5)


# Bytes of L1 a column panel's slice of x may take (of 32-48 KB on current x86 cores).
PANEL_L1_BYTES = 32 * 1024


def panelize(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, panel_of: np.ndarray,
             npanel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR reordered panel-major: (indptr (npanel, rows+1) of global positions, indices,
    data), the nonzeros of panel p, row o at indptr[p, o]:indptr[p, o+1]."""
    rows = len(indptr) - 1
    row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
    key = panel_of.astype(np.int64) * rows + row
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=npanel * rows).reshape(npanel, rows)
    ip = np.zeros((npanel, rows + 1), np.int64)
    np.cumsum(counts, axis=1, out=ip[:, 1:])
    ip += np.concatenate([[0], np.cumsum(counts.sum(axis=1))[:-1]])[:, None]
    return ip, np.ascontiguousarray(indices[order]), np.ascontiguousarray(data[order])


def panel_rows(tile_floats: int, footprint_rows: float = 1.0, budget: int = 0,
               least: int = 64) -> int:
    """x rows per column panel so one panel's x slice (rows x tile floats, each row touching
    ``footprint_rows`` rows' worth of data) fits ``budget`` bytes (PANEL_L1_BYTES); at least
    ``least`` rows (fewer and the per-panel partial sums cost more than the cache misses they
    save)."""
    return max(least, int((budget or PANEL_L1_BYTES) // (4 * tile_floats * footprint_rows)))


# Fewest nonzeros a row should have per panel: each panel of a row loads and stores its
# accumulators (tile vectors) once. A 1536 -> 384 linear at 4.5 % density over 2048 tokens in
# 12 L1-sized panels (5.8 nonzeros per row each) ran 1.5x slower than in 4.
MIN_PANEL_ROW_NNZ = 16


def column_panels(x_row_of_nnz: np.ndarray, x_rows: int, tile_floats: int,
                  footprint_rows: float = 1.0, out_rows: int | None = None,
                  budget: int = 0, least: int = 64) -> tuple[np.ndarray, int] | None:
    """(panel id per nonzero, panel count) for spmm_launch, or None when one panel fits.
    With ``out_rows``, no more panels than leave MIN_PANEL_ROW_NNZ nonzeros per row in each
    (a sparser layer trades L1 hits for fewer accumulator round trips), but with a
    ``budget`` at most as many rows as PANEL_L1_BYTES of x hold. ``budget``, ``least``: as
    panel_rows."""
    per = panel_rows(tile_floats, footprint_rows, budget, least)
    if out_rows:
        most = max(1, int(len(x_row_of_nnz) / out_rows / MIN_PANEL_ROW_NNZ))
        per = max(per, -(-x_rows // most))
        if budget:  # (but no more rows than PANEL_L1_BYTES of x, at least 64)
            per = min(per, panel_rows(tile_floats, footprint_rows))
    if x_rows <= per:
        return None
    return (x_row_of_nnz.astype(np.int64) // per, -(-x_rows // per))


def spmm_launch(kernel: LlvmKernel, indptr, indices, data, bias, x, out, *, n: int, L: int,
                xrs: int, ors: int, xns: int, ons: int, threads: int,
                row_bounds: np.ndarray | None = None, rows: int | None = None,
                gn: int = 0, panels: tuple[np.ndarray, int] | None = None) -> Launch:
    """A Launch for a spmm/bsr/nm kernel; ``row_bounds`` are a specialised kernel's chunk
    bounds. ``indptr`` is per row (block row for bsr; for nm, ``arange(rows+1) * gn``, used
    only to split the work); ``rows`` is the true output row count (bsr). ``panels``:
    (panel id per nonzero, panel count) for CSR column panels."""
    spec = kernel.spec
    ntiles = -(-L // (spec.vw * spec.tile))
    units = row_bounds if row_bounds is not None else indptr
    nunits = len(units) - 1
    # Split rows too when there are too few tiles to keep every thread busy and balanced.
    want = 4 * max(threads, 1)
    nrb = max(1, min(nunits, -(-want // max(n * ntiles, 1)))) if threads > 1 else 1
    # Row blocks balanced by nonzeros, over rows or over a specialised kernel's chunks.
    rsplit = driver.nnz_splits(indptr if row_bounds is None else indptr[row_bounds], nrb)
    nrb = len(rsplit) - 1
    items = n * ntiles * nrb
    splits = driver.even_splits(items, threads * 4 if items >= threads * 4 else threads)
    nrows = rows if rows is not None else len(indptr) - 1
    npanel = 1
    if panels is not None and panels[1] > 1 and spec.family == "spmm":
        npanel = panels[1]
        indptr, indices, data = panelize(indptr, indices, data, panels[0], npanel)
    arrays = dict(indptr=indptr, indices=indices, data=data, bias=bias, x=x, out=out,
                  rsplit=rsplit)
    ints = dict(rows=nrows, L=L, xrs=xrs, ors=ors,
                ntiles=ntiles, xns=xns, ons=ons, nrb=nrb, gn=gn, npanel=npanel)
    return Launch(kernel, arrays, ints, splits)


def spmv_launch(kernel: LlvmKernel, indptr, indices, data, bias, x, out, *, m: int, threads: int,
                row_bounds: np.ndarray | None = None) -> Launch:
    """x (m, K) row-major, out (m, O) row-major; work items are output rows (or a specialised
    kernel's row chunks, ``row_bounds``), split by nnz."""
    units = indptr if row_bounds is None else indptr[row_bounds]
    splits = driver.nnz_splits(units, max(threads, 1) * 4)
    arrays = dict(indptr=indptr, indices=indices, data=data, bias=bias, x=x, out=out)
    ints = dict(L=m, xrs=x.shape[-1], ors=out.shape[-1])
    return Launch(kernel, arrays, ints, splits)
