"""Passes, one module each, registered by name (see ``registry``)."""

from sparsecc.passes import channels, fuse, layout, normalize, prune, quantize, select_format  # noqa: F401
from sparsecc.passes.registry import PASSES, PassResult, make_options, register_pass, run_pass

__all__ = ["PASSES", "PassResult", "make_options", "register_pass", "run_pass"]
