"""Lowering rules for layers: linear, conv, batch norm, pooling, activations, norms, embedding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.lowering.core import Const, Lowering, TRef, module_rule, rule, to_numpy

_BIG = 3.0e38  # stands for +inf in clamp bounds (JSON has no infinity)


def _pair(v, what: str, lw: Lowering) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2:
            raise lw.fail(f"{what} {v!r} (expected one or two values)")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _const_weight(lw: Lowering, value, what: str) -> np.ndarray:
    if not isinstance(value, Const):
        raise lw.fail(f"{what} is computed at run time", "only constant weights are supported")
    return value.array


def _to_2d(lw: Lowering, x: TRef) -> TRef:
    """(N, C, L) -> (N, C, 1, L) as a zero-copy view, to run 1-D layers on 2-D kernels."""
    spec = lw.spec(x)
    shape = spec.shape[:2] + (1,) + spec.shape[2:]
    return lw.emit("reshape", [spec.name], shape, spec.dtype, alias=True, suffix="_as2d")


def _from_2d(lw: Lowering, y: TRef) -> TRef:
    spec = lw.spec(y)
    return lw.emit("reshape", [spec.name], alias=True, dtype=spec.dtype)


def _out4(lw: Lowering, is_1d: bool):
    shape = lw.out_info().shape
    return shape[:2] + (1,) + shape[2:] if is_1d else shape


# ---- linear -------------------------------------------------------------------------------
def emit_linear(lw: Lowering, x, weight: np.ndarray, bias: np.ndarray | None, prefix: str):
    wname = lw.add_const(weight, f"{prefix}.weight" if prefix else "weight")
    params = {"weight": wname}
    if bias is not None:
        params["bias"] = lw.add_const(bias, f"{prefix}.bias" if prefix else "bias")
    return lw.emit("linear", [lw.tensor(x)], attrs={"fmt": "dense", "act": "none"},
                   params=params)


@rule("linear", lambda input, weight, bias=None: None, functions=[F.linear])
def lower_linear(lw: Lowering, node, a):
    if not isinstance(a["weight"], Const):
        # x @ W^T (+ b) with a computed W: plain matmul.
        w = lw.spec(a["weight"])
        wt = lw.emit("permute", [w.name], tuple(reversed(w.shape)), w.dtype,
                     attrs={"perm": [1, 0]}, suffix="_wT")
        y = lw.emit("matmul", [lw.tensor(a["input"]), wt.name],
                    suffix="_mm" if a["bias"] is not None else "")
        if a["bias"] is None:
            return y
        return lw.emit("binary", [y.name, lw.tensor(a["bias"])], attrs={"fn": "add"})
    bias = None if a["bias"] is None else _const_weight(lw, a["bias"], "bias")
    return emit_linear(lw, a["input"], a["weight"].array, bias, a["weight"].hint.rsplit(".", 1)[0])


@module_rule(nn.Linear)
def lower_linear_module(lw: Lowering, node, mod: nn.Linear, args):
    bias = None if mod.bias is None else to_numpy(mod.bias)
    return emit_linear(lw, args[0], to_numpy(mod.weight), bias, str(node.target))


# ---- convolution --------------------------------------------------------------------------
def emit_conv(lw: Lowering, x, weight: np.ndarray, bias: np.ndarray | None, stride, padding,
              dilation, groups: int, prefix: str, padding_mode: str = "zeros"):
    if padding_mode != "zeros":
        raise lw.fail(f"padding_mode={padding_mode!r}", "only zero padding is supported")
    is_1d = weight.ndim == 3
    if is_1d:
        weight = weight[:, :, None, :]
        x = _to_2d(lw, x)
        stride, dilation = (1, _pair(stride, "stride", lw)[0]), (1, _pair(dilation, "d", lw)[0])
        if not isinstance(padding, str):
            padding = (0, _pair(padding, "padding", lw)[0])
    stride, dilation = _pair(stride, "stride", lw), _pair(dilation, "dilation", lw)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        # torch puts the odd pixel of 'same' padding at the end; the kernels take the leading
        # pad and derive the trailing one from the output size.
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    padding = _pair(padding, "padding", lw)
    params = {"weight": lw.add_const(weight, f"{prefix}.weight")}
    if bias is not None:
        params["bias"] = lw.add_const(bias, f"{prefix}.bias")
    attrs = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding),
             "dilation": list(dilation), "groups": int(groups), "fmt": "dense", "act": "none"}
    y = lw.emit("conv2d", [lw.tensor(x)], _out4(lw, is_1d), "float32", attrs, params,
                suffix="_2d" if is_1d else "")
    return _from_2d(lw, y) if is_1d else y


@rule("conv", lambda input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1: None,
      functions=[F.conv1d, F.conv2d])
def lower_conv(lw: Lowering, node, a):
    w = _const_weight(lw, a["weight"], "weight")
    if w.ndim not in (3, 4):
        raise lw.fail(f"conv with a {w.ndim}-D weight", "conv1d and conv2d are supported")
    bias = None if a["bias"] is None else _const_weight(lw, a["bias"], "bias")
    return emit_conv(lw, a["input"], w, bias, a["stride"], a["padding"], a["dilation"],
                     int(a["groups"]), a["weight"].hint.rsplit(".", 1)[0])


@module_rule(nn.Conv1d, nn.Conv2d)
def lower_conv_module(lw: Lowering, node, mod, args):
    bias = None if mod.bias is None else to_numpy(mod.bias)
    return emit_conv(lw, args[0], to_numpy(mod.weight), bias, mod.stride, mod.padding,
                     mod.dilation, mod.groups, str(node.target), mod.padding_mode)


# ---- batch norm that had nothing to fold into ---------------------------------------------
def emit_affine_bn(lw: Lowering, x, mean, var, weight, bias, eps: float, prefix: str):
    scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale + (bias if bias is not None else 0.0)
    params = {"scale": lw.add_const(scale.astype(np.float32), f"{prefix}.scale"),
              "shift": lw.add_const(shift.astype(np.float32), f"{prefix}.shift")}
    return lw.emit("affine", [lw.tensor(x)], params=params)


@module_rule(nn.BatchNorm1d, nn.BatchNorm2d)
def lower_bn_module(lw: Lowering, node, mod, args):
    if mod.running_mean is None:
        raise lw.fail("BatchNorm without running statistics",
                      "track_running_stats=False normalises with batch statistics")
    w = None if mod.weight is None else to_numpy(mod.weight)
    b = None if mod.bias is None else to_numpy(mod.bias)
    return emit_affine_bn(lw, args[0], to_numpy(mod.running_mean), to_numpy(mod.running_var),
                          w, b, mod.eps, str(node.target))


@rule("batch_norm", lambda input, running_mean, running_var, weight=None, bias=None,
      training=False, momentum=0.1, eps=1e-5: None, functions=[F.batch_norm])
def lower_bn(lw: Lowering, node, a):
    if a["training"] or a["running_mean"] is None:
        raise lw.fail("batch_norm in training mode (batch statistics)")
    arr = [None if a[k] is None else _const_weight(lw, a[k], k)
           for k in ("running_mean", "running_var", "weight", "bias")]
    return emit_affine_bn(lw, a["input"], *arr, float(a["eps"]), node.name)


# ---- pooling ------------------------------------------------------------------------------
def emit_pool(lw: Lowering, x, mode: str, kernel, stride, padding, dilation=1, ceil_mode=False,
              count_include_pad=True, divisor_override=None, is_1d=False):
    if is_1d:
        x = _to_2d(lw, x)
        kernel, stride = (1, _pair(kernel, "kernel", lw)[0]), stride
        stride = None if stride in (None, [], ()) else (1, _pair(stride, "stride", lw)[0])
        padding, dilation = (0, _pair(padding, "p", lw)[0]), (1, _pair(dilation, "d", lw)[0])
    kernel = _pair(kernel, "kernel_size", lw)
    stride = kernel if stride in (None, [], ()) else _pair(stride, "stride", lw)
    attrs = {"mode": mode, "kernel": list(kernel), "stride": list(stride),
             "padding": list(_pair(padding, "padding", lw)),
             "dilation": list(_pair(dilation, "dilation", lw)), "ceil_mode": bool(ceil_mode),
             "count_include_pad": bool(count_include_pad),
             "divisor_override": int(divisor_override) if divisor_override else None}
    y = lw.emit("pool2d", [lw.tensor(x)], _out4(lw, is_1d), lw.spec(x).dtype, attrs,
                suffix="_2d" if is_1d else "")
    return _from_2d(lw, y) if is_1d else y


def _max_pool(lw, node, a, is_1d):
    if a["return_indices"]:
        raise lw.fail("max pooling with return_indices=True")
    return emit_pool(lw, a["input"], "max", a["kernel_size"], a["stride"], a["padding"],
                     a["dilation"], a["ceil_mode"], is_1d=is_1d)


def _avg_pool(lw, node, a, is_1d):
    return emit_pool(lw, a["input"], "avg", a["kernel_size"], a["stride"], a["padding"], 1,
                     a["ceil_mode"], a["count_include_pad"], a.get("divisor_override"), is_1d)


_MAXP = lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, \
    return_indices=False: None  # noqa: E731
_AVGP = lambda input, kernel_size, stride=None, padding=0, ceil_mode=False, \
    count_include_pad=True, divisor_override=None: None  # noqa: E731
rule("max_pool2d", _MAXP, functions=[F.max_pool2d])(lambda lw, n, a: _max_pool(lw, n, a, False))
rule("max_pool1d", _MAXP, functions=[F.max_pool1d])(lambda lw, n, a: _max_pool(lw, n, a, True))
rule("avg_pool2d", _AVGP, functions=[F.avg_pool2d])(lambda lw, n, a: _avg_pool(lw, n, a, False))
rule("avg_pool1d", _AVGP, functions=[F.avg_pool1d])(lambda lw, n, a: _avg_pool(lw, n, a, True))


@module_rule(nn.MaxPool1d, nn.MaxPool2d)
def lower_maxpool_module(lw: Lowering, node, mod, args):
    if mod.return_indices:
        raise lw.fail("max pooling with return_indices=True")
    return emit_pool(lw, args[0], "max", mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                     mod.ceil_mode, is_1d=isinstance(mod, nn.MaxPool1d))


@module_rule(nn.AvgPool1d, nn.AvgPool2d)
def lower_avgpool_module(lw: Lowering, node, mod, args):
    return emit_pool(lw, args[0], "avg", mod.kernel_size, mod.stride, mod.padding, 1,
                     mod.ceil_mode, mod.count_include_pad, getattr(mod, "divisor_override", None),
                     is_1d=isinstance(mod, nn.AvgPool1d))


def emit_adaptive(lw: Lowering, x, mode: str, is_1d: bool):
    if is_1d:
        x = _to_2d(lw, x)
    y = lw.emit("adaptive_pool2d", [lw.tensor(x)], _out4(lw, is_1d), lw.spec(x).dtype,
                {"mode": mode}, suffix="_2d" if is_1d else "")
    return _from_2d(lw, y) if is_1d else y


_ADP = lambda input, output_size, return_indices=False: None  # noqa: E731
for _name, _fn, _mode, _1d in [("adaptive_avg_pool2d", F.adaptive_avg_pool2d, "avg", False),
                               ("adaptive_avg_pool1d", F.adaptive_avg_pool1d, "avg", True),
                               ("adaptive_max_pool2d", F.adaptive_max_pool2d, "max", False),
                               ("adaptive_max_pool1d", F.adaptive_max_pool1d, "max", True)]:
    def _adaptive(lw, node, a, _mode=_mode, _1d=_1d):
        if a["return_indices"]:
            raise lw.fail("adaptive max pooling with return_indices=True")
        return emit_adaptive(lw, a["input"], _mode, _1d)

    rule(_name, _ADP, functions=[_fn])(_adaptive)


@module_rule(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d)
def lower_adaptive_module(lw: Lowering, node, mod, args):
    if getattr(mod, "return_indices", False):
        raise lw.fail("adaptive max pooling with return_indices=True")
    mode = "max" if isinstance(mod, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)) else "avg"
    return emit_adaptive(lw, args[0], mode,
                         isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)))


# ---- activations --------------------------------------------------------------------------
def emit_act(lw: Lowering, x, act: str, a: float = 0.0, b: float = 0.0):
    return lw.emit("act", [lw.tensor(x)], attrs={"act": act, "act_a": float(a), "act_b": float(b)})


def _simple(name, act, functions, methods=()):
    rule(name, lambda input, inplace=False: None, functions=functions, methods=methods)(
        lambda lw, node, a: emit_act(lw, a["input"], act))


_simple("relu", "relu", [F.relu, torch.relu, torch.relu_, F.relu_], ["relu"])
_simple("silu", "silu", [F.silu], [])
_simple("sigmoid", "sigmoid", [torch.sigmoid, F.sigmoid], ["sigmoid"])
_simple("tanh", "tanh", [torch.tanh, F.tanh], ["tanh"])
_simple("hardswish", "hardswish", [F.hardswish], [])
_simple("hardsigmoid", "hardsigmoid", [F.hardsigmoid], [])
rule("relu6", lambda input, inplace=False: None, functions=[F.relu6])(
    lambda lw, node, a: emit_act(lw, a["input"], "clamp", 0.0, 6.0))


@rule("gelu", lambda input, approximate="none": None, functions=[F.gelu])
def lower_gelu(lw: Lowering, node, a):
    return emit_act(lw, a["input"], "gelu_tanh" if a["approximate"] == "tanh" else "gelu")


@rule("leaky_relu", lambda input, negative_slope=0.01, inplace=False: None,
      functions=[F.leaky_relu])
def lower_leaky(lw: Lowering, node, a):
    return emit_act(lw, a["input"], "leaky_relu", lw.number(a["negative_slope"], "slope"))


@rule("elu", lambda input, alpha=1.0, inplace=False: None, functions=[F.elu])
def lower_elu(lw: Lowering, node, a):
    return emit_act(lw, a["input"], "elu", lw.number(a["alpha"], "alpha"))


def _bound(lw, v, default):
    return default if v is None else float(lw.number(v, "clamp bound"))


@rule("hardtanh", lambda input, min_val=-1.0, max_val=1.0, inplace=False: None,
      functions=[F.hardtanh])
def lower_hardtanh(lw: Lowering, node, a):
    return emit_act(lw, a["input"], "clamp", _bound(lw, a["min_val"], -_BIG),
                    _bound(lw, a["max_val"], _BIG))


@rule("clamp", lambda input, min=None, max=None: None, functions=[torch.clamp, torch.clip],
      methods=["clamp", "clip"])
def lower_clamp(lw: Lowering, node, a):
    if isinstance(a["min"], (TRef, Const)) or isinstance(a["max"], (TRef, Const)):
        raise lw.fail("clamp with tensor bounds")
    return emit_act(lw, a["input"], "clamp", _bound(lw, a["min"], -_BIG),
                    _bound(lw, a["max"], _BIG))


_ACT_MODULES = {nn.ReLU: ("relu",), nn.ReLU6: ("clamp", 0.0, 6.0), nn.SiLU: ("silu",),
                nn.Sigmoid: ("sigmoid",), nn.Tanh: ("tanh",), nn.Hardswish: ("hardswish",),
                nn.Hardsigmoid: ("hardsigmoid",)}


@module_rule(*_ACT_MODULES, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardtanh)
def lower_act_module(lw: Lowering, node, mod, args):
    if isinstance(mod, nn.ReLU6):  # ReLU6 subclasses Hardtanh: check it first
        return emit_act(lw, args[0], "clamp", 0.0, 6.0)
    if type(mod) in _ACT_MODULES:
        return emit_act(lw, args[0], *_ACT_MODULES[type(mod)])
    if isinstance(mod, nn.GELU):
        return emit_act(lw, args[0], "gelu_tanh" if mod.approximate == "tanh" else "gelu")
    if isinstance(mod, nn.LeakyReLU):
        return emit_act(lw, args[0], "leaky_relu", mod.negative_slope)
    if isinstance(mod, nn.ELU):
        return emit_act(lw, args[0], "elu", mod.alpha)
    return emit_act(lw, args[0], "clamp", mod.min_val, mod.max_val)


# ---- softmax, layer norm, embedding -------------------------------------------------------
def emit_softmax(lw: Lowering, x, dim, log: bool):
    if dim is None:
        raise lw.fail("softmax without dim", "pass dim explicitly")
    rank = len(lw.spec(x).shape)
    return lw.emit("softmax", [lw.tensor(x)], attrs={"axis": int(dim) % rank, "log": log})


_SM = lambda input, dim=None, _stacklevel=3, dtype=None: None  # noqa: E731
rule("softmax", _SM, functions=[F.softmax, torch.softmax], methods=["softmax"])(
    lambda lw, node, a: emit_softmax(lw, a["input"], a["dim"], False))
rule("log_softmax", _SM, functions=[F.log_softmax, torch.log_softmax], methods=["log_softmax"])(
    lambda lw, node, a: emit_softmax(lw, a["input"], a["dim"], True))


@module_rule(nn.Softmax, nn.LogSoftmax)
def lower_softmax_module(lw: Lowering, node, mod, args):
    return emit_softmax(lw, args[0], mod.dim, isinstance(mod, nn.LogSoftmax))


def emit_layer_norm(lw: Lowering, x, ndims: int, weight, bias, eps: float, prefix: str):
    params = {}
    if weight is not None:
        params["weight"] = lw.add_const(weight, f"{prefix}.weight")
    if bias is not None:
        params["bias"] = lw.add_const(bias, f"{prefix}.bias")
    return lw.emit("layer_norm", [lw.tensor(x)], attrs={"ndims": ndims, "eps": float(eps)},
                   params=params)


@rule("layer_norm", lambda input, normalized_shape, weight=None, bias=None, eps=1e-5: None,
      functions=[F.layer_norm])
def lower_layer_norm(lw: Lowering, node, a):
    w = None if a["weight"] is None else _const_weight(lw, a["weight"], "weight")
    b = None if a["bias"] is None else _const_weight(lw, a["bias"], "bias")
    shape = a["normalized_shape"]
    ndims = len(shape) if isinstance(shape, (tuple, list)) else 1
    return emit_layer_norm(lw, a["input"], ndims, w, b, a["eps"], node.name)


@module_rule(nn.LayerNorm)
def lower_layer_norm_module(lw: Lowering, node, mod, args):
    w = None if mod.weight is None else to_numpy(mod.weight)
    b = None if mod.bias is None else to_numpy(mod.bias)
    return emit_layer_norm(lw, args[0], len(mod.normalized_shape), w, b, mod.eps,
                           str(node.target))


def emit_embedding(lw: Lowering, idx, weight: np.ndarray, prefix: str):
    return lw.emit("embedding", [lw.tensor(idx)],
                   params={"weight": lw.add_const(weight, f"{prefix}.weight")})


@rule("embedding", lambda input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
      scale_grad_by_freq=False, sparse=False: None, functions=[F.embedding])
def lower_embedding(lw: Lowering, node, a):
    if a["max_norm"] is not None:
        raise lw.fail("embedding with max_norm (it renormalises the table at run time)")
    w = _const_weight(lw, a["weight"], "weight")
    return emit_embedding(lw, a["input"], w, a["weight"].hint.rsplit(".", 1)[0])


@module_rule(nn.Embedding)
def lower_embedding_module(lw: Lowering, node, mod, args):
    if mod.max_norm is not None:
        raise lw.fail("embedding with max_norm (it renormalises the table at run time)")
    return emit_embedding(lw, args[0], to_numpy(mod.weight), str(node.target))

