"""Sparse linear layers at token counts whose features x batch rows get padded (m a multiple
of 32, >= 64) and at ones that do not, with activations that run fused and as a separate pass
(GELU), chained (hand-over in features x batch) and not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.runtime.ops.sparse import kn_stride
from tests.conftest import assert_matches


def test_kn_stride_pads_only_power_of_two_like_rows():
    assert kn_stride(1) == 1 and kn_stride(16) == 16 and kn_stride(50) == 50
    assert kn_stride(64) == 80 and kn_stride(2048) == 2064 and kn_stride(96) == 112


@pytest.mark.parametrize("tokens", [1, 7, 64, 96, 128])
@pytest.mark.parametrize("backend", ["llvm", "numba"])
def test_sparse_mlp_block_matches_torch(tokens, backend, seed):
    model = nn.Sequential(nn.Linear(48, 160), nn.GELU(), nn.Linear(160, 48), nn.ReLU(),
                          nn.Linear(48, 33), nn.GELU()).eval()
    model = sparsecc.prune(model, 0.8)
    x = torch.randn(2, tokens, 48)
    cm = sparsecc.compile(model, x, recipe={"formats": {"backend": backend}})
    with torch.no_grad():
        assert_matches(cm(x), model(x))
        y = torch.randn(3, tokens, 48)
        assert_matches(cm(y), model(y))
