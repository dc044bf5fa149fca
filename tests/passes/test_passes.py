"""Passes: before/after on small graphs, idempotence, the user's model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.frontend import capture
from sparsecc.lowering import lower
from sparsecc.passes import run_pass
from sparsecc.passes.prune import prunable_layers, sparsity_of
from tests.conftest import assert_matches


def _bn_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.BatchNorm1d(5), nn.Dropout())
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    return net.eval()


def _module_types(gm):
    return [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes
            if n.op == "call_module"]


def test_normalize_folds_bn_and_drops_dropout(seed):
    net = _bn_net()
    x = torch.randn(2, 3, 5, 5)
    cap = capture(net, x)
    assert "BatchNorm2d" in _module_types(cap.gm)
    res = run_pass("normalize", cap.gm)
    assert res.changed
    assert _module_types(cap.gm) == ["Conv2d", "ReLU", "Flatten", "Linear"]
    with torch.no_grad():
        assert_matches(cap.gm(x), net(x))
    again = run_pass("normalize", cap.gm)
    assert not again.changed, "normalize must be idempotent"


def test_bn_not_folded_when_conv_output_is_shared(seed):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    m = Shared().eval()
    with torch.no_grad():
        m.bn.running_var.fill_(4.0)
    cap = capture(m, torch.randn(1, 2, 3, 3))
    run_pass("normalize", cap.gm)
    assert "BatchNorm2d" in _module_types(cap.gm)
    x = torch.randn(3, 2, 3, 3)
    with torch.no_grad():
        assert_matches(sparsecc.compile(m, x)(x), m(x))


def test_fuse_folds_activations_and_is_idempotent(seed):
    net = _bn_net()
    x = torch.randn(2, 3, 5, 5)
    cap = capture(net, x)
    run_pass("normalize", cap.gm)
    plan = lower(cap)
    kinds = [op.kind for op in plan.ops]
    assert "act" in kinds
    res = run_pass("fuse", plan)
    assert res.changed and "act" not in [op.kind for op in plan.ops]
    conv = next(op for op in plan.ops if op.kind == "conv2d")
    assert conv.attrs["act"] == "relu"
    assert not run_pass("fuse", plan).changed


class _Residuals(nn.Module):
    """A residual add + ReLU (same shapes), a broadcast add + GELU, a sub + clamp, an int add
    + ReLU (not fused: integer arithmetic) and a residual whose sum is also read elsewhere."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, k):
        y = torch.relu(self.conv(x) + x)
        z = nn.functional.gelu(y + self.conv.bias.view(1, 3, 1, 1))
        w = torch.clamp(z - y, -0.3, 0.4)
        s = z * w
        i = torch.relu(k + k)
        return torch.relu(s) + s, i


def test_fuse_folds_activations_into_float_arithmetic(seed):
    m = _Residuals().eval()
    x, k = torch.randn(2, 3, 5, 7), torch.randint(-5, 5, (2, 4))
    cap = capture(m, (x, k))
    run_pass("normalize", cap.gm)
    plan = lower(cap)
    run_pass("fuse", plan)
    binary = [op for op in plan.ops if op.kind == "binary"]
    fused = sorted(op.attrs.get("act", "none") for op in binary)
    # y (relu), the broadcast z (gelu), w (clamp); s keeps its act op: two readers;
    # the int add keeps its act op
    assert fused.count("relu") == 1 and fused.count("gelu") == 1 and fused.count("clamp") == 1
    assert sum(op.kind == "act" for op in plan.ops) == 2
    from sparsecc.api import CompiledModel

    cm = CompiledModel(plan)
    for batch in (1, 3):
        xb, kb = torch.randn(batch, 3, 5, 7), torch.randint(-5, 5, (batch, 4))
        with torch.no_grad():
            got, ref = cm(xb, kb), m(xb, kb)
        assert_matches(got[0], ref[0])
        np.testing.assert_array_equal(np.asarray(got[1]), ref[1].numpy())


def test_select_format_threshold_and_idempotence(seed):
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    with torch.no_grad():
        net[0].weight.mul_((torch.rand(16, 16) < 0.1).float())
    x = torch.randn(2, 16)
    cap = capture(net, x)
    plan = lower(cap)
    assert run_pass("select-format", plan, {"csr_max_density": 0.35, "force": "csr"}).changed
    fmts = [op.attrs["fmt"] for op in plan.ops]
    assert fmts == ["csr", "dense"]  # the dense layer is above csr_max_density
    assert not run_pass("select-format", plan).changed
    from sparsecc.api import CompiledModel

    with torch.no_grad():
        assert_matches(CompiledModel(plan)(x), net(x))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97, 1.0])
def test_prune_exact_count(scope, sparsity, seed):
    from sparsecc import zoo

    model = zoo.lenet(seed=seed % 1000)
    with torch.no_grad():  # (a dense input: an init can draw an exact 0.0, as seed 479 does)
        for p in model.parameters():
            p.masked_fill_(p == 0, 1e-3)
    pruned = sparsecc.prune(model, sparsity, scope=scope)
    assert sparsity_of(model) < 1e-6, "the input model must stay untouched"
    layers = [m for _, m in prunable_layers(pruned)]
    groups = [layers] if scope == "global" else [[m] for m in layers]
    for group in groups:
        total = sum(m.weight.numel() for m in group)
        zeros = sum(int((m.weight == 0).sum()) for m in group)
        assert zeros == round(sparsity * total), "exactly the requested count is zeroed"
    if scope == "global":
        assert abs(sparsity_of(pruned) - sparsity) <= 1e-3
    again = sparsecc.prune(pruned, sparsity, scope=scope)
    for a, b in zip(pruned.parameters(), again.parameters()):
        assert torch.equal(a, b), "pruning twice must change nothing"


