"""What the native library needs from the process: the OpenMP runtime (libgomp) it is linked
against, loaded once so LLVM's JIT and numba resolve ``GOMP_parallel`` and friends."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from sparsecc.errors import CodegenError

GOMP = "libgomp.so.1"


@functools.cache
def load_gomp() -> str:
    """Load libgomp into the process (its symbols visible to LLVM); its path. Raises
    CodegenError when this machine has none (the numba path then runs every layer)."""
    import llvmlite.binding as llvm

    name = ctypes.util.find_library("gomp") or GOMP
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        llvm.load_library_permanently(name)
    except (OSError, RuntimeError) as exc:
        raise CodegenError("native", f"the OpenMP runtime ({name}) does not load: {exc}"
                           ) from None
    return name
