"""The native library's non-GEMM, non-sparse kernels, written in numba and linked as LLVM IR.

Every kernel has the one ABI of ``codegen/llvm``: ``void k(i64 start, i64 stop, i64* args)``,
doing work items ``[start, stop)`` serially; the library's parallel-for hands out the items.
Pointers and sizes come from ``args`` (floats as the bits of a float64). Kernels call the same
per-item functions as the numba backend's ``prange`` kernels (``im2col_row``, ``max_pool_plane``,
...), so both backends compute one thing one way.

numba compiles each kernel as a ``cfunc``; ``kernel_ir`` takes the IR of its inner function
(numba's calling convention, no Python API) and drops the cfunc wrapper, which calls into
CPython to report exceptions. Kernels here cannot raise: no bounds checks, ``error_model``
numpy, no allocation. Scratch comes from the arena, one slice per thread (``omp_get_thread_num``).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core.extending import intrinsic

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import attention as AT
from sparsecc.codegen.numba import conv as C
from sparsecc.codegen.numba import norm as N
from sparsecc.codegen.numba import pool as P
from sparsecc.codegen.numba import sparse as SPK

_SIG = types.void(types.int64, types.int64, types.CPointer(types.int64))
_OPTS = dict(error_model="numpy", boundscheck=False)
KERNELS: dict = {}  # name -> the Python function, compiled on first use (kernel_ir)
_EXTRA: dict[str, dict] = {}  # name -> numba options beyond _OPTS


def _kernel(fn=None, **extra):
    def deco(f):
        KERNELS[f.__name__] = f
        _EXTRA[f.__name__] = extra
        return f

    return deco(fn) if fn is not None else deco
_BIG = 1 << 40  # extent of a carray whose real extent the kernel does not need


@intrinsic
def _f32p(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(types.int64), codegen


@intrinsic
def _i64p(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(64).as_pointer())

    return types.CPointer(types.int64)(types.int64), codegen


def _ptr_intrinsic(ty, llty):
    @intrinsic
    def cast(typingctx, addr):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], llty.as_pointer())

        return types.CPointer(ty)(types.int64), codegen

    return cast


_u8p = _ptr_intrinsic(types.uint8, ir.IntType(8))
_i32p = _ptr_intrinsic(types.int32, ir.IntType(32))
_f64p = _ptr_intrinsic(types.float64, ir.DoubleType())


@intrinsic
def _f64(typingctx, bits):
    """The float64 whose bit pattern is ``bits``."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# The thread's index in the library's pool (0 outside a parallel region): picks its scratch.
_thread_num = types.ExternalFunction("omp_get_thread_num", types.int32())


def f64_bits(v: float) -> int:
    """An args slot holding the float ``v`` (read back with ``_f64``)."""
    return int(np.array(float(v), np.float64).view(np.int64))


@njit(inline="always", **_OPTS)
def _f32(a, i, n):
    return carray(_f32p(a[i]), n)


@njit(inline="always", **_OPTS)
def _scratch(a, i):
    """The address of this thread's scratch: args[i] the base, args[i+1] floats per thread,
    args[i+2] the threads it was sized for. A call on the caller's thread uses any one slice
    (the caller may be thread 5 of its own OpenMP team: clamped, not trusted)."""
    return a[i] + 4 * a[i + 1] * min(np.int64(_thread_num()), a[i + 2] - 1)


# ---- elementwise --------------------------------------------------------------------------
@_kernel
def k_act(start, stop, a):
    """[x, out, code, a, b]: out[i] = act(x[i]) (x may be out); items: elements."""
    x, out = _f32(a, 0, stop), _f32(a, 1, stop)
    code, p, q = a[2], _f64(a[3]), _f64(a[4])
    if a[0] == a[1]:
        A.act_inplace(out[start:stop], code, p, q)
    else:
        A.act_into(x[start:stop], out[start:stop], code, p, q)


@njit(inline="always", **_OPTS)
def _binop(u, v, fn):
    if fn == 0:
        return u + v
    if fn == 1:
        return u - v
    if fn == 2:
        return u * v
    if fn == 3:
        return u / v
    if fn == 4:  # torch.maximum / minimum propagate NaN
        return u if (u > v) | (u != u) else v
    return u if (u < v) | (u != u) else v


BINARY_FNS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "maximum": 4, "minimum": 5}
RANK = 6  # strided kernels take shapes padded to this rank


@njit(inline="always", **_OPTS)
def _offsets(a, base, r):
    """Row r of a rank-6 shape (dims a[base:base+6]) -> (its index along dims 0..4)."""
    i4 = r % a[base + 4]
    r //= a[base + 4]
    i3 = r % a[base + 3]
    r //= a[base + 3]
    i2 = r % a[base + 2]
    r //= a[base + 2]
    i1 = r % a[base + 1]
    i0 = r // a[base + 1]
    return i0, i1, i2, i3, i4


