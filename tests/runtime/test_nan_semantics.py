"""NaN and +-inf through every activation, fused epilogue and pooling, as torch computes them,
and the same answer at batch 1 and batch 4 (the batch-1 kernels differ from the others)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import sparsecc

ACTS = {
    "relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardtanh": nn.Hardtanh(-0.5, 0.5),
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"), "silu": nn.SiLU(), "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(), "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(),
    "leaky_relu": nn.LeakyReLU(0.1), "elu": nn.ELU(),
}


def poisoned(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """``x`` with a NaN, a +inf and a -inf at random places (and huge values)."""
    flat = x.reshape(-1).clone() * 50
    idx = rng.choice(flat.numel(), 3, replace=False)
    flat[idx[0]], flat[idx[1]], flat[idx[2]] = float("nan"), float("inf"), -float("inf")
    return flat.reshape(x.shape)


def same_special(got: np.ndarray, ref: np.ndarray) -> None:
    """NaN exactly where the reference has NaN, infinities equal, finite values close."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-4, atol=1e-3)


def torch_reference(name, act, x):
    with torch.no_grad():
        y = act(x)
    if name in ("gelu", "gelu_tanh", "silu", "hardswish"):
        # torch's CPU kernels return NaN for gelu(+inf); x * Phi(x) at +inf is +inf, which is
        # what sparsecc gives (the one place it differs, and it is documented)
        y = torch.where(torch.isposinf(x), x, y)
    return y.numpy()


@pytest.mark.parametrize("name", sorted(ACTS))
@pytest.mark.parametrize("backend", ["llvm", "numba"])
def test_dense_linear_and_conv(name, backend, rng):
    act = ACTS[name]
    recipe = {"formats": {"backend": backend}}
    lin = nn.Sequential(nn.Linear(16, 24)).eval()
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()
    for model, shape in ((lin, (16,)), (conv, (3, 6, 6))):
        full = nn.Sequential(model, act).eval()
        cm = sparsecc.compile(full, torch.randn(1, *shape), recipe=recipe)
        for batch in (1, 4):
            x = poisoned(torch.randn(batch, *shape), rng)
            with torch.no_grad():
                pre = model(x)
            same_special(cm(x.numpy()), torch_reference(name, act, pre))


@pytest.mark.parametrize("name", ["relu", "relu6", "hardtanh", "leaky_relu", "gelu"])
@pytest.mark.parametrize("backend", ["llvm", "numba"])
def test_sparse_linear_against_scipy(name, backend, rng):
    """A sparse layer skips absent weights (as scipy.sparse and torch.sparse do), so a NaN in
    the input reaches only the outputs with a stored weight on it; the fused epilogue then
    behaves as torch's activation, at batch 1 (SpMV) and batch 4 (SpMM) alike."""
    act = ACTS[name]
    lin = sparsecc.prune(nn.Linear(32, 40), 0.8).eval()
    cm = sparsecc.compile(nn.Sequential(lin, act).eval(), torch.randn(1, 32),
                          recipe={"formats": {"backend": backend, "force": "csr"}})
    w = sp.csr_matrix(lin.weight.detach().numpy())
    b = lin.bias.detach().numpy()
    for batch in (1, 4):
        x = poisoned(torch.randn(batch, 32), rng)
        pre = (w @ x.numpy().T).T + b
        same_special(cm(x.numpy()), torch_reference(name, act, torch.from_numpy(pre)))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_and_residual_relu(mode, rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2) if mode == "max" else nn.AvgPool2d(2)

        def forward(self, x):
            return torch.relu(self.pool(x) + self.pool(-x) * 0.5)

    net = Net().eval()
    cm = sparsecc.compile(net, torch.randn(1, 2, 6, 6))
    for batch in (1, 4):
        x = poisoned(torch.randn(batch, 2, 6, 6), rng)
        with torch.no_grad():
            ref = net(x).numpy()
        same_special(cm(x.numpy()), ref)
