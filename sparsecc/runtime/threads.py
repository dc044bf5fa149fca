"""Keeping numpy's BLAS threads and numba's OpenMP workers from starving each other.

numba's OpenMP workers spin-wait after every parallel region (libgomp does not yield), so a
multi-threaded OpenBLAS GEMM right after a numba kernel ran 50-100x slower on a 2-core machine
(a 0.3 ms model took 20 ms). While sparsecc runs, numpy's BLAS is held at one thread and restored
when the last concurrent call returns. Splitting GEMMs over a Python thread pool bought nothing
(measured: 2.09 ms vs 1.91 ms single call), so the dense path is single-threaded BLAS for now.
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
