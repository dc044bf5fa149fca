"""The compiled model as users hold it: call it, report it, save it, load it. No torch import.

``CompiledModel`` accepts numpy arrays or torch tensors (torch is only touched when the caller
passed torch tensors, so a loaded artifact runs in a process without torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import ArtifactError, MemoryBudgetError
from sparsecc.formats.cost import estimate_seconds
from sparsecc.ir.plan import ExecutionPlan, format_shape, resolve_shape
from sparsecc.options import env_native
from sparsecc.runtime.artifact import load_plan, save_plan
from sparsecc.runtime.executor import Executor
from sparsecc.runtime.ops import OPS


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class CompiledModel:
    """A compiled plan, run by its native library (the whole model as one native function:
    ``sparsecc.native``) when every op of the plan has native code and this machine can build
    it, else by the executor (numba kernels and BLAS, op by op from Python).
    ``native_status`` says which, and why not the library."""

    def __init__(self, plan: ExecutionPlan, max_memory: int | str | None = None,
                 native: bool | None = None, library=None):
        self.plan = plan
        self.executor = Executor(plan, max_memory)
        self.native = None
        self.native_status = "off (SPARSECC_NATIVE=0)"
        if native if native is not None else env_native():
            self._start_native(library)

    def _start_native(self, library=None, prebuilt: dict[str, bytes] | None = None) -> None:
        from sparsecc.errors import CodegenError
        from sparsecc.native.lower import Unsupported

        try:
            from sparsecc.native.library import build
            from sparsecc.native.model import NativeModel

            lib = library if library is not None else build(self.plan, prebuilt=prebuilt)
            self.native = NativeModel(self.executor, lib)
            self.native_status = (f"native library ({lib.code_bytes / 1e3:.0f} kB of code, "
                                  f"built in {lib.build_seconds:.1f} s)")
        except (Unsupported, CodegenError) as exc:
            self.native = None
            self.native_status = f"executor (numba/BLAS): not native because {exc}"
        except Exception as exc:  # noqa: BLE001 (a bug in the backend: run, but say so)
            import warnings

            self.native = None
            self.native_status = (f"executor (numba/BLAS): the native library failed to build "
                                  f"({type(exc).__name__}: {str(exc)[:300]})")
            warnings.warn(self.native_status, RuntimeWarning, stacklevel=3)

    def __call__(self, *inputs: Any):
        torch_in = any(_is_torch(x) for x in inputs)
        nm = self.native
        if nm is not None and torch_in and all(_is_torch(x) for x in inputs):
            outs = nm.run_torch(inputs)
        else:
            arrays = [x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)
                      for x in inputs]
            outs = nm.run(arrays) if nm is not None else self.executor.run(arrays)
            if torch_in:
                import torch

                outs = [torch.from_numpy(o) for o in outs]
        if self.plan.output_kind == "dict":
            return dict(zip(self.plan.info["output_keys"], outs))
        return outs[0] if self.plan.output_kind == "single" else tuple(outs)

    def warmup(self, *inputs: Any, calls: int | None = None):
        """The calls a service makes before it takes requests, at the batch size of
        ``inputs``: the first calls page the code and weights in, and the native library's
        thread choice (native.model.ThreadChoice) takes its first probe, a call or two on one
        thread, on them. ``calls`` defaults to ThreadChoice.START_CALLS (natively; 2 on the
        executor). Returns the last call's outputs."""
        if calls is None:
            from sparsecc.native.model import ThreadChoice

            calls = ThreadChoice.START_CALLS if self.native is not None else 2
        out = None
        for _ in range(max(1, int(calls))):
            out = self(*inputs)
        return out

    def example_inputs(self, seed: int = 0, batch: int | None = None,
                       int_high: int = 0) -> list[np.ndarray]:
        """Random inputs of the compiled shapes at ``batch``; integer and bool inputs are zeros,
        or random in [0, ``int_high``) / random bools when ``int_high`` > 0."""
        rng = np.random.default_rng(seed)
        batch = self.plan.example_batch if batch is None else batch
        out = []
        for name in self.plan.inputs:
            spec = self.plan.tensors[name]
            shape = resolve_shape(spec.shape, batch)
            if spec.dtype.startswith("float"):
                out.append(rng.standard_normal(shape).astype(spec.dtype))
            elif int_high <= 0:
                out.append(np.zeros(shape, spec.dtype))
            elif spec.dtype == "bool":
                out.append(rng.random(shape) < 0.5)
            else:
                out.append(rng.integers(0, int_high, shape).astype(spec.dtype))
        return out

    def save(self, path: str | Path, native: bool = True) -> Path:
        """Write the artifact; with ``native``, also the object code of the LLVM kernels this
        plan uses at its example batch, for this CPU (others rebuild them at load)."""
        return save_plan(self.plan, path, _native_code(self) if native else None)

    def report(self, measure: bool = True, repeats: int = 20) -> Report:
        return build_report(self, measure, repeats)

    def __repr__(self) -> str:
        p = self.plan
        shapes = [format_shape(p.tensors[i].shape) for i in p.inputs]
        mb = sum(a.nbytes for a in p.constants.values()) / 1e6
        return f"CompiledModel({len(p.ops)} ops, inputs={shapes}, {mb:.2f} MB of constants)"


