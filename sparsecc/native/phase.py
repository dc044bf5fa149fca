"""The shifted conv's polyphase planes as LLVM IR, vectorised (stride 1 and 2 along x).

Same planes as codegen.numba.conv.phase_planes: plane (c, py, px) of sample n holds the
zero-padded input's rows py, py+sh, ... and columns px, px+sw, ... as an (hq, wq) block at
``planes + n*stride + ((c*npy + iy)*npx + ix) * ps``, ps >= hq*wq (a multiple of 16 floats
keeps every plane's rows at one alignment: the SpMM's vector loads at offset 0 do not cross
cache lines); the ps - hq*wq floats after each plane are zeroed. A work item is one (n, c, py):
it walks its planes a column of vectors at a time (plane columns [j, j + vw), then each phase,
then the rows down), so the lane masks and the choice of shuffle are made once a column,
not once a row (1.2-1.6x on one core with the data in L1/L2, 1.1x from memory; ResNet-50 batch 16's
phase passes 7.7 -> 6.1 ms in one process: the vector loop before recomputed three masks from
64-bit lane vectors for every row).

Stride 1 along x is a shifted copy: vector loads masked to the row's columns (the padding
comes out zero), stores masked to the plane row. Planes exactly as wide as x's rows (the
rows planes of native.lower.RowsGeom: zero rows above and below, no padded columns) are one
contiguous copy of x's rows between memsets (``_copy_rows``): ResNet-18 batch 16, per call in
one process, layer1's two copies 0.739 / 0.772 -> 0.427 / 0.475 ms, layer2.1's 0.151 ->
0.123 (whole calls level within the noise, 66.6 against 67.9 ms).

Stride 2 loads two vectors of consecutive columns, 2j - pw + [0, 2 vw), and splits them
into the even lanes (phase px = 0) and the odd ones (px = 1) with a shuffle; with both
phases (a 3x3 / 2 conv's) one load of a row gives both (BOTH_PHASES). The numba loop it
replaces read one strided element per step (~2.7 cycles an element here: ResNet-50's phase
passes took 11 of 176 ms at batch 16).

A strip of columns past x's row edges (the padding, a row narrower than the strip) reads
with plain loads where its vectors stay inside the channel's H x W floats, the lanes outside
the row zeroed by their mask (PLAIN_EDGES; AVX2's masked loads are slow on AMD cores), and
the strips run last to first so a row's last, part strip can be stored whole: its lanes past
the row land on the next rows' first columns, written after, or on the gap after the plane,
zeroed last, never past the plane's ``ps`` floats (PLAIN_TAIL_STORES; else a float a lane).
ResNet-18 batch 16 on the AVX2 Zen 3, one process (bench/op_ab.py): the 3x3 / 2 convs with
their phase passes 1.04-1.13x faster, the 1x1 / 2 downsamples 1.27-1.41x.

With PhaseSpec.packed either side may be the batch packed into the positions
(native.lower.PACK: samples in blocks of B, a block's channel holding its samples' planes one
after another): sample n of x then starts at ``(n // xb) * C * xcs + (n % xb) * xss`` (xb = 1,
xss = 0: plain N, C, H, W), its planes at ``(n // ob) * stride + (n % ob) * oss``. Packed
planes (ob > 1) have no gap after them to zero (the next sample's plane is there), and samples
n >= nreal (a block's padding) get zero planes (packed planes) or none. With either side packed
a block's samples are the items' fastest index, so one channel's runs of the block's samples
are written (or read) one after another, whole cache lines. (Not measured on its own.
ResNet-50 b16's downsample phase pass, the 3x3 convs' phase passes and the global mean ran
0.89 / 0.26-0.31 / 0.42 ms a call with the channels fastest and 0.60-0.90 / 0.16-0.21 /
0.26-0.31 after, with other changes between and this VM's noise.)

ABI ``void k(i64 start, i64 stop, i64* args)``; args as k_phase's (x, planes, N, C, H, W, ph,
pw, sh, sw, pys, npy, pxs, npx, hq, wq, stride) then ps, x's channel stride (floats, >= H*W),
xb, xss, ob, oss, nreal, and (PhaseSpec.dual) the floats from the planes to their copy;
items: N * C * npy (N rounded up to a block when either side is packed).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import I32, I64
from sparsecc.native.vmath import _K

(P_X, P_OUT, P_N, P_C, P_H, P_W, P_PH, P_PW, P_SH, P_SW, P_PYS, P_NPY, P_PXS, P_NPX, P_HQ,
 P_WQ, P_STRIDE, P_PS, P_XCS, P_XB, P_XSS, P_OB, P_OSS, P_NREAL, P_ODS) = range(25)
STRIDES = (1, 2)  # along x; other strides take the numba kernel
COPY_ROWS = True  # (_copy_rows)
PLAIN_INSIDE = True  # (_columns: plain loads and stores inside the rows; A/B)
LANE_STORES = True  # (_columns: a row's last vector a float a lane, not a masked store; A/B)
# (_columns: a strip past x's row edges read with plain loads and a mask where it stays inside
# the channel; A/B)
PLAIN_EDGES = True
BOTH_PHASES = True  # (_columns, stride 2: both column phases from one load of a row; A/B)
PLAIN_TAIL_STORES = True  # (_columns: a row's last strip stored whole where it may; A/B)


def items(nb, cin, npy):
    return nb * cin * npy


def plain(nb) -> list:
    """The args after x's channel stride for plain N, C, H, W on both sides (xb .. nreal)."""
    return [1, 0, 1, 0, nb]


