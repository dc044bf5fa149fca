"""The format chooser against measurement, over bench/kernels.py's layers.

In every cell (layer x sparsity x batch, 2 threads) each format the chooser may pick for those
weights (``formats.pack.candidates``: dense, CSR and the blocked formats the weights fill) is
compiled with the format forced and timed through the native library, rounds alternating
between candidates (medians). The default choice -- the cost model, no autotune -- is read
from the format pass twice: with this machine's calibrated rates (``formats/calibrate.py``)
and with the reference rates. A choice is good when its time is within 10 % of the fastest
candidate's.

Usage:
  .venv/bin/python bench/chooser.py            # the grid (~6 min)
  .venv/bin/python bench/chooser.py --quick    # 6 layers (~2 min)
Writes results/chooser/<stamp>.md and .jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import LAYERS, Layer  # noqa: E402

import sparsecc  # noqa: E402
from sparsecc.formats import calibrate  # noqa: E402
from sparsecc.formats.pack import candidates  # noqa: E402
from sparsecc.frontend import capture  # noqa: E402
from sparsecc.lowering import lower  # noqa: E402
from sparsecc.passes import run_pass  # noqa: E402

QUICK = ["linear 1024x1024", "linear 4096x4096", "r50 1x1 256>64 @56", "r50 3x3 128 @28",
         "r50 3x3/2 256 @28", "mv2 1x1 96>576 @14"]


def _module(layer: Layer) -> torch.nn.Module:
    if layer.kind == "linear":
        return torch.nn.Linear(layer.cin, layer.cout, bias=False).eval()
    return torch.nn.Conv2d(layer.cin, layer.cout, layer.k, layer.stride, layer.pad,
                           bias=False).eval()


def _input(layer: Layer, batch: int, rng) -> np.ndarray:
    shape = (batch, layer.cin) if layer.kind == "linear" else \
        (batch, layer.cin, layer.hw, layer.hw)
    return rng.standard_normal(shape).astype(np.float32)


def chosen(model, x: np.ndarray, calibrated: bool) -> str:
    """The format the pass picks at the input's batch, with or without this machine's rates."""
    old = os.environ.get("SPARSECC_CALIBRATE")
    os.environ["SPARSECC_CALIBRATE"] = "1" if calibrated else "0"
    try:
        plan = lower(capture(model, torch.from_numpy(x)))
        run_pass("fuse", plan)
        run_pass("select-format", plan, {})
    finally:
        if old is None:
            del os.environ["SPARSECC_CALIBRATE"]
        else:
            os.environ["SPARSECC_CALIBRATE"] = old
    return next(op.attrs["fmt"] for op in plan.ops if op.kind in ("linear", "conv2d"))


def time_formats(model, x: np.ndarray, fmts: list[str]) -> dict[str, float]:
    """Seconds per call of each forced format (calibrate's runner and interleaved rounds)."""
    return calibrate.time_all({f: calibrate.runner(model, x, f) for f in fmts}, round_s=0.05)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/chooser")
    a = ap.parse_args(argv)
    import numba

    numba.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    rates = calibrate.rates_for(a.threads)
    print("calibrated rates:", rates)
    layers = [lay for lay in LAYERS if not a.quick or lay.name in QUICK]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    rng = np.random.default_rng(0)
    with (out / f"{stamp}.jsonl").open("w") as jf:
        for layer in layers:
            for s in (float(v) for v in a.sparsities.split(",")):
                torch.manual_seed(0)
                model = sparsecc.prune(_module(layer), s, scope="layer")
                w2 = model.weight.detach().numpy().reshape(layer.cout, -1)
                cands = candidates(w2, conv_kxk=layer.k != 1)
                for batch in (int(b) for b in a.batches.split(",")):
                    x = _input(layer, batch, rng)
                    t = time_formats(model, x, cands)
                    best = min(t, key=t.get)
                    row = dict(layer=layer.name, sparsity=s, batch=batch,
                               us={f: round(v * 1e6, 1) for f, v in t.items()}, best=best)
                    for tag, cal in (("calibrated", True), ("reference", False)):
                        pick = chosen(model, x, cal)
                        row[tag] = pick
                        row[tag + "_ratio"] = round(t.get(pick, float("nan")) / t[best], 3)
                    rows.append(row)
                    jf.write(json.dumps(row) + "\n")
                    jf.flush()
                    print(row)
    lines = ["| layer | sparsity | batch | us per format | best | calibrated pick (x best) | "
             "reference pick (x best) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        us = ", ".join(f"{f} {v}" for f, v in r["us"].items())
        lines.append(f"| {r['layer']} | {r['sparsity']} | {r['batch']} | {us} | {r['best']} | "
                     f"{r['calibrated']} ({r['calibrated_ratio']}) | {r['reference']} "
                     f"({r['reference_ratio']}) |")
    summary = []
    for tag in ("calibrated", "reference"):
        good = sum(r[tag + "_ratio"] <= 1.10 for r in rows)
        summary.append(f"{tag} rates: {good}/{len(rows)} cells within 10 % of the best "
                       f"({100 * good / max(len(rows), 1):.0f} %)")
    text = (f"# format chooser vs measurement, {a.threads} threads, {stamp}\n\n"
            f"rates: {rates}\n\n" + "\n".join("- " + s for s in summary) + "\n\n" +
            "\n".join(lines) + "\n")
    (out / f"{stamp}.md").write_text(text)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
