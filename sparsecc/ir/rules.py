"""What every op kind needs of its operands, attributes and parameters: one rule per kind.

A rule sees one op at a concrete batch size (shapes resolved) and raises ``PlanInvalid`` unless
its kernel's preconditions hold: operand counts and dtypes, output shape equal to what the
attributes imply (conv/pool geometry, broadcasting, reductions), parameter shapes and — for
packed sparse weights — index arrays monotone and in range, value counts equal to what the
indices imply. The runtime's kernels check none of this (they index raw pointers); see
``ir.verify`` for the guarantee this buys. Pure: numpy only, no torch, no runtime imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsecc.errors import SparseccError

# Vocabularies the runtime's tables implement (tests/ir checks the tables against these).
ACTS = ("none", "relu", "clamp", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish",
        "hardsigmoid", "leaky_relu", "elu")
BINARY_FNS = ("add", "sub", "mul", "div", "floordiv", "pow", "maximum", "minimum", "eq", "ne",
              "lt", "le", "gt", "ge", "and", "or")
UNARY_FNS = ("exp", "log", "sqrt", "neg", "abs", "reciprocal", "rsqrt", "not", "sin", "cos")
REDUCE_FNS = ("mean", "sum", "amax", "amin")
FLOAT_UNARY = ("exp", "log", "sqrt", "rsqrt", "sin", "cos")
MAX_RANK = 8

_BSR = re.compile(r"^bsr(\d{1,4})x(\d{1,4})$")
_NM = re.compile(r"^nm(\d{1,3}):(\d{1,3})$")


class PlanInvalid(SparseccError, ValueError):
    """Raised with a message naming the op or tensor at fault."""


@dataclass(frozen=True)
class T:
    """A tensor at a concrete batch size."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Ctx:
    """One op as its rule sees it."""

    kind: str
    attrs: dict[str, Any]
    ins: list[T]
    out: T
    out_alias: str | None
    first_input: str
    params: dict[str, np.ndarray]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


Rule = Callable[[Ctx], None]
RULES: dict[str, Rule] = {}


def rule(kind: str, n_in: tuple[int, int] = (1, 1), params: tuple[str, ...] = (),
         optional: tuple[str, ...] = ()):
    """Register the rule of ``kind``: ``n_in`` = (min, max) operands; ``params`` the roles it
    needs, ``optional`` those it may have (any other role is refused)."""

    def deco(fn: Rule) -> Rule:
        def checked(c: Ctx) -> None:
            lo, hi = n_in
            if not lo <= len(c.ins) <= hi:
                want = str(lo) if lo == hi else f"{lo}..{hi}"
                raise PlanInvalid(f"takes {want} operand(s), has {len(c.ins)}")
            missing = [r for r in params if r not in c.params]
            extra = [r for r in c.params if r not in params and r not in optional]
            if missing or extra:
                raise PlanInvalid(f"params must be {list(params)} (+ optional {list(optional)}),"
                                  f" got {sorted(c.params)}")
            if c.out_alias is not None and kind != "reshape":
                raise PlanInvalid("only a reshape may alias its input")
            fn(c)

        RULES[kind] = checked
        return fn

    return deco


