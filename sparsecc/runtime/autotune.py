"""Measured format choice: time one layer in each candidate format on this machine, once.

Results are cached on disk (``<cache dir>/autotune.json``) under a key of the layer's geometry,
epilogue, nonzero-pattern hash, candidate format, batch, thread count and CPU, so compiling the
same model again costs no measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time

import numpy as np

from sparsecc.ir.plan import Op
from sparsecc.options import env_cache_dir
from sparsecc.runtime.ops.registry import OPS, BindCtx
from sparsecc.runtime.threads import single_threaded_blas

_LOCK = threading.Lock()
# Bump when kernels or the timing method change enough to invalidate old measurements.
KERNEL_VERSION = 2


def _cache_path():
    d = env_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d / "autotune.json"


def _load() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _store(entries: dict) -> None:
    path = _cache_path()
    with _LOCK:
        data = _load()
        data.update(entries)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass


def layer_key(op: Op, w: np.ndarray, in_shape, out_shape, fmt: str, threads: int,
              host: str) -> str:
    geo = {k: op.attrs.get(k) for k in ("kernel", "stride", "padding", "dilation", "groups",
                                         "act", "act_a", "act_b")}
    h = hashlib.sha256()
    h.update(np.packbits(w != 0).tobytes())
    text = json.dumps([op.kind, list(in_shape), list(out_shape), list(w.shape), geo, fmt,
                       threads, host, KERNEL_VERSION, "bias" in op.params], default=str)
    h.update(text.encode())
    return h.hexdigest()[:32]


def _bind(op: Op, params: dict[str, np.ndarray], in_shape, out_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(in_shape).astype(np.float32)
    out = np.empty(out_shape, np.float32)
    fn = OPS[op.kind].scratch
    need = fn(op, [tuple(in_shape)], tuple(out_shape)) if fn else []
    scratch = [np.empty(s, d) for s, d in need]
    return OPS[op.kind].bind(BindCtx(op, [x], out, params, scratch))


def measure_many(steps: dict[str, object], *, rounds: int = 5, per_round: int = 4,
                 budget_s: float = 0.5) -> dict[str, float]:
    """Median seconds per step, the steps timed in alternating short blocks (a burst of machine
    noise then hits every candidate alike instead of deciding the ranking)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    with single_threaded_blas():
        for step in steps.values():
            step()  # warm-up: compiles kernels, faults in pages
        start = time.perf_counter()
        for r in range(rounds):
            for name, step in steps.items():
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t0)
            if r >= 1 and time.perf_counter() - start > budget_s:
                break
    return {k: float(np.median(v)) for k, v in times.items()}


def measure(op: Op, params: dict[str, np.ndarray], in_shape, out_shape) -> float:
    """Median seconds of one call of ``op`` (bound with ``params``) on random inputs."""
    return measure_many({"op": _bind(op, params, in_shape, out_shape)})["op"]


def cached_measure(key: str, op: Op, params: dict[str, np.ndarray], in_shape, out_shape
                   ) -> float:
    """``measure`` through the disk cache under ``key``."""
    cache = _load()
    if key in cache:
        return float(cache[key])
    t = measure(op, params, in_shape, out_shape)
    _store({key: t})
    return t


def measure_formats(op: Op, w: np.ndarray, packed: dict[str, dict[str, np.ndarray]],
                    bias: np.ndarray | None, in_shape, out_shape, threads: int, host: str
                    ) -> dict[str, float]:
    """{format: median seconds} for each packed candidate, from the disk cache when known.

    Uncached candidates are timed together (interleaved), and then all of them are, so a
    ranking never mixes a fresh figure with one from another moment."""
    cache = _load()
    keys = {fmt: layer_key(op, w, in_shape, out_shape, fmt, threads, host) for fmt in packed}
    if all(k in cache for k in keys.values()):
        return {fmt: float(cache[k]) for fmt, k in keys.items()}
    steps = {}
    for fmt, params in packed.items():
        cand = dataclasses.replace(op, attrs=dict(op.attrs, fmt=fmt), params=dict(op.params))
        full = dict(params)
        if bias is not None:
            full["bias"] = bias
        steps[fmt] = _bind(cand, full, in_shape, out_shape)
    got = measure_many(steps)
    _store({keys[fmt]: t for fmt, t in got.items()})
    return got
