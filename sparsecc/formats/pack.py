"""One entry point to pack a weight matrix into a named storage format, and the candidates a
weight qualifies for. Format names: ``dense``, ``csr``, ``bsr{R}x{C}``, ``nm{N}:{M}``.
"""

from __future__ import annotations

import re

import numpy as np

from sparsecc.formats.bsr import block_fill, dense_to_bsr
from sparsecc.formats.csr import dense_to_csr
from sparsecc.formats.nm import dense_to_nm, fits_nm

_BSR = re.compile(r"^bsr(\d+)x(\d+)$")
_NM = re.compile(r"^nm(\d+):(\d+)$")
BLOCKS = ((4, 1), (8, 1), (16, 1), (2, 2), (1, 4), (1, 8))
NM_SHAPES = ((1, 4), (2, 4), (1, 8), (2, 8), (4, 8))
# A blocked format is a candidate when at least this fraction of its stored values are nonzero.
MIN_BLOCK_FILL = 0.9
# A weight this dense is also offered as BSR 8x1 with its zeros stored: that kernel runs dense
# work ~2x faster per value than CSR runs sparse work, so it can win well before 100 % dense.
DENSE_BLOCK = (8, 1)
DENSE_BLOCK_MIN_DENSITY = 0.4


def parse_format(fmt: str) -> tuple[str, tuple[int, int]]:
    """("dense"|"csr"|"bsr"|"nm", (R, C) or (N, M))."""
    if fmt in ("dense", "csr"):
        return fmt, (1, 1)
    if m := _BSR.match(fmt):
        return "bsr", (int(m.group(1)), int(m.group(2)))
    if m := _NM.match(fmt):
        return "nm", (int(m.group(1)), int(m.group(2)))
    raise ValueError(f"unknown format {fmt!r} (dense, csr, bsrRxC, nmN:M)")


def pack(fmt: str, w: np.ndarray) -> dict[str, np.ndarray]:
    """The params (role -> array) of ``w`` (2-D, rows = outputs) in format ``fmt``."""
    kind, (a, b) = parse_format(fmt)
    if kind == "dense":
        return {"weight": w}
    if kind == "csr":
        return dict(zip(("indptr", "indices", "data"), dense_to_csr(w)))
    if kind == "bsr":
        ip, ix, dv = dense_to_bsr(w, a, b)
        return {"indptr": ip, "indices": ix, "data": dv.reshape(-1)}
    vals, offs = dense_to_nm(w, a, b)
    return {"data": vals.reshape(-1), "indices": offs.reshape(-1)}


def candidates(w: np.ndarray, *, conv_kxk: bool) -> list[str]:
    """Formats ``w`` (2-D) can be stored in with no extra zeros beyond MIN_BLOCK_FILL, plus
    BSR 8x1 with the zeros stored when ``w`` is at least DENSE_BLOCK_MIN_DENSITY dense.

    N:M needs contiguous groups along the input dim, which a kxk conv's (c, dy, dx) columns
    are not; BSR needs the columns to divide by C (no block reads past the input).
    """
    out = ["dense", "csr"]
    rows, cols = w.shape
    for r, c in BLOCKS:
        if (r == 1 and c == 1) or cols % c or rows < r:
            continue
        if block_fill(w, r, c) >= MIN_BLOCK_FILL:
            out.append(f"bsr{r}x{c}")
    r, c = DENSE_BLOCK
    if (f"bsr{r}x{c}" not in out and rows >= r
            and np.count_nonzero(w) >= DENSE_BLOCK_MIN_DENSITY * w.size):
        out.append(f"bsr{r}x{c}")
    if not conv_kxk:
        for n, m in NM_SHAPES:
            if cols >= m and fits_nm(w, n, m) and np.count_nonzero(w) >= 0.9 * w.size * n / m:
                out.append(f"nm{n}:{m}")
    return out


def stored_values(fmt: str, w: np.ndarray) -> int:
    kind, (a, b) = parse_format(fmt)
    if kind == "dense":
        return w.size
    if kind == "csr":
        return int(np.count_nonzero(w))
    if kind == "bsr":
        return int(round(np.count_nonzero(w) / max(block_fill(w, a, b), 1e-9)))
    return w.shape[0] * (-(-w.shape[1] // b)) * a
