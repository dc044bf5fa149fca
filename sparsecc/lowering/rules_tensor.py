"""Lowering rules for tensor ops: arithmetic, views, indexing, concat, matmul, reductions, sdpa."""

from __future__ import annotations

import builtins
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.frontend import TensorInfo
from sparsecc.ir.plan import Sym
from sparsecc.lowering.core import INPLACE_FUNCTIONS, Const, Lowering, TRef, module_rule, rule
from sparsecc.lowering.rules_nn import emit_linear


def _is_tensor(v) -> bool:
    return isinstance(v, (TRef, Const))


# ---- binary arithmetic --------------------------------------------------------------------
def _operand(lw: Lowering, t, v):
    """A Python scalar beside tensor ``t``: True/False stay bools only next to a bool tensor
    (``x > True`` is ``x > 1``), so the verifier can refuse a bool beside numbers."""
    v = lw.number(v, "operand")
    return int(v) if isinstance(v, bool) and lw.spec(t).dtype != "bool" else v


def emit_binary(lw: Lowering, fn: str, lhs, rhs):
    if _is_tensor(lhs) and _is_tensor(rhs):
        return lw.emit("binary", [lw.tensor(lhs), lw.tensor(rhs)], attrs={"fn": fn})
    if _is_tensor(lhs):
        return lw.emit("binary", [lw.tensor(lhs)],
                       attrs={"fn": fn, "scalar": _operand(lw, lhs, rhs), "scalar_first": False})
    if _is_tensor(rhs):
        return lw.emit("binary", [lw.tensor(rhs)],
                       attrs={"fn": fn, "scalar": _operand(lw, rhs, lhs), "scalar_first": True})
    raise lw.fail("arithmetic without a tensor operand")


def _alpha(lw: Lowering, a) -> None:
    if a.get("alpha", 1) != 1:
        raise lw.fail("add/sub with alpha != 1")


_BIN = lambda input, other, alpha=1: None  # noqa: E731
_BINARY_TABLE = {
    "add": ([operator.add, operator.iadd, torch.add], ["add"]),
    "sub": ([operator.sub, operator.isub, torch.sub, torch.subtract], ["sub", "subtract"]),
    "mul": ([operator.mul, operator.imul, torch.mul, torch.multiply], ["mul", "multiply"]),
    "pow": ([operator.pow, torch.pow], ["pow"]),
    "maximum": ([torch.maximum], ["maximum"]),
    "minimum": ([torch.minimum], ["minimum"]),
    "eq": ([operator.eq, torch.eq], ["eq"]),
    "ne": ([operator.ne, torch.ne], ["ne"]),
    "lt": ([operator.lt, torch.lt], ["lt"]),
    "le": ([operator.le, torch.le], ["le"]),
    "gt": ([operator.gt, torch.gt], ["gt"]),
    "ge": ([operator.ge, torch.ge], ["ge"]),
    "and": ([operator.and_, operator.iand, torch.logical_and], ["logical_and"]),
    "or": ([operator.or_, operator.ior, torch.logical_or], ["logical_or"]),
    "floordiv": ([operator.floordiv, torch.floor_divide], ["floor_divide"]),
}
for _fn, (_funcs, _methods) in _BINARY_TABLE.items():
    def _lower_bin(lw, node, a, _fn=_fn):
        _alpha(lw, a)
        return emit_binary(lw, _fn, a["input"], a["other"])

    rule(_fn, _BIN, functions=_funcs, methods=_methods)(_lower_bin)
INPLACE_FUNCTIONS.update({operator.iadd, operator.isub, operator.imul, operator.itruediv,
                          operator.iand, operator.ior})


@rule("div", lambda input, other, rounding_mode=None: None,
      functions=[operator.truediv, operator.itruediv, torch.div, torch.true_divide],
      methods=["div", "true_divide", "divide"])
def lower_div(lw: Lowering, node, a):
    mode = a["rounding_mode"]
    if mode not in (None, "floor"):
        raise lw.fail(f"div with rounding_mode={mode!r}")
    return emit_binary(lw, "floordiv" if mode == "floor" else "div", a["input"], a["other"])


