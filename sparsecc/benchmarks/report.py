"""Tables and plots from the suite's JSON lines."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sparsecc.benchmarks.suite import ENGINES, peak


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if "median_ms" not in row:
        return "skip"
    speed = row.get("speedup_vs_torch")
    return f"{row['median_ms']:.2f}" + (f" ({speed:.2f}x)" if speed and row["engine"] != "torch"
                                        else "")


def _by_cell(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """{(model, sparsity, batch, threads): {engine: row}}, in the rows' order."""
    cells = defaultdict(dict)
    for r in rows:
        cells[(r["model"], r["sparsity"], r["batch"], r["threads"])][r["engine"]] = r
    return cells


def markdown(rows: list[dict], engines: list[str] | None = None) -> str:
    present = [e for e in (engines or ENGINES) if any(r["engine"] == e for r in rows)]
    cells = _by_cell(rows)
    head = ("| model | sparsity | batch | threads | " + " | ".join(present)
            + " | sparsecc max rel err |")
    lines = ["median ms (x faster than torch eager), same process and weights", "", head,
             "|" + "---|" * (len(present) + 5)]
    for (m, s, b, t), by in cells.items():
        err = by.get("sparsecc", {}).get("max_rel_err")
        lines.append(f"| {m} | {s:.0%} | {b} | {t} | "
                     + " | ".join(_cell(by.get(e)) for e in present)
                     + f" | {'' if err is None else f'{err:.1e}'}"
                     + (" **wrong**" if by.get("sparsecc", {}).get("wrong") else "") + " |")
    notes = sorted({f"{r['engine']}: {r['skipped']}" for r in rows if "skipped" in r})
    if notes:
        lines += ["", "Skipped cells:"] + [f"- {n}" for n in notes[:20]]
    return "\n".join(lines)


def versus(rows: list[dict], sparsity: float = 0.9, base: str = "sparsecc") -> str:
    """``base`` (sparsecc, or sparsecc-int8) against each other engine at ``sparsity``, per
    model, batch and threads: the engine's median over base's (> 1: base is faster). The last
    two columns compare with the unpruned model: ONNX Runtime at 0 %, and the fastest engine
    of all at 0 %."""
    cells = _by_cell([r for r in rows if "median_ms" in r])
    peers = [e for e in ENGINES if e != base
             and any(e in by for (_, s, _, _), by in cells.items() if s == sparsity)]
    head = (f"| model | batch | threads | {base} ms | GFLOP/s (% of peak) | "
            + " | ".join(f"vs {e}" for e in peers)
            + " | vs onnxruntime at 0 % | vs fastest at 0 % |")
    unit = "GOP/s (int8 multiply-adds x 2)" if base.endswith("int8") else "GFLOP/s"
    lines = [f"{base} at {sparsity:.0%} sparsity: each engine's median / {base}'s "
             f"(> 1: {base} faster); its {unit} count the operations its plan does "
             f"(sparse layers: 2 x nonzeros x positions), peak {peak():.0f} GFLOP/s "
             "(this machine's cores running an FMA loop at once, measured)", "",
             head,
             "|" + "---|" * (len(peers) + 7)]
    rtts = []
    for (m, s, b, t), by in sorted(cells.items()):
        if s != sparsity or base not in by:
            continue
        ms = by[base]["median_ms"]
        zero = cells.get((m, 0.0, b, t), {})

        def ratio(row):
            return "—" if row is None else f"{row['median_ms'] / ms:.2f}x"

        fastest = min(zero.values(), key=lambda r: r["median_ms"], default=None)
        g = by[base].get("gflops")
        gf = "—" if g is None else f"{g:.1f} ({by[base]['pct_peak']:.0f} %)"
        lines.append(f"| {m} | {b} | {t} | {ms:.2f} | {gf} | "
                     + " | ".join(ratio(by.get(e)) for e in peers)
                     + f" | {ratio(zero.get('onnxruntime'))} | {ratio(fastest)}"
                     + (f" ({fastest['engine']})" if fastest else "") + " |")
        if "core_rtt_ns" in by[base]:
            rtts.append(f"{m} b{b}: {'/'.join(str(v) for v in by[base]['core_rtt_ns'])}")
    if rtts:
        lines += ["", "Core-to-core round trip before/after each cell, ns (~30: the host "
                  "put both vCPUs on one core's two hyperthreads; 60-90: two cores sharing "
                  "an L3; 350-390: cores apart, where work split layer by layer over 2 "
                  "threads runs about as fast as on 1): " + ", ".join(rtts)]
    return "\n".join(lines)


def plots(rows: list[dict], out: Path, threads: int | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    threads = threads or max(r["threads"] for r in rows)
    paths = []
    for model in sorted({r["model"] for r in rows}):
        sel = [r for r in rows if r["model"] == model and r["threads"] == threads
               and r["batch"] == min(x["batch"] for x in rows) and "median_ms" in r]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for engine in ENGINES:
            pts = sorted((r["sparsity"], r["median_ms"]) for r in sel if r["engine"] == engine)
            if pts:
                ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=engine)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("latency, median ms")
        ax.set_title(f"{model}: batch {sel[0]['batch']}, {threads} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"latency_{model}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    bars = [r for r in rows if r["sparsity"] == 0.9 and r["threads"] == threads
            and "speedup_vs_torch" in r and r["engine"] != "torch"]
    if bars:
        groups = sorted({(r["model"], r["batch"]) for r in bars})
        fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * len(groups)), 4.5))
        engines = [e for e in ENGINES if e != "torch" and any(r["engine"] == e for r in bars)]
        width = 0.8 / max(len(engines), 1)
        for i, engine in enumerate(engines):
            vals = [next((r["speedup_vs_torch"] for r in bars if (r["model"], r["batch"]) == g
                          and r["engine"] == engine), 0.0) for g in groups]
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=engine)
        ax.axhline(1.0, color="k", linewidth=1)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{m}\nb{b}" for m, b in groups], fontsize=8, rotation=35,
                           ha="right")  # model names like mobilenet_v2 overlap otherwise
        ax.set_ylabel("speedup over torch eager")
        ax.set_title(f"90 % sparsity, {threads} thread(s)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "speedup_90.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
