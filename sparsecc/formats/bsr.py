"""Block CSR (BSR): R x C dense blocks at block-CSR positions; pure numpy pack/unpack.

Rows and columns that do not divide by R, C are padded with zeros inside the last block row /
column; ``shape`` keeps the true size. Blocks are stored row-major ``data[nblocks, R, C]``.
"""

from __future__ import annotations

import numpy as np

from sparsecc.formats.csr import index_dtype


def _padded(w: np.ndarray, r: int, c: int) -> np.ndarray:
    rows, cols = w.shape
    pr, pc = -rows % r, -cols % c
    return np.pad(w, ((0, pr), (0, pc))) if pr or pc else w


def dense_to_bsr(w: np.ndarray, r: int, c: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int64 [brows+1], block column indices u16/u32 [nb], data [nb, r, c])."""
    if w.ndim != 2 or r < 1 or c < 1:
        raise ValueError(f"BSR needs a 2-D matrix and blocks >= 1x1, got {w.shape}, {r}x{c}")
    p = _padded(w, r, c)
    br, bc = p.shape[0] // r, p.shape[1] // c
    blocks = p.reshape(br, r, bc, c).transpose(0, 2, 1, 3)  # (br, bc, r, c)
    live = np.any(blocks != 0, axis=(2, 3))
    brow, bcol = np.nonzero(live)
    indptr = np.zeros(br + 1, np.int64)
    np.cumsum(np.bincount(brow, minlength=br), out=indptr[1:])
    data = np.ascontiguousarray(blocks[brow, bcol], dtype=w.dtype)
    return indptr, bcol.astype(index_dtype(max(bc, 1))), data


def bsr_to_dense(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 shape: tuple[int, int]) -> np.ndarray:
    r, c = data.shape[1], data.shape[2]
    br = len(indptr) - 1
    bc = -(-shape[1] // c)
    blocks = np.zeros((br, bc, r, c), data.dtype)
    brow = np.repeat(np.arange(br), np.diff(indptr))
    blocks[brow, indices.astype(np.int64)] = data
    full = blocks.transpose(0, 2, 1, 3).reshape(br * r, bc * c)
    return np.ascontiguousarray(full[:shape[0], :shape[1]])


def block_fill(w: np.ndarray, r: int, c: int) -> float:
    """Nonzeros / stored values if packed as R x C blocks (1.0: the pattern is exactly blocked)."""
    nnz = int(np.count_nonzero(w))
    if nnz == 0:
        return 1.0
    p = _padded(w, r, c)
    br, bc = p.shape[0] // r, p.shape[1] // c
    live = int(np.count_nonzero(np.any(p.reshape(br, r, bc, c) != 0, axis=(1, 3))))
    return nnz / (live * r * c)
