"""matmul / bmm and scaled_dot_product_attention."""

from __future__ import annotations

import math

import numpy as np

from sparsecc.codegen.numba import attention as AT
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
    fused = _fused_sdpa(q, k, v, mask, out, scale, bool(ctx.attr("is_causal")))
    if fused is not None:
        return fused
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
        # rows with every key masked give 0, as torch's SDPA does (softmax alone gives NaN)
        dead = np.all(scores == -np.inf, axis=-1, keepdims=True)
        N.softmax_rows(rows, rows, False)
        np.matmul(scores, v, out=out)
        np.copyto(out, np.float32(0.0), where=dead)

    return run


def _as4(a: np.ndarray) -> np.ndarray | None:
    """A 4-D view of a (..., rows, cols) array with at most two leading dims, else None."""
    if a.ndim > 4 or a.ndim < 2:
        return None
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _fused_sdpa(q, k, v, mask, out, scale: float, causal: bool):
    """The one-pass numba attention for float32 q/k/v/out with at most two leading dims (and
    the same ones), else None (the numpy path). Views only: the closure reads the plan's
    buffers as they are at each call."""
    arrays = [_as4(a) for a in (q, k, v, out)]
    if any(a is None or a.dtype != np.float32 for a in arrays):
        return None
    q4, k4, v4, o4 = arrays
    if not (q4.shape[:2] == k4.shape[:2] == v4.shape[:2] == o4.shape[:2]):
        return None
    shape = q4.shape[:3] + (k4.shape[2],)
    if mask is None:
        m4, kind = np.zeros((1, 1, 1, 1), np.float32), AT.MASK_NONE
    elif mask.dtype == np.bool_:
        m4, kind = mask, AT.MASK_KEEP
    elif mask.dtype == np.float32:
        m4, kind = mask, AT.MASK_ADD
    else:
        return None
    try:
        m4 = np.broadcast_to(m4, shape)
    except ValueError:
        return None
    return lambda: AT.sdpa4(q4, k4, v4, m4, kind, causal, scale, o4)
