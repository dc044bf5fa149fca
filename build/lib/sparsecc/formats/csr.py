"""CSR packing of a 2-D weight matrix with the narrowest unsigned column index that fits."""

from __future__ import annotations

import numpy as np


def index_dtype(cols: int) -> np.dtype:
    return np.dtype(np.uint16) if cols <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def dense_to_csr(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int64 [rows+1], indices u16/u32 [nnz], data [nnz]) of the nonzeros of ``w``."""
    if w.ndim != 2:
        raise ValueError(f"CSR needs a 2-D matrix, got shape {w.shape}")
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return indptr, cols.astype(index_dtype(w.shape[1])), np.ascontiguousarray(w[rows, cols])


def csr_to_dense(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, data.dtype)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    out[rows, indices.astype(np.int64)] = data
    return out


def density(w: np.ndarray) -> float:
    return float(np.count_nonzero(w)) / max(w.size, 1)
