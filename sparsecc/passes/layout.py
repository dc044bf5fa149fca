"""Activation layout planning: which tensors travel as features x batch (KN) between layers.

The sparse linear kernels work on features x batch (each nonzero reads a contiguous run of the
batch); torch's layout is batch x features. Without this pass every sparse linear transposes its
input in and its output back. With it, a tensor whose producer and every consumer are sparse
linears stays features x batch in its buffer, so a chain of sparse layers transposes once at
each end.

Requires: select-format has run (``attrs['fmt']`` on linear ops). Guarantees: the same outputs;
``attrs['out_kn']`` on producers and ``attrs['in_kn']`` on consumers of every handed-over
tensor (the buffer keeps its shape and size: only the meaning of its memory changes). Plan
outputs and tensors read by any other op keep torch's layout. Idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsecc.ir.plan import ExecutionPlan, Op
from sparsecc.passes.registry import PassResult, register_pass


@dataclass(frozen=True)
class LayoutOptions:
    enabled: bool = True


def _sparse_linear(op: Op) -> bool:
    return op.kind == "linear" and op.attrs.get("fmt", "dense") != "dense"


@register_pass("layout", options=LayoutOptions, level="plan")
def plan_layout(plan: ExecutionPlan, opts: LayoutOptions) -> PassResult:
    """Mark sparse-linear to sparse-linear handoffs as features x batch."""
    if not opts.enabled:
        return PassResult(plan, False)
    users = plan.users()
    outputs = set(plan.outputs)
    aliased = {t.alias_of for t in plan.tensors.values() if t.alias_of is not None}
    handed = 0
    for op in plan.ops:
        if not _sparse_linear(op) or op.attrs.get("out_kn"):
            continue
        out = op.output
        readers = [plan.ops[i] for i in users.get(out, [])]
        if (not readers or out in outputs or out in aliased
                or plan.tensors[out].alias_of is not None):
            continue
        if all(_sparse_linear(r) and r.inputs[0] == out and out not in r.inputs[1:]
               for r in readers):
            op.attrs["out_kn"] = True
            for r in readers:
                r.attrs["in_kn"] = True
            handed += 1
    notes = [f"{handed} tensor(s) handed over as features x batch"] if handed else []
    return PassResult(plan, bool(handed), notes)
