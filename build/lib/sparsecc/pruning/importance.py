"""Importance scores per weight: magnitude, random, first-order Taylor |w * dL/dw|.

Already-zero weights score lowest under every method, so pruning a pruned model again at the
same target changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sparsecc.errors import PassError


def magnitude(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: w.detach().abs() for k, w in weights.items()}


def random(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, w in weights.items():
        r = torch.rand(w.shape, generator=gen, dtype=torch.float64)
        out[k] = torch.where(w.detach() == 0, -1.0, r)
    return out


def taylor(model: nn.Module, names: list[str], calibration: Iterable[Any] | None,
           loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Sum over calibration batches of |w * dL/dw| (Molchanov et al., 2019), per weight."""
    if calibration is None or loss_fn is None:
        raise PassError("prune", "method='taylor' needs calibration batches and a loss_fn "
                                 "(loss_fn(model, batch) -> scalar loss)")
    mods = dict(model.named_modules())
    params = {n: mods[n].weight for n in names}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for batch in calibration:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise PassError("prune", "loss_fn must return a scalar tensor")
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += (p.detach() * p.grad).abs().double()
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if batches == 0:
        raise PassError("prune", "method='taylor' got an empty calibration set")
    return acc
