"""Channel dependency graph over a traced model, in networkx.

Every tensor that carries channels gets a *space*: its channel axes (one axis, or several read
as one flattened index, e.g. (heads, head_dim)) and their size. Each (space, index) pair is a
graph node; op handlers add edges meaning "removing this channel forces removing that one":
identity through elementwise ops and residual sums, offsets through concat/split, 1 -> H*W
through flatten, in = out through depthwise convs, whole heads through attention. A connected
component is a *unit*: the smallest set of channels that can go together. Parameters record
which of their dims follow which space, so removal slices them consistently.

Anything a handler cannot prove safe locks its spaces: a unit touching a locked space (model
inputs and outputs, unknown ops, a softmax over channels, ...) is left alone, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch.fx as fx
from torch import nn

from sparsecc.frontend import META, TensorInfo
from sparsecc.lowering import rules_nn, rules_tensor  # noqa: F401  (fill the tables)
from sparsecc.lowering.core import FUNCTIONS, METHODS


@dataclass
class Space:
    id: int
    node: str
    axes: tuple[int, ...]
    dims: tuple[int, ...]  # sizes of ``axes``; the flattened size is their product

    @property
    def size(self) -> int:
        return int(np.prod(self.dims))


@dataclass
class ParamSlice:
    """``owner.name`` (a module parameter/buffer or a get_attr tensor) has ``dim`` following
    ``space`` one-to-one. ``role`` 'out' marks producer weights (used for importance)."""

    owner: str
    name: str | None
    dim: int
    space: int
    role: str


@dataclass
class DepGraph:
    gm: fx.GraphModule
    spaces: list[Space] = field(default_factory=list)
    of_node: dict[str, int] = field(default_factory=dict)
    graph: nx.Graph = field(default_factory=nx.Graph)
    slices: list[ParamSlice] = field(default_factory=list)
    locks: dict[int, str] = field(default_factory=dict)
    inexact: dict[int, str] = field(default_factory=dict)
    head_dims: dict[int, int] = field(default_factory=dict)  # space -> indices per head
    splits: dict[str, tuple[int, list[int]]] = field(default_factory=dict)  # node -> dim, pieces
    reshapes: dict[str, int] = field(default_factory=dict)  # reshape node -> its output space

    # ---- building -----------------------------------------------------------------------
    def new_space(self, node: fx.Node, axes: tuple[int, ...]) -> Space:
        shape = _shape(node)
        axes = tuple(a % len(shape) for a in axes)
        sp = Space(len(self.spaces), node.name, axes, tuple(int(shape[a]) for a in axes))
        self.spaces.append(sp)
        self.of_node[node.name] = sp.id
        self.graph.add_nodes_from((sp.id, i) for i in range(sp.size))
        return sp

    def space(self, node: Any) -> Space | None:
        if isinstance(node, fx.Node) and node.name in self.of_node:
            return self.spaces[self.of_node[node.name]]
        return None

    def space_by_name(self, name: str) -> Space | None:
        return self.spaces[self.of_node[name]] if name in self.of_node else None

    def tie(self, a: Space, b: Space, pairs=None) -> None:
        if pairs is None:
            if a.size != b.size:
                self.lock(a, f"size mismatch with {b.node}")
                self.lock(b, f"size mismatch with {a.node}")
                return
            pairs = ((i, i) for i in range(a.size))
        self.graph.add_edges_from(((a.id, i), (b.id, j)) for i, j in pairs)

    def lock(self, sp: Space | None, why: str) -> None:
        if sp is not None and sp.id not in self.locks:
            self.locks[sp.id] = why

    def add_slice(self, owner: str, name: str | None, dim: int, sp: Space, role: str) -> None:
        self.slices.append(ParamSlice(owner, name, dim, sp.id, role))

    # ---- units ---------------------------------------------------------------------------
    def units(self) -> list[frozenset[tuple[int, int]]]:
        return [frozenset(c) for c in nx.connected_components(self.graph)]


def _shape(node: fx.Node) -> tuple[int, ...]:
    info = node.meta[META].value
    return tuple(int(d) if isinstance(d, int) else int(d.k) for d in info.shape)


def _is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get(META) and
                                                    node.meta[META].value, TensorInfo)


def build(gm: fx.GraphModule) -> DepGraph:
    dg = DepGraph(gm)
    for node in gm.graph.nodes:
        if node.op == "output":
            for arg in _flat(node.args):
                dg.lock(dg.space(arg), "model output")
            continue
        if not _is_tensor(node) and not _is_split(node):
            continue
        try:
            _handle(dg, node)
        except _Unsafe as exc:
            _lock_around(dg, node, str(exc))
    return dg


class _Unsafe(Exception):
    pass


def _flat(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (tuple, list)):
            out += _flat(a)
        elif isinstance(a, dict):
            out += _flat(list(a.values()))
        else:
            out.append(a)
    return out


def _is_split(node: fx.Node) -> bool:
    info = node.meta.get(META)
    return info is not None and isinstance(info.value, tuple) and bool(info.value) and all(
        isinstance(v, TensorInfo) for v in info.value)


def _lock_around(dg: DepGraph, node: fx.Node, why: str) -> None:
    if _is_tensor(node) and _rank(node):
        sp = dg.space(node) or dg.new_space(node, (_default_axis(node),))
        dg.lock(sp, f"{node.name}: {why}")
    for i in node.all_input_nodes:
        dg.lock(dg.space(i), f"read by {node.name}: {why}")


def _rank(node: fx.Node) -> int:
    return len(node.meta[META].value.shape)


def _default_axis(node: fx.Node) -> int:
    """The channel axis of a tensor no op gave one (a model input): its features are the last
    axis when a Linear or LayerNorm reads it (a sequence model's (batch, tokens, features)),
    else axis 1 (NCHW, or (batch, features))."""
    rank = _rank(node)
    if rank < 2:
        return 0
    if rank >= 3 and any(_reads_last_axis(dg_user) for dg_user in node.users):
        return rank - 1
    return 1


def _reads_last_axis(user: fx.Node) -> bool:
    if user.op == "call_module":
        try:
            mod = user.graph.owning_module.get_submodule(str(user.target))
        except AttributeError:
            return False
        return isinstance(mod, (nn.Linear, nn.LayerNorm))
    return _canonical(user) in ("linear", "layer_norm")


def _canonical(node: fx.Node) -> str | None:
    if node.op == "call_function":
        return FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return METHODS.get(node.target) or METHODS.get(str(node.target).rstrip("_"))
    return None


_IDENTITY = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
             "leaky_relu", "elu", "hardtanh", "clamp", "exp", "log", "sqrt", "rsqrt", "neg",
             "abs", "reciprocal", "sin", "cos", "cast", "dropout"}
_BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "rsub"}
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Dropout, nn.Identity,
                nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _handle(dg: DepGraph, node: fx.Node) -> None:
    if node.op == "placeholder":
        if _rank(node) >= 2:
            dg.lock(dg.new_space(node, (_default_axis(node),)), "model input")
        return
    if node.op == "get_attr":
        return  # constants are sliced by the ops that read them
    if node.op == "call_module":
        _module(dg, node, dg.gm.get_submodule(node.target))
        return
    from sparsecc.passes.normalize import _NOOP_FUNCTIONS
    from sparsecc.structured import handlers

    if node.op == "call_function" and node.target in _NOOP_FUNCTIONS:
        handlers.same(dg, node, node.args[0])
        return
    name = _canonical(node)
    fn = handlers.FUNCTION_HANDLERS.get(name) if name else None
    if fn is None:
        what = getattr(node.target, "__name__", node.target)
        raise _Unsafe(f"no channel rule for {node.op} {what}")
    fn(dg, node)


def _module(dg: DepGraph, node: fx.Node, mod: nn.Module) -> None:
    from sparsecc.structured import handlers

    x = node.args[0] if node.args else None
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        handlers.conv(dg, node, x, str(node.target), mod.groups)
    elif isinstance(mod, nn.Linear):
        handlers.linear(dg, node, x, str(node.target))
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        out = handlers.same(dg, node, x)
        for p in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, p, None) is not None:
                dg.add_slice(str(node.target), p, 0, out, "norm")
    elif isinstance(mod, nn.LayerNorm):
        handlers.layer_norm(dg, node, x, str(node.target), len(mod.normalized_shape),
                            mod.weight is not None, mod.bias is not None)
    elif isinstance(mod, nn.Embedding):
        out = dg.new_space(node, (-1,))
        dg.add_slice(str(node.target), "weight", 1, out, "out")
    elif isinstance(mod, _ACT_MODULES):
        handlers.same(dg, node, x)
    elif isinstance(mod, nn.Flatten):
        handlers.reshape(dg, node)
    elif isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
        handlers.softmax_like(dg, node, x, mod.dim)
    else:
        raise _Unsafe(f"no channel rule for module {type(mod).__name__}")


