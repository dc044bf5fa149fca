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
        return 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
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
