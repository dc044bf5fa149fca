"""Scaled dot-product attention, one (batch, head) per task: q k^T, scale, mask, softmax and
p v in one pass over each head, its k^T and score row kept in L1.

One parallel region per call instead of two batched BLAS calls around a softmax: on 2 cores
OpenBLAS's and numba's thread pools taking turns cost more than the arithmetic (MiniLM-L6,
batch 16: 62 ms per attention that way, most of it waiting).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba.norm import _FM, softmax_inplace32

MASK_NONE, MASK_ADD, MASK_KEEP = 0, 1, 2  # no mask, additive float, boolean (True = attend)


@njit(parallel=True, cache=True, fastmath=_FM)
def sdpa4(q, k, v, mask, mask_kind, causal, scale, out):
    """q (A, B, L, D), k (A, B, S, D), v (A, B, S, E), out (A, B, L, E); ``mask`` broadcast to
    (A, B, L, S) (any strides, unread when ``mask_kind`` is MASK_NONE)."""
    na, nb, nl, nd = q.shape
    ns = k.shape[2]
    ne = v.shape[3]
    sc = np.float32(scale)
    for t in prange(na * nb):
        kt = np.empty((nd, ns), np.float32)
        vc = np.empty((ns, ne), np.float32)
        sdpa_head(q, k, v, mask, mask_kind, causal, sc, out, t, kt, vc,
                  np.empty(ns, np.float32), np.empty(ne, np.float32))


@njit(inline="always", cache=True, fastmath=_FM)
def sdpa_head(q, k, v, mask, mask_kind, causal, sc, out, t, kt, vc, row, acc):
    """Head t (t // B, t % B) of sdpa4; kt (D, S), vc (S, E), row (S,), acc (E,) scratch."""
    nb, nl, nd = q.shape[1], q.shape[2], q.shape[3]
    ns = k.shape[2]
    ne = v.shape[3]
    a = t // nb
    b = t - a * nb
    for j in range(ns):
        for d in range(nd):
            kt[d, j] = k[a, b, j, d]
    # v copied contiguous too: a (B, H, S, E) view of (B, S, H, E) data has unit stride
    # along E, but numba cannot know it and the p v loop would not vectorise
    for j in range(ns):
        for e in range(ne):
            vc[j, e] = v[a, b, j, e]
    for i in range(nl):
        row[:] = 0.0
        for d in range(nd):
            qv = q[a, b, i, d]
            for j in range(ns):
                row[j] += qv * kt[d, j]
        for j in range(ns):
            row[j] *= sc
        if mask_kind == MASK_ADD:
            for j in range(ns):
                row[j] += mask[a, b, i, j]
        elif mask_kind == MASK_KEEP:
            for j in range(ns):
                if not mask[a, b, i, j]:
                    row[j] = -np.inf
        if causal:
            for j in range(i + 1, ns):
                row[j] = -np.inf
        if not softmax_inplace32(row):  # every key masked: torch's SDPA gives 0 there
            for e in range(ne):
                out[a, b, i, e] = 0.0
            continue
        acc[:] = 0.0
        for j in range(ns):
            p = row[j]
            vj = vc[j]
            for e in range(ne):
                acc[e] += p * vj[e]
        for e in range(ne):
            out[a, b, i, e] = acc[e]
