"""Every op of the runtime, compiled from a tiny module and checked against torch.

Each case is compiled at batch 2 and run at batch 2 and 3 (the batch dim is symbolic), on
fresh random inputs; odd sizes and 1-wide dims are mixed in.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import check_compiled


class _Fn(nn.Module):
    def __init__(self, fn, mods):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)


class _Fn1(_Fn):
    def forward(self, x):
        return self.fn(self, x)


class _Fn2(_Fn):
    def forward(self, x, y):
        return self.fn(self, x, y)


class _Fn3(_Fn):
    def forward(self, x, y, z):
        return self.fn(self, x, y, z)


def Fn(fn, *mods: nn.Module) -> nn.Module:
    """A module running ``fn(self, *inputs)``; fx needs a fixed arity, taken from ``fn``."""
    arity = len(inspect.signature(fn).parameters) - 1
    return {1: _Fn1, 2: _Fn2, 3: _Fn3}[arity](fn, mods)


def randn(*shape):
    return lambda b: (torch.randn(b, *shape),)


CASES = {
    # linear
    "linear": (lambda: nn.Linear(7, 5), randn(7)),
    "linear_nobias_3d": (lambda: nn.Linear(6, 1, bias=False), randn(4, 6)),
    "F.linear": (lambda: Fn(lambda s, x: F.linear(x, s.mods[0].weight, s.mods[0].bias),
                            nn.Linear(5, 3)), randn(5)),
    "matmul_const": (lambda: Fn(lambda s, x: x @ s.mods[0].weight, nn.Linear(5, 4)), randn(3, 4)),
    # conv
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), randn(3, 9, 7)),
    "conv2d_stride_pad_dil": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2),
                              randn(3, 11, 10)),
    "conv2d_rect": (lambda: nn.Conv2d(2, 3, (1, 3), stride=(2, 1), padding=(0, 1)),
                    randn(2, 5, 6)),
    "conv2d_same_even": (lambda: nn.Conv2d(2, 3, 4, padding="same"), randn(2, 7, 6)),
    "conv2d_1x1": (lambda: nn.Conv2d(6, 4, 1), randn(6, 5, 5)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), randn(4, 6, 5)),
    "conv2d_depthwise": (lambda: nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5),
                         randn(5, 9, 9)),
    "conv2d_depthwise_mult": (lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), randn(3, 6, 4)),
    "conv2d_1wide": (lambda: nn.Conv2d(1, 1, 1), randn(1, 1, 1)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2), randn(3, 17)),
    "conv1d_depthwise": (lambda: nn.Conv1d(4, 4, 3, groups=4, dilation=2), randn(4, 11)),
    "F.conv2d": (lambda: Fn(lambda s, x: F.conv2d(x, s.mods[0].weight, None, 1, 1),
                            nn.Conv2d(3, 2, 3)), randn(3, 5, 5)),
    # pooling
    "maxpool2d": (lambda: nn.MaxPool2d(3, 2, 1), randn(3, 9, 8)),
    "maxpool2d_ceil_dil": (lambda: nn.MaxPool2d(2, 2, dilation=2, ceil_mode=True),
                           randn(2, 9, 9)),
    "avgpool2d": (lambda: nn.AvgPool2d(3, 2, 1), randn(3, 7, 8)),
    "avgpool2d_nopad_ceil": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                  count_include_pad=False), randn(2, 8, 7)),
    "avgpool2d_divisor": (lambda: nn.AvgPool2d(2, divisor_override=3), randn(2, 6, 6)),
    "adaptive_avg": (lambda: nn.AdaptiveAvgPool2d((3, 2)), randn(2, 7, 5)),
    "adaptive_max": (lambda: nn.AdaptiveMaxPool2d(3), randn(2, 8, 7)),
    "F.adaptive_avg_1x1": (lambda: Fn(lambda s, x: F.adaptive_avg_pool2d(x, 1)), randn(3, 5, 5)),
    "maxpool1d": (lambda: nn.MaxPool1d(3, 2), randn(3, 10)),
    "avgpool1d": (lambda: nn.AvgPool1d(2), randn(3, 9)),
    "adaptive_avg1d": (lambda: nn.AdaptiveAvgPool1d(4), randn(3, 9)),
    "F.max_pool2d": (lambda: Fn(lambda s, x: F.max_pool2d(x, 2)), randn(2, 6, 6)),
    # activations
    "relu": (lambda: nn.ReLU(), randn(9)),
    "relu6": (lambda: nn.ReLU6(), lambda b: (torch.randn(b, 9) * 5,)),
    "gelu": (lambda: nn.GELU(), randn(11)),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), randn(11)),
    "silu": (lambda: nn.SiLU(), randn(11)),
    "sigmoid": (lambda: nn.Sigmoid(), randn(11)),
    "tanh": (lambda: nn.Tanh(), randn(11)),
    "hardswish": (lambda: nn.Hardswish(), lambda b: (torch.randn(b, 11) * 4,)),
    "hardsigmoid": (lambda: nn.Hardsigmoid(), lambda b: (torch.randn(b, 11) * 4,)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), randn(11)),
    "elu": (lambda: nn.ELU(0.7), randn(11)),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 0.25), randn(11)),
    "functional_acts": (lambda: Fn(lambda s, x: F.relu(x) + F.gelu(x, approximate="tanh")
                                   + F.silu(x) + torch.sigmoid(x) + x.tanh() + F.relu6(x * 4)
                                   + F.hardswish(x) + F.hardsigmoid(x) + x.clamp(min=-0.1)
                                   + torch.clamp(x, -0.2, 0.3)), randn(5, 3)),
    # arithmetic with broadcasting and scalars
    "add_broadcast": (lambda: Fn(lambda s, x, y: x + y), lambda b: (torch.randn(b, 3, 4),
                                                                    torch.randn(b, 1, 4))),
    "sub_mul_div": (lambda: Fn(lambda s, x, y: (x - y) * y / (y.abs() + 1)),
                    lambda b: (torch.randn(b, 4), torch.randn(b, 4))),
    "scalars": (lambda: Fn(lambda s, x: 2 - x * 3 + 1 / (x.abs() + 1) - x / 2 + x ** 2), randn(5)),
    "const_tensor_operand": (lambda: Fn(lambda s, x: x * s.mods[0].weight + s.mods[0].bias,
                                        nn.LayerNorm(4)), randn(3, 4)),
    "torch_add_method_mul": (lambda: Fn(lambda s, x: torch.add(x, x.mul(2)).sub(1).div(3)),
                             randn(4)),
    "unary": (lambda: Fn(lambda s, x: torch.exp(x) + torch.sqrt(x.abs()) - torch.rsqrt(x.abs()
                                                                                   + 1) - (-x)),
              randn(6)),
    # data movement
    "cat": (lambda: Fn(lambda s, x, y: torch.cat([x, y, x], dim=1)),
            lambda b: (torch.randn(b, 2, 3), torch.randn(b, 1, 3))),
    "cat_negative_dim": (lambda: Fn(lambda s, x: torch.cat((x, x * 2), -1)), randn(3, 2)),
    "stack": (lambda: Fn(lambda s, x: torch.stack([x, x + 1], dim=1)), randn(3)),
    "flatten_view_reshape": (lambda: Fn(lambda s, x: x.flatten(1).view(x.size(0), 2, -1)
                                        .reshape(-1, 5 * 3)), randn(2, 5, 3)),
    "nn_flatten_contiguous": (lambda: Fn(lambda s, x: s.mods[0](x.transpose(1, 2).contiguous()),
                                         nn.Flatten()), randn(3, 4)),
    "permute": (lambda: Fn(lambda s, x: x.permute(0, 3, 1, 2) * 1), randn(2, 3, 4)),
    "transpose_T": (lambda: Fn(lambda s, x: x.transpose(-1, -2) + 1), randn(3, 5)),
    "unsqueeze_squeeze": (lambda: Fn(lambda s, x: x.unsqueeze(1).squeeze(1) + x[:, None, :, 0]
                                     .squeeze(1)[..., None]), randn(4, 1)),
    "getitem": (lambda: Fn(lambda s, x: x[:, 1:4:2, -1] + x[:, 0, 0:1]), randn(5, 3)),
    "getitem_ellipsis_none": (lambda: Fn(lambda s, x: x[..., None, 1:]), randn(2, 3)),
    "split": (lambda: Fn(lambda s, x: torch.split(x, [1, 3], dim=1)), randn(4, 2)),
    "chunk_getitem": (lambda: Fn(lambda s, x: x.chunk(3, -1)[1] * x.chunk(3, -1)[2]), randn(9)),
    "unbind": (lambda: Fn(lambda s, x: x.unbind(1)[2]), randn(3, 4)),
    "expand": (lambda: Fn(lambda s, x: x[:, :1].expand(-1, 4) + x), randn(4)),
    # reductions and normalisations
    "softmax": (lambda: Fn(lambda s, x: F.softmax(x, dim=-1)), randn(3, 7)),
    "softmax_dim1": (lambda: nn.Softmax(dim=1), randn(5, 3)),
    "log_softmax": (lambda: Fn(lambda s, x: x.log_softmax(1)), randn(6)),
    "layer_norm": (lambda: nn.LayerNorm(6), randn(3, 6)),
    "layer_norm_2d_noaffine": (lambda: nn.LayerNorm([3, 4], elementwise_affine=False),
                               randn(3, 4)),
    "F.layer_norm": (lambda: Fn(lambda s, x: F.layer_norm(x, (5,), eps=1e-3)), randn(5)),
    "mean": (lambda: Fn(lambda s, x: x.mean(dim=(2, 3), keepdim=True) + x.mean(-1)[..., None]),
             randn(3, 4, 5)),
    "sum_amax": (lambda: Fn(lambda s, x: x.sum(1) + torch.amax(x, dim=1)), randn(4, 3)),
    "batchnorm_standalone": (lambda: Fn(lambda s, x: s.mods[0](x + 1), _bn(4)), randn(4, 3, 3)),
    # matmul and attention
    "matmul_bmm": (lambda: Fn(lambda s, x, y: torch.bmm(x, y) + x @ y),
                   lambda b: (torch.randn(b, 3, 4), torch.randn(b, 4, 2))),
    "sdpa": (lambda: Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v)),
             lambda b: (torch.randn(b, 2, 5, 4), torch.randn(b, 2, 6, 4),
                        torch.randn(b, 2, 6, 3))),
    "sdpa_causal_scale": (lambda: Fn(lambda s, q: F.scaled_dot_product_attention(
        q, q, q, is_causal=True, scale=0.3)), randn(2, 5, 4)),
    "sdpa_float_mask": (lambda: Fn(lambda s, q, m: F.scaled_dot_product_attention(
        q, q, q, attn_mask=m)), lambda b: (torch.randn(b, 2, 4, 3), torch.randn(b, 1, 4, 4))),
    "sdpa_bool_mask": (lambda: Fn(lambda s, q, v, m: F.scaled_dot_product_attention(
        q, q, v, attn_mask=m)),
        lambda b: (torch.randn(b, 3, 7, 9), torch.randn(b, 3, 7, 1),
                   torch.arange(7).expand(b, 1, 1, 7) < 5)),
    "sdpa_5d_numpy_path": (lambda: Fn(lambda s, q: F.scaled_dot_product_attention(q, q, q)),
                           randn(2, 2, 3, 4)),
    "sdpa_fully_masked_rows": (lambda: Fn(lambda s, q, m: F.scaled_dot_product_attention(
        q, q, q, attn_mask=m)), lambda b: (torch.randn(b, 2, 4, 3),
                                           torch.arange(4).expand(b, 1, 4, 4) < torch.arange(
                                               4).view(4, 1) - 1)),
    "sdpa_fully_masked_rows_5d": (lambda: Fn(lambda s, q, m: F.scaled_dot_product_attention(
        q, q, q, attn_mask=m)), lambda b: (torch.randn(b, 2, 2, 4, 3),
                                           torch.arange(4).expand(b, 1, 1, 4, 4) < torch.arange(
                                               4).view(4, 1) - 1)),
    # embedding, selection, casts
    "embedding": (lambda: nn.Embedding(11, 4), lambda b: (torch.randint(0, 11, (b, 5)),)),
    "where_masked_fill": (lambda: Fn(lambda s, x: torch.where(x > 0, x, 0.5 * x)
                                     .masked_fill(x < -1, 3.0)), randn(7)),
    "cast_float": (lambda: Fn(lambda s, x: (x > 0).float() + (x > 0).to(torch.float32)), randn(4)),
    "inplace_semantics": (lambda: Fn(_inplace), randn(4)),
    "inplace_relu_module": (lambda: Fn(lambda s, x: s.mods[0](x * 1) + 1, nn.ReLU(inplace=True)),
                            randn(4)),
    "dropout_identity": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Identity(), nn.ReLU()),
                         randn(4)),
    "tuple_output": (lambda: Fn(lambda s, x: (x + 1, x.sum(-1))), randn(3)),
    "output_is_input": (lambda: Fn(lambda s, x: (x, x * 2)), randn(3)),
}


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _inplace(s, x):
    y = x * 2
    y.add_(1)  # later reads of y must see the update
    z = y + x
    y.mul_(3)
    return z + y


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_torch(name, seed):
    make_model, make_inputs = CASES[name]
    model = make_model()
    check_compiled(model, *make_inputs(2), other_batches=(3, 1), make_inputs=make_inputs)


def test_numpy_in_numpy_out(seed):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = torch.randn(2, 4)
    import sparsecc

    cm = sparsecc.compile(model, x)
    y = cm(x.numpy())
    assert type(y).__module__ == "numpy"
    torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-5)
    assert isinstance(cm(x), torch.Tensor)


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (16, 64, 7, 7)])
@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8"])
def test_aligned_buffers(shape, dtype):
    """Buffers the executor, bind_alone and autotune time kernels on start on a cache line
    (a misaligned one made a BSR layer 1.5x slower in autotune than in the model)."""
    from sparsecc.runtime.ops.registry import ALIGN, aligned_copy, aligned_empty

    for _ in range(3):
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
        assert a.ctypes.data % ALIGN == 0 or a.size == 0  # numpy keeps an empty slice's base
    src = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    b = aligned_copy(src)
    assert (b.ctypes.data % ALIGN == 0 or b.size == 0) and np.array_equal(b, src)
