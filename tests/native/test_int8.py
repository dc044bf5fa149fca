"""int8 linear layers: the quantize / SpMV / GEMV / SpMM kernels called directly on every
instruction path this machine can run (VNNI when the host has it, AVX-512BW without VNNI,
AVX2 as a haswell object) against the numpy integer reference, bit for bit, including the
saturation worst case (every code 255 against every weight +-127, where vpmaddubsw's int16
pair sum would clip); then the pass and whole models through compile."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir
from torch import nn

import sparsecc
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.errors import SparseccError
from sparsecc.formats import qint8 as Q
from sparsecc.native import qlinear as QL
from sparsecc.native.kernels import f64_bits

HASWELL = jit.Host("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,"
                              "-avx512f,-avx512bw,-avx512dq,-avx512vl,-avx512vnni")
SKX = jit.Host("skylake-avx512", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+avx512f,"
                                 "+avx512bw,+avx512dq,+avx512vl,+avx512cd,-avx512vnni")
_HOST_VNNI = "+avx512vnni" in jit.host().features.split(",")
# (vector width, VNNI, object built for)
PATHS = [(8, False, HASWELL)]
if jit.host().vector_width == 16:
    PATHS.append((16, False, SKX))
    if _HOST_VNNI:
        PATHS.append((16, True, None))
FN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_CACHE: dict = {}


def _kernel(spec, host):
    key = (spec, host)
    if key not in _CACHE:
        mod = ir.Module("q8_test")
        spec.emit(mod, "k")
        obj = jit.compile_ir(ES.module_text(mod), h=host)
        _CACHE[key] = FN(jit.load_object(obj, ["k"])["k"])
    return _CACHE[key]


def _run(f, items, *args):
    a = np.array([int(v) for v in args], np.int64)
    f(0, items, a.ctypes.data)


def _weight(rng, o, k, density, extreme=False):
    w = rng.integers(-127, 128, (o, k)).astype(np.float32)
    if extreme:
        w = np.where(rng.random((o, k)) < 0.5, 127.0, -127.0).astype(np.float32)
    w[rng.random((o, k)) >= density] = 0.0
    if o > 2:
        w[1] = 0.0  # an empty row
    return w


def _quantize_codes(path, x, m, k, ld, scale, zero):
    """The quantize kernel's grouped codes as a (k4, ld, 4) uint8 array."""
    vw, _, host = path
    k4 = -(-k // 4)
    q = np.full((k4, ld, 4), 77, np.uint8)
    _run(_kernel(QL.QuantizeSpec(vw), host), m, x.ctypes.data, q.ctypes.data, m, k, k, ld,
         f64_bits(float(np.float32(1.0 / scale))), zero)
    return q


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"v{p[0]}{'-vnni' if p[1] else ''}")
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       zero=st.integers(0, 255), scale=st.floats(1e-3, 10.0))
def test_quantize_kernel_matches_numpy(path, m, k, seed, zero, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * scale * 100).astype(np.float32)
    x[0, 0] = np.float32(0.5 * scale)  # a tie: rounds to even in both
    x[-1, -1] = np.nan  # code 0 in both
    if k > 1:
        x[0, 1] = np.inf
    ld = m + 3
    q = _quantize_codes(path, x, m, k, ld, scale, zero)
    want = Q.quantize_act(x, scale, zero)
    k4 = -(-k // 4)
    got = q[:, :m, :].transpose(1, 0, 2).reshape(m, k4 * 4)
    np.testing.assert_array_equal(got[:, :k], want)
    pad = Q.quantize_act(np.zeros(1, np.float32), scale, zero)[0]
    assert (got[:, k:] == pad).all()  # inputs past k quantize 0.0
    assert (q[:, m:, :] == 77).all()  # nothing written past the rows


def _reference(codes, qw, mult, bias, act=None):
    y = Q.epilogue(Q.accumulate(codes, qw), mult, bias)
    return np.maximum(y, 0) if act == "relu" else y


def _call_linear(path, family, codes, qw, mult, bias, act="none", tile=1):
    """Run the SpMV / GEMV (one row) or SpMM / row-blocked GEMM kernel on uint8 ``codes``
    (m, k)."""
    vw, vnni, host = path
    m, k = codes.shape
    k4 = -(-k // 4)
    bits = 16 if qw.groups.dtype == np.uint16 else 32
    rows = next((r for r in (8, 4, 2) if qw.rows % r == 0), 1) if family == "gemm" else 1
    f = _kernel(QL.QLinearSpec(family, vw, vnni, bits, act, tile=tile, rows=rows), host)
    out = np.full((m, qw.rows), np.nan, np.float32)
    data = np.ascontiguousarray(qw.data)
    if family in ("gemv", "gemm"):  # every group: the (rows, k4) dword table
        data = np.zeros((qw.rows, k4, 4), np.int8)
        rws = np.repeat(np.arange(qw.rows), np.diff(qw.indptr))
        data[rws, qw.groups.astype(np.int64)] = qw.data
    if family in ("spmm", "gemm"):
        ld = -(-m // (vw * tile)) * vw * tile
        q = np.zeros((k4, ld, 4), np.uint8)
        padded = np.pad(codes, ((0, 0), (0, k4 * 4 - k)))
        q[:, :m, :] = padded.reshape(m, k4, 4).transpose(1, 0, 2)
        nrb = 3
        _run(f, (ld // (vw * tile)) * nrb, qw.indptr.ctypes.data, qw.groups.ctypes.data,
             data.ctypes.data, q.ctypes.data, out.ctypes.data, mult.ctypes.data,
             bias.ctypes.data, m, qw.rows, ld, nrb, 0, 0, 0, 0, 0, 0, 0, 0, k4)
        return out
    q = np.pad(codes[0], (0, k4 * 4 - k))
    _run(f, qw.rows, qw.indptr.ctypes.data, qw.groups.ctypes.data, data.ctypes.data,
         q.ctypes.data, out.ctypes.data, mult.ctypes.data, bias.ctypes.data, 1, qw.rows, k4, 1,
         0, 0, 0)
    return out


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"v{p[0]}{'-vnni' if p[1] else ''}")
@pytest.mark.parametrize("family", ["spmv", "gemv", "spmm", "gemm"])
@settings(max_examples=20, deadline=None)
@given(o=st.integers(1, 40), k=st.integers(1, 300), m=st.integers(1, 70),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 2**31 - 1),
       act=st.sampled_from(["none", "relu"]), tile=st.sampled_from([1, 2, 4]))
def test_linear_kernels_exact(path, family, o, k, m, density, seed, act, tile):
    rng = np.random.default_rng(seed)
    if family not in ("spmm", "gemm"):
        m, tile = 1, 1
    qw = Q.quantize_weight(_weight(rng, o, k, density))
    codes = rng.integers(0, 256, (m, k)).astype(np.uint8)
    mult = (rng.random(o) * 1e-3).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    got = _call_linear(path, family, codes, qw, mult, bias, act, tile)
    np.testing.assert_array_equal(got, _reference(codes, qw, mult, bias, act))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"v{p[0]}{'-vnni' if p[1] else ''}")
@pytest.mark.parametrize("family", ["spmv", "gemv", "spmm", "gemm"])
def test_saturation_worst_case(path, family, rng):
    """Every code 255 against +-127 weights (runs of one sign: the largest pair sums), and
    the long row whose int32 sum is 255 * 127 * 16384 = 530,579,456."""
    for k, density in ((16384, 1.0), (301, 1.0), (64, 0.5)):
        w = np.full((3, k), 127.0, np.float32)
        w[1] = -127.0
        w[2] = _weight(rng, 1, k, density, extreme=True)[0]
        qw = Q.quantize_weight(w)
        m = 1 if family not in ("spmm", "gemm") else 19
        codes = np.full((m, k), 255, np.uint8)
        one = np.ones(3, np.float32)
        got = _call_linear(path, family, codes, qw, one, np.zeros(3, np.float32),
                           tile=2 if m > 1 else 1)
        acc = Q.accumulate(codes, qw)
        assert acc[0, 0] == 255 * 127 * k and acc[0, 1] == -255 * 127 * k
        np.testing.assert_array_equal(got, acc.astype(np.float32))


def test_weight_and_activation_quantization():
    w = np.array([[0.5, -1.0, 0.25, 0, 0, 0, 0, 0.1, 3e-3], [0] * 9], np.float32)
    qw = Q.quantize_weight(w)
    assert qw.scale[0] == np.float32(1.0 / 127) and qw.scale[1] == 1.0
    np.testing.assert_array_equal(qw.dense()[0], [64, -127, 32, 0, 0, 0, 0, 13, 0])
    # groups: [0..3] and [4..7] (7 is 13) stored, [8] quantizes to 0: not stored; row 1 empty
    assert qw.indptr.tolist() == [0, 2, 2] and qw.groups.tolist() == [0, 1]
    s, z = Q.act_params(-1.0, 3.0)
    assert z == 64 and abs(s - 4 / 255) < 1e-9
    assert Q.act_params(2.0, 5.0)[1] == 0  # the range always holds 0
    assert Q.act_params(0.0, 0.0) == (1.0, 0)
    x = np.array([-1.0, 0.0, 3.0, 100.0, -100.0], np.float32)
    np.testing.assert_array_equal(Q.quantize_act(x, s, z), [0, 64, 255, 255, 0])


# ---- the pass and whole models --------------------------------------------------------------
ALL_INT8 = {"quantize": {"min_macs_per_input": 0.0, "direct_max_k": 0}}  # none kept for speed
BW = "+avx512bw" in jit.host().features.split(",")  # int8 codes written by their producer


class _MLP(nn.Module):
    def __init__(self, sizes, act=nn.ReLU):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


def _cal(k, n=4, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, k, generator=g) for _ in range(n)]


