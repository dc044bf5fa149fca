"""A stride-2 1x1 conv's x gathered tile-major (native.tmgather, native.lower.TM_GATHER):
the kernel against numpy from plain and tile-major sources over even, odd and tiny maps,
and the lowering: a ResNet-style downsample in the per-sample head takes it, its input (a
stage's last output) then held tile-major, bit for bit against the phase-pass lowering
and against torch."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from llvmlite import ir
from torch import nn

import sparsecc
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.native import bands as BD
from sparsecc.native import lower as NL
from sparsecc.native import tmgather as TG
from tests.native.test_channel_strides import Bottleneck, _sparse, matches

_AVX512 = pytest.mark.skipif(jit.host().vector_width != 16, reason="an AVX-512 kernel")


def _gather_fn(pieces: int):
    mod = ir.Module("tmgather_test")
    TG.GatherSpec(pieces).emit(mod, "s")
    addr = jit.load_object(jit.compile_ir(ES.module_text(mod)), ["s"])["s"]
    return ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(addr)


@_AVX512
@pytest.mark.parametrize("h,w", [(56, 56), (28, 28), (14, 14), (13, 13), (9, 13), (2, 2),
                                 (1, 1), (4, 70), (30, 3)])
@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("c", [1, 3, 17])
@pytest.mark.parametrize("block,n", [(1, 2), (4, 7), (16, 3)])
def test_gather_kernel(rng, h, w, tiled, c, block, n):
    """Output position (i, j) of sample s of a block of ``block`` samples, channel ch, is
    x[s, ch, 2i, 2j], tile-major over the block's positions (its samples' maps one after
    another: tile p // 16, lane p % 16, channels 16 floats apart); the lanes past the
    block's positions and a last block's padding samples zero. x plain (channels at their
    16-float round-up, the pads NaN) or tile-major (a last tile's unused lanes NaN). Every
    line a piece reads lies inside its sample's channel."""
    hw = h * w
    ho, wo = (h + 1) // 2, (w + 1) // 2
    L = ho * wo
    full = rng.standard_normal((n, c, h, w)).astype(np.float32)
    lines = NL._round16(hw) // 16
    if tiled:
        xt = c * 16
        pos = np.full((n, c, lines * 16), np.nan, np.float32)
        pos[:, :, :hw] = full.reshape(n, c, hw)
        x = np.ascontiguousarray(pos.reshape(n, c, lines, 16).transpose(0, 2, 1, 3))
        xns, xcs = lines * xt, 16
    else:
        xcs = NL._round16(hw)
        x = np.full((n, c, xcs), np.nan, np.float32)
        x[:, :, :hw] = full.reshape(n, c, hw)
        xns = c * xcs
    tab = TG.table(ho, wo, 2 * w, 2, 0, xt if tiled else 16, block, xns)
    tiles = tab.shape[0]
    assert tiles == -(-block * L // 16)
    # (the lines read: offsets a, b of a channel's lane 0 inside the piece's sample)
    used = tab[:, :, 2] != 0
    last = (lines - 1) * (xt if tiled else 16)
    within = tab[:, :, :2] - tab[:, :, 3:4] * xns
    assert used.any(axis=1).all() and (within[used] <= last).all() and (within >= 0).all()
    blocks = -(-n // block)
    out = np.full((blocks, tiles, c, 16), np.nan, np.float32)
    args = np.array([x.ctypes.data, out.ctypes.data, c, tiles, xns, xcs, tab.ctypes.data,
                     block, n, tiles * c * 16, c * 16, 16, 0], np.int64)
    _gather_fn(tab.shape[1])(0, blocks * tiles, args.ctypes.data)
    sub = np.zeros((blocks * block, c, L), np.float32)
    sub[:n] = full[:, :, ::2, ::2].reshape(n, c, L)
    want = np.zeros((blocks, c, tiles * 16), np.float32)
    want[:, :, :block * L] = sub.reshape(blocks, block, c, L).transpose(0, 2, 1, 3) \
        .reshape(blocks, c, block * L)
    got = out.transpose(0, 2, 1, 3).reshape(blocks, c, tiles * 16)
    np.testing.assert_array_equal(got, want)


@_AVX512
@pytest.mark.parametrize("h,w,rows", [(56, 56, 2), (16, 24, 2), (12, 28, 4), (32, 9, 16),
                                      (20, 20, 4), (24, 20, 4), (8, 8, 2)])
@pytest.mark.parametrize("c", [1, 5])
@pytest.mark.parametrize("plane", [None, (0, 0), (1, 1)])
def test_gather_over_a_ring_band_by_band(rng, h, w, rows, c, plane):
    """x band-major in a ring of bands (native.bands: a band's rows of every channel
    together, ``ring`` bands reused in turn), written a band at a time as a row-band run
    writes it; after each band the gather runs the output tiles that band completed
    (Band.tiles_done, native.tmgather's first-tile arg), the table placing each position in
    the ring (bands.ring_offset). The ring is bands.GATHER's length: one band more than the
    tiles reach back (_reach), and no more. Every line the table names lies in the ring.
    ``plane`` (py, px): a 3x3 / 2 conv's rows plane's geometry instead (``where`` giving
    None off x's maps, zero lanes): row i of x's row py - 1 + 2i, column j of px + 2j, two
    zero rows more than x has (the first row of plane py 0, the last column of px 1 at odd
    w); the gathers stay done at the last band (Band.tiles_done) with rows past x's."""
    py, px = plane or (1, 0)
    ho, wo = (h + 1) // 2 + (2 if plane else 0), (w + 1) // 2
    L = ho * wo
    tiles = -(-L // 16)
    band = BD.Band(h, w, BD.GATHER_HALO, (ho, wo, py - 1, 2, tiles))
    ring = -(-BD._reach(band, rows, 0) // rows) + 1
    full = rng.standard_normal((c, h, w)).astype(np.float32)
    padded = np.zeros((c, 2 * ho + 2, 2 * wo + 2), np.float32)
    padded[:, 1:h + 1, :w] = full  # (a zero row above x)
    want = np.zeros((c, tiles * 16), np.float32)
    want[:, :L] = padded[:, py:py + 2 * ho:2, px:px + 2 * wo:2].reshape(c, L)

    def run(ring: int) -> np.ndarray:
        chunk = c * rows * w  # (a band of every channel)
        x = np.full(ring * chunk, np.nan, np.float32)
        off = BD.ring_offset(rows, ring, c, w, h)
        tab = TG.table(ho, wo, 2 * w, 2, 0, 16, 1, 0,
                       lambda i, j: off(py - 1 + 2 * i, px + 2 * j))
        used = tab[:, :, 2] != 0  # (channel 0's lines: the others rows x w floats on)
        assert (tab[:, :, :2][used] >= 0).all()
        assert (tab[:, :, :2][used] + 16 + (c - 1) * rows * w <= ring * chunk).all()
        out = np.full((tiles, c, 16), np.nan, np.float32)
        fn = _gather_fn(tab.shape[1])
        done = 0
        for b0 in range(0, h, rows):
            slot = (b0 // rows) % ring
            x[slot * chunk:(slot + 1) * chunk] = full[:, b0:b0 + rows].reshape(-1)
            upto = band.tiles_done(b0 + rows)
            if upto > done:
                args = np.array([x.ctypes.data, out.ctypes.data, c, upto - done,
                                 ring * chunk, rows * w, tab.ctypes.data, 1, 1,
                                 tiles * c * 16, c * 16, 16, done], np.int64)
                fn(0, upto - done, args.ctypes.data)
            done = upto
        assert done == tiles
        return out.transpose(1, 0, 2).reshape(c, tiles * 16)

    np.testing.assert_array_equal(run(ring), want)
    if ring > 1:  # (one band fewer: a band's first tile reads rows already overwritten)
        assert not np.array_equal(run(ring - 1), want)


def _net(hw: int) -> nn.Module:
    """A stem 1x1, two blocks, a downsampling block (its shortcut a 1x1 / 2 conv of the
    stage's last output), one more block, a pool and a linear."""
    return nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), Bottleneck(32, 16, 1),
                         Bottleneck(32, 16, 1), Bottleneck(32, 24, 2, 64),
                         Bottleneck(64, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


def _compile(model, x, monkeypatch, gather: bool):
    monkeypatch.setattr(NL, "TM_GATHER", gather)
    cm = sparsecc.compile(model, x, recipe={"formats": {"force": "csr"}})
    assert cm.native is not None, cm.native_status
    return cm


@_AVX512
@pytest.mark.parametrize("hw", [32, 28, 30, 23])
def test_downsample_gathers_tile_major(hw, monkeypatch):
    """The downsample's calls are the gather and its grouped kernel (no phase pass), the
    stage's last output it reads is tile-major (read by the next block's first 1x1 conv
    too), and the model matches torch and, bit for bit, the lowering with the phase pass
    (where that output stays plain). Maps 32 / 28 (whole tiles), 30 (15 x 15 out, the 900
    positions through 16-float channel strides) and 23 (odd: x's last row and column
    unread, 12 x 12 out)."""
    torch.manual_seed(hw)
    model = _sparse(_net(hw), 0.4, hw)
    x0 = torch.randn(2, 8, hw, hw)
    cm = _compile(model, x0, monkeypatch, True)
    base = _compile(model, x0, monkeypatch, False)
    prog = cm.native.lib.program
    ds = next(i for i, op in enumerate(prog.plan.ops) if op.layer == "4.short")
    kernels = [c.kernel for c in prog.calls if c.op == ds]
    assert any(k.startswith("tmgather") for k in kernels), kernels
    assert not any("phase" in k for k in kernels), kernels
    assert "(x gathered tile-major)" in cm.native.lib.labels[ds]
    x = prog.plan.storage_root(prog.plan.ops[ds].inputs[0])
    assert x in prog.tile_major, (x, prog.tile_major)
    assert x not in base.native.lib.program.tile_major
    assert not any(k.startswith("tmgather") for k in
                   (c.kernel for c in base.native.lib.program.calls))
    matches(cm, base, model, (8, hw, hw), (1, 2, 3))


class _Down(nn.Module):
    """1x1 -> 3x3 / 2 -> 1x1, + a 1x1 / 2 downsample of the input, ReLU."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(cin, mid, 1), nn.Conv2d(mid, mid, 3, 2, 1)
        self.c, self.ds = nn.Conv2d(mid, cout, 1), nn.Conv2d(cin, cout, 1, 2)

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return torch.relu(y + self.ds(x))


@_AVX512
def test_tail_downsample_reads_a_tile_major_x(monkeypatch):
    """A downsample in the whole-batch tail whose x, the head's last output (a 3x3 / 2
    conv's, 14 x 14 through 16-float channel strides), crosses into the tail tile-major: its
    packed variant gathers tile-major planes, its plain variant (other batches) plain phase planes
    (Lowering._gather_planes), both from that x. Bit for bit against the lowering with the
    phase pass (x plain) at batches 16 and 13 (packed, a part block) and 5 and 1 (plain),
    and against torch."""
    torch.manual_seed(7)
    model = _sparse(nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),  # 14 x 14
                                  _Down(16, 8, 32), Bottleneck(32, 8, 1),  # 7 x 7
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten()), 0.3, 7)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "14K")
    x0 = torch.randn(1, 3, 28, 28)
    cm = _compile(model, x0, monkeypatch, True)
    base = _compile(model, x0, monkeypatch, False)
    prog = cm.native.lib.program
    assert prog.chunk and prog.tail, (prog.chunk, prog.tail)
    ds = next(i for i, op in enumerate(prog.plan.ops) if op.layer == "4.ds")
    assert ds >= prog.calls[prog.tail].op, "the downsample runs in the tail"
    x = prog.plan.storage_root(prog.plan.ops[ds].inputs[0])
    assert x in prog.tile_major and x not in base.native.lib.program.tile_major
    kernels = [c.kernel for c in prog.calls if c.op == ds]
    assert sum(k.startswith("tmgather") for k in kernels) == 2, kernels  # (both variants)
    assert not any("phase" in k for k in kernels), kernels
    matches(cm, base, model, (3, 28, 28), (16, 13, 5, 1))
