"""Pointwise activations and the fused bias+activation epilogues.

An activation is an int code plus two float parameters (``a``, ``b``) so every kernel that ends
in an activation compiles once, not once per activation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba.mathf import erfc32_pos

ACT_CODES: dict[str, int] = {
    "none": 0, "relu": 1, "clamp": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5, "sigmoid": 6,
    "tanh": 7, "hardswish": 8, "hardsigmoid": 9, "leaky_relu": 10, "elu": 11,
}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

_ZERO, _HALF, _ONE = np.float32(0.0), np.float32(0.5), np.float32(1.0)
_RSQRT2 = np.float32(0.7071067811865476)


@njit(inline="always", cache=True)
def gelu32(v):
    """x * Phi(x) in float32, Phi from erfc(|x| / sqrt 2) on both sides (a relative error of a
    few ulps in the negative tail too; 1 + erf(x) would cancel there)."""
    h = _HALF * erfc32_pos(abs(v) * _RSQRT2)
    return v * (h if v < _ZERO else _ONE - h)


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


# error_model="numpy": a float division is plain IEEE (no zero test raising ZeroDivisionError),
# which is what lets the GELU loop vectorise.
@njit(cache=True, error_model="numpy")
def gelu_into(x, out):
    """out[i] = gelu(x[i]) over distinct 1-D arrays: the vectorised GELU loop the epilogues call
    (apply_act's per-element branch keeps a loop from vectorising)."""
    for i in range(x.shape[0]):
        out[i] = gelu32(x[i])


@njit(cache=True, error_model="numpy")
def gelu_inplace(x):
    """gelu_into for x == out: with two names for one array LLVM's overlap test sends the loop
    to its scalar version (~8x slower)."""
    for i in range(x.shape[0]):
        x[i] = gelu32(x[i])


@njit(parallel=True, cache=True)
def act_flat(x, out, code, a, b):
    """out[i] = act(x[i]) over flat contiguous arrays (may alias)."""
    n = x.shape[0]
    chunk = 4096
    for c in prange((n + chunk - 1) // chunk):
        if code == 3:  # a function of its own so it vectorises
            lo, hi = c * chunk, min(n, (c + 1) * chunk)
            if x.ctypes.data == out.ctypes.data:
                gelu_inplace(out[lo:hi])
            else:
                gelu_into(x[lo:hi], out[lo:hi])
            continue
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            out[i] = apply_act(x[i], code, a, b)


@njit(parallel=True, cache=True)
def act_padded_rows(flat, rows, cols, stride, code, a, b):
    """The activation in place on ``rows`` rows of ``cols`` floats, ``stride`` apart in the
    contiguous ``flat`` (a padded features x batch buffer). Each row is a contiguous slice, so
    the loops vectorise (a strided 2-D view in numba does not: ~3x slower even for relu)."""
    for r in prange(rows):
        row = flat[r * stride:r * stride + cols]
        if code == 3:
            gelu_inplace(row)
            continue
        for c in range(cols):
            row[c] = apply_act(row[c], code, a, b)


@njit(parallel=True, cache=True)
def bias_act_rows(y, bias, has_bias, period, code, a, b):
    """y: (R, C); row r gets bias[r % period] then the activation (conv layout: channel rows)."""
    rows, cols = y.shape
    for r in prange(rows):
        bv = bias[r % period] if has_bias else np.float32(0.0)
        if code == 3:
            if has_bias:
                for c in range(cols):
                    y[r, c] += bv
            gelu_inplace(y[r])
            continue
        for c in range(cols):
            y[r, c] = apply_act(y[r, c] + bv, code, a, b)


@njit(parallel=True, cache=True)
def bias_act_cols(y, bias, has_bias, code, a, b):
    """y: (M, O); column o gets bias[o] then the activation (linear layout: features last)."""
    rows, cols = y.shape
    for r in prange(rows):
        if code == 3:
            if has_bias:
                for c in range(cols):
                    y[r, c] += bias[c]
            gelu_inplace(y[r])
            continue
        for c in range(cols):
            bv = bias[c] if has_bias else np.float32(0.0)
            y[r, c] = apply_act(y[r, c] + bv, code, a, b)
