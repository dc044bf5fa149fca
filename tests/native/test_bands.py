"""Row bands across layers (native.bands): a run of 1x1 and 3x3 / 1 convs over the same maps
in the chunked head runs a few output rows at a time, each conv behind the one before by its
halo, its big tensors band-major in rings. The result must equal the same model without
bands bit for bit, on every path a batch can take (one sample on 2 threads: the head without
bands; sample-parallel chunks: the bands; 1 thread: the bands, chunk after chunk)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

import sparsecc
from sparsecc.codegen.llvm import emit as E
from sparsecc.codegen.llvm import jit
from sparsecc.native import bands as BD
from sparsecc.native import expr as NX
from sparsecc.native import lower as NL
from sparsecc.native import tmgather as TG
from tests.conftest import assert_matches
from tests.native.test_kernels import _Bottleneck, _native_csr, _prune_convs

pytestmark = pytest.mark.skipif(jit.host().vector_width != 16,
                                reason="bands run grouped kernels (AVX-512)")


class _Down(torch.nn.Module):
    """A bottleneck that widens c -> out with a 1x1 downsample beside it (ResNet-50's
    layer1.0: the downsample takes the last 1x1 conv's output as its residual)."""

    def __init__(self, c, mid, out):
        super().__init__()
        self.a = torch.nn.Conv2d(c, mid, 1)
        self.b = torch.nn.Conv2d(mid, mid, 3, 1, 1)
        self.c = torch.nn.Conv2d(mid, out, 1)
        self.d = torch.nn.Conv2d(c, out, 1)

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return torch.relu(y + self.d(x))


def _model() -> torch.nn.Module:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, 1, 1), torch.nn.ReLU(),
        _Down(24, 16, 48), _Bottleneck(48, 16),
        torch.nn.Conv2d(48, 24, 1), torch.nn.ReLU(),          # (the next stage's first conv)
        torch.nn.Conv2d(24, 32, 3, 2, 1), torch.nn.ReLU(),    # (stride 2: the run ends)
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    _prune_convs(model)
    return model


def _compiled(model, h, w, bands: bool, monkeypatch):
    monkeypatch.setattr(BD, "BANDS", bands)
    monkeypatch.setattr(BD, "BAND_MIN_TENSOR", 0.0)  # (every run: these maps fit L2)
    monkeypatch.setattr(BD, "BAND_BYTES", 1)  # (the fewest rows a band)
    monkeypatch.setattr(NL, "CHUNK_BYTES", 1)  # (chunks of one sample)
    return _native_csr(model, torch.randn(1, 3, h, w))


def _matches_on_every_path(cm, other, model, h: int, w: int) -> None:
    """``cm`` against torch and bit for bit against ``other`` on every path a batch takes
    (one sample on 2 threads, sample-parallel chunks, one thread)."""
    for batch, threads in ((1, 2), (1, 1), (3, 2), (16, 2), (5, 1)):
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            want = model(x)
        got = _run(cm, x, threads)
        assert_matches(got, want)
        assert np.array_equal(got.numpy(), _run(other, x, threads).numpy()), (batch, threads)


def _run(cm, x, threads):
    numba.set_num_threads(threads)
    try:
        return cm(x)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


# (h, w): bands of 2 (w 24), 4 (w 20, 28) and 16 (w 9) rows, whole 16-float tiles; the
# last, 22 rows in 4-row bands, cannot be band-major (bands then stay off). tail:
# SPARSECC_TAIL_BYTES ("20K": the layers after the run over the whole batch). kblock:
# lower.KBLOCK (9: the convs' columns in blocks of 1 channel of a 3x3 conv, 9 of a 1x1 one,
# so the band calls run the column-blocked items)
@pytest.mark.parametrize("h,w,banded,tail,kblock", [
    (16, 24, True, "0", 0), (24, 20, True, "20K", 0), (12, 28, True, "0", 0),
    (32, 9, True, "20K", 0), (22, 20, False, "20K", 0), (16, 24, True, "20K", 9)])
