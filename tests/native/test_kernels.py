"""The native library's kernels against numpy/torch: the GEMM at odd shapes, and the ops whose
native lowering has cases the zoo does not reach (broadcasts, strides, dtypes, empty rows)."""

from __future__ import annotations

import ctypes
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from llvmlite import ir

import sparsecc
from sparsecc.codegen.llvm import emit as E
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.formats.csr import dense_to_csr
from sparsecc.native import gemm as G
from sparsecc.native import gmean as GM
from sparsecc.native import phase as PH
from sparsecc.native import pool2 as PL2
from tests.conftest import assert_matches

_HASWELL = jit.Host("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,"
                               "-avx512f,-avx512bw,-avx512dq,-avx512vl")  # AVX2, no AVX-512


def _gemm_fn(spec: G.GemmSpec):
    mod = ir.Module("gemm_test")
    G.emit_gemm(mod, "g", spec)
    addr = jit.load_object(jit.compile_ir(ES.module_text(mod)), ["g"])["g"]
    return ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(addr)


@pytest.mark.parametrize("bias", ["none", "row", "col"])
@pytest.mark.parametrize("act", ["none", "relu", "clamp"])
@pytest.mark.parametrize("residual", [False, True])
def test_gemm_odd_shapes(bias, act, residual, rng):
    spec = G.GemmSpec(jit.host().vector_width, bias, act, -0.5 if act == "clamp" else 0.0,
                      0.75 if act == "clamp" else 0.0, residual)
    f = _gemm_fn(spec)
    for M, N, K in [(1, 1, 1), (1, 8, 8), (6, 32, 1), (7, 33, 3), (13, 100, 70), (2, 5, 0),
                    (32, 784, 9), (12, 64, 130)]:
        batch = 2
        A = rng.standard_normal((batch, M, K)).astype(np.float32)
        B = rng.standard_normal((batch, K, N)).astype(np.float32)
        B[:, :, :1] = 0.0  # an all-zero output column
        bvec = rng.standard_normal(max(M, N)).astype(np.float32)
        C = np.full((batch, M, N), np.nan, np.float32)
        R = rng.standard_normal((batch, M, N)).astype(np.float32)
        tm, tn = -(-M // G.MR), -(-N // spec.nr)
        args = np.array([A.ctypes.data, B.ctypes.data, C.ctypes.data, bvec.ctypes.data, M, N,
                         K, K, N, N, M * K, K * N, M * N, batch, batch, 0, tm, tn,
                         R.ctypes.data], np.int64)
        f(0, batch * tm * tn, args.ctypes.data)
        ref = A @ B
        if bias == "row":
            ref = ref + bvec[:M, None]
        elif bias == "col":
            ref = ref + bvec[:N]
        if residual:
            ref = ref + R
        if act == "relu":
            ref = np.maximum(ref, 0)
        elif act == "clamp":
            ref = np.clip(ref, -0.5, 0.75)
        np.testing.assert_allclose(C, ref, rtol=1e-4, atol=1e-5, err_msg=f"{M}x{N}x{K}")


class Ops(torch.nn.Module):
    """Broadcasting binaries (float and int compares), where, casts, reductions, slices with
    steps, permutes, cat/stack/expand, softmax/log_softmax over the last axis, matmul (batched
    and with a shared operand), unary math."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(5, 5))

    def forward(self, x, ids):
        a = torch.relu(x[:, 1:, ::2] * 2.0 - x[:, :1, 1::2])  # (N, 4, 3)
        b = torch.maximum(a, x[:, :4, :3].mean(dim=1, keepdim=True))
        keep = ids != 3
        c = torch.where(keep[:, :, None], b, torch.tensor(-1.5))
        d = torch.cat([c, c.permute(0, 2, 1).reshape(c.shape[0], 4, 3)], dim=2)
        e = torch.stack([d, d * 0.5], dim=1).sum(dim=(1, 3))
        f = torch.log_softmax(d, dim=-1) + torch.softmax(d, dim=-1)
        g = (ids > 2).float() + keep.to(torch.float32)
        h = torch.matmul(x, x.transpose(1, 2)) + x[:, :, :5] @ self.w  # batched and shared B
        u = torch.exp(-x.abs()) + torch.rsqrt(x * x + 1.0) + torch.sin(x)
        return e, f, g, x.amax(dim=2), h, u


def test_odd_ops_match_torch(seed):
    model = Ops().eval()
    x = torch.randn(2, 5, 6)
    ids = torch.randint(0, 6, (2, 4))
    cm = sparsecc.compile(model, (x, ids))
    assert cm.native is not None, cm.native_status
    for batch in (1, 3, 8):
        xb, ib = torch.randn(batch, 5, 6), torch.randint(0, 6, (batch, 4))
        with torch.no_grad():
            assert_matches(cm(xb, ib), model(xb, ib))


def test_one_wide_and_empty_rows(seed):
    """1-wide dims everywhere, and a layer whose rows are all zero (empty CSR rows)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(9, 1), torch.nn.Linear(1, 7),
                                torch.nn.Linear(7, 5))
    with torch.no_grad():
        model[5].weight[1:4] = 0.0
    model = sparsecc.prune(model, 0.5, scope="layer")
    cm = sparsecc.compile(model, torch.randn(1, 1, 3, 3))
    assert cm.native is not None, cm.native_status
    for batch in (1, 2, 9):
        x = torch.randn(batch, 1, 3, 3)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


def test_all_zero_layer(seed):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight.zero_()
    model = sparsecc.prune(model, 0.9, scope="layer")
    cm = sparsecc.compile(model, torch.randn(1, 16))
    assert cm.native is not None, cm.native_status
    for batch in (1, 5):
        x = torch.randn(batch, 16)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


class _EmptyBlock(torch.nn.Module):
    """A ResNet basic block whose pruning left the 3x3 convs without a weight (global
    magnitude pruning of a random ResNet-18 empties layer4): their outputs are the bias,
    through the relu and the residual add."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 8, 1, stride=2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.c1(x))
        return torch.relu(self.c2(y) + self.down(x))


def test_all_zero_sparse_convs(seed):
    model = _EmptyBlock().eval()
    with torch.no_grad():
        model.c1.weight.zero_()
        model.c2.weight.zero_()
        model.c1.bias.normal_()
        model.c2.bias.normal_()
    model = sparsecc.prune(model, 0.5, scope="layer")
    cm = _native_csr(model, torch.randn(1, 3, 9, 9))
    rep = str(cm.report(measure=False))
    assert rep.count("no weights: bias only") == 2, rep
    for batch in (1, 4):
        x = torch.randn(batch, 3, 9, 9)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("host", [None, "haswell"])
@pytest.mark.parametrize("keep", [1.0, 0.5, 0.1])
def test_wide_band_depthwise(seed, monkeypatch, host, keep):
    """A depthwise conv at stride 1 over 112 x 112 planes: with AVX2 a row's 14 vectors are
    a band of two groups of accumulators, computed one after the other (dwsmall.BAND_GROUPS),
    where the layer keeps >= WIDE_BAND_TAPS taps a channel (all 9, about half); with ~1 the
    numba kernel adds each tap straight from x into out. Against torch at batches 1 and 2."""
    if host:
        monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    c = 6
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, 1, 1, groups=c),
                                torch.nn.ReLU6()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) < keep).float())
        model[0].weight[0] = 0.0  # (a channel its bias alone)
    cm = sparsecc.compile(model, torch.randn(1, c, 112, 112))
    assert cm.native is not None, cm.native_status
    kernel = cm.report(measure=False).rows[0]["kernel"]
    assert kernel.startswith("native depthwise"), kernel
    vw = jit.host().vector_width
    assert ("registers" in kernel) == (vw == 16 or keep >= 0.5), kernel
    for batch in (1, 2):
        x = torch.randn(batch, c, 112, 112) * 4
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("stride,dil,hw", [(1, 1, 7), (1, 1, 14), (1, 1, 20), (1, 1, 28),
                                            (1, 1, 29), (1, 1, 56), (1, 2, 40), (1, 1, 33),
                                            (2, 1, 9), (1, 2, 8), (2, 1, 1), (1, 1, 1),
                                            (2, 1, 112), (2, 1, 14), (2, 2, 29), (3, 1, 20)])
def test_pruned_depthwise_native(seed, stride, dil, hw):
    """Pruned depthwise convs in registers: at stride 1 whole planes (one group of
    accumulators at 7 and 14, several at 20 and 28) or bands of rows (56, 40 with dilation 2:
    edge bands unrolled, interior ones a loop); at stride 2 rows of vectors (112: 4 a row, a
    loop over groups of rows), or two short rows a vector (14 -> 7, 9 -> 5). 33 at stride 1
    (69 vectors, no band of <= 24) and stride 3 go to the numba kernel, straight from x into
    out. Taps in every position (each edge's padding), channels with no tap (bias only), one
    tap, many."""
    c = 12
    model = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, stride, dil, dilation=dil, groups=c),
                                torch.nn.ReLU6()).eval()
    with torch.no_grad():
        w = torch.zeros(c, 1, 3, 3)
        for ch in range(9):  # channel ch keeps only tap ch
            w[ch, 0, ch // 3, ch % 3] = torch.randn(())
        w[9] = torch.randn(1, 3, 3) * (torch.rand(1, 3, 3) < 0.4)  # a few taps
        w[10, 0, 0, 2], w[10, 0, 2, 0] = 1.5, -0.5  # two corners: the second is saved/restored
        model[0].weight.copy_(w)  # channel 11: no tap (its bias)
        model[0].bias.normal_()
    cm = sparsecc.compile(model, torch.randn(1, c, hw, hw))
    assert cm.native is not None, cm.native_status
    kernel = cm.report(measure=False).rows[0]["kernel"]
    assert kernel.startswith("native depthwise"), kernel
    # (with AVX2's 8 lanes 29 at stride 1 has no band of <= 24 vectors either)
    numba = (33, 29) if jit.host().vector_width == 8 else (33,)
    assert ("registers" in kernel) == (stride <= 2 and not (stride == 1 and hw in numba)), \
        kernel
    for batch in (1, 3):
        x = torch.randn(batch, c, hw, hw) * 4
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), cin=st.integers(1, 9), cout=st.integers(1, 9),
       hw=st.integers(3, 30), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2),
       dil=st.integers(1, 2), pad=st.integers(0, 2), fmt=st.sampled_from(["csr", "bsr4x1"]))
def test_sparse_conv_geometries(seed, cin, cout, hw, k, stride, dil, pad, fmt):
    """Sparse convs through the library across geometries (the shifted path's phase planes
    at strides 1-2 and dilations 1-2, 1x1 convs with rows of any width, im2col for BSR
    blocks wider than a column), CSR and BSR, against torch at batches 1 and 3."""
    if hw + 2 * pad < dil * (k - 1) + 1:
        return
    torch.manual_seed(seed % 2**31)
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride, pad, dilation=dil),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) < 0.4).float())
    cm = sparsecc.compile(model, torch.randn(1, cin, hw, hw),
                          recipe={"formats": {"force": fmt}})
    assert cm.native is not None, cm.native_status
    for batch in (1, 3):
        x = torch.randn(batch, cin, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("cin,cout,hw,stride", [(1, 6, 28, 1), (1, 5, 9, 1), (3, 6, 14, 1),
                                               (2, 6, 56, 1), (1, 4, 10, 2), (2, 4, 33, 1)])
def test_planar_convs_native(seed, cin, cout, hw, stride):
    """A plane per output channel from one input plane: depthwise with a channel multiplier,
    and a 1-channel input's dense conv (the MNIST CNN's first), in registers at stride 1
    (several groups at 28, bands at 56), else the numba depthwise kernel or the GEMM."""
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1, groups=cin),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) < 0.6).float())
    cm = sparsecc.compile(model, torch.randn(1, cin, hw, hw))
    assert cm.native is not None, cm.native_status
    kernel = cm.report(measure=False).rows[0]["kernel"]
    assert ("registers" in kernel) == (hw != 33), kernel
    for batch in (1, 3):
        x = torch.randn(batch, cin, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("cin,c,hw,stride,act", [
    (8, 24, 14, 1, torch.nn.ReLU6), (16, 48, 28, 2, torch.nn.ReLU6), (6, 12, 9, 1, torch.nn.ReLU),
    (16, 32, 56, 2, torch.nn.ReLU6), (4, 8, 7, 2, torch.nn.Identity),
    (8, 16, 112, 1, torch.nn.ReLU6)])
def test_expand_inside_depthwise(seed, cin, c, hw, stride, act):
    """MobileNetV2's expand 1x1 -> depthwise 3x3 -> project 1x1: the sparse expand conv runs
    inside the depthwise register kernel a channel at a time (its plane on the stack, never
    in memory): whole planes, bands (56, 112), stride 2, a part last vector (7 x 7, 9 x 9),
    no activation; rows with no nonzero (the expand's bias alone)."""
    model = _expand_block(cin, c, stride, act, 0.1)
    cm = sparsecc.compile(model, torch.randn(1, cin, hw, hw))
    assert cm.native is not None, cm.native_status
    labels = cm.native.lib.labels
    # (AVX2: a 4-channel expand at 7 x 7 runs the few-input-channel conv, and 112 x 112 at 8
    # lanes has no band of rows the register kernel takes: both stay convs of their own)
    if jit.host().vector_width == 16 or (cin, hw) not in ((4, 7), (8, 112)):
        assert labels[0].startswith("fused into"), labels
        assert "the 1x1 expand" in labels[1], labels
    for batch in (1, 3):
        x = torch.randn(batch, cin, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


def _expand_block(cin, c, stride, act, density):
    """expand 1x1 (``density`` of its weights kept, exactly; channel 0 its bias alone) ->
    depthwise 3x3 (about half its taps, the centre always: a channel with none would be
    taken out of the plan, passes.fuse.empty_channels, and the channel count with it) ->
    project 1x1."""
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, c, 1), act(),
                                torch.nn.Conv2d(c, c, 3, stride, 1, groups=c), torch.nn.ReLU6(),
                                torch.nn.Conv2d(c, cin, 1)).eval()
    with torch.no_grad():
        w = model[0].weight
        keep = torch.zeros(w.numel())
        keep[torch.randperm(w.numel())[:max(1, int(density * w.numel()))]] = 1.0
        w.mul_(keep.view_as(w))
        w[0] = 0.0  # an expanded channel that is its bias alone
        taps = torch.rand_like(model[2].weight) < 0.5
        taps[:, :, 1, 1] = True
        model[2].weight.mul_(taps.float())
    return model


@pytest.mark.parametrize("density", [0.2, 0.5])
def test_dense_expand_stays_a_conv(seed, density):
    """An expand conv denser than lower.EXPAND_MAX_DENSITY runs as a conv of its own (its
    grouped kernel beats computing it a channel at a time inside the depthwise conv), and
    the block still matches torch."""
    model = _expand_block(16, 48, 1, torch.nn.ReLU6, density)
    cm = sparsecc.compile(model, torch.randn(1, 16, 14, 14))
    assert cm.native is not None, cm.native_status
    labels = cm.native.lib.labels
    assert not labels[0].startswith("fused into") and "expand" not in labels[1], labels
    for batch in (1, 3):
        x = torch.randn(batch, 16, 14, 14)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("rule,c,hw,stride", [(False, 48, 14, 1), (True, 48, 14, 1),
                                              (True, 48, 29, 2), (True, 18, 28, 1)])
