"""Sparse training from scratch on the real MNIST CNN architecture: RigL, SET and gradual
magnitude pruning (and a dense run) with one step budget, scored on MNIST-10k.

    python bench/sparse_training_mnist.py [--steps 3000] [--sparsity 0.9] [--methods ...]

Each method trains a freshly initialised CNN (seed 0) for --steps batches of 128 with Adam,
2e-3 cosine-decayed to 1e-5, on 2 threads. RigL/SET: ERK densities, update every 100 steps,
drop fraction 0.3 cosine-annealed to 0 at 75 % of the budget. Gradual: Zhu & Gupta's cubic
schedule from 10 % to 75 % of the budget. Writes results/sparse_training/<date>.jsonl and
prints a markdown table (accuracy, achieved sparsity, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sparsecc
from sparsecc import zoo
from sparsecc.finetune import accuracy, finetune
from sparsecc.passes.prune import sparsity_of


def attach(method: str, steps: int, sparsity: float):
    end = int(0.75 * steps)
    if method in ("rigl", "set"):
        cls = sparsecc.RigL if method == "rigl" else sparsecc.SET
        return lambda m, opt: cls(m, opt, sparsity=sparsity, distribution="erk",
                                  update_every=100, drop_fraction=0.3, end_step=end)
    if method == "gradual":
        sched = sparsecc.CubicSchedule(sparsity, 0.0, start_step=int(0.1 * steps), end_step=end,
                                       frequency=max(steps // 50, 1))
        return lambda m, opt: sparsecc.Pruner(m, sched, opt)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--methods", default="rigl,set,gradual,dense")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test, train = zoo.mnist("test"), zoo.mnist("train")
    out = Path("results/sparse_training")
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{time.strftime('%Y%m%d-%H%M')}.jsonl"
    rows = []
    for method in args.methods.split(","):
        model = zoo.mnist_cnn(pretrained=False, seed=0)
        model, seconds = finetune(model, *train, args.steps, lr=2e-3, lr_final=1e-5,
                                  pruner_factory=attach(method, args.steps, args.sparsity))
        row = {"method": method, "steps": args.steps, "accuracy": accuracy(model, *test),
               "sparsity": sparsity_of(model), "seconds": round(seconds, 1)}
        rows.append(row)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print("\n| method | MNIST-10k | sparsity | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['accuracy']:.4f} | {r['sparsity']:.4f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
