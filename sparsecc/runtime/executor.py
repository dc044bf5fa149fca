"""Binds an ExecutionPlan to buffers for one batch size and runs it.

Buffers are allocated once per batch size and reused by liveness: a value's storage returns to
the pool after its last reader ran; reshape outputs are views of their input's storage. Calls
from several threads at once each take a binding of their own from a pool and give it back, so
concurrent calls never share buffers and short-lived threads (one per HTTP request) reuse them.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sparsecc.errors import CodegenError, InputError, MemoryBudgetError, RunError
from sparsecc.ir.plan import ExecutionPlan, Sym, resolve_shape
from sparsecc.ir.verify import PlanInvalid, verify_batch, verify_plan
from sparsecc.options import env_max_memory, parse_bytes
from sparsecc.runtime.ops import OPS, BindCtx
from sparsecc.runtime.ops.registry import ALIGN as _ALIGN
from sparsecc.runtime.ops.registry import Step, aligned_empty
from sparsecc.runtime.ops.sparse import kn_nbytes
from sparsecc.runtime.threads import kernel_threads, single_threaded_blas


class _Recycled:
    """Buffer blocks of executors that are gone, for the next binding that fits.

    Touching fresh memory costs ~0.5 s per GB here (a page fault per 4 KB page: 2 GB took 4.6 s
    to first-touch on this KVM machine, and transparent huge pages are not granted): a ResNet-50
    binding at batch 64 (1.3 GB) spent 3 s of its first call on it. A process that compiles one
    model after another (the bench, a server reloading models) reuses the blocks instead.
    Bounded: at most LIMIT bytes are kept, largest dropped first; blocks under 1 MB are not.
    """

    LIMIT = 4 << 30
    MIN = 1 << 20

    def __init__(self):
        self._lock = threading.Lock()
        self._blocks: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray | None:
        if nbytes < self.MIN:
            return None
        with self._lock:  # best fit, wasting at most half the block
            fits = [i for i, b in enumerate(self._blocks) if nbytes <= b.nbytes <= 2 * nbytes]
            if not fits:
                return None
            return self._blocks.pop(min(fits, key=lambda i: self._blocks[i].nbytes))

    def give(self, blocks: list[np.ndarray]) -> None:
        with self._lock:
            self._blocks.extend(b for b in blocks if b.nbytes >= self.MIN)
            self._blocks.sort(key=lambda b: b.nbytes)
            total = sum(b.nbytes for b in self._blocks)
            while total > self.LIMIT:
                total -= self._blocks.pop().nbytes


_RECYCLED = _Recycled()


def _aligned(nbytes: int, owned: list[np.ndarray] | None = None) -> np.ndarray:
    """A 64-byte aligned block of at least ``nbytes`` (recycled when one fits); appended to
    ``owned``, the executor's list that goes back to the recycler when the executor does."""
    block = _RECYCLED.take(nbytes)
    if block is None:
        block = aligned_empty((nbytes,), np.uint8)
    if owned is not None:
        owned.append(block)
    return block


