"""Physically remove channels: slice parameters, fix module attributes and reshape arguments."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from sparsecc.structured.depgraph import DepGraph, _shape


def keep_masks(dg: DepGraph, removed_units) -> dict[int, np.ndarray]:
    keep = {sp.id: np.ones(sp.size, bool) for sp in dg.spaces}
    for unit in removed_units:
        for sid, idx in unit:
            keep[sid][idx] = False
    return keep


def _get(gm: fx.GraphModule, owner: str, name: str | None):
    obj = gm.get_submodule(owner) if name is not None else gm
    attr = name if name is not None else owner
    if name is None and "." in owner:
        parent, attr = owner.rsplit(".", 1)
        obj = gm.get_submodule(parent)
    return obj, attr


@torch.no_grad()
def apply(dg: DepGraph, keep: dict[int, np.ndarray]) -> None:
    gm = dg.gm
    per_tensor: dict[tuple[str, str | None], list] = defaultdict(list)
    for s in dg.slices:
        per_tensor[(s.owner, s.name)].append(s)
    for (owner, name), slices in per_tensor.items():
        obj, attr = _get(gm, owner, name)
        t = getattr(obj, attr)
        new = t.detach()
        for s in {(s.dim, s.space): s for s in slices}.values():
            idx = torch.from_numpy(np.flatnonzero(keep[s.space]))
            new = new.index_select(s.dim, idx)
        new = new.contiguous().clone()
        if isinstance(t, nn.Parameter):
            setattr(obj, attr, nn.Parameter(new, requires_grad=t.requires_grad))
        elif name is not None and attr in getattr(obj, "_buffers", {}):
            obj._buffers[attr] = new
        else:
            setattr(obj, attr, new)
    for mod in gm.modules():
        _fix_attributes(mod)
    _rewrite_args(dg, keep)
    gm.recompile()


def _fix_attributes(mod: nn.Module) -> None:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels
        mod.out_channels = mod.weight.shape[0]
        if depthwise:
            mult = max(1, mod.out_channels // max(mod.groups, 1))
            mod.groups = mod.in_channels = mod.out_channels // mult
        else:
            mod.in_channels = mod.weight.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        mod.num_features = mod.running_mean.shape[0] if mod.running_mean is not None \
            else mod.weight.shape[0]
    elif isinstance(mod, nn.LayerNorm):
        if mod.weight is not None:
            mod.normalized_shape = (mod.weight.shape[0],)
    elif isinstance(mod, nn.Embedding):
        mod.embedding_dim = mod.weight.shape[1]


def _new_dims(dg: DepGraph, sid: int, keep: dict[int, np.ndarray], shape) -> list[int]:
    """The node's output shape after removal (only its channel axes change)."""
    sp = dg.spaces[sid]
    kept = int(keep[sid].sum())
    dims = list(shape)
    if len(sp.axes) == 1:
        if sp.dims[0] == shape[sp.axes[0]]:
            dims[sp.axes[0]] = kept
        else:  # flatten: channels times trailing elements
            dims[sp.axes[0]] = kept * (shape[sp.axes[0]] // sp.size)
        return dims
    # several axes (heads, head_dim): whole leading entries go, the inner sizes stay
    inner = int(np.prod(sp.dims[1:]))
    dims[sp.axes[0]] = kept // inner
    return dims


def _rewrite_args(dg: DepGraph, keep: dict[int, np.ndarray]) -> None:
    nodes = {n.name: n for n in dg.gm.graph.nodes}
    for name, sid in dg.reshapes.items():
        node = nodes[name]
        takes_sizes = (node.op == "call_method" and node.target in ("view", "reshape")) or (
            node.op == "call_function" and getattr(node.target, "__name__", "") == "reshape")
        if not takes_sizes:
            continue  # flatten/squeeze/unsqueeze take no sizes
        old = _shape(node)
        new = _new_dims(dg, sid, keep, old)
        if new == list(old):
            continue
        args = list(node.args)
        sizes = args[1:]
        packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
        if packed:
            sizes = list(sizes[0])
        # Keep -1 and every size whose dim did not change (it may be a dynamic x.size(i));
        # write the new size where the channels shrank.
        fixed = [a if a == -1 or o == nw else int(nw) for a, o, nw in zip(sizes, old, new)]
        node.args = (args[0], tuple(fixed)) if packed else (args[0], *fixed)
    for name, (_dim, pieces) in dg.splits.items():
        node = nodes[name]
        target = getattr(node.target, "__name__", str(node.target))
        if target != "split":
            continue  # chunk keeps equal pieces by construction
        sizes = [int(keep[p].sum()) for p in pieces]
        args = list(node.args)
        args[1] = sizes
        node.args = tuple(args)