@dataclass(frozen=True)
class PhaseSpec:
    vw: int
    sw: int
    # either side may be packed (xb, ob read); without it both are plain and the kernel has
    # none of the packed layout's arithmetic (3 more divisions an item)
    packed: bool = False
    # plain planes held twice (native.lower's dual planes): each item copies the planes it
    # wrote, still in L1, P_ODS floats further on (no copy pass over them after)
    dual: bool = False

    @property
    def key(self) -> str:
        return f"phase_v{self.vw}_s{self.sw}" + ("_pk" if self.packed else "") + \
            ("_do" if self.dual else "")

    def emit(self, module: ir.Module, name: str) -> None:
        emit_phase(module, name, self.vw, self.sw, self.packed, self.dual)


def emit_phase(module: ir.Module, name: str, vw: int, sw: int, packed: bool = False,
               dual: bool = False) -> None:
    if sw not in STRIDES:
        raise ValueError(f"phase kernel: stride {sw} along x")
    if dual and packed:
        raise ValueError("phase kernel: dual planes are plain")
    k = _K(module, name, vw)
    b = k.b
    x0, out0 = k.arg_ptr(P_X, "x"), k.arg_ptr(P_OUT, "out")
    c, h, w = k.arg_i64(P_C, "c"), k.arg_i64(P_H, "h"), k.arg_i64(P_W, "w")
    ph, pw, sh = k.arg_i64(P_PH, "ph"), k.arg_i64(P_PW, "pw"), k.arg_i64(P_SH, "sh")
    i64p = I64.as_pointer()
    pys = b.inttoptr(k.arg_i64(P_PYS, "pys_i"), i64p)
    pxs = b.inttoptr(k.arg_i64(P_PXS, "pxs_i"), i64p)
    npy, npx = k.arg_i64(P_NPY, "npy"), k.arg_i64(P_NPX, "npx")
    hq, wq, stride = k.arg_i64(P_HQ, "hq"), k.arg_i64(P_WQ, "wq"), k.arg_i64(P_STRIDE, "st")
    plane = b.mul(hq, wq)
    ps, xcs = k.arg_i64(P_PS, "ps"), k.arg_i64(P_XCS, "xcs")
    per = b.mul(c, npy)
    if packed:  # (the plain kernel reads none of these)
        xb, xss = k.arg_i64(P_XB, "xb"), k.arg_i64(P_XSS, "xss")
        ob, oss = k.arg_i64(P_OB, "ob"), k.arg_i64(P_OSS, "oss")
        nreal = k.arg_i64(P_NREAL, "nreal")
        blk = b.select(b.icmp_signed(">", ob, I64(1)), ob, xb)  # (1: plain on both sides)

    def base(n, blk, per_block, ss):  # sample n's offset: (n // blk) * per_block + ...
        q = b.sdiv(n, blk)
        return b.add(b.mul(q, per_block), b.mul(b.sub(n, b.mul(q, blk)), ss))

    ods = k.arg_i64(P_ODS, "ods") if dual else None
    true = ir.Constant(ir.IntType(1), 1)
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        if packed:  # t = ((block * c + ch) * npy + iy) * blk + sample in block
            q = b.sdiv(t, blk)
            bi = b.sdiv(q, per)
            r = b.sub(q, b.mul(bi, per))
            n = b.add(b.mul(bi, blk), b.sub(t, b.mul(q, blk)))
        else:  # t = (n * c + ch) * npy + iy
            n = b.sdiv(t, per)
            r = b.sub(t, b.mul(n, per))
        ch = b.sdiv(r, npy)
        iy = b.sub(r, b.mul(ch, npy))
        py = b.load(b.gep(pys, [iy]))
        # the item's first plane: (ch*npy + iy)*npx
        first = b.mul(r, npx)
        if packed:
            real = b.icmp_signed("<", n, nreal)
            # (a padding sample reads nothing: its rows all count as padding below)
            xc = b.gep(x0, [b.select(real, b.add(base(n, xb, b.mul(c, xcs), xss),
                                                 b.mul(ch, xcs)), I64(0))])
            oc = b.gep(out0, [b.add(base(n, ob, stride, oss), b.mul(first, ps))])
            gaps = b.icmp_signed("==", ob, I64(1))
            # (a padding sample of a packed x has no planes: nothing to write)
            go = b.or_(real, b.icmp_signed(">", ob, I64(1)))
        else:
            xc = b.gep(x0, [b.mul(b.add(b.mul(n, c), ch), xcs)])
            oc = b.gep(out0, [b.add(b.mul(n, stride), b.mul(first, ps))])
            real = gaps = go = true
        body = k.fn.append_basic_block("item")
        done = k.fn.append_basic_block("item_done")
        b.cbranch(go, body, done)
        b.position_at_end(body)
        if sw == 1 and COPY_ROWS:  # a plane of whole rows (rows planes): zero rows, a copy
            whole = b.and_(b.and_(b.icmp_signed("==", wq, w), b.icmp_signed("==", pw, I64(0))),
                           b.and_(b.icmp_signed("==", npx, I64(1)),
                                  b.icmp_signed("==", sh, I64(1))))
            whole = b.and_(whole, b.icmp_signed("==", b.load(pxs), I64(0)))
            whole = b.and_(whole, b.and_(real, gaps))
            with b.if_else(whole) as (then, other):
                with then:
                    _copy_rows(k, xc, oc, py, ph, h, w, hq, ps)
                with other:
                    _columns(k, sw, xc, oc, py, ph, pw, sh, h, w, hq, wq, ps, pxs, npx, plane,
                             real, gaps)
        else:
            _columns(k, sw, xc, oc, py, ph, pw, sh, h, w, hq, wq, ps, pxs, npx, plane, real,
                     gaps)
        if dual:  # the item's npx planes (gaps included) again, ods floats on
            p8 = ir.IntType(8).as_pointer()
            memcpy = module.declare_intrinsic("llvm.memcpy", [p8, p8, I64])
            b.call(memcpy, [b.bitcast(b.gep(oc, [ods]), p8),
                            b.bitcast(oc, p8), b.mul(b.mul(npx, ps), I64(4)),
                            ir.Constant(ir.IntType(1), 0)])
        b.branch(done)
        b.position_at_end(done)
    b.ret_void()


