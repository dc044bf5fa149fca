"""A stride-2 1x1 conv's positions of its x gathered tile-major, as LLVM IR (AVX-512):
native.lower.TM_GATHER, in place of the phase pass for a ResNet's downsample in the
per-sample head, and of the packed tail's numba gather (kernels.k_gather_pktm).

The output holds a block of B samples' ho x wo positions (B = 1: one sample's; B > 1: the
packed layout of native.lower.PACK, a block's samples one after another) in tiles of 16, a
tile's channels 16 floats apart (native.lower.TILE_MAJOR / PACK_TILE_MAJOR), which the
grouped kernel reads a tile at a time as consecutive lines. x may be plain (N, C, H, W;
channels ``xcs`` floats apart) or tile-major itself (channels 16 floats apart, tiles C x
16): the phase pass walks a channel's plane and cannot read the latter well (a new page
every line: docs/native.md, "Tile-major activations"), so a stage's last output, which the
next stage's downsample reads, had to stay plain; this kernel walks a tile's channels
instead, and x may then be tile-major too.

A 16-float line of x is lanes [16 l, 16 l + 16) of one channel's positions. An output tile's
16 positions come from a few such lines (a row's run of 16 even columns spans 2-3 lines; a
tile may hold 2-3 rows' runs, and at B > 1 two samples'). The lowering cuts them into at
most ``pieces`` pieces, each two lines of one sample of x (a, b: floats from the block's
first sample's channel 0 to the line) with a ``vpermt2ps`` index (0-15: a lane of a, 16-31:
of b), the mask of the output lanes it gives and its sample in the block (the table, int32,
``tiles x pieces x WIDTH``: a, b, mask, sample, 16 indices; unused pieces mask 0). A work item
is one (block, output tile): the pieces are read once (a piece of a sample past the batch,
a last block's padding, gives zeros and reads nothing), then for every channel its
2 x pieces lines are loaded, permuted and merged, and one line stored. The lanes no piece
gives (past the map's positions in the last tile) are zero.

The output may also be plain planes (a phase pass's one phase plane a channel, channels
``ocs`` floats apart, its lines 16 floats apart): the stride-2 1x1 convs that do not run the
grouped kernel (the tail's plain variant at small batches) read those from a tile-major x.

x may also be band-major (native.bands: a band's rows of all channels together, a ring of
bands; channels ``rows x W`` floats apart): the table's lines are then where each position
lies in the ring (``table(..., where=)``), and the call runs inside the row-band run that
writes x, a range of output tiles a band (native.bands, ``GATHER``) while x's rows are in L2.

ABI ``void k(i64 start, i64 stop, i64* args)``; args [x, out, C, tiles (the call's output
tiles of a block), xns (floats from one sample of x to the next), xcs (from one channel of x
to the next), table, B, N (the batch), ons, ots, ocs (out's floats from one block to the
next, one tile to the next, one channel to the next: tiles x C x 16, C x 16, 16
tile-major), t0 (the call's first tile: its table rows and output tiles from t0 on)].
Items ceil(N / B) x tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import I32, I64
from sparsecc.native.vmath import _K

G_X, G_OUT, G_C, G_T, G_XNS, G_XCS, G_TABLE, G_B, G_N, G_ONS, G_OTS, G_OCS, G_T0 = range(13)
WIDTH = 4 + 16  # a piece: line a, line b, lane mask, sample in the block, 16 lane indices


@dataclass(frozen=True)
class GatherSpec:
    pieces: int  # a tile's pieces (the table's second dimension)

    @property
    def key(self) -> str:
        return f"tmgather_v16_p{self.pieces}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_gather(module, name, self.pieces)


def table(ho: int, wo: int, row: int, step: int, base: int, line: int, block: int = 1,
          xns: int = 0, where=None) -> np.ndarray:
    """The pieces of every output tile of a block (int32, tiles x pieces x WIDTH): output
    position (i, j) of sample s of the block from position base + i x row + j x step of
    x's channel, that sample ``xns`` floats after the block's first; x's lines of 16
    positions ``line`` floats apart (16: plain, C x 16: tile-major). ``where`` (block 1,
    ``line`` 16): output position (i, j) -> its x float in channel 0, or None for a zero
    lane (band-major x: native.bands.ring_offset; a phase plane's padding); a position's
    line and its neighbour's must then lie 16 floats apart wherever a piece takes both (a
    run of a row inside one band)."""
    L = ho * wo
    tiles = -(-block * L // 16)
    per: list[list[list]] = []
    for t in range(tiles):
        got: list[list] = []  # [sample, line a, line b, mask, idx]
        for lane in range(16):
            p = 16 * t + lane
            if p >= block * L:
                break
            s, q = divmod(p, L)
            if where is None:
                off = base + (q // wo) * row + (q % wo) * step
            else:
                off = where(q // wo, q % wo)
                if off is None:
                    continue
            li, r = divmod(off, 16)
            if got and got[-1][0] == s and li - got[-1][1] in (0, 1):
                g = got[-1]
                g[2], g[3] = max(g[2], li), g[3] | 1 << lane
                g[4][lane] = r + 16 * (li - g[1])
            else:
                idx = [0] * 16
                idx[lane] = r
                got.append([s, li, li, 1 << lane, idx])
        per.append(got)
    pieces = max(len(g) for g in per)
    out = np.zeros((tiles, pieces, WIDTH), np.int32)
    for t, got in enumerate(per):
        for k, (s, a, b, mask, idx) in enumerate(got):
            out[t, k, :4] = s * xns + a * line, s * xns + b * line, \
                np.uint32(mask).view(np.int32), s
            out[t, k, 4:] = idx
    return out


def emit_gather(module: ir.Module, name: str, pieces: int) -> None:
    k = _K(module, name, 16)
    b = k.b
    x0, out0 = k.arg_ptr(G_X, "x"), k.arg_ptr(G_OUT, "out")
    c, nt = k.arg_i64(G_C, "c"), k.arg_i64(G_T, "tiles")
    xns, xcs = k.arg_i64(G_XNS, "xns"), k.arg_i64(G_XCS, "xcs")
    tab = b.inttoptr(k.arg_i64(G_TABLE, "table_i"), I32.as_pointer())
    vi = ir.VectorType(I32, 16)
    perm = k.intrinsic("llvm.x86.avx512.vpermi2var.ps.512", k.vty, [k.vty, vi, k.vty])
    zero = ir.Constant(k.vty, [0.0] * 16)
    nb, batch = k.arg_i64(G_B, "block"), k.arg_i64(G_N, "n")
    ons, ots, ocs = k.arg_i64(G_ONS, "ons"), k.arg_i64(G_OTS, "ots"), k.arg_i64(G_OCS, "ocs")
    t0 = k.arg_i64(G_T0, "t0")
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        blk = b.sdiv(t, nt)
        tt = b.add(b.sub(t, b.mul(blk, nt)), t0)
        first = b.mul(blk, nb)
        real = b.sub(batch, first)  # (the block's samples from this one on are padding)
        xs = b.gep(x0, [b.mul(first, xns)])
        os_ = b.gep(out0, [b.add(b.mul(blk, ons), b.mul(tt, ots))])
        row = b.gep(tab, [b.mul(tt, I64(pieces * WIDTH))])
        got = []
        for p in range(pieces):
            e = b.gep(row, [I64(p * WIDTH)])

            def field(f):
                return b.sext(b.load(b.gep(e, [I64(f)])), I64)

            live = b.icmp_signed("<", field(3), real)
            la = b.select(live, field(0), I64(0))
            lb = b.select(live, field(1), I64(0))
            m = b.bitcast(b.trunc(b.select(live, field(2), I64(0)), ir.IntType(16)),
                          ir.VectorType(ir.IntType(1), 16))
            idx = b.load(b.bitcast(b.gep(e, [I64(4)]), vi.as_pointer()), align=4)
            got.append((b.gep(xs, [la]), b.gep(xs, [lb]), m, idx))
        with k.loop(I64(0), c, "ch") as ch:
            off = b.mul(ch, xcs)
            v = zero
            for pa, pb, m, idx in got:
                lo = k.vload(b.gep(pa, [off]), None)
                hi = k.vload(b.gep(pb, [off]), None)
                v = b.select(m, b.call(perm, [lo, idx, hi]), v)
            k.vstore(v, b.gep(os_, [b.mul(ch, ocs)]), None)
    b.ret_void()
