"""Heads and FFN neurons removed from BERT-shaped models: sparsecc vs Torch-Pruning 1.6.

Usage: .venv/bin/python bench/channels_bert_vs_tp.py [--heads 0.25] [--ffn 0.5]
For each config (random weights, L1 importance): the parameter counts after removing
``--heads`` of the heads and ``--ffn`` of the FFN neurons per layer, the residual stream left
whole, by sparsecc (Hugging Face's fx graph, ``remove_channels`` with per-group overrides) and
by Torch-Pruning's MetaPruner (num_heads, prune_num_heads, the residual stream's producers
ignored), side by side; and the batch-8, seq-128 latency of the smaller sparsecc model against
the original in the sparsecc runtime, same process, medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

import sparsecc
from sparsecc.benchmarks.engines import time_engines
from sparsecc.hf import trace_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def tp_prune(model, example, heads: float, ffn: float):
    import torch_pruning as tp

    num_heads, ignored = {}, [model.embeddings, model.pooler]
    for layer in model.encoder.layer:
        att = layer.attention
        for lin in (att.self.query, att.self.key, att.self.value):
            num_heads[lin] = att.self.num_attention_heads
        ignored += [att.output.dense, layer.output.dense]  # producers of the residual stream
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ffn,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=heads,
        output_transform=lambda out: out.last_hidden_state.sum())
    pruner.step()
    return model


def main() -> None:
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--ffn", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="bench/results/channels_bert.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(2)
    configs = {
        "bert-mini (4 layers, 256, 4 heads)": dict(hidden_size=256, num_hidden_layers=4,
                                                   num_attention_heads=4,
                                                   intermediate_size=1024),
        "minilm-shaped (6 layers, 384, 12 heads)": dict(hidden_size=384, num_hidden_layers=6,
                                                        num_attention_heads=12,
                                                        intermediate_size=1536),
        "bert-base (12 layers, 768, 12 heads)": dict(),
    }
    rows = []
    print(f"heads removed {args.heads:.0%}, FFN neurons removed {args.ffn:.0%}, residual "
          "stream whole\n")
    print("| config | params | sparsecc | Torch-Pruning | equal | batch 8 x 128 ms: original -> "
          "smaller (sparsecc runtime) |")
    print("|---|---|---|---|---|---|")
    for name, kw in configs.items():
        torch.manual_seed(0)
        model = transformers.BertModel(transformers.BertConfig(**kw)).eval()
        ids = torch.randint(1000, 20000, (8, 128))
        mask = torch.ones_like(ids)
        mask[:, 96:] = 0
        gm = trace_hf(copy.deepcopy(model), ["input_ids", "attention_mask"])
        small = sparsecc.remove_channels(gm, (ids, mask), ratio=args.ffn, overrides={
            "*.attention.self.*": args.heads, "*.intermediate.dense": args.ffn})
        tp_model = tp_prune(copy.deepcopy(model), {"input_ids": ids[:1],
                                                   "attention_mask": mask[:1]},
                            args.heads, args.ffn)
        a, b = params(small), params(tp_model)
        cm_full = sparsecc.compile(gm, (ids, mask))
        cm_small = sparsecc.compile(small, (ids, mask))
        xs = (ids.numpy(), mask.numpy())
        t = time_engines({"original": lambda: cm_full(*xs), "smaller": lambda: cm_small(*xs)},
                         args.repeats)
        rows.append({"config": name, "params": params(model), "sparsecc": a,
                     "torch_pruning": b, "ms_original": t["original"].median_ms,
                     "ms_smaller": t["smaller"].median_ms})
        print(f"| {name} | {params(model):,} | {a:,} | {b:,} | {a == b} | "
              f"{t['original'].median_ms:.1f} -> {t['smaller'].median_ms:.1f} |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
