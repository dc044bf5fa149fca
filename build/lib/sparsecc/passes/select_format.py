"""Choose a storage format per weight-bearing op (dense or CSR) from its density.

Requires: a plan whose linear/conv2d ops hold a dense ``weight`` param. Guarantees: every such op
has ``attrs['density']``; ops at or below ``csr_max_density`` (and not grouped) hold CSR params
instead, with ``attrs['weight_shape']`` to unpack them. Weights are never changed. Idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsecc.formats.csr import dense_to_csr, density
from sparsecc.ir.plan import ExecutionPlan, TensorSpec
from sparsecc.passes.registry import PassResult, register_pass

WEIGHTED = ("linear", "conv2d")


@dataclass(frozen=True)
class SelectFormatOptions:
    # With the spine's simple CSR kernels, CSR wins over BLAS only well below half density.
    csr_max_density: float = 0.35

    def __post_init__(self):
        if not 0.0 <= self.csr_max_density <= 1.0:
            raise ValueError(f"csr_max_density={self.csr_max_density} is not in [0, 1]")


@register_pass("select-format", options=SelectFormatOptions, level="plan")
def select_format(plan: ExecutionPlan, opts: SelectFormatOptions) -> PassResult:
    """Pick dense or CSR per linear/conv2d op; writes params and attrs['fmt'/'density']."""
    changed = False
    for op in plan.ops:
        if op.kind not in WEIGHTED or op.attrs.get("fmt") != "dense":
            continue
        w = plan.constants[op.params["weight"]]
        op.attrs["density"] = round(density(w), 6)
        if int(op.attrs.get("groups", 1)) != 1 or op.attrs["density"] > opts.csr_max_density:
            continue
        _to_csr(plan, op, w)
        changed = True
    if changed:
        _drop_unused_constants(plan)
    return PassResult(plan, changed)


def _to_csr(plan: ExecutionPlan, op, w: np.ndarray) -> None:
    base = op.params.pop("weight")
    for role, arr in zip(("indptr", "indices", "data"), dense_to_csr(w.reshape(w.shape[0], -1))):
        name = f"{base}.{role}"
        plan.constants[name] = arr
        plan.tensors[name] = TensorSpec(name, tuple(arr.shape), str(arr.dtype))
        op.params[role] = name
    op.attrs["fmt"] = "csr"
    op.attrs["weight_shape"] = [int(d) for d in w.shape]


def _drop_unused_constants(plan: ExecutionPlan) -> None:
    used = {n for op in plan.ops for n in list(op.inputs) + list(op.params.values())}
    used |= set(plan.outputs)
    for name in list(plan.constants):
        if name not in used:
            del plan.constants[name]
            plan.tensors.pop(name, None)
