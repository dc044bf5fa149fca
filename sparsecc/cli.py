"""sparsecc compile | run | report | bench — a one-line error and a non-zero exit on failure."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import InputError, ModelSpecError, SparseccError
from sparsecc.options import env_debug

MAX_INPUT_ELEMENTS = 1 << 31


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected e.g. 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: dims must be positive")
    total = 1
    for d in shape:
        total *= d
    if total > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: {total} elements is more than "
                                         f"{MAX_INPUT_ELEMENTS}")
    return shape


def sparsity_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"bad sparsity {text!r}: expected a number in [0, 1]")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"bad value {text!r}: expected a positive integer")
    return value


def _checked_list(text: str, item, what: str) -> str:
    """Comma-separated items, each checked by ``item`` (the text is kept for the bench)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}")
    for part in parts:
        item(part)
    return text


def int_list(text: str) -> str:
    return _checked_list(text, positive_int, "positive integers")


def sparsity_list(text: str) -> str:
    return _checked_list(text, sparsity_arg, "sparsities in [0, 1]")


def output_path(path: str, *, what: str) -> Path:
    """A file to write: not a folder, in a folder that exists (no tree is made silently)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name")
    if not p.parent.is_dir():
        raise UsageError(f"{what} {path}: folder {p.parent} does not exist")
    return p


class UsageError(SparseccError):
    """A command-line argument the command cannot use (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"sparsecc: error: {message} (see {self.prog} -h)\n")


