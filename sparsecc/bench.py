"""``sparsecc bench``: the CLI side. The suite lives in ``sparsecc.benchmarks``; an artifact
(no torch model to compare with) is timed alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from sparsecc.benchmarks.engines import time_engines
from sparsecc.benchmarks.suite import machine_line


def _floats(text: str | None) -> list[float] | None:
    return None if not text else [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str | None) -> list[int] | None:
    return None if not text else [int(v) for v in text.split(",") if v.strip()]


def _fresh_dir(root: Path) -> Path:
    """root/<date-time>, a name no earlier run took: two runs started in the same minute
    wrote into one folder (the second's results.jsonl, tables and plots over the first's)."""
    stamp = time.strftime("%Y%m%d-%H%M")
    out, k = root / stamp, 1
    while out.exists():
        k += 1
        out = root / f"{stamp}-{k}"
    return out


def bench_command(args) -> int:
    if getattr(args, "save", None):
        from sparsecc.cli import output_path

        output_path(args.save, what="--save")
    if args.target and args.target.endswith(".scc"):
        return _bench_artifact(args)
    from sparsecc.benchmarks import report
    from sparsecc.benchmarks.suite import (
        DEFAULT_ENGINES,
        ENGINES,
        FULL,
        QUICK,
        WRONG_REL_ERR,
        SuiteConfig,
        machine_info,
        peak,
        run_suite,
    )

    base = dict(QUICK if args.quick else FULL)
    specs = None
    if args.target:
        from sparsecc.cli import build_model

        model, x = build_model(args.target, args.input_shape)
        spec = _custom_spec(args.target, model, x)
        specs = {spec.name: spec}
        if args.report or args.save:
            _report_and_save(args, model, x)
        base["models"] = [spec.name]
        base["sparsities"] = [0.0, args.sparsity] if args.sparsity else [0.0, 0.9]
    default = base.get("engines", DEFAULT_ENGINES)
    engines = default if not args.vs else [e for e in ENGINES if e in args.vs.split(",")
                                           or e == "sparsecc"]
    unknown = sorted(set((args.vs or "").split(",")) - set(ENGINES) - {""})
    out = Path(args.out) if args.out else _fresh_dir(Path("results/bench"))
    cfg = SuiteConfig(models=args.models.split(",") if args.models else base["models"],
                      sparsities=_floats(args.sparsities) or base["sparsities"],
                      batches=_ints(args.batch) or base["batches"],
                      threads=_ints(args.threads) or base["threads"], engines=engines,
                      min_runs=base.get("min_runs", 30), min_time=base.get("min_time", 2.0),
                      rounds=base.get("rounds", 4),
                      dense_cells=base.get("dense_cells", "all"), out=out,
                      recipe=getattr(args, "recipe", None),
                      profile=getattr(args, "profile", None) or "global")
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
          f"numba {info['numba']}, onnxruntime {info.get('onnxruntime', 'not installed')}")
    for name in unknown:
        print(f"note: engine {name!r} is unknown; skipped")
    t0 = time.perf_counter()
    rows = run_suite(cfg, specs)
    table = report.markdown(rows, engines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    at = 0.9 if 0.9 in cfg.sparsities else max(cfg.sparsities)
    versus = report.versus(rows, at)
    if any(r["engine"] == "sparsecc-int8" and "median_ms" in r for r in rows):
        versus += "\n\n" + report.versus(rows, at, base="sparsecc-int8")
    (out / "versus.md").write_text(versus + "\n")
    # (the peak the rows' pct_peak and versus.md's header divide by: one figure a process)
    (out / "machine.json").write_text(json.dumps(dict(info, seconds=time.perf_counter() - t0,
                                                      peak_gflops=round(peak(), 1),
                                                      config={k: getattr(cfg, k) for k in (
                                                          "models", "sparsities", "batches",
                                                          "threads", "profile", "engines",
                                                          "min_runs", "min_time", "rounds",
                                                          "dense_cells")}),
                                                  indent=1))
    try:
        report.plots(rows, out)
    except ImportError:
        print("note: matplotlib is not installed; no plots")
    print(table)
    print("\n" + versus)
    print(f"\nwrote {out}/results.jsonl, table.md, versus.md, *.png in "
          f"{time.perf_counter() - t0:.0f} s")
    wrong = [r for r in rows if r.get("wrong")]
    if wrong:
        print(f"error: {len(wrong)} cell(s) with wrong output (max rel. error against torch "
              f"over {WRONG_REL_ERR:g}): " + "; ".join(
                  f"{r['engine']} {r['model']} {r['sparsity']:.0%} b{r['batch']} "
                  f"t{r['threads']} {r['max_rel_err']:.1e}" for r in wrong[:10]),
              file=sys.stderr)
        return 1
    return 0


def _report_and_save(args, model, x) -> None:
    """The compiled model at ``--sparsity``: its per-layer report and/or the saved artifact."""
    import sparsecc

    if args.sparsity:
        model = sparsecc.prune(model, args.sparsity)
    cm = sparsecc.compile(model, x, recipe=getattr(args, "recipe", None))
    if args.save:
        print(f"saved {cm.save(args.save)}")
    if args.report:
        print(cm.report())


def _custom_spec(target: str, model, x):
    from sparsecc.benchmarks.suite import ModelSpec

    shape = tuple(x.shape[1:])
    dtype = x.numpy().dtype

    def make(batch):
        rng = np.random.default_rng(batch)
        if dtype.kind == "f":
            return [rng.standard_normal((batch,) + shape).astype(dtype)]
        return [np.zeros((batch,) + shape, dtype)]

    return ModelSpec(target.rsplit(":", 1)[-1], lambda: model, make)


def _bench_artifact(args) -> int:
    import sparsecc

    cm = sparsecc.load(args.target)
    print(f"machine: {machine_line()}\nnote: an artifact has no torch model; timing sparsecc only")
    if getattr(args, "report", False):
        print(cm.report())
    for b in _ints(args.batch) or [1]:
        if not cm.plan.dynamic_batch and b != cm.plan.example_batch:
            print(f"{b:>5}  skipped: compiled for batch {cm.plan.example_batch} only")
            continue
        inputs = cm.example_inputs(batch=b)
        cm.warmup(*inputs)  # (its start-up calls: time_engines' warm-up is 3)
        t = time_engines({"sparsecc": lambda: cm(*inputs)}, args.repeats)["sparsecc"]
        print(f"batch {b:>4}: {t}")
    return 0
