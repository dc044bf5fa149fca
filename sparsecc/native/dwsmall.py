"""Depthwise convs on small planes (MobileNetV2's 14x14 and 7x7 layers) as an LLVM kernel
specialised to the layer's geometry: the whole output plane of a channel in vector registers.

An item is one plane (sample, channel). Its accumulators start at the bias; each nonzero tap
(dy, dx) adds w * x read from the same flat input plane at the fixed offset dy * w + dx; the
lanes whose input is padding (a row above or below the plane, a column left or right of its
row) are masked off in the load, so no lane reads outside the plane and no padded copy is
made. Taps whose weight is zero are skipped (a branch per tap: a pruned layer keeps ~1 of 9).
The activation is applied in registers and the plane stored once.

Only where the output plane has the input's shape (stride 1, "same" padding), one output
channel per input channel, and the plane is at most MAX_VECTORS vectors (28 x 28 with
AVX-512), done in groups of 24 accumulators (12 with AVX2); the numba kernel
(codegen/numba/conv.py) does the rest.

ABI ``void k(i64 start, i64 stop, i64* args)``; args: x, weight (C, kh*kw), bias, out, C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, FUSED_ACTS, I1, I64
from sparsecc.native.vmath import _K

D_X, D_W, D_BIAS, D_OUT, D_C = range(5)
# Vectors a plane may have (28 x 28 = 49 with AVX-512): the code is unrolled over them, one
# masked load and FMA per tap and vector, in groups of at most group() accumulators.
MAX_VECTORS = 64


@dataclass(frozen=True)
class DepthwiseSpec:
    vw: int
    h: int
    w: int
    kh: int
    kw: int
    ph: int
    pw: int
    dh: int
    dw: int
    act: str = "none"
    act_a: float = 0.0
    act_b: float = 0.0
    has_bias: bool = True

    @property
    def key(self) -> str:
        act = self.act if self.act != "clamp" else f"clamp{self.act_a:g}_{self.act_b:g}"
        return (f"dws_v{self.vw}_{self.h}x{self.w}_k{self.kh}x{self.kw}_p{self.ph}x{self.pw}"
                f"_d{self.dh}x{self.dw}_{act}_{'b' if self.has_bias else 'nb'}")

    @property
    def vectors(self) -> int:
        return -(-self.h * self.w // self.vw)

    @property
    def group(self) -> int:
        """Accumulators held at once (of 32 vector registers with AVX-512, 16 with AVX2)."""
        return 24 if self.vw >= 16 else 12

    def masks(self) -> list[list[np.ndarray]]:
        """[tap][vector] -> bool lanes: the output positions whose input lies in the plane."""
        hw = self.h * self.w
        out = []
        for i in range(self.kh):
            for j in range(self.kw):
                dy, dx = i * self.dh - self.ph, j * self.dw - self.pw
                rows = []
                for v in range(self.vectors):
                    p = v * self.vw + np.arange(self.vw)
                    oh, ow = p // self.w, p % self.w
                    rows.append((p < hw) & (oh + dy >= 0) & (oh + dy < self.h)
                                & (ow + dx >= 0) & (ow + dx < self.w))
                out.append(rows)
        return out

    def emit(self, module: ir.Module, name: str) -> None:
        emit_depthwise_small(module, name, self)


def fits(vw: int, h: int, w: int, ho: int, wo: int, sh: int, sw: int, cin: int, cout: int,
         act: str) -> bool:
    return (sh == sw == 1 and (ho, wo) == (h, w) and cin == cout and act in FUSED_ACTS
            and -(-h * w // vw) <= MAX_VECTORS)


def emit_depthwise_small(module: ir.Module, name: str, spec: DepthwiseSpec) -> None:
    vw, hw = spec.vw, spec.h * spec.w
    k = _K(module, name, vw)
    b = k.b
    x, wt, bias, out = (k.arg_ptr(i, n) for i, n in ((D_X, "x"), (D_W, "wt"), (D_BIAS, "bias"),
                                                     (D_OUT, "out")))
    C = k.arg_i64(D_C, "C")
    taps = spec.kh * spec.kw
    masks = spec.masks()
    zero = ir.Constant(k.vty, [0.0] * vw)
    mask_ty = ir.VectorType(I1, vw)

    def mask_const(lanes: np.ndarray) -> ir.Constant | None:
        return None if lanes.all() else ir.Constant(mask_ty, [bool(v) for v in lanes])

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        c = b.srem(t, C)
        xb = b.gep(x, [b.mul(t, I64(hw))])
        ob = b.gep(out, [b.mul(t, I64(hw))])
        wrow = b.gep(wt, [b.mul(c, I64(taps))])
        init = k.splat(b.load(b.gep(bias, [c]))) if spec.has_bias else zero
        wvals = [b.load(b.gep(wrow, [I64(ti)])) for ti in range(taps)]
        for g0 in range(0, spec.vectors, spec.group):
            vecs = range(g0, min(g0 + spec.group, spec.vectors))
            acc = {v: k.alloca(k.vty, f"acc{v}") for v in vecs}
            for a in acc.values():
                b.store(init, a)
            for ti in range(taps):
                live = [v for v in vecs if masks[ti][v].any()]
                if not live:  # the tap reads only padding here
                    continue
                i, j = divmod(ti, spec.kw)
                off = (i * spec.dh - spec.ph) * spec.w + (j * spec.dw - spec.pw)
                # a zero weight is skipped (unordered: a NaN weight is not zero)
                with b.if_then(b.fcmp_unordered("!=", wvals[ti], ir.Constant(F32, 0.0))):
                    ws = k.splat(wvals[ti])
                    for v in live:
                        # no inbounds: a tap above the plane starts before it (its lanes
                        # there are masked and never read)
                        xv = k.vload(b.gep(xb, [I64(v * vw + off)]), mask_const(masks[ti][v]))
                        b.store(k.fma(ws, xv, b.load(acc[v])), acc[v])
            for v in vecs:
                lanes = v * vw + np.arange(vw) < hw
                k.vstore(k.act(b.load(acc[v]), spec), b.gep(ob, [I64(v * vw)]),
                         mask_const(lanes))
    b.ret_void()
