"""Engines measured by the suite, each on the same pruned model and inputs.

An engine that is not installed, or fails on a model, is skipped with a note — never a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORKER = Path(__file__).with_name("deepsparse_worker.py")
# Warm-up budget per engine and cell, and the fewest timed calls; the DeepSparse worker gets
# both with each command. One call is enough when it alone takes the cell's min_time (>= 2 s
# in the full suite): such a cell reports runs=1 and p10 = p90 = median. Two was the floor
# before; it cost the full grid ~160 s of batch-64 calls at 1 thread.
WARM_S = 0.25
MIN_CALLS = 1


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms [{self.p10_ms:.3f}-{self.p90_ms:.3f}]"


def summarize(times_ms: list[float]) -> Timing:
    t = np.asarray(times_ms)
    return Timing(float(np.median(t)), float(np.percentile(t, 10)), float(np.percentile(t, 90)),
                  len(t))


def time_call(fn: Callable[[], Any], min_runs: int, min_time: float,
              warm_s: float = WARM_S, warmed_s: float = 0.0) -> Timing:
    """>= min_runs calls or >= min_time seconds, whichever comes first; at least MIN_CALLS.
    Warm-up: up to 2 calls, fewer once the warm-up has taken ``warm_s``; ``warmed_s`` is what
    the caller's own untimed calls (its correctness call) already spent, so a 2-second engine
    is not run again just to warm up."""
    return summarize(sample_call(fn, min_runs, min_time, warm_s, warmed_s))


def sample_call(fn: Callable[[], Any], min_runs: int, min_time: float,
                warm_s: float = WARM_S, warmed_s: float = 0.0) -> list[float]:
    """time_call's samples (ms), unsummarised: a bench round's share of a cell."""
    spent, calls = warmed_s, 1 if warmed_s > 0 else 0
    while calls < 2 and spent < warm_s:
        t0 = time.perf_counter()
        fn()
        spent += time.perf_counter() - t0
        calls += 1
    times, start = [], time.perf_counter()
    while len(times) < MIN_CALLS or (len(times) < min_runs
                                     and time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_engines(fns: dict[str, Callable[[], Any]], repeats: int,
                 warmup: int = 3) -> dict[str, Timing]:
    """Several engines timed in rounds (one call each per round), so drift on a noisy machine
    hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: summarize(v) for k, v in samples.items()}


class Skip(Exception):
    """The engine cannot run this cell; the message says why."""


def set_threads(n: int) -> None:
    import numba
    import torch

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def first_output(out) -> np.ndarray:
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)


# ---- in-process engines: make(cell) -> callable returning the first output ----------------
def torch_eager(model, inputs, threads):
    import torch

    tin = [torch.from_numpy(a) for a in inputs]

    def run():
        with torch.no_grad():
            return first_output(model(*tin))

    return run


def torch_compile(model, inputs, threads):
    import torch

    torch._dynamo.reset()
    compiled = torch.compile(model)
    tin = [torch.from_numpy(a) for a in inputs]

    def run():
        with torch.no_grad():
            return first_output(compiled(*tin))

    try:
        run()
    except Exception as exc:
        raise Skip(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    return run


def onnx_export(model, inputs, names, path: Path) -> Path:
    import torch

    tin = tuple(torch.from_numpy(a) for a in inputs)
    axes = {n: {0: "batch"} for n in names}
    with torch.no_grad():
        torch.onnx.export(model, tin, str(path), input_names=list(names), dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return path


def onnx_qdq(onnx_path: Path, names, batches, out: Path) -> Path:
    """ONNX Runtime's static quantization of ``onnx_path`` into a QDQ file: weights int8 per
    output channel (symmetric), activations uint8 per tensor from min/max over ``batches`` (the
    calibration sparsecc uses), every op ONNX Runtime quantizes. ORT and DeepSparse run it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([dict(zip(names, b)) for b in batches])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return out


def onnxruntime_engine(onnx_path: Path | None, names, inputs, threads):
    if onnx_path is None:
        raise Skip("no ONNX export for this model")
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ORT's intra-op threads keep spinning after a run returns; on 2 cores they would steal
    # time from the engine measured next. This stops them when run() returns; spinning
    # within a run (what ORT's own latency relies on) stays on.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {n: a for n, a in zip(names, inputs)}
    return lambda: sess.run(None, feed)[0]


def sparsecc_engine(cm, inputs, threads):
    """A compiled model's calls, after its start-up calls (CompiledModel.warmup: code paging
    in, the thread choice's first probe on one thread), as a service makes them before its
    first request; later probes, one every 512 calls or more, fall in the timed calls."""
    cm.warmup(*inputs)
    return lambda: first_output(cm(*inputs))


# ---- DeepSparse, out of process -----------------------------------------------------------
def deepsparse_python() -> str | None:
    from sparsecc.options import env_deepsparse_python

    cand = env_deepsparse_python()
    if cand:
        return cand if Path(cand).is_file() else None
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        p = root / ".venv-deepsparse" / "bin" / "python"
        if p.is_file():
            return str(p)
    return None


class DeepSparse:
    """One worker process for the whole run (its python has deepsparse 1.8.0 and numpy 1.x)."""

    def __init__(self):
        self.python = deepsparse_python()
        self.proc = None
        self.tmp = Path(tempfile.mkdtemp(prefix="sparsecc-ds-"))

    @property
    def available(self) -> bool:
        return self.python is not None

    def _start(self):
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
            # the worker's stderr goes to a file: its crash report is the skip note's reason
            with (self.tmp / "worker.err").open("w") as err:
                self.proc = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=err, text=True,
                                             env=env)

    def samples(self, onnx_path, inputs, threads, min_runs, min_time, warm_s=WARM_S,
                output=True):
        """The worker's timed calls (ms; its engine is compiled once and kept) and, with
        ``output``, its output (that call is also the first warm-up; without it, up to 2
        warm-up calls within ``warm_s``, none when 0)."""
        if not self.available:
            raise Skip("DeepSparse is not set up (./dev peers creates .venv-deepsparse)")
        if onnx_path is None:
            raise Skip("no ONNX export for this model")
        self._start()
        paths = []
        for i, a in enumerate(inputs):
            p = self.tmp / f"in{i}.npy"
            np.save(p, a)
            paths.append(str(p))
        out = self.tmp / "out.npy"
        cmd = {"onnx": str(onnx_path), "batch": int(inputs[0].shape[0]), "threads": threads,
               "inputs": paths, "min_runs": min_runs, "min_time": min_time, "warm_s": warm_s,
               "min_calls": MIN_CALLS, "out": str(out) if output else None}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            self.proc = None
            raise Skip(f"the DeepSparse worker died (exit {code}{self._why()})")
        res = json.loads(line)
        if not res["ok"]:
            raise Skip(f"DeepSparse: {res['error'][:200]}")
        return list(res["times_ms"]), np.load(out) if output else None

    def _why(self) -> str:
        """The worker's last words: its crash report's signal line, else its last line."""
        text = (self.tmp / "worker.err").read_text(errors="replace")
        lines = [ln for ln in map(str.strip, text.splitlines()) if ln and ln.isprintable()]
        sig = [ln for ln in lines if "Received signal" in ln]
        last = (sig or lines)[-1:]
        return f": {last[0][:160]}" if last else ""

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


__all__ = ["DeepSparse", "Skip", "Timing", "first_output", "onnx_export", "onnx_qdq",
           "onnxruntime_engine",
           "sample_call", "set_threads", "sparsecc_engine", "time_call", "time_engines",
           "torch_compile", "torch_eager"]
