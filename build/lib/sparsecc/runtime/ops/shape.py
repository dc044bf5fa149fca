"""Data movement: reshape (zero-copy alias), copy, permute, slicing, concat, stack, expand."""

from __future__ import annotations

import numpy as np

from sparsecc.runtime.ops.registry import BindCtx, register_op

_ZERO = lambda op, ins, out, p: 0.0  # noqa: E731


@register_op("reshape", flops=_ZERO)
def bind_reshape(ctx: BindCtx):
    """The executor makes the output a view of the input's storage; nothing runs."""
    return None


@register_op("copy", flops=_ZERO)
def bind_copy(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    return lambda: np.copyto(out, x.reshape(out.shape))


@register_op("permute", flops=_ZERO)
def bind_permute(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    view = x.transpose([int(p) for p in ctx.attr("perm")])
    return lambda: np.copyto(out, view)


def index_from_attr(items: list) -> tuple:
    """Rebuild a basic-indexing key from its JSON form (no eval: a fixed vocabulary)."""
    key = []
    for it in items:
        tag = it[0]
        if tag == "slice":
            key.append(slice(*(None if v is None else int(v) for v in it[1:4])))
        elif tag == "int":
            key.append(int(it[1]))
        elif tag == "none":
            key.append(None)
        elif tag == "ellipsis":
            key.append(Ellipsis)
        else:
            raise ValueError(f"bad index item {it!r}")
    return tuple(key)


@register_op("slice", flops=_ZERO)
def bind_slice(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    view = x[index_from_attr(ctx.attr("index"))]
    return lambda: np.copyto(out, view.reshape(out.shape))


@register_op("cat", flops=_ZERO)
def bind_cat(ctx: BindCtx):
    ins, out, axis = ctx.ins, ctx.out, int(ctx.attr("axis"))
    return lambda: np.concatenate(ins, axis=axis, out=out)


@register_op("stack", flops=_ZERO)
def bind_stack(ctx: BindCtx):
    ins, out, axis = ctx.ins, ctx.out, int(ctx.attr("axis"))
    return lambda: np.stack(ins, axis=axis, out=out)


@register_op("expand", flops=_ZERO)
def bind_expand(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    view = np.broadcast_to(x, out.shape)
    return lambda: np.copyto(out, view)
