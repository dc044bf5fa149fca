"""Pointwise ops: activations (numba), binary arithmetic with broadcasting, unary math, casts."""

from __future__ import annotations

import numpy as np

from sparsecc.codegen.numba import activations as A
from sparsecc.runtime.ops.registry import BindCtx, elementwise_flops, register_op

BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "floordiv": np.floor_divide, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "and": np.logical_and, "or": np.logical_or,
}


def _rsqrt(x, out):
    np.sqrt(x, out=out)
    np.reciprocal(out, out=out)


UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "neg": np.negative, "abs": np.abs,
    "reciprocal": np.reciprocal, "rsqrt": _rsqrt, "not": np.logical_not, "sin": np.sin,
    "cos": np.cos,
}


@register_op("act", flops=elementwise_flops)
def bind_act(ctx: BindCtx):
    x, out = ctx.ins[0].reshape(-1), ctx.out.reshape(-1)
    code = A.act_code(ctx.attr("act"))
    a, b = float(ctx.attr("act_a", 0.0)), float(ctx.attr("act_b", 0.0))
    return lambda: A.act_flat(x, out, code, a, b)


@register_op("binary", flops=elementwise_flops)
def bind_binary(ctx: BindCtx):
    """numpy's ufunc with broadcasting; same-shape float32 add/sub/mul (a residual add) run as
    one numba pass over both cores, with the activation the fuse pass folded in (attr act)."""
    fn = BINARY[ctx.attr("fn")]
    out = ctx.out
    if len(ctx.ins) == 2:
        lhs, rhs = ctx.ins
    else:
        scalar = ctx.attr("scalar")
        lhs, rhs = (scalar, ctx.ins[0]) if ctx.attr("scalar_first") else (ctx.ins[0], scalar)
    act = ctx.attr("act", "none")
    code, a, b = A.act_code(act), float(ctx.attr("act_a", 0.0)), float(ctx.attr("act_b", 0.0))
    fused = A.BINARY_CODES.get(ctx.attr("fn"))
    if fused is not None and _same_f32(out, lhs, rhs):
        x, y, o = lhs.reshape(-1), rhs.reshape(-1), out.reshape(-1)
        return lambda: A.binary_act(x, y, o, fused, code, a, b)
    if act == "none":
        # The plan carries torch's result dtype; numpy's promotion may differ for mixed int/float.
        return lambda: fn(lhs, rhs, out=out, casting="unsafe")
    flat = out.reshape(-1)

    def run():
        fn(lhs, rhs, out=out, casting="unsafe")
        A.act_flat(flat, flat, code, a, b)

    return run


def _same_f32(out, *ins) -> bool:
    return all(isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape == out.shape
               and t.flags.c_contiguous for t in (out, *ins))


@register_op("unary", flops=elementwise_flops)
def bind_unary(ctx: BindCtx):
    fn = UNARY[ctx.attr("fn")]
    x, out = ctx.ins[0], ctx.out
    if ctx.attr("fn") == "rsqrt":
        return lambda: fn(x, out)
    return lambda: fn(x, out=out, casting="unsafe")


@register_op("cast", flops=elementwise_flops)
def bind_cast(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    return lambda: np.copyto(out, x, casting="unsafe")


@register_op("where", flops=elementwise_flops)
def bind_where(ctx: BindCtx):
    """out = cond ? a : b; a scalar branch comes from attrs ``a``/``b`` when it is not a tensor."""
    ins = list(ctx.ins)
    cond = ins.pop(0)
    a = ins.pop(0) if ctx.attr("a") is None else ctx.attr("a")
    b = ins.pop(0) if ctx.attr("b") is None else ctx.attr("b")
    out = ctx.out
    return lambda: np.copyto(out, np.where(cond, a, b), casting="unsafe")


@register_op("affine", flops=lambda op, ins, out, p: 2.0 * float(np.prod(out)))
def bind_affine(ctx: BindCtx):
    """Per-channel scale and shift on axis 1 (a BatchNorm that had no conv to fold into)."""
    x, out = ctx.ins[0], ctx.out
    extra = (1,) * (x.ndim - 2)
    scale = ctx.params["scale"].reshape((-1,) + extra)
    shift = ctx.params["shift"].reshape((-1,) + extra)

    def run():
        np.multiply(x, scale, out=out)
        np.add(out, shift, out=out)

    return run
