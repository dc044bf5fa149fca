"""Runs an ExecutionPlan with numpy + numba. Never imports torch or fx."""

from sparsecc.runtime.artifact import load_plan, save_plan
from sparsecc.runtime.executor import Executor

__all__ = ["Executor", "load_plan", "save_plan"]
