"""The rule of each op kind the runtime implements (registered into ``ir.rules.RULES``)."""

from __future__ import annotations

import math

import numpy as np

from sparsecc.formats.qint8 import MAX_K
from sparsecc.ir.rules import (
    BINARY_FNS,
    FLOAT_UNARY,
    MAX_RANK,
    REDUCE_FNS,
    UNARY_FNS,
    Ctx,
    PlanInvalid,
    T,
    _indices,
    _indptr,
    activation,
    broadcast_to,
    castable,
    check_packed,
    choice,
    flag,
    int_,
    ints,
    is_float,
    need_f32,
    num,
    param,
    parse_fmt,
    rule,
    same_shape,
)


# ---- data movement ------------------------------------------------------------------------
@rule("reshape")
def _reshape(c: Ctx) -> None:
    if c.out_alias != c.first_input:
        raise PlanInvalid("a reshape's output must alias its input")
    if c.out.numel != c.ins[0].numel or c.out.dtype != c.ins[0].dtype:
        raise PlanInvalid(f"reshape {c.ins[0].shape} -> {c.out.shape} changes the size or dtype")


@rule("copy")
def _copy(c: Ctx) -> None:
    if c.out.numel != c.ins[0].numel:
        raise PlanInvalid(f"copy {c.ins[0].shape} -> {c.out.shape} changes the size")
    castable(c.ins[0].dtype, c.out.dtype)


@rule("permute")
def _permute(c: Ctx) -> None:
    x = c.ins[0]
    perm = c.attr("perm")
    if not isinstance(perm, list) or sorted(int_(p, "perm") for p in perm) != list(
            range(len(x.shape))):
        raise PlanInvalid(f"perm={perm!r:.60} is not a permutation of {len(x.shape)} axes")
    same_shape(T(tuple(x.shape[p] for p in perm), x.dtype), c.out)
    castable(x.dtype, c.out.dtype)


def index_key(items) -> tuple:
    """The basic-indexing key of a slice op (a fixed vocabulary, no eval)."""
    if not isinstance(items, list) or len(items) > 2 * MAX_RANK:
        raise PlanInvalid(f"index must be a list of at most {2 * MAX_RANK} items")
    key = []
    for it in items:
        tag = it[0] if isinstance(it, list) and it else None
        if tag == "slice" and len(it) == 4:
            parts = [None if v is None else int_(v, "slice bound") for v in it[1:]]
            if parts[2] == 0:
                raise PlanInvalid("slice step 0")
            key.append(slice(*parts))
        elif tag == "int" and len(it) == 2:
            key.append(int_(it[1], "index"))
        elif tag == "none" and len(it) == 1:
            key.append(None)
        elif tag == "ellipsis" and len(it) == 1:
            key.append(Ellipsis)
        else:
            raise PlanInvalid(f"bad index item {it!r:.40}")
    return tuple(key)


def view_shape(shape: tuple[int, ...], key: tuple) -> tuple[int, ...]:
    """The shape ``x[key]`` has, computed on a zero-strided stand-in (no memory touched)."""
    try:
        return np.broadcast_to(np.zeros((), np.uint8), shape)[key].shape
    except (IndexError, ValueError, TypeError) as exc:
        raise PlanInvalid(f"index does not apply to shape {shape}: {exc}") from None


@rule("slice")
def _slice(c: Ctx) -> None:
    got = view_shape(c.ins[0].shape, index_key(c.attr("index")))
    if math.prod(got) != c.out.numel:
        raise PlanInvalid(f"slice gives {got}, output is {c.out.shape}")
    castable(c.ins[0].dtype, c.out.dtype)


@rule("cat", n_in=(1, 4096))
def _cat(c: Ctx) -> None:
    rank = len(c.out.shape)
    axis = int_(c.attr("axis"), "axis", 0, rank - 1)
    total = 0
    for t in c.ins:
        if len(t.shape) != rank or any(t.shape[i] != c.out.shape[i]
                                       for i in range(rank) if i != axis):
            raise PlanInvalid(f"cat operand {t.shape} does not fit output {c.out.shape}")
        castable(t.dtype, c.out.dtype)
        total += t.shape[axis]
    if total != c.out.shape[axis]:
        raise PlanInvalid(f"cat along {axis} gives {total}, output has {c.out.shape[axis]}")