@njit(inline="always", **_OPTS)
def _dot5(a, base, i0, i1, i2, i3, i4):
    return i0 * a[base] + i1 * a[base + 1] + i2 * a[base + 2] + i3 * a[base + 3] + \
        i4 * a[base + 4]


@_kernel
def k_binary(start, stop, a):
    """[x, y, out, fn, code, a, b, dims(6), x strides(6), y strides(6)] (elements; a stride 0
    broadcasts): out = act(x fn y), out contiguous; items: rows (all dims but the last)."""
    x, y, out = _f32(a, 0, _BIG), _f32(a, 1, _BIG), _f32(a, 2, _BIG)
    fn, code, p, q = a[3], a[4], _f64(a[5]), _f64(a[6])
    d5 = a[12]
    xs5, ys5 = a[18], a[24]
    for r in range(start, stop):
        i0, i1, i2, i3, i4 = _offsets(a, 7, r)
        xo = _dot5(a, 13, i0, i1, i2, i3, i4)
        yo = _dot5(a, 19, i0, i1, i2, i3, i4)
        o = out[r * d5:(r + 1) * d5]
        if xs5 == 1 and ys5 == 1:
            xr, yr = x[xo:xo + d5], y[yo:yo + d5]
            for j in range(d5):
                o[j] = _binop(xr[j], yr[j], fn)
        elif xs5 == 1 and ys5 == 0:
            xr, yv = x[xo:xo + d5], y[yo]
            for j in range(d5):
                o[j] = _binop(xr[j], yv, fn)
        elif xs5 == 0 and ys5 == 1:
            xv, yr = x[xo], y[yo:yo + d5]
            for j in range(d5):
                o[j] = _binop(xv, yr[j], fn)
        else:
            for j in range(d5):
                o[j] = _binop(x[xo + j * xs5], y[yo + j * ys5], fn)
        if code != 0:
            A.act_inplace(o, code, p, q)


@njit(inline="always", **_OPTS)
def _copy_rows(start, stop, a, x, out):
    d5, xs5, os5 = a[7], a[13], a[19]
    for r in range(start, stop):
        i0, i1, i2, i3, i4 = _offsets(a, 2, r)
        xo = _dot5(a, 8, i0, i1, i2, i3, i4)
        oo = _dot5(a, 14, i0, i1, i2, i3, i4)
        if xs5 == 1 and os5 == 1:
            xr, orow = x[xo:xo + d5], out[oo:oo + d5]
            for j in range(d5):
                orow[j] = xr[j]
        else:
            for j in range(d5):
                out[oo + j * os5] = x[xo + j * xs5]


@_kernel
def k_copy32(start, stop, a):
    """[x, out, dims(6), x strides(6), out strides(6)]: a strided copy of 4-byte elements
    (permute, slice, cat, stack, expand); items: rows."""
    _copy_rows(start, stop, a, _f32(a, 0, _BIG), _f32(a, 1, _BIG))


@_kernel
def k_copy8(start, stop, a):
    """k_copy32 for 1-byte elements (bool masks)."""
    _copy_rows(start, stop, a, carray(_u8p(a[0]), _BIG), carray(_u8p(a[1]), _BIG))


@_kernel
def k_copy64(start, stop, a):
    """k_copy32 for 8-byte elements (token ids)."""
    _copy_rows(start, stop, a, carray(_i64p(a[0]), _BIG), carray(_i64p(a[1]), _BIG))


@_kernel(fastmath={"reassoc", "contract"})
def k_gemv(start, stop, a):
    """[w (O, K), x (K,), out (O,), bias, has_bias, O, K, code, a, b]: one input row through a
    dense layer, a dot product per output (weights read row-major: streamed, not strided as
    the GEMM's K x N panel would read them); items: outputs."""
    w = carray(_f32p(a[0]), (a[5], a[6]))
    x, out, bias = _f32(a, 1, a[6]), _f32(a, 2, a[5]), _f32(a, 3, a[5])
    for o in range(start, stop):
        out[o] = SPK.gemv_row(w, x, o, bias, a[4] != 0, a[7], _f64(a[8]), _f64(a[9]))


# ---- conv helpers and pooling -------------------------------------------------------------
@njit(inline="always", **_OPTS)
def _nchw(a, i, base):
    """The (N, C, H, W) float32 array at args[i], dims args[base:base+4]."""
    return carray(_f32p(a[i]), (a[base], a[base + 1], a[base + 2], a[base + 3]))


@_kernel
def k_im2col(start, stop, a):
    """[x, cols, N, C, H, W, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo]; items: N*cg*kh*kw
    rows of cols (N, cg*kh*kw, ho*wo)."""
    x = _nchw(a, 0, 2)
    cols = carray(_f32p(a[1]), (a[2], a[7] * a[8] * a[9], a[16] * a[17]))
    for t in range(start, stop):
        C.im2col_row(x, t, a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
                     a[17], cols)


