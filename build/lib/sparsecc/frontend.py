"""Trace a model with torch.fx and record what every node produces at two batch sizes.

Running the graph at batch B and B+1 tells, for each dimension, whether it scales with the
batch (``Sym(k)``) or is fixed; a model whose forward pins the batch (``view(1, -1)``) is marked
static. Tensor values that do not depend on the inputs through tensors (``arange(seq_len)``,
buffers, masks built from shapes) are recorded so lowering can turn them into constants.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from sparsecc.errors import TraceError
from sparsecc.ir.plan import Dim, Sym

META = "sparsecc"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[Dim, ...]
    dtype: torch.dtype


@dataclass
class NodeInfo:
    """What lowering needs to know about one fx node (stored in ``node.meta['sparsecc']``)."""

    value: Any  # TensorInfo, a tuple of them, or a plain python value
    data_dependent: bool  # depends on the inputs through tensors
    const: Any = None  # the tensor itself, for tensor nodes that are not data-dependent
    batch_dependent_scalar: bool = False


@dataclass
class Captured:
    gm: fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_batch: bool
    example_batch: int
    notes: list[str] = field(default_factory=list)


class _ScopedTracer(fx.Tracer):
    """fx's tracer, remembering which module it was inside when tracing failed."""

    def __init__(self):
        super().__init__()
        self._stack: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        try:
            name = self.path_of_module(m)
        except NameError:
            name = type(m).__name__
        self._stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = f"{name} ({type(m).__name__})"
            raise
        finally:
            self._stack.pop()


def as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    out = []
    for i, x in enumerate(items):
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception:
                raise TraceError("example_inputs", f"item {i} is {type(x).__name__}, "
                                                   "expected a Tensor") from None
        out.append(x)
    return tuple(out)


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = _ScopedTracer()
    root_name = type(model).__name__
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or root_name
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "control flow" in reason or "iterate" in reason or "bool" in reason:
            hint = " (data-dependent control flow or a shape check in forward)"
        raise TraceError(where, f"{type(exc).__name__}: {reason}{hint}") from None
    return fx.GraphModule(tracer.root, graph, root_name)


def _summary(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype)
    if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
        return tuple(_summary(v) for v in value.values())  # e.g. a transformers ModelOutput
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_summary(v) for v in value)
    if isinstance(value, torch.Size):
        return tuple(value)
    return value


def is_tensorish(summary: Any) -> bool:
    if isinstance(summary, tuple) and summary and summary[0] == "T":
        return True
    return isinstance(summary, tuple) and any(is_tensorish(s) for s in summary)


class _Recorder(fx.Interpreter):
    """Runs the graph, summarising every value; keeps the tensors that are constants.

    A node is data-dependent when it reads a placeholder through a tensor-valued edge; the
    tensors of the other nodes are kept (when ``keep``) for lowering to fold into constants.
    """

    def __init__(self, gm: fx.GraphModule, keep: bool):
        super().__init__(gm)
        self.summaries: dict[fx.Node, Any] = {}
        self.kept: dict[fx.Node, Any] = {}
        self.data_dep: set[fx.Node] = set()
        self.keep = keep

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            raise _NodeFailure(n, exc) from exc
        self.summaries[n] = _summary(result)
        if n.op == "placeholder" or any(i in self.data_dep and is_tensorish(self.summaries[i])
                                        for i in n.all_input_nodes):
            self.data_dep.add(n)
        elif self.keep and isinstance(result, torch.Tensor):
            self.kept[n] = result.detach().clone()
        return result


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node, exc: Exception):
        self.node, self.exc = node, exc


def _run(gm: fx.GraphModule, inputs: tuple, keep: bool) -> _Recorder:
    rec = _Recorder(gm, keep)
    with torch.no_grad():
        rec.run(*inputs)
    return rec


def _grow_batch(inputs: tuple[torch.Tensor, ...], b2: int) -> tuple[torch.Tensor, ...]:
    b1 = inputs[0].shape[0]
    idx = torch.arange(b2) % b1
    return tuple(x[idx] for x in inputs)


def _sym_shape(s1: tuple[int, ...], s2: tuple[int, ...], b1: int, b2: int):
    if len(s1) != len(s2):
        return None
    dims: list[Dim] = []
    for d1, d2 in zip(s1, s2):
        if d1 == d2:
            dims.append(int(d1))
            continue
        k, rem = divmod(d2 - d1, b2 - b1)
        if rem or k <= 0 or k * b1 != d1:
            return None
        dims.append(Sym(k))
    return tuple(dims)