def test_dense_expand_inside_when_its_output_is_big(seed, monkeypatch, rule, c, hw, stride):
    """A dense expand conv whose output (48 x 14 x 14 floats, 37.6 KB a sample) is over a
    core's L2 (here made 32 KB) runs inside the depthwise conv anyway (lower.EXPAND_BIG_L2:
    its output would go to L3 and back); without the rule it stays a conv of its own. Inside,
    being half dense, it is computed 4 channels at a time (lower.EXPAND_BLOCK: x loaded once
    for 4 channels; 14 x 14 and 29 x 29 end in a part vector, stride 2 on 29 x 29), unless
    the channels do not split in 4s (18 at 28 x 28); with AVX2 only where the expand's input
    is over that L2 too (16 x 29 x 29 and 16 x 28 x 28 floats, not 16 x 14 x 14:
    lower.EXPAND_BLOCK_AVX2, 2 vectors a step). All against torch."""
    from sparsecc.native import lower

    monkeypatch.setattr(lower, "l2_bytes", lambda: 32 << 10)
    monkeypatch.setattr(lower, "EXPAND_BIG_L2", 1.0 if rule else 0.0)
    model = _expand_block(16, c, stride, torch.nn.ReLU6, 0.5)
    cm = sparsecc.compile(model, torch.randn(1, 16, hw, hw))
    assert cm.native is not None, cm.native_status
    labels = cm.native.lib.labels
    assert labels[0].startswith("fused into") == rule, labels
    assert ("the 1x1 expand" in labels[1]) == rule, labels
    big_x = jit.host().vector_width == 16 or 4 * 16 * hw * hw > 32 << 10
    assert ("4 channels at a time" in labels[1]) == (rule and c % 4 == 0 and big_x), labels
    for batch in (1, 3, 6):  # (6: samples in parallel, each thread's scratch its own)
        x = torch.randn(batch, 16, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("vw,host", [(16, None), (8, "haswell")])
@pytest.mark.parametrize("stride,h,w,kh,pad,dil", [(1, 20, 20, 3, 2, 2), (2, 20, 20, 3, 2, 2),
                                                   (2, 37, 23, 5, 2, 1), (2, 9, 13, 3, 0, 1),
                                                   (2, 7, 7, 5, 2, 1), (2, 2, 2, 3, 1, 1)])
def test_depthwise_registers_kernel(rng, vw, host, stride, h, w, kh, pad, dil):
    """The plane-in-registers depthwise kernel alone, the 8-lane one compiled for an
    AVX2-only CPU too, against torch: 20 x 20 planes (several accumulator groups) at dilation
    2; stride 2 on planes whose rows take several vectors (37 x 23 -> 19 x 12 at 8 lanes) or
    share one (two short rows a vector; 7 x 7 -> 4 x 4 with a 5 x 5 kernel: the second row's
    lowest taps fall in the padding while the first row's do not); pruned taps, fused
    clamp."""
    from sparsecc.native import dwsmall as DW

    c = 5
    spec = DW.DepthwiseSpec(vw, h, w, kh, kh, pad, pad, dil, dil, "clamp", 0.0, 6.0, True,
                            stride=stride)
    mod = ir.Module("dws")
    spec.emit(mod, "d")
    target = _HASWELL if host else None
    obj = jit.compile_ir(ES.module_text(mod), h=target)
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(obj, ["d"])["d"])
    x = rng.standard_normal((2, c, h, w)).astype(np.float32) * 4
    wt = (rng.standard_normal((c, 1, kh, kh)) * (rng.random((c, 1, kh, kh)) < 0.5)).astype(
        np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    out = np.full((2, c, spec.ho, spec.wo), np.nan, np.float32)
    args = np.array([x.ctypes.data, wt.ctypes.data, bias.ctypes.data, out.ctypes.data, c],
                    np.int64)
    f(0, 2 * c, args.ctypes.data)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                     torch.from_numpy(bias), stride, pad, dil, c).clamp(0, 6)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vw,host", [(16, None), (8, "haswell")])
@pytest.mark.parametrize("M", [1, 4])
@pytest.mark.parametrize("cin,c,h,w,stride", [(16, 8, 20, 20, 2), (5, 12, 9, 13, 1),
                                              (3, 4, 29, 29, 2), (6, 8, 1, 1, 1)])
def test_expand_block_kernel(rng, vw, host, M, cin, c, h, w, stride):
    """The depthwise register kernel with the 1x1 expand inside, a channel at a time (CSR)
    or 4 at a time (DepthwiseSpec.ex_block: a dense table), the 8-lane one compiled for an
    AVX2-only CPU too (a step of 8 vectors of positions a channel at a time there, 2 in
    blocks: dwsmall.expand_step), against numpy and torch: stride 1 and 2, planes ending in a
    part vector (9 x 13, 29 x 29), a 1 x 1 plane, zero rows of the expand (a channel its bias
    alone), relu6 on both."""
    from sparsecc.native import dwsmall as DW

    spec = replace(DW.DepthwiseSpec(vw, h, w, 3, 3, 1, 1, 1, 1, "clamp", 0.0, 6.0, True,
                                    stride=stride, expand="clamp", ex_a=0.0, ex_b=6.0),
                   ex_block=M)
    assert DW.expand_step(spec) == (4 if vw == 16 else 2 if M > 1 else 8)
    mod = ir.Module("dwx")
    spec.emit(mod, "d")
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(jit.compile_ir(ES.module_text(mod), h=_HASWELL if host else None),
                        ["d"])["d"])
    n = 2
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    we = (rng.standard_normal((c, cin)) * (rng.random((c, cin)) < 0.6)).astype(np.float32)
    we[1] = 0.0  # (expanded channel 1: its bias alone)
    be = rng.standard_normal(c).astype(np.float32)
    wd = rng.standard_normal((c, 9)).astype(np.float32)
    bd = rng.standard_normal(c).astype(np.float32)
    if M > 1:  # (the blocked kernel reads the table alone)
        table = np.ascontiguousarray(we.reshape(c // M, M, cin).transpose(0, 2, 1))
        indptr, idx = np.zeros(c + 1, np.int64), np.zeros(1, np.int32)
    else:
        indptr, idx, table = dense_to_csr(we)
        idx = idx.astype(np.int32)  # (the kernel's column index: i32)
    per = DW.expand_scratch(spec)
    scratch = np.zeros(max(per, 1), np.float32)
    out = np.full((n, c, spec.ho, spec.wo), np.nan, np.float32)
    args = np.array([x.ctypes.data, wd.ctypes.data, bd.ctypes.data, out.ctypes.data, c, 0, 0, 0,
                     indptr.ctypes.data, idx.ctypes.data, table.ctypes.data, be.ctypes.data,
                     cin, scratch.ctypes.data, per, 1], np.int64)
    f(0, n * c // M, args.ctypes.data)
    xe = np.clip(np.einsum("ok,nkp->nop", we, x.reshape(n, cin, h * w)) + be[None, :, None],
                 0, 6).reshape(n, c, h, w)
    ref = torch.nn.functional.conv2d(torch.from_numpy(xe), torch.from_numpy(wd).view(c, 1, 3, 3),
                                     torch.from_numpy(bd), stride, 1, 1, c).clamp(0, 6)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vw,host", [(16, None), (8, "haswell")])
@pytest.mark.parametrize("cin,cout,h,w,k,stride,pad,dil", [
    (3, 32, 40, 36, 3, 2, 1, 1), (3, 16, 30, 30, 7, 2, 3, 1), (1, 6, 28, 28, 5, 1, 2, 1),
    (2, 6, 19, 13, 3, 2, 0, 1), (4, 12, 30, 30, 3, 2, 2, 2), (3, 5, 9, 9, 3, 1, 1, 1),
    (3, 16, 9, 120, 3, 2, 1, 1), (2, 8, 6, 100, 3, 1, 1, 1), (3, 16, 33, 64, 3, 2, 1, 1),
    (3, 12, 31, 50, 7, 2, 3, 1)])
def test_small_conv_kernel(rng, vw, host, cin, cout, h, w, k, stride, pad, dil):
    """The few-input-channel direct conv alone (RGB first convs: 3x3 and 7x7 at stride 2),
    the 8-lane one compiled for an AVX2-only CPU too, against torch: rows of several vector
    chunks and a part vector, wide rows whose interior chunks run as one loop body, output
    channels in blocks (5 and 6: blocks that are not powers of 2), padding on every edge,
    dilation, pruned taps, fused clamp. Stride 2 without dilation splits the input rows
    (even / odd columns, SmallConvSpec.split_rows) for bands of output rows: bands of 8, a
    part band (17 rows: 8, 8, 1), fewer rows than a band. Kernels of 5 x 5 and more over
    split rows loop over their kernel rows (SmallConvSpec.row_loop), in blocks of 8 or 6
    channels on AVX-512."""
    from sparsecc.native import smallconv as SC

    spec = SC.SmallConvSpec(vw, cin, cout, h, w, k, k, stride, pad, pad, dil, dil, "clamp",
                            0.0, 6.0, True)
    mod = ir.Module("sconv")
    spec.emit(mod, "s")
    target = _HASWELL if host else None
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(jit.compile_ir(ES.module_text(mod), h=target), ["s"])["s"])
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32) * 2
    wt = (rng.standard_normal((cout, cin, k, k)) * (rng.random((cout, cin, k, k)) < 0.7)
          ).astype(np.float32) * 0.5
    bias = rng.standard_normal(cout).astype(np.float32)
    out = np.full((2, cout, spec.ho, spec.wo), np.nan, np.float32)
    wk = spec.weights(wt)  # (the layout the kernel reads: tap-major with its row loop)
    args = np.array([x.ctypes.data, wk.ctypes.data, bias.ctypes.data, out.ctypes.data],
                    np.int64)
    assert spec.split_rows == (stride == 2 and dil == 1)
    assert spec.row_loop == (spec.split_rows and k >= 5)
    f(0, 2 * spec.items, args.ctypes.data)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                     torch.from_numpy(bias), stride, pad, dil).clamp(0, 6)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


def _run_pooled(f, spec, x, wt, bias) -> np.ndarray:
    """The pooled kernel ``f`` over the samples of ``x``: its output buffer, the pooled
    planes then 64 floats that must stay -7."""
    out = np.full(len(x) * spec.out_sample + 64, -7.0, np.float32)
    wk = spec.weights(wt)
    args = np.array([x.ctypes.data, wk.ctypes.data, bias.ctypes.data, out.ctypes.data],
                    np.int64)
    f(0, len(x) * spec.items, args.ctypes.data)
    return out


def _kernel_s(mod: ir.Module, host):
    """Module ``mod``'s kernel ``s`` compiled (for an AVX2-only CPU with ``host``), callable
    as (start, stop, args)."""
    obj = jit.compile_ir(ES.module_text(mod), h=_HASWELL if host else None)
    return ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(obj, ["s"])["s"])


@pytest.mark.parametrize("vw,host", [(16, None), (8, "haswell")])
@pytest.mark.parametrize("cin,cout,h,w,k,stride,pad,act", [
    (3, 32, 40, 36, 7, 2, 3, "relu"), (3, 16, 29, 31, 3, 2, 1, "clamp"),
    (1, 6, 17, 10, 5, 1, 2, "relu"), (3, 5, 5, 5, 3, 1, 1, "relu"),
    (2, 8, 4, 70, 3, 2, 1, "clamp"), (3, 16, 10, 140, 7, 2, 3, "relu"),
    (3, 16, 23, 37, 5, 2, 2, "relu"), (2, 8, 12, 21, 2, 2, 0, "clamp"),
    (3, 16, 15, 47, 3, 2, 0, "relu"), (1, 4, 9, 9, 7, 2, 3, "relu"),
    (3, 16, 7, 1200, 7, 2, 3, "relu")])  # (a ring over RING_MAX_BYTES: shuffled loads)
@pytest.mark.parametrize("bands", [0, 2, 3])
def test_small_conv_max_pool_kernel(rng, monkeypatch, vw, host, cin, cout, h, w, k, stride,
                                    pad, act, bands):
    """The direct conv with the 3x3 / 2 max pool after it in the same kernel (a ResNet's stem),
    the 8-lane build for an AVX2-only CPU too, against torch's conv -> act -> max pool: even
    and odd conv outputs (an odd last row and column are a pooled row / column of their own),
    one- and several-vector rows, a 2-row conv output, NaN through both (torch propagates it),
    and nothing written past the pooled planes. At stride 2 the input rows are split into
    even and odd columns in a ring on the stack (SmallConvSpec.split_rows): kernels of 2-7
    rows, padding 0-3, maps narrower than the kernel's reach. Over split rows an item is a
    band of pooled rows of every channel (POOL_BANDS: 2 or 3 a sample, fewer when there are
    fewer pooled rows; the conv row before a band is computed by both) or, with 0, a block
    of channels. A NaN of either sign wins the pool (it compares as unsigned integers)."""
    from sparsecc.native import smallconv as SC

    monkeypatch.setattr(SC, "POOL_BANDS", bands)
    lo, hi = (0.0, 6.0) if act == "clamp" else (0.0, 0.0)
    spec = SC.SmallConvSpec(vw, cin, cout, h, w, k, k, stride, pad, pad, 1, 1, act, lo, hi,
                            True, pool=True)
    assert spec.split_rows == (stride == 2 and w < 1200)
    assert spec.items == (min(bands, spec.pooled[0]) if bands and spec.split_rows else
                          cout // spec.blocking[0])
    mod = ir.Module("sconvp")
    spec.emit(mod, "s")
    f = _kernel_s(mod, host)
    x = rng.standard_normal((3, cin, h, w)).astype(np.float32) * 2
    x[1, 0, h // 2, w // 3] = np.nan
    x[2, 0, h - 1, w - 1] = -np.nan  # (sign bit set: the x86 default NaN)
    wt = (rng.standard_normal((cout, cin, k, k)) * (rng.random((cout, cin, k, k)) < 0.7)
          ).astype(np.float32) * 0.5
    bias = rng.standard_normal(cout).astype(np.float32) - 0.5
    pho, pwo = spec.pooled
    out = _run_pooled(f, spec, x, wt, bias)
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                   torch.from_numpy(bias), stride, pad)
    y = y.clamp(0, 6) if act == "clamp" else y.relu()
    ref = torch.nn.functional.max_pool2d(y, 3, 2, 1).numpy()
    assert ref.shape[2:] == (pho, pwo)
    np.testing.assert_allclose(out[:ref.size].reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    assert np.isnan(ref).any() and (out[ref.size:] == -7.0).all()


@pytest.mark.parametrize("vw,host", [(16, None), (8, "haswell")])
@pytest.mark.parametrize("cin,cout,h,w,pad,act", [
    (3, 64, 21, 224, 3, "relu"),  # a ResNet stem's rows (28 tiles: 2 vectors, 4 lanes idle)
    (3, 16, 17, 40, 3, "clamp"),  # 5 tiles: a part vector; 17 rows: an odd last conv row
    (1, 8, 9, 27, 1, "relu"),  # one channel, padding 1: 3 tiles
    (4, 12, 30, 121, 2, "relu"),  # blocks of 6 / 4, padding 2, 15 tiles
    (2, 8, 7, 7, 3, "relu"),  # one tile; every kernel row partly outside the map
    (3, 16, 12, 269, 0, "clamp")])  # no padding: 33 tiles (3 vectors on AVX-512, 5 on AVX2)
@pytest.mark.parametrize("bands", [2, 3])
@pytest.mark.parametrize("two_d", [False, True])
def test_small_conv_winograd(rng, monkeypatch, vw, host, cin, cout, h, w, pad, act, bands,
                             two_d):
    """The pooled 7x7 / 2 conv as Winograd F(4, 4) along x (SmallConvSpec.winograd, a
    ResNet's stem) and along x and y (winograd2d: tile rows of 4 conv rows, the last one
    partly past the map when the rows are not a multiple of 4; a band's first tile row
    partly the band before's), the AVX2 build too, against torch's conv -> act -> max pool
    in float64: within 1e-5 of the largest conv output before the activation (the transforms
    round more than direct sums: ~1e-6 in practice along x, ~3e-6 along both), tiles in part
    vectors and in several, empty kernel rows, nothing written past the pooled planes. A NaN input
    reaches the pool as torch's does and, through the transforms, the rest of its tiles'
    outputs (at most two pooled columns either side; along y, 2D, its tile rows). The
    Toom-Cook matrices themselves are checked in float64 against a direct correlation."""
    from sparsecc.native import smallconv as SC

    for points, r in ((SC.WG_EVEN, 4), (SC.WG_ODD, 3)):
        bt, g, at = SC.wg_mats(points, r)
        for _ in range(5):
            d, taps = rng.standard_normal(len(points)), rng.standard_normal(r)
            direct = [taps @ d[i:i + r] for i in range(4)]
            np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), direct, atol=1e-12)
    monkeypatch.setattr(SC, "POOL_BANDS", bands)
    monkeypatch.setattr(SC, "WINOGRAD_2D", two_d)
    lo, hi = (0.0, 6.0) if act == "clamp" else (0.0, 0.0)
    spec = SC.SmallConvSpec(vw, cin, cout, h, w, 7, 7, 2, pad, pad, 1, 1, act, lo, hi, True,
                            pool=True)
    assert spec.winograd and spec.wo % 4 == 0 and spec.winograd2d == two_d
    assert not replace(spec, w=w + 2).winograd  # (an output width of 4 t + 1: direct)
    mod = ir.Module("sconvw")
    spec.emit(mod, "s")
    f = _kernel_s(mod, host)
    x = rng.standard_normal((3, cin, h, w)).astype(np.float32) * 2
    x[1, 0, h // 2, w // 3] = np.nan
    wt = rng.standard_normal((cout, cin, 7, 7)).astype(np.float32) * 0.3
    bias = rng.standard_normal(cout).astype(np.float32) - 0.5
    out = _run_pooled(f, spec, x, wt, bias)
    y = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(),
                                   torch.from_numpy(bias).double(), 2, pad)
    scale = np.nanmax(np.abs(y.numpy()))  # (the sums' size: a clamp's 6 is not)
    y = y.clamp(0, 6) if act == "clamp" else y.relu()
    ref = torch.nn.functional.max_pool2d(y, 3, 2, 1).numpy()
    got = out[:ref.size].reshape(ref.shape)
    # a NaN reaches every output of the tiles whose inputs hold it (the transforms mix a
    # tile's inputs): torch's NaNs and, in sample 1 only, a pooled column or two more
    nan, rnan = np.isnan(got), np.isnan(ref)
    assert rnan.any() and (nan >= rnan).all() and not nan[[0, 2]].any()
    cols = np.flatnonzero(rnan[1].any(axis=(0, 1)))
    extra = np.flatnonzero(nan[1].any(axis=(0, 1)))
    assert cols.min() - 2 <= extra.min() and extra.max() <= cols.max() + 2, (cols, extra)
    ok = ~nan
    assert np.abs(got[ok] - ref[ok]).max() <= 1e-5 * scale
    assert (out[ref.size:] == -7.0).all()


