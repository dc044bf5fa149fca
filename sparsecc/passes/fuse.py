"""Plan-level clean-ups: fold an activation into the linear/conv/float arithmetic producing it;
drop dead ops.

Requires: a verified ExecutionPlan. Guarantees: the same outputs; fewer ops and buffers. Idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsecc.ir.plan import ExecutionPlan
from sparsecc.passes.registry import PassResult, register_pass

FUSABLE_PRODUCERS = ("linear", "conv2d", "binary")
_FUSABLE_BINARY = ("add", "sub", "mul", "div")  # float arithmetic (a residual add + ReLU)


@dataclass(frozen=True)
class FuseOptions:
    epilogues: bool = True


@register_pass("fuse", options=FuseOptions, level="plan")
def fuse(plan: ExecutionPlan, opts: FuseOptions) -> PassResult:
    """Fuse act ops into their producer's epilogue, then eliminate dead ops and constants."""
    fused = fuse_epilogues(plan) if opts.epilogues else 0
    dead = eliminate_dead(plan)
    notes = [f"fused {fused} activation(s)"] if fused else []
    return PassResult(plan, bool(fused or dead), notes)


def fuse_epilogues(plan: ExecutionPlan) -> int:
    count = 0
    users = plan.users()
    outputs = set(plan.outputs)
    drop: set[int] = set()
    for op in plan.ops:
        if op.kind not in FUSABLE_PRODUCERS or op.attrs.get("act", "none") != "none":
            continue
        if op.kind == "binary" and (op.attrs.get("fn") not in _FUSABLE_BINARY
                                    or plan.tensors[op.output].dtype != "float32"):
            continue
        readers = users.get(op.output, [])
        if len(readers) != 1 or op.output in outputs:
            continue
        act = plan.ops[readers[0]]
        if act.kind != "act" or readers[0] in drop:
            continue
        for key in ("act", "act_a", "act_b"):
            op.attrs[key] = act.attrs.get(key, 0.0 if key != "act" else "none")
        del plan.tensors[op.output]
        op.output = act.output
        drop.add(readers[0])
        count += 1
    plan.ops = [op for i, op in enumerate(plan.ops) if i not in drop]
    return count


def eliminate_dead(plan: ExecutionPlan) -> int:
    live = set(plan.outputs)
    keep = []
    for op in reversed(plan.ops):
        if op.output in live:
            keep.append(op)
            live.update(op.inputs)
            live.update(op.params.values())
            alias = plan.tensors[op.output].alias_of
            if alias:
                live.add(alias)
    removed = len(plan.ops) - len(keep)
    plan.ops = list(reversed(keep))
    for name in list(plan.constants):
        if name not in live:
            del plan.constants[name]
    referenced = live | set(plan.inputs)
    for name in list(plan.tensors):
        if name not in referenced:
            del plan.tensors[name]
    return removed
