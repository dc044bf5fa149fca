"""Per-op A/B of two builds of one model in one process: where a lowering or kernel change
gains or loses, op by op.

The suite's model (``--model``, pruned at ``--sparsity`` with ``--profile``) is compiled
twice: the base as the code stands, the variant with ``--set`` applied while it compiles
(environment variables, ``NAME=value``, or module constants, ``package.module.NAME=value``,
the value a Python literal). Rounds alternate the two builds; each round is one profiled
call (the library's cycle counts around each op) after a warm-up call, so both builds meet
the same machine. Prints each op's median time in both and their ratio (variant / base),
the sums and the whole calls' medians, and checks the variant's output against the base's.

``--split OP,...`` times those ops' calls one by one instead of as a whole (their calls get
op indices of their own past the plan's, in the base build): which of a conv's passes
(phase planes, kernel, crop) takes the time.

``--plain CALLS`` times whole plain calls instead, alternating between the builds: a
profiled call runs the head's chunks one after another on every thread, a plain one
sample-parallel with row bands (module._emit_chunks), so only plain calls show what a
change does to the time users see (bench/perf_ops.py splits that time by op). Noise floor
(``--plain 150 --aa``, ResNet-50 b16, Zen 4, 2026-12-04): 0.997x on the medians, 1.000x the
median of paired calls (p10-p90 0.93-1.06).

``--block CALLS`` (with ``--plain``) runs that many calls of a build in a row (after an
untimed one) before the other build's, the way the bench times an engine; call by call,
each build meets the other's caches. MobileNetV2 global b1 (2026-12-05): the same ratio
both ways (a depthwise layout change: the variant without it 0.985x the time).

``--probe`` (with ``--plain``) times a core round trip before every round (native.probe) and
prints the figures again for the rounds with the vCPUs near and apart: the host moves them
now and then, so a long run catches both placements in one process.

``--aa`` compiles the base twice and times the two identical builds the same way: the noise
floor a variant's ratios must clear. On the Zen 5 VM (2026-12-03, ResNet-18 batch 16, 15
rounds, two runs) identical builds differed by 0.93-1.05x per op (the same op the same way
in both runs: 1.051 / 1.045x) and 0.973-0.985x in the sum of the ops: per-op ratios within
~5 % and sums within ~2 % are not findings.

Usage:
  .venv/bin/python bench/op_ab.py --model resnet50 --batch 16 \\
      --set sparsecc.native.lower.TAIL_MAPS=128 [--rounds 20]
  .venv/bin/python bench/op_ab.py --model resnet18 --batch 16 --split 22,24
  .venv/bin/python bench/op_ab.py --model resnet18 --batch 16 --aa
  .venv/bin/python bench/op_ab.py --model resnet50 --batch 16 --plain 200 \\
      --set sparsecc.native.smallconv.POOL_TILE_MAJOR=False
  .venv/bin/python bench/op_ab.py --model resnet50 --batch 16 --plain 800 --probe \\
      --set sparsecc.native.lower.TAIL_CHUNKS=True   # split by placement (~10 min)
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import time
from contextlib import contextmanager

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparsecc.benchmarks import suite  # noqa: E402
from sparsecc.native import library as NL  # noqa: E402
from sparsecc.native import probe  # noqa: E402


@contextmanager
def applied(settings: list[str]):
    """``NAME=value`` settings in force inside: environment variables, or module constants
    (a dotted name)."""
    env, attrs = {}, {}
    for s in settings:
        name, _, raw = s.partition("=")
        if "." in name:
            mod, _, attr = name.rpartition(".")
            attrs[(importlib.import_module(mod), attr)] = ast.literal_eval(raw)
        else:
            env[name] = raw
    old_env = {k: os.environ.get(k) for k in env}
    old_attrs = {k: getattr(*k) for k in attrs}
    os.environ.update(env)
    for (mod, attr), v in attrs.items():
        setattr(mod, attr, v)
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for (mod, attr), v in old_attrs.items():
            setattr(mod, attr, v)


@contextmanager
def split_calls(ops: set[int], names: dict[int, str]):
    """Inside: each call of ``ops`` gets an op index of its own past the plan's (the plan
    grows placeholder ops to match), recorded in ``names``."""
    lower_program = NL.lower_program

    def lowered(*a, **kw):
        prog = lower_program(*a, **kw)
        base = len(prog.plan.ops)
        for c in prog.calls:
            if c.op in ops:
                k = base + len(names)
                names[k] = f"{c.op} {c.kernel} items {c.items}"
                c.op = k
        prog.plan.ops.extend([prog.plan.ops[-1]] * len(names))
        return prog

    NL.lower_program = lowered
    try:
        yield
    finally:
        NL.lower_program = lower_program


# --probe: a core round trip (native.probe) at or over this many ns counts as the vCPUs apart
APART_NS = 150


def plain_calls(builds, x, args) -> None:
    """``--plain``: whole plain calls of the builds, alternating (sample-parallel chunks and
    row bands as they run unprofiled); medians, spreads and the median of paired ratios.
    With ``--probe``, the core round trip before every round, and the figures again for the
    rounds with the vCPUs near and apart."""
    times = [[] for _ in builds]
    trips = []
    for b in builds:
        b.native.run(x)
    block = max(1, args.block)
    for _ in range(-(-args.plain // block)):
        if args.probe:  # (one round trip a round, for each call of its blocks)
            trips += [probe.core_round_trip_ns(2000) or 0.0] * block
        for i, b in enumerate(builds):
            if block > 1:  # a block's first call meets the other build's caches: untimed
                b.native.run(x)
            for _ in range(block):
                t0 = time.perf_counter()
                b.native.run(x)
                times[i].append(time.perf_counter() - t0)
    print(f"{args.model} {args.profile} {args.sparsity:.0%} batch {args.batch}, "
          f"{len(times[0])} plain calls a build, alternating "
          + (f"in blocks of {block}" if block > 1 else "call by call")
          + f"; {suite.machine_line()}")
    times = [np.array(ts) for ts in times]
    groups = [("", np.ones(len(times[0]), bool))]
    if trips:
        apart = np.array(trips) >= APART_NS
        groups += [(f"near (< {APART_NS} ns), {int((~apart).sum())} calls", ~apart),
                   (f"apart, {int(apart.sum())} calls", apart)]
    for label, sel in groups:
        if not sel.any():
            continue
        if label:
            print(f" {label}")
        for name, ts in zip(("base", "variant"), times):
            q = np.percentile(ts[sel], [10, 50, 90]) * 1e3
            print(f"  {name}: median {q[1]:.2f} ms [p10 {q[0]:.2f} - p90 {q[2]:.2f}]")
        if len(builds) > 1:
            r = times[1][sel] / times[0][sel]
            print(f"  variant / base: {np.median(times[1][sel]) / np.median(times[0][sel]):.3f}"
                  f" (medians), {np.median(r):.3f} (median of paired calls, p10-p90 "
                  f"{np.percentile(r, 10):.3f}-{np.percentile(r, 90):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", choices=sorted(suite.model_specs()))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--profile", default="uniform", choices=suite.PROFILES)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="the variant's setting (repeatable)")
    ap.add_argument("--split", default="", help="op indices whose calls are timed one by one")
    ap.add_argument("--aa", action="store_true",
                    help="the variant is a second build of the base (the noise floor)")
    ap.add_argument("--plain", type=int, default=0, metavar="CALLS",
                    help="time this many alternating plain (unprofiled) calls a build "
                         "instead of profiled rounds")
    ap.add_argument("--probe", action="store_true",
                    help="with --plain: the core round trip before every round, the figures "
                         "split by the vCPUs' placement (near / apart)")
    ap.add_argument("--block", type=int, default=1, metavar="CALLS",
                    help="with --plain: this many calls of a build in a row (after an untimed "
                         "one) before the other's, as the bench times an engine; the paired "
                         "ratios pair the i-th calls of two blocks")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if args.split and (args.set or args.aa):
        ap.error("--split times the base build's calls: give it without --set / --aa")
    if args.aa and args.set:
        ap.error("--aa builds the base twice: give it without --set")

    spec = suite.model_specs()[args.model]
    torch.manual_seed(0)
    model = suite.prune_profile(spec.build(), args.sparsity, args.profile)
    x = spec.inputs(args.batch)
    names: dict[int, str] = {}
    split = {int(v) for v in args.split.split(",") if v.strip()}
    with split_calls(split, names):
        # (the suite's compile: Hugging Face models traced by their input names)
        builds = [suite._compile(spec, model, x, False)]
    if args.set or args.aa:
        with applied(args.set):
            builds.append(suite._compile(spec, model, x, False))
        ref, got = builds[0].native.run(x)[0], builds[1].native.run(x)[0]
        print(f"variant vs base: max abs difference {float(np.abs(got - ref).max()):.3g}")
    if args.plain:
        plain_calls(builds, x, args)
        return
    per = [[] for _ in builds]
    whole = [[] for _ in builds]
    for _ in range(args.rounds):
        for i, b in enumerate(builds):
            b.native.run(x)  # (the warm-up call after the other build ran)
            t0 = time.perf_counter()
            per[i].append(b.native.profile(x, repeats=0, warm=False))
            whole[i].append(time.perf_counter() - t0)
    med = [{k: float(np.median([p.get(k, 0.0) for p in ps])) for k in ps[0]} for ps in per]
    base = builds[0]
    labels = base.native.lib.labels
    print(f"{args.model} {args.profile} {args.sparsity:.0%} batch {args.batch}, "
          f"{args.rounds} alternating rounds; {suite.machine_line()}")
    head = f"{'op':>4}  {'layer / call':60s} {'base us':>10}"
    print(head + (f" {'variant us':>10}  ratio" if len(builds) > 1 else ""))
    for k in sorted(med[0]):
        if k in names:
            what = names[k]
        else:
            op = base.native.plan.ops[k]
            what = f"{op.layer or op.name} {labels.get(k, '')}"
        row = f"{k:>4}  {what[:60]:60s} {med[0][k] * 1e6:10.1f}"
        if len(builds) > 1:
            v = med[1].get(k, 0.0)
            row += f" {v * 1e6:10.1f}  {v / med[0][k]:.3f}" if med[0][k] else ""
        print(row)
    for i, name in enumerate(("base", "variant")[:len(builds)]):
        print(f"{name}: sum of the ops {sum(med[i].values()) * 1e3:.2f} ms, a profiled call "
              f"{np.median(whole[i]) * 1e3:.2f} ms (median)")
    if len(builds) > 1:
        r = np.array([med[1][k] / med[0][k] for k in med[0]
                      if med[0][k] > 1e-4 and med[1].get(k, 0.0) > 0])  # (ops over 0.1 ms)
        if r.size:
            print(f"ops over 0.1 ms: variant / base {r.min():.3f}-{r.max():.3f}, median "
                  f"|ratio - 1| {np.median(np.abs(r - 1)):.3f}")


if __name__ == "__main__":
    main()
