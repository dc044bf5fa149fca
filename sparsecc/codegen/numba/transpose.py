"""Blocked 2-D transpose copy (the features x batch hand-over of the sparse linear kernels).

``np.copyto(dst, src.T)`` walks one side with a stride of a whole row; with power-of-two row
lengths those reads map to a few cache sets and the copy crawls (8192 x 384 floats: 22 ms here).
Square tiles keep both sides' lines in L1 (the same copy: 1.1 ms on 2 threads).
"""

from __future__ import annotations

from numba import njit, prange

TILE = 32


@njit(parallel=True, cache=True)
def transpose_into(src, dst):
    """dst[j, i] = src[i, j] for 2-D src (m, k) and dst (k, m), tile by tile."""
    m, k = src.shape
    nbm = (m + TILE - 1) // TILE
    nbk = (k + TILE - 1) // TILE
    for t in prange(nbm * nbk):
        transpose_tile(src, dst, t)


@njit(inline="always", cache=True)
def transpose_tile(src, dst, t):
    """Tile t (row-major over TILE x TILE tiles of src) of transpose_into."""
    m, k = src.shape
    nbk = (k + TILE - 1) // TILE
    i0 = (t // nbk) * TILE
    j0 = (t % nbk) * TILE
    i1 = min(m, i0 + TILE)
    j1 = min(k, j0 + TILE)
    for j in range(j0, j1):
        for i in range(i0, i1):
            dst[j, i] = src[i, j]
