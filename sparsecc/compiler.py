"""The pipeline, top to bottom: prune -> capture -> normalize -> lower -> fuse -> formats.

This module is the torch side; everything it returns is torch-free (CompiledModel over a plan).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sparsecc.api import CompiledModel
from sparsecc.errors import SparseccError, TraceError
from sparsecc.frontend import capture
from sparsecc.ir.verify import PlanInvalid
from sparsecc.lowering import lower
from sparsecc.passes import make_options, run_pass
from sparsecc.recipe import load_recipe


def prune(model: nn.Module, sparsity: float | None = None, **options: Any) -> nn.Module:
    """A pruned copy of ``model`` (see ``PruneOptions`` for the keyword options)."""
    _check_module(model)
    opts = make_options("prune", dict(options, sparsity=sparsity))
    return run_pass("prune", model, opts).ir


def remove_channels(model: nn.Module, example_inputs: Any, ratio: float = 0.5,
                    **options: Any) -> nn.Module:
    """A smaller copy of ``model`` with ``ratio`` of each channel group removed.

    The result is a GraphModule with the same output shapes; ``result.channel_report`` gives
    channels, parameters and FLOPs before and after (see ``ChannelOptions`` for the options).
    """
    _check_module(model)
    opts = make_options("channels", dict(options, ratio=ratio, example_inputs=example_inputs))
    return run_pass("channels", model, opts).ir


def compile(model: nn.Module, example_inputs: Any, sparsity: float | None = None,
            recipe: dict | str | Path | None = None, quantize: str | None = None,
            calibration: Any = None) -> CompiledModel:
    """Compile ``model`` for the shapes of ``example_inputs`` (the batch size may vary later).

    ``quantize="int8"`` (or a recipe's ``quantize:`` section) runs the linear layers in int8,
    activation ranges from ``calibration``: an iterable of example inputs (tensors, arrays or
    tuples of them); without it, ``example_inputs`` alone.
    """
    _check_module(model)
    sections = load_recipe(recipe)
    quant_opts = sections.get("quantize")
    if quantize is not None:
        base = {} if quant_opts is None else {
            f.name: getattr(quant_opts, f.name) for f in dataclasses.fields(quant_opts)}
        quant_opts = make_options("quantize", dict(base, mode=quantize))
    prune_opts = sections.get("prune")
    if sparsity is not None:
        # validated exactly as prune() validates it (PassError naming the option)
        base = {} if prune_opts is None else {
            f.name: getattr(prune_opts, f.name) for f in dataclasses.fields(prune_opts)}
        prune_opts = make_options("prune", dict(base, sparsity=sparsity))
    if prune_opts is not None:
        model = run_pass("prune", model, prune_opts).ir
    compile_opts = sections.get("compile", {})
    cap = capture(model, example_inputs, dynamic_batch=compile_opts.get("dynamic_batch", True))
    run_pass("normalize", cap.gm, sections.get("normalize"))
    plan = lower(cap)
    run_pass("fuse", plan, sections.get("fuse"))
    if quant_opts is not None:
        batches = _calibration(calibration if calibration is not None else
                               quant_opts.calibration or [example_inputs])
        run_pass("quantize", plan, dataclasses.replace(quant_opts, calibration=batches))
    run_pass("select-format", plan, sections.get("formats"))
    run_pass("layout", plan, sections.get("layout"))
    try:
        return CompiledModel(plan)  # its executor verifies the plan
    except PlanInvalid as exc:  # a bug in a pass, not in the user's model
        raise SparseccError(f"internal error: the lowered plan is invalid: {exc}") from None


def _calibration(batches: Any) -> list[list[np.ndarray]]:
    """Calibration inputs as lists of float32/int arrays, one list per batch."""
    out = []
    try:
        items = list(batches)
    except TypeError:
        raise SparseccError("calibration must be an iterable of example inputs") from None
    for item in items:
        parts = item if isinstance(item, (tuple, list)) else (item,)
        arrays = []
        for p in parts:
            if hasattr(p, "detach"):
                p = p.detach().cpu().numpy()
            arrays.append(np.ascontiguousarray(p))
        out.append(arrays)
    if not out:
        raise SparseccError("calibration holds no batch")
    return out


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TraceError(type(model).__name__, "expected a torch.nn.Module")