def load(path: str | Path, native: bool = False,
         max_memory: int | str | None = None) -> CompiledModel:
    """Load a saved artifact; never imports torch.

    Every artifact is verified before it runs (``ir.verify``: a plan that passes cannot read or
    write outside its buffers), whatever its checksum says. ``max_memory`` (bytes, or "8G")
    bounds the activation memory any batch may take (default ``SPARSECC_MAX_MEMORY`` or 16 GiB):
    a larger request is refused before anything is allocated.

    By default nothing in the artifact is executed: kernels and the model's native library
    are rebuilt from the plan (from the local cache when this machine built them before).
    ``native=True`` links the object code stored in the artifact (kernels and library) when it
    was built for this CPU (no LLVM compilation at all), and falls back to rebuilding when it
    was not: only for artifacts from a trusted source.
    """
    plan = load_plan(path, OPS.keys())
    prebuilt = _link_native(path) if native else None
    try:
        cm = CompiledModel(plan, max_memory, native=False)
    except MemoryBudgetError as exc:
        raise ArtifactError(str(path), str(exc)) from None
    if env_native():
        cm._start_native(prebuilt=prebuilt)
    return cm


def _native_code(cm: CompiledModel):
    from sparsecc.runtime.artifact import NativeCode
    from sparsecc.runtime.ops.sparse import llvm_available

    if not llvm_available():
        return None
    from sparsecc.codegen.llvm import jit, kernels

    with kernels.recording() as used:
        cm.executor._bind(cm.plan.example_batch)
    code = NativeCode(jit.host().key)
    for key, k in used.items():
        code.kernels[key] = (dataclasses.asdict(k.spec), k.obj)
    if cm.native is not None:
        lib = cm.native.lib
        from sparsecc.codegen.llvm.jit import linked_key
        from sparsecc.native import module as NM

        code.libraries[lib.main_key] = lib.objects["main"]
        code.libraries[linked_key(NM.kernels_key(), NM.kernels_exports())] = \
            lib.objects["numba"]
        for k in lib.program.kernels.values():
            if k.kind == "sparse":
                code.kernels[k.spec.key] = (dataclasses.asdict(k.spec), lib.objects[k.spec.key])
    return code


