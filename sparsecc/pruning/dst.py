"""Dynamic sparse training: the network is sparse from the first step and its connections move.

    rigl = sparsecc.RigL(model, optimizer, sparsity=0.9, distribution="erk",
                         update_every=100, drop_fraction=0.3, end_step=T)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step(); rigl.step()
    model = rigl.finalize()          # a plain module, exact zeros at the target sparsity

* **RigL** (Evci et al. 2020): every ``update_every`` steps until ``end_step``, each layer drops
  the ``f_t`` fraction of its active weights with the smallest magnitude and grows as many
  inactive ones with the largest dense-gradient magnitude; ``f_t`` anneals from
  ``drop_fraction`` to 0 by a cosine. The dense gradient is kept only on update steps.
* **SET** (Mocanu et al. 2018): the same schedule, grown connections chosen at random.

Grown weights start at zero, and the optimizer's state (momentum, Adam moments) of every weight
that was dropped or grown is reset. Layer densities: ``erk`` (Erdős–Rényi-Kernel: density
proportional to (sum of a weight's dims) / (product of its dims), dense where that exceeds 1)
or ``uniform``; ``dense_first`` keeps the first layer dense (both are scaled so the total
count is exact). Gradients of inactive weights are masked on every step, so each layer holds
exactly its count of nonzeros after every ``step()``.

``rigl.step()`` may be called after ``optimizer.step()``; it also runs by itself from an
optimizer hook, so a training loop that knows nothing of sparsecc (a sweep's) works too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.passes.prune import prunable_layers


def layer_counts(shapes: dict[str, tuple[int, ...]], sparsity: float, distribution: str,
                 dense: set[str] = frozenset(), erk_power: float = 1.0) -> dict[str, int]:
    """Nonzeros per layer so the total is exactly round((1 - sparsity) * all weights)."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    total = sum(sizes.values())
    target = round((1.0 - sparsity) * total)
    dense = set(dense)
    while True:
        free = {k: n for k, n in sizes.items() if k not in dense}
        budget = target - sum(sizes[k] for k in dense)
        if not free or budget <= 0:
            break
        if distribution == "erk":
            raw = {k: (sum(shapes[k]) / sizes[k]) ** erk_power for k in free}
        else:
            raw = {k: 1.0 for k in free}
        eps = budget / sum(raw[k] * n for k, n in free.items())
        over = {k for k in free if eps * raw[k] > 1.0}
        if not over:
            break
        dense |= over  # those layers are dense; share the rest again
    counts = {k: sizes[k] for k in dense}
    if free and budget > 0:
        exact = {k: eps * raw[k] * free[k] for k in free}
        counts.update({k: min(free[k], int(v)) for k, v in exact.items()})
        # largest remainders first until the total is exact
        short = target - sum(counts.values())
        for k in sorted(free, key=lambda k: exact[k] - int(exact[k]), reverse=True):
            if short <= 0:
                break
            if counts[k] < free[k]:
                counts[k] += 1
                short -= 1
    elif budget <= 0:
        raise PassError("rigl", f"sparsity={sparsity} leaves fewer weights than the dense "
                                "layers hold; lower the sparsity or drop dense_first")
    return counts


