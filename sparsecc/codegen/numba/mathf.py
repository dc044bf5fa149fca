"""float32 elementary functions built from arithmetic, so the loops that call them vectorise.

``math.exp``/``math.erf`` are scalar libm calls in numba (a loop over them runs ~10x slower than
a vectorised one here) and work in float64.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def f32_from_bits(typingctx, i):
    """The float32 whose bit pattern is the low 32 bits of the integer ``i`` (an LLVM bitcast;
    free in vector code)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        low = builder.trunc(args[0], ir.IntType(32)) if i.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(i), codegen


# exp(y) = 2^n * e^r with n = round(y / ln 2), r = y - n ln 2 (ln 2 in two parts), e^r by
# Cephes' expf polynomial (~1 ulp), 2^n built in the exponent bits.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                       4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
EXP_MIN = np.float32(-87.0)  # below: exp leaves float32's normal range; taken as 0
_EXP_MAX = np.float32(88.0)


@njit(inline="always", cache=True)
def exp32(v):
    """exp of a float32; 0 below -87 (and for -inf), NaN for NaN; callers keep v <= 88."""
    live = v > EXP_MIN
    y = min(max(v, EXP_MIN), _EXP_MAX)
    n = np.floor(y * _LOG2E + np.float32(0.5))
    z = y - n * _LN2_HI - n * _LN2_LO
    p = _EXP_P[0]
    for c in _EXP_P[1:]:
        p = p * z + c
    e = (p * z * z + z + np.float32(1.0)) * f32_from_bits((np.int32(n) + np.int32(127)) << 23)
    e = e if live else np.float32(0.0)
    return e if v == v else v


# erfc(z) for z >= 0 as t * exp(-z^2 + S(t)), t = 1 / (1 + z/2), S a degree-9 polynomial
# (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7 for every z >= 0). An erf with a
# small absolute error (Eigen's rational one: 4.2e-7) becomes a large relative one in
# 1 - erf(z) once that is small (GELU's negative tail: 4.2e-7 on 8.8e-4 at x = -3.1).
_ERFC_S = tuple(np.float32(c) for c in (
    0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
    0.37409196, 1.00002368, -1.26551223))


@njit(inline="always", cache=True)
def erfc32_pos(z):
    """erfc(z) for z >= 0 (or NaN), to a relative error of a few float32 ulps."""
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
    s = _ERFC_S[0]
    for c in _ERFC_S[1:]:
        s = s * t + c
    return t * exp32(s - z * z)
