"""A small supervised fine-tuning loop for pruned classifiers (MNIST CNN in tests and bench).

Kept deliberately plain: Adam, cross-entropy, random mini-batches, a step budget, and an
optional ``Pruner`` whose masks follow the optimizer. Returns the wall time it took.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = model(torch.from_numpy(images[i:i + batch]))
            correct += int((out.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int,
             lr: float = 3e-4, batch: int = 128, seed: int = 0, pruner_factory=None,
             lr_final: float | None = None) -> tuple[nn.Module, float]:
    """Train ``model`` in place for ``steps`` mini-batches; ``pruner_factory(model, opt)`` may
    attach a Pruner (it is finalized at the end). Returns (model, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = None
    if lr_final is not None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr_final)
    pruner = pruner_factory(model, opt) if pruner_factory else None
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    seconds = time.perf_counter() - t0
    if pruner is not None:
        model = pruner.finalize()
    return model.eval(), seconds


# ---- the MNIST task as sweep callbacks (sparsecc sweep sparsecc.zoo:mnist_cnn --metric
# sparsecc.finetune:mnist_accuracy --train sparsecc.finetune:mnist_train) --------------------
@functools.cache
def _mnist(split: str):
    from sparsecc import zoo

    return zoo.mnist(split)


def mnist_accuracy(model: nn.Module) -> float:
    """Top-1 accuracy on MNIST-10k (the real test set)."""
    return accuracy(model, *_mnist("test"))


def mnist_train(model: nn.Module, steps: int, on_optimizer=None) -> nn.Module:
    """Fine-tune on MNIST-60k for ``steps`` batches of 128 (Adam, 5e-4 cosine to 5e-5, seed 0);
    ``on_optimizer(model, optimizer)`` attaches a Pruner / RigL / SET (a sweep's)."""
    out, _ = finetune(model, *_mnist("train"), steps, lr=5e-4, lr_final=5e-5,
                      pruner_factory=on_optimizer)
    return out
