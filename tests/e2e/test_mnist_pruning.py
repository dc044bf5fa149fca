"""Pruning keeps accuracy on the real MNIST CNN, scored on MNIST-10k (issue targets).

- one-shot global magnitude at 50 %: loses <= 0.2 points;
- gradual pruning to 90 % with 1000 fine-tuning steps (~1 min on 2 cores): loses <= 0.5 points;
- 2:4 with the same budget: loses <= 0.5 points;
and the compiled sparse model scores exactly what the pruned torch model scores.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.finetune import accuracy, finetune
from sparsecc.passes.prune import prunable_layers, sparsity_of
from sparsecc.pruning.masks import nm_view
from tests.e2e.conftest import STEPS  # (the gradual 90 % run's; 2:4 takes the same)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    test = zoo.mnist("test")
    train = zoo.mnist("train")
    base = zoo.mnist_cnn()
    return base, accuracy(base, *test), test, train


def _compiled_accuracy(model, images, labels) -> float:
    cm = sparsecc.compile(model, torch.from_numpy(images[:1]))
    preds = np.concatenate([cm(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return float((preds == labels).mean())


@pytest.mark.slow
def test_one_shot_50(data):
    base, acc0, test, _ = data
    pruned = sparsecc.prune(base, 0.5)
    acc = accuracy(pruned, *test)
    print(f"dense {acc0:.4f}, one-shot 50 %: {acc:.4f}")
    assert acc0 - acc <= 0.002


@pytest.mark.slow
def test_gradual_90(data, gradual_90):
    """(the fine-tuning: tests/e2e/conftest.py, shared with the int8 test)"""
    _, acc0, test, _ = data
    model, seconds = gradual_90
    acc = accuracy(model, *test)
    print(f"dense {acc0:.4f}, gradual 90 %: {acc:.4f} after {STEPS} steps in {seconds:.1f} s")
    assert abs(sparsity_of(model) - 0.9) <= 1e-3
    assert acc0 - acc <= 0.005
    assert _compiled_accuracy(model, *test) == acc


@pytest.mark.slow
def test_two_four(data):
    base, acc0, test, train = data
    sched = sparsecc.CubicSchedule(0.5)
    model, seconds = finetune(copy.deepcopy(base), *train, STEPS, lr=5e-4, lr_final=5e-5,
                              pruner_factory=lambda m, opt: sparsecc.Pruner(m, sched, opt,
                                                                            pattern="2:4"))
    acc = accuracy(model, *test)
    print(f"dense {acc0:.4f}, 2:4: {acc:.4f} after {STEPS} steps in {seconds:.1f} s")
    for _, mod in prunable_layers(model):
        w = nm_view(mod.weight.detach())
        for g in range(0, w.shape[1], 4):
            assert int((w[:, g:g + 4] != 0).sum(1).max()) <= 2
    assert acc0 - acc <= 0.005


@pytest.mark.slow
def test_rigl_from_scratch_90(data):
    """RigL at 90 % (ERK) trains the MNIST CNN from a random initialisation to >= 98.8 % on
    MNIST-10k (2000 steps: ~130 s on 2 cores here, 99.0 %; 1500 steps reach 98.8 %, 3000
    took ~185 s; bench/sparse_training_mnist.py compares it with SET and gradual pruning)."""
    _, _, test, train = data
    steps = 2000
    model = zoo.mnist_cnn(pretrained=False, seed=0)
    model, seconds = finetune(
        model, *train, steps, lr=2e-3, lr_final=1e-5,
        pruner_factory=lambda m, opt: sparsecc.RigL(m, opt, sparsity=0.9, distribution="erk",
                                                    update_every=100, drop_fraction=0.3,
                                                    end_step=int(0.75 * steps)))
    acc = accuracy(model, *test)
    print(f"RigL 90 % from scratch: {acc:.4f} after {steps} steps in {seconds:.1f} s")
    assert abs(sparsity_of(model) - 0.9) <= 1e-3
    assert acc >= 0.988