# ---- attribute readers (strict: JSON gives bools where ints were, strings for lists...) --
def int_(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise PlanInvalid(f"{what} must be an integer, got {v!r:.60}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise PlanInvalid(f"{what}={v} out of range [{lo}, {hi}]")
    return v


def ints(v: Any, n: int, what: str, lo: int | None = None, hi: int | None = None
         ) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise PlanInvalid(f"{what} must be a list of {n} integers, got {v!r:.60}")
    return tuple(int_(x, what, lo, hi) for x in v)


def num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PlanInvalid(f"{what} must be a number, got {v!r:.60}")
    return float(v)


def flag(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise PlanInvalid(f"{what} must be true or false, got {v!r:.60}")
    return v


def choice(v: Any, options, what: str) -> Any:
    if not isinstance(v, str) or v not in options:
        raise PlanInvalid(f"{what}={v!r:.60} is not one of {list(options)}")
    return v


def same_shape(a: T, b: T, what: str = "output") -> None:
    if a.shape != b.shape:
        raise PlanInvalid(f"{what} shape {b.shape} != {a.shape}")


def is_float(t: T) -> bool:
    return t.dtype in ("float32", "float64")


def need_f32(*ts: T) -> None:
    for t in ts:
        if t.dtype != "float32":
            raise PlanInvalid(f"needs float32 tensors, got {t.dtype}")


def broadcast_to(out: T, *ins: T) -> None:
    """Every operand broadcasts to the output's shape (numpy's rule, into ``out``)."""
    try:
        got = np.broadcast_shapes(out.shape, *(t.shape for t in ins))
    except ValueError:
        got = None
    if got != out.shape or any(len(t.shape) > len(out.shape) for t in ins):
        raise PlanInvalid(f"operands {[t.shape for t in ins]} do not broadcast to "
                          f"{out.shape}")


def castable(src: str, dst: str) -> None:
    if not np.can_cast(np.dtype(src), np.dtype(dst), "same_kind"):
        raise PlanInvalid(f"cannot store {src} into a {dst} tensor")


def activation(c: Ctx) -> str:
    act = choice(c.attr("act", "none"), ACTS, "act")
    num(c.attr("act_a", 0.0), "act_a")
    num(c.attr("act_b", 0.0), "act_b")
    if act != "none" and c.out.dtype == "bool":
        raise PlanInvalid(f"activation {act} on a bool tensor")
    return act


def param(c: Ctx, role: str, shape: tuple[int, ...] | None = None, dtype: str | None = None,
          ndim: int | None = None) -> np.ndarray:
    a = c.params[role]
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise PlanInvalid(f"param {role} has shape {tuple(a.shape)}, needs {tuple(shape)}")
    if ndim is not None and a.ndim != ndim:
        raise PlanInvalid(f"param {role} must be {ndim}-D, has shape {tuple(a.shape)}")
    if dtype is not None and str(a.dtype) != dtype:
        raise PlanInvalid(f"param {role} has dtype {a.dtype}, needs {dtype}")
    return a


# ---- packed sparse weights ----------------------------------------------------------------
def parse_fmt(fmt: Any) -> tuple[str, tuple[int, int]]:
    """("dense"|"csr"|"bsr"|"nm", block): the same grammar as formats.pack, with the bounds
    the kernels need (R, C >= 1; 1 <= N <= M <= 255)."""
    if fmt in ("dense", "csr"):
        return fmt, (1, 1)
    if isinstance(fmt, str):
        if m := _BSR.match(fmt):
            r, cc = int(m.group(1)), int(m.group(2))
            if r >= 1 and cc >= 1:
                return "bsr", (r, cc)
        if m := _NM.match(fmt):
            n, mm = int(m.group(1)), int(m.group(2))
            if 1 <= n <= mm <= 255:
                return "nm", (n, mm)
    raise PlanInvalid(f"fmt={fmt!r:.40} is not dense, csr, bsrRxC or nmN:M")


def _indptr(a: np.ndarray, rows: int, nnz_len: int, what: str) -> None:
    if a.dtype != np.int64 or a.ndim != 1 or a.shape[0] != rows + 1:
        raise PlanInvalid(f"{what} indptr must be int64 of length {rows + 1}, got "
                          f"{a.dtype} {tuple(a.shape)}")
    if a[0] != 0 or a[-1] != nnz_len or (rows and np.any(a[1:] < a[:-1])):
        raise PlanInvalid(f"{what} indptr must rise from 0 to {nnz_len} (the index count)")


def _indices(a: np.ndarray, limit: int, what: str, dtypes=("uint8", "uint16", "uint32")) -> None:
    if str(a.dtype) not in dtypes or a.ndim != 1:
        raise PlanInvalid(f"{what} indices must be 1-D {'/'.join(dtypes)}, got {a.dtype} "
                          f"{tuple(a.shape)}")
    if a.size and int(a.max()) >= limit:
        raise PlanInvalid(f"{what} index {int(a.max())} is past the {limit} columns")


def check_packed(fmt: str, params: dict[str, np.ndarray], rows: int, cols: int) -> None:
    """A sparse weight of ``rows`` x ``cols`` in ``fmt``: what every kernel reading it assumes."""
    kind, (a, b) = parse_fmt(fmt)
    data = params["data"]
    if data.dtype != np.float32 or data.ndim != 1:
        raise PlanInvalid(f"{fmt} data must be 1-D float32, got {data.dtype} {data.shape}")
    ix = params["indices"]
    if kind == "csr":
        _indices(ix, cols, "csr")
        _indptr(params["indptr"], rows, ix.shape[0], "csr")
        if data.shape[0] != ix.shape[0]:
            raise PlanInvalid(f"csr has {data.shape[0]} values for {ix.shape[0]} indices")
    elif kind == "bsr":
        if b > 1 and cols % b:
            raise PlanInvalid(f"{fmt}: {cols} columns do not divide into {b}-wide blocks")
        _indices(ix, -(-cols // b), fmt)
        _indptr(params["indptr"], -(-rows // a), ix.shape[0], fmt)
        if data.shape[0] != ix.shape[0] * a * b:
            raise PlanInvalid(f"{fmt} has {data.shape[0]} values for {ix.shape[0]} blocks")
    else:
        groups = -(-cols // b)
        need = rows * groups * a
        if data.shape[0] != need or ix.shape != (need,) or ix.dtype != np.uint8:
            raise PlanInvalid(f"{fmt} of {rows}x{cols} needs {need} values and as many u8 "
                              f"offsets, got {data.shape[0]} and {ix.dtype} {ix.shape}")
        if need:
            group = np.tile(np.repeat(np.arange(groups, dtype=np.int64), a), rows)
            if int((group * b + ix.astype(np.int64)).max()) >= cols or int(ix.max()) >= b:
                raise PlanInvalid(f"{fmt}: an offset points past its group or the columns")
