"""The cost model's machine-dependent rates, measured on the machine the compiler runs on.

The format pass ranks dense / CSR / BSR by ``cost.estimate``; its rates (GEMM flops, GEMV
bytes, the spmm kernels' vector FMAs, the gather SpMV's nonzeros, the BSR 8x1 gain) came from
one reference machine and one day's memory bandwidth, and the dense/sparse crossover moved with
them. ``rates_for(threads)`` measures them once per machine and thread count through the native
library (one-layer models, formats forced, so no estimate is needed to build them: ~5 s) and
caches them as JSON next to the LLVM object cache; later processes read the file.

Opt-in for now, ``SPARSECC_CALIBRATE=1``: on the 2-core shared machine it was built on, two
full ``bench/chooser.py`` grids put the calibrated choice within 10 % of the best candidate in
92 % and 88 % of 144 cells, the reference rates in 94 % and 91 % -- the per-row cost solved
from two layers swung 15-47 ns between runs. Until a calibration beats the reference rates
there, they stay the default.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, fields

import numpy as np

from sparsecc.formats import cost

VERSION = 5
_LOCK = threading.Lock()
_busy = threading.local()  # set while measuring: the one-layer compiles must not recurse
_MEMO: dict = {}  # cache file -> rates read or measured by this process


def enabled() -> bool:
    return os.environ.get("SPARSECC_CALIBRATE", "0") not in ("0", "")


def _path(threads: int):
    from sparsecc.codegen.llvm.jit import cache_dir, host

    return cache_dir() / f"calibration-v{VERSION}-{host().key}-t{threads}.json"


def _read(path) -> cost.Rates | None:
    """The cached rates, or None when the file is missing or not what this version wrote
    (any malformed content: re-measure rather than trust it)."""
    try:
        raw = json.loads(path.read_text())
        names = {f.name for f in fields(cost.Rates)}
        if not isinstance(raw, dict) or set(raw) != names:
            return None
        vals = {k: float(v) for k, v in raw.items() if k != "source"}
        zero_ok = ("conv_flops", "row_ns")  # 0: not measured / no such cost
        if not all(math.isfinite(v) and (v > 0 or (v == 0 and k in zero_ok))
                   for k, v in vals.items()):
            return None
        return cost.Rates(**vals, source=str(raw["source"])[:200])
    except (OSError, ValueError, TypeError):
        return None


def rates_for(threads: int) -> cost.Rates:
    """Rates for ``threads`` threads on this machine: cached, else measured and cached; the
    reference rates when calibration is off (the default), the native library is unavailable
    or measuring fails."""
    if not enabled() or getattr(_busy, "on", False):
        return cost.DEFAULT_RATES
    from sparsecc.runtime.ops.sparse import llvm_available

    if not llvm_available():
        return cost.DEFAULT_RATES
    with _LOCK:
        path = _path(threads)
        hit = _MEMO.get(path) or _read(path)  # the format pass asks once per layer
        if hit is not None:
            _MEMO[path] = hit
            return hit
        try:
            rates = measure(threads)
        except Exception:  # a broken toolchain leaves the reference rates, never a failure
            return cost.DEFAULT_RATES
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(rates), indent=1))
        os.replace(tmp, path)
        _MEMO[path] = rates
        return rates


ROUNDS = 5  # timing rounds; every layer once per round, the median across rounds kept


def runner(model, x: np.ndarray, fmt: str):
    """A call of ``model`` compiled with ``fmt`` forced, on the native library, outputs
    preallocated (what the kernels cost, not the Python around them)."""
    import torch

    import sparsecc

    cm = sparsecc.compile(model, torch.from_numpy(x[:1]), recipe={"formats": {"force": fmt}})
    if cm.native is None:
        raise RuntimeError(f"calibration layer is not native: {cm.native_status}")
    out = [np.empty((x.shape[0],) + tuple(cm(x[:1]).shape[1:]), np.float32)]

    def call():
        cm.native.run([x], out)

    call()
    return call


def time_all(runs: dict[str, object], round_s: float = 0.02) -> dict[str, float]:
    """Median seconds of each call over ROUNDS interleaved rounds (a round: each call repeated
    for ``round_s``, at least 3 times, its median), so a slow spell of this shared machine hits
    every call alike."""
    per: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(ROUNDS):
        for k, fn in runs.items():
            ts: list[float] = []
            start = time.perf_counter()
            while len(ts) < 3 or time.perf_counter() - start < round_s:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            per[k].append(float(np.median(ts)))
    return {k: float(np.median(v)) for k, v in per.items()}


def measure(threads: int) -> cost.Rates:
    """Time the native kernels the model's rates stand for, at ``threads`` threads (~8 s)."""
    import numba
    import torch

    import sparsecc

    _busy.on = True
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        t = max(threads, 1)
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        runs, sizes = {}, {}
        # dense GEMM: Linear 1024 -> 1024 at batch 256
        lin = torch.nn.Linear(1024, 1024, bias=False).eval()
        runs["gemm"] = runner(lin, rng.standard_normal((256, 1024)).astype(np.float32),
                               "dense")
        # a dense 3x3 conv as a whole (im2col + GEMM): 128 -> 128 at 28x28
        conv3 = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).eval()
        runs["conv3x3"] = runner(conv3, rng.standard_normal((1, 128, 28, 28))
                                  .astype(np.float32), "dense")
        # dense GEMV at batch 1: a layer past the caches (4096^2, 64 MB) and one within
        # (1024^2, 4 MB); the gather SpMV on the same layers at 90 %
        for size in (4096, 1024):
            big = torch.nn.Linear(size, size, bias=False).eval()
            x1 = rng.standard_normal((1, size)).astype(np.float32)
            runs[f"gemv{size}"] = runner(big, x1, "dense")
            sparse_big = sparsecc.prune(big, 0.9, scope="layer")
            sizes[f"spmv{size}"] = int(torch.count_nonzero(sparse_big.weight))
            runs[f"spmv{size}"] = runner(sparse_big, x1, "csr")
        # spmm: the vector-FMA rate and the per-row cost from two 1x1 convs at 28x28, long
        # rows (256 -> 256 at 50 %: 128 nonzeros a row) and short ones (64 -> 256 at 90 %)
        xc = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
        for cin, sparsity in ((256, 0.5), (64, 0.9)):
            conv = sparsecc.prune(torch.nn.Conv2d(cin, 256, 1, bias=False).eval(), sparsity,
                                  scope="layer")
            sizes[f"conv{cin}"] = int(torch.count_nonzero(conv.weight))
            runs[f"conv{cin}"] = runner(conv, np.ascontiguousarray(xc[:, :cin]), "csr")
        # BSR 8x1 of a dense layer (the dense-ish candidate), batch 64
        runs["bsr8"] = runner(lin, rng.standard_normal((64, 1024)).astype(np.float32),
                               "bsr8x1")
        sec = time_all(runs)
        launch = cost.LAUNCH_S
        dense_flops = 2.0 * 256 * 1024 * 1024 / sec["gemm"] / t
        conv_flops = 2.0 * 128 * 128 * 9 * 784 / max(sec["conv3x3"] - launch, 1e-7) / t
        gemv = {n: n * n * 4 / max(sec[f"gemv{n}"] - launch, 1e-7) / t for n in (4096, 1024)}
        gather = {n: sizes[f"spmv{n}"] / max(sec[f"spmv{n}"] - launch, 1e-7) / t
                  for n in (4096, 1024)}
        vw = _vector_width()
        vecs = -(-784 // vw)
        tiles = -(-vecs // cost.spmm_vectors(784, vw))
        eqs = []  # per thread: spent = a / vec_fmas + b * row_s
        for cin in (256, 64):
            nnz = sizes[f"conv{cin}"]
            spent = (sec[f"conv{cin}"] - launch) * t - nnz * tiles * cost.INDEX_NS
            eqs.append((nnz * vecs, 256 * tiles, spent))
        (a1, b1, y1), (a2, b2, y2) = eqs
        det = a1 * b2 - a2 * b1
        inv_rate, row_s = (y1 * b2 - y2 * b1) / det, (a1 * y2 - a2 * y1) / det
        if row_s < 0 or inv_rate <= 0:  # noise: the long-row layer alone, no row term
            inv_rate, row_s = max(y1, 1e-9) / a1, 0.0
        vec_fmas = 1.0 / inv_rate
        vecs64 = -(-64 // vw)
        tiles64 = -(-vecs64 // min(4, vecs64))  # (BSR: tiles of 4)
        stored = 1024 * 1024
        spent8 = (sec["bsr8"] - launch) * t - (stored * cost.INDEX_NS + 1024 / 8 * row_s) * \
            tiles64
        gain8 = stored * vecs64 / max(spent8, 1e-7) / vec_fmas
        from sparsecc.codegen.llvm.jit import host

        return cost.Rates(dense_flops=dense_flops, conv_flops=conv_flops,
                          dense_gemv_bytes=gemv[4096],
                          cached_gemv_bytes=gemv[1024], vec_fmas=vec_fmas,
                          row_ns=row_s * 1e9, gather_nnz=gather[4096],
                          cached_gather_nnz=gather[1024], bsr8_gain=gain8,
                          source=f"measured {time.strftime('%Y-%m-%d %H:%M')} on {host().cpu}, "
                                 f"{threads} threads")
    finally:
        numba.set_num_threads(prev)
        _busy.on = False


def _vector_width() -> int:
    from sparsecc.codegen.llvm.jit import host

    return host().vector_width
