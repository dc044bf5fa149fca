"""Structural mutations of a .scc artifact: the edits an attacker makes before recomputing
the checksum, each labelled with whether it can still describe a valid plan (see
``sparsecc.fuzz``)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAILURES = ("crash", "hang", "raw", "silent")
# Param roles whose absence leaves a valid op of another model (ir.kinds declares them
# optional with nothing in their place); dropping any other role must be refused.
DROPPABLE = {"layer_norm": ("weight", "bias")}
# Attribute edits that can never describe a valid plan (another value of most attributes can:
# a pool's stride, a softmax's axis, a slice's bounds...). Any attribute given a value of
# another JSON type (a list for a number...) is invalid too, except None and the report-only
# ones.
STRUCTURAL_ATTRS = {"conv2d": {"kernel", "groups", "weight_shape", "in_kn", "out_kn"},
                    "linear": {"weight_shape", "in_kn", "out_kn"}}
REPORT_ONLY = {"density", "est_us", "measured_us"}


def _kind_of(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


# ---- the artifact as data -----------------------------------------------------------------
@dataclass
class Parts:
    manifest: dict
    weights: dict[str, np.ndarray]
    other: dict[str, bytes] = field(default_factory=dict)  # native/ members, kept as bytes


def read_parts(path: Path) -> Parts:
    from safetensors.numpy import load as st_load

    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        weights = dict(st_load(zf.read("weights.safetensors")))
        other = {n: zf.read(n) for n in zf.namelist() if n.startswith("native/")}
    return Parts(manifest, weights, other)


def write_parts(parts: Parts, *, checksum: bool = True, manifest_bytes: bytes | None = None,
                extra: list[tuple[str, bytes, int]] = ()) -> bytes:
    """The zip bytes of ``parts`` with a recomputed checksum (the attacker's move)."""
    from safetensors.numpy import save as st_save

    from sparsecc.runtime.artifact import _digest

    mbytes = manifest_bytes if manifest_bytes is not None else json.dumps(
        parts.manifest).encode()
    wbytes = st_save({k: np.ascontiguousarray(v) for k, v in parts.weights.items()})
    native = []
    if "native/index.json" in parts.other:
        native = [parts.other["native/index.json"]] + [
            parts.other[n] for n in sorted((n for n in parts.other if n.endswith(".o")),
                                           key=lambda n: int(n[7:-2]) if n[7:-2].isdigit()
                                           else -1)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", mbytes)
        zf.writestr("weights.safetensors", wbytes)
        for name, blob in parts.other.items():
            zf.writestr(name, blob)
        for name, blob, how in extra:
            zf.writestr(zipfile.ZipInfo(name), blob, compress_type=how)
        digest = _digest(mbytes, wbytes, native) if checksum else "0" * 64
        zf.writestr("SHA256", digest)
    return buf.getvalue()


# ---- mutations ----------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    must_reject: bool  # structurally invalid: accepted + another answer = a silent failure
    data: bytes
    native: bool = False  # load with native=True (index mutations only)


def _pick(rng: np.random.Generator, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def _odd_value(rng, old):
    """A replacement for a JSON value: wrong types, edge numbers, near misses."""
    pool = [None, True, "7", "bogus", 1.5, -1, 0, 1 << 31, 10 ** 12, [], {}, [[[]]]]
    if isinstance(old, bool):
        pool += [not old, 1, "yes"]
    elif isinstance(old, int):
        pool += [old + 1, old - 1, old * 2, -old, 2 ** 63]
    elif isinstance(old, float):
        pool += [old * 2, -old, float("inf"), float("nan"), 0.0]
    elif isinstance(old, list):
        pool += [old[:-1], old + old[-1:], [-5] * len(old), [10 ** 9] * len(old),
                 ["a"] * len(old), [0] * len(old)]
    elif isinstance(old, str):
        pool += ["", old + "x", "csr", "bsr0x1", "nm5:4", "relu", "max", "N", "0N"]
    return _pick(rng, pool)


def mutate_manifest(parts: Parts, rng) -> tuple[str, bool]:
    m = parts.manifest
    ops, tensors = m["ops"], m["tensors"]
    what = _pick(rng, ["dim", "dim", "dtype", "alias", "drop_tensor", "attr", "attr", "attr",
                       "drop_attr", "input", "param", "kind", "op_order", "drop_op", "top"])
    if what == "dim":
        t = _pick(rng, [t for t in tensors if t["shape"]] or tensors)
        if not t["shape"]:
            return "dim-none", False
        i = int(rng.integers(len(t["shape"])))
        old = t["shape"][i]
        t["shape"][i] = _pick(rng, [0, 1, 2, 3, 200_000_000, 10 ** 12, "N", "3N", "0N", -2,
                                    (old + 1) if isinstance(old, int) else "2N"])
        # a model input's other size may still describe a valid model (3x3 stride 2
        # convs give 5 rows from 9 or from 10), run on other inputs: any answer is fair
        return "tensor-dim", t["shape"][i] != old and t["name"] not in m.get("inputs", ())
    if what == "dtype":
        t = _pick(rng, tensors)
        t["dtype"] = _pick(rng, ["float64", "int64", "int32", "bool", "uint8", "float16", "x"])
        return "tensor-dtype", False
    if what == "alias":
        t = _pick(rng, tensors)
        if t.get("alias_of") and rng.random() < 0.5:
            del t["alias_of"]
        else:
            t["alias_of"] = _pick(rng, tensors)["name"]
        return "tensor-alias", True
    if what == "drop_tensor":
        tensors.remove(_pick(rng, tensors))
        return "tensor-drop", True
    op = _pick(rng, ops)
    if what in ("attr", "drop_attr") and op["attrs"]:
        key = _pick(rng, sorted(op["attrs"]))
        old = op["attrs"][key]
        structural = key in STRUCTURAL_ATTRS.get(op["kind"], ())
        if what == "drop_attr":
            del op["attrs"][key]
            return f"attr-drop-{key}", structural and bool(old)
        op["attrs"][key] = new = _odd_value(rng, old)
        retyped = None not in (new, old) and _kind_of(new) != _kind_of(old) \
            and key not in REPORT_ONLY
        return f"attr-{key}", (structural and new != old) or retyped
    if what == "input" and op["inputs"]:
        i = int(rng.integers(len(op["inputs"])))
        op["inputs"][i] = _pick(rng, tensors)["name"]
        return "op-input", False
    if what == "param" and op["params"]:
        role = _pick(rng, sorted(op["params"]))
        if rng.random() < 0.3:
            del op["params"][role]
            return f"param-drop-{role}", role not in DROPPABLE.get(op["kind"], ("bias",))
        op["params"][role] = _pick(rng, sorted(parts.weights))
        return "param-swap", False
    if what == "kind":
        op["kind"] = _pick(rng, ["act", "binary", "reshape", "copy", "linear", "conv2d",
                                 "pool2d", "softmax", "bogus", "sdpa", "matmul", "cat"])
        return "op-kind", False
    if what == "op_order" and len(ops) > 1:
        i, j = rng.choice(len(ops), 2, replace=False)
        ops[i], ops[j] = ops[j], ops[i]
        return "op-order", False
    if what == "drop_op" and len(ops) > 1:
        ops.remove(_pick(rng, ops))
        return "op-drop", True
    key = _pick(rng, ["example_batch", "dynamic_batch", "output_kind", "inputs", "outputs",
                      "schema", "magic", "info"])
    old = m.get(key)
    m[key] = new = _odd_value(rng, old)
    if key in ("magic", "schema"):
        return f"top-{key}", new != old
    # another type is invalid; another value of the same type may describe a valid plan
    # (fewer outputs, another example batch)
    return f"top-{key}", key not in ("dynamic_batch", "info") and type(new) is not type(old)


def mutate_weights(parts: Parts, rng, avoid: set[str] | None = None) -> tuple[str, bool]:
    """One edit of one array; ``avoid``: arrays an earlier edit of a stacked case touched (a
    second edit could undo the first), updated with this one's."""
    w = parts.weights
    avoid = set() if avoid is None else avoid
    name = _pick(rng, [k for k in sorted(w) if k not in avoid] or sorted(w))
    avoid.add(name)
    arr = w[name].reshape(-1)
    role = name.rsplit(".", 1)[-1]
    what = _pick(rng, ["index", "index", "truncate", "extend", "dtype", "flatten", "values",
                       "drop", "inrange"])
    if what in ("index", "inrange") and role in ("indptr", "indices") and arr.size:
        arr = arr.copy()
        i = int(rng.integers(arr.size))
        if what == "inrange":
            if role == "indptr":  # move one row boundary inside the range: still monotone?
                j = int(rng.integers(1, arr.size)) if arr.size > 1 else 0
                arr[j] = int(rng.integers(arr[j - 1] if j else 0, arr[-1] + 1))
                w[name] = arr
                return "indptr-moved", bool(np.any(np.diff(arr) < 0))
            arr[i] = arr[int(rng.integers(arr.size))]
            w[name] = arr.reshape(w[name].shape)
            return "index-inrange", False
        info = np.iinfo(arr.dtype)
        if role == "indptr":  # past the end, negative, or one more than the index count
            j = _pick(rng, [i, arr.size - 1])
            before = int(arr[j])
            arr[j] = _pick(rng, [10 ** 9, -1, -(10 ** 9), int(arr[-1]) + 1])
            bad = int(arr[j]) != before
        else:  # the seeds' layers have < 60000 columns: those values are out of range
            value = _pick(rng, [info.max, min(60000, info.max), int(arr.max()) + 1,
                                min(65535, info.max)])
            arr[i] = value
            bad = value >= 60000
        w[name] = arr.reshape(w[name].shape)
        return f"{role}-out-of-range", bad
    if what == "truncate" and arr.size:
        w[name] = arr[:-int(rng.integers(1, arr.size + 1))].copy()
        return f"{role}-truncate", True
    if what == "extend":
        w[name] = np.concatenate([arr, arr[:1] if arr.size else np.zeros(1, arr.dtype)])
        return f"{role}-extend", True
    if what == "dtype":
        new = _pick(rng, [np.float64, np.int32, np.float16, np.uint8, np.int64])
        w[name] = w[name].astype(new)
        return f"{role}-dtype", w[name].dtype != arr.dtype
    if what == "flatten" and w[name].ndim > 1:
        w[name] = arr.copy()
        return f"{role}-flatten", True
    if what == "drop":
        del w[name]
        return f"{role}-drop", True
    floats = [k for k in sorted(w) if w[k].dtype.kind == "f" and w[k].size and k not in avoid]
    if not floats:
        return "none", False
    name = _pick(rng, floats)
    avoid.add(name)
    arr = w[name].reshape(-1).copy()
    arr[int(rng.integers(arr.size))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e30, 0.0])
    w[name] = arr.reshape(w[name].shape)
    return "values", False


_BOMBS: dict[str, bytes] = {}


def _bomb_zip(parts: Parts, member: str) -> bytes:
    """An artifact whose ``member`` is 1 GiB of deflated zeros (about 1 MB in the file): the
    loader must refuse it from the directory, never inflate it. The bomb is built once per
    member name (streamed, a few seconds) and the real members are appended to a copy."""
    if member not in _BOMBS:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
                zf.open(member, "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
        _BOMBS[member] = buf.getvalue()
    whole = zipfile.ZipFile(io.BytesIO(write_parts(parts)))
    out = io.BytesIO(_BOMBS[member])
    with zipfile.ZipFile(out, "a") as zf:
        for info in whole.infolist():
            if info.filename != member:
                zf.writestr(info.filename, whole.read(info.filename))
    return out.getvalue()


def mutate_zip(parts: Parts, rng) -> tuple[str, bool, bytes]:
    what = _pick(rng, ["bomb", "deep", "dup", "extra", "stale", "truncate", "drop", "junk"])
    if what == "bomb":
        member = _pick(rng, ["manifest.json", "weights.safetensors", "native/0.o"])
        return f"zip-bomb-{member}", True, _bomb_zip(parts, member)
    if what == "deep":
        depth = int(_pick(rng, [100, 200_000]))
        deep = b'{"magic": "sparsecc-artifact", "schema": 1, "x": ' + b"[" * depth + \
            b"]" * depth + b"}"
        return "json-deep", True, write_parts(parts, manifest_bytes=deep)
    if what == "dup":
        return "zip-dup", True, write_parts(parts, extra=[("manifest.json", b"{}",
                                                           zipfile.ZIP_STORED)])
    if what == "extra":
        return "zip-extra", False, write_parts(parts, extra=[("notes.txt", b"hi",
                                                              zipfile.ZIP_STORED)])
    if what == "stale":
        return "checksum-stale", True, write_parts(parts, checksum=False)
    data = write_parts(parts)
    if what == "truncate":
        return "zip-truncate", True, data[:int(rng.integers(1, len(data)))]
    if what == "drop":
        bad = write_parts(Parts(parts.manifest, {}, parts.other))
        return "weights-empty", True, bad
    junk = _pick(rng, [b"", b"\xff\xfe", b"[1, 2", b"null", b'"x"', b"1e999999"])
    return "manifest-junk", True, write_parts(parts, manifest_bytes=junk)


def make_case(seed_path: Path, rng) -> Case:
    parts = read_parts(seed_path)
    r = rng.random()
    if r < 0.15:  # two or three edits at once
        names, bad, touched = [], False, set()
        for _ in range(int(rng.integers(2, 4))):
            try:
                if rng.random() < 0.5:
                    name, b = mutate_manifest(parts, rng)
                else:
                    name, b = mutate_weights(parts, rng, touched)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                break  # an earlier edit left nothing for this one to work on
            names.append(name)
            bad = bad or b
        return Case("+".join(names) or "none", bad, write_parts(parts))
    if r < 0.55:
        name, bad = mutate_manifest(parts, rng)
    elif r < 0.85:
        name, bad = mutate_weights(parts, rng)
    elif r < 0.9 and "native/index.json" in parts.other:
        index = json.loads(parts.other["native/index.json"])
        if index.get("kernels"):
            item = _pick(rng, index["kernels"])
            key = _pick(rng, sorted(item))
            item[key] = _odd_value(rng, item[key])
        parts.other["native/index.json"] = json.dumps(index).encode()
        return Case("native-index", False, write_parts(parts), native=True)
    else:
        name, bad, data = mutate_zip(parts, rng)
        return Case(name, bad, data)
    return Case(name, bad, write_parts(parts))


