"""The error hierarchy every user-facing failure goes through.

Each subclass names what it is about (a node, a layer, a file) in its message, so a user can
act on it without reading a traceback from deep inside torch or numba.
"""

from __future__ import annotations


class SparseccError(Exception):
    """Base of every error sparsecc raises on purpose."""


class TraceError(SparseccError):
    """The model could not be captured as a graph (data-dependent control flow, shape checks...)."""

    def __init__(self, module: str, reason: str):
        self.module = module
        self.reason = reason
        super().__init__(f"cannot trace {module}: {reason}")


class UnsupportedOpError(SparseccError):
    """A node whose operation the runtime has no kernel for."""

    def __init__(self, node: str, what: str, hint: str = ""):
        self.node = node
        self.what = what
        msg = f"unsupported op at node {node!r}: {what}"
        super().__init__(msg + (f" ({hint})" if hint else ""))


class PassError(SparseccError):
    """A pass could not do what it was asked (bad option, impossible target, ...)."""

    def __init__(self, pass_name: str, message: str, key: str | None = None):
        self.pass_name = pass_name
        self.key = key  # the option at fault, when one is
        super().__init__(f"pass {pass_name!r}: {message}")


class RecipeError(SparseccError):
    """A recipe key or value is wrong; the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"recipe key {key!r}: {message}")


class CodegenError(SparseccError):
    """A kernel could not be built for a layer."""

    def __init__(self, layer: str, message: str):
        self.layer = layer
        super().__init__(f"codegen for layer {layer!r}: {message}")


class ArtifactError(SparseccError):
    """A saved artifact is missing, truncated, tampered with, or from a newer sparsecc."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"artifact {path}: {message}")


class InputError(SparseccError):
    """The inputs given to a compiled model do not match what it was compiled for."""

    def __init__(self, name: str, message: str):
        self.input_name = name
        super().__init__(f"input {name!r}: {message}")


class ModelSpecError(SparseccError):
    """A MODEL argument (``pkg.mod:factory`` or ``file.py:factory``) could not be resolved."""

    def __init__(self, spec: str, message: str):
        self.spec = spec
        super().__init__(f"model {spec!r}: {message}")


class MemoryBudgetError(SparseccError):
    """A plan, or one batch size of it, would need more memory than the budget allows
    (``max_memory=`` / ``SPARSECC_MAX_MEMORY``)."""


class RunError(SparseccError):
    """An op failed on the data while running (numpy refused it); names the op."""

    def __init__(self, op: str, message: str):
        self.op = op
        super().__init__(f"op {op!r} failed: {message}")
