"""Reductions and normalisations: softmax, layer_norm, mean/sum/amax/amin."""

from __future__ import annotations

import numpy as np

from sparsecc.codegen.numba import norm as N
from sparsecc.ir.plan import Op
from sparsecc.runtime.ops.registry import BindCtx, Shape, register_op


def _softmax_scratch(op: Op, ins: list[Shape], out: Shape) -> list[tuple[Shape, str]]:
    axis = int(op.attrs["axis"]) % len(out)
    if axis == len(out) - 1:
        return []
    moved = tuple(d for i, d in enumerate(out) if i != axis) + (out[axis],)
    return [(moved, "float32"), (moved, "float32")]


@register_op("softmax", scratch=_softmax_scratch, flops=lambda op, i, o, p: 4.0 * np.prod(o))
def bind_softmax(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    axis = int(ctx.attr("axis")) % x.ndim
    log = bool(ctx.attr("log", False))
    d = x.shape[axis]
    if axis == x.ndim - 1:
        x2, o2 = x.reshape(-1, d), out.reshape(-1, d)
        return lambda: N.softmax_rows(x2, o2, log)
    src, dst = ctx.scratch
    src_view = np.moveaxis(x, axis, -1)
    out_view = np.moveaxis(out, axis, -1)
    s2, d2 = src.reshape(-1, d), dst.reshape(-1, d)

    def run():
        np.copyto(src, src_view)
        N.softmax_rows(s2, d2, log)
        np.copyto(out_view, dst)

    return run


@register_op("layer_norm", flops=lambda op, i, o, p: 5.0 * np.prod(o))
def bind_layer_norm(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    d = int(np.prod(x.shape[x.ndim - int(ctx.attr("ndims")):]))
    x2, o2 = x.reshape(-1, d), out.reshape(-1, d)
    w = ctx.params.get("weight")
    b = ctx.params.get("bias")
    empty = np.zeros(1, np.float32)
    wv = empty if w is None else w.reshape(-1)
    bv = empty if b is None else b.reshape(-1)
    eps = float(ctx.attr("eps"))
    has_w, has_b = w is not None, b is not None
    return lambda: N.layer_norm_rows(x2, wv, bv, has_w, has_b, eps, o2)


REDUCERS = {"mean": np.mean, "sum": np.sum, "amax": np.amax, "amin": np.amin}


@register_op("reduce", flops=lambda op, ins, out, p: float(np.prod(ins[0])))
def bind_reduce(ctx: BindCtx):
    fn = REDUCERS[ctx.attr("fn")]
    x, out = ctx.ins[0], ctx.out
    axes = tuple(int(a) for a in ctx.attr("axes"))
    keep = bool(ctx.attr("keepdim"))
    return lambda: fn(x, axis=axes, keepdims=keep, out=out)
