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


@njit(inline="always", cache=True)
def _clamp(v, lo, hi):
    w = lo if v < lo else v
    return hi if w > hi else w


def act_code(name: str) -> int:
    return ACT_CODES[name]


@njit(inline="always", cache=True)
def apply_act(v, code, a, b):
    # Branches are on a loop-invariant code, so they predict perfectly.
    if code == 0:
        return v
    # relu / clamp / hardtanh as torch's: NaN stays NaN, relu(-inf) is 0, -0.0 stays -0.0
    # (0 * v, once used for relu, turned -inf into NaN; min/max may drop a NaN)
    if code == 1:
        return 0.0 if v < 0.0 else v
    if code == 2:
        return _clamp(v, a, b)
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
        return v * _clamp(v + 3.0, 0.0, 6.0) / 6.0
    if code == 9:
        return _clamp(v + 3.0, 0.0, 6.0) / 6.0
    if code == 10:
        return v if v >= 0.0 else a * v
    if code == 11:
        return v if v > 0.0 else a * (math.exp(v) - 1.0)
    return v


# Whole-array loops, one per common activation so each vectorises (apply_act's per-element
# branch on the code keeps a loop scalar). error_model="numpy": a float division is plain IEEE
# (no zero test raising ZeroDivisionError), which GELU's loop needs to vectorise; so do the
# callers, which inline _act_loop.
@njit(inline="always", cache=True, error_model="numpy")
def _act_loop(src, dst, code, a, b):
    n = src.shape[0]
    if code == 0:
        if src.ctypes.data != dst.ctypes.data:
            for i in range(n):
                dst[i] = src[i]
    elif code == 1:
        zero = np.float32(0.0)
        for i in range(n):
            v = src[i]
            dst[i] = zero if v < zero else v
    elif code == 2:
        lo, hi = np.float32(a), np.float32(b)
        for i in range(n):
            dst[i] = _clamp(src[i], lo, hi)
    elif code == 3:
        for i in range(n):
            dst[i] = gelu32(src[i])
    else:
        for i in range(n):
            dst[i] = apply_act(src[i], code, a, b)


@njit(cache=True, error_model="numpy")
def act_into(x, out, code, a, b):
    """out[i] = act(x[i]) over distinct 1-D arrays."""
    _act_loop(x, out, code, a, b)


@njit(cache=True, error_model="numpy")
def act_inplace(y, code, a, b):
    """act_into for x == out: with two names for one array LLVM's overlap test sends the loop
    to its scalar version (GELU ~8x slower)."""
    _act_loop(y, y, code, a, b)


_CHUNK = 4096


@njit(parallel=True, cache=True)
def act_flat(x, out, code, a, b):
    """out[i] = act(x[i]) over flat contiguous arrays (may alias)."""
    n = x.shape[0]
    same = x.ctypes.data == out.ctypes.data
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = c * _CHUNK, min(n, (c + 1) * _CHUNK)
        if same:
            act_inplace(out[lo:hi], code, a, b)
        else:
            act_into(x[lo:hi], out[lo:hi], code, a, b)


@njit(parallel=True, cache=True)
def act_padded_rows(flat, rows, cols, stride, code, a, b):
    """The activation in place on ``rows`` rows of ``cols`` floats, ``stride`` apart in the
    contiguous ``flat`` (a padded features x batch buffer). Each row is a contiguous slice, so
    the loops vectorise (a strided 2-D view in numba does not)."""
    for r in prange(rows):
        act_inplace(flat[r * stride:r * stride + cols], code, a, b)


@njit(inline="always", cache=True)
def _bias_act_row(y, r, bv, has_bias, code, a, b):
    if has_bias:
        for c in range(y.shape[1]):
            y[r, c] += bv
    act_inplace(y[r], code, a, b)


@njit(inline="always", cache=True)
def _bias_act_cols_row(y, r, bias, has_bias, code, a, b):
    if has_bias:
        for c in range(y.shape[1]):
            y[r, c] += bias[c]
    act_inplace(y[r], code, a, b)


@njit(parallel=True, cache=True)
def bias_act_rows(y, bias, has_bias, period, code, a, b):
    """y: (R, C); row r gets bias[r % period] then the activation (conv layout: channel rows)."""
    for r in prange(y.shape[0]):
        _bias_act_row(y, r, bias[r % period] if has_bias else np.float32(0.0), has_bias, code,
                      a, b)


@njit(parallel=True, cache=True)
def bias_act_cols(y, bias, has_bias, code, a, b):
    """y: (M, O); column o gets bias[o] then the activation (linear layout: features last)."""
    for r in prange(y.shape[0]):
        _bias_act_cols_row(y, r, bias, has_bias, code, a, b)


# The same two on the calling thread: a GEMM piece's epilogue, run by the thread that computed
# the piece (no OpenMP region between two GEMMs; see runtime.threads.split_matmul).
@njit(cache=True)
def bias_act_rows_serial(y, bias, has_bias, period, code, a, b):
    for r in range(y.shape[0]):
        _bias_act_row(y, r, bias[r % period] if has_bias else np.float32(0.0), has_bias, code,
                      a, b)


@njit(cache=True)
def bias_act_cols_serial(y, bias, has_bias, code, a, b):
    for r in range(y.shape[0]):
        _bias_act_cols_row(y, r, bias, has_bias, code, a, b)


# Binary arithmetic on same-shape float32 arrays with an activation after it, in chunks that
# stay in L1 between the two (a residual add + ReLU: one pass over memory instead of two, on
# both cores; numpy's ufuncs run on one).
BINARY_CODES: dict[str, int] = {"add": 0, "sub": 1, "mul": 2}


@njit(inline="always", cache=True)
def _binop(u, v, fn):
    if fn == 0:
        return u + v
    if fn == 1:
        return u - v
    return u * v


@njit(cache=True, error_model="numpy")
def _binary_chunk(x, y, out, fn):
    # out may be x or y (a reused buffer): each case its own loop so none is an aliased pair
    n = out.shape[0]
    if out.ctypes.data == x.ctypes.data:
        for i in range(n):
            out[i] = _binop(out[i], y[i], fn)
    elif out.ctypes.data == y.ctypes.data:
        for i in range(n):
            out[i] = _binop(x[i], out[i], fn)
    else:
        for i in range(n):
            out[i] = _binop(x[i], y[i], fn)


@njit(parallel=True, cache=True)
def binary_act(x, y, out, fn, code, a, b):
    """out = act(x (+|-|*) y) over flat float32 arrays of one length (out may be x or y)."""
    n = out.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = c * _CHUNK, min(n, (c + 1) * _CHUNK)
        _binary_chunk(x[lo:hi], y[lo:hi], out[lo:hi], fn)
        if code != 0:
            act_inplace(out[lo:hi], code, a, b)
