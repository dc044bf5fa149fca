"""The cost model's machine rates: measured once per machine, cached, and robust to a bad cache
file; the rates move the dense/sparse choice the way they should."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest

from sparsecc.formats import calibrate, cost


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Calibration on, its file in tmp_path, measure() replaced by a counter."""
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("SPARSECC_CALIBRATE", "1")
    monkeypatch.setattr(calibrate, "_path", lambda threads: path)
    calls = []
    fake = replace(cost.DEFAULT_RATES, dense_flops=1.5e11, source="fake")

    def measure(threads):
        calls.append(threads)
        return fake

    monkeypatch.setattr(calibrate, "measure", measure)
    return path, calls, fake


def test_measured_once_then_read_from_the_cache(cache):
    path, calls, fake = cache
    assert calibrate.rates_for(2) == fake and calls == [2]
    assert json.loads(path.read_text())["dense_flops"] == 1.5e11
    assert calibrate.rates_for(2) == fake and calls == [2]  # read, not measured again


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"dense_flops": 1}',
                                  "BAD_RATE", "NAN_RATE", "EXTRA_KEY"])
def test_a_bad_cache_file_is_measured_again(cache, text):
    path, calls, fake = cache
    good = asdict(fake)
    if text == "BAD_RATE":
        text = json.dumps(dict(good, vec_fmas=-1.0))
    elif text == "NAN_RATE":
        text = json.dumps(dict(good, gather_nnz="nan"))
    elif text == "EXTRA_KEY":
        text = json.dumps(dict(good, cmd="rm -rf /"))
    path.write_text(text)
    assert calibrate.rates_for(2) == fake and calls == [2]
    assert calibrate._read(path) == fake  # rewritten with the measured rates


def test_off_switch_keeps_the_reference_rates(cache, monkeypatch):
    _, calls, _ = cache
    monkeypatch.setenv("SPARSECC_CALIBRATE", "0")
    assert calibrate.rates_for(2) == cost.DEFAULT_RATES and calls == []


def test_rates_move_the_choice():
    g = cost.LayerGeom(rows=256, k=256, n=1, L=784)
    stored = int(256 * 256 * 0.5)
    slow_dense = replace(cost.DEFAULT_RATES, dense_flops=1e10)
    fast_dense = replace(cost.DEFAULT_RATES, dense_flops=1e12)
    for rates, want in ((slow_dense, "csr"), (fast_dense, "dense")):
        est = {f: cost.estimate(f, g, 256 * 256 if f == "dense" else stored, 2, 16, rates)
               for f in ("dense", "csr")}
        assert min(est, key=est.get) == want, est
    # a per-row cost makes short rows (few nonzeros each) dearer per nonzero
    rowy = replace(cost.DEFAULT_RATES, row_ns=50.0)
    short = cost.estimate("csr", g, 6000, 2, 16, rowy) - cost.estimate("csr", g, 6000, 2, 16)
    assert short > 0
    # batch 1: a GEMV within the caches is priced at the cached rate, a large one at DRAM's
    split = replace(cost.DEFAULT_RATES, cached_gemv_bytes=8e10, dense_gemv_bytes=1e10)
    small, big = cost.LayerGeom(512, 512, 1, 1), cost.LayerGeom(4096, 4096, 1, 1)
    per_byte = [cost.estimate("dense", geom, 0, 1, 16, split) / (geom.rows * geom.k * 4)
                for geom in (small, big)]
    assert per_byte[1] > 5 * per_byte[0]


def test_measure_gives_finite_positive_rates():
    """The real measurement (native library, ~8 s): every rate finite and positive."""
    rates = calibrate.measure(1)
    for name, value in asdict(rates).items():
        if name != "source":
            assert math.isfinite(value) and value >= 0, (name, value)
    assert rates.dense_flops > 1e9 and rates.vec_fmas > 1e8