def _view(block: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return block[:nbytes].view(dtype).reshape(shape)


@dataclass
class Bound:
    """A plan bound to concrete buffers for one batch size."""

    n: int
    arrays: dict[str, np.ndarray]
    steps: list[tuple[int, Step]]
    arena_bytes: int
    workspace: np.ndarray  # the ops' shared scratch block


class Executor:
    def __init__(self, plan: ExecutionPlan, max_memory: int | str | None = None):
        self._verified = set(verify_plan(plan, OPS.keys()))  # batch sizes whose rules hold
        self.plan = plan
        self.max_memory = env_max_memory() if max_memory is None else parse_bytes(
            max_memory, "max_memory")
        self.check_batch(plan.example_batch)  # a plan over the budget is refused up front
        self._lock = threading.Lock()
        self._free: dict[tuple[int, int], list[Bound]] = {}
        self._roots = {name: plan.storage_root(name) for name in plan.tensors}
        # Every buffer block this executor allocated; recycled once it is garbage-collected
        # (run() returns copies, so nothing outside the executor views them).
        self._blocks: list[np.ndarray] = []
        weakref.finalize(self, _RECYCLED.give, self._blocks)

    # ---- binding ------------------------------------------------------------------------
    @contextmanager
    def bound(self, n: int):
        """A binding for batch ``n`` owned by the caller until the block ends. Bindings are
        kept per kernel thread count too: a kernel's work split is fixed when it is bound, and
        one bound for 1 thread would leave the second core idle after ``set_num_threads(2)``."""
        key = (n, kernel_threads())
        donor = None
        with self._lock:
            free = self._free.setdefault(key, [])
            b = free.pop() if free else None
            if b is None:  # an idle binding of this batch for another thread count
                donor = next((lst.pop() for (m, _), lst in self._free.items() if m == n and lst),
                             None)
        if b is None:
            self.check_batch(n)
            b = self._bind(n, donor)
        try:
            yield b
        finally:
            with self._lock:
                self._free[key].append(b)

    def check_batch(self, n: int) -> int:
        """Verify the plan's rules at batch ``n`` and that its buffers fit the memory budget;
        the bytes they may take (every activation and the largest scratch, an upper bound)."""
        plan = self.plan
        if n not in self._verified:
            try:
                verify_batch(plan, n)
            except PlanInvalid as exc:
                raise InputError(plan.inputs[0], f"the plan cannot run at batch {n}: {exc}"
                                 ) from None
        shapes = {name: resolve_shape(t.shape, n) for name, t in plan.tensors.items()}
        total = sum(_nbytes(shapes[name], t.dtype) for name, t in plan.tensors.items()
                    if t.alias_of is None and name not in plan.constants)
        scratch = 0
        for op in plan.ops:
            fn = OPS[op.kind].scratch
            need = fn(op, [shapes[x] for x in op.inputs], shapes[op.output]) if fn else []
            scratch = max(scratch, sum(_nbytes(sh, dt) for sh, dt in need))
        if total + scratch > self.max_memory:
            raise MemoryBudgetError(
                f"batch {n} needs up to {(total + scratch) / 2**30:.2f} GiB of activations and "
                f"scratch, over the {self.max_memory / 2**30:.2f} GiB budget (raise it with "
                "max_memory= or SPARSECC_MAX_MEMORY)")
        self._verified.add(n)
        return total + scratch

    def _liveness(self) -> dict[str, int]:
        """Last op index reading each storage root (len(ops) for outputs)."""
        plan = self.plan
        last: dict[str, int] = {}
        for i, op in enumerate(plan.ops):
            for name in op.inputs:
                root = self._roots.get(name, name)
                last[root] = max(last.get(root, -1), i)
            root = self._roots[op.output]
            last[root] = max(last.get(root, -1), i)
        for name in plan.outputs:
            last[self._roots[name]] = len(plan.ops)
        return last

    def _bind(self, n: int, donor: Bound | None = None) -> Bound:
        """Buffers and steps for batch ``n``. A ``donor`` (an idle binding of the same batch
        bound for another thread count) gives up its buffers, so they are not allocated again:
        first-touching a fresh arena cost ResNet-50 at batch 64 ~1.4 s on its next call."""
        plan = self.plan
        shapes = {name: resolve_shape(t.shape, n) for name, t in plan.tensors.items()}
        if donor is not None:
            scratch, workspace = self._scratch(shapes, donor.workspace)
            return Bound(n, donor.arrays, self._steps(donor.arrays, scratch),
                         donor.arena_bytes - donor.workspace.nbytes + workspace.nbytes,
                         workspace)
        arrays: dict[str, np.ndarray] = dict(plan.constants)
        last = self._liveness()
        pool: list[np.ndarray] = []
        arena = 0

        kn = {op.output for op in plan.ops if op.attrs.get("out_kn")}

        def take(name: str) -> None:
            nonlocal arena
            spec = plan.tensors[name]
            need = int(np.prod(shapes[name], dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            if name in kn:  # features x batch hand-over: rows padded (ops/sparse.kn_stride)
                shape = shapes[name]
                need = max(need, kn_nbytes(int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]))
            fits = [i for i, b in enumerate(pool) if b.nbytes >= need]
            if fits:
                block = pool.pop(min(fits, key=lambda i: pool[i].nbytes))
            else:
                block = _aligned(max(need, 1), self._blocks)
                arena += block.nbytes
            arrays[name] = _view(block, shapes[name], spec.dtype)
            owner[name] = block

        owner: dict[str, np.ndarray] = {}
        for name in plan.inputs:
            take(name)
        frees: dict[int, list[str]] = {}
        for root, i in last.items():
            if root not in plan.constants:
                frees.setdefault(i, []).append(root)
        for i, op in enumerate(plan.ops):
            spec = plan.tensors[op.output]
            if spec.alias_of is not None:
                arrays[op.output] = arrays[spec.alias_of].reshape(shapes[op.output])
            else:
                take(op.output)
            for root in frees.get(i, []):
                if root in owner:
                    pool.append(owner.pop(root))
        scratch, workspace = self._scratch(shapes)
        return Bound(n, arrays, self._steps(arrays, scratch), arena + workspace.nbytes, workspace)

    def _steps(self, arrays: dict[str, np.ndarray],
               scratch: list[list[np.ndarray]]) -> list[tuple[int, Step]]:
        plan = self.plan
        steps = []
        for i, op in enumerate(plan.ops):
            ctx = BindCtx(op, [arrays[x] for x in op.inputs], arrays[op.output],
                          {role: plan.constants[c] for role, c in op.params.items()},
                          scratch[i])
            try:
                step = OPS[op.kind].bind(ctx)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise CodegenError(op.layer or op.name,
                                   f"cannot bind {op.kind}: {type(exc).__name__}: {exc}") from None
            if step is not None:
                steps.append((i, step))
        return steps

    def _scratch(self, shapes: dict[str, tuple[int, ...]], block: np.ndarray | None = None
                 ) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """One workspace shared by all ops (they run one after another), sized for the largest;
        ``block`` is reused when it is large enough (scratch may depend on the thread count)."""
        plan = self.plan
        needs = []
        for op in plan.ops:
            fn = OPS[op.kind].scratch
            needs.append(fn(op, [shapes[x] for x in op.inputs], shapes[op.output]) if fn else [])
        sizes = [sum(_round(np.prod(s, dtype=np.int64) * np.dtype(d).itemsize) for s, d in need)
                 for need in needs]
        need = max(sizes, default=0) + _ALIGN
        if block is None or block.nbytes < need:
            block = _aligned(need, self._blocks)
        out = []
        for need in needs:
            views, off = [], 0
            for shape, dtype in need:
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                views.append(block[off:off + nbytes].view(dtype).reshape(shape))
                off += _round(nbytes)
            out.append(views)
        return out, block

    # ---- running ------------------------------------------------------------------------
    def batch_of(self, arrays: list[np.ndarray]) -> int:
        plan = self.plan
        if len(arrays) != len(plan.inputs):
            raise InputError("*", f"the model takes {len(plan.inputs)} input(s), got {len(arrays)}")
        n = None
        for name, arr in zip(plan.inputs, arrays):
            spec = plan.tensors[name]
            if arr.ndim != len(spec.shape):
                raise InputError(name, f"expected {len(spec.shape)} dims "
                                       f"{_fmt(spec.shape)}, got shape {tuple(arr.shape)}")
            for d, got in zip(spec.shape, arr.shape):
                if isinstance(d, Sym):
                    if got % d.k:
                        raise InputError(name, f"dim {got} is not a multiple of {d.k}")
                    cand = got // d.k
                    if n is not None and cand != n:
                        raise InputError(name, f"batch {cand} disagrees with batch {n} "
                                               "of another input")
                    n = cand
        n = plan.example_batch if n is None else n
        if n < 1:
            raise InputError(plan.inputs[0], "batch size must be at least 1")
        if not plan.dynamic_batch and arrays and arrays[0].ndim and \
                arrays[0].shape[0] != plan.example_batch:
            raise InputError(plan.inputs[0], f"this model was compiled for batch "
                                             f"{plan.example_batch} only (its forward fixes it)")
        for name, arr in zip(plan.inputs, arrays):
            want = resolve_shape(plan.tensors[name].shape, n)
            if tuple(arr.shape) != want:
                raise InputError(name, f"expected shape {want}, got {tuple(arr.shape)}")
        return n

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        arrays = [np.asarray(a) for a in arrays]
        n = self.batch_of(arrays)
        with self.bound(n) as bound:
            self._fill_inputs(bound, arrays)
            with single_threaded_blas(), _kernel_guard():
                for i, step in bound.steps:
                    try:
                        step()
                    except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
                        # numpy refusing the data (an integer power < 0, ...): name the op
                        op = self.plan.ops[i]
                        raise RunError(op.layer or op.name,
                                       f"{type(exc).__name__}: {exc}") from None
            return [bound.arrays[name].copy() for name in self.plan.outputs]

    def _fill_inputs(self, bound: Bound, arrays: list[np.ndarray]) -> None:
        for name, arr in zip(self.plan.inputs, arrays):
            dst = bound.arrays[name]
            _check_dtype(name, arr, dst.dtype)
            np.copyto(dst, arr, casting="unsafe")

    def profile(self, arrays: list[np.ndarray], repeats: int = 20) -> dict[int, float]:
        """Median seconds per op index over ``repeats`` runs (after one warm-up)."""
        arrays = [np.asarray(a) for a in arrays]
        with self.bound(self.batch_of(arrays)) as bound:
            return self._profile(bound, arrays, repeats)

    def _profile(self, bound: Bound, arrays: list[np.ndarray], repeats: int) -> dict[int, float]:
        times: dict[int, list[float]] = {i: [] for i, _ in bound.steps}
        with single_threaded_blas(), _kernel_guard():
            for rep in range(repeats + 1):
                # Input buffers may be reused by later ops: refill them every run.
                self._fill_inputs(bound, arrays)
                for i, step in bound.steps:
                    t0 = time.perf_counter()
                    step()
                    if rep:
                        times[i].append(time.perf_counter() - t0)
        return {i: float(np.median(t)) for i, t in times.items()}


_WORKQUEUE_LOCK = threading.Lock()


@contextmanager
def _kernel_guard():
    """numba's workqueue layer (the fallback where neither OpenMP nor TBB loads) aborts the
    process when two threads launch parallel kernels at once: serialise calls there."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen, be careful
        layer = None
    if layer in (None, "workqueue"):
        with _WORKQUEUE_LOCK:
            yield
    else:
        yield


def _nbytes(shape, dtype) -> int:
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def _round(nbytes) -> int:
    return int(-(-int(nbytes) // _ALIGN) * _ALIGN)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _check_dtype(name: str, arr: np.ndarray, want: np.dtype) -> None:
    if want.kind == "f" and arr.dtype.kind not in "fiub":
        raise InputError(name, f"expected a float array, got dtype {arr.dtype}")
    if want.kind in "iu" and arr.dtype.kind not in "iu":
        raise InputError(name, f"expected an integer array (indices), got dtype {arr.dtype}")
    if want.kind == "b" and arr.dtype.kind != "b":
        raise InputError(name, f"expected a bool array, got dtype {arr.dtype}")
