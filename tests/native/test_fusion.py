"""Residual adds fused into the sparse conv before them (native library): the conv's kernel (or
its crop pass, for the shifted 3x3 path) writes act(conv + other) into the add's output and
the add disappears. Checked against torch at several batches, for the layouts and formats the
kernels have separate code for: pointwise, shifted, column panels, tail tiles, BSR, N:M."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecc
from tests.conftest import assert_matches

ACTS = {"relu": nn.ReLU(), "none": nn.Identity(), "hardtanh": nn.Hardtanh(-0.5, 0.5)}


class Residual(nn.Module):
    """act(conv(x) + x): the conv keeps the channel count and the spatial size."""

    def __init__(self, c: int, k: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.act = ACTS[act]

    def forward(self, x):
        return self.act(self.conv(x) + x)


class Downsample(nn.Module):
    """A ResNet block's shape: the main path is done before the shortcut conv, so the add can
    only fuse into the shortcut (its other addend, the main path, is ready by then)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.b = nn.Conv2d(cout, cout, 3, padding=1)
        self.down = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x):
        main = self.b(torch.relu(self.a(x)))
        return torch.relu(main + self.down(x))


def _labels(cm) -> list[str]:
    return [row["kernel"] for row in cm.report(measure=False).rows]


def _check(model, shape, batches=(1, 3), recipe=None, fused=1):
    model = model.eval()
    cm = sparsecc.compile(model, torch.randn(*shape), recipe=recipe)
    assert cm.native is not None, cm.native_status
    labels = _labels(cm)
    assert sum("+ residual add" in k for k in labels) == fused, labels
    assert sum(k.startswith("fused into") for k in labels) == fused, labels
    for batch in batches:
        x = torch.randn(batch, *shape[1:])
        with torch.no_grad():
            assert_matches(cm(x), model(x))


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("k", [1, 3])
def test_residual_fused(k, act, seed):
    model = sparsecc.prune(Residual(8, k, act), 0.8, scope="layer")
    _check(model, (1, 8, 7, 9))  # 63 pixels: every tile is a tail tile


def test_residual_fused_with_column_panels(seed):
    """300 input rows: the pointwise kernel splits them into column panels, partial sums go
    through the output, and only the last panel adds the residual."""
    model = sparsecc.prune(Residual(300, 1, "relu"), 0.9, scope="layer")
    _check(model, (1, 300, 12, 12), batches=(1, 2))


@pytest.mark.parametrize("fmt", ["bsr4x1", "nm2:4"])
def test_residual_fused_blocked_formats(fmt, seed):
    pattern = "4x1" if fmt.startswith("bsr") else "2:4"
    model = sparsecc.prune(Residual(16, 1, "relu"), 0.5, scope="layer", pattern=pattern)
    _check(model, (1, 16, 6, 5), recipe={"formats": {"force": fmt}})


def test_residual_fused_into_the_shortcut(seed):
    model = sparsecc.prune(Downsample(8, 16), 0.8, scope="layer")
    _check(model, (1, 8, 10, 10), recipe={"formats": {"force": "csr"}})


def test_residual_not_fused_into_a_conv_with_an_activation(seed):
    """relu(conv(x)) + x: the conv's own relu comes before the add; nothing fuses."""

    class ActFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return torch.relu(self.conv(x)) + x

    _check(sparsecc.prune(ActFirst(), 0.8, scope="layer"), (1, 8, 5, 5),
           recipe={"formats": {"force": "csr"}}, fused=0)
