"""Gradual pruning while fine-tuning: masks follow a schedule, pruned weights stay zero.

    pruner = sparsecc.Pruner(model, CubicSchedule(0.9, 0.5, end_step=1000, frequency=50),
                             optimizer=opt)          # prunes to 50 % now
    for step, batch in enumerate(loader):
        loss = ...; opt.zero_grad(); loss.backward(); opt.step()   # masks follow by themselves
    plain = pruner.finalize()                         # no hooks left: an nn.Module with zeros

Gradients of pruned weights are zeroed by tensor hooks, and the masks are re-applied after every
optimizer step (momentum and weight decay would otherwise move pruned weights off zero).
Without ``optimizer=``, call ``pruner.step()`` after each optimizer step instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.passes.prune import PruneOptions, apply_masks, compute_masks
from sparsecc.pruning.masks import parse_pattern
from sparsecc.pruning.schedule import CubicSchedule


class Pruner:
    def __init__(self, model: nn.Module, schedule: CubicSchedule,
                 optimizer: torch.optim.Optimizer | None = None, **prune_options: Any):
        try:
            self.options = PruneOptions(**{**prune_options, "sparsity": None})
        except (TypeError, ValueError) as exc:
            raise PassError("prune", str(exc)) from None
        self.model = model
        self.schedule = schedule
        self.pattern = parse_pattern(self.options.pattern)
        self.step_count = 0
        self.masks: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._finalized = False
        mods = dict(model.named_modules())
        self._update(self.schedule.sparsity(0))
        for name in self.masks:
            self._handles.append(mods[name].weight.register_hook(self._grad_hook(name)))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.step()))

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe, optimizer=None) -> Pruner:
        """Build from a recipe's ``prune`` (pattern, scope, ...) and ``schedule`` sections."""
        from sparsecc.recipe import load_recipe

        sections = load_recipe(recipe)
        if "schedule" not in sections:
            raise PassError("prune", "the recipe has no 'schedule' section")
        opts = sections.get("prune") or PruneOptions()
        fields = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        fields.pop("sparsity")
        return cls(model, sections["schedule"], optimizer, **fields)

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self.masks[name].to(grad.dtype)

        return hook

    def _update(self, sparsity: float) -> None:
        if self.pattern.kind == "nm":
            # N:M has one sparsity: it switches on at start_step and stays.
            active = self.step_count >= self.schedule.start_step
            sparsity = self.pattern.implied_sparsity if active else 0.0
        masks = compute_masks(self.model, self.options, sparsity)
        if self.masks:
            # Never revive a pruned weight: masks only shrink as sparsity grows.
            masks = {k: m & self.masks[k] for k, m in masks.items()}
        self.masks = masks
        apply_masks(self.model, self.masks)

    @property
    def sparsity(self) -> float:
        zeros = sum(int((~m).sum()) for m in self.masks.values())
        return zeros / max(sum(m.numel() for m in self.masks.values()), 1)

    def step(self) -> None:
        """Advance one training step: update the masks when the schedule says, re-apply them."""
        if self._finalized:
            return
        self.step_count += 1
        if self.schedule.updates_at(self.step_count):
            self._update(self.schedule.sparsity(self.step_count))
        else:
            apply_masks(self.model, self.masks)

    def finalize(self) -> nn.Module:
        """Remove every hook, apply the final masks, return the (now plain) model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        apply_masks(self.model, self.masks)
        self._finalized = True
        return self.model
