"""Tampered artifacts with a recomputed checksum: each reproducer of issue 16 is refused with an
ArtifactError (or a SparseccError at the call) instead of a crash, a hang, a huge allocation or
a plausible wrong answer. The structural fuzzer (test_fuzz.py) generalises these."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc import fuzz, zoo
from sparsecc.errors import ArtifactError, SparseccError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An MLP (CSR linears, specialised SpMV at batch 1) and a CNN (shifted sparse conv)."""
    folder = tmp_path_factory.mktemp("untrusted")
    torch.manual_seed(0)
    mlp = zoo.mlp((64, 96, 10))
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(), nn.Linear(8 * 3 * 3, 5))
    out = {}
    for name, model, x in (("mlp", mlp, torch.randn(1, 64)),
                           ("cnn", cnn.eval(), torch.randn(2, 3, 16, 16))):
        out[name] = sparsecc.compile(model, x, sparsity=0.8).save(folder / f"{name}.scc")
    return out


def tampered(path, tmp_path, *, manifest=None, weights=None, name="t.scc"):
    """A copy of ``path`` edited by the two callbacks, its checksum recomputed."""
    parts = fuzz.read_parts(path)
    if manifest:
        manifest(parts.manifest)
    if weights:
        weights(parts.weights)
    out = tmp_path / name
    out.write_bytes(fuzz.write_parts(parts))
    return out


def _first(weights, role):
    return next(k for k in sorted(weights) if k.endswith("." + role))


def _op(manifest, kind):
    return next(o for o in manifest["ops"] if o["kind"] == kind)


def _refused(path, **load_kw):
    with pytest.raises(ArtifactError) as err:
        rt = sparsecc.load(path, **load_kw)
        rt(*rt.example_inputs(batch=4))
    return str(err.value)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("value", [10 ** 9, -1])
def test_indptr_end_out_of_range(saved, tmp_path, model, value):
    def edit(w):
        ip = w[_first(w, "indptr")].copy()
        ip[-1] = value
        w[_first(w, "indptr")] = ip

    msg = _refused(tampered(saved[model], tmp_path, weights=edit))
    assert "indptr" in msg and "op #" in msg


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("value", [65535, 60000])
def test_column_index_out_of_range(saved, tmp_path, model, value):
    def edit(w):
        ix = w[_first(w, "indices")].copy()
        ix[0] = value
        w[_first(w, "indices")] = ix

    assert "past the" in _refused(tampered(saved[model], tmp_path, weights=edit))


@pytest.mark.parametrize("role", ["data", "bias"])
def test_short_values(saved, tmp_path, role):
    def edit(w):
        key = _first(w, role)
        w[key] = w[key][:-3].copy()

    _refused(tampered(saved["mlp"], tmp_path, weights=edit))


def test_hidden_tensor_shape_edited(saved, tmp_path):
    def edit(m):
        hidden = _op(m, "linear")["output"]
        spec = next(t for t in m["tensors"] if t["name"] == hidden)
        spec["shape"][-1] += 7

    _refused(tampered(saved["mlp"], tmp_path, manifest=edit))


@pytest.mark.parametrize("attr, value", [("stride", [0, 0]), ("padding", [-5, -5]),
                                         ("kernel", [5, 5]), ("dilation", [0, 1]),
                                         ("groups", 3), ("stride", "11")])
def test_conv_geometry(saved, tmp_path, attr, value):
    def edit(m):
        _op(m, "conv2d")["attrs"][attr] = value

    assert attr in _refused(tampered(saved["cnn"], tmp_path, manifest=edit))


def test_alias_to_other_size(saved, tmp_path):
    def edit(m):
        reshape = _op(m, "reshape")
        other = _op(m, "conv2d")["output"]  # a tensor of another size
        next(t for t in m["tensors"] if t["name"] == reshape["output"])["alias_of"] = other

    _refused(tampered(saved["cnn"], tmp_path, manifest=edit))


