"""Lottery tickets: iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019;
Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis").

    def train(model, round_index):      # any loop: masks are kept by hooks on the layers
        ...
    ticket, history = sparsecc.lottery_ticket(model, train, sparsity=0.9, rounds=3)

Each round trains, prunes the smallest surviving weights globally (to
1 - (1 - sparsity)^(r / rounds) after round r, exact counts) and rewinds the survivors to the
rewind point: the weights at the call (``rewind=None``) or a state_dict the caller took early in
training (weight rewinding). The ticket is then trained once more at the final sparsity.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.passes.prune import PruneOptions, apply_masks, compute_masks, sparsity_of


def lottery_ticket(model: nn.Module, train: Callable[[nn.Module, int], Any],
                   sparsity: float = 0.9, rounds: int = 3, rewind: dict | None = None,
                   exclude: tuple[str, ...] = ()) -> tuple[nn.Module, list[dict]]:
    """(the trained ticket, one row per round: sparsity and the train callback's return)."""
    if not isinstance(rounds, int) or rounds < 1:
        raise PassError("lottery", f"rounds={rounds!r} must be a positive integer")
    if not 0.0 <= sparsity < 1.0:
        raise PassError("lottery", f"sparsity={sparsity!r} must be in [0, 1)")
    opts = PruneOptions(sparsity=0.0, exclude=tuple(exclude))
    rewind_state = copy.deepcopy(model.state_dict() if rewind is None else rewind)
    masks: dict[str, torch.Tensor] = {}
    history = []
    for r in range(rounds + 1):
        result = _train_masked(model, masks, train, r)
        history.append({"round": r, "sparsity": sparsity_of(model, exclude), "train": result})
        if r == rounds:
            break
        target = 1.0 - (1.0 - sparsity) ** ((r + 1) / rounds)
        masks = compute_masks(model, opts, target)  # pruned weights are zero: they stay out
        with torch.no_grad():
            model.load_state_dict(rewind_state)
            apply_masks(model, masks)
    return model, history


def _train_masked(model: nn.Module, masks: dict[str, torch.Tensor], train, r: int):
    """Run ``train`` with the masks held: zero before every forward, gradients masked."""
    mods = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        mod = mods[name]

        def pre(module, _inputs, mask=mask):
            with torch.no_grad():
                module.weight.mul_(mask.to(module.weight.dtype))

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.weight.register_hook(lambda g, mask=mask: g * mask.to(g.dtype)))
    try:
        return train(model, r)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            apply_masks(model, masks)
