"""int8 quantization of the linear and conv layers, calibrated on example batches.

Requires: a lowered, fused plan (activations already on the weighted ops) whose linear / conv2d
ops hold a dense ``weight`` (select-format has not run yet) and calibration inputs. Guarantees:
every quantized linear / conv becomes a ``qlinear`` / ``qconv2d`` op (formats.qint8: g4-packed
int8 weight, per-row scales, the input's uint8 scale and zero point, the zero point folded into
the bias); every other one is left as it was with ``attrs['precision']`` saying why it stays
float32.
``plan.info['quantize']`` records the method and the counts.

Policy:
- activations, per tensor, from the float plan run on the calibration batches: ``minmax``
  (the observed range), ``percentile`` (the ``percentile``-th and (100 - it)-th), ``mse`` and
  ``entropy`` (the clip range, shrunk from min/max in 64 steps, with the least squared error /
  the least KL divergence between the float and the quantized value histograms);
- bias correction: each layer's mean int8 output error per output channel, measured on the
  calibration inputs, is taken off its bias (``bias_correction``);
- sensitivity: each layer's own int8 output is compared with its float32 output on the
  calibration inputs; above ``max_error`` (relative L2) the layer stays float32;
- ``keep_float``: layer names (or globs) that stay float32 whatever they measure;
- speed: a layer with fewer than ``min_macs_per_input`` multiply-adds per input value (per
  position, for convs) stays float32: its input's quantization pass would cost more than
  its int8 kernel saves. Not a 1x1 conv whose input only a depthwise conv writes (whole
  4-channel groups): the native library's depthwise kernel writes the codes itself, so
  there is no such pass (MobileNetV2's project convs, 1.6-2.4 per input). And a conv of at
  most 4 input channels with at most ``direct_max_k`` inputs per output (a network's first
  conv, RGB in, 3x3) stays float32: the direct float kernel beats int8 there (0 turns this
  off).
Grouped and depthwise convs stay float32 (no int8 kernel for them yet; the report says so).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsecc.errors import PassError
from sparsecc.formats import qint8 as Q
from sparsecc.ir.plan import ExecutionPlan, Op
from sparsecc.passes.registry import PassResult, register_pass

METHODS = ("minmax", "percentile", "mse", "entropy")
_SAMPLES = 200_000  # activation values kept per tensor for the range search
_ROWS = 2048  # input rows kept per layer for the sensitivity check


@dataclass(frozen=True)
class QuantizeOptions:
    mode: str = "int8"
    method: str = "minmax"
    percentile: float = 99.99
    keep_float: tuple[str, ...] = ()
    max_error: float = 0.05  # relative L2 error of a layer's own output
    bias_correction: bool = True  # take each layer's mean output error off its bias
    # a layer doing fewer multiply-adds than this per input value stays float32: quantizing
    # its input costs more than int8 saves (MobileNetV2's 90 % projections: ~2.4)
    min_macs_per_input: float = 4.0
    direct_max_k: int = 32  # see _direct_conv
    calibration: Iterable[Any] | None = None  # lists of input arrays (compile() converts)
    seed: int = 0

    def __post_init__(self):
        if self.mode != "int8":
            raise ValueError(f"mode={self.mode!r}: only 'int8' is supported")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} must be one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile!r} must be in (50, 100]")
        if not self.max_error > 0:
            raise ValueError(f"max_error={self.max_error!r} must be positive")
        v = self.keep_float
        object.__setattr__(self, "keep_float", (v,) if isinstance(v, str) else tuple(v))


def _kept(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def _candidates(plan: ExecutionPlan) -> tuple[list[int], dict[int, str]]:
    """Linear ops that int8 can take, and why the others cannot."""
    ok, why = [], {}
    for i, op in enumerate(plan.ops):
        if op.kind not in ("linear", "conv2d"):
            continue
        w = plan.constants.get(op.params.get("weight", ""))
        ndim = 2 if op.kind == "linear" else 4
        k = 0  # inputs a row: a conv's packed rows hold kh * kw taps of C rounded up to 4
        if w is not None and w.ndim == ndim:
            k = w.shape[1] if ndim == 2 else -(-w.shape[1] // 4) * 4 * w.shape[2] * w.shape[3]
        if w is None or w.dtype != np.float32 or w.ndim != ndim:
            why[i] = "float32 (not a dense float32 weight)"
        elif op.kind == "conv2d" and int(op.attrs.get("groups", 1)) != 1:
            why[i] = "float32 (grouped / depthwise conv: no int8 kernel yet)"
        elif plan.tensors[op.inputs[0]].dtype != "float32":
            why[i] = "float32 (input not float32)"
        elif k > Q.MAX_K:
            why[i] = f"float32 ({k} inputs: the int32 sum could overflow)"
        else:
            ok.append(i)
    return ok, why


def capture(plan: ExecutionPlan, names: list[str], batches: list[list[np.ndarray]],
            reduce=None) -> dict[str, list]:
    """The values of ``names`` when the float plan runs each calibration batch, each passed
    through ``reduce(name, array)`` as it comes (default: a copy) so that a large model's
    activations are never all held at once."""
    from sparsecc.runtime.executor import Executor

    extra = [n for n in dict.fromkeys(names) if n not in plan.outputs and n not in plan.inputs]
    probe = dataclasses.replace(plan, outputs=list(plan.outputs) + extra, output_kind="tuple",
                                ops=list(plan.ops), tensors=dict(plan.tensors))
    ex = Executor(probe)
    got: dict[str, list] = {n: [] for n in names}
    for arrays in batches:
        outs = ex.run(arrays)
        by_name = dict(zip(plan.inputs, arrays)) | dict(zip(probe.outputs, outs))
        for n in dict.fromkeys(names):
            a = np.asarray(by_name[n], np.float32)
            got[n].append(reduce(n, a) if reduce is not None else a.copy())
    return got


class _Summary:
    """What the pass keeps of one tensor per calibration batch: its finite extremes, a random
    sample of its values (for percentile / mse / entropy) and a few of its rows (linear) or
    samples (conv) for the error check."""

    def __init__(self, rng, batches: int, row_len: int | None):
        self.rng, self.batches, self.row_len = rng, max(batches, 1), row_len

    def __call__(self, name: str, a: np.ndarray):
        flat = a.ravel()
        fin = flat[np.isfinite(flat)]
        ext = (float(fin.min()), float(fin.max())) if fin.size else None
        per = _SAMPLES // self.batches
        vals = fin if fin.size <= per else self.rng.choice(fin, per, replace=False)
        if self.row_len is not None:  # linear: rows of the input dim
            rows = a.reshape(-1, self.row_len)
            rows = rows[np.all(np.isfinite(rows), axis=1)]
            keep = _ROWS // self.batches + 1
            if rows.shape[0] > keep:
                rows = rows[self.rng.choice(rows.shape[0], keep, replace=False)]
        else:  # conv: whole samples, the first one or two
            rows = a[:2][np.all(np.isfinite(a[:2].reshape(len(a[:2]), -1)), axis=1)]
        return ext, vals.astype(np.float32), np.array(rows, copy=True)


def _sample(parts: list) -> np.ndarray:
    """The kept values of a tensor over all batches, its true extremes included (minmax)."""
    ext = [e for e, _, _ in parts if e is not None]
    vals = [v for _, v, _ in parts]
    if ext:
        vals.append(np.array([min(e[0] for e in ext), max(e[1] for e in ext)], np.float32))
    return np.concatenate(vals) if vals else np.zeros(0, np.float32)


def act_range(x: np.ndarray, method: str, percentile: float) -> tuple[float, int]:
    """(scale, zero) for the samples ``x`` by ``method``."""
    if x.size == 0:
        return 1.0, 0
    lo, hi = float(x.min()), float(x.max())
    if method == "minmax":
        return Q.act_params(lo, hi)
    if method == "percentile":
        return Q.act_params(float(np.percentile(x, 100.0 - percentile)),
                            float(np.percentile(x, percentile)))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-30:
        return 1.0, 0
    edges = np.linspace(lo, hi, 2049)
    ref = np.histogram(x, edges)[0].astype(np.float64) + 1e-9
    ref /= ref.sum()
    best, best_sz = np.inf, Q.act_params(lo, hi)
    for f in np.linspace(1.0, 0.05, 64):
        s, z = Q.act_params(lo * f, hi * f)
        back = Q.dequantize_act(Q.quantize_act(x, s, z), s, z)
        if method == "mse":
            score = float(np.mean((back.astype(np.float64) - x) ** 2))
        else:  # entropy: KL(float || quantized) over the same bins
            got = np.histogram(back, edges)[0].astype(np.float64) + 1e-9
            got /= got.sum()
            score = float(np.sum(ref * np.log(ref / got)))
        if score < best:
            best, best_sz = score, (s, z)
    return best_sz


def layer_error(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, qw: Q.QWeight,
                scale: float, zero: int, conv: dict | None = None,
                correct: bool = True) -> tuple[float, np.ndarray]:
    """(relative L2 error of the int8 layer's output before its activation against float,
    the per-output mean error the bias then takes off: zeros without ``correct``); ``conv``:
    x is (N, C, H, W) and w the packed rows (geometry: kernel, stride, ...)."""
    if conv is None:
        cols, codes = x.astype(np.float64), Q.quantize_act(x, scale, zero)
        qcols = codes.astype(np.float64)
    else:
        cols = Q.conv_columns(x, 0, **conv)
        qcols = Q.conv_columns(Q.quantize_act(x, scale, zero), zero, **conv)
    ref = cols @ w.T.astype(np.float64)
    if bias is not None:
        ref += bias
    mult, b2 = Q.fold(qw, bias, scale, zero)
    got = Q.epilogue(Q.accumulate(qcols, qw), mult, b2).astype(np.float64)
    # bias correction (Nagel et al. 2019): the quantized layer's mean error per output,
    # measured here, is taken off its bias
    shift = (got - ref).mean(axis=0) if correct and len(got) else np.zeros(qw.rows)
    den = float(np.linalg.norm(ref))
    diff = float(np.linalg.norm(got - shift - ref))
    return (diff / den if den > 0 else diff), shift


def _direct_conv(plan: ExecutionPlan, op, max_k: int) -> bool:
    """Whether ``op`` is a conv of <= 4 input channels and <= ``max_k`` inputs per output
    (channels x taps): the native direct kernel (native/smallconv.py) runs those at ~85 % of
    the FMA peak, where int8 pays a quantize pass and a K too short for its 4-groups.
    MobileNetV2's first conv (3 x 3 x 3 = 27): its int8 model 1.03x faster with that conv
    float32; ResNet-50's (3 x 7 x 7 = 147) measured 0.93x, so the bound is 32."""
    if op.kind != "conv2d" or int(op.attrs.get("groups", 1)) != 1:
        return False
    cin = plan.tensors[op.inputs[0]].shape[1]
    kh, kw = (int(v) for v in op.attrs["kernel"])
    return isinstance(cin, int) and cin <= 4 and cin * kh * kw <= max_k