@pytest.mark.parametrize("cin,cout,h,w,k,pad,kind", [
    (3, 16, 29, 31, 3, 1, "direct"),  # pooled 8 x 8: whole tiles
    (3, 16, 57, 58, 5, 2, "direct"),  # pooled 15 x 15: a part last tile, rows across tiles
    (3, 32, 40, 36, 7, 3, "direct"),  # a 7x7 whose output width 18 is not 4 t
    (3, 64, 21, 224, 7, 3, "x"),  # a ResNet stem's rows: pooled 6 x 56, a row 3.5 tiles
    (2, 16, 17, 40, 7, 3, "x"), (3, 64, 21, 224, 7, 3, "xy"), (4, 12, 30, 121, 7, 2, "xy")])
@pytest.mark.parametrize("bands", [0, 2, 3])
def test_small_conv_pooled_tile_major(rng, monkeypatch, cin, cout, h, w, k, pad, kind, bands):
    """The pooled stem's output tile-major (SmallConvSpec.ots, AVX-512: what native.lower
    holds a tensor in when every reader is a grouped 1x1 conv): a sample's pooled positions in
    tiles of 16, each tile's channels 16 floats apart, a part last tile padded; a pooled row's
    vector that crosses a tile edge goes to both tiles. Against torch's conv -> act -> max
    pool moved to that layout, the direct kernel and Winograd along x / x and y (in bands of
    pooled rows; without bands these convs run direct, in blocks of channels); nothing
    written past the tiles (nor the part tile's dead lanes), bit-identical to the N, C, H, W
    kernel's floats."""
    from sparsecc.native import smallconv as SC

    monkeypatch.setattr(SC, "POOL_BANDS", bands)
    monkeypatch.setattr(SC, "WINOGRAD", kind != "direct")
    monkeypatch.setattr(SC, "WINOGRAD_2D", kind == "xy")
    plain = SC.SmallConvSpec(16, cin, cout, h, w, k, k, 2, pad, pad, 1, 1, "relu", 0.0, 0.0,
                             True, pool=True)
    spec = replace(plain, ots=16 * cout)
    wg = kind != "direct" and bands > 0  # (Winograd runs in bands of pooled rows)
    assert (spec.winograd, spec.winograd2d) == (wg, wg and kind == "xy")
    assert spec.key != plain.key
    with pytest.raises(ValueError, match="tile-major"):
        replace(spec, vw=8).emit(ir.Module("bad"), "s")
    fs = []
    for sp in (plain, spec):
        mod = ir.Module("sconvt")
        sp.emit(mod, "s")
        fs.append(_kernel_s(mod, None))
    x = rng.standard_normal((3, cin, h, w)).astype(np.float32) * 2
    wt = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.3
    bias = rng.standard_normal(cout).astype(np.float32) - 0.5
    nchw = _run_pooled(fs[0], plain, x, wt, bias)
    out = _run_pooled(fs[1], spec, x, wt, bias)
    pho, pwo = spec.pooled
    hw, tiles = pho * pwo, -(-pho * pwo // 16)
    assert spec.out_sample == tiles * 16 * cout
    ref = nchw[:3 * cout * hw].reshape(3, cout, hw)
    assert np.abs(ref - torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), 2, pad).relu(),
        3, 2, 1).numpy().reshape(3, cout, hw)).max() <= 1e-4 * np.abs(ref).max()
    tm = np.full((3, cout, tiles * 16), -7.0, np.float32)  # (the part tile's lanes untouched)
    tm[:, :, :hw] = ref
    tm = tm.reshape(3, cout, tiles, 16).transpose(0, 2, 1, 3).ravel()
    np.testing.assert_array_equal(out[:tm.size], tm)
    assert (out[tm.size:] == -7.0).all()


@pytest.mark.parametrize("pool,fused", [
    (dict(kernel_size=3, stride=2, padding=1), True),
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), False),
    (dict(kernel_size=2, stride=2), False), (dict(kernel_size=3, stride=1, padding=1), False)])
@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.Hardtanh(-1.0, 1.0)])
def test_stem_max_pool_fused(seed, pool, fused, act):
    """A stem (RGB conv -> act -> max pool) in the library: the pool runs inside the direct
    conv exactly when it is 3x3 / 2 with padding 1 and the activation leaves nothing negative
    (relu; a hardtanh from -1 does not: padding as zero would be wrong), else on its own;
    against torch at batches 1 and 3, and through the channel that reads the conv twice (not
    fused: the plane is needed)."""
    relu = isinstance(act, torch.nn.ReLU)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 2, 3), act,
                                torch.nn.MaxPool2d(**pool), torch.nn.Conv2d(16, 8, 1)).eval()
    cm = sparsecc.compile(model, torch.randn(1, 3, 45, 38))
    assert cm.native is not None, cm.native_status
    kinds = [r["kernel"] for r in cm.report(measure=False).rows]
    assert (kinds[1] == "fused into 0" and "+ max pool" in kinds[0]) == (fused and relu), kinds
    for batch in (1, 3):
        x = torch.randn(batch, 3, 45, 38)
        with torch.no_grad():
            assert_matches(cm(x), model(x))

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = torch.nn.Conv2d(3, 16, 7, 2, 3), torch.nn.MaxPool2d(3, 2, 1)

        def forward(self, x):
            y = self.conv(x).relu()
            return self.pool(y), y.mean((2, 3))

    twice = Twice().eval()
    cm = sparsecc.compile(twice, torch.randn(2, 3, 45, 38))
    assert cm.native is not None, cm.native_status
    assert not any("+ max pool" in r["kernel"] for r in cm.report(measure=False).rows)
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        for got, want in zip(cm(x), twice(x)):
            assert_matches(got, want)


@pytest.mark.parametrize("two_d", [False, True])
def test_stem_winograd_in_library(seed, monkeypatch, two_d):
    """A ResNet stem (7x7 / 2 conv -> BatchNorm -> relu -> max pool) whose output width is a
    multiple of 4 runs as the Winograd kernel in the library (the report says which), at
    batches 1 and 3, against torch: 33 conv rows (a part tile row), 36 columns (9 tiles),
    BatchNorm folded into the transformed weights. A width of 4 t + 1 stays direct."""
    from sparsecc.native import smallconv as SC

    monkeypatch.setattr(SC, "WINOGRAD_2D", two_d)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 2, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1),
                                torch.nn.Conv2d(16, 8, 1)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    for w, wino in ((72, True), (74, False)):
        cm = sparsecc.compile(model, torch.randn(1, 3, 66, w))
        assert cm.native is not None, cm.native_status
        kind = cm.report(measure=False).rows[0]["kernel"]
        assert ("Winograd F(4x4)" in kind) == (wino and two_d), kind
        assert ("Winograd F(4) along x" in kind) == (wino and not two_d), kind
        for batch in (1, 3):
            x = torch.randn(batch, 3, 66, w)
            with torch.no_grad():
                assert_matches(cm(x), model(x))


@pytest.mark.parametrize("tile_major", [True, False])
def test_stem_tile_major_in_library(seed, monkeypatch, tile_major):
    """A ResNet-50 stem whose pooled output only 1x1 convs read (a bottleneck's conv1 and
    downsample) writes it tile-major on AVX-512 (SmallConvSpec.ots; POOL_TILE_MAJOR, else
    N, C, H, W and the 1x1 convs read 64 planes), against torch at batches 1 and 3."""
    from sparsecc.native import smallconv as SC

    monkeypatch.setattr(SC, "POOL_TILE_MAJOR", tile_major)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(
                torch.nn.Conv2d(3, 64, 7, 2, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                torch.nn.MaxPool2d(3, 2, 1))
            self.a, self.b = torch.nn.Conv2d(64, 64, 1), torch.nn.Conv2d(64, 128, 1)
            self.ds = torch.nn.Conv2d(64, 128, 1)

        def forward(self, x):
            p = self.stem(x)
            return torch.relu(self.b(torch.relu(self.a(p))) + self.ds(p))

    model = Block().eval()
    with torch.no_grad():
        model.stem[1].running_var.uniform_(0.5, 2.0)
        for c in (model.a, model.b, model.ds):
            c.weight.mul_((torch.rand_like(c.weight) < 0.1).float())
    cm = sparsecc.compile(model, torch.randn(1, 3, 64, 64))  # (pooled 16 x 16)
    assert cm.native is not None, cm.native_status
    prog = cm.native.lib.program
    stem = [k.ir_spec for k in prog.kernels.values() if k.kind == "ir" and
            isinstance(k.ir_spec, SC.SmallConvSpec)]
    grouped = jit.host().vector_width == 16 and \
        "groups of" in cm.report(measure=False).rows[2]["kernel"]
    assert len(stem) == 1 and stem[0].ots == (64 * 16 if tile_major and grouped else 0)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("fmt,k,stride,hw", [("dense", 3, 2, 33), ("csr", 7, 2, 40),
                                            ("csr", 3, 1, 12)])
def test_first_conv_direct_native(seed, fmt, k, stride, hw):
    """A 3-channel input's conv runs the direct kernel through the library (dense weights,
    or sparse ones as a dense table), against torch at batches 1 and 3."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, k, stride, k // 2),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) < 0.5).float())
    cm = sparsecc.compile(model, torch.randn(1, 3, hw, hw),
                          recipe={"formats": {"force": fmt}})
    assert cm.native is not None, cm.native_status
    assert cm.report(measure=False).rows[0]["kernel"] == \
        "native direct conv (few input channels)"
    for batch in (1, 3):
        x = torch.randn(batch, 3, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


def test_gemm_avx2_code_path(rng):
    """The 8-lane (AVX2) GEMM, compiled for an AVX2-only CPU (haswell, no AVX-512), runs on
    this machine and matches numpy: the code an AVX2 host builds is tested here too."""
    spec = G.GemmSpec(8, "col", "relu")
    mod = ir.Module("gemm_avx2")
    G.emit_gemm(mod, "g", spec)
    obj = jit.compile_ir(ES.module_text(mod), h=_HASWELL)
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(obj, ["g"])["g"])
    M, N, K = 13, 37, 21
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    C = np.empty((M, N), np.float32)
    tm, tn = -(-M // G.MR), -(-N // spec.nr)
    args = np.array([A.ctypes.data, B.ctypes.data, C.ctypes.data, bias.ctypes.data, M, N, K, K,
                     N, N, 0, 0, 0, 1, 1, 0, tm, tn], np.int64)
    f(0, tm * tn, args.ctypes.data)
    np.testing.assert_allclose(C, np.maximum(A @ B + bias, 0), rtol=1e-4, atol=1e-5)


def test_avx2_constant_mask_stores(rng):
    """With 8 lanes a store under a constant lane mask is plain 4-float and 1-float stores
    (emit._Fn._store_live, no vmaskmovps): every mask's live lanes land, and nothing else in
    the row is touched (compiled for haswell, run here)."""
    masks = [rng.random(8) < 0.5 for _ in range(12)] + [np.arange(8) < n for n in range(1, 8)]
    masks += [np.arange(8) >= 4, np.zeros(8, bool)]
    mod = ir.Module("masked_stores")
    k = E._Fn(mod, "s", 8)
    src, dst = k.arg_ptr(0, "src"), k.arg_ptr(1, "dst")
    for r, m in enumerate(masks):
        v = k.vload(k.b.gep(src, [E.I64(8 * r)]), None)
        k.vstore(v, k.b.gep(dst, [E.I64(8 * r)]), ir.Constant(ir.VectorType(E.I1, 8),
                                                               [bool(b) for b in m]))
    k.b.ret_void()
    assert "vmaskmov" not in jit.assembly(str(mod)), "a masked store left"
    obj = jit.compile_ir(ES.module_text(mod), h=_HASWELL)
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        jit.load_object(obj, ["s"])["s"])
    x = rng.standard_normal((len(masks), 8)).astype(np.float32)
    out = np.full_like(x, -7.0)
    args = np.array([x.ctypes.data, out.ctypes.data], np.int64)
    f(0, 1, args.ctypes.data)
    want = np.where(np.array(masks), x, -7.0)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("k,o,bias,act", [(2048, 1000, True, False), (37, 70, False, True),
                                           (100, 64, True, True), (64, 20, True, False)])
def test_dense_linear_panels(seed, k, o, bias, act):
    """A dense linear of several rows runs over its weight packed in panels of 2 vectors of
    output columns (lower._linear_panels: each panel a batch entry of the GEMM), the part
    panel after them on its own (its bias offset); one row stays a GEMV. 1000 / 70 outputs:
    full panels and a part one; 64: panels only; 20: the part panel only. Against torch at
    batches 1, 3, 16 and 7."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(k, o, bias=bias),
                                *([torch.nn.ReLU()] if act else [])).eval()
    cm = sparsecc.compile(model, torch.randn(4, k), recipe={"formats": {"force": "dense"}})
    assert cm.native is not None, cm.native_status
    nr = 2 * jit.host().vector_width
    gemms = [c for c in cm.native.lib.program.calls if c.kernel.startswith("gemm")]
    assert len(gemms) == (o >= nr) + (o % nr > 0), [c.kernel for c in gemms]
    for batch in (1, 3, 16, 7):
        x = torch.randn(batch, k)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


def _prune_convs(model: torch.nn.Module, keep: float = 0.3) -> None:
    """Zero all but ~``keep`` of every conv's weights, RGB-input convs left dense."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.in_channels > 3:
                m.weight.mul_((torch.rand_like(m.weight) < keep).float())


def _native_csr(model: torch.nn.Module, example: torch.Tensor):
    """``model`` compiled with every sparse layer CSR, asserted native."""
    cm = sparsecc.compile(model, example, recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    return cm


def _matches_after_junk(cm, model, shape, batches, junk=3, huge=1) -> None:
    """Call ``cm`` once on NaN inputs with channels ``huge`` at 3e38 (leaving both in the
    arena's pads and slack), then check it against torch at ``batches`` (samples of
    ``shape``)."""
    bad = torch.full((junk, *shape), float("nan"))
    bad[:, huge] = 3e38
    cm(bad)
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


def _assert_nan_reach(cm, conv, x, stride=1) -> None:
    """A NaN in ``x`` reaches exactly the outputs of the 3x3 (padding 1) ``conv`` whose
    nonzero weights touch it (cm compiled from ``conv`` alone)."""
    hit = torch.nn.functional.conv2d(torch.isnan(x).float(), (conv.weight != 0).float(),
                                     stride=stride, padding=1) > 0
    assert np.array_equal(np.isnan(cm(x)), hit.numpy())


class _Block(torch.nn.Module):
    """conv -> (+ identity) -> act: the residual add fused into the conv's kernel."""

    def __init__(self, c, cout, k, stride, act, residual):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, cout, k, stride, k // 2, bias=act != "none")
        self.act, self.residual = act, residual

    def forward(self, x):
        y = self.conv(x)
        if self.residual:
            y = y + x
        if self.act == "relu":  # (one activation traced: the conv's only reader, fused)
            return torch.relu(y)
        return torch.clamp(y, 0.0, 6.0) if self.act == "clamp" else y


