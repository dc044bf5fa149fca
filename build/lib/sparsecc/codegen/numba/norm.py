"""Row-wise normalisations: layer_norm and (log-)softmax over the last axis."""

from __future__ import annotations

import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def layer_norm_rows(x, weight, bias, has_weight, has_bias, eps, out):
    rows, d = x.shape
    for r in prange(rows):
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


@njit(parallel=True, cache=True)
def softmax_rows(x, out, log):
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
