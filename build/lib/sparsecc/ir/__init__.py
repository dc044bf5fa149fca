"""Low-level IR: the ExecutionPlan, the only bridge between the torch side and the runtime."""

from sparsecc.ir.plan import Dim, ExecutionPlan, Op, Sym, TensorSpec, resolve_shape

__all__ = ["Dim", "ExecutionPlan", "Op", "Sym", "TensorSpec", "resolve_shape"]