@pytest.mark.parametrize("elements", [200_000_000, 10 ** 12])
def test_huge_shape_is_refused_before_allocating(saved, tmp_path, elements):
    def edit(m):
        for t in m["tensors"]:  # the input and everything after it, consistently
            if t["name"] == m["inputs"][0]:
                t["shape"] = ["N", elements]

    path = tampered(saved["mlp"], tmp_path, manifest=edit)
    with pytest.raises(SparseccError):
        sparsecc.load(path, max_memory="1G")


def test_memory_budget_applies_per_batch(saved):
    rt = sparsecc.load(saved["cnn"], max_memory="2M")
    rt(*rt.example_inputs(batch=1))
    with pytest.raises(SparseccError, match="budget"):
        rt(*rt.example_inputs(batch=512))


LOAD_RSS = textwrap.dedent("""
    import resource, sys, sparsecc
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        sparsecc.load(sys.argv[1])
        print("loaded")
    except sparsecc.ArtifactError as exc:
        print("refused", exc)
    print("rss_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


@pytest.mark.parametrize("member", ["manifest.json", "weights.safetensors", "native/0.o"])
def test_zip_bomb_is_not_inflated(saved, tmp_path, member):
    """A 1 MB file whose member claims 1 GiB: refused from the directory, RSS stays flat."""
    path = tmp_path / "bomb.scc"
    path.write_bytes(fuzz._bomb_zip(fuzz.read_parts(saved["mlp"]), member))
    assert path.stat().st_size < 8 << 20
    script = tmp_path / "load.py"
    script.write_text(LOAD_RSS)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "refused" in res.stdout and "compressed" in res.stdout, res.stdout
    rss = float(res.stdout.split("rss_mb")[-1])
    assert rss < 100, res.stdout
    assert time.perf_counter() - t0 < 60


def test_deeply_nested_manifest(saved, tmp_path):
    parts = fuzz.read_parts(saved["mlp"])
    deep = b'{"magic": "sparsecc-artifact", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "deep.scc"
    path.write_bytes(fuzz.write_parts(parts, manifest_bytes=deep))
    assert "nests deeper" in _refused(path)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(example_batch="2"),
    lambda m: m.update(dynamic_batch="no"),
    lambda m: m["tensors"][0].update(name=["x"]),
    lambda m: m["ops"][0].update(inputs="x"),
    lambda m: m.update(example_batch=1e308),
    lambda m: m.update(example_batch=float("inf")),
])
def test_manifest_types_are_strict(saved, tmp_path, edit):
    _refused(tampered(saved["mlp"], tmp_path, manifest=edit))


def test_untampered_artifacts_still_load_and_match(saved, seed):
    for path in saved.values():
        rt = sparsecc.load(path)
        for batch in (1, 3):
            xs = rt.example_inputs(seed=seed, batch=batch)
            np.testing.assert_allclose(rt(*xs), sparsecc.load(path)(*xs), rtol=0, atol=0)


def test_manifest_of_saved_artifact_is_plain_json(saved):
    with zipfile.ZipFile(saved["mlp"]) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        json.loads(zf.read("manifest.json"))


class _BoolOperand(nn.Module):
    def forward(self, x):
        return (x > True).float() + (x > 0.5) * (x < 2)


def test_bool_scalar_beside_numbers(tmp_path, seed):
    """``x > True`` compiles as ``x > 1``; an artifact whose scalar is retyped to true beside a
    float tensor (the fuzzer's 0 -> True, accepted as 1) is refused."""
    model = _BoolOperand()
    path = sparsecc.compile(model, torch.randn(2, 5)).save(tmp_path / "b.scc")
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed)) * 2
    np.testing.assert_array_equal(sparsecc.load(path)(x.numpy()), model(x).numpy())
    scalars = [o["attrs"]["scalar"] for o in fuzz.read_parts(path).manifest["ops"]
               if "scalar" in o["attrs"]]
    assert 1 in scalars and not any(isinstance(v, bool) for v in scalars), scalars

    def retype(m):
        next(o for o in m["ops"] if o["attrs"].get("scalar") == 1)["attrs"]["scalar"] = True

    assert "beside a float32 tensor" in _refused(tampered(path, tmp_path, manifest=retype))