@_kernel
def k_maxpool(start, stop, a):
    """[x, out, N, C, H, W, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, scratch, per, threads];
    items: N*C
    planes."""
    x = _nchw(a, 0, 2)
    out = carray(_f32p(a[1]), (a[2], a[3], a[6], a[7]))
    col = carray(_f32p(_scratch(a, 16)), a[5])
    for t in range(start, stop):
        P.max_pool_plane(x, t, a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15], out, col)


@_kernel
def k_maxpool_rows(start, stop, a):
    """[x, out, H, W, ho, wo, k, s]: k x k max pooling at stride s, no padding or dilation
    (the common case); items: output rows of all planes, each from its k input rows. The
    2x2/2 window is spelled out so the row loop vectorises (interleaved loads)."""
    x, out = _f32(a, 0, _BIG), _f32(a, 1, _BIG)
    h, w, ho, wo, k, s = a[2], a[3], a[4], a[5], a[6], a[7]
    t = start // ho  # plane and row, stepped along (no division per row)
    oh = start - t * ho
    for r in range(start, stop):
        base = t * h * w + oh * s * w
        oh += 1
        if oh == ho:
            oh = 0
            t += 1
        o = out[r * wo:(r + 1) * wo]
        if k == 2 and s == 2:
            r0, r1 = x[base:base + 2 * wo], x[base + w:base + w + 2 * wo]
            for j in range(wo):
                a0 = P._pick(r1[2 * j], r0[2 * j])
                a1 = P._pick(r1[2 * j + 1], r0[2 * j + 1])
                o[j] = P._pick(a1, a0)
        else:
            for j in range(wo):
                best = x[base + j * s]
                for i in range(k):
                    row = x[base + i * w + j * s:base + i * w + j * s + k]
                    for q in range(k):
                        best = P._pick(row[q], best)
                o[j] = best


@_kernel
def k_avgpool(start, stop, a):
    """[x, out, N, C, H, W, ho, wo, kh, kw, sh, sw, ph, pw, include_pad, divisor]."""
    x = _nchw(a, 0, 2)
    out = carray(_f32p(a[1]), (a[2], a[3], a[6], a[7]))
    for t in range(start, stop):
        P.avg_pool_plane(x, t, a[8], a[9], a[10], a[11], a[12], a[13], a[14] != 0, a[15], out)


@_kernel
def k_adaptive(start, stop, a):
    """[x, out, N, C, H, W, ho, wo, is_max, xcs]; a global average reads x's channels xcs
    floats apart (>= H*W), the other pools H*W."""
    x = _nchw(a, 0, 2)
    out = carray(_f32p(a[1]), (a[2], a[3], a[6], a[7]))
    if a[6] == 1 and a[7] == 1 and a[8] == 0:  # a global average: one run a plane
        hw = a[4] * a[5]
        xf = carray(_f32p(a[0]), a[2] * a[3] * a[9])
        of = carray(_f32p(a[1]), a[2] * a[3])
        for t in range(start, stop):
            of[t] = P.plane_mean(xf, t * a[9], hw)
        return
    for t in range(start, stop):
        P.adaptive_plane(x, t, a[8] != 0, out)


@_kernel
def k_depthwise(start, stop, a):
    """[x, wt, bias, has_bias, out, N, C, H, W, Co, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw,
    code, a, b, scratch, per, threads]; items: N*Co output planes."""
    x = _nchw(a, 0, 5)
    wt = carray(_f32p(a[1]), (a[9], a[12], a[13]))
    bias = _f32(a, 2, a[9])
    out = carray(_f32p(a[4]), (a[5], a[9], a[10], a[11]))
    sh, sw, dh, dw = a[14], a[15], a[18], a[19]
    hq = a[10] + ((a[12] - 1) * dh) // sh
    wq = a[11] + ((a[13] - 1) * dw) // sw
    buf = _scratch(a, 23)
    width = hq * wq + wq + 1
    planes = carray(_f32p(buf), (sh * sw, width))
    acc = carray(_f32p(buf + 4 * sh * sw * width), a[10] * wq)
    xf = carray(_f32p(a[0]), a[5] * a[6] * a[7] * a[8])
    of = carray(_f32p(a[4]), a[5] * a[9] * a[10] * a[11])
    for t in range(start, stop):
        C.depthwise_plane(x, wt, bias, a[3] != 0, sh, sw, a[16], a[17], dh, dw, a[20],
                          _f64(a[21]), _f64(a[22]), out, t, planes, acc, xf, of)


