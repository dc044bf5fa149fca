"""Mask mechanics: which entries of a set of weights to zero, for a pattern and a target.

Pure functions over tensors; no module walking, no policy. A weight is seen through its 2-D
view (out, in): Linear (O, K) as is; Conv (Cout, Cin/g, kh, kw) as (Cout, Cin/g*kh*kw) for
blocks, and as (Cout*kh*kw, Cin/g) — input channels last — for N:M, so an N:M group is M
consecutive input channels at one kernel position (the usual definition for 2:4 hardware).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pattern:
    kind: str  # "unstructured" | "nm" | "block"
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1
    channels: bool = False  # blocks: C along input channels at one kernel position ("1x4c")

    @property
    def implied_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.rows}x{self.cols}{'c' if self.channels else ''}"
        return "unstructured"


_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^(\d+)x(\d+)(c?)$")


def parse_pattern(text: str) -> Pattern:
    """'unstructured', 'N:M' (N < M) or 'RxC' (rows of outputs x columns of inputs; 'RxCc':
    the C columns are input channels at one kernel position, the int8 kernels' groups)."""
    text = str(text).strip().lower()
    if text == "unstructured":
        return Pattern("unstructured")
    if m := _NM.match(text):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise ValueError(f"pattern={text!r}: N:M needs 0 < N < M")
        return Pattern("nm", n=n, m=mm)
    if m := _BLOCK.match(text):
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1:
            raise ValueError(f"pattern={text!r}: block sides must be >= 1")
        if (r, c) == (1, 1):
            return Pattern("unstructured")
        return Pattern("block", rows=r, cols=c, channels=bool(m.group(3)))
    raise ValueError(f"pattern={text!r}: expected 'unstructured', 'N:M', 'RxC' or 'RxCc'")


def matrix_view(w: torch.Tensor, channels: bool = False) -> torch.Tensor:
    """(out, in) view used for block patterns; ``channels``: a conv's inputs ordered (kernel
    position, input channel), so a block's columns are channels at one position."""
    if channels and w.dim() > 2:
        return w.movedim(1, -1).reshape(w.shape[0], -1)
    return w.reshape(w.shape[0], -1)


def nm_view(w: torch.Tensor) -> torch.Tensor:
    """(out * kernel positions, in channels) view used for N:M (a permuted copy for convs)."""
    if w.dim() <= 2:
        return w.reshape(w.shape[0], -1)
    return w.movedim(1, -1).reshape(-1, w.shape[1])


def nm_unview(mask2d: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() <= 2:
        return mask2d.reshape(like.shape)
    moved = list(like.movedim(1, -1).shape)
    return mask2d.reshape(moved).movedim(-1, 1).contiguous()


# ---- N:M ----------------------------------------------------------------------------------
def nm_mask(weight: torch.Tensor, scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest-scoring entries in each group of M along the input dim.

    A trailing group shorter than M (the input dim is not a multiple of M, or is smaller than M)
    is treated as if padded with zeros: it keeps at most N entries too.
    """
    s2 = nm_view(scores.to(torch.float64))
    rows, cols = s2.shape
    pad = (-cols) % m
    if pad:
        s2 = torch.cat([s2, torch.full((rows, pad), -torch.inf, dtype=s2.dtype)], dim=1)
    groups = s2.reshape(rows, -1, m)
    # Stable: ties go to the earlier position, so re-running on a masked weight is a no-op.
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    keep = keep.reshape(rows, -1)[:, :cols]
    return nm_unview(keep, weight)


# ---- unstructured and blocks: one threshold over a scope ----------------------------------
@dataclass
class Groups:
    """Scores of the prunable units (single weights or blocks) of one weight tensor."""

    scores: torch.Tensor  # (units,) float64
    sizes: torch.Tensor  # (units,) int64: weights per unit
    shape: tuple[int, ...]
    block: tuple[int, int] | None
    channels: bool = False  # the block view is channels-last (matrix_view)


def make_groups(weight: torch.Tensor, scores: torch.Tensor, pattern: Pattern) -> Groups:
    s = scores.detach().to(torch.float64)
    if pattern.kind == "unstructured":
        return Groups(s.reshape(-1), torch.ones(s.numel(), dtype=torch.int64),
                      tuple(weight.shape), None)
    r, c = pattern.rows, pattern.cols
    s2 = matrix_view(s, pattern.channels)
    rows, cols = s2.shape
    pr, pc = (-rows) % r, (-cols) % c
    padded = torch.nn.functional.pad(s2, (0, pc, 0, pr))
    ones = torch.nn.functional.pad(torch.ones_like(s2), (0, pc, 0, pr))
    blocks = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)
    sizes = ones.reshape(blocks.shape).sum(dim=(1, 3))
    # Mean, not sum: edge blocks are smaller and would otherwise always go first.
    mean = blocks.sum(dim=(1, 3)) / sizes
    return Groups(mean.reshape(-1), sizes.reshape(-1).to(torch.int64), tuple(weight.shape), (r, c),
                  pattern.channels)


def expand(groups: Groups, keep_units: torch.Tensor) -> torch.Tensor:
    """Unit-level keep flags -> a bool mask of the weight's shape."""
    if groups.block is None:
        return keep_units.reshape(groups.shape)
    r, c = groups.block
    rows = groups.shape[0]
    cols = int(torch.tensor(groups.shape[1:]).prod()) if len(groups.shape) > 1 else 1
    br, bc = -(-rows // r), -(-cols // c)
    grid = keep_units.reshape(br, bc)
    full = grid.repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
    if groups.channels and len(groups.shape) > 2:
        moved = (groups.shape[0], *groups.shape[2:], groups.shape[1])
        return full.reshape(moved).movedim(-1, 1).contiguous()
    return full.reshape(groups.shape)


def threshold_masks(groups: list[Groups], sparsity: float) -> list[torch.Tensor]:
    """Zero the lowest-scoring units across ``groups`` so the zeroed weight count is as close
    as units allow to ``round(sparsity * total)`` (exact for single weights)."""
    scores = torch.cat([g.scores for g in groups]) if groups else torch.zeros(0)
    sizes = torch.cat([g.sizes for g in groups]) if groups else torch.zeros(0, dtype=torch.int64)
    total = int(sizes.sum())
    target = int(round(sparsity * total))
    order = torch.argsort(scores, stable=True)
    cum = torch.cumsum(sizes[order], 0)
    # Choose the prefix length whose zeroed count is nearest the target.
    cand = torch.cat([torch.zeros(1, dtype=torch.int64), cum])
    k = int(torch.argmin((cand - target).abs()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    masks, start = [], 0
    for g in groups:
        n = g.scores.numel()
        masks.append(expand(g, keep[start:start + n]))
        start += n
    return masks