def _combine(v1: Any, v2: Any, b1: int, b2: int, dynamic: bool) -> Any:
    """Merge two summaries into TensorInfo with symbolic dims; None when they disagree."""
    if isinstance(v1, tuple) and v1 and v1[0] == "T":
        if not dynamic:
            return TensorInfo(tuple(int(d) for d in v1[1]), v1[2])
        shape = _sym_shape(v1[1], v2[1], b1, b2)
        return None if shape is None else TensorInfo(shape, v1[2])
    if is_tensorish(v1):
        parts = [_combine(a, b, b1, b2, dynamic) for a, b in zip(v1, v2)]
        return None if any(p is None for p in parts) or len(v1) != len(v2) else tuple(parts)
    return v1


def capture(model: nn.Module, example_inputs: Any, dynamic_batch: bool = True) -> Captured:
    """Copy, trace and annotate ``model``. The user's module is never mutated."""
    inputs = as_tuple(example_inputs)
    model = copy.deepcopy(model).eval()
    # An fx.GraphModule (e.g. from transformers.utils.fx.symbolic_trace) is already a graph.
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    try:
        rec1 = _run(gm, inputs, keep=True)
    except _NodeFailure as f:
        raise TraceError(_node_where(f.node), f"running the example input failed: "
                                              f"{type(f.exc).__name__}: {f.exc}") from None
    if not inputs or any(x.dim() == 0 for x in inputs):
        dynamic_batch = False
    b1 = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
    b2 = b1 + 1
    rec2 = None
    notes: list[str] = []
    if dynamic_batch:
        try:
            rec2 = _run(gm, _grow_batch(inputs, b2), keep=False)
        except _NodeFailure as f:
            notes.append(f"batch fixed at {b1}: node {f.node.name} fails at batch {b2}")
    dyn = rec2 is not None
    infos = {}
    for node in gm.graph.nodes:
        s1 = rec1.summaries.get(node)
        s2 = rec2.summaries.get(node) if dyn else s1
        infos[node] = (_combine(s1, s2, b1, b2, dyn), s1, s2)
        if infos[node][0] is None:
            notes.append(f"batch fixed at {b1}: node {node.name} does not scale with the batch")
            return _static(gm, inputs, rec1, rec1.data_dep, b1, notes)
    data_dep = _batch_dependent(gm, infos, rec1)
    for node in gm.graph.nodes:
        info, s1, s2 = infos[node]
        node.meta[META] = _node_info(node, info, s1, s2, rec1, data_dep)
    return Captured(gm, inputs, True if dyn else False, b1, notes)


def _has_sym(info: Any) -> bool:
    if isinstance(info, TensorInfo):
        return any(isinstance(d, Sym) for d in info.shape)
    return isinstance(info, tuple) and any(_has_sym(i) for i in info)


def _batch_dependent(gm: fx.GraphModule, infos: dict, rec1: _Recorder) -> set[fx.Node]:
    """Data-dependent nodes, plus tensors whose shape scales with the batch although they read
    no input (``zeros_buffer.expand(batch, seq)``): those cannot be frozen as constants."""
    dep = set(rec1.data_dep)
    for node in gm.graph.nodes:
        if node in dep:
            continue
        if _has_sym(infos[node][0]) or any(i in dep and is_tensorish(rec1.summaries[i])
                                           for i in node.all_input_nodes):
            dep.add(node)
    return dep


def _static(gm, inputs, rec1, data_dep, b1, notes) -> Captured:
    for node in gm.graph.nodes:
        s1 = rec1.summaries.get(node)
        info = _combine(s1, s1, b1, b1, False)
        node.meta[META] = _node_info(node, info, s1, s1, rec1, data_dep)
    return Captured(gm, inputs, False, b1, notes)


def _node_info(node, info, s1, s2, rec1, data_dep) -> NodeInfo:
    dep = node in data_dep
    const = None
    if not dep and isinstance(info, TensorInfo):
        const = rec1.kept.get(node)
    scalar_changes = not is_tensorish(s1) and _differ(s1, s2)
    return NodeInfo(info, dep, const, batch_dependent_scalar=scalar_changes)


def _differ(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # objects whose comparison is not a plain bool
        return True


def _node_where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    mod = f" in {list(stack)[-1]}" if stack else ""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__",
                                                                      str(node.target))
    return f"node {node.name} ({node.op} {target}){mod}"
