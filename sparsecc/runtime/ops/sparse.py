"""CSR linear and conv2d: which kernel runs, in which layout, with which scratch.

Backends: ``llvm`` (vector kernels emitted by ``codegen/llvm``, the default) and ``numba`` (the
portable fallback, also used when LLVM code cannot be built here). Paths:

* linear, one input row: gather SpMV straight from the row-major input;
* linear, several rows: SpMM over features x batch (the input is transposed into scratch, the
  output transposed back, unless the layout pass already hands over features x batch);
* conv 1x1 stride 1: SpMM over channels x pixels of each sample, no copy;
* conv kxk stride 1 ("shifted"): the input is zero-padded once into flat planes of width Wp; a
  nonzero (c, dy, dx) then reads the plane at a fixed offset, so the conv is one SpMM over
  Ho*Wp positions whose wrap-around columns are cropped afterwards (no im2col);
* other convs: im2col + SpMM.
"""

from __future__ import annotations

import numpy as np

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import conv as C
from sparsecc.codegen.numba import sparse as S
from sparsecc.errors import CodegenError
from sparsecc.ir.plan import Op

_LLVM_STATE: dict[str, object] = {}
# Above this wasted fraction of computed positions (the wrap columns), im2col wins.
_SHIFT_MAX_WASTE = 0.5


def llvm_available() -> bool:
    if "ok" not in _LLVM_STATE:
        try:
            from sparsecc.codegen.llvm import jit

            jit.host()
            _LLVM_STATE["ok"] = True
        except Exception as e:  # no usable LLVM target here: numba kernels only
            _LLVM_STATE["ok"] = False
            _LLVM_STATE["why"] = str(e)
    return bool(_LLVM_STATE["ok"])


def backend_of(op: Op) -> str:
    want = op.attrs.get("backend", "llvm")
    return "llvm" if want == "llvm" and llvm_available() else "numba"


def threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _kernel(family: str, op: Op, ctx_act: tuple, has_bias: bool, idx_bits: int, tile: int = 1):
    from sparsecc.codegen.llvm import emit, jit, kernels

    act, a, b = ctx_act
    fused = act if act in emit.FUSED_ACTS else "none"
    spec = emit.KernelSpec(family, jit.host().vector_width, tile, fused,
                           a if fused == "clamp" else 0.0, b if fused == "clamp" else 0.0,
                           has_bias, idx_bits)
    try:
        return kernels.build(spec), fused != act
    except CodegenError as e:
        raise CodegenError(op.layer or op.name, str(e)) from None


def _act_tail(out: np.ndarray, code: int, a: float, b: float):
    flat = out.reshape(-1)
    return lambda: A.act_flat(flat, flat, code, a, b)


def _idx_bits(indices: np.ndarray) -> int:
    return 16 if indices.dtype == np.uint16 else 32


# ---- linear -------------------------------------------------------------------------------
def linear_scratch(op: Op, m: int, k: int, o: int) -> list[tuple[tuple[int, ...], str]]:
    if m > 1:
        return [((k, m), "float32"), ((o, m), "float32")]
    return []


def bind_linear(ctx, x2: np.ndarray, o2: np.ndarray, epi: tuple):
    bias, has_bias, code, a, b, act = epi
    ip, ix, dv = ctx.params["indptr"], ctx.params["indices"], ctx.params["data"]
    m = x2.shape[0]
    if backend_of(ctx.op) == "numba":
        if m <= 1:
            return lambda: S.csr_spmv_rows(ip, ix, dv, x2, o2, bias, has_bias, code, a, b)
        xt, ot = ctx.scratch
        xt3, ot3 = xt.reshape(1, *xt.shape), ot.reshape(1, *ot.shape)

        def run_numba():
            np.copyto(xt, x2.T)
            S.csr_spmm(ip, ix, dv, xt3, ot3, bias, has_bias, code, a, b)
            np.copyto(o2, ot.T)

        return run_numba
    from sparsecc.codegen.llvm import jit, kernels

    if m <= 1:
        kern, tail = _kernel("spmv", ctx.op, (act, a, b), has_bias, _idx_bits(ix))
        launch = kernels.spmv_launch(kern, ip, ix, dv, bias, x2, o2, m=m, threads=threads())
        return _with_tail(launch, o2, tail, code, a, b)
    xt, ot = ctx.scratch
    tile = kernels.spmm_tile(m, jit.host().vector_width)
    kern, tail = _kernel("spmm", ctx.op, (act, a, b), has_bias, _idx_bits(ix), tile)
    launch = kernels.spmm_launch(kern, ip, ix, dv, bias, xt, ot, n=1, L=m, xrs=m, ors=m,
                                 xns=0, ons=0, threads=threads())
    post = _act_tail(ot, code, a, b) if tail else None

    def run_llvm():
        np.copyto(xt, x2.T)
        launch()
        if post is not None:
            post()
        np.copyto(o2, ot.T)

    return run_llvm


def _with_tail(launch, out, tail: bool, code, a, b):
    if not tail:
        return launch
    post = _act_tail(out, code, a, b)

    def run():
        launch()
        post()

    return run


