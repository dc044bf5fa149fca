"""Switching the kernel thread count between calls: each call exact against torch, and the
binding for the new count takes over the idle one's buffers instead of allocating its own."""

from __future__ import annotations

import numba
import torch
from torch import nn

import sparsecc
from tests.conftest import assert_matches


def test_thread_switch_reuses_buffers_and_stays_exact(seed, executor_only):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    net = sparsecc.prune(net, 0.7)
    cm = sparsecc.compile(net, torch.randn(1, 3, 10, 10))
    ex = cm.executor
    arenas = {}
    try:
        for threads in (1, 2, 1, 2, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            x = torch.randn(5, 3, 10, 10)
            with torch.no_grad():
                assert_matches(cm(x), net(x))
            bindings = [b for (n, _), lst in ex._free.items() if n == 5 for b in lst]
            assert len(bindings) == 1, "one set of buffers for batch 5, whatever the threads"
            arenas.setdefault("first", bindings[0].arrays)
            assert bindings[0].arrays is arenas["first"]
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_buffers_of_a_dropped_model_are_recycled(seed, executor_only):
    import gc

    from sparsecc.runtime import executor as X

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(6, 3, 64, 64)  # 1.6 MB activations: above the recycler's 1 MB floor
    first = sparsecc.compile(net, x)
    first(x)
    big = {b.ctypes.data for b in first.executor._blocks if b.nbytes >= X._Recycled.MIN}
    assert big
    del first
    gc.collect()
    assert big <= {b.ctypes.data for b in X._RECYCLED._blocks}
    net2 = sparsecc.prune(net, 0.5)
    second = sparsecc.compile(net2, x)
    x2 = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        assert_matches(second(x2), net2(x2))  # stale contents in recycled blocks do not leak
    reused = {b.ctypes.data for b in second.executor._blocks} & big
    assert reused, "the second model's binding takes the first one's blocks"