@pytest.mark.parametrize("sizes,act,sparsity", [
    ((37, 50, 9), nn.ReLU, 0.9), ((64, 128, 64, 10), nn.GELU, 0.5), ((5, 1, 3), nn.ReLU, 0.0),
    ((300, 70, 1), nn.Tanh, 0.95), ((64, 128, 96, 10), nn.ReLU6, 0.9)])
def test_compiled_int8_matches_executor_and_float(sizes, act, sparsity):
    torch.manual_seed(0)
    m = _MLP(sizes, act).eval()
    cal = _cal(sizes[0])
    cm = sparsecc.compile(m, cal[0], sparsity=sparsity, quantize="int8", calibration=cal,
                          recipe=ALL_INT8)
    assert cm.native is not None, cm.native_status
    kinds = [op.kind for op in cm.plan.ops if op.kind in ("linear", "qlinear")]
    assert kinds and set(kinds) == {"qlinear"}, kinds
    flt = sparsecc.compile(m, cal[0], sparsity=sparsity)
    from sparsecc.api import CompiledModel

    ex = CompiledModel(cm.plan, native=False)
    rng = np.random.default_rng(1)
    for batch in (1, 2, 7, 16, 33):
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        got = cm(x)
        np.testing.assert_array_equal(got, ex(x))  # native == executor, bit for bit
        ref = flt(x)
        err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-6)
        assert err < 0.08, (batch, err)


