"""Weight-bearing ops (linear, conv2d) in dense and CSR form, pooling and embedding."""

from __future__ import annotations

import numpy as np

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import conv as C
from sparsecc.codegen.numba import pool as P
from sparsecc.codegen.numba import sparse as S
from sparsecc.errors import InputError
from sparsecc.ir.plan import Op
from sparsecc.runtime.ops import sparse as SP
from sparsecc.runtime.ops.registry import BindCtx, Shape, numel, register_op
from sparsecc.runtime.threads import split_matmul

_NO_BIAS = np.zeros(1, np.float32)


def epilogue(ctx: BindCtx) -> tuple[np.ndarray, bool, int, float, float]:
    """(bias, has_bias, act code, a, b) for a kernel with a fused bias + activation."""
    bias = ctx.params.get("bias")
    act = A.act_code(ctx.attr("act", "none"))
    a, b = float(ctx.attr("act_a", 0.0)), float(ctx.attr("act_b", 0.0))
    if bias is None:
        return _NO_BIAS, False, act, a, b
    return bias, True, act, a, b


def weight_nnz(params: dict[str, np.ndarray]) -> int:
    if "data" in params:
        return int(params["data"].shape[0])
    return numel(params["weight"].shape)


# ---- linear -------------------------------------------------------------------------------
def _linear_scratch(op: Op, ins: list[Shape], out: Shape) -> list[tuple[Shape, str]]:
    if SP.is_sparse(op.attrs.get("fmt")):
        return SP.linear_scratch(op, numel(out[:-1]), ins[0][-1], out[-1])
    return []


def _linear_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return 2.0 * numel(out[:-1]) * weight_nnz(params)


@register_op("linear", scratch=_linear_scratch, flops=_linear_flops)
def bind_linear(ctx: BindCtx):
    x = ctx.ins[0]
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    o2 = ctx.out.reshape(-1, ctx.out.shape[-1])
    bias, has_bias, code, a, b = epilogue(ctx)
    if SP.is_sparse(ctx.attr("fmt")):
        return SP.bind_linear(ctx, x2, o2, (bias, has_bias, code, a, b, ctx.attr("act", "none")))
    w = ctx.params["weight"]
    if x2.shape[0] == 1:
        return lambda: S.dense_gemv(w, x2, o2, bias, has_bias, code, a, b)
    if not has_bias and code == 0:
        return split_matmul(x2, w.T, o2)
    return split_matmul(x2, w.T, o2, lambda idx: A.bias_act_cols_serial(
        o2[idx], bias[idx[-1]] if has_bias else bias, has_bias, code, a, b))


# ---- conv2d -------------------------------------------------------------------------------
def _conv_geometry(op: Op):
    sh, sw = op.attrs["stride"]
    ph, pw = op.attrs["padding"]
    dh, dw = op.attrs["dilation"]
    kh, kw = op.attrs["kernel"]
    return int(kh), int(kw), int(sh), int(sw), int(ph), int(pw), int(dh), int(dw)


def _is_pointwise(op: Op) -> bool:
    kh, kw, sh, sw, ph, pw, _, _ = _conv_geometry(op)
    return (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)


def _is_depthwise(op: Op, cin: int) -> bool:
    return int(op.attrs["groups"]) == cin and cin > 1 and op.attrs.get("fmt") == "dense"


