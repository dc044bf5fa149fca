"""Accuracy / speed sweeps: sparsity x pattern x method, on this machine or a Dask cluster.

    result = sparsecc.sweep("sparsecc.zoo:mnist_cnn", "sparsecc.finetune:mnist_accuracy",
                            sparsities=[0.5, 0.8, 0.9, 0.95], patterns=["unstructured", "2:4"],
                            methods=["oneshot", "gradual", "rigl"],
                            train="sparsecc.finetune:mnist_train", steps=300,
                            scheduler="local")          # or "dask", or "tcp://host:8786"
    print(result.pareto_markdown())

Each point prunes a fresh copy of the model (one-shot magnitude, gradual with the cubic
schedule, or RigL / SET regrowth during the fine-tuning budget), scores it with the user's
metric, counts nonzero parameters and FLOPs, and compiles it with sparsecc. Points run in
parallel (a Dask cluster) or one after another (``local``); every point pins torch to
``threads`` threads and seeds everything, so both give the same numbers. Latency is measured
afterwards in this process, one artifact at a time, so parallel points never share the cores
they are timed on.

Outputs in ``out``: ``points.jsonl`` (one JSON line per point), ``pareto.md`` (the table, the
accuracy/latency Pareto front marked) and ``pareto.png``.

Pruned-parameter efficiency, as computed here: (metric / dense metric) / (nonzero parameters /
dense parameters) — the fraction of the dense quality kept per fraction of parameters kept.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import PassError

METHODS = ("oneshot", "gradual", "rigl", "set")


@dataclass(frozen=True)
class Point:
    sparsity: float
    pattern: str
    method: str
    steps: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.method} {self.pattern} {self.sparsity:.0%}"


def resolve(spec: str | Callable) -> Callable:
    """A callable, or ``pkg.module:name`` / ``file.py:name`` resolved to one (as the CLI's
    MODEL argument)."""
    if callable(spec):
        return spec
    from sparsecc.cli import resolve_factory

    return resolve_factory(str(spec))


def make_points(sparsities: Sequence[float], patterns: Sequence[str], methods: Sequence[str],
                steps: int, seed: int) -> tuple[list[Point], list[str]]:
    """The grid, minus what cannot run (noted): N:M fixes its own sparsity (one point per
    method), RigL/SET regrow single weights (unstructured only), gradual/RigL need steps."""
    from sparsecc.pruning.masks import parse_pattern

    points, notes, seen = [], [], set()
    for method in methods:
        if method not in METHODS:
            raise PassError("sweep", f"method {method!r}: choose from {list(METHODS)}")
        if method != "oneshot" and steps <= 0:
            notes.append(f"{method}: needs a fine-tuning budget (steps > 0); skipped")
            continue
        for pattern in patterns:
            pat = parse_pattern(pattern)
            if method in ("rigl", "set") and pat.kind != "unstructured":
                notes.append(f"{method} with pattern {pattern}: regrowth is unstructured; "
                             "skipped")
                continue
            for s in sparsities:
                s = pat.implied_sparsity if pat.kind == "nm" else float(s)
                p = Point(round(s, 6), pattern, method, int(steps), int(seed))
                if p not in seen:
                    seen.add(p)
                    points.append(p)
    return points, notes


# ---- one point (runs wherever the scheduler puts it) --------------------------------------
def run_point(point: Point | None, model_spec, metric_spec, train_spec, example_shape,
              threads: int = 1) -> dict[str, Any]:
    """Prune/train/score/compile one point; ``None`` is the dense reference."""
    import torch

    import sparsecc
    from sparsecc.passes.prune import sparsity_of

    torch.set_num_threads(threads)
    seed = point.seed if point else 0
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = resolve(model_spec)().eval()
    t0 = time.perf_counter()
    if point is not None:
        model = _sparsify(model, point, resolve(train_spec) if train_spec else None)
    seconds = time.perf_counter() - t0
    model.eval()
    metric = float(resolve(metric_spec)(model))
    x = torch.randn(*example_shape, generator=torch.Generator().manual_seed(0))
    cm = sparsecc.compile(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = cm.save(Path(tmp) / "p.scc", native=False).read_bytes()
    report = cm.report(measure=False)
    params = sum(int((p != 0).sum()) for p in model.parameters())
    row = dict(asdict(point) if point else {"sparsity": 0.0, "pattern": "dense",
                                            "method": "dense", "steps": 0, "seed": 0},
               metric=metric, params=params, mflops=report.total("mflops"),
               achieved_sparsity=sparsity_of(model), train_seconds=round(seconds, 2),
               worker=os.environ.get("DASK_WORKER_NAME") or f"pid{os.getpid()}")
    return {"row": row, "artifact": artifact}


def _sparsify(model, point: Point, train: Callable | None):
    import sparsecc

    s, pattern, steps = point.sparsity, point.pattern, point.steps
    kw = {} if pattern == "unstructured" else {"pattern": pattern}
    nm = "sparsity" if ":" not in pattern else None
    if point.method == "oneshot":
        model = sparsecc.prune(model, **({nm: s} if nm else {}), **kw)
        if steps and train is not None:  # fine-tune with the masks held
            sched = sparsecc.CubicSchedule(s, s, end_step=0, frequency=1)
            train(model, steps, lambda m, opt: sparsecc.Pruner(m, sched, opt, **kw))
        return model
    if train is None:
        raise PassError("sweep", f"method {point.method} needs a train function")
    holder: dict[str, Any] = {}
    if point.method == "gradual":
        sched = sparsecc.CubicSchedule(s, 0.0, end_step=max(int(0.75 * steps), 1),
                                       frequency=max(steps // 20, 1))

        def attach(m, opt):
            holder["h"] = sparsecc.Pruner(m, sched, opt, **kw)
            return holder["h"]
    else:
        cls = sparsecc.RigL if point.method == "rigl" else sparsecc.SET

        def attach(m, opt):
            holder["h"] = cls(m, opt, sparsity=s, distribution="erk", init="magnitude",
                              update_every=max(steps // 20, 1), end_step=int(0.75 * steps),
                              seed=point.seed)
            return holder["h"]
    train(model, steps, attach)
    if "h" not in holder:
        raise PassError("sweep", "the train function never called its on_optimizer argument")
    return holder["h"].finalize()


# ---- the sweep ----------------------------------------------------------------------------
@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    dense: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    out: Path | None = None

    def pareto_markdown(self) -> str:
        head = ("| point | sparsity | metric | latency ms (p10-p90) | nonzero params | MFLOPs |"
                " PPE | front |")
        lines = [f"dense: metric {self.dense['metric']:.4f}, latency "
                 f"{self.dense['latency_ms']:.3f} ms, {self.dense['params']} params, "
                 f"{self.dense['mflops']:.2f} MFLOPs", "", head, "|---" * 8 + "|"]
        for r in sorted(self.rows, key=lambda r: r["latency_ms"]):
            lines.append(
                f"| {r['method']} {r['pattern']} | {r['achieved_sparsity']:.3f} | "
                f"{r['metric']:.4f} | {r['latency_ms']:.3f} ({r['latency_p10']:.3f}-"
                f"{r['latency_p90']:.3f}) | {r['params']} | {r['mflops']:.2f} | "
                f"{r['ppe']:.2f} | {'**yes**' if r['pareto'] else ''} |")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        markers = {"oneshot": "o", "gradual": "s", "rigl": "^", "set": "v"}
        for method in sorted({r["method"] for r in self.rows}):
            rs = [r for r in self.rows if r["method"] == method]
            ax.scatter([r["latency_ms"] for r in rs], [r["metric"] for r in rs],
                       marker=markers.get(method, "o"), label=method, alpha=0.8)
        front = sorted((r for r in self.rows if r["pareto"]), key=lambda r: r["latency_ms"])
        ax.plot([r["latency_ms"] for r in front], [r["metric"] for r in front], "k--", lw=1,
                label="Pareto front")
        for r in front:
            ax.annotate(f"{r['pattern']} {r['sparsity']:.0%}", (r["latency_ms"], r["metric"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.scatter([self.dense["latency_ms"]], [self.dense["metric"]], marker="*", s=120,
                   c="red", label="dense")
        ax.set_xlabel("latency (ms, median)")
        ax.set_ylabel("metric")
        ax.set_title("accuracy vs latency")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def sweep(model, metric, sparsities: Sequence[float] = (0.5, 0.8, 0.9),
          patterns: Sequence[str] = ("unstructured",), methods: Sequence[str] = ("oneshot",),
          train=None, steps: int = 0, scheduler: str = "local", out: str | Path | None = None,
          batch: int = 1, input_shape: Sequence[int] | None = None, seed: int = 0,
          threads: int = 1, repeats: int = 50, progress: bool = True,
          workers: int = 2) -> SweepResult:
    """Run the grid (see the module doc). ``model``/``metric``/``train`` are callables or
    ``module:function`` specs (specs travel to Dask workers by name)."""
    points, notes = make_points(sparsities, patterns, methods, steps, seed)
    if not points:
        raise PassError("sweep", "no point to run: " + "; ".join(notes))
    shape = tuple(input_shape) if input_shape else None
    if shape is None:
        probe = resolve(model)()
        shape = tuple(getattr(probe, "example_input_shape", ()) or ())
        if not shape:
            raise PassError("sweep", "give input_shape (the model has no example_input_shape)")
    shape = (batch,) + shape[1:]
    args = (model, metric, train, shape, threads)
    results = _run_all([None] + points, args, scheduler, progress, workers)
    dense = _timed(results[0], shape, repeats)
    rows = [_timed(r, shape, repeats) for r in results[1:]]
    for r in rows:
        r["ppe"] = (r["metric"] / dense["metric"]) / (r["params"] / dense["params"]) \
            if dense["metric"] and r["params"] else float("nan")
    _mark_pareto(rows)
    res = SweepResult(rows, dense, notes)
    if out is not None:
        res.out = _write(res, Path(out))
    return res


def _timed(result: dict, shape, repeats: int) -> dict:
    """Latency of one point's artifact, here, alone (median and spread over ``repeats``)."""
    import sparsecc
    from sparsecc.benchmarks.engines import time_engines

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.scc"
        path.write_bytes(result["artifact"])
        cm = sparsecc.load(path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = time_engines({"p": lambda: cm(x)}, repeats)["p"]
    row = dict(result["row"])
    row["latency_ms"], row["latency_p10"], row["latency_p90"] = t.median_ms, t.p10_ms, t.p90_ms
    return row


def _mark_pareto(rows: list[dict]) -> None:
    for r in rows:
        r["pareto"] = not any(
            o is not r and o["metric"] >= r["metric"] and o["latency_ms"] <= r["latency_ms"]
            and (o["metric"] > r["metric"] or o["latency_ms"] < r["latency_ms"]) for o in rows)


def _run_all(points: list, args: tuple, scheduler: str, progress: bool, workers: int):
    bar = _Progress(len(points), progress)
    try:
        if scheduler == "local":
            out = []
            for p in points:
                out.append(run_point(p, *args))
                bar.advance(p)
            return out
        return _run_dask(points, args, scheduler, bar, workers)
    finally:
        bar.close()


def _run_dask(points, args, scheduler: str, bar, workers: int):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise PassError("sweep", "scheduler dask needs the optional extra: pip install "
                                 "'sparsecc[sweep]' (dask[distributed])") from None
    if scheduler == "dask":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    elif scheduler.startswith("tcp://"):
        cluster, client = None, Client(scheduler)
    else:
        raise PassError("sweep", f"scheduler {scheduler!r}: local, dask or tcp://host:port")
    try:
        futures = {client.submit(run_point, p, *args, pure=False): i
                   for i, p in enumerate(points)}
        out: list = [None] * len(points)
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            bar.advance(points[futures[fut]])
        return out
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _Progress:
    """rich's progress bar when rich is installed, else a line per point on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.total, self.done = enabled, total, 0
        self._rich = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import Progress

                self._rich = Progress(transient=True)
                self._rich.start()
                self._task = self._rich.add_task("sweep", total=total)
            except ImportError:
                self._rich = None

    def advance(self, point) -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1)
        elif self.enabled:
            what = point.label if point else "dense reference"
            print(f"[sweep] {self.done}/{self.total} {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def _write(res: SweepResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "points.jsonl", "w") as f:
        f.write(json.dumps(dict(res.dense, kind="dense")) + "\n")
        for r in res.rows:
            f.write(json.dumps(dict(r, kind="point")) + "\n")
    text = res.pareto_markdown()
    if res.notes:
        text += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in res.notes)
    (out / "pareto.md").write_text(text + "\n")
    try:
        res.plot(out / "pareto.png")
    except ImportError:
        (out / "pareto.md").write_text(text + "\n\n(matplotlib not installed: no plot)\n")
    return out