def test_int8_linears_write_codes():
    """An int8 linear read only by another (its outputs whole 4-feature groups, its
    activation in the epilogue) writes that linear's grouped codes at several rows (one row
    keeps the float output and the SpMV's own quantize): native == executor bit for bit at
    batches across tile edges."""
    torch.manual_seed(3)
    m = _MLP((40, 96, 64, 30, 12), nn.ReLU).eval()
    cal = _cal(40)
    cm = sparsecc.compile(m, cal[0], sparsity=0.8, quantize="int8", calibration=cal,
                          recipe=ALL_INT8)
    assert cm.native is not None, cm.native_status
    labels = [cm.native.lib.labels[i] for i, op in enumerate(cm.plan.ops)
              if op.kind == "qlinear"]
    # 96 and 64 outputs feed int8 linears; 30 is not a whole number of groups; 12 is the end
    assert [lb.endswith("-> int8 codes (several rows)") for lb in labels] == \
        [BW, BW, False, False], labels
    from sparsecc.api import CompiledModel

    ex = CompiledModel(cm.plan, native=False)
    rng = np.random.default_rng(4)
    for batch in (1, 2, 15, 16, 17, 40):
        x = rng.standard_normal((batch, 40)).astype(np.float32)
        x[0] *= 8  # saturated codes
        np.testing.assert_array_equal(cm(x), ex(x))


