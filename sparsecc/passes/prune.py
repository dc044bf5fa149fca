"""Magnitude / random pruning of Conv and Linear weights (unstructured).

Requires: an nn.Module. Guarantees: a new module (the input is untouched) in which exactly
``round(sparsity * n)`` of the ``n`` weights in scope are zero, per scope; weights already zero
count first. Re-running with the same options changes nothing (idempotent).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.passes.registry import PassResult, register_pass

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PruneOptions:
    sparsity: float = 0.5
    scope: str = "global"  # "global": one threshold over all layers; "layer": each layer alone
    pattern: str = "unstructured"
    method: str = "magnitude"  # "magnitude" | "random"
    exclude: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity <= 1.0:
            raise ValueError(f"sparsity={self.sparsity!r} must be a number in [0, 1]")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope={self.scope!r} must be 'global' or 'layer'")
        if self.method not in ("magnitude", "random"):
            raise ValueError(f"method={self.method!r} must be 'magnitude' or 'random'")
        if self.pattern != "unstructured":
            raise ValueError(f"pattern={self.pattern!r} is not supported yet (unstructured only)")
        object.__setattr__(self, "exclude", tuple(self.exclude))


def prunable_layers(model: nn.Module, exclude=()) -> list[tuple[str, nn.Module]]:
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE) and not any(name == e or name.startswith(e + ".")
                                                 for e in exclude):
            out.append((name, mod))
    return out


def _scores(weights: list[torch.Tensor], method: str, seed: int) -> list[torch.Tensor]:
    if method == "magnitude":
        return [w.detach().abs().flatten().double() for w in weights]
    gen = torch.Generator().manual_seed(seed)
    # Zeros stay first in line so re-pruning a pruned model is a no-op.
    return [torch.where(w.flatten() == 0, -1.0, torch.rand(w.numel(), generator=gen,
                                                            dtype=torch.float64))
            for w in weights]


def _zero_lowest(weights: list[torch.Tensor], scores: list[torch.Tensor], k: int) -> None:
    """Zero exactly the k lowest-scoring entries across ``weights`` (ties broken by position)."""
    if k <= 0:
        return
    flat = torch.cat(scores)
    order = torch.argsort(flat, stable=True)[:k]
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order] = False
    start = 0
    for w in weights:
        n = w.numel()
        w.mul_(mask[start:start + n].reshape(w.shape).to(w.dtype))
        start += n


@register_pass("prune", options=PruneOptions, level="module")
def prune_pass(model: nn.Module, opts: PruneOptions) -> PassResult:
    """Zero the lowest-importance Conv/Linear weights; returns a pruned copy of the module."""
    model = copy.deepcopy(model)
    layers = prunable_layers(model, opts.exclude)
    if not layers and opts.sparsity > 0:
        raise PassError("prune", "no prunable Conv/Linear weights in scope")
    groups = [layers] if opts.scope == "global" else [[layer] for layer in layers]
    with torch.no_grad():
        for group in groups:
            weights = [m.weight.data for _, m in group]
            total = sum(w.numel() for w in weights)
            k = int(round(opts.sparsity * total))
            _zero_lowest(weights, _scores(weights, opts.method, opts.seed), k)
    return PassResult(model, opts.sparsity > 0, [f"pruned {len(layers)} layer(s)"])


def sparsity_of(model: nn.Module, exclude=()) -> float:
    layers = prunable_layers(model, exclude)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(total, 1)
