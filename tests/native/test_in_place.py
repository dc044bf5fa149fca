"""Residual sums written in place of their addend (native.lower.RES_IN_PLACE, Buffer.share):
a conv whose kernel reads each residual element only where it then writes the sum takes
the addend's bytes for its output when the addend dies there, so its stores land on lines
its epilogue has just read. The arena packing (lower._pack) keeps the pair at one offset
and the addend's bytes live until the sum's last reader; the head's segments put a chain of
block outputs in one boundary place (lower._partner_slot). Against torch and bit for bit
against the same model lowered without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.codegen.llvm import emit as E_
from sparsecc.codegen.llvm import jit
from sparsecc.native import lower as NL
from sparsecc.native.expr import const
from tests.native.test_channel_strides import Bottleneck, _sparse, matches
from tests.native.test_kernels import _HASWELL


def _buf(name: str, nbytes: int, first: int, last: int, share: str = "") -> NL.Buffer:
    return NL.Buffer(name, const(nbytes), first, last, share=share)


def test_pack_keeps_a_share_at_its_partners_offset():
    """A sum over its addend (b over a, then c over b) sits at a's offset; a buffer live
    meanwhile (d, over a's and b's lives) never overlaps them; one written after the last
    of the chain (e) may take their bytes; without the shares b needs bytes of its own."""
    a, b, c = _buf("a", 1000, 0, 2), _buf("b", 1000, 2, 5, "a"), _buf("c", 1000, 5, 6, "b")
    d, e = _buf("d", 640, 1, 4), _buf("e", 1000, 7, 8)
    top = NL._pack([a, b, c, d, e])
    assert a.offset == b.offset == c.offset
    lo, hi = a.offset[1], a.offset[1] + 1024
    assert d.offset[1] + 640 <= lo or d.offset[1] >= hi, (a.offset, d.offset)
    assert top == (0, 1024 + 640), top
    plain = [_buf("a", 1000, 0, 2), _buf("b", 1000, 2, 5), _buf("d", 640, 1, 4)]
    assert NL._pack(plain) == (0, 2 * 1024 + 640)
    # a share whose partner is not packed with it (the head's arena without a boundary
    # tensor): placed on its own
    lone = _buf("b", 1000, 2, 5, "gone")
    assert NL._pack([lone, _buf("d", 640, 1, 4)]) == (0, 1024 + 640)


def _net(hw: int, stride: int) -> nn.Module:
    """Bottleneck blocks: a strided one (its downsample's sum over conv3's output), two
    more (their sums over the block input), a pool."""
    return nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), Bottleneck(32, 24, stride, 48),
                         Bottleneck(48, 24, 1), Bottleneck(48, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))


def _compile(model, x, monkeypatch, in_place: bool):
    monkeypatch.setattr(NL, "RES_IN_PLACE", in_place)
    cm = sparsecc.compile(model, x, recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    return cm


def _shares(cm) -> dict[str, str]:
    return {b.name: b.share for b in cm.native.lib.program.buffers.values() if b.share}


@pytest.mark.parametrize("hw,stride,avx2", [(16, 1, False), (28, 2, False), (14, 1, False),
                                            (13, 2, False), (16, 2, True)])
def test_residual_sums_in_place(hw, stride, avx2, monkeypatch):
    """The blocks' sums take their addends' bytes (tile-major, channel-strided 14 x 14 and
    13 x 13 maps, and the AVX2 kernels' plain layout); outputs as without, bit for bit."""
    if avx2:
        monkeypatch.setattr(jit, "host", lambda: _HASWELL)
        monkeypatch.setattr(NL, "AVX2_WIDE", False)  # (test_channel_strides._same_kernels)
    elif jit.host().vector_width != 16:
        pytest.skip("the AVX-512 kernels")
    torch.manual_seed(hw + stride)
    model = _sparse(_net(hw, stride), 0.4, hw)
    x0 = torch.randn(2, 8, hw, hw)
    cm = _compile(model, x0, monkeypatch, True)
    plain = _compile(model, x0, monkeypatch, False)
    assert not _shares(plain)
    shares, prog = _shares(cm), cm.native.lib.program
    # the two unstrided blocks' sums at least (a sum is the next block's addend: a chain)
    assert len(shares) >= 2, shares
    for o, r in shares.items():
        assert prog.buffers[o].offset == prog.buffers[r].offset, (o, r)
        assert prog.buffers[r].last == prog.buffers[o].first, (o, r)
    matches(cm, plain, model, (8, hw, hw), batches=(1, 2, 5, 16))


def test_column_blocks_keep_their_own_sum(monkeypatch):
    """A grouped conv in column blocks (KernelSpec.kcols) leaves partial sums in out before
    its last block adds the residual: its sum never takes the residual's bytes."""
    if jit.host().vector_width != 16:
        pytest.skip("the AVX-512 grouped kernel's column blocks")
    monkeypatch.setattr(NL, "KBLOCK", 16)
    monkeypatch.setattr(NL, "KBLOCK_HALVES", 0)
    torch.manual_seed(3)
    model = _sparse(_net(16, 1), 0.4, 16)
    x0 = torch.randn(2, 8, 16, 16)
    cm = _compile(model, x0, monkeypatch, True)
    plain = _compile(model, x0, monkeypatch, False)
    prog = cm.native.lib.program
    blocked = {prog.plan.storage_root(c.args[E_.A_OUT].name) for c in prog.calls
               if c.kernel in prog.kernels and prog.kernels[c.kernel].kind == "sparse" and
               prog.kernels[c.kernel].spec.residual and prog.kernels[c.kernel].spec.kcols}
    assert blocked, "no residual conv in column blocks"
    assert not blocked & set(_shares(cm)), (blocked, _shares(cm))
    matches(cm, plain, model, (8, 16, 16), batches=(1, 3))
