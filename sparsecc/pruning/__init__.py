"""Pruning: mask mechanics, importance, schedules, the gradual Pruner, sensitivity analysis,
dynamic sparse training (RigL, SET) and lottery tickets.

Exports resolve lazily: the ``prune`` pass imports the mask mechanics from here, and the
Pruner imports the pass.
"""

from importlib import import_module

_EXPORTS = {"CubicSchedule": "schedule", "Pattern": "masks", "parse_pattern": "masks",
            "Pruner": "pruner", "SensitivityTable": "sweep", "sensitivity": "sweep",
            "RigL": "dst", "SET": "dst", "lottery_ticket": "lottery"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"sparsecc.pruning.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sparsecc.pruning' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
