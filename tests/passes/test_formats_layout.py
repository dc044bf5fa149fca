"""select-format (cost model, autotune, blocked formats) and the layout pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.formats import cost
from sparsecc.frontend import capture
from sparsecc.lowering import lower
from sparsecc.passes import run_pass
from tests.conftest import assert_matches


def _plan(net, x, fmt_opts=None):
    plan = lower(capture(net, x))
    run_pass("fuse", plan)
    run_pass("select-format", plan, fmt_opts or {})
    return plan


def _linears(plan):
    return [op for op in plan.ops if op.kind == "linear"]


def test_dense_weights_stay_dense_and_sparse_go_sparse(seed):
    net = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)).eval()
    with torch.no_grad():
        net[2].weight.mul_((torch.rand(512, 512) < 0.05).float())
    plan = _plan(net, torch.randn(1, 512))
    fmts = [op.attrs["fmt"] for op in _linears(plan)]
    # batch 1: the dense layer runs the GEMV (the BSR kernel wastes lanes at width 1)
    assert fmts[0] == "dense" and fmts[1] == "csr", fmts
    for op in _linears(plan):
        est = op.attrs["est_us"]
        assert set(est) >= {"dense", "csr"} and all(v > 0 for v in est.values())


def test_cost_model_ranks_sparsity():
    g = cost.LayerGeom(rows=1024, k=1024, n=1, L=64)
    dense = cost.estimate("dense", g, 1024 * 1024, 2, 16)
    sparse = [cost.estimate("csr", g, int(1024 * 1024 * d), 2, 16) for d in (0.05, 0.2, 0.5)]
    assert sparse[0] < sparse[1] < sparse[2]
    assert sparse[0] < dense / 4
    # one thread: fully dense CSR loses to BLAS
    assert cost.estimate("csr", g, 1024 * 1024, 1, 16) > cost.estimate("dense", g, 1024**2, 1, 16)
    # a 4x1-blocked pattern of the same count is cheaper than CSR
    assert cost.estimate("bsr4x1", g, 50000, 2, 16) < cost.estimate("csr", g, 50000, 2, 16)


def test_grouped_conv_rate_only_where_the_grouped_kernel_runs(monkeypatch):
    """CSR convs with AVX-512 over >= 8 vectors of positions (a sample, or a batch of small
    maps) are estimated at the grouped kernels' rate with no index loads, up to
    GROUPED_MAX_DENSITY: ResNet-50's 50 % layer4 1x1 convs at batch 16 then come out CSR,
    as measured (4.1-4.7 against 10.0-10.7 ms dense)."""
    layer4 = cost.LayerGeom(rows=2048, k=512, n=16, L=49, conv=True)
    half = 2048 * 512 // 2
    assert cost.grouped(layer4, half, 16)
    assert cost.estimate("csr", layer4, half, 2, 16) < cost.estimate("dense", layer4,
                                                                     2 * half, 2, 16)
    # not: AVX2, batch 1 over a 7 x 7 map, a linear layer, past GROUPED_MAX_DENSITY
    one = cost.LayerGeom(rows=2048, k=512, n=1, L=49, conv=True)
    linear = cost.LayerGeom(rows=2048, k=512, n=1, L=784)
    dense_ish = int(cost.GROUPED_MAX_DENSITY * 2048 * 512) + 1
    assert not cost.grouped(layer4, half, 8) and not cost.grouped(one, half, 16)
    assert not cost.grouped(linear, half, 16) and not cost.grouped(layer4, dense_ish, 16)
    assert cost.grouped(cost.LayerGeom(rows=64, k=576, n=1, L=56 * 56, conv=True), 3000, 16)
    with_rule = [cost.estimate("csr", g, half, 2, 16) for g in (layer4, one, linear)]
    monkeypatch.setattr(cost, "GROUPED_MAX_DENSITY", 0.0)  # the rule off
    without = [cost.estimate("csr", g, half, 2, 16) for g in (layer4, one, linear)]
    assert with_rule[0] < 0.6 * without[0] and with_rule[1:] == without[1:]


def test_dense_pointwise_conv_pays_its_activations():
    """A dense 1x1 conv with few input channels over a large map is bound by moving x in and
    its output back, not by its flops (MobileNetV2's 16 -> 96 at 112 x 112)."""
    g = cost.LayerGeom(rows=96, k=16, n=16, L=112 * 112)
    moved = 16 * (16 + 96) * 112 * 112 * 4 / (cost.COPY_BYTES * 2)
    flops = 2.0 * 96 * 16 * 16 * 112 * 112 / (cost.DENSE_FLOPS * 2)
    assert moved > flops
    assert cost.estimate("dense", g, 96 * 16, 2, 8) >= moved
    wide = cost.LayerGeom(rows=1024, k=1024, n=1, L=64)  # (a linear layer: its flops)
    assert cost.estimate("dense", wide, 1024**2, 2, 8) < 2 * 2.0 * 1024**2 * 64 / (
        cost.DENSE_FLOPS * 2)


class _Expand(nn.Module):
    """A 1x1 expand conv (ReLU6) read only by a depthwise 3x3 conv, then a 1x1 projection."""

    def __init__(self, c, e):
        super().__init__()
        self.ex, self.dw = nn.Conv2d(c, e, 1), nn.Conv2d(e, e, 3, padding=1, groups=e)
        self.pr = nn.Conv2d(e, c, 1)

    def forward(self, x):
        return self.pr(torch.clamp(self.dw(torch.clamp(self.ex(x), 0, 6)), 0, 6))


def test_expand_inside_the_depthwise_conv_counts_for_sparse(seed):
    """A moderately dense expand conv (40 %) whose output is over a core's L2 a sample: the
    lowering computes it inside the depthwise conv when it is sparse, so its dense estimate
    pays the output's round trip through memory and the projection's does not."""
    net = _Expand(16, 96).eval()
    with torch.no_grad():
        for m in (net.ex, net.pr):
            m.weight.mul_((torch.rand_like(m.weight) < 0.4).float())
    hw = 8
    while 4 * 96 * hw * hw <= cost.l2_bytes():
        hw *= 2
    plan = _plan(net, torch.randn(2, 16, hw, hw))
    ex, pr = (op for op in plan.ops if op.kind == "conv2d" and op.attrs["kernel"] == [1, 1])
    from sparsecc.runtime.ops.sparse import threads

    # (the two move the same bytes and do the same flops dense: only the round trip differs)
    trip = 2 * 2 * 96 * hw * hw * 4 / (cost.COPY_BYTES * threads()) * 1e6
    diff = ex.attrs["est_us"]["dense"] - pr.attrs["est_us"]["dense"]
    assert diff == pytest.approx(trip, rel=0.01), (ex.attrs["est_us"], pr.attrs["est_us"])


def test_autotune_measures_and_caches(seed, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECC_CACHE_DIR", str(tmp_path))
    net = nn.Sequential(nn.Linear(256, 256)).eval()
    with torch.no_grad():
        net[0].weight.mul_((torch.rand(256, 256) < 0.1).float())
    x = torch.randn(4, 256)
    plan = _plan(net, x, {"autotune": True})
    op = _linears(plan)[0]
    measured = op.attrs["measured_us"]
    assert "dense" in measured and "csr" in measured
    assert op.attrs["fmt"] == min(measured, key=measured.get)
    cache = (tmp_path / "autotune.json").read_text()
    assert len(cache) > 10
    # a second compile reads the same figures from the cache instead of timing again
    again = _linears(_plan(net, x, {"autotune": True}))[0]
    assert again.attrs["measured_us"] == measured


@pytest.mark.parametrize("pattern,fmt", [("4x1", "bsr4x1"), ("2:4", "nm2:4")])
def test_blocked_patterns_get_blocked_formats(seed, pattern, fmt):
    net = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64)).eval()
    pruned = sparsecc.prune(net, sparsity=0.5, pattern=pattern, scope="layer")
    x = torch.randn(8, 256)
    cm = sparsecc.compile(pruned, x, recipe={"formats": {"force": fmt}})
    assert [op.attrs["fmt"] for op in _linears(cm.plan)] == [fmt, fmt]
    with torch.no_grad():
        assert_matches(cm(x), pruned(x))
    rt = sparsecc.load(_saved(cm))
    assert_matches(rt(x.numpy()), pruned(x).detach().numpy())


