"""Vector math for the LLVM kernels the native library emits beside the spmm/GEMM ones
(attention, layer norm, transpose epilogues): exp, GELU, horizontal sums, lane masks.

exp and erfc follow codegen.numba.mathf (Cephes' expf polynomial; Numerical Recipes' erfc
fit, relative error of a few ulps for every z >= 0), so the native and numba kernels agree.
"""

from __future__ import annotations

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I32, I64, _Fn, _splat_i64_val
from sparsecc.codegen.numba import mathf

_RSQRT2 = 0.7071067811865476


class _K(_Fn):
    """_Fn with the vector helpers these kernels need beyond the spmm kernels'."""

    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.vty, [v] * self.vw)

    def floor(self, v):
        f = self.intrinsic(f"llvm.floor.v{self.vw}f32", self.vty, [self.vty])
        return self.b.call(f, [v])

    def reduce(self, kind: str, v):
        f = self.intrinsic(f"llvm.vector.reduce.{kind}.v{self.vw}f32", F32, [self.vty])
        return self.b.call(f, [v])

    def vexp(self, x):
        """exp(x) for x <= 0 (Cephes' expf polynomial, ~1 ulp); 0 below -87.3; NaN stays
        NaN. 2^n goes through the float 1.5 * 2^23 trick: no float -> int conversion, so no
        poison for NaN or -inf lanes."""
        b, c = self.b, self.c
        lo = c(-87.3)
        small = b.fcmp_ordered("<", x, lo)
        xc = b.select(small, lo, x)
        n = self.floor(self.fma(xc, c(1.44269504088896341), c(0.5)))
        r = self.fma(n, c(-0.693359375), xc)
        r = self.fma(n, c(2.12194440e-4), r)
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                     5.0000001201e-1):
            p = self.fma(p, r, c(coef))
        y = b.fadd(self.fma(p, b.fmul(r, r), r), c(1.0))
        ivty = ir.VectorType(I32, self.vw)
        magic = b.bitcast(b.fadd(n, c(12582912.0)), ivty)  # low bits: n + 0x400000
        e = b.shl(b.add(magic, ir.Constant(ivty, [127 - 0x4B400000] * self.vw)),
                  ir.Constant(ivty, [23] * self.vw))
        y = b.fmul(y, b.bitcast(e, self.vty))
        return b.select(small, c(0.0), y)

    def lanes_lt(self, base, limit):
        """Mask: lane l is live when base + l < limit (i64 values)."""
        b = self.b
        lanes = ir.Constant(ir.VectorType(I64, self.vw), list(range(self.vw)))
        return b.icmp_signed("<", b.add(_splat_i64_val(b, self.vw, base), lanes),
                             _splat_i64_val(b, self.vw, limit))

    def gelu(self, v):
        """x * Phi(x) with Phi from erfc(|x| / sqrt 2) on both sides, as activations.gelu32."""
        b, c = self.b, self.c
        fabs = self.intrinsic(f"llvm.fabs.v{self.vw}f32", self.vty, [self.vty])
        z = b.fmul(b.call(fabs, [v]), c(_RSQRT2))
        t = b.fdiv(c(1.0), self.fma(z, c(0.5), c(1.0)))
        s = c(float(mathf._ERFC_S[0]))
        for coef in mathf._ERFC_S[1:]:
            s = self.fma(s, t, c(float(coef)))
        h = b.fmul(c(0.5), b.fmul(t, self.vexp(b.fsub(s, b.fmul(z, z)))))
        return b.fmul(v, b.select(b.fcmp_ordered("<", v, c(0.0)), h, b.fsub(c(1.0), h)))


def _hsum(k: _K, v):
    """Horizontal sum of a vector (a fixed tree: the same at every call)."""
    b = k.b
    n = k.vw
    while n > 1:
        h = n // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h, n))))
        v = b.fadd(lo, hi)
        n = h
    return b.extract_element(v, I32(0))
