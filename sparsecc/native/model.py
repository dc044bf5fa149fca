"""A compiled model's calls through its native library (what ``CompiledModel`` uses when the
whole plan is native). Checks and conversions are cached per input signature, so a call is a
dict lookup, the output allocations and one ctypes call."""

from __future__ import annotations

import ctypes
import functools
import time

import numba
import numpy as np
from llvmlite import ir
from numba import literal_unroll, njit, types
from numba.core.extending import intrinsic

from sparsecc.errors import InputError, MemoryBudgetError
from sparsecc.ir.plan import resolve_shape
from sparsecc.native.library import NativeLibrary, NativeRunner
from sparsecc.options import env_adaptive_threads
from sparsecc.runtime.executor import Executor, _check_dtype


class _Signature:
    """What one input signature (shapes, dtypes) resolves to."""

    __slots__ = ("n", "out_shapes", "out_dtypes", "in_dtypes", "nin", "nout")

    def __init__(self, n, out_shapes, out_dtypes, in_dtypes):
        self.n, self.out_shapes, self.out_dtypes = n, out_shapes, out_dtypes
        self.in_dtypes = in_dtypes
        self.nin, self.nout = len(in_dtypes), len(out_shapes)


@intrinsic
def _call_run(typingctx, addr, weights, arena, args, n, ins, outs, threads):
    """Call a library's run(weights, arena, args, N, inputs, outputs, threads, NULL)."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int64, types.int64,
                      types.int64, types.int64, types.int32)

    def codegen(context, builder, signature, llargs):
        i64, i32, i8p = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i32, [i8p, i8p, i64.as_pointer(), i64, i8p.as_pointer(),
                                     i8p.as_pointer(), i32, i64.as_pointer()])
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        a = llargs
        return builder.call(fn, [builder.inttoptr(a[1], i8p), builder.inttoptr(a[2], i8p),
                                 builder.inttoptr(a[3], i64.as_pointer()), a[4],
                                 builder.inttoptr(a[5], i8p.as_pointer()),
                                 builder.inttoptr(a[6], i8p.as_pointer()), a[7],
                                 ir.Constant(i64.as_pointer(), None)])

    return sig, codegen


@njit  # not inline="always": literal_unroll does not survive numba's inlining
def _addresses(arrays):
    """An int64 array of the data addresses of a tuple of arrays (any dtypes)."""
    out = np.empty(len(arrays), np.int64)
    i = 0
    for a in literal_unroll(arrays):
        out[i] = a.ctypes.data
        i += 1
    return out


@njit(inline="always")
def _run(addr, weights, arena, args, n, max_threads, ip, op):
    th = min(numba.get_num_threads(), max_threads)
    return _call_run(addr, weights, arena, args, n, ip.ctypes.data, op.ctypes.data, th)


# The hot path: numba unboxes arrays in ~0.1 us where ``a.ctypes.data`` takes ~2 us, and
# calls without ctypes' argument conversion; nogil, so concurrent calls run in parallel.
# Not cache=True: get_num_threads is a dynamic global.
@njit(nogil=True)
def _invoke_arrays(addr, weights, arena, args, n, max_threads, ins, outs):
    return _run(addr, weights, arena, args, n, max_threads, _addresses(ins), _addresses(outs))


@njit(nogil=True)
def _invoke_mixed(addr, weights, arena, args, n, max_threads, ins, outs):
    """``ins`` as addresses already (torch's data_ptr), ``outs`` arrays."""
    ip = np.empty(len(ins), np.int64)
    for i in range(len(ins)):
        ip[i] = ins[i]
    return _run(addr, weights, arena, args, n, max_threads, ip, _addresses(outs))


class ThreadChoice:
    """How many threads a call of one batch size runs on: all it may use, or one.

    On a shared VM the other tenant sometimes takes one of the vCPUs' cores for seconds to
    minutes; every parallel region then waits for the slowed thread, and a MiniLM batch-1
    call took 8.7 ms on 2 threads against 7.0 on 1 (4.1 on 2 otherwise). So calls are timed:
    now and then one runs on the other choice (a probe), and the choice flips when the probe
    beats the current choice's recent time by 10 %. Probes back off while they keep losing
    (16 -> 512 calls apart on all threads, -> 64 on one) and come at once when the current
    choice's running average gets over 1.1x the other's recent time. A probe is two
    calls, the second one timed: the first after a switch pulls the activations over to the
    other core(s) (MNIST CNN batch 1 with the vCPUs on different CCDs: a first 1-thread call
    took 210-345 us, the next ones 91-98, against 129-145 on 2 threads, so single-call probes
    kept it on 2), and the call after a probe is not timed either. Calls under
    ``MIN_SECONDS`` (a few us of floor) stay on all threads, untimed after the first. Results
    do not depend on the choice (the work items are the same; only who runs them changes).
    SPARSECC_ADAPTIVE_THREADS=0 turns it off.

    A probe is weighed against the lower median of the current choice's last ``HISTORY``
    timed calls, not their running average, and only once two of them are timed: one slow
    call (a tenant's spike) no longer moves the choice. (2026-12-07, the Zen 3: the bench's
    first probe on ResNet-18 b16, weighed against the one timed call before it, most likely
    moved the cell to one thread for 16 calls: its median came out at 184.8 ms, p10 105.8,
    against DeepSparse's 137.2; 109-115 ms a call on two threads, 216-232 on one.)

    The first probe comes right after the warm calls and two timed calls (``FIRST_PROBE``), so
    a process is past it within its first ``START_CALLS`` calls (``CompiledModel.warmup``);
    it came after 16 calls before, inside the first requests a service timed. A probe on
    one thread that takes over ``FAR`` x the current choice's time backs off to
    ``PROBE_MAX`` at once: one thread is then far from winning, and a tenant arriving still
    triggers a probe at once (the current choice getting slower than the other's estimate).
    ResNet-50 at batch 16 (2026-12-06, Xeon, 75 ms calls): probes on one thread took 147 ms,
    at calls 15-16, 48-49, ... (gaps doubling from 16); now at calls 4-5, then 517-518."""

    # 20 us: the MNIST CNN's 70-130 us calls are timed (at 200 us they were not, and in the
    # far core placement stayed on 2 threads at 129 us against 98 on 1)
    MIN_SECONDS = 2e-5
    PROBE_MIN, PROBE_MAX = 16, 512
    WARM = 2
    # the first probe's countdown (from the first call, which counts): calls 0-1 warm, 2-3
    # timed on all threads, 4-5 the probe (its first call untimed), 6 untimed (the data
    # moves back)
    FIRST_PROBE = WARM + 3
    START_CALLS = FIRST_PROBE + 2
    FAR = 1.5
    HISTORY = 3  # timed calls a choice's median is taken over

    def __init__(self, enabled: bool | None = None):
        self.enabled = env_adaptive_threads() if enabled is None else enabled
        # (n, cap) -> [current choice, {threads: seconds}, calls to the next probe, the gap
        # between probes (0: small calls, never probed), calls left untimed, whether this
        # probe's untimed first call ran, {threads: its last HISTORY timed calls}]
        self.state: dict[tuple[int, int], list] = {}

    def pick(self, n: int, cap: int) -> int:
        if not self.enabled or cap < 2:
            return cap
        st = self.state.get((n, cap))
        if st is None:  # the first calls (cold caches, code paging in) are not timed
            st = self.state[(n, cap)] = [cap, {}, self.FIRST_PROBE, self.PROBE_MIN,
                                         self.WARM, 0, {}]
        elif st[3] == 0:  # small calls
            return cap
        st[2] -= 1
        if st[2] <= 0:
            return 1 if st[0] == cap else cap
        return st[0]

    def record(self, n: int, cap: int, threads: int, seconds: float) -> None:
        st = self.state.get((n, cap))
        if st is None:
            return
        cur, est = st[0], st[1]
        if st[3] == 0:
            return
        if st[4]:
            st[4] -= 1
            return
        if threads == cur and cur == cap and seconds < self.MIN_SECONDS:
            st[3] = 0  # small calls: not worth timing (a call's floor is a few us)
            return
        hist = st[6]
        if threads == cur:
            est[cur] = seconds if cur not in est else 0.7 * est[cur] + 0.3 * seconds
            self._note(hist, cur, seconds)
            other = self._median(hist, 1 if cur == cap else cap)
            if other is not None and est[cur] > 1.1 * other:
                st[2] = min(st[2], 1)  # the current choice got slower: probe now
            return
        if not st[5]:  # a probe's first call: caches still hold the other choice's data
            st[5], st[2] = 1, 0
            return
        st[5], st[4] = 0, 1  # the call after the probe moves the data back: untimed too
        est[threads] = seconds  # a probe
        self._note(hist, threads, seconds)
        ref = self._median(hist, cur) if len(hist.get(cur, ())) >= 2 else None
        if ref is not None and seconds < 0.9 * ref:
            st[0], st[3] = threads, self.PROBE_MIN
        elif cur == cap and ref is not None and seconds > self.FAR * ref:
            st[3] = self.PROBE_MAX  # one thread far behind: probe seldom
        else:  # on one thread, keep probing often: the other tenant's spell ends unannounced
            st[3] = min(2 * st[3], self.PROBE_MAX if cur == cap else 4 * self.PROBE_MIN)
        st[2] = st[3]

    def pin(self, n: int, cap: int, threads: int) -> None:
        """Calls of batch ``n`` (up to ``cap`` threads) on ``threads``, with no probe for a
        long while: tests comparing the choices."""
        self.state[(n, cap)] = [threads, {}, 10**9, self.PROBE_MIN, 0, 0, {}]

    @classmethod
    def _note(cls, hist: dict, threads: int, seconds: float) -> None:
        h = hist.setdefault(threads, [])
        h.append(seconds)
        del h[:-cls.HISTORY]

    @staticmethod
    def _median(hist: dict, threads: int) -> float | None:
        """The lower median of a choice's last timed calls (of two, the faster)."""
        h = sorted(hist.get(threads, ()))
        return h[(len(h) - 1) // 2] if h else None


class NativeModel:
    def __init__(self, executor: Executor, lib: NativeLibrary):
        self.executor, self.plan, self.lib = executor, executor.plan, lib
        self.runner = NativeRunner(lib)
        self.threads = ThreadChoice()
        self._sigs: dict[tuple, _Signature] = {}
        self._torch_sigs: dict[tuple, _Signature] = {}
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
            need = self.runner.arena_bytes(n)
            if need > ex.max_memory:
                raise MemoryBudgetError(
                    f"batch {n} needs {need / 2**30:.2f} GiB of native arena, over the "
                    f"{ex.max_memory / 2**30:.2f} GiB budget (raise it with max_memory= or "
                    "SPARSECC_MAX_MEMORY)")
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
        ins = tuple(a if a.dtype == dt and a.flags.c_contiguous else
                    np.ascontiguousarray(a, dt) for a, dt in zip(arrays, sig.in_dtypes))
        if outs is None:
            outs = [np.empty(s, d) for s, d in zip(sig.out_shapes, sig.out_dtypes)]
        runner = self.runner
        ctx = runner.context(sig.n)
        try:
            if times is None:
                cap = ctx.threads  # (numba's thread count caps it in _run)
                th = self.threads.pick(sig.n, cap)
                t0 = time.perf_counter()
                rc = _invoke_arrays(runner.run_addr, runner.weights_ptr, ctx.arena_ptr,
                                    ctx.args_ptr, sig.n, th, ins, tuple(outs))
                self.threads.record(sig.n, cap, th, time.perf_counter() - t0)
            else:
                rc = runner.call(ctx, (ctypes.c_void_p * sig.nin)(*[a.ctypes.data for a in ins]),
                                 (ctypes.c_void_p * sig.nout)(*[o.ctypes.data for o in outs]),
                                 times.ctypes.data)
        finally:
            runner.give_back(ctx)
        if rc:
            self._raise()
        return outs

    def run_torch(self, tensors) -> list:
        """torch tensors in and out: pointers straight from contiguous CPU tensors of the
        plan's dtypes (checked once per signature), outputs allocated by torch."""
        import torch

        key = tuple(t.shape for t in tensors) + tuple(t.dtype for t in tensors)
        sig = self._torch_sigs.get(key)
        if sig is None or not all(t.is_contiguous() and t.is_cpu for t in tensors):
            arrays = [t.detach().cpu().numpy() for t in tensors]
            sig = self.signature(arrays)
            want = [_torch_dtype(d) for d in sig.in_dtypes]
            if all(t.dtype == w for t, w in zip(tensors, want)) and len(self._torch_sigs) < 64:
                self._torch_sigs[key] = sig
            return [torch.from_numpy(o) for o in self.run(arrays)]
        # numpy allocates the outputs (0.2 us against torch.empty's 2 us), torch wraps them
        outs = tuple(np.empty(s, d) for s, d in zip(sig.out_shapes, sig.out_dtypes))
        runner = self.runner
        ctx = runner.context(sig.n)
        try:
            cap = ctx.threads  # (numba's thread count caps it in _run)
            th = self.threads.pick(sig.n, cap)
            t0 = time.perf_counter()
            rc = _invoke_mixed(runner.run_addr, runner.weights_ptr, ctx.arena_ptr,
                               ctx.args_ptr, sig.n, th, tuple(t.data_ptr() for t in tensors),
                               outs)
            self.threads.record(sig.n, cap, th, time.perf_counter() - t0)
        finally:
            runner.give_back(ctx)
        if rc:
            self._raise()
        return [torch.from_numpy(o) for o in outs]

    def _raise(self):
        raise InputError(", ".join(self._err_layers) or self.plan.inputs[0],
                         "an index is out of range for the embedding table")

    def profile(self, arrays: list[np.ndarray], repeats: int = 20,
                warm: bool = True) -> dict[int, float]:
        """Median seconds per op index over ``repeats`` runs (after one warm-up, unless not
        ``warm``: then over repeats + 1 runs), from the library's cycle counts around each
        call."""
        per = []
        for rep in range(repeats + 1):
            times = np.zeros(len(self.plan.ops), np.int64)
            self.run(arrays, times=times)
            if rep or not warm:
                per.append(times)
        med = np.median(np.stack(per), axis=0) / cycles_per_second()
        ops = {c.op for c in self.lib.program.calls}
        return {i: float(med[i]) for i in sorted(ops)}


def _torch_dtype(d: np.dtype):
    import torch

    return {"<f4": torch.float32, "<i8": torch.int64, "|b1": torch.bool, "<f8": torch.float64,
            "<i4": torch.int32}[d.str]


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
