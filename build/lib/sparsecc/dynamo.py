"""``torch.compile(model, backend="sparsecc")``: a TorchDynamo backend.

Dynamo hands over one graph per captured region; its parameters arrive as placeholders with
the real tensors as examples. They are baked in as constants (this is an inference backend:
later updates to the weights are not seen), optionally pruned, and the graph is compiled by
sparsecc. A region sparsecc cannot compile runs in torch, with a log line saying why; graph
breaks simply give several regions.

Options: ``torch.compile(m, backend="sparsecc", options={"sparsity": 0.9, "pattern": "2:4"})``
or ``torch.compile(m, backend=sparsecc.backend(sparsity=0.9))``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from sparsecc.errors import SparseccError

log = logging.getLogger("sparsecc")
PRUNE_KEYS = {"sparsity", "pattern", "scope", "method", "seed"}
KNOWN = PRUNE_KEYS | {"recipe"}
_WEIGHT_USERS = {torch._C._nn.linear, torch.conv1d, torch.conv2d, torch.nn.functional.linear,
                 torch.nn.functional.conv1d, torch.nn.functional.conv2d}


def backend(**options: Any):
    """A backend with options bound: ``torch.compile(m, backend=sparsecc.backend(...))``."""
    return functools.partial(sparsecc_backend, options=options)


def _is_constant(node: fx.Node, example: Any) -> bool:
    name = str(node.target)
    return isinstance(example, nn.Parameter) or "_parameters_" in name or "_buffers_" in name


def _bake(gm: fx.GraphModule, example_inputs: list) -> tuple[fx.GraphModule, list[int]]:
    """A copy of ``gm`` whose parameter placeholders are constants; returns it and the
    positions of the runtime tensor inputs it still takes."""
    root = nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    runtime: list[int] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (node, ex) in enumerate(zip(placeholders, example_inputs)):
        if isinstance(ex, torch.Tensor) and _is_constant(node, ex):
            attr = f"c{i}"
            root.register_buffer(attr, ex.detach())
            env[node] = graph.get_attr(attr)
        elif isinstance(ex, torch.Tensor):
            env[node] = graph.placeholder(node.name)
            runtime.append(i)
        else:  # a SymInt: sparsecc's batch dimension is symbolic already
            if node.users:
                raise SparseccError(f"dynamo region reads the symbolic size {node.name}")
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    for name, mod in gm.named_children():
        root.add_module(name, mod)
    return fx.GraphModule(root, graph, "SparseccRegion"), runtime


def _prune_constants(gm: fx.GraphModule, options: dict) -> None:
    from sparsecc.passes.prune import PruneOptions, masks_for_weights

    names = sorted({str(n.args[1].target) for n in gm.graph.nodes
                    if n.op == "call_function" and n.target in _WEIGHT_USERS and len(n.args) > 1
                    and isinstance(n.args[1], fx.Node) and n.args[1].op == "get_attr"})
    if not names:
        return
    opts = PruneOptions(**{k: v for k, v in options.items() if k in PRUNE_KEYS})
    weights = {k: getattr(gm, k) for k in names}
    masks = masks_for_weights(weights, {k: w.abs() for k, w in weights.items()}, opts)
    with torch.no_grad():
        for k, m in masks.items():
            getattr(gm, k).mul_(m.to(weights[k].dtype))


def sparsecc_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None):
    import sparsecc

    options = dict(options or {})
    unknown = sorted(set(options) - KNOWN)
    if unknown:
        raise SparseccError(f"torch.compile options {unknown} are not sparsecc options "
                            f"(known: {sorted(KNOWN)})")
    try:
        baked, runtime = _bake(gm, example_inputs)
        if options.get("sparsity") is not None or "pattern" in options:
            _prune_constants(baked, options)
        tensors = [example_inputs[i] for i in runtime]
        cm = sparsecc.compile(baked, tuple(tensors), recipe=options.get("recipe"))
    except SparseccError as exc:
        log.warning("sparsecc: running this region in torch instead: %s", exc)
        return gm.forward
    single = cm.plan.output_kind == "single"

    def run(*args):
        out = cm(*[args[i] for i in runtime])
        return (out,) if single else out

    run.sparsecc_model = cm
    return run


def register() -> None:
    """Register the backend name with dynamo (also reachable through the entry point)."""
    from torch._dynamo import list_backends
    from torch._dynamo.backends.registry import register_backend

    if "sparsecc" not in list_backends(exclude_tags=()):
        register_backend(name="sparsecc")(sparsecc_backend)
