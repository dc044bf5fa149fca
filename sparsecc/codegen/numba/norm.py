"""Row-wise normalisations: layer_norm and (log-)softmax over the last axis."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba.mathf import exp32

_ROWS_PER_TASK = 64
# No nnan / ninf: masked scores are -inf and a fully masked row must give NaN, as in torch.
# No reassoc / contract: sums keep their order and multiply-adds their two roundings, so the
# result does not depend on how LLVM vectorises a given specialisation (an artifact loaded in
# another process gives bit-identical outputs; reassoc broke that once).
_FM = {"nsz", "arcp"}


@njit(parallel=True, cache=True)
def layer_norm_rows(x, weight, bias, has_weight, has_bias, eps, out):
    for r in prange(x.shape[0]):
        layer_norm_row(x, weight, bias, has_weight, has_bias, eps, out, r)


@njit(inline="always", cache=True)
def layer_norm_row(x, weight, bias, has_weight, has_bias, eps, out, r):
    d = x.shape[1]
    s = 0.0
    for j in range(d):
        s += x[r, j]
    mean = s / d
    v = 0.0
    for j in range(d):
        t = x[r, j] - mean
        v += t * t
    inv = 1.0 / math.sqrt(v / d + eps)
    for j in range(d):
        y = (x[r, j] - mean) * inv
        if has_weight:
            y = y * weight[j]
        if has_bias:
            y = y + bias[j]
        out[r, j] = y


@njit(inline="always", cache=True, fastmath=_FM)
def softmax_inplace32(row):
    """Softmax of one float32 row in place (exp32: pure arithmetic, so the loop vectorises).
    Returns False for a fully masked row (every entry -inf), which comes out NaN as in torch's
    softmax; attention, whose torch counterpart gives 0 there, checks it."""
    d = row.shape[0]
    m = np.float32(-np.inf)
    for j in range(d):
        m = max(m, row[j])
    live = m != -np.inf
    if not live:
        m = np.float32(0.0)  # NaN below
    for j in range(d):  # its own loop: the serial sum below would keep it from vectorising
        row[j] = exp32(row[j] - m)
    s = np.float32(0.0)
    for j in range(d):
        s += row[j]
    inv = np.float32(1.0) / s
    for j in range(d):
        row[j] *= inv
    return live


@njit(parallel=True, cache=True, fastmath=_FM)
def _softmax_rows32(x, out):
    rows, d = x.shape
    ntask = (rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(ntask):
        for r in range(t * _ROWS_PER_TASK, min(rows, (t + 1) * _ROWS_PER_TASK)):
            for j in range(d):
                out[r, j] = x[r, j]
            softmax_inplace32(out[r])


def softmax_rows(x, out, log):
    """(log-)softmax over the rows of 2-D x into out (may alias)."""
    if not log and x.dtype == np.float32 and out.dtype == np.float32:
        _softmax_rows32(x, out)
    else:
        _softmax_rows(x, out, log)


@njit(parallel=True, cache=True)
def _softmax_rows(x, out, log):
    rows, d = x.shape
    for r in prange(rows):
        m = -math.inf
        for j in range(d):
            if x[r, j] > m:
                m = x[r, j]
        if m == -math.inf:
            # A fully masked row: torch yields NaN for softmax too.
            m = 0.0
        s = 0.0
        for j in range(d):
            s += math.exp(x[r, j] - m)
        if log:
            ls = math.log(s)
            for j in range(d):
                out[r, j] = x[r, j] - m - ls
        else:
            inv = 1.0 / s
            for j in range(d):
                out[r, j] = math.exp(x[r, j] - m) * inv
