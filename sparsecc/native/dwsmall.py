"""Depthwise convs at stride 1 and 2 as an LLVM kernel specialised to the layer's geometry: a
channel's output plane (or a band of its rows) in vector registers.

An item is one plane (sample, channel). Its accumulators start at the bias; each nonzero tap
(dy, dx) adds w * x read from the same flat input plane at the fixed offset dy * w + dx; the
lanes whose input is padding (a row above or below the plane, a column left or right of its
row) are masked off in the load, so no lane reads outside the plane and no padded copy is
made. Taps whose weight is zero are skipped (a branch per tap: a pruned layer keeps ~1 of 9).
The activation is applied in registers and each output vector stored once.

Planes of at most MAX_VECTORS vectors (28 x 28 with AVX-512) are unrolled whole, in groups
of 24 accumulators (12 with AVX2). Larger ones go in bands of whole rows whose column pattern
repeats (lcm(w, vw) floats: 2 rows of 56, 1 row of 112): the bands at the top and bottom
edges unrolled with their own masks, the interior ones a loop sharing one set of masks.

At stride 1 only where the output plane has the input's shape ("same" padding). At stride 2
(emit_depthwise_s2) the vectors run along output rows instead, and a tap's inputs (every
other float of an input row) come from one or two masked loads and a shuffle of their even
floats. ``mult`` output channels per input channel (1 for MobileNetV2; a dense conv of a
1-channel input, the MNIST CNN's first, is all of them on one plane). The numba kernel
(codegen/numba/conv.py) does the rest (other strides, stride-1 planes with no band of <= 24
vectors).

ABI ``void k(i64 start, i64 stop, i64* args)``; args: x, weight (C, kh*kw), bias, out, C
(output channels); with ``q8`` out is the codes' planes, then 1 / scale (float64 bits), the
zero point and the dwords a sample (_Store).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, FUSED_ACTS, I1, I32, I64, act_key
from sparsecc.ir.kinds import conv_out
from sparsecc.native.vmath import _K

D_X, D_W, D_BIAS, D_OUT, D_C, D_INV, D_ZERO, D_QSTRIDE = range(8)
# with ``expand``: x is the 1x1 expand conv's input (ex_cin channels), its CSR weight
# (indptr i64, column i32, value f32) and bias (f32, or a zero to point at)
D_EX_INDPTR, D_EX_IDX, D_EX_DATA, D_EX_BIAS, D_EX_CIN = range(8, 13)
# with ex_block > 1: the per-thread scratch holding the group's expanded planes, its floats a
# thread and the threads sharing the call (a thread's planes at scratch + tid * per)
D_EX_SCRATCH, D_EX_PER, D_EX_THREADS = range(13, 16)
# Vectors of positions the expand computes a step a channel at a time with AVX2 (8: as many
# accumulator chains as FMA latency x 2 pipes want; expand_step)
EXPAND_STEP_AVX2 = 8
# the largest plane an expanded channel may take on the stack (floats)
EXPAND_PLANE = 112 * 112
# Vectors a plane may have (28 x 28 = 49 with AVX-512): the code is unrolled over them, one
# masked load and FMA per tap and vector, in groups of at most group() accumulators.
MAX_VECTORS = 64
# A band of rows may take this many groups of accumulators (DepthwiseSpec.band), computed one
# group after the other: with AVX2's 12 a 112-wide row (14 vectors) is a band of two groups
# (MobileNetV2's features.1 depthwise conv, 112 x 112, ran the numba kernel before).
BAND_GROUPS = 2
# ... for layers keeping at least this many taps a channel: with ~1 the numba kernel, adding
# each tap straight from x into out, is as fast. Zen 3, same process (bench/op_ab.py, 12
# rounds): MobileNetV2 global (features.1's depthwise conv 47 % dense, 4.2 taps a channel)
# 55 / 842 us against 116 / 1686 at batch 1 / 16 (the call 1.04x / 1.03x faster); at the
# uniform profile (~0.9 taps) 123 against 108 us.
WIDE_BAND_TAPS = 2


@dataclass(frozen=True)
class DepthwiseSpec:
    vw: int
    h: int
    w: int
    kh: int
    kw: int
    ph: int
    pw: int
    dh: int
    dw: int
    act: str = "none"
    act_a: float = 0.0
    act_b: float = 0.0
    has_bias: bool = True
    mult: int = 1  # output channels per input channel (a 1-channel input's dense conv: all)
    stride: int = 1  # 1, or 2 in both dimensions (emit_depthwise_s2)
    # write uint8 codes (clamp(rint(y / scale) + zero, 0, 255)) into the int8 1x1 conv's
    # grouped planes (4 channels a dword) instead of float32 planes
    q8: bool = False
    # the 1x1 conv before (sparse, stride 1) computed here a channel at a time: its plane goes
    # through the stack (L1/L2) and never to memory; its activation ("" = no expand)
    expand: str = ""
    ex_a: float = 0.0
    ex_b: float = 0.0
    ex_bias: bool = True
    # > 1: the expand conv computed for this many channels at a time (an item is that many
    # planes): each x vector loaded once for all of them, its weights a dense table (cin x
    # ex_block a group); for expand convs dense enough that the union of a group's rows is
    # about all of cin (native.lower.EXPAND_BLOCK_DENSITY)
    ex_block: int = 1
    # floats from one channel of x (of the expand's input, with ``expand``) to the next and
    # from one output channel to the next (0: a plane's h x w / ho x wo; native.lower's
    # channel strides, Lowering.cs)
    xcs: int = 0
    ocs: int = 0
    # > 0: out tile-major (Lowering.tm), floats from one 16-position tile to the next (C x
    # 16), a channel's line 16 floats into its tile; stride 1 over planes of at most
    # MAX_VECTORS vectors (each output vector then is one tile's line), not q8
    ots: int = 0

    @property
    def key(self) -> str:
        act = act_key(self)
        return (f"dws_v{self.vw}_{self.h}x{self.w}_k{self.kh}x{self.kw}_p{self.ph}x{self.pw}"
                f"_d{self.dh}x{self.dw}_{act}_{'b' if self.has_bias else 'nb'}"
                + (f"_m{self.mult}" if self.mult != 1 else "")
                + (f"_s{self.stride}" if self.stride != 1 else "") + ("_q8" if self.q8 else "")
                + (f"_x{self.expand}{self.ex_a:g}_{self.ex_b:g}{'b' if self.ex_bias else ''}"
                   if self.expand else "")
                + (f"_xb{self.ex_block}" if self.ex_block > 1 else "")
                + (f"_xcs{self.xcs}" if self.xcs else "")
                + (f"_ocs{self.ocs}" if self.ocs else "")
                + (f"_ots{self.ots}" if self.ots else ""))

    @property
    def tile_out(self) -> bool:
        """Whether ``ots`` may be taken: vw 16, stride 1, no bands, float32 out."""
        return self.vw == 16 and self.stride == 1 and self.vectors <= MAX_VECTORS and \
            not self.q8

    def whole_out(self, hw_out: int) -> bool:
        """Whether an output plane has room for whole vectors (tile-major, or channels at
        least the vectors' floats apart): the last vector is then stored whole, its lanes past
        the plane finite (the bias and the activation of zeros), not left as they were."""
        return bool(self.ots) or self.ocs >= -(-hw_out // self.vw) * self.vw

    @property
    def ho(self) -> int:
        return conv_out(self.h, self.kh, self.stride, self.ph, self.dh)

    @property
    def wo(self) -> int:
        return conv_out(self.w, self.kw, self.stride, self.pw, self.dw)

    @property
    def vectors(self) -> int:
        return -(-self.h * self.w // self.vw)

    @property
    def group(self) -> int:
        """Accumulators held at once (of 32 vector registers with AVX-512, 16 with AVX2)."""
        return 24 if self.vw >= 16 else 12

    def mask(self, tap: int, v: int) -> np.ndarray:
        """Bool lanes of vector v for tap: the output positions whose input lies in the
        plane (and that are in the plane)."""
        i, j = divmod(tap, self.kw)
        dy, dx = i * self.dh - self.ph, j * self.dw - self.pw
        p = v * self.vw + np.arange(self.vw)
        oh, ow = p // self.w, p % self.w
        return ((p < self.h * self.w) & (oh + dy >= 0) & (oh + dy < self.h)
                & (ow + dx >= 0) & (ow + dx < self.w))

    @property
    def band(self) -> int | None:
        """Vectors of a band of whole rows whose column pattern repeats (lcm(w, vw) floats),
        for planes above MAX_VECTORS; None when there is no such band (or it is over
        BAND_GROUPS groups of accumulators: a band is computed a group at a time)."""
        period = self.w * self.vw // math.gcd(self.w, self.vw)
        nv = period // self.vw
        if (self.h * self.w) % period or nv > BAND_GROUPS * self.group:
            return None
        return nv

    def bands(self) -> tuple[int, int, int]:
        """(bands, first interior band, first band after the interior ones): an interior
        band has every row's taps inside the plane, so its masks are those of any other."""
        nv = self.band
        rows = nv * self.vw // self.w
        nb = self.h // rows
        dys = [i * self.dh - self.ph for i in range(self.kh)]
        interior = [b for b in range(nb)
                    if b * rows + min(dys) >= 0 and (b + 1) * rows - 1 + max(dys) < self.h]
        if not interior:
            return nb, nb, nb
        return nb, interior[0], interior[-1] + 1

    def emit(self, module: ir.Module, name: str) -> None:
        if self.stride == 1:
            emit_depthwise_small(module, name, self)
        else:
            emit_depthwise_s2(module, name, self)

    # ---- stride 2 ---------------------------------------------------------------------------
    @property
    def unit_rows(self) -> int:
        """Output rows a stride-2 unit covers: 2 when two rows fit one vector (each row's
        inputs, 2 * wo - 1 floats, then fit one vector too), else 1."""
        return 2 if 2 * self.wo <= self.vw else 1

    def unit_vectors(self, rows: int) -> list[tuple[int, int, list[tuple[int, int, int, int]]]]:
        """A stride-2 unit of ``rows`` output rows as vectors: (first output float relative to
        the unit's, lanes, segments); a segment (row in the unit, first column, lanes, first
        lane) is a run of one output row, whose inputs are every other float of one input
        row."""
        if self.unit_rows == 2:
            return [(0, rows * self.wo, [(r, 0, self.wo, r * self.wo) for r in range(rows)])]
        return [(c0, min(self.vw, self.wo - c0), [(0, c0, min(self.vw, self.wo - c0), 0)])
                for c0 in range(0, self.wo, self.vw)]

    def s2_units(self) -> tuple[int, int, int, int]:
        """(units, first interior unit, end of the interior units, units per group): an
        interior unit is full and every tap of its rows reads inside the plane."""
        ru = self.unit_rows
        nu = -(-self.ho // ru)
        dys = [i * self.dh - self.ph for i in range(self.kh)]
        inner = [u for u in range(nu) if (u + 1) * ru <= self.ho and u * ru * 2 + min(dys) >= 0
                 and ((u + 1) * ru - 1) * 2 + max(dys) < self.h]
        per = max(1, self.group // len(self.unit_vectors(ru)))
        if not inner:
            return nu, nu, nu, per
        return nu, inner[0], inner[-1] + 1, per


def fits(vw: int, h: int, w: int, ho: int, wo: int, sh: int, sw: int, cin: int, cout: int,
         act: str, kh: int, kw: int, ph: int, pw: int, dh: int, dw: int,
         taps: float = 9.0) -> bool:
    """Whether this kernel runs a conv of this geometry (else the numba kernel does);
    ``taps``: the nonzero taps a channel keeps on average (a band of several groups wants
    WIDE_BAND_TAPS)."""
    if cout % cin or act not in FUSED_ACTS:
        return False
    if sh == sw == 2:  # stride 2: rows of any width (a row's vectors, or two rows a vector)
        spec = DepthwiseSpec(vw, h, w, kh, kw, ph, pw, dh, dw, stride=2)
        return (spec.ho, spec.wo) == (ho, wo) and ho > 0 and wo > 0
    if not (sh == sw == 1 and (ho, wo) == (h, w)):
        return False
    spec = DepthwiseSpec(vw, h, w, kh, kw, ph, pw, dh, dw)
    if spec.vectors <= MAX_VECTORS:
        return True
    return spec.band is not None and (spec.band <= spec.group or taps >= WIDE_BAND_TAPS)


def lane_mask(vw: int, cond: np.ndarray) -> ir.Constant | None:
    """A constant lane mask (None when every lane is on: a plain load / store)."""
    return None if cond.all() else ir.Constant(ir.VectorType(I1, vw), [bool(v) for v in cond])


def row_load(k: _K, rowp, col: int, need: int, w: int):
    """vw floats of an input row (``rowp``, w floats) from column ``col``, the first ``need``
    of them used; lanes outside [0, w) read as zero and are not read at all (the mask), so
    nothing outside the row is touched. None when no lane is inside."""
    c = col + np.arange(k.vw)
    live = (c >= 0) & (c < w) & (np.arange(k.vw) < need)
    if not live.any():
        return None
    # no inbounds: a tap left of column 0 starts before the row (those lanes masked)
    return k.vload(k.b.gep(rowp, [I64(col)]), lane_mask(k.vw, live))


def row_run_inside(col: int, m: int, w: int, stride: int, vw: int) -> bool:
    """Whether row_run's loads for (col, m) have every lane they use inside the row and
    m == vw: their masks are then the same wherever along the row they are."""
    span = m if stride == 1 else 2 * (m - 1) + 1
    return m == vw and col >= 0 and col + span <= w


def row_run(k: _K, rowp, col: int, m: int, w: int, stride: int):
    """The inputs of m consecutive output columns from an input row, the first at column
    ``col``: one masked load at stride 1; at stride 2 two, and a shuffle of their even
    floats. None when every one is padding."""
    if stride == 1:
        return row_load(k, rowp, col, m, w)
    span = 2 * (m - 1) + 1
    lo, hi = row_load(k, rowp, col, span, w), row_load(k, rowp, col + k.vw, span - k.vw, w)
    if lo is None and hi is None:
        return None
    zero = ir.Constant(k.vty, [0.0] * k.vw)
    return k.b.shuffle_vector(zero if lo is None else lo, zero if hi is None else hi,
                              ir.Constant(ir.VectorType(I32, k.vw), list(range(0, 2 * k.vw, 2))))


def emit_depthwise_small(module: ir.Module, name: str, spec: DepthwiseSpec) -> None:
    vw, hw = spec.vw, spec.h * spec.w
    if spec.ots and (not spec.tile_out or spec.ho * spec.wo != hw):
        raise ValueError(f"tile-major out needs stride 1 over at most {MAX_VECTORS} vectors")
    k = _K(module, name, vw)
    b = k.b
    taps = spec.kh * spec.kw

    def group(xb, ob, wvals, init, vecs, at, base=None) -> None:
        """Vectors ``vecs`` of the plane, computed with the masks of vectors ``at`` (the same
        vectors, or an interior band's when ``base`` (floats, i64) moves them)."""
        if base is not None:
            xb, ob = b.gep(xb, [base]), b.gep(ob, [base])
        acc = [k.alloca(k.vty, f"acc{n}") for n in range(len(vecs))]
        for a in acc:
            b.store(init, a)
        for ti in range(taps):
            live = [n for n in range(len(vecs)) if spec.mask(ti, at[n]).any()]
            if not live:  # the tap reads only padding here
                continue
            i, j = divmod(ti, spec.kw)
            off = (i * spec.dh - spec.ph) * spec.w + (j * spec.dw - spec.pw)
            # a zero weight is skipped (unordered: a NaN weight is not zero)
            with b.if_then(b.fcmp_unordered("!=", wvals[ti], ir.Constant(F32, 0.0))):
                ws = k.splat(wvals[ti])
                for n in live:
                    # no inbounds: a tap above the plane starts before it (its lanes there
                    # are masked and never read)
                    xv = k.vload(b.gep(xb, [I64(vecs[n] * vw + off)]),
                                 lane_mask(vw, spec.mask(ti, at[n])))
                    b.store(k.fma(ws, xv, b.load(acc[n])), acc[n])
        whole = spec.whole_out(hw)
        for n, v in enumerate(vecs):
            lanes = (at[n] * vw + np.arange(vw) < hw) | whole
            store(b.load(acc[n]), b.gep(ob, [I64(v * (spec.ots or vw))]), lanes)

    with _planes(k, spec, hw, hw) as (xb, ob, wvals, init, store):
        if spec.vectors <= MAX_VECTORS:
            for g0 in range(0, spec.vectors, spec.group):
                vecs = list(range(g0, min(g0 + spec.group, spec.vectors)))
                group(xb, ob, wvals, init, vecs, vecs)
        else:  # bands of whole rows: the edge ones unrolled, the interior ones a loop
            nv = spec.band
            nb, i0, i1 = spec.bands()
            parts = [list(range(g0, min(g0 + spec.group, nv)))
                     for g0 in range(0, nv, spec.group)]  # (a band's groups)
            for bd in [*range(i0), *range(i1, nb)]:
                for part in parts:
                    vecs = [bd * nv + v for v in part]
                    group(xb, ob, wvals, init, vecs, vecs)
            with k.loop(I64(i0), I64(i1), "band") as bd:
                for part in parts:
                    group(xb, ob, wvals, init, part, [i0 * nv + v for v in part],
                          b.mul(bd, I64(nv * vw)))
    b.ret_void()


def emit_depthwise_s2(module: ir.Module, name: str, spec: DepthwiseSpec) -> None:
    """Stride 2: output vectors along output rows (or two short rows a vector). A tap's
    inputs for a run of output columns are every other float of one input row: one or two
    masked loads (lanes off outside the row, so nothing outside the plane is read) and a
    shuffle of their even floats, then one FMA. Units of rows at the plane's top and bottom
    edges are unrolled with their own row checks; the interior ones are a loop over groups
    of units sharing one set of masks."""
    vw, sw = spec.vw, 2
    if spec.ots:
        raise ValueError("tile-major out needs stride 1")
    k = _K(module, name, vw)
    b = k.b
    taps = spec.kh * spec.kw
    zero = ir.Constant(k.vty, [0.0] * vw)
    idx_ty = ir.VectorType(I32, vw)
    ru = spec.unit_rows

    def row(xb, r: int):  # (no inbounds: a row above the plane is never read, only named)
        return b.gep(xb, [I64(r * spec.w)])

    def group(entries, wvals, init) -> None:
        """entries: (x unit base, out unit base, the unit's first output row if its taps
        need row checks else None, unit rows, vector)."""
        acc = [k.alloca(k.vty, f"acc{n}") for n in range(len(entries))]
        for a in acc:
            b.store(init, a)
        for ti in range(taps):
            i, j = divmod(ti, spec.kw)
            dy, dx = i * spec.dh - spec.ph, j * spec.dw - spec.pw
            plan = []
            for n, (xb, _, oh0, _, (_, _, segs)) in enumerate(entries):
                live = [sg for sg in segs if oh0 is None
                        or 0 <= (oh0 + sg[0]) * 2 + dy < spec.h]
                if live:
                    plan.append((n, xb, live, segs))
            if not plan:
                continue
            with b.if_then(b.fcmp_unordered("!=", wvals[ti], ir.Constant(F32, 0.0))):
                ws = k.splat(wvals[ti])
                for n, xb, live, segs in plan:
                    if len(segs) == 1:  # one run: its inputs span up to two vectors
                        r, c0, m, _ = live[0]
                        xv = row_run(k, row(xb, r * 2 + dy), c0 * sw + dx, m, spec.w, sw)
                        if xv is None:  # all padding (still w x 0: a NaN weight stays NaN)
                            xv = zero
                    else:  # two short rows: one vector of inputs each (a row whose
                        srcs = [zero, zero]  # tap row is padding reads the zero vector)
                        idx = [0] * vw
                        for r, c0, m, l0 in segs:
                            if (r, c0, m, l0) in live:
                                v = row_load(k, row(xb, r * 2 + dy), c0 * sw + dx,
                                             sw * (m - 1) + 1, spec.w)
                                srcs[r] = zero if v is None else v
                            for la in range(m):
                                idx[l0 + la] = r * vw + sw * la
                        xv = b.shuffle_vector(srcs[0], srcs[1], ir.Constant(idx_ty, idx))
                    b.store(k.fma(ws, xv, b.load(acc[n])), acc[n])
        for n, (_, ob, _, _, (off, m, _)) in enumerate(entries):
            store(b.load(acc[n]), b.gep(ob, [I64(off)]), np.arange(vw) < m)

    def unit_entries(xb, ob, u, checked: bool):
        """The entries of unit ``u`` (an i64 value or an int) at bases xb / ob."""
        if isinstance(u, int):
            rows = min(ru, spec.ho - u * ru)
            uu = I64(u)
        else:
            rows, uu = ru, u
        xu = b.gep(xb, [b.mul(uu, I64(ru * 2 * spec.w))])
        ou = b.gep(ob, [b.mul(uu, I64(ru * spec.wo))])
        oh0 = u * ru if checked else None
        return [(xu, ou, oh0, rows, v) for v in spec.unit_vectors(rows)]

    nu, i0, i1, per = spec.s2_units()
    with _planes(k, spec, spec.h * spec.w, spec.ho * spec.wo) as (xb, ob, wvals, init, store):
        nloop = (i1 - i0) // per
        edges = [*range(i0), *range(i0 + nloop * per, nu)]
        for g0 in range(0, len(edges), per):
            ents = [e for u in edges[g0:g0 + per]
                    for e in unit_entries(xb, ob, u, not i0 <= u < i1)]
            group(ents, wvals, init)
        if nloop:
            with k.loop(I64(0), I64(nloop), "band") as bd:
                u0 = b.add(I64(i0), b.mul(bd, I64(per)))
                ents = [e for q in range(per)
                        for e in unit_entries(xb, ob, b.add(u0, I64(q)), False)]
                group(ents, wvals, init)
    b.ret_void()


@contextmanager
def _planes(k: _K, spec: DepthwiseSpec, hw_in: int, hw_out: int):
    """Both emitters' work items: the loop over output planes t = (sample, channel c);
    yields the input plane (x's, or the expanded channel's on the stack), the output plane,
    the channel's tap weights, its accumulators' start (the bias) and the store."""
    b = k.b
    x, wt, bias, out = (k.arg_ptr(i, n) for i, n in ((D_X, "x"), (D_W, "wt"), (D_BIAS, "bias"),
                                                     (D_OUT, "out")))
    C = k.arg_i64(D_C, "C")
    taps = spec.kh * spec.kw
    store = _Store(k, spec)
    expand = _Expand(k, spec, x, C) if spec.expand else None
    M = spec.ex_block if expand else 1
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as it, ExitStack() as inner:
        if M > 1:  # item (n, channel group g): its M expanded planes, then each one's taps
            G = b.sdiv(C, I64(M))
            n = b.sdiv(it, G)
            g = b.sub(it, b.mul(n, G))
            expand.planes(n, g)
            m = inner.enter_context(k.loop(I64(0), I64(M), "m"))
            c = b.add(b.mul(g, I64(M)), m)
            t = b.add(b.mul(n, C), c)
            xb = b.gep(expand.buf, [b.mul(m, I64(expand.pstride))])
        else:
            t = it
            c = b.srem(t, C)
            # output plane t = (n, c) reads input plane n * cin + c // mult = t // mult
            xb = expand.plane(t, c) if expand else \
                b.gep(x, [b.mul(b.sdiv(t, I64(spec.mult)) if spec.mult > 1 else t,
                                I64(spec.xcs or hw_in))])
        ob = store.plane(out, t, c, C, hw_out)
        wrow = b.gep(wt, [b.mul(c, I64(taps))])
        init = k.splat(b.load(b.gep(bias, [c]))) if spec.has_bias else \
            ir.Constant(k.vty, [0.0] * spec.vw)
        yield xb, ob, [b.load(b.gep(wrow, [I64(ti)])) for ti in range(taps)], init, store


class _Store:
    """The output side of both emitters: float32 planes, or (``spec.q8``) uint8 codes into the
    int8 1x1 conv's input planes, laid out as native.qlinear's PhaseSpec writes them (sample n
    at dword n * qstride, channel c's byte c % 4 of dword (c // 4) * hw + position). A plane's
    base is a pointer whose element is one position (4 bytes: a float, or a dword of codes),
    so the emitters' position offsets serve both."""

    def __init__(self, k: _K, spec: DepthwiseSpec):
        self.k, self.spec = k, spec
        vw = spec.vw
        if spec.q8:
            b = k.b
            self.inv = k.splat(b.fptrunc(b.bitcast(k.arg_i64(D_INV, "inv"), ir.DoubleType()),
                                          F32))
            self.zero = k.splat(b.sitofp(k.arg_i64(D_ZERO, "zero"), F32))
            self.qstride = k.arg_i64(D_QSTRIDE, "qstride")
            self.bty = ir.VectorType(ir.IntType(8), 4 * vw)
            # each code at the first byte of its position's dword
            self.spread = ir.Constant(ir.VectorType(I32, 4 * vw), [q // 4 for q in range(4 * vw)])
            self.rint = k.intrinsic(f"llvm.rint.v{vw}f32", k.vty, [k.vty])
            self.mstore = k.intrinsic(f"llvm.masked.store.v{4 * vw}i8.p0", ir.VoidType(),
                                      [self.bty, self.bty.as_pointer(), I32, ir.VectorType(
                                          I1, 4 * vw)])

    def plane(self, out, t, c, C, hw: int):
        """Output plane t = (sample, channel c)'s base (tile-major: its line in the
        sample's first tile)."""
        b = self.k.b
        if self.spec.ots:  # (a sample: its tiles, ots floats each)
            tiles = -(-hw // self.spec.vw)
            return b.gep(out, [b.add(b.mul(b.sdiv(t, C), I64(tiles * self.spec.ots)),
                                     b.mul(c, I64(16)))])
        if not self.spec.q8:
            return b.gep(out, [b.mul(t, I64(self.spec.ocs or hw))])
        n = b.sdiv(t, C)
        dword = b.add(b.mul(n, self.qstride), b.mul(b.sdiv(c, I64(4)), I64(hw)))
        byte = b.add(b.mul(dword, I64(4)), b.srem(c, I64(4)))
        q = b.bitcast(out, ir.IntType(8).as_pointer())
        return b.bitcast(b.gep(q, [byte]), F32.as_pointer())

    def __call__(self, acc, ptr, lanes: np.ndarray) -> None:
        k, vw = self.k, self.spec.vw
        b = k.b
        v = k.act(acc, self.spec)
        if not self.spec.q8:
            k.vstore(v, ptr, lane_mask(vw, lanes))
            return
        # native.qlinear's codes: rint(v / scale) + zero clamped to [0, 255], NaN -> 0
        v = b.fadd(b.call(self.rint, [b.fmul(v, self.inv)]), self.zero)
        lo, hi = k.c(0.0), k.c(255.0)
        v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
        v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
        v = b.select(b.fcmp_unordered("uno", v, v), lo, v)
        codes = b.fptoui(v, ir.VectorType(ir.IntType(8), vw))
        wide = b.shuffle_vector(codes, codes, self.spread)
        mask = ir.Constant(ir.VectorType(I1, 4 * vw),
                           [q % 4 == 0 and bool(lanes[q // 4]) for q in range(4 * vw)])
        b.call(self.mstore, [wide, b.bitcast(ptr, self.bty.as_pointer()), I32(1), mask])


def expand_step(spec: DepthwiseSpec) -> int:
    """Vectors of positions the expand computes a step: 4; with AVX2 2 for blocks of
    ex_block channels (4 x 2 accumulators, 2 x vectors and a weight in its 16 registers;
    4 x 4 would spill), EXPAND_STEP_AVX2 a channel at a time."""
    if spec.vw < 16:
        return 2 if spec.ex_block > 1 else EXPAND_STEP_AVX2
    return 4


def planes_stride(spec: DepthwiseSpec) -> int:
    """Floats an expanded plane takes (whole steps of expand_step vectors)."""
    span = expand_step(spec) * spec.vw
    return -(-spec.h * spec.w // span) * span


def expand_scratch(spec: DepthwiseSpec) -> int:
    """Floats of per-thread scratch a call needs: ex_block expanded planes (0: none)."""
    return planes_stride(spec) * spec.ex_block if spec.expand and spec.ex_block > 1 else 0


class _Expand:
    """The 1x1 conv before the depthwise one, a channel at a time (``spec.expand``): plane c
    = act(bias[c] + sum over row c's nonzeros w * x[n, k]) on the stack, 4 vectors a step
    (the row's few nonzeros inside), then the depthwise taps read it as their input plane.
    An expanded channel feeds exactly one depthwise channel (mult 1), so nothing is computed
    twice, and the expanded tensor (6x the block's input) never goes through memory."""

    def __init__(self, k: _K, spec: DepthwiseSpec, x, C):
        b = k.b
        self.k, self.spec, self.x, self.C = k, spec, x, C
        self.hw = spec.h * spec.w
        self.xcs = spec.xcs or self.hw  # (floats from one input channel to the next)
        self.indptr = b.inttoptr(k.arg_i64(D_EX_INDPTR, "ex_indptr"), I64.as_pointer())
        self.idx = b.inttoptr(k.arg_i64(D_EX_IDX, "ex_idx"), I32.as_pointer())
        self.data = k.arg_ptr(D_EX_DATA, "ex_data")
        self.bias = k.arg_ptr(D_EX_BIAS, "ex_bias")
        self.cin = k.arg_i64(D_EX_CIN, "ex_cin")
        self.pstride = planes_stride(spec)  # (floats from one plane to the next)
        if spec.ex_block > 1:  # (up to 4 x 50 KB: in the arena's per-thread scratch)
            per, threads = k.arg_i64(D_EX_PER, "ex_per"), k.arg_i64(D_EX_THREADS, "ex_threads")
            tid = b.sext(b.call(k.intrinsic("omp_get_thread_num", I32, []), []), I64)
            last = b.sub(threads, I64(1))
            tid = b.select(b.icmp_signed("<", tid, last), tid, last)
            tid = b.select(b.icmp_signed("<", tid, I64(0)), I64(0), tid)
            self.buf = b.gep(k.arg_ptr(D_EX_SCRATCH, "ex_scratch"), [b.mul(tid, per)])
        else:
            self.buf = b.bitcast(k.alloca(ir.ArrayType(F32, self.pstride), "xplane"),
                                 F32.as_pointer())
        self.act = _ActOf(spec.expand, spec.ex_a, spec.ex_b)

    def planes(self, n, g) -> None:
        """Expanded channels g * M .. g * M + M - 1 of sample n (M = spec.ex_block) into the
        scratch planes, expand_step vectors at a time: for each input channel, its x vectors
        loaded once and multiplied by the group's M weights (the dense table (C / M, cin, M)
        in ex_data, zeros included)."""
        k, spec, vw = self.k, self.spec, self.spec.vw
        b = k.b
        M = spec.ex_block
        xn = b.gep(self.x, [b.mul(b.mul(n, self.cin), I64(self.xcs))])
        wg = b.gep(self.data, [b.mul(b.mul(g, self.cin), I64(M))])
        c0 = b.mul(g, I64(M))
        inits = [k.splat(b.load(b.gep(self.bias, [b.add(c0, I64(m))]))) if spec.ex_bias else
                 ir.Constant(k.vty, [0.0] * vw) for m in range(M)]

        def step(pos, nvec: int, last_lanes: int) -> None:
            acc = [[k.alloca(k.vty, f"xb{m}_{q}") for q in range(nvec)] for m in range(M)]
            for m in range(M):
                for a in acc[m]:
                    b.store(inits[m], a)
            masks = [None] * nvec
            masks[-1] = lane_mask(vw, np.arange(vw) < last_lanes)
            with k.loop(I64(0), self.cin, "xk") as kk:
                row = b.gep(xn, [b.add(b.mul(kk, I64(self.xcs)), pos)])
                xs = [k.vload(b.gep(row, [I64(q * vw)]), masks[q]) for q in range(nvec)]
                wk = b.gep(wg, [b.mul(kk, I64(M))])
                for m in range(M):
                    ws = k.splat(b.load(b.gep(wk, [I64(m)])))
                    for q in range(nvec):
                        b.store(k.fma(ws, xs[q], b.load(acc[m][q])), acc[m][q])
            for m in range(M):
                base = b.gep(self.buf, [b.add(pos, I64(m * self.pstride))])
                for q in range(nvec):
                    k.vstore(k.act(b.load(acc[m][q]), self.act), b.gep(base, [I64(q * vw)]),
                             None)

        self._steps(step)

    def _steps(self, step) -> None:
        """``step(pos, vectors, live lanes of the last one)`` over the plane: expand_step
        vectors at a time, then the rest (a part last vector's lanes past the plane are
        computed too: the plane has room for them and the depthwise loads mask them off)."""
        k, hw, vw = self.k, self.hw, self.spec.vw
        nstep = expand_step(self.spec)
        span = nstep * vw
        nfull = hw // span
        tail = hw - nfull * span
        if nfull:
            with k.loop(I64(0), I64(nfull * span), "xp", step=span) as pos:
                step(pos, nstep, vw)
        if tail:
            nvec = -(-tail // vw)
            step(I64(nfull * span), nvec, tail - (nvec - 1) * vw)

    def plane(self, t, c):
        """Compute expanded channel c of sample t // C into the stack plane; its pointer."""
        k, spec, vw = self.k, self.spec, self.spec.vw
        b = k.b
        n = b.sdiv(t, self.C)
        xn = b.gep(self.x, [b.mul(b.mul(n, self.cin), I64(self.xcs))])
        init = k.splat(b.load(b.gep(self.bias, [c]))) if spec.ex_bias else \
            ir.Constant(k.vty, [0.0] * vw)
        p0 = b.load(b.gep(self.indptr, [c]))
        p1 = b.load(b.gep(self.indptr, [b.add(c, I64(1))]))

        def step(pos, nvec: int, last_lanes: int) -> None:
            acc = [k.alloca(k.vty, f"ex{q}") for q in range(nvec)]
            for a in acc:
                b.store(init, a)
            masks = [None] * nvec
            masks[-1] = lane_mask(vw, np.arange(vw) < last_lanes)
            with k.loop(p0, p1, "exp") as p:
                col = b.sext(b.load(b.gep(self.idx, [p])), I64)
                ws = k.splat(b.load(b.gep(self.data, [p])))
                row = b.gep(xn, [b.add(b.mul(col, I64(self.xcs)), pos)])
                for q in range(nvec):
                    xv = k.vload(b.gep(row, [I64(q * vw)]), masks[q])
                    b.store(k.fma(ws, xv, b.load(acc[q])), acc[q])
            for q in range(nvec):
                k.vstore(k.act(b.load(acc[q]), self.act), b.gep(self.buf, [b.add(
                    pos, I64(q * vw))]), None)

        self._steps(step)
        return self.buf


@dataclass(frozen=True)
class _ActOf:
    """An activation as ``k.act`` reads it from a spec."""

    act: str
    act_a: float
    act_b: float
