"""Activations whose channels lie a multiple of 16 floats apart (native.lower.Lowering.cs):
(N, C, H, W) maps with H*W not a multiple of 16 (7x7, 14x14, 5x9) between ops that take the
stride (sparse 1x1 convs, the shifted convs' phase pass and crops, fused residual adds, the
global average pool, activation passes); a tensor that any other call touches is lowered
dense again. Against torch at several batches, and against the same model lowered with every
activation dense (SPARSECC_CHANNEL_STRIDE=0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from tests.conftest import assert_matches


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride s) -> 1x1 (c -> cout channels), + the shortcut (a strided or
    widening 1x1 when s > 1 or cout != c), ReLU."""

    def __init__(self, c: int, mid: int, s: int, cout: int | None = None):
        super().__init__()
        cout = cout or c
        self.a = nn.Conv2d(c, mid, 1)
        self.b = nn.Conv2d(mid, mid, 3, s, 1)
        self.c = nn.Conv2d(mid, cout, 1)
        self.short = nn.Conv2d(c, cout, 1, s) if s > 1 or cout != c else nn.Identity()

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.relu(self.c(y) + self.short(x))


@pytest.fixture(autouse=True)
def _same_kernels(monkeypatch):
    """Both lowerings on the same kernels, for the bit-for-bit comparison: with AVX2 the
    generic kernel takes wide tiles only over whole vectors (lower.AVX2_WIDE), which padded
    channels give a 7 x 7 map and dense ones do not (other tiles, other partial sums)."""
    from sparsecc.native import lower

    monkeypatch.setattr(lower, "AVX2_WIDE", False)


def _sparse(model: nn.Module, keep: float, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) < keep).float())
    return model.eval()


def _compile(model, x, monkeypatch, strided: bool):
    monkeypatch.setenv("SPARSECC_CHANNEL_STRIDE", "1" if strided else "0")
    cm = sparsecc.compile(model, x, recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    return cm


@pytest.mark.parametrize("hw,stride", [(7, 1), (14, 2), ((5, 9), 1), ((9, 13), 2)])
def test_bottlenecks_with_channel_strides(hw, stride, monkeypatch):
    """Two bottleneck blocks and a global average pool: every map between them has padded
    channels (none is a multiple of 16), the result matches torch and the dense lowering."""
    h, w = hw if isinstance(hw, tuple) else (hw, hw)
    torch.manual_seed(h * w + stride)
    model = _sparse(nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), Bottleneck(32, 24, stride),
                                  Bottleneck(32, 16, 1), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(32, 10)), 0.4, h * w)
    cm = _compile(model, torch.randn(2, 8, h, w), monkeypatch, True)
    dense = _compile(model, torch.randn(2, 8, h, w), monkeypatch, False)
    strides = cm.native.lib.program.channel_strides
    ho, wo = -(-h // stride), -(-w // stride)
    want = {h * w, ho * wo} - {n for n in (h * w, ho * wo) if n % 16 == 0 or n <= 16}
    assert {-(-n // 16) * 16 for n in want} == set(strides.values()), strides
    assert len(strides) >= 6, strides  # the blocks' maps, not only one
    assert dense.native.lib.program.channel_strides == {}
    matches(cm, dense, model, (8, h, w))


def matches(cm, other, model, shape, batches=(1, 2, 5)) -> None:
    """``cm`` against torch, and bit for bit against ``other`` (the same model lowered
    another way: same kernels, same sums), on fresh inputs of (batch, *shape)."""
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            want = model(x)
        got = cm(x)
        assert_matches(got, want)
        np.testing.assert_array_equal(got, other(x))


class _Pooled(nn.Module):
    """A 1x1 conv whose output a 3x3 max pool (stride 1) reads, and a depthwise conv's
    input that an add reads too: calls that do not take channel strides (the pool, the add
    and the generic sparse kernel; the depthwise kernel takes them), so those maps go back
    to dense."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 1)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.relu(self.b(self.pool(y)))
        return self.c(self.dw(z) + z)


def test_unsupported_readers_keep_maps_dense(monkeypatch):
    torch.manual_seed(0)
    model = _sparse(_Pooled(), 0.5, 0)
    cm = _compile(model, torch.randn(2, 8, 7, 7), monkeypatch, True)
    plan = cm.plan
    pooled_in = next(op.inputs[0] for op in plan.ops if op.kind == "pool2d")
    dw_in = next(op.inputs[0] for op in plan.ops if op.kind == "conv2d" and
                 int(op.attrs["groups"]) > 1)
    strides = cm.native.lib.program.channel_strides
    assert pooled_in not in strides and dw_in not in strides, strides
    for batch in (1, 3):
        x = torch.randn(batch, 8, 7, 7)
        with torch.no_grad():
            assert_matches(cm(x), model(x))


class _Mixed(nn.Module):
    """A residual whose addend a dense-only kernel wrote (a max pool) beside one a strided 1x1
    conv wrote, and a GELU no sparse kernel applies itself (an activation pass over the
    strided map, its pads included)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        s = nn.functional.max_pool2d(self.stem(x), 3, 1, 1)
        y = torch.relu(self.b(torch.relu(self.a(s))) + s)
        return self.c(nn.functional.gelu(self.a(y)))


def test_mixed_strides_in_one_model(monkeypatch):
    torch.manual_seed(1)
    model = _sparse(_Mixed(), 0.6, 1)
    cm = _compile(model, torch.randn(2, 3, 7, 7), monkeypatch, True)
    strides = cm.native.lib.program.channel_strides
    assert strides and set(strides.values()) == {64}, strides
    plan = cm.plan
    pooled = next(op.output for op in plan.ops if op.kind == "pool2d")
    assert pooled not in strides
    for batch in (1, 4):
        x = torch.randn(batch, 3, 7, 7) * 2
        with torch.no_grad():
            assert_matches(cm(x), model(x))
