"""Shared helpers: fresh random seeds (printed, so a failure can be replayed) and comparisons."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import sparsecc

RTOL, ATOL = 1e-4, 1e-5
# The format pass uses the reference machine's rates in tests even where a user turned the
# calibration on: formats a test asserts must not depend on how fast this machine measured.
os.environ["SPARSECC_CALIBRATE"] = "0"


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test run; set SPARSECC_TEST_SEED to replay one."""
    value = int(os.environ.get("SPARSECC_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={value} (replay with SPARSECC_TEST_SEED={value})")
    torch.manual_seed(value)
    return value


@pytest.fixture
def executor_only(monkeypatch):
    """Compile without the native library: tests of the executor's own machinery (bindings,
    split GEMMs, kernel choices) run through it, as the fallback path does."""
    monkeypatch.setenv("SPARSECC_NATIVE", "0")


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_matches(got, ref, rtol=RTOL, atol=ATOL):
    got, ref = as_tuple(got), as_tuple(ref)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        g = g.detach().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
        r = r.detach().numpy() if isinstance(r, torch.Tensor) else np.asarray(r)
        assert g.shape == r.shape, (g.shape, r.shape)
        assert g.dtype == r.dtype, (g.dtype, r.dtype)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def check_compiled(model: torch.nn.Module, *inputs: torch.Tensor, other_batches=(),
                   make_inputs=None):
    """Compile at ``inputs`` and compare with torch there and at ``other_batches``."""
    model = model.eval()
    cm = sparsecc.compile(model, inputs if len(inputs) > 1 else inputs[0])
    with torch.no_grad():
        assert_matches(cm(*inputs), model(*inputs))
    for b in other_batches:
        xs = make_inputs(b)
        with torch.no_grad():
            assert_matches(cm(*xs), model(*xs))
    return cm
