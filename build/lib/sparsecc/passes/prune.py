"""Pruning masks over Conv/Linear weights: patterns, scopes, budgets, importance.

Requires: an nn.Module. Guarantees: a new module (the input is untouched) whose in-scope weights
are masked:
- unstructured / RxC blocks: per scope, the zeroed count is ``round(sparsity * n)`` exactly for
  single weights, and the nearest whole-block count for blocks (a block is zero or kept whole);
- N:M: at most N nonzeros in every group of M consecutive inputs (input channels for convs);
  a group cut short by the dimension keeps at most N too.
Weights already zero score lowest, so pruning twice with the same options changes nothing.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.passes.registry import PassResult, register_pass
from sparsecc.pruning import importance
from sparsecc.pruning.masks import make_groups, nm_mask, parse_pattern, threshold_masks

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
OPT_IN = {"Embedding": nn.Embedding, "ConvTranspose2d": nn.ConvTranspose2d}


@dataclass(frozen=True)
class PruneOptions:
    sparsity: float | None = None  # None: the pattern's own (N:M), required otherwise
    scope: str = "global"  # "global": one threshold over all layers; "layer": each alone
    pattern: str = "unstructured"  # "unstructured" | "N:M" | "RxC"
    method: str = "magnitude"  # "magnitude" | "random" | "taylor"
    exclude: tuple[str, ...] = ()  # module names (or globs) kept dense
    min_params: int = 0  # layers with fewer weights stay dense (opt-in floor)
    overrides: Mapping[str, float] = field(default_factory=dict)  # name/glob -> own sparsity
    include_types: tuple[str, ...] = ()  # opt-in weights beyond Conv/Linear, e.g. "Embedding"
    seed: int = 0
    calibration: Iterable[Any] | None = None  # taylor: batches fed to loss_fn
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None

    def __post_init__(self):
        s = self.sparsity
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))
                              or not 0.0 <= s <= 1.0):
            raise ValueError(f"sparsity={s!r} must be a number in [0, 1]")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope={self.scope!r} must be 'global' or 'layer'")
        if self.method not in ("magnitude", "random", "taylor"):
            raise ValueError(f"method={self.method!r} must be 'magnitude', 'random' or 'taylor'")
        pat = parse_pattern(self.pattern)
        if pat.kind == "nm" and s is not None and abs(s - pat.implied_sparsity) > 1e-9:
            raise ValueError(f"sparsity={s} contradicts pattern={self.pattern!r} "
                             f"(which means {pat.implied_sparsity:g})")
        if isinstance(self.min_params, bool) or not isinstance(self.min_params, int) \
                or self.min_params < 0:
            raise ValueError(f"min_params={self.min_params!r} must be a non-negative int")
        for name, v in dict(self.overrides).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"overrides[{name!r}]={v!r} must be a number in [0, 1]")
        bad = [t for t in self.include_types if t not in OPT_IN]
        if bad:
            raise ValueError(f"include_types={bad} not supported; choose from {sorted(OPT_IN)}")
        for name in ("exclude", "include_types"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        object.__setattr__(self, "overrides", dict(self.overrides))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def prunable_layers(model: nn.Module, exclude=(), min_params: int = 0,
                    include_types=()) -> list[tuple[str, nn.Module]]:
    types = PRUNABLE + tuple(OPT_IN[t] for t in include_types)
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, types) and getattr(mod, "weight", None) is not None
            and not _matches(name, exclude) and mod.weight.numel() >= min_params]


def target_sparsity(opts: PruneOptions) -> float:
    pat = parse_pattern(opts.pattern)
    if opts.sparsity is not None:
        return float(opts.sparsity)
    if pat.implied_sparsity is not None:
        return pat.implied_sparsity
    raise PassError("prune", f"sparsity is required for pattern {opts.pattern!r}")


def compute_masks(model: nn.Module, opts: PruneOptions,
                  sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, weight-shaped) for every in-scope layer of ``model``."""
    layers = prunable_layers(model, opts.exclude, opts.min_params, opts.include_types)
    if not layers:
        raise PassError("prune", "no prunable weights in scope (check exclude/min_params)")
    weights = {name: mod.weight.detach() for name, mod in layers}
    return masks_for_weights(weights, _scores(model, opts, weights), opts, sparsity)


def masks_for_weights(weights: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                      opts: PruneOptions, sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """The mask mechanics over named weight tensors (no module needed: dynamo graphs hold
    their weights as plain tensors)."""
    pat = parse_pattern(opts.pattern)
    sparsity = target_sparsity(opts) if sparsity is None else sparsity
    if pat.kind == "nm":
        if sparsity == 0.0:
            return {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
        return {k: nm_mask(w, scores[k], pat.n, pat.m) for k, w in weights.items()}
    own = {k: _override(k, opts.overrides) for k in weights}
    buckets: list[tuple[list[str], float]] = [([k], s) for k, s in own.items() if s is not None]
    rest = [k for k, s in own.items() if s is None]
    if opts.scope == "global" and rest:
        buckets.append((rest, sparsity))
    else:
        buckets += [([k], sparsity) for k in rest]
    masks: dict[str, torch.Tensor] = {}
    for names, s in buckets:
        groups = [make_groups(weights[k], scores[k], pat) for k in names]
        masks.update(zip(names, threshold_masks(groups, s)))
    return masks


def _override(name: str, overrides: Mapping[str, float]) -> float | None:
    if name in overrides:
        return float(overrides[name])
    for pat, s in overrides.items():
        if fnmatch.fnmatchcase(name, pat):
            return float(s)
    return None


def _scores(model: nn.Module, opts: PruneOptions, weights: dict[str, torch.Tensor]):
    if opts.method == "magnitude":
        return importance.magnitude(weights)
    if opts.method == "random":
        return importance.random(weights, opts.seed)
    return importance.taylor(model, list(weights), opts.calibration, opts.loss_fn)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        w = mods[name].weight
        w.mul_(mask.to(w.dtype))


@register_pass("prune", options=PruneOptions, level="module")
def prune_pass(model: nn.Module, opts: PruneOptions) -> PassResult:
    """Zero the least important Conv/Linear weights by pattern and scope; returns a pruned copy."""
    model = copy.deepcopy(model)
    masks = compute_masks(model, opts)
    apply_masks(model, masks)
    zeroed = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return PassResult(model, zeroed > 0,
                      [f"{len(masks)} layer(s), {zeroed}/{total} weights zero ({opts.pattern})"])


def sparsity_of(model: nn.Module, exclude=()) -> float:
    layers = prunable_layers(model, exclude)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(total, 1)
