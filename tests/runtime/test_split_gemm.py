"""GEMMs split over threads (the dense linear/conv path) against one plain matmul."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sparsecc.runtime import threads as T


@pytest.mark.parametrize("shape", [
    ((16, 1024), (1024, 4096)),  # split by columns
    ((64, 300), (300, 1001)),  # odd column count
    ((8, 40), (40, 50)),  # below the split threshold: one call
    ((64, 576), (3, 576, 800)),  # stacked b: split by samples
    ((64, 576), (1, 576, 3137)),  # one sample: split by columns
])
def test_split_matmul_matches_numpy(seed, shape):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape[0]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    if b.ndim == 2:
        b = np.asfortranarray(b)  # a transposed weight, as the linear op passes it
    ref = np.matmul(a, b)
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            out = np.full(ref.shape, np.nan, np.float32)
            T.split_matmul(a, b, out)()
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_dense_conv_and_linear_split_with_their_epilogues(seed, executor_only, monkeypatch):
    """Dense convs and linears big enough to split (by columns at batch 1, by samples above),
    each piece adding its bias and activation: exact against torch."""
    import torch
    from torch import nn

    import sparsecc
    from tests.conftest import assert_matches

    # >= 2e7 flops each at batch 1: 29.5 M and 26.6 M for the convs; the linear at batch 3
    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 16, 3),
                        nn.Hardswish(), nn.Flatten(), nn.Linear(16 * 38 * 38, 700), nn.GELU(),
                        nn.Linear(700, 10)).eval()
    cm = sparsecc.compile(net, torch.randn(1, 16, 40, 40),
                          recipe={"formats": {"csr_max_density": 0.0}})
    assert {op.attrs.get("fmt") for op in cm.plan.ops if op.kind in ("conv2d", "linear")} \
        == {"dense"}
    real, used = T._gemm_pool, []
    monkeypatch.setattr(T, "_gemm_pool", lambda n: used.append(n) or real(n))
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for batch in (1, 3):
            x = torch.randn(batch, 16, 40, 40)
            with torch.no_grad():
                assert_matches(cm(x), net(x))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        assert len(used) >= 2 + 3, "both convs at batch 1, and both convs + the linear at 3"
