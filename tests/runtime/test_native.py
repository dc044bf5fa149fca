"""LLVM object code in artifacts: linked without compiling when the CPU matches, rebuilt when
it does not, numba kernels when LLVM cannot build; results identical in every case."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc import api
from sparsecc.codegen.llvm import emit, jit, kernels
from sparsecc.errors import CodegenError
from sparsecc.runtime import artifact as art


def _net():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(),
                        nn.Linear(32, 10)).eval()
    return sparsecc.prune(net, 0.85)


@pytest.fixture(scope="module", params=["generic", "specialised"])
def saved(tmp_path_factory, request):
    """Generic kernels at batch 2; or every layer pattern-specialised at batch 1 (the linears
    then run the specialised spmv kernels, the convs the specialised spmm ones)."""
    torch.manual_seed(0)
    model = _net()
    formats = {"force": "csr"}
    x = torch.randn(2, 3, 8, 8)
    if request.param == "specialised":
        formats.update(specialize=True, specialize_max_nnz=10**6)
        x = x[:1]
    cm = sparsecc.compile(model, x, recipe={"formats": formats})
    if request.param == "specialised":
        native = [op for op in cm.plan.ops if op.attrs.get("specialize")]
        assert len(native) == 4
    path = cm.save(tmp_path_factory.mktemp("native") / "m.scc")
    with torch.no_grad():
        ref = model(x).numpy()
    return path, x.numpy(), ref


def test_artifact_carries_object_code_for_this_cpu(saved):
    path, x, _ = saved
    native = art.read_native(path)
    assert native is not None and native.host == jit.host().key
    assert len(native.kernels) >= 2
    specs = []
    for spec, obj in native.kernels.values():
        assert obj[:4] == b"\x7fELF"
        specs.append(kernels.spec_from_dict(spec))
        assert specs[-1].vw == jit.host().vector_width
    if x.shape[0] == 1:  # the specialised artifact: both families carry their pattern
        baked = {s.family for s in specs if s.pattern_hash}
        assert baked == {"spmm", "spmv"}


def test_spec_fields_added_later_take_their_defaults():
    """An artifact's kernel index written before ``residual``, ``panels`` or ``kcols``
    existed loads with their defaults (the kernels it holds had none of them); a field
    nobody knows is refused."""
    spec = emit.KernelSpec("spmm", 16, group=30, kcols=1152, panels=True)
    saved = dataclasses.asdict(spec)
    assert kernels.spec_from_dict(saved) == spec
    for name in ("residual", "panels", "kcols"):
        saved.pop(name)
    old = kernels.spec_from_dict(saved)
    assert (old.residual, old.panels, old.kcols) == (False, False, 0)
    with pytest.raises(ValueError, match="fields"):
        kernels.spec_from_dict({**saved, "lanes": 3})


def test_spec_from_an_artifacts_json():
    """The index is JSON: a spec's pairs come back as lists and are made tuples again, so
    the spec equals (and hashes as) the one saved; ``wrap`` and the tile strides, added
    after the first indexes, take their defaults; a wrap that is not a pair is refused."""
    spec = emit.KernelSpec("spmm", 8, tile=7, idx_bits=64, dual_out=True, wrap=(57, 56),
                           act="relu", ots=57)
    saved = json.loads(json.dumps(dataclasses.asdict(spec)))
    assert isinstance(saved["wrap"], list)
    back = kernels.spec_from_dict(saved)
    assert back == spec and hash(back) == hash(spec) and back.key == spec.key
    old = {k: v for k, v in saved.items() if k not in ("wrap", "xts", "ots", "rts")}
    assert kernels.spec_from_dict(old) == dataclasses.replace(spec, wrap=(0, 0), ots=0)
    for bad in ([57], [57, 56, 1], ["x", 1]):
        with pytest.raises(ValueError):
            kernels.spec_from_dict({**saved, "wrap": bad})


def test_native_load_links_and_matches(saved):
    path, x, ref = saved
    assert api._link_native(path)  # the library's main object, by its cache key
    rt = sparsecc.load(path, native=True)
    np.testing.assert_allclose(rt(x), ref, rtol=1e-4, atol=1e-5)


NATIVE_RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    t0 = time.perf_counter()
    import sparsecc
    from sparsecc import api
    from sparsecc.codegen.llvm import jit
    compiled = []
    real, real_linked = jit.compile_ir, jit._optimize
    jit.compile_ir = lambda *a, **k: compiled.append(1) or real(*a, **k)
    jit._optimize = lambda *a, **k: compiled.append(1) or real_linked(*a, **k)
    rt = sparsecc.load(sys.argv[1], native=True)
    linked = len(rt.native.lib.objects) if rt.native else 0
    y = rt(np.load(sys.argv[2]))
    np.save(sys.argv[3], y)
    print(linked, len(compiled), time.perf_counter() - t0)
""")


def test_fresh_process_runs_without_compiling(saved, tmp_path):
    """A new process (empty kernel memo; empty disk cache) links the artifact's code and never
    calls LLVM's compiler."""
    path, x, ref = saved
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(NATIVE_RUN)
    env = dict(__import__("os").environ, SPARSECC_CACHE_DIR=str(tmp_path / "empty-cache"))
    res = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(path),
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    linked, compiled, _ = res.stdout.split()
    assert int(linked) >= 2 and int(compiled) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-4, atol=1e-5)


def test_cpu_key_mismatch_rebuilds(saved, tmp_path):
    path, x, ref = saved
    # Re-save the artifact as if it had been built on another CPU.
    native = art.read_native(path)
    native.host = jit.Host("some-other-cpu", "+sse2").key
    plan = sparsecc.load(path).plan
    moved = art.save_plan(plan, tmp_path / "other.scc", native)
    assert api._link_native(moved) is None  # not linked: wrong CPU
    rt = sparsecc.load(moved, native=True)
    np.testing.assert_allclose(rt(x), ref, rtol=1e-4, atol=1e-5)


def test_llvm_failure_falls_back_to_numba(saved, monkeypatch):
    path, x, ref = saved

    def broken(spec, pattern=None):
        raise CodegenError("llvm", "simulated failure")

    monkeypatch.setattr(kernels, "build", broken)
    rt = sparsecc.load(path)
    with pytest.warns(RuntimeWarning, match="numba"):
        y = rt(x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_tampered_native_code_is_refused(saved, tmp_path):
    path, _, _ = saved
    out = tmp_path / "bad.scc"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            blob = zin.read(name)
            if name.endswith(".o"):
                blob = blob[:-8] + b"\x90" * 8
            zout.writestr(name, blob)
    with pytest.raises(sparsecc.SparseccError, match="checksum"):
        sparsecc.load(out, native=True)
    index = json.loads(zipfile.ZipFile(path).read("native/index.json"))
    assert index["host"] == jit.host().key
