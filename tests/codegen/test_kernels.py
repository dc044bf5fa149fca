"""Numba kernels against dense numpy / torch references over random shapes (Hypothesis).

Shapes include 1-wide dims, empty rows, all-zero and fully dense matrices, every epilogue.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import conv as C
from sparsecc.codegen.numba import norm as N
from sparsecc.codegen.numba import sparse as S
from sparsecc.formats.csr import dense_to_csr

ACTS = {
    "none": lambda x: x, "relu": F.relu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid, "leaky_relu": lambda x: F.leaky_relu(x, 0.3),
    "elu": lambda x: F.elu(x, 0.3), "clamp": lambda x: x.clamp(-0.5, 0.7),
}
ACT_PARAMS = {"leaky_relu": (0.3, 0.0), "elu": (0.3, 0.0), "clamp": (-0.5, 0.7)}


def _act_ref(name, y):
    """In float64: torch's float32 GELU itself is off by up to ~1e-7 absolute in the negative
    tail (1 + erf cancels), more than our tolerance on values of ~1e-3."""
    return ACTS[name](torch.from_numpy(y.astype(np.float64))).numpy().astype(np.float32)


def _sparse_matrix(rng, rows, cols, density, empty_rows):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.random((rows, cols)) < density
    if empty_rows and rows:
        w[rng.random(rows) < 0.3] = 0.0
    return w


matrix = dict(rows=st.integers(1, 33), cols=st.integers(1, 40),
              density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), empty_rows=st.booleans(),
              seed=st.integers(0, 2**31), act=st.sampled_from(sorted(ACTS)),
              with_bias=st.booleans())


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 9), nb=st.integers(1, 3), **matrix)
def test_csr_spmm(rows, cols, density, empty_rows, seed, act, with_bias, m, nb):
    rng = np.random.default_rng(seed)
    w = _sparse_matrix(rng, rows, cols, density, empty_rows)
    b = rng.standard_normal((nb, cols, m)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    out = np.full((nb, rows, m), np.nan, np.float32)
    a_, b_ = ACT_PARAMS.get(act, (0.0, 0.0))
    S.csr_spmm(*dense_to_csr(w), b, out, bias, with_bias, A.act_code(act), a_, b_)
    ref = w @ b + (bias[:, None] if with_bias else 0)
    np.testing.assert_allclose(out, _act_ref(act, ref.astype(np.float32)), rtol=1e-4, atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 5), **matrix)
def test_csr_spmv_rows(rows, cols, density, empty_rows, seed, act, with_bias, m):
    rng = np.random.default_rng(seed)
    w = _sparse_matrix(rng, rows, cols, density, empty_rows)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    out = np.full((m, rows), np.nan, np.float32)
    a_, b_ = ACT_PARAMS.get(act, (0.0, 0.0))
    S.csr_spmv_rows(*dense_to_csr(w), x, out, bias, with_bias, A.act_code(act), a_, b_)
    ref = x @ w.T + (bias if with_bias else 0)
    np.testing.assert_allclose(out, _act_ref(act, ref.astype(np.float32)), rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), act=st.sampled_from(sorted(ACTS)),
       rows=st.integers(1, 20), cols=st.integers(1, 20), with_bias=st.booleans())
def test_epilogues(seed, act, rows, cols, with_bias):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((rows, cols)) * 4).astype(np.float32)
    bias = rng.standard_normal(max(rows, cols)).astype(np.float32)
    a_, b_ = ACT_PARAMS.get(act, (0.0, 0.0))
    code = A.act_code(act)
    r = y.copy()
    A.bias_act_rows(r, bias, with_bias, rows, code, a_, b_)
    ref_r = _act_ref(act, y + (bias[:rows, None] if with_bias else 0))
    np.testing.assert_allclose(r, ref_r, rtol=1e-5, atol=1e-6)
    c = y.copy()
    A.bias_act_cols(c, bias, with_bias, code, a_, b_)
    ref_c = _act_ref(act, y + (bias[None, :cols] if with_bias else 0))
    np.testing.assert_allclose(c, ref_c, rtol=1e-5, atol=1e-6)
    flat = np.empty(y.size, np.float32)
    A.act_flat(y.ravel(), flat, code, a_, b_)
    np.testing.assert_allclose(flat, _act_ref(act, y).ravel(), rtol=1e-5, atol=1e-6)
    inplace = y.ravel().copy()
    A.act_flat(inplace, inplace, code, a_, b_)
    np.testing.assert_array_equal(inplace, flat)
    # rows `stride` apart in one flat buffer (a padded features x batch buffer): the padding
    # between rows stays untouched
    stride = cols + 3
    padded = np.full(rows * stride, 7.0, np.float32)
    for i in range(rows):
        padded[i * stride:i * stride + cols] = y[i]
    A.act_padded_rows(padded[:(rows - 1) * stride + cols], rows, cols, stride, code, a_, b_)
    as_rows = padded.reshape(rows, stride)
    np.testing.assert_array_equal(as_rows[:, :cols], flat.reshape(rows, cols))
    assert (as_rows[:, cols:] == 7.0).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), act=st.sampled_from(sorted(ACTS)),
       fn=st.sampled_from(sorted(A.BINARY_CODES)),
       n=st.sampled_from([1, 2, 7, 4095, 4096, 4097, 9000]),
       alias=st.sampled_from(["none", "x", "y"]))
def test_binary_act(seed, act, fn, n, alias):
    """x (+|-|*) y then the activation, in 4096-float chunks over both cores; out may be x or
    y (a buffer the executor reuses)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    y = (rng.standard_normal(n) * 3).astype(np.float32)
    op = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[fn]
    ref = _act_ref(act, op(x, y))
    a_, b_ = ACT_PARAMS.get(act, (0.0, 0.0))
    out = {"none": np.full(n, np.nan, np.float32), "x": x, "y": y}[alias]
    A.binary_act(x, y, out, A.BINARY_CODES[fn], A.act_code(act), a_, b_)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 2),
       dil=st.integers(1, 2))
