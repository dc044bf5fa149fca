"""Tile-major activations (native.lower.Lowering.tm, TILE_MAJOR): a sample's positions in
tiles of 16, each tile's channels one cache line apart, for tensors that only grouped sparse
kernels touch (a 1x1 conv's x, output or residual; a 3x3 conv's output over rows planes; a
strided 1x1 conv's output). Any other reader (a max pool, a phase pass, the global mean)
keeps a tensor as it was, and a residual may be laid out unlike its sum
(KernelSpec.res_rs / rts). Against torch at several batches, and bit for bit against the
same model lowered without the layout (same kernels, same sums)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.codegen.llvm import jit
from sparsecc.native import lower as NL
from tests.native.test_channel_strides import Bottleneck, _sparse, matches
from tests.native.test_kernels import _HASWELL


def _compile(model, x, monkeypatch, tiled: bool):
    monkeypatch.setattr(NL, "TILE_MAJOR", tiled)
    cm = sparsecc.compile(model, x, recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    return cm


def _net(hw: int, stride: int) -> nn.Module:
    """A ResNet stage in small: a stem, a (strided) block, two more blocks, a pool."""
    return nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), Bottleneck(32, 24, stride, 48),
                         Bottleneck(48, 24, 1), Bottleneck(48, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))


# the layout is the AVX-512 grouped kernels' (test_avx2_lowers_without_tile_major: AVX2's none)
_AVX512 = pytest.mark.skipif(jit.host().vector_width != 16, reason="tile-major is AVX-512")


@_AVX512
@pytest.mark.parametrize("hw,stride", [(16, 1), (28, 2), (14, 1), (13, 1)])
def test_blocks_tile_major(hw, stride, monkeypatch):
    """The blocks' inner maps and the outputs read only by the next block are tile-major
    (C x 16 floats a tile; 14 x 14 and 13 x 13 through their channel strides, whole 16-float
    tiles); the last block's output, read by the global mean, is not (its conv3 adds a
    tile-major residual into a plain sum). Matches torch and the untiled lowering."""
    torch.manual_seed(hw + stride)
    model = _sparse(_net(hw, stride), 0.4, hw)
    x0 = torch.randn(2, 8, hw, hw)
    cm = _compile(model, x0, monkeypatch, True)
    plain = _compile(model, x0, monkeypatch, False)
    tm = cm.native.lib.program.tile_major
    assert plain.native.lib.program.tile_major == {}
    plan = cm.plan
    pooled = next(op.inputs[0] for op in plan.ops if op.kind == "adaptive_pool2d")
    assert plan.storage_root(pooled) not in tm
    # every tile-major tensor: C x 16 floats a tile; the blocks' 3x3 outputs (24 / 16
    # channels) and a block output (48) among them
    for name, floats in tm.items():
        assert floats == int(plan.tensors[name].shape[1]) * 16, (name, floats)
    assert {24 * 16, 48 * 16} <= set(tm.values()), tm
    matches(cm, plain, model, (8, hw, hw))


class _Pooled(nn.Module):
    """A block output read by the next block and by a max pool: the pool does not take the
    layout, so that tensor stays plain, and the next block's residual is then plain beside a
    tile-major 3x3 output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(8, 32, 1)
        self.b1 = Bottleneck(32, 16, 1)
        self.b2 = Bottleneck(32, 16, 1)
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        y = self.b1(torch.relu(self.stem(x)))
        z = self.b2(y)
        return self.head(torch.cat([z, nn.functional.max_pool2d(y, 3, 1, 1)], 1))


@_AVX512
def test_other_readers_keep_the_layout_plain(monkeypatch):
    torch.manual_seed(3)
    model = _sparse(_Pooled(), 0.5, 3)
    cm = _compile(model, torch.randn(2, 8, 16, 16), monkeypatch, True)
    plain = _compile(model, torch.randn(2, 8, 16, 16), monkeypatch, False)
    plan = cm.plan
    pooled = next(op.inputs[0] for op in plan.ops if op.kind == "pool2d")
    tm = cm.native.lib.program.tile_major
    assert plan.storage_root(pooled) not in tm and tm, tm
    matches(cm, plain, model, (8, 16, 16), (1, 3))


