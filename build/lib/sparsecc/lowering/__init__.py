"""fx GraphModule (annotated by the frontend) -> ExecutionPlan."""

from sparsecc.lowering.core import lower

__all__ = ["lower"]
