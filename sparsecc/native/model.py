"""A compiled model's calls through its native library (what ``CompiledModel`` uses when the
whole plan is native). Checks and conversions are cached per input signature, so a call is a
dict lookup, the output allocations and one ctypes call."""

from __future__ import annotations

import ctypes
import functools
import time

import numpy as np

from sparsecc.errors import InputError
from sparsecc.ir.plan import resolve_shape
from sparsecc.native.library import NativeLibrary, NativeRunner
from sparsecc.runtime.executor import Executor, _check_dtype
from sparsecc.runtime.threads import kernel_threads


class _Signature:
    """What one input signature (shapes, dtypes) resolves to."""

    __slots__ = ("n", "out_shapes", "out_dtypes", "in_dtypes", "nin", "nout")

    def __init__(self, n, out_shapes, out_dtypes, in_dtypes):
        self.n, self.out_shapes, self.out_dtypes = n, out_shapes, out_dtypes
        self.in_dtypes = in_dtypes
        self.nin, self.nout = len(in_dtypes), len(out_shapes)


class NativeModel:
    def __init__(self, executor: Executor, lib: NativeLibrary):
        self.executor, self.plan, self.lib = executor, executor.plan, lib
        self.runner = NativeRunner(lib)
        self._sigs: dict[tuple, _Signature] = {}
        self._err_layers = sorted({self.plan.ops[c.op].layer or self.plan.ops[c.op].name
                                   for c in lib.program.calls
                                   if any(s.kind == "err" for s in c.args)})

    def signature(self, arrays: list[np.ndarray]) -> _Signature:
        key = tuple((a.shape, a.dtype.str) for a in arrays)
        sig = self._sigs.get(key)
        if sig is None:
            ex = self.executor
            for name, a in zip(self.plan.inputs, arrays):
                _check_dtype(name, a, np.dtype(self.plan.tensors[name].dtype))
            n = ex.batch_of(arrays)
            ex.check_batch(n)  # verified rules and the memory budget at this batch
            plan = self.plan
            sig = _Signature(n, [resolve_shape(plan.tensors[o].shape, n) for o in plan.outputs],
                             [np.dtype(plan.tensors[o].dtype) for o in plan.outputs],
                             [np.dtype(plan.tensors[i].dtype) for i in plan.inputs])
            if len(self._sigs) < 64:
                self._sigs[key] = sig
        return sig

    def run(self, arrays: list[np.ndarray], outs: list[np.ndarray] | None = None,
            times: np.ndarray | None = None) -> list[np.ndarray]:
        sig = self.signature(arrays)
        ins = [a if a.dtype == dt and a.flags.c_contiguous else
               np.ascontiguousarray(a, dt) for a, dt in zip(arrays, sig.in_dtypes)]
        if outs is None:
            outs = [np.empty(s, d) for s, d in zip(sig.out_shapes, sig.out_dtypes)]
        self._call(sig, [a.ctypes.data for a in ins], [o.ctypes.data for o in outs],
                   None if times is None else times.ctypes.data)
        return outs

    def run_torch(self, tensors) -> list:
        """torch tensors in and out (the outputs allocated by torch, written in place)."""
        import torch

        if not _TORCH:
            _torch_dtypes()
        arrays = [t.detach().cpu().numpy() for t in tensors]
        sig = self.signature(arrays)
        ins = [a if a.dtype == dt and a.flags.c_contiguous else
               np.ascontiguousarray(a, dt) for a, dt in zip(arrays, sig.in_dtypes)]
        outs = [torch.empty(s, dtype=_TORCH[d.str]) for s, d in zip(sig.out_shapes,
                                                                   sig.out_dtypes)]
        self._call(sig, [a.ctypes.data for a in ins], [o.data_ptr() for o in outs], None)
        return outs

    def _call(self, sig: _Signature, in_ptrs, out_ptrs, times) -> None:
        runner = self.runner
        ctx = runner.context(sig.n, kernel_threads())
        try:
            rc = runner.call(ctx, (ctypes.c_void_p * sig.nin)(*in_ptrs),
                             (ctypes.c_void_p * sig.nout)(*out_ptrs), times)
        finally:
            runner.give_back(ctx)
        if rc:
            raise InputError(", ".join(self._err_layers) or self.plan.inputs[0],
                             "an index is out of range for the embedding table")

    def profile(self, arrays: list[np.ndarray], repeats: int = 20) -> dict[int, float]:
        """Median seconds per op index over ``repeats`` runs (after one warm-up), from the
        library's cycle counts around each call."""
        per = []
        for rep in range(repeats + 1):
            times = np.zeros(len(self.plan.ops), np.int64)
            self.run(arrays, times=times)
            if rep:
                per.append(times)
        med = np.median(np.stack(per), axis=0) / cycles_per_second()
        ops = {c.op for c in self.lib.program.calls}
        return {i: float(med[i]) for i in sorted(ops)}


_TORCH = {}


def _torch_dtypes():
    import torch

    _TORCH.update({"<f4": torch.float32, "<i8": torch.int64, "|b1": torch.bool,
                   "<f8": torch.float64, "<i4": torch.int32})


@functools.cache
def cycles_per_second() -> float:
    """The rate of the cycle counter the library reads (rdtsc: constant on current x86)."""
    from llvmlite import ir

    from sparsecc.codegen.llvm import jit

    mod = ir.Module("tsc")
    fn = ir.Function(mod, ir.FunctionType(ir.IntType(64), []), "tsc")
    b = ir.IRBuilder(fn.append_basic_block())
    b.ret(b.call(mod.declare_intrinsic("llvm.readcyclecounter", (),
                                       ir.FunctionType(ir.IntType(64), [])), []))
    tsc = ctypes.CFUNCTYPE(ctypes.c_int64)(jit.load_object(jit.compile_ir(str(mod)),
                                                           ["tsc"])["tsc"])
    c0, t0 = tsc(), time.perf_counter()
    time.sleep(0.05)
    return (tsc() - c0) / (time.perf_counter() - t0)