def _copy_rows(k: _K, xc, oc, py, ph, h, w, hq, ps) -> None:
    """Stride 1, planes as wide as x's rows (no padded columns): plane rows whose input row
    lies in x are one contiguous run of x's rows, the rest zeros (memset / memcpy; the
    column walk below moved each row's vectors with masks, ~8 cycles a vector: ResNet-18's
    layer1 copies into rows planes took 0.75 ms a conv at batch 16)."""
    b = k.b
    mod = b.module
    p8 = ir.IntType(8).as_pointer()
    memcpy = mod.declare_intrinsic("llvm.memcpy", [p8, p8, I64])
    memset = mod.declare_intrinsic("llvm.memset", [p8, I64])
    false = ir.Constant(ir.IntType(1), 0)

    def clamp(v, lo, hi):
        v = b.select(b.icmp_signed("<", v, lo), lo, v)
        return b.select(b.icmp_signed(">", v, hi), hi, v)

    # plane row i reads x row i + py - ph
    i0 = clamp(b.sub(ph, py), I64(0), hq)
    i1 = clamp(b.sub(b.add(h, ph), py), i0, hq)

    def byte(ptr, floats):
        return b.bitcast(b.gep(ptr, [floats]), p8)

    b.call(memset, [byte(oc, I64(0)), ir.Constant(ir.IntType(8), 0),
                    b.mul(b.mul(i0, w), I64(4)), false])
    b.call(memcpy, [byte(oc, b.mul(i0, w)), byte(xc, b.mul(b.sub(b.add(i0, py), ph), w)),
                    b.mul(b.mul(b.sub(i1, i0), w), I64(4)), false])
    # the rows after, and the gap to the next plane
    b.call(memset, [byte(oc, b.mul(i1, w)), ir.Constant(ir.IntType(8), 0),
                    b.mul(b.sub(ps, b.mul(i1, w)), I64(4)), false])


