"""The real pretrained MNIST CNN on MNIST-10k: sparsecc's accuracy equals torch's (to 0.01 %)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo


def _predict(fn, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + batch])).argmax(1)
                           for i in range(0, len(images), batch)])


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [None, 0.9])
def test_mnist_accuracy_equals_torch(sparsity):
    images, labels = zoo.mnist("test")
    assert images.shape == (10000, 1, 28, 28)
    model = zoo.mnist_cnn()
    if sparsity:
        model = sparsecc.prune(model, sparsity)
    cm = sparsecc.compile(model, torch.from_numpy(images[:1]))
    assert cm.native is not None, cm.native_status  # the native library runs it

    def run_torch(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    acc_torch = float((_predict(run_torch, images) == labels).mean())
    pred_sc = _predict(cm, images)
    acc_sc = float((pred_sc == labels).mean())
    print(f"sparsity={sparsity}: torch {acc_torch:.4%} sparsecc {acc_sc:.4%}")
    assert abs(acc_sc - acc_torch) <= 1e-4 + 1e-12
    if sparsity is None:
        assert acc_torch > 0.985, "the pretrained weights did not load as trained"
