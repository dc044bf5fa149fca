"""Vector math in LLVM IR for the kernels' epilogues and the native library's kernels: exp
and GELU over ``<vw x float>``, as functions of a kernel builder (``b``, ``vw``, ``vty``,
``fma``, ``intrinsic``: codegen.llvm.emit._Fn).

They follow codegen.numba.mathf (Cephes' expf polynomial; Numerical Recipes' erfc fit,
relative error of a few ulps for every z >= 0), so LLVM and numba kernels agree.
"""

from __future__ import annotations

from llvmlite import ir

from sparsecc.codegen.numba import mathf

I32 = ir.IntType(32)
_RSQRT2 = 0.7071067811865476


def splat_c(k, v: float) -> ir.Constant:
    return ir.Constant(k.vty, [v] * k.vw)


def floor(k, v):
    f = k.intrinsic(f"llvm.floor.v{k.vw}f32", k.vty, [k.vty])
    return k.b.call(f, [v])


def exp(k, x):
    """exp(x) for x <= 88 (Cephes' expf polynomial, ~1 ulp); 0 below -87.3 and for -inf; NaN
    stays NaN. 2^n goes through the float 1.5 * 2^23 trick: no float -> int conversion, so no
    poison for NaN or infinite lanes."""
    b = k.b

    def c(v):
        return splat_c(k, v)

    lo = c(-87.3)
    small = b.fcmp_ordered("<", x, lo)
    xc = b.select(small, lo, x)
    n = floor(k, k.fma(xc, c(1.44269504088896341), c(0.5)))
    r = k.fma(n, c(-0.693359375), xc)
    r = k.fma(n, c(2.12194440e-4), r)
    p = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                 5.0000001201e-1):
        p = k.fma(p, r, c(coef))
    y = b.fadd(k.fma(p, b.fmul(r, r), r), c(1.0))
    ivty = ir.VectorType(I32, k.vw)
    magic = b.bitcast(b.fadd(n, c(12582912.0)), ivty)  # low bits: n + 0x400000
    e = b.shl(b.add(magic, ir.Constant(ivty, [127 - 0x4B400000] * k.vw)),
              ir.Constant(ivty, [23] * k.vw))
    y = b.fmul(y, b.bitcast(e, k.vty))
    return b.select(small, c(0.0), y)


def recip(k, d):
    """1 / d from the hardware estimate and one Newton step (rcp14: 2^-14 -> ~2^-28 on
    AVX-512; rcpps: 1.5 * 2^-12 -> ~2^-23 on AVX2): a vdivps costs several times more."""
    b = k.b
    if k.vw == 16:
        f = k.intrinsic("llvm.x86.avx512.rcp14.ps.512", k.vty,
                        [k.vty, k.vty, ir.IntType(16)])
        r = b.call(f, [d, splat_c(k, 0.0), ir.Constant(ir.IntType(16), -1)])
    elif k.vw == 8:
        f = k.intrinsic("llvm.x86.avx.rcp.ps.256", k.vty, [k.vty])
        r = b.call(f, [d])
    else:
        return b.fdiv(splat_c(k, 1.0), d)
    e = k.fma(b.fsub(splat_c(k, 0.0), d), r, splat_c(k, 1.0))  # 1 - d r
    # d = inf: the estimate is 0 and 1 - inf * 0 NaN; keep the 0 (gelu(inf) = inf)
    return b.select(b.fcmp_ordered("==", r, splat_c(k, 0.0)), r, k.fma(r, e, r))


def gelu(k, v):
    """x * Phi(x) with Phi from erfc(|x| / sqrt 2) on both sides, as activations.gelu32 (no
    1 + erf(x) cancellation in the negative tail)."""
    b = k.b

    def c(x):
        return splat_c(k, x)

    fabs = k.intrinsic(f"llvm.fabs.v{k.vw}f32", k.vty, [k.vty])
    z = b.fmul(b.call(fabs, [v]), c(_RSQRT2))
    t = recip(k, k.fma(z, c(0.5), c(1.0)))
    s = c(float(mathf._ERFC_S[0]))
    for coef in mathf._ERFC_S[1:]:
        s = k.fma(s, t, c(float(coef)))
    h = b.fmul(c(0.5), b.fmul(t, exp(k, b.fsub(s, b.fmul(z, z)))))
    return b.fmul(v, b.select(b.fcmp_ordered("<", v, c(0.0)), h, b.fsub(c(1.0), h)))
