"""Keeping numpy's BLAS threads and numba's OpenMP workers from starving each other.

numba's OpenMP workers spin-wait after every parallel region (libgomp does not yield), so a
multi-threaded OpenBLAS GEMM right after a numba kernel ran 50-100x slower on a 2-core machine
(a 0.3 ms model took 20 ms). While sparsecc runs, numpy's BLAS is held at one thread and restored
when the last concurrent call returns. Large GEMMs are split over a small pool of Python threads
instead (split_matmul): on a 0.3 ms model that bought nothing (2.09 vs 1.91 ms), on a 13 ms
weight-streaming GEMM it halves the time.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[object, int]] = []
_blas: list[object] | None = None


def _blas_controllers() -> list[object]:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            libs = [lib for lib in ThreadpoolController().lib_controllers
                    if lib.user_api == "blas"]
            own = [lib for lib in libs if "numpy" in lib.filepath]
            _blas = own or libs
        except Exception:  # threadpoolctl missing or a BLAS it cannot drive: leave BLAS alone
            _blas = []
    return _blas


@contextmanager
def single_threaded_blas():
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = [(lib, lib.get_num_threads()) for lib in _blas_controllers()]
            for lib, n in _saved:
                if n != 1:
                    lib.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, n in _saved:
                    if n != 1:
                        lib.set_num_threads(n)


def kernel_threads() -> int:
    """Threads the kernels launched from the calling thread run on (numba's setting, which is
    per thread)."""
    import numba

    return int(numba.get_num_threads())


# ---- GEMMs split over threads ---------------------------------------------------------------
# With BLAS held at one thread, a large GEMM runs on one core. Splitting its output columns
# over a small pool of Python threads (numpy's matmul releases the GIL) puts both cores on it:
# a (16 x 4096) @ (4096 x 4096) weight-streaming GEMM 12.9 -> 6.2 ms here. Small GEMMs are not
# split (the hand-off costs ~50 us, and each half must still be worth a BLAS call).
SPLIT_MIN_FLOPS = 2e7
SPLIT_MIN_COLS = 256
_pool: tuple[object, int] | None = None  # (executor, its worker count)
_pool_lock = threading.Lock()


def _gemm_pool(n: int):
    """The shared pool with at least n - 1 workers (the calling thread computes one piece)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] < n - 1:
            from concurrent.futures import ThreadPoolExecutor

            workers = max(1, n - 1)
            _pool = (ThreadPoolExecutor(workers, thread_name_prefix="sparsecc-gemm"), workers)
        return _pool[0]


def split_matmul(a, b, out, post=None):
    """A callable computing out = a @ b (a 2-D; b 2-D, or 3-D stacked as numpy broadcasts it),
    split over the calling thread's kernel threads when the GEMM is large enough: by samples
    of a stacked b when there are enough of them, else by b's columns. Plain np.matmul
    otherwise. ``post(idx)``, if given, finishes ``out[idx]`` (idx: a samples slice, or
    ``(..., columns slice)``) in the thread that computed it — a serial epilogue: a numba
    parallel region between two GEMMs leaves OpenMP workers spinning on the cores the next
    GEMM's threads need (a dense MLP at batch 16: 16.8 -> 10.6 ms)."""
    import numpy as np

    m, k = a.shape
    stack = b.shape[0] if b.ndim == 3 else 1
    n = b.shape[-1]
    want = kernel_threads()
    by_sample = b.ndim == 3 and stack >= 2 and stack >= want
    parts = 1
    if want >= 2 and 2.0 * m * k * n * stack >= SPLIT_MIN_FLOPS:
        parts = want if by_sample else min(want, n // (SPLIT_MIN_COLS // 2))
    total = stack if by_sample else n
    edges = [total * i // max(parts, 1) for i in range(max(parts, 1) + 1)]
    idxs = [(slice(lo, hi),) if by_sample else (Ellipsis, slice(lo, hi))
            for lo, hi in zip(edges, edges[1:])]

    def piece(idx):
        np.matmul(a, b[idx], out=out[idx])
        if post is not None:
            post(idx)

    if parts < 2:
        whole = (Ellipsis, slice(0, n))
        if post is None:
            return lambda: np.matmul(a, b, out=out)
        return lambda: piece(whole)

    def run():
        pool = _gemm_pool(len(idxs))
        futs = [pool.submit(piece, idx) for idx in idxs[1:]]
        piece(idxs[0])
        for f in futs:
            f.result()

    return run
