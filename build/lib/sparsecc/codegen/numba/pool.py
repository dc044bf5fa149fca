"""2-D pooling kernels with torch's semantics (padding, dilation, ceil_mode, count_include_pad)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    nb, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for t in prange(nb * c):
        n = t // c
        ch = t - n * c
        for oh in range(ho):
            for ow in range(wo):
                best = -np.inf
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw >= 0 and iw < w:
                            v = x[n, ch, ih, iw]
                            # NaN propagates, as in torch.
                            if v > best or math.isnan(v):
                                best = v
                out[n, ch, oh, ow] = best


@njit(parallel=True, cache=True)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out):
    """divisor > 0 overrides the window size, as torch's divisor_override."""
    nb, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for t in prange(nb * c):
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
    nb, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for t in prange(nb * c):
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
                            v = x[n, ch, ih, iw]
                            if v > best or math.isnan(v):
                                best = v
                    out[n, ch, oh, ow] = best
                else:
                    acc = 0.0
                    for ih in range(hs, he):
                        for iw in range(ws, we):
                            acc += x[n, ch, ih, iw]
                    out[n, ch, oh, ow] = acc / ((he - hs) * (we - ws))
