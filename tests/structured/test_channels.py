"""Channel removal: exact when the removed channels are dead, shapes kept, options honoured."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecc
from sparsecc import zoo
from sparsecc.frontend import capture
from sparsecc.passes.channels import ChannelOptions, _groups
from sparsecc.structured import depgraph, removal
from tests.conftest import assert_matches


class DenseStyle(nn.Module):
    """DenseNet-style: each conv sees the concat of everything before it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
        self.c2 = nn.Sequential(nn.BatchNorm2d(14), nn.ReLU(), nn.Conv2d(14, 6, 3, padding=1))
        self.head = nn.Linear(20, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.c1(x)], 1)
        x = torch.cat([x, self.c2(x)], 1)
        return self.head(x.mean((2, 3)))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        p, q = torch.split(F.relu(self.a(x)), [4, 8], dim=1)
        y = torch.cat([self.b(p), self.c(q)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class SEBlock(nn.Module):
    def __init__(self, c=16, r=4):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = x * s.view(s.size(0), -1, 1, 1)
        return self.out(x).flatten(1)


class PlainEncoder(nn.Module):
    """The encoder block of issue 19: a qkv Linear, attention written with ``@``, transpose
    and softmax, an FFN and two LayerNorms, over (batch, tokens, features)."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.h, self.dh).transpose(1, 2) for t in (q, k, v))
        a = ((q @ k.transpose(-2, -1)) / self.dh ** 0.5).softmax(dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, T, D)
        x = self.ln1(x + self.proj(o))
        return self.ln2(x + self.fc2(torch.relu(self.fc1(x))))


def _models():
    return {
        "plain_encoder": (lambda: PlainEncoder().eval(), (2, 10, 32)),
        "chain_mnist": (zoo.mnist_cnn, (2, 1, 28, 28)),  # flatten -> linear
        "residual": (zoo.resnet_basic, (2, 3, 32, 32)),
        "bottleneck": (zoo.resnet_bottleneck, (2, 3, 32, 32)),
        "depthwise_mbv2": (zoo.mobilenet_v2_block, (2, 3, 32, 32)),
        "densenet_concat": (lambda: zoo._randomize_bn(DenseStyle(), 0).eval(), (2, 3, 8, 8)),
        "split": (lambda: SplitNet().eval(), (2, 3, 6, 6)),
        "se_block": (lambda: zoo._randomize_bn(SEBlock(), 0).eval(), (2, 3, 8, 8)),
        "transformer": (zoo.tiny_transformer, None),
    }


def _kill(model, example, ratio):
    """Zero the producers of round(ratio * n) units per group, so they carry exact zeros."""
    cap = capture(copy.deepcopy(model), example, dynamic_batch=False)
    dg = depgraph.build(cap.gm)
    groups, _ = _groups(dg, ChannelOptions())
    assert groups, "the model should have prunable channel groups"
    killed = []
    for units in groups.values():
        units = sorted(units, key=lambda u: min(u))
        killed += units[1::2][: int(round(ratio * len(units)))]
    keep = removal.keep_masks(dg, killed)
    with torch.no_grad():
        for s in dg.slices:
            if s.role not in ("out", "norm") or (s.role == "norm" and s.name not in
                                                 ("weight", "bias")):
                continue
            obj, attr = removal._get(model, s.owner, s.name)
            t = getattr(obj, attr)
            dead = torch.from_numpy(~keep[s.space]).nonzero().flatten()
            t.index_fill_(s.dim, dead, 0.0)
    return len(groups)


@pytest.mark.parametrize("name", list(_models()))
def test_dead_channels_removed_exactly(name, seed):
    factory, shape = _models()[name]
    model = factory()
    x = zoo.example_input(model, 2, seed=seed) if shape is None else torch.randn(shape)
    n_groups = _kill(model, x, 0.5)
    small = sparsecc.remove_channels(model, x, ratio=0.5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in
                                                           model.parameters())
    report = small.channel_report
    assert len(report.groups) == n_groups
    assert all(g.units_after < g.units_before for g in report.groups if g.units_before > 1)
    for batch in (1, 3):
        xb = zoo.example_input(model, batch, seed=seed + batch) if shape is None else \
            torch.randn((batch,) + shape[1:])
        with torch.no_grad():
            assert_matches(small(xb), model(xb), rtol=1e-5, atol=1e-5)
    cm = sparsecc.compile(small, x)
    with torch.no_grad():
        assert_matches(cm(x), small(x))


def test_transformer_removes_whole_heads(seed):
    model = zoo.tiny_transformer()
    small = sparsecc.remove_channels(model, zoo.example_input(model, 2), ratio=0.5)
    qkv = small.get_submodule("layers.0.qkv")
    assert qkv.out_features == 96  # 2 of 4 heads, each 16 wide in q, k and v
    assert small.get_submodule("layers.0.fc1").out_features == 128
    assert small.get_submodule("layers.0.proj").in_features == 32
    skipped = " ".join(small.channel_report.skipped)
    assert "softmax over the channels" in skipped or "layer_norm" in skipped


def test_round_to_floor_exclude_and_global(seed):
    model = zoo.resnet_basic()
    x = torch.randn(1, 3, 32, 32)
    small = sparsecc.remove_channels(model, x, ratio=0.3, round_to=8)
    for g in small.channel_report.groups:
        assert g.channels_after % 8 == 0 and g.channels_after >= 8
    tiny = sparsecc.remove_channels(model, x, ratio=0.99, min_channels=2)
    assert all(g.channels_after >= 2 for g in tiny.channel_report.groups)
    kept = sparsecc.remove_channels(model, x, ratio=0.5, exclude=["layer2.0.conv1"])
    assert kept.get_submodule("layer2.0.conv1").out_channels == 32
    glob = sparsecc.remove_channels(model, x, ratio=0.5, scope="global")
    r = glob.channel_report
    total_before = sum(g.units_before for g in r.groups)
    total_after = sum(g.units_after for g in r.groups)
    assert total_before - total_after == round(0.5 * total_before)
    assert r.params_after < r.params_before and r.flops_after < r.flops_before


@pytest.mark.parametrize("importance", ["l2", "bn_scale", "random", "taylor"])
def test_importances(importance, seed):
    model = zoo.resnet_basic()
    x = torch.randn(4, 3, 32, 32)
    extra = {}
    if importance == "taylor":
        extra = dict(calibration=[(x, torch.randint(0, 10, (4,)))],
                     loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    small = sparsecc.remove_channels(model, x, ratio=0.5, importance=importance, **extra)
    assert small(x).shape == (4, 10)
    assert small.channel_report.params_after < small.channel_report.params_before


def test_model_untouched_and_bad_options(seed):
    model = zoo.resnet_basic()
    before = copy.deepcopy(model.state_dict())
    sparsecc.remove_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(sparsecc.PassError, match="ratio"):
        sparsecc.remove_channels(model, torch.randn(1, 3, 32, 32), ratio=1.5)
    with pytest.raises(sparsecc.PassError, match="importance"):
        sparsecc.remove_channels(model, torch.randn(1, 3, 32, 32), importance="fancy")


def test_batch_one_flatten_into_linear(seed):
    # At batch 1 the sizes cannot tell the batch axis from a channel axis: the final
    # avgpool -> flatten -> fc group must still be found.
    model = zoo.resnet_basic()
    small = sparsecc.remove_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    assert small.get_submodule("fc").in_features == 16


def test_layer_norm_over_channels_needs_allow_inexact(seed):
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 6)
    kept = sparsecc.remove_channels(model, x, ratio=0.5)
    assert kept.get_submodule("0").out_features == 16
    assert any("layer_norm" in s for s in kept.channel_report.skipped)
    cut = sparsecc.remove_channels(model, x, ratio=0.5, allow_inexact=True)
    assert cut.get_submodule("1").normalized_shape == (8,)
    assert cut.get_submodule("1").weight.shape == (8,) and cut(x).shape == (2, 3)


def test_report_per_group_params_and_flops(seed):
    small = sparsecc.remove_channels(zoo.mnist_cnn(), torch.randn(1, 1, 28, 28), ratio=0.5)
    r = small.channel_report
    by_name = {g.name: g for g in r.groups}
    conv = by_name["conv_layers.3"]
    assert conv.channels_before == 64 and conv.channels_after == 32
    # conv_layers.3 loses half its outputs and half its inputs: ~ a quarter of its weights remain
    assert conv.params_after == 32 * 16 * 9 + 32
    assert 0.2 < conv.flops_after / conv.flops_before < 0.3
    assert "conv_layers.3 | 64 -> 32" in str(r)


def test_plain_encoder_heads_and_ffn_neurons(seed):
    """Features are a Linear's last axis whatever the rank: the (2, 10, 32) encoder loses whole
    heads (through view, transpose and both matmuls) and FFN neurons; the residual stream,
    normalised by the LayerNorms, stays whole."""
    model = PlainEncoder().eval()
    x = torch.randn(2, 10, 32)
    small = sparsecc.remove_channels(model, x, ratio=0.5)
    assert small.get_submodule("qkv").out_features == 48  # 2 of 4 heads, 8 wide, in q, k, v
    assert small.get_submodule("proj").in_features == 16
    assert small.get_submodule("fc1").out_features == 32
    assert small.get_submodule("fc2").out_features == 32  # the residual stream stays
    assert small(x).shape == x.shape
    cm = sparsecc.compile(small, x)
    with torch.no_grad():
        assert_matches(cm(x), small(x))


def test_channel_overrides_per_group(seed):
    model = PlainEncoder(heads=8, ff=64).eval()
    x = torch.randn(2, 10, 32)
    small = sparsecc.remove_channels(model, x, ratio=0.5, overrides={"qkv": 0.25})
    assert small.get_submodule("qkv").out_features == 3 * 6 * 4  # 6 of 8 heads
    assert small.get_submodule("fc1").out_features == 32
    with pytest.raises(sparsecc.SparseccError):
        sparsecc.remove_channels(model, x, overrides={"qkv": 1.5})
    with pytest.raises(sparsecc.SparseccError):
        sparsecc.remove_channels(model, x, scope="global", overrides={"qkv": 0.5})


def test_activation_importance_removes_dead_units_first(seed):
    """importance='activation' (mean |activation| on calibration inputs x the consumer
    weights' L1): dead heads and FFN neurons score 0, so they go first, exactly."""
    model = PlainEncoder().eval()
    x = torch.randn(2, 10, 32)
    _kill(model, x, 0.5)
    calib = [torch.randn(3, 10, 32) for _ in range(2)]
    small = sparsecc.remove_channels(model, x, ratio=0.5, importance="activation",
                                     calibration=calib)
    assert small.get_submodule("fc1").out_features == 32
    with torch.no_grad():
        xb = torch.randn(4, 10, 32)
        assert_matches(small(xb), model(xb), rtol=1e-5, atol=1e-5)
    with pytest.raises(sparsecc.SparseccError, match="calibration"):
        sparsecc.remove_channels(model, x, importance="activation")
