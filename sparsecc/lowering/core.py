"""Lower an annotated fx.GraphModule to an ExecutionPlan.

Every fx node becomes zero or more plan ops. ``call_function``/``call_method`` targets map to a
canonical op name and a signature (so ``torch.relu``, ``F.relu`` and ``x.relu()`` share one rule);
``call_module`` targets map by module type. Non-tensor nodes (``x.size(0)``) and tensors that do not
depend on the inputs are folded to Python values and constants from the recorded run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from sparsecc.errors import TraceError, UnsupportedOpError
from sparsecc.frontend import META, Captured, NodeInfo, TensorInfo
from sparsecc.ir.plan import Dim, ExecutionPlan, Op, TensorSpec

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64",
           torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}


@dataclass(frozen=True)
class TRef:
    """A tensor computed at run time, by name in the plan."""

    name: str


@dataclass(frozen=True, eq=False)
class Const:
    """A tensor known at compile time (a parameter, a buffer, a folded subgraph)."""

    array: np.ndarray
    hint: str


@dataclass(frozen=True)
class BatchScalar:
    """A Python value that changes with the batch size: fine for shapes, not for arithmetic."""

    node: str
    value: Any


Rule = Callable[["Lowering", fx.Node, dict[str, Any]], Any]
ModuleRule = Callable[["Lowering", fx.Node, torch.nn.Module, list[Any]], Any]
RULES: dict[str, tuple[inspect.Signature, Rule]] = {}
FUNCTIONS: dict[Any, str] = {}
METHODS: dict[str, str] = {}
MODULES: dict[type, ModuleRule] = {}
INPLACE_FUNCTIONS: set[Any] = set()


def rule(name: str, signature: Callable, functions=(), methods=()):
    """Register a canonical op: its signature (a stub whose parameters are torch's) and aliases."""

    def deco(fn: Rule) -> Rule:
        RULES[name] = (inspect.signature(signature), fn)
        for f in functions:
            FUNCTIONS[f] = name
        for m in methods:
            METHODS[m] = name
        return fn

    return deco


def module_rule(*types: type):
    def deco(fn: ModuleRule) -> ModuleRule:
        for t in types:
            MODULES[t] = fn
        return fn

    return deco


def np_dtype(dtype: torch.dtype, where: str) -> str:
    if dtype not in _DTYPES:
        raise UnsupportedOpError(where, f"dtype {dtype} (supported: float32, int64, bool, ...)")
    return _DTYPES[dtype]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().resolve_conj().resolve_neg().numpy())