@rule("stack", n_in=(1, 4096))
def _stack(c: Ctx) -> None:
    first = c.ins[0].shape
    axis = int_(c.attr("axis"), "axis", 0, len(first))
    if any(t.shape != first for t in c.ins):
        raise PlanInvalid("stack operands differ in shape")
    for t in c.ins:
        castable(t.dtype, c.out.dtype)
    same_shape(T(first[:axis] + (len(c.ins),) + first[axis:], c.out.dtype), c.out)


@rule("expand")
def _expand(c: Ctx) -> None:
    broadcast_to(c.out, c.ins[0])
    castable(c.ins[0].dtype, c.out.dtype)


# ---- pointwise ----------------------------------------------------------------------------
@rule("act")
def _act(c: Ctx) -> None:
    activation(c)
    same_shape(c.ins[0], c.out)
    if c.out.dtype == "bool" or c.ins[0].dtype != c.out.dtype:
        raise PlanInvalid(f"act needs one numeric dtype in and out, got {c.ins[0].dtype} -> "
                          f"{c.out.dtype}")


@rule("binary", n_in=(1, 2))
def _binary(c: Ctx) -> None:
    choice(c.attr("fn"), BINARY_FNS, "fn")
    if len(c.ins) == 1:
        v = c.attr("scalar")
        if not isinstance(v, (bool, int, float)):
            raise PlanInvalid(f"scalar={v!r:.40} must be a number")
        if isinstance(v, bool) and c.ins[0].dtype != "bool":
            raise PlanInvalid(f"scalar={v!r} beside a {c.ins[0].dtype} tensor (the compiler "
                              f"writes it as a number there)")
        flag(c.attr("scalar_first", False), "scalar_first")
    broadcast_to(c.out, *c.ins)
    activation(c)


@rule("unary")
def _unary(c: Ctx) -> None:
    fn = choice(c.attr("fn"), UNARY_FNS, "fn")
    broadcast_to(c.out, c.ins[0])
    if fn in FLOAT_UNARY and not is_float(c.out):
        raise PlanInvalid(f"{fn} into a {c.out.dtype} tensor")


@rule("cast")
def _cast(c: Ctx) -> None:
    broadcast_to(c.out, c.ins[0])


@rule("where", n_in=(1, 3))
def _where(c: Ctx) -> None:
    tensors = 1 + (c.attr("a") is None) + (c.attr("b") is None)
    for key in ("a", "b"):
        if c.attr(key) is not None:
            num(c.attr(key), key)
    if len(c.ins) != tensors:
        raise PlanInvalid(f"where needs {tensors} operand(s), has {len(c.ins)}")
    broadcast_to(c.out, *c.ins)


@rule("affine", params=("scale", "shift"))
def _affine(c: Ctx) -> None:
    x = c.ins[0]
    if len(x.shape) < 2 or not is_float(x):
        raise PlanInvalid(f"affine needs a float tensor of rank >= 2, got {x.dtype} {x.shape}")
    for role in ("scale", "shift"):
        param(c, role, (x.shape[1],), dtype=x.dtype)
    same_shape(x, c.out)
    castable(x.dtype, c.out.dtype)


# ---- weight-bearing -----------------------------------------------------------------------
def _weight(c: Ctx, shape: tuple[int, ...]) -> str:
    """The op's format, its weight params checked against the weight ``shape`` (dense layout:
    rows = outputs, the rest flattened into columns for the packed formats)."""
    fmt = c.attr("fmt", "dense")
    kind, _ = parse_fmt(fmt)
    choice(c.attr("backend", "llvm"), ("llvm", "numba"), "backend")
    spec = c.attr("specialize")
    if spec not in (None, False, True, "spmv", "spmm"):
        raise PlanInvalid(f"specialize={spec!r:.40} is not true, false, 'spmv' or 'spmm'")
    if kind == "dense":
        if set(c.params) - {"weight", "bias"} or "weight" not in c.params:
            raise PlanInvalid(f"a dense weight has params weight (+ bias), got {sorted(c.params)}")
        param(c, "weight", shape, "float32")
    else:
        roles = {"indptr", "indices", "data"} if kind != "nm" else {"indices", "data"}
        if set(c.params) - {"bias"} != roles:
            raise PlanInvalid(f"a {fmt} weight has params {sorted(roles)} (+ bias), got "
                              f"{sorted(c.params)}")
        if ints(c.attr("weight_shape"), len(shape), "weight_shape", 0) != shape:
            raise PlanInvalid(f"weight_shape {c.attr('weight_shape')} != {list(shape)}")
        check_packed(fmt, c.params, shape[0], math.prod(shape[1:]))
    if "bias" in c.params:
        param(c, "bias", (shape[0],), "float32")
    activation(c)
    return kind


