"""matmul / bmm and scaled_dot_product_attention."""

from __future__ import annotations

import math

import numpy as np

from sparsecc.codegen.numba import norm as N
from sparsecc.ir.plan import Op
from sparsecc.runtime.ops.registry import BindCtx, Shape, numel, register_op


def _matmul_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return 2.0 * numel(out) * ins[0][-1]


@register_op("matmul", flops=_matmul_flops)
def bind_matmul(ctx: BindCtx):
    a, b = ctx.ins
    out = ctx.out
    return lambda: np.matmul(a, b, out=out)


def _scores_shape(ins: list[Shape], out: Shape) -> Shape:
    return tuple(out[:-1]) + (ins[1][-2],)


def _sdpa_scratch(op: Op, ins: list[Shape], out: Shape) -> list[tuple[Shape, str]]:
    return [(_scores_shape(ins, out), "float32")]


def _sdpa_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    s = ins[1][-2]
    return 2.0 * numel(out[:-1]) * s * (ins[0][-1] + out[-1])


@register_op("sdpa", scratch=_sdpa_scratch, flops=_sdpa_flops)
def bind_sdpa(ctx: BindCtx):
    """softmax(q @ k^T * scale + mask) @ v, with torch's boolean/additive mask and is_causal."""
    q, k, v = ctx.ins[:3]
    mask = ctx.ins[3] if len(ctx.ins) > 3 else None
    out = ctx.out
    (scores,) = ctx.scratch
    ql, sl = q.shape[-2], k.shape[-2]
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    kt = np.swapaxes(k, -1, -2)
    rows = scores.reshape(-1, sl)
    bias = None
    if ctx.attr("is_causal"):
        # torch aligns the causal mask to the top-left corner.
        bias = np.triu(np.full((ql, sl), -np.inf, np.float32), 1)

    def run():
        np.matmul(q, kt, out=scores)
        np.multiply(scores, np.float32(scale), out=scores)
        if bias is not None:
            np.add(scores, bias, out=scores)
        if mask is not None:
            if mask.dtype == np.bool_:
                np.copyto(scores, -np.inf, where=~np.broadcast_to(mask, scores.shape))
            else:
                np.add(scores, mask, out=scores)
        N.softmax_rows(rows, rows, False)
        np.matmul(scores, v, out=out)

    return run
