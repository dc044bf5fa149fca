"""Kernel sweep: one layer at a time, every engine timed in the same process and rounds.

Layers: linear 1024^2 and 4096^2, ResNet-50 1x1 and 3x3 convs, MobileNetV2 1x1 convs.
Sparsity x batch x threads grid; engines:
  torch dense | numpy/OpenBLAS dense (sparsecc's dense kernels: BLAS, im2col for kxk) |
  torch CSR (linear, 1x1) | scipy CSR (linear, 1x1; one thread) |
  sparsecc numba CSR | sparsecc llvm CSR | sparsecc llvm BSR 4x1 (on a 4x1-block-pruned copy of
  the weight at the same sparsity) | sparsecc auto (compiled with autotune; whole executor call)
  and sparsecc dense through the same executor (the autotune guarantee is auto <= 1.05 x that).
Columns per engine: median ms [p10-p90], speedup over torch dense; for sparsecc llvm CSR also
achieved GB/s, GFLOP/s and the DRAM-roofline fraction (bytes moved / DRAM bandwidth over time).

--convs: ResNet / MobileNetV2 1x1 and 3x3 convs (90 % per layer, batch 1 and 16) through the
native library, in GFLOP/s of the sparse FLOPs and % of the FMA peak (the #18 sweep targets).

--gemm: the native library's dense GEMM (the register-blocked microkernel every dense layer
runs on, called through a compiled one-layer model) against OpenBLAS (numpy matmul) and torch
at layer shapes, in GFLOP/s and % of the 2-core FMA peak.

Usage:
  .venv/bin/python bench/kernels.py --quick          # the issue's target cells (~20 s)
  .venv/bin/python bench/kernels.py                  # the full grid (~17 min)
  .venv/bin/python bench/kernels.py --gemm           # dense GEMM vs OpenBLAS / torch
  .venv/bin/python bench/kernels.py --convs          # native convs, GFLOP/s (~3 min)
Writes results/kernels/<stamp>.jsonl, .md and speedup_vs_sparsity.png.
"""

from __future__ import annotations

import os

# Before numpy loads OpenBLAS: its idle workers would otherwise spin ~0.1 s after each 2-thread
# call and take the cores from the next engine's threads (a 50x slowdown measured).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

import sparsecc
from sparsecc.benchmarks.engines import summarize
from sparsecc.benchmarks.suite import PEAK_GFLOPS, machine_info
from sparsecc.formats.pack import pack
from sparsecc.ir.plan import Op
from sparsecc.runtime.ops.registry import aligned_copy, aligned_empty, bind_alone
from sparsecc.runtime.threads import single_threaded_blas


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # linear | conv
    cin: int
    cout: int
    hw: int = 1
    k: int = 1
    stride: int = 1

    @property
    def pad(self) -> int:
        return self.k // 2


LAYERS = [
    Layer("linear 1024x1024", "linear", 1024, 1024),
    Layer("linear 4096x4096", "linear", 4096, 4096),
    Layer("r50 1x1 64>256 @56", "conv", 64, 256, 56),
    Layer("r50 1x1 256>64 @56", "conv", 256, 64, 56),
    Layer("r50 1x1 512>128 @28", "conv", 512, 128, 28),
    Layer("r50 1x1 1024>256 @14", "conv", 1024, 256, 14),
    Layer("r50 1x1 2048>512 @7", "conv", 2048, 512, 7),
    Layer("r50 3x3 64 @56", "conv", 64, 64, 56, 3),
    Layer("r50 3x3 128 @28", "conv", 128, 128, 28, 3),
    Layer("r50 3x3 256 @14", "conv", 256, 256, 14, 3),
    Layer("r50 3x3 512 @7", "conv", 512, 512, 7, 3),
    Layer("r50 3x3/2 128 @56", "conv", 128, 128, 56, 3, 2),
    Layer("r50 3x3/2 256 @28", "conv", 256, 256, 28, 3, 2),
    Layer("r50 3x3/2 512 @14", "conv", 512, 512, 14, 3, 2),
    Layer("mv2 1x1 24>144 @56", "conv", 24, 144, 56),
    Layer("mv2 1x1 144>24 @56", "conv", 144, 24, 56),
    Layer("mv2 1x1 96>576 @14", "conv", 96, 576, 14),
    Layer("mv2 1x1 320>1280 @7", "conv", 320, 1280, 7),
]
QUICK_LAYERS = ["linear 4096x4096", "r50 1x1 256>64 @56", "r50 1x1 1024>256 @14",
                "r50 3x3 64 @56", "r50 3x3 256 @14"]


