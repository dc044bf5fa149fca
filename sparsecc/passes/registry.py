"""Pass registry: passes are functions ``(ir, options) -> PassResult`` registered by name.

A pass works at one level: ``module`` (nn.Module -> nn.Module, e.g. pruning), ``fx`` (an annotated
GraphModule) or ``plan`` (an ExecutionPlan). Options are a frozen dataclass per pass, so a recipe
section and the CLI name the same fields.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparsecc.errors import PassError


@dataclass
class PassResult:
    ir: Any
    changed: bool
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable[[Any, Any], PassResult]
    options: type
    level: str
    doc: str


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, *, options: type, level: str):
    assert level in ("module", "fx", "plan"), level

    def deco(fn):
        assert name not in PASSES, f"pass {name} registered twice"
        PASSES[name] = PassInfo(name, fn, options, level, (fn.__doc__ or "").strip())
        return fn

    return deco


def make_options(pass_name: str, values: dict[str, Any] | None):
    """Build a pass's options from a dict, naming the offending key on error."""
    info = PASSES[pass_name]
    fields = {f.name: f for f in dataclasses.fields(info.options)}
    values = dict(values or {})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PassError(pass_name, f"unknown option(s) {unknown}; known: {sorted(fields)}",
                        key=unknown[0])
    hints = typing.get_type_hints(info.options)
    for key, value in values.items():
        problem = type_problem(value, hints[key])
        if problem:
            raise PassError(pass_name, f"{key}={value!r:.60}: {problem}", key=key)
    try:
        return info.options(**values)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        key = next((k for k in values if msg.startswith(f"{k}=") or f" {k}=" in msg), None)
        raise PassError(pass_name, msg, key=key) from None


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint``, or None. Strict where JSON/YAML
    would blur: a bool is not an int, "yes" is not a bool, 1e30 is not an int."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or origin in (collections.abc.Callable, collections.abc.Iterable):
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else "expected " + " or ".join(
            _name(a) for a in args)
    if hint is type(None):
        return None if value is None else "expected null"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:  # numbers.Integral: numpy's integers too
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            else "expected an integer"
    if hint is float:
        return None if isinstance(value, numbers.Real) and not isinstance(value, bool) else \
            "expected a number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or any(type_problem(v, args[0]) for v in items):
            return f"expected a list of {_name(args[0])}"
        return None
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping) or any(
                type_problem(k, args[0]) or type_problem(v, args[1]) for k, v in value.items()):
            return f"expected a mapping of {_name(args[0])} to {_name(args[1])}"
        return None
    return None


def _name(hint: Any) -> str:
    return {bool: "true/false", int: "integer", float: "number", str: "string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def run_pass(pass_name: str, ir: Any, options: Any = None) -> PassResult:
    info = PASSES[pass_name]
    opts = options if isinstance(options, info.options) else make_options(pass_name, options)
    return info.fn(ir, opts)