def _block_matches_torch(cm, model: _Block, cin: int, hw: int) -> None:
    """``cm`` (compiled from ``model``) against torch at batches 1 and 3, and a NaN input
    reaching exactly the outputs the conv's nonzero weights touch, through the activation
    (torch's relu keeps NaN), and itself through a residual."""
    conv = model.conv
    for batch in (1, 3):
        x = torch.randn(batch, cin, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))
    with torch.no_grad():
        x = torch.randn(1, cin, hw, hw)
        x[0, :, hw // 2, hw // 2] = float("nan")
        hit = torch.nn.functional.conv2d(torch.isnan(x).float(), (conv.weight != 0).float(),
                                         stride=conv.stride, padding=conv.padding) > 0
        if model.residual:
            hit |= torch.isnan(x)
        assert np.array_equal(np.isnan(cm(x)), hit.numpy())


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
@pytest.mark.parametrize("cin,cout,k,stride,hw,act,residual", [
    (8, 25, 3, 1, 13, "relu", False),   # 2 groups, the second of 1 row; tail piece of 13
    (16, 16, 1, 1, 12, "none", True),   # 1x1, one partial group, residual, 144 positions
    (6, 48, 3, 2, 31, "clamp", False),  # phases, 2 full groups, 16 x 16 -> tail
    (24, 24, 3, 1, 15, "relu", True),   # residual through the crop pass
    (5, 53, 1, 1, 17, "clamp", False),  # 3 groups, the last of 5
    (12, 70, 1, 1, 12, "relu", False),  # 3 groups, the last after an empty one
    (32, 32, 3, 1, 46, "relu", True),   # 3x3 over 48-wide planes: dx 1, 2 off a line
    (6, 33, 3, 1, 29, "none", False),   # 31-wide planes: every x offset mod 16 in turn
])
@pytest.mark.parametrize("keep", [0.3, 0.1])
def test_grouped_sparse_convs(seed, cin, cout, k, stride, hw, act, residual, keep):
    """CSR convs through the grouped assembly kernel (rows 24 at a time when 30 % of the
    weight is left, 30 at 10 %, 29 for the 3x3 convs, whose x vectors off a cache line are
    shifted out of aligned ones in registers: each column's x loaded once for the group's
    rows that have it, the activation's bounds in the x registers after the walk): group
    edges, tail pieces (masked loads and stores), bias / no bias, ReLU / clamp / none, a
    fused residual, empty rows and an empty group, against torch at batches 1 and 3."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = _Block(cin, cout, k, stride, act, residual).eval()
    with torch.no_grad():
        w = model.conv.weight
        w.mul_((torch.rand_like(w) < keep).float())
        w[0, 0] = 1.0  # (at least one nonzero)
        w[1] = 0.0  # an empty row
        # an empty group at either group size (the rows left decide which one runs)
        w[lower.GROUP_ROWS_DENSE:2 * lower.GROUP_ROWS] = 0.0
        dense = float((w != 0).float().mean()) >= lower.GROUP_DENSE_FROM
    g = lower.GROUP_ROWS_DENSE if dense else lower.GROUP_ROWS
    if k == 3:  # (the shifted convs' x offsets are never all on cache lines)
        g = min(g, lower.GROUP_ROWS_ALIGNED)
    cm = _native_csr(model, torch.randn(1, cin, hw, hw))
    label = cm.native.lib.labels[0]
    assert f"groups of {g}," in label, label
    _block_matches_torch(cm, model, cin, hw)


@pytest.fixture
def avx2_grouped(monkeypatch):
    """The library built for an AVX2-only CPU (haswell: 8 lanes, 16 registers; its code runs
    on this machine too), every grouped-eligible conv on the grouped kernel whatever its map
    or batch (lower.GROUP_AVX2_SPAN / GROUP_AVX2_MIN_TILES out of the way)."""
    from sparsecc.native import lower

    monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    monkeypatch.setattr(lower, "GROUP_AVX2_SPAN", 1 << 30)
    monkeypatch.setattr(lower, "GROUP_AVX2_MIN_TILES", 1)
    monkeypatch.setattr(lower, "AVX2_WIDE", False)  # (nor the generic kernel's wide tiles)


def _grouped_specs(cm) -> list:
    return [k.spec for k in cm.native.lib.program.kernels.values()
            if k.spec is not None and k.spec.group > 1]


@pytest.mark.parametrize("cin,cout,k,stride,hw,act,residual", [
    (8, 25, 3, 1, 13, "relu", False),   # 2 groups, the second of 11 rows
    (16, 16, 1, 1, 13, "none", True),   # 1x1, residual, 169 positions: a part vector
    (6, 48, 3, 2, 31, "clamp", False),  # phases, 4 groups
    (24, 24, 3, 1, 15, "relu", True),   # residual through the crop pass
    (5, 53, 1, 1, 17, "clamp", False),  # 289 positions: a part vector, 5 groups
    (12, 70, 1, 1, 12, "relu", False),  # an empty group
    (32, 32, 3, 1, 46, "relu", True),
])
@pytest.mark.parametrize("keep", [0.3, 0.1])
def test_grouped_avx2_convs(seed, avx2_grouped, cin, cout, k, stride, hw, act, residual,
                            keep):
    """The grouped kernel's AVX2 assembly (emit_specialized._group_asm at 8 lanes: a
    broadcast into a register beside each FMA, part vectors through vmaskmovps with their
    lane mask in the last register): 14 rows a group, 13 with a part vector, 12 when a
    residual is added to it; bias / no bias, ReLU / clamp / none, empty rows and an empty
    group, against torch at batches 1 and 3, and a NaN input reaching exactly the outputs
    its nonzero weights touch."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = _Block(cin, cout, k, stride, act, residual).eval()
    with torch.no_grad():
        w = model.conv.weight
        w.mul_((torch.rand_like(w) < keep).float())
        w[0, 0] = 1.0
        w[1] = 0.0
        w[lower.GROUP_ROWS_AVX2:2 * lower.GROUP_ROWS_AVX2] = 0.0  # (an empty group)
    cm = _native_csr(model, torch.randn(1, cin, hw, hw))
    specs = _grouped_specs(cm)
    assert specs and all(s.vw == 8 and not s.xalign for s in specs), specs
    for s in specs:
        part = s.span % 8 != 0
        assert s.group == lower.GROUP_ROWS_AVX2 - part - (part and s.residual), s
    if (cin, hw) in ((16, 13), (5, 17)):  # (the cases with a part vector)
        assert any(s.span % 8 for s in specs), specs
    _block_matches_torch(cm, model, cin, hw)


