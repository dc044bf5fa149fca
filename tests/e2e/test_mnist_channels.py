"""Structured removal on the real MNIST CNN: 30 % of channels gone, <= 1 min of fine-tuning,
at most 0.5 points lost on MNIST-10k; the smaller model compiles and scores the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.finetune import accuracy, finetune


@pytest.mark.slow
def test_mnist_30_percent_channels():
    torch.set_num_threads(2)
    test, train = zoo.mnist("test"), zoo.mnist("train")
    base = zoo.mnist_cnn()
    acc0 = accuracy(base, *test)
    small = sparsecc.remove_channels(base, torch.from_numpy(test[0][:2]), ratio=0.3)
    r = small.channel_report
    assert r.params_after < 0.6 * r.params_before
    acc_cut = accuracy(small, *test)
    small, seconds = finetune(small, *train, steps=600, lr=5e-4, lr_final=5e-5)
    acc = accuracy(small, *test)
    print(f"dense {acc0:.4f}; 30 % channels removed: {acc_cut:.4f} before, {acc:.4f} after "
          f"600 steps ({seconds:.1f} s); params {r.params_before:,} -> {r.params_after:,}")
    assert acc0 - acc <= 0.005
    cm = sparsecc.compile(small, torch.from_numpy(test[0][:1]))
    preds = np.concatenate([cm(test[0][i:i + 1000]).argmax(1) for i in range(0, 10000, 1000)])
    assert float((preds == test[1]).mean()) == acc
