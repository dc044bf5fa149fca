"""The suite's models compiled to their native library and checked against torch over a grid
of pruning profiles, sparsities and batches: correctness only, no timing.

    .venv/bin/python bench/correctness.py --models resnet18,resnet50,mobilenet_v2 \\
        --profiles uniform,global --sparsities 0.5,0.7,0.8,0.95 --batches 16,13,1

One compile per (model, profile, sparsity), at the suite's example batch of 1; each batch then
runs fresh inputs through it and torch. Prints the max relative error (max |got - ref| over
max |ref|, the bench's rel_err) per cell, flags cells past the bench's limit
(suite.WRONG_REL_ERR) and exits with status 1 if any. Batch 13 is a part block of the whole-
batch tail's 16-sample packing (lower.PACK); 16 a whole one; 1 no packing and no tail.
Written after the 2026-12-07 grid (docs/bench/uniform_grid_1207.md) found ResNet-18 at 50 %,
batch 16, 0.65 off torch: 72 cells there after the fix, ResNet-18/50 and MobileNetV2,
uniform and global, 50-95 %, batches 16 / 13 / 1, the largest error 1.9e-6 (~10 minutes).
``zoo:NAME`` takes a model of sparsecc.zoo (zoo:mnist_cnn: the demo's, whose small maps run
over the batch, packed between its max pools at 13-16, since 2026-12-07).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from sparsecc.benchmarks import suite


def _zoo_spec(name: str) -> suite.ModelSpec:
    """A suite spec for sparsecc.zoo.ZOO[name]: inputs of its example input's shape."""
    from sparsecc import zoo

    build = zoo.ZOO[name]
    shape = tuple(zoo.example_input(build(), 1).shape[1:])
    return suite.ModelSpec(name, build, suite._randn(shape))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2",
                    help="the suite's models, or zoo:NAME for sparsecc.zoo.ZOO's (its example "
                    "input's shape)")
    ap.add_argument("--profiles", default="uniform,global")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.95")
    ap.add_argument("--batches", default="16,13,1")
    args = ap.parse_args()
    wrong = []
    for name in args.models.split(","):
        spec = _zoo_spec(name[4:]) if name.startswith("zoo:") else suite.model_specs()[name]
        base = spec.build()
        for profile in args.profiles.split(","):
            for sp in (float(v) for v in args.sparsities.split(",")):
                torch.manual_seed(0)
                model = suite.prune_profile(base, sp, profile).eval()
                t0 = time.perf_counter()
                cm = suite._compile(spec, model, spec.inputs(1), False)
                for batch in (int(v) for v in args.batches.split(",")):
                    x = spec.inputs(batch)
                    with torch.no_grad():
                        ref = model(*[torch.as_tensor(a) for a in x])
                    ref = getattr(ref, "last_hidden_state", ref)
                    out = cm(*[np.ascontiguousarray(a) for a in x])
                    out = out[0] if isinstance(out, (list, tuple)) else out
                    err = suite.rel_err(np.asarray(out), ref.detach().numpy())
                    bad = not err <= suite.WRONG_REL_ERR
                    if bad:
                        wrong.append((name, profile, sp, batch, err))
                    print(f"{name} {profile} {sp:.0%} batch {batch}: {err:.1e}"
                          + ("  WRONG" if bad else ""), flush=True)
                print(f"  (compiled and checked in {time.perf_counter() - t0:.0f} s)",
                      flush=True)
    print(f"{len(wrong)} wrong cell(s)" + (": " + "; ".join(
        f"{m} {p} {s:.0%} b{b} {e:.1e}" for m, p, s, b, e in wrong) if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
