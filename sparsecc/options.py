"""The one place environment variables are read (pass options are dataclasses beside each pass)."""

from __future__ import annotations

import os
import sys

_NUMBA_CONFIGURED = False


def env_threads() -> int | None:
    """SPARSECC_THREADS caps the kernels' thread count (default: numba's, i.e. all cores)."""
    raw = os.environ.get("SPARSECC_THREADS")
    return int(raw) if raw else None


def env_debug() -> bool:
    """SPARSECC_DEBUG=1: the CLI shows the traceback of an internal error."""
    return os.environ.get("SPARSECC_DEBUG", "") not in ("", "0")


def env_native() -> bool:
    """SPARSECC_NATIVE=0 runs every model on the executor (numba kernels, BLAS) instead of
    its native library (for comparisons; the default is the library wherever it builds)."""
    return os.environ.get("SPARSECC_NATIVE", "1") not in ("0", "")


def env_native_fuse() -> bool:
    """SPARSECC_NATIVE_FUSE=0 keeps the native library's cross-layer rewrites off (a residual
    add fused into the conv before it, a large batch run in chunks of samples): for measuring
    what they bring."""
    return os.environ.get("SPARSECC_NATIVE_FUSE", "1") not in ("0", "")


def env_expand() -> bool:
    """SPARSECC_EXPAND=0 keeps a 1x1 expand conv out of the depthwise conv after it (the
    native library otherwise computes it there a channel at a time): for A/B measurements."""
    return env_native_fuse() and os.environ.get("SPARSECC_EXPAND", "1") not in ("0", "")


def env_bands() -> bool:
    """SPARSECC_BANDS=0 runs every conv of the chunked head over whole maps instead of in row
    bands across layers (native.bands): for A/B measurements."""
    return env_native_fuse() and os.environ.get("SPARSECC_BANDS", "1") not in ("0", "")


def env_planes() -> bool:
    """SPARSECC_PLANES=0 keeps a shifted 3x3 conv from writing the next 3x3 conv's padded
    input planes (it then writes its output, and the next conv copies it into planes): for
    A/B measurements."""
    return env_native_fuse() and os.environ.get("SPARSECC_PLANES", "1") not in ("0", "")


def env_channel_stride() -> bool:
    """SPARSECC_CHANNEL_STRIDE=0 keeps every activation dense (no channels padded to 16
    floats, native.lower.Lowering.cs): for A/B measurements."""
    return os.environ.get("SPARSECC_CHANNEL_STRIDE", "1") not in ("0", "")


def env_tail_bytes() -> int | None:
    """SPARSECC_TAIL_BYTES: activation bytes a sample at or under which the last layers of a
    chunked model run over the whole batch (native.lower.tail_split); 0 turns the tail off,
    None (unset) leaves lower.TAIL_SAMPLE_BYTES. For A/B measurements."""
    raw = os.environ.get("SPARSECC_TAIL_BYTES", "").strip()
    if not raw:
        return None
    return 0 if raw == "0" else parse_bytes(raw, "SPARSECC_TAIL_BYTES")


def env_grouped() -> bool:
    """SPARSECC_GROUPED=0 runs CSR convs on the generic kernel instead of the grouped
    assembly one (emit_specialized._group_asm): for A/B measurements."""
    return os.environ.get("SPARSECC_GROUPED", "1") not in ("0", "")


def env_kblock(default: int) -> int:
    """SPARSECC_KBLOCK: columns (input channels x taps) a column block of the grouped kernel
    holds (native.lower KBLOCK; 0: one block), for A/B measurements."""
    raw = os.environ.get("SPARSECC_KBLOCK", "").strip()
    return int(raw) if raw.isdigit() else default


def env_xalign() -> bool:
    """SPARSECC_XALIGN=0 keeps the shifted convs' grouped kernels on unaligned x loads instead
    of aligned ones shifted in registers (KernelSpec.xalign): for A/B measurements."""
    return os.environ.get("SPARSECC_XALIGN", "1") not in ("0", "")


def env_native_kernels() -> str:
    """SPARSECC_NATIVE_KERNELS=numba runs attention on the numba-authored kernel instead of
    the LLVM one (the previous kernel, kept for A/B measurements and as a reference)."""
    return os.environ.get("SPARSECC_NATIVE_KERNELS", "llvm")


def env_adaptive_threads() -> bool:
    """SPARSECC_ADAPTIVE_THREADS=0 keeps every native call on all the threads it may use,
    instead of also trying fewer (native.model.ThreadChoice)."""
    return os.environ.get("SPARSECC_ADAPTIVE_THREADS", "1") not in ("0", "")


DEFAULT_MAX_MEMORY = 16 << 30


def env_max_memory() -> int:
    """SPARSECC_MAX_MEMORY: the most bytes of activations and scratch a plan may ask for at one
    batch size (default 16 GiB; suffixes K, M, G accepted). A plan or a batch over it is refused
    before anything is allocated: a crafted artifact cannot make the process allocate more."""
    raw = os.environ.get("SPARSECC_MAX_MEMORY", "").strip()
    if not raw:
        return DEFAULT_MAX_MEMORY
    return parse_bytes(raw, "SPARSECC_MAX_MEMORY")


def parse_bytes(raw, what: str) -> int:
    from sparsecc.errors import SparseccError

    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        text = str(raw).strip().upper().removesuffix("B").removesuffix("I")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
        try:
            value = int(float(text[:-1] if mult > 1 else text) * mult)
        except (ValueError, OverflowError):
            raise SparseccError(f"{what}={raw!r}: expected a byte count such as 8G") from None
    if value < 1:
        raise SparseccError(f"{what}={raw!r}: must be positive")
    return value


def env_deepsparse_python() -> str | None:
    """SPARSECC_DEEPSPARSE_PYTHON: the python of a venv holding deepsparse (bench peers)."""
    return os.environ.get("SPARSECC_DEEPSPARSE_PYTHON") or None


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


def quiet_blas_spin() -> None:
    """Default OPENBLAS_THREAD_TIMEOUT to its minimum unless the user set it.

    OpenBLAS's idle workers busy-wait ~2^28 cycles (~0.1 s) after each call; on a 2-core
    machine they then take the cores from the kernels' threads, and a 0.07 ms sparse layer run
    right after a 2-thread numpy matmul took 3.3 ms (bench, same process). OpenBLAS reads the
    variable when it loads, so this only helps when sparsecc is imported before numpy (the
    CLI, the bench scripts); otherwise set it in the environment.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def env_cache_dir():
    """SPARSECC_CACHE_DIR: compiled kernels and autotune results (default ~/.cache/sparsecc)."""
    from pathlib import Path

    raw = os.environ.get("SPARSECC_CACHE_DIR")
    if raw:
        return Path(raw)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsecc"
