"""save -> load round trips; a torch-free process loads and runs; bad files raise ArtifactError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.runtime import artifact as art


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    model = sparsecc.prune(zoo.tiny_transformer(), 0.9, scope="layer")
    cm = sparsecc.compile(model, zoo.example_input(model, 2))
    path = cm.save(tmp_path_factory.mktemp("art") / "model.scc")
    return model, cm, path


def test_roundtrip_identical(compiled, seed):
    _, cm, path = compiled
    x = zoo.example_input(zoo.tiny_transformer(), 3, seed=seed).numpy()
    rt = sparsecc.load(path)
    for a, b in zip(cm(x), rt(x)):
        np.testing.assert_array_equal(a, b)


def test_artifact_has_no_pickle(compiled):
    _, _, path = compiled
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        plain = sorted(n for n in names if not n.startswith("native/"))
        assert plain == ["SHA256", "manifest.json", "weights.safetensors"]
        # the optional object code: an index and ELF objects, linked only on request
        native = [n for n in names if n.startswith("native/")]
        assert all(n == "native/index.json" or n.endswith(".o") for n in native)
        json.loads(zf.read("manifest.json"))
        blob = b"".join(zf.read(n) for n in zf.namelist())
    # Pickle streams start with PROTO (0x80) followed by the protocol number.
    assert not any(blob.startswith(b"\x80" + bytes([p])) for p in range(2, 6))


TORCH_FREE = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this process")
    sys.meta_path.insert(0, Block())
    import numpy as np, sparsecc
    try:
        import torch  # noqa
        raise SystemExit("torch imported")
    except ImportError:
        pass
    rt = sparsecc.load(sys.argv[1])
    x = np.load(sys.argv[2])
    outs = rt(x)
    np.savez(sys.argv[3], *outs)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("ok")
""")


def test_load_in_torch_free_process(compiled, tmp_path, seed):
    _, cm, path = compiled
    x = zoo.example_input(zoo.tiny_transformer(), 2, seed=seed).numpy()
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(TORCH_FREE)
    res = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout
    got = np.load(tmp_path / "y.npz")
    for i, ref in enumerate(cm(x)):
        np.testing.assert_array_equal(got[f"arr_{i}"], ref)


def _rewrite(path, out, manifest_fn=None, weights_fn=None, checksum=True):
    with zipfile.ZipFile(path) as zf:
        m, w = zf.read("manifest.json"), zf.read("weights.safetensors")
        digest = zf.read("SHA256").decode()
    if manifest_fn:
        m = json.dumps(manifest_fn(json.loads(m))).encode()
    if weights_fn:
        w = weights_fn(w)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("manifest.json", m)
        zf.writestr("weights.safetensors", w)
        zf.writestr("SHA256", art._digest(m, w) if checksum else digest)
    return out


def test_truncated_artifact(compiled, tmp_path):
    _, _, path = compiled
    data = path.read_bytes()
    bad = tmp_path / "cut.scc"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(sparsecc.ArtifactError, match="cut.scc"):
        sparsecc.load(bad)


def test_tampered_weights(compiled, tmp_path):
    _, _, path = compiled

    def flip(w):
        b = bytearray(w)
        b[-3] ^= 0xFF
        return bytes(b)

    bad = _rewrite(path, tmp_path / "t.scc", weights_fn=flip, checksum=False)
    with pytest.raises(sparsecc.ArtifactError, match="checksum mismatch"):
        sparsecc.load(bad)


def test_newer_schema(compiled, tmp_path):
    _, _, path = compiled
    bad = _rewrite(path, tmp_path / "new.scc", manifest_fn=lambda m: dict(m, schema=99))
    with pytest.raises(sparsecc.ArtifactError, match="newer"):
        sparsecc.load(bad)


def test_unknown_op_with_valid_checksum(compiled, tmp_path):
    _, _, path = compiled

    def evil(m):
        m["ops"][0]["kind"] = "__import__('os').system('echo pwned')"
        return m

    bad = _rewrite(path, tmp_path / "evil.scc", manifest_fn=evil)
    with pytest.raises(sparsecc.ArtifactError, match="unknown op kind"):
        sparsecc.load(bad)


def test_not_an_artifact(tmp_path):
    p = tmp_path / "x.scc"
    p.write_bytes(b"hello")
    with pytest.raises(sparsecc.ArtifactError, match="x.scc"):
        sparsecc.load(p)
    with pytest.raises(sparsecc.ArtifactError, match="no such file"):
        sparsecc.load(tmp_path / "missing.scc")


def test_report_of_loaded_artifact(compiled):
    _, _, path = compiled
    rep = sparsecc.load(path).report(repeats=2)
    rows = [r for r in rep.rows if r["op"].startswith("linear")]
    assert rows and all(r["format"] in ("csr", "dense") for r in rows)
    assert all(r["measured_us"] is not None and r["measured_us"] >= 0 for r in rows)
    assert "linear" in str(rep)


def test_torch_tensors_in_and_out(compiled, seed):
    _, cm, _ = compiled
    x = zoo.example_input(zoo.tiny_transformer(), 2, seed=seed)
    out = cm(x)
    assert all(isinstance(o, torch.Tensor) for o in out)
