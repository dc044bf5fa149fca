"""Layer by layer against DeepSparse: where a model's time goes in each engine.

DeepSparse's own per-layer profile (``deepsparse.debug_analysis``, run by its venv's python)
names each of its ops by the ONNX tensors it writes; an export of a torch model names those by
module scope (``/layer2/layer2.0/downsample/downsample.0/Conv_output_0``). ``module_of`` turns
that back into the module path (``layer2.0.downsample.0``), the name sparsecc's report rows
carry, so the two profiles join: each of DeepSparse's ops (a fused "pyramid" covers several
convs) against the sum of sparsecc's ops for the same modules, and the ops that follow a conv in
sparsecc's plan (its activation, a residual add, a crop) go with that conv, as DeepSparse fuses
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TIME = re.compile(r"^Total Time\(MS\):\s*([0-9.]+)")


@dataclass
class PeerOp:
    name: str  # DeepSparse's op name (pyramid_3, ks_convolution-90.0%_7, ...)
    ms: float
    modules: list[str]  # the torch modules whose outputs it writes, in order
    ours_ms: float = 0.0
    mflops: float = 0.0  # sparse MFLOP of sparsecc's ops joined to it
    ours: list[str] = field(default_factory=list)


def module_of(tensor: str) -> str | None:
    """ONNX export's scoped tensor name -> the torch module path; None when it has no scope.
    A scope that extends the one before it (``layer1`` then ``layer1.0``) replaces it; any
    other is a child (``conv1`` under ``layer1.0``)."""
    parts = [p for p in tensor.strip().split("/") if p]
    if len(parts) < 2:
        return None
    name, prev = "", ""
    for s in parts[:-1]:
        if prev and s.startswith(prev + "."):
            name += s[len(prev):]
        else:
            name = f"{name}.{s}" if name else s
        prev = s
    return name


def parse_analysis(text: str) -> tuple[list[PeerOp], float | None]:
    """DeepSparse's per-layer table (``deepsparse.debug_analysis`` stdout) -> its ops and its
    total time in ms. Rows are ``Name | OutDims | KerDims | Strides | ActSpars | Time(ms) |
    Util(%) | TFLOPS | Canonical Name``; rows without a module (its graph's input / output
    shuffles, "Naive Subgraph") are kept under their own name."""
    ops, total = [], None
    for line in text.splitlines():
        m = _TIME.match(line.strip())
        if m:
            total = float(m.group(1))
            continue
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 9 or cells[0] in ("Name", ""):
            continue
        try:
            ms = float(cells[5])
        except ValueError:
            continue
        mods = [m for m in (module_of(t) for t in cells[8].split(",")) if m]
        ops.append(PeerOp(cells[0], ms, mods))
    return ops, total


def join(peer: list[PeerOp], rows: list[dict]) -> list[PeerOp]:
    """Add sparsecc's report rows (``name``, ``op``, ``measured_us``, ``mflops``, plan order)
    to the peer op that writes the same module. A linear layer no op names (DeepSparse's
    classifier GEMM writes a bare tensor number) joins the next ``gemm`` op without modules.
    Any other row (an activation, an add, a pool DeepSparse fused) joins the op of the row
    before it; rows before any match join an op named "(before)", returned after the peer's
    ops when used."""
    owner = {m: op for op in peer for m in op.modules}
    gemms = [op for op in peer if not op.modules and op.name.startswith("gemm")]
    before = PeerOp("(before)", 0.0, [])
    cur = None
    for r in rows:
        op = owner.get(r["name"])
        if op is None and str(r.get("op", "")).startswith("linear") and gemms:
            op = owner[r["name"]] = gemms.pop(0)
        op = cur = op or cur or before
        op.ours_ms += (r.get("measured_us") or 0.0) / 1e3
        op.mflops += r.get("mflops") or 0.0
        op.ours.append(r["name"])
    return peer + ([before] if before.ours else [])


def table(ops: list[PeerOp], batch: int, peak_gflops: float) -> list[str]:
    """Markdown rows: each op with its modules, both times, the ratio and both rates (GFLOP/s
    of sparsecc's sparse FLOPs, % of ``peak_gflops``)."""

    def rate(mflop, ms):
        if ms <= 0 or mflop <= 0:
            return "-"
        return f"{mflop / ms:.0f} ({mflop / ms / peak_gflops:.0%})"

    out = ["| DeepSparse op | modules | MFLOP | DeepSparse ms | sparsecc ms | sparsecc / DS | "
           "DS GFLOP/s | sparsecc GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for op in ops:
        if op.ms < 0.005 and op.ours_ms < 0.005:
            continue
        mods = ", ".join(op.modules) if len(op.modules) <= 3 else \
            f"{op.modules[0]} .. {op.modules[-1]} ({len(op.modules)})"
        ratio = f"{op.ours_ms / op.ms:.2f}" if op.ms > 0 else "-"
        out.append(f"| {op.name} | {mods or '-'} | {op.mflops:.0f} | {op.ms:.3f} | "
                   f"{op.ours_ms:.3f} | {ratio} | {rate(op.mflops, op.ms)} | "
                   f"{rate(op.mflops, op.ours_ms)} |")
    ds, us = sum(o.ms for o in ops), sum(o.ours_ms for o in ops)
    out.append(f"| total (batch {batch}) | | {sum(o.mflops for o in ops):.0f} | {ds:.2f} | "
               f"{us:.2f} | {us / ds:.2f} | | |")
    return out


__all__ = ["PeerOp", "join", "module_of", "parse_analysis", "table"]