def _module(layer: Layer) -> torch.nn.Module:
    if layer.kind == "linear":
        return torch.nn.Linear(layer.cin, layer.cout, bias=False)
    return torch.nn.Conv2d(layer.cin, layer.cout, layer.k, layer.stride, layer.pad, bias=False)


def _input(layer: Layer, batch: int, rng) -> np.ndarray:
    shape = (batch, layer.cin) if layer.kind == "linear" else (batch, layer.cin, layer.hw,
                                                               layer.hw)
    # aligned as the executor's buffers are (numpy's own start 16 bytes apart)
    return aligned_copy(rng.standard_normal(shape).astype(np.float32))


def _prune(w: np.ndarray, sparsity: float, block: int = 1) -> np.ndarray:
    """Magnitude pruning, unstructured or in (block x 1) output-row blocks."""
    w2 = w.reshape(w.shape[0], -1).copy()
    if block == 1:
        cut = np.quantile(np.abs(w2), sparsity) if sparsity > 0 else -1
        w2[np.abs(w2) <= cut] = 0
        return w2.reshape(w.shape)
    rows = w2.shape[0] // block * block
    blocks = np.abs(w2[:rows]).reshape(rows // block, block, -1).sum(1)
    cut = np.quantile(blocks, sparsity) if sparsity > 0 else -1
    keep = np.repeat(blocks > cut, block, axis=0)
    w2[:rows] *= keep
    return w2.reshape(w.shape)


def _op(layer: Layer, fmt: str, backend: str = "llvm") -> Op:
    attrs = {"fmt": fmt, "backend": backend, "act": "none"}
    if layer.kind == "conv":
        attrs.update(kernel=[layer.k] * 2, stride=[layer.stride] * 2, padding=[layer.pad] * 2,
                     dilation=[1, 1], groups=1)
    return Op("linear" if layer.kind == "linear" else "conv2d", "op", ["x"], "y", attrs, {},
              layer.name)


def _bound(layer: Layer, w: np.ndarray, fmt: str, x: np.ndarray, y: np.ndarray,
           backend: str = "llvm", **attrs):
    """A sparsecc kernel bound to buffers exactly as the runtime binds it."""
    op = _op(layer, fmt, backend)
    op.attrs.update(attrs)
    params = pack(fmt, w.reshape(w.shape[0], -1))
    if fmt == "dense":
        params = {"weight": w}
    else:
        op.attrs["weight_shape"] = list(w.shape)
    return bind_alone(op, [x], y, params)


def _blas1(step, hold: bool):
    """As the runtime runs sparse kernels: numpy's BLAS held at one thread (its spinning
    workers would otherwise compete with numba's)."""
    if not hold:
        return step

    def run():
        with single_threaded_blas():
            step()

    return run


def _compiled(layer: Layer, w: np.ndarray, x: np.ndarray, formats: dict):
    mod = _module(layer).eval()
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(w))
    cm = sparsecc.compile(mod, torch.from_numpy(x), recipe={"formats": formats})
    fmt = next(op.attrs.get("fmt") for op in cm.plan.ops if op.kind in ("linear", "conv2d"))
    return (lambda: cm(x)), fmt


