"""Importing this package registers every runtime op."""

from sparsecc.runtime.ops import attention, elementwise, nn, quant, reduce, shape  # noqa: F401
from sparsecc.runtime.ops.registry import OPS, BindCtx, OpDef, register_op

__all__ = ["OPS", "BindCtx", "OpDef", "register_op"]