def test_pass_keeps_layers_float_and_reports():
    torch.manual_seed(0)
    m = _MLP((32, 64, 64, 8)).eval()
    cal = _cal(32)
    cm = sparsecc.compile(m, cal[0], sparsity=0.5, calibration=cal,
                          recipe={"quantize": {"keep_float": ["net.4"], "method": "percentile",
                                               "min_macs_per_input": 0.0}},
                          quantize="int8")
    ops = {op.layer: op for op in cm.plan.ops if op.kind in ("linear", "qlinear")}
    assert ops["net.4"].kind == "linear" and ops["net.4"].attrs["precision"] == \
        "float32 (keep_float)"
    assert ops["net.0"].kind == "qlinear" and 0 < ops["net.0"].attrs["qerr"] < 0.05
    text = str(cm.report(measure=False))
    assert "precision" in text and "int8 x" in text and "keep_float" in text
    # a layer with few multiply-adds per input value stays float32 (net.4: 64 -> 8 at 50 %
    # is 4 a value, under a threshold of 5), unless the threshold allows it
    cm3 = sparsecc.compile(m, cal[0], sparsity=0.5, quantize="int8", calibration=cal,
                           recipe={"quantize": {"min_macs_per_input": 5.0}})
    ops3 = {op.layer: op for op in cm3.plan.ops if op.kind in ("linear", "qlinear")}
    assert ops3["net.4"].kind == "linear" and "multiply-adds per input" in \
        ops3["net.4"].attrs["precision"]
    assert ops3["net.0"].kind == ops3["net.2"].kind == "qlinear"
    # a tolerance nothing meets keeps every layer float32, and says why
    cm2 = sparsecc.compile(m, cal[0], sparsity=0.5, quantize="int8", calibration=cal,
                           recipe={"quantize": {"max_error": 1e-9, "min_macs_per_input": 0.0}})
    assert all(op.kind != "qlinear" for op in cm2.plan.ops)
    assert all("int8 error" in op.attrs["precision"] for op in cm2.plan.ops
               if op.kind == "linear")


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_calibration_methods(method):
    """minmax keeps the outlier, percentile clips it, mse / entropy do no worse than minmax
    on their own measure (they search clip ranges that include minmax's)."""
    from sparsecc.passes.quantize import act_range

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50_000), [40.0]]).astype(np.float32)
    s, z = act_range(x, method, 99.9)
    hi = (255 - z) * s
    if method == "minmax":
        assert abs(hi - 40.0) < s
    if method == "percentile":
        assert hi < 5.0
    sm, zm = act_range(x, "minmax", 99.9)

    def mse(s_, z_):
        return float(np.mean((Q.dequantize_act(Q.quantize_act(x, s_, z_), s_, z_) - x) ** 2))

    if method == "mse":
        assert mse(s, z) <= mse(sm, zm)
    if method == "entropy":
        edges = np.linspace(min(x.min(), 0), x.max(), 2049)

        def kl(s_, z_):
            p = np.histogram(x, edges)[0] + 1e-9
            q = np.histogram(Q.dequantize_act(Q.quantize_act(x, s_, z_), s_, z_), edges)[0] \
                + 1e-9
            p, q = p / p.sum(), q / q.sum()
            return float(np.sum(p * np.log(p / q)))

        assert kl(s, z) <= kl(sm, zm) + 1e-12


def test_int8_artifact_round_trip_and_tampering(tmp_path):
    torch.manual_seed(0)
    m = _MLP((40, 64, 10)).eval()
    cal = _cal(40)
    cm = sparsecc.compile(m, cal[0], sparsity=0.8, quantize="int8", calibration=cal)
    path = tmp_path / "q.scc"
    cm.save(path)
    back = sparsecc.load(path)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_array_equal(back(x), cm(x))
    # a group index past the input: refused on load, never read
    from sparsecc.runtime.artifact import load_plan, save_plan
    from sparsecc.runtime.ops import OPS

    plan = load_plan(path, OPS)
    name = next(op.params["indices"] for op in plan.ops if op.kind == "qlinear")
    plan.constants[name] = plan.constants[name].copy()
    plan.constants[name][0] = 60000
    bad = tmp_path / "bad.scc"
    save_plan(plan, bad)
    with pytest.raises(SparseccError, match="qlinear index"):
        sparsecc.load(bad)


def test_calibration_errors():
    m = _MLP((8, 4)).eval()
    x = torch.randn(2, 8)
    with pytest.raises(SparseccError, match="calibration"):
        sparsecc.compile(m, x, quantize="int8", calibration=[])
    with pytest.raises(SparseccError, match="mode"):
        sparsecc.compile(m, x, quantize="int4", calibration=[x])


