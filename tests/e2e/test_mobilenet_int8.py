"""MobileNetV2 with its ImageNet weights, pruned 50 % (uniform: every layer but the first conv
and the classifier) and compiled in int8 (the 1x1 and full convs and the classifier; the
depthwise convs stay float32): top-1 agrees with the float32 compile on >= 95 % of 220
crops and mirror images of scikit-image's photos (issue #20). Calibration: 40 other crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.benchmarks.suite import prune_profile


@pytest.mark.slow
def test_mobilenet_v2_int8_agrees_with_float32():
    torch.set_num_threads(2)
    x = zoo.imagenet_crops(11, seed=0)
    cal = zoo.imagenet_crops(2, seed=1)
    model = prune_profile(zoo.mobilenet_v2_imagenet(), 0.5, "uniform")
    x0 = torch.from_numpy(x[:1])
    f32 = sparsecc.compile(model, x0)
    q8 = sparsecc.compile(model, x0, quantize="int8",
                          calibration=[torch.from_numpy(cal[i:i + 8]) for i in range(0, 40, 8)])
    assert q8.native is not None, q8.native_status
    assert q8.plan.info["quantize"]["int8_layers"] >= 30
    top_f = np.concatenate([f32(x[i:i + 20]).argmax(1) for i in range(0, len(x), 20)])
    top_q = np.concatenate([q8(x[i:i + 20]).argmax(1) for i in range(0, len(x), 20)])
    agree = float((top_f == top_q).mean())
    print(f"MobileNetV2 50 % uniform, int8 vs float32 top-1 agreement {agree:.4f} on {len(x)}")
    assert len(x) >= 200 and agree >= 0.95