def _codes_free(plan: ExecutionPlan, op) -> bool:
    """Whether ``op``'s input codes cost no pass of their own: a 1x1 conv (stride 1, no
    padding, input channels a multiple of 4) reading the output of a depthwise conv that
    nothing else reads (native.lower writes the codes from the depthwise kernel)."""
    a = op.attrs
    if op.kind != "conv2d" or [int(v) for v in a.get("kernel", ())] != [1, 1] or \
            [int(v) for v in a.get("stride", ())] != [1, 1] or \
            any(int(v) for v in a.get("padding", ())) or int(a.get("groups", 1)) != 1:
        return False
    x = op.inputs[0]
    if x in plan.outputs or sum(x in o.inputs for o in plan.ops) != 1:
        return False
    prod = [o for o in plan.ops if o.output == x]
    if len(prod) != 1 or prod[0].kind != "conv2d":
        return False
    cin = plan.tensors[x].shape[1]
    return isinstance(cin, int) and cin % 4 == 0 and cin > 1 and \
        int(prod[0].attrs.get("groups", 1)) == cin


@register_pass("quantize", options=QuantizeOptions, level="plan")
def plan_quantize(plan: ExecutionPlan, opts: QuantizeOptions) -> PassResult:
    """Quantize linear and conv layers to int8 (weights per row, activations per tensor)."""
    batches = [list(b) for b in (opts.calibration or [])]
    if not batches:
        raise PassError("quantize", "needs calibration batches (calibration=[inputs, ...])",
                        key="calibration")
    ok, why = _candidates(plan)
    todo = []
    for i in ok:
        op = plan.ops[i]
        w = plan.constants[op.params["weight"]]
        per_input = np.count_nonzero(w) / max(w.shape[1], 1)  # per input channel / feature
        if _kept(op.layer or op.name, opts.keep_float):
            why[i] = "float32 (keep_float)"
        elif _direct_conv(plan, op, opts.direct_max_k):
            why[i] = ("float32 (few inputs per output: the direct conv kernel is faster than "
                      "int8 here)")
        elif per_input < opts.min_macs_per_input and not _codes_free(plan, op):
            why[i] = (f"float32 ({per_input:.1f} multiply-adds per input value: quantizing "
                      "the input would cost more than int8 saves)")
        else:
            todo.append(i)
    rng = np.random.default_rng(opts.seed)
    # one summary per tensor: a linear reads rows of its input dim, a conv whole samples (two
    # readers of one tensor agree on which: both linear or both conv over the same shape)
    row_len = {plan.ops[i].inputs[0]: (int(plan.constants[plan.ops[i].params["weight"]]
                                            .shape[1]) if plan.ops[i].kind == "linear"
                                        else None) for i in todo}
    values = capture(plan, list(row_len), batches,
                     lambda n, a: _Summary(rng, len(batches), row_len[n])(n, a))
    done = 0
    for i in todo:
        op = plan.ops[i]
        parts = values[op.inputs[0]]
        scale, zero = act_range(_sample(parts), opts.method, opts.percentile)
        w = plan.constants[op.params["weight"]]
        bias = plan.constants[op.params["bias"]] if "bias" in op.params else None
        rows = np.concatenate([r for _, _, r in parts])
        conv = None
        if op.kind == "conv2d":
            conv = {key: tuple(int(v) for v in op.attrs[key]) for key in
                    ("kernel", "stride", "padding", "dilation")}
            conv["out_hw"] = tuple(int(d) for d in plan.tensors[op.output].shape[2:])
            wr = Q.conv_weight_rows(w)
            per = max(1, int(np.prod(conv["out_hw"])))
            take = max(1, min(len(rows), _ROWS // per + 1))
            rows = rows[rng.choice(len(rows), take, replace=False)] if len(rows) else rows
        else:
            wr = w
            if rows.shape[0] > _ROWS:
                rows = rows[rng.choice(rows.shape[0], _ROWS, replace=False)]
        qw = Q.quantize_weight(wr)
        err, shift = layer_error(rows, wr, bias, qw, scale, zero, conv, opts.bias_correction)
        if not err <= opts.max_error:
            why[i] = f"float32 (int8 error {err:.1%} > {opts.max_error:.1%})"
            continue
        _rewrite(plan, i, qw, bias, scale, zero, err, list(w.shape), shift)
        done += 1
    for i, text in why.items():
        plan.ops[i].attrs["precision"] = text
    plan.info["quantize"] = {"mode": opts.mode, "method": opts.method,
                             "int8_layers": done, "float_layers": len(why)}
    return PassResult(plan, done > 0, [f"{done} layer(s) in int8, {len(why)} float32"])


def _rewrite(plan: ExecutionPlan, i: int, qw: Q.QWeight, bias, scale: float, zero: int,
             err: float, wshape: list[int], shift: np.ndarray) -> None:
    op = plan.ops[i]
    mult, b2 = Q.fold(qw, bias, scale, zero)
    b2 = (b2.astype(np.float64) - shift).astype(np.float32)
    base = op.params["weight"]
    params = {}
    for role, arr in (("indptr", qw.indptr), ("indices", qw.groups), ("data", qw.data),
                      ("mult", mult), ("bias", b2)):
        name = params[role] = f"{base}.q8_{role}"
        plan.add_constant(name, np.ascontiguousarray(arr))
    for name in op.params.values():
        if not any(name == c for j, o in enumerate(plan.ops) if j != i
                   for c in o.params.values()):
            plan.constants.pop(name, None)
            plan.tensors.pop(name, None)
    keep = ("act", "act_a", "act_b") + (("kernel", "stride", "padding", "dilation", "groups")
                                         if op.kind == "conv2d" else ())
    attrs = {key: v for key, v in op.attrs.items() if key in keep}
    real = int(np.prod(wshape[1:]))
    attrs.update(weight_shape=[int(d) for d in wshape], x_scale=scale, x_zero=zero, fmt="g4",
                 density=qw.nnz / max(qw.rows * real, 1), qerr=err,
                 w_scale=[float(qw.scale.min()), float(qw.scale.max())] if qw.rows else [1, 1],
                 precision="int8")
    kind = "qconv2d" if op.kind == "conv2d" else "qlinear"
    plan.ops[i] = Op(kind, op.name, list(op.inputs), op.output, attrs, params, op.layer)


def quantize_plan(plan: ExecutionPlan, calibration, **options: Any) -> PassResult:
    from sparsecc.passes.registry import make_options, run_pass

    return run_pass("quantize", plan, make_options("quantize",
                                                   dict(options, calibration=calibration)))