class _CNN(nn.Module):
    """3x3 stride 1 / 2, 1x1 stride 1 / 2, a dilated conv, channel counts off 4, residual
    adds after a 3x3 conv (fused into its crop) and a 1x1 (into the kernel), a depthwise conv
    (stays float32), a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 10, 3, padding=1)
        self.c2 = nn.Conv2d(10, 10, 3, padding=1)
        self.c3 = nn.Conv2d(10, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c4 = nn.Conv2d(16, 7, 1)
        self.c5 = nn.Conv2d(7, 12, 1, stride=2)
        self.c6 = nn.Conv2d(12, 12, 3, padding=2, dilation=2)
        self.c7 = nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(12 * 3 * 3, 5)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        y = torch.relu(self.c3(y))
        y = self.c4(torch.relu(self.dw(y)))
        y = torch.relu(self.c5(y))
        y = torch.relu(self.c7(y) + y)  # 1x1: no wrap columns, the add in the kernel
        y = torch.tanh(self.c6(y))
        return self.fc(y.flatten(1))


def test_compiled_int8_convs(monkeypatch):
    """Against the executor exactly and float32 closely. With a whole-batch tail allowed from
    1 KB a sample, the float32 model gets one and the int8 model none (its tail would hold
    int8 convs, slower over the whole batch)."""
    monkeypatch.setenv("SPARSECC_TAIL_BYTES", "1K")
    torch.manual_seed(0)
    m = _CNN().eval()
    g = torch.Generator().manual_seed(3)
    cal = [torch.randn(4, 3, 11, 11, generator=g) for _ in range(3)]
    cm = sparsecc.compile(m, cal[0], sparsity=0.5, quantize="int8", calibration=cal,
                          recipe=ALL_INT8)
    assert cm.native is not None, cm.native_status
    kinds = {op.layer: op.kind for op in cm.plan.ops if op.layer}
    assert kinds["c1"] == kinds["c3"] == kinds["c6"] == "qconv2d" and kinds["fc"] == "qlinear"
    assert kinds["dw"] == "conv2d"
    labels = {cm.plan.ops[i].layer: t for i, t in cm.native.lib.labels.items()}
    assert labels["c2"].endswith("+ residual add") and labels["c7"].endswith("+ residual add")
    flt = sparsecc.compile(m, cal[0], sparsity=0.5)
    assert cm.native.lib.program.tail == 0 and flt.native.lib.program.tail > 0
    from sparsecc.api import CompiledModel

    ex = CompiledModel(cm.plan, native=False)
    rng = np.random.default_rng(5)
    for batch in (1, 2, 5):
        x = rng.standard_normal((batch, 3, 11, 11)).astype(np.float32)
        got = cm(x)
        np.testing.assert_array_equal(got, ex(x))
        ref = flt(x)
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.08



class _Chain(nn.Module):
    """1x1 int8 convs reading each other: codes only (c2 reads c1's output alone), codes and
    float32 (y2 feeds c3 and the residual add fused into it), the add's output as codes
    (c4 and c8 read it: c8 at stride 2 quantizes its own), a tanh (its own pass: no codes),
    6 channels (a part group: none), the model's outputs (none)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 1), \
            nn.Conv2d(16, 16, 1)
        self.c4, self.c5, self.c6, self.c7 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 1), \
            nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)
        self.c8 = nn.Conv2d(16, 8, 1, stride=2)

    def forward(self, x):
        y2 = torch.clamp(self.c2(torch.relu(self.c1(x))), 0, 6)
        y = torch.relu(self.c3(y2) + y2)
        z = self.c8(y)
        y = torch.tanh(self.c4(y))
        return self.c7(self.c6(self.c5(y))), z


