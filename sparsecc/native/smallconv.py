"""Convs with few input channels (a network's first conv: RGB in) as an LLVM kernel
specialised to the layer's geometry, straight from x into out: no im2col, no padded copy.

An item is one output row of one block of R output channels of one sample. The row's output
vectors go in chunks of at most V; a chunk's R x V accumulators stay in registers over every
tap (input channel, dy, dx): the tap's V input vectors are loaded once (stride 1: one masked
load; stride 2: two, and a shuffle of their even floats) and each feeds R FMAs, one per
output channel, with the tap's weight broadcast. Lanes whose input column is padding are
masked off in the loads (nothing outside the row is read); an input row that is padding
skips its taps (a branch per kernel row). The bias starts the accumulators and the
activation runs in registers before the one store per output vector.

So each input vector is reused R times from a register, where the GEMM path first writes an
im2col matrix of cin * kh * kw rows (27 for a 3x3 RGB conv: too short a K for the GEMM's
microkernel to run well).

At stride 2 (no dilation) the input rows are split first (``split_rows``): each row the item
reads goes once into a ring of rows on the stack as its even and its odd padded columns, the
padding as zeros, so every tap is one whole-vector load at a fixed offset (no mask, no
shuffle) and all of a row's chunks share one loop body. Without the pool an item is then a
band of ``band`` output rows of every output channel (BAND_ALL_BLOCKS), so that each input
row is split once a band.

With ``pool`` the 3x3 stride-2 max pool (padding 1) after the conv runs in the same kernel
(a ResNet's stem: conv1 -> relu -> maxpool): an item is then a band of pooled rows of one
sample over split rows (``pool_bands``: each conv row's input rows split once, then every
block of R channels computed from them), else a block of R channels of one sample; its conv
rows are computed in order into a stack row, each pooled along x at once (three stride-2
runs of it, maxed) and maxed into the one or two pooled rows it belongs to, so the conv's
plane never goes to memory. The activation must leave no negative value (relu, or a clamp
from >= 0): the pool's padding then reads as zero, and with -0.0 made 0.0 the pool's maxes
are unsigned integer ones (every NaN above every number, as torch's pool propagates it).

ABI ``void k(i64 start, i64 stop, i64* args)``; args: x, weight (Co, Ci, kh, kw) dense,
bias, out (the pool's output with ``pool``). Items: N * ``items`` (N * (Co / R) * ho / band;
with ``pool`` N * pool_bands, or N * (Co / R)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, FUSED_ACTS, I32, I64, act_key
from sparsecc.ir.kinds import conv_out
from sparsecc.native import dwsmall as DW
from sparsecc.native.vmath import _K

S_X, S_W, S_BIAS, S_OUT = range(4)
MAX_CIN = 4  # input channels (taps are unrolled: cin * kh * kw of them)
MAX_TAPS = 160
# The pooled stride-2 kernel (a ResNet stem) reads split input rows (SmallConvSpec.split_rows):
# a tap is one load feeding R FMAs instead of two loads and a shuffle (vpermt2ps, on the FMA
# pipes' ports here). Same process, the 7x7 stem at batch 16: 1 thread 90.7 -> 99.5 GFLOP/s,
# 2 threads 180.0 -> 197.4 (1.097x); ResNet-18 batch 16 / 1 1.029x / 1.023x.
SPLIT_ROWS = True
# Without the pool, an item is a band of output rows (each input row split once a band): the
# MobileNetV2 first conv (3x3 / 2, 3 -> 32) in the model, same process: batch 16 1.037x,
# batch 1 1.014x against shuffled loads; bands of 1 / 4 / 16 rows 0.98x / 1.00x / 0.99x.
BAND_ROWS = 8
# ... and every block of R channels in the item (its input rows split once for all of them,
# not once a block: 8 times with AVX2's blocks of 4 for 32 channels). MobileNetV2's first
# conv (3 -> 32, 3x3 / 2 at 224), global 90 %, Zen 3, same process (bench/op_ab.py, 12
# rounds): 2.92 against 3.91 ms at batch 16 (1.34x), 160 against 230 us at batch 1 (1.44x).
BAND_ALL_BLOCKS = True
# The ring's stack bytes at most (a thread's stack may be small where the C library is
# called from): the stem at 224 needs 24 KB, a 3-channel image 600 wide 64 KB
RING_MAX_BYTES = 96 << 10
# A big kernel over split rows (the 7x7 stem) loops over its kernel rows (a row's taps
# unrolled in the body) instead of unrolling every tap, and blocks 8 channels x 3 vectors on
# AVX-512 (each broadcast weight feeds 3 FMAs): same process, the 7x7 stem with its pool,
# Zen 5, 2 threads, batch 16 / 1: 223-231 -> 262-273 / 173 -> 205 GFLOP/s (16 x 1 with
# the loop 237 / 173, 8 x 2 257 / 199). A 3x3 (MobileNetV2's first conv: 27 taps) lost
# 0.94-0.97x with it: unrolled, 16 x 1. The AVX2 build (run on the Zen 5, 1 thread, 4
# samples): unrolled 4 x 2 86-87 GFLOP/s, loop 4 x 2 85-87, loop 4 x 3 97 (2 x 5 89, 8 x 1
# 86); not measured on an AVX2-only CPU.
ROW_LOOP = True
ROW_LOOP_TAPS = 25
# The pooled kernel over split rows (the stem) in items of a band of pooled rows of every
# channel (POOL_BANDS a sample), each input row split once for all channels, instead of a
# block of R channels an item (every block splitting the sample's rows again: with its pool
# ~a sixth of the 7x7 stem's time; the conv row before a band's first is computed by both
# bands). Same process, ResNet-18 uniform 90 %, the stem op: batch 16 1.082x, batch 1
# 1.029x (2 threads, Zen 5); 1 or 4 bands a sample within 2 % of 2. 0: blocks.
POOL_BANDS = 2
# The pooled output tile-major (SmallConvSpec.ots) where native.lower holds the tensor so:
# ResNet-50's layer1.0.conv1 and downsample (1x1 convs) then read a tile's 64 channels from
# one 4 KB run instead of 64 planes 12.5 KB apart (layer1.0.downsample 3.3-3.8 -> 2.3 ms a
# call in plain calls at batch 16, the whole call 1.004-1.009x; A/B)
POOL_TILE_MAJOR = True
# The pooled 7-wide stride-2 kernel (a ResNet's 7x7 / 2 stem and its pool) as a Winograd
# F(4, 4) along x (``SmallConvSpec.winograd``): a split row's even columns meet the kernel's
# 4 even taps and its odd columns the 3 odd ones, each a stride-1 correlation along x; four
# outputs of each take 7 (even) and 6 (odd) products of transformed inputs and weights on the
# points WG_EVEN / WG_ODD (the odd's 6 among the even's 7, so both share one output
# transform), not 4 x 7 FMAs: the sums over input channels and kernel rows run per point (K
# = 42 for six points, 21 for the seventh) with an output tile of R channels x 2 vectors of
# tiles in registers, the input rows transformed once in the ring (an 8-way deinterleave of
# the row, then B^T), the output transform, bias, activation and the pool's horizontal max in
# registers. 273 FMAs for 4 outputs a channel against 588 (lanes: 28 tiles of a 112-wide
# row in 32); along y it stays direct. Error (1D, 7 points with 1/2): ~1e-6 relative.
WINOGRAD = True
# ... and along y too (``SmallConvSpec.winograd2d``): the stride-2 rows split the same way
# (even kernel rows F(4, 4), odd F(4, 3)), an output tile 4 rows x 4 columns, its 49 points
# each a sum over (input channel, row phase, column phase): K = 12 for 36 points, 6 for 12,
# 3 for one; 507 FMAs for 16 outputs a channel against 1092 (1D) and 2352 (direct). A tile
# row's 13 input rows transformed along x then y into a scratch on the stack, one vector of
# tiles (AVX2: two) at a time. Error ~3e-6 of the largest sum (x only: ~1e-6). Same process,
# the 224 stem with its pool alone, 2 samples, 1 thread, Zen 4 (2026-12-04): AVX-512 direct /
# x only / x and y 4.83 / 3.05 / 2.30 ms, the AVX2 build 4.68 / 3.32 / 2.54. ResNet-18 uniform
# 90 % batch 16 (bench/op_ab.py, 9 rounds) the stem op 17.64 (direct) -> 11.10 ms (x only),
# in a slower spell 12.49 (x only) -> 10.06 (x and y). perf of the 2D kernel: products 62 %,
# output transform and pool 26 %, input transforms 13 % of its time.
WINOGRAD_2D = True
_INF = None
WG_EVEN = (0.0, 1.0, -1.0, 2.0, -2.0, _INF, 0.5)  # (the odd's 6 first, in its order)
WG_ODD = (0.0, 1.0, -1.0, 2.0, -2.0, _INF)


@cache
def wg_mats(points, r: int, m: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of the Toom-Cook correlation F(m, r) on ``points`` (None: infinity),
    float64: y = A^T ((G g) * (B^T d)) for d of m + r - 1 inputs, g of r taps. Cached (the
    kernels' emitters ask for it per row they emit): read, never write, the arrays."""
    n = len(points)
    assert n == m + r - 1

    def vander(cols):
        return np.array([[0.0] * (cols - 1) + [1.0] if a is _INF else
                         [float(a) ** i for i in range(cols)] for a in points])

    return np.linalg.inv(vander(n)).T, vander(r), vander(m).T