@rule("rsub", lambda input, other, alpha=1: None, functions=[torch.rsub], methods=["rsub"])
def lower_rsub(lw: Lowering, node, a):
    _alpha(lw, a)
    return emit_binary(lw, "sub", a["other"], a["input"])


# ---- unary math ---------------------------------------------------------------------------
_UNARY_TABLE = {
    "exp": ([torch.exp], ["exp"]), "log": ([torch.log], ["log"]),
    "sqrt": ([torch.sqrt], ["sqrt"]), "rsqrt": ([torch.rsqrt], ["rsqrt"]),
    "neg": ([operator.neg, torch.neg, torch.negative], ["neg", "negative"]),
    "abs": ([torch.abs, builtins.abs], ["abs"]),
    "reciprocal": ([torch.reciprocal], ["reciprocal"]),
    "sin": ([torch.sin], ["sin"]), "cos": ([torch.cos], ["cos"]),
    "not": ([torch.logical_not, operator.invert], ["logical_not"]),
}
for _fn, (_funcs, _methods) in _UNARY_TABLE.items():
    rule(_fn, lambda input: None, functions=_funcs, methods=_methods)(
        lambda lw, node, a, _fn=_fn: lw.emit("unary", [lw.tensor(a["input"])],
                                             attrs={"fn": _fn}))


# ---- dtype casts and no-ops ---------------------------------------------------------------
def emit_cast_or_alias(lw: Lowering, x):
    src = lw.spec(x)
    out = lw.out_info()
    if str(out.dtype).replace("torch.", "") == src.dtype:
        return lw.emit("reshape", [src.name], alias=True)
    return lw.emit("cast", [src.name])


_ANY = lambda input, *args, **kwargs: None  # noqa: E731
rule("cast", _ANY, methods=["to", "type", "float", "double", "long", "int", "bool", "type_as",
                            "contiguous", "detach", "clone", "cpu"],
     functions=[torch.clone])(lambda lw, node, a: emit_cast_or_alias(lw, a["input"]))


@module_rule(nn.Dropout, nn.Identity)
def lower_noop_module(lw: Lowering, node, mod, args):
    return emit_cast_or_alias(lw, args[0])


# ---- views and layout ---------------------------------------------------------------------
def emit_reshape(lw: Lowering, x):
    if lw.spec(x).shape == lw.out_info().shape:
        return x if isinstance(x, TRef) else TRef(lw.tensor(x))
    return lw.emit("reshape", [lw.tensor(x)], alias=True)


rule("reshape", _ANY, functions=[torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze],
     methods=["reshape", "view", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
              "unflatten"])(lambda lw, node, a: emit_reshape(lw, a["input"]))


@module_rule(nn.Flatten, nn.Unflatten)
def lower_flatten_module(lw: Lowering, node, mod, args):
    return emit_reshape(lw, args[0])


def emit_permute(lw: Lowering, x, perm: list[int]):
    rank = len(lw.spec(x).shape)
    perm = [int(p) % rank for p in perm]
    if sorted(perm) != list(range(rank)):
        raise lw.fail(f"permutation {perm} of a rank-{rank} tensor")
    if perm == list(range(rank)):
        return emit_reshape(lw, x)
    return lw.emit("permute", [lw.tensor(x)], attrs={"perm": perm})


@rule("permute", lambda input, *dims: None, functions=[torch.permute], methods=["permute"])
def lower_permute(lw: Lowering, node, a):
    dims = a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    return emit_permute(lw, a["input"], list(dims))


@rule("transpose", lambda input, dim0, dim1: None, functions=[torch.transpose, torch.swapaxes],
      methods=["transpose", "swapaxes"])
def lower_transpose(lw: Lowering, node, a):
    rank = len(lw.spec(a["input"]).shape)
    perm = list(range(rank))
    d0, d1 = int(a["dim0"]) % rank, int(a["dim1"]) % rank
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return emit_permute(lw, a["input"], perm)


@rule("t", lambda input: None, functions=[torch.t], methods=["t"])
def lower_t(lw: Lowering, node, a):
    rank = len(lw.spec(a["input"]).shape)
    return emit_permute(lw, a["input"], list(reversed(range(rank))))


@rule("expand", _ANY, methods=["expand", "expand_as"])
def lower_expand(lw: Lowering, node, a):
    return lw.emit("expand", [lw.tensor(a["input"])])