def _engines(layer: Layer, w: np.ndarray, wb: np.ndarray, x: np.ndarray, threads: int):
    out_shape = F.linear(torch.from_numpy(x[:1]), torch.from_numpy(w)).shape if \
        layer.kind == "linear" else F.conv2d(torch.from_numpy(x[:1]), torch.from_numpy(w),
                                             stride=layer.stride, padding=layer.pad).shape
    y = aligned_empty((x.shape[0], *out_shape[1:]))
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    fns, refs = {}, {}
    if layer.kind == "linear":
        fns["torch dense"] = lambda: F.linear(xt, wt)
        w_csr_t = wt.to_sparse_csr()
        fns["torch CSR"] = lambda: (w_csr_t @ xt.T).T
        w_sp = sp.csr_matrix(w)
        fns["scipy CSR"] = lambda: (w_sp @ x.T).T
    else:
        fns["torch dense"] = lambda: F.conv2d(xt, wt, stride=layer.stride, padding=layer.pad)
        if layer.k == 1 and layer.stride == 1:
            w2 = w.reshape(w.shape[0], -1)
            w_csr_t = torch.from_numpy(w2).to_sparse_csr()
            x3 = xt.reshape(x.shape[0], layer.cin, -1)
            fns["torch CSR"] = lambda: torch.stack([w_csr_t @ x3[i] for i in range(x3.shape[0])])
            w_sp = sp.csr_matrix(w2)
            x3n = x.reshape(x.shape[0], layer.cin, -1)
            fns["scipy CSR"] = lambda: np.stack([w_sp @ x3n[i] for i in range(x3n.shape[0])])
    ys = {}
    for name, fmt, weight, backend in (("numpy/OpenBLAS dense", "dense", w, "llvm"),
                                       ("sparsecc numba CSR", "csr", w, "numba"),
                                       ("sparsecc llvm CSR", "csr", w, "llvm"),
                                       ("sparsecc llvm BSR4x1", "bsr4x1", wb, "llvm")):
        ys[name] = aligned_empty(y.shape)
        fns[name] = _blas1(_bound(layer, weight, fmt, x, ys[name], backend), fmt != "dense")
        refs[name] = weight
    fns["sparsecc dense (compiled)"], _ = _compiled(layer, w, x, {"force": "dense"})
    fns["sparsecc auto (compiled)"], auto_fmt = _compiled(layer, w, x, {"autotune": True})
    refs.update({"sparsecc dense (compiled)": w, "sparsecc auto (compiled)": w})
    return fns, ys, refs, auto_fmt


def _check(name, got, layer, x, weight) -> float:
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(weight)) if layer.kind == "linear" \
        else F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), stride=layer.stride,
                      padding=layer.pad)
    ref = ref.numpy()
    g = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.max(np.abs(g.reshape(ref.shape) - ref)) / (np.max(np.abs(ref)) + 1e-12))


def time_blocks(fns: dict, repeats: int, rounds: int = 3) -> dict:
    """Each engine in warm blocks of consecutive calls (a kernel benchmark: its weights stay in
    cache, as between calls of one layer), the blocks of all engines alternating over
    ``rounds`` so machine drift hits every engine alike. Median and p10/p90 over all calls."""
    per = max(1, -(-repeats // rounds))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            fn()
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.005)  # let the engine's worker threads stop spinning
    return {k: summarize(v) for k, v in samples.items()}


def dram_bandwidth() -> float:
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t0)
    return 2 * a.nbytes / min(times)