# ---- conv2d -------------------------------------------------------------------------------
def conv_method(op: Op, in_shape, out_shape) -> str:
    """"pointwise" | "shifted" | "im2col" for a CSR conv (groups == 1)."""
    kh, kw = (int(v) for v in op.attrs["kernel"])
    sh, sw = (int(v) for v in op.attrs["stride"])
    ph, pw = (int(v) for v in op.attrs["padding"])
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return "pointwise"
    if op.attrs.get("backend", "llvm") != "llvm" or (sh, sw) != (1, 1):
        return "im2col"
    dw = int(op.attrs["dilation"][1])
    wo = int(out_shape[3])
    wp = wo + dw * (kw - 1)
    return "shifted" if (wp - wo) / wp <= _SHIFT_MAX_WASTE else "im2col"


def _shift_geometry(op: Op, out_shape):
    kh, kw = (int(v) for v in op.attrs["kernel"])
    dh, dw = (int(v) for v in op.attrs["dilation"])
    ho, wo = int(out_shape[2]), int(out_shape[3])
    hp, wp = ho + dh * (kh - 1), wo + dw * (kw - 1)
    slack = dw * (kw - 1) + 64
    return kh, kw, dh, dw, hp, wp, slack


def conv_scratch(op: Op, in_shape, out_shape, method: str):
    n, cin = int(in_shape[0]), int(in_shape[1])
    cout = int(out_shape[1])
    if method == "shifted":
        _, _, _, _, hp, wp, slack = _shift_geometry(op, out_shape)
        return [((n, cin * hp * wp + slack), "float32"),
                ((n, cout, int(out_shape[2]) * wp), "float32")]
    return None  # the dense path's scratch (im2col columns) serves


def shifted_offsets(indices: np.ndarray, kh: int, kw: int, dh: int, dw: int, plane: int,
                    wp: int) -> np.ndarray:
    """CSR column (c, dy, dx) -> offset of its first read in the padded flat planes."""
    col = indices.astype(np.int64)
    c, r = np.divmod(col, kh * kw)
    dy, dx = np.divmod(r, kw)
    off = c * plane + dy * dh * wp + dx * dw
    return off.astype(np.uint32)


def bind_conv(ctx, x: np.ndarray, out: np.ndarray, cols, fill, epi: tuple, method: str):
    """``cols``/``fill``: im2col columns (N, K, HoWo) and the function filling them (or x as
    (N, Cin, HW) and None for pointwise)."""
    bias, has_bias, code, a, b, act = epi
    ip, ix, dv = ctx.params["indptr"], ctx.params["indices"], ctx.params["data"]
    n, cout = out.shape[0], out.shape[1]
    out3 = out.reshape(n, cout, -1)
    if backend_of(ctx.op) == "numba":
        def run_numba():
            if fill is not None:
                fill()
            S.csr_spmm(ip, ix, dv, cols, out3, bias, has_bias, code, a, b)

        return run_numba
    from sparsecc.codegen.llvm import jit, kernels

    vw = jit.host().vector_width
    if method == "shifted":
        return _bind_shifted(ctx, x, out, epi, vw)
    L = out3.shape[2]
    krows = cols.shape[1]
    kern, tail = _kernel("spmm", ctx.op, (act, a, b), has_bias, _idx_bits(ix),
                         kernels.spmm_tile(L, vw))
    launch = kernels.spmm_launch(kern, ip, ix, dv, bias, cols, out3, n=n, L=L, xrs=L, ors=L,
                                 xns=krows * L, ons=cout * L, threads=threads())
    post = _act_tail(out3, code, a, b) if tail else None

    def run_llvm():
        if fill is not None:
            fill()
        launch()
        if post is not None:
            post()

    return run_llvm


def _bind_shifted(ctx, x, out, epi, vw):
    from sparsecc.codegen.llvm import kernels

    bias, has_bias, code, a, b, act = epi
    op = ctx.op
    ip, ix, dv = ctx.params["indptr"], ctx.params["indices"], ctx.params["data"]
    n, cin = x.shape[0], x.shape[1]
    cout, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    kh, kw, dh, dw, hp, wp, _ = _shift_geometry(op, out.shape)
    ph, pw = (int(v) for v in op.attrs["padding"])
    plane = hp * wp
    padded, full = ctx.scratch
    planes = padded[:, :cin * plane].reshape(n, cin, plane)
    offs = shifted_offsets(ix, kh, kw, dh, dw, plane, wp)
    L = ho * wp
    kern, tail = _kernel("spmm", op, (act, a, b), has_bias, 32, kernels.spmm_tile(L, vw))
    launch = kernels.spmm_launch(kern, ip, offs, dv, bias, padded, full, n=n, L=L, xrs=1, ors=L,
                                 xns=padded.shape[1], ons=cout * L, threads=threads())
    post = _act_tail(out, code, a, b) if tail else None

    def run_shifted():
        C.pad_planes(x, ph, pw, hp, wp, planes)
        launch()
        C.crop_rows(full, wp, wo, out)
        if post is not None:
            post()

    return run_shifted
