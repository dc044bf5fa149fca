"""Pointwise activations and the fused bias+activation epilogues.

An activation is an int code plus two float parameters (``a``, ``b``) so every kernel that ends
in an activation compiles once, not once per activation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

ACT_CODES: dict[str, int] = {
    "none": 0, "relu": 1, "clamp": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5, "sigmoid": 6,
    "tanh": 7, "hardswish": 8, "hardsigmoid": 9, "leaky_relu": 10, "elu": 11,
}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# erf in float32 as x * P(x^2) / Q(x^2) on [-4, 4] (+-1 beyond, to float32 precision): the
# rational approximation Eigen and XLA use; max abs error 4.2e-7 against float64 erf. Pure
# arithmetic, so the loops vectorise (math.erf is a scalar libm call: ~10x slower here).
_ERF_P = tuple(np.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_ERF_Q = tuple(np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))
_F4, _HALF, _ONE = np.float32(4.0), np.float32(0.5), np.float32(1.0)
_RSQRT2 = np.float32(0.7071067811865476)


@njit(inline="always", cache=True)
def erf32(v):
    x = min(max(v, -_F4), _F4)
    x2 = x * x
    p = _ERF_P[0]
    for c in _ERF_P[1:]:
        p = p * x2 + c
    q = _ERF_Q[0]
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


@njit(inline="always", cache=True)
def gelu32(v):
    return _HALF * v * (_ONE + erf32(v * _RSQRT2))


def act_code(name: str) -> int:
    return ACT_CODES[name]


@njit(inline="always", cache=True)
def apply_act(v, code, a, b):
    # Branches are on a loop-invariant code, so they predict perfectly.
    if code == 0:
        return v
    if code == 1:
        return v if v > 0.0 else 0.0 * v
    if code == 2:
        return min(max(v, a), b)
    if code == 3:
        return gelu32(np.float32(v))
    if code == 4:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    if code == 5:
        return v / (1.0 + math.exp(-v))
    if code == 6:
        return 1.0 / (1.0 + math.exp(-v))
    if code == 7:
        return math.tanh(v)
    if code == 8:
        return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
    if code == 9:
        return min(max(v + 3.0, 0.0), 6.0) / 6.0
    if code == 10:
        return v if v >= 0.0 else a * v
    if code == 11:
        return v if v > 0.0 else a * (math.exp(v) - 1.0)
    return v


@njit(parallel=True, cache=True)
def act_flat(x, out, code, a, b):
    """out[i] = act(x[i]) over flat contiguous arrays (may alias)."""
    n = x.shape[0]
    chunk = 4096
    for c in prange((n + chunk - 1) // chunk):
        if code == 3:  # a loop of its own so it vectorises
            for i in range(c * chunk, min(n, (c + 1) * chunk)):
                out[i] = gelu32(x[i])
            continue
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            out[i] = apply_act(x[i], code, a, b)


@njit(parallel=True, cache=True)
def bias_act_rows(y, bias, has_bias, period, code, a, b):
    """y: (R, C); row r gets bias[r % period] then the activation (conv layout: channel rows)."""
    rows, cols = y.shape
    for r in prange(rows):
        bv = bias[r % period] if has_bias else np.float32(0.0)
        for c in range(cols):
            y[r, c] = apply_act(y[r, c] + bv, code, a, b)


@njit(parallel=True, cache=True)
def bias_act_cols(y, bias, has_bias, code, a, b):
    """y: (M, O); column o gets bias[o] then the activation (linear layout: features last)."""
    rows, cols = y.shape
    for r in prange(rows):
        for c in range(cols):
            bv = bias[c] if has_bias else np.float32(0.0)
            y[r, c] = apply_act(y[r, c] + bv, code, a, b)
