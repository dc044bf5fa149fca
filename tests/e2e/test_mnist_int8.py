"""int8 + sparsity keeps accuracy on the real MNIST CNN, scored on MNIST-10k (issue #20):
one-shot 50 % and gradual 90 % (the pruning tests' recipe), each compiled in float32 and in
int8 (every conv and linear layer, calibrated on 8 training batches): within 0.3 points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    return zoo.mnist_cnn(), zoo.mnist("test"), zoo.mnist("train")


def _accuracy(cm, images, labels) -> float:
    preds = np.concatenate([cm(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return float((preds == labels).mean())


def _both(model, test, train):
    x0 = torch.from_numpy(test[0][:1])
    rng = np.random.default_rng(0)
    cal = [torch.from_numpy(train[0][rng.choice(len(train[0]), 128, replace=False)])
           for _ in range(8)]
    f32 = sparsecc.compile(model, x0)
    q8 = sparsecc.compile(model, x0, quantize="int8", calibration=cal,
                          recipe={"quantize": {"min_macs_per_input": 0.0, "direct_max_k": 0}})
    kinds = [op.kind for op in q8.plan.ops if op.kind in ("conv2d", "linear", "qconv2d",
                                                          "qlinear")]
    assert kinds and all(k.startswith("q") for k in kinds), kinds
    assert q8.native is not None, q8.native_status
    return _accuracy(f32, *test), _accuracy(q8, *test)


@pytest.mark.slow
def test_int8_one_shot_50(data):
    base, test, train = data
    a32, a8 = _both(sparsecc.prune(base, 0.5), test, train)
    print(f"one-shot 50 %: float32 {a32:.4f}, int8 {a8:.4f}")
    assert a32 - a8 <= 0.003


@pytest.mark.slow
def test_int8_gradual_90(data, gradual_90):
    _, test, train = data
    a32, a8 = _both(gradual_90[0], test, train)
    print(f"gradual 90 %: float32 {a32:.4f}, int8 {a8:.4f}")
    assert a32 - a8 <= 0.003
