"""2-D pooling kernels with torch's semantics (padding, dilation, ceil_mode, count_include_pad)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def _pick(v, best):
    # the larger, and NaN once either is NaN (torch propagates NaN through max pooling)
    return v if (v > best) | (v != v) else best


@njit(parallel=True, cache=True)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """Separable: per output row, the max over the window's input rows (one vectorised pass
    across the row), then the max across each window's columns of that."""
    nb, c, w = x.shape[0], x.shape[1], x.shape[3]
    for t in prange(nb * c):
        max_pool_plane(x, t, kh, kw, sh, sw, ph, pw, dh, dw, out, np.empty(w, np.float32))


@njit(inline="always", cache=True)
def max_pool_plane(x, t, kh, kw, sh, sw, ph, pw, dh, dw, out, col):
    """Plane t (sample t // C, channel t % C) of max_pool2d; ``col`` (W,) is its scratch."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    neg_inf = np.float32(-np.inf)
    # Output columns whose whole window is inside the input row.
    lo = min(wo, max(0, -(-pw // sw)))
    hi = max(lo, min(wo, (w - 1 - (kw - 1) * dw + pw) // sw + 1))
    n = t // c
    ch = t - n * c
    plane = x[n, ch]
    res = out[n, ch]
    for oh in range(ho):
        r0 = oh * sh - ph
        i0 = max(0, (-r0 + dh - 1) // dh)
        i1 = min(kh, (h - 1 - r0) // dh + 1)
        if i1 <= i0:
            col[:] = neg_inf
        else:
            first = plane[r0 + i0 * dh]
            for k in range(w):
                col[k] = first[k]
            for i in range(i0 + 1, i1):
                row = plane[r0 + i * dh]
                for k in range(w):
                    col[k] = _pick(row[k], col[k])
        # windows inside the row: no clipping; the common windows spelled out so the loop
        # vectorises (a runtime kw, stride or dilation keeps it scalar: ~1 ns an element)
        inner = col[max(lo * sw - pw, 0):]
        dst = res[oh, lo:hi]
        if dw == 1 and sw == 2 and kw == 2:
            for k in range(hi - lo):
                dst[k] = _pick(inner[2 * k + 1], inner[2 * k])
        elif dw == 1 and sw == 2 and kw == 3:
            for k in range(hi - lo):
                dst[k] = _pick(inner[2 * k + 2], _pick(inner[2 * k + 1], inner[2 * k]))
        elif dw == 1 and sw == 1 and kw == 3:
            for k in range(hi - lo):
                dst[k] = _pick(inner[k + 2], _pick(inner[k + 1], inner[k]))
        else:
            for ow in range(lo, hi):
                c0 = ow * sw - pw
                best = col[c0]
                for j in range(1, kw):
                    best = _pick(col[c0 + j * dw], best)
                res[oh, ow] = best
        for ow in range(wo):
            if lo <= ow < hi:
                continue
            c0 = ow * sw - pw
            j0 = max(0, (-c0 + dw - 1) // dw)
            j1 = min(kw, (w - 1 - c0) // dw + 1)
            best = neg_inf
            for j in range(j0, j1):
                best = _pick(col[c0 + j * dw], best)
            res[oh, ow] = best


@njit(parallel=True, cache=True)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out):
    """divisor > 0 overrides the window size, as torch's divisor_override."""
    nb, c = x.shape[0], x.shape[1]
    for t in prange(nb * c):
        avg_pool_plane(x, t, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out)


@njit(inline="always", cache=True)
def avg_pool_plane(x, t, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out):
    """Plane t (sample t // C, channel t % C) of avg_pool2d."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    n = t // c
    ch = t - n * c
    for oh in range(ho):
        h0 = oh * sh - ph
        h1 = min(h0 + kh, h + ph)
        for ow in range(wo):
            w0 = ow * sw - pw
            w1 = min(w0 + kw, w + pw)
            pool = (h1 - h0) * (w1 - w0)
            hs, he = max(h0, 0), min(h1, h)
            ws, we = max(w0, 0), min(w1, w)
            acc = 0.0
            for ih in range(hs, he):
                for iw in range(ws, we):
                    acc += x[n, ch, ih, iw]
            if divisor > 0:
                d = divisor
            elif count_include_pad:
                d = pool
            else:
                d = (he - hs) * (we - ws)
            out[n, ch, oh, ow] = acc / d


@njit(parallel=True, cache=True)
def adaptive_pool2d(x, is_max, out):
    nb, c = x.shape[0], x.shape[1]
    for t in prange(nb * c):
        adaptive_plane(x, t, is_max, out)


@njit(inline="always", cache=True)
def plane_mean(xf, base, n):
    """Mean of xf[base:base + n] (a global average pool's plane), in float64 over 8
    independent partial sums: the one-accumulator loop waits an add's latency per float."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n8 = n - n % 8
    for i in range(base, base + n8, 8):
        s0 += xf[i]
        s1 += xf[i + 1]
        s2 += xf[i + 2]
        s3 += xf[i + 3]
        s4 += xf[i + 4]
        s5 += xf[i + 5]
        s6 += xf[i + 6]
        s7 += xf[i + 7]
    for i in range(base + n8, base + n):
        s0 += xf[i]
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) / n


@njit(inline="always", cache=True)
def adaptive_plane(x, t, is_max, out):
    """Plane t (sample t // C, channel t % C) of adaptive_pool2d."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    n = t // c
    ch = t - n * c
    for oh in range(ho):
        hs = (oh * h) // ho
        he = -((-(oh + 1) * h) // ho)
        for ow in range(wo):
            ws = (ow * w) // wo
            we = -((-(ow + 1) * w) // wo)
            if is_max:
                best = -np.inf
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        best = _pick(x[n, ch, ih, iw], best)
                out[n, ch, oh, ow] = best
            else:
                acc = 0.0
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        acc += x[n, ch, ih, iw]
                out[n, ch, oh, ow] = acc / ((he - hs) * (we - ws))
