"""Hugging Face transformers models: trace with transformers' own fx tracer, then compile.

    cm = sparsecc.hf.compile_hf(model, tokenizer(["..."], return_tensors="pt"), sparsity=0.9)
    out = cm(input_ids, attention_mask)          # dict: last_hidden_state, pooler_output

Needs transformers < 5 (its ``utils.fx.symbolic_trace``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsecc.errors import TraceError


def trace_hf(model: nn.Module, input_names: list[str]):
    try:
        from transformers.utils.fx import symbolic_trace
    except ImportError as exc:
        raise TraceError(type(model).__name__, f"transformers' fx tracer is unavailable ({exc}); "
                                               "install transformers<5") from None
    try:
        return symbolic_trace(model.eval(), input_names=list(input_names))
    except Exception as exc:
        raise TraceError(type(model).__name__, f"transformers.utils.fx could not trace it: "
                                               f"{type(exc).__name__}: {exc}") from None


def compile_hf(model: nn.Module, encoded: Any, sparsity: float | None = None,
               input_names=("input_ids", "attention_mask"), **prune_options: Any):
    """Prune (optionally), trace and compile a transformers model for ``encoded`` inputs."""
    import sparsecc

    if sparsity is not None or prune_options:
        model = sparsecc.prune(model, sparsity, **prune_options)
    gm = trace_hf(model, list(input_names))
    return sparsecc.compile(gm, tuple(encoded[k] for k in input_names))
