"""Helpers for the LLVM kernels the native library emits beside the spmm/GEMM ones
(attention, layer norm, transposes): vector constants, exp and GELU (codegen.llvm.vmath),
reductions, horizontal sums, lane masks."""

from __future__ import annotations

from llvmlite import ir

from sparsecc.codegen.llvm import vmath as LV
from sparsecc.codegen.llvm.emit import F32, I32, I64, _Fn, _splat_i64_val


class _K(_Fn):
    """_Fn with the vector helpers these kernels need beyond the spmm kernels'."""

    def c(self, v: float) -> ir.Constant:
        return LV.splat_c(self, v)

    def reduce(self, kind: str, v):
        f = self.intrinsic(f"llvm.vector.reduce.{kind}.v{self.vw}f32", F32, [self.vty])
        return self.b.call(f, [v])

    def vsqrt(self, x):
        f = self.intrinsic(f"llvm.sqrt.v{self.vw}f32", self.vty, [self.vty])
        return self.b.call(f, [x])

    def vexp(self, x):
        return LV.exp(self, x)

    def lanes_lt(self, base, limit):
        """Mask: lane l is live when base + l < limit (i64 values)."""
        b = self.b
        lanes = ir.Constant(ir.VectorType(I64, self.vw), list(range(self.vw)))
        return b.icmp_signed("<", b.add(_splat_i64_val(b, self.vw, base), lanes),
                             _splat_i64_val(b, self.vw, limit))

    def lanes_in(self, base, lo, hi):
        """Mask: lane l is live when lo <= base + l < hi (i64 values)."""
        b = self.b
        lanes = ir.Constant(ir.VectorType(I64, self.vw), list(range(self.vw)))
        pos = b.add(_splat_i64_val(b, self.vw, base), lanes)
        return b.and_(b.icmp_signed(">=", pos, _splat_i64_val(b, self.vw, lo)),
                      b.icmp_signed("<", pos, _splat_i64_val(b, self.vw, hi)))

    def gelu(self, v):
        return LV.gelu(self, v)


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