@intrinsic
def _strided3(typingctx, addr, n, rows, plane, stride):
    """A (n, rows, plane) float32 array at ``addr``, samples ``stride`` floats apart."""
    arr = types.Array(types.float32, 3, "A")

    def codegen(context, builder, sig, args):
        from numba.np.arrayobj import make_array, populate_array

        ptr, n_, rows_, plane_, stride_ = args
        ary = make_array(arr)(context, builder)
        four = ir.IntType(64)(4)
        populate_array(ary, data=builder.inttoptr(ptr, ir.FloatType().as_pointer()),
                       shape=[n_, rows_, plane_],
                       strides=[builder.mul(stride_, four), builder.mul(plane_, four), four],
                       itemsize=context.get_constant(types.intp, 4), meminfo=None)
        return ary._getvalue()

    return arr(types.int64, types.int64, types.int64, types.int64, types.int64), codegen


@_kernel
def k_phase(start, stop, a):
    """[x, planes, N, C, H, W, ph, pw, sh, sw, pys, npy, pxs, npx, hq, wq, stride]: the shifted
    conv's polyphase planes, samples ``stride`` floats apart; items: N*C*npy*npx planes."""
    x = _nchw(a, 0, 2)
    pys, pxs = carray(_i64p(a[10]), a[11]), carray(_i64p(a[12]), a[13])
    out = _strided3(a[1], a[2], a[3] * a[11] * a[13], a[14] * a[15], a[16])
    for t in range(start, stop):
        C.phase_row(x, t, a[6], a[7], a[8], a[9], pys, pxs, a[14], a[15], out)


