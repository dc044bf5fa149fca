"""A structural fuzzer for .scc artifacts: the attacker who edits an artifact and recomputes
its checksum.

Each case takes a real artifact, applies one structural mutation (a shape, a dtype, an alias,
an attribute, an index array, a value count, a zip member...) and rewrites the checksum, then a
worker process loads and runs it at two batch sizes. Workers are separate processes, so a crash
is seen as a crash (a signal), a hang as a timeout (the worker is killed and replaced); the
harness knows which case was in flight. Outcomes:

* ``rejected`` / ``run-error`` — a SparseccError at load / at the call (good);
* ``same`` — accepted, same answer as the unmutated artifact (the edit did not matter);
* ``changed`` — accepted with another answer after an edit that describes another valid model
  (a value, an activation, an in-range index);
* failures: ``crash``, ``hang``, ``raw`` (a Python exception that is not a SparseccError) and
  ``silent`` (a structurally invalid edit accepted with a different answer).

``python -m sparsecc.fuzz --cases 10000`` runs a campaign (``bench/fuzz_artifacts.py`` wraps
it); ``tests/runtime/test_fuzz.py`` runs a few hundred cases in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAILURES = ("crash", "hang", "raw", "silent")
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
        return "tensor-dim", t["shape"][i] != old
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
            return f"param-drop-{role}", role != "bias"  # no bias: another valid model
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


# ---- the worker (a separate process: a crash there is a crash seen, not suffered) ---------
def _inputs(rt, batch: int, seed: int) -> list[np.ndarray]:
    from sparsecc.ir.plan import resolve_shape

    rng = np.random.default_rng(seed)
    out = []
    for name in rt.plan.inputs:
        spec = rt.plan.tensors[name]
        shape = resolve_shape(spec.shape, batch)
        if spec.dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, 50, shape).astype(spec.dtype))
    return out


def _run_one(req: dict) -> dict:
    import resource
    import traceback

    import sparsecc

    res: dict = {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        try:
            extra = {"max_memory": req["max_memory"]} if req.get("max_memory") else {}
            try:
                rt = sparsecc.load(req["path"], native=req.get("native", False), **extra)
            finally:  # how far loading alone raised the high-water mark (0: not at all)
                load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                res["load_growth_mb"] = (load_peak - peak) / 1024
        except sparsecc.SparseccError as exc:
            res.update(status="rejected", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            return res
        outs = {}
        for batch in req["batches"]:
            try:
                got = rt(*_inputs(rt, batch, req["seed"]))
            except sparsecc.SparseccError as exc:
                res.update(status="run-error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
                return res
            got = got if isinstance(got, tuple) else tuple(got.values()) if isinstance(
                got, dict) else (got,)
            for k, g in enumerate(got):
                outs[f"b{batch}_{k}"] = np.asarray(g)
        np.savez(req["out"], **outs)
        res["status"] = "ok"
        return res
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        res.update(status="raw", error="".join(
            traceback.format_exception_only(type(exc), exc)).strip()[-600:])
        return res
    finally:
        res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_main() -> None:
    """Read one JSON request per line from stdin, answer one JSON line each."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("selftest") == "abort":  # the harness's own tests: a crash and a hang
            os.abort()
        if req.get("selftest") == "hang":
            time.sleep(3600)
        res = _run_one(req)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sparsecc.fuzz", "--worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
                bufsize=1)
        return self.proc

    def ask(self, req: dict, timeout: float) -> dict:
        """The worker's answer, or crash / hang (the worker is then replaced)."""
        import selectors

        proc = self._start()
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(proc)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        if not ready:
            proc.kill()
            proc.wait()
            self.proc = None
            return {"status": "hang"}
        line = proc.stdout.readline()
        if not line:
            return self._died(proc)
        return json.loads(line)

    def _died(self, proc) -> dict:
        rc = proc.wait()
        self.proc = None
        return {"status": "crash", "error": f"worker exit code {rc}"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---- seeds and the campaign ---------------------------------------------------------------
def build_seeds(folder: Path) -> list[Path]:
    """Small real artifacts covering every op kind and format the runtime has (needs torch)."""
    import torch

    import sparsecc
    from sparsecc import zoo

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    recipes = [
        ("mlp_csr_b1", zoo.mlp((64, 96, 48, 10)), 1, {"prune": {"sparsity": 0.9}}),
        ("mlp_csr_b4", zoo.mlp((64, 96, 48, 10)), 4, {"prune": {"sparsity": 0.9}}),
        ("mlp_bsr", zoo.mlp((64, 96, 48, 10)), 2,
         {"prune": {"sparsity": 0.75, "pattern": "4x1"}, "formats": {"force": "bsr4x1"}}),
        ("mlp_nm", zoo.mlp((64, 96, 48, 10)), 2,
         {"prune": {"pattern": "2:4"}, "formats": {"force": "nm2:4"}}),
        ("lenet", zoo.lenet(), 2, {"prune": {"sparsity": 0.8}}),
        ("mobilenet_block", zoo.mobilenet_v2_block(), 1, {"prune": {"sparsity": 0.7}}),
        ("resnet_basic", zoo.resnet_basic(), 1, {"prune": {"sparsity": 0.8}}),
        ("transformer", zoo.tiny_transformer(), 2, {"prune": {"sparsity": 0.8}}),
        ("ops", _ops_model(), 2, None),
    ]
    paths = []
    for name, model, batch, recipe in recipes:
        path = folder / f"{name}.scc"
        if not path.exists():
            x = zoo.example_input(model, batch) if hasattr(model, "example_input_shape") \
                else torch.randn(batch, 3, 9, 9)
            cm = sparsecc.compile(model.eval(), x, recipe=recipe)
            cm.save(path)
        paths.append(path)
    return paths


def _ops_model():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Ops(nn.Module):
        """Shape ops, reductions, pooling variants, where/cast/unary, a dense conv + BN."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn2 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(16, 6)

        def forward(self, x):
            y = self.bn(self.conv(x))                                 # 4 x 5 x 5
            y = self.bn2(F.avg_pool2d(y, 2, ceil_mode=True, count_include_pad=False))  # 3 x 3
            z = F.max_pool2d(x, 3, stride=2, padding=1, dilation=1)   # 3 x 5 x 5
            z = F.adaptive_avg_pool2d(z, 2)
            y = torch.cat([y[:, :, :2, :2], z[:, :1]], dim=1)         # 5 x 2 x 2
            y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)[:, :16]  # 16
            y = torch.where(y > 0, y, torch.exp(y) - 1).abs().sqrt()
            a = F.gelu(y[:, :, None] @ y[:, None, :]).mean(dim=2)   # matmul, act, reduce
            y = y + (y > 0.5).float() * a + y[:, :1].expand(-1, 16)  # cast, expand
            y = self.fc(y).softmax(-1) + y.mean(dim=1, keepdim=True)
            return torch.stack([y, y * 2], dim=1).amax(dim=1)

    return Ops()


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    by_mutation: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    max_rss_mb: float = 0.0  # workers' high-water mark (kernel compilation included)
    max_load_growth_mb: float = 0.0  # the most one load raised it
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.counts[f] for f in FAILURES)

    def table(self) -> str:
        lines = ["| outcome | cases |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.counts.items())]
        return "\n".join(lines)


def _same(a_path: Path, b_path: Path) -> bool:
    with np.load(a_path) as a, np.load(b_path) as b:
        if sorted(a.files) != sorted(b.files):
            return False
        for k in a.files:
            x, y = a[k], b[k]
            if x.shape != y.shape or not np.allclose(x.astype(np.float64), y.astype(np.float64),
                                                     rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
    return True


def campaign(seeds: list[Path], cases: int, *, workers: int = 2, seed: int = 0,
             timeout: float = 30.0, work: Path | None = None, log=None,
             progress: bool = False) -> Summary:
    """Run ``cases`` mutated artifacts over ``workers`` worker processes."""
    from concurrent.futures import ThreadPoolExecutor

    work = Path(work or tempfile.mkdtemp(prefix="sparsecc-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPARSECC_CACHE_DIR=str(work / "cache"), SPARSECC_THREADS="1",
               SPARSECC_MAX_MEMORY=os.environ.get("SPARSECC_MAX_MEMORY", "2G"),
               NUMBA_NUM_THREADS="1")
    pool = [Worker(env) for _ in range(workers)]
    refs = {}
    for i, p in enumerate(seeds):  # the unmutated answers
        refs[p] = work / f"ref{i}.npz"
        res = pool[0].ask({"path": str(p), "batches": [1, 3], "seed": 7, "out": str(refs[p])},
                          timeout=600)
        if res["status"] != "ok":
            raise RuntimeError(f"seed artifact {p} does not run: {res}")
    summary = Summary()
    t0 = time.perf_counter()

    def one(k: int) -> None:
        rng = np.random.default_rng([seed, k])
        seed_path = seeds[k % len(seeds)]
        case = make_case(seed_path, rng)
        path = work / f"case{k}.scc"
        path.write_bytes(case.data)
        out = work / f"out{k}.npz"
        res = pool[k % workers].ask({"path": str(path), "batches": [1, 3], "seed": 7,
                                     "out": str(out), "native": case.native}, timeout)
        status = res["status"]
        if status == "ok":
            same = _same(out, refs[seed_path])
            status = "same" if same else ("silent" if case.must_reject else "changed")
        _record(summary, k, case, seed_path, status, res, log)
        for f in (path, out):
            f.unlink(missing_ok=True)

    try:
        # one thread per worker, each driving its own process: cases k = w, w + W, ...
        def lane(w: int) -> None:
            for k in range(w, cases, workers):
                one(k)
                if progress and k % 200 == 0:
                    print(f"[fuzz] {k}/{cases} {dict(summary.counts)}", file=sys.stderr,
                          flush=True)

        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lane, range(workers)))
    finally:
        for w in pool:
            w.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _record(summary: Summary, k: int, case: Case, seed_path: Path, status: str, res: dict,
            log) -> None:
    summary.counts[status] += 1
    summary.by_mutation.setdefault(case.name, Counter())[status] += 1
    summary.max_rss_mb = max(summary.max_rss_mb, float(res.get("rss_mb") or 0.0))
    summary.max_load_growth_mb = max(summary.max_load_growth_mb,
                                     float(res.get("load_growth_mb") or 0.0))
    row = {"case": k, "seed": seed_path.stem, "mutation": case.name, "status": status,
           "must_reject": case.must_reject, "error": res.get("error", "")[:300],
           "rss_mb": res.get("rss_mb"), "load_growth_mb": res.get("load_growth_mb")}
    if status in FAILURES:
        summary.failures.append(row)
    if log is not None:
        log.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsecc.fuzz", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seeds-dir", default="results/fuzz/seeds")
    p.add_argument("--out", default="results/fuzz")
    args = p.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = build_seeds(Path(args.seeds_dir))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(out / f"fuzz-{stamp}.jsonl", "w") as log:
        s = campaign(seeds, args.cases, workers=args.workers, seed=args.seed,
                     timeout=args.timeout, work=out / "work", log=log, progress=True)
    print(s.table())
    print(f"{args.cases} cases in {s.seconds:.0f} s; failures {s.failed}; "
          f"worker peak RSS {s.max_rss_mb:.0f} MB, the most one load added to it "
          f"{s.max_load_growth_mb:.1f} MB; log {out / f'fuzz-{stamp}.jsonl'}")
    for f in s.failures[:20]:
        print(json.dumps(f))
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
