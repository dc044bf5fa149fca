"""The gradual 90 % fine-tuning of the MNIST CNN, run once a session: the pruning test scores
it, the int8 test quantises it (1000 steps are ~2 min on an AVX2-only Zen 3)."""

from __future__ import annotations

import copy

import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.finetune import finetune

STEPS = 1000


@pytest.fixture(scope="session")
def gradual_90():
    """(model, seconds): the MNIST CNN pruned to 90 % by a cubic schedule (50 % -> 90 % over
    the first 60 % of STEPS, masks updated 40 times) while fine-tuned for STEPS batches."""
    torch.set_num_threads(2)
    sched = sparsecc.CubicSchedule(0.9, 0.5, end_step=int(STEPS * 0.6), frequency=STEPS // 40)
    model, seconds = finetune(copy.deepcopy(zoo.mnist_cnn()), *zoo.mnist("train"), STEPS,
                              lr=5e-4, lr_final=5e-5,
                              pruner_factory=lambda m, opt: sparsecc.Pruner(m, sched, opt))
    return model, seconds
