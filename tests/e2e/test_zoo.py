"""Every zoo model: compiled output equals torch at batch 1 and 8, dense and with 90 % zeros."""

from __future__ import annotations

import pytest
import torch

import sparsecc
from sparsecc import zoo
from tests.conftest import assert_matches

SMALL = ["mlp", "lenet", "resnet_basic", "resnet_bottleneck", "mobilenet_v2_block",
         "tiny_transformer", "mnist_cnn"]


def _compare(model, cm, batch, seed):
    x = zoo.example_input(model, batch, seed=seed)
    with torch.no_grad():
        ref = model(x)
    assert_matches(cm(x), ref)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("sparsity", [None, 0.9])
def test_zoo_model_matches_torch(name, sparsity, seed):
    model = zoo.ZOO[name]()
    if sparsity:
        # Per-layer zeros leave every layer with live weights (global pruning can empty some).
        model = sparsecc.prune(model, sparsity, scope="layer")
    cm = sparsecc.compile(model, zoo.example_input(model, 1, seed=seed))
    assert cm.native is not None, cm.native_status  # the native library runs it
    for batch in (1, 8):
        _compare(model, cm, batch, seed + batch)
    if sparsity:
        fmts = {op.attrs.get("fmt") for op in cm.plan.ops if op.kind in ("linear", "conv2d")}
        assert "csr" in fmts, "pre-zeroed weights should run through the CSR kernels"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_full_size_models(name, seed):
    model = sparsecc.prune(zoo.ZOO[name](), 0.9, scope="layer")
    cm = sparsecc.compile(model, zoo.example_input(model, 1, seed=seed))
    assert cm.native is not None, cm.native_status  # the native library runs it
    _compare(model, cm, 1, seed)
    _compare(model, cm, 2, seed + 1)


def test_compile_with_sparsity_equals_prune(seed):
    model = zoo.mnist_cnn()
    x = zoo.example_input(model, 4, seed=seed)
    cm = sparsecc.compile(model, x, sparsity=0.9)
    with torch.no_grad():
        ref = sparsecc.prune(model, sparsity=0.9)(x)
    assert_matches(cm(x), ref)


def test_user_model_is_not_mutated(seed):
    model = zoo.resnet_basic()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsecc.compile(model, zoo.example_input(model, 1), sparsity=0.8)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert any(type(m).__name__ == "BatchNorm2d" for m in model.modules())


def test_mobilenet_v2_imagenet_weights_classify_real_photos():
    pytest.importorskip("skimage")
    model = zoo.mobilenet_v2_imagenet()
    x = torch.from_numpy(zoo.imagenet_photo("coffee"))
    cm = sparsecc.compile(model, x)
    assert cm.native is not None, cm.native_status  # the native library runs it
    with torch.no_grad():
        ref = model(x)
    assert int(ref.argmax()) == 967  # espresso
    assert_matches(cm(x), ref, rtol=1e-4, atol=2e-5)
    assert int(cm(x).argmax()) == 967