def _kn_flags(c: Ctx, linear_sparse: bool) -> None:
    for key in ("in_kn", "out_kn"):
        if c.attr(key) is not None and flag(c.attr(key), key) and not linear_sparse:
            raise PlanInvalid(f"{key} is only for sparse linear ops")


@rule("linear", optional=("weight", "bias", "indptr", "indices", "data"))
def _linear(c: Ctx) -> None:
    x = c.ins[0]
    if not x.shape or len(c.out.shape) != len(x.shape) or c.out.shape[:-1] != x.shape[:-1]:
        raise PlanInvalid(f"linear {x.shape} -> {c.out.shape}: leading dims must agree")
    need_f32(x, c.out)
    kind = _weight(c, (c.out.shape[-1], x.shape[-1]))
    _kn_flags(c, kind != "dense")


def conv_out(size: int, k: int, s: int, p: int, d: int, extra: int = 0) -> int:
    return (size + 2 * p + extra - d * (k - 1) - 1) // s + 1


def _conv_geometry(c: Ctx, what: str, odd_pad: bool, groups_default=None
                   ) -> tuple[int, ...]:
    """(cin, cout, groups, kh, kw) of a conv whose output follows from its input, kernel,
    stride, padding and dilation (``odd_pad``: 'same' padding with an even kernel puts its odd
    pixel at the end, so one more output is allowed; ``groups_default``: None when the
    attribute is required)."""
    x, out = c.ins[0], c.out
    if len(x.shape) != 4 or len(out.shape) != 4 or out.shape[0] != x.shape[0]:
        raise PlanInvalid(f"{what} {x.shape} -> {out.shape}: needs (N, C, H, W) both sides")
    need_f32(x, out)
    kh, kw = ints(c.attr("kernel"), 2, "kernel", 1, 1 << 12)
    sh, sw = ints(c.attr("stride"), 2, "stride", 1, 1 << 12)
    ph, pw = ints(c.attr("padding"), 2, "padding", 0, 1 << 12)
    dh, dw = ints(c.attr("dilation"), 2, "dilation", 1, 1 << 12)
    groups = int_(c.attr("groups", groups_default), "groups", 1)
    n, cin, h, w = x.shape
    cout = out.shape[1]
    if cin % groups or cout % groups:
        raise PlanInvalid(f"groups={groups} does not divide {cin} -> {cout} channels")
    for size, got, k, s, p, d in ((h, out.shape[2], kh, sh, ph, dh),
                                  (w, out.shape[3], kw, sw, pw, dw)):
        ok = (conv_out(size, k, s, p, d),) + ((conv_out(size, k, s, p, d, 1),) if odd_pad
                                              else ())
        if got < 1 or got not in ok:
            raise PlanInvalid(f"{what} output {out.shape} does not follow from input {x.shape},"
                              f" kernel {kh}x{kw}, stride, padding and dilation")
    return cin, cout, groups, kh, kw


