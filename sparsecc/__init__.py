"""sparsecc: compile PyTorch models into sparse CPU executables.

Importing sparsecc does not import torch: ``load`` and the runtime work in a torch-free process.
``compile`` and ``prune`` import torch when called.
"""

from __future__ import annotations

import sys
from typing import Any

from sparsecc.options import quiet_blas_spin

quiet_blas_spin()  # before numpy loads OpenBLAS, when sparsecc is imported first

from sparsecc.api import CompiledModel, Report, load  # noqa: E402
from sparsecc.errors import (  # noqa: E402
    ArtifactError,
    CodegenError,
    InputError,
    ModelSpecError,
    PassError,
    RecipeError,
    SparseccError,
    TraceError,
    UnsupportedOpError,
)

__version__ = "0.1.0"


def compile(model: Any, example_inputs: Any, sparsity: float | None = None,
            recipe: Any = None, quantize: str | None = None,
            calibration: Any = None) -> CompiledModel:
    """Compile an nn.Module for ``example_inputs``; ``sparsity`` prunes first (see ``prune``);
    ``quantize="int8"`` runs the linear layers in int8, calibrated on ``calibration`` (an
    iterable of example inputs)."""
    from sparsecc.compiler import compile as _compile

    return _compile(model, example_inputs, sparsity=sparsity, recipe=recipe,
                    quantize=quantize, calibration=calibration)


def prune(model: Any, sparsity: float | None = None, **options: Any):
    """Return a pruned copy of ``model``; ``model`` is untouched."""
    from sparsecc.compiler import prune as _prune

    return _prune(model, sparsity, **options)


def remove_channels(model: Any, example_inputs: Any, ratio: float = 0.5, **options: Any):
    """Return a smaller copy of ``model`` with ``ratio`` of each channel group removed."""
    from sparsecc.compiler import remove_channels as _remove

    return _remove(model, example_inputs, ratio, **options)


def backend(**options: Any):
    """A torch.compile backend with options bound (``backend="sparsecc"`` works too)."""
    from sparsecc.dynamo import backend as _backend

    return _backend(**options)


def __getattr__(name: str):
    # Torch-side helpers load on first use, so `import sparsecc` stays torch-free.
    if name in ("Pruner", "CubicSchedule", "sensitivity", "RigL", "SET", "lottery_ticket"):
        import sparsecc.pruning as pruning

        return getattr(pruning, name)
    if name == "sweep":
        from sparsecc.sweep import sweep

        return sweep
    raise AttributeError(f"module 'sparsecc' has no attribute {name!r}")


if "torch" in sys.modules:  # torch is already loaded: make backend="sparsecc" known now
    try:
        from sparsecc.dynamo import register as _register

        _register()
    except Exception:  # an old torch without dynamo: torch.compile is simply not offered
        pass

__all__ = ["SET", "ArtifactError", "CodegenError", "CompiledModel", "CubicSchedule",
           "InputError", "ModelSpecError", "PassError", "Pruner", "RecipeError", "Report",
           "RigL", "SparseccError", "TraceError", "UnsupportedOpError", "backend", "compile",
           "load", "lottery_ticket", "prune", "remove_channels", "sensitivity", "sweep"]
