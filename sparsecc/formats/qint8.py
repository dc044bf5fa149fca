"""int8 weights and uint8 activations: the numbers every int8 kernel and reference agrees on.

Weights are symmetric per output row: ``q = rint(w / s_w[r])`` in [-127, 127], ``s_w[r] =
max|w[r]| / 127``. Activations are asymmetric per tensor: ``xq = clamp(rint(x * (1 / s_x)) + z,
0, 255)`` in float32 (multiply, round half to even, add, clamp, in that order; NaN -> 0), so a
numpy reference and a vector kernel produce the same bytes.

A row is stored as groups of 4 consecutive inputs (``g4``): each group with a nonzero keeps
its 4 int8 values (zeros where pruned) and its group index. A group is one dword: the unit of
``vpdpbusd`` (VNNI) and of ``vpmaddwd`` on widened pairs. Weights pruned in 1x4 blocks along
the input fill every stored group; unstructured ones pad (90 % unstructured: ~3.4 values a
nonzero, still fewer bytes than float32 + index). Dense layers are rows with every group.

The product sum is exact in int32 (|acc| <= 255 * 127 * K, < 2^31 for K < 65,000); the
epilogue is ``y = mult[r] * float32(acc) + bias'[r]`` with ``mult = s_x * s_w`` and the zero
point folded into ``bias'`` (``bias - mult * z * sum(q[r])``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QMAX = 127
MAX_K = 65_000  # inputs: keeps the int32 sum exact


@dataclass
class QWeight:
    """A g4-packed int8 weight (O x K) with its per-row scales."""

    indptr: np.ndarray  # int64 (O + 1,): groups of each row
    groups: np.ndarray  # uint16 / uint32: group index (input k // 4) of each stored group
    data: np.ndarray  # int8 (G, 4)
    scale: np.ndarray  # float32 (O,): s_w
    rows: int
    cols: int

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.data))

    def dense(self) -> np.ndarray:
        """The int8 values as an (O, K) int64 array (tests, references)."""
        k4 = -(-self.cols // 4)
        out = np.zeros((self.rows, k4, 4), np.int64)
        rows = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        out[rows, self.groups.astype(np.int64)] = self.data
        return out.reshape(self.rows, k4 * 4)[:, :self.cols]


def weight_scales(w: np.ndarray) -> np.ndarray:
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    s = (amax / np.float32(QMAX)).astype(np.float32)
    s[s == 0] = 1.0
    return s


def quantize_weight(w: np.ndarray) -> QWeight:
    """Pack a float (O, K) weight (zeros where pruned) as g4 int8 rows."""
    w = np.asarray(w, np.float32)
    o, k = w.shape
    s = weight_scales(w)
    q = np.clip(np.rint(w / s[:, None]), -QMAX, QMAX).astype(np.int8)
    k4 = -(-k // 4)
    qp = np.zeros((o, k4 * 4), np.int8)
    qp[:, :k] = q
    g = qp.reshape(o, k4, 4)
    keep = np.any(g != 0, axis=2)
    indptr = np.zeros(o + 1, np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    rr, gg = np.nonzero(keep)
    idt = np.uint16 if k4 <= 1 << 16 else np.uint32
    return QWeight(indptr, gg.astype(idt), np.ascontiguousarray(g[rr, gg]), s, o, k)


def act_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of a uint8 grid over [lo, hi] widened to hold 0 exactly."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    if hi - lo < 1e-30:
        return 1.0, 0
    scale = float(np.float32((hi - lo) / 255.0))
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero


def quantize_act(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """uint8 codes of float32 ``x`` (the kernels' exact sequence of float32 operations)."""
    inv = np.float32(1.0 / scale)
    v = np.rint(np.asarray(x, np.float32) * inv) + np.float32(zero)
    v = np.where(np.isnan(v), np.float32(0.0), v)  # NaN -> code 0, as the kernels do
    return np.clip(v, 0, 255).astype(np.uint8)


def dequantize_act(q: np.ndarray, scale: float, zero: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def fold(qw: QWeight, bias: np.ndarray | None, x_scale: float, x_zero: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """(mult, bias') of the epilogue."""
    mult = (np.float64(x_scale) * qw.scale.astype(np.float64))
    rowsum = np.zeros(qw.rows, np.float64)
    if qw.data.size:
        rows = np.repeat(np.arange(qw.rows), np.diff(qw.indptr))
        np.add.at(rowsum, rows, qw.data.astype(np.int64).sum(axis=1))
    b = np.zeros(qw.rows, np.float64) if bias is None else np.asarray(bias, np.float64)
    return mult.astype(np.float32), (b - mult * x_zero * rowsum).astype(np.float32)


def accumulate(xq: np.ndarray, qw: QWeight) -> np.ndarray:
    """int64 (M, O) sums of (M, K) codes (uint8, or a conv's code patches as conv_columns
    gives them) against ``qw`` (exact: float64 holds every partial sum; the reference the
    kernels are checked against)."""
    w = qw.dense().astype(np.float64)
    return np.rint(xq.astype(np.float64) @ w.T).astype(np.int64)


def epilogue(acc: np.ndarray, mult: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float32 ``mult * float32(acc) + bias`` (two roundings, as the kernels do it)."""
    return (acc.astype(np.float32) * mult) + bias


# ---- convolutions ------------------------------------------------------------------------
# A conv's weight (O, C, kh, kw) is packed as rows over (kh, kw, C4) with C4 = C rounded up
# to 4: a group is 4 channels at one tap, so its 4 codes sit in one dword of the input's
# grouped planes (4 channels interleaved per position) and one load feeds vw positions.
def conv_weight_rows(w: np.ndarray) -> np.ndarray:
    o, c, kh, kw = w.shape
    c4 = -(-c // 4) * 4
    rows = np.zeros((o, kh, kw, c4), np.float32)
    rows[..., :c] = np.asarray(w, np.float32).transpose(0, 2, 3, 1)
    return rows.reshape(o, kh * kw * c4)


def conv_columns(xq: np.ndarray, zero: int, kernel, stride, padding, dilation,
                 out_hw) -> np.ndarray:
    """uint8 codes (N, C, H, W) -> float64 (N * ho * wo, kh * kw * C4) patches in the packed
    rows' order; padding reads the code of 0.0 (the zero point)."""
    n, c, h, w = xq.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = out_hw
    c4 = -(-c // 4) * 4
    pad = np.full((n, c4, h + 2 * ph, w + 2 * pw), zero, np.float64)
    pad[:, :c, ph:ph + h, pw:pw + w] = xq
    pad[:, c:] = 0.0  # channels past C: their weights are 0
    cols = np.empty((n, ho, wo, kh, kw, c4), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            y0, x0 = dy * dh, dx * dw
            patch = pad[:, :, y0:y0 + (ho - 1) * sh + 1:sh, x0:x0 + (wo - 1) * sw + 1:sw]
            cols[:, :, :, dy, dx, :] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, kh * kw * c4)
