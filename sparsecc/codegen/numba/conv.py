"""Convolution helpers: im2col for the GEMM/SpMM path and a direct depthwise kernel."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsecc.codegen.numba.activations import act_inplace, apply_act


@njit(parallel=True, cache=True)
def im2col(x, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols):
    """cols[n, (c, i, j), (oh, ow)] = x[n, c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] or 0.

    x: (N, C, H, W); cols: (N, cg*kh*kw, Ho*Wo). ``c0, cg`` select one group's channels.
    ``ph, pw`` are the leading pads; the trailing ones follow from Ho, Wo (they may differ, as
    in torch's padding='same' with an even kernel).
    """
    nb = x.shape[0]
    krows = cg * kh * kw
    for t in prange(nb * krows):
        im2col_row(x, t, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols)


@njit(inline="always", cache=True)
def im2col_row(x, t, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols):
    """Row t (sample t // krows, row t % krows) of im2col; also the native library's kernel."""
    h, w = x.shape[2], x.shape[3]
    krows = cg * kh * kw
    ho = cols.shape[2] // wo
    n = t // krows
    r = t - n * krows
    c = r // (kh * kw)
    ki = (r // kw) % kh
    kj = r % kw
    for oh in range(ho):
        ih = oh * sh - ph + ki * dh
        base = oh * wo
        if ih < 0 or ih >= h:
            for ow in range(wo):
                cols[n, r, base + ow] = 0.0
        else:
            for ow in range(wo):
                iw = ow * sw - pw + kj * dw
                if iw >= 0 and iw < w:
                    cols[n, r, base + ow] = x[n, c0 + c, ih, iw]
                else:
                    cols[n, r, base + ow] = 0.0


def depthwise_conv2d(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw, code, a, b, out):
    """_depthwise_conv2d on C-contiguous arrays (its few-tap path reads and writes flat
    planes): a strided ``x`` or ``out`` goes through a contiguous copy."""
    if x.flags.c_contiguous and out.flags.c_contiguous:
        _depthwise_conv2d(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw, code, a, b, out)
        return
    tmp = np.empty(out.shape, np.float32)
    _depthwise_conv2d(np.ascontiguousarray(x), wt, bias, has_bias, sh, sw, ph, pw, dh, dw,
                      code, a, b, tmp)
    out[...] = tmp


@njit(parallel=True, cache=True)
def _depthwise_conv2d(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw, code, a, b, out):
    """Direct depthwise conv (groups == C_in, any channel multiplier), fused bias + activation.

    x: (N, C, H, W); wt: (C_out, kh, kw); out: (N, C_out, Ho, Wo). A 3x3 plane with >= 5
    nonzero taps: the padded input is split into its stride phases (as the shifted conv does;
    one plane at stride 1), each flattened with rows wq apart, and all nine taps (each its
    phase plane from one fixed offset) are summed over the ho * wq positions in one
    vectorised loop; the wq - wo wrap columns are dropped when the plane is stored. Fewer
    taps, or another kernel size: straight from x into out (``_depthwise_direct``).
    """
    nb = x.shape[0]
    _, cout, ho, wo = out.shape
    kh, kw = wt.shape[1], wt.shape[2]
    hq = ho + ((kh - 1) * dh) // sh
    wq = wo + ((kw - 1) * dw) // sw
    plane = hq * wq
    slack = wq + 1
    npos = ho * wq
    # Loops index views by their own range variable: numba wraps negative indices, and an
    # index it cannot prove >= 0 (p + off) costs a select per element and the vectorisation.
    xf, of = x.reshape(x.size), out.reshape(out.size)  # flat views for the few-tap path
    for t in prange(nb * cout):
        planes = np.empty((sh * sw, plane + slack), np.float32)
        acc = np.empty(npos, np.float32)
        depthwise_plane(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw, code, a, b, out, t,
                        planes, acc, xf, of)


def depthwise_scratch(h_out, w_out, kh, kw, sh, sw, dh, dw) -> int:
    """Floats of scratch one depthwise_plane call needs (its planes, then its accumulator)."""
    hq = h_out + ((kh - 1) * dh) // sh
    wq = w_out + ((kw - 1) * dw) // sw
    return sh * sw * (hq * wq + wq + 1) + h_out * wq


@njit(inline="always", cache=True)
def depthwise_plane(x, wt, bias, has_bias, sh, sw, ph, pw, dh, dw, code, a, b, out, t, planes,
                    acc, xf, of):
    """Output plane t (sample t // C_out, channel t % C_out) of depthwise_conv2d; ``planes``
    (sh*sw, plane + slack) and ``acc`` (ho*wq,) are its scratch; ``xf``, ``of``: x and out
    flat (1-D views of the same memory)."""
    h, w = x.shape[2], x.shape[3]
    cin = x.shape[1]
    _, cout, ho, wo = out.shape
    kh, kw = wt.shape[1], wt.shape[2]
    mult = cout // cin
    hq = ho + ((kh - 1) * dh) // sh
    wq = wo + ((kw - 1) * dw) // sw
    npos = ho * wq
    n = t // cout
    oc = t - n * cout
    ic = oc // mult
    bv = bias[oc] if has_bias else np.float32(0.0)
    nz = 0
    for i in range(kh):
        for j in range(kw):
            if wt[oc, i, j] != 0.0:
                nz += 1
    if not (kh == 3 and kw == 3 and nz >= 5):
        # few taps (a pruned layer keeps ~1 of 9; zero taps are skipped, as the sparse
        # formats skip zeros) or another kernel size: straight from x into out
        _depthwise_direct(x, wt, bv, sh, sw, ph, pw, dh, dw, code, a, b, out, n, oc, ic,
                          acc, xf, of)
        return
    # most of the nine taps nonzero: every stride phase's padded plane, then all nine taps
    # in one pass (9 loads, 1 store per vector)
    for py in range(sh):
        for px in range(sw):
            pl = planes[py * sw + px]
            pl[:] = 0.0  # padding and the slack the wrap columns read
            # phase columns c with 0 <= c * sw + px - pw < w
            c0 = max(0, (pw - px + sw - 1) // sw)
            c1 = min(wq, (w - 1 + pw - px) // sw + 1)
            if c1 <= c0:
                continue
            for r in range(hq):
                ih = r * sh + py - ph
                if ih < 0 or ih >= h:
                    continue
                row = pl[r * wq + c0:r * wq + c1]
                src = x[n, ic, ih, c0 * sw + px - pw:]
                for q in range(c1 - c0):
                    row[q] = src[q * sw]
    s0, s1, s2 = _tap(planes, 0, 0, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 0, 1, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 0, 2, dh, dw, sh, sw, wq, npos)
    s3, s4, s5 = _tap(planes, 1, 0, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 1, 1, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 1, 2, dh, dw, sh, sw, wq, npos)
    s6, s7, s8 = _tap(planes, 2, 0, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 2, 1, dh, dw, sh, sw, wq, npos), \
        _tap(planes, 2, 2, dh, dw, sh, sw, wq, npos)
    w0, w1, w2 = wt[oc, 0, 0], wt[oc, 0, 1], wt[oc, 0, 2]
    w3, w4, w5 = wt[oc, 1, 0], wt[oc, 1, 1], wt[oc, 1, 2]
    w6, w7, w8 = wt[oc, 2, 0], wt[oc, 2, 1], wt[oc, 2, 2]
    for p in range(npos):
        acc[p] = (bv + w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p] + w4 * s4[p]
                  + w5 * s5[p] + w6 * s6[p] + w7 * s7[p] + w8 * s8[p])
    act_inplace(acc, code, a, b)  # wrap columns included: one contiguous loop
    for oh in range(ho):
        ar = acc[oh * wq:oh * wq + wo]
        orow = out[n, oc, oh]
        for ow in range(wo):
            orow[ow] = ar[ow]


@njit(inline="always", cache=True)
def _depthwise_direct(x, wt, bv, sh, sw, ph, pw, dh, dw, code, a, b, out, n, oc, ic, save, xf,
                      of):
    """depthwise_plane for few taps, straight from x into out: each nonzero tap adds w * x
    over the output positions whose input lies inside x (padding reads nothing). At stride 1
    with rows as wide as x's, a tap is one contiguous loop over the flattened plane
    (vectorised; no per-row set-up for 7- or 14-wide rows). That loop also passes the
    positions whose input column is padding (a row's first or last columns): the first tap
    writes bias + w * x and then sets those to the bias, a later tap saves them into
    ``save`` and restores them. Otherwise a loop per output row. ``xf``, ``of``: x and out
    flat."""
    h, w = x.shape[2], x.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    kh, kw = wt.shape[1], wt.shape[2]
    ob = (n * out.shape[1] + oc) * ho * wo
    o = of[ob:ob + ho * wo]
    xb = (n * x.shape[1] + ic) * h * w
    xp = xf[xb:xb + h * w]
    first = True
    for i in range(kh):
        for j in range(kw):
            wv = wt[oc, i, j]
            if wv == 0.0:
                continue
            dy = i * dh - ph
            dx = j * dw - pw
            # output rows / columns whose input row / column lies inside x
            oh0 = max(0, (-dy + sh - 1) // sh)
            oh1 = min(ho, (h - 1 - dy) // sh + 1) if h - 1 - dy >= 0 else 0
            ow0 = max(0, (-dx + sw - 1) // sw)
            ow1 = min(wo, (w - 1 - dx) // sw + 1) if w - 1 - dx >= 0 else 0
            if oh1 <= oh0 or ow1 <= ow0:
                continue
            skip = wo - (ow1 - ow0)
            if sh == 1 and sw == 1 and wo == w and skip * (oh1 - oh0) <= save.shape[0]:
                p0 = oh0 * w + ow0
                p1 = (oh1 - 1) * w + ow1
                src = xp[p0 + dy * w + dx:p1 + dy * w + dx]
                dst = o[p0:p1]
                if first:
                    o[:p0] = bv
                    o[p1:] = bv
                    for q in range(p1 - p0):
                        dst[q] = bv + wv * src[q]
                    _pad_columns(o, bv, save, oh0, oh1, ow0, ow1, w, p0, p1, 2)
                else:
                    _pad_columns(o, bv, save, oh0, oh1, ow0, ow1, w, p0, p1, 0)
                    for q in range(p1 - p0):
                        dst[q] += wv * src[q]
                    _pad_columns(o, bv, save, oh0, oh1, ow0, ow1, w, p0, p1, 1)
            else:
                if first:
                    o[:] = bv
                for oh in range(oh0, oh1):
                    orow = o[oh * wo + ow0:oh * wo + ow1]
                    xrow = xp[(oh * sh + dy) * w + ow0 * sw + dx:]
                    if sw == 2:  # a constant stride: vectorised as wide loads + shuffles
                        for q in range(ow1 - ow0):
                            orow[q] += wv * xrow[2 * q]
                    else:
                        for q in range(ow1 - ow0):
                            orow[q] += wv * xrow[q * sw]
            first = False
    if first:  # no tap reads x: the bias everywhere
        o[:] = apply_act(bv, code, a, b)
    else:
        act_inplace(o, code, a, b)


@njit(inline="always", cache=True)
def _pad_columns(o, bv, save, oh0, oh1, ow0, ow1, w, p0, p1, mode):
    """The positions of o in [p0, p1) whose column is outside [ow0, ow1) (rows oh0..oh1, w
    wide): mode 0 saves them into ``save``, 1 restores them, 2 sets them to ``bv``."""
    ns = 0
    for oh in range(oh0, oh1):
        for ow in range(ow0):
            q = oh * w + ow
            if q >= p0:
                if mode == 0:
                    save[ns] = o[q]
                else:
                    o[q] = save[ns] if mode == 1 else bv
                ns += 1
        for ow in range(ow1, w):
            q = oh * w + ow
            if q < p1:
                if mode == 0:
                    save[ns] = o[q]
                else:
                    o[q] = save[ns] if mode == 1 else bv
                ns += 1


@njit(inline="always", cache=True)
def _tap(planes, i, j, dh, dw, sh, sw, wq, npos):
    """Tap (i, j)'s input over all output positions: its stride phase's plane from one offset."""
    off = ((i * dh) // sh) * wq + (j * dw) // sw
    return planes[((i * dh) % sh) * sw + (j * dw) % sw, off:off + npos]


@njit(parallel=True, cache=True)
def phase_planes(x, ph, pw, sh, sw, pys, pxs, hq, wq, out):
    """Polyphase planes of x zero-padded by (ph, pw): plane (c, py, px) holds padded rows
    py, py+sh, ... and columns px, px+sw, ... of channel c as an (hq, wq) block, flattened, at
    out[n, (c*len(pys) + iy)*len(pxs) + ix]. Stride 1 with one phase is plain zero padding. out's
    slack after the last plane stays zero (the shifted conv reads into it)."""
    nb, c = x.shape[0], x.shape[1]
    per = c * pys.shape[0] * pxs.shape[0]
    for t in prange(nb * per):
        phase_row(x, t, ph, pw, sh, sw, pys, pxs, hq, wq, out)


@njit(inline="always", cache=True)
def phase_row(x, t, ph, pw, sh, sw, pys, pxs, hq, wq, out):
    """Plane t (sample t // per, plane t % per) of phase_planes."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    npy, npx = pys.shape[0], pxs.shape[0]
    per = c * npy * npx
    n = t // per
    r = t - n * per
    ch = r // (npy * npx)
    k = r - ch * npy * npx
    py, px = pys[k // npx], pxs[k % npx]
    row = out[n, r]
    if sw == 1:  # the branchy form vectorizes (masked), loads contiguous
        for i in range(hq):
            ih = i * sh + py - ph
            for j in range(wq):
                jw = j + px - pw
                if ih >= 0 and ih < h and jw >= 0 and jw < w:
                    row[i * wq + j] = x[n, ch, ih, jw]
                else:
                    row[i * wq + j] = 0.0
        return
    # strided: the columns j whose input column j * sw + px - pw lies in [0, w) copied
    # without a test (a bounds test per element kept the strided copy scalar and masked:
    # ResNet-18's stride-2 phase passes at batch 16 took 0.84-1.19 ms, now 0.52-0.65)
    j0 = max(0, -((px - pw) // sw))
    j1 = min(wq, (w - 1 - px + pw) // sw + 1) if w - 1 - px + pw >= 0 else 0
    j1 = max(j1, j0)
    usw = np.uint64(sw)
    for i in range(hq):
        ih = i * sh + py - ph
        base = i * wq
        if ih < 0 or ih >= h:
            for j in range(wq):
                row[base + j] = 0.0
            continue
        for j in range(j0):
            row[base + j] = 0.0
        # unsigned indices: one that may be negative costs a wraparound test
        d0 = np.uint64(base + j0)
        s0 = np.uint64(j0 * sw + px - pw)
        for k in range(np.uint64(j1 - j0)):
            row[d0 + k] = x[n, ch, ih, s0 + k * usw]
        for j in range(j1, wq):
            row[base + j] = 0.0


@njit(parallel=True, cache=True)
def crop_rows(full, wp, wo, out):
    """out[n, o, i, j] = full[n, o, i*wp + j] for j < wo: drops the shifted conv's wrap columns."""
    nb, co, ho = out.shape[0], out.shape[1], out.shape[2]
    flat = out.reshape(nb, co, ho * wo)
    for t in prange(nb * co):
        crop_plane(full, t, wp, wo, ho, flat)


@njit(inline="always", cache=True)
def crop_plane(full, t, wp, wo, ho, out):
    """Plane t (sample t // C, channel t % C) of crop_rows; out is (N, C, >= ho*wo), the row
    i of a plane at i*wo."""
    co = out.shape[1]
    n = t // co
    o = t - n * co
    crop_copy(full[n, o], out[n, o], wp, wo, ho)


@njit(inline="always", cache=True)
def crop_copy(src, dst, wp, wo, ho):
    """dst[i*wo + j] = src[i*wp + j] for i < ho, j < wo (1-D views)."""
    for i in range(ho):  # row by row through 1-D views: the copy vectorises
        s = src[i * wp:i * wp + wo]
        d = dst[i * wo:i * wo + wo]
        for j in range(wo):
            d[j] = s[j]


@njit(inline="always", cache=True)
def crop_res_plane(full, t, wp, wo, ho, res, out, code, a, b):
    """crop_plane fused with a residual add and an activation: out = act(full + res) (res
    laid out as out); relu (code 1, NaN-keeping as torch's) has its own loop so it
    vectorises."""
    co = out.shape[1]
    n = t // co
    o = t - n * co
    src = full[n, o]
    rsd = res[n, o]
    dst = out[n, o]
    for i in range(ho):
        s = src[i * wp:i * wp + wo]
        r = rsd[i * wo:i * wo + wo]
        d = dst[i * wo:i * wo + wo]
        if code == 1:
            for j in range(wo):
                v = s[j] + r[j]
                d[j] = 0.0 if v < 0.0 else v
        else:
            for j in range(wo):
                d[j] = apply_act(s[j] + r[j], code, a, b)