def resolve_factory(spec: str):
    """``pkg.module:factory`` or ``path/to/file.py:factory`` -> the factory callable."""
    if ":" not in spec:
        raise ModelSpecError(spec, "expected 'package.module:factory' or 'file.py:factory'")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelSpecError(spec, f"file {target} not found")
        mod_spec = importlib.util.spec_from_file_location(f"_sparsecc_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelSpecError(spec, f"importing {target} failed: {type(exc).__name__}: "
                                       f"{exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelSpecError(spec, f"cannot import {target}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(spec, f"{target} has no callable {attr!r}")
    return factory


def build_model(spec: str, input_shape: tuple[int, ...] | None):
    import torch

    try:
        model = resolve_factory(spec)()
    except SparseccError:
        raise
    except Exception as exc:
        raise ModelSpecError(spec, f"the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(spec, f"the factory returned {type(model).__name__}, not an nn.Module")
    shape = input_shape or getattr(model, "example_input_shape", None)
    if shape is None:
        raise ModelSpecError(spec, "no --input-shape given and the model has no "
                                   "example_input_shape attribute")
    dtype = getattr(model, "example_input_dtype", torch.float32)
    if dtype.is_floating_point:
        x = torch.randn(tuple(shape), dtype=dtype, generator=torch.Generator().manual_seed(0))
    else:
        x = torch.zeros(tuple(shape), dtype=dtype)
    return model.eval(), x


def cmd_compile(args) -> int:
    import sparsecc

    out = output_path(args.output, what="output")
    model, x = build_model(args.model, args.input_shape)
    calibration = None
    if args.calibration:
        import torch

        if not args.quantize:
            raise SparseccError("--calibration needs --quantize int8")
        data = _load_input(args.calibration).astype(np.float32, copy=False)
        if data.ndim != x.dim() or data.shape[1:] != tuple(x.shape[1:]):
            raise InputError(args.calibration, f"shape {data.shape}: expected (N, "
                             f"{', '.join(str(d) for d in x.shape[1:])})")
        calibration = [torch.from_numpy(np.ascontiguousarray(data[i:i + 8]))
                       for i in range(0, len(data), 8)]
    t0 = time.perf_counter()
    cm = sparsecc.compile(model, x, sparsity=args.sparsity, recipe=args.recipe,
                          quantize=args.quantize, calibration=calibration)
    path = cm.save(out)
    print(f"compiled {args.model} in {time.perf_counter() - t0:.2f} s -> {path} "
          f"({path.stat().st_size / 1e6:.2f} MB)")
    if args.report:
        print(cm.report())
    return 0


def _load_input(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(path, "file not found")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise InputError(path, f"not a plain .npy array ({exc})") from None


def cmd_run(args) -> int:
    import sparsecc

    target = output_path(args.output, what="output") if args.output else None
    rt = sparsecc.load(args.artifact)
    inputs = [_load_input(p) for p in args.input]
    out = rt(*inputs)
    outs = tuple(out.values()) if isinstance(out, dict) else out if isinstance(out, tuple) \
        else (out,)
    if target is not None:
        with open(target, "wb") as f:  # exactly this name (np.save(path) would add .npy)
            if len(outs) == 1:
                np.save(f, outs[0])
            else:
                np.savez(f, *outs)
        print(f"wrote {args.output}: " + ", ".join(str(o.shape) for o in outs))
    else:
        for o in outs:
            print(np.array2string(o, threshold=50, precision=5))
    return 0


def cmd_report(args) -> int:
    import sparsecc

    rt = sparsecc.load(args.artifact)
    print(rt.report(measure=not args.no_measure, repeats=args.repeats))
    return 0


def cmd_sweep(args) -> int:
    from sparsecc.sweep import sweep

    res = sweep(args.model, args.metric,
                sparsities=[float(v) for v in args.sparsities.split(",") if v.strip()],
                patterns=[p.strip() for p in args.patterns.split(",") if p.strip()],
                methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                train=args.train, steps=args.steps, scheduler=args.scheduler, out=args.output,
                batch=args.batch, input_shape=args.input_shape, seed=args.seed,
                threads=args.threads, repeats=args.repeats, workers=args.workers)
    print(res.pareto_markdown())
    for note in res.notes:
        print(f"note: {note}")
    print(f"wrote {res.out}/points.jsonl, pareto.md, pareto.png")
    return 0


def scheduler_arg(text: str) -> str:
    if text in ("local", "dask") or text.startswith("tcp://"):
        return text
    raise argparse.ArgumentTypeError(f"bad scheduler {text!r}: local, dask or tcp://host:port")


def cmd_bench(args) -> int:
    from sparsecc.bench import bench_command

    return bench_command(args)


def cmd_export_c(args) -> int:
    from sparsecc.api import load
    from sparsecc.native.export import export_c
    from sparsecc.native.lower import Unsupported

    cm = load(args.artifact, native=False)
    try:
        so, hdr = export_c(cm.plan, args.dir, args.prefix)
    except Unsupported as exc:
        raise SparseccError(f"{args.artifact}: not every layer has native code yet ({exc}); "
                            "the model runs in Python only") from None
    print(f"wrote {so} ({so.stat().st_size / 1e6:.2f} MB) and {hdr}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sparsecc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    c = sub.add_parser("compile", help="compile MODEL to a .scc artifact")
    c.add_argument("model", help="package.module:factory or file.py:factory")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--input-shape", type=parse_shape)
    c.add_argument("--sparsity", type=sparsity_arg)
    c.add_argument("--recipe")
    c.add_argument("--quantize", choices=["int8"], help="run linear and conv layers in int8")
    c.add_argument("--calibration", help=".npy of example inputs (N, ...) for --quantize's "
                                          "activation ranges (default: the example input)")
    c.add_argument("--report", action="store_true", help="print the per-layer report")
    c.set_defaults(fn=cmd_compile)
    r = sub.add_parser("run", help="run an artifact on .npy input(s)")
    r.add_argument("artifact")
    r.add_argument("--input", action="append", required=True, help=".npy file (repeatable)")
    r.add_argument("-o", "--output")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="per-layer report of an artifact")
    rep.add_argument("artifact")
    rep.add_argument("--no-measure", action="store_true")
    rep.add_argument("--repeats", type=positive_int, default=20)
    rep.set_defaults(fn=cmd_report)
    b = sub.add_parser("bench", help="the benchmark suite, or one MODEL / artifact, vs peers")
    b.add_argument("target", nargs="?",
                   help="package.module:factory, file.py:factory or out.scc (default: the suite)")
    b.add_argument("--quick", action="store_true", help="a 1-2 minute subset of the suite")
    b.add_argument("--models", help="suite models, comma-separated (mlp,resnet18,resnet50,"
                                    "mobilenet_v2,minilm; also bert_base)")
    b.add_argument("--sparsities", type=sparsity_list, help="comma-separated, e.g. 0,0.5,0.9")
    b.add_argument("--threads", type=int_list, help="comma-separated thread counts, e.g. 1,2")
    b.add_argument("--profile", choices=["global", "uniform", "block4"], default="global",
                   help="global: one magnitude threshold over all layers; uniform: the "
                        "sparsity in every layer but the first conv and the classifier; "
                        "block4: uniform in blocks of 4 input channels (1x4c, for int8)")
    b.add_argument("--out", help="results folder (default results/bench/<date>)")
    b.add_argument("--input-shape", type=parse_shape)
    b.add_argument("--sparsity", type=sparsity_arg)
    b.add_argument("--batch", type=int_list, help="comma-separated batch sizes")
    b.add_argument("--vs", help="comma-separated engines: torch,torch.compile,onnxruntime,"
                                "deepsparse,sparsecc-dense,sparsecc-executor; int8: "
                                "sparsecc-int8,onnxruntime-int8,deepsparse-int8 (sparsecc "
                                "always runs)")
    b.add_argument("--repeats", type=positive_int, default=50)
    b.add_argument("--report", action="store_true", help="print the per-layer report")
    b.add_argument("--save", help="also save the compiled artifact here")
    b.add_argument("--recipe", help="compile recipe (YAML/JSON) for the sparsecc engine")
    b.set_defaults(fn=cmd_bench)
    x = sub.add_parser("export-c", help="the artifact as a C library: DIR/libPREFIX.so + "
                                        "DIR/PREFIX.h")
    x.add_argument("artifact")
    x.add_argument("dir")
    x.add_argument("--prefix", default="sparsecc_model", help="begins every symbol")
    x.set_defaults(fn=cmd_export_c)
    w = sub.add_parser("sweep", help="accuracy/latency sweep: sparsity x pattern x method")
    w.add_argument("model", help="package.module:factory or file.py:factory")
    w.add_argument("--metric", required=True, help="module:function(model) -> float")
    w.add_argument("--sparsities", type=sparsity_list, default="0.5,0.8,0.9")
    w.add_argument("--patterns", default="unstructured", help="e.g. unstructured,2:4,4x1")
    w.add_argument("--methods", default="oneshot", help="oneshot,gradual,rigl,set")
    w.add_argument("--train", help="module:function(model, steps, on_optimizer): fine-tuning")
    w.add_argument("--steps", type=int, default=0, help="fine-tuning budget per point")
    w.add_argument("--scheduler", type=scheduler_arg, default="local",
                   help="local (default), dask (a LocalCluster) or tcp://host:8786")
    w.add_argument("--workers", type=positive_int, default=2, help="dask LocalCluster workers")
    w.add_argument("-o", "--output", default="sweep")
    w.add_argument("--input-shape", type=parse_shape)
    w.add_argument("--batch", type=positive_int, default=1, help="latency batch size")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--threads", type=positive_int, default=1, help="torch threads per point")
    w.add_argument("--repeats", type=positive_int, default=50)
    w.set_defaults(fn=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SparseccError as exc:
        print(f"sparsecc: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file we could not read or write
        where = f": {exc.filename}" if exc.filename else ""
        print(f"sparsecc: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, the traceback on request
        if env_debug():
            raise
        print(f"sparsecc: internal error: {type(exc).__name__}: {exc} (SPARSECC_DEBUG=1 shows "
              "the traceback; please report it)", file=sys.stderr)
        return 1


def _entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