def test_avx2_lowers_without_tile_major(monkeypatch):
    """The layout is for the AVX-512 grouped kernels (16 floats a line and a vector): an
    8-lane lowering of the same plan holds none, a 16-lane one some."""
    monkeypatch.setattr(NL, "TILE_MAJOR", True)
    torch.manual_seed(4)
    model = _sparse(_net(16, 1), 0.4, 4)
    cm = sparsecc.compile(model, torch.randn(2, 8, 16, 16),
                          recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    assert NL.lower_program(cm.plan, 8, 2).tile_major == {}
    assert NL.lower_program(cm.plan, 16, 2).tile_major


class _Inverted(nn.Module):
    """MobileNetV2's block: 1x1 expand -> ReLU6 -> 3x3 depthwise (stride s) -> ReLU6 -> 1x1
    project, + the input when the shape stays."""

    def __init__(self, c: int, e: int, co: int, stride: int):
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1)
        self.dw = nn.Conv2d(e, e, 3, stride, 1, groups=e)
        self.project = nn.Conv2d(e, co, 1)
        self.skip = stride == 1 and c == co

    def forward(self, x):
        y = self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x)))))
        return x + y if self.skip else y


@pytest.mark.parametrize("hw,avx2", [(14, False), (13, False), (14, True)])
def test_depthwise_writes_tile_major(hw, avx2, monkeypatch, tmp_path):
    """The depthwise kernel (native.dwsmall) writes its output tile-major for the grouped
    projection after it (lower.DW_TILE_MAJOR: each output vector one tile's line, the last
    one whole), reads x (and the expand conv's input, computed inside) through channel
    strides (DepthwiseSpec.xcs), and the stride-2 one writes a channel-strided output
    (ocs). Against torch, and bit for bit against the lowering without tile-major depthwise
    outputs and against the one without channel strides. ``avx2``: the AVX2 kernels (no
    tile-major layout there; the channel strides alike)."""
    if avx2:
        monkeypatch.setattr(jit, "host", lambda: _HASWELL)
        monkeypatch.setattr(NL, "AVX2_WIDE", False)  # (test_channel_strides._same_kernels)
    elif jit.host().vector_width != 16:
        pytest.skip("tile-major is AVX-512")
    torch.manual_seed(hw)
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), _Inverted(16, 96, 16, 1),
                          _Inverted(16, 96, 16, 1), _Inverted(16, 96, 32, 2),
                          _Inverted(32, 96, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = _sparse(model, 0.1, hw)
    with torch.no_grad():  # (a dense expand stays a conv: its depthwise conv reads x)
        model[2].expand.weight.normal_()
    x0 = torch.randn(2, 8, hw, hw)
    cm = _compile(model, x0, monkeypatch, True)
    specs = [k.ir_spec for k in cm.native.lib.program.kernels.values()
             if k.ir_spec is not None and k.ir_spec.key.startswith("dws_")]
    # the expand computed inside, and not
    assert any(s.expand for s in specs) and any(not s.expand for s in specs), specs
    assert any(s.xcs and not s.expand for s in specs), specs
    tiles = -(-hw * hw // 16)
    assert any(s.xcs == tiles * 16 for s in specs), specs
    assert any(s.ocs and s.stride == 2 for s in specs), specs
    if avx2:
        assert not any(s.ots for s in specs), specs
        monkeypatch.setenv("SPARSECC_CHANNEL_STRIDE", "0")
        dense = _compile(model, x0, monkeypatch, True)
        assert not dense.native.lib.program.channel_strides
        matches(cm, dense, model, (8, hw, hw), batches=(1, 3, 16))
        return
    tm = cm.native.lib.program.tile_major
    dw_out = {op.output for op in cm.plan.ops if op.kind == "conv2d" and
              int(op.attrs["groups"]) > 1 and tuple(op.attrs["stride"]) == (1, 1)}
    # a tile is C x 16 floats, C the channels the plan kept (at 10 % a depthwise channel
    # is empty with p = 0.9^9 and leaves the plan: passes.fuse.empty_channels)
    kept = {int(cm.plan.tensors[n].shape[1]) for n in dw_out}
    assert kept and all(c < 96 for c in kept), kept
    assert any(s.ots in {c * 16 for c in kept} and s.stride == 1 for s in specs), specs
    assert {cm.plan.storage_root(n) for n in dw_out} & set(tm), (dw_out, tm)
    monkeypatch.setattr(NL, "DW_TILE_MAJOR", False)
    plain = _compile(model, x0, monkeypatch, True)
    assert not any(k.ir_spec.ots for k in plain.native.lib.program.kernels.values()
                   if k.ir_spec is not None and k.ir_spec.key.startswith("dws_"))
    matches(cm, plain, model, (8, hw, hw), batches=(1, 3, 16))
    rt = sparsecc.load(cm.save(tmp_path / "m.scc"), native=True)  # (saved, loaded alike)
    assert rt.native is not None, rt.native_status
    x = torch.randn(4, 8, hw, hw)
    np.testing.assert_array_equal(np.asarray(rt(x)), np.asarray(cm(x)))
    monkeypatch.setenv("SPARSECC_CHANNEL_STRIDE", "0")
    dense = _compile(model, x0, monkeypatch, True)
    assert not dense.native.lib.program.channel_strides
    matches(cm, dense, model, (8, hw, hw), batches=(2, 5))
