"""Threading for the dense path: single-threaded BLAS calls spread over our own workers.

numpy's OpenBLAS pthreads and numba's OpenMP workers both spin-wait after a parallel region;
on a 2-core machine one team then starves the other, and a 0.3 ms model took 20 ms. So while
sparsecc runs, numpy's BLAS is held at one thread (restored when the last concurrent call
returns), and large GEMMs are split into row blocks run on a small pool plus the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from sparsecc.options import configure_numba

# Below this many flops a GEMM runs in one call: a hand-off to the pool costs ~20 us.
PARALLEL_GEMM_MIN_FLOPS = 2e6

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[object, int]] = []
_blas: list[object] | None = None
_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    configure_numba()
    import numba

    return int(numba.get_num_threads())


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


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sparsecc")
        return _pool


def _chunks(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // parts)
    return [(s, min(total, s + step)) for s in range(0, total, step)]


def matmul_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b, splitting the rows of ``a`` over threads when the GEMM is large.

    a: (R, K), b: (K, M), out: (R, M), all C-contiguous so every row block of ``out`` is too.
    """
    threads = num_threads()
    rows = a.shape[0]
    flops = 2.0 * rows * a.shape[1] * b.shape[1]
    if threads < 2 or rows < 2 * threads or flops < PARALLEL_GEMM_MIN_FLOPS:
        np.matmul(a, b, out=out)
        return
    parts = _chunks(rows, threads)
    pool = _get_pool(threads - 1)
    futures = [pool.submit(np.matmul, a[r0:r1], b, out=out[r0:r1]) for r0, r1 in parts[1:]]
    r0, r1 = parts[0]
    np.matmul(a[r0:r1], b, out=out[r0:r1])
    for f in futures:
        f.result()
