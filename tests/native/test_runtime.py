"""The native library inside Python: it is what CompiledModel runs, the report says so,
SPARSECC_NATIVE=0 turns it off, bad input is refused, several threads share one model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.errors import InputError
from tests.conftest import assert_matches


def test_report_names_each_kernel(seed):
    model = sparsecc.prune(zoo.mnist_cnn(), 0.9)
    cm = sparsecc.compile(model, torch.randn(1, 1, 28, 28))
    assert cm.native is not None, cm.native_status
    rep = cm.report(repeats=3)
    assert "native library" in str(rep)
    kinds = {r["kernel"] for r in rep.rows}
    # the first conv (1 input channel) runs the register-plane kernel, the sparse ones spmm
    assert any(k.startswith("native direct conv") for k in kinds), kinds
    assert any(k.startswith("native sparse") for k in kinds), kinds
    assert all(k.startswith(("native", "fused into")) for k in kinds), kinds
    assert all(r["measured_us"] is not None for r in rep.rows)


def test_native_off_runs_the_executor(monkeypatch, seed):
    monkeypatch.setenv("SPARSECC_NATIVE", "0")
    model = zoo.mlp()
    cm = sparsecc.compile(model, torch.randn(2, 784))
    assert cm.native is None and "SPARSECC_NATIVE" in cm.native_status
    assert {r["kernel"] for r in cm.report(measure=False).rows} <= {"BLAS", "llvm sparse",
                                                                     "numba/numpy"}
    x = torch.randn(3, 784)
    with torch.no_grad():
        assert_matches(cm(x), model(x))


def test_numpy_and_torch_inputs_and_dtype_conversion(seed):
    model = zoo.mlp()
    cm = sparsecc.compile(model, torch.randn(1, 784), sparsity=0.9)
    x = torch.randn(4, 784)
    a = cm(x)
    b = cm(x.numpy())
    c = cm(x.numpy().astype(np.float64))  # converted, as the executor does
    d = cm(np.asfortranarray(x.numpy()))  # not C-contiguous: copied
    assert isinstance(a, torch.Tensor) and isinstance(b, np.ndarray)
    for o in (b, c, d):
        np.testing.assert_array_equal(a.numpy(), o)
    with pytest.raises(InputError):
        cm(np.zeros((4, 783), np.float32))
    with pytest.raises(InputError):
        cm(np.zeros((0, 784), np.float32))


def test_embedding_index_out_of_range_is_an_error(seed):
    model = zoo.tiny_transformer()
    cm = sparsecc.compile(model, zoo.example_input(model, 1))
    assert cm.native is not None, cm.native_status
    ids = zoo.example_input(model, 2).clone()
    ids[1, 3] = 10_000
    with pytest.raises(InputError, match="out of range"):
        cm(ids)
    ids[1, 3] = -1
    with pytest.raises(InputError, match="out of range"):
        cm(ids)


def test_threads_share_one_model(seed):
    model = sparsecc.prune(zoo.resnet_basic(), 0.9, scope="layer")
    cm = sparsecc.compile(model, zoo.example_input(model, 1))
    assert cm.native is not None
    xs = [zoo.example_input(model, b, seed=seed + b) for b in (1, 2, 3, 1, 2, 3)]
    with torch.no_grad():
        refs = [model(x) for x in xs]
    errors = []

    def worker(i):
        try:
            for _ in range(5):
                assert_matches(cm(xs[i]), refs[i])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_saved_artifact_runs_natively_after_load(tmp_path, seed):
    model = sparsecc.prune(zoo.lenet(), 0.9)
    cm = sparsecc.compile(model, zoo.example_input(model, 1))
    path = cm.save(tmp_path / "m.scc")
    for native in (False, True):
        rt = sparsecc.load(path, native=native)
        assert rt.native is not None, rt.native_status
        x = zoo.example_input(model, 5, seed=seed)
        with torch.no_grad():
            assert_matches(rt(x), model(x))