def _columns(k: _K, sw: int, xc, oc, py, ph, pw, sh, h, w, hq, wq, ps, pxs, npx,
             plane, real, gaps) -> None:
    """Any plane: a column of vectors at a time (see the module docstring); ``real`` false:
    zeros (a block's padding sample), ``gaps`` false: the gaps after the planes are another
    sample's (packed planes) and stay."""
    b, vw = k.b, k.vw
    # vectors of plane columns outer, phases, then plane rows inner: the lane masks
    # and the phase's shuffle (even or odd floats) are the same down a column of
    # vectors (a padding row's loads take an empty mask)
    none = ir.Constant(ir.VectorType(ir.IntType(1), vw), [0] * vw)
    zero = ir.Constant(k.vty, [0.0] * vw)
    # the strips last to first (PLAIN_TAIL_STORES): a row's last strip may then be stored
    # whole (put), its lanes past the row landing on the next rows' first columns, which
    # the strips before it write after
    nstrips = b.sdiv(b.add(wq, I64(vw - 1)), I64(vw))
    overflow_ok = b.and_(gaps, ir.Constant(ir.IntType(1), int(PLAIN_TAIL_STORES)))
    with k.loop(I64(0), nstrips, "jj") as jj:
        j = b.mul(b.sub(b.sub(nstrips, I64(1)), jj), I64(vw))
        keep = k.lanes_lt(j, wq)
        if sw == 1:
            col = b.sub(b.add(j, b.load(pxs)), pw)
            cols = (k.lanes_in(col, I64(0), w),)
        else:
            col = b.sub(b.mul(j, I64(2)), pw)
            cols = (k.lanes_in(col, I64(0), w),
                    k.lanes_in(b.add(col, I64(vw)), I64(0), w))
        # a column of vectors inside the plane's row and x's: plain loads and stores (AVX2's
        # masked ones, vmaskmovps, are slow on AMD cores); the plane's edges masked
        inside = b.and_(b.icmp_signed("<=", b.add(j, I64(vw)), wq),
                        b.and_(b.icmp_signed(">=", col, I64(0)),
                               b.icmp_signed("<=", b.add(col, I64(len(cols) * vw)), w)))
        inside = b.and_(inside, ir.Constant(ir.IntType(1), int(PLAIN_INSIDE)))

        def row(i, masked: bool) -> list:
            """Row i's vectors of x over the strip (zeros outside x)."""
            ih = b.sub(b.add(b.mul(i, sh), py), ph)
            live = b.and_(b.icmp_signed(">=", ih, I64(0)), b.icmp_signed("<", ih, h))
            live = b.and_(live, real)
            if not masked:  # (a padding row reads x's first columns, then takes zeros)
                xrow = b.gep(xc, [b.select(live, b.add(b.mul(ih, w), col), I64(0))])
                return [b.select(live, k.vload(b.gep(xrow, [I64(q * vw)]), None), zero)
                        for q in range(len(cols))]
            at = b.add(b.mul(ih, w), col)
            xrow = b.gep(xc, [at])  # (padding rows: unread)
            if not PLAIN_EDGES:
                return [k.vload(b.gep(xrow, [I64(q * vw)]), b.select(live, m, none))
                        for q, m in enumerate(cols)]
            # the strip's vectors inside the channel's H x W floats: plain loads, the lanes
            # outside x's row zeroed by the mask (AVX2's masked loads, vmaskmovps, are slow
            # on AMD cores); else (the first and last rows) masked loads
            safe = b.and_(live, b.and_(b.icmp_signed(">=", at, I64(0)),
                                       b.icmp_signed("<=", b.add(at, I64(len(cols) * vw)),
                                                     b.mul(h, w))))
            with b.if_else(safe) as (then, other):
                with then:
                    plain = [b.select(m, k.vload(b.gep(xrow, [I64(q * vw)]), None), zero)
                             for q, m in enumerate(cols)]
                    from_plain = b.block
                with other:
                    masked_ = [k.vload(b.gep(xrow, [I64(q * vw)]), b.select(live, m, none))
                               for q, m in enumerate(cols)]
                    from_masked = b.block
            got = []
            for u, v in zip(plain, masked_):
                phi = b.phi(k.vty)
                phi.add_incoming(u, from_plain)
                phi.add_incoming(v, from_masked)
                got.append(phi)
            return got

        def put(v, oj, i, masked: bool) -> None:
            ptr = b.gep(oj, [b.mul(i, wq)])
            if not (masked and LANE_STORES):
                k.vstore(v, ptr, keep if masked else None)
                return
            # (whole where the vector ends inside the plane's ps floats: past the row it
            # lands on later rows, which their own stores overwrite, or on the gap after
            # the plane, zeroed last; never on another item's plane)
            end = b.add(b.add(b.mul(i, wq), j), I64(vw))
            whole = b.and_(overflow_ok, b.icmp_signed("<=", end, ps))
            with b.if_else(whole) as (then, other):
                with then:
                    k.vstore(v, ptr, None)
                with other:
                    _store_lanes(k, v, ptr, b.sub(wq, j))

        def phases(masked: bool) -> None:
            with k.loop(I64(0), npx if sw == 2 else I64(1), "ix") as ix:
                odd = b.icmp_signed("!=", b.load(b.gep(pxs, [ix])), I64(0)) if sw == 2 \
                    else None
                oj = b.gep(oc, [b.add(b.mul(ix, ps), j)])
                with k.loop(I64(0), hq, "i") as i:
                    got = row(i, masked)
                    put(got[0] if sw == 1 else _split(k, got[0], got[1], odd), oj, i, masked)

        def rows(masked: bool) -> None:
            if sw == 1 or not BOTH_PHASES:
                phases(masked)
                return
            # both column phases (pxs 0, 1: a 3x3 / 2 conv's): each row's vectors loaded
            # once, split into the even and the odd lanes
            with b.if_else(b.icmp_signed("==", npx, I64(2))) as (then, other):
                with then:
                    o0, o1 = b.gep(oc, [j]), b.gep(oc, [b.add(ps, j)])
                    with k.loop(I64(0), hq, "i2") as i:
                        got = row(i, masked)
                        put(_halves(k, got[0], got[1], False), o0, i, masked)
                        put(_halves(k, got[0], got[1], True), o1, i, masked)
                with other:
                    phases(masked)

        with b.if_else(inside) as (then, other):
            with then:
                rows(False)
            with other:
                rows(True)
    with k.loop(I64(0), b.select(gaps, npx, I64(0)), "gx") as ix:  # the gap after each plane
        gap = b.gep(oc, [b.mul(ix, ps)])
        with k.loop(plane, ps, "g", step=vw) as j:
            k.vstore(ir.Constant(k.vty, [0.0] * vw), b.gep(gap, [j]), k.lanes_lt(j, ps))


