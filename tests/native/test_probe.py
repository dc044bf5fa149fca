"""The core-to-core probe (native/probe.py): a cache line bounced between two threads of the
native pool; the bench records it beside each cell."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sparsecc.native.probe import core_round_trip_ns


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_round_trip_is_a_plausible_latency():
    ns = core_round_trip_ns(2_000)
    # 60-90 ns near, 350-390 far on this project's machines; a descheduled thread can add
    # milliseconds to one run, so only the order of magnitude is checked
    assert ns is not None and 5 < ns < 1e6


def test_one_thread_gives_none_not_a_hang():
    """With a pool of one thread there is nothing to bounce with: None, at once."""
    code = "from sparsecc.native.probe import core_round_trip_ns; print(core_round_trip_ns())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_versus_table_reports_the_round_trips():
    from sparsecc.benchmarks import report

    row = dict(model="m", sparsity=0.9, batch=1, threads=2, median_ms=1.0)
    rows = [dict(row, engine="sparsecc", core_rtt_ns=[64, 371]),
            dict(row, engine="onnxruntime", median_ms=2.0, core_rtt_ns=[64, 371])]
    table = report.versus(rows)
    assert "| m | 1 | 2 | 1.00 |" in table and "2.00x" in table
    assert "m b1: 64/371" in table
