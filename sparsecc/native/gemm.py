"""A register-blocked dense GEMM (BLIS-style microkernel, no packing) as LLVM IR.

``C[b] = act(A[b] @ B[b] + bias (+ R[b]))`` with A (M x K), B (K x N), C (M x N) row-major at
any row strides; R (``residual``: a ResNet's add fused) laid out as C. A work item is one MR x
NR tile of one batch entry: NR = 2 vectors (32 floats with AVX-512, 16 with AVX2), MR = 6 rows,
so the 12 accumulators, two B vectors and one broadcast of A fit the 16 vector registers of AVX2
(AVX-512 has 32). Per step of k: two vector loads of B's row k, six scalar broadcasts of A's
column k, twelve FMAs. Tiles run N-panel by N-panel (items vary fastest along M), so consecutive
items reuse one K x NR panel of B from L1/L2.

The kernel has the common ABI ``void k(i64 start, i64 stop, i64* args)``; args slots below.
Batch entry b reads A at ``(b % amod) * sa``, B at ``(b % bmod) * sb``, C at ``b * sc`` and the
bias at ``(b % amod) * sbias`` (a grouped conv: b = sample * groups + group, amod = groups).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm import emit
from sparsecc.codegen.llvm.emit import I64, _Fn, act_key

(G_A, G_B, G_C, G_BIAS, G_M, G_N, G_K, G_LDA, G_LDB, G_LDC, G_SA, G_SB, G_SC, G_AMOD, G_BMOD,
 G_SBIAS, G_TM, G_TN, G_RES) = range(19)
G_ARGS = 19
MR = 6


@dataclass(frozen=True)
class GemmSpec:
    vw: int
    bias: str = "none"  # "none" | "row" (bias[i], conv) | "col" (bias[j], linear)
    act: str = "none"  # fused: none | relu | clamp
    act_a: float = 0.0
    act_b: float = 0.0
    residual: bool = False  # + R before the activation (args[G_RES], laid out as C)

    @property
    def nr(self) -> int:
        return 2 * self.vw

    @property
    def key(self) -> str:
        act = act_key(self)
        res = "_res" if self.residual else ""
        return f"gemm_v{self.vw}_{self.bias}_{act}{res}".replace(".", "p").replace("-", "m")

    def emit(self, module: ir.Module, name: str) -> None:
        emit_gemm(module, name, self)


def emit_gemm(module: ir.Module, name: str, spec: GemmSpec) -> None:
    k = _Fn(module, name, spec.vw)
    b = k.b
    A, B, Cm = k.arg_ptr(G_A, "A"), k.arg_ptr(G_B, "B"), k.arg_ptr(G_C, "C")
    bias = k.arg_ptr(G_BIAS, "bias")
    M, N, K = k.arg_i64(G_M, "M"), k.arg_i64(G_N, "N"), k.arg_i64(G_K, "K")
    lda, ldb, ldc = k.arg_i64(G_LDA, "lda"), k.arg_i64(G_LDB, "ldb"), k.arg_i64(G_LDC, "ldc")
    sa, sb, sc = k.arg_i64(G_SA, "sa"), k.arg_i64(G_SB, "sb"), k.arg_i64(G_SC, "sc")
    amod, bmod = k.arg_i64(G_AMOD, "amod"), k.arg_i64(G_BMOD, "bmod")
    sbias = k.arg_i64(G_SBIAS, "sbias")
    tm, tn = k.arg_i64(G_TM, "tm"), k.arg_i64(G_TN, "tn")
    vw, nr = spec.vw, spec.nr
    lanes = ir.Constant(ir.VectorType(I64, vw), list(range(vw)))
    with k.loop(k.fn.args[0], k.fn.args[1], "w") as w:
        per = b.mul(tm, tn)
        bi = b.sdiv(w, per)
        rest = b.sub(w, b.mul(bi, per))
        tj = b.sdiv(rest, tm)
        ti = b.sub(rest, b.mul(tj, tm))
        i0, j0 = b.mul(ti, I64(MR)), b.mul(tj, I64(nr))
        ab = b.srem(bi, amod)
        a_base = b.gep(A, [b.add(b.mul(ab, sa), b.mul(i0, lda))], inbounds=True)
        b_base = b.gep(B, [b.add(b.mul(b.srem(bi, bmod), sb), j0)], inbounds=True)
        c_off = b.add(b.add(b.mul(bi, sc), b.mul(i0, ldc)), j0)
        c_base = b.gep(Cm, [c_off], inbounds=True)
        r_base = b.gep(k.arg_ptr(G_RES, "res"), [c_off], inbounds=True) if spec.residual \
            else None
        bias_base = b.gep(bias, [b.mul(ab, sbias)], inbounds=True)
        rows = b.sub(M, i0)
        ncols = b.sub(N, j0)
        full_cols = b.icmp_signed(">=", ncols, I64(nr))
        masks = []
        for v in range(2):  # lane l of vector v is live when v*vw + l < ncols
            rem = b.sub(ncols, I64(v * vw))
            splat = emit._splat_i64_val(b, vw, rem)
            masks.append(b.icmp_signed("<", lanes, splat))
        after = k.fn.append_basic_block("tile_done")
        sw = b.switch(b.select(b.icmp_signed(">", rows, I64(MR)), I64(MR), rows), after)
        for mr in range(1, MR + 1):
            blk = k.fn.append_basic_block(f"mr{mr}")
            sw.add_case(I64(mr), blk)
            b.position_at_end(blk)
            with b.if_else(full_cols) as (then, other):
                with then:
                    _tile(k, spec, mr, None, a_base, b_base, c_base, bias_base, i0, j0, K, lda,
                          ldb, ldc, r_base)
                with other:
                    _tile(k, spec, mr, masks, a_base, b_base, c_base, bias_base, i0, j0, K,
                          lda, ldb, ldc, r_base)
            b.branch(after)
        b.position_at_end(after)
    b.ret_void()


def _tile(k: _Fn, spec: GemmSpec, mr: int, masks, a_base, b_base, c_base, bias_base, i0, j0,
          K, lda, ldb, ldc, r_base=None) -> None:
    b = k.b
    vw = spec.vw
    zero = ir.Constant(k.vty, [0.0] * vw)
    accs = [[k.alloca(k.vty, f"acc{i}_{v}") for v in range(2)] for i in range(mr)]
    for row in accs:
        for slot in row:
            b.store(zero, slot)
    with k.loop(I64(0), K, "kk") as kk:
        brow = b.gep(b_base, [b.mul(kk, ldb)], inbounds=True)
        bv = [k.vload(b.gep(brow, [I64(v * vw)], inbounds=True),
                      None if masks is None else masks[v]) for v in range(2)]
        for i in range(mr):
            av = k.splat(k.load_f32(a_base, b.add(b.mul(I64(i), lda), kk)))
            for v in range(2):
                b.store(k.fma(av, bv[v], b.load(accs[i][v])), accs[i][v])
    for i in range(mr):
        crow = b.gep(c_base, [b.mul(I64(i), ldc)], inbounds=True)
        for v in range(2):
            val = b.load(accs[i][v])
            mask = None if masks is None else masks[v]
            if spec.bias == "row":
                val = b.fadd(val, k.splat(k.load_f32(bias_base, b.add(i0, I64(i)))))
            elif spec.bias == "col":
                off = b.add(j0, I64(v * vw))
                val = b.fadd(val, k.vload(b.gep(bias_base, [off], inbounds=True), mask))
            if r_base is not None:
                rrow = b.gep(r_base, [b.mul(I64(i), ldc)], inbounds=True)
                val = b.fadd(val, k.vload(b.gep(rrow, [I64(v * vw)], inbounds=True), mask))
            val = k.act(val, spec)  # KernelSpec-like: act, act_a, act_b
            k.vstore(val, b.gep(crow, [I64(v * vw)], inbounds=True), mask)