def test_im2col_matches_unfold(seed, c, h, w, k, stride, pad, dil):
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    if ho < 1 or wo < 1:
        return
    x = np.random.default_rng(seed).standard_normal((2, c, h, w)).astype(np.float32)
    cols = np.full((2, c * k * k, ho * wo), np.nan, np.float32)
    C.im2col(x, 0, c, k, k, stride, stride, pad, pad, dil, dil, wo, cols)
    ref = F.unfold(torch.from_numpy(x), k, dilation=dil, padding=pad, stride=stride).numpy()
    np.testing.assert_array_equal(cols, ref)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 3), h=st.integers(1, 11),
       w=st.integers(1, 11), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), extra=st.integers(0, 2))
def test_phase_planes(seed, c, h, w, sh, sw, ph, pw, extra):
    """Polyphase planes against slices of the zero-padded input, every phase, strides 1-3,
    padding wider than the input, planes larger than the padded input needs (zero beyond):
    the strided copy computes its in-bounds column range instead of testing each element."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    pys, pxs = np.arange(sh, dtype=np.int64), np.arange(sw, dtype=np.int64)
    hq = -(-(h + 2 * ph) // sh) + extra
    wq = -(-(w + 2 * pw) // sw) + extra
    out = np.full((2, c * sh * sw, hq * wq), np.nan, np.float32)
    C.phase_planes(x, ph, pw, sh, sw, pys, pxs, hq, wq, out)
    big = np.zeros((2, c, hq * sh + sh, wq * sw + sw), np.float32)
    big[:, :, ph:ph + h, pw:pw + w] = x
    ref = np.stack([big[:, :, py::sh, px::sw][:, :, :hq, :wq]
                    for py in range(sh) for px in range(sw)], axis=2)
    np.testing.assert_array_equal(out.reshape(2, c, sh * sw, hq, wq), ref)

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 4), mult=st.integers(1, 2),
       h=st.integers(1, 20), w=st.integers(1, 20), kh=st.integers(1, 3), kw=st.integers(1, 5),
       sh=st.integers(1, 3), sw=st.integers(1, 2), ph=st.integers(0, 2), pw=st.integers(0, 1),
       dh=st.integers(1, 2), dw=st.integers(1, 2), bias=st.booleans(),
       act=st.sampled_from(["none", "relu", "clamp", "gelu"]),
       keep=st.sampled_from([1.0, 0.7, 0.2, 0.0]))
def test_depthwise(seed, c, mult, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, act, keep):
    _depthwise_case(seed, c, mult, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, act, keep)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 3), mult=st.integers(1, 2),
       h=st.integers(1, 20), w=st.integers(1, 20), sh=st.integers(1, 2), sw=st.integers(1, 3),
       ph=st.integers(0, 1), pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2),
       bias=st.booleans(), act=st.sampled_from(["none", "relu", "clamp", "gelu"]),
       keep=st.sampled_from([1.0, 0.7, 0.2, 0.0]))
def test_depthwise_3x3(seed, c, mult, h, w, sh, sw, ph, pw, dh, dw, bias, act, keep):
    """3x3 has its own kernel path (all nine taps in one pass, for >= 5 nonzero taps); pruned
    weights (``keep`` of the taps nonzero) skip zero taps and the phases only they read."""
    _depthwise_case(seed, c, mult, h, w, 3, 3, sh, sw, ph, pw, dh, dw, bias, act, keep)


def _depthwise_case(seed, c, mult, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, act, keep=1.0):
    if h + 2 * ph < (kh - 1) * dh + 1 or w + 2 * pw < (kw - 1) * dw + 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * mult, 1, kh, kw)).astype(np.float32)
    wt *= rng.random(wt.shape) < keep  # pruned: some channels keep no tap at all
    bv = rng.standard_normal(c * mult).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                   torch.from_numpy(bv) if bias else None, (sh, sw), (ph, pw), (dh, dw), c)
    out = np.full(tuple(ref.shape), np.nan, np.float32)
    a_, b_ = ACT_PARAMS.get(act, (0.0, 0.0))
    C.depthwise_conv2d(x, wt.reshape(c * mult, kh, kw), bv, bias, sh, sw, ph, pw, dh, dw,
                       A.act_code(act), a_, b_, out)
    np.testing.assert_allclose(out, _act_ref(act, ref.numpy()), rtol=1e-4, atol=1e-5)


def test_depthwise_strided_arrays():
    """x and out as strided views (every other channel): the kernel's flat planes need
    contiguous arrays, so these go through copies; same result as contiguous ones."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)[:, ::2]
    wt = rng.standard_normal((4, 3, 3)).astype(np.float32) * (rng.random((4, 3, 3)) < 0.3)
    bv = rng.standard_normal(4).astype(np.float32)
    big = np.full((2, 8, 9, 9), np.nan, np.float32)
    C.depthwise_conv2d(xs, wt, bv, True, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, big[:, ::2])
    ref = F.conv2d(torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(wt[:, None]),
                   torch.from_numpy(bv), 1, 1, 1, 4).numpy()
    np.testing.assert_allclose(big[:, ::2], ref, rtol=1e-4, atol=1e-5)
    assert np.isnan(big[:, 1::2]).all()  # the other channels untouched


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), d=st.integers(1, 40),
       log=st.booleans())
