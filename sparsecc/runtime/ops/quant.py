"""int8 ops on the executor: the portable path and the reference the native int8 kernels are
checked against.

``qlinear``: the input quantized to uint8 codes (formats.qint8), the int8 products summed
exactly in int64 by a numba loop over the g4 groups, the float32 epilogue and activation.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba import activations as A
from sparsecc.formats import qint8 as Q
from sparsecc.ir.plan import Op
from sparsecc.runtime.ops.registry import BindCtx, Shape, numel, register_op


def _flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return 2.0 * numel(out[:-1]) * int(np.count_nonzero(params["data"]))


@njit(parallel=True, cache=True)
def _q8_rows(xq, indptr, groups, data, mult, bias, out):
    """out[m, r] = mult[r] * float32(sum of codes x int8 values) + bias[r], exactly summed."""
    m_rows, k = xq.shape
    for r in prange(indptr.shape[0] - 1):
        for m in range(m_rows):
            acc = np.int64(0)
            for j in range(indptr[r], indptr[r + 1]):
                base = np.int64(groups[j]) * 4
                for c in range(4):
                    if base + c < k:
                        acc += np.int64(data[j, c]) * np.int64(xq[m, base + c])
            out[m, r] = np.float32(acc) * mult[r] + bias[r]


@register_op("qlinear", flops=_flops)
def bind_qlinear(ctx: BindCtx):
    rows, cols = (int(v) for v in ctx.attr("weight_shape"))
    scale, zero = float(ctx.attr("x_scale")), int(ctx.attr("x_zero"))
    p = ctx.params
    code = A.act_code(ctx.attr("act", "none"))
    a, b = float(ctx.attr("act_a", 0.0)), float(ctx.attr("act_b", 0.0))
    x2 = ctx.ins[0].reshape(-1, cols)
    o2 = ctx.out.reshape(-1, rows)

    def step():
        xq = Q.quantize_act(x2, scale, zero)
        _q8_rows(xq, p["indptr"], p["indices"], p["data"], p["mult"], p["bias"], o2)
        if code:
            A.act_inplace(o2.reshape(-1), code, a, b)

    return step


def _conv_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return 2.0 * out[0] * out[2] * out[3] * int(np.count_nonzero(params["data"]))


@register_op("qconv2d", flops=_conv_flops)
def bind_qconv2d(ctx: BindCtx):
    """Reference int8 conv: patches of the codes (formats.qint8.conv_columns) against the
    packed rows, summed exactly in float64, then the epilogue."""
    o, c, kh, kw = (int(v) for v in ctx.attr("weight_shape"))
    scale, zero = float(ctx.attr("x_scale")), int(ctx.attr("x_zero"))
    p = ctx.params
    code = A.act_code(ctx.attr("act", "none"))
    a, b = float(ctx.attr("act_a", 0.0)), float(ctx.attr("act_b", 0.0))
    geo = [tuple(int(v) for v in ctx.attr(key)) for key in
           ("kernel", "stride", "padding", "dilation")]
    x, out = ctx.ins[0], ctx.out
    c4 = -(-c // 4) * 4
    qw = Q.QWeight(p["indptr"], p["indices"], p["data"], np.ones(o, np.float32), o,
                   kh * kw * c4)
    w = qw.dense().astype(np.float64)

    def step():
        cols = Q.conv_columns(Q.quantize_act(x, scale, zero), zero, *geo, out.shape[2:])
        acc = np.rint(cols @ w.T)  # exact: integers below 2^53
        y = Q.epilogue(acc, p["mult"], p["bias"])  # (N * ho * wo, O)
        out[...] = y.reshape(out.shape[0], out.shape[2], out.shape[3], o).transpose(0, 3, 1, 2)
        if code:
            A.act_inplace(out.reshape(-1), code, a, b)

    return step
