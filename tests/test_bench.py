"""The suite's timing method (the CLI runs of ``sparsecc bench`` are in test_cli.py)."""

from __future__ import annotations

import time

from sparsecc.benchmarks.engines import MIN_CALLS, time_call


def _counter(seconds: float):
    calls = []

    def fn():
        calls.append(1)
        time.sleep(seconds)

    return fn, calls


def test_time_call_fast_engine_gets_two_warmups_and_min_runs():
    fn, calls = _counter(0.0)
    t = time_call(fn, min_runs=7, min_time=60.0)
    assert t.runs == 7 and len(calls) == 2 + 7
    assert t.p10_ms <= t.median_ms <= t.p90_ms


def test_time_call_slow_engine_one_warmup_at_least_two_runs():
    fn, calls = _counter(0.3)  # one warm-up call already exceeds the warm-up budget
    t = time_call(fn, min_runs=30, min_time=0.5)  # 2 timed calls pass min_time
    assert t.runs == MIN_CALLS == 2 and len(calls) == 1 + 2
    assert t.median_ms >= 300
    calls.clear()
    t = time_call(fn, min_runs=30, min_time=0.8)  # the third call is needed for 0.8 s
    assert t.runs == 3 and len(calls) == 1 + 3


def test_time_call_counts_the_callers_warm_call():
    fn, calls = _counter(0.0)
    time_call(fn, min_runs=4, min_time=60.0, warmed_s=0.01)  # one more warm-up: 2 in all
    assert len(calls) == 1 + 4
    calls.clear()
    time_call(fn, min_runs=4, min_time=60.0, warmed_s=1.0)  # warm enough already
    assert len(calls) == 4
