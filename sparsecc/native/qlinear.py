"""int8 linear kernels as LLVM IR (formats.qint8: uint8 input codes, g4 int8 weight rows).

Three kernels, each ``void k(i64 start, i64 stop, i64* args)``:

* ``quantize``: float32 rows -> uint8 codes in groups of 4 inputs (one dword), group g of row
  m at dword ``g * ld + m``: ld = 1 is the plain row (one input row), ld >= rows the grouped
  features x batch layout the SpMM reads (16 rows' groups in one 64-byte vector). A work item
  is one row.
* ``spmv`` (one input row): a work item is an output row; vw stored groups at a time, their
  input dwords gathered, the dot products summed exactly in int32 lanes.
* ``spmm`` (several rows): a work item is one block of output rows times one tile of vw
  input rows; per stored group, the weight dword is broadcast and dotted with the tile's
  grouped codes (vw rows x 4 inputs, one load); the outputs are scattered into the row-major
  result.

The 4-wide dot is ``vpdpbusd`` (uint8 x int8 summed into int32) where the CPU has AVX-512
VNNI; elsewhere the bytes are widened to int16 and ``vpmaddwd`` sums pairs into int32 (no
int16 saturation: ``vpmaddubsw``'s uint8 x int8 pair sum can pass 32767, this cannot). Both
give the exact integer sum, so every CPU computes the same outputs.

Several independent accumulators (``UNROLL``) hide the dot's latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I1, I32, I64, PTR, _splat_i64_val, act_key
from sparsecc.native.vmath import _K

I8, I16 = ir.IntType(8), ir.IntType(16)
UNROLL = 4

# quantize args
Q_X, Q_Q, Q_M, Q_K, Q_XLD, Q_LD, Q_INV, Q_ZERO = range(8)
# spmv / spmm / conv args
A_INDPTR, A_IDX, A_DATA, A_Q, A_OUT, A_MULT, A_BIAS, A_M, A_O, A_LD, A_NRB = range(11)
A_XNS, A_ONS, A_ORS = 11, 12, 13  # spmm / conv: per-sample strides, out row stride (conv)
A_RES = 14  # conv with a residual: the addend, laid out as out
# spmm / conv writing codes (``codes``): the uint8 codes of its output for the int8 layer
# that reads it, in groups of 4 outputs (conv: channel r's byte r % 4 of dword n * qns +
# (r // 4) * m + p; linear: of dword (r // 4) * ld + row), 1 / scale (float64 bits) and zero
# point of that layer's input
A_QOUT, A_QINV, A_QZERO, A_QNS = 15, 16, 17, 18
A_K4 = 19  # gemm: dwords a weight row (every group stored, data = the (o, k4) dwords)
N_ARGS = 20


@dataclass(frozen=True)
class QuantizeSpec:
    vw: int

    @property
    def key(self) -> str:
        return f"q8_quantize_v{self.vw}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_quantize(module, name, self.vw)


@dataclass(frozen=True)
class QLinearSpec:
    family: str  # "spmv" | "gemv" (every group stored: rows of k4 dwords) | "spmm" | "conv"
    # | "gemm" (several rows, every group stored: ``rows`` output rows at once)
    vw: int
    vnni: bool
    idx_bits: int  # 16 | 32
    act: str = "none"  # none | relu | clamp (others run as a pass of their own)
    act_a: float = 0.0
    act_b: float = 0.0
    tile: int = 1  # spmm / conv: vectors of positions a work item (each group's dword reused)
    residual: bool = False  # conv: out = act(y + res), res laid out as out (args[A_RES])
    codes: int = 0  # spmm / conv: 0 float output, 1 codes only (args[A_QOUT...]), 2 both
    rows: int = 1  # gemm: output rows a block (o a multiple of it)

    @property
    def key(self) -> str:
        act = act_key(self)
        return (f"q8_{self.family}_v{self.vw}{'_vnni' if self.vnni else ''}_i{self.idx_bits}"
                f"_t{self.tile}_{act}{'_res' if self.residual else ''}"
                + (f"_c{self.codes}" if self.codes else "")
                + (f"_r{self.rows}" if self.rows != 1 else ""))

    def emit(self, module: ir.Module, name: str) -> None:
        (emit_spmm if self.family in ("spmm", "conv", "gemm") else emit_spmv)(module, name,
                                                                              self)


def _f32_arg(k: _K, slot: int, name: str):
    return k.b.fptrunc(k.b.bitcast(k.arg_i64(slot, name), ir.DoubleType()), F32)


def _ptr(k: _K, slot: int, name: str, ty):
    return k.b.inttoptr(k.arg_i64(slot, name), ty.as_pointer())


def emit_quantize(module: ir.Module, name: str, vw: int) -> None:
    k = _K(module, name, 16)  # 16 floats = 4 groups a step at any vector width
    b = k.b
    x, q = k.arg_ptr(Q_X, "x"), _ptr(k, Q_Q, "q", I32)
    kk, xld, ld = k.arg_i64(Q_K, "k"), k.arg_i64(Q_XLD, "xld"), k.arg_i64(Q_LD, "ld")
    inv = _f32_arg(k, Q_INV, "inv")
    zero = b.sitofp(k.arg_i64(Q_ZERO, "zero"), F32)
    v16 = ir.VectorType(F32, 16)
    ngroups = b.sdiv(b.add(kk, I64(3)), I64(4))
    nfull = b.sdiv(kk, I64(16))  # steps of 4 whole groups
    rint16 = k.intrinsic("llvm.rint.v16f32", v16, [v16])
    rint1 = k.intrinsic("llvm.rint.f32", F32, [F32])

    def code(v, rint, splat):
        v = b.fadd(b.call(rint, [b.fmul(v, splat(inv))]), splat(zero))
        lo, hi = splat(ir.Constant(F32, 0.0)), splat(ir.Constant(F32, 255.0))
        v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
        v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
        v = b.select(b.fcmp_unordered("uno", v, v), lo, v)  # NaN -> code 0
        return v

    with k.loop(k.fn.args[0], k.fn.args[1], "m") as m:
        row = b.gep(x, [b.mul(m, xld)], inbounds=True)
        with k.loop(I64(0), nfull, "s") as s:
            v = b.load(b.bitcast(b.gep(row, [b.mul(s, I64(16))], inbounds=True),
                                 v16.as_pointer()), align=4)
            c = b.fptoui(code(v, rint16, k.splat), ir.VectorType(I8, 16))
            words = b.bitcast(c, ir.VectorType(I32, 4))
            for j in range(4):
                g = b.add(b.mul(s, I64(4)), I64(j))
                b.store(b.extract_element(words, I32(j)),
                        b.gep(q, [b.add(b.mul(g, ld), m)], inbounds=True))
        # the last groups, input by input (inputs past k quantize 0.0: their weights are 0)
        qb = b.bitcast(q, PTR)
        with k.loop(b.mul(nfull, I64(4)), ngroups, "g") as g:
            for j in range(4):
                kj = b.add(b.mul(g, I64(4)), I64(j))
                inside = b.icmp_signed("<", kj, kk)
                safe = b.select(inside, kj, I64(0))
                v = b.select(inside, b.load(b.gep(row, [safe], inbounds=True)),
                             ir.Constant(F32, 0.0))
                c = b.fptoui(code(v, rint1, lambda u: u), I8)
                off = b.add(b.mul(b.add(b.mul(g, ld), m), I64(4)), I64(j))
                b.store(c, b.gep(qb, [off], inbounds=True))
    b.ret_void()


def _dot(k: _K, spec: QLinearSpec, acc, xv, wv):
    """acc (vw x i32) += per-lane 4-wide dot of xv's uint8 and wv's int8 bytes. Non-VNNI: two
    accumulators (acc is a pair), pairs of products per lane (see _finish)."""
    b, vw = k.b, spec.vw
    if spec.vnni:
        f = k.intrinsic("llvm.x86.avx512.vpdpbusd.512", xv.type, [xv.type] * 3)
        return b.call(f, [acc, xv, wv])
    bytes_ = ir.VectorType(I8, 4 * vw)
    xw = b.zext(b.bitcast(xv, bytes_), ir.VectorType(I16, 4 * vw))
    ww = b.sext(b.bitcast(wv, bytes_), ir.VectorType(I16, 4 * vw))
    half = ir.VectorType(I16, 2 * vw)
    name = "llvm.x86.avx512.pmaddw.d.512" if vw == 16 else "llvm.x86.avx2.pmadd.wd"
    f = k.intrinsic(name, ir.VectorType(I32, vw), [half, half])
    out = []
    for h in range(2):
        sel = ir.Constant(ir.VectorType(I32, 2 * vw), list(range(2 * vw * h, 2 * vw * (h + 1))))
        xs = b.shuffle_vector(xw, xw, sel)
        ws = b.shuffle_vector(ww, ww, sel)
        out.append(b.add(acc[h], b.call(f, [xs, ws])))
    return tuple(out)


def _zero_acc(spec: QLinearSpec):
    z = ir.Constant(ir.VectorType(I32, spec.vw), [0] * spec.vw)
    return z if spec.vnni else (z, z)


def _acc_add(k: _K, spec, a, c):
    return k.b.add(a, c) if spec.vnni else (k.b.add(a[0], c[0]), k.b.add(a[1], c[1]))


def _finish(k: _K, spec, acc):
    """Per-lane int32 sums in lane order: non-VNNI lanes hold pairs (columns 0..vw/2 in the
    first accumulator, the rest in the second: lane 2c + {0, 1} of one group's dword c)."""
    if spec.vnni:
        return acc
    b, vw = k.b, spec.vw
    ev = ir.Constant(ir.VectorType(I32, vw), list(range(0, 2 * vw, 2)))
    od = ir.Constant(ir.VectorType(I32, vw), list(range(1, 2 * vw, 2)))
    return b.add(b.shuffle_vector(acc[0], acc[1], ev), b.shuffle_vector(acc[0], acc[1], od))


def _store_acc(k: _K, ptr, acc):
    if isinstance(acc, tuple):
        for h, a in enumerate(acc):
            k.b.store(a, k.b.gep(ptr, [I32(h)], inbounds=True))
    else:
        k.b.store(acc, k.b.gep(ptr, [I32(0)], inbounds=True))


def _load_acc(k: _K, spec, ptr):
    if spec.vnni:
        return k.b.load(k.b.gep(ptr, [I32(0)], inbounds=True))
    return tuple(k.b.load(k.b.gep(ptr, [I32(h)], inbounds=True)) for h in range(2))


def _accs(k: _K, spec, n: int, name: str):
    """n accumulator slots (two vectors each without VNNI), zeroed."""
    vty = ir.VectorType(I32, spec.vw)
    slots = [k.alloca(ir.ArrayType(vty, 1 if spec.vnni else 2), f"{name}{u}") for u in range(n)]
    for s in slots:
        _store_acc(k, k.b.bitcast(s, vty.as_pointer()), _zero_acc(spec))
    return [k.b.bitcast(s, vty.as_pointer()) for s in slots]


def _bcast_i32(k: _K, v, vw):
    vty = ir.VectorType(I32, vw)
    undef = ir.Constant(vty, ir.Undefined)
    v0 = k.b.insert_element(undef, v, I32(0))
    return k.b.shuffle_vector(v0, undef, ir.Constant(ir.VectorType(I32, vw), [0] * vw))


def _epilogue(k: _K, spec, acc_i32, mult, bias, res=None):
    b = k.b
    ty = ir.VectorType(F32, spec.vw) if isinstance(acc_i32.type, ir.VectorType) else F32
    # fmul then fadd, never contracted: the numpy reference rounds twice too (and adds the
    # residual after, as the add op it replaces)
    y = b.fadd(b.fmul(b.sitofp(acc_i32, ty), mult), bias)
    return k.act(y if res is None else b.fadd(y, res), spec)


def emit_spmv(module: ir.Module, name: str, spec: QLinearSpec) -> None:
    vw = spec.vw
    k = _K(module, name, vw)
    b = k.b
    indptr = _ptr(k, A_INDPTR, "indptr", I64)
    idx = _ptr(k, A_IDX, "idx", ir.IntType(spec.idx_bits))
    data = _ptr(k, A_DATA, "data", I32)
    q = _ptr(k, A_Q, "q", I32)
    out, mult, bias = k.arg_ptr(A_OUT, "out"), k.arg_ptr(A_MULT, "mult"), \
        k.arg_ptr(A_BIAS, "bias")
    vty = ir.VectorType(I32, vw)
    mty = ir.VectorType(I1, vw)
    ity = ir.VectorType(ir.IntType(spec.idx_bits), vw)
    pvty = ir.VectorType(I32.as_pointer(), vw)
    gather = k.intrinsic(f"llvm.masked.gather.v{vw}i32.v{vw}p0", vty, [pvty, I32, mty, vty])
    mload = k.intrinsic(f"llvm.masked.load.v{vw}i32.p0", vty,
                        [vty.as_pointer(), I32, mty, vty])
    mload_i = k.intrinsic(f"llvm.masked.load.v{vw}i{spec.idx_bits}.p0", ity,
                          [ity.as_pointer(), I32, mty, ity])
    zero_v = ir.Constant(vty, [0] * vw)
    qbase = _splat_i64_val(b, vw, b.ptrtoint(q, I64))
    accs = _accs(k, spec, UNROLL, "acc")
    dense = spec.family == "gemv"
    k4 = k.arg_i64(A_LD, "k4")  # gemv: dwords per row

    def step(p, mask, slot):
        """Groups [p, p + vw) (masked) into accumulator ``slot``."""
        wp = b.bitcast(b.gep(data, [p], inbounds=True), vty.as_pointer())
        if dense:  # the row's codes in order: a plain load
            xp = b.bitcast(b.gep(q, [b.sub(p, rowbase[0])], inbounds=True), vty.as_pointer())
            if mask is None:
                _store_acc(k, slot, _dot(k, spec, _load_acc(k, spec, slot),
                                         b.load(xp, align=4), b.load(wp, align=4)))
            else:
                xv = b.call(mload, [xp, I32(4), mask, zero_v])
                wv = b.call(mload, [wp, I32(4), mask, zero_v])
                _store_acc(k, slot, _dot(k, spec, _load_acc(k, spec, slot), xv, wv))
            return
        ip = b.bitcast(b.gep(idx, [p], inbounds=True), ity.as_pointer())
        if mask is None:
            iv, wv = b.load(ip, align=2), b.load(wp, align=4)
            mask = ir.Constant(mty, [1] * vw)
        else:
            iv = b.call(mload_i, [ip, I32(2), mask, ir.Constant(ity, [0] * vw)])
            wv = b.call(mload, [wp, I32(4), mask, zero_v])
        addr = b.add(qbase, b.mul(b.zext(iv, ir.VectorType(I64, vw)),
                                  _splat_i64_val(b, vw, I64(4))))
        xv = b.call(gather, [b.inttoptr(addr, pvty), I32(4), mask, zero_v])
        _store_acc(k, slot, _dot(k, spec, _load_acc(k, spec, slot), xv, wv))

    rowbase = [None]
    with k.loop(k.fn.args[0], k.fn.args[1], "o") as o:
        for s in accs:
            _store_acc(k, s, _zero_acc(spec))
        if dense:
            p0 = rowbase[0] = b.mul(o, k4)
            p1 = b.add(p0, k4)
        else:
            p0 = b.load(b.gep(indptr, [o], inbounds=True))
            p1 = b.load(b.gep(indptr, [b.add(o, I64(1))], inbounds=True))
        span = vw * UNROLL
        nbig = b.add(p0, b.mul(b.sdiv(b.sub(p1, p0), I64(span)), I64(span)))
        with k.loop(p0, nbig, "p", step=span) as p:
            for u in range(UNROLL):
                step(b.add(p, I64(u * vw)), None, accs[u])
        with k.loop(nbig, p1, "pt", step=vw) as p:
            step(p, k.lanes_lt(p, p1), accs[0])
        total = _load_acc(k, spec, accs[0])
        for s in accs[1:]:
            total = _acc_add(k, spec, total, _load_acc(k, spec, s))
        if not spec.vnni:
            total = b.add(total[0], total[1])  # any lane order: all lanes sum to one output
        f = k.intrinsic(f"llvm.vector.reduce.add.v{vw}i32", I32, [vty])
        s = b.call(f, [total])
        y = _epilogue(k, spec, s, b.load(b.gep(mult, [o], inbounds=True)),
                      b.load(b.gep(bias, [o], inbounds=True)))
        b.store(y, b.gep(out, [o], inbounds=True))
    b.ret_void()


def emit_spmm(module: ir.Module, name: str, spec: QLinearSpec) -> None:
    """Work item t = (n * ntiles + tile) * nrb + rb: positions m in [tile * span, +span) of
    sample n (span = vw * spec.tile), the output rows of block rb.

    linear (``spmm``): group g's codes at dword g * ld + m; outputs scattered to out[m, r].
    conv (``conv``): idx holds each group's dword offset into the sample's grouped phase
    planes (conv_offsets), codes at offset + m; outputs stored as out[r, m] (channels x
    positions, ors floats apart), samples xns dwords / ons floats apart."""
    vw = spec.vw
    conv = spec.family == "conv"
    k = _K(module, name, vw)
    b = k.b
    indptr = _ptr(k, A_INDPTR, "indptr", I64)
    idx = _ptr(k, A_IDX, "idx", ir.IntType(spec.idx_bits))
    data = _ptr(k, A_DATA, "data", I32)
    q0 = _ptr(k, A_Q, "q", I32)
    out0, mult, bias = k.arg_ptr(A_OUT, "out"), k.arg_ptr(A_MULT, "mult"), \
        k.arg_ptr(A_BIAS, "bias")
    mm, oo, ld, nrb = (k.arg_i64(s, n) for s, n in ((A_M, "m"), (A_O, "o"), (A_LD, "ld"),
                                                     (A_NRB, "nrb")))
    xns, ons, ors = (k.arg_i64(s, n) for s, n in ((A_XNS, "xns"), (A_ONS, "ons"),
                                                  (A_ORS, "ors")))
    res0 = k.arg_ptr(A_RES, "res") if spec.residual else None
    if spec.codes:
        qout0 = _ptr(k, A_QOUT, "qout", I8)
        qinv = k.splat(_f32_arg(k, A_QINV, "qinv"))
        qzero = k.splat(b.sitofp(k.arg_i64(A_QZERO, "qzero"), F32))
        qns = k.arg_i64(A_QNS, "qns")
        bty = ir.VectorType(I8, 4 * vw)
        spread = ir.Constant(ir.VectorType(I32, 4 * vw), [q // 4 for q in range(4 * vw)])
        first = ir.Constant(ir.VectorType(I1, 4 * vw), [q % 4 == 0 for q in range(4 * vw)])
        rint = k.intrinsic(f"llvm.rint.v{vw}f32", k.vty, [k.vty])
        bstore = k.intrinsic(f"llvm.masked.store.v{4 * vw}i8.p0", ir.VoidType(),
                             [bty, bty.as_pointer(), I32, ir.VectorType(I1, 4 * vw)])
    vty = ir.VectorType(I32, vw)
    fvty = ir.VectorType(F32, vw)
    pvty = ir.VectorType(F32.as_pointer(), vw)
    mty = ir.VectorType(I1, vw)
    scatter = k.intrinsic(f"llvm.masked.scatter.v{vw}f32.v{vw}p0", ir.VoidType(),
                          [fvty, pvty, I32, mty])
    tv = spec.tile  # vectors a tile; with one, UNROLL accumulators over the groups instead
    dense = spec.family == "gemm"
    rb_rows = spec.rows
    if dense:
        dacc = [_accs(k, spec, tv, f"d{q}_") for q in range(rb_rows)]
        ld_w = k.arg_i64(A_K4, "k4")
    else:
        accs = _accs(k, spec, max(tv, UNROLL if tv == 1 else 1), "acc")
    lanes = ir.Constant(ir.VectorType(I64, vw), list(range(vw)))
    span = vw * tv
    ntiles = b.sdiv(b.add(mm, I64(span - 1)), I64(span))

    def step(p, slots, xb):
        """Group p against the tile: one broadcast weight dword, len(slots) vector loads."""
        g = k.load_idx(idx, p, spec.idx_bits)
        wv = _bcast_i32(k, b.load(b.gep(data, [p], inbounds=True)), vw)
        xg = b.gep(xb, [g if conv else b.mul(g, ld)], inbounds=True)
        for t, slot in enumerate(slots):
            xv = b.load(b.bitcast(b.gep(xg, [I64(t * vw)], inbounds=True), vty.as_pointer()),
                        align=4)
            _store_acc(k, slot, _dot(k, spec, _load_acc(k, spec, slot), xv, wv))

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        nt = b.sdiv(t, nrb)
        rb = b.sub(t, b.mul(nt, nrb))
        n = b.sdiv(nt, ntiles)
        tile = b.sub(nt, b.mul(n, ntiles))
        m0 = b.mul(tile, I64(span))
        xb = b.gep(q0, [b.add(b.mul(n, xns), m0)], inbounds=True)
        out = b.gep(out0, [b.mul(n, ons)], inbounds=True)
        resb = b.gep(res0, [b.mul(n, ons)], inbounds=True) if spec.residual else None
        per = b.sdiv(b.add(oo, b.sub(nrb, I64(1))), nrb)
        if dense:  # whole blocks of RB rows
            per = b.mul(b.sdiv(b.add(per, I64(rb_rows - 1)), I64(rb_rows)), I64(rb_rows))
        r0 = b.mul(rb, per)
        r1 = b.select(b.icmp_signed("<", b.add(r0, per), oo), b.add(r0, per), oo)
        obase = _splat_i64_val(b, vw, b.ptrtoint(out, I64))

        def finish_row(r, totals) -> None:
            """Output row r's epilogue over the tile's vectors: dequantize, bias, residual,
            activation; the float store and / or the reader's codes."""
            mult_v = k.splat(b.load(b.gep(mult, [r], inbounds=True)))
            bias_v = k.splat(b.load(b.gep(bias, [r], inbounds=True)))
            for t, total in enumerate(totals):
                mt = b.add(m0, I64(t * vw))
                mvec = b.add(_splat_i64_val(b, vw, mt), lanes)
                live = b.icmp_signed("<", mvec, _splat_i64_val(b, vw, mm))
                at = b.add(b.mul(r, ors), mt)
                res = k.vload(b.gep(resb, [at], inbounds=True), live) if spec.residual \
                    else None
                y = _epilogue(k, spec, _finish(k, spec, total), mult_v, bias_v, res)
                if spec.codes:
                    # the reader's codes (emit_phase's / emit_quantize's grouped rows): output
                    # r's byte of each dword (conv: of position mt in its sample's planes;
                    # linear: of row mt in group r // 4, ld dwords a group)
                    c8 = _codes(k, y, qinv, qzero, rint)
                    if conv:
                        dw = b.add(b.add(b.mul(n, qns), b.mul(b.sdiv(r, I64(4)), mm)), mt)
                    else:
                        dw = b.add(b.mul(b.sdiv(r, I64(4)), ld), mt)
                    dst = b.gep(qout0, [b.add(b.mul(dw, I64(4)), b.srem(r, I64(4)))])
                    wide = b.shuffle_vector(c8, c8, spread)
                    b.call(bstore, [wide, b.bitcast(dst, bty.as_pointer()), I32(1),
                                    b.and_(b.shuffle_vector(live, live, spread), first)])
                if spec.codes == 1:
                    pass
                elif conv:
                    k.vstore(y, b.gep(out, [at], inbounds=True), live)
                else:
                    rowoff = b.mul(mvec, _splat_i64_val(b, vw, b.mul(oo, I64(4))))
                    addr = b.add(obase, b.add(rowoff, _splat_i64_val(b, vw, b.mul(r, I64(4)))))
                    b.call(scatter, [y, b.inttoptr(addr, pvty), I32(4), live])

        if dense:
            # every group stored, rows k4 dwords: RB rows at once, each tile vector of codes
            # loaded once per group and dotted with RB broadcast weight dwords
            k4 = ld_w
            with k.loop(r0, r1, "r", step=rb_rows) as r:
                for row in dacc:
                    for s_ in row:
                        _store_acc(k, s_, _zero_acc(spec))
                wrow = b.gep(data, [b.mul(r, k4)], inbounds=True)
                with k.loop(I64(0), k4, "g") as g:
                    xg = b.gep(xb, [b.mul(g, ld)], inbounds=True)
                    xvs = [b.load(b.bitcast(b.gep(xg, [I64(t * vw)], inbounds=True),
                                            vty.as_pointer()), align=4) for t in range(tv)]
                    for q in range(rb_rows):
                        wv = _bcast_i32(k, b.load(b.gep(wrow, [b.add(b.mul(I64(q), k4), g)],
                                                        inbounds=True)), vw)
                        for t, xv in enumerate(xvs):
                            _store_acc(k, dacc[q][t], _dot(k, spec, _load_acc(k, spec,
                                                                                  dacc[q][t]),
                                                             xv, wv))
                for q in range(rb_rows):
                    finish_row(b.add(r, I64(q)), [_load_acc(k, spec, s_) for s_ in dacc[q]])
        else:
            with k.loop(r0, r1, "r") as r:
                for s_ in accs:
                    _store_acc(k, s_, _zero_acc(spec))
                p0 = b.load(b.gep(indptr, [r], inbounds=True))
                p1 = b.load(b.gep(indptr, [b.add(r, I64(1))], inbounds=True))
                if tv == 1:
                    nbig = b.add(p0, b.mul(b.sdiv(b.sub(p1, p0), I64(UNROLL)), I64(UNROLL)))
                    with k.loop(p0, nbig, "p", step=UNROLL) as p:
                        for u in range(UNROLL):
                            step(b.add(p, I64(u)), [accs[u]], xb)
                    with k.loop(nbig, p1, "pt") as p:
                        step(p, [accs[0]], xb)
                    total = _load_acc(k, spec, accs[0])
                    for s_ in accs[1:]:
                        total = _acc_add(k, spec, total, _load_acc(k, spec, s_))
                    totals = [total]
                else:
                    with k.loop(p0, p1, "p") as p:
                        step(p, accs, xb)
                    totals = [_load_acc(k, spec, s_) for s_ in accs]
                finish_row(r, totals)
    b.ret_void()


# ---- conv input: codes into grouped polyphase planes ---------------------------------------
(P_X, P_Q, P_N, P_C, P_H, P_W, P_PH, P_PW, P_SH, P_SW, P_PYS, P_NPY, P_PXS, P_NPX, P_HQ, P_WQ,
 P_STRIDE, P_INV, P_ZERO) = range(19)


@dataclass(frozen=True)
class PhaseSpec:
    """The int8 conv's input pass: args [x, planes, N, C, H, W, ph, pw, sh, sw, pys, npy, pxs,
    npx, hq, wq, stride (dwords a sample), inv (1 / scale), zero]; plane (cg, py, px) of
    sample n at dword n * stride + (cg * npy * npx + phase) * hq * wq, position i * wq + j
    holding channels 4cg .. 4cg + 3 (padding and channels past C: the code of 0.0); items:
    N * ceil(C / 4) * npy * npx planes."""

    vw: int

    @property
    def key(self) -> str:
        return f"q8_phase_v{self.vw}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_phase(module, name, self.vw)


def emit_phase(module: ir.Module, name: str, vw: int) -> None:
    """A work item is one plane (n, cg, py, px); a step is vw positions of one plane row:
    4 channel vectors (contiguous loads at stride 1, two loads and a shuffle of their even
    floats at stride 2, gathers otherwise; padding and channels past C read 0.0), quantized,
    interleaved into 4 * vw bytes, one (masked) store."""
    k = _K(module, name, vw)
    b = k.b
    x = k.arg_ptr(P_X, "x")
    q = _ptr(k, P_Q, "q", I8)
    c, h, w = (k.arg_i64(s, n) for s, n in ((P_C, "c"), (P_H, "h"), (P_W, "w")))
    ph, pw, sh, sw = (k.arg_i64(s, n) for s, n in ((P_PH, "ph"), (P_PW, "pw"), (P_SH, "sh"),
                                                   (P_SW, "sw")))
    pys, pxs = _ptr(k, P_PYS, "pys", I64), _ptr(k, P_PXS, "pxs", I64)
    npy, npx = k.arg_i64(P_NPY, "npy"), k.arg_i64(P_NPX, "npx")
    hq, wq, stride = k.arg_i64(P_HQ, "hq"), k.arg_i64(P_WQ, "wq"), k.arg_i64(P_STRIDE, "st")
    inv = k.splat(_f32_arg(k, P_INV, "inv"))
    zero = k.splat(b.sitofp(k.arg_i64(P_ZERO, "zero"), F32))
    fv = ir.VectorType(F32, vw)
    mty = ir.VectorType(I1, vw)
    pvty = ir.VectorType(F32.as_pointer(), vw)
    rint = k.intrinsic(f"llvm.rint.v{vw}f32", fv, [fv])
    mload = k.intrinsic(f"llvm.masked.load.v{vw}f32.p0", fv, [fv.as_pointer(), I32, mty, fv])
    gather = k.intrinsic(f"llvm.masked.gather.v{vw}f32.v{vw}p0", fv, [pvty, I32, mty, fv])
    bty = ir.VectorType(I8, 4 * vw)
    bmty = ir.VectorType(I1, 4 * vw)
    mstore = k.intrinsic(f"llvm.masked.store.v{4 * vw}i8.p0", ir.VoidType(),
                         [bty, bty.as_pointer(), I32, bmty])
    fzero = ir.Constant(fv, [0.0] * vw)
    lanes = ir.Constant(ir.VectorType(I64, vw), list(range(vw)))
    nph = b.mul(npy, npx)
    cg_n = b.sdiv(b.add(c, I64(3)), I64(4))
    per = b.mul(cg_n, nph)
    cat = ir.Constant(ir.VectorType(I32, 2 * vw), list(range(2 * vw)))
    weave = ir.Constant(ir.VectorType(I32, 4 * vw),
                        [cc * vw + p for p in range(vw) for cc in range(4)])
    byte_lane = ir.Constant(ir.VectorType(I64, 4 * vw), [p for p in range(vw) for _ in range(4)])

    def codes(v):
        return _codes(k, v, inv, zero, rint)

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        n = b.sdiv(t, per)
        r = b.sub(t, b.mul(n, per))
        cg = b.sdiv(r, nph)
        kk = b.sub(r, b.mul(cg, nph))
        iy = b.sdiv(kk, npx)
        py = b.load(b.gep(pys, [iy], inbounds=True))
        px = b.load(b.gep(pxs, [b.sub(kk, b.mul(iy, npx))], inbounds=True))
        plane = b.add(b.mul(n, stride), b.mul(r, b.mul(hq, wq)))  # dwords
        chans = []
        for cc in range(4):
            ch = b.add(b.mul(cg, I64(4)), I64(cc))
            chans.append((b.icmp_signed("<", ch, c),
                          b.gep(x, [b.mul(b.add(b.mul(n, c), ch), b.mul(h, w))], inbounds=True)))
        # a plane that is the input's own (stride 1, no padding, one phase: 1x1 convs) is
        # one run of h * w positions: no rows, one masked tail
        plain = b.and_(b.and_(b.icmp_signed("==", b.mul(sh, sw), I64(1)),
                              b.icmp_signed("==", b.add(ph, pw), I64(0))),
                       b.and_(b.icmp_signed("==", hq, h), b.icmp_signed("==", wq, w)))
        hw = b.mul(h, w)
        with b.if_then(plain):
            with k.loop(I64(0), hw, "pp", step=vw) as p0:
                live = b.icmp_signed("<", b.add(_splat_i64_val(b, vw, p0), lanes),
                                     _splat_i64_val(b, vw, hw))
                vals = []
                for ok, base in chans:
                    ptr = b.bitcast(b.gep(base, [p0], inbounds=True), fv.as_pointer())
                    v = b.call(mload, [ptr, I32(4), b.and_(live, _splat_i1(b, vw, ok)), fzero])
                    vals.append(codes(v))
                packed = b.shuffle_vector(b.shuffle_vector(vals[0], vals[1], cat),
                                          b.shuffle_vector(vals[2], vals[3], cat), weave)
                bmask = b.icmp_signed("<", b.add(_splat_i64_val(b, 4 * vw, p0), byte_lane),
                                      _splat_i64_val(b, 4 * vw, hw))
                dst = b.gep(q, [b.mul(b.add(plane, p0), I64(4))], inbounds=True)
                b.call(mstore, [packed, b.bitcast(dst, bty.as_pointer()), I32(1), bmask])
        rows = b.select(plain, I64(0), hq)
        with k.loop(I64(0), rows, "i") as i:
            ih = b.sub(b.add(b.mul(i, sh), py), ph)
            row_ok = b.and_(b.icmp_signed(">=", ih, I64(0)), b.icmp_signed("<", ih, h))
            ihs = b.select(row_ok, ih, I64(0))
            with k.loop(I64(0), wq, "j", step=vw) as j:
                jv = b.add(_splat_i64_val(b, vw, j), lanes)
                jw = b.sub(b.add(b.mul(jv, _splat_i64_val(b, vw, sw)),
                                 _splat_i64_val(b, vw, px)), _splat_i64_val(b, vw, pw))
                inside = b.and_(b.icmp_signed(">=", jw, _splat_i64_val(b, vw, I64(0))),
                                b.icmp_signed("<", jw, _splat_i64_val(b, vw, w)))
                inside = b.and_(inside, b.icmp_signed("<", jv, _splat_i64_val(b, vw, wq)))
                inside = b.and_(inside, _splat_i1(b, vw, row_ok))
                vals = []
                for ok, base in chans:
                    live = b.and_(inside, _splat_i1(b, vw, ok))
                    rowp = b.gep(base, [b.mul(ihs, w)], inbounds=True)
                    j0 = b.sub(b.add(b.mul(j, sw), px), pw)
                    contig = b.icmp_signed("==", sw, I64(1))
                    even = b.icmp_signed("==", sw, I64(2))
                    with b.if_else(contig) as (then, other):
                        with then:
                            # lanes j0 + l: a masked load (its address may sit before the
                            # row when j0 < 0; no lane outside the mask is read)
                            p1 = b.gep(rowp, [j0])
                            v1 = b.call(mload, [b.bitcast(p1, fv.as_pointer()), I32(4), live,
                                                fzero])
                            blk1 = b.block
                        with other:
                            with b.if_else(even) as (then2, other2):
                                with then2:
                                    # stride 2: floats j0 .. j0 + 2 vw - 1 in two masked
                                    # loads, then their even ones (no gather)
                                    halves = []
                                    for hh in range(2):
                                        m = b.add(lanes, _splat_i64_val(b, vw, I64(hh * vw)))
                                        col = b.add(_splat_i64_val(b, vw, j0), m)
                                        ok2 = b.and_(
                                            b.and_(b.icmp_signed(">=", col, _splat_i64_val(
                                                b, vw, I64(0))), b.icmp_signed(
                                                "<", col, _splat_i64_val(b, vw, w))),
                                            b.icmp_signed("<", b.add(_splat_i64_val(b, vw, j),
                                                                     b.ashr(m, _splat_i64_val(
                                                                         b, vw, I64(1)))),
                                                          _splat_i64_val(b, vw, wq)))
                                        ok2 = b.and_(ok2, _splat_i1(b, vw, b.and_(row_ok, ok)))
                                        ph_ = b.gep(rowp, [b.add(j0, I64(hh * vw))])
                                        halves.append(b.call(mload, [
                                            b.bitcast(ph_, fv.as_pointer()), I32(4), ok2,
                                            fzero]))
                                    v3 = b.shuffle_vector(halves[0], halves[1], ir.Constant(
                                        ir.VectorType(I32, vw), list(range(0, 2 * vw, 2))))
                                    blk3 = b.block
                                with other2:
                                    addr = b.add(_splat_i64_val(b, vw, b.ptrtoint(rowp, I64)),
                                                 b.mul(b.select(live, jw, _splat_i64_val(
                                                     b, vw, I64(0))), _splat_i64_val(
                                                         b, vw, I64(4))))
                                    v4 = b.call(gather, [b.inttoptr(addr, pvty), I32(4), live,
                                                         fzero])
                                    blk4 = b.block
                            v2 = b.phi(fv)
                            v2.add_incoming(v3, blk3)
                            v2.add_incoming(v4, blk4)
                            blk2 = b.block
                    v = b.phi(fv)
                    v.add_incoming(v1, blk1)
                    v.add_incoming(v2, blk2)
                    vals.append(codes(v))
                a01 = b.shuffle_vector(vals[0], vals[1], cat)
                a23 = b.shuffle_vector(vals[2], vals[3], cat)
                packed = b.shuffle_vector(a01, a23, weave)
                bmask = b.icmp_signed("<", b.add(_splat_i64_val(b, 4 * vw, j), byte_lane),
                                      _splat_i64_val(b, 4 * vw, wq))
                dst = b.gep(q, [b.mul(b.add(plane, b.add(b.mul(i, wq), j)), I64(4))],
                            inbounds=True)
                b.call(mstore, [packed, b.bitcast(dst, bty.as_pointer()), I32(1), bmask])
    b.ret_void()


def _codes(k: _K, v, inv, zero, rint):
    """uint8 codes of float vector v: rint(v / scale) + zero clamped to [0, 255], NaN -> 0
    (formats.qint8.quantize_act's)."""
    b = k.b
    v = b.fadd(b.call(rint, [b.fmul(v, inv)]), zero)
    lo, hi = k.c(0.0), k.c(255.0)
    v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
    v = b.select(b.fcmp_ordered(">", v, hi), hi, v)
    v = b.select(b.fcmp_unordered("uno", v, v), lo, v)
    return b.fptoui(v, ir.VectorType(I8, k.vw))


def _splat_i1(b, vw, v):
    vty = ir.VectorType(I1, vw)
    undef = ir.Constant(vty, ir.Undefined)
    v0 = b.insert_element(undef, v, I32(0))
    return b.shuffle_vector(v0, undef, ir.Constant(ir.VectorType(I32, vw), [0] * vw))