def _store_lanes(k: _K, v, ptr, n) -> None:
    """The first ``n`` lanes of ``v`` at ``ptr`` (all of them when n >= vw), without a masked
    store: a plain vector store, or one float a lane (the same n down a column of vectors,
    so the branches are predicted)."""
    b, vw = k.b, k.vw
    with b.if_else(b.icmp_signed(">=", n, I64(vw))) as (whole, part):
        with whole:
            k.vstore(v, ptr, None)
        with part:
            for lane in range(vw - 1):
                with b.if_then(b.icmp_signed(">", n, I64(lane))):
                    b.store(b.extract_element(v, I32(lane)), b.gep(ptr, [I64(lane)]))


def _halves(k: _K, lo, hi, odd: bool):
    """Stride 2: the even lanes of input columns [lo, hi) or (``odd``) the odd ones."""
    return k.b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, k.vw),
                                                  list(range(int(odd), 2 * k.vw, 2))))


def _split(k: _K, lo, hi, odd):
    """Stride 2: the even lanes of input columns [lo, hi) (phase px = 0) or the odd ones."""
    b, vw = k.b, k.vw
    even = ir.Constant(ir.VectorType(I32, vw), list(range(0, 2 * vw, 2)))
    odds = ir.Constant(ir.VectorType(I32, vw), list(range(1, 2 * vw, 2)))
    return b.select(odd, b.shuffle_vector(lo, hi, odds), b.shuffle_vector(lo, hi, even))