def run_cell(layer: Layer, sparsity: float, batch: int, threads: int, repeats: int,
             bw: float) -> list[dict]:
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((layer.cout, layer.cin, layer.k, layer.k)) *
          np.sqrt(2 / (layer.cin * layer.k ** 2))).astype(np.float32)
    if layer.kind == "linear":
        w0 = w0.reshape(layer.cout, layer.cin)
    w, wb = _prune(w0, sparsity), _prune(w0, sparsity, block=4)
    x = _input(layer, batch, rng)
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    with threadpool_limits(threads):
        fns, ys, refs, auto_fmt = _engines(layer, w, wb, x, threads)
        for name, fn in fns.items():
            out = fn()
            refs[name] = _check(name, ys.get(name, out) if out is None else out, layer, x,
                                refs.get(name, w))
        timings = time_blocks(fns, repeats)
    base = timings["torch dense"].median_ms
    nnz = int(np.count_nonzero(w))
    L = batch if layer.kind == "linear" else batch * (layer.hw // layer.stride) ** 2
    idx_bytes = 2 if w.reshape(w.shape[0], -1).shape[1] <= 65536 else 4
    moved = nnz * (4 + idx_bytes) + (layer.cout + 1) * 8 + 4 * x.size + 4 * layer.cout * L
    rows = []
    for name, t in timings.items():
        row = {"layer": layer.name, "sparsity": sparsity, "batch": batch, "threads": threads,
               "engine": name, "median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms,
               "runs": t.runs, "speedup_vs_torch_dense": base / t.median_ms,
               "max_rel_err": refs[name]}
        if name == "sparsecc llvm CSR":
            sec = t.median_ms / 1e3
            row.update(gbps=moved / sec / 1e9, gflops=2 * nnz * L / sec / 1e9,
                       dram_roofline_ms=moved / bw * 1e3,
                       roofline_fraction=(moved / bw) / sec)
        if name == "sparsecc auto (compiled)":
            row["auto_format"] = auto_fmt
            row["vs_compiled_dense"] = (timings["sparsecc dense (compiled)"].median_ms /
                                        t.median_ms)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    cells = {}
    for r in rows:
        cells.setdefault((r["layer"], r["sparsity"], r["batch"], r["threads"]), {})[
            r["engine"]] = r
    short = {e: e.replace("sparsecc ", "").replace(" (compiled)", "*") for e in engines}
    head = ("| layer | sp | batch | thr | " + " | ".join(short[e] for e in engines) +
            " | llvm CSR GB/s | roof % | auto fmt |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (layer, s, b, th), by in cells.items():
        vals = []
        for e in engines:
            r = by.get(e)
            vals.append("-" if r is None else
                        f"{r['median_ms']:.3f} ({r['speedup_vs_torch_dense']:.2f}x)")
        c = by.get("sparsecc llvm CSR", {})
        a = by.get("sparsecc auto (compiled)", {})
        lines.append(f"| {layer} | {s} | {b} | {th} | " + " | ".join(vals) +
                     f" | {c.get('gbps', 0):.1f} | {100 * c.get('roofline_fraction', 0):.0f} | "
                     f"{a.get('auto_format', '-')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["batch"] == 1 and r["threads"] == max(x["threads"] for x in rows)]
    layers = list(dict.fromkeys(r["layer"] for r in sel))
    if not layers:
        return
    cols = 4
    nrows = -(-len(layers) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        for eng in dict.fromkeys(r["engine"] for r in sel):
            pts = sorted((r["sparsity"], r["speedup_vs_torch_dense"]) for r in sel
                         if r["layer"] == layer and r["engine"] == eng)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=eng)
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup vs torch dense")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("batch 1: speedup over torch dense (same process, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


GEMM_SHAPES = [  # (label, M, N, K): C[M x N] = A[M x K] B[K x N]
    ("linear b1 1024x1024", 1, 1024, 1024),
    ("linear b16 1024x1024", 16, 1024, 1024),
    ("linear b64 1024x4096", 64, 4096, 1024),
    ("minilm ffn 128x1536x384", 128, 1536, 384),
    ("conv 1x1 64<-256 @56x56", 64, 3136, 256),
    ("conv 3x3 64<-64 @56x56 (im2col K)", 64, 3136, 576),
]


def gemm_table(threads: int, repeats: int) -> list[dict]:
    """The native GEMM vs numpy/OpenBLAS vs torch at GEMM_SHAPES, ``threads`` threads each."""
    rows = []
    rng = np.random.default_rng(0)
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    for label, m, n, k in GEMM_SHAPES:
        # y = x W^T with W (n, k): a Linear layer, so the library runs its GEMM alone
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        lin = torch.nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        cm = sparsecc.compile(lin, torch.from_numpy(x[:1]))
        assert cm.native is not None, cm.native_status
        out = [np.empty((m, n), np.float32)]
        wt = np.ascontiguousarray(w.T)
        xt = torch.from_numpy(x)
        y_np = np.empty((m, n), np.float32)
        fns = {
            "sparsecc native GEMM": lambda: cm.native.run([x], out),
            "numpy/OpenBLAS": lambda: np.matmul(x, wt, out=y_np),
            "torch": lambda: F.linear(xt, lin.weight),
        }
        with threadpool_limits(threads):
            t = time_blocks(fns, repeats)
        err = float(np.abs(out[0] - x @ wt).max() / (np.abs(x @ wt).max() + 1e-9))
        flops = 2.0 * m * n * k
        for name, tm in t.items():
            g = flops / (tm.median_ms * 1e-3) / 1e9
            rows.append({"shape": label, "engine": name, "threads": threads,
                         "median_ms": round(tm.median_ms, 4), "p10_ms": round(tm.p10_ms, 4),
                         "p90_ms": round(tm.p90_ms, 4), "gflops": round(g, 1),
                         "pct_peak": round(100 * g / (PEAK_GFLOPS * min(threads, 2) / 2), 1),
                         "max_rel_err": err})
    return rows


def gemm_markdown(rows: list[dict]) -> str:
    lines = ["| shape | threads | engine | median ms [p10-p90] | GFLOP/s | % of peak |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['threads']} | {r['engine']} | {r['median_ms']:.3f} "
                     f"[{r['p10_ms']:.3f}-{r['p90_ms']:.3f}] | {r['gflops']} | "
                     f"{r['pct_peak']} |")
    return "\n".join(lines)


CONV_SHAPES = [  # (label, cin, cout, kernel, stride, input size): ResNet / MobileNetV2 layers
    ("resnet50 1x1 64->256 @56", 64, 256, 1, 1, 56),
    ("resnet50 1x1 256->64 @56", 256, 64, 1, 1, 56),
    ("resnet50 1x1 512->128 @28", 512, 128, 1, 1, 28),
    ("resnet50 1x1 256->1024 @14", 256, 1024, 1, 1, 14),
    ("resnet50 1x1 s2 256->512 @56", 256, 512, 1, 2, 56),
    ("resnet 3x3 64->64 @56", 64, 64, 3, 1, 56),
    ("resnet 3x3 128->128 @28", 128, 128, 3, 1, 28),
    ("resnet 3x3 256->256 @14", 256, 256, 3, 1, 14),
    ("resnet 3x3 512->512 @7", 512, 512, 3, 1, 7),
    ("resnet 3x3 s2 128->128 @56", 128, 128, 3, 2, 56),
    ("mobilenet 1x1 32->192 @56", 32, 192, 1, 1, 56),
    ("mobilenet 1x1 192->32 @28", 192, 32, 1, 1, 28),
    ("mobilenet 1x1 576->96 @14", 576, 96, 1, 1, 14),
]


def conv_table(sparsity: float, batches: list[int], repeats: int) -> list[dict]:
    """Each conv alone through the native library (2 threads), timed by the library's cycle
    counters (the conv's own calls: phase planes, kernel, crop), in GFLOP/s of the sparse
    FLOPs (2 x nonzeros x output pixels) and % of the FMA peak."""
    rows = []
    for label, cin, cout, k, stride, hw in CONV_SHAPES:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                                    torch.nn.AdaptiveAvgPool2d(1)).eval()
        model = sparsecc.prune(model, sparsity, scope="layer")
        nnz = int(torch.count_nonzero(model[0].weight))
        ho = (hw + 2 * (k // 2) - k) // stride + 1
        for batch in batches:
            x = torch.randn(batch, cin, hw, hw)
            cm = sparsecc.compile(model, x)  # the report measures at the compile batch
            assert cm.native is not None, cm.native_status
            with torch.no_grad():
                ref = model(x).numpy()
            err = float(np.abs(cm(x.numpy()) - ref).max() / (np.abs(ref).max() + 1e-9))
            us = sorted(cm.report(repeats=repeats).rows[0]["measured_us"]
                        for _ in range(3))[1]
            g = 2.0 * nnz * ho * ho * batch / (us * 1e-6) / 1e9
            rows.append({"layer": label, "batch": batch, "sparsity": sparsity,
                         "kernel": cm.report(measure=False).rows[0]["kernel"],
                         "median_us": round(us, 1), "gflops": round(g, 1),
                         "pct_peak": round(100 * g / PEAK_GFLOPS, 1), "max_rel_err": err})
            print(rows[-1])
    return rows


def conv_markdown(rows: list[dict]) -> str:
    lines = ["| layer | batch | kernel | us (median of 3 reports) | GFLOP/s | % of peak |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['batch']} | {r['kernel']} | {r['median_us']} | "
                     f"{r['gflops']} | {r['pct_peak']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gemm", action="store_true", help="the dense GEMM table only")
    ap.add_argument("--convs", action="store_true",
                    help="ResNet/MobileNet convs through the native library, GFLOP/s")
    ap.add_argument("--layers", default="", help="comma-separated substrings of layer names")
    ap.add_argument("--sparsity", default="")
    ap.add_argument("--batch", default="")
    ap.add_argument("--threads", default="")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--out", default="results/kernels")
    a = ap.parse_args(argv)
    layers = [lay for lay in LAYERS if lay.name in QUICK_LAYERS] if a.quick else LAYERS
    if a.layers:
        layers = [lay for lay in LAYERS if any(s in lay.name for s in a.layers.split(","))]
    sparsities = [float(s) for s in a.sparsity.split(",")] if a.sparsity else (
        [0.9] if a.quick else [0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    batches = [int(b) for b in a.batch.split(",")] if a.batch else ([1, 64] if a.quick
                                                                     else [1, 16, 64])
    threads = [int(t) for t in a.threads.split(",")] if a.threads else ([2] if a.quick
                                                                       else [1, 2])
    repeats = a.repeats or (30 if a.quick else 20)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = machine_info()
    bw = dram_bandwidth()
    info["dram_gbps_numpy_copy"] = round(bw / 1e9, 1)
    print(json.dumps(info))
    if a.convs:
        rows = conv_table(float(a.sparsity or 0.9), [int(b) for b in (a.batch or "1,16")
                                                    .split(",")], a.repeats or 10)
        md = conv_markdown(rows)
        (out / f"{stamp}-convs.md").write_text(
            f"# native convs {info['date']}\n\n{json.dumps(info)}\n\n"
            f"% of peak: of {PEAK_GFLOPS:.0f} GFLOP/s (2 threads).\n\n" + md + "\n")
        with (out / f"{stamp}-convs.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(md)
        return
    if a.gemm:
        rows = []
        for th in threads if a.threads else [1, 2]:
            rows += gemm_table(th, repeats)
        md = gemm_markdown(rows)
        (out / f"{stamp}-gemm.md").write_text(
            f"# dense GEMM {info['date']}\n\n{json.dumps(info)}\n\n"
            f"% of peak: of {PEAK_GFLOPS:.0f} GFLOP/s for 2 threads, half that for 1.\n\n"
            + md + "\n")
        with (out / f"{stamp}-gemm.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(md)
        return
    rows: list[dict] = []
    jpath = out / f"{stamp}.jsonl"
    t0 = time.perf_counter()
    with jpath.open("w") as f:
        f.write(json.dumps({"machine": info}) + "\n")
        for layer in layers:
            for b in batches:
                # convs at batch 64 take minutes per cell on 2 cores: linear layers only
                if layer.kind == "conv" and b > 16:
                    continue
                for th in threads:
                    for s in sparsities:
                        cell = run_cell(layer, s, b, th, repeats, bw)
                        rows += cell
                        for r in cell:
                            f.write(json.dumps(r) + "\n")
                        f.flush()
                        best = {r["engine"]: r["speedup_vs_torch_dense"] for r in cell}
                        print(f"[{time.perf_counter() - t0:6.0f}s] {layer.name} s={s} b={b} "
                              f"t={th}: llvm CSR {best['sparsecc llvm CSR']:.2f}x, "
                              f"auto {best['sparsecc auto (compiled)']:.2f}x", flush=True)
    md = markdown(rows)
    (out / f"{stamp}.md").write_text(
        f"# kernel sweep {info['date']}\n\n{json.dumps(info)}\n\n"
        "Cells: median ms (speedup over torch dense); * = whole compiled-model call.\n\n"
        + md + "\n")
    plot(rows, out / f"{stamp}-speedup_vs_sparsity.png")
    print(md)
    print(f"wrote {jpath}, .md, -speedup_vs_sparsity.png in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