@rule("conv2d", optional=("weight", "bias", "indptr", "indices", "data"))
def _conv2d(c: Ctx) -> None:
    cin, cout, groups, kh, kw = _conv_geometry(c, "conv2d", odd_pad=True)
    kind = _weight(c, (cout, cin // groups, kh, kw))
    if kind != "dense" and groups != 1:
        raise PlanInvalid(f"a {c.attr('fmt')} conv must have groups=1")
    _kn_flags(c, False)


def pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooling_output_shape."""
    o = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


@rule("pool2d")
def _pool2d(c: Ctx) -> None:
    x, out = c.ins[0], c.out
    if len(x.shape) != 4 or out.shape[:2] != x.shape[:2] or len(out.shape) != 4:
        raise PlanInvalid(f"pool2d {x.shape} -> {out.shape}: needs (N, C, H, W) both sides")
    if not is_float(x) or x.dtype != out.dtype:
        raise PlanInvalid(f"pool2d needs one float dtype, got {x.dtype} -> {out.dtype}")
    mode = choice(c.attr("mode"), ("max", "avg"), "mode")
    kh, kw = ints(c.attr("kernel"), 2, "kernel", 1, 1 << 12)
    sh, sw = ints(c.attr("stride"), 2, "stride", 1, 1 << 12)
    ph, pw = ints(c.attr("padding"), 2, "padding", 0, 1 << 12)
    dh, dw = ints(c.attr("dilation", [1, 1]), 2, "dilation", 1, 1 << 12)
    if mode == "avg" and (dh, dw) != (1, 1):
        raise PlanInvalid("average pooling has no dilation")
    if 2 * ph > kh or 2 * pw > kw:
        raise PlanInvalid(f"padding {ph, pw} is more than half the kernel {kh, kw}")
    ceil = flag(c.attr("ceil_mode", False), "ceil_mode")
    flag(c.attr("count_include_pad", True), "count_include_pad")
    div = c.attr("divisor_override")
    if div is not None:
        int_(div, "divisor_override", 1)
    want = (pool_out(x.shape[2], kh, sh, ph, dh, ceil), pool_out(x.shape[3], kw, sw, pw, dw, ceil))
    if min(want) < 1 or out.shape[2:] != want:
        raise PlanInvalid(f"pool2d output {out.shape} does not follow from input {x.shape} "
                          f"and its geometry (expected spatial {want})")


@rule("adaptive_pool2d")
def _adaptive(c: Ctx) -> None:
    x, out = c.ins[0], c.out
    choice(c.attr("mode"), ("max", "avg"), "mode")
    if (len(x.shape) != 4 or len(out.shape) != 4 or out.shape[:2] != x.shape[:2]
            or min(x.shape[2:]) < 1 or min(out.shape[2:]) < 1):
        raise PlanInvalid(f"adaptive pool {x.shape} -> {out.shape}")
    if not is_float(x) or x.dtype != out.dtype:
        raise PlanInvalid(f"adaptive pool needs one float dtype, got {x.dtype} -> {out.dtype}")


@rule("embedding", params=("weight",))
def _embedding(c: Ctx) -> None:
    idx = c.ins[0]
    table = param(c, "weight", ndim=2)
    if idx.dtype not in ("int64", "int32", "uint8", "uint16", "uint32"):
        raise PlanInvalid(f"embedding indices must be integers, got {idx.dtype}")
    same_shape(T(idx.shape + (table.shape[1],), str(table.dtype)), c.out)
    if c.out.dtype != str(table.dtype):
        raise PlanInvalid(f"embedding output {c.out.dtype} != table {table.dtype}")


# ---- reductions and normalisation ---------------------------------------------------------
@rule("softmax")
def _softmax(c: Ctx) -> None:
    x = c.ins[0]
    int_(c.attr("axis"), "axis", 0, len(x.shape) - 1)
    flag(c.attr("log", False), "log")
    same_shape(x, c.out)
    if not is_float(x) or x.dtype != c.out.dtype:
        raise PlanInvalid(f"softmax needs one float dtype, got {x.dtype} -> {c.out.dtype}")


@rule("layer_norm", optional=("weight", "bias"))
def _layer_norm(c: Ctx) -> None:
    x = c.ins[0]
    k = int_(c.attr("ndims"), "ndims", 1, len(x.shape))
    num(c.attr("eps"), "eps")
    d = math.prod(x.shape[len(x.shape) - k:])
    for role in ("weight", "bias"):
        if role in c.params and param(c, role, dtype=x.dtype).size != d:
            raise PlanInvalid(f"param {role} has {c.params[role].size} values, needs {d}")
    same_shape(x, c.out)
    if not is_float(x) or x.dtype != c.out.dtype:
        raise PlanInvalid(f"layer_norm needs one float dtype, got {x.dtype} -> {c.out.dtype}")


@rule("reduce")
def _reduce(c: Ctx) -> None:
    x = c.ins[0]
    choice(c.attr("fn"), REDUCE_FNS, "fn")
    raw = c.attr("axes")
    if not isinstance(raw, list):
        raise PlanInvalid(f"axes={raw!r:.40} must be a list")
    axes = {int_(a, "axes", 0, len(x.shape) - 1) for a in raw}
    if len(axes) != len(raw):
        raise PlanInvalid("axes repeat")
    keep = flag(c.attr("keepdim"), "keepdim")
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    same_shape(T(shape, c.out.dtype), c.out)
    castable(x.dtype, c.out.dtype)


def matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy's matmul result shape (1-D operands promoted and dropped again)."""
    if not a or not b:
        raise PlanInvalid("matmul of a scalar")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise PlanInvalid(f"matmul {a} @ {b}: inner dims differ")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise PlanInvalid(f"matmul {a} @ {b}: batch dims do not broadcast") from None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@rule("matmul", n_in=(2, 2))
def _matmul(c: Ctx) -> None:
    a, b = c.ins
    same_shape(T(matmul_shape(a.shape, b.shape), c.out.dtype), c.out)
    if not (is_float(a) and is_float(b) and is_float(c.out)):
        raise PlanInvalid(f"matmul needs float tensors, got {a.dtype} @ {b.dtype}")
    castable(np.result_type(a.dtype, b.dtype).name, c.out.dtype)


@rule("sdpa", n_in=(3, 4))
def _sdpa(c: Ctx) -> None:
    q, k, v = c.ins[:3]
    if min(len(q.shape), len(k.shape), len(v.shape)) < 2:
        raise PlanInvalid("attention needs q, k, v of rank >= 2")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise PlanInvalid(f"attention q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    scores = matmul_shape(q.shape, k.shape[:-2] + (k.shape[-1], k.shape[-2]))
    same_shape(T(matmul_shape(scores, v.shape), c.out.dtype), c.out)
    if scores[:-2] != q.shape[:-2]:
        raise PlanInvalid("attention batch dims must be q's")
    need_f32(q, k, v, c.out)
    if len(c.ins) == 4:
        mask = c.ins[3]
        if mask.dtype not in ("bool", "float32"):
            raise PlanInvalid(f"attention mask must be bool or float32, got {mask.dtype}")
        broadcast_to(T(scores, "float32"), mask)
    if c.attr("scale") is not None:
        num(c.attr("scale"), "scale")
    flag(c.attr("is_causal", False), "is_causal")


def _q8_weight(c: Ctx, what: str, rows: int, cols: int) -> None:
    """The int8 weight (formats.qint8: g4 groups of ``cols`` inputs, ``rows`` outputs), its
    per-row multipliers and bias, and the input's uint8 scale and zero point."""
    if cols > MAX_K:  # |sum| <= 255 * 127 * K must stay an exact int32
        raise PlanInvalid(f"{what} with {cols} inputs a row: the int32 sum could overflow")
    scale = num(c.attr("x_scale"), "x_scale")
    if not (math.isfinite(scale) and scale > 0):
        raise PlanInvalid(f"x_scale={scale!r} must be a positive finite number")
    int_(c.attr("x_zero"), "x_zero", 0, 255)
    activation(c)
    ix = c.params["indices"]
    _indices(ix, -(-cols // 4), what, ("uint16", "uint32"))
    _indptr(param(c, "indptr"), rows, ix.shape[0], what)
    param(c, "data", (ix.shape[0], 4), "int8")
    for role in ("mult", "bias"):
        if not np.all(np.isfinite(param(c, role, (rows,), "float32"))):
            raise PlanInvalid(f"{what} {role} has a non-finite value")


@rule("qlinear", params=("indptr", "indices", "data", "mult", "bias"))
def _qlinear(c: Ctx) -> None:
    """int8 linear (formats.qint8): g4 groups, per-row multipliers, uint8 input codes."""
    x = c.ins[0]
    if not x.shape or len(c.out.shape) != len(x.shape) or c.out.shape[:-1] != x.shape[:-1]:
        raise PlanInvalid(f"qlinear {x.shape} -> {c.out.shape}: leading dims must agree")
    need_f32(x, c.out)
    rows, cols = c.out.shape[-1], x.shape[-1]
    if ints(c.attr("weight_shape"), 2, "weight_shape", 0) != (rows, cols):
        raise PlanInvalid(f"weight_shape {c.attr('weight_shape')} != {[rows, cols]}")
    _q8_weight(c, "qlinear", rows, cols)


@rule("qconv2d", params=("indptr", "indices", "data", "mult", "bias"))
def _qconv2d(c: Ctx) -> None:
    """int8 conv (formats.qint8): rows over (kh, kw, C rounded up to 4), 4 channels a group."""
    cin, cout, groups, kh, kw = _conv_geometry(c, "qconv2d", odd_pad=False, groups_default=1)
    if groups != 1:
        raise PlanInvalid("qconv2d has groups=1 only")
    if ints(c.attr("weight_shape"), 4, "weight_shape", 0) != (cout, cin, kh, kw):
        raise PlanInvalid(f"weight_shape {c.attr('weight_shape')} != {[cout, cin, kh, kw]}")
    _q8_weight(c, "qconv2d", cout, kh * kw * (-(-cin // 4) * 4))
