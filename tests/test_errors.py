"""Every error class is raised where it should be, and its message names the culprit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.ir.plan import ExecutionPlan, Op, TensorSpec
from sparsecc.runtime.executor import Executor


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: not traceable
            return self.fc(x)
        return x


class ShapeCheck(nn.Module):
    def forward(self, x):
        assert x.shape[1] == 4, "need 4 features"
        return x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), DataDependent())

    def forward(self, x):
        return self.inner(x)


def test_trace_error_names_module():
    with pytest.raises(sparsecc.TraceError, match=r"inner\.1 \(DataDependent\).*control flow"):
        sparsecc.compile(Outer(), torch.randn(2, 4))


def test_trace_error_on_shape_check():
    # x.shape[1] == 4 becomes a Proxy comparison, and assert on it cannot be traced.
    with pytest.raises(sparsecc.TraceError, match="ShapeCheck"):
        sparsecc.compile(ShapeCheck(), torch.randn(2, 4))


def test_trace_error_not_a_module():
    with pytest.raises(sparsecc.TraceError, match="function"):
        sparsecc.compile(lambda x: x, torch.randn(2, 4))


class Cumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x + 1, dim=1)


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 4, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


def test_unsupported_function_names_node():
    with pytest.raises(sparsecc.UnsupportedOpError, match=r"'cumsum.*cumsum"):
        sparsecc.compile(Cumsum(), torch.randn(2, 4))


def test_unsupported_module_names_node():
    with pytest.raises(sparsecc.UnsupportedOpError, match=r"rnn.*GRU"):
        sparsecc.compile(WithLSTM(), torch.randn(2, 3, 4))


def test_unsupported_padding_mode():
    m = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(sparsecc.UnsupportedOpError, match="padding_mode"):
        sparsecc.compile(nn.Sequential(m), torch.randn(1, 2, 5, 5))


def test_pass_error_names_pass_and_option():
    with pytest.raises(sparsecc.PassError, match=r"prune.*sparsity=1.5"):
        sparsecc.prune(nn.Linear(3, 3), sparsity=1.5)
    with pytest.raises(sparsecc.PassError, match=r"prune.*unknown option.*'bogus'"):
        sparsecc.prune(nn.Linear(3, 3), sparsity=0.5, bogus=1)


def test_recipe_error_names_key(tmp_path):
    m, x = nn.Linear(3, 3), torch.randn(1, 3)
    with pytest.raises(sparsecc.RecipeError, match=r"prune\.sparsity"):
        sparsecc.compile(m, x, recipe={"prune": {"sparsity": "lots"}})
    with pytest.raises(sparsecc.RecipeError, match=r"'pruen'"):
        sparsecc.compile(m, x, recipe={"pruen": {}})
    bad = tmp_path / "r.yaml"
    bad.write_text("formats:\n  csr_max_density: 3\n")
    with pytest.raises(sparsecc.RecipeError, match=r"formats\.csr_max_density"):
        sparsecc.compile(m, x, recipe=bad)


def test_invalid_plan_names_op_and_layer():
    plan = ExecutionPlan(
        inputs=["x"], outputs=["y"],
        tensors={"x": TensorSpec("x", (2, 3)), "y": TensorSpec("y", (2, 3))},
        ops=[Op("binary", "mul_1", ["x"], "y", {"fn": "no-such-fn", "scalar": 2.0},
                layer="block.mul")],
        constants={})
    # the verifier refuses it before any kernel is bound
    with pytest.raises(sparsecc.SparseccError, match=r"mul_1.*block\.mul.*no-such-fn"):
        Executor(plan).run([np.ones((2, 3), np.float32)])


def test_input_error_names_input():
    cm = sparsecc.compile(nn.Linear(3, 2), torch.randn(2, 3))
    with pytest.raises(sparsecc.InputError, match=r"input 'input'.*expected shape \(4, 3\)"):
        cm(np.ones((4, 5), np.float32))
    with pytest.raises(sparsecc.InputError, match="takes 1 input"):
        cm(np.ones((4, 3), np.float32), np.ones(1))
    with pytest.raises(sparsecc.InputError, match="float"):
        cm(np.array([["a", "b", "c"]]))


def test_embedding_index_out_of_range():
    cm = sparsecc.compile(nn.Embedding(5, 2), torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(sparsecc.InputError, match="out of range"):
        cm(np.array([[0, 7, 1]]))


def test_fixed_batch_model_rejects_other_batches():
    class Pinned(nn.Module):
        def forward(self, x):
            return x.view(1, 4) * 2  # fails in torch too at any other batch

    cm = sparsecc.compile(Pinned(), torch.randn(1, 4))
    assert not cm.plan.dynamic_batch
    np.testing.assert_allclose(cm(np.ones((1, 4), np.float32)), 2 * np.ones((1, 4)))
    with pytest.raises(sparsecc.InputError, match="compiled for batch 1 only"):
        cm(np.ones((2, 4), np.float32))


def test_all_errors_are_sparsecc_errors():
    for cls in (sparsecc.TraceError, sparsecc.UnsupportedOpError, sparsecc.PassError,
                sparsecc.CodegenError, sparsecc.ArtifactError, sparsecc.RecipeError,
                sparsecc.InputError, sparsecc.ModelSpecError):
        assert issubclass(cls, sparsecc.SparseccError)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), "abc", True])
def test_compile_validates_sparsity_as_prune_does(value):
    with pytest.raises(sparsecc.PassError, match=r"prune.*sparsity"):
        sparsecc.compile(nn.Linear(3, 3), torch.randn(1, 3), sparsity=value)
    with pytest.raises(sparsecc.PassError, match=r"prune.*sparsity"):
        sparsecc.prune(nn.Linear(3, 3), sparsity=value)


@pytest.mark.parametrize("recipe, key", [
    ({"formats": {"autotune": "yes"}}, "formats.autotune"),
    ({"compile": {"dynamic_batch": "no"}}, "compile.dynamic_batch"),
    ({"layout": {"enabled": 7}}, "layout.enabled"),
    ({"formats": {"force": "nm5:4"}}, "formats.force"),
    ({"formats": {"force": "bsr0x1"}}, "formats.force"),
    ({"prune": {"sparsity": 0.5, "sparsty": 0.5}}, "prune.sparsty"),
    ({"formats": {"specialize_max_nnz": 1e30}}, "formats.specialize_max_nnz"),
    ({"prune": {"sparsity": 0.5, "exclude": [1, 2]}}, "prune.exclude"),
    ({"prune": {"sparsity": 0.5, "overrides": {"fc": "x"}}}, "prune.overrides"),
    ({"schedule": {"final_sparsity": 0.5, "frequency": "x"}}, "schedule.frequency"),
])
def test_recipe_values_are_type_checked_by_full_key(recipe, key):
    with pytest.raises(sparsecc.RecipeError) as err:
        sparsecc.compile(nn.Linear(3, 3), torch.randn(1, 3), recipe=recipe)
    assert err.value.key == key, str(err.value)


class ItemScalar(nn.Module):
    def forward(self, x):
        return x * x.max().item()


class ShapeScalar(nn.Module):
    def forward(self, x):
        return x.reshape(x.size(0), -1) * x.shape[1]


def test_python_scalar_from_a_tensor_is_refused():
    with pytest.raises(sparsecc.TraceError, match=r"item.*x \* x.amax\(\)"):
        sparsecc.compile(ItemScalar(), torch.tensor([[1.0, 2.0, 5.0]]))
    # shapes are fine: they are metadata, not values
    cm = sparsecc.compile(ShapeScalar(), torch.randn(2, 3))
    np.testing.assert_array_equal(cm(np.ones((4, 3), np.float32)), np.full((4, 3), 3.0))