def test_int8_convs_write_codes():
    """An int8 1x1 conv whose output another int8 1x1 conv reads writes that conv's codes
    from its epilogue (AVX-512BW); native == executor bit for bit."""
    torch.manual_seed(1)
    m = _Chain().eval()
    cal = [torch.randn(2, 8, 9, 7) for _ in range(2)]
    cm = sparsecc.compile(m, cal[0], sparsity=0.5, quantize="int8", calibration=cal,
                          recipe=ALL_INT8)
    assert cm.native is not None, cm.native_status
    kinds = {op.layer: op.kind for op in cm.plan.ops}
    assert all(kinds[f"c{i}"] == "qconv2d" for i in range(1, 9)), kinds
    labels = {cm.plan.ops[i].layer: t for i, t in cm.native.lib.labels.items()}
    want = {"c1": " -> int8 codes", "c2": " -> int8 codes + float32",
            "c3": " + residual add -> int8 codes + float32", "c4": "", "c5": " -> int8 codes",
            "c6": "", "c7": "", "c8": ""}
    for layer, end in want.items():
        assert labels[layer].endswith(end if BW else ""), (layer, labels[layer])
        assert ("codes" in labels[layer]) == (BW and bool(end)), (layer, labels[layer])
    from sparsecc.api import CompiledModel

    ex = CompiledModel(cm.plan, native=False)
    rng = np.random.default_rng(2)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 8, 9, 7)).astype(np.float32)
        x[0] *= 6  # past the calibrated range: saturated codes
        for got, want in zip(cm(x), ex(x), strict=True):
            np.testing.assert_array_equal(got, want)


def test_speed_rule_spares_convs_fed_by_depthwise():
    """A 1x1 conv with few multiply-adds per input value stays float32 (its input's
    quantize pass would cost more than int8 saves), except when a depthwise conv read by
    nothing else writes its input: that conv writes the codes itself (MobileNetV2's project
    convs)."""
    m = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6(), nn.Conv2d(8, 2, 1),
                      nn.Conv2d(2, 8, 3, 1, 1), nn.Conv2d(8, 2, 1)).eval()
    cal = [torch.randn(2, 8, 12, 12) for _ in range(2)]
    cm = sparsecc.compile(m, cal[0], quantize="int8", calibration=cal)
    kinds = {op.layer: op.kind for op in cm.plan.ops if op.layer}
    assert kinds["2"] == "qconv2d" and kinds["4"] == "conv2d", kinds
    rows = {r["name"]: r["precision"] for r in cm.report(measure=False).rows}
    assert "multiply-adds per input value" in rows["4"], rows


@pytest.mark.parametrize("hw,stride,c", [(6, 1, 8), (56, 1, 12), (29, 2, 16), (14, 2, 8),
                                         (10, 1, 6)])
def test_depthwise_writes_int8_codes(hw, stride, c):
    """A float depthwise conv read only by an int8 1x1 conv writes that conv's uint8 codes
    itself (4-channel groups, a masked byte store a vector; AVX-512BW): whole planes, bands,
    stride 2, two short rows a vector. Native == executor bit for bit; 6 channels (a part
    group) keep the quantize pass."""
    torch.manual_seed(hw)
    m = nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=c), nn.ReLU6(),
                      nn.Conv2d(c, 8, 1), nn.ReLU()).eval()
    cal = [torch.randn(2, c, hw, hw) * 2 for _ in range(2)]
    cm = sparsecc.compile(m, cal[0], sparsity=0.5, quantize="int8", calibration=cal,
                          recipe=ALL_INT8)
    assert cm.native is not None, cm.native_status
    assert [op.kind for op in cm.plan.ops] == ["conv2d", "qconv2d"]
    label = cm.native.lib.labels[0]
    assert label.endswith("-> int8 codes") == (BW and c % 4 == 0), label
    from sparsecc.api import CompiledModel

    ex = CompiledModel(cm.plan, native=False)
    rng = np.random.default_rng(hw)
    for batch in (1, 3):
        x = (rng.standard_normal((batch, c, hw, hw)) * 2).astype(np.float32)
        x[0] *= 8  # past the calibrated range: codes saturate at 255
        np.testing.assert_array_equal(cm(x), ex(x))


def _planes_reference(x, g, scale, zero):
    """Grouped polyphase planes (cg, phase, hq, wq, 4) of each sample, as PhaseSpec lays
    them out (formats.qint8's codes; padding and channels past C hold the code of 0.0)."""
    n, c, h, w = x.shape
    cg = -(-c // 4)
    codes = np.full((n, cg * 4, h + 2 * g.ph + g.hq * g.sh, w + 2 * g.pw + g.wq * g.sw),
                    Q.quantize_act(np.zeros(1, np.float32), scale, zero)[0], np.uint8)
    codes[:, :c, g.ph:g.ph + h, g.pw:g.pw + w] = Q.quantize_act(x, scale, zero)
    out = np.empty((n, cg, len(g.pys), len(g.pxs), g.hq, g.wq, 4), np.uint8)
    for iy, py in enumerate(g.pys):
        for ix, px in enumerate(g.pxs):
            sub = codes[:, :, py:py + g.hq * g.sh:g.sh, px:px + g.wq * g.sw:g.sw]
            out[:, :, iy, ix] = sub.reshape(n, cg, 4, g.hq, g.wq).transpose(0, 1, 3, 4, 2)
    return out.reshape(n, -1)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"v{p[0]}{'-vnni' if p[1] else ''}")