@dataclass(frozen=True)
class SmallConvSpec:
    vw: int
    cin: int
    cout: int
    h: int
    w: int
    kh: int
    kw: int
    stride: int
    ph: int
    pw: int
    dh: int
    dw: int
    act: str = "none"
    act_a: float = 0.0
    act_b: float = 0.0
    has_bias: bool = True
    pool: bool = False  # the 3x3 / 2 max pool (padding 1) after it, fused
    # > 0 (with pool, AVX-512): the pooled output tile-major (native.lower's Lowering.tm), a
    # sample's positions in tiles of 16, a tile's channels 16 floats apart, ots floats (cout x
    # 16) from one tile to the next; 0: N, C, H, W
    ots: int = 0

    @property
    def key(self) -> str:
        act = act_key(self)
        return (f"sconv_v{self.vw}_{self.cin}x{self.h}x{self.w}_o{self.cout}_k{self.kh}x"
                f"{self.kw}_s{self.stride}_p{self.ph}x{self.pw}_d{self.dh}x{self.dw}_{act}_"
                f"{'b' if self.has_bias else 'nb'}{'_mp3s2' if self.pool else ''}"
                f"{'_sr' if self.split_rows else ''}"
                f"{'_ab' if self.split_rows and not self.pool and BAND_ALL_BLOCKS else ''}"
                f"{'_rl' if self.row_loop else ''}{'_wg' if self.winograd else ''}"
                f"{'2' if self.winograd2d else ''}{f'_ot{self.ots}' if self.ots else ''}")

    @property
    def out_sample(self) -> int:
        """Floats from one sample's pooled output to the next (tile-major: whole tiles)."""
        pho, pwo = self.pooled
        return self.cout * pho * pwo if not self.ots else -(-pho * pwo // 16) * self.ots

    @property
    def ho(self) -> int:
        return conv_out(self.h, self.kh, self.stride, self.ph, self.dh)

    @property
    def wo(self) -> int:
        return conv_out(self.w, self.kw, self.stride, self.pw, self.dw)

    @property
    def split_rows(self) -> bool:
        """Whether the stride-2 kernel reads its input rows split into even and odd columns
        (a ring of them on the stack, at most RING_MAX_BYTES) instead of shuffling each tap's
        loads."""
        if not (SPLIT_ROWS and self.stride == 2 and self.dh == 1 and self.dw == 1 and
                self.kh >= 2):
            return False
        return 4 * self.ring_rows * self.cin * 2 * self.split_len <= RING_MAX_BYTES

    @property
    def winograd(self) -> bool:
        """Whether the kernel is the Winograd F(4, 4) along x (WINOGRAD): the pooled 7-wide
        stride-2 kernel over split rows in bands (a ResNet stem), output width a multiple of
        4, its ring of transformed rows within RING_MAX_BYTES."""
        if not (WINOGRAD and self.pool and self.kw == 7 and self.stride == 2 and
                self.dw == 1 and self.wo % 4 == 0 and self.split_rows and self.pool_bands):
            return False
        return 4 * self.ring_rows * self.cin * self.wg_slot <= RING_MAX_BYTES

    @property
    def winograd2d(self) -> bool:
        """Whether the Winograd kernel runs along y too (WINOGRAD_2D): a 7-row kernel
        without dilation, its stack scratch (``wg2_floats``) within RING_MAX_BYTES."""
        return (WINOGRAD_2D and self.winograd and self.kh == 7 and self.dh == 1 and
                4 * self.wg2_floats <= RING_MAX_BYTES)

    @property
    def wg2_floats(self) -> int:
        """Floats of the 2D kernel's stack scratch: a channel's 13 input rows along x, every
        channel's 13 x 13 transformed inputs, a block's 49 products (each a pass of TV
        vectors of tiles), and each channel's last conv column of a pass for each of a tile
        row's 4 rows (the pool's left neighbour in the next pass)."""
        r, tv = self.wg2_blocking
        pf = tv * self.vw
        return 169 * pf * (1 + self.cin) + 49 * r * pf + 4 * self.cout

    @property
    def wg2_blocking(self) -> tuple[int, int]:
        """The 2D kernel's (R channels, TV vectors of tiles a pass): R up to 8 (AVX2: 4),
        one vector of tiles a pass (AVX2: two)."""
        big = self.vw >= 16
        return self._channels_up_to(8 if big else 4), min(1 if big else 2, self.wg_ntv)

    def _channels_up_to(self, n: int) -> int:
        """The most output channels, up to n, that divide Co."""
        return max(d for d in range(1, n + 1) if self.cout % d == 0)

    @property
    def wg_ntv(self) -> int:
        """Vectors of tiles (4 output columns each) a row, with the Winograd kernel."""
        return -(-(self.wo // 4) // self.vw)

    @property
    def wg_slot(self) -> int:
        """Floats of one input row's channel in the Winograd ring: its 13 transformed
        rows (7 points of the even columns, 6 of the odd), each wg_ntv vectors."""
        return (len(WG_EVEN) + len(WG_ODD)) * self.wg_ntv * self.vw

    @property
    def band(self) -> int:
        """Output rows an item does without the pool: one, or with split rows a band of
        BAND_ROWS (each input row split once for the band's rows, not once a row)."""
        return min(BAND_ROWS, self.ho) if self.split_rows and not self.pool else 1

    @property
    def items(self) -> int:
        """Work items a sample: with the pool over split rows its bands of pooled rows (every
        channel an item); without the pool over split rows its bands of rows (every channel,
        BAND_ALL_BLOCKS); else blocks of R channels, times bands of rows without the pool."""
        if self.pool_bands:
            return self.pool_bands
        if self.split_rows and not self.pool and BAND_ALL_BLOCKS:
            return -(-self.ho // self.band)
        return self.cout // self.blocking[0] * (1 if self.pool else -(-self.ho // self.band))

    @property
    def pool_bands(self) -> int:
        """Bands of pooled rows a sample with the pool over split rows (POOL_BANDS; 0: an
        item a block of R channels, every block splitting the rows again)."""
        if not (self.pool and self.split_rows and POOL_BANDS):
            return 0
        return min(POOL_BANDS, self.pooled[0])

    @property
    def split_len(self) -> int:
        """Floats of one phase of a split row: every vector a tap loads, whole."""
        nv = -(-self.wo // self.vw)
        return -(-(nv * self.vw + (self.kw - 1) // 2) // self.vw) * self.vw

    @property
    def ring_rows(self) -> int:
        """Split rows the ring holds: a power of two >= the kh rows a conv row reads."""
        return 1 << (self.kh - 1).bit_length()

    @property
    def pooled(self) -> tuple[int, int]:
        """The fused max pool's output rows and columns (3x3, stride 2, padding 1)."""
        return conv_out(self.ho, 3, 2, 1, 1), conv_out(self.wo, 3, 2, 1, 1)

    @property
    def blocking(self) -> tuple[int, int]:
        """(R output channels an item, V vectors a chunk). R first: each input vector (two
        loads and a shuffle at stride 2) then feeds R FMAs. AVX-512: R the largest divisor
        of Co up to 16, V the most vectors whose accumulators and inputs stay in registers
        (R x V + V <= 26). Measured on a 3x3 and a 7x7 RGB conv at 224, 1 thread: (16, 1)
        and (8, 1-3) 70-95 GFLOP/s, (4, 6) 50-58, (16, 2) 45-66. AVX2 (16 registers, a
        broadcast instruction per FMA): R up to 4, R x V + V <= 10. Zen 3, 2 threads, batch
        16, the ResNet stem (7x7 / 2 + pool) 74-84 GFLOP/s at (4, 2) against (8, 1) 57-69,
        (4, 3) 73, (4, 1) 64, (2, 4) 66, (8, 2) 45, (16, 1) 47; MobileNetV2's 3x3 / 2 (3 ->
        32, bound by its stores) 39 against 36. A big kernel's row loop (ROW_LOOP): R up to
        8 on AVX-512, 4 on AVX2, V up to 3 (its broadcasts are reused from registers; AVX2's
        4 x 3 takes all 16: 12 accumulators, 3 inputs, the broadcast)."""
        big = self.vw >= 16
        if self.winograd2d:  # (R channels x a pass of TV vectors of tiles)
            return self.wg2_blocking
        if self.winograd:  # (R channels x 2 vectors of tiles, a point at a time)
            return self._channels_up_to(8 if big else 4), min(2, self.wg_ntv)
        if self.row_loop:  # (ROW_LOOP: 8 x 3 on AVX-512, 4 x 3 on AVX2)
            r = self._channels_up_to(8 if big else 4)
            return r, max(1, min(-(-self.wo // self.vw), (27 if big else 15) // (r + 1)))
        r = self._channels_up_to(16 if big else 4)
        v = max(1, min(-(-self.wo // self.vw), (26 if big else 10) // (r + 1)))
        return r, v

    @property
    def row_loop(self) -> bool:
        """Whether a chunk's taps over split rows run as a loop over the cin x kh kernel rows
        (ROW_LOOP, kernels of ROW_LOOP_TAPS taps or more), with the weights read as (Co / R,
        cin * kh * kw, R): a block's R weights of one tap side by side (``weights``), at small
        offsets from one pointer a kernel row."""
        return self.split_rows and ROW_LOOP and self.kh * self.kw >= ROW_LOOP_TAPS

    def weights(self, wt: np.ndarray) -> np.ndarray:
        """The (Co, Ci, kh, kw) weights in the layout the kernel reads."""
        wt = np.ascontiguousarray(wt, np.float32)
        if self.winograd2d:
            return self._wg2_weights(wt)
        if self.winograd:
            return self._wg_weights(wt)
        if not self.row_loop:
            return wt
        r = self.blocking[0]
        return np.ascontiguousarray(
            wt.reshape(self.cout // r, r, -1).transpose(0, 2, 1)).reshape(-1)

    def _wg_weights(self, wt: np.ndarray) -> np.ndarray:
        """The Winograd kernel's weights: per block of R channels, per point of WG_EVEN, per
        (input channel, kernel row), the even taps' transformed weight then (when the point
        is one of WG_ODD's) the odd taps', R channels side by side."""
        r = self.blocking[0]
        w64 = wt.astype(np.float64).reshape(self.cout, self.cin * self.kh, self.kw)
        ue = w64[:, :, 0::2] @ wg_mats(WG_EVEN, 4)[1].T  # (Co, q, 7)
        uo = w64[:, :, 1::2] @ wg_mats(WG_ODD, 3)[1].T  # (Co, q, 6)
        nq = self.cin * self.kh
        parts = []
        for j, a in enumerate(WG_EVEN):
            cols = [ue[:, :, j]] + ([uo[:, :, WG_ODD.index(a)]] if a in WG_ODD else [])
            u = np.stack(cols, axis=-1)  # (Co, q, phases)
            parts.append(u.reshape(self.cout // r, r, nq, len(cols)).transpose(0, 2, 3, 1)
                         .reshape(self.cout // r, -1))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), np.float32).reshape(-1)

    def _wg2_weights(self, wt: np.ndarray) -> np.ndarray:
        """The 2D kernel's weights, per block of R channels: the 36 points of two phases
        each way (row-major, 6 x 6), each (input channel, row phase, column phase) R
        channels side by side; then the 6 points (y < 6, x = 1/2): (channel, row phase);
        the 6 (1/2, x < 6): (channel, column phase); the point (1/2, 1/2): channel."""
        r = self.blocking[0]
        w64 = wt.astype(np.float64).reshape(self.cout, self.cin, self.kh, self.kw)
        g = [wg_mats(WG_EVEN, 4)[1], wg_mats(WG_ODD, 3)[1]]  # (7 x 4), (6 x 3)
        # u[py][px]: (Co, Ci, n_y, n_x) the phase's sub-kernel transformed both ways
        u = [[np.einsum("ya,ocab,xb->ocyx", g[py], w64[:, :, py::2, px::2], g[px])
              for px in (0, 1)] for py in (0, 1)]
        nb = self.cout // r

        def part(terms):  # terms: [(py, px, jy, jx)] for each channel: (nb, C, T, R)
            a = np.stack([u[py][px][:, :, jy, jx] for py, px, jy, jx in terms], axis=-1)
            return a.reshape(nb, r, self.cin, len(terms)).transpose(0, 2, 3, 1).reshape(nb, -1)

        parts = []
        for jy in range(6):
            for jx in range(6):
                parts.append(part([(py, px, jy, jx) for py in (0, 1) for px in (0, 1)]))
        parts += [part([(py, 0, jy, 6) for py in (0, 1)]) for jy in range(6)]
        parts += [part([(0, px, 6, jx) for px in (0, 1)]) for jx in range(6)]
        parts.append(part([(0, 0, 6, 6)]))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), np.float32).reshape(-1)

    def emit(self, module: ir.Module, name: str) -> None:
        if self.ots and (self.vw != 16 or not self.pool or self.ots != 16 * self.cout):
            raise ValueError(f"tile-major output ({self.ots} floats a tile) needs the pool, "
                             f"16 lanes and {16 * self.cout} floats a tile")
        emit_small_conv(module, name, self)


def fits(vw: int, cin: int, cout: int, groups: int, stride: tuple[int, int], kh: int, kw: int,
         wo: int, act: str) -> bool:
    """Whether this kernel runs a conv of this geometry (else im2col + GEMM or the sparse
    path)."""
    return (groups == 1 and cin <= MAX_CIN and cin * kh * kw <= MAX_TAPS and act in FUSED_ACTS
            and stride[0] == stride[1] and stride[0] in (1, 2) and wo >= vw // 2)


def emit_small_conv(module: ir.Module, name: str, spec: SmallConvSpec) -> None:
    vw, s = spec.vw, spec.stride
    k = _K(module, name, vw)
    b = k.b
    x, wt, bias, out = (k.arg_ptr(i, n) for i, n in ((S_X, "x"), (S_W, "wt"), (S_BIAS, "bias"),
                                                     (S_OUT, "out")))
    R, V = spec.blocking
    nblk = spec.cout // R
    ho, wo, h, w = spec.ho, spec.wo, spec.h, spec.w
    taps = spec.kh * spec.kw
    zero = ir.Constant(k.vty, [0.0] * vw)
    nv = -(-wo // vw)
    chunks = [list(range(v0, min(v0 + V, nv))) for v0 in range(0, nv, V)]

    # interior chunks (every tap's input inside the row, so the same masks): one loop body
    # moved along the row instead of unrolled code (a 7x7 stem conv's unrolled row is ~130
    # KB of code). Same process, 1 thread, 4 samples at 224, bit-identical: 3x3 RGB convs
    # 1.05-1.09x the rate, the 7x7 stem 1.00-1.02x
    def inner(vecs) -> bool:
        return all(DW.row_run_inside(v * vw * s + j * spec.dw - spec.pw,
                                     min(vw, wo - v * vw), w, s, vw)
                   for v in vecs for j in range(spec.kw)) and len(vecs) == V

    runs: list[list] = []  # [first chunk, count]: interior chunks in a row share a body
    ring = spec.split_rows
    def whole(vecs) -> bool:  # (a split row's chunk: its vectors stored whole)
        return spec.pool or all((v + 1) * vw <= wo for v in vecs)

    for vecs in chunks:
        if runs and (ring and whole(vecs) and whole(runs[-1][0]) or
                     inner(vecs) and inner(runs[-1][0])) and len(vecs) == len(runs[-1][0]):
            runs[-1][1] += 1
        else:
            runs.append([vecs, 1])
    if ring:
        # stride 2: the input rows a conv row reads, split once into their even and odd
        # padded columns (phase 0: padded columns 0, 2, ..; phase 1: 1, 3, ..; zeros for
        # the padding) in a ring of RS rows: a tap is then one whole-vector load, where
        # reading the row itself takes two masked loads and a shuffle per tap and vector
        qp = spec.split_len
        rs = spec.ring_rows
        ringp = b.bitcast(k.alloca(ir.ArrayType(F32, rs * spec.cin * 2 * qp), "ring"),
                          F32.as_pointer())

        def split_rows(xn, lo, hi) -> None:
            """Split input rows [max(lo, 0), min(hi, h)) into their ring slots."""
            def one(rowp, dst) -> None:
                for ph_ in range(2):
                    for jv in range(qp // vw):
                        v = DW.row_run(k, rowp, 2 * jv * vw + ph_ - spec.pw, vw, w, 2)
                        k.vstore(zero if v is None else v,
                                 b.gep(dst, [I64(ph_ * qp + jv * vw)]), None)

            _ring_rows(k, spec, xn, lo, hi, ringp, 2 * qp, one)

    def conv_row(oh, xn, wb, inits, store) -> None:
        """Output row ``oh`` of the item's R channels; ``store(r, v, value)`` takes each
        activated vector (v an int, or an i64 in an interior loop)."""
        for vecs, count in runs:
            if count == 1:
                conv_chunk(oh, xn, wb, inits, store, vecs, None)
                continue
            with k.loop(I64(0), I64(count), "iv") as c:
                conv_chunk(oh, xn, wb, inits, store, vecs, b.mul(c, I64(len(vecs))))

    def conv_chunk(oh, xn, wb, inits, store, vecs, moved) -> None:
        """Vectors ``vecs`` of the row, or with ``moved`` (i64 vectors) those as far along."""
        shift = None if moved is None else b.mul(moved, I64(vw))
        acc = [[k.alloca(k.vty, f"a{r}_{v}") for v in vecs] for r in range(R)]
        for r in range(R):
            for a in acc[r]:
                b.store(inits[r], a)
        if spec.row_loop:
            ring_rows_loop(oh, wb, acc, vecs, shift)
        for ci in range(0 if spec.row_loop else spec.cin):
            for i in range(spec.kh):
                ih = b.add(b.mul(oh, I64(s)), I64(i * spec.dh - spec.ph))
                with b.if_then(row_inside(ih)):
                    if ring:  # the row's split columns in its ring slot
                        rowp = ring_row(ih, I64(ci), shift)
                    else:
                        rowp = b.gep(xn, [b.add(I64(ci * h * w), b.mul(ih, I64(w)))])
                        if shift is not None:
                            rowp = b.gep(rowp, [b.mul(shift, I64(s))])
                    for j in range(spec.kw):
                        dx = j * spec.dw - spec.pw
                        # output columns v * vw .. : their inputs from column dx on
                        if ring:
                            xs = ring_xs(rowp, j, vecs)
                        else:
                            xs = [DW.row_run(k, rowp, v * vw * s + dx, min(vw, wo - v * vw),
                                             w, s) for v in vecs]
                        if all(xv is None for xv in xs):
                            continue
                        tap = (ci * spec.kh + i) * spec.kw + j
                        tap_fmas(xs, lambda r: b.gep(wb, [I64(r * spec.cin * taps + tap)]), acc)
        for r in range(R):
            for q, v in enumerate(vecs):
                vv = v if moved is None else b.add(moved, I64(v))
                store(r, vv, k.act(b.load(acc[r][q]), spec))

    def ring_rows_loop(oh, wb, acc, vecs, shift) -> None:
        """The taps of a chunk over split rows as a loop over the cin x kh kernel rows (a
        row's kw taps unrolled in its body), not all of them unrolled."""
        with k.loop(I64(0), I64(spec.cin * spec.kh), "q") as q:
            ci = b.sdiv(q, I64(spec.kh))
            i = b.sub(q, b.mul(ci, I64(spec.kh)))
            ih = b.add(b.mul(oh, I64(s)), b.sub(b.mul(i, I64(spec.dh)), I64(spec.ph)))
            with b.if_then(row_inside(ih)):
                rowp = ring_row(ih, ci, shift)
                wq = b.gep(wb, [b.mul(q, I64(spec.kw * R))])
                for j in range(spec.kw):
                    tap_fmas(ring_xs(rowp, j, vecs), lambda r: b.gep(wq, [I64(j * R + r)]),
                             acc)

    def row_inside(ih):
        return b.and_(b.icmp_signed(">=", ih, I64(0)), b.icmp_signed("<", ih, I64(h)))

    def ring_row(ih, ci, shift):
        """Input row ih's channel ci (i64 values) split in its ring slot, ``shift`` floats on
        (a chunk of an interior loop) unless None."""
        slot = b.add(b.mul(b.and_(ih, I64(rs - 1)), I64(spec.cin)), ci)
        rowp = b.gep(ringp, [b.mul(slot, I64(2 * qp))])
        return rowp if shift is None else b.gep(rowp, [shift])

    def ring_xs(rowp, j, vecs) -> list:
        """Tap j's input vectors from a split row (padded column 2 p + j: phase j % 2,
        index p + j // 2)."""
        return [k.vload(b.gep(rowp, [I64((j % 2) * qp + v * vw + j // 2)]), None)
                for v in vecs]

    def tap_fmas(xs, weight, acc) -> None:
        """One tap into the R x V accumulators: ``weight(r)`` points at output channel r's
        weight, broadcast onto each input vector (None: a vector whose inputs are all
        padding, skipped)."""
        for r in range(R):
            ws = k.splat(b.load(weight(r)))
            for q, xv in enumerate(xs):
                if xv is not None:
                    b.store(k.fma(ws, xv, b.load(acc[r][q])), acc[r][q])

    def block(blk):
        """(first channel, weights, bias vectors) of block ``blk`` of R channels."""
        co0 = b.mul(blk, I64(R))
        wb = b.gep(wt, [b.mul(co0, I64(spec.cin * taps))])
        inits = [k.splat(b.load(b.gep(bias, [b.add(co0, I64(r))]))) if spec.has_bias else zero
                 for r in range(R)]
        return co0, wb, inits

    def item(t, per_row: bool):
        """(n, first channel, x, weights, bias vectors[, oh]) of item t."""
        oh = None
        if per_row:
            oh = b.srem(t, I64(ho))
            t = b.sdiv(t, I64(ho))
        n = b.sdiv(t, I64(nblk))
        co0, wb, inits = block(b.srem(t, I64(nblk)))
        xn = b.gep(x, [b.mul(n, I64(spec.cin * h * w))])
        return n, co0, xn, wb, inits, oh

    if not spec.pool:
        def row(n, co0, xn, wb, inits, oh) -> None:
            ob = b.gep(out, [b.add(b.mul(b.add(b.mul(n, I64(spec.cout)), co0), I64(ho * wo)),
                                   b.mul(oh, I64(wo)))])

            def store(r, v, val):
                if isinstance(v, int):
                    k.vstore(val, b.gep(ob, [I64(r * ho * wo + v * vw)]),
                             DW.lane_mask(vw, np.arange(vw) < min(vw, wo - v * vw)))
                else:  # an interior vector: whole
                    k.vstore(val, b.gep(ob, [b.add(I64(r * ho * wo), b.mul(v, I64(vw)))]),
                             None)

            conv_row(oh, xn, wb, inits, store)

        with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
            if not ring:
                row(*item(t, True))
            else:  # a band of rows: its first rows split, then two more a row
                nband = -(-ho // spec.band)
                every = BAND_ALL_BLOCKS  # (an item every block of the band: see its note)
                if every:
                    n = b.sdiv(t, I64(nband))
                    xn = b.gep(x, [b.mul(n, I64(spec.cin * h * w))])
                else:
                    n, co0, xn, wb, inits, _ = item(b.sdiv(t, I64(nband)), False)
                oh0 = b.mul(b.srem(t, I64(nband)), I64(spec.band))
                oh1 = b.add(oh0, I64(spec.band))
                oh1 = b.select(b.icmp_signed(">", oh1, I64(ho)), I64(ho), oh1)
                split_rows(xn, b.sub(b.mul(oh0, I64(2)), I64(spec.ph)),
                           b.add(b.mul(oh0, I64(2)), I64(spec.kh - 2 - spec.ph)))
                with k.loop(oh0, oh1, "oh") as oh:
                    top = b.add(b.mul(oh, I64(2)), I64(spec.kh - 2 - spec.ph))
                    split_rows(xn, top, b.add(top, I64(2)))
                    if every:
                        with k.loop(I64(0), I64(nblk), "blk") as blk:
                            co0, wb, inits = block(blk)
                            row(n, co0, xn, wb, inits, oh)
                    else:
                        row(n, co0, xn, wb, inits, oh)
        b.ret_void()
        return
    pho, pwo = spec.pooled
    npad = nv * vw
    row = b.bitcast(k.alloca(ir.ArrayType(F32, R * npad), "row"), F32.as_pointer())

    def pool_row(oh, pb, co0, p0, p1) -> None:
        """Conv row oh of R channels (in ``row``) into the pooled rows [p0, p1) of channels
        co0 .. of the sample whose pooled planes are at ``pb``: pooled row i takes conv rows
        2i - 1, 2i and 2i + 1, so row oh is maxed into row oh // 2 (or starts it, when oh is
        0) and, when odd, starts row oh // 2 + 1."""
        i = b.ashr(oh, I64(1))
        first = b.icmp_signed("==", oh, I64(0))
        mine = b.icmp_signed(">=", i, p0)
        odd = b.icmp_signed("!=", b.and_(oh, I64(1)), I64(0))
        nxt = b.and_(odd, b.icmp_signed("<", b.add(i, I64(1)), p1))
        for r in range(R):
            rp = b.gep(row, [I64(r * npad)])
            for pv in range(-(-pwo // vw)):
                m = min(vw, pwo - pv * vw)
                mask = DW.lane_mask(vw, np.arange(vw) < m)
                # columns 2j - 1, 2j, 2j + 1; outside the row reads as 0 (<= every value)
                runs = [DW.row_run(k, rp, 2 * pv * vw + d, m, wo, 2) for d in (-1, 0, 1)]
                hm = None
                for run in runs:
                    if run is not None:
                        hm = run if hm is None else _umax(b, hm, run)
                co = b.add(co0, I64(r))
                with b.if_then(mine):
                    at = _Pooled(k, spec, pb, co, i, pv * vw)
                    at.store(b.select(first, hm, _umax(b, at.load(mask), hm)), mask)
                with b.if_then(nxt):
                    _Pooled(k, spec, pb, co, b.add(i, I64(1)), pv * vw).store(hm, mask)

    def store_row(r, v, val) -> None:
        # (+ 0.0: -0.0 becomes 0.0, so that the pool's unsigned compares order every value)
        val = b.fadd(val, zero)
        k.vstore(val, b.gep(row, [b.add(I64(r * npad), b.mul(
            I64(v) if isinstance(v, int) else v, I64(vw)))]), None)

    if spec.winograd2d:
        _emit_winograd2d(k, spec, x, wt, bias, out)
        return
    if spec.winograd:
        _emit_winograd(k, spec, x, wt, bias, out)
        return
    if spec.pool_bands:
        # an item is a band of pooled rows of one sample, every channel: each input row is
        # split once for all of them (a block an item split every row again: 8x the splits
        # of the 7x7 stem, a sixth of its time)
        def band_row(n, xn, oh, p0, p1) -> None:
            with k.loop(I64(0), I64(nblk), "blk") as blk:
                co0, wb, inits = block(blk)
                conv_row(oh, xn, wb, inits, store_row)
                pool_row(oh, b.gep(out, [b.mul(n, I64(spec.out_sample))]), co0, p0, p1)

        _pooled_bands(k, spec, x, split_rows, band_row)
        b.ret_void()
        return
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        n, co0, xn, wb, inits, _ = item(t, False)
        pb = b.gep(out, [b.mul(n, I64(spec.out_sample))])
        if ring:  # the rows conv row 0 reads but its last two
            split_rows(xn, I64(-spec.ph), I64(spec.kh - 2 - spec.ph))
        with k.loop(I64(0), I64(ho), "oh") as oh:
            if ring:  # and the two more each conv row reads (the ring's oldest leave)
                top = b.add(b.mul(oh, I64(2)), I64(spec.kh - 2 - spec.ph))
                split_rows(xn, top, b.add(top, I64(2)))
            conv_row(oh, xn, wb, inits, store_row)
            pool_row(oh, pb, co0, I64(0), I64(pho))
    b.ret_void()


def _deinterleave(k: _K, vecs: list, stride: int = 1, first: int = 0, into=None) -> list:
    """The len(vecs)-way deinterleave of the floats in ``vecs`` (consecutive): result c holds
    floats c, c + n, c + 2 n, .. (n = len(vecs), a power of two), by halving shuffles."""
    into = [None] * len(vecs) if into is None else into
    if len(vecs) == 1:
        into[first] = vecs[0]
        return into
    vw = k.vw
    even = ir.Constant(ir.VectorType(I32, vw), list(range(0, 2 * vw, 2)))
    odd = ir.Constant(ir.VectorType(I32, vw), list(range(1, 2 * vw, 2)))
    pairs = list(zip(vecs[0::2], vecs[1::2]))
    _deinterleave(k, [k.b.shuffle_vector(a, c, even) for a, c in pairs], 2 * stride, first,
                  into)
    _deinterleave(k, [k.b.shuffle_vector(a, c, odd) for a, c in pairs], 2 * stride,
                  first + stride, into)
    return into


def _lincomb(k: _K, coefs, vecs, add=None):
    """sum coefs[i] * vecs[i] (+ ``add``) with the coefficients as float32 constants, zeros
    skipped and +-1 as an add / subtract."""
    b = k.b
    acc = add
    for c, v in zip(coefs, vecs):
        c = float(np.float32(c))
        if c == 0.0:
            continue
        if acc is None:
            acc = v if c == 1.0 else b.fmul(k.c(c), v)
        elif c == 1.0:
            acc = b.fadd(acc, v)
        elif c == -1.0:
            acc = b.fsub(acc, v)
        else:
            acc = k.fma(k.c(c), v, acc)
    return ir.Constant(k.vty, [0.0] * k.vw) if acc is None else acc


class _Pooled:
    """Where the pooled output's vectors go: the floats ``col0`` .. ``col0 + vw`` of pooled
    row ``i`` of channel ``co`` of the sample whose planes start at ``pb``. In N, C, H, W one
    run; tile-major (``spec.ots``) the row's positions q = i x pwo + col0 .. cross at most one
    tile edge: lanes before it go to tile q // 16 from lane q % 16 on, the rest to the next
    tile from lane 0, each part one masked access of the whole vector (its other lanes
    neither read nor written)."""

    def __init__(self, k: _K, spec: SmallConvSpec, pb, co, i, col0: int):
        b = k.b
        pho, pwo = spec.pooled
        self.k = k
        q = b.add(b.mul(i, I64(pwo)), I64(col0))
        if not spec.ots:
            self.parts = [(b.gep(pb, [b.add(b.mul(co, I64(pho * pwo)), q)]), None)]
            return
        if k.vw != 16:
            raise ValueError("tile-major pooled output is AVX-512 (16-position tiles)")
        m = b.and_(q, I64(15))
        a1 = b.gep(pb, [b.add(b.add(b.mul(b.ashr(q, I64(4)), I64(spec.ots)),
                                    b.mul(co, I64(16))), m)])
        k1 = k.lanes_lt(I64(0), b.sub(I64(16), m))
        self.first = k1
        self.parts = [(a1, k1), (b.gep(a1, [I64(spec.ots - 16)]), b.not_(k1))]

    @staticmethod
    def _and(b, mask, part):
        if part is None:
            return mask
        return part if mask is None else b.and_(mask, part)

    def load(self, mask):
        k, b = self.k, self.k.b
        got = [k.vload(p, self._and(b, mask, pm)) for p, pm in self.parts]
        return got[0] if len(got) == 1 else b.select(self.first, got[0], got[1])

    def store(self, val, mask) -> None:
        for p, pm in self.parts:
            self.k.vstore(val, p, self._and(self.k.b, mask, pm))


def _pool_band(k: _K, spec: SmallConvSpec, t) -> tuple:
    """(sample, first pooled row, pooled row past the last, first conv row, conv row past
    the last) of item t of the pooled kernel in bands (``pool_bands`` a sample): pooled row
    i takes conv rows 2 i - 1 .. 2 i + 1."""
    b = k.b
    nband, (pho, _) = spec.pool_bands, spec.pooled
    per = -(-pho // nband)
    n = b.sdiv(t, I64(nband))
    p0 = b.mul(b.srem(t, I64(nband)), I64(per))
    p1 = b.add(p0, I64(per))
    p1 = b.select(b.icmp_signed(">", p1, I64(pho)), I64(pho), p1)
    oh0 = b.sub(b.mul(p0, I64(2)), I64(1))
    oh0 = b.select(b.icmp_signed("<", oh0, I64(0)), I64(0), oh0)
    oh1 = b.mul(p1, I64(2))
    oh1 = b.select(b.icmp_signed(">", oh1, I64(spec.ho)), I64(spec.ho), oh1)
    return n, p0, p1, oh0, oh1


def _pooled_bands(k: _K, spec: SmallConvSpec, x, split, row) -> None:
    """The pooled kernel's items as bands of pooled rows (``_pool_band``): the input rows a
    band's first conv row reads but its last two ``split`` into the ring, then for each conv
    row the two more it reads, and ``row(sample, xn, oh, p0, p1)``."""
    b = k.b
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        n, p0, p1, oh0, oh1 = _pool_band(k, spec, t)
        xn = b.gep(x, [b.mul(n, I64(spec.cin * spec.h * spec.w))])
        top0 = b.sub(b.mul(oh0, I64(2)), I64(spec.ph))
        split(xn, top0, b.add(top0, I64(spec.kh - 2)))
        with k.loop(oh0, oh1, "oh") as oh:
            top = b.add(b.mul(oh, I64(2)), I64(spec.kh - 2 - spec.ph))
            split(xn, top, b.add(top, I64(2)))
            row(n, xn, oh, p0, p1)


class _PoolRow:
    """The pool's part of one activated conv row ``oh`` held as Winograd tiles (vector of
    tiles tv: outputs y[i] at columns 4 t + i): along x in registers (pooled column 2 t maxes
    columns 4 t - 1 .. 4 t + 1, column 2 t + 1 columns 4 t + 1 .. 4 t + 3), then maxed into
    pooled row oh // 2 (started when oh is 0) and, when oh is odd, starting row oh // 2 + 1;
    only pooled rows in [p0, p1), only conv rows inside the map."""

    def __init__(self, k: _K, spec: SmallConvSpec, oh, p0, p1):
        b, vw = k.b, k.vw
        self.k, self.spec, self.pwo = k, spec, spec.pooled[1]
        self.i = b.ashr(oh, I64(1))
        live = b.icmp_signed("<", oh, I64(spec.ho))
        self.first = b.icmp_signed("==", oh, I64(0))
        self.mine = b.and_(live, b.and_(b.icmp_signed(">=", self.i, p0),
                                        b.icmp_signed("<", self.i, p1)))
        i1 = b.add(self.i, I64(1))
        self.nxt = b.and_(b.and_(live, b.icmp_signed("!=", b.and_(oh, I64(1)), I64(0))),
                          b.and_(b.icmp_signed(">=", i1, p0), b.icmp_signed("<", i1, p1)))
        self.back1 = ir.Constant(ir.VectorType(I32, vw), list(range(vw - 1, 2 * vw - 1)))
        self.inter = ir.Constant(ir.VectorType(I32, 2 * vw), [i // 2 + (i % 2) * vw
                                                              for i in range(2 * vw)])
        self.halves = [ir.Constant(ir.VectorType(I32, vw), list(range(h * vw, (h + 1) * vw)))
                       for h in range(2)]

    def store(self, pb, co, tv: int, prev3, y) -> None:
        """Vector of tiles ``tv`` (y: 4 vectors, each >= +0.0 or NaN) of channel ``co`` of
        the sample whose pooled planes are at ``pb``; ``prev3`` is the vector of tiles
        before's y[3] (zero before the first: padding)."""
        k, b, vw, pwo = self.k, self.k.b, self.k.vw, self.pwo
        left = b.shuffle_vector(prev3, y[3], self.back1)  # columns 4 t - 1
        pe = _umax(b, _umax(b, left, y[0]), y[1])
        po = _umax(b, _umax(b, y[1], y[2]), y[3])
        both = b.shuffle_vector(pe, po, self.inter)
        for hh in range(2):
            col0 = (2 * tv + hh) * vw
            if col0 >= pwo:
                continue
            half = b.shuffle_vector(both, both, self.halves[hh])
            mask = DW.lane_mask(vw, np.arange(vw) < pwo - col0)
            with b.if_then(self.mine):
                at = _Pooled(k, self.spec, pb, co, self.i, col0)
                at.store(b.select(self.first, half, _umax(b, at.load(mask), half)), mask)
            with b.if_then(self.nxt):
                _Pooled(k, self.spec, pb, co, b.add(self.i, I64(1)), col0).store(half, mask)


def _out_transform(k: _K, m: list, add) -> list:
    """The 4 outputs A^T M of WG_EVEN's 7 products (+ ``add``), a point and its negative
    taken as their sum and difference (output i reads a^i times the sum for even i, the
    difference for odd): 15 vector operations, not 22."""
    b = k.b
    pairs, single = [], []
    for j, a in enumerate(WG_EVEN):
        if a is not _INF and a > 0 and -a in WG_EVEN:
            mj, mn = m[j], m[WG_EVEN.index(-a)]
            pairs.append((a, b.fadd(mj, mn), b.fsub(mj, mn)))
        elif a is _INF or not (a < 0 and -a in WG_EVEN):
            single.append((a, m[j]))
    out = []
    for i in range(4):
        terms = [(a ** i, sd if i % 2 == 0 else dd) for a, sd, dd in pairs]
        terms += [((1.0 if i == 3 else 0.0) if a is _INF else a ** i, v) for a, v in single]
        out.append(_lincomb(k, [c for c, _ in terms], [v for _, v in terms], add))
    return out


def _emit_winograd(k: _K, spec: SmallConvSpec, x, wt, bias, out) -> None:
    """The pooled 7-wide stride-2 conv as Winograd F(4, 4) along x (see WINOGRAD), items as
    the pool_bands kernel's: a band of pooled rows of one sample, every channel.

    Ring slot (an input row's channel): its 13 transformed rows, each ``ntv`` vectors of
    tiles (tile t: output columns 4t .. 4t + 3). Even columns: d_e[i][t] = x[8t + 2i - pw],
    i < 7, odd: d_o[i][t] = x[8t + 2i + 1 - pw], i < 6 (zero outside the row): the row's
    8-way deinterleave (residues c: S_c[t] = x[8t + c - pw]), S_c for c >= 8 one lane on.
    Output column 4t + i of a channel is A^T[i] . M[t], M[j] = sum over (input channel,
    kernel row) of U_e[j] D_e[j] (+ U_o[j] D_o[j]); pooled column 2t maxes columns 4t - 1,
    4t, 4t + 1, column 2t + 1 columns 4t + 1 .. 4t + 3."""
    b, vw = k.b, spec.vw
    R, TV = spec.blocking
    nblk = spec.cout // R
    ntv, h = spec.wg_ntv, spec.h
    pho, pwo = spec.pooled
    ne = len(WG_EVEN)
    rs, slot_f = spec.ring_rows, spec.wg_slot
    nq = spec.cin * spec.kh
    zero = ir.Constant(k.vty, [0.0] * vw)
    ringp = b.bitcast(k.alloca(ir.ArrayType(F32, rs * spec.cin * slot_f), "wring"),
                      F32.as_pointer())
    mbuf = b.bitcast(k.alloca(ir.ArrayType(F32, ne * R * ntv * vw), "wm"), F32.as_pointer())
    # weights: a block's points one after another, each (q, its phases, R)
    nph = [1 + (a in WG_ODD) for a in WG_EVEN]
    wofs = [int(sum(nph[:j])) * nq * R for j in range(ne)]
    wblk = sum(nph) * nq * R

    def split(xn, lo, hi) -> None:
        """Input rows [max(lo, 0), min(hi, h)) transformed into their ring slots."""
        def one(rowp, dst) -> None:
            for pp, vecs in enumerate(_x_transform(k, spec, rowp, 0, ntv)):
                for tv, v in enumerate(vecs):
                    k.vstore(v, b.gep(dst, [I64((pp * ntv + tv) * vw)]), None)

        _ring_rows(k, spec, xn, lo, hi, ringp, slot_f, one)

    def conv_pool_row(oh, blk, pb, p0, p1) -> None:
        """Conv row ``oh`` of block ``blk``'s R channels, activated and maxed into the pooled
        rows [p0, p1) at ``pb`` (the sample's pooled planes)."""
        co0 = b.mul(blk, I64(R))
        wb = b.gep(wt, [b.mul(blk, I64(wblk))])
        top = b.sub(b.mul(oh, I64(2)), I64(spec.ph))  # input row of kernel row 0
        i_lo = b.select(b.icmp_signed("<", top, I64(0)), b.sub(I64(0), top), I64(0))
        i_hi = b.sub(I64(h), top)
        i_hi = b.select(b.icmp_signed(">", i_hi, I64(spec.kh)), I64(spec.kh), i_hi)
        for j, a in enumerate(WG_EVEN):
            pps = [j] + ([ne + WG_ODD.index(a)] if a in WG_ODD else [])
            for tv0 in range(0, ntv, TV):
                tvs = list(range(tv0, min(tv0 + TV, ntv)))
                acc = [[k.alloca(k.vty, f"w{r}_{tv}") for tv in tvs] for r in range(R)]
                for row_ in acc:
                    for a_ in row_:
                        b.store(zero, a_)
                for ci in range(spec.cin):
                    # (the kernel rows inside the input: no test in the loop)
                    with k.loop(i_lo, i_hi, "i") as i:
                        ih = b.add(top, i)
                        slot = b.add(b.mul(b.and_(ih, I64(rs - 1)), I64(spec.cin)), I64(ci))
                        rowp = b.gep(ringp, [b.mul(slot, I64(slot_f))])
                        q = b.add(i, I64(ci * spec.kh))
                        wq = b.gep(wb, [b.add(I64(wofs[j]), b.mul(q, I64(len(pps) * R)))])
                        for pi, pp in enumerate(pps):
                            xs = [k.vload(b.gep(rowp, [I64((pp * ntv + tv) * vw)]), None)
                                  for tv in tvs]
                            for r in range(R):
                                ws = k.splat(b.load(b.gep(wq, [I64(pi * R + r)])))
                                for n, xv in enumerate(xs):
                                    b.store(k.fma(ws, xv, b.load(acc[r][n])), acc[r][n])
                for r in range(R):
                    for n, tv in enumerate(tvs):
                        k.vstore(b.load(acc[r][n]),
                                 b.gep(mbuf, [I64(((j * R + r) * ntv + tv) * vw)]), None)
        # output transform, bias, activation, the pool (along x in registers, along y into
        # the pooled rows as pool_row does)
        pool = _PoolRow(k, spec, oh, p0, p1)
        for r in range(R):
            bv = k.splat(b.load(b.gep(bias, [b.add(co0, I64(r))]))) if spec.has_bias else None
            prev3 = zero
            for tv in range(ntv):
                m = [k.vload(b.gep(mbuf, [I64(((j * R + r) * ntv + tv) * vw)]), None)
                     for j in range(ne)]
                y = [b.fadd(k.act(v, spec), zero) for v in _out_transform(k, m, bv)]
                pool.store(pb, b.add(co0, I64(r)), tv, prev3, y)
                prev3 = y[3]

    def band_row(n, xn, oh, p0, p1) -> None:
        pb = b.gep(out, [b.mul(n, I64(spec.out_sample))])
        with k.loop(I64(0), I64(nblk), "blk") as blk:
            conv_pool_row(oh, blk, pb, p0, p1)

    _pooled_bands(k, spec, x, split, band_row)
    b.ret_void()


def _x_transform(k: _K, spec: SmallConvSpec, rowp, g0: int, ng: int) -> list:
    """Input row ``rowp``'s 13 rows along x (7 points of its even columns, then 6 of its
    odd) for the ng vectors of tiles from vector g0: [point][vector]. Columns outside the
    row read as zero (never read)."""
    b, vw = k.b, k.vw
    zero = ir.Constant(k.vty, [0.0] * vw)
    shift1 = ir.Constant(ir.VectorType(I32, vw), list(range(1, vw + 1)))
    res = []  # residues c of each vector of tiles (and one more, for the shift)
    for g in range(g0, g0 + ng + 1):
        a = [DW.row_run(k, rowp, (8 * g + i) * vw - spec.pw, vw, spec.w, 1) for i in range(8)]
        res.append(_deinterleave(k, [zero if v is None else v for v in a]))
    bte, bto = wg_mats(WG_EVEN, 4)[0], wg_mats(WG_ODD, 3)[0]
    pts = [[] for _ in range(len(bte) + len(bto))]
    for n in range(ng):
        s_ = res[n] + [b.shuffle_vector(res[n][c], res[n + 1][c], shift1) for c in range(5)]
        for pp, (bt, d) in enumerate([(row, s_[0::2]) for row in bte] +
                                     [(row, s_[1:12:2]) for row in bto]):
            pts[pp].append(_lincomb(k, bt, d))
    return pts


def _emit_winograd2d(k: _K, spec: SmallConvSpec, x, wt, bias, out) -> None:
    """The pooled 7x7 stride-2 conv as Winograd F(4, 4) along x and y (see WINOGRAD_2D),
    items as the pool_bands kernel's (a band of pooled rows of one sample, every channel).

    A tile row T is conv rows 4T .. 4T + 3, from input rows 8T - ph .. 8T + 12 - ph (even
    ones: the even kernel rows' 7 inputs, odd: the odd rows' 6). Per pass (TV vectors of
    tiles): each input channel's 13 rows transformed along x (``_x_transform``) into X1,
    then along y into D2[ci][y point][x point] (y points 0-6 even rows, 7-12 odd: the odd's
    point j is the even's point j, j < 6); per block of R channels the 49 products M[jy][jx]
    (sums over channel and the phases both points have), then A^T M A, bias, activation,
    and the pool: each conv row along x in registers, maxed into its pooled rows."""
    b, vw = k.b, spec.vw
    R, TV = spec.blocking
    nblk = spec.cout // R
    ntv, h, w = spec.wg_ntv, spec.h, spec.w
    pho, pwo = spec.pooled
    bte, bto = wg_mats(WG_EVEN, 4)[0], wg_mats(WG_ODD, 3)[0]
    npass = -(-ntv // TV)
    pf = TV * vw  # floats of a pass's vectors of one row
    zero = ir.Constant(k.vty, [0.0] * vw)

    def buf(n, name):
        return b.bitcast(k.alloca(ir.ArrayType(F32, n), name), F32.as_pointer())

    x1, d2 = buf(169 * pf, "wx1"), buf(spec.cin * 169 * pf, "wd2")
    mb, edge = buf(49 * R * pf, "wm"), buf(4 * spec.cout, "wedge")

    def at(p, off):  # (off: floats, an int or an i64 value)
        return b.gep(p, [off if isinstance(off, ir.Value) else I64(off)])

    def ld(p, off):
        return k.vload(at(p, off), None)

    def st(v, p, off):
        k.vstore(v, at(p, off), None)

    def transform(xn, t, p: int) -> None:
        """Pass p of tile row t: every channel's inputs along x then y into d2."""
        for ci in range(spec.cin):
            with k.loop(I64(0), I64(13), "kr") as kr:
                ih = b.add(b.mul(t, I64(8)), b.sub(kr, I64(spec.ph)))
                inside = b.and_(b.icmp_signed(">=", ih, I64(0)), b.icmp_signed("<", ih, I64(h)))
                dst = b.gep(x1, [b.mul(kr, I64(13 * pf))])
                with b.if_else(inside) as (then, other):
                    with then:
                        rowp = b.gep(xn, [b.add(I64(ci * h * w), b.mul(ih, I64(w)))])
                        pts = _x_transform(k, spec, rowp, p * TV, min(TV, ntv - p * TV))
                        for pp in range(13):
                            for n in range(TV):
                                st(pts[pp][n] if n < len(pts[pp]) else zero, dst,
                                   (pp * TV + n) * vw)
                    with other:
                        for q in range(13 * TV):
                            st(zero, dst, q * vw)
            # along y: even rows 0, 2, .., 12 (7) and odd rows 1, .., 11 (6)
            with k.loop(I64(0), I64(13 * TV), "xq") as xq:
                off = b.mul(xq, I64(vw))
                rows = [ld(x1, b.add(off, I64(kr * 13 * pf))) for kr in range(13)]
                for jy, (bt, d) in enumerate([(row, rows[0::2]) for row in bte] +
                                             [(row, rows[1::2]) for row in bto]):
                    st(_lincomb(k, bt, d), d2, b.add(off, I64((ci * 13 + jy) * 13 * pf)))

    # the 49 points by class: (jy < 6, jx < 6) both phases each way; (jy < 6, 1/2) row
    # phases; (1/2, jx < 6) column phases; (1/2, 1/2) neither: [(first jy, first jx, jy
    # count, jx count, phase pairs)], weights in this order a block
    classes = [(0, 0, 6, 6, [(0, 0), (0, 1), (1, 0), (1, 1)]), (0, 6, 6, 1, [(0, 0), (1, 0)]),
               (6, 0, 1, 6, [(0, 0), (0, 1)]), (6, 6, 1, 1, [(0, 0)])]
    wblk = sum(ny * nx * len(ph) for _, _, ny, nx, ph in classes) * spec.cin * R

    def gemm(blk) -> None:
        """Block blk's 49 products into mb: [jy * 7 + jx][r][pass vectors]."""
        wpos = 0
        for y0, x0, ny, nx, phs in classes:
            nterm = spec.cin * len(phs)
            with k.loop(I64(0), I64(ny * nx), "pt") as pt:
                jy = b.add(b.sdiv(pt, I64(nx)), I64(y0))
                jx = b.add(b.srem(pt, I64(nx)), I64(x0))
                wq = b.gep(wt, [b.add(b.mul(blk, I64(wblk)),
                                      b.add(I64(wpos), b.mul(pt, I64(nterm * R))))])
                acc = [[zero] * TV for _ in range(R)]
                tpos = 0
                for ci in range(spec.cin):
                    for py, px in phs:
                        # y point jy + 7 py, x point jx + 7 px (the odd's j is the even's)
                        base = b.mul(b.add(b.mul(b.add(jy, I64(ci * 13 + 7 * py)), I64(13)),
                                           b.add(jx, I64(7 * px))), I64(pf))
                        xs = [ld(d2, b.add(base, I64(n * vw))) for n in range(TV)]
                        for r in range(R):
                            ws = k.splat(b.load(b.gep(wq, [I64(tpos * R + r)])))
                            for n in range(TV):
                                acc[r][n] = k.fma(ws, xs[n], acc[r][n])
                        tpos += 1
                mo = b.mul(b.add(b.mul(jy, I64(7)), jx), I64(R * pf))
                for r in range(R):
                    for n in range(TV):
                        st(acc[r][n], mb, b.add(mo, I64(r * pf + n * vw)))
            wpos += ny * nx * nterm * R

    def output(t, p, blk, pb, p0, p1) -> None:
        """Block blk's 4 x 4 outputs of pass p of tile row t: bias, activation, pooled."""
        pools = [_PoolRow(k, spec, b.add(b.mul(t, I64(4)), I64(iy)), p0, p1)
                 for iy in range(4)]
        with k.loop(I64(0), I64(R), "r") as r:
            co = b.add(b.mul(blk, I64(R)), r)
            bv = k.splat(b.load(b.gep(bias, [co]))) if spec.has_bias else None
            prev3 = [None] * 4  # each conv row's last vector's outputs 4t + 3
            for n in range(TV):
                if p * TV + n >= ntv:
                    continue
                m = [[ld(mb, b.add(b.mul(r, I64(pf)), I64((jy * 7 + jx) * R * pf + n * vw)))
                      for jx in range(7)] for jy in range(7)]
                z = [_out_transform(k, row, None) for row in m]  # [jy][ix]
                ys = [_out_transform(k, [z[jy][ix] for jy in range(7)], bv)
                      for ix in range(4)]  # [ix][iy]
                for iy in range(4):
                    y = [b.fadd(k.act(ys[ix][iy], spec), zero) for ix in range(4)]
                    ep = b.gep(edge, [b.add(b.mul(co, I64(4)), I64(iy))])
                    if n == 0:  # the column left of the pass: the last pass's, or padding
                        prev3[iy] = k.splat(b.load(ep)) if p > 0 else zero
                    pools[iy].store(pb, co, p * TV + n, prev3[iy], y)
                    prev3[iy] = y[3]
                    if n == TV - 1 or p * TV + n == ntv - 1:
                        b.store(b.extract_element(y[3], I32(vw - 1)), ep)

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as it:
        nn, p0, p1, oh0, oh1 = _pool_band(k, spec, it)
        xn = b.gep(x, [b.mul(nn, I64(spec.cin * h * w))])
        pb = b.gep(out, [b.mul(nn, I64(spec.out_sample))])
        t0 = b.ashr(oh0, I64(2))
        t1 = b.ashr(b.add(oh1, I64(3)), I64(2))
        with k.loop(t0, t1, "tr") as t:
            for p in range(npass):
                transform(xn, t, p)
                with k.loop(I64(0), I64(nblk), "blk") as blk:
                    gemm(blk)
                    output(t, p, blk, pb, p0, p1)
    b.ret_void()


def _ring_rows(k: _K, spec: SmallConvSpec, xn, lo, hi, ringp, slot_f: int, one) -> None:
    """For input rows [max(lo, 0), min(hi, h)) of sample ``xn`` and each channel: ``one(row,
    slot)``, the slot the row's channel has in a ring of ``ring_rows`` rows (``slot_f``
    floats a row's channel)."""
    b, h, w = k.b, spec.h, spec.w
    lo = b.select(b.icmp_signed("<", lo, I64(0)), I64(0), lo)
    hi = b.select(b.icmp_signed(">", hi, I64(h)), I64(h), hi)
    with k.loop(lo, hi, "ih") as ih:
        slot = b.and_(ih, I64(spec.ring_rows - 1))
        for ci in range(spec.cin):
            one(b.gep(xn, [b.add(I64(ci * h * w), b.mul(ih, I64(w)))]),
                b.gep(ringp, [b.mul(b.add(b.mul(slot, I64(spec.cin)), I64(ci)),
                                    I64(slot_f))]))


def _umax(b: ir.IRBuilder, a, c):
    """max(a, c) of floats that are >= +0.0 or NaN (an activation that leaves nothing
    negative, then + 0.0): as unsigned integers those order as the floats do, and every NaN
    (either sign) is above every number, so a NaN wins as in torch's max pool. One integer
    max (vpmaxud) where a NaN-propagating float max takes a max, a compare and a blend."""
    ity = ir.VectorType(ir.IntType(32), a.type.count)
    ai, ci = b.bitcast(a, ity), b.bitcast(c, ity)
    return b.bitcast(b.select(b.icmp_unsigned(">", ai, ci), ai, ci), a.type)
