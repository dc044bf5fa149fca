"""The gate every ExecutionPlan passes before anything runs it: after lowering, on every loaded
artifact, and again for each batch size a plan is bound at.

Guarantee: for a plan that passes ``verify_plan`` and ``verify_batch(plan, n)``, binding it at
batch n and running it reads and writes only inside its own buffers (inputs, constants,
activation buffers of the declared sizes, the scratch its ops declare). That holds because

* every value is defined once, before use, with a known dtype, and a constant's spec matches
  its array; only a reshape aliases, and only its own input, of the same size;
* every op's rule (``ir.rules`` / ``ir.kinds``) holds at batch n: operand counts and dtypes,
  the output shape is exactly what the input shapes and attributes imply (conv and pool
  geometry, broadcasting, reductions, attention), parameter shapes fit, and packed sparse
  weights have monotone index pointers, indices inside the weight's columns and exactly as
  many values as the indices imply;
* specialised kernels bake in patterns derived from these verified arrays, and the layout
  pass's features x batch hand-over links a sparse linear producer only to sparse linear
  consumers that expect it.

What it cannot cover: object code an artifact carries is machine code, linked only with
``load(..., native=True)`` for artifacts you trust; the default rebuilds every kernel from the
verified plan. Embedding indices come from the caller and are checked on every call.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from sparsecc.ir import kinds as _kinds  # noqa: F401  (registers the rules)
from sparsecc.ir.plan import ExecutionPlan, Sym, resolve_shape
from sparsecc.ir.rules import MAX_RANK, RULES, Ctx, PlanInvalid, T

DTYPES = {"float32", "float64", "int64", "int32", "bool", "int8", "uint8", "uint16", "uint32"}
MAX_DIM = 1 << 40  # no dimension is larger; sizes are checked against a budget at binding

__all__ = ["PlanInvalid", "verify_plan", "verify_batch", "DTYPES"]


def verify_plan(plan: ExecutionPlan, known_kinds: Collection[str]) -> frozenset[int]:
    """Structure, then every op's rule at the batch sizes a call will most likely use; returns
    those batch sizes (an executor need not verify them again)."""
    _structure(plan, known_kinds)
    batches = frozenset({plan.example_batch} | ({1, 2} if plan.dynamic_batch else set()))
    for n in sorted(batches):
        verify_batch(plan, n)
    return batches


def verify_batch(plan: ExecutionPlan, n: int) -> None:
    """Every op's rule with the shapes resolved at batch ``n`` (the executor calls this before
    it binds a new batch size)."""
    shapes = {name: T(resolve_shape(t.shape, n), t.dtype) for name, t in plan.tensors.items()}
    for i, op in enumerate(plan.ops):
        ctx = Ctx(op.kind, op.attrs, [shapes[x] for x in op.inputs], shapes[op.output],
                  plan.tensors[op.output].alias_of, op.inputs[0] if op.inputs else "",
                  {role: plan.constants[c] for role, c in op.params.items()})
        try:
            RULES[op.kind](ctx)
        except PlanInvalid as exc:
            layer = f", layer {op.layer!r}" if op.layer and op.layer != op.name else ""
            raise PlanInvalid(f"op #{i} {op.name!r} ({op.kind}{layer}) at batch {n}: {exc}"
                              ) from None


def _structure(plan: ExecutionPlan, known_kinds: Collection[str]) -> None:
    if isinstance(plan.example_batch, bool) or not isinstance(plan.example_batch, int) \
            or not 1 <= plan.example_batch <= 1 << 20:
        raise PlanInvalid(f"example_batch {plan.example_batch!r} is not a batch size")
    for spec in plan.tensors.values():
        _check_spec(plan, spec.name)
    defined: set[str] = set()
    if len(set(plan.inputs)) != len(plan.inputs) or not plan.inputs:
        raise PlanInvalid("model inputs must be named once each (and there must be one)")
    for name in plan.inputs:
        if name in plan.constants or plan.tensors.get(name) is None or \
                plan.tensors[name].alias_of is not None:
            raise PlanInvalid(f"input {name!r} must be a plain tensor with a spec")
        defined.add(name)
    for name, arr in plan.constants.items():
        spec = plan.tensors.get(name)
        if spec is None or spec.alias_of is not None or spec.is_batched:
            raise PlanInvalid(f"constant {name!r} needs a plain, batch-free spec")
        if str(arr.dtype) != spec.dtype or tuple(arr.shape) != spec.shape:
            raise PlanInvalid(f"constant {name!r} is {arr.dtype} {tuple(arr.shape)}, its spec "
                              f"says {spec.dtype} {spec.shape}")
        defined.add(name)
    producers: dict[str, int] = {}
    for i, op in enumerate(plan.ops):
        where = f"op #{i} {op.name!r} ({op.kind})"
        if op.kind not in known_kinds or op.kind not in RULES:
            raise PlanInvalid(f"{where}: unknown op kind")
        for name in op.inputs:
            if name not in defined:
                raise PlanInvalid(f"{where}: input {name!r} is not defined before use")
        for role, name in op.params.items():
            if name not in plan.constants:
                raise PlanInvalid(f"{where}: param {role}={name!r} is not a constant")
        if op.output in defined or op.output not in plan.tensors:
            raise PlanInvalid(f"{where}: output {op.output!r} is defined twice or has no spec")
        alias = plan.tensors[op.output].alias_of
        if alias is not None and (not op.inputs or alias != op.inputs[0]):
            raise PlanInvalid(f"{where}: output aliases {alias!r}, not its own input")
        for key in ("est_us", "measured_us"):
            _check_times(where, key, op.attrs.get(key))
        defined.add(op.output)
        producers[op.output] = i
    _outputs(plan, defined)
    _layout(plan, producers)


def _check_spec(plan: ExecutionPlan, name: str) -> None:
    spec = plan.tensors[name]
    if spec.name != name:
        raise PlanInvalid(f"tensor {name!r} is listed under another name ({spec.name!r})")
    if spec.dtype not in DTYPES:
        raise PlanInvalid(f"tensor {name!r} has unsupported dtype {spec.dtype!r}")
    if len(spec.shape) > MAX_RANK or any(
            (d.k if isinstance(d, Sym) else d) > MAX_DIM for d in spec.shape):
        raise PlanInvalid(f"tensor {name!r} has rank > {MAX_RANK} or a dimension > 2^40")
    if any(isinstance(d, Sym) and d.k < 1 for d in spec.shape):
        raise PlanInvalid(f"tensor {name!r} has a batch dimension of 0 x N")
    if spec.alias_of is not None and spec.alias_of not in plan.tensors:
        raise PlanInvalid(f"tensor {name!r} aliases unknown {spec.alias_of!r}")


def _check_times(where: str, key: str, value) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value.values()):
        raise PlanInvalid(f"{where}: attr {key} must map formats to numbers")


def _outputs(plan: ExecutionPlan, defined: set[str]) -> None:
    if not plan.outputs:
        raise PlanInvalid("the model has no outputs")
    for name in plan.outputs:
        if name not in defined:
            raise PlanInvalid(f"model output {name!r} is never computed")
    if plan.output_kind not in ("single", "tuple", "dict"):
        raise PlanInvalid(f"bad output_kind {plan.output_kind!r}")
    if plan.output_kind == "dict":
        keys = plan.info.get("output_keys")
        if not isinstance(keys, list) or len(keys) != len(plan.outputs) or not all(
                isinstance(k, str) for k in keys):
            raise PlanInvalid("a dict output needs one string key per output")
    if plan.output_kind == "single" and len(plan.outputs) != 1:
        raise PlanInvalid("output_kind 'single' needs exactly one output")


def _layout(plan: ExecutionPlan, producers: dict[str, int]) -> None:
    """A features x batch hand-over (attrs out_kn / in_kn) links one sparse linear producer to
    sparse linear consumers that all read it so, as their first operand; nothing else sees it."""
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(plan.ops):
        for k, name in enumerate(op.inputs):
            readers.setdefault(name, []).append(i if k == 0 else -1)
    aliased = {t.alias_of for t in plan.tensors.values() if t.alias_of is not None}
    for i, op in enumerate(plan.ops):
        if op.attrs.get("in_kn"):
            src = producers.get(op.inputs[0]) if op.inputs else None
            if src is None or not plan.ops[src].attrs.get("out_kn"):
                raise PlanInvalid(f"op #{i} {op.name!r}: in_kn without a producer handing over")
        if not op.attrs.get("out_kn"):
            continue
        users = readers.get(op.output, [])
        if (op.output in plan.outputs or op.output in aliased or not users
                or any(u < 0 or not plan.ops[u].attrs.get("in_kn") for u in users)):
            raise PlanInvalid(f"op #{i} {op.name!r}: out_kn, but a reader expects torch's "
                              "layout")
