"""Scaled dot-product attention as one LLVM kernel: ``softmax(q k^T * scale + mask) v``.

A work item is QB query rows of one (batch, head). Its keys are transposed into this thread's
scratch (kt: D rows of S keys, vw x vw blocks through register shuffles), so the scores are
register tiles of RQ query rows x KV key vectors: per step of d, KV vector loads of kt, RQ
broadcasts of q and RQ x KV FMAs. The QB x S score block stays in L1; the softmax runs over
it 4 rows in lockstep with a vector exp; p v is a register tile of RV rows x E/vw vectors,
one broadcast of p and E/vw loads of v's row per key. The 1/sum is applied when storing.

Keys no row of the item can attend to are skipped, exactly: an additive mask <= -1e30 (the
-3.4e38 of Hugging Face's padding mask) makes exp underflow to 0 for any finite score, and so
does False in a boolean mask or a causal future. The item computes keys [0, jend), jend one past
the last key some row may attend to; a row that can attend to no key at all keeps every key
(with an additive mask, torch's softmax then spreads over them; with -inf everywhere the row
is 0, the numba kernel's convention).

ABI ``void k(i64 start, i64 stop, i64* args)``; slots below; items: heads x ceil(L / QB).
q, k, v, out are contiguous (heads, L|S, D|E); the mask is read at
``a*ms_a + b*ms_b + i*ms_i + j*ms_j`` for head t = a*B + b (B: the heads per sample).

With ``q_kn`` / ``k_kn``, q / k are instead the features x tokens output of the sparse linear
that computed them (native.lower: head h's D rows from h*D, sample a's tokens from column
a*L | a*S, rows ``q_ld`` / ``k_ld`` floats apart): q's elements are broadcast from there and
k's rows are kt already, copied into scratch as they are (read in place, the score tiles
waited on L2/L3), so neither the linear's output transpose nor the key transpose runs. Key
vectors past S read the next sample's columns or the row padding (kn_stride), which is why
k_kn needs S >= 2; those lanes are set to -inf before the softmax like any past jend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I32, I64, _splat_i64_val
from sparsecc.native.transpose import _shuffle_rounds
from sparsecc.native.vmath import _K, _hsum

(S_Q, S_K, S_V, S_OUT, S_MASK, S_B, S_L, S_NBLK, S_MSA, S_MSB, S_MSI, S_MSJ, S_SCALE,
 S_SCRATCH, S_PER, S_THREADS, S_QLD, S_KLD) = range(18)
N_SLOTS = 18
QB = 32
MASK_NONE, MASK_ADD, MASK_KEEP = 0, 1, 2  # as codegen.numba.attention
DEAD = -1e30  # an additive mask at or below this removes the key (exp underflows to 0)


@dataclass(frozen=True)
class AttentionSpec:
    vw: int
    d: int
    e: int
    s: int
    mask: int = MASK_NONE
    causal: bool = False
    q_kn: bool = False
    k_kn: bool = False

    @property
    def sp(self) -> int:  # a score row's length in scratch: whole vectors
        return -(-self.s // self.vw) * self.vw

    @property
    def key(self) -> str:
        return (f"sdpa_v{self.vw}_d{self.d}_e{self.e}_s{self.s}_m{self.mask}"
                f"_c{int(self.causal)}_kn{int(self.q_kn)}{int(self.k_kn)}")

    def scratch_floats(self) -> int:
        return self.d * self.sp + QB * self.sp + 2 * QB + self.vw

    def flops(self, rows: int) -> float:
        return 2.0 * rows * self.s * (self.d + self.e)

    def emit(self, module: ir.Module, name: str) -> None:
        emit_attention(module, name, self)


def emit_attention(module: ir.Module, name: str, spec: AttentionSpec) -> None:
    vw, D, E, S, sp = spec.vw, spec.d, spec.e, spec.s, spec.sp
    k = _K(module, name, vw)
    b = k.b
    q, kk, v, out = (k.arg_ptr(i, n) for i, n in ((S_Q, "q"), (S_K, "k"), (S_V, "v"),
                                                  (S_OUT, "out")))
    maskp = k.arg_ptr(S_MASK, "mask")
    B, L, nblk = k.arg_i64(S_B, "B"), k.arg_i64(S_L, "L"), k.arg_i64(S_NBLK, "nblk")
    msa, msb, msi, msj = (k.arg_i64(s, n) for s, n in ((S_MSA, "msa"), (S_MSB, "msb"),
                                                       (S_MSI, "msi"), (S_MSJ, "msj")))
    scale = b.fptrunc(b.bitcast(k.arg_i64(S_SCALE, "scale_bits"), ir.DoubleType()), F32)
    per, threads = k.arg_i64(S_PER, "per"), k.arg_i64(S_THREADS, "threads")
    qld, kld = k.arg_i64(S_QLD, "q_ld"), k.arg_i64(S_KLD, "k_ld")
    tid_fn = k.intrinsic("omp_get_thread_num", I32, [])
    tid = b.sext(b.call(tid_fn, []), I64)
    last = b.sub(threads, I64(1))
    tid = b.select(b.icmp_signed("<", tid, last), tid, last)
    tid = b.select(b.icmp_signed("<", tid, I64(0)), I64(0), tid)
    scratch = b.gep(k.arg_ptr(S_SCRATCH, "scratch"), [b.mul(tid, per)], inbounds=True)
    sc = b.gep(scratch, [I64(D * sp)], inbounds=True)
    rowinv = b.gep(sc, [I64(QB * sp)], inbounds=True)
    scale_v = k.splat(scale)
    mbase_i8 = b.bitcast(maskp, ir.IntType(8).as_pointer())

    def smin(x, y):
        return b.select(b.icmp_signed("<", x, y), x, y)

    def smax(x, y):
        return b.select(b.icmp_signed(">", x, y), x, y)

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        head = b.sdiv(t, nblk)
        i0 = b.mul(b.sub(t, b.mul(head, nblk)), I64(QB))
        rows = smin(I64(QB), b.sub(L, i0))
        ha = b.sdiv(head, B)
        mhead = b.add(b.mul(ha, msa), b.mul(b.sub(head, b.mul(ha, B)), msb))
        hb = b.sub(head, b.mul(ha, B))
        if spec.q_kn:  # q[r, d] at qh[d * q_ld + r]
            qh = b.gep(q, [b.add(b.mul(b.mul(hb, I64(D)), qld), b.add(b.mul(ha, L), i0))],
                       inbounds=True)
            q_rs, q_ds = I64(1), qld
        else:  # q[r, d] at qh[r * D + d]
            qh = b.gep(q, [b.add(b.mul(head, b.mul(L, I64(D))), b.mul(i0, I64(D)))],
                       inbounds=True)
            q_rs, q_ds = I64(D), I64(1)
        vh = b.gep(v, [b.mul(head, I64(S * E))], inbounds=True)
        oh = b.gep(out, [b.add(b.mul(head, b.mul(L, I64(E))), b.mul(i0, I64(E)))],
                   inbounds=True)

        # ---- jend: one past the last key any row of the item may attend to
        jend_p = k.alloca(I64, "jend")
        b.store(I64(0), jend_p)
        with k.loop(I64(0), rows, "lr") as r:
            i = b.add(i0, r)
            row_end = I64(S)
            if spec.mask != MASK_NONE:
                row_end = _last_live(k, spec, maskp, mbase_i8, b.add(mhead, b.mul(i, msi)),
                                     msj)
            if spec.causal:
                row_end = smax(smin(row_end, b.add(i, I64(1))), I64(1))
            b.store(smax(b.load(jend_p), row_end), jend_p)
        jend = b.load(jend_p)
        nvec = b.sdiv(b.add(jend, I64(vw - 1)), I64(vw))

        # ---- kt[d, j] = k[j, d] for j < jend (blocks of vw x vw, then the edges)
        kt = scratch
        if spec.k_kn:  # copied into scratch: the score tiles then read L1, not L2 / L3
            ksrc = b.gep(kk, [b.add(b.mul(b.mul(hb, I64(D)), kld), b.mul(ha, I64(S)))],
                         inbounds=True)
            with k.loop(I64(0), I64(D), "kc") as d:
                src = b.gep(ksrc, [b.mul(d, kld)], inbounds=True)
                dst = b.gep(kt, [b.mul(d, I64(sp))], inbounds=True)
                with k.loop(I64(0), b.mul(nvec, I64(vw)), "kcj", step=vw) as j0:
                    k.vstore(k.vload(b.gep(src, [j0], inbounds=True), None),
                             b.gep(dst, [j0], inbounds=True), None)
        else:
            kh = b.gep(kk, [b.mul(head, I64(S * D))], inbounds=True)
            _transpose_keys(k, kh, kt, jend, D, sp)

        # ---- scores: sc[r, j] = (q[r] . k[j]) * scale, j < nvec * vw
        RQ, KV = (4, 4) if vw >= 16 else (4, 2)
        _scores(k, spec, (qh, q_rs, q_ds), kt, sc, rows, nvec, RQ, KV, scale_v)

        # ---- mask, causal and padding lanes; softmax rows in place; 1/sum per row. SR rows
        # in lockstep: one row's chain (max, reduce, exp, sum, reduce, divide) is latency-bound
        # (4 rows: a MiniLM batch-16 attention 5.7 -> 5.0 ms on one thread). The mask applied
        # in the score tiles' epilogue instead, with the row maxima, was 35 % slower: the
        # tile's accumulators spilled.
        def softmax(r0, nr: int):
            rs = [b.add(r0, I64(u)) for u in range(nr)]
            srows = [b.gep(sc, [b.mul(r, I64(sp))], inbounds=True) for r in rs]
            mrows = [b.add(mhead, b.mul(b.add(i0, r), msi)) for r in rs]
            mxs = [k.alloca(k.vty, f"mx{u}") for u in range(nr)]
            for mp in mxs:
                b.store(k.c(-math.inf), mp)
            with k.loop(I64(0), nvec, "sj") as jv:
                j0 = b.mul(jv, I64(vw))
                keep0 = k.lanes_lt(j0, jend)
                for u in range(nr):
                    ptr = b.gep(srows[u], [j0], inbounds=True)
                    val = k.vload(ptr, None)
                    if spec.mask != MASK_NONE:
                        val = _apply_mask(k, spec, val, maskp, mbase_i8, mrows[u], j0, msj)
                    keep = keep0
                    if spec.causal:
                        keep = b.and_(keep, k.lanes_lt(j0, b.add(b.add(i0, rs[u]), I64(1))))
                    val = b.select(keep, val, k.c(-math.inf))
                    k.vstore(val, ptr, None)
                    mx = b.load(mxs[u])
                    b.store(b.select(b.fcmp_unordered(">", val, mx), val, mx), mxs[u])
            mvs, sums = [], [k.alloca(k.vty, f"sum{u}") for u in range(nr)]
            for u in range(nr):
                m = k.reduce("fmax", b.load(mxs[u]))
                # every key -inf: exp(x - 0) is 0 everywhere, the row is 0
                m = b.select(b.fcmp_ordered("==", m, ir.Constant(F32, -math.inf)),
                             ir.Constant(F32, 0.0), m)
                mvs.append(k.splat(m))
                b.store(k.c(0.0), sums[u])
            with k.loop(I64(0), nvec, "ej") as jv:
                for u in range(nr):
                    ptr = b.gep(srows[u], [b.mul(jv, I64(vw))], inbounds=True)
                    p = k.vexp(b.fsub(k.vload(ptr, None), mvs[u]))
                    k.vstore(p, ptr, None)
                    b.store(b.fadd(b.load(sums[u]), p), sums[u])
            for u in range(nr):
                s_ = _hsum(k, b.load(sums[u]))
                inv = b.select(b.fcmp_ordered(">", s_, ir.Constant(F32, 0.0)),
                               b.fdiv(ir.Constant(F32, 1.0), s_), ir.Constant(F32, 0.0))
                # a NaN sum (a NaN score) must stay NaN
                inv = b.select(b.fcmp_unordered("uno", s_, s_), s_, inv)
                b.store(inv, b.gep(rowinv, [rs[u]], inbounds=True))

        SR = 4
        sfull = b.mul(b.sdiv(rows, I64(SR)), I64(SR))
        with k.loop(I64(0), sfull, "sr", step=SR) as r0:
            softmax(r0, SR)
        with k.loop(sfull, rows, "sr1") as r0:
            softmax(r0, 1)

        # ---- out[r] = (sum_j p[r, j] v[j]) / sum
        ev = -(-E // vw)
        RV = max(1, min(8, (16 if vw >= 16 else 12) // ev))
        _pv(k, spec, sc, rowinv, vh, oh, rows, jend, RV, ev)
    b.ret_void()


def _mask_load(k: _K, spec: AttentionSpec, maskp, mbase_i8, mrow, j0, msj):
    """The mask over lanes j0..j0+vw of one row (lanes past S: 0, not read): a vector load
    when its key stride is 1, a gather otherwise (e.g. a mask broadcast along the keys)."""
    b, vw = k.b, k.vw
    inkeys = k.lanes_lt(j0, I64(spec.s))
    base = b.add(mrow, b.mul(j0, msj))
    lanes = ir.Constant(ir.VectorType(I64, vw), list(range(vw)))
    offs = b.add(_splat_i64_val(b, vw, base), b.mul(lanes, _splat_i64_val(b, vw, msj)))
    byte = spec.mask == MASK_KEEP
    ety = ir.IntType(8) if byte else F32
    vty = ir.VectorType(ety, vw)
    ptr0 = mbase_i8 if byte else maskp
    zero = ir.Constant(vty, [0] * vw if byte else [0.0] * vw)
    slot = k.alloca(vty, "mvals")
    with b.if_else(b.icmp_signed("==", msj, I64(1))) as (unit, other):
        with unit:
            vptr = b.bitcast(b.gep(ptr0, [base], inbounds=True), vty.as_pointer())
            f = k.intrinsic(f"llvm.masked.load.v{vw}{'i8' if byte else 'f32'}.p0", vty,
                            [vty.as_pointer(), I32, inkeys.type, vty])
            b.store(b.call(f, [vptr, I32(1 if byte else 4), inkeys, zero]), slot)
        with other:
            esz = 1 if byte else 4
            addrs = b.add(_splat_i64_val(b, vw, b.ptrtoint(ptr0, I64)),
                          b.mul(offs, ir.Constant(ir.VectorType(I64, vw), [esz] * vw)))
            ptrs = b.inttoptr(addrs, ir.VectorType(ety.as_pointer(), vw))
            g = k.intrinsic(f"llvm.masked.gather.v{vw}{'i8' if byte else 'f32'}.v{vw}p0", vty,
                            [ptrs.type, I32, inkeys.type, vty])
            b.store(b.call(g, [ptrs, I32(1 if byte else 4), inkeys, zero]), slot)
    return b.load(slot), inkeys


def _apply_mask(k: _K, spec: AttentionSpec, val, maskp, mbase_i8, mrow, j0, msj):
    m, _ = _mask_load(k, spec, maskp, mbase_i8, mrow, j0, msj)
    if spec.mask == MASK_ADD:
        return k.b.fadd(val, m)
    zero = ir.Constant(m.type, [0] * k.vw)
    return k.b.select(k.b.icmp_unsigned("!=", m, zero), val, k.c(-math.inf))


def _last_live(k: _K, spec: AttentionSpec, maskp, mbase_i8, mrow, msj):
    """One past the last key of a mask row that may be attended to (an additive value above
    DEAD, a True), a vector at a time from the end; S when there is none."""
    b, vw, S = k.b, k.vw, spec.s
    res = k.alloca(I64, "rend")
    b.store(I64(S), res)
    jv_p = k.alloca(I64, "jv")
    b.store(I64(-(-S // vw) - 1), jv_p)
    head = k.fn.append_basic_block("scan")
    body = k.fn.append_basic_block("scan_body")
    hit = k.fn.append_basic_block("scan_hit")
    done = k.fn.append_basic_block("scan_done")
    b.branch(head)
    b.position_at_end(head)
    jv = b.load(jv_p)
    b.cbranch(b.icmp_signed("<", jv, I64(0)), done, body)
    b.position_at_end(body)
    j0 = b.mul(jv, I64(vw))
    m, inkeys = _mask_load(k, spec, maskp, mbase_i8, mrow, j0, msj)
    if spec.mask == MASK_ADD:
        live = b.and_(b.fcmp_unordered(">", m, k.c(DEAD)), inkeys)
    else:
        live = b.icmp_unsigned("!=", m, ir.Constant(m.type, [0] * vw))
    bits = b.bitcast(live, ir.IntType(vw))
    b.store(b.sub(jv, I64(1)), jv_p)
    b.cbranch(b.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(vw), 0)), hit, head)
    b.position_at_end(hit)
    ctlz = k.intrinsic(f"llvm.ctlz.i{vw}", ir.IntType(vw), [ir.IntType(vw), ir.IntType(1)])
    lead = b.zext(b.call(ctlz, [bits, ir.Constant(ir.IntType(1), 1)]), I64)
    b.store(b.sub(b.add(j0, I64(vw)), lead), res)
    b.branch(done)
    b.position_at_end(done)
    return b.load(res)


def _transpose_keys(k: _K, kh, kt, jend, D: int, sp: int) -> None:
    b, vw = k.b, k.vw
    jfull = b.mul(b.sdiv(jend, I64(vw)), I64(vw))
    dfull = (D // vw) * vw
    with k.loop(I64(0), jfull, "tj", step=vw) as j0:
        for d0 in range(0, dfull, vw):
            rows = [k.vload(b.gep(kh, [b.add(b.mul(b.add(j0, I64(r)), I64(D)), I64(d0))],
                                  inbounds=True), None) for r in range(vw)]
            cols = _shuffle_rounds(b, rows, vw)
            for c in range(vw):
                k.vstore(cols[c], b.gep(kt, [b.add(I64((d0 + c) * sp), j0)], inbounds=True),
                         None)
        for d in range(dfull, D):  # the d edge of full key blocks
            with k.loop(j0, b.add(j0, I64(vw)), "tjd") as j:
                val = b.load(b.gep(kh, [b.add(b.mul(j, I64(D)), I64(d))], inbounds=True))
                b.store(val, b.gep(kt, [b.add(I64(d * sp), j)], inbounds=True))
    with k.loop(jfull, jend, "tje") as j:  # the key edge
        for d in range(D):
            val = b.load(b.gep(kh, [b.add(b.mul(j, I64(D)), I64(d))], inbounds=True))
            b.store(val, b.gep(kt, [b.add(I64(d * sp), j)], inbounds=True))


def _scores(k: _K, spec: AttentionSpec, qs, kt, sc, rows, nvec, RQ: int, KV: int,
            scale_v) -> None:
    """sc[r, jv*vw..] for rows [0, rows) and key vectors [0, nvec): RQ x KV register tiles
    (a row or key-vector tail takes the narrower tile). q[r, d] is at qh[r*q_rs + d*q_ds]
    (qs = (qh, q_rs, q_ds)). Lanes past jend read kt's stale columns: finite or not, they
    are overwritten with -inf before the softmax."""
    b, vw, D, sp = k.b, k.vw, spec.d, spec.sp
    qh, q_rs, q_ds = qs

    def tile(r0, jv0, rq: int, kv: int):
        accs = [[k.c(0.0) for _ in range(kv)] for _ in range(rq)]
        krow = kt
        qcol = qh
        for _ in range(D):
            kvec = [k.vload(b.gep(krow, [b.mul(b.add(jv0, I64(c)), I64(vw))], inbounds=True),
                            None) for c in range(kv)]
            for r in range(rq):
                qv = k.splat(b.load(b.gep(qcol, [b.mul(b.add(r0, I64(r)), q_rs)],
                                          inbounds=True)))
                for c in range(kv):
                    accs[r][c] = k.fma(qv, kvec[c], accs[r][c])
            krow = b.gep(krow, [I64(sp)], inbounds=True)
            qcol = b.gep(qcol, [q_ds], inbounds=True)
        for r in range(rq):
            srow = b.gep(sc, [b.mul(b.add(r0, I64(r)), I64(sp))], inbounds=True)
            for c in range(kv):
                k.vstore(b.fmul(accs[r][c], scale_v),
                         b.gep(srow, [b.mul(b.add(jv0, I64(c)), I64(vw))], inbounds=True), None)

    rfull = b.mul(b.sdiv(rows, I64(RQ)), I64(RQ))
    kfull = b.mul(b.sdiv(nvec, I64(KV)), I64(KV))

    def over_keys(r0, rq):
        with k.loop(I64(0), kfull, "qk", step=KV) as jv0:
            tile(r0, jv0, rq, KV)
        with k.loop(kfull, nvec, "qk1") as jv0:
            tile(r0, jv0, rq, 1)

    with k.loop(I64(0), rfull, "qr", step=RQ) as r0:
        over_keys(r0, RQ)
    with k.loop(rfull, rows, "qr1") as r0:
        over_keys(r0, 1)


def _pv(k: _K, spec: AttentionSpec, sc, rowinv, vh, oh, rows, jend, RV: int, ev: int) -> None:
    b, vw, E, sp = k.b, k.vw, spec.e, spec.sp
    emask = None
    if E % vw:
        emask = k.lanes_lt(I64((ev - 1) * vw), I64(E))

    def tile(r0, rv: int):
        accs = [[k.c(0.0) for _ in range(ev)] for _ in range(rv)]
        slots = [[k.alloca(k.vty, f"pv{r}_{c}") for c in range(ev)] for r in range(rv)]
        for r in range(rv):
            for c in range(ev):
                b.store(accs[r][c], slots[r][c])
        with k.loop(I64(0), jend, "pj") as j:
            vrow = b.gep(vh, [b.mul(j, I64(E))], inbounds=True)
            vv = [k.vload(b.gep(vrow, [I64(c * vw)], inbounds=True),
                          emask if c == ev - 1 else None) for c in range(ev)]
            for r in range(rv):
                pr = k.splat(b.load(b.gep(sc, [b.add(b.mul(b.add(r0, I64(r)), I64(sp)), j)],
                                          inbounds=True)))
                for c in range(ev):
                    b.store(k.fma(pr, vv[c], b.load(slots[r][c])), slots[r][c])
        for r in range(rv):
            inv = k.splat(b.load(b.gep(rowinv, [b.add(r0, I64(r))], inbounds=True)))
            orow = b.gep(oh, [b.mul(b.add(r0, I64(r)), I64(E))], inbounds=True)
            for c in range(ev):
                k.vstore(b.fmul(b.load(slots[r][c]), inv),
                         b.gep(orow, [I64(c * vw)], inbounds=True),
                         emask if c == ev - 1 else None)

    rfull = b.mul(b.sdiv(rows, I64(RV)), I64(RV))
    with k.loop(I64(0), rfull, "vr", step=RV) as r0:
        tile(r0, RV)
    with k.loop(rfull, rows, "vr1") as r0:
        tile(r0, 1)
