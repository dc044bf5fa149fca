"""The .scc artifact: a zip holding a JSON manifest (the plan) and safetensors weights, and
optionally the LLVM object code of its kernels for one CPU (``native/``).

No pickle anywhere: loading parses JSON and raw tensor bytes, and maps op kinds to a fixed table,
so nothing in an artifact can run code. The optional object code is machine code: it is only
linked when the caller asks (``load(path, native=True)``) *and* its CPU key matches this
machine; otherwise kernels are rebuilt from the plan (or fetched from the local cache). A
SHA-256 over all members catches truncation and tampering by accident, not by an author who
recomputes it: native code is for artifacts you trust. A schema number newer than this
reader's is refused.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from sparsecc.errors import ArtifactError
from sparsecc.ir.plan import SCHEMA_VERSION, ExecutionPlan
from sparsecc.ir.verify import PlanInvalid, verify_plan

MAGIC = "sparsecc-artifact"
_MANIFEST, _WEIGHTS, _CHECKSUM = "manifest.json", "weights.safetensors", "SHA256"
_NATIVE_INDEX = "native/index.json"


@dataclass
class NativeCode:
    """Object code for one CPU: host key, {kernel key: (spec fields, object)} and the native
    library's main object {cache key: object} (``sparsecc.native``)."""

    host: str
    kernels: dict[str, tuple[dict, bytes]] = field(default_factory=dict)
    libraries: dict[str, bytes] = field(default_factory=dict)


def _digest(manifest: bytes, weights: bytes, extra: list[bytes] = ()) -> str:
    h = hashlib.sha256()
    h.update(len(manifest).to_bytes(8, "little"))
    h.update(manifest)
    h.update(weights)
    for blob in extra:  # the native members (none in artifacts without native code)
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
    return h.hexdigest()


def _native_members(native: NativeCode | None) -> list[tuple[str, bytes]]:
    if native is None or not (native.kernels or native.libraries):
        return []
    items = sorted(native.kernels.items())
    libs = sorted(native.libraries.items())
    index = {"host": native.host, "kernels": [
        {"key": key, "spec": spec, "file": f"native/{i}.o",
         "sha256": hashlib.sha256(obj).hexdigest()}
        for i, (key, (spec, obj)) in enumerate(items)], "libraries": [
        {"key": key, "file": f"native/{len(items) + i}.o",
         "sha256": hashlib.sha256(obj).hexdigest()} for i, (key, obj) in enumerate(libs)]}
    members = [(_NATIVE_INDEX, json.dumps(index, indent=1, sort_keys=True).encode())]
    objs = [obj for _, (_, obj) in items] + [obj for _, obj in libs]
    return members + [(f"native/{i}.o", obj) for i, obj in enumerate(objs)]


def save_plan(plan: ExecutionPlan, path: str | Path, native: NativeCode | None = None) -> Path:
    path = Path(path)
    manifest = dict(plan.manifest(), magic=MAGIC)
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    wbytes = st_save({k: np.ascontiguousarray(v) for k, v in plan.constants.items()})
    extra = _native_members(native)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_MANIFEST, mbytes)
        zf.writestr(_WEIGHTS, wbytes)
        for name, blob in extra:
            zf.writestr(name, blob)
        zf.writestr(_CHECKSUM, _digest(mbytes, wbytes, [b for _, b in extra]))
    tmp.replace(path)
    return path


def read_native(path: str | Path) -> NativeCode | None:
    """The artifact's object code (checked against its index), or None if it has none.

    Call after ``load_plan`` (which verified the checksum over every member)."""
    where = str(path)
    with zipfile.ZipFile(path) as zf:
        if _NATIVE_INDEX not in zf.namelist():
            return None
        try:
            index = parse_json(zf.read(_NATIVE_INDEX), where, "native-code index")
            out = NativeCode(str(index["host"]))
            for item in index["kernels"]:
                obj = zf.read(str(item["file"]))
                if hashlib.sha256(obj).hexdigest() != item["sha256"]:
                    raise ArtifactError(where, f"native code {item['file']} does not match "
                                               "its index")
                out.kernels[str(item["key"])] = (dict(item["spec"]), obj)
            for item in index.get("libraries", []):
                obj = zf.read(str(item["file"]))
                if hashlib.sha256(obj).hexdigest() != item["sha256"]:
                    raise ArtifactError(where, f"native code {item['file']} does not match "
                                               "its index")
                out.libraries[str(item["key"])] = obj
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(where, f"bad native-code index: {exc}") from None
    return out