def test_softmax_and_layer_norm(seed, rows, d, log):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, d)) * 5).astype(np.float32)
    out = np.empty_like(x)
    N.softmax_rows(x, out, log)
    t = torch.from_numpy(x)
    ref = (t.log_softmax(-1) if log else t.softmax(-1)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    wv, bv = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    N.layer_norm_rows(x, wv, bv, True, True, 1e-5, out)
    ref = F.layer_norm(t, (d,), torch.from_numpy(wv), torch.from_numpy(bv)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 2), c=st.integers(1, 3),
       h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       ceil=st.booleans(), nans=st.booleans())
def test_max_pool2d(seed, n, c, h, w, kh, kw, sh, sw, dh, dw, ceil, nans):
    """Separable max pooling against torch: padding, dilation, ceil mode, NaN propagation."""
    from hypothesis import assume

    from sparsecc.codegen.numba import pool as P

    rng = np.random.default_rng(seed)
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    assume((kh - 1) * dh + 1 <= h + 2 * ph and (kw - 1) * dw + 1 <= w + 2 * pw)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if nans:
        x[rng.random(x.shape) < 0.05] = np.nan
        x[rng.random(x.shape) < 0.05] = -np.inf
    ref = F.max_pool2d(torch.from_numpy(x), (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                       ceil_mode=ceil).numpy()
    out = np.full(ref.shape, 7.0, np.float32)
    P.max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out)
    np.testing.assert_array_equal(out, ref)
