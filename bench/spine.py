"""Spine figures: per-model max error vs torch, and batch-1 latency vs torch (same process).

Usage: .venv/bin/python bench/spine.py [--repeats 100] [--out bench/results/spine.jsonl]
Writes JSON lines (one per cell) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sparsecc
from sparsecc import zoo
from sparsecc.benchmarks.engines import time_engines
from sparsecc.benchmarks.suite import machine_line

ERROR_MODELS = ["mlp", "lenet", "resnet_basic", "resnet_bottleneck", "mobilenet_v2_block",
                "tiny_transformer", "mnist_cnn"]


def _blocks():
    torch.manual_seed(0)
    basic = zoo._randomize_bn(zoo.BasicBlock(64, 64), 0).eval()
    basic.example_input_shape = (1, 64, 56, 56)
    bottleneck = zoo._randomize_bn(zoo.Bottleneck(256, 64), 0).eval()
    bottleneck.example_input_shape = (1, 256, 56, 56)
    return {"resnet18 BasicBlock 64@56x56": basic, "resnet50 Bottleneck 256@56x56": bottleneck}


def max_errors(out: list[dict]) -> None:
    for name in ERROR_MODELS:
        for sparsity in (None, 0.9):
            model = zoo.ZOO[name]()
            if sparsity:
                model = sparsecc.prune(model, sparsity, scope="layer")
            cm = sparsecc.compile(model, zoo.example_input(model, 1))
            for batch in (1, 8):
                x = zoo.example_input(model, batch, seed=batch)
                with torch.no_grad():
                    ref = model(x)
                got = cm(x)
                pairs = zip(got, ref) if isinstance(ref, tuple) else [(got, ref)]
                abs_err = max(float((g - r).abs().max()) for g, r in pairs)
                out.append({"kind": "error", "model": name, "sparsity": sparsity or 0.0,
                            "batch": batch, "max_abs_err": abs_err})


def latency(out: list[dict], repeats: int) -> None:
    torch.set_num_threads(2)
    models = {"mnist_cnn": zoo.mnist_cnn(), "resnet_basic (zoo)": zoo.resnet_basic(), **_blocks()}
    for name, base in models.items():
        for sparsity in (None, 0.9):
            model = sparsecc.prune(base, sparsity, scope="layer") if sparsity else base
            x = torch.randn(tuple(model.example_input_shape))
            t0 = time.perf_counter()
            cm = sparsecc.compile(model, x)
            compile_s = time.perf_counter() - t0
            xn = x.numpy()

            def run_torch():
                with torch.no_grad():
                    return model(x)

            t = time_engines({"sparsecc": lambda: cm(xn), "torch": run_torch}, repeats)
            out.append({"kind": "latency", "model": name, "sparsity": sparsity or 0.0, "batch": 1,
                        "repeats": repeats, "compile_s": compile_s,
                        **{f"{k}_{f}": getattr(v, f) for k, v in t.items()
                           for f in ("median_ms", "p10_ms", "p90_ms")},
                        "speedup": t["torch"].median_ms / t["sparsecc"].median_ms})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", default="bench/results/spine.jsonl")
    args = ap.parse_args()
    rows: list[dict] = []
    max_errors(rows)
    latency(rows, args.repeats)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "machine", "machine": machine_line(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text("\n".join(json.dumps(r) for r in [meta] + rows) + "\n")
    print(f"machine: {meta['machine']}, torch {torch.__version__}\n")
    print("| model | sparsity | batch | max abs err |\n|---|---|---|---|")
    for r in rows:
        if r["kind"] == "error":
            print(f"| {r['model']} | {r['sparsity']:.0%} | {r['batch']} | {r['max_abs_err']:.1e} |")
    print("\n| model | sparsity | sparsecc ms (p10-p90) | torch ms (p10-p90) | speedup |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["kind"] == "latency":
            print(f"| {r['model']} | {r['sparsity']:.0%} | {r['sparsecc_median_ms']:.3f} "
                  f"({r['sparsecc_p10_ms']:.3f}-{r['sparsecc_p90_ms']:.3f}) | "
                  f"{r['torch_median_ms']:.3f} ({r['torch_p10_ms']:.3f}-{r['torch_p90_ms']:.3f}) "
                  f"| {r['speedup']:.2f}x |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