def test_grouped_avx2_rule(seed, monkeypatch):
    """With AVX2 the grouped kernel runs on small maps only (lower.GROUP_AVX2_SPAN floats a
    sample) that the generic kernel would not run in wide tiles (kernels.wide_tile: over 32
    positions in whole vectors), and at batches with GROUP_AVX2_MIN_TILES vectors of
    positions; below that the generic kernel runs (two calls, one guarded by the batch).
    The stride-2 conv to 4 x 4 (20 positions a channel) and the basic block there (24) take
    both; the 3x3 convs at 7 x 7 (63 positions, 64 as whole vectors) and 28 x 28 the generic
    kernel's wide tiles; against torch at batches 1 (generic) and 6 (grouped)."""
    monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, 1, 1), torch.nn.ReLU(),                 # 28 x 28
        torch.nn.Conv2d(32, 64, 3, 4, 1), torch.nn.ReLU(),                # 7 x 7
        torch.nn.Conv2d(64, 64, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(64),  # 4 x 4
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    _prune_convs(model, keep=0.15)
    cm = _native_csr(model, torch.randn(1, 3, 28, 28))
    specs = _grouped_specs(cm)
    assert specs and all(s.span <= 56 for s in specs), specs
    labels = [lab for lab in cm.native.lib.labels.values() if "groups of" in lab]
    assert len(labels) >= 3 and all("at batch >=" in lab for lab in labels), labels
    wide = {k.spec.tile for k in cm.native.lib.program.kernels.values()
            if k.spec is not None and k.spec.family == "spmm" and k.spec.group == 1}
    assert 7 in wide, wide  # (28 x 30 and 7 x 8 positions: tiles of 7 vectors)
    for batch in (1, 6):
        x = torch.randn(batch, 3, 28, 28)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("cin,cout,k,stride,hw,act,residual,tile,panels", [
    (96, 40, 3, 1, 30, "relu", False, 9, True),   # 30 x 31 (930) positions, 13 tiles of 9
    (96, 96, 3, 1, 21, "none", True, 6, True),    # 462: a part tile; residual, panels
    (200, 24, 1, 1, 13, "clamp", False, 4, False),  # 169, 169 apart: a part vector, t4
    (16, 16, 1, 1, 14, "relu", True, 4, False),   # 196, 196 apart: as 169
    (600, 24, 1, 1, 13, "relu", False, 4, True),  # 169 and 600 channels: L1-sized panels
    (600, 24, 1, 1, 7, "none", False, 4, False),  # 49: two tiles, the masked one half
    (160, 40, 1, 1, 16, "relu", False, 8, True),  # 256: 1x1 in panels
    (40, 24, 3, 2, 33, "relu", False, 8, True),   # 4 phases a channel, 17 x 18 positions
    (8, 70, 3, 1, 11, "relu", False, 9, False),   # 132 positions: 2 x 72 (a part tile)
    (24, 40, 3, 1, 5, "relu", False, 4, False),   # 30 positions, 32 as whole vectors
    (48, 48, 1, 1, 12, "none", True, 9, False),   # 144: two tiles of 9
])
def test_generic_avx2_wide_tiles(seed, monkeypatch, cin, cout, k, stride, hw, act, residual,
                                 tile, panels):
    """The generic kernel built for an AVX2-only CPU (haswell; its code runs here too) over a
    conv's positions in whole vectors: tiles of 5-9 vectors, as few lanes past the positions
    as they can (kernels.wide_tile; a 3x3 / 1 conv's rows wo + 1 wide, lower.SHIFT_SHARE),
    column panels of lower.AVX2_PANEL_X_BYTES of x, at least 8 channels each and 16 nonzeros
    a row (the partial sums through out between panels); maps with a part vector keep the
    tiles of 4 and panels of before, but none where they are at most two tiles
    (lower.AVX2_PART_PANELS: 7 x 7). Part tiles, a residual, empty rows, bias / no bias,
    ReLU / clamp / none, against torch at batches 1 and 3 and a NaN reaching exactly the
    outputs its nonzero weights touch; an all-zero layer too."""
    from sparsecc.codegen.llvm import kernels as LK

    monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    monkeypatch.setattr(LK, "MIN_PANEL_ROW_NNZ", 4)  # (panels in the small cases)
    torch.manual_seed(seed)
    model = _Block(cin, cout, k, stride, act, residual).eval()
    with torch.no_grad():
        w = model.conv.weight
        w.mul_((torch.rand_like(w) < 0.15).float())
        w[0, 0] = 1.0
        w[1] = 0.0
    cm = _native_csr(model, torch.randn(1, cin, hw, hw))
    prog = cm.native.lib.program
    calls = [c for c in prog.calls if prog.kernels[c.kernel].spec is not None and
             prog.kernels[c.kernel].spec.family == "spmm" and
             prog.kernels[c.kernel].spec.group == 1]  # (7 x 7: grouped too, at batch >= 4)
    specs = {prog.kernels[c.kernel].spec for c in calls}
    assert specs and all(s.vw == 8 and s.tile == tile for s in specs), specs
    npanel = [c.args[E.A_NPANEL].expr.value for c in calls]
    assert (max(npanel) > 1) == panels, npanel
    _block_matches_torch(cm, model, cin, hw)
    with torch.no_grad():
        model.conv.weight.zero_()
    cm = _native_csr(model, torch.randn(1, cin, hw, hw))
    x = torch.randn(2, cin, hw, hw)
    with torch.no_grad():
        assert_matches(cm(x), model(x))


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
@pytest.mark.parametrize("cin,cout,k,stride,hw,residual", [
    (16, 16, 1, 1, 12, True),   # residual
    (12, 70, 1, 1, 12, False),  # 3 groups
    (12, 40, 3, 1, 12, False),  # shifted, 2 groups
    (8, 33, 3, 2, 31, False),   # phases
])
@pytest.mark.parametrize("samples", [1, 2])
def test_grouped_sample_blocks(seed, monkeypatch, cin, cout, k, stride, hw, residual,
                               samples):
    """The grouped kernel's calls over several samples walk them in blocks
    (lower.group_block: every group over a block before the next): blocks of 1 and 2
    samples at batches 3 and 4 (a partial last block at 3 with 2), against torch."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    calls = []

    def block(nnz, groups, x_sample_bytes):
        calls.append(x_sample_bytes)
        return samples * x_sample_bytes

    monkeypatch.setattr(lower, "group_block", block)
    model = _Block(cin, cout, k, stride, "relu", residual).eval()
    with torch.no_grad():
        w = model.conv.weight
        w.mul_((torch.rand_like(w) < 0.15).float())
        w[0, 0] = 1.0
    cm = _native_csr(model, torch.randn(1, cin, hw, hw))
    assert "groups of" in cm.native.lib.labels[0] and calls, cm.native.lib.labels
    for batch in (3, 4):
        x = torch.randn(batch, cin, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
def test_grouped_whole_tiles(seed, monkeypatch):
    """Grouped kernels whose rows have room run every tile whole (no second copy of the code
    for a part tile): 3x3 convs over 28-wide planes (840 positions -> 848, into the next
    conv's planes and into a cropped temporary), a stride-2 one (210 -> 224) and a 1x1 conv
    over 14 x 14 maps with 16-float channel strides (196 -> 208). The extra lanes read slack
    or pads and write pads or borders nothing reads: against torch at batches 1 and 3, with
    NaN and huge values left in the arena by a call before."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 24, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 24, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 48, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(48, 40, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    _prune_convs(model)
    spans = {}
    for whole in (False, True):
        monkeypatch.setattr(lower, "WHOLE_TILES", whole)
        cm = _native_csr(model, torch.randn(1, 8, 28, 28))
        spans[whole] = sorted(k.spec.span for k in cm.native.lib.program.kernels.values()
                              if k.spec is not None and k.spec.group > 1)
    assert len(spans[True]) >= 4 and all(v % 16 == 0 for v in spans[True]), spans
    assert any(v % 16 for v in spans[False]), spans
    _matches_after_junk(cm, model, (8, 28, 28), (1, 3), huge=slice(None, None, 2))


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
def test_grouped_whole_tiles_small_planes(seed, monkeypatch):
    """Whole tiles on 5 x 5 maps in a whole-batch tail (35 positions a sample -> 48): a basic
    block's first conv writes the second's planes, its extra positions landing in its own
    plane's bottom border and the gap after it, never in the next channel's interior. With
    NaN and huge values left in the arena first; against torch at batches 3 and 9."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(),      # 10 x 10
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),     # 5 x 5
        _BasicBlock(32), _BasicBlock(32),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "4K")
    cm = _native_csr(model, torch.randn(1, 3, 20, 20))
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    spans = [k.spec.span for k in prog.kernels.values()
             if k.spec is not None and k.spec.group > 1]
    assert 48 in spans, spans
    _matches_after_junk(cm, model, (3, 20, 20), (3, 9), junk=9)


def test_tail_in_sample_chunks(seed, monkeypatch):
    """The whole-batch tail in chunks of samples, one a thread (lower.TAIL_CHUNKS): against
    torch at batches under and over TAIL_MIN_CHUNK x threads (an odd one: chunks of unequal
    size) after junk in the arena, and the same bits on 1 thread as on 2 (the chunks depend
    on the batch and the build, not on the threads a call gets)."""
    from sparsecc.native import lower as NLW
    monkeypatch.setattr(NLW, "TAIL_CHUNKS", True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
        _BasicBlock(32), _BasicBlock(32),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "4K")
    cm = _native_csr(model, torch.randn(1, 3, 20, 20))
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    threads = cm.native.runner.max_threads
    if threads < 2:
        pytest.skip("one thread: the tail runs whole")
    assert prog.tail_chunks == threads and prog.tail_min_chunk == NLW.TAIL_MIN_CHUNK
    _matches_after_junk(cm, model, (3, 20, 20), (3, 2 * NLW.TAIL_MIN_CHUNK + 1), junk=11)
    xb = torch.randn(19, 3, 20, 20)
    got = []
    for t in (1, 2):
        cm.native.threads.pin(19, threads, t)
        got.append(cm(xb.numpy()))
    with torch.no_grad():
        assert_matches(got[1], model(xb))
    assert (got[0] == got[1]).all()


class _DownBlock(torch.nn.Module):
    """A ResNet basic block that halves the map: 3x3 stride 2 -> ReLU -> 3x3, plus a 1x1
    stride-2 downsample of the input, ReLU; ``ds_first`` traces the downsample first."""

    def __init__(self, c, ds_first):
        super().__init__()
        self.a = torch.nn.Conv2d(c, 2 * c, 3, 2, 1)
        self.b = torch.nn.Conv2d(2 * c, 2 * c, 3, 1, 1)
        self.ds = torch.nn.Conv2d(c, 2 * c, 1, 2)
        self.ds_first = ds_first

    def forward(self, x):
        if self.ds_first:
            d = self.ds(x)
            return torch.relu(self.b(torch.relu(self.a(x))) + d)
        y = self.b(torch.relu(self.a(x)))
        return torch.relu(y + self.ds(x))


@pytest.mark.parametrize("hw,ds_first,tail", [(28, False, False), (14, False, False),
                                               (13, True, False), (14, False, True)])
def test_strided_pointwise_writes_in_place(seed, monkeypatch, hw, ds_first, tail):
    """A 1x1 stride-2 conv (no wrap columns) writes its output in place from its phase plane,
    the residual add in its kernel when it is the add's last addend: no crop pass. And the
    3x3 stride-2 conv's output goes straight into the next conv's planes (over small maps its
    phase planes get one more zero column, so its wide rows fit the padded planes). Maps
    28 -> 14 and 14 -> 7 (196 / 49 positions, whole tiles at 16-float channel strides),
    13 -> 7, and in a whole-batch tail; with NaN and huge values left in the arena first.
    Against torch at batches 1 and 3 (and 9 with the tail)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 1, 1), torch.nn.ReLU(),
                                _DownBlock(32, ds_first), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    _prune_convs(model, 0.2)
    if tail:
        monkeypatch.setenv("SPARSECC_TAIL_BYTES", "20K")
    cm = _native_csr(model, torch.randn(1, 3, hw, hw))
    prog = cm.native.lib.program
    if tail:
        assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    ds_op = next(i for i, op in enumerate(prog.plan.ops) if op.layer.endswith("ds"))
    kernels = [c.kernel for c in prog.calls if c.op == ds_op]
    assert not any("crop" in k for k in kernels), kernels
    if not ds_first:  # (traced last, it takes the other addend as its residual)
        assert "residual add" in cm.native.lib.labels[ds_op], cm.native.lib.labels
    a_op = next(i for i, op in enumerate(prog.plan.ops) if op.layer.endswith(".a"))
    # (over maps that give the grouped kernel 8 vectors a sample, both convs take rows
    # planes: test_rows_planes_stride2)
    assert "padded planes of" in cm.native.lib.labels[a_op] or \
        "rows planes of" in cm.native.lib.labels[a_op], cm.native.lib.labels
    assert not any(prog.plan.ops[c.op].layer.endswith(".b") and "phase" in c.kernel
                   for c in prog.calls), [c.kernel for c in prog.calls]
    _matches_after_junk(cm, model, (3, hw, hw), (1, 3) + ((9,) if tail else ()), junk=9)


class _DownBottleneck(torch.nn.Module):
    """1x1 -> 3x3 (stride s) -> 1x1, + the input or a 1x1 stride-s downsample of it, ReLU."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.a = torch.nn.Conv2d(cin, mid, 1)
        self.b = torch.nn.Conv2d(mid, mid, 3, stride, 1)
        self.c = torch.nn.Conv2d(mid, cout, 1)
        self.ds = torch.nn.Conv2d(cin, cout, 1, stride) if stride > 1 or cin != cout else None

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return torch.relu(y + (x if self.ds is None else self.ds(x)))


@pytest.mark.parametrize("tile_major,masked,gather", [
    (True, True, True), (True, False, True), (True, False, False), (False, True, True),
    (False, False, True)])
def test_packed_tail(seed, monkeypatch, tile_major, masked, gather):
    """The whole-batch tail's 7 x 7 maps with the batch packed into the positions
    (lower.PACK): bottlenecks' 1x1 convs and the downsample over blocks of 16 samples (a
    block's tiles in panels of a few each), the
    3x3 convs' phase passes reading and their crops writing that layout, the global mean
    reading it. Against torch at batches 16 and 13 (a part block: its padding samples
    zeroed, after NaN and 3e38 junk left in the arena by a packed call), and 19 and 1 (the
    plain calls: their blocks would take more vectors). (Without PACK_MASKED a basic block's
    crop with its residual add cannot write the layout: its tensors, and those they meet,
    stay plain, the lowering's retry; test_strided_pointwise_writes_in_place's tail case.)
    With
    PACK_TILE_MAJOR the packed tensors that only grouped 1x1 convs and the crop touch are
    held tile-major within a block (the first block's output, the downsample's residual,
    the 3x3 convs' outputs, which the crop writes so, k_crop_pktm; the downsample's plane
    of x, which native.tmgather gathers in place of the phase pass, or k_gather_pktm
    without lower.TM_GATHER); the others (the phase passes' inputs, the global mean's)
    stay packed; bit for bit what the packed layout
    gives. With PACK_MASKED the 3x3 convs run over the packed maps, their taps masked at the
    maps' edges (no crop; 4.b over packed phase planes of x, 5.b over x itself with the
    residual-free output read by 5.c), and their inputs stay packed, not tile-major."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),  # 25 KB a sample
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),  # 14 x 14
        _DownBottleneck(16, 8, 32, 2), _DownBottleneck(32, 8, 32, 1),  # 7 x 7
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    from sparsecc.native import lower

    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "14K")
    # panels of 2-4 tiles (ResNet-50's layer4: 4-7 panels of 8-32 tiles)
    monkeypatch.setattr(lower, "PACK_PANEL_BYTES", 4096)
    monkeypatch.setattr(lower, "PACK_TILE_MAJOR", tile_major)
    monkeypatch.setattr(lower, "PACK_MASKED", masked)
    monkeypatch.setattr(lower, "TM_GATHER", gather)
    cm = _native_csr(model, torch.randn(1, 3, 28, 28))
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    labels = {prog.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
    if jit.host().vector_width == 16:
        packed = {k for k, v in labels.items() if "batch packed in 16s" in v}
        assert {"4.c", "4.ds", "5.a", "5.c"} <= packed, labels
        kernels = {c.kernel for c in prog.calls}
        writers = {op.output: op.layer for op in prog.plan.ops}
        tm = {writers.get(n, n) for n in prog.pk_tile_major}
        if masked:
            assert {"4.b", "5.b"} <= {k for k, v in labels.items() if "taps masked" in v}, \
                labels
            assert "phase_v16_s2_pk" in kernels, kernels  # (4.b's phase planes of x)
            assert not kernels & {"k_crop_pktm", "k_crop_pk"}, kernels  # (packed crops)
        if masked and tile_major:
            # the 3x3 convs write their outputs tile-major; 5.a's (5.b's x) stays packed
            assert {"4.c", "4.b", "5.b"} <= tm and not tm & {"4.a", "5.a", "5.c"}, tm
        elif masked:
            assert not tm, tm
        elif tile_major:
            # 4.c: the downsample's residual; 4.b / 5.b: the 3x3 convs' (crops') outputs,
            # read by 4.c / 5.c; 4.ds: the block's output (written with the add), read by
            # 5.a and as 5.c's residual; not 4.a / 5.a's outputs (phase passes read them)
            # nor 5.c's (the global mean reads it)
            assert {"4.c", "4.b", "5.b"} <= tm and not tm & {"4.a", "5.a", "5.c"}, tm
            assert "k_crop_pktm" in kernels and "k_crop_pk" not in kernels, kernels
            # the downsample's plane of x (plain) gathered into tile-major planes: no phase
            # pass in its packed variant
            ds = [c.kernel for c in prog.calls if prog.plan.ops[c.op].layer == "4.ds"]
            assert ("tmgather_v16_p" if gather else "k_gather_pktm") in " ".join(ds) and \
                "phase_v16_s2_pk" not in ds, ds
        else:
            assert not tm and "k_crop_pk" in kernels, (tm, kernels)
    _matches_after_junk(cm, model, (3, 28, 28), (16, 13, 19, 1), junk=14)
    if tile_major:  # the same values as the packed layout's, bit for bit
        monkeypatch.setattr(lower, "PACK_TILE_MAJOR", False)
        plain = _native_csr(model, torch.randn(1, 3, 28, 28))
        for batch in (16, 13):
            x = torch.randn(batch, 3, 28, 28)
            np.testing.assert_array_equal(cm(x), plain(x))


class _DownBasic(torch.nn.Module):
    """ResNet-18's block: 3x3 (stride s) -> 3x3, + the input or a 1x1 stride-s downsample."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = torch.nn.Conv2d(cin, cout, 3, stride, 1)
        self.b = torch.nn.Conv2d(cout, cout, 3, 1, 1)
        self.ds = torch.nn.Conv2d(cin, cout, 1, stride) if stride > 1 else None

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return torch.relu(y + (x if self.ds is None else self.ds(x)))


@pytest.mark.parametrize("dense", [("4.ds",), ("4.a",), ("4.b",), ("5.a",), ("5.b",),
                                   ("4.ds", "5.a"), ("4.a", "4.b", "5.b"), ("4.ds", "5.b")])
def test_packed_tail_with_dense_convs_among_sparse(seed, monkeypatch, dense):
    """ResNet-18's packed tail (lower.PACK, PACK_MASKED, PACK_TILE_MAJOR) with some of its
    convs dense (GEMMs, which take neither the packed nor the tile-major layout) among the
    sparse ones: the layouts each tensor ends up in must agree between every writer and
    reader, whatever the mix. ("4.ds",) is ResNet-18 uniform 50 % at batch 16 (0.65 relative
    error, 2026-12-07): a dense downsample leaves the block's output, and so the next add's
    output a PACK_MASKED 3x3 conv would write, plain while the conv's own output and input
    are packed; the conv then takes the path that writes the add's layout. Against torch at
    batches 16, 13 and 1, after junk."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),  # 14 x 10
        _DownBasic(16, 24, 2), _DownBasic(24, 24, 1),  # 7 x 5
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    _prune_convs(model)
    convs = dict(model.named_modules())
    with torch.no_grad():  # over csr_max_density: these stay dense
        for name in dense:
            convs[name].weight.copy_(torch.randn_like(convs[name].weight) * 0.2)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "14K")
    shape = (3, 28, 20)
    cm = sparsecc.compile(model, torch.randn(1, *shape),
                          recipe={"formats": {"force": "csr", "csr_max_density": 0.5}})
    assert cm.native is not None, cm.native_status
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    labels = {prog.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
    for name in ("4.a", "4.b", "4.ds", "5.a", "5.b"):
        assert labels[name].startswith("native dense") == (name in dense), (name, labels)
    _matches_after_junk(cm, model, shape, (16, 13, 1), junk=14)


@pytest.mark.parametrize("hw,kblock,panels,nnz", [((28, 20), None, False, None),
                                                  ((24, 24), 18, False, None),
                                                  ((28, 20), None, True, None),
                                                  ((24, 24), None, False, 60)])
def test_packed_masked_basic_blocks(seed, monkeypatch, tmp_path, hw, kblock, panels, nnz):
    """ResNet-18's tail packed (PACK_MASKED): basic blocks over maps of 7 x 5 and 6 x 6
    positions (not square; H and W told apart), each 3x3 conv one grouped call over the
    packed maps with the taps off a map's edge masked per lane, the stride-2 conv over packed
    phase planes of x that the downsample reads too (no pass of its own), the residual adds
    fused; the plain variants as before (a 3x3 conv writing the next one's padded planes).
    Against torch at batches 16, 13 (a part block), 19 and 1 (plain), after junk; a
    NaN in one sample's input reaches no other sample (a masked tap reads a neighbour's
    floats and must not add them); saved, loaded and exported as a C library alike; the same
    values as with PACK_MASKED off. ``kblock``: the tail's column blocks (KBLOCK_TAIL) of 2
    channels, so the masked convs run column-blocked too; ``nnz``: the same from the bound on
    an item's values (KBLOCK_TAIL_NNZ), KBLOCK_TAIL as it is. ``panels``: every masked conv's
    block in panels of 2-3 tiles (lower.PKM_PANELS, in models only where a block's x is over
    L2)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),  # 14 x 10 / 12 x 12
        _DownBasic(16, 24, 2), _DownBasic(24, 24, 1),  # 7 x 5 / 6 x 6
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    from sparsecc.native import lower

    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "14K")
    if kblock:
        monkeypatch.setattr(lower, "KBLOCK_TAIL", kblock)
    if nnz:
        monkeypatch.setattr(lower, "KBLOCK_TAIL_NNZ", nnz)
    if panels:
        monkeypatch.setattr(lower, "PKM_PANELS", 1e-9)
        monkeypatch.setattr(lower, "PACK_PANEL_BYTES", 4096)
    shape = (3, *hw)
    cm = _native_csr(model, torch.randn(1, *shape))
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    if jit.host().vector_width == 16:
        labels = {prog.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
        masked = {k for k, v in labels.items() if "taps masked" in v}
        assert {"4.a", "4.b", "5.a", "5.b"} <= masked, labels
        assert "phase planes of the 3x3 conv" in labels["4.ds"], labels
        # (the plain variants, at batches 19 and 1, still write the next conv's planes)
        assert "padded planes of 4.b" in labels["4.a"], labels
        assert "padded planes of 5.b" in labels["5.a"], labels
        ds = {c.kernel for c in prog.calls if prog.plan.ops[c.op].layer == "4.ds"}
        assert not ds & {"k_gather_pktm", "phase_v16_s2_pk"}, ds
        masked_kcols = [k.spec.kcols for k in prog.kernels.values()
                        if k.spec is not None and k.spec.edge_h]
        in_panels = [k.spec.panels for k in prog.kernels.values()
                     if k.spec is not None and k.spec.edge_h]
        assert all(in_panels) if panels else not any(in_panels), in_panels
        # (the stride-1 ones; a stride-2 conv's four planes a channel stay in one block)
        assert masked_kcols and \
            sum(1 for c in masked_kcols if c) == (3 if kblock or nnz else 0), masked_kcols
    _matches_after_junk(cm, model, shape, (16, 13, 19, 1), junk=14)
    x = torch.randn(16, *shape)
    x[5, 1, 3, 4] = float("nan")
    got = cm(x)
    with torch.no_grad():
        want = model(x)
    assert torch.isnan(torch.as_tensor(got[5])).any()
    keep = [n for n in range(16) if n != 5]
    assert_matches(got[keep], want[keep])
    if hw == (28, 20):  # saved and loaded (the kernels' spec from the artifact), and as C
        from tests.native.test_export_c import exported_matches_torch

        path = cm.save(tmp_path / "m.scc")
        rt = sparsecc.load(path, native=True)
        assert rt.native is not None, rt.native_status
        for batch in (16, 13):
            x = torch.randn(batch, *shape)
            assert np.array_equal(np.asarray(rt(x)), np.asarray(cm(x)))
        exported_matches_torch(path, model, shape, (16,), tmp_path)
    monkeypatch.setattr(lower, "PACK_MASKED", False)
    plain = _native_csr(model, torch.randn(1, *shape))
    for batch in (16, 13):
        x = torch.randn(batch, *shape)
        np.testing.assert_allclose(cm(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c,hw,act,force", [(8, 9, "relu", "csr"), (16, 20, "none", "csr"),
                                             (24, 14, "clamp", "csr")])
def test_conv_writes_next_convs_planes(seed, c, hw, act, force):
    """A shifted 3x3 conv whose only reader is another (stride 1, padding 1) writes its wide
    rows into the interiors of that conv's padded planes, the borders zeroed after: no crop,
    no phase pass. Against torch at batches 1 and 3; the second conv's input is never
    written, so a missed border or a wrong plane offset shows in the output."""
    torch.manual_seed(seed)
    acts = {"relu": torch.nn.ReLU(), "none": torch.nn.Identity(),
            "clamp": torch.nn.Hardtanh(0.0, 6.0)}
    model = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, 1, 1), acts[act],
                                torch.nn.Conv2d(c, c + 3, 3, 1, 1), torch.nn.ReLU()).eval()
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.mul_((torch.rand_like(m.weight) < 0.3).float())
    cm = sparsecc.compile(model, torch.randn(1, c, hw, hw), recipe={"formats": {"force": force}})
    assert cm.native is not None, cm.native_status
    labels = cm.native.lib.labels
    first = next(v for k, v in sorted(labels.items()))
    # (rows planes when the maps give the grouped kernel 8 vectors a sample: AVX-512 only)
    rows = hw * hw >= 128 and jit.host().vector_width == 16
    assert ("rows planes of" if rows else "padded planes of") in first, labels
    for batch in (1, 3):
        x = torch.randn(batch, c, hw, hw) * 3
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("wrap", [True, False])
@pytest.mark.parametrize("hw", [1, 2, 7, 14, 15])
def test_shared_pad_column(seed, monkeypatch, hw, wrap):
    """With AVX2 (lower.SHIFT_SHARE) a 3x3 / 1 conv's planes keep one padded column a row,
    shared by a row's right edge and the next row's left (Shift.share): the phase pass
    writes them wo + 1 wide, a conv writing the next one's planes leaves their last column
    alone (k_pads' ``right`` 0), a stride-2 conv's rows (wo + 1 wide already) go straight
    into them unwidened, and a zero float after each plane serves the last position's
    bottom-right tap. With lower.WRAP_ZEROS the generic kernel writing them stores zeros at
    its wrap columns (KernelSpec.wrap) and k_endpads clears only each plane's first and
    last runs. 1-wide to odd 15-wide maps, a stride-2 conv in the chain, NaN and huge
    values left in the arena first; against torch at batches 1 and 3."""
    from sparsecc.native import lower as NLW

    monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    monkeypatch.setattr(NLW, "WRAP_ZEROS", wrap)
    monkeypatch.setattr(NLW, "DUAL_PLANES", False)  # (dual planes: test_dual_planes)
    torch.manual_seed(seed)
    c = 8
    model = torch.nn.Sequential(
        torch.nn.Conv2d(c, c, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(c, 12, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, 1, 1)).eval()
    _prune_convs(model, 0.3)
    cm = _native_csr(model, torch.randn(1, c, hw, hw))
    prog = cm.native.lib.program
    if hw >= 7:  # (smaller maps: no planes where the wrap columns would waste too much)
        phase = [c_ for c_ in prog.calls if c_.kernel.startswith("phase_v8_s1")]
        assert [c_.args[15].expr.value for c_ in phase] == [hw + 1], phase
        # (k_endpads: the writer stored zeros at its wrap columns, lower.WRAP_ZEROS)
        pads = [c_.args[7].expr.value for c_ in prog.calls if c_.kernel == "k_pads"]
        ends = sum(c_.kernel == "k_endpads" for c_ in prog.calls)
        assert set(pads) <= {0} and len(pads) + ends == 2 and (ends >= 1) == wrap, \
            (pads, ends)
        labels = cm.native.lib.labels
        assert sum("padded planes of" in v for v in labels.values()) == 2, labels
    _matches_after_junk(cm, model, (c, hw, hw), (1, 3))


@pytest.mark.parametrize("write,phase", [(True, True), (False, True), (True, False),
                                         (False, False)])
@pytest.mark.parametrize("hw", [1, 2, 7, 9, 14, 15])
def test_dual_planes(seed, monkeypatch, hw, write, phase):
    """With AVX2 (lower.DUAL_PLANES) a 3x3 / 1 conv's planes are held twice, the copy 8
    floats past the first's end, and the generic kernel reads each vector from the copy
    where it lies on one cache line (offset pairs, KernelSpec.idx_bits 64), tiles at both
    parities: planes from the phase pass get both copies from it (PhaseSpec.dual,
    lower.PHASE_DUAL) or, without it, a copy pass; those a conv wrote get both copies from
    it (KernelSpec.dual_out, both copies' borders zeroed) or, without DUAL_WRITE, a copy
    pass too. 1-wide to 15-wide maps with junk in the arena first, against torch at
    batches 1 and 3, and bit for bit against the same model with single planes (the same
    FMAs in the same order)."""
    from sparsecc.native import lower as NLW

    monkeypatch.setattr(jit, "host", lambda: _HASWELL)
    monkeypatch.setattr(NLW, "DUAL_MIN_TAPS", 1)
    monkeypatch.setattr(NLW, "DUAL_WRITE", write)
    monkeypatch.setattr(NLW, "PHASE_DUAL", phase)
    torch.manual_seed(seed)
    c = 8
    model = torch.nn.Sequential(
        torch.nn.Conv2d(c, 16, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 12, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, 1, 1)).eval()
    _prune_convs(model, 0.4)
    example = torch.randn(1, c, hw, hw)
    cms = {}
    for dual in (True, False):
        monkeypatch.setattr(NLW, "DUAL_PLANES", dual)
        cms[dual] = _native_csr(model, example)
    prog = cms[True].native.lib.program
    pairs = [k.spec for k in prog.kernels.values()
             if k.spec is not None and k.spec.idx_bits == 64]
    copies = [c_ for c_ in prog.calls if c_.kernel == "k_copy32"]
    specs = [(c_.op, prog.kernels[c_.kernel].spec) for c_ in prog.calls
             if c_.kernel in prog.kernels and prog.kernels[c_.kernel].spec is not None]
    writers = {op for op, sp in specs if getattr(sp, "dual_out", False)}
    by_phase = {c_.op for c_ in prog.calls if c_.kernel in prog.kernels and
                getattr(prog.kernels[c_.kernel].ir_spec, "dual", False)}
    if hw >= 7:  # (smaller maps: no planes)
        # (a writer on small maps may take the grouped kernel at some batches: a copy
        # pass after it)
        assert pairs and len(by_phase) == int(phase), by_phase
        assert (1 - phase <= len(copies) < 3 - phase if write else
                len(copies) == 3 - phase), (pairs, copies, writers)
        assert bool(writers) == write, writers
    assert not any(k.spec is not None and k.spec.idx_bits == 64
                   for k in cms[False].native.lib.program.kernels.values())
    _matches_after_junk(cms[True], model, (c, hw, hw), (1,))
    _matches_torch_and_bitwise(cms, model, (c, hw, hw), (1, 3))


def test_dual_offsets():
    """lower._dual_offsets: for either parity of a tile's first vector, every vector's 8
    floats lie on one 16-float line in the copy it reads, and that copy holds what the
    first holds at the offset (the second copy d = 8 mod 16 floats on)."""
    from sparsecc.native.lower import _dual_offsets

    rng = np.random.default_rng(0)
    d = 16 * 37 + 8
    offs = rng.integers(0, 16 * 40, 500).astype(np.uint32)
    pairs = _dual_offsets(offs, d)
    lo = (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    hi = (pairs >> np.uint64(32)).astype(np.int64)
    for got, par in ((lo, 0), (hi, 1)):
        assert np.all((got == offs) | (got == offs.astype(np.int64) + d))
        for v in range(par, 9, 2):  # the vectors at that parity of a line
            assert np.all((got + 8 * v) % 16 <= 8), (par, v)


def _matches_torch_and_bitwise(cms: dict, model, shape, batches) -> None:
    """``cms[True]`` against torch at ``batches`` (samples of ``shape``), and bit for bit
    against ``cms[False]`` (the same model built the other way)."""
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            want = model(x)
        got = cms[True](x)
        assert_matches(got, want)
        assert np.array_equal(got.numpy(), cms[False](x).numpy()), batch


def _grouped_isa(request, avx2: bool) -> None:
    """The grouped kernel's AVX2 assembly (the avx2_grouped fixture), or its AVX-512 one
    (skipped without AVX-512)."""
    if avx2:
        request.getfixturevalue("avx2_grouped")
    elif jit.host().vector_width != 16:
        pytest.skip("the AVX-512 grouped kernel")


class _BasicBlock(torch.nn.Module):
    """conv -> ReLU -> conv, + the input, ReLU (a ResNet basic block, no downsample)."""

    def __init__(self, c):
        super().__init__()
        self.a = torch.nn.Conv2d(c, c, 3, 1, 1)
        self.b = torch.nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


def test_whole_batch_tail(seed, monkeypatch):
    """A chunked model whose last layers (small activations) run over the whole batch after
    the chunks ran the first ones: the tensors between the two parts (a block's output read
    by its conv and its residual add) cross through the arena's boundary region. With
    AVX-512, the tail's 8 x 8 convs (5 vectors of positions a sample) take the grouped kernel
    at batches of 2 and more and the row-by-row one at batch 1. Against torch at batches 1-3
    and 9 (chunks shared out between the threads), and profiled: the same bits (the chunks
    still sample-parallel, each thread counting its calls' cycles), every op timed."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),       # 32 KB a sample
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(16),   # 16 KB
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(32),  # 8 KB
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "12K")
    cm = _native_csr(model, torch.randn(1, 3, 32, 32))
    prog = cm.native.lib.program
    assert prog.chunk and 0 < prog.tail < len(prog.calls), (prog.chunk, prog.tail)
    assert len(prog.boundary) >= 1 and prog.boundary_bytes >= 8 << 10, prog.boundary
    assert all(c.op >= prog.calls[prog.tail].op for c in prog.calls[prog.tail:])
    if jit.host().vector_width == 16:
        assert any("at batch >= 2, else" in v for v in cm.native.lib.labels.values()), \
            cm.native.lib.labels
    for batch in (1, 2, 3, 9):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(x)
        assert_matches(cm(x), want)
        assert_matches(cm(x), want)  # the arena reused
    x = torch.randn(9, 3, 32, 32)
    arrays = [x.numpy()]
    times = np.zeros(max(len(cm.plan.ops), 1), np.int64)
    got = cm.native.run(arrays, times=times)[0]
    with torch.no_grad():
        assert_matches(torch.from_numpy(got), model(x))
    assert np.array_equal(got, cm(x))
    assert all(times[c.op] > 0 for c in prog.calls), times


def test_reversed_chunks_cover_the_batch():
    """module._reversed_start: the k-th chunk taken off the counter (k = 0, c, 2c, ...) in a
    reversed segment starts where the forward walk's chunks do, last first, so the same
    partition of the batch is visited, every sample once, the short chunk (if any) last."""
    from sparsecc.native import module as M

    i64 = ir.IntType(64)
    mod = ir.Module("reversed_start")
    fn = ir.Function(mod, ir.FunctionType(i64, [i64, i64, i64]), "rs")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(M._reversed_start(b, *fn.args))
    addr = jit.load_object(jit.compile_ir(ES.module_text(mod)), ["rs"])["rs"]
    rs = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(addr)
    for n in range(1, 21):
        for c in range(1, 7):
            forward = [(s, min(c, n - s)) for s in range(0, n, c)]
            got = [(rs(n, c, k), min(c, n - rs(n, c, k))) for k in range(0, n, c)]
            assert got == forward[::-1], (n, c, got)
    assert [M._segment_reversed(k, 4) for k in range(4)] == [False, True, False, True]
    assert M._segment_reversed(0, 1)


def test_head_in_segments(tmp_path, seed, monkeypatch):
    """The chunked head in segments (lower.head_segments, a budget of 1 byte: a cut wherever
    one tensor alone crosses), each run over every chunk before the next, the block outputs
    between them in the boundary region. The cuts fall between blocks (never inside one,
    where two tensors cross) and the calls of each segment belong to its ops. Against torch
    at batches 1-3 and 9 (sample-parallel chunks), bit for bit against the same model
    without segments, profiled (every op timed), saved and loaded, and exported as a C
    library run by the example program (batches 1 and 9, against torch). The segments take
    their chunks in alternating directions (module.SERPENTINE): bit for bit the same as all
    forward."""
    from sparsecc.native import lower
    from sparsecc.native import module as M
    from sparsecc.native.module import _segment_calls
    from tests.native.test_export_c import exported_matches_torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),       # 32 KB a sample
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),      # 16 KB
        _BasicBlock(16), _BasicBlock(16), _BasicBlock(16),
        torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(32),  # 8 KB
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "12K")
    example = torch.randn(1, 3, 32, 32)
    monkeypatch.setattr(lower, "SEGMENT_BYTES", 0)
    whole = _native_csr(model, example)
    assert not whole.native.lib.program.segments
    monkeypatch.setattr(lower, "SEGMENT_BYTES", 1)
    monkeypatch.setattr(lower, "SEGMENT_NNZ_BYTES_GENERIC", 1)  # (AVX2: row-by-row kernels)
    cm = _native_csr(model, example)
    monkeypatch.setattr(M, "SERPENTINE", False)
    forward = _native_csr(model, example)
    monkeypatch.setattr(M, "SERPENTINE", True)
    prog, ops = cm.native.lib.program, cm.plan.ops
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    assert forward.native.lib.main_key != cm.native.lib.main_key
    starts = [ops[x].layer for x in prog.segments]
    # each block, the stride-2 conv, up to the tail (where it starts depends on the ISA)
    t_op = prog.calls[prog.tail].op
    first = {op.layer: i for i, op in reversed(list(enumerate(ops)))}
    want = [x for x in ("4.a", "5.a", "6.a", "7", "9.a") if first[x] < t_op]
    assert starts == want and len(want) >= 4, (starts, want)
    cuts = [0, *prog.segments, t_op]
    parts = _segment_calls(prog, prog.calls[:prog.tail])
    assert len(parts) == len(cuts) - 1
    for (lo, hi), part in zip(zip(cuts, cuts[1:]), parts):
        assert part and all(lo <= c.op < hi for c in part), (lo, hi)
    assert len(prog.boundary) >= 4, prog.boundary
    # boundary tensors share places (lower._to_boundary's reuse) only where one's last
    # reader runs before the other's writer, or the other is a residual sum written over
    # it by that reader (lower.RES_IN_PLACE, Buffer.share)
    shared = [(a, b) for i, a in enumerate(prog.boundary) for b in prog.boundary[i + 1:]
              if prog.boundary_offsets[prog.boundary.index(a)] ==
              prog.boundary_offsets[prog.boundary.index(b)]]
    assert shared, (prog.boundary, prog.boundary_offsets)
    for a, b in shared:
        first, second = sorted((prog.buffers[a], prog.buffers[b]), key=lambda q: q.first)
        assert first.last < second.first or \
            (second.share == first.name and first.last == second.first), (a, b)
    for batch in (1, 2, 3, 9):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(x)
        got = cm(x)
        assert_matches(got, want)
        assert np.array_equal(got.numpy(), whole(x).numpy())
        assert np.array_equal(got.numpy(), forward(x).numpy())
        assert np.array_equal(cm(x).numpy(), got.numpy())  # the arena reused
    x = torch.randn(9, 3, 32, 32)
    times = np.zeros(max(len(cm.plan.ops), 1), np.int64)
    got = cm.native.run([x.numpy()], times=times)[0]
    assert np.array_equal(got, cm(x).numpy())
    assert all(times[c.op] > 0 for c in prog.calls), times
    path = cm.save(tmp_path / "m.scc")
    rt = sparsecc.load(path, native=True)
    assert rt.native is not None and rt.native.lib.program.segments == prog.segments
    assert np.array_equal(np.asarray(rt(x)), cm(x).numpy())
    exported_matches_torch(path, model, (3, 32, 32), (1, 9), tmp_path)


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
@pytest.mark.parametrize("l2", [256 << 10, 512 << 10])
def test_grouped_ranges_in_the_tail(seed, monkeypatch, l2):
    """Whole-batch convs whose grouped code does not fit L2 beside a sample's x run their
    row groups in ranges, each over every sample before the next (lower.group_ranges,
    emit.A_GRR; an L2 of 256 / 512 KB pretended so the 3x3 convs need 3 / 2 ranges, the
    last one short). Against torch at batches 2, 3 and 9 (odd sample counts, ranges split
    between the threads) and against the same model without ranges, bit for bit."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 96, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(96),   # 8 x 8 maps
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(96, 10)).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "40K")
    monkeypatch.setattr(lower, "GROUP_CODE_WEIGHT", 1000)  # (x re-read by every group)
    monkeypatch.setattr(lower, "l2_bytes", lambda: l2)
    cms = {}
    for ranges in (False, True):
        monkeypatch.setattr(lower, "GROUP_RANGES", ranges)
        cm = _native_csr(model, torch.randn(1, 3, 16, 16))
        prog = cm.native.lib.program
        assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
        grr = [c.args[E.A_GRR].expr.value for c in prog.calls[prog.tail:]
               if c.kernel.startswith("sp_") and len(c.args) > E.A_GRR and
               c.args[E.A_GRR].kind == "int"]
        assert any(grr) == ranges, grr
        cms[ranges] = cm
    _matches_torch_and_bitwise(cms, model, (3, 16, 16), (2, 3, 9))


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
def test_grouped_tiles_outer(seed, monkeypatch):
    """Grouped calls run every group over a tile before the next tile (emit.A_GRR < 0,
    lower.group_tiles_outer) when their sample's x and code overflow L2 and the code alone
    fits: forced on here for 1x1, 3x3 and stride-2 convs (several groups, a fused residual,
    odd maps), against torch at batches 1, 2 and 5 (items split between the threads mid
    sample) and bit for bit against the groups-outer order."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 70, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(70, 64, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(64),
        torch.nn.Conv2d(64, 90, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(90, 10)).eval()
    _prune_convs(model)
    cms = {}
    for outer in (False, True):
        monkeypatch.setattr(lower, "group_tiles_outer", lambda nnz, xsb, on=outer: on)
        cm = _native_csr(model, torch.randn(1, 3, 29, 29))
        # (the grouped calls: the only ones with a sample block, A_GXB)
        grr = [c.args[E.A_GRR].expr.value for c in cm.native.lib.program.calls
               if c.kernel.startswith("sp_") and len(c.args) > E.A_GRR and
               c.args[E.A_GXB].kind == "int" and c.args[E.A_GXB].expr.value > 0]
        assert len(grr) >= 4 and all((g < 0) == outer for g in grr), grr
        cms[outer] = cm
    _matches_torch_and_bitwise(cms, model, (3, 29, 29), (1, 2, 5))


