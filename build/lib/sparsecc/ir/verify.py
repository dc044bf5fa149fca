"""Structural checks on an ExecutionPlan. Run after lowering and on every loaded artifact."""

from __future__ import annotations

from collections.abc import Collection

from sparsecc.ir.plan import ExecutionPlan

DTYPES = {"float32", "float64", "int64", "int32", "bool", "uint8", "uint16", "uint32"}


class PlanInvalid(ValueError):
    """Raised with a message naming the op or tensor at fault."""


def verify_plan(plan: ExecutionPlan, known_kinds: Collection[str]) -> None:
    defined: set[str] = set()
    for name in plan.inputs:
        _check_tensor(plan, name, "input")
        defined.add(name)
    for name, arr in plan.constants.items():
        spec = plan.tensors.get(name)
        if spec is not None and str(arr.dtype) != spec.dtype:
            raise PlanInvalid(f"constant {name!r} has dtype {arr.dtype}, plan says {spec.dtype}")
        defined.add(name)
    for i, op in enumerate(plan.ops):
        where = f"op #{i} {op.name!r} ({op.kind})"
        if op.kind not in known_kinds:
            raise PlanInvalid(f"{where}: unknown op kind")
        for name in op.inputs:
            if name not in defined:
                raise PlanInvalid(f"{where}: input {name!r} is not defined before use")
        for role, name in op.params.items():
            if name not in plan.constants:
                raise PlanInvalid(f"{where}: param {role}={name!r} is not a constant")
        if op.output in defined:
            raise PlanInvalid(f"{where}: output {op.output!r} is defined twice")
        _check_tensor(plan, op.output, where)
        alias = plan.tensors[op.output].alias_of
        if alias is not None and alias not in defined:
            raise PlanInvalid(f"{where}: aliases {alias!r}, which is not defined yet")
        defined.add(op.output)
    for name in plan.outputs:
        if name not in defined:
            raise PlanInvalid(f"model output {name!r} is never computed")
    if plan.output_kind not in ("single", "tuple", "dict"):
        raise PlanInvalid(f"bad output_kind {plan.output_kind!r}")
    if plan.output_kind == "dict":
        keys = plan.info.get("output_keys")
        if not isinstance(keys, list) or len(keys) != len(plan.outputs):
            raise PlanInvalid("a dict output needs one key per output")
    if plan.output_kind == "single" and len(plan.outputs) != 1:
        raise PlanInvalid("output_kind 'single' needs exactly one output")


def _check_tensor(plan: ExecutionPlan, name: str, where: str) -> None:
    spec = plan.tensors.get(name)
    if spec is None:
        raise PlanInvalid(f"{where}: tensor {name!r} has no spec")
    if spec.dtype not in DTYPES:
        raise PlanInvalid(f"{where}: tensor {name!r} has unsupported dtype {spec.dtype!r}")
