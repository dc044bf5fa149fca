"""The DeepSparse per-layer join (bench/peer_layers.py): names, parsing, attribution."""

from __future__ import annotations

import pytest

from sparsecc.benchmarks import peer_layers as PL

_ROWS = [
    ["Name", "OutDims", "KerDims", "Strides", "ActSpars", "Time(ms)", "Util(%)", "TFLOPS",
     "Canonical Name"],
    ["Naive Subgraph 0", "[-1]", "[]", "[-1]", "0.0000", "0.0190", "0.0000", "0.0000", "<none>"],
    ["pyramid_0", "[16, 64]", "[]", "[1]", "0.1768", "19.6044", "58.4517", "0.1942",
     "/conv1/Conv_output_0,/maxpool/MaxPool_output_0"],
    ["pyramid_6", "[16, 128]", "[]", "[1]", "0.4475", "2.6226", "449.5926", "1.4942",
     "/layer2/layer2.0/conv2/Conv_output_0,"
     "/layer2/layer2.0/downsample/downsample.0/Conv_output_0"],
    ["ks_convolution-90.0%_7", "[16, 128]", "[3, 3]", "[1]", "0.4385", "2.2391", "498.3489",
     "1.6561", "/layer2/layer2.1/conv1/Conv_output_0"],
    ["gemm_20", "[1, 16]", "[512]", "[1]", "0.0000", "0.1079", "46.2397", "0.1545", "191"],
]
# as deepsparse.debug_analysis prints it: padded cells, then the total
_TEXT = "\n".join(" | ".join(f"{c:24s}" for c in r) for r in _ROWS) + \
    "\nTotal Time(MS): 57.457400\n"


@pytest.mark.parametrize("tensor,module", [
    ("/conv1/Conv_output_0", "conv1"),
    ("/layer1/layer1.0/conv1/Conv_output_0", "layer1.0.conv1"),
    ("/layer2/layer2.0/downsample/downsample.0/Conv_output_0", "layer2.0.downsample.0"),
    ("/features/features.1/conv/conv.0/conv.0.0/Conv_output_0", "features.1.conv.0.0"),
    ("191", None), ("<none>", None)])
def test_module_of(tensor, module):
    assert PL.module_of(tensor) == module


def test_parse_and_join():
    ops, total = PL.parse_analysis(_TEXT)
    assert total == pytest.approx(57.4574)
    assert [o.name for o in ops] == ["Naive Subgraph 0", "pyramid_0", "pyramid_6",
                                     "ks_convolution-90.0%_7", "gemm_20"]
    assert ops[2].modules == ["layer2.0.conv2", "layer2.0.downsample.0"]
    assert ops[2].ms == pytest.approx(2.6226)
    rows = [dict(name="x_in", op="reshape", measured_us=5.0, mflops=0.0),
            dict(name="conv1", op="conv2d+relu", measured_us=20000.0, mflops=3700.0),
            dict(name="maxpool", op="max_pool2d", measured_us=0.0, mflops=10.0),
            dict(name="layer2.0.conv2", op="conv2d", measured_us=3000.0, mflops=180.0),
            dict(name="add_3", op="add+relu", measured_us=400.0, mflops=1.0),
            dict(name="layer2.0.downsample.0", op="conv2d", measured_us=1000.0, mflops=20.0),
            dict(name="layer2.1.conv1", op="conv2d+relu", measured_us=2500.0, mflops=185.0),
            dict(name="avgpool", op="mean", measured_us=90.0, mflops=8.0),
            dict(name="fc", op="linear", measured_us=200.0, mflops=16.0)]
    got = {o.name: o for o in PL.join(ops, rows)}
    assert got["(before)"].ours == ["x_in"]
    assert got["pyramid_0"].ours_ms == pytest.approx(20.0)
    assert got["pyramid_0"].mflops == pytest.approx(3710.0)
    # the add between the two convs of one DeepSparse op stays with it
    assert got["pyramid_6"].ours == ["layer2.0.conv2", "add_3", "layer2.0.downsample.0"]
    assert got["pyramid_6"].ours_ms == pytest.approx(4.4)
    # the pool after the last conv joins it; the classifier finds the bare gemm
    assert got["ks_convolution-90.0%_7"].ours == ["layer2.1.conv1", "avgpool"]
    assert got["gemm_20"].ours == ["fc"] and got["gemm_20"].ours_ms == pytest.approx(0.2)
    lines = PL.table(list(got.values()), 16, 320.0)
    assert lines[-1].startswith("| total (batch 16) |")
    row = next(ln for ln in lines if ln.startswith("| pyramid_6 |"))
    assert "| 2.623 | 4.400 | 1.68 |" in row