@pytest.mark.parametrize("avx2", [False, True])
@pytest.mark.parametrize("cols,halves,x_bytes", [(20, 0, 5000), (200, 60, 40000)])
def test_grouped_column_blocks(seed, monkeypatch, request, cols, halves, x_bytes, avx2):
    """Grouped kernels with their columns in blocks of input channels (KernelSpec.kcols,
    lower.KBLOCK; the partial sums through out, the bias in the first block, the residual
    and the activation in the last): forced small here so a stride-2 3x3 conv, a basic
    block's two 3x3 convs (a fused residual) and two 1x1 convs (a clamp; the first's
    first block empty) take 2-14 blocks, the last one short; or (KBLOCK_HALVES) two blocks
    of half the channels for the 3x3 convs and the last 1x1 conv. Samples in sets of 2 or
    more (KBLOCK_X_BYTES). Against torch at batches 1, 2 and 5 (a short last set, items
    split between the threads) and bit for bit against one block: the FMAs run in the same
    order. ``avx2``: the AVX2 assembly (avx2_grouped), its partial sums of part vectors
    reloaded through vmaskmovps."""
    from sparsecc.native import lower

    _grouped_isa(request, avx2)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 40, 3, 2, 1), torch.nn.ReLU(), _BasicBlock(40),  # 12 x 12
        torch.nn.Conv2d(40, 72, 1), torch.nn.ReLU6(),
        torch.nn.Conv2d(72, 50, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(50, 10)).eval()
    _prune_convs(model)
    with torch.no_grad():
        model[5].weight[:, :20] = 0.0  # (its first block: no nonzero)
    cms = {}
    monkeypatch.setattr(lower, "KBLOCK_HALVES", halves)
    monkeypatch.setattr(lower, "KBLOCK_X_BYTES", x_bytes)
    # (its activations all fit a chunk: no whole-batch tail from its 12 x 12 maps either,
    # so every conv runs in the chunks' sample sets)
    monkeypatch.setattr(lower, "TAIL_SMALL_MAPS_ONLY", False)
    for on in (False, True):
        monkeypatch.setattr(lower, "KBLOCK", cols if on else 0)
        cm = _native_csr(model, torch.randn(1, 3, 24, 24))
        kcols = [k.spec.kcols for k in cm.native.lib.program.kernels.values()
                 if k.spec is not None and k.spec.group > 1]
        # (with AVX2 the stride-2 conv's 12 x 12 maps pass KBLOCK_TILES_S2 vectors of 8)
        assert (sum(1 for c in kcols if c) >= (3 if avx2 else 4)) == on, kcols
        sets = [c.args[E.A_GXB].expr.value for c in cm.native.lib.program.calls
                if c.kernel.startswith("sp_") and len(c.args) > E.A_GXB and
                c.args[E.A_GXB].kind == "int" and c.args[E.A_GRR].kind == "int" and
                c.args[E.A_GRR].expr.value == 0]
        if on:
            assert any(1 < s < 5 for s in sets), sets
        cms[on] = cm
    _matches_torch_and_bitwise(cms, model, (3, 24, 24), (1, 2, 5))


