"""N:M packed: every group of M consecutive columns holds at most N values; each stored value
carries its u8 offset inside its group. Rows store exactly N values per group (zeros pad groups
with fewer), so positions are implicit: value j of a row sits in group j // N.
"""

from __future__ import annotations

import numpy as np


def fits_nm(w: np.ndarray, n: int, m: int) -> bool:
    """Whether every group of m consecutive columns (the last may be short) has <= n nonzeros."""
    rows, cols = w.shape
    pad = -cols % m
    p = np.pad(w, ((0, 0), (0, pad))) if pad else w
    return bool(np.all(np.count_nonzero(p.reshape(rows, -1, m), axis=2) <= n))


def dense_to_nm(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [rows, groups*n], offsets u8 [rows, groups*n]); raises if w is not n:m sparse."""
    if not 1 <= n <= m <= 255:
        raise ValueError(f"N:M needs 1 <= N <= M <= 255, got {n}:{m}")
    if not fits_nm(w, n, m):
        raise ValueError(f"the matrix is not {n}:{m} sparse")
    rows, cols = w.shape
    pad = -cols % m
    g = (np.pad(w, ((0, 0), (0, pad))) if pad else w).reshape(rows, -1, m)
    # Stable order: nonzeros first (by position), then zeros; keep the first n of each group.
    order = np.argsort(g == 0, axis=2, kind="stable")[:, :, :n]
    vals = np.take_along_axis(g, order, axis=2)
    offs = np.where(vals != 0, order, 0)
    # A padding slot must not point past the matrix in a short last group.
    return (np.ascontiguousarray(vals.reshape(rows, -1), dtype=w.dtype),
            np.ascontiguousarray(offs.reshape(rows, -1), dtype=np.uint8))


def nm_to_dense(values: np.ndarray, offsets: np.ndarray, n: int, m: int, cols: int) -> np.ndarray:
    rows = values.shape[0]
    groups = values.shape[1] // n
    out = np.zeros((rows, groups * m), values.dtype)
    gidx = np.repeat(np.arange(groups), n)[None, :] * m + offsets.astype(np.int64)
    np.add.at(out, (np.arange(rows)[:, None], gidx), values)
    return out[:, :cols]