def _saved(cm):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "m.scc"
    cm.save(path)
    return path


@pytest.mark.parametrize("backend", ["llvm", "numba"])
def test_every_format_matches_torch_on_convs(seed, backend):
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1),
                        nn.ReLU6(), nn.Conv2d(16, 8, 3, stride=2, padding=1)).eval()
    pruned = sparsecc.prune(net, sparsity=0.75, pattern="4x1", scope="layer")
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        ref = pruned(x)
    for fmt in ("csr", "bsr4x1", "dense"):
        cm = sparsecc.compile(pruned, x, recipe={"formats": {"force": fmt, "backend": backend}})
        assert_matches(cm(x), ref, rtol=1e-4, atol=1e-4)


def test_layout_pass_hands_over_and_is_idempotent(seed):
    net = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 80), nn.GELU(),
                        nn.Linear(80, 32)).eval()
    pruned = sparsecc.prune(net, sparsity=0.8)
    x = torch.randn(7, 64)
    plan = _plan(pruned, x, {"force": "csr"})
    assert run_pass("layout", plan).changed
    lin = _linears(plan)
    assert [bool(op.attrs.get("in_kn")) for op in lin] == [False, True, True]
    assert [bool(op.attrs.get("out_kn")) for op in lin] == [True, True, False]
    assert not run_pass("layout", plan).changed
    from sparsecc.api import CompiledModel

    with torch.no_grad():
        assert_matches(CompiledModel(plan)(x), pruned(x))
        assert_matches(CompiledModel(plan)(x[:1]), pruned(x[:1]))