def _conv_scratch(op: Op, ins: list[Shape], out: Shape) -> list[tuple[Shape, str]]:
    n, cin = ins[0][0], ins[0][1]
    groups = int(op.attrs["groups"])
    kh, kw = op.attrs["kernel"]
    howo = out[2] * out[3]
    if _is_depthwise(op, cin) or (groups == 1 and _is_pointwise(op)):
        return []
    if SP.is_sparse(op.attrs.get("fmt")):
        own = SP.conv_scratch(op, ins[0], out, SP.conv_method(op, ins[0], out))
        if own is not None:
            return own
    krows = (cin // groups) * kh * kw
    need = [((n, krows, howo), "float32")]
    if groups > 1:
        need.append(((n, out[1] // groups, howo), "float32"))
    return need


def _conv_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return 2.0 * out[0] * out[2] * out[3] * weight_nnz(params)


@register_op("conv2d", scratch=_conv_scratch, flops=_conv_flops)
def bind_conv2d(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    n, cin = x.shape[0], x.shape[1]
    cout, wo = out.shape[1], out.shape[3]
    kh, kw, sh, sw, ph, pw, dh, dw = _conv_geometry(ctx.op)
    groups = int(ctx.attr("groups"))
    bias, has_bias, code, a, b = epilogue(ctx)
    if _is_depthwise(ctx.op, cin):
        wt = ctx.params["weight"].reshape(cout, kh, kw)
        return lambda: C.depthwise_conv2d(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw,
                                          code, a, b, out)
    out3 = out.reshape(n, cout, -1)
    if groups > 1:
        return _bind_grouped(ctx, x, out3, groups, bias, has_bias, code, a, b)
    method = SP.conv_method(ctx.op, x.shape, out.shape) if SP.is_sparse(ctx.attr("fmt")) else ""
    if _is_pointwise(ctx.op):
        cols = x.reshape(n, cin, -1)
        fill = None
    elif method == "shifted":
        cols = fill = None
    else:
        cols = ctx.scratch[0]

        def fill():
            C.im2col(x, 0, cin, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols)

    if SP.is_sparse(ctx.attr("fmt")):
        epi = (bias, has_bias, code, a, b, ctx.attr("act", "none"))
        return SP.bind_conv(ctx, x, out, cols, fill, epi, method)
    w2 = ctx.params["weight"].reshape(cout, -1)
    post = None
    if has_bias or code != 0:
        def post(idx):  # some samples, or some columns of every sample
            part = out3[idx]
            rows = part.reshape(-1, part.shape[-1])  # (samples x channels) rows: a view
            A.bias_act_rows_serial(rows, bias, has_bias, cout, code, a, b)
    gemm = split_matmul(w2, cols, out3, post)
    if fill is None:
        return gemm

    def run_dense():
        fill()
        gemm()

    return run_dense


def _bind_grouped(ctx, x, out3, groups, bias, has_bias, code, a, b):
    kh, kw, sh, sw, ph, pw, dh, dw = _conv_geometry(ctx.op)
    cin, cout, wo = x.shape[1], out3.shape[1], ctx.out.shape[3]
    cg, og = cin // groups, cout // groups
    w3 = ctx.params["weight"].reshape(groups, og, -1)
    cols, tmp = ctx.scratch
    rows = out3.reshape(-1, out3.shape[2])

    def run_grouped():
        for g in range(groups):
            C.im2col(x, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols)
            np.matmul(w3[g], cols, out=tmp)
            out3[:, g * og:(g + 1) * og] = tmp
        A.bias_act_rows(rows, bias, has_bias, cout, code, a, b)

    return run_grouped


# ---- pooling ------------------------------------------------------------------------------
def _pool_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    kh, kw = op.attrs.get("kernel", (1, 1))
    return float(numel(out) * kh * kw)


@register_op("pool2d", flops=_pool_flops)
def bind_pool2d(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    kh, kw = (int(v) for v in ctx.attr("kernel"))
    sh, sw = (int(v) for v in ctx.attr("stride"))
    ph, pw = (int(v) for v in ctx.attr("padding"))
    if ctx.attr("mode") == "max":
        dh, dw = (int(v) for v in ctx.attr("dilation"))
        return lambda: P.max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out)
    include_pad = bool(ctx.attr("count_include_pad", True))
    divisor = int(ctx.attr("divisor_override") or 0)
    return lambda: P.avg_pool2d(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, out)


@register_op("adaptive_pool2d", flops=lambda op, ins, out, p: float(numel(ins[0])))
def bind_adaptive_pool2d(ctx: BindCtx):
    x, out = ctx.ins[0], ctx.out
    is_max = ctx.attr("mode") == "max"
    return lambda: P.adaptive_pool2d(x, is_max, out)


# ---- embedding ----------------------------------------------------------------------------
@register_op("embedding", flops=lambda op, ins, out, p: 0.0)
def bind_embedding(ctx: BindCtx):
    idx, out = ctx.ins[0], ctx.out
    table = ctx.params["weight"]
    rows = table.shape[0]
    name = ctx.op.layer or ctx.op.name

    def run():
        if idx.size and (idx.min() < 0 or idx.max() >= rows):
            raise InputError(name, f"index out of range for an embedding of {rows} rows "
                                   f"(got min {idx.min()}, max {idx.max()})")
        np.take(table, idx, axis=0, out=out)

    return run
