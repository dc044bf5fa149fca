"""Pruning on the real MNIST CNN: per-layer sensitivity (table + PNG) and accuracy figures.

Usage: .venv/bin/python bench/prune_mnist.py [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sparsecc
from sparsecc import zoo
from sparsecc.finetune import accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--eval-images", type=int, default=10000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = zoo.mnist("test")
    images, labels = images[:args.eval_images], labels[:args.eval_images]
    model = zoo.mnist_cnn()

    def metric(m):
        return 100.0 * accuracy(m, images, labels)

    table = sparsecc.sensitivity(model, metric, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98))
    png = table.plot(out / "mnist_sensitivity.png", ylabel="MNIST-10k accuracy (%)")
    md = table.to_markdown()
    budgets = table.budgets(max_drop=0.2)
    planned = sparsecc.prune(model, 0.0, overrides=budgets)
    from sparsecc.passes.prune import sparsity_of

    rows = {"sensitivity": {f"{k[0]}@{k[1]}": v for k, v in table.metric.items()},
            "budgets_max_drop_0.2": budgets,
            "budgeted_sparsity": sparsity_of(planned),
            "budgeted_accuracy": metric(planned)}
    for s in (0.5, 0.7, 0.8, 0.9):
        for scope in ("global", "layer"):
            rows[f"one-shot {scope} {s}"] = metric(sparsecc.prune(model, s, scope=scope))
    rows["one-shot 2:4"] = metric(sparsecc.prune(model, pattern="2:4"))
    (out / "mnist_pruning.json").write_text(json.dumps(rows, indent=1))
    (out / "mnist_sensitivity.md").write_text(md + "\n")
    print(md)
    print(f"\nbudgets (max drop 0.2 points): {budgets}")
    print(f"budgeted model: sparsity {rows['budgeted_sparsity']:.3f}, "
          f"accuracy {rows['budgeted_accuracy']:.2f} %")
    for k, v in rows.items():
        if k.startswith("one-shot"):
            print(f"{k}: {v:.2f} %")
    print(f"wrote {png}, {out / 'mnist_sensitivity.md'}, {out / 'mnist_pruning.json'}")


if __name__ == "__main__":
    main()
