"""Pass registry: passes are functions ``(ir, options) -> PassResult`` registered by name.

A pass works at one level: ``module`` (nn.Module -> nn.Module, e.g. pruning), ``fx`` (an annotated
GraphModule) or ``plan`` (an ExecutionPlan). Options are a frozen dataclass per pass, so a recipe
section and the CLI name the same fields.
"""

from __future__ import annotations

import dataclasses
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
        raise PassError(pass_name, f"unknown option(s) {unknown}; known: {sorted(fields)}")
    try:
        return info.options(**values)
    except (TypeError, ValueError) as exc:
        raise PassError(pass_name, str(exc)) from None


def run_pass(pass_name: str, ir: Any, options: Any = None) -> PassResult:
    info = PASSES[pass_name]
    opts = options if isinstance(options, info.options) else make_options(pass_name, options)
    return info.fn(ir, opts)