class DynamicSparse:
    """Shared mechanics of RigL and SET (``grow`` = "gradient" | "random")."""

    grow = "gradient"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sparsity: float = 0.9,
                 distribution: str = "erk", update_every: int = 100, drop_fraction: float = 0.3,
                 end_step: int | None = None, dense_first: bool = False,
                 exclude: tuple[str, ...] = (), init: str = "random", seed: int = 0):
        self._check(sparsity, distribution, update_every, drop_fraction, end_step, init)
        self.model, self.optimizer = model, optimizer
        self.sparsity, self.update_every = float(sparsity), int(update_every)
        self.drop_fraction = float(drop_fraction)
        self.end_step = end_step
        self.gen = torch.Generator().manual_seed(seed)
        self.layers = dict(prunable_layers(model, exclude))
        if not self.layers:
            raise PassError(self._name, "the model has no Conv/Linear weights to make sparse")
        shapes = {k: tuple(m.weight.shape) for k, m in self.layers.items()}
        first = {next(iter(self.layers))} if dense_first else set()
        self.counts = layer_counts(shapes, sparsity, distribution, first)
        self.masks = {k: self._initial_mask(k, init) for k in self.layers}
        self.step_count = 0
        self.updates: list[dict[str, Any]] = []  # per update step: dropped/grown per layer
        self._dense_grads: dict[str, torch.Tensor] = {}
        self._opt_steps = 0
        self._finalized = False
        self._handles = [m.weight.register_hook(self._grad_hook(k))
                         for k, m in self.layers.items()]
        self._handles.append(optimizer.register_step_post_hook(self._after_optimizer))
        self._apply()

    _name = "dynamic-sparse"

    @staticmethod
    def _check(sparsity, distribution, update_every, drop_fraction, end_step, init):
        problems = []
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                or not 0.0 <= sparsity < 1.0:
            problems.append(f"sparsity={sparsity!r} must be in [0, 1)")
        if distribution not in ("erk", "uniform"):
            problems.append(f"distribution={distribution!r} must be 'erk' or 'uniform'")
        if not isinstance(update_every, int) or update_every < 1:
            problems.append(f"update_every={update_every!r} must be a positive integer")
        if not 0.0 <= drop_fraction <= 1.0:
            problems.append(f"drop_fraction={drop_fraction!r} must be in [0, 1]")
        if end_step is not None and (not isinstance(end_step, int) or end_step < 0):
            problems.append(f"end_step={end_step!r} must be a non-negative integer")
        if init not in ("random", "magnitude"):
            problems.append(f"init={init!r} must be 'random' or 'magnitude'")
        if problems:
            raise PassError("rigl", "; ".join(problems))

    # ---- masks --------------------------------------------------------------------------
    def _initial_mask(self, name: str, init: str) -> torch.Tensor:
        w = self.layers[name].weight.detach()
        k = self.counts[name]
        if init == "magnitude":  # from a trained model: keep its largest weights
            score = w.abs().reshape(-1)
        else:
            score = torch.rand(w.numel(), generator=self.gen)
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[torch.topk(score, k, sorted=False).indices] = True
        return mask.reshape(w.shape)

    def _apply(self) -> None:
        with torch.no_grad():
            for k, m in self.layers.items():
                m.weight.mul_(self.masks[k].to(m.weight.dtype))

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if self._is_update(self.step_count + 1) and self.grow == "gradient":
                self._dense_grads[name] = grad.detach().clone()
            return grad * self.masks[name].to(grad.dtype)

        return hook

    def _is_update(self, step: int) -> bool:
        end = self.end_step if self.end_step is not None else math.inf
        return step % self.update_every == 0 and step < end

    def fraction(self, step: int) -> float:
        """The drop fraction at ``step``: cosine-annealed from drop_fraction to 0."""
        if self.end_step is None:
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, self.end_step)
                                                      / max(self.end_step, 1)))

    # ---- stepping -----------------------------------------------------------------------
    def _after_optimizer(self, *_):
        self._opt_steps += 1
        self.step()

    def step(self) -> None:
        """After ``optimizer.step()``: re-apply the masks; on update steps drop and grow."""
        if self._finalized:
            return
        if self._opt_steps and self.step_count >= self._opt_steps:
            return  # the optimizer hook already ran it for this step
        self.step_count += 1
        if self._is_update(self.step_count):
            self._update(self.fraction(self.step_count))
        self._apply()

    def _update(self, frac: float) -> None:
        record = {"step": self.step_count, "fraction": frac, "layers": {}}
        for name, mod in self.layers.items():
            mask, w = self.masks[name].reshape(-1), mod.weight.detach().reshape(-1)
            active = int(mask.sum())
            n = min(int(frac * active), mask.numel() - active)
            if n <= 0:
                continue
            # drop: the n active weights of smallest magnitude
            drop_score = torch.where(mask, w.abs(), torch.full_like(w, math.inf))
            dropped = torch.topk(drop_score, n, largest=False, sorted=False).indices
            new = mask.clone()
            new[dropped] = False
            # grow: n of the weights inactive now (the dropped ones may come back)
            grown = self._grow(name, new, n)
            new[grown] = True
            changed = new ^ mask
            changed[grown] = True  # a regrown dropped weight restarts too
            with torch.no_grad():
                mod.weight.view(-1)[grown] = 0.0
            self._reset_state(mod.weight, changed.reshape(mod.weight.shape))
            self.masks[name] = new.reshape(mod.weight.shape)
            record["layers"][name] = {"dropped": n, "grown": n,
                                      "moved": int((new & ~mask).sum())}
        self._dense_grads.clear()
        self.updates.append(record)

    def _grow(self, name: str, active_after_drop: torch.Tensor, n: int) -> torch.Tensor:
        """n indices among the weights inactive after the drop (RigL's reference also lets a
        just-dropped weight be grown again)."""
        candidates = ~active_after_drop
        if self.grow == "gradient" and name in self._dense_grads:
            score = self._dense_grads[name].reshape(-1).abs()
        else:
            score = torch.rand(candidates.numel(), generator=self.gen)
        score = torch.where(candidates, score, torch.full_like(score, -math.inf))
        return torch.topk(score, n, sorted=False).indices

    def _reset_state(self, p: torch.Tensor, changed: torch.Tensor) -> None:
        state = self.optimizer.state.get(p, {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == p.shape:
                with torch.no_grad():
                    value.masked_fill_(changed, 0.0)

    # ---- results ------------------------------------------------------------------------
    @property
    def density(self) -> dict[str, float]:
        return {k: float(m.float().mean()) for k, m in self.masks.items()}

    @property
    def achieved_sparsity(self) -> float:
        """Zeros over every weight in scope, counted on the weights themselves."""
        zeros = sum(int((m.weight == 0).sum()) for m in self.layers.values())
        return zeros / sum(m.weight.numel() for m in self.layers.values())

    def finalize(self) -> nn.Module:
        """Remove the hooks, apply the masks; the model is plain from here on."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._apply()
        self._finalized = True
        return self.model


class RigL(DynamicSparse):
    """Rigged Lottery: regrow by dense-gradient magnitude (see the module doc)."""

    grow = "gradient"
    _name = "rigl"


class SET(DynamicSparse):
    """Sparse Evolutionary Training: regrow at random (see the module doc)."""

    grow = "random"
    _name = "set"
