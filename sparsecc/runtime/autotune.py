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
from sparsecc.runtime.ops.registry import aligned_copy, aligned_empty, bind_alone
from sparsecc.runtime.threads import single_threaded_blas

_LOCK = threading.Lock()
# Bump when kernels or the timing method change enough to invalidate old measurements.
KERNEL_VERSION = 6


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


def layer_key(op: Op, pattern_id: str, in_shape, out_shape, variant: str, threads: int,
              host: str, has_bias: bool) -> str:
    """The cache key of one measured variant of a layer (``pattern_id`` hashes its nonzeros)."""
    geo = {k: op.attrs.get(k) for k in ("kernel", "stride", "padding", "dilation", "groups",
                                         "act", "act_a", "act_b")}
    text = json.dumps([op.kind, list(in_shape), list(out_shape), pattern_id, geo, variant,
                       threads, host, KERNEL_VERSION, has_bias], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def weight_pattern_id(w: np.ndarray) -> str:
    h = hashlib.sha256(np.packbits(w != 0).tobytes())
    h.update(repr(w.shape).encode())
    return h.hexdigest()[:20]


def _bind(op: Op, params: dict[str, np.ndarray], in_shape, out_shape):
    """The op on buffers aligned as the executor's (numpy's 16-byte alignment slowed the
    vector kernels, not BLAS, and tilted the choice towards dense)."""
    x = aligned_copy(np.random.default_rng(0).standard_normal(in_shape).astype(np.float32))
    return bind_alone(op, [x], aligned_empty(out_shape), params)


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


def measure_variants(variants: dict[str, tuple[str, Op, dict[str, np.ndarray]]], in_shape,
                     out_shape) -> dict[str, float]:
    """{name: median seconds} for variants given as {name: (cache key, op, params)}.

    From the disk cache when every variant is there; otherwise all of them are timed together
    (interleaved) and stored, so a ranking never mixes figures taken at different moments."""
    cache = _load()
    if all(key in cache for key, _, _ in variants.values()):
        return {name: float(cache[key]) for name, (key, _, _) in variants.items()}
    steps = {name: _bind(op, params, in_shape, out_shape)
             for name, (_, op, params) in variants.items()}
    got = measure_many(steps)
    _store({variants[name][0]: t for name, t in got.items()})
    return got


def measure_formats(op: Op, w: np.ndarray, packed: dict[str, dict[str, np.ndarray]],
                    bias: np.ndarray | None, in_shape, out_shape, threads: int, host: str
                    ) -> dict[str, float]:
    """{format: median seconds} for each packed candidate of ``op``'s weight ``w``."""
    pattern = weight_pattern_id(w)
    variants = {}
    for fmt, params in packed.items():
        cand = dataclasses.replace(op, attrs=dict(op.attrs, fmt=fmt), params=dict(op.params))
        full = dict(params) if bias is None else dict(params, bias=bias)
        key = layer_key(op, pattern, in_shape, out_shape, fmt, threads, host, bias is not None)
        variants[fmt] = (key, cand, full)
    return measure_variants(variants, in_shape, out_shape)