def _link_native(path) -> dict[str, bytes] | None:
    """Link the artifact's kernel objects if they match this CPU; its native library objects
    (by cache key) for the library build to use instead of compiling, or None."""
    from sparsecc.runtime.artifact import read_native
    from sparsecc.runtime.ops.sparse import llvm_available

    native = read_native(path)
    if native is None or not llvm_available():
        return None
    from sparsecc.codegen.llvm import jit, kernels

    if native.host != jit.host().key:
        return None  # another CPU: kernels are rebuilt for this one when the plan is bound
    for key, (spec_fields, obj) in native.kernels.items():
        try:
            spec = kernels.spec_from_dict(spec_fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(str(path), f"native kernel {key}: bad spec ({exc})") from None
        kernels.from_object(spec, obj)
    return dict(native.libraries)


# ---- report -------------------------------------------------------------------------------
@dataclass
class Report:
    rows: list[dict[str, Any]]
    batch: int
    backend: str = ""
    quantized: bool = False  # a "precision" column (int8 scales, or why float32)

    COLUMNS = ("name", "op", "shape", "density", "format", "kernel", "mflops", "est_us",
               "measured_us", "gflops")

    @property
    def columns(self) -> tuple[str, ...]:
        return self.COLUMNS + (("precision",) if self.quantized else ())

    def total(self, key: str) -> float:
        return float(sum(r[key] for r in self.rows if r.get(key) is not None))

    def __str__(self) -> str:
        cells = [list(self.columns)]
        for r in self.rows:
            cells.append([_cell(r.get(c)) for c in self.columns])
        total = ["total", "", "", "", "", "", _cell(self.total("mflops")),
                 _cell(self.total("est_us")), _cell(self.total("measured_us"))]
        us = self.total("measured_us")
        total.append(_cell(self.total("mflops") / us * 1e3) if us else "-")
        total += [""] * (len(self.columns) - len(total))
        cells.append(total)
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [f"per-layer report at batch {self.batch}; runs on: {self.backend}"]
        for k, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if k == 0 or k == len(cells) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    __repr__ = __str__


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def build_report(cm: CompiledModel, measure: bool, repeats: int) -> Report:
    plan = cm.plan
    n = plan.example_batch
    shapes = {name: resolve_shape(t.shape, n) for name, t in plan.tensors.items()}
    runner = cm.native if cm.native is not None else cm.executor
    measured = runner.profile(cm.example_inputs(), repeats) if measure else {}
    labels = cm.native.lib.labels if cm.native is not None else {}
    rows = []
    for i, op in enumerate(plan.ops):
        if op.kind == "reshape":
            continue
        params = {r: plan.constants[c] for r, c in op.params.items()}
        ins = [shapes[x] for x in op.inputs]
        fn = OPS[op.kind].flops
        flops = fn(op, ins, shapes[op.output], params) if fn else 0.0
        nbytes = sum(a.nbytes for a in params.values()) + sum(
            int(np.prod(shapes[x])) * np.dtype(plan.tensors[x].dtype).itemsize
            for x in list(op.inputs) + [op.output])
        fmt = op.attrs.get("fmt")
        # the format pass's per-format estimates when it made them, else the op's roofline
        est = op.attrs.get("est_us")
        est_us = (est[fmt] if isinstance(est, dict) and fmt in est
                  else estimate_seconds(op.kind, fmt, flops, nbytes) * 1e6)
        rows.append({
            "name": op.layer or op.name, "op": op.kind + _act_suffix(op),
            "shape": format_shape(shapes[op.output]),
            "density": op.attrs.get("density"), "format": fmt,
            "mflops": flops / 1e6,
            "est_us": est_us,
            "kernel": labels.get(i, "-") if cm.native is not None else _executor_kernel(op),
            "measured_us": measured[i] * 1e6 if i in measured else None,
            "gflops": flops / measured[i] / 1e9 if measured.get(i) else None,
            "precision": _precision(op),
        })
    return Report(rows, n, cm.native_status, quantized="quantize" in plan.info)


def _precision(op) -> str | None:
    a = op.attrs
    if op.kind == "qlinear":
        lo, hi = a.get("w_scale", [0, 0])
        return (f"int8 x{float(a['x_scale']):.3g}+{int(a['x_zero'])} "
                f"w{float(lo):.2g}..{float(hi):.2g} err {float(a.get('qerr', 0)):.1%}")
    if op.kind in ("linear", "conv2d"):
        return a.get("precision", "float32")
    return None


def _executor_kernel(op) -> str:
    """The executor's kernel family for an op (the report's kernel column off the library)."""
    from sparsecc.runtime.ops.sparse import backend_of, is_sparse

    if op.kind in ("linear", "conv2d"):
        if is_sparse(op.attrs.get("fmt")):
            return f"{backend_of(op)} sparse"
        return "numba" if op.kind == "conv2d" and op.attrs.get("groups", 1) > 1 else "BLAS"
    return "numba/numpy"


def _act_suffix(op) -> str:
    act = op.attrs.get("act")
    return f"+{act}" if op.kind != "act" and act and act != "none" else ""
