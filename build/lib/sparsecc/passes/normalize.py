"""fx-level clean-up before lowering: drop inference no-ops, fold BatchNorm into its producer.

Requires: a GraphModule from ``frontend.capture`` in eval mode (node.meta['sparsecc'] present).
Guarantees: no Dropout/Identity nodes; every BatchNorm whose sole producer is a Conv1d/2d or a
Linear on 2-D input used by nothing else is gone, its statistics folded into that layer's weight
and bias. Idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from sparsecc.passes.registry import PassResult, register_pass

_NOOP_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.Identity)
_NOOP_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                   torch.dropout}
_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class NormalizeOptions:
    fold_batchnorm: bool = True


def normalize_graph(gm: fx.GraphModule, fold_batchnorm: bool = True) -> bool:
    changed = _drop_noops(gm)
    if fold_batchnorm:
        changed |= _fold_batchnorms(gm)
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return changed


@register_pass("normalize", options=NormalizeOptions, level="fx")
def normalize(gm: fx.GraphModule, opts: NormalizeOptions) -> PassResult:
    """Drop dropout/identity; fold eval-mode BatchNorm into the conv/linear producing its input."""
    return PassResult(gm, normalize_graph(gm, opts.fold_batchnorm))


def _is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _NOOP_MODULES)
    return node.op == "call_function" and node.target in _NOOP_FUNCTIONS


def _drop_noops(gm: fx.GraphModule) -> bool:
    changed = False
    for node in list(gm.graph.nodes):
        if _is_noop(gm, node) and node.args and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
    return changed


def _fold_batchnorms(gm: fx.GraphModule) -> bool:
    changed = False
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            continue
        prod = node.args[0]
        if not (isinstance(prod, fx.Node) and prod.op == "call_module" and len(prod.users) == 1
                and calls.get(prod.target) == 1):
            continue
        layer = gm.get_submodule(prod.target)
        if not isinstance(layer, _FOLD_INTO):
            continue
        if isinstance(layer, nn.Linear) and _rank(prod) != 2:
            continue
        _fold(layer, bn)
        node.replace_all_uses_with(prod)
        gm.graph.erase_node(node)
        changed = True
    return changed


def _rank(node: fx.Node) -> int:
    info = node.meta.get("sparsecc")
    shape = getattr(getattr(info, "value", None), "shape", None)
    return len(shape) if shape is not None else -1


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    w = layer.weight.double()
    shape = (-1,) + (1,) * (w.dim() - 1)
    layer.weight.copy_((w * scale.reshape(shape)).to(layer.weight.dtype))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_bias = (bias * scale + shift).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)