# Zip hygiene: sizes and counts are checked against these before any member is read.
MAX_MEMBERS = 4096
MAX_MANIFEST = 64 << 20
MAX_NATIVE = 1 << 30  # all object code together
MAX_JSON_DEPTH = 64


def _members(zf: zipfile.ZipFile, where: str, file_size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, refused before reading unless each is stored (sparsecc
    never compresses, so nothing can inflate), its declared size fits the file and its cap."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArtifactError(where, f"{len(infos)} members (at most {MAX_MEMBERS})")
    out: dict[str, zipfile.ZipInfo] = {}
    native = 0
    for info in infos:
        name = info.filename
        if name in out:
            raise ArtifactError(where, f"member {name!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise ArtifactError(where, f"member {name!r} is compressed; artifacts store "
                                       "members as they are")
        if info.file_size > file_size:
            raise ArtifactError(where, f"member {name!r} claims {info.file_size} bytes, more "
                                       "than the file holds")
        cap = {_MANIFEST: MAX_MANIFEST, _CHECKSUM: 256, _NATIVE_INDEX: MAX_MANIFEST}.get(name)
        if cap is not None and info.file_size > cap:
            raise ArtifactError(where, f"member {name!r} is {info.file_size} bytes (at most "
                                       f"{cap})")
        if name.startswith("native/"):
            native += info.file_size
        out[name] = info
    if native > MAX_NATIVE:
        raise ArtifactError(where, f"{native} bytes of native code (at most {MAX_NATIVE})")
    return out


def json_depth(data: bytes) -> int:
    """The deepest nesting of brackets in a JSON text, outside strings (linear, no recursion:
    json.loads of 200k nested brackets would raise RecursionError)."""
    import re

    text = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", data)
    arr = np.frombuffer(text, np.uint8)
    step = (np.isin(arr, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(arr, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(step).max(initial=0))


def parse_json(data: bytes, where: str, what: str):
    if json_depth(data) > MAX_JSON_DEPTH:
        raise ArtifactError(where, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(where, f"{what} is not valid JSON ({str(exc)[:200]})") from None


def load_plan(path: str | Path, known_kinds) -> ExecutionPlan:
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ArtifactError(where, "no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _members(zf, where, path.stat().st_size)
            names = set(members)
            missing = {_MANIFEST, _WEIGHTS, _CHECKSUM} - names
            if missing:
                raise ArtifactError(where, f"not a sparsecc artifact (missing {sorted(missing)})")
            mbytes, wbytes = zf.read(_MANIFEST), zf.read(_WEIGHTS)
            stored = zf.read(_CHECKSUM).decode("ascii", "replace").strip()
            extra = []
            if _NATIVE_INDEX in names:
                extra = [zf.read(_NATIVE_INDEX)]
                extra += [zf.read(n) for n in sorted(
                    (n for n in names if n.startswith("native/") and n.endswith(".o")),
                    key=lambda n: int(n[len("native/"):-2]) if n[7:-2].isdigit() else -1)]
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, ValueError,
            NotImplementedError) as exc:
        raise ArtifactError(where, f"unreadable or truncated ({exc})") from None
    if stored != _digest(mbytes, wbytes, extra):
        raise ArtifactError(where, "checksum mismatch: the file was modified or corrupted")
    manifest = parse_json(mbytes, where, "manifest")
    if not isinstance(manifest, dict) or manifest.get("magic") != MAGIC:
        raise ArtifactError(where, "manifest is not a sparsecc plan")
    schema = manifest.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise ArtifactError(where, f"schema {schema!r:.40} is not a schema version")
    if schema > SCHEMA_VERSION:
        raise ArtifactError(where, f"schema {schema!r} is newer than this sparsecc reads "
                                   f"(<= {SCHEMA_VERSION}); upgrade sparsecc")
    try:
        constants = st_load(wbytes)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ArtifactError(where, f"weights are unreadable ({exc})") from None
    try:
        plan = ExecutionPlan.from_manifest(manifest, constants)
        verify_plan(plan, known_kinds)
    except (PlanInvalid, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ArtifactError(where, f"invalid plan: {type(exc).__name__}: {exc}") from None
    return plan
