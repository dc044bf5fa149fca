"""The native library of one plan: build it (object code per CPU), load it into this process,
call it from Python.

``build`` lowers the plan (``lower.py``), emits the main module (``module.py``) and compiles
it with the numba kernels' IR linked in, plus one object per sparse kernel. ``NativeRunner``
links those objects into the process (llvmlite's JIT, no system linker) and calls ``run``
through ctypes; ``export.py`` links the same objects into a shared library with ``cc``.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sparsecc.codegen.llvm import jit
from sparsecc.codegen.llvm import kernels as LK
from sparsecc.ir.plan import ExecutionPlan
from sparsecc.native import module as M
from sparsecc.native.lower import Program, lower_program
from sparsecc.native.runtime import load_gomp
from sparsecc.runtime.ops.registry import aligned_empty
from sparsecc.runtime.threads import kernel_threads


@dataclass
class NativeLibrary:
    """Everything needed to run one plan natively on one CPU: object code and the weights."""

    prefix: str
    host: str
    objects: dict[str, bytes]  # "main", "numba" (the kernels), each sparse kernel's by spec key
    blob: bytes
    arena: tuple[int, int]
    scratch_per_thread: int
    argspace_slots: int
    labels: dict[int, str]
    build_seconds: float = 0.0
    main_key: str = ""  # the main object's cache key (artifacts store it under this)
    program: Program | None = field(default=None, repr=False)

    @property
    def code_bytes(self) -> int:
        return sum(len(o) for o in self.objects.values())

    @property
    def exports(self) -> list[str]:
        return [f"{self.prefix}__run", f"{self.prefix}__arena_bytes",
                f"{self.prefix}__argspace_slots"]


def build(plan: ExecutionPlan, prefix: str = "scc", threads: int | None = None,
          prebuilt: dict[str, bytes] | None = None) -> NativeLibrary:
    """Lower and compile ``plan``; raises lower.Unsupported (an op not native yet) or
    CodegenError (no LLVM target / OpenMP here). ``prebuilt``: main objects by cache key
    (a trusted artifact's), used instead of compiling when one matches."""
    t0 = time.perf_counter()
    load_gomp()
    h = jit.host()
    prog = lower_program(plan, h.vector_width, threads or kernel_threads(), h.features)
    blob, offsets = prog.blob()
    text = M.main_ir(prog, prefix, offsets)
    lib = NativeLibrary(prefix, h.key, {}, blob, prog.arena, prog.scratch_per_thread,
                        prog.argspace_slots, dict(prog.labels), program=prog)
    sparse = {M.sparse_symbol(prefix, k) for k in prog.kernels.values() if k.kind == "sparse"}
    numba = set(M.kernels_exports())
    lib.main_key, lib.objects["main"] = jit.compile_linked(
        hashlib.sha256(text.encode()).hexdigest(), lambda: [text], lib.exports,
        lambda name: name in sparse or name in numba or M.ALLOWED_EXTERNALS.match(name),
        prebuilt)
    lib.objects["numba"] = kernels_object(prebuilt)
    for k in prog.kernels.values():
        if k.kind == "sparse":  # the LLVM kernel cache's object (its function is "kernel")
            lib.objects[k.spec.key] = LK.build(k.spec, k.pattern).obj
    lib.build_seconds = time.perf_counter() - t0
    return lib


def kernels_object(prebuilt: dict[str, bytes] | None = None) -> bytes:
    """The numba kernels' object (every kernel; built once per machine, then from the disk
    cache or a trusted artifact without compiling anything)."""
    _, obj = jit.compile_linked(M.kernels_key(), M.kernels_texts, M.kernels_exports(),
                                lambda name: M.ALLOWED_EXTERNALS.match(name) is not None,
                                prebuilt)
    return obj


_KERNELS_LOADED: dict[bytes, dict[str, int]] = {}
_KERNELS_LOCK = threading.Lock()


def _load_kernels(obj: bytes) -> None:
    """Link the numba kernels' object once per process; its entry points become process
    symbols for the main objects to call."""
    import llvmlite.binding as llvm

    key = hashlib.sha256(obj).digest()
    with _KERNELS_LOCK:
        if key in _KERNELS_LOADED:
            return
        addrs = jit.load_objects([obj], M.kernels_exports())
        for name, addr in addrs.items():
            llvm.add_symbol(name, addr)
        _KERNELS_LOADED[key] = addrs


_RUN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                        ctypes.c_void_p)
_SIZE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int32)


class _Context:
    """One caller's arena and args blocks for one batch size (sized for ``threads``, the
    most threads a call may use)."""

    def __init__(self, arena_bytes: int, slots: int, n: int, threads: int):
        self.arena = aligned_empty((max(arena_bytes, 64),), np.uint8)
        self.argspace = np.zeros(max(slots, 1), np.int64)
        self.n, self.threads = n, threads
        self.arena_ptr = self.arena.ctypes.data
        self.args_ptr = self.argspace.ctypes.data


class NativeRunner:
    """A NativeLibrary linked into this process. Thread-safe: each concurrent call takes a
    context (arena + args blocks) of its own from a pool. Arenas are sized for numba's most
    threads, so ``numba.set_num_threads`` takes effect at the next call."""

    def __init__(self, lib: NativeLibrary):
        import llvmlite.binding as llvm
        import numba

        load_gomp()
        # Each object in an engine of its own: MCJIT places a second object's sections in
        # one engine without their alignment (a 64-byte aligned constant load then faults).
        # The main object finds the sparse kernels as process symbols.
        for k in lib.program.kernels.values():
            if k.kind == "sparse":
                obj = lib.objects.get(k.spec.key)
                kern = LK.from_object(k.spec, obj) if obj else LK.build(k.spec, k.pattern)
                llvm.add_symbol(M.sparse_symbol(lib.prefix, k), kern.addr)
        _load_kernels(lib.objects["numba"])
        addrs = jit.load_objects([lib.objects["main"]], lib.exports, owner=self)
        self.lib = lib
        self.run_addr = addrs[lib.exports[0]]
        self._run = _RUN(self.run_addr)
        self._arena = _SIZE(addrs[lib.exports[1]])
        self.max_threads = int(numba.config.NUMBA_NUM_THREADS)
        self.weights = aligned_empty((max(len(lib.blob), 64),), np.uint8)
        self.weights[:len(lib.blob)] = np.frombuffer(lib.blob, np.uint8)
        self.weights_ptr = self.weights.ctypes.data
        self._free: dict[int, list[_Context]] = {}

    def arena_bytes(self, n: int) -> int:
        return int(self._arena(n, self.max_threads))

    def context(self, n: int) -> _Context:
        free = self._free.get(n)
        if free:
            try:
                return free.pop()  # atomic under the GIL: no lock on the hot path
            except IndexError:
                pass
        return _Context(self._arena(n, self.max_threads), self.lib.argspace_slots, n,
                        self.max_threads)

    def give_back(self, ctx: _Context) -> None:
        self._free.setdefault(ctx.n, []).append(ctx)

    def call(self, ctx: _Context, in_ptrs, out_ptrs, times=None, threads=None) -> int:
        """Run at the context's batch (ctypes; the hot path is NativeModel's numba call);
        ``times`` (int64 per plan op, or None): adds the cycles each op took."""
        th = min(threads or kernel_threads(), ctx.threads)
        return self._run(self.weights_ptr, ctx.arena_ptr, ctx.args_ptr, ctx.n, in_ptrs,
                         out_ptrs, th, times)
