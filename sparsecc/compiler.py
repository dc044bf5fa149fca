"""The pipeline, top to bottom: prune -> capture -> normalize -> lower -> fuse -> formats.

This module is the torch side; everything it returns is torch-free (CompiledModel over a plan).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
            recipe: dict | str | Path | None = None) -> CompiledModel:
    """Compile ``model`` for the shapes of ``example_inputs`` (the batch size may vary later)."""
    _check_module(model)
    sections = load_recipe(recipe)
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
    run_pass("select-format", plan, sections.get("formats"))
    run_pass("layout", plan, sections.get("layout"))
    try:
        return CompiledModel(plan)  # its executor verifies the plan
    except PlanInvalid as exc:  # a bug in a pass, not in the user's model
        raise SparseccError(f"internal error: the lowered plan is invalid: {exc}") from None


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TraceError(type(model).__name__, "expected a torch.nn.Module")