def test_prune_magnitude_keeps_largest(seed):
    lin = nn.Linear(50, 40)
    pruned = sparsecc.prune(lin, 0.75)
    w, p = lin.weight.detach().abs(), pruned.weight.detach()
    kept = w[p != 0]
    dropped = w[p == 0]
    assert kept.min() >= dropped.max()


def test_prune_exclude_and_random(seed):
    from sparsecc import zoo

    model = zoo.mnist_cnn()
    pruned = sparsecc.prune(model, 0.8, method="random", exclude=["conv_layers.0"], seed=seed)
    assert torch.equal(pruned.conv_layers[0].weight, model.conv_layers[0].weight)
    assert abs(sparsity_of(pruned, exclude=["conv_layers.0"]) - 0.8) <= 1e-3


def test_prune_recipe_section(seed):
    from sparsecc import zoo

    model = zoo.mlp()
    x = torch.randn(3, 784)
    cm = sparsecc.compile(model, x, recipe={"prune": {"sparsity": 0.8, "scope": "layer"},
                                            "formats": {"force": "csr"}})
    ref = sparsecc.prune(model, 0.8, scope="layer")
    with torch.no_grad():
        assert_matches(cm(x), ref(x))
    assert all(op.attrs["fmt"] == "csr" for op in cm.plan.ops if op.kind == "linear")
    assert np.isclose(np.mean([op.attrs["density"] for op in cm.plan.ops
                               if op.kind == "linear"]), 0.2, atol=2e-3)


class _Inverted(nn.Module):
    """MobileNetV2's block: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 project; the
    depthwise channels ``empty`` have only zero taps. ``tap`` returns the expanded tensor too
    (a second reader of it), ``pad`` pads the project conv (its input is then not constant
    at the border)."""

    def __init__(self, empty, tap=False, pad=0, stride=1):
        super().__init__()
        self.tap = tap
        self.expand = nn.Conv2d(4, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, stride=stride, padding=1, groups=6)
        self.project = nn.Conv2d(6, 5, 1, padding=pad)
        with torch.no_grad():
            self.dw.bias.uniform_(-1, 8)  # some past ReLU6's clamp on either side
            self.dw.weight[list(empty)] = 0.0

    def forward(self, x):
        e = nn.functional.relu6(self.expand(x))
        y = self.project(nn.functional.relu6(self.dw(e)))
        return (y, e) if self.tap else y


def _fused_plan(m, x):
    cap = capture(m, x)
    run_pass("normalize", cap.gm)
    plan = lower(cap)
    res = run_pass("fuse", plan)
    ops = {op.layer or op.name: op for op in plan.ops if op.kind == "conv2d"}
    return plan, res, {k: plan.constants[op.params["weight"]] for k, op in ops.items()}


@pytest.mark.parametrize("tap,pad,stride", [(False, 0, 1), (False, 0, 2), (True, 0, 2),
                                            (False, 1, 1)])
def test_fuse_empty_depthwise_channels(seed, tap, pad, stride):
    from sparsecc.api import CompiledModel

    empty = [0, 3, 4]
    m = _Inverted(empty, tap, pad, stride).eval()
    x = torch.randn(2, 4, 7, 5)
    plan, res, w = _fused_plan(m, x)
    gone = not tap and not pad  # nothing computes or reads the empty channels
    assert w["dw"].shape[0] == (3 if gone else 6)
    assert w["expand"].shape[0] == w["dw"].shape[0] == w["project"].shape[1]
    if not gone:
        rows = ~w["expand"].reshape(6, -1).any(axis=1)
        cols = ~w["project"].reshape(5, 6).any(axis=0)
        # the expand rows die only when the depthwise conv is their one reader; the project
        # columns fold only without padding
        assert list(np.flatnonzero(rows)) == ([] if tap else empty)
        assert list(np.flatnonzero(cols)) == ([] if pad else empty)
    else:  # the kept channels' weights as they were
        np.testing.assert_array_equal(w["dw"], m.dw.weight.detach().numpy()[[1, 2, 5]])
    assert any("empty depthwise" in n for n in res.notes)
    assert not run_pass("fuse", plan).changed
    assert m.expand.weight.abs().sum(dim=(1, 2, 3)).min() > 0  # the user's module untouched
    cm = CompiledModel(plan)
    for batch in (1, 3):
        xb = torch.randn(batch, 4, 7, 5)
        with torch.no_grad():
            got, ref = cm(xb), m(xb)
        for g, r in zip(got, ref) if tap else [(got, ref)]:
            assert_matches(g, r)
        with torch.no_grad():  # and the native library's
            got = sparsecc.compile(m, xb)(xb)
        for g, r in zip(got, ref) if tap else [(got, ref)]:
            assert_matches(g, r)


def test_fuse_empty_depthwise_edges(seed):
    """Every channel empty (one stays, and the project conv is its bias), a 1 x 1 map, and a
    NaN tap (not zero: its channel is kept)."""
    m = _Inverted(range(6)).eval()
    for x in (torch.randn(2, 4, 1, 1), torch.randn(1, 4, 6, 9)):
        plan, _, w = _fused_plan(m, x)
        assert w["dw"].shape[0] == 1 and not w["expand"].any() and not w["project"].any()
        with torch.no_grad():
            assert_matches(sparsecc.compile(m, x)(x), m(x))
    m = _Inverted([1, 2]).eval()
    with torch.no_grad():
        m.dw.weight[2, 0, 1, 1] = float("nan")
    _, _, w = _fused_plan(m, torch.randn(1, 4, 5, 5))
    assert w["dw"].shape[0] == 5 and np.isnan(w["dw"][1]).any()
