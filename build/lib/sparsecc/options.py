"""Frozen option dataclasses, and the one place environment variables are read."""

from __future__ import annotations

import os
from dataclasses import dataclass

_NUMBA_CONFIGURED = False


def env_threads() -> int | None:
    """SPARSECC_THREADS caps the kernels' thread count (default: numba's, i.e. all cores)."""
    raw = os.environ.get("SPARSECC_THREADS")
    return int(raw) if raw else None


def configure_numba() -> None:
    """Pick a thread-safe threading layer before the first parallel kernel runs.

    numba's default workqueue layer aborts the process when two Python threads call parallel
    kernels at once; OpenMP (GNU) and TBB are safe, so they go first.
    """
    global _NUMBA_CONFIGURED
    if _NUMBA_CONFIGURED:
        return
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    _NUMBA_CONFIGURED = True
    threads = env_threads()
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


@dataclass(frozen=True)
class CompileOptions:
    """Options of ``sparsecc.compile`` that are not part of a recipe."""

    # CSR beats dense GEMM only well below half density with the simple kernels of the spine;
    # the format-selection pass (cost model + autotune) replaces this threshold.
    csr_max_density: float = 0.35
    dynamic_batch: bool = True
    fuse_epilogues: bool = True
