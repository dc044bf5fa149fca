"""ExecutionPlan: plain dataclasses and numpy arrays. No torch, no fx.

Shapes are symbolic in the batch size N: a dimension is either an int or ``Sym(k)``, meaning
``k * N``. The plan is compiled once and bound to concrete buffers per batch size at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Sym:
    """A dimension equal to ``k * N`` where N is the batch size of the call."""

    k: int

    def __str__(self) -> str:
        return "N" if self.k == 1 else f"{self.k}N"


Dim = Union[int, Sym]  # noqa: UP007 (a runtime alias: must work on Python 3.10)
_SYM_RE = re.compile(r"^(\d*)N$")


def resolve_shape(shape: tuple[Dim, ...], n: int) -> tuple[int, ...]:
    return tuple(d.k * n if isinstance(d, Sym) else d for d in shape)


def shape_to_json(shape: tuple[Dim, ...]) -> list:
    return [str(d) if isinstance(d, Sym) else int(d) for d in shape]


def shape_from_json(items: list) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for d in items:
        if isinstance(d, bool):
            raise ValueError(f"bad dimension {d!r}")
        if isinstance(d, int):
            if d < 0:
                raise ValueError(f"negative dimension {d}")
            out.append(d)
            continue
        m = _SYM_RE.match(d) if isinstance(d, str) and len(d) < 16 else None
        if not m:
            raise ValueError(f"bad dimension {d!r}")
        out.append(Sym(int(m.group(1) or 1)))
    return tuple(out)


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


@dataclass
class TensorSpec:
    """A value in the plan. ``alias_of`` marks a zero-copy view (reshape) of another value."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    alias_of: str | None = None

    @property
    def is_batched(self) -> bool:
        return any(isinstance(d, Sym) for d in self.shape)


@dataclass
class Op:
    """One runtime step: ``inputs`` name activations or constants; ``params`` constants by role."""

    kind: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    layer: str = ""


@dataclass
class ExecutionPlan:
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, TensorSpec]
    ops: list[Op]
    constants: dict[str, np.ndarray]
    output_kind: str = "single"  # "single" | "tuple" | "dict" (keys in info["output_keys"])
    example_batch: int = 1
    dynamic_batch: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def spec(self, name: str) -> TensorSpec:
        return self.tensors[name]

    def add_constant(self, name: str, value: np.ndarray) -> None:
        """``value`` as constant ``name``, with its tensor spec (plain, batch-free)."""
        self.constants[name] = value
        self.tensors[name] = TensorSpec(name, tuple(value.shape), str(value.dtype))

    def users(self) -> dict[str, list[int]]:
        """Map each value name to the indices of the ops that read it."""
        out: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for name in op.inputs:
                out.setdefault(name, []).append(i)
        return out

    def storage_root(self, name: str) -> str:
        while (alias := self.tensors[name].alias_of) is not None:
            name = alias
        return name

    # ---- JSON ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """Everything but the constant arrays, as JSON-able data."""
        return {
            "schema": SCHEMA_VERSION,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "output_kind": self.output_kind,
            "example_batch": self.example_batch,
            "dynamic_batch": self.dynamic_batch,
            "info": self.info,
            "tensors": [
                {"name": t.name, "shape": shape_to_json(t.shape), "dtype": t.dtype,
                 **({"alias_of": t.alias_of} if t.alias_of else {})}
                for t in self.tensors.values()
            ],
            "ops": [
                {"kind": o.kind, "name": o.name, "inputs": o.inputs, "output": o.output,
                 "attrs": o.attrs, "params": o.params, "layer": o.layer}
                for o in self.ops
            ],
        }

    @classmethod
    def from_manifest(cls, m: dict[str, Any], constants: dict[str, np.ndarray]) -> ExecutionPlan:
        """The plan a manifest describes; strict about types (a JSON edit must not turn a list
        into a string that ``str()`` would accept). Raises ValueError naming the field."""
        tensors = {}
        for t in _list(m, "tensors"):
            alias = t.get("alias_of") if isinstance(t, dict) else None
            spec = TensorSpec(_str(t, "name"), shape_from_json(_list(t, "shape")),
                              _str(t, "dtype"), None if alias is None else _str(t, "alias_of"))
            tensors[spec.name] = spec
        ops = []
        for o in _list(m, "ops"):
            attrs, params = _dict(o, "attrs"), _dict(o, "params")
            ops.append(Op(_str(o, "kind"), _str(o, "name"), _strs(o, "inputs"), _str(o, "output"),
                          dict(attrs), {str(k): _str(params, k) for k in params},
                          _str(o, "layer") if "layer" in o else ""))
        dyn = m.get("dynamic_batch")
        if not isinstance(dyn, bool):
            raise ValueError(f"dynamic_batch must be true or false, got {dyn!r:.40}")
        batch = m.get("example_batch")
        if isinstance(batch, bool) or not isinstance(batch, int):
            raise ValueError(f"example_batch must be an integer, got {batch!r:.40}")
        return cls(inputs=_strs(m, "inputs"), outputs=_strs(m, "outputs"),
                   tensors=tensors, ops=ops, constants=constants,
                   output_kind=_str(m, "output_kind"), example_batch=batch,
                   dynamic_batch=dyn, info=dict(_dict(m, "info")) if "info" in m else {})


def _field(d: Any, key: str, kind: type) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"missing field {key!r}")
    v = d[key]
    if not isinstance(v, kind):
        raise ValueError(f"field {key!r} must be a {kind.__name__}, got {type(v).__name__}")
    return v


def _str(d: Any, key: str) -> str:
    return _field(d, key, str)


def _list(d: Any, key: str) -> list:
    return _field(d, key, list)


def _dict(d: Any, key: str) -> dict:
    return _field(d, key, dict)


def _strs(d: Any, key: str) -> list[str]:
    items = _list(d, key)
    if not all(isinstance(x, str) for x in items):
        raise ValueError(f"field {key!r} must be a list of names")
    return list(items)