@_kernel
def k_pads(start, stop, a):
    """[planes, N, C, hq, wq, stride, ps, right]: zero the border of each (hq, wq) plane
    (rows 0 and hq - 1, column 0 and, with ``right`` 1, column wq - 1: 0 where a row's right
    padding is the next row's left, Shift.share) and the gap after it (planes ``ps`` floats
    apart), samples ``stride`` floats apart; items N*C. The conv before wrote its wide rows
    into the interiors (its wrap columns land on the borders)."""
    hq, wq, right = a[3], a[4], a[7]
    out = _strided3(a[0], a[1], a[2], a[6], a[5])
    for t in range(start, stop):
        row = out[t // a[2], t % a[2]]
        for j in range(wq):
            row[j] = 0.0
            row[(hq - 1) * wq + j] = 0.0
        for i in range(1, hq - 1):
            row[i * wq] = 0.0
            if right:
                row[i * wq + wq - 1] = 0.0
        for j in range(hq * wq, a[6]):
            row[j] = 0.0


@_kernel
def k_endpads(start, stop, a):
    """[planes, N, C, hq, wq, stride, ps]: zero the first run of each (hq, wq) plane (row 0
    and row 1's first float) and its last (row hq - 1 and the gap to the next plane, ``ps``
    floats apart); samples ``stride`` floats apart, items N*C. The conv before wrote its wide
    rows into the interiors with zeros at the wrap columns (KernelSpec.wrap), which land on
    the other border floats."""
    hq, wq = a[3], a[4]
    out = _strided3(a[0], a[1], a[2], a[6], a[5])
    for t in range(start, stop):
        row = out[t // a[2], t % a[2]]
        for j in range(wq + 1):
            row[j] = 0.0
        for j in range((hq - 1) * wq, a[6]):
            row[j] = 0.0


@_kernel
def k_rowpads(start, stop, a):
    """[planes, N, C, W, H, stride, ps]: zero the rows planes' padding (row 0, and rows H + 1
    on up to ps floats: the conv before wrote the interiors, rows 1..H), channels ``ps``
    floats apart, samples ``stride``; items N*C."""
    w, h = a[3], a[4]
    out = _strided3(a[0], a[1], a[2], a[6], a[5])
    for t in range(start, stop):
        row = out[t // a[2], t % a[2]]
        for j in range(w):
            row[j] = 0.0
        for j in range((h + 1) * w, a[6]):
            row[j] = 0.0


@_kernel
def k_crop(start, stop, a):
    """[full, out, N, Co, ho, wo, wq, fcs, ocs]: out[n, o, i*wo + j] = full[n, o, i*wq + j],
    full's channels fcs >= ho*wq floats apart, out's ocs >= ho*wo; items N*Co."""
    full = carray(_f32p(a[0]), (a[2], a[3], a[7]))
    out = carray(_f32p(a[1]), (a[2], a[3], a[8]))
    for t in range(start, stop):
        C.crop_plane(full, t, a[6], a[5], a[4], out)


@_kernel
def k_crop_pk(start, stop, a):
    """[full, out, N, Co, ho, wo, wq, fcs, B]: k_crop into the batch packed into the positions
    (native.lower.PACK): sample n's plane o at out[n // B, o, (n % B)*ho*wo:], a block's
    channels B*ho*wo floats apart; samples N <= n < items / Co (a last block's padding) get
    zeros. Items: N rounded up to B, times Co, a block's samples fastest (t = (n // B * Co +
    o) * B + n % B: one channel's runs of a block are written one after another, whole
    lines). ResNet-50 b16, per call: 0.35-0.41 ms with the channels fastest and an
    element loop, 0.32-0.42 with the samples fastest, 0.22-0.25 with the rows copied
    through 1-D views (crop_copy): the views gained, the order did not measurably."""
    co, ho, wo, wq, nb = a[3], a[4], a[5], a[6], a[8]
    hw = ho * wo
    full = carray(_f32p(a[0]), (a[2], co, a[7]))
    blocks = (a[2] + nb - 1) // nb
    out = carray(_f32p(a[1]), (blocks, co, nb * hw))
    for t in range(start, stop):
        q = t // nb
        s = t - q * nb
        blk = q // co
        o = q - blk * co
        n = blk * nb + s
        dst = out[blk, o, s * hw:(s + 1) * hw]
        if n >= a[2]:
            dst[:] = 0.0
            continue
        C.crop_copy(full[n, o], dst, wq, wo, ho)


@njit(**_OPTS)
def _to_tiles(start, stop, a):
    """[full, out, N, Co, fcs, B, tiles, src, samp]: floats gathered into the packed layout
    held tile-major (native.lower.PACK_TILE_MAJOR): a block's positions (its B samples' planes
    one after another) in ``tiles`` tiles of 16, a tile's channels 16 floats apart, so
    position p of channel o is out[n // B, p // 16, o, p % 16]. ``src`` (int32, B x ho x wo)
    holds each position's float from the block's first sample of full (samples Co x fcs
    apart, channels fcs), ``samp`` its sample: a 3x3 conv's wide rows cropped (row i at i x
    wq), or a stride-2 1x1 conv's positions gathered from its x (row i at 2i x W, column
    2j). Items: N rounded up to B over B, times tiles: one tile of a block, its Co lines
    written in order; a last block's padding samples give zeros."""
    n_all, co, fcs, nb, ntl = a[2], a[3], a[4], a[5], a[6]
    full = _f32p(a[0])
    out = _f32p(a[1])
    src = _i32p(a[7])
    samp = _i32p(a[8])
    for t in range(start, stop):
        blk = t // ntl
        tt = t - blk * ntl
        fb = blk * nb * co * fcs
        ob = t * co * 16
        # (the tile's last position's sample: are all of its samples real?)
        whole = blk * nb + samp[tt * 16 + 15] < n_all
        for o in range(co):
            fo = fb + o * fcs
            oo = ob + o * 16
            if whole:
                for lane in range(16):
                    out[oo + lane] = full[fo + src[tt * 16 + lane]]
            else:
                for lane in range(16):
                    q = tt * 16 + lane
                    out[oo + lane] = full[fo + src[q]] if blk * nb + samp[q] < n_all \
                        else np.float32(0.0)


@_kernel
def k_crop_pktm(start, stop, a):
    """_to_tiles for a 3x3 conv's wide rows: k_crop_pk into the packed layout held
    tile-major (native.lower.PACK_TILE_MAJOR)."""
    _to_tiles(start, stop, a)


@_kernel
def k_gather_pktm(start, stop, a):
    """_to_tiles for a stride-2 1x1 conv's positions of its x (a downsample's plane, in the
    packed layout held tile-major): in place of the packed phase pass."""
    _to_tiles(start, stop, a)


@_kernel
def k_crop_res(start, stop, a):
    """[full, res, out, N, Co, ho, wo, wq, code, a, b, fcs, ocs]: out[n, o, i*wo + j] =
    act(full[n, o, i*wq + j] + res[n, o, i*wo + j]), full's channels fcs floats apart, res's
    and out's ocs; items N*Co."""
    full = carray(_f32p(a[0]), (a[3], a[4], a[11]))
    res = carray(_f32p(a[1]), (a[3], a[4], a[12]))
    out = carray(_f32p(a[2]), (a[3], a[4], a[12]))
    p, q = _f64(a[9]), _f64(a[10])
    for t in range(start, stop):
        C.crop_res_plane(full, t, a[7], a[6], a[5], res, out, a[8], p, q)


def _view4_factory(dtype):
    """An intrinsic: (addr, 4 dims, 4 element strides) -> a 4-D ``dtype`` array (any strides:
    a stride 0 broadcasts)."""
    arr = types.Array(dtype, 4, "A")

    @intrinsic
    def view4(typingctx, addr, d0, d1, d2, d3, s0, s1, s2, s3):
        def codegen(context, builder, sig, args):
            from numba.np.arrayobj import make_array, populate_array

            ary = make_array(arr)(context, builder)
            size = context.get_abi_sizeof(context.get_data_type(dtype))
            isz = ir.IntType(64)(size)
            ptr = builder.inttoptr(args[0], context.get_data_type(dtype).as_pointer())
            populate_array(ary, data=ptr, shape=list(args[1:5]),
                           strides=[builder.mul(x, isz) for x in args[5:9]],
                           itemsize=context.get_constant(types.intp, size), meminfo=None)
            return ary._getvalue()

        return arr(*([types.int64] * 9)), codegen

    return view4


_view4_f32 = _view4_factory(types.float32)
_view4_bool = _view4_factory(types.boolean)


@njit(inline="always", **_OPTS)
def _v4(a, i, base):
    """The float32 4-D array at args[i], dims args[base:base+4], strides args[base+4:base+8]."""
    return _view4_f32(a[i], a[base], a[base + 1], a[base + 2], a[base + 3], a[base + 4],
                      a[base + 5], a[base + 6], a[base + 7])


@_kernel
def k_sdpa(start, stop, a):
    """[q, k, v, out, mask, mask_kind, causal, scale, scratch, per, threads, q dims(4) and
    strides(4), k (8), v (8), out (8), mask (8)]: softmax(q k^T * scale + mask) v, one (batch,
    head) per item (sdpa_head: the numba backend's body); a bool mask when kind is KEEP."""
    # q, k, v and out are plan tensors (contiguous): C arrays, so the loops vectorise
    q = carray(_f32p(a[0]), (a[11], a[12], a[13], a[14]))
    k = carray(_f32p(a[1]), (a[19], a[20], a[21], a[22]))
    v = carray(_f32p(a[2]), (a[27], a[28], a[29], a[30]))
    out = carray(_f32p(a[3]), (a[35], a[36], a[37], a[38]))
    nd, ns, ne = a[14], a[21], a[30]
    buf = _scratch(a, 8)
    kt = carray(_f32p(buf), (nd, ns))
    vc = carray(_f32p(buf + 4 * nd * ns), (ns, ne))
    row = carray(_f32p(buf + 4 * (nd + ne) * ns), ns)
    acc = carray(_f32p(buf + 4 * ((nd + ne) * ns + ns)), ne)
    sc = np.float32(_f64(a[7]))
    if a[5] == AT.MASK_KEEP:
        mb = _view4_bool(a[4], a[43], a[44], a[45], a[46], a[47], a[48], a[49], a[50])
        for t in range(start, stop):
            AT.sdpa_head(q, k, v, mb, a[5], a[6] != 0, sc, out, t, kt, vc, row, acc)
    else:
        mf = _v4(a, 4, 43)
        for t in range(start, stop):
            AT.sdpa_head(q, k, v, mf, a[5], a[6] != 0, sc, out, t, kt, vc, row, acc)


# Element types of the any-dtype kernels (binary comparisons, casts, reductions).
DTYPES = {"float32": 0, "int64": 1, "bool": 2, "int32": 3, "float64": 4}
ANY_FNS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "maximum": 4, "minimum": 5, "eq": 6,
           "ne": 7, "lt": 8, "le": 9, "gt": 10, "ge": 11, "and": 12, "or": 13}


@njit(inline="always", **_OPTS)
def _load(addr, i, dt):
    if dt == 0:
        return np.float64(carray(_f32p(addr), i + 1)[i])
    if dt == 1:
        return np.float64(carray(_i64p(addr), i + 1)[i])
    if dt == 2:
        return np.float64(carray(_u8p(addr), i + 1)[i] != 0)
    if dt == 3:
        return np.float64(carray(_i32p(addr), i + 1)[i])
    return carray(_f64p(addr), i + 1)[i]


@njit(inline="always", **_OPTS)
def _store(addr, i, dt, v):
    if dt == 0:
        carray(_f32p(addr), i + 1)[i] = np.float32(v)
    elif dt == 1:
        carray(_i64p(addr), i + 1)[i] = np.int64(v)
    elif dt == 2:
        carray(_u8p(addr), i + 1)[i] = np.uint8(v != 0)
    elif dt == 3:
        carray(_i32p(addr), i + 1)[i] = np.int32(v)
    else:
        carray(_f64p(addr), i + 1)[i] = v


@njit(inline="always", **_OPTS)
def _anyop(u, v, fn):
    if fn <= 5:
        return np.float64(_binop(u, v, fn))
    if fn == 6:
        return 1.0 if u == v else 0.0
    if fn == 7:
        return 1.0 if u != v else 0.0
    if fn == 8:
        return 1.0 if u < v else 0.0
    if fn == 9:
        return 1.0 if u <= v else 0.0
    if fn == 10:
        return 1.0 if u > v else 0.0
    if fn == 11:
        return 1.0 if u >= v else 0.0
    if fn == 12:
        return 1.0 if (u != 0) and (v != 0) else 0.0
    return 1.0 if (u != 0) or (v != 0) else 0.0


@_kernel
def k_binary_any(start, stop, a):
    """[x, y, out, fn, xdt, ydt, odt, dims(6), x strides(6), y strides(6)]: k_binary for any
    element types (DTYPES; comparisons give bool), computed in float64, scalar; items: rows.
    ``fn`` -1: a cast of x (y unread)."""
    fn, xdt, ydt, odt = a[3], a[4], a[5], a[6]
    d5, xs5, ys5 = a[12], a[18], a[24]
    if fn < 0 and xs5 == 1 and odt == 0 and xdt in (1, 2):  # int64 / bool -> float32 casts
        for r in range(start, stop):
            i0, i1, i2, i3, i4 = _offsets(a, 7, r)
            xo = _dot5(a, 13, i0, i1, i2, i3, i4)
            o = carray(_f32p(a[2]), (r + 1) * d5)[r * d5:]
            if xdt == 1:
                xi = carray(_i64p(a[0]), xo + d5)[xo:]
                for j in range(d5):
                    o[j] = np.float32(xi[j])
            else:
                xb = carray(_u8p(a[0]), xo + d5)[xo:]
                for j in range(d5):
                    o[j] = np.float32(1.0) if xb[j] != 0 else np.float32(0.0)
        return
    for r in range(start, stop):
        i0, i1, i2, i3, i4 = _offsets(a, 7, r)
        xo = _dot5(a, 13, i0, i1, i2, i3, i4)
        yo = _dot5(a, 19, i0, i1, i2, i3, i4)
        for j in range(d5):
            u = _load(a[0], xo + j * xs5, xdt)
            if fn < 0:
                val = u
            else:
                val = _anyop(u, _load(a[1], yo + j * ys5, ydt), fn)
            _store(a[2], r * d5 + j, odt, val)


@_kernel
def k_where(start, stop, a):
    """[cond (bool), x, y, out, dims(6), cond strides(6), x strides(6), y strides(6)]: out =
    cond ? x : y in float32 (a scalar branch is a 1-element constant at stride 0); items:
    rows."""
    cond = carray(_u8p(a[0]), _BIG)
    x, y, out = _f32(a, 1, _BIG), _f32(a, 2, _BIG), _f32(a, 3, _BIG)
    d5, cs5, xs5, ys5 = a[9], a[15], a[21], a[27]
    for r in range(start, stop):
        i0, i1, i2, i3, i4 = _offsets(a, 4, r)
        co = _dot5(a, 10, i0, i1, i2, i3, i4)
        xo = _dot5(a, 16, i0, i1, i2, i3, i4)
        yo = _dot5(a, 22, i0, i1, i2, i3, i4)
        o = out[r * d5:(r + 1) * d5]
        for j in range(d5):
            o[j] = x[xo + j * xs5] if cond[co + j * cs5] != 0 else y[yo + j * ys5]


UNARY_FNS = {"exp": 0, "log": 1, "sqrt": 2, "neg": 3, "abs": 4, "reciprocal": 5, "rsqrt": 6,
             "sin": 7, "cos": 8}


@_kernel
def k_unary(start, stop, a):
    """[x, out, fn]: float32 math per element (UNARY_FNS, numpy's float32 semantics: log of a
    negative is NaN, 1/0 is inf); items: elements."""
    x, out = _f32(a, 0, stop), _f32(a, 1, stop)
    fn = a[2]
    for i in range(start, stop):
        v = x[i]
        if fn == 0:
            r = np.exp(v)
        elif fn == 1:
            r = np.log(v)
        elif fn == 2:
            r = np.sqrt(v)
        elif fn == 3:
            r = -v
        elif fn == 4:
            r = abs(v)
        elif fn == 5:
            r = np.float32(1.0) / v
        elif fn == 6:
            r = np.float32(1.0) / np.sqrt(v)
        elif fn == 7:
            r = np.sin(v)
        else:
            r = np.cos(v)
        out[i] = r


@_kernel
def k_affine(start, stop, a):
    """[x, out, scale, shift, C, inner]: out = x * scale[c] + shift[c] per channel c of
    (N, C, inner) data; items: N*C planes."""
    x, out = _f32(a, 0, _BIG), _f32(a, 1, _BIG)
    c, inner = a[4], a[5]
    scale, shift = _f32(a, 2, c), _f32(a, 3, c)
    for t in range(start, stop):
        ch = t % c
        sc, sh = scale[ch], shift[ch]
        xr, orow = x[t * inner:(t + 1) * inner], out[t * inner:(t + 1) * inner]
        for j in range(inner):
            orow[j] = xr[j] * sc + sh


REDUCE_FNS = {"sum": 0, "mean": 1, "amax": 2, "amin": 3}


@_kernel
def k_reduce(start, stop, a):
    """[x, out, fn, kept dims(4), kept strides(4), reduced dims(4), reduced strides(4)]
    (float32; accumulated in float64; NaN propagates through amax/amin); items: outputs."""
    x, out = _f32(a, 0, _BIG), _f32(a, 1, _BIG)
    fn = a[2]
    count = a[11] * a[12] * a[13] * a[14]
    for r in range(start, stop):
        k3 = r % a[6]
        q = r // a[6]
        k2 = q % a[5]
        q //= a[5]
        k1 = q % a[4]
        k0 = q // a[4]
        base = k0 * a[7] + k1 * a[8] + k2 * a[9] + k3 * a[10]
        acc = 0.0 if fn <= 1 else np.float64(x[base])
        for j0 in range(a[11]):
            for j1 in range(a[12]):
                for j2 in range(a[13]):
                    off = base + j0 * a[15] + j1 * a[16] + j2 * a[17]
                    for j3 in range(a[14]):
                        v = np.float64(x[off + j3 * a[18]])
                        if fn <= 1:
                            acc += v
                        elif fn == 2:
                            acc = v if (v > acc) | (v != v) else acc
                        else:
                            acc = v if (v < acc) | (v != v) else acc
        out[r] = np.float32(acc / count if fn == 1 else acc)


# ---- rows: softmax, layer norm; embedding ---------------------------------------------------
@_kernel
def k_softmax(start, stop, a):
    """[x, out, d, log]: (log-)softmax of rows of d floats; items: rows."""
    d = a[2]
    x, out = _f32(a, 0, stop * d), _f32(a, 1, stop * d)
    for r in range(start, stop):
        xr, orow = x[r * d:(r + 1) * d], out[r * d:(r + 1) * d]
        if a[3] == 0:
            for j in range(d):
                orow[j] = xr[j]
            N.softmax_inplace32(orow)
        else:
            m = -math.inf
            for j in range(d):
                m = max(m, xr[j])
            if m == -math.inf:
                m = 0.0
            s = 0.0
            for j in range(d):
                s += math.exp(xr[j] - m)
            ls = math.log(s)
            for j in range(d):
                orow[j] = xr[j] - m - ls


@_kernel
def k_layernorm(start, stop, a):
    """[x, out, d, weight, bias, has_w, has_b, eps]; items: rows."""
    d = a[2]
    x = carray(_f32p(a[0]), (stop, d))
    out = carray(_f32p(a[1]), (stop, d))
    w, b = _f32(a, 3, d), _f32(a, 4, d)
    for r in range(start, stop):
        N.layer_norm_row(x, w, b, a[5] != 0, a[6] != 0, _f64(a[7]), out, r)


@_kernel
def k_embedding(start, stop, a):
    """[idx (int64), table, out, rows, dim, err]: out[i] = table[idx[i]]; an index outside
    [0, rows) writes zeros and sets the int64 at ``err`` to 1 (the run reports it)."""
    idx = carray(_i64p(a[0]), stop)
    rows, d = a[3], a[4]
    table, out = _f32(a, 1, rows * d), _f32(a, 2, stop * d)
    err = carray(_i64p(a[5]), 1)
    for i in range(start, stop):
        k = idx[i]
        o = out[i * d:(i + 1) * d]
        if k < 0 or k >= rows:
            err[0] = 1
            for j in range(d):
                o[j] = 0.0
        else:
            src = table[k * d:(k + 1) * d]
            for j in range(d):
                o[j] = src[j]


# ---- IR extraction ------------------------------------------------------------------------
@functools.cache
def source_hash() -> str:
    """Identifies the kernels' source (this file, the numba kernels it calls, numba): part of
    the library cache key, so a cached library is found without compiling any kernel."""
    import hashlib
    from pathlib import Path

    import numba

    from sparsecc.codegen import numba as nb_pkg

    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(Path(nb_pkg.__file__).parent.glob("*.py")) + [Path(__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()[:24]

@dataclass(frozen=True)
class KernelIR:
    """One kernel's numba IR: ``text`` defines ``inner`` with numba's calling convention,
    ``i32 inner(ptr retptr, ptr excinfo, i64 start, i64 stop, ptr args)``."""

    name: str
    inner: str
    text: str


_IR: dict[str, KernelIR] = {}
_IR_LOCK = threading.Lock()


def kernel_ir(name: str) -> KernelIR:
    """The IR of kernel ``name``, compiled by numba on first use. The OpenMP runtime must be
    loaded first (``runtime.load_gomp``): numba links the kernel in this process too and
    aborts on a symbol it cannot find."""
    from sparsecc.native.runtime import load_gomp

    load_gomp()
    with _IR_LOCK:
        hit = _IR.get(name)
        if hit is None:
            hit = _IR[name] = _extract(name, cfunc(_SIG, **_OPTS, **_EXTRA[name])(KERNELS[name]))
    return hit


def _extract(name: str, fn) -> KernelIR:
    text = fn._library.get_llvm_str()
    wrapper = fn.native_name  # "cfunc." + the inner function's mangled name
    inner = wrapper[len("cfunc."):]
    # Drop the wrapper's body (it reports exceptions through the CPython API); its now unused
    # declarations go with dead-code elimination once the module is linked.
    pat = re.compile(r'^define [^\n]*@"?' + re.escape(wrapper) + r'"?\(.*?^}\n', re.S | re.M)
    text, n = pat.subn("", text)
    if n != 1:
        raise RuntimeError(f"native kernel {name}: numba's cfunc wrapper not found")
    return KernelIR(name, inner, text)