def test_bands_match_torch_and_the_unbanded_model(h, w, banded, tail, kblock, seed,
                                                  monkeypatch):
    torch.manual_seed(seed)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", tail)
    monkeypatch.setattr(NL, "KBLOCK", kblock)
    model = _model()
    plain = _compiled(model, h, w, False, monkeypatch)
    cm = _compiled(model, h, w, True, monkeypatch)
    prog = cm.native.lib.program
    assert plain.native.lib.program.alt_head is None
    assert (prog.alt_head is not None) == banded, (prog.chunk, len(prog.calls))
    if banded:
        alt = prog.alt_head
        assert prog.chunk == 1 and len(prog.calls) > len(alt.calls)
        # the band-major tensors only the run touches are rings of a few bands
        rings = [b for name, b in prog.buffers.items()
                 if name in alt.buffers and b.nbytes(1) < alt.buffers[name].nbytes(1)]
        assert rings
        # a band call covers part of its conv's tiles
        tiles = {c.op: c.args[E.A_NTILES].expr.value for c in alt.calls
                 if c.kernel.startswith("sp_")}
        assert any(c.args[E.A_NTILES].expr.value < tiles[c.op] for c in prog.calls
                   if c.kernel.startswith("sp_") and c.op in tiles)
        # (column-blocked band calls: an item a row block of a set of samples)
        blocked = [c for c in prog.calls if c.kernel in prog.kernels and
                   prog.kernels[c.kernel].spec is not None and
                   prog.kernels[c.kernel].spec.kcols and c.op in tiles and
                   c.args[E.A_NTILES].expr.value < tiles[c.op]]
        assert bool(blocked) == bool(kblock)
        assert all(c.items(1) == c.args[E.A_NRB].expr.value for c in blocked)
        # the blocks' sums take their addends' bytes without bands (lower.RES_IN_PLACE),
        # never with them (band-major tensors keep their own; bands.band_calls drops a
        # share among a run's other tensors, a case this model does not have)
        assert not any(b.share for b in prog.buffers.values())
        assert kblock or any(b.share for b in alt.buffers.values())
    _matches_on_every_path(cm, plain, model, h, w)


def test_plan_lags_cover_the_halo(monkeypatch):
    """A 3x3 conv runs a whole band behind the conv writing its planes (it reads one row
    past its own); a 1x1 conv reading a tensor and a residual runs no earlier than the
    writers of both."""
    torch.manual_seed(0)
    monkeypatch.setattr(BD, "BAND_MIN_TENSOR", 0.0)
    monkeypatch.setattr(BD, "BAND_BYTES", 1)
    monkeypatch.setattr(NL, "CHUNK_BYTES", 1)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "0")
    cm = _native_csr(_model(), torch.randn(1, 3, 16, 24))
    p = cm.native.lib.program.alt_head  # (the program without bands)
    calls, stop = p.calls, p.tail or len(p.calls)
    (s, e), = [(s, e) for s, e in BD._runs(p, calls, stop) if e - s > 4]
    lags, rows = BD._plan_run(p, calls, s, e, NL.l2_bytes())
    assert rows == 2
    run = calls[s:e]
    writer = {}
    for k, c in enumerate(run):
        if c.band.halo < 0:
            continue
        x = c.args[E.A_X].name
        if x in writer:
            assert lags[k] >= lags[writer[x]] + (rows if c.band.halo else 0)
        if c.args[E.A_RES].kind == "tensor" and c.args[E.A_RES].name in writer:
            assert lags[k] >= lags[writer[c.args[E.A_RES].name]]
        writer[c.args[E.A_OUT].name] = k
    assert max(lags) == 2 * rows  # two 3x3 convs in the run
    # (no bands where the fewest rows of every tensor would fill over BAND_L2_SHARE of L2)
    sizes = {}
    for c in run:
        for a in (E.A_X, E.A_OUT, E.A_RES):
            if c.band.halo >= 0 and c.args[a].kind == "tensor":
                name = BD._root(p.plan, c.args[a].name)
                if name in p.buffers:
                    sizes[name] = NX.linear(p.buffers[name].nbytes)[0]
    band = rows * sum(sizes.values()) / run[0].band.h
    assert BD._plan_run(p, calls, s, e, int(band / BD.BAND_L2_SHARE) + 64) is not None
    assert BD._plan_run(p, calls, s, e, int(band / BD.BAND_L2_SHARE) - 64) is None


