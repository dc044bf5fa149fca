"""The float32 numba kernels behind attention, softmax, GELU and the layout transposes,
against torch on fresh random inputs (odd and 1-wide shapes, masked and fully masked rows)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import attention as AT
from sparsecc.codegen.numba import norm as N
from sparsecc.codegen.numba import transpose as T


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.integers(1, 2), b=st.integers(1, 3),
       ql=st.integers(1, 20), sl=st.integers(1, 20), d=st.integers(1, 40), e=st.integers(1, 9),
       kind=st.sampled_from(["none", "add", "keep", "causal"]))
def test_fused_attention_matches_torch(seed, a, b, ql, sl, d, e, kind):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((a, b, ql, d)).astype(np.float32) * 2
    k = rng.standard_normal((a, b, sl, d)).astype(np.float32) * 2
    v = rng.standard_normal((a, b, sl, e)).astype(np.float32)
    scale = float(rng.uniform(0.05, 1.0))
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    mask, tmask, mkind = np.zeros((1, 1, 1, 1), np.float32), None, AT.MASK_NONE
    if kind == "add":
        mask = rng.standard_normal((a, 1, ql, sl)).astype(np.float32)
        mask[..., 0, :] = np.finfo(np.float32).min  # HF's "masked" value on a whole row
        tmask, mkind = torch.from_numpy(mask), AT.MASK_ADD
    elif kind == "keep":
        mask = rng.random((1, b, 1, sl)) < 0.7
        tmask, mkind = torch.from_numpy(mask), AT.MASK_KEEP
    out = np.full((a, b, ql, e), np.nan, np.float32)
    AT.sdpa4(q, k, v, np.broadcast_to(mask, (a, b, ql, sl)), mkind, kind == "causal", scale,
             out)
    ref = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask,
                                         is_causal=kind == "causal", scale=scale).numpy()
    # a row with every key masked is 0 in torch's SDPA (not NaN as softmax alone) and here
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 200), d=st.integers(1, 70),
       spread=st.sampled_from([0.1, 1.0, 30.0]))
def test_softmax32_matches_torch(seed, rows, d, spread):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, d)) * spread).astype(np.float32)
    x[rng.random((rows, d)) < 0.1] = -np.inf
    out = np.empty_like(x)
    N.softmax_rows(x, out, False)
    ref = torch.softmax(torch.from_numpy(x), -1).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(out[ok], ref[ok], rtol=1e-4, atol=1e-7)


def test_gelu32_keeps_its_relative_precision_over_the_float_range():
    x = np.concatenate([np.linspace(-13, 13, 200_001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30], np.float32)])
    out = np.empty_like(x)
    A.act_flat(x, out, A.act_code("gelu"), 0.0, 0.0)
    x64 = torch.from_numpy(x.astype(np.float64))
    ref = (0.5 * x64 * torch.special.erfc(-x64 / np.sqrt(2.0))).numpy()
    # relative, down to float32's smallest normal (x = -13: gelu ~ 1e-37); torch's own float32
    # GELU is 100 % off near x = -6, where it flushes to 0
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1.2e-38)
    np.testing.assert_array_equal(np.signbit(out[-6:]), np.signbit(ref[-6:]))
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    A.act_flat(special, special, A.act_code("gelu"), 0.0, 0.0)
    # NaN stays NaN, +inf -> +inf, -inf -> NaN (-inf * 0); torch's float32 GELU gives NaN for both
    np.testing.assert_array_equal(special, [np.nan, np.inf, np.nan])


@given(m=st.integers(1, 100), k=st.integers(1, 100))
@settings(max_examples=25, deadline=None)
def test_blocked_transpose(m, k):
    x = np.random.default_rng(m * 131 + k).standard_normal((m, k)).astype(np.float32)
    out = np.full((k, m), np.nan, np.float32)
    T.transpose_into(x, out)
    np.testing.assert_array_equal(out, x.T)