@rule("getattr", lambda obj, name, default=None: None, functions=[builtins.getattr])
def lower_getattr(lw: Lowering, node, a):
    if a["name"] in ("T", "mT"):
        rank = len(lw.spec(a["obj"]).shape)
        perm = list(range(rank))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return emit_permute(lw, a["obj"], list(reversed(range(rank))) if a["name"] == "T"
                            else perm)
    raise lw.fail(f"tensor attribute .{a['name']}")


# ---- indexing and splitting ---------------------------------------------------------------
def _index_item(lw: Lowering, item):
    if item is None:
        return ["none"]
    if item is Ellipsis:
        return ["ellipsis"]
    if isinstance(item, slice):
        parts = [item.start, item.stop, item.step]
        for p in parts:
            if p is not None:
                lw.number(p, "slice bound")
        return ["slice"] + [None if p is None else int(p) for p in parts]
    if isinstance(item, bool) or _is_tensor(item):
        raise lw.fail("indexing with a tensor or bool (advanced indexing)")
    return ["int", int(lw.number(item, "index"))]


@rule("getitem", lambda input, index: None, functions=[operator.getitem])
def lower_getitem(lw: Lowering, node, a):
    src, idx = a["input"], a["index"]
    if isinstance(src, (list, tuple)):
        return src[idx]
    items = idx if isinstance(idx, tuple) else (idx,)
    index = [_index_item(lw, it) for it in items]
    return lw.emit("slice", [lw.tensor(src)], attrs={"index": index})


def emit_pieces(lw: Lowering, x, dim: int, take_ints: bool):
    """One slice op per output of split/chunk/unbind, sized from the recorded outputs."""
    spec = lw.spec(x)
    rank = len(spec.shape)
    dim = int(dim) % rank
    if isinstance(spec.shape[dim], Sym):
        raise lw.fail("splitting along the batch dimension")
    outs = lw.info().value
    pieces, start = [], 0
    for i, info in enumerate(outs):
        assert isinstance(info, TensorInfo)
        lead = [["slice", None, None, None]] * dim
        if take_ints:
            index, size = lead + [["int", i]], 1
        else:
            size = int(info.shape[dim])
            index = lead + [["slice", start, start + size, None]]
        dtype = spec.dtype
        pieces.append(lw.emit("slice", [spec.name], info.shape, dtype, {"index": index},
                              suffix=f"_{i}"))
        start += size
    return pieces


rule("split", lambda input, split_size_or_sections, dim=0: None, functions=[torch.split],
     methods=["split"])(lambda lw, node, a: emit_pieces(lw, a["input"], a["dim"], False))
rule("chunk", lambda input, chunks, dim=0: None, functions=[torch.chunk], methods=["chunk"])(
    lambda lw, node, a: emit_pieces(lw, a["input"], a["dim"], False))
rule("unbind", lambda input, dim=0: None, functions=[torch.unbind], methods=["unbind"])(
    lambda lw, node, a: emit_pieces(lw, a["input"], a["dim"], True))


def _seq_axis(lw: Lowering, tensors, dim, extra: int) -> tuple[list[str], int]:
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise lw.fail("cat/stack needs a non-empty list of tensors")
    names = [lw.tensor(t) for t in tensors]
    rank = len(lw.tensors[names[0]].shape) + extra
    return names, int(dim) % rank


@rule("cat", lambda tensors, dim=0: None, functions=[torch.cat, torch.concat, torch.concatenate])
def lower_cat(lw: Lowering, node, a):
    names, axis = _seq_axis(lw, a["tensors"], a["dim"], 0)
    return lw.emit("cat", names, attrs={"axis": axis})


@rule("stack", lambda tensors, dim=0: None, functions=[torch.stack])
def lower_stack(lw: Lowering, node, a):
    names, axis = _seq_axis(lw, a["tensors"], a["dim"], 1)
    return lw.emit("stack", names, attrs={"axis": axis})


# ---- matmul -------------------------------------------------------------------------------
@rule("matmul", lambda input, other: None,
      functions=[torch.matmul, torch.bmm, torch.mm, operator.matmul],
      methods=["matmul", "bmm", "mm"])