def test_bands_off_by_env(monkeypatch):
    """SPARSECC_BANDS=0 (A/B measurements): the head over whole maps, no second head."""
    monkeypatch.setattr(BD, "BAND_MIN_TENSOR", 0.0)
    monkeypatch.setattr(BD, "BAND_BYTES", 1)
    monkeypatch.setattr(NL, "CHUNK_BYTES", 1)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "0")
    x = torch.randn(1, 3, 16, 24)
    model = _model()
    prog = _native_csr(model, x).native.lib.program
    assert prog.alt_head is not None
    assert any("in row bands of" in label for label in prog.labels.values())
    monkeypatch.setenv("SPARSECC_BANDS", "0")
    assert _native_csr(model, x).native.lib.program.alt_head is None


def test_banded_artifact_loads_and_exports(tmp_path, seed, monkeypatch):
    """A model with a band run saved, loaded natively (the same floats as the compiled one,
    batches 1 and 16) and exported as a C library run by the example program (batches 1
    and 8, against torch)."""
    from tests.native.test_export_c import exported_matches_torch

    torch.manual_seed(seed)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "20K")
    model = _model()
    cm = _compiled(model, 16, 24, True, monkeypatch)
    assert cm.native.lib.program.alt_head is not None
    path = cm.save(tmp_path / "m.scc")
    rt = sparsecc.load(path, native=True)
    assert rt.native is not None, rt.native_status
    for batch in (1, 16):
        x = torch.randn(batch, 3, 16, 24)
        assert np.array_equal(np.asarray(rt(x)), cm(x).numpy())
    exported_matches_torch(path, model, (3, 16, 24), (1, 8), tmp_path)


# (h, w): bands of 2 rows (w 24, 40), 4 (w 20) and 1 (w 32); the downsample's output maps
# 12 x 12 to 24 x 10, whole tiles or not, big enough for the grouped kernel
@pytest.mark.parametrize("h,w", [(24, 40), (48, 20), (40, 24), (32, 32)])
def test_downsample_gather_joins_the_run(h, w, seed, monkeypatch):
    """A stage's last output read by the next stage's first 1x1 conv (in the run) and by its
    1x1 / 2 downsample (native.tmgather, GATHER): the gather's calls move into the run, a
    range of output tiles a band, so that output is band-major too, a ring of a few bands
    (it was whole, NCHW, with the gather after the run). Bit for bit against the same
    lowering with the gather after the run (GATHER off) and against torch, on every path a
    batch takes."""
    from tests.native.test_channel_strides import Bottleneck

    torch.manual_seed(seed)
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "0")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, 1, 1), torch.nn.ReLU(),
        _Down(24, 16, 48), _Bottleneck(48, 16), Bottleneck(48, 16, 2, 64),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    _prune_convs(model)
    monkeypatch.setattr(BD, "GATHER", False)
    after = _compiled(model, h, w, True, monkeypatch)
    monkeypatch.setattr(BD, "GATHER", True)
    cm = _compiled(model, h, w, True, monkeypatch)
    prog, old = cm.native.lib.program, after.native.lib.program
    assert prog.alt_head is not None and old.alt_head is not None
    ds = next(i for i, op in enumerate(prog.plan.ops) if op.layer == "4.short")
    gathers = [k for k, c in enumerate(prog.calls) if c.kernel.startswith("tmgather")]
    assert len(gathers) > 1 and {prog.calls[k].op for k in gathers} == {ds}
    assert sorted(prog.calls[k].args[TG.G_T0].expr.value for k in gathers)[0] == 0
    # inside the run: before the stride-2 conv's calls, after the first band calls
    conv_b = next(i for i, op in enumerate(prog.plan.ops) if op.layer == "4.b")
    first_b = min(k for k, c in enumerate(prog.calls) if c.op == conv_b)
    assert max(gathers) < first_b
    assert any(c.kernel.startswith("sp_") and c.op < ds for c in prog.calls[gathers[0]:])
    x = prog.plan.storage_root(prog.plan.ops[ds].inputs[0])
    assert prog.buffers[x].nbytes(1) < old.buffers[x].nbytes(1)  # (a ring)
    assert "(x gathered in the row bands that write it)" in cm.native.lib.labels[ds]
    # (GATHER off: one gather call over every tile)
    assert [c.args[TG.G_T0].expr.value for c in old.calls
            if c.kernel.startswith("tmgather")] == [0]
    _matches_on_every_path(cm, after, model, h, w)
