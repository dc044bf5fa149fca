"""CSR kernels (simple, correct; the fast specialised ones are a later issue).

Indices are unsigned (u16 when the inner dimension fits, u32 otherwise): numba adds a
negative-index wraparound check on signed indices that costs up to 2x in the inner loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba.activations import apply_act


@njit(parallel=True, cache=True)
def csr_spmm(indptr, indices, data, bmat, out, bias, has_bias, code, a, b):
    """out[n] = act(A @ bmat[n] + bias) with A in CSR (O x K), bmat (N, K, M), out (N, O, M)."""
    nb, rows, m = out.shape
    for t in prange(nb * rows):
        n = t // rows
        o = t - n * rows
        row = out[n, o]
        src = bmat[n]
        bv = bias[o] if has_bias else np.float32(0.0)
        for j in range(m):
            row[j] = bv
        for p in range(indptr[o], indptr[o + 1]):
            w = data[p]
            col = src[indices[p]]
            for j in range(m):
                row[j] += w * col[j]
        for j in range(m):
            row[j] = apply_act(row[j], code, a, b)


@njit(parallel=True, cache=True)
def csr_spmv_rows(indptr, indices, data, x, out, bias, has_bias, code, a, b):
    """out[r] = act(A @ x[r] + bias) for each row of x (M, K): linear with few rows."""
    m, rows = out.shape
    for t in prange(m * rows):
        r = t // rows
        o = t - r * rows
        xr = x[r]
        acc = np.float32(0.0)
        for p in range(indptr[o], indptr[o + 1]):
            acc += data[p] * xr[indices[p]]
        if has_bias:
            acc += bias[o]
        out[r, o] = apply_act(acc, code, a, b)


# reassoc + contract vectorise the dot product; not the full fastmath set, whose nnan/ninf
# let LLVM drop a NaN at the activation (torch keeps it)
@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def dense_gemv(w, x, out, bias, has_bias, code, a, b):
    """out[0, o] = act(w[o] . x[0] + bias[o]): a GEMV over all threads (the runtime holds BLAS
    at one thread, and a GEMV is bandwidth-bound: two cores stream the weights ~2x faster)."""
    xr = x[0]
    for o in prange(w.shape[0]):
        out[0, o] = gemv_row(w, xr, o, bias, has_bias, code, a, b)


@njit(inline="always", fastmath={"reassoc", "contract"}, cache=True)
def gemv_row(w, xr, o, bias, has_bias, code, a, b):
    """Output o of dense_gemv (also the native library's GEMV)."""
    wr = w[o]
    acc = np.float32(0.0)
    for j in range(w.shape[1]):
        acc += wr[j] * xr[j]
    if has_bias:
        acc += bias[o]
    return apply_act(acc, code, a, b)
