"""The .scc artifact: a zip holding a JSON manifest (the plan) and safetensors weights.

No pickle anywhere: loading parses JSON and raw tensor bytes, and maps op kinds to a fixed table,
so nothing in an artifact can run code. A SHA-256 over both members catches truncation and
tampering; a schema number newer than this reader's is refused.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from sparsecc.errors import ArtifactError
from sparsecc.ir.plan import SCHEMA_VERSION, ExecutionPlan
from sparsecc.ir.verify import PlanInvalid, verify_plan

MAGIC = "sparsecc-artifact"
_MANIFEST, _WEIGHTS, _CHECKSUM = "manifest.json", "weights.safetensors", "SHA256"


def _digest(manifest: bytes, weights: bytes) -> str:
    h = hashlib.sha256()
    h.update(len(manifest).to_bytes(8, "little"))
    h.update(manifest)
    h.update(weights)
    return h.hexdigest()


def save_plan(plan: ExecutionPlan, path: str | Path) -> Path:
    path = Path(path)
    manifest = dict(plan.manifest(), magic=MAGIC)
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    wbytes = st_save({k: np.ascontiguousarray(v) for k, v in plan.constants.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_MANIFEST, mbytes)
        zf.writestr(_WEIGHTS, wbytes)
        zf.writestr(_CHECKSUM, _digest(mbytes, wbytes))
    tmp.replace(path)
    return path


def load_plan(path: str | Path, known_kinds) -> ExecutionPlan:
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ArtifactError(where, "no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = {_MANIFEST, _WEIGHTS, _CHECKSUM} - names
            if missing:
                raise ArtifactError(where, f"not a sparsecc artifact (missing {sorted(missing)})")
            mbytes, wbytes = zf.read(_MANIFEST), zf.read(_WEIGHTS)
            stored = zf.read(_CHECKSUM).decode("ascii", "replace").strip()
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise ArtifactError(where, f"unreadable or truncated ({exc})") from None
    if stored != _digest(mbytes, wbytes):
        raise ArtifactError(where, "checksum mismatch: the file was modified or corrupted")
    try:
        manifest = json.loads(mbytes)
    except ValueError as exc:
        raise ArtifactError(where, f"manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("magic") != MAGIC:
        raise ArtifactError(where, "manifest is not a sparsecc plan")
    schema = manifest.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ArtifactError(where, f"schema {schema!r} is newer than this sparsecc reads "
                                   f"(<= {SCHEMA_VERSION}); upgrade sparsecc")
    try:
        constants = st_load(wbytes)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ArtifactError(where, f"weights are unreadable ({exc})") from None
    try:
        plan = ExecutionPlan.from_manifest(manifest, constants)
        verify_plan(plan, known_kinds)
    except (PlanInvalid, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(where, f"invalid plan: {type(exc).__name__}: {exc}") from None
    return plan
