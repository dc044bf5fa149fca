"""Channel removal at ratio 0.5 (L1): sparsecc vs Torch-Pruning 1.6.1, and what it buys.

Usage: .venv/bin/python bench/channels_vs_tp.py [--repeats 30]
Prints parameter counts side by side for ResNet-18/50- and MobileNetV2-shaped models, then
batch-1 latency of the 50 %-channel ResNet-18 vs the original in the sparsecc runtime and torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sparsecc
from sparsecc import zoo
from sparsecc.benchmarks.engines import time_engines


def tp_prune(model, x, ratio, ignored):
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return model


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="bench/results/channels.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    print("| model | params | sparsecc @0.5 | Torch-Pruning @0.5 | sparsecc / TP |")
    print("|---|---|---|---|---|")
    for name, head in [("resnet18", "fc"), ("resnet50", "fc"), ("mobilenet_v2", "classifier.1")]:
        model = zoo.ZOO[name]()
        x = torch.randn(1, 3, 224, 224)
        small = sparsecc.remove_channels(model, x, ratio=0.5)
        ref = zoo.ZOO[name]()
        tp_model = tp_prune(ref, x, 0.5, [ref.get_submodule(head)])
        a, b = params(small), params(tp_model)
        rows.append({"model": name, "params": params(model), "sparsecc": a, "torch_pruning": b})
        print(f"| {name} | {params(model):,} | {a:,} | {b:,} | {a / b:.3f} |")
    print("\nResNet-18, batch 1, 50 % channels removed (median ms, p10-p90):")
    base = zoo.resnet18()
    x = torch.randn(1, 3, 224, 224)
    small = sparsecc.remove_channels(base, x, ratio=0.5)
    cms = {"original": sparsecc.compile(base, x), "50% channels": sparsecc.compile(small, x)}
    xn = x.numpy()
    fns = {}
    for label, m in (("original", base), ("50% channels", small)):
        fns[f"torch {label}"] = (lambda m=m: m(x))
        fns[f"sparsecc {label}"] = (lambda c=cms[label]: c(xn))
    with torch.no_grad():
        t = time_engines(fns, args.repeats)
    for k, v in t.items():
        print(f"  {k:24s} {v}")
        rows.append({"engine": k, "median_ms": v.median_ms, "p10_ms": v.p10_ms,
                     "p90_ms": v.p90_ms})
    for engine in ("torch", "sparsecc"):
        ratio = t[f"{engine} original"].median_ms / t[f"{engine} 50% channels"].median_ms
        print(f"  {engine}: 50 % channels runs {ratio:.2f}x faster")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
