"""The runtime's op table: kind -> how to bind it to buffers, its scratch needs and its cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsecc.ir.plan import Op

Shape = tuple[int, ...]
Step = Callable[[], None]


@dataclass
class BindCtx:
    """What an op sees when it is bound to concrete buffers for one batch size."""

    op: Op
    ins: list[np.ndarray]
    out: np.ndarray
    params: dict[str, np.ndarray]
    scratch: list[np.ndarray] = field(default_factory=list)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.op.attrs.get(key, default)


ScratchFn = Callable[[Op, list[Shape], Shape], list[tuple[Shape, str]]]
FlopsFn = Callable[[Op, list[Shape], Shape, dict[str, np.ndarray]], float]


@dataclass(frozen=True)
class OpDef:
    kind: str
    bind: Callable[[BindCtx], Step | None]
    scratch: ScratchFn | None = None
    flops: FlopsFn | None = None


OPS: dict[str, OpDef] = {}


def register_op(kind: str, *, scratch: ScratchFn | None = None, flops: FlopsFn | None = None):
    def deco(fn: Callable[[BindCtx], Step | None]):
        assert kind not in OPS, f"op kind {kind} registered twice"
        OPS[kind] = OpDef(kind, fn, scratch, flops)
        return fn

    return deco


def bind_alone(op: Op, ins: list[np.ndarray], out: np.ndarray,
               params: dict[str, np.ndarray]) -> Step | None:
    """Bind one op outside an executor, its scratch allocated here (autotune, benchmarks)."""
    fn = OPS[op.kind].scratch
    need = fn(op, [tuple(x.shape) for x in ins], tuple(out.shape)) if fn else []
    scratch = [np.empty(shape, dtype) for shape, dtype in need]
    return OPS[op.kind].bind(BindCtx(op, ins, out, params, scratch))


def numel(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def elementwise_flops(op: Op, ins: list[Shape], out: Shape, params: dict) -> float:
    return float(numel(out))