class Lowering:
    def __init__(self, cap: Captured):
        self.cap = cap
        self.gm = cap.gm
        self.tensors: dict[str, TensorSpec] = {}
        self.ops: list[Op] = []
        self.constants: dict[str, np.ndarray] = {}
        self._const_ids: dict[int, str] = {}
        self.inputs: list[str] = []
        self.env: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None
        self.output_keys: list[str] = []

    # ---- errors and metadata ------------------------------------------------------------
    def where(self, node: fx.Node | None = None) -> str:
        node = node or self.node
        if node is None:
            return "<graph>"
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            return f"{node.name} ({node.target}: {type(mod).__name__})"
        target = node.target if isinstance(node.target, str) else getattr(
            node.target, "__qualname__", str(node.target))
        return f"{node.name} ({node.op} {target})"

    def fail(self, what: str, hint: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(self.where(), what, hint)

    def info(self, node: fx.Node | None = None) -> NodeInfo:
        return (node or self.node).meta[META]

    def out_info(self) -> TensorInfo:
        value = self.info().value
        if not isinstance(value, TensorInfo):
            raise self.fail("expected a single tensor result")
        return value

    def layer(self) -> str:
        node = self.node
        return str(node.target) if node.op == "call_module" else node.name

    # ---- building the plan --------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.tensors:
            name, i = f"{base}_{i}", i + 1
        return name

    def emit(self, kind: str, inputs: list[str], shape: tuple[Dim, ...] | None = None,
             dtype: str | None = None, attrs: dict | None = None, params: dict | None = None,
             alias: bool = False, suffix: str = "") -> TRef:
        if shape is None or dtype is None:
            out = self.out_info()
            shape = out.shape if shape is None else shape
            dtype = np_dtype(out.dtype, self.where()) if dtype is None else dtype
        name = self.fresh(self.node.name + suffix)
        self.tensors[name] = TensorSpec(name, tuple(shape), dtype, inputs[0] if alias else None)
        self.ops.append(Op(kind, self.node.name, list(inputs), name, attrs or {}, params or {},
                           self.layer()))
        return TRef(name)

    def add_const(self, array: np.ndarray, hint: str) -> str:
        key = id(array)
        if key in self._const_ids:
            return self._const_ids[key]
        array = np.ascontiguousarray(array)
        name = self.fresh(hint)
        self.constants[name] = array
        self.tensors[name] = TensorSpec(name, tuple(int(d) for d in array.shape),
                                        np_dtype_of(array))
        self._const_ids[key] = name
        return name

    def tensor(self, value: Any, what: str = "input") -> str:
        """The plan name of a tensor operand (registering constants on first use)."""
        if isinstance(value, TRef):
            return value.name
        if isinstance(value, Const):
            return self.add_const(value.array, value.hint)
        raise self.fail(f"{what} must be a tensor, got {type(value).__name__}")

    def spec(self, value: Any) -> TensorSpec:
        return self.tensors[self.tensor(value)]

    def number(self, value: Any, what: str) -> float:
        if isinstance(value, BatchScalar):
            raise self.fail(f"{what} depends on the batch size (node {value.node})",
                            "compile with a fixed batch or compute it from non-batch dims")
        if isinstance(value, (bool, int, float)):
            return value
        raise self.fail(f"{what} must be a number, got {type(value).__name__}")

    def param(self, module_name: str, role: str, t: torch.Tensor | None) -> str | None:
        if t is None:
            return None
        return self.add_const(to_numpy(t), f"{module_name}.{role}" if module_name else role)

    # ---- driving ------------------------------------------------------------------------
    def run(self) -> ExecutionPlan:
        outputs: list[str] = []
        kind = "single"
        for node in self.gm.graph.nodes:
            self.node = node
            if node.op == "output":
                outputs, kind = self._outputs(node.args[0])
            else:
                self.env[node] = self._lower_node(node)
        self.node = None
        info = {"notes": list(self.cap.notes)}
        if kind == "dict":
            info["output_keys"] = self.output_keys
        plan = ExecutionPlan(self.inputs, outputs, self.tensors, self.ops, self.constants, kind,
                             self.cap.example_batch, self.cap.dynamic_batch, info)
        return plan

    def _outputs(self, arg: Any) -> tuple[list[str], str]:
        if isinstance(arg, dict) and all(isinstance(a, fx.Node) for a in arg.values()):
            self.output_keys = [str(k) for k in arg]
            return [self.tensor(self.env[a], "model output") for a in arg.values()], "dict"
        if isinstance(arg, fx.Node) and isinstance(self.env[arg], (list, tuple)):
            arg = list(self.env[arg])  # e.g. returning torch.split(...) directly
            return [self.tensor(a, "model output") for a in arg], "tuple"
        if isinstance(arg, fx.Node):
            return [self.tensor(self.env[arg], "model output")], "single"
        if isinstance(arg, (tuple, list)) and all(isinstance(a, fx.Node) for a in arg):
            return [self.tensor(self.env[a], "model output") for a in arg], "tuple"
        raise self.fail(f"model output of type {type(arg).__name__}",
                        "return a tensor, a flat tuple or a dict of tensors")

    def _lower_node(self, node: fx.Node) -> Any:
        info: NodeInfo = self.info(node)
        if node.op == "placeholder":
            if isinstance(info.value, TensorInfo):
                name = self.fresh(str(node.target).lstrip("*"))  # forward's parameter name
                dtype = np_dtype(info.value.dtype, self.where())
                self.tensors[name] = TensorSpec(name, info.value.shape, dtype)
                self.inputs.append(name)
                return TRef(name)
            return info.value
        if not info.data_dependent:
            return self._folded(node, info)
        if not isinstance(info.value, (TensorInfo, tuple)) or (
                isinstance(info.value, tuple) and not all(isinstance(v, TensorInfo)
                                                          for v in info.value)):
            if _reads_tensor_values(node):
                raise TraceError(self.where(node), (
                    "takes a Python number from a tensor computed from the inputs (.item(), "
                    ".tolist(), float(t), ...); the compiled model would freeze the example's "
                    "value. Keep it a tensor (x * x.amax() instead of x * x.max().item())"))
            # A shape computation such as x.size(0): keep its recorded value.
            return BatchScalar(node.name, info.value) if info.batch_dependent_scalar else info.value
        result = self._dispatch(node)
        if _is_inplace(self, node) and isinstance(node.args[0], fx.Node):
            # Later readers of the mutated tensor see the new value, as in eager torch.
            self.env[node.args[0]] = result
        return result

    def _folded(self, node: fx.Node, info: NodeInfo) -> Any:
        if isinstance(info.value, TensorInfo):
            if node.op == "get_attr":
                t = _fetch_attr(self.gm, node.target)
                return Const(to_numpy(t), str(node.target))
            if info.const is None:
                raise self.fail("constant tensor was not recorded")
            return Const(to_numpy(info.const), node.name)
        if info.batch_dependent_scalar:
            return BatchScalar(node.name, info.value)
        if isinstance(info.value, tuple) and any(isinstance(v, TensorInfo) for v in info.value):
            return _Unavailable(node.name)
        return info.value

    def _dispatch(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, _Unavailable):
                raise self.fail(f"reads a constant tuple of tensors ({v.node})")
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            fn = MODULES.get(type(mod))
            if fn is None:
                raise self.fail(f"module type {type(mod).__name__}",
                                "no runtime kernel; see sparsecc's supported op list")
            if kwargs:
                raise self.fail("module called with keyword arguments")
            return fn(self, node, mod, list(args))
        if node.op == "call_function":
            name = FUNCTIONS.get(node.target)
            what = f"function {getattr(node.target, '__module__', '')}." \
                   f"{getattr(node.target, '__name__', node.target)}"
        elif node.op == "call_method":
            name = METHODS.get(node.target) or METHODS.get(str(node.target).rstrip("_"))
            what = f"tensor method .{node.target}()"
        else:
            raise self.fail(f"node kind {node.op}")
        if name is None:
            raise self.fail(what, "no runtime kernel; see sparsecc's supported op list")
        sig, fn = RULES[name]
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise self.fail(f"{what} with arguments it does not take ({exc})") from None
        bound.apply_defaults()
        return fn(self, node, dict(bound.arguments))


# Non-tensor results of these read a tensor's metadata, not its values: fine to record.
_META_METHODS = {"size", "dim", "numel", "stride", "ndimension", "nelement", "__len__",
                 "is_contiguous", "is_floating_point", "element_size", "get_device"}
_META_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout",
               "is_sparse", "is_quantized"}


def _reads_tensor_values(node: fx.Node) -> bool:
    """Whether a node with a non-tensor result reads the values of an input-dependent tensor
    (x.max().item()), as opposed to its shape (x.size(0)) or other numbers."""
    if node.op == "call_method" and node.target in _META_METHODS:
        return False
    if node.op == "call_function":
        if node.target is getattr and len(node.args) > 1 and node.args[1] in _META_ATTRS:
            return False
        if node.target in (len, torch.numel):
            return False
    return any(isinstance(n.meta.get(META), NodeInfo) and n.meta[META].data_dependent
               and isinstance(n.meta[META].value, TensorInfo) for n in node.all_input_nodes)


@dataclass(frozen=True)
class _Unavailable:
    node: str


def np_dtype_of(array: np.ndarray) -> str:
    return str(array.dtype)


def _fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_inplace(lw: Lowering, node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_function":
        return node.target in INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True
    if node.op == "call_module":
        return getattr(lw.gm.get_submodule(node.target), "inplace", False) is True
    return False


def lower(cap: Captured) -> ExecutionPlan:
    from sparsecc.lowering import rules_nn, rules_tensor  # noqa: F401  (register rules)

    return Lowering(cap).run()