class _Pointwise(torch.nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv back, + the input, ReLU (the residual fused into the
    second conv)."""

    def __init__(self, c, m):
        super().__init__()
        self.a = torch.nn.Conv2d(c, m, 1)
        self.b = torch.nn.Conv2d(m, c, 1)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


@pytest.mark.parametrize("avx2", [False, True])
def test_grouped_row_blocks(seed, monkeypatch, request, avx2):
    """Grouped calls whose groups are small run a few of them an item (lower.group_blocks:
    an item's row block holds up to GROUP_BLOCK_MAX groups, run one after another over its
    tile): 1x1 convs of 7 and 4 groups, a fused residual, 13 x 13 maps (a part tile), against
    torch at batches 1, 2 and 5 (row blocks split between the threads mid sample) and bit for
    bit against one group a block."""
    from sparsecc.native import lower

    _grouped_isa(request, avx2)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 200, 1), torch.nn.ReLU(), _Pointwise(200, 96),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(200, 10)).eval()
    _prune_convs(model, 0.1)
    cms, nrbs = {}, {}
    for on in (False, True):
        monkeypatch.setattr(lower, "GROUP_BLOCK_MAX", 4 if on else 1)
        cm = _native_csr(model, torch.randn(1, 3, 13, 13))
        prog = cm.native.lib.program
        nrbs[on] = [c.args[E.A_NRB].expr.value for c in prog.calls
                    if c.kernel in prog.kernels and prog.kernels[c.kernel].spec is not None
                    and prog.kernels[c.kernel].spec.group > 1 and not
                    prog.kernels[c.kernel].spec.kcols]
        cms[on] = cm
    assert len(nrbs[False]) >= 3 and len(nrbs[True]) == len(nrbs[False]), nrbs
    assert all(a <= b for a, b in zip(nrbs[True], nrbs[False])), nrbs
    assert sum(a < b for a, b in zip(nrbs[True], nrbs[False])) >= 2, nrbs
    _matches_torch_and_bitwise(cms, model, (3, 13, 13), (1, 2, 5))


def test_group_blocks_rule():
    """lower.group_blocks: about GROUP_BLOCK_NNZ values a block, at most GROUP_BLOCK_MAX
    groups; one group a block for big groups, rows far apart (GROUP_BLOCK_SPAN), too few
    items a sample, or an unknown row stride."""
    from sparsecc.native import lower

    span = 30 * 208 * 4  # (30 rows of a 14 x 14 map's channel stride)
    assert lower.group_blocks(35, 35 * 768, 13, 2, span) == 12    # ResNet-50 layer3 conv3
    assert lower.group_blocks(9, 9 * 384, 49, 2, span) == 3       # 128 -> 256 cols: 4 a block
    assert lower.group_blocks(9, 9 * 1200, 49, 2, span) == 5      # 2 a block
    assert lower.group_blocks(9, 9 * 3072, 13, 2, span) == 9      # 1024 columns: one
    assert lower.group_blocks(9, 9 * 384, 49, 2, 30 * 3136 * 4) == 9  # 56 x 56 NCHW
    assert lower.group_blocks(9, 9 * 384, 49, 2, 30 * 784 * 4) == 5   # 28 x 28: 2 a block
    assert lower.group_blocks(9, 9 * 384, 4, 2, span) == 9        # 4 tiles x 3 blocks < 16
    assert lower.group_blocks(9, 9 * 384, 49, 2, 0) == 9
    assert lower.group_blocks(1, 100, 49, 2, span) == 1


@pytest.mark.parametrize("vw", [16, 8])
def test_group_asm_values_after_epilogue(vw):
    """A grouped chunk of several groups (the models' chunks hold one each): a clamp's bounds
    go through eax in a group's epilogue, so the next group's values must set their window
    (rax) up again before its first FMA reads one."""
    from sparsecc.codegen.llvm import emit_specialized as es
    from sparsecc.codegen.llvm.emit import KernelSpec, Pattern

    rng = np.random.default_rng(0)
    group = 30 if vw == 16 else 14
    mask = rng.random((3 * group, 40)) < 0.2
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    spec = KernelSpec("spmm", vw, 1, "clamp", 0.0, 6.0, True, 16, pattern_hash="t", xrs=16,
                      span=vw, group=group)
    lines = es._group_asm("f", spec, Pattern(indptr, np.nonzero(mask)[1].astype(np.int64)),
                          0, 3 * group, es.pieces(vw, vw, 1, False))
    valid, reads = False, 0
    for line in lines:
        if line.startswith("lea rax"):
            valid = True
        elif line.startswith("mov eax"):
            valid = False
        elif "[rax" in line:
            assert valid, line
            reads += 1
    assert reads == int(indptr[-1])


def test_group_tiles_outer_rule(monkeypatch):
    """lower.group_tiles_outer: tiles outer for a sample's x that, with the code, overflows
    the L2 share, while the code alone fits GROUP_OUTER_CODE of L2; not for small x or big
    code, nor when GROUP_OUTER is off."""
    from sparsecc.native import lower

    monkeypatch.setattr(lower, "l2_bytes", lambda: 2 << 20)
    code_nnz = lambda b: b // lower.GROUP_CODE_BYTES  # noqa: E731
    assert lower.group_tiles_outer(code_nnz(200 << 10), 1600 << 10)   # ResNet-50 layer3.0.conv1
    assert not lower.group_tiles_outer(code_nnz(390 << 10), 800 << 10)  # layer3.1.conv1
    assert not lower.group_tiles_outer(code_nnz(3 << 20), 400 << 10)   # layer4.0.downsample
    monkeypatch.setattr(lower, "GROUP_OUTER", False)
    assert not lower.group_tiles_outer(code_nnz(200 << 10), 1600 << 10)


def test_tail_takes_a_conv_whose_planes_alone_are_big(seed, monkeypatch):
    """A stride-2 conv whose input and output are under the tail's limit but whose phase
    planes are over it runs in the whole-batch tail (lower.tail_split: an op's own
    temporaries do not keep it in the chunks; without that rule the tail starts after it);
    against torch at batches 1, 3 and 9."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, 1, 1), torch.nn.ReLU(),     # 24 KB a sample
        torch.nn.Conv2d(24, 8, 1), torch.nn.ReLU(),           # 8 KB
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),     # planes ~12 KB, out 4 KB
        _BasicBlock(16), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10)).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "10K")
    # (the byte limit is set on single planes: dual ones would keep the block in the chunks)
    monkeypatch.setattr(lower, "DUAL_PLANES", False)
    starts = {}
    for own in (False, True):
        monkeypatch.setattr(lower, "TAIL_OWN_TEMPS", own)
        cm = _native_csr(model, torch.randn(1, 3, 16, 16))
        prog = cm.native.lib.program
        assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
        starts[own] = prog.calls[prog.tail].op
    s2 = next(i for i, op in enumerate(cm.plan.ops)
              if op.kind == "conv2d" and op.attrs["stride"][0] == 2)
    assert starts[True] <= s2 < starts[False], (starts, s2)
    for batch in (1, 3, 9):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


class _Bottleneck(torch.nn.Module):
    """1x1 -> ReLU -> 3x3 -> ReLU -> 1x1, + the input, ReLU (a ResNet bottleneck); with
    ``basic`` a second 3x3 in place of the last 1x1 (a basic block's pair)."""

    def __init__(self, c, mid, basic=False):
        super().__init__()
        self.a = torch.nn.Conv2d(c, mid, 1)
        self.b = torch.nn.Conv2d(mid, mid, 3, 1, 1)
        self.c = torch.nn.Conv2d(mid, c, 3, 1, 1) if basic else torch.nn.Conv2d(mid, c, 1)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.relu(self.c(y) + x)


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
@pytest.mark.parametrize("h,w,basic", [(14, 14, False), (12, 12, True), (11, 13, False),
                                       (48, 3, True), (9, 29, True)])
def test_rows_planes(seed, h, w, basic):
    """3x3 / 1 convs over rows planes (lower.RowsGeom): the input's rows with a zero row
    above and below each channel and no padded columns; the taps across a row's edge are
    masked per lane, the output is dense (no crop). The conv before writes straight into
    them (a 1x1, or another rows conv) and their zero rows after. Maps 14 x 14 (whole tiles
    spilling into the bottom row), 12 x 12, 11 x 13 and 9 x 29 (odd widths: extra rows so
    every channel's interior is on a cache line), 48 x 3 (the narrowest); a residual fused.
    With NaN and huge values left in the arena first, against torch at batches 1 and 3;
    and a NaN at a row's last column reaches only the outputs its taps touch (none in the
    next row's first column)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 1, 1), torch.nn.ReLU(),
                                _Bottleneck(32, 24, basic), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    _prune_convs(model, 0.3)
    cm = _native_csr(model, torch.randn(1, 3, h, w))
    prog = cm.native.lib.program
    labels = {prog.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
    assert "rows planes of 2.b" in labels["2.a"], labels
    assert "(rows planes)" in labels["2.b"], labels
    if basic:
        assert "rows planes of 2.c" in labels["2.b"] and "residual add" in labels["2.c"]
    assert not any("crop" in c.kernel or "phase" in c.kernel for c in prog.calls
                   if prog.plan.ops[c.op].layer in ("2.b", "2.c")), [c.kernel for c in prog.calls]
    _matches_after_junk(cm, model, (3, h, w), (1, 3))
    one = torch.nn.Sequential(model[2].b).eval()  # a rows conv on its own: NaN's reach
    cm1 = sparsecc.compile(one, torch.randn(1, 24, h, w), recipe={"formats": {"force": "csr"}})
    assert "(rows planes)" in cm1.native.lib.labels[0], cm1.native.lib.labels
    x = torch.randn(2, 24, h, w)
    x[0, :, h // 2, w - 1] = float("nan")
    x[1, :, 0, 0] = float("nan")
    _assert_nan_reach(cm1, one[0], x)


@pytest.mark.skipif(jit.host().vector_width != 16, reason="the grouped kernel is AVX-512")
@pytest.mark.parametrize("h,w,ds_first", [(28, 28, False), (29, 31, False), (24, 7, False),
                                          (33, 16, False), (28, 28, True)])
def test_rows_planes_stride2(seed, h, w, ds_first):
    """A 3x3 / 2 conv over rows planes: x split into four phase planes (rows: the first
    padded; columns: none), the tap before a row's first output column masked, the output
    dense and written straight into the next conv's rows planes. Even and odd maps (an odd
    width's last tap reads a zero the split wrote), outputs 4 wide; a downsampling basic
    block (its 1x1 / 2 shortcut in place, the residual fused), the shortcut reading x's
    even rows and columns from the 3x3 conv's phase planes (Lowering._shared_phase: no
    phase pass of its own) unless it comes first. NaN in the arena first; against torch at
    batches 1 and 3, and NaN's reach through the stride-2 conv alone."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 1, 1), torch.nn.ReLU(),
                                _DownBlock(32, ds_first), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    _prune_convs(model, 0.3)
    cm = _native_csr(model, torch.randn(1, 3, h, w))
    prog = cm.native.lib.program
    labels = {prog.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
    ho, wo = (h + 1) // 2, (w + 1) // 2
    rows = ho * wo >= 128 and wo >= 3
    assert ("(rows planes) -> the rows planes of 2.b" in labels["2.a"]) == rows, labels
    assert not any("crop" in c.kernel for c in prog.calls
                   if prog.plan.ops[c.op].layer == "2.a"), [c.kernel for c in prog.calls]
    shared = rows and not ds_first
    assert ("(the phase planes of 2.a)" in labels["2.ds"]) == shared, labels
    # (else a pass of its own: x gathered tile-major, Lowering._tm_gather, where the grouped
    # kernel runs it, or a phase pass)
    ds_kernels = [c.kernel for c in prog.calls if prog.plan.ops[c.op].layer == "2.ds"]
    assert any("phase" in k or "tmgather" in k for k in ds_kernels) != shared, ds_kernels
    _matches_after_junk(cm, model, (3, h, w), (1, 3))
    one = torch.nn.Sequential(model[2].a).eval()
    cm1 = sparsecc.compile(one, torch.randn(1, 32, h, w), recipe={"formats": {"force": "csr"}})
    assert ("(rows planes)" in cm1.native.lib.labels[0]) == rows, cm1.native.lib.labels
    x = torch.randn(2, 32, h, w)
    x[0, :, h // 2, 2 * (wo // 2) - 1] = float("nan")  # (read by the dx -1 tap only)
    x[1, :, 0, w - 1] = float("nan")
    _assert_nan_reach(cm1, one[0], x, stride=2)


@pytest.mark.parametrize("hw,limit,after", [(24, "30K", True), (16, "15K", False)])
def test_tail_after_the_last_big_read(seed, monkeypatch, hw, limit, after):
    """The whole-batch tail starts after the last read of a big buffer (a downsample of a
    block's big input) when that reader's maps (12 x 12) run well a sample at a time, so the
    big input never crosses into the tail; with small maps (8 x 8) the reader goes to the
    tail as before (lower.TAIL_AFTER_READS). Against torch at batches 1, 3 and 9."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
                                _DownBlock(16, False), _BasicBlock(32),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", limit)
    # (the limits are set by the buffers' sizes with single planes: with AVX2 the block's
    # convs, 86 nonzeros an input channel, would take dual planes twice the size)
    monkeypatch.setattr(lower, "DUAL_PLANES", False)
    starts = {}
    for rule in (False, True):
        monkeypatch.setattr(lower, "TAIL_AFTER_READS", rule)
        cm = _native_csr(model, torch.randn(1, 3, hw, hw))
        prog = cm.native.lib.program
        assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
        starts[rule] = prog.calls[prog.tail].op
    ds = next(i for i, op in enumerate(cm.plan.ops) if op.layer.endswith("ds"))
    assert starts[False] <= ds, (starts, ds)
    assert (starts[True] > ds) == after, (starts, ds)
    for batch in (1, 3, 9):
        x = torch.randn(batch, 3, hw, hw)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("feeder", [False, True])
def test_tail_not_before_small_maps(seed, monkeypatch, feeder):
    """The whole-batch tail starts no earlier than the first conv with fewer than TAIL_MAPS
    output positions a sample (16 x 16 maps stay in the chunks, 8 x 8 ones go to the tail),
    or at the 1x1 conv that alone feeds it (lower._small_maps_start); without the rule the
    byte limit alone (20 KB: only the first conv's output is over it) starts the tail at the
    16 x 16 block after that output's last read. Against torch at batches 1, 3 and 9."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 32, 3, 1, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1),
              torch.nn.ReLU(), _BasicBlock(8)]
    if feeder:  # a 1x1 conv whose only reader is the first stride-2 conv
        layers += [torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1),
                   torch.nn.ReLU(), _BasicBlock(16)]
    else:
        layers += [_DownBlock(8, False), _BasicBlock(16)]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    _prune_convs(model)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "20K")
    starts = {}
    for maps in (0, 128):
        monkeypatch.setattr(lower, "TAIL_MAPS", maps)
        cm = _native_csr(model, torch.randn(1, 3, 16, 16))
        prog, ops = cm.native.lib.program, cm.plan.ops
        assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
        starts[maps] = prog.calls[prog.tail].op
    block = next(i for i, op in enumerate(ops) if op.layer.startswith("4."))
    first = next(i for i, op in enumerate(ops) if op.kind == "conv2d" and
                 tuple(cm.plan.tensors[op.output].shape[2:]) == (8, 8))
    assert tuple(ops[first].attrs["stride"]) == (2, 2), ops[first].layer
    want = first - 1 if feeder else first
    if feeder:
        assert tuple(ops[want].attrs["kernel"]) == (1, 1), ops[want].layer
    assert starts[0] == block, (ops[starts[0]].layer, ops[block].layer)
    assert starts[128] == want, (ops[starts[128]].layer, ops[want].layer)
    for batch in (1, 3, 9):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


class _DenseShortcut(torch.nn.Module):
    """A sparse branch, then a dense 1x1 conv whose output is added to it (the add fused
    into the dense conv's GEMM: a ResNet block whose downsample stays dense)."""

    def __init__(self, cin, c, act):
        super().__init__()
        self.a = torch.nn.Conv2d(cin, c, 3, 1, 1)
        self.b = torch.nn.Conv2d(cin, c, 1)
        self.act = act

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.act(self.b(x) + y)


@pytest.mark.parametrize("cin,c,hw,act", [(5, 7, 9, torch.nn.ReLU()), (16, 40, 14,
                                                                      torch.nn.Identity()),
                                           (3, 33, 5, torch.nn.Hardtanh(-0.5, 1.0))])
def test_dense_conv_fuses_the_residual_add(seed, cin, c, hw, act):
    torch.manual_seed(seed)
    model = _DenseShortcut(cin, c, act).eval()
    with torch.no_grad():
        model.a.weight.mul_((torch.rand_like(model.a.weight) < 0.3).float())
    cm = sparsecc.compile(model, torch.randn(1, cin, hw, hw))  # b unpruned: dense
    assert cm.native is not None, cm.native_status
    labels = {cm.plan.ops[i].layer: v for i, v in cm.native.lib.labels.items()}
    # (AVX2: 3 input channels at 5 x 5 run the few-input-channel conv, which fuses no add)
    small = jit.host().vector_width == 8 and cin <= 4
    assert labels["b"] == ("native direct conv (few input channels)" if small else
                           "native dense + residual add"), labels
    for batch in (1, 3):
        x = torch.randn(batch, cin, hw, hw) * 2
        with torch.no_grad():
            assert_matches(cm(x), model(x))


