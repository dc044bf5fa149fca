"""RigL / SET mechanics on small models (fast), and lottery tickets: exact sparsity after every
step, regrowth really happens, grown weights start at zero with their optimizer state reset,
ERK / uniform layer budgets, and finalize() leaves a plain module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecc
from sparsecc.pruning.dst import layer_counts


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 4))


def weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d,
                                                                            nn.Linear))}


def batches(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 1, 8, 8, generator=g)
        yield x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()


@pytest.mark.parametrize("cls", [sparsecc.RigL, sparsecc.SET])
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_exact_sparsity_every_step_and_regrowth(cls, distribution, seed):
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dst = cls(model, opt, sparsity=0.8, distribution=distribution, update_every=5,
              drop_fraction=0.5, end_step=60, seed=seed)
    counts = dict(dst.counts)
    total = sum(w.numel() for w in weights(model).values())
    assert sum(counts.values()) == round(0.2 * total)
    before = {k: m.clone() for k, m in dst.masks.items()}
    step = 0
    for epoch in range(8):
        for x, y in batches(seed + epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            dst.step()  # a no-op: the optimizer hook already ran it
            step += 1
            assert dst.step_count == step
            for name, w in weights(model).items():
                assert int((w != 0).sum()) <= counts[name]
                assert int(dst.masks[name].sum()) == counts[name]
                assert not bool(w[~dst.masks[name]].any())
            assert sum(int(m.sum()) for m in dst.masks.values()) == round(0.2 * total)
    assert len(dst.updates) == 11  # steps 5, 10, ..., 55 (not 60: end_step)
    moved = sum(v["moved"] for u in dst.updates for v in u["layers"].values())
    assert moved > 0, "no connection was regrown anywhere"
    assert any(not torch.equal(before[k], dst.masks[k]) for k in before)
    # the cosine anneal: later updates move fewer weights
    first = sum(v["dropped"] for v in dst.updates[0]["layers"].values())
    last = sum(v["dropped"] for v in dst.updates[-1]["layers"].values())
    assert last < first
    plain = dst.finalize()
    assert plain is model
    for name, w in weights(model).items():
        assert int((w != 0).sum()) <= counts[name]


def test_grown_weights_start_at_zero_and_state_resets(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rigl = sparsecc.RigL(model, opt, sparsity=0.7, distribution="uniform", update_every=3,
                         drop_fraction=0.4, end_step=100, seed=seed)
    old = {k: m.clone() for k, m in rigl.masks.items()}
    for i in range(3):
        x = torch.randn(32, 20)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i < 2:
            old = {k: m.clone() for k, m in rigl.masks.items()}
    assert len(rigl.updates) == 1
    for name, lin in (("0", model[0]), ("2", model[2])):
        grown = rigl.masks[name] & ~old[name]
        if grown.any():
            assert bool((lin.weight[grown] == 0).all())
            buf = opt.state[lin.weight]["momentum_buffer"]
            assert bool((buf[grown] == 0).all())


def test_rigl_grows_where_the_gradient_is_largest(seed):
    """A layer whose loss only depends on a few inactive inputs: RigL grows exactly those."""
    torch.manual_seed(seed)
    lin = nn.Linear(10, 1, bias=False)
    model = nn.Sequential(lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rigl = sparsecc.RigL(model, opt, sparsity=0.8, distribution="uniform", update_every=1,
                         drop_fraction=0.5, end_step=None, seed=seed)
    inactive = (~rigl.masks["0"]).nonzero()[:, 1].tolist()
    x = torch.zeros(4, 10)
    x[:, inactive[0]] = 5.0  # the loss gradient is nonzero only on this input
    loss = (model(x) - 1.0).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert bool(rigl.masks["0"][0, inactive[0]])


def test_layer_counts_erk_and_dense_first():
    shapes = {"a": (16, 1, 3, 3), "b": (32, 16, 3, 3), "c": (10, 512)}
    for dist in ("erk", "uniform"):
        c = layer_counts(shapes, 0.9, dist)
        total = sum(math.prod(s) for s in shapes.values())
        assert sum(c.values()) == round(0.1 * total)
        assert all(0 <= c[k] <= math.prod(shapes[k]) for k in shapes)
    erk = layer_counts(shapes, 0.9, "erk")
    assert erk["a"] / 144 > erk["b"] / 4608  # ERK keeps small layers denser
    first = layer_counts(shapes, 0.9, "uniform", {"a"})
    assert first["a"] == 144


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(distribution="gauss"),
                                 dict(update_every=0), dict(drop_fraction=2.0),
                                 dict(init="lucky")])
def test_bad_options(bad):
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecc.PassError, match="rigl"):
        sparsecc.RigL(model, opt, **bad)


def test_lottery_ticket_rewinds_and_prunes_iteratively(seed):
    torch.manual_seed(seed)
    model = small_cnn()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def train(m, r):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        start = {k: v.clone() for k, v in m.state_dict().items()}
        for x, y in batches(seed + r, 4):
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seen.append(start)
        return float(loss.detach())

    ticket, history = sparsecc.lottery_ticket(model, train, sparsity=0.875, rounds=3)
    assert [round(h["sparsity"], 3) for h in history[1:]] == [0.5, 0.75, 0.875]
    assert history[0]["sparsity"] < 0.01
    # every round after the first starts from the initial weights, masked
    for start in seen[1:]:
        for k, v in start.items():
            if k.endswith("weight"):
                kept = v != 0
                assert torch.equal(v[kept], init[k][kept])
    from sparsecc.passes.prune import sparsity_of

    assert abs(sparsity_of(ticket) - 0.875) < 1e-3
