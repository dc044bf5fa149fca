"""Every pattern and scope: exact counts over random shapes and seeds, edge cases, Pruner,
sensitivity, recipes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsecc
from sparsecc.passes.prune import PruneOptions, compute_masks, prunable_layers
from sparsecc.pruning.masks import matrix_view, nm_view


def _net(shapes, seed):
    """Linear and conv layers of random shapes; every weight nonzero."""
    torch.manual_seed(seed)
    layers = []
    for kind, a, b, k in shapes:
        layers.append(nn.Linear(a, b) if kind == "lin" else nn.Conv2d(a, b, k))
    return nn.ModuleList(layers)


layer_shape = st.tuples(st.sampled_from(["lin", "conv"]), st.integers(1, 24), st.integers(1, 12),
                        st.integers(1, 3))
nets = st.lists(layer_shape, min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=nets, seed=st.integers(0, 10**6), n=st.integers(1, 7), extra=st.integers(1, 6))
def test_nm_at_most_n_per_group(shapes, seed, n, extra):
    m = n + extra
    net = _net(shapes, seed)
    pruned = sparsecc.prune(net, pattern=f"{n}:{m}")
    for (_, before), (_, after) in zip(prunable_layers(net), prunable_layers(pruned)):
        w2, b2 = nm_view(after.weight.detach()), nm_view(before.weight.detach())
        rows, cols = w2.shape
        for g0 in range(0, cols, m):
            nz = (w2[:, g0:g0 + m] != 0).sum(dim=1)
            assert int(nz.max()) <= n
            # all weights were nonzero, so each group keeps exactly min(N, its length)
            assert bool((nz == min(n, cols - g0)).all())
        kept = w2 != 0
        assert torch.equal(w2[kept], b2[kept]), "kept weights are unchanged"


@settings(max_examples=40, deadline=None)
@given(shapes=nets, seed=st.integers(0, 10**6), r=st.sampled_from([1, 2, 4, 8, 16]),
       c=st.sampled_from([1, 2, 4]), sparsity=st.floats(0, 1), scope=st.sampled_from(
           ["global", "layer"]))
def test_blocks_whole_and_count(shapes, seed, r, c, sparsity, scope):
    net = _net(shapes, seed)
    pruned = sparsecc.prune(net, sparsity, pattern=f"{r}x{c}", scope=scope)
    layers = [m for _, m in prunable_layers(pruned)]
    for mod in layers:
        w2 = matrix_view(mod.weight.detach())
        rows, cols = w2.shape
        for i in range(0, rows, r):
            for j in range(0, cols, c):
                blk = w2[i:i + r, j:j + c] != 0
                assert bool(blk.all()) or not bool(blk.any()), "a block is zero or whole"
    groups = [layers] if scope == "global" else [[m] for m in layers]
    for group in groups:
        total = sum(m.weight.numel() for m in group)
        zeros = sum(int((m.weight == 0).sum()) for m in group)
        # whole blocks: the zeroed count is the block-sum nearest the target, so it is within
        # half the largest block of round(sparsity * total)
        assert abs(zeros - round(sparsity * total)) <= (r * c) / 2 + 1e-9


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
@pytest.mark.parametrize("pattern", ["unstructured", "4x1", "1x4"])
def test_sparsity_extremes(sparsity, pattern, seed):
    net = _net([("lin", 9, 5, 1), ("conv", 3, 4, 3)], seed)
    pruned = sparsecc.prune(net, sparsity, pattern=pattern)
    for _, m in prunable_layers(pruned):
        frac = float((m.weight == 0).float().mean())
        assert frac == sparsity


def test_layer_smaller_than_m_and_ragged_groups(seed):
    net = _net([("lin", 3, 4, 1), ("lin", 10, 2, 1)], seed)  # K=3 < M=4, K=10 = 2*4 + 2
    pruned = sparsecc.prune(net, pattern="2:4")
    assert (pruned[0].weight != 0).sum(dim=1).tolist() == [2] * 4
    w = pruned[1].weight
    assert (w[:, :8] != 0).sum().item() == 2 * 2 * 2 and (w[:, 8:] != 0).sum().item() == 2 * 2


def test_sparsity_contradicting_nm_and_missing_sparsity():
    with pytest.raises(sparsecc.PassError, match="contradicts"):
        sparsecc.prune(nn.Linear(8, 8), 0.9, pattern="2:4")
    with pytest.raises(sparsecc.PassError, match="sparsity is required"):
        sparsecc.prune(nn.Linear(8, 8))
    with pytest.raises(sparsecc.PassError, match="pattern"):
        sparsecc.prune(nn.Linear(8, 8), 0.5, pattern="4:2")


def test_overrides_min_params_exclude_include(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 50),
                        nn.Linear(50, 10))
    pruned = sparsecc.prune(net, 0.8, min_params=40, overrides={"2": 0.5}, exclude=["3"])
    assert torch.equal(pruned[0].weight, net[0].weight), "36 < min_params: kept dense"
    assert torch.equal(pruned[3].weight, net[3].weight), "excluded"
    assert int((pruned[2].weight == 0).sum()) == round(0.5 * pruned[2].weight.numel())
    emb = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8))
    only_linear = sparsecc.prune(emb, 0.5)
    assert int((only_linear[0].weight == 0).sum()) == 0, "embeddings are opt-in"
    with_emb = sparsecc.prune(emb, 0.5, include_types=["Embedding"])
    assert int((with_emb[0].weight == 0).sum()) > 0


def test_taylor_uses_gradients(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(64, 6)

    # The loss reads only output 0: weights feeding output 1 have zero gradient.
    def loss_fn(model, batch):
        return model(batch)[:, 0].pow(2).mean()

    pruned = sparsecc.prune(net, 0.25, method="taylor", calibration=[x, x * 2], loss_fn=loss_fn)
    last = pruned[2].weight
    assert int((last[1] == 0).sum()) == 6, "zero-gradient weights go first"
    total = sum(m.weight.numel() for _, m in prunable_layers(net))
    assert sum(int((m.weight == 0).sum()) for _, m in prunable_layers(pruned)) == round(
        0.25 * total)
    with pytest.raises(sparsecc.PassError, match="calibration"):
        sparsecc.prune(net, 0.5, method="taylor")


def test_cubic_schedule():
    s = sparsecc.CubicSchedule(0.9, 0.5, start_step=10, end_step=110, frequency=10)
    assert s.sparsity(0) == 0.5 and s.sparsity(10) == 0.5 and s.sparsity(500) == 0.9
    assert math.isclose(s.sparsity(60), 0.9 - 0.4 * 0.5 ** 3)
    vals = [s.sparsity(t) for t in range(0, 130)]
    assert all(a <= b for a, b in zip(vals, vals[1:])), "monotone"
    assert [t for t in range(0, 130) if s.updates_at(t)] == list(range(10, 111, 10))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4x1"])
def test_pruner_keeps_zeros_through_training(pattern, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    sched = sparsecc.CubicSchedule(0.75, 0.25, start_step=0, end_step=40, frequency=5)
    pruner = sparsecc.Pruner(net, sched, optimizer=opt, pattern=pattern)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    for _ in range(60):
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for name, mask in pruner.masks.items():
            grad = dict(net.named_modules())[name].weight.grad
            assert bool((grad[~mask] == 0).all()), "gradients of pruned weights are masked"
        opt.step()
        for name, mask in pruner.masks.items():
            w = dict(net.named_modules())[name].weight
            assert bool((w[~mask] == 0).all()), "pruned weights stay zero after the step"
    target = 0.5 if pattern == "2:4" else 0.75
    assert abs(pruner.sparsity - target) <= 1e-3 + (2 / 512 if pattern == "4x1" else 0)
    plain = pruner.finalize()
    assert all(not m.weight._backward_hooks for _, m in prunable_layers(plain))
    assert not opt._optimizer_step_post_hooks, "the optimizer hook is gone"
    before = [p.clone() for p in plain.parameters()]
    opt.step()  # no masks re-applied any more; grads from the last backward move weights
    assert any(not torch.equal(a, b) for a, b in zip(before, plain.parameters()))


def test_sensitivity_table_and_plot(tmp_path, seed):
    from sparsecc.pruning import sensitivity

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(32, 8)
    ref = net(x).detach()

    def metric(model):
        return -float((model(x) - ref).pow(2).mean())

    table = sensitivity(net, metric, sparsities=(0.25, 0.5, 0.9))
    assert table.layers == ["0", "2"] and table.baseline == 0.0
    assert all(table.metric[(lay, 0.9)] <= table.metric[(lay, 0.25)] + 1e-9
               for lay in table.layers)
    budgets = table.budgets(max_drop=1e9)
    assert budgets == {"0": 0.9, "2": 0.9}
    assert table.budgets(max_drop=-1.0) == {"0": 0.0, "2": 0.0}
    png = table.plot(tmp_path / "sens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0 | 128 |" in table.to_markdown()
    pruned = sparsecc.prune(net, 0.5, overrides=table.budgets(max_drop=1e9))
    assert int((pruned[0].weight == 0).sum()) == round(0.9 * 128)


def test_recipe_prune_and_schedule(tmp_path, seed):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune:\n  pattern: '2:4'\n  scope: layer\n"
                      "schedule:\n  final_sparsity: 0.5\n  end_step: 10\n  frequency: 2\n")
    net = nn.Sequential(nn.Linear(8, 8))
    pruner = sparsecc.Pruner.from_recipe(net, recipe)
    assert pruner.options.pattern == "2:4" and pruner.schedule.end_step == 10
    x = torch.randn(2, 8)
    cm = sparsecc.compile(net, x, recipe=recipe)
    assert cm.plan.ops[0].attrs["density"] == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  final_sparsity: 0.5\n  every: 3\n")
    with pytest.raises(sparsecc.RecipeError, match=r"schedule\.every"):
        sparsecc.Pruner.from_recipe(net, bad)
    with pytest.raises(sparsecc.RecipeError, match=r"prune\.pattern"):
        sparsecc.compile(net, x, recipe={"prune": {"pattern": "3:2"}})


def test_compute_masks_is_idempotent(seed):
    net = _net([("conv", 4, 8, 3), ("lin", 20, 6, 1)], seed)
    for pattern, s in [("unstructured", 0.7), ("2:4", None), ("4x1", 0.6)]:
        opts = PruneOptions(sparsity=s, pattern=pattern)
        once = sparsecc.prune(net, s, pattern=pattern)
        twice = sparsecc.prune(once, s, pattern=pattern)
        for a, b in zip(once.parameters(), twice.parameters()):
            assert torch.equal(a, b)
        assert compute_masks(once, opts).keys() == compute_masks(net, opts).keys()
