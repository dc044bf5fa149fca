"""Layer norm over the last dim as an LLVM kernel, optionally of a sum (a transformer's
``LayerNorm(h + residual)`` in one pass over memory instead of an add and a norm).

Per row of d floats: x = a (+ r) written to out (it stays in L1), the mean from vector partial
sums, the variance from the centred values (two passes, as torch computes it: no
E[x^2] - E[x]^2 cancellation), then out = (x - mean) * rstd * w + b. Tails are masked.

ABI ``void k(i64 start, i64 stop, i64* args)``; args: a, r, out, w, b, d, eps (f64 bits);
items: rows.

With ``kn``, a, r and out are features x tokens (d rows of m tokens, ``ld`` floats apart: the
layout the sparse linears compute in, native.lower's residual stream) and an item is one
vector of vw tokens: the lanes are tokens, the sums run down the d rows (4 partial sums each,
the chains are latency-bound), and the d x vw block stays in L1 between the passes. Items:
ceil(m / vw); the last one is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I64
from sparsecc.native.attention import _K, _hsum

L_A, L_R, L_OUT, L_W, L_B, L_D, L_EPS, L_LD, L_M = range(9)
N_SLOTS = 9
KN_UNROLL = 4


@dataclass(frozen=True)
class LayerNormSpec:
    vw: int
    residual: bool = False
    weight: bool = True
    bias: bool = True
    kn: bool = False

    @property
    def key(self) -> str:
        return (f"layernorm_v{self.vw}_r{int(self.residual)}_w{int(self.weight)}"
                f"_b{int(self.bias)}{'_kn' if self.kn else ''}")

    def emit(self, module: ir.Module, name: str) -> None:
        (emit_layernorm_kn if self.kn else emit_layernorm)(module, name, self)


def emit_layernorm(module: ir.Module, name: str, spec: LayerNormSpec) -> None:
    vw = spec.vw
    k = _K(module, name, vw)
    b = k.b
    a, r, out = k.arg_ptr(L_A, "a"), k.arg_ptr(L_R, "r"), k.arg_ptr(L_OUT, "out")
    w, bias = k.arg_ptr(L_W, "w"), k.arg_ptr(L_B, "bias")
    d = k.arg_i64(L_D, "d")
    eps = b.fptrunc(b.bitcast(k.arg_i64(L_EPS, "eps_bits"), ir.DoubleType()), F32)
    nfull = b.mul(b.sdiv(d, I64(vw)), I64(vw))
    has_tail = b.icmp_signed("<", nfull, d)
    tail = k.lanes_lt(nfull, d)
    dinv = b.fdiv(ir.Constant(F32, 1.0), b.sitofp(d, F32))

    def over(row_fn, acc_init=None):
        """row_fn(j, mask) over the full vectors, then the masked tail (when there is one);
        with acc_init, row_fn returns the new accumulator (a vector kept in an alloca)."""
        slot = None
        if acc_init is not None:
            slot = k.alloca(k.vty, "acc")
            b.store(acc_init, slot)
        with k.loop(I64(0), nfull, "j", step=vw) as j:
            v = row_fn(j, None, None if slot is None else b.load(slot))
            if slot is not None:
                b.store(v, slot)
        with b.if_then(has_tail):
            v = row_fn(nfull, tail, None if slot is None else b.load(slot))
            if slot is not None:
                b.store(v, slot)
        return None if slot is None else b.load(slot)

    with k.loop(k.fn.args[0], k.fn.args[1], "row") as row:
        base = b.mul(row, d)
        pa = b.gep(a, [base], inbounds=True)
        pr = b.gep(r, [base], inbounds=True)
        po = b.gep(out, [base], inbounds=True)

        def load_sum(j, mask, acc):
            x = k.vload(b.gep(pa, [j], inbounds=True), mask)
            if spec.residual:
                x = b.fadd(x, k.vload(b.gep(pr, [j], inbounds=True), mask))
            k.vstore(x, b.gep(po, [j], inbounds=True), mask)
            return b.fadd(acc, x)  # masked lanes loaded as 0

        mean = b.fmul(_hsum(k, over(load_sum, k.c(0.0))), dinv)
        mv = k.splat(mean)

        def var(j, mask, acc):
            c = b.fsub(k.vload(b.gep(po, [j], inbounds=True), mask), mv)
            if mask is not None:
                c = b.select(mask, c, k.c(0.0))
            return k.fma(c, c, acc)

        variance = b.fmul(_hsum(k, over(var, k.c(0.0))), dinv)
        sqrt = k.intrinsic("llvm.sqrt.f32", F32, [F32])
        rstd = k.splat(b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(variance, eps)])))

        def norm(j, mask, acc):
            y = b.fmul(b.fsub(k.vload(b.gep(po, [j], inbounds=True), mask), mv), rstd)
            if spec.weight:
                y = b.fmul(y, k.vload(b.gep(w, [j], inbounds=True), mask))
            if spec.bias:
                y = b.fadd(y, k.vload(b.gep(bias, [j], inbounds=True), mask))
            k.vstore(y, b.gep(po, [j], inbounds=True), mask)
            return acc

        over(norm)
    b.ret_void()


def emit_layernorm_kn(module: ir.Module, name: str, spec: LayerNormSpec) -> None:
    vw, U = spec.vw, KN_UNROLL
    k = _K(module, name, vw)
    b = k.b
    a, r, out = k.arg_ptr(L_A, "a"), k.arg_ptr(L_R, "r"), k.arg_ptr(L_OUT, "out")
    w, bias = k.arg_ptr(L_W, "w"), k.arg_ptr(L_B, "bias")
    d, ld, m = k.arg_i64(L_D, "d"), k.arg_i64(L_LD, "ld"), k.arg_i64(L_M, "m")
    eps = k.splat(b.fptrunc(b.bitcast(k.arg_i64(L_EPS, "eps_bits"), ir.DoubleType()), F32))
    dinv = k.splat(b.fdiv(ir.Constant(F32, 1.0), b.sitofp(d, F32)))
    dfull = b.mul(b.sdiv(d, I64(U)), I64(U))

    def down(body, init):
        """Sum of body(row, acc) down the d rows: U partial sums, then the row tail."""
        slots = [k.alloca(k.vty, f"acc{u}") for u in range(U)]
        for sl in slots:
            b.store(init, sl)
        with k.loop(I64(0), dfull, "c", step=U) as c0:
            for u in range(U):
                b.store(body(b.add(c0, I64(u)), b.load(slots[u])), slots[u])
        with k.loop(dfull, d, "ct") as c:
            b.store(body(c, b.load(slots[0])), slots[0])
        tot = b.load(slots[0])
        for u in range(1, U):
            tot = b.fadd(tot, b.load(slots[u]))
        return tot

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        j0 = b.mul(t, I64(vw))
        mask = k.lanes_lt(j0, m)

        def at(base, c):
            return b.gep(base, [b.add(b.mul(c, ld), j0)], inbounds=True)

        def load_sum(c, acc):
            x = k.vload(at(a, c), mask)
            if spec.residual:
                x = b.fadd(x, k.vload(at(r, c), mask))
            k.vstore(x, at(out, c), mask)
            return b.fadd(acc, x)

        mean = b.fmul(down(load_sum, k.c(0.0)), dinv)

        def var(c, acc):
            x = b.fsub(k.vload(at(out, c), mask), mean)
            return k.fma(x, x, acc)

        rstd = b.fdiv(k.c(1.0), k.vsqrt(b.fadd(b.fmul(down(var, k.c(0.0)), dinv), eps)))

        with k.loop(I64(0), d, "cn") as c:
            y = b.fmul(b.fsub(k.vload(at(out, c), mask), mean), rstd)
            if spec.weight:
                y = b.fmul(y, k.splat(b.load(b.gep(w, [c], inbounds=True))))
            if spec.bias:
                y = b.fadd(y, k.splat(b.load(b.gep(bias, [c], inbounds=True))))
            k.vstore(y, at(out, c), mask)
    b.ret_void()