_SPEC_FNS: dict = {}


def _spec_fn(spec):
    """The kernel an emitter spec (its ``vw`` and ``emit``: native.phase, gmean, pool2 ...)
    builds, compiled for its vector width (AVX2 features for 8 on an AVX-512 host) and kept
    per spec, as a callable ``k(start, stop, args)``."""
    if spec not in _SPEC_FNS:
        mod = ir.Module("spec_test")
        spec.emit(mod, "k")
        obj = jit.compile_ir(ES.module_text(mod), h=None if spec.vw == jit.host().vector_width
                             else _HASWELL)
        _SPEC_FNS[spec] = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64,
                                           ctypes.c_void_p)(jit.load_object(obj, ["k"])["k"])
    return _SPEC_FNS[spec]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.integers(1, 3), h=st.integers(1, 37),
       w=st.integers(1, 37), sh=st.integers(1, 3), sw=st.sampled_from(PH.STRIDES),
       ph=st.integers(0, 3), pw=st.integers(0, 3), extra=st.integers(0, 2),
       phases=st.sampled_from(["all", "first", "last"]), gap=st.integers(0, 17),
       xgap=st.integers(0, 3), vw=st.sampled_from(sorted({jit.host().vector_width, 8})),
       layout=st.sampled_from(["", "x", "out"]), blk=st.integers(2, 4))
@example(seed=1, c=3, h=9, w=21, sh=1, sw=1, ph=1, pw=0, extra=0, phases="all", gap=5, xgap=3,
         vw=8, layout="", blk=2)
@example(seed=2, c=2, h=4, w=56, sh=1, sw=1, ph=3, pw=0, extra=2, phases="first", gap=0,
         xgap=1, vw=jit.host().vector_width, layout="", blk=2)
@example(seed=3, c=3, h=7, w=7, sh=2, sw=2, ph=0, pw=0, extra=0, phases="first", gap=0,
         xgap=0, vw=jit.host().vector_width, layout="out", blk=4)
@example(seed=4, c=2, h=7, w=7, sh=1, sw=1, ph=1, pw=1, extra=0, phases="all", gap=3,
         xgap=0, vw=jit.host().vector_width, layout="x", blk=4)
def test_phase_kernel(seed, c, h, w, sh, sw, ph, pw, extra, phases, gap, xgap, vw, layout,
                      blk):
    """The vectorised polyphase planes (LLVM, stride 1 and 2 along x) against slices of the
    zero-padded input: rows wider than two vectors and narrower than one, padding wider than
    the input, a subset of the phases, planes with gaps between them (zeroed), x's channels
    apart; the slack after the last plane is not written. Planes as wide as x's rows at
    stride 1 (the rows planes; the examples) are zero rows and one copy of x's rows. 3
    samples; ``layout``: x, or the planes, with the batch packed into the positions in
    blocks of ``blk`` (lower.PACK): the last block's padding samples get zero planes, or
    (x packed) none."""
    packed = {"": False, "x": True, "out": True}[layout]
    phase = _spec_fn(PH.PhaseSpec(vw, sw, packed))
    rng = np.random.default_rng(seed)
    n = 3
    nblk = -(-n // blk)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    pick = {"all": slice(None), "first": slice(0, 1), "last": slice(-1, None)}[phases]
    pys, pxs = np.arange(sh, dtype=np.int64)[pick], np.arange(sw, dtype=np.int64)[pick]
    hq = -(-(h + 2 * ph) // sh) + extra
    wq = -(-(w + 2 * pw) // sw) + extra
    nplanes = c * len(pys) * len(pxs)
    big = np.zeros((n, c, hq * sh + sh, wq * sw + sw), np.float32)
    big[:, :, ph:ph + h, pw:pw + w] = x
    ref = np.stack([big[:, :, py::sh, px::sw][:, :, :hq, :wq] for py in pys for px in pxs],
                   axis=2).reshape(n, nplanes, hq * wq)
    if layout == "out":  # (blocks, planes, blk samples' hq*wq floats), 5 floats of slack
        ps, per = blk * hq * wq, nplanes * blk * hq * wq
        out = np.full(nblk * per + 5, np.nan, np.float32)
        tail = [1, 0, blk, hq * wq, n]
    else:
        ps = hq * wq + gap  # planes ps floats apart, the gap zeroed
        per = nplanes * ps + 5
        out = np.full(nblk * blk * per, np.nan, np.float32)
        tail = [1, 0, 1, 0, n]
    if layout == "x":  # (blocks, c, blk samples' h*w floats), NaN in the padding
        xbig = np.full((nblk * blk, c, h * w), np.nan, np.float32)
        xbig[:n] = x.reshape(n, c, h * w)
        xbig = np.ascontiguousarray(xbig.reshape(nblk, blk, c, h * w).transpose(0, 2, 1, 3))
        xcs = blk * h * w
        tail[:2] = [blk, h * w]
    else:  # x's channels xcs >= h*w floats apart (NaN between: never read)
        xcs = h * w + xgap
        xbig = np.full((n, c, xcs), np.nan, np.float32)
        xbig[:, :, :h * w] = x.reshape(n, c, h * w)
    args = np.array([xbig.ctypes.data, out.ctypes.data, n, c, h, w, ph, pw, sh, sw,
                     pys.ctypes.data, len(pys), pxs.ctypes.data, len(pxs), hq, wq, per, ps,
                     xcs] + tail, np.int64)
    phase(0, PH.items(nblk * blk if layout else n, c, len(pys)), args.ctypes.data)
    if layout == "out":
        got = out[:-5].reshape(nblk, nplanes, blk, hq * wq).transpose(0, 2, 1, 3)
        got = got.reshape(nblk * blk, nplanes, hq * wq)
        np.testing.assert_array_equal(got[:n], ref)
        assert (got[n:] == 0).all()  # the padding samples
        assert np.isnan(out[-5:]).all()
        return
    got = out.reshape(nblk * blk, per)[:, :-5].reshape(nblk * blk, nplanes, ps)
    np.testing.assert_array_equal(got[:n, :, :hq * wq], ref)
    assert (got[:n, :, hq * wq:] == 0).all()
    assert np.isnan(out.reshape(nblk * blk, per)[:n, -5:]).all()
    assert np.isnan(out.reshape(nblk * blk, per)[n:]).all()  # (none for x's padding)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), planes=st.integers(1, 9), hw=st.integers(1, 70),
       gap=st.integers(0, 17), vw=st.sampled_from(sorted({jit.host().vector_width, 8})),
       blk=st.integers(0, 4))
def test_global_mean_kernel(seed, planes, hw, gap, vw, blk):
    """The vectorised global average pool (native.gmean, AVX-512 and AVX2) against numpy:
    planes of 1-70 floats (under one vector, a part vector after whole ones) read at a
    channel stride with NaN in the gaps between them (never read), items from 1 on (the
    first plane skipped). ``blk`` > 0: 3 samples of ``planes`` channels with the batch
    packed into the positions in blocks of blk (lower.PACK), NaN in the padding samples
    (skipped)."""
    packed = blk > 0
    mean = _spec_fn(GM.MeanSpec(vw, packed))
    rng = np.random.default_rng(seed)
    if blk:
        n, nblk = 3, -(-3 // blk)
        xs = np.full((nblk * blk, planes, hw), np.nan, np.float32)
        xs[:n] = rng.standard_normal((n, planes, hw)).astype(np.float32) * 10
        xp = np.ascontiguousarray(xs.reshape(nblk, blk, planes, hw).transpose(0, 2, 1, 3))
        out = np.full(n * planes + 1, 7.0, np.float32)
        args = np.array([xp.ctypes.data, out.ctypes.data, hw, blk * hw, planes, blk, hw, n],
                        np.int64)
        mean(0, nblk * blk * planes, args.ctypes.data)
        assert out[-1] == 7.0
        np.testing.assert_allclose(out[:-1], xs[:n].astype(np.float64).mean(axis=2).ravel(),
                                   rtol=1e-5, atol=1e-5)
        return
    x = np.full((planes, hw + gap), np.nan, np.float32)
    x[:, :hw] = rng.standard_normal((planes, hw)).astype(np.float32) * 10
    out = np.full(planes, 7.0, np.float32)
    args = np.array([x.ctypes.data, out.ctypes.data, hw, hw + gap, planes, 1, 0, 1],
                    np.int64)
    mean(1, planes, args.ctypes.data)
    assert out[0] == 7.0
    np.testing.assert_allclose(out[1:], x[1:, :hw].astype(np.float64).mean(axis=1),
                               rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), planes=st.integers(1, 5), h=st.integers(2, 40),
       w=st.integers(2, 70), extra=st.integers(0, 5),
       vw=st.sampled_from(sorted({jit.host().vector_width, 8})), nan=st.booleans())
@example(seed=0, planes=3, h=28, w=28, extra=0, vw=16, nan=False)
@example(seed=1, planes=2, h=14, w=14, extra=2, vw=8, nan=True)
def test_maxpool2_kernel(seed, planes, h, w, extra, vw, nan):
    """The vectorised 2x2 / 2 max pool (native.pool2, AVX-512 and AVX2) against torch's
    max_pool2d, bit for bit: maps 2-40 x 2-70 (odd sizes drop their last row / column; rows
    under one vector, a part vector after whole ones), rows ``extra`` floats wider than the
    map (a conv's uncropped rows; NaN there, never read), NaN inputs reaching their windows
    only, items from the second output row on (the first left as it was)."""
    rng = np.random.default_rng(seed)
    x = np.full((planes, h, w + extra), np.nan, np.float32)
    x[:, :, :w] = rng.standard_normal((planes, h, w)).astype(np.float32)
    if nan:
        x[0, rng.integers(h), rng.integers(w)] = np.nan
    ho, wo = h // 2, w // 2
    out = np.full((planes, ho, wo), 7.0, np.float32)
    args = np.array([x.ctypes.data, out.ctypes.data, h, w + extra, ho, wo], np.int64)
    _spec_fn(PL2.MaxPool2Spec(vw))(1, planes * ho, args.ctypes.data)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x[:, :, :w]), 2).numpy()
    rows = out.reshape(planes * ho, wo)
    assert (rows[:1] == 7.0).all()
    np.testing.assert_array_equal(rows[1:], ref.reshape(planes * ho, wo)[1:])


def _pack(a: np.ndarray, nb: int) -> np.ndarray:
    """(N, C, H, W) as native.lower.PACK holds it: (N / nb, C, nb x H x W), N rounded up to
    nb with zero samples."""
    n, c, h, w = a.shape
    n2 = -(-n // nb) * nb
    p = np.zeros((n2, c, h * w), a.dtype)
    p[:n] = a.reshape(n, c, h * w)
    return np.ascontiguousarray(p.reshape(n2 // nb, nb, c, h * w).transpose(0, 2, 1, 3)
                                .reshape(n2 // nb, c, nb * h * w))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 35), c=st.integers(1, 4),
       h=st.integers(2, 17), w=st.integers(2, 17), sides=st.sampled_from([(1, 16), (16, 1),
                                                                          (16, 16), (4, 1)]),
       vw=st.sampled_from(sorted({jit.host().vector_width, 8})))
@example(seed=0, n=13, c=3, h=14, w=14, sides=(1, 16), vw=16)
@example(seed=1, n=20, c=2, h=7, w=7, sides=(16, 1), vw=16)
def test_maxpool2_kernel_packed(seed, n, c, h, w, sides, vw):
    """The pool with x, out or both held with the batch packed into the positions (PACK):
    bit for bit torch's result, packed the same way, a last block's padding samples zeros in
    a packed out (written over junk); x's padding samples NaN, never read."""
    xb, ob = sides
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2).numpy()
    ho, wo = h // 2, w // 2
    if xb > 1:
        xs = _pack(x, xb)
        xs.reshape(-1, c, xb, h * w)[-1, :, n % xb or xb:] = np.nan
    else:
        xs = x
    want = _pack(ref, ob) if ob > 1 else ref
    out = np.full(want.shape, 7.0, np.float32)
    args = np.array([xs.ctypes.data, out.ctypes.data, h, w, ho, wo, c, n], np.int64)
    _spec_fn(PL2.MaxPool2Spec(vw, xb, ob))(0, out.size // wo, args.ctypes.data)
    np.testing.assert_array_equal(out, want)


def test_maxpool2_in_models(seed, monkeypatch):
    """A CNN's 2x2 / 2 pools (28 -> 14 -> 7 -> 3: MNIST's) run the vectorised kernel, one
    after an uncropped conv, against torch at batches 1 to 32; with AVX-512 the 7 x 7 maps
    are packed (PACK: the first pool writes them, the last reads them) at the batches that
    fill more lanes so (13, 16, 32), plain at the others. The numba kernel (POOL2_IR off)
    gives the same bits as the vectorised one, both plain."""
    from sparsecc.native import lower

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 24, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(24 * 9, 10)).eval()
    _prune_convs(model)
    cm = _native_csr(model, torch.randn(1, 1, 28, 28))
    calls = cm.native.lib.program.calls
    assert len({c.op for c in calls if c.kernel.startswith("maxpool2_v")}) == 3
    assert not any("maxpool" in c.kernel and not c.kernel.startswith("maxpool2_v")
                   for c in calls)
    if jit.host().vector_width == 16:
        assert {"maxpool2_v16_x1o16", "maxpool2_v16_x16o1"} <= {c.kernel for c in calls}
    _matches_after_junk(cm, model, (1, 28, 28), (1, 5, 13, 16, 20, 32), huge=0)
    monkeypatch.setattr(lower, "PACK", False)
    ir_plain = _native_csr(model, torch.randn(1, 1, 28, 28))
    monkeypatch.setattr(lower, "POOL2_IR", False)
    plain = _native_csr(model, torch.randn(1, 1, 28, 28))
    assert "k_maxpool_rows" in [c.kernel for c in plain.native.lib.program.calls]
    x = torch.randn(16, 1, 28, 28)
    np.testing.assert_array_equal(ir_plain(x), plain(x))


def test_small_maps_tail_without_big_activations(monkeypatch):
    """A model whose activations all fit a chunk (MNIST's CNN) still runs its small maps
    over the whole batch with AVX-512 (TAIL_SMALL_MAPS_ONLY): the tail starts at the first
    conv with fewer than TAIL_MAPS positions a sample (14 x 14 here), whose grouped kernels
    then take the batch's positions; with AVX2, or off, no tail. All match torch."""
    from sparsecc.native import lower

    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, 1, 1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 24, 3, 1, 1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(24 * 49, 10)).eval()
    _prune_convs(model)
    cm = _native_csr(model, torch.randn(1, 1, 28, 28))
    prog = cm.native.lib.program
    if jit.host().vector_width == 8:
        assert not prog.tail
        _matches_after_junk(cm, model, (1, 28, 28), (1, 3, 16), huge=0)
        return
    assert prog.tail, "no whole-batch tail"
    first = prog.plan.ops[prog.calls[prog.tail].op]
    assert first.kind == "conv2d" and first.attrs["weight_shape"][0] == 16
    _matches_after_junk(cm, model, (1, 28, 28), (1, 3, 16), huge=0)
    monkeypatch.setattr(lower, "TAIL_SMALL_MAPS_ONLY", False)
    off = _native_csr(model, torch.randn(1, 1, 28, 28))
    assert not off.native.lib.program.tail
    _matches_after_junk(off, model, (1, 28, 28), (3, 16), huge=0)


@pytest.mark.parametrize("kcols", [0, 128])
def test_grouped_kernel_prefetches_its_chunks_code(kcols, monkeypatch):
    """emit.CODE_PREFETCH: every grouped chunk body ends in an end label (the extent the
    dispatcher prefetches), the dispatcher (row blocks, or column blocks with ``kcols``)
    issues prefetcht1 over it, and the kernel's key tells the two builds apart; off, no
    prefetch is emitted."""
    from sparsecc.codegen.llvm import emit, emit_specialized, jit, kernels

    rng = np.random.default_rng(3)
    vw = jit.host().vector_width
    if vw not in (8, 16):
        pytest.skip("grouped kernels are AVX2 / AVX-512 assembly")
    mask = rng.random((90, 400)) < 0.2
    ip = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    ix = np.nonzero(mask)[1].astype(np.int64)
    spec = emit.KernelSpec("spmm", vw, 1, "relu", 0.0, 0.0, True, 16,
                           pattern_hash=kernels.pattern_hash(ip, ix), xrs=vw, span=vw,
                           group=30 if vw == 16 else 14, kcols=kcols)
    chunks = (len(emit_specialized.spmm_bounds(ip, spec.group)) - 1) * \
        emit_specialized.kblock_count(ix, kcols)
    assert chunks >= 3
    text = jit.assembly(kernels.kernel_ir(spec, emit.Pattern(ip, ix)), opt=0)
    for c in range(chunks):
        body = text.index(f"kernel_c{c}_f:")
        end = text.index(f"kernel_c{c}_f_end:")
        assert body < text.index("ret", body) < end
    assert "prefetcht1" in text and "cp" in spec.key.split("_")
    monkeypatch.setattr(emit, "CODE_PREFETCH", False)
    assert "cp" not in spec.key.split("_")
    assert "prefetch" not in jit.assembly(kernels.kernel_ir(spec, emit.Pattern(ip, ix)), opt=0)