def lower_matmul(lw: Lowering, node, a):
    x, w = a["input"], a["other"]
    if isinstance(w, Const) and w.array.ndim == 2 and isinstance(x, TRef) \
            and w.array.dtype == np.float32:
        # x @ W with a constant W is a linear layer: it can then be pruned and run sparse.
        return emit_linear(lw, x, np.ascontiguousarray(w.array.T), None, w.hint)
    return lw.emit("matmul", [lw.tensor(x), lw.tensor(w)])


# ---- reductions ---------------------------------------------------------------------------
def emit_reduce(lw: Lowering, fn: str, x, dim, keepdim):
    rank = len(lw.spec(x).shape)
    if dim is None or dim == () or dim == []:
        axes = list(range(rank))
    else:
        axes = sorted({int(d) % rank for d in (dim if isinstance(dim, (list, tuple)) else [dim])})
    return lw.emit("reduce", [lw.tensor(x)], attrs={"fn": fn, "axes": axes,
                                                   "keepdim": bool(keepdim)})


_RED = lambda input, dim=None, keepdim=False, dtype=None: None  # noqa: E731
for _fn, _funcs in [("mean", [torch.mean]), ("sum", [torch.sum]), ("amax", [torch.amax]),
                    ("amin", [torch.amin])]:
    rule(_fn, _RED, functions=_funcs, methods=[_fn])(
        lambda lw, node, a, _fn=_fn: emit_reduce(lw, _fn, a["input"], a["dim"], a["keepdim"]))


@rule("max", lambda input, dim=None, keepdim=False: None, functions=[torch.max, torch.min],
      methods=["max", "min"])
def lower_max(lw: Lowering, node, a):
    name = getattr(lw.node.target, "__name__", str(lw.node.target))
    if _is_tensor(a["dim"]):  # torch.max(a, b): elementwise
        return emit_binary(lw, "minimum" if name == "min" else "maximum", a["input"], a["dim"])
    if a["dim"] is not None:
        raise lw.fail("max/min along a dim (returns values and indices)", "use amax/amin")
    return emit_reduce(lw, "amin" if name == "min" else "amax", a["input"], None, False)


# ---- attention ----------------------------------------------------------------------------
@rule("sdpa", lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
      scale=None, enable_gqa=False: None, functions=[F.scaled_dot_product_attention])
def lower_sdpa(lw: Lowering, node, a):
    if a["dropout_p"]:
        raise lw.fail(f"attention dropout_p={a['dropout_p']} (random at inference)",
                      "pass dropout_p=0.0 when not training")
    if a["enable_gqa"]:
        raise lw.fail("grouped-query attention (enable_gqa=True)")
    q, k = lw.spec(a["query"]), lw.spec(a["key"])
    if q.shape[:-2] != k.shape[:-2]:
        raise lw.fail("query and key with different batch/head dims")
    names = [lw.tensor(a["query"]), lw.tensor(a["key"]), lw.tensor(a["value"])]
    if a["attn_mask"] is not None:
        names.append(lw.tensor(a["attn_mask"], "attn_mask"))
    scale = None if a["scale"] is None else float(lw.number(a["scale"], "scale"))
    return lw.emit("sdpa", names, attrs={"scale": scale, "is_causal": bool(a["is_causal"])})


# ---- selection ----------------------------------------------------------------------------
def emit_where(lw: Lowering, cond, x, y):
    names = [lw.tensor(cond, "condition")]
    attrs = {"a": None, "b": None}
    for key, v in (("a", x), ("b", y)):
        if _is_tensor(v):
            names.append(lw.tensor(v))
        else:
            attrs[key] = float(lw.number(v, "where operand"))
    return lw.emit("where", names, attrs=attrs)


@rule("where", lambda condition, input, other: None, functions=[torch.where], methods=["where"])
def lower_where(lw: Lowering, node, a):
    if lw.node.op == "call_method":  # x.where(cond, y): self is the value, not the condition
        return emit_where(lw, a["input"], a["condition"], a["other"])
    return emit_where(lw, a["condition"], a["input"], a["other"])


@rule("masked_fill", lambda input, mask, value: None, functions=[torch.masked_fill],
      methods=["masked_fill"])
def lower_masked_fill(lw: Lowering, node, a):
    return emit_where(lw, a["mask"], a["value"], a["input"])

