"""Recipes: a dict or YAML file configuring the pipeline, one section per pass.

```yaml
prune: {sparsity: 0.9, scope: global}
formats: {autotune: true, backend: llvm}   # also csr_max_density, batch, force, blocked
layout: {enabled: true}
fuse: {epilogues: true}
compile: {dynamic_batch: true}
```
A wrong key or value raises ``RecipeError`` naming it (``prune.sparsity``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecc.errors import PassError, RecipeError

SECTIONS = {"prune": "prune", "formats": "select-format", "layout": "layout", "fuse": "fuse",
            "normalize": "normalize", "quantize": "quantize", "compile": None,
            "schedule": None}
COMPILE_KEYS = {"dynamic_batch": bool}


def load_recipe(recipe: dict | str | Path | None) -> dict[str, Any]:
    """Validated recipe: {section: options dataclass (or dict for 'compile')}."""
    if recipe is None:
        return {}
    if isinstance(recipe, (str, Path)):
        recipe = _read_yaml(Path(recipe))
    if not isinstance(recipe, dict):
        raise RecipeError("<root>", "a recipe is a mapping of sections, got "
                                    f"{type(recipe).__name__}")
    from sparsecc.passes import make_options

    out: dict[str, Any] = {}
    for section, values in recipe.items():
        if section not in SECTIONS:
            raise RecipeError(str(section), f"unknown section; known: {sorted(SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise RecipeError(section, "a section is a mapping of options")
        if section == "schedule":
            out[section] = _schedule(values)
            continue
        if section == "compile":
            out[section] = _compile_section(values)
            continue
        try:
            out[section] = make_options(SECTIONS[section], values)
        except PassError as exc:
            raise RecipeError(f"{section}.{exc.key}" if exc.key else section, str(exc)) from None
    return out


def _compile_section(values: dict) -> dict:
    for key, value in values.items():
        if key not in COMPILE_KEYS:
            raise RecipeError(f"compile.{key}", f"unknown option; known: {sorted(COMPILE_KEYS)}")
        if not isinstance(value, COMPILE_KEYS[key]):
            raise RecipeError(f"compile.{key}", f"{value!r:.60}: expected true or false")
    return dict(values)


def _schedule(values: dict):
    import dataclasses
    import typing

    from sparsecc.passes.registry import type_problem
    from sparsecc.pruning.schedule import CubicSchedule

    known = {f.name for f in dataclasses.fields(CubicSchedule)}
    bad = sorted(set(values) - known)
    if bad:
        raise RecipeError(f"schedule.{bad[0]}", f"unknown option; known: {sorted(known)}")
    hints = typing.get_type_hints(CubicSchedule)
    for key, value in values.items():
        problem = type_problem(value, hints[key])
        if problem:
            raise RecipeError(f"schedule.{key}", f"{value!r:.60}: {problem}")
    try:
        return CubicSchedule(**values)
    except (TypeError, ValueError) as exc:
        key = _offending_key(str(exc), values)
        raise RecipeError(f"schedule.{key}" if key else "schedule", str(exc)) from None


def _offending_key(message: str, values: dict) -> str | None:
    for key in values:
        if f"{key!r}" in message or f"{key}=" in message:
            return str(key)
    return None


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise RecipeError(str(path), "recipe file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(str(path), f"not valid YAML: {exc}") from None