@pytest.mark.parametrize("geo", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)), ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 3), (1, 1), (2, 2), (2, 2)), ((5, 3), (2, 1), (2, 0), (1, 1)),
    ((7, 7), (2, 2), (3, 3), (1, 1)), ((3, 3), (3, 3), (1, 1), (1, 1))])
def test_phase_kernel_matches_reference(path, geo, rng):
    """The int8 conv's input pass against numpy at strides 1 (contiguous loads), 2 (two loads
    and a shuffle of their even floats) and 3 (gathers)."""
    from sparsecc.ir.kinds import conv_out
    from sparsecc.runtime.ops.sparse import Shift

    vw, _, host = path
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo
    for n, c, h, w in ((1, 3, 9, 13), (2, 8, 17, 5), (1, 13, 4, 33)):
        ho, wo = conv_out(h, kh, sh, ph, dh), conv_out(w, kw, sw, pw, dw)
        g = Shift(kh, kw, sh, sw, dh, dw, ph, pw, ho, wo)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32) * 3
        scale, zero = 0.05, 97
        cg = -(-c // 4)
        per = cg * g.phases * g.plane + g.slack
        q = np.full((n, per, 4), 201, np.uint8)
        _run(_kernel(QL.PhaseSpec(vw), host), n * cg * g.phases, x.ctypes.data, q.ctypes.data,
             n, c, h, w, g.ph, g.pw, g.sh, g.sw, g.pys.ctypes.data, len(g.pys),
             g.pxs.ctypes.data, len(g.pxs), g.hq, g.wq, per,
             f64_bits(float(np.float32(1 / scale))), zero)
        body = q[:, :per - g.slack].reshape(n, -1)
        np.testing.assert_array_equal(body, _planes_reference(x, g, scale, zero))
        assert (q[:, per - g.slack:] == 201).all()  # the slack is not written


def test_channel_block_pattern_fills_int8_groups():
    """'1x4c' prunes 4 input channels at one kernel position together: every int8 group of
    the pruned conv is either stored full or absent, and the layer density is the target."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(12, 16, 3), nn.Conv2d(16, 8, 1))
    pruned = sparsecc.prune(conv, 0.75, pattern="1x4c", scope="layer")
    for layer in pruned:
        w = layer.weight.detach().numpy()
        assert abs((w == 0).mean() - 0.75) < 0.05
        blocks = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1, 4)
        nz = (blocks != 0).sum(axis=2)
        assert set(np.unique(nz)) <= {0, 4}
        qw = Q.quantize_weight(Q.conv_weight_rows(w))
        assert qw.nnz == np.count_nonzero(w) == qw.data.size
    with pytest.raises(SparseccError):
        sparsecc.prune(conv, 0.5, pattern="1x4x")


@pytest.mark.parametrize("k,int8", [(3, False), (7, True)])
def test_direct_first_conv_stays_float(k, int8):
    """A conv of <= 4 input channels and <= 32 inputs per output (3x3 RGB) stays float32 for
    the direct kernel; a 7x7 RGB conv (147 inputs) goes int8; direct_max_k 0 turns it off.
    Either way the model matches torch within the int8 tolerance."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, k, 2, k // 2), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU()).eval()
    cal = [torch.randn(4, 3, 20, 20) for _ in range(2)]
    for max_k, want in ((32, int8), (0, True)):
        cm = sparsecc.compile(m, cal[0][:1], quantize="int8", calibration=cal,
                              recipe={"quantize": {"direct_max_k": max_k,
                                                   "min_macs_per_input": 0.0}})
        first = cm.plan.ops[0]
        assert (first.kind == "qconv2d") == want, (max_k, first.kind)
        if not want:
            assert "direct conv" in first.attrs["precision"]
        x = torch.randn(2, 3, 20, 20)
        with torch.no_grad():
            ref = m(x).numpy()
        assert np.abs(cm(x) - ref).max() <= 0.05 * np.abs(ref).max()