def test_layout_keeps_torch_layout_for_shared_and_output_tensors(seed):
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(32, 32), nn.Linear(32, 16), nn.Linear(32, 16)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h.sum(-1, keepdim=True), self.c(h)

    net = sparsecc.prune(Fork().eval(), sparsity=0.8)
    x = torch.randn(5, 32)
    plan = _plan(net, x, {"force": "csr"})
    run_pass("layout", plan)
    assert not any(op.attrs.get("out_kn") for op in _linears(plan))  # h also feeds a sum
    from sparsecc.api import CompiledModel

    with torch.no_grad():
        assert_matches(CompiledModel(plan)(x), net(x))


@pytest.mark.parametrize("autotune", [False, True])
def test_specialize_option(seed, autotune, tmp_path, monkeypatch):
    from sparsecc.options import env_cache_dir

    # autotune results start empty; compiled objects come from the session's cache (an empty
    # one rebuilds the native library's numba kernels: ~50 s of this test)
    objects = env_cache_dir() / "llvm"
    objects.mkdir(parents=True, exist_ok=True)
    (tmp_path / "llvm").symlink_to(objects, target_is_directory=True)
    monkeypatch.setenv("SPARSECC_CACHE_DIR", str(tmp_path))
    net = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 24)).eval()
    pruned = sparsecc.prune(net, sparsity=0.9)
    for batch in (1, 5):
        x = torch.randn(batch, 48)
        cm = sparsecc.compile(pruned, x, recipe={"formats": {
            "force": "csr", "specialize": True, "autotune": autotune,
            "specialize_max_nnz": 300}})
        lin = _linears(cm.plan)
        if not autotune:
            assert all(op.attrs.get("specialize") for op in lin)
        else:
            assert all("csr-specialized" in op.attrs["measured_us"] for op in lin)
        other = torch.randn(3, 48)  # another batch: the kernels bake its row stride
        with torch.no_grad():
            assert_matches(cm(x), pruned(x))
            assert_matches(cm(other), pruned(other))


def test_specialize_auto_is_the_one_row_kernel_only(seed, executor_only):
    """The default: linears that run one row at the compile batch get the specialised SpMV
    (within its nonzero cap); at other batches the same plan runs generic kernels."""
    from sparsecc.codegen.llvm import kernels

    net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40)).eval()
    pruned = sparsecc.prune(net, sparsity=0.8)
    x1 = torch.randn(1, 64)
    cm = sparsecc.compile(pruned, x1, recipe={"formats": {"force": "csr"}})
    assert [op.attrs.get("specialize") for op in _linears(cm.plan)] == ["spmv", "spmv"]
    with kernels.recording() as used, torch.no_grad():
        assert_matches(cm(x1), pruned(x1))
    assert {(k.spec.family, bool(k.spec.pattern_hash)) for k in used.values()} == {
        ("spmv", True)}
    x4 = torch.randn(4, 64)
    with kernels.recording() as used, torch.no_grad():
        assert_matches(cm(x4), pruned(x4))
    assert not any(k.spec.pattern_hash for k in used.values())
    # compiled at batch 4, or with the cap below the layers' nonzeros: generic kernels
    for xb, opts in ((x4, {}), (x1, {"specialize_spmv_max_nnz": 100}),
                     (x1, {"specialize_spmv_budget_kb": 1}), (x1, {"specialize": False})):
        cm = sparsecc.compile(pruned, xb, recipe={"formats": {"force": "csr", **opts}})
        assert not any(op.attrs.get("specialize") for op in _linears(cm.plan))
    with pytest.raises(sparsecc.SparseccError, match="specialize"):
        sparsecc.compile(pruned, x1, recipe={"formats": {"specialize": "always"}})
    # the L2 budget is shared: room for the first layer's code and values only
    from sparsecc.codegen.llvm.emit_specialized import spmv_code_bytes

    first = _linears(cm.plan)[0]
    nnz0 = int(cm.plan.constants[first.params["data"]].shape[0])
    room = (spmv_code_bytes(nnz0, 48) + 4 * nnz0) // 1024 + 1
    cm = sparsecc.compile(pruned, x1, recipe={"formats": {
        "force": "csr", "specialize_spmv_budget_kb": room}})
    assert [op.attrs.get("specialize") for op in _linears(cm.plan)] == ["spmv", None]


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Sigmoid(), nn.Tanh(),
                                 nn.LeakyReLU(0.2), nn.ReLU6(), nn.ReLU()])
@pytest.mark.parametrize("fmt", ["csr", "bsr4x1"])
def test_every_epilogue_through_sparse_kernels(seed, act, fmt):
    """Fused (relu, clamp) and unfused (the rest: a pass right after the kernel) activations
    behind the LLVM sparse kernels, for linear (batch 1 and 6) and conv layers."""
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), act, nn.Conv2d(8, 8, 1), act,
                        nn.Flatten(), nn.Linear(8 * 5 * 5, 12), act).eval()
    pruned = sparsecc.prune(net, sparsity=0.7, pattern="4x1", scope="layer")
    for batch in (1, 6):
        x = torch.randn(batch, 4, 5, 5)
        cm = sparsecc.compile(pruned, x, recipe={"formats": {"force": fmt}})
        with torch.no_grad():
            assert_matches(cm(x), pruned(x), rtol=1e-4, atol=1e-5)
