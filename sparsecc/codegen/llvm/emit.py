"""LLVM IR for the sparse kernels (llvmlite.ir only: no binding, no compilation here).

Every kernel has one C ABI, ``void k(i64 start, i64 stop, i64* args)``: it does the work items
``[start, stop)`` and reads its pointers and sizes from ``args``. One ABI means one parallel
driver (``codegen/llvm/driver.py``) runs any kernel, generic or specialised, over threads.

Two kernel families:

* ``spmm``: ``out[o, j] = act(bias[o] + sum_p data[p] * x[idx[p] * xrs + j])`` over contiguous ``j``
  (features x batch for linear layers, channels x pixels for convs). A work item is one tile of
  ``tile`` vectors along ``j`` (of one sample) times one block of output rows (blocks balanced by
  nonzeros): the tile's slice of ``x`` stays in L1/L2 while the rows read it, and the
  accumulators stay in registers across a row's nonzeros. The last tile of a row is masked.
* ``spmv``: ``out[r, o] = act(bias[o] + sum_p data[p] * x[r, idx[p]])`` for few rows ``r`` in
  the row-major layout (batch 1), vectorised over the nonzeros with gathers. A work item is one
  output row ``o``.

``pattern`` (a CSR ``indptr``/``indices`` pair) bakes the nonzero pattern into the code and
the row loop disappears (LIBXSMM / SparseRT style): spmm column offsets become immediates,
spmv rows become exact runs of gathers over a column table in the object; values still come
from ``data``. Patterns are split into one function per row chunk (``emit_specialized.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from llvmlite import ir

I1, I32, I64, F32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
PTR = ir.IntType(8).as_pointer()
VOID = ir.VoidType()
KERNEL_TYPE = ir.FunctionType(VOID, [I64, I64, I64.as_pointer()])

# Bumped when the code a spec names changes meaning (2: NaN-keeping relu/clamp; 3: grouped
# kernels walk samples in blocks, A_GXB; 4: their x loads from a moving base; 5: their groups
# in ranges, A_GRR; 6: A_GRR < 0, tiles outer; 7: a sample's tiles in panels, A_PANELS),
# so object code cached in an artifact under an old key is rebuilt rather than linked.
KEY_VERSION = "k7"

# Grouped specialised kernels prefetch their chunk bodies' code (_prefetch_code; the extent
# from each body's end label): an item starting a thread's run of a row block's tiles (its
# first tile, or the thread's first item) prefetches its first chunk, and before each chunk
# the next one; a column-blocked item (_kblocked_items), each chunk's next before the chunk
# runs over its tiles. After the other ops ran, that code comes from L3 or memory, and the
# front end fetches it a line after another. One call replayed on one core (ResNet-50 b16's
# layer3.0.conv3 / layer3.4.conv2, one sample, 2026-12-07 Zen 4): caches evicted 0.91x /
# 0.88x the time, data re-read but code evicted 0.79x / 0.90x, everything warm 1.08x /
# 1.07x (the code lines also fill L1d, pushing x out). Whole plain calls, same process
# (bench/op_ab.py --plain, paired medians): ResNet-50 b1 / b16 1.032x / 1.032x faster,
# ResNet-18 b16 level, MobileNetV2 global b1 1.012x (docs/native.md, "Code prefetch").
CODE_PREFETCH = True

# AVX2 stores under a constant lane mask as plain 4-float and 1-float stores (_Fn.vstore)
CONST_MASK_STORES = True
# Activations the epilogue does in vector registers; others run as a separate pass.
FUSED_ACTS = ("none", "relu", "clamp")
# and in the IR-builder (generic, non-baked) kernels only: the specialised kernels' text
# emitter has no GELU
GENERIC_ACTS = FUSED_ACTS + ("gelu",)

# args[] slots, shared by both families.
A_INDPTR, A_IDX, A_DATA, A_X, A_OUT, A_BIAS = 0, 1, 2, 3, 4, 5
A_ROWS, A_L, A_XRS, A_ORS, A_NTILES, A_XNS, A_ONS = 6, 7, 8, 9, 10, 11, 12
A_NRB, A_RSPLIT = 13, 14  # row blocks per tile and their boundaries (rows, or chunks)
A_GN = 15  # N:M: stored values per row
A_NPANEL = 16  # CSR: column panels; indptr is (panels, rows + 1), nonzeros by (panel, row)
A_RES = 17  # residual: a tensor laid out as out, added before the activation
A_NB = 18  # grouped kernels: samples in the call
A_GXB = 19  # grouped kernels: floats of x a block of samples holds (native.lower.group_block)
A_GRR = 20  # grouped kernels: > 0, row groups in ranges of this many (native.lower.group_ranges);
# < 0: every group over a tile before the next tile (native.lower.group_tiles_outer)
# > 1: a sample's tiles in this many panels of consecutive tiles, every row block over a
# panel before the next panel, so the panel's x stays in L2 while every group's code runs
# over it (the whole-batch tail's packed blocks, native.lower.PACK); 0 / 1: none. Taken
# only where A_GRR is 0, by kernels with KernelSpec.panels.
A_PANELS = 21
A_ODS = 22  # KernelSpec.dual_out: floats from out's first copy to its second
N_ARGS = 23


def act_key(spec) -> str:
    """A fused activation in a kernel's cache key: its name, with a clamp's bounds."""
    return spec.act if spec.act != "clamp" else f"clamp{spec.act_a:g}_{spec.act_b:g}"


@dataclass(frozen=True)
class KernelSpec:
    """What one compiled kernel does; its ``key`` names it in caches and artifacts."""

    family: str  # "spmm" | "spmv" (CSR), "bsr" (R x C blocks), "nm" (N:M packed)
    vw: int  # floats per vector register (16 with AVX-512, 8 with AVX2)
    tile: int = 1  # vectors per work item along j (spmm)
    act: str = "none"
    act_a: float = 0.0
    act_b: float = 0.0
    has_bias: bool = False
    # 16 or 32: width of the stored column indices (generic kernels). 64: a shifted conv's
    # dual planes (native.lower.DUAL_PLANES; generic spmm, x rows 1 float apart): a pair of
    # 32-bit offsets a nonzero, the low one read by the tile's vectors at an even vector of
    # a 16-float line, the high one by those at an odd one (one copy of the loop for either
    # parity of the tile's first vector)
    idx_bits: int = 32
    pattern_hash: str = ""  # non-empty: the pattern is baked in (specialised kernel)
    block: tuple[int, int] = (1, 1)  # bsr: (R, C); nm: (N, M)
    xrs: int = 0  # specialised: the x row stride baked in (0: read from args)
    span: int = 0  # specialised: the extent L along j baked in (sizes the tail tile)
    # spmm/bsr/nm: out = act(acc + res), res read at out's offsets from args[A_RES] (the
    # residual add of a ResNet block fused into the conv before it)
    residual: bool = False
    # specialised spmm: rows done together (each x vector loaded once for every row of the
    # group that has its column); 1: row by row
    group: int = 1
    # grouped, x rows 1 float apart (shifted convs): a column's x vector off a cache line is
    # shifted out of the two aligned vectors around it (valignd), which stay in registers for
    # the columns after it; x must hold 16 floats past its last full read (the planes' slack)
    xalign: bool = False
    # grouped, "rows" planes (a 3x3 conv, stride 1 or 2, over planes padded by zero rows
    # only, W wide; native.lower.RowsGeom): the taps of column offset - ROWS_BASE = 0 / 2
    # mod W (dx -1 / +1) are masked off in the lanes at a row's first / last column (masks
    # per tile from the driver, k6 / k7)
    edge: int = 0
    # grouped, with ``edge`` (W): the packed tail's masked taps (native.lower's PACK_MASKED
    # 3x3 convs over (N / 16, C, 16 x H x W) maps with no padding). Column offsets are
    # PKM_BASE + plane x span + ry x W + rx (ry, rx in -1..1: emit_specialized.pkm_tap);
    # rx -1 / +1 mask the FMAs off a row's first / last column (k6 / k7), ry -1 / +1 zero
    # x's lanes on a map's first / last row (k2 / k3), the masks per tile from the driver.
    # This is H (0: rows planes, where zero rows stand for ry)
    edge_h: int = 0
    # grouped, with a residual: its channels (rows) this many floats apart, baked in (0: at
    # out's offsets); a band-major residual of an NCHW sum or the reverse (native.bands)
    res_rs: int = 0
    # grouped: a sample's tiles may run in panels (A_PANELS); without it the kernel has no
    # panel arithmetic (~6 divisions an item: MobileNetV2's small items at batch 1)
    panels: bool = False
    # grouped: the columns in blocks of this many (in index units; block b holds indices
    # [b * kcols, (b + 1) * kcols): emit_specialized.kblocks), every block's chunks over
    # all of a work item's samples and tiles before the next block's, the partial sums
    # through out (0: one block). An item is a row block of a set of A_GXB samples
    # (_kblocked_items); the values in group_order(..., kcols).
    kcols: int = 0
    # floats from one tile of x / out / the residual to the next (0: the tile's width, a
    # channel's positions contiguous). Tile-major tensors (native.lower.Lowering.tm) hold a
    # sample's 16-position tiles one after another, each tile's channels one line apart
    # (channel stride 16, tile stride C x 16)
    xts: int = 0
    ots: int = 0
    rts: int = 0
    # generic spmm: every output vector stored twice, the second A_ODS floats past the first
    # (the dual planes of the conv after, native.lower.DUAL_PLANES, written by the conv
    # before them instead of copied)
    dual_out: bool = False
    # generic spmm over a conv's wide rows (W' floats a row, W of them real): (W', W) stores
    # zero at the positions p with p % W' >= W, the wrap columns, which land on the padding
    # columns of the next conv's planes (native.lower: k_endpads then clears only the planes'
    # first and last runs); (0, 0): none
    wrap: tuple[int, int] = (0, 0)

    @property
    def key(self) -> str:
        act = act_key(self)
        parts = [KEY_VERSION, self.family, f"v{self.vw}", f"t{self.tile}", act,
                 "b" if self.has_bias else "nb", f"i{self.idx_bits}"]
        if self.family in ("bsr", "nm"):
            parts.append(f"blk{self.block[0]}x{self.block[1]}")
        if self.pattern_hash:
            parts.append(f"p{self.pattern_hash}")
        if self.xrs:
            parts.append(f"s{self.xrs}")
        if self.span:
            parts.append(f"l{self.span}")
        if self.residual:
            parts.append("res")
        if self.group > 1:
            parts.append(f"g{self.group}")
        if self.xalign:
            parts.append("xa")
        if self.edge:
            parts.append(f"e{self.edge}")
        if self.edge_h:
            parts.append(f"eh{self.edge_h}")
        if self.res_rs:
            parts.append(f"rr{self.res_rs}")
        if self.panels:
            parts.append("pn")
        if self.kcols:
            parts.append(f"kc{self.kcols}")
        if self.xts or self.ots or self.rts:
            parts.append(f"ts{self.xts}.{self.ots}.{self.rts}")
        if self.dual_out:
            parts.append("do")
        if self.wrap[0]:
            parts.append(f"wr{self.wrap[0]}.{self.wrap[1]}")
        if CODE_PREFETCH and self.group > 1 and self.pattern_hash:
            parts.append("cp")
        return "_".join(parts)


@dataclass(frozen=True)
class Pattern:
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1


# ---- small IR helpers ---------------------------------------------------------------------
class _Fn:
    """An IRBuilder with the handful of helpers the kernels need."""

    def __init__(self, module: ir.Module, name: str, vw: int):
        self.module, self.vw = module, vw
        self.fn = ir.Function(module, KERNEL_TYPE, name)
        self.fn.attributes.add("nounwind")
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.vty = ir.VectorType(F32, vw)
        self.res: ir.Value | None = None  # spmm with a residual: its tile's base pointer
        self.pf_first: ir.Value | None = None  # CODE_PREFETCH: an item starting a run

    def arg_i64(self, slot: int, name: str) -> ir.Value:
        p = self.b.gep(self.fn.args[2], [I64(slot)], inbounds=True)
        return self.b.load(p, name=name)

    def arg_ptr(self, slot: int, name: str) -> ir.Value:
        return self.b.inttoptr(self.arg_i64(slot, name + "_i"), F32.as_pointer(), name=name)

    def alloca(self, ty, name: str) -> ir.Value:
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            return self.b.alloca(ty, name=name)

    @contextmanager
    def loop(self, start: ir.Value, stop: ir.Value, name: str, step: int = 1):
        """for (i = start; i < stop; i += step): yields i. The counter lives in an alloca
        (SROA turns it into a phi)."""
        b = self.b
        ctr = self.alloca(I64, name)
        b.store(start, ctr)
        head = self.fn.append_basic_block(name + "_head")
        body = self.fn.append_basic_block(name + "_body")
        done = self.fn.append_basic_block(name + "_done")
        b.branch(head)
        b.position_at_end(head)
        i = b.load(ctr)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        yield i
        b.store(b.add(b.load(ctr), I64(step)), ctr)
        b.branch(head)
        b.position_at_end(done)

    def cases(self, c: ir.Value, count: int, name: str, case) -> None:
        """A switch over ``c``: ``case(ci)`` emitted in its own block for ci in [0, count),
        nothing for other values; the builder after it."""
        b = self.b
        after = self.fn.append_basic_block(f"{name}_next")
        sw = b.switch(c, after)
        for ci in range(count):
            blk = self.fn.append_basic_block(f"{name}{ci}")
            sw.add_case(I64(ci), blk)
            b.position_at_end(blk)
            case(ci)
            b.branch(after)
        b.position_at_end(after)

    def call_nth(self, c: ir.Value, fns: Sequence[ir.Function], args: list) -> None:
        """Call ``fns[c]`` (a specialised kernel's row-chunk functions) through a switch."""
        self.cases(c, len(fns), "c", lambda ci: self.b.call(fns[ci], args))

    def intrinsic(self, name: str, ret, args: Sequence) -> ir.Function:
        if name in self.module.globals:
            return self.module.globals[name]
        return ir.Function(self.module, ir.FunctionType(ret, list(args)), name)

    def splat(self, v: ir.Value) -> ir.Value:
        undef = ir.Constant(self.vty, ir.Undefined)
        v0 = self.b.insert_element(undef, v, I32(0))
        return self.b.shuffle_vector(v0, undef, ir.Constant(ir.VectorType(I32, self.vw),
                                                            [0] * self.vw))

    def vload(self, ptr: ir.Value, mask: ir.Value | None) -> ir.Value:
        vptr = self.b.bitcast(ptr, self.vty.as_pointer())
        if mask is None:
            return self.b.load(vptr, align=4)
        f = self.intrinsic(f"llvm.masked.load.v{self.vw}f32.p0", self.vty,
                           [self.vty.as_pointer(), I32, mask.type, self.vty])
        return self.b.call(f, [vptr, I32(4), mask, ir.Constant(self.vty, [0.0] * self.vw)])

    def vstore(self, val: ir.Value, ptr: ir.Value, mask: ir.Value | None) -> None:
        vptr = self.b.bitcast(ptr, self.vty.as_pointer())
        if mask is None:
            self.b.store(val, vptr, align=4)
            return
        if self.vw == 8 and CONST_MASK_STORES and isinstance(mask, ir.Constant) and \
                isinstance(mask.constant, list):
            self._store_live(val, ptr, [bool(getattr(m, "constant", m)) for m in mask.constant])
            return
        f = self.intrinsic(f"llvm.masked.store.v{self.vw}f32.p0", VOID,
                           [self.vty, self.vty.as_pointer(), I32, mask.type])
        self.b.call(f, [val, vptr, I32(4), mask])

    def _store_live(self, val: ir.Value, ptr: ir.Value, live: list[bool]) -> None:
        """A store of the lanes a constant mask keeps, without a masked store (AVX2's
        vmaskmovps store is slow on AMD cores): a 4-float store for each live half, one float
        a lane for the rest."""
        b = self.b
        for h in range(0, self.vw, 4):
            if all(live[h:h + 4]):
                half = b.shuffle_vector(val, val, ir.Constant(ir.VectorType(I32, 4),
                                                              list(range(h, h + 4))))
                hp = b.bitcast(b.gep(ptr, [I64(h)]), ir.VectorType(F32, 4).as_pointer())
                b.store(half, hp, align=4)
                continue
            for lane in range(h, h + 4):
                if live[lane]:
                    b.store(b.extract_element(val, I32(lane)), b.gep(ptr, [I64(lane)]))

    def fma(self, a, x, acc):
        ty = acc.type
        suffix = f"v{self.vw}f32" if isinstance(ty, ir.VectorType) else "f32"
        f = self.intrinsic(f"llvm.fma.{suffix}", ty, [ty, ty, ty])
        return self.b.call(f, [a, x, acc])

    def act(self, v: ir.Value, spec: KernelSpec) -> ir.Value:
        """The fused activation as compare + select, not maxnum/minnum: those return the other
        operand for a NaN, and torch's relu/clamp keep NaN (relu(-0.0) stays -0.0 as well)."""
        if spec.act == "none":
            return v
        ty = v.type

        def const(c):
            return ir.Constant(ty, [c] * self.vw) if isinstance(ty, ir.VectorType) \
                else ir.Constant(F32, c)

        if spec.act == "relu":
            return self.b.select(self.b.fcmp_ordered("<", v, const(0.0)), const(0.0), v)
        if spec.act == "clamp":
            lo, hi = const(spec.act_a), const(spec.act_b)
            v = self.b.select(self.b.fcmp_ordered("<", v, lo), lo, v)
            return self.b.select(self.b.fcmp_ordered(">", v, hi), hi, v)
        if spec.act == "gelu":
            from sparsecc.codegen.llvm import vmath

            if isinstance(ty, ir.VectorType):
                return vmath.gelu(self, v)
            return self.b.extract_element(vmath.gelu(self, self.splat(v)), I32(0))
        raise ValueError(f"activation {spec.act!r} is not fused in LLVM kernels")

    def load_f32(self, base: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.load(self.b.gep(base, [index], inbounds=True))

    def load_idx(self, base: ir.Value, index: ir.Value, bits: int) -> ir.Value:
        ity = ir.IntType(bits)
        p = self.b.bitcast(base, ity.as_pointer())
        v = self.b.load(self.b.gep(p, [index], inbounds=True))
        return v if bits == 64 else self.b.zext(v, I64)


# ---- spmm ---------------------------------------------------------------------------------
def _panel_item(k, w, ntiles, nrb, panels, n, rb, t, allowed):
    """(sample, row block, tile) of item ``w`` with a sample's tiles in ``panels`` panels
    (A_PANELS; panel p holds tiles [p * T // P, (p + 1) * T // P)), the row blocks outer in a
    panel and its tiles inner; the (n, rb, t) given when panels <= 1 (or not ``allowed``,
    an i1)."""
    b = k.b
    use = b.icmp_signed(">", panels, I64(1))
    if allowed is not None:
        use = b.and_(use, allowed)
    P = b.select(b.icmp_signed(">", panels, ntiles), ntiles, panels)
    P = b.select(b.icmp_signed("<", P, I64(1)), I64(1), P)
    per = b.mul(ntiles, nrb)
    n_p = b.sdiv(w, per)
    r = b.sub(w, b.mul(n_p, per))

    def bound(p):  # first tile of panel p
        return b.sdiv(b.mul(p, ntiles), P)

    p = b.sdiv(b.mul(r, P), per)
    p = b.select(b.icmp_signed(">=", r, b.mul(nrb, bound(b.add(p, I64(1))))),
                 b.add(p, I64(1)), p)
    t0 = bound(p)
    tp = b.sub(bound(b.add(p, I64(1))), t0)
    tp = b.select(b.icmp_signed("<", tp, I64(1)), I64(1), tp)
    r2 = b.sub(r, b.mul(nrb, t0))
    rb_p = b.sdiv(r2, tp)
    t_p = b.add(t0, b.sub(r2, b.mul(rb_p, tp)))
    return b.select(use, n_p, n), b.select(use, rb_p, rb), b.select(use, t_p, t)


def emit_spmm(module: ir.Module, name: str, spec: KernelSpec,
              pattern: Pattern | None = None) -> None:
    """A spmm kernel; with ``pattern``, the nonzero pattern is baked in (see module doc)."""
    k = _Fn(module, name, spec.vw)
    b = k.b
    indptr = b.inttoptr(k.arg_i64(A_INDPTR, "indptr_i"), I64.as_pointer())
    idx = b.inttoptr(k.arg_i64(A_IDX, "idx_i"), PTR)
    data, x, out = k.arg_ptr(A_DATA, "data"), k.arg_ptr(A_X, "x"), k.arg_ptr(A_OUT, "out")
    bias = k.arg_ptr(A_BIAS, "bias")
    L = k.arg_i64(A_L, "L")
    xrs, ors = k.arg_i64(A_XRS, "xrs"), k.arg_i64(A_ORS, "ors")
    ntiles, xns, ons = k.arg_i64(A_NTILES, "ntiles"), k.arg_i64(A_XNS, "xns"), k.arg_i64(A_ONS,
                                                                                         "ons")
    width = spec.vw * spec.tile
    lanes = ir.Constant(ir.VectorType(I64, spec.vw), list(range(spec.vw)))
    nrb = k.arg_i64(A_NRB, "nrb")
    rsplit = b.inttoptr(k.arg_i64(A_RSPLIT, "rsplit_i"), I64.as_pointer())
    row_fns = None
    if spec.dual_out:
        k.ods = k.arg_i64(A_ODS, "ods")
    if pattern is not None:
        from sparsecc.codegen.llvm.emit_specialized import spmm_row_chunks

        row_fns = spmm_row_chunks(module, name, spec, pattern)

    def tile(n, t, r0, r1):
        """Rows [r0, r1) (row-chunk functions, or rows) of sample n's tile t."""
        j0 = b.mul(t, I64(width))  # (the tile's first position)
        xb = b.gep(x, [b.add(b.mul(n, xns), b.mul(t, I64(spec.xts)) if spec.xts else j0)],
                   inbounds=True)
        ob = b.gep(out, [b.add(b.mul(n, ons), b.mul(t, I64(spec.ots)) if spec.ots else j0)],
                   inbounds=True)
        if spec.residual:  # the residual's tile, at out's offsets (its own tile stride)
            k.res = b.gep(k.arg_ptr(A_RES, "res"), [b.add(
                b.mul(n, ons), b.mul(t, I64(spec.rts)) if spec.rts else j0)], inbounds=True)
        if spec.edge:  # lanes off a row's first / last column: bits 0-15 / 16-31
            pos = b.add(_splat_i64_val(b, spec.vw, j0), lanes)
            col = b.srem(pos, _const_i64_vec(spec.vw, spec.edge))
            tests = [(col, 0), (col, spec.edge - 1)]
            if spec.edge_h:  # (packed masked taps) and off a map's first / last row: 32-63
                q = b.srem(pos, _const_i64_vec(spec.vw, spec.edge * spec.edge_h))
                row = b.sdiv(q, _const_i64_vec(spec.vw, spec.edge))
                tests += [(row, 0), (row, spec.edge_h - 1)]
            k.edge_masks = I64(0)
            for at, (v, c) in enumerate(tests):
                live = b.icmp_signed("!=", v, _const_i64_vec(spec.vw, c))
                bits = b.zext(b.bitcast(live, ir.IntType(spec.vw)), I64)
                k.edge_masks = b.or_(k.edge_masks, b.shl(bits, I64(16 * at)))
        if spec.wrap[0]:  # lanes at a wrap column, per vector (_csr_rows stores 0 there)
            i32v = ir.VectorType(I32, spec.vw)
            start = _splat_val(b, i32v, b.trunc(j0, I32))
            k.wrap_keep = []
            for v in range(spec.tile):
                pos = b.add(start, ir.Constant(i32v, [v * spec.vw + i for i in range(spec.vw)]))
                col = b.urem(pos, ir.Constant(i32v, [spec.wrap[0]] * spec.vw))
                keep = b.sext(b.icmp_unsigned("<", col, ir.Constant(i32v, [spec.wrap[1]] *
                                                                      spec.vw)), i32v)
                # (an empty asm: the mask made here, once a tile, not its compare sunk
                # into every row's epilogue; there one and, its operand from the stack)
                k.wrap_keep.append(b.asm(ir.FunctionType(i32v, [i32v]), "", "=x,0", [keep],
                                         False))
        odd = None
        if spec.idx_bits == 64:  # the tile's first vector at an odd vector of its line
            odd = b.icmp_signed("!=", b.and_(b.lshr(j0, I64(3)), I64(1)), I64(0))
        full = b.icmp_signed("<=", b.add(j0, I64(width)), L)
        with b.if_else(full) as (then, other):
            with then:
                if odd is None:
                    _spmm_tile(k, spec, None, indptr, idx, data, xb, ob, bias, r0, r1, xrs,
                               ors, row_fns)
                else:  # (a copy of the loop for either parity: no selects in it)
                    with b.if_else(odd) as (t_odd, t_even):
                        for known, arm in ((True, t_odd), (False, t_even)):
                            with arm:
                                k.odd = known
                                _spmm_tile(k, spec, None, indptr, idx, data, xb, ob, bias,
                                           r0, r1, xrs, ors, row_fns)
                    k.odd = odd
            with other:
                if row_fns is not None:  # the tail variant has its live lanes baked in
                    _spmm_tile(k, spec, [], indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors,
                               row_fns)
                else:
                    _masked_tail(k, spec, b.sub(L, j0), lanes, indptr, idx, data, xb, ob, bias,
                                 r0, r1, xrs, ors)

    if spec.kcols and spec.group > 1 and pattern is not None:
        _kblocked_items(k, spec, pattern, row_fns, rsplit, ntiles, nrb, tile)
        b.ret_void()
        return
    with k.loop(k.fn.args[0], k.fn.args[1], "w") as w:
        # Tiles vary fastest: a thread's contiguous run of items covers whole row blocks, so
        # the cheap last (partial) tile of each row block does not unbalance the threads.
        rest = b.sdiv(w, ntiles)
        t = b.sub(w, b.mul(rest, ntiles))
        if spec.group > 1:
            # samples in blocks of sb (A_GXB floats of x, at least one sample): a group's
            # code runs over every tile of a block before the next group's
            nb = k.arg_i64(A_NB, "nb")
            sb = b.sdiv(k.arg_i64(A_GXB, "gxb"), b.select(
                b.icmp_signed(">", xns, I64(0)), xns, I64(1)))
            sb = b.select(b.icmp_signed("<", sb, I64(1)), I64(1), sb)
            sb = b.select(b.icmp_signed(">", sb, nb), nb, sb)
            # A_GRR > 0: the groups in ranges of that many, each range over every sample
            # before the next (its code stays in L2 while the samples' x stream by); a
            # range's groups then run as above, with their samples in blocks of sb
            rpr = k.arg_i64(A_GRR, "grr")
            rpr = b.select(b.icmp_signed(">", rpr, I64(0)), rpr, nrb)
            per = b.mul(nb, rpr)
            h = b.sdiv(rest, per)
            rest = b.sub(rest, b.mul(h, per))
            rbase = b.mul(h, rpr)
            left_r = b.sub(nrb, rbase)
            cnt = b.select(b.icmp_signed("<", left_r, rpr), left_r, rpr)
            blk = b.sdiv(rest, b.mul(sb, cnt))
            n0 = b.mul(blk, sb)
            left = b.sub(nb, n0)
            size = b.select(b.icmp_signed("<", left, sb), left, sb)
            r2 = b.sub(rest, b.mul(n0, cnt))
            rb = b.sdiv(r2, size)
            n = b.add(n0, b.sub(r2, b.mul(rb, size)))
            rb = b.add(rb, rbase)
            # A_GRR < 0: groups fastest, then tiles, then samples: a tile's x stays in L1
            # while every group's code and values stream from L2
            outer = b.icmp_signed("<", k.arg_i64(A_GRR, "grr_o"), I64(0))
            q = b.sdiv(w, nrb)
            rb_o = b.sub(w, b.mul(q, nrb))
            n_o = b.sdiv(q, ntiles)
            t = b.select(outer, b.sub(q, b.mul(n_o, ntiles)), t)
            n = b.select(outer, n_o, n)
            rb = b.select(outer, rb_o, rb)
        else:
            n = b.sdiv(rest, nrb)
            rb = b.sub(rest, b.mul(n, nrb))
        if spec.panels:
            n, rb, t = _panel_item(k, w, ntiles, nrb, k.arg_i64(A_PANELS, "panels"), n, rb, t,
                                   None if spec.group <= 1 else
                                   b.icmp_signed("==", k.arg_i64(A_GRR, "grr_p"), I64(0)))
        r0 = b.load(b.gep(rsplit, [rb], inbounds=True))
        r1 = b.load(b.gep(rsplit, [b.add(rb, I64(1))], inbounds=True))
        if CODE_PREFETCH and spec.group > 1 and row_fns is not None:
            # (a block's first sample only: the code is in L2 for the samples after it;
            # tiles outer: every sample's, as the code streams from L2 a tile anyway)
            fresh = b.and_(b.icmp_signed("==", t, I64(0)),
                           b.or_(outer, b.icmp_signed("==", n, n0)))
            k.pf_first = b.or_(fresh, b.icmp_signed("==", w, k.fn.args[0]))
        tile(n, t, r0, r1)
    b.ret_void()


def _prefetch_code(k: _Fn, row_fns, c: ir.Value) -> None:
    """Prefetch the code of row chunk c (its full variant, then its tail one) a line at a
    time: a data prefetch, which fills L2 (that the front end then reads) and L1d."""
    b = k.b
    ends = k.module.__dict__.get("sparsecc_ends", {})
    firsts = [full if full is not None else tail for full, tail in row_fns]
    lasts = [tail if tail is not None else full for full, tail in row_fns]
    if any(f is None for f in firsts) or any(f.name not in ends for f in lasts):
        return
    lo, hi = _nth_extent(k, c, list(zip(firsts, [ends[f.name] for f in lasts])))
    pf = k.intrinsic("llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
    # (8 lines a step, up to 7 past the end: the next chunk's, or padding; a prefetch of
    # any address is harmless)
    with k.loop(b.and_(lo, I64(-64)), hi, "pf", step=8 * 64) as a:
        for i in range(8):
            # (read, locality 2: prefetcht1; data cache: x86 drops instruction prefetches)
            b.call(pf, [b.inttoptr(b.add(a, I64(64 * i)), PTR), I32(0), I32(2), I32(1)])


def _nth_extent(k: _Fn, c: ir.Value, extents) -> tuple[ir.Value, ir.Value]:
    """The addresses (i64) of ``extents[c]``'s two symbols (a body's first function and its
    last one's end label), through one switch; (0, 0) for a c past them."""
    b = k.b
    slots = k.alloca(I64, "pf_lo"), k.alloca(I64, "pf_hi")
    for slot in slots:
        b.store(I64(0), slot)

    def case(ci: int) -> None:
        for slot, sym in zip(slots, extents[ci]):
            b.store(b.ptrtoint(sym, I64), slot)

    k.cases(c, len(extents), "pf", case)
    return b.load(slots[0]), b.load(slots[1])


def _kblocked_items(k: _Fn, spec, pattern, row_fns, rsplit, ntiles, nrb, tile) -> None:
    """Items of a column-blocked grouped kernel (KernelSpec.kcols): item w is row block
    w % nrb of the samples [s * T, s * T + T), s = w // nrb, T = A_GXB; its column blocks in
    turn, each block's row-chunk functions over every tile of those samples, so a chunk's
    code and the block's x are reused over the item's tiles."""
    from sparsecc.codegen.llvm.emit_specialized import kblock_count

    b = k.b
    nk = kblock_count(pattern.indices, spec.kcols)
    ng = len(row_fns) // nk
    nb = k.arg_i64(A_NB, "nb")
    per = k.arg_i64(A_GXB, "gxb")
    per = b.select(b.icmp_signed("<", per, I64(1)), I64(1), per)
    with k.loop(k.fn.args[0], k.fn.args[1], "w") as w:
        s = b.sdiv(w, nrb)
        rb = b.sub(w, b.mul(s, nrb))
        n0 = b.mul(s, per)
        n1 = b.add(n0, per)
        n1 = b.select(b.icmp_signed(">", n1, nb), nb, n1)
        r0 = b.load(b.gep(rsplit, [rb], inbounds=True))
        r1 = b.load(b.gep(rsplit, [b.add(rb, I64(1))], inbounds=True))
        if CODE_PREFETCH:  # the item's first chunk, then each chunk's next
            with b.if_then(b.icmp_signed("<", r0, r1)):
                _prefetch_code(k, row_fns, r0)
        with k.loop(I64(0), I64(nk), "kb") as kb:
            with k.loop(r0, r1, "g") as g:
                ci = b.add(b.mul(kb, I64(ng)), g)
                if CODE_PREFETCH:
                    last_g = b.icmp_signed("==", b.add(g, I64(1)), r1)
                    nxt = b.select(last_g, b.add(b.mul(b.add(kb, I64(1)), I64(ng)), r0),
                                   b.add(ci, I64(1)))
                    with b.if_then(b.icmp_signed("<", nxt, I64(nk * ng))):
                        _prefetch_code(k, row_fns, nxt)
                with k.loop(n0, n1, "n") as n:
                    with k.loop(I64(0), ntiles, "t") as t:
                        tile(n, t, ci, b.add(ci, I64(1)))


# A masked tail variant of n live vectors masks only its last one (the n - 1 before it are
# whole: plain loads and stores). MobileNetV2 global b1 plain calls level against masking
# every vector (0.993x, Zen 3, bench/op_ab.py --plain 600); kept for the simpler loop.
TAIL_PLAIN_WHOLE = True


def _masked_tail(k: _Fn, spec, rem, lanes, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors):
    """The last tile of a generic kernel, ``rem`` floats wide: lane l of vector v is live when
    v*vw + l < rem."""
    b = k.b
    masks = []
    for v in range(spec.tile):
        pos = b.add(lanes, _const_i64_vec(spec.vw, v * spec.vw))
        masks.append(b.icmp_signed("<", pos, _splat_i64_val(b, spec.vw, rem)))
    if spec.tile == 1:
        _spmm_tile(k, spec, masks, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors, None)
        return
    # Only the live vectors: a variant per count (a masked-off vector would still cost its
    # loads and FMAs).
    live = b.sdiv(b.add(rem, I64(spec.vw - 1)), I64(spec.vw))
    done = k.fn.append_basic_block("tail_done")
    sw = b.switch(live, done)
    for nv in range(1, spec.tile + 1):
        blk = k.fn.append_basic_block(f"tail{nv}")
        sw.add_case(I64(nv), blk)
        b.position_at_end(blk)
        vmasks = [None] * (nv - 1) + masks[nv - 1:nv] if TAIL_PLAIN_WHOLE else masks[:nv]
        _spmm_tile(k, replace(spec, tile=nv), vmasks, indptr, idx, data, xb, ob, bias, r0, r1,
                   xrs, ors, None)
        b.branch(done)
    b.position_at_end(done)


def _const_i64_vec(vw, c):
    return ir.Constant(ir.VectorType(I64, vw), [c] * vw)


def _splat_i64_val(b, vw, v):
    return _splat_val(b, ir.VectorType(I64, vw), v)


def _splat_val(b, vty, v):
    """The scalar ``v`` in every lane of a ``vty`` vector."""
    undef = ir.Constant(vty, ir.Undefined)
    v0 = b.insert_element(undef, v, I32(0))
    zeros = ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count)
    return b.shuffle_vector(v0, undef, zeros)


def _spmm_tile(k: _Fn, spec, masks, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors,
               row_fns):
    """Rows [r0, r1) of one j tile: generic kernels loop over the CSR arrays; specialised
    ones call their row-chunk functions [r0, r1) through a switch."""
    b = k.b
    if row_fns is not None:
        # The tail variant has the tail's extent baked in; a variant the extent never needs
        # is absent (its tile never runs).
        fns = [tail if masks is not None else full for full, tail in row_fns]
        if any(f is None for f in fns):
            return
        first = k.pf_first
        if first is not None:  # (CODE_PREFETCH) the first chunk's code, then each next's
            with b.if_then(b.and_(first, b.icmp_signed("<", r0, r1))):
                _prefetch_code(k, row_fns, r0)
        with k.loop(r0, r1, "c") as c:
            if first is not None:
                nxt = b.add(c, I64(1))
                with b.if_then(b.and_(first, b.icmp_signed("<", nxt, r1))):
                    _prefetch_code(k, row_fns, nxt)
            k.call_nth(c, fns, [data, xb, ob, bias, xrs, ors] +
                       ([k.res] if spec.residual else []) +
                       ([k.edge_masks] if spec.edge else []))
        return
    if spec.family == "bsr":
        _bsr_rows(k, spec, masks, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors)
        return
    # FMA latency x issue width needs ~8 independent chains: unroll the nonzeros when the
    # tile alone does not provide them (each unrolled step has its own accumulators).
    unroll = max(1, min(4, 8 // spec.tile))
    if spec.family == "nm":
        _csr_rows(k, spec, masks, None, idx, data, xb, ob, bias, r0, r1, xrs, ors, unroll,
                  None, None)
        return
    # Column panels: the nonzeros of each panel of x rows are done for all rows of the tile
    # before the next panel, so the panel's slice of x stays in L1; partial sums go through out.
    npanel = k.arg_i64(A_NPANEL, "npanel")
    stride = b.add(k.arg_i64(A_ROWS, "rows"), I64(1))
    with k.loop(I64(0), npanel, "panel") as panel:
        ip = b.gep(indptr, [b.mul(panel, stride)], inbounds=True)
        first = b.icmp_signed("==", panel, I64(0))
        last = b.icmp_signed("==", panel, b.sub(npanel, I64(1)))
        _csr_rows(k, spec, masks, ip, idx, data, xb, ob, bias, r0, r1, xrs, ors, unroll,
                  first, last)


def _csr_rows(k: _Fn, spec, masks, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors, unroll,
              first, last):
    """Rows [r0, r1) of a tile for CSR (one panel: ``first``/``last`` say whether the sums start
    from the bias and end in the activation, else from/into out) or N:M (no panels)."""
    b = k.b
    with k.loop(r0, r1, "o") as o:
        if spec.family == "nm":
            gn = k.arg_i64(A_GN, "gn")
            p0 = b.mul(o, gn)
            p1 = b.add(p0, gn)
        else:
            p0 = b.load(b.gep(indptr, [o], inbounds=True))
            p1 = b.load(b.gep(indptr, [b.add(o, I64(1))], inbounds=True))
        orow = b.gep(ob, [b.mul(o, ors)], inbounds=True)
        init = _init_acc(k, spec, bias, o)
        zero = ir.Constant(k.vty, [0.0] * spec.vw)
        accp = [[k.alloca(k.vty, f"acc{u}_{v}") for v in range(spec.tile)]
                for u in range(unroll)]
        for u in range(1, unroll):
            for v in range(spec.tile):
                b.store(zero, accp[u][v])
        if first is None:
            for v in range(spec.tile):
                b.store(init[v], accp[0][v])
        else:
            with b.if_else(first) as (then, other):
                with then:
                    for v in range(spec.tile):
                        b.store(init[v], accp[0][v])
                with other:
                    for v in range(spec.tile):
                        prev = k.vload(b.gep(orow, [I64(v * spec.vw)], inbounds=True),
                                       None if masks is None else masks[v])
                        b.store(prev, accp[0][v])

        def step(p, u):
            wv = k.splat(k.load_f32(data, p))
            if spec.family == "nm":
                n_, m_ = spec.block
                col = b.add(b.mul(b.udiv(b.sub(p, p0), I64(n_)), I64(m_)),
                            k.load_idx(idx, p, 8))
            elif spec.idx_bits == 64:  # dual planes (KernelSpec.idx_bits): x rows 1 apart
                pair = k.load_idx(idx, p, 64)
                lo, hi = b.and_(pair, I64(0xFFFFFFFF)), b.lshr(pair, I64(32))
                if k.odd is True or k.odd is False:  # (the tile's parity known)
                    col, col_odd = (hi, lo) if k.odd else (lo, hi)
                else:
                    col, col_odd = b.select(k.odd, hi, lo), b.select(k.odd, lo, hi)
                bases = (b.gep(xb, [col], inbounds=True), b.gep(xb, [col_odd], inbounds=True))
            else:
                col = k.load_idx(idx, p, spec.idx_bits)
            if spec.idx_bits != 64:
                base = b.gep(xb, [b.mul(col, xrs)], inbounds=True)
                bases = (base, base)
            for v in range(spec.tile):
                xv = k.vload(b.gep(bases[v % 2], [I64(v * spec.vw)], inbounds=True),
                             None if masks is None else masks[v])
                b.store(k.fma(wv, xv, b.load(accp[u][v])), accp[u][v])

        pmain = b.add(p0, b.mul(b.sdiv(b.sub(p1, p0), I64(unroll)), I64(unroll)))
        with k.loop(p0, pmain, "p", step=unroll) as p:
            for u in range(unroll):
                step(b.add(p, I64(u)), u)
        with k.loop(pmain, p1, "pr") as p:
            step(p, 0)
        for v in range(spec.tile):
            total = b.load(accp[0][v])
            for u in range(1, unroll):
                total = b.fadd(total, b.load(accp[u][v]))
            mask = None if masks is None else masks[v]
            if spec.residual:
                rv = k.vload(b.gep(k.res, [b.add(b.mul(o, ors), I64(v * spec.vw))],
                                   inbounds=True), mask)
                final = k.act(b.fadd(total, rv), spec)
                res = final if last is None else b.select(last, final, total)
            elif last is not None and spec.act not in FUSED_ACTS:
                # an expensive activation (GELU) computed on the last column panel only
                ptr = b.gep(orow, [I64(v * spec.vw)], inbounds=True)
                with b.if_else(last) as (then, other):
                    with then:
                        k.vstore(k.act(total, spec), ptr, mask)
                    with other:
                        k.vstore(total, ptr, mask)
                continue
            else:
                res = k.act(total, spec)
                if last is not None and spec.act != "none":
                    res = b.select(last, res, total)
            if spec.wrap[0]:  # (a partial sum there is garbage too: the last panel's zero)
                res = b.bitcast(b.and_(b.bitcast(res, k.wrap_keep[v].type), k.wrap_keep[v]),
                                k.vty)
            ptr = b.gep(orow, [I64(v * spec.vw)], inbounds=True)
            k.vstore(res, ptr, mask)
            if spec.dual_out and last is None:
                k.vstore(res, b.gep(ptr, [k.ods], inbounds=True), mask)
            elif spec.dual_out:  # (the sums done: the last column panel's)
                with b.if_then(last):
                    k.vstore(res, b.gep(ptr, [k.ods], inbounds=True), mask)


def _bsr_rows(k: _Fn, spec, masks, indptr, idx, data, xb, ob, bias, r0, r1, xrs, ors):
    """Block rows [r0, r1): each x vector loaded once feeds the R rows of its block."""
    b = k.b
    r, c = spec.block
    rows = k.arg_i64(A_ROWS, "rows")
    with k.loop(r0, r1, "br") as br:
        row0 = b.mul(br, I64(r))
        accp = [[k.alloca(k.vty, f"acc{i}_{v}") for v in range(spec.tile)] for i in range(r)]
        for i in range(r):
            init = _init_acc(k, spec, bias, b.add(row0, I64(i)))
            for v in range(spec.tile):
                b.store(init[v], accp[i][v])
        p0 = b.load(b.gep(indptr, [br], inbounds=True))
        p1 = b.load(b.gep(indptr, [b.add(br, I64(1))], inbounds=True))
        with k.loop(p0, p1, "p") as p:
            col0 = b.mul(k.load_idx(idx, p, spec.idx_bits), I64(c))
            vals = b.mul(p, I64(r * c))
            for cc in range(c):
                base = b.gep(xb, [b.mul(b.add(col0, I64(cc)), xrs)], inbounds=True)
                xs = [k.vload(b.gep(base, [I64(v * spec.vw)], inbounds=True),
                              None if masks is None else masks[v]) for v in range(spec.tile)]
                for i in range(r):
                    wv = k.splat(k.load_f32(data, b.add(vals, I64(i * c + cc))))
                    for v in range(spec.tile):
                        b.store(k.fma(wv, xs[v], b.load(accp[i][v])), accp[i][v])
        for i in range(r):
            row = b.add(row0, I64(i))
            with b.if_then(b.icmp_signed("<", row, rows)):
                orow = b.gep(ob, [b.mul(row, ors)], inbounds=True)
                for v in range(spec.tile):
                    mask = None if masks is None else masks[v]
                    total = b.load(accp[i][v])
                    if spec.residual:
                        rrow = b.gep(k.res, [b.mul(row, ors)], inbounds=True)
                        total = b.fadd(total, k.vload(
                            b.gep(rrow, [I64(v * spec.vw)], inbounds=True), mask))
                    k.vstore(k.act(total, spec),
                             b.gep(orow, [I64(v * spec.vw)], inbounds=True), mask)


def _init_acc(k: _Fn, spec: KernelSpec, bias, o) -> list[ir.Value]:
    if spec.has_bias:
        bv = k.splat(k.load_f32(bias, o))
        return [bv] * spec.tile
    return [ir.Constant(k.vty, [0.0] * spec.vw)] * spec.tile


# ---- spmv ---------------------------------------------------------------------------------
def emit_spmv(module: ir.Module, name: str, spec: KernelSpec,
              pattern: Pattern | None = None) -> None:
    """Gather-based CSR x dense-rows kernel; work item = output row o, for every batch row.
    With ``pattern``: work item = one of the row-chunk functions (``emit_specialized``)."""
    if pattern is not None:
        _spmv_specialised(module, name, spec, pattern)
        return
    k = _Fn(module, name, spec.vw)
    b = k.b
    vw = spec.vw
    indptr = b.inttoptr(k.arg_i64(A_INDPTR, "indptr_i"), I64.as_pointer())
    idx = b.inttoptr(k.arg_i64(A_IDX, "idx_i"), PTR)
    data, x, out = k.arg_ptr(A_DATA, "data"), k.arg_ptr(A_X, "x"), k.arg_ptr(A_OUT, "out")
    bias = k.arg_ptr(A_BIAS, "bias")
    nrows_x, xrs, ors = k.arg_i64(A_L, "m"), k.arg_i64(A_XRS, "xrs"), k.arg_i64(A_ORS, "ors")
    ity = ir.IntType(spec.idx_bits)
    ivty = ir.VectorType(ity, vw)
    pvty = ir.VectorType(F32.as_pointer(), vw)
    mty = ir.VectorType(I1, vw)
    gather = k.intrinsic(f"llvm.masked.gather.v{vw}f32.v{vw}p0", k.vty,
                         [pvty, I32, mty, k.vty])
    with k.loop(k.fn.args[0], k.fn.args[1], "o") as o:
        p0 = b.load(b.gep(indptr, [o], inbounds=True))
        p1 = b.load(b.gep(indptr, [b.add(o, I64(1))], inbounds=True))
        with k.loop(I64(0), nrows_x, "r") as r:
            xr = b.gep(x, [b.mul(r, xrs)], inbounds=True)
            accp = k.alloca(k.vty, "acc")
            b.store(ir.Constant(k.vty, [0.0] * vw), accp)
            nfull = b.add(p0, b.mul(b.sdiv(b.sub(p1, p0), I64(vw)), I64(vw)))
            step = k.alloca(I64, "pp")
            b.store(p0, step)
            head = k.fn.append_basic_block("g_head")
            body = k.fn.append_basic_block("g_body")
            tail = k.fn.append_basic_block("g_tail")
            b.branch(head)
            b.position_at_end(head)
            p = b.load(step)
            b.cbranch(b.icmp_signed("<", p, nfull), body, tail)
            b.position_at_end(body)
            iv = b.load(b.bitcast(b.gep(b.bitcast(idx, ity.as_pointer()), [p], inbounds=True),
                                  ivty.as_pointer()), align=2)
            # llvmlite's gep takes no vector index: form base + 4 * idx as integers.
            i64v = ir.VectorType(I64, vw)
            offs = b.shl(b.zext(iv, i64v), ir.Constant(i64v, [2] * vw))
            ptrs = b.inttoptr(b.add(_splat_i64_val(b, vw, b.ptrtoint(xr, I64)), offs), pvty)
            allm = ir.Constant(mty, [1] * vw)
            xv = b.call(gather, [ptrs, I32(4), allm, ir.Constant(k.vty, [0.0] * vw)])
            dv = b.load(b.bitcast(b.gep(data, [p], inbounds=True), k.vty.as_pointer()), align=4)
            b.store(k.fma(dv, xv, b.load(accp)), accp)
            b.store(b.add(p, I64(vw)), step)
            b.branch(head)
            b.position_at_end(tail)
            red = k.intrinsic(f"llvm.vector.reduce.fadd.v{vw}f32", F32, [F32, k.vty])
            total = b.call(red, [ir.Constant(F32, 0.0), b.load(accp)], fastmath=("reassoc",))
            sp = k.alloca(F32, "s")
            b.store(total, sp)
            with k.loop(nfull, p1, "q") as q:
                xs = k.load_f32(xr, k.load_idx(idx, q, spec.idx_bits))
                b.store(k.fma(k.load_f32(data, q), xs, b.load(sp)), sp)
            s = b.load(sp)
            if spec.has_bias:
                s = b.fadd(s, k.load_f32(bias, o))
            s = k.act(s, spec) if spec.act != "none" else s
            b.store(s, b.gep(out, [b.add(b.mul(r, ors), o)], inbounds=True))
    b.ret_void()


def _spmv_specialised(module: ir.Module, name: str, spec: KernelSpec, pattern: Pattern):
    from sparsecc.codegen.llvm.emit_specialized import spmv_row_chunks

    fns = spmv_row_chunks(module, name, spec, pattern)
    k = _Fn(module, name, spec.vw)
    b = k.b
    data, x, out = k.arg_ptr(A_DATA, "data"), k.arg_ptr(A_X, "x"), k.arg_ptr(A_OUT, "out")
    bias = k.arg_ptr(A_BIAS, "bias")
    nrows_x, xrs, ors = k.arg_i64(A_L, "m"), k.arg_i64(A_XRS, "xrs"), k.arg_i64(A_ORS, "ors")
    with k.loop(k.fn.args[0], k.fn.args[1], "c") as c:
        with k.loop(I64(0), nrows_x, "r") as r:
            xr = b.gep(x, [b.mul(r, xrs)], inbounds=True)
            orow = b.gep(out, [b.mul(r, ors)], inbounds=True)
            k.call_nth(c, fns, [data, xr, orow, bias])
    b.ret_void()


def new_module(name: str) -> ir.Module:
    return ir.Module(name=name)
