"""ExecutionPlan -> Program: the whole model as a list of kernel calls over one arena.

Each op becomes one or more ``Call``s of a kernel with the common ABI; every pointer and size
in a call's args block is a ``Slot``: an expression in the batch N, a tensor's address (+ an
offset), a constant's offset in the weights blob, or this call's per-thread scratch. Buffers
(activations and per-op temporaries) get arena offsets that are affine in N, packed by
lifetime at build time, so ``run`` derives every address from N alone.

Ops this backend does not lower raise ``Unsupported`` naming the layer; the model then runs on
the executor (numba/BLAS) and its report says why.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np

from sparsecc.codegen.llvm import emit as E_
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import kernels as LK
from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import conv as CV
from sparsecc.formats.cost import l2_bytes
from sparsecc.formats.csr import csr_to_dense
from sparsecc.ir.kinds import conv_out
from sparsecc.ir.plan import ExecutionPlan, Op, Sym
from sparsecc.native import bands as BD
from sparsecc.native import dwsmall as DW
from sparsecc.native import gemm as G
from sparsecc.native import gmean as GM
from sparsecc.native import phase as PH
from sparsecc.native import pool2 as PL2
from sparsecc.native import qlinear as QL
from sparsecc.native import smallconv as SC
from sparsecc.native import tmgather as TG
from sparsecc.native.expr import E, const, dim, lift, linear, numel
from sparsecc.native.kernels import (
    ANY_FNS,
    BINARY_FNS,
    DTYPES,
    RANK,
    REDUCE_FNS,
    UNARY_FNS,
    f64_bits,
)
from sparsecc.options import (
    env_bands,
    env_channel_stride,
    env_expand,
    env_grouped,
    env_kblock,
    env_native_fuse,
    env_native_kernels,
    env_planes,
    env_tail_bytes,
    env_xalign,
)
from sparsecc.runtime.ops import sparse as SP
from sparsecc.runtime.ops.shape import index_from_attr

# int8, one input row: a layer with this fraction of its 4-input groups stored (or more) runs
# as a dense GEMV (contiguous codes, no gathers)
GEMV_Q8_FILL = 0.5
# int8, several rows: with this fraction of the groups stored (or more) the rows run as a
# dense row-blocked kernel (the zero groups cost a dot each, the indices go)
GEMM_Q8_FILL = 0.9
# int8 SpMM / conv: vectors of positions per work item (each group's weight dword reused)
QL_TILE = 4
# Rows of a grouped sparse conv kernel done together: an accumulator (one vector) each of 32
# AVX-512 registers, x and the activation's bounds in the two after them. More rows share
# each loaded x vector among more FMAs (~3 rows a used column at 90 % with 30). 3x3 / 1x1
# ResNet convs at 90 %, in one process: 24 rows 110-131 GFLOP/s, 16 rows 95-112, 12 rows x
# 2 vectors 91-104; 1x1 convs alone, 1 thread, 30 / 24 rows 1.02-1.11x the rate; whole
# models (same process, 2 threads) 30 / 24 rows: ResNet-50 batch 16 / 1 0.944 / 0.977x the
# time, ResNet-18 0.944 / 0.964x, MobileNetV2 0.991 / 0.979x, but MobileNetV2 global
# (layers 6-59 % dense) batch 16 1.02-1.04x: denser layers keep GROUP_ROWS_DENSE.
GROUP_ROWS = 30
GROUP_ROWS_DENSE, GROUP_DENSE_FROM = 24, 0.2
GROUP_ROWS_ALIGNED = 29  # with xalign: x, and the aligned pair it is shifted out of
# AVX2 has 16 registers and no broadcast inside an FMA: an accumulator a row, x and the
# broadcast value after them (the activation's bounds in those two for the epilogue); one
# fewer row where the tile's width leaves a part vector (its lane mask in the last register),
# another where a residual is added to it (a register to load it into).
GROUP_ROWS_AVX2 = 14
# The generic AVX2 kernel's column panels over a conv's x (Lowering._spmm_one): bytes of
# x a panel's slice may take a tile (KernelSpec.tile 8: out's partial sums, rows x 64 floats,
# and the weights streamed through L1 beside it), at least 8 channels a panel.
AVX2_PANEL_X_BYTES = 12 * 1024
# The generic AVX2 kernel over a conv map of at most two tiles with a part vector (the 1x1
# convs over MobileNetV2's 7 x 7 maps at batch 1: 49 floats, a tile of 4 vectors and a
# masked one of 3): no column panels. Every panel of a row stores and reloads its
# accumulators, the masked tile's with vmaskmovps (slow stores on AMD), half the row's
# work here. MobileNetV2 global 90 % batch 1, 2 threads, Zen 3 (bench/op_ab.py, 20 rounds):
# features.14-17's projects 0.72-0.86x the time against L1-sized panels (of >= 64
# channels; 19-40 nonzeros a row a panel). Over 14 x 14 maps (196 floats) no panels were
# 0.95-0.97x at batch 1 but 1.05-1.15x at 16, so those keep them.
AVX2_PART_PANELS = True
AVX2_WIDE = True  # (False: tiles of 4 vectors and L1-sized panels, as before; A/B)
# With AVX2 the grouped code is ~2 bytes an FMA lane (a broadcast instruction beside each
# FMA; AVX-512's broadcast inside the FMA ~0.6), so it wins only where the generic kernel's x
# misses L1 worst and the code is reused over many tiles: maps of at most GROUP_AVX2_SPAN
# floats a sample, calls of at least GROUP_AVX2_MIN_TILES vectors of positions (else the
# generic kernel: two calls, one runs). Zen 3, ResNet-18 90 %, per call, grouped / generic
# time: layer4 (7 x 7) 0.62 at batch 16, 0.73 at 4, 1.0 at 2, 1.2 at 1; layer3 (14 x 14)
# 0.90 at 16, 1.04 at 4; layer2 (28 x 28) 1.5 at 16.
# Since the generic kernel's wide tiles (AVX2_WIDE, over whole vectors) the convs over 7 x 7
# maps whose rows have room for 64 / 56 floats run that instead: ResNet-18 batch 16, per op,
# its layer4 3x3 convs 0.69-0.76x the grouped kernel's time; ResNet-50's 7 x 7 1x1 convs
# 3.2-3.5 against 5.0-5.5 ms. The grouped kernel keeps maps of at most 32 positions and
# those with a part vector (MobileNetV2's 7 x 7 projections, 49 floats apart: 1.5-1.8x
# faster grouped).
GROUP_AVX2_SPAN, GROUP_AVX2_MIN_TILES = 128, 24
# ... for convs with at least this many vectors of output positions a sample. Its code is ~11
# bytes a nonzero against the generic kernel's 6 bytes of value and index, and the code comes
# from memory once a call (a sample, when the batch runs in chunks): ResNet-18 batch 16, per
# layer, grouped / generic 0.71-0.97 with 13-203 vectors, 1.11-1.38 with 4 (layer4, 7 x 7).
GROUP_MIN_TILES = 8
# How a grouped kernel walks a call of several samples (group_block): every group over all
# of them (x re-read from L3 by each group: GROUP_X_WHOLE bytes of x at most), or over
# blocks of samples whose x fits L2 (GROUP_X_BLOCK), every group over a block before the next
# (the code, ~GROUP_CODE_BYTES a nonzero with its value, fetched again a block). Fetching
# code costs more than streaming x (the hardware prefetches data, not instructions):
# GROUP_CODE_WEIGHT. Measured in one process, ResNet-50 / -18 uniform 90 % batch 16, per
# call: blocks took 0.83-0.87x the time on 1x1 convs with many groups (256 -> 1024, 512 ->
# 2048) and 1.10-1.15x on layer4's 3x3 convs (2.6 MB of code, 18 groups).
GROUP_X_WHOLE, GROUP_X_BLOCK = 8 << 20, 512 << 10
GROUP_CODE_BYTES, GROUP_CODE_WEIGHT = 15, 4


def group_block(nnz: int, groups: int, x_sample_bytes: int) -> int:
    """Bytes of x a block of samples holds in a grouped kernel's call (emit.A_GXB, in
    floats there): GROUP_X_BLOCK when re-fetching the code a block costs less than
    re-reading x by every group (both per sample), else GROUP_X_WHOLE."""
    per_block = max(1, GROUP_X_BLOCK // max(x_sample_bytes, 1))
    code = GROUP_CODE_WEIGHT * GROUP_CODE_BYTES * nnz / per_block
    return GROUP_X_BLOCK if code < groups * x_sample_bytes else GROUP_X_WHOLE


# A call over several samples that group_block would run with x re-read by every group
# (GROUP_X_WHOLE) runs its groups in ranges instead when its code and values do not fit L2
# beside one sample's x (group_ranges): each range over every sample before the next, so
# its code comes in once a call and each sample's x once a range. ResNet-50 layer4.0.conv2
# (3x3 / 2, 3.5 MB of code, x 525 KB a sample: 151 MB of x through L3 a call, 46 with 5
# ranges): 8.80 -> 6.66 and 9.75 -> 8.88 ms at batch 16 (Xeon, L2 2 MB, same process, two
# runs); ResNet-18's layer4 convs 21.6 -> 19.8 ms (layer4.0.conv1 4.85 -> 3.56). The 1x1
# convs that group_block puts in sample blocks measured 0.9-1.35x either way: not taken.
GROUP_RANGES = True
# The share of L2 a range's code and values and a sample's x may fill. 0.6 against 0.75 (4
# ranges of ResNet-18's layer4 3x3 convs instead of 3, 1.2 MB of code each instead of 1.5),
# paired per call in one process at batch 16: ResNet-18 layer4.0.conv2 / 4.1.conv1 /
# 4.1.conv2 1.044 / 1.053 / 1.055x and, in a second run, 1.027x on 4.1.conv2 (the others
# within 2 %); ResNet-50 layer4.0-2.conv2 1.026 / 1.025 / 1.055x. 0.45 (5 ranges): 1.013x.
GROUP_RANGE_L2 = 0.6


def group_ranges(nnz: int, groups: int, x_sample_bytes: int) -> int:
    """Groups per range of a grouped kernel's call over several samples (emit.A_GRR; 0:
    one range, group_block alone decides): when its code and values (~GROUP_CODE_BYTES a
    nonzero) and one sample's x overflow GROUP_RANGE_L2 of L2, the fewest ranges whose code
    fits beside that x; 0 too when x alone takes most of it."""
    if not GROUP_RANGES:
        return 0
    budget = GROUP_RANGE_L2 * l2_bytes()
    code = GROUP_CODE_BYTES * nnz
    room = budget - x_sample_bytes
    if code + x_sample_bytes <= budget or room < budget / 4:
        return 0
    ranges = math.ceil(code / room)
    return math.ceil(groups / ranges) if ranges > 1 else 0


# Grouped kernels' row blocks (an item: a block's groups one after another over one tile):
# consecutive groups of about GROUP_BLOCK_NNZ values together, at most GROUP_BLOCK_MAX, so
# the tile's x lines come from L2 once for the block's groups and the block's code stays in
# L1i over the tiles (one group a block before: its x read from L2 by every group). Only
# where a sample still has GROUP_BLOCK_ITEMS items a thread (batch 1's small maps keep
# their items). bench/grouped_samples.py (the emitted code over 16 samples' x, one core,
# 2026-12-06 Xeon): 256 -> 1024 channels 98 -> 105 GFLOP/s in blocks of 3, 128 -> 512 71 ->
# 82, 1024 -> 256 83 -> 87 (1 group = 3072 values: no block).
GROUP_BLOCK_NNZ = 2400
GROUP_BLOCK_MAX = 4
GROUP_BLOCK_ITEMS = 8
# ... and a block's output rows span at most this many bytes (a group's rows times out's row
# stride; 0: unknown, no blocks): over (N, C, H, W) maps of 56 x 56 a group's 30 rows are 30
# pages apart. Without this bound, paired whole calls ran 0.3-1.5 % slower (ResNet-50 b1 /
# b16, MobileNetV2 global b1 / b16).
GROUP_BLOCK_SPAN = 256 << 10


def group_blocks(groups: int, nnz: int, tiles: int, threads: int, group_span: int) -> int:
    """Row blocks of a grouped call of ``groups`` groups and ``nnz`` values over samples of
    ``tiles`` tiles, a group's output rows ``group_span`` bytes apart (GROUP_BLOCK_NNZ):
    ``groups`` for one group a block."""
    if groups <= 1 or nnz <= 0 or group_span <= 0:
        return max(groups, 1)
    k = min(GROUP_BLOCK_MAX, int(GROUP_BLOCK_NNZ * groups // nnz),
            GROUP_BLOCK_SPAN // group_span)
    if k <= 1:
        return groups
    nrb = -(-groups // k)
    if tiles * nrb < GROUP_BLOCK_ITEMS * max(threads, 1):
        return groups
    return nrb


# Tiles outer (emit.A_GRR < 0): every group over a tile before the next tile, for a call
# whose sample's x and code overflow GROUP_OUTER_L2 of L2 (each group would read the
# sample's x from L3 again) while the code alone fits GROUP_OUTER_CODE of it (it streams
# from L2 a tile, and a tile's x stays in L1 across the groups). ResNet-50 uniform 90 %,
# batch 16, 2 threads, per call in one process (paired medians): layer2.1-3.conv1 (x 1.6 MB
# a sample) 1.16 / 1.26 / 1.36x, layer3.0.conv1 1.41x, layer2.0.conv2 (3x3 / 2, phase
# planes 1.8 MB) 1.21x, layer4.0.conv1 1.06x, layer1's banded 1x1 convs level; whole calls
# (same process, paired medians) batch 1 1.07 / 1.09x faster, batch 16 1.01x. Taken for
# every grouped call, it lost 0.72-0.83x on the conv3s (code of up to 69 groups from L2 a tile),
# 0.63x on layer4.0.downsample (3 MB of code). bench/grouped_samples.py (the emitted code
# over 16 samples' x, one core) agrees: tiles outer 1.09-1.15x at 512-2048 columns with x
# from L3, 0.92-0.95x with one sample's x staying in L2.
GROUP_OUTER = True
GROUP_OUTER_L2, GROUP_OUTER_CODE = 0.75, 0.5


def group_tiles_outer(nnz: int, x_sample_bytes: int) -> bool:
    """Whether a grouped call of ``nnz`` values over samples of ``x_sample_bytes`` of x runs
    its tiles outer (emit.A_GRR < 0; see GROUP_OUTER)."""
    budget = l2_bytes()
    code = GROUP_CODE_BYTES * nnz
    return GROUP_OUTER and code + x_sample_bytes > GROUP_OUTER_L2 * budget and \
        code <= GROUP_OUTER_CODE * budget


# Grouped kernels over many input columns: their columns in blocks of whole input channels,
# about this many columns (channels x taps) a block (KernelSpec.kcols), each block's code
# over every tile of the call's samples before the next (the partial sums through out), in
# KBLOCK_ITEMS row blocks a thread, the samples in sets whose x of a block fits
# KBLOCK_X_BYTES. 0: off. A conv with fewer than two such blocks but KBLOCK_HALVES columns
# or more takes two blocks of half its channels (ResNet-50's 1024-channel 1x1 convs). Only
# over maps of at most KBLOCK_TILES vectors a sample (KBLOCK_TILES_S2 at stride 2: at 28 x 28
# a stride-2 conv's four phase planes make a block's x ~1 MB a sample, and it ran slower).
KBLOCK = 576
# ... in the whole-batch tail (over all the call's samples): ResNet-18 b16's layer3 3x3 convs
# (256 channels at 14 x 14) 0.76-0.88x the time with two blocks of 128 channels against four
# of 64, in three same-process runs (bench/op_ab.py), layer4 level (KBLOCK 0 turns both off)
KBLOCK_TAIL = 1152
# ... and at most this many values an item runs over a tile (its row block's nonzeros in one
# column block), so the code an item runs tile after tile stays near ~55 KB: ResNet-18 b16's
# layer3 3x3 convs (59k values, four row blocks) keep two blocks of 128 channels, layer4's
# (236k) eight of 65. KBLOCK_TAIL=576 for all (bench/op_ab.py, one process, profiled
# calls): layer4's 3x3 convs 0.87-0.96x the time, layer3's 1.12-1.20x. 0: off.
KBLOCK_TAIL_NNZ = 7500
KBLOCK_X_BYTES = 512 << 10
KBLOCK_TILES = 64
KBLOCK_TILES_S2 = 16
KBLOCK_ITEMS = 2
KBLOCK_HALVES = 1024


# The depthwise kernel (native.dwsmall) reads x and writes out through their channel
# strides (Lowering.cs; False: the tensors it touches stay dense, as before 2026-12-05, and
# so did all of MobileNetV2's 14 x 14 and 7 x 7 maps) ...
DW_STRIDES = True
# ... and writes its output tile-major (Lowering.tm) where the readers take it so
# (MobileNetV2's projections, grouped kernels). Emerald Rapids Xeon, same process, paired
# plain calls, MobileNetV2 both off / both on: global b16 1.080x, b1 1.095x, uniform b16
# 1.075x, b1 1.092x; DW_TILE_MAJOR alone 1.009x / 1.021x (global), level (uniform b16).
DW_TILE_MAJOR = True
# A residual sum written in place of its addend where the conv's kernel allows it
# (Lowering._in_place): its stores hit the lines the epilogue has just read instead of lines
# fetched for ownership. Emerald Rapids Xeon, paired plain calls, off / on: ResNet-50 b16
# 1.016-1.022x, ResNet-18 b16 1.033x, MobileNetV2 global b16 1.016x, b1 level.
RES_IN_PLACE = True

# A 1x1 expand conv denser than this stays a conv of its own (its grouped kernel) instead of
# being computed inside the depthwise conv after it a channel at a time. MobileNetV2 with
# ImageNet weights at the global profile (expand convs 6-59 % dense), same process, every
# expand inside / <= 25 % / <= 15 % / none: batch 16 27.3 / 25.5 / 25.0 / 25.7 ms (and
# 25.9 / 23.7 / 23.7 at 1 / 0.25 / 0.15 in another run), batch 1 2.04 / 1.94 / 1.93 / 2.03;
# at the uniform profile (10 %) inside wins (b16 29.5 / 30.8 ms, b1 1.378 / 1.446).
EXPAND_MAX_DENSITY = 0.15
# ... unless its output is over EXPAND_BIG_L2 x a core's L2 a sample (it would go to L3 and
# back): MobileNetV2 global, features.2's expand (16 -> 96 at 112 x 112, 4.8 MB) inside, its
# block 0.586 -> 0.389 ms at batch 1; whole calls, same process, batch 1 / 16: 1.054x /
# 1.058x (paired medians 1.048x / 1.044x); no other expand of MobileNetV2's is that big.
EXPAND_BIG_L2 = 1.0
# An expand conv inside at least this dense is computed EXPAND_BLOCK channels at a time,
# dense (DepthwiseSpec.ex_block): one x vector load feeds 4 FMAs, where the channel at a
# time kernel loaded x for every nonzero. MobileNetV2 global 90 % batch 1 (features.2's
# expand, 16 -> 96 at 112 x 112, 59 % dense), per call in one process, 2 threads:
# features.2 0.364 -> 0.316 ms (paired 1.15x; with the planes in scratch 0.440 -> 0.363,
# 1.21x, in a slower hour); 2 / 6 channels at a time 0.87x / 0.97x the rate of 4. Whole
# calls were level at batch 1 (0.999 paired, a noisy hour) and 1.05x at 16.
EXPAND_BLOCK, EXPAND_BLOCK_DENSITY = 4, 0.3
# With AVX2 (16 registers: 4 channels x 2 vectors a step) the blocks only where the expand's
# input is over a core's L2 a sample, each channel at a time pass reading it from L3 again:
# MobileNetV2 global, features.2 (16 -> 96 at 112 x 112, 59 % dense, 800 KB a sample), Zen 3,
# same process (bench/op_ab.py): 0.88x the op's time at batch 16, 0.96x at 1; features.3-7
# (input 0.2-0.3 MB, in L2) 1.1-1.5x slower in blocks.
EXPAND_BLOCK_AVX2 = True


def expand_inside(density: float, c: int, hw: int) -> bool:
    """Whether a 1x1 expand conv (``density`` of its weight, ``c`` output channels over
    ``hw`` positions) may be computed inside the depthwise conv after it: at most
    EXPAND_MAX_DENSITY dense, or its output over EXPAND_BIG_L2 x a core's L2 a sample
    (Lowering._expand_reader; the format choice's select_format._expand_inside)."""
    return density <= EXPAND_MAX_DENSITY or \
        bool(EXPAND_BIG_L2 and 4 * c * hw > EXPAND_BIG_L2 * l2_bytes())


class Unsupported(Exception):
    """An op the native backend does not lower (yet); the message names it."""


@dataclass(frozen=True)
class Slot:
    kind: str  # "int" | "tensor" | "weight" | "scratch" | "err"
    expr: E | None = None  # int value, or byte offset from the tensor's start
    name: str = ""  # tensor / temporary name; weight name


def I(v) -> Slot:  # noqa: E743 (an int slot)
    return Slot("int", lift(v))


def F(v: float) -> Slot:
    return Slot("int", const(f64_bits(v)))


def T(name: str, elem_off=0, itemsize: int = 4) -> Slot:
    return Slot("tensor", lift(elem_off) * itemsize, name)


def W(name: str) -> Slot:
    return Slot("weight", None, name)


SCRATCH = Slot("scratch")
THREADS = Slot("threads")
ERR = Slot("err")


@dataclass
class Kernel:
    """A kernel the library links: numba-authored (``numba``: its name in native.kernels), one
    emitted into the main module (``ir``: a spec with ``key`` and ``emit(module, name)``: the
    dense GEMM's GemmSpec, transpose/attention/layer-norm specs) or a sparse LLVM kernel
    (``sparse``: spec+pattern)."""

    symbol: str
    kind: str
    ir_spec: object | None = None
    spec: E_.KernelSpec | None = None
    pattern: E_.Pattern | None = None


@dataclass
class Call:
    kernel: str  # Kernel.symbol
    args: list[Slot]
    items: E
    cost: float  # rough flops per item: small calls run on the calling thread
    scratch: int = 0  # floats of per-thread scratch
    # run only when every (expr, "==" | "!=" | "<" | ">=", value) holds
    only_if: list[tuple[E, str, int]] | None = None
    op: int = 0  # the plan op it belongs to (profiles)
    band: BD.Band | None = None  # its place in a run of row bands (native.bands)


@dataclass
class Buffer:
    name: str
    nbytes: E
    first: int  # op index of the first write
    last: int  # op index of the last use
    offset: tuple[int, int] = (0, 0)  # (a, b): arena byte offset a*N + b
    lead: int = 0  # bytes of slack the buffer holds before the tensor (within nbytes)
    # another buffer whose bytes this one takes over (_pack: at its offset, which stays this
    # one's until its last use): a residual sum written in place of its addend (RES_IN_PLACE)
    share: str = ""


@dataclass(frozen=True)
class RowsGeom:
    """Rows planes of a 3x3 conv's input (Lowering._rows_geom), for its output's h rows of w
    positions. Stride 1: one plane a channel (c channels), its rows after a zero row and
    before 1 + e, ps = w * (h + 2 + e) floats apart. Stride 2: four a channel, the phases of
    x's rows and columns, w * (h + 1 + e) apart. They start f floats into a sample's
    per_sample floats."""

    c: int
    h: int
    w: int
    e: int
    ps: int
    f: int
    per_sample: int
    stride: int = 1


@dataclass
class Program:
    plan: ExecutionPlan
    calls: list[Call] = field(default_factory=list)
    kernels: dict[str, Kernel] = field(default_factory=dict)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # blob members by name
    labels: dict[int, str] = field(default_factory=dict)  # op index -> kernel label
    arena: tuple[int, int] = (0, 0)  # bytes: a*N + b
    scratch_per_thread: int = 0  # floats
    argspace_slots: int = 0  # i64 slots of all args blocks (+1: the error flag)
    # > 0: a batch over this many samples runs as chunks of it (batch_chunk), each chunk
    # through the whole model; bytes per sample of each input and output, to step through them
    chunk: int = 0
    sample_bytes: tuple[list[int], list[int]] = ([], [])
    # the fewest samples a chunk holds (batch_min_chunk); a batch of N >= split x min_chunk
    # runs in chunks of N // split samples within [min_chunk, chunk] (module._sample_chunk)
    min_chunk: int = 1
    split: int = 2
    # > 0 (with chunk): calls [tail, len(calls)) run once over the whole batch after the
    # chunks ran calls [0, tail) (tail_split). Buffers written before and read after the
    # split (``boundary``, N x bytes each) sit at the arena's start, ``boundary_offsets``
    # (bytes a sample) apart; the head's buffers are offset in ``arena``, the tail's in
    # ``tail_arena``, both placed after the boundary.
    tail: int = 0
    boundary: list[str] = field(default_factory=list)
    boundary_offsets: list[int] = field(default_factory=list)
    boundary_sizes: list[int] = field(default_factory=list)  # bytes a sample each
    boundary_bytes: int = 0  # a sample
    tail_arena: tuple[int, int] = (0, 0)
    tail_outputs: list[str] = field(default_factory=list)  # plan outputs the tail writes
    # > 1: the tail's batch runs in this many chunks of whole samples, sample-parallel (each
    # thread its own chunk through every tail call), when each holds tail_min_chunk samples
    tail_chunks: int = 0
    tail_min_chunk: int = 1
    # with a tail: ops at which the head starts a new segment (head_segments). Each segment
    # runs over every chunk of the batch before the next; the tensors crossing a cut sit in
    # the boundary region as the tail's do.
    segments: list[int] = field(default_factory=list)
    # activations whose channels lie this many floats apart (Lowering.cs), not H*W
    channel_strides: dict[str, int] = field(default_factory=dict)
    # activations held tile-major (Lowering.tm): name -> floats a tile (C x 16)
    tile_major: dict[str, int] = field(default_factory=dict)
    # the packed ones held tile-major in the packed variant (Lowering.pktm): name -> floats
    # from one tile of a block to the next
    pk_tile_major: dict[str, int] = field(default_factory=dict)
    # with row bands in the head (native.bands): the program lowered without them, whose
    # head runs instead unless the head runs one sample on one thread (module._emit_chunks)
    alt_head: Program | None = None

    def blob(self) -> tuple[bytes, dict[str, int]]:
        """The weights blob (each member 64-byte aligned) and the offset of each member."""
        parts, offs, pos = [], {}, 0
        for name, arr in self.weights.items():
            raw = np.ascontiguousarray(arr).tobytes()
            offs[name] = pos
            pad = -len(raw) % 64
            parts += [raw, b"\0" * pad]
            pos += len(raw) + pad
        return b"".join(parts), offs


# ---- helpers ------------------------------------------------------------------------------
def _strides(shape: list[E]) -> list[E]:
    out, acc = [], const(1)
    for d in reversed(shape):
        out.append(acc)
        acc = acc * d
    return out[::-1]


def _collapse(dims: list[E], *strides: list[E]) -> tuple[list[E], list[list[E]]]:
    """Merge neighbouring dims that every stride list walks contiguously (an elementwise op
    over (1, 1024, 14, 14) is one run of 200k, not 14336 rows of 14), drop 1-sized dims, and
    split a long last run into rows of at most 4096 so threads share it."""
    ds, ss = [], [[] for _ in strides]
    for i, d in enumerate(dims):
        if d.is_const() and d.value == 1:
            continue
        if ds and all(ss[j][-1] == strides[j][i] * d for j in range(len(strides))):
            ds[-1] = ds[-1] * d
            for j in range(len(strides)):
                ss[j][-1] = strides[j][i]
            continue
        ds.append(d)
        for j in range(len(strides)):
            ss[j].append(strides[j][i])
    if not ds:
        return [const(1)], [[const(1)] for _ in strides]
    last = ds[-1]
    unit = all(s_[-1].is_const() and s_[-1].value == 1 for s_ in ss)
    if unit and last(1) > 4096:
        # rows of c floats, c dividing the run at every batch (its batch-free factor)
        free = last(1) if last.is_const() else math.gcd(last(1), last(2))
        c = max((c for c in range(256, 4097) if free % c == 0), default=0)
        if c:
            ds[-1:] = [last.fdiv(c), const(c)]
            for s_ in ss:
                s_[-1:] = [const(c), const(1)]
    return ds, ss


def _pad(shape: list[E], strides: list[E], fill=1, sfill=0) -> tuple[list[E], list[E]]:
    if len(shape) > RANK:
        raise Unsupported(f"rank {len(shape)} > {RANK}")
    k = RANK - len(shape)
    return [const(fill)] * k + list(shape), [const(sfill)] * k + list(strides)


def _act(op: Op) -> tuple[str, float, float]:
    return op.attrs.get("act", "none"), float(op.attrs.get("act_a", 0.0)), \
        float(op.attrs.get("act_b", 0.0))


def _fused(act: str, generic: bool = False) -> str:
    """The activation a kernel applies itself (``generic``: an IR-builder spmm, never baked)."""
    return act if act in (E_.GENERIC_ACTS if generic else E_.FUSED_ACTS) else "none"


class Lowering:
    def __init__(self, plan: ExecutionPlan, vw: int, threads: int, features: str = "",
                 tail_from: int | None = None, dense: frozenset[str] = frozenset(),
                 band_major: dict[str, int] | None = None, nopack: frozenset[str] = frozenset(),
                 untiled: frozenset[str] = frozenset(),
                 pk_untiled: frozenset[str] = frozenset(),
                 band_rings: dict[str, int] | None = None):
        self.plan, self.vw, self.threads = plan, vw, max(1, threads)
        # packed tensors a packed call did not take tile-major (lower_program's retries)
        self.pk_untiled = pk_untiled
        # tensors held with the batch packed into the positions at batches where that takes
        # fewer vectors (_pack_set, _pack_gain; ``nopack``: lower_program's retries, a call
        # made for them that cannot take that layout), whether the op being lowered is in
        # its packed variant, the conditions every call made takes (_dual), and the packed
        # variant's calls that take the layout (_packed)
        self.nopack = nopack
        self.pk: set[str] = set()
        self.pk_hw = 0  # their maps' positions
        self.pk_on = False
        self.guard: list = []
        self.pk_aware: set[int] = set()
        # PACK_MASKED: op index -> whether its packed variant is one (_pkm); the packed
        # tensors such a conv reads in place, whose buffers get a line of slack before them
        # (the kernel's first reads) and two after (Buffer.lead)
        self._pkm_memo: dict[int, bool] = {}
        self.pk_slack: set[str] = set()
        # the packed phase planes such a stride-2 conv made of its x: x -> the temporary (a
        # stride-2 1x1 conv of the same x reads their even / even plane: _shifted_direct_pk)
        self.pkm_x: dict[str, str] = {}
        # tensors held band-major (native.bands.band_layout): root -> rows a band
        self.band_major = band_major or {}
        # ... and the bands in the ring of each that a gather reads in its run (the table
        # names each position's place in the ring: _tm_gather)
        self.band_rings = band_rings or {}
        # the op the whole-batch tail starts at (lower_program's second pass), else None
        self.tail_from = tail_from
        # activations whose channels lie a multiple of 16 floats apart (name -> that
        # stride): every (N, C, H, W) float32 tensor between ops with H*W not one already,
        # except ``dense`` (lower_program's retries: a call that does not take the stride
        # touched them)
        self.cs: dict[str, int] = _strided(plan, dense) if env_channel_stride() else {}
        self.aware: set[int] = set()  # calls that take those strides (_aware)
        self.undo: set[str] = set()  # of those, tensors to lower dense after all (_same_cs)
        # tile-major activations (TILE_MAJOR; name -> floats a tile), chosen in run() once
        # the packed ones are known; ``untiled``: lower_program's retries (a call made for
        # them does not take the layout)
        self.untiled = untiled
        self.tm: dict[str, int] = {}
        # packed tensors held tile-major within a block in the packed variant (PACK_TILE_MAJOR)
        self.pktm: dict[str, int] = {}
        # call index -> the tile-major tensors it takes as such (_tm_aware)
        self.tm_aware: dict[int, set[str]] = {}
        self.untm: set[str] = set()  # of those, tensors to lower untiled after all
        self.tm_names: list[str] = []  # the tile-major tensors of the calls being made
        self.features = set(features.split(","))  # LLVM's "+avx512vnni,..." of the target
        self.p = Program(plan)
        self.i = 0  # current op index
        self.band: BD.Band | None = None  # the calls' place in row bands (_banded)
        # conv outputs left in their wide rows for the pool that reads them: name -> (the
        # temporary holding them, its row length)
        self.wide: dict[str, tuple[str, int]] = {}
        # op index -> the padded planes the shifted conv before it wrote (_planes_reader)
        self.planes_in: dict[int, str] = {}
        # dual planes the conv writing them wrote both copies of (DUAL_WRITE); whether the
        # last spmm asked for that could not (Lowering.spmm's ``ods``)
        self.dual_written: set[str] = set()
        self.ods_missed = False
        self.wrap_missed = False  # (the same for KernelSpec.wrap: Lowering.spmm's ``wrap``)
        self._rows_memo: dict[int, RowsGeom | None] = {}
        # stride-2 rows planes a phase pass made of a tensor: name -> (the temporary, its
        # geometry, the op): a stride-2 1x1 conv of the same tensor reads their (1, 0)
        # phase (_shared_phase)
        self.rows_x: dict[str, tuple[str, RowsGeom, int]] = {}
        # residual adds fused into the conv before them: add op index -> (conv op index, the
        # conv's own output, which is never written)
        self.fused: dict[int, tuple[int, str]] = {}
        # calls that read a residual only at the offsets they write the sum, each element
        # read before it is written, so the sum may take the residual's bytes (RES_IN_PLACE)
        self.res_in_place: list[Call] = []
        # int8 1x1 convs whose input codes the kernel writing that input wrote (their input
        # pass disappears): reader op index -> (the codes' temporary, dwords a sample)
        self.q8_in: dict[int, tuple[str, int]] = {}
        self.q8_dropped: set[str] = set()  # the tensors only as codes (no float32 copy)
        # 1x1 expand convs computed inside the depthwise conv after them, a channel at a
        # time: depthwise op index -> (the expand op, its activation, CSR, bias)
        self.expand_in: dict[int, tuple[Op, tuple[str, float, float], tuple, str | None]] = {}
        # head permutes fused into the sparse linear beside them (_head_permutes): linear op
        # index -> (the permute's output it writes, B, S, H, D) / (the tensor it reads, ...)
        self.dst_heads: dict[int, tuple[str, E, E, E, E]] = {}
        self.src_heads: dict[int, tuple[str, E, E, E, E]] = {}
        # attention's q / k left in the features x tokens layout of the sparse linear that
        # computed them (no output transpose; attention reads them there): the permute's
        # output -> the row stride (floats)
        self.kn_heads: dict[str, E] = {}
        # the residual stream's tensors held as features x tokens (_kn_stream)
        self.kn_res: set[str] = set()
        # a row-major input already transposed to features x batch by an earlier sparse
        # linear (q, k and v read one tensor): (its name, the transpose's run condition) ->
        # the temporary holding it
        self.xt_of: dict[tuple, str] = {}

    # ---- shapes, constants, temporaries ---------------------------------------------------
    def shape(self, name: str) -> list[E]:
        return [dim(d) for d in self.plan.tensors[name].shape]

    def example(self, name: str) -> tuple[int, ...]:
        n = max(2, self.plan.example_batch)
        return tuple(d.k * n if isinstance(d, Sym) else d for d in self.plan.tensors[name].shape)

    def const(self, name: str, arr: np.ndarray | None = None) -> Slot:
        if name not in self.p.weights:
            a = self.plan.constants[name] if arr is None else arr
            self.p.weights[name] = np.ascontiguousarray(a)
        return W(name)

    def derived(self, tag: str, arr: np.ndarray) -> Slot:
        """A constant computed here (a transposed weight, split points): named by content."""
        arr = np.ascontiguousarray(arr)
        h = hashlib.sha256(arr.tobytes() + str((arr.dtype, arr.shape)).encode()).hexdigest()
        return self.const(f"~{tag}.{h[:16]}", arr)

    def bias_slot(self, bias: str | None) -> Slot:
        """A dense layer's bias constant, or a zero to point at (has_bias off)."""
        return self.const(bias) if bias else self.derived("zero", np.zeros(1, np.float32))

    def temp(self, tag: str, nbytes: E) -> str:
        name = f"~tmp{self.i}.{'pk.' if self.pk_on else ''}{tag}"
        assert name not in self.p.buffers, name  # two temporaries of one op share a tag
        self.p.buffers[name] = Buffer(name, nbytes, self.i, self.i)
        return name

    def call(self, kernel: str, args: list[Slot], items: E, cost: float, scratch: int = 0,
             only_if=None) -> None:
        conds = (_conds(only_if) or []) + self.guard
        self.p.calls.append(Call(kernel, args, lift(items), float(cost), scratch,
                                 conds or None, self.i, self.band))

    @contextmanager
    def _banded(self, band: BD.Band | None):
        """The calls made inside may run in row bands (native.bands) as ``band`` says."""
        before, self.band = self.band, band
        try:
            yield
        finally:
            self.band = before

    def numba(self, name: str) -> str:
        self.p.kernels.setdefault(name, Kernel(name, "numba"))
        return name

    @contextmanager
    def _aware(self, ok: bool = True):
        """The calls made inside take the channel strides of every tensor they touch
        (Lowering.cs); the others may not touch such a tensor (run's check)."""
        n0 = len(self.p.calls)
        yield
        if ok:
            self.aware.update(range(n0, len(self.p.calls)))

    @contextmanager
    def _tm_aware(self, *names: str | None):
        """The calls made inside take the tile-major layout (Lowering.tm) of ``names``; a
        call touching any other tile-major tensor makes it untiled on the retry (run's
        check), as does one whose kernel is not grouped (_spmm_one)."""
        n0 = len(self.p.calls)
        self.tm_names = [n for n in names if n is not None and (n in self.tm or
                                                                self._pk_tiled(n))]
        try:
            yield
        finally:
            took = set(self.tm_names)
            self.tm_names = []
        for ci in range(n0, len(self.p.calls)):
            self.tm_aware.setdefault(ci, set()).update(took)

    def _tiled(self, name: str | None) -> int:
        """Floats from one 16-position tile of ``name`` to the next when it is tile-major
        (its channels are then 16 floats apart), else 0."""
        return self.tm.get(name, 0) if name is not None else 0

    def _pk_tiled(self, name: str | None) -> int:
        """_tiled for a packed tensor in the packed variant (Lowering.pktm): floats from one
        tile of a block to the next, else 0."""
        if not self.pk_on or name is None or name not in self.plan.tensors:
            return 0
        return self.pktm.get(self.plan.storage_root(name), 0)

    def _pk_out_strides(self, spec, out: str, other: str | None, span: int, xts: int):
        """(spec, out's channel stride) of a packed grouped call: x's tile stride ``xts``
        (0: channels ``span`` floats apart), out's and the residual's where they are held
        tile-major (Lowering.pktm: channels 16 floats apart, tiles C x 16), the residual's
        channel stride where it differs from out's."""
        ots, rts = self._pk_tiled(out), self._pk_tiled(other)
        ors = 16 if ots else span
        spec = replace(spec, xts=xts, ots=ots, rts=rts)
        if other is not None:
            rcs = 16 if rts else span
            spec = replace(spec, res_rs=rcs if rcs != ors else 0)
        return spec, ors

    def _to_tiles(self, kernel: str, src: str, out: str, nb, c: int, cs: int, ho: int, wo: int,
                  row: int, step: int = 1, base: int = 0) -> None:
        """A call of ``kernel`` (k_crop_pktm / k_gather_pktm: kernels._to_tiles) filling the
        packed, tile-major ``out`` (PACK_B samples' ho x wo positions a block, c channels)
        from ``src`` (samples c x cs floats apart, channels cs): position (i, j) of a sample
        from float base + i x row + j x step of its channel, through a table."""
        pos = np.arange(PACK_B * ho * wo)
        s_, q = np.divmod(pos, ho * wo)
        i_, j_ = np.divmod(q, wo)
        table = (s_ * c * cs + base + i_ * row + j_ * step).astype(np.int32)
        tiles = PACK_B * ho * wo // 16
        with self._packed(), self._tm_aware(out):
            self.call(self.numba(kernel),
                      [T(src), T(out), I(nb), I(c), I(cs), I(PACK_B), I(tiles),
                       self.derived(f"{kernel}_src", table),
                       self.derived(f"{kernel}_samp", s_.astype(np.int32))],
                      lift(nb).cdiv(PACK_B) * tiles, float(16 * c))

    def _pk_tile_major(self) -> dict[str, int]:
        """PACK_TILE_MAJOR's tensors: the packed ones (not ``pk_untiled``), which the packed
        variant holds tile-major within a block, (tiles, C, 16): a tile is 16 positions of
        the block's samples, its channels one cache line apart, where every packed call
        touching the tensor is a grouped 1x1 conv that takes it (x, out or residual; run's
        check makes the others untiled on the retry)."""
        if not PACK_TILE_MAJOR or not self.pk:
            return {}
        return {name: self.shape(name)[1].value * 16 for name in sorted(self.pk)
                if name not in self.pk_untiled}

    def _tile_major(self) -> dict[str, int]:
        """TILE_MAJOR's candidates: float32 (N, C, H, W) activations between ops (not views
        or viewed, not the plan's inputs or outputs) whose sample takes C x H x W rounded up
        to 16 floats a channel as it is laid out (H*W a multiple of 16, or channel-strided to
        its round-up), not packed, not band-major, not ``untiled``."""
        if not TILE_MAJOR or self.vw != 16 or not env_grouped():
            return {}
        skip = self.untiled | self.pk | set(self.band_major)
        return {name: c * 16 for name, (c, h, w) in _maps(self.plan, skip).items()
                if h * w >= 16 and (h * w % 16 == 0 or self.cs.get(name) == _round16(h * w))}

    def _same_cs(self, a: str, b: str) -> None:
        """Tensors one call reads and writes at the same offsets (a residual and the sum):
        when only one has a channel stride, it is lowered dense on the retry."""
        if (a in self.cs) != (b in self.cs):
            self.undo.add(a if a in self.cs else b)

    def _cstride(self, name: str) -> int:
        """Floats from one channel of ``name`` (N, C, H, W) to the next."""
        if self._pk(name):
            _, _, h, w = self.shape(name)
            return PACK_B * h.value * w.value
        if name in self.cs:
            return self.cs[name]
        _, _, h, w = self.shape(name)
        return h.value * w.value

    # ---- the batch packed into the positions (PACK) -------------------------------------
    def _pack_set(self) -> set[str]:
        """The tail's tensors to hold packed (at the batches _pack_gain picks): float32 (N, C,
        H, W) activations with H * W <= PACK_MAPS positions, not a multiple of 16, written
        in the tail (never across its boundary), no view of them, not a plan input or
        output; of those, the ones with the most common H * W (one batch rule for all).
        Each op touching one lowers twice (_dual); a call that cannot take the layout drops
        its tensors (_Unpack, lower_program's retry)."""
        plan = self.plan
        if not PACK or self.vw != 16 or self.tail_from is None:
            return set()
        views = {plan.storage_root(n) for n, t in plan.tensors.items() if t.alias_of is not None}
        written = {}
        for j, op in enumerate(plan.ops):
            written.setdefault(op.output, j)
        out: dict[int, set[str]] = {}
        for name, t in plan.tensors.items():
            shape = t.shape
            if name in plan.inputs or name in plan.outputs or name in plan.constants or \
                    name in views or t.alias_of is not None or name in self.nopack or \
                    name in self.band_major or t.dtype != "float32" or len(shape) != 4 or \
                    not (isinstance(shape[0], Sym) and shape[0].k == 1) or \
                    any(isinstance(d, Sym) for d in shape[1:]):
                continue
            hw = int(shape[2]) * int(shape[3])
            if hw <= PACK_MAPS and hw % 16 and written.get(name, -1) >= self.tail_from:
                out.setdefault(hw, set()).add(name)
        if not out:
            return set()
        self.pk_hw = max(out, key=lambda h: (len(out[h]), h))
        return out[self.pk_hw]

    def _pack_gain(self, nb) -> E:
        """>= 0 at the batches N that run packed: where N's blocks take no more vectors of
        positions than N samples of pk_hw positions a channel do (at 7 x 7: N = 13-16, 25-32,
        37-48 and 49 on; not 17-24, where a second block is mostly padding)."""
        per = -(-self.pk_hw // self.vw)
        return lift(nb) * per - lift(nb).cdiv(PACK_B) * (PACK_B * self.pk_hw // self.vw)

    def _pk(self, name: str | None) -> bool:
        """Whether ``name`` is held packed in the call being made (the packed variant)."""
        return self.pk_on and name is not None and name in self.plan.tensors and \
            self.plan.storage_root(name) in self.pk

    def _pk_touch(self, i: int) -> bool:
        """Whether op i reads or writes a packed tensor, or the add or activation it may
        take over (its only reader) does."""
        if not self.pk:
            return False
        plan = self.plan
        op = plan.ops[i]
        names = [*op.inputs, op.output]
        j = self._only_reader(op.output) if op.output in plan.tensors else None
        if j is not None and plan.ops[j].kind in ("binary", "act"):
            names += [*plan.ops[j].inputs, plan.ops[j].output]
        return any(plan.storage_root(n) in self.pk for n in names if n in plan.tensors)

    @contextmanager
    def _packed(self):
        """The calls made inside take the packed layout of every packed tensor they touch
        (the others may not touch one: _dual's check)."""
        n0 = len(self.p.calls)
        with self._aware():
            yield
        self.pk_aware.update(range(n0, len(self.p.calls)))

    def _dual(self, op: Op, fn) -> str:
        """Op ``fn(op)`` lowered twice: packed, its calls run at the batches _pack_gain
        picks, then plain at the others. Both variants must leave the cross-op state alike
        (the same adds taken over; no planes or rows left for a later op, which would then
        read one variant's); otherwise, or when a packed call does not take the layout, its
        packed tensors are dropped (_Unpack)."""
        plan = self.plan
        touched = frozenset(plan.storage_root(n) for n in [*op.inputs, op.output]
                            if n in plan.tensors) & self.pk
        j = self._only_reader(op.output) if op.output in plan.tensors else None
        if j is not None:
            touched |= frozenset(plan.storage_root(n) for n in
                                 [*plan.ops[j].inputs, plan.ops[j].output]) & self.pk
        nb = next(self.shape(n)[0] for n in sorted(touched))

        def state():
            return (dict(self.planes_in), dict(self.wide), dict(self.fused), dict(self.q8_in),
                    dict(self.expand_in))

        before = state()
        n0 = len(self.p.calls)
        self.pk_on, self.guard = True, [(self._pack_gain(nb), ">=", 0)]
        try:
            packed = fn(op)
        finally:
            self.pk_on, self.guard = False, []
        after_pk = state()
        bad = {plan.storage_root(sl.name) for ci in range(n0, len(self.p.calls))
               if ci not in self.pk_aware for sl in self.p.calls[ci].args
               if sl.kind == "tensor" and sl.name in plan.tensors and
               plan.storage_root(sl.name) in self.pk}
        if bad:
            raise _Unpack(frozenset(bad))
        (self.planes_in, self.wide, self.fused, self.q8_in, self.expand_in) = \
            (dict(d) for d in before)
        self.guard = [(self._pack_gain(nb), "<", 0)]
        try:
            plain = fn(op)
        finally:
            self.guard = []
        after = state()
        # (planes the plain variant left for a PACK_MASKED conv: its plain variant reads
        # them, its packed one runs over the packed maps)
        for j in set(after[0]) - set(before[0]) - set(after_pk[0]):
            if self._pkm(j):
                after[0].pop(j)
        # (and a packed tensor's wide rows the plain variant left for a 2 x 2 max pool: its
        # packed variant reads the packed maps, op_pool2d; kept, but not compared)
        seen = [dict(d) for d in after]
        for t in set(after[1]) - set(before[1]) - set(after_pk[1]):
            j = self._pool_reader(t)
            if j is not None and self._pool2_ir(plan.ops[j]) and plan.storage_root(t) in self.pk:
                seen[1].pop(t)
        grew = any(set(a) - set(b) for k, (a, b) in enumerate(zip(seen, before)) if k != 2)
        if grew or [set(d) for d in seen] != [set(d) for d in after_pk] or \
                after[2] != after_pk[2]:
            raise _Unpack(touched)
        if packed == plain:
            return plain
        return f"{packed}, batch packed in {PACK_B}s where that fills more lanes; else {plain}"

    def _pk_need(self, *names: str | None) -> bool:
        """In the packed variant: whether the call about to be made over ``names`` (None:
        absent) runs packed; all of them packed, or none (else _Unpack)."""
        names = tuple(n for n in names if n is not None)
        if not self.pk_on:
            return False
        got = [self._pk(n) for n in names]
        if any(got) and not all(got):
            raise _Unpack(frozenset(self.plan.storage_root(n) for n in names
                                    if n in self.plan.tensors) & self.pk)
        return bool(got) and all(got)

    def _pk_unpack(self, *names: str | None) -> None:
        """A path that cannot take the packed layout: drop the packed ones of ``names``."""
        if self.pk_on:
            got = frozenset(self.plan.storage_root(n) for n in names
                            if n is not None and self._pk(n))
            if got:
                raise _Unpack(got)

    def _phase_io(self, x: str, nb) -> list[Slot]:
        """A phase pass's args after ps: x's channel stride, how x's samples lie (packed or
        plain), plain planes."""
        if self._pk(x):
            _, _, h, w = self.shape(x)
            return [I(PACK_B * h.value * w.value), I(PACK_B), I(h.value * w.value), I(1),
                    I(0), I(nb)]
        return [I(self._cstride(x))] + [I(v) for v in PH.plain(nb)]

    def _phase_n(self, x: str, nb):
        """The samples a pass reading ``x`` runs items for: N, or N rounded up to a block when
        x is packed (the block's samples are the items' fastest index)."""
        return lift(nb).cdiv(PACK_B) * PACK_B if self._pk(x) else nb

    def _panels(self, cin: int, span: int) -> int:
        """Panels of a packed block's tiles whose x (cin rows of a tile) fits
        PACK_PANEL_BYTES."""
        tiles = span // self.vw
        per = max(1, PACK_PANEL_BYTES // (cin * self.vw * 4))
        return -(-tiles // per)

    def ir_kernel(self, spec) -> str:
        self.p.kernels.setdefault(spec.key, Kernel(spec.key, "ir", ir_spec=spec))
        return spec.key

    def sparse_kernel(self, spec: E_.KernelSpec, pattern: E_.Pattern | None) -> str:
        sym = "sp_" + hashlib.sha256(spec.key.encode()).hexdigest()[:20]
        self.p.kernels.setdefault(sym, Kernel(sym, "sparse", spec=spec, pattern=pattern))
        return sym

    def act_pass(self, out: str, act: str, a: float, b: float) -> None:
        if act != "none":
            self.act_on(out, (act, a, b))

    # ---- driver ---------------------------------------------------------------------------
    def run(self) -> Program:
        plan = self.plan
        roots = {name: plan.storage_root(name) for name in plan.tensors}
        self._head_permutes()
        self._kn_stream()
        self.pk = self._pack_set()
        self.tm = self._tile_major()
        self.pktm = self._pk_tile_major()
        for i, op in enumerate(plan.ops):
            self.i = i
            if i in self.fused:
                conv = plan.ops[self.fused[i][0]]
                self.p.labels[i] = f"fused into {conv.layer or conv.name}"
                continue
            fn = getattr(self, "op_" + op.kind, None)
            if fn is None:
                raise Unsupported(f"{op.layer or op.name}: {op.kind} is not native yet")
            ncalls = len(self.p.calls)
            try:
                label = self._dual(op, fn) if self._pk_touch(i) else fn(op)
            except Unsupported as exc:
                raise Unsupported(f"{op.layer or op.name}: {exc}") from None
            except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
                # an attribute the verifier lets default (the executor applies the default)
                raise Unsupported(f"{op.layer or op.name}: cannot lower {op.kind} "
                                  f"({type(exc).__name__}: {exc})") from None
            if op.kind != "reshape" or len(self.p.calls) > ncalls:
                self.p.labels[i] = label or "native"
        if self.expand_in:  # an expand conv left to a depthwise conv that did not take it
            raise Unsupported(f"expand convs not run: {sorted(self.expand_in)}")
        if self.planes_in:  # padded planes written for a conv that did not read them
            raise Unsupported(f"padded planes not read: {sorted(self.planes_in)}")
        for call in self.p.calls:  # a constant read as a tensor (a cat of a constant, ...)
            for slot in call.args:
                if slot.kind == "tensor" and slot.name in plan.constants:
                    self.const(slot.name)
        bad = {roots[s.name] for ci, c in enumerate(self.p.calls) if ci not in self.aware
               for s in c.args if s.kind == "tensor" and roots.get(s.name) in self.cs}
        bad |= self.undo
        if bad:
            raise _Dense(frozenset(bad))
        untm = {roots[s.name] for ci, c in enumerate(self.p.calls) for s in c.args
                if s.kind == "tensor" and roots.get(s.name) in self.tm and
                roots[s.name] not in self.tm_aware.get(ci, ())}
        untm |= {roots[s.name] for ci in self.pk_aware for s in self.p.calls[ci].args
                 if s.kind == "tensor" and roots.get(s.name) in self.pktm and
                 roots[s.name] not in self.tm_aware.get(ci, ())}
        untm |= self.untm
        if untm:
            raise _Untile(frozenset(untm - set(self.pktm)), frozenset(untm & set(self.pktm)))
        self.p.channel_strides = dict(self.cs)
        touched = {roots[s.name] for c in self.p.calls for s in c.args
                   if s.kind == "tensor" and s.name in roots}
        self.p.tile_major = {r: v for r, v in self.tm.items() if r in touched}
        self.p.pk_tile_major = {r: v for r, v in self.pktm.items() if r in touched}
        self._buffers(roots)
        self.p.chunk, self.p.sample_bytes = batch_chunk(plan, self.p.arena[0])
        self.p.min_chunk = batch_min_chunk(plan, self.p.chunk) or 1
        self.p.split = 2 * self.threads
        if self.p.chunk:
            limit = env_tail_bytes()
            tail_split(self.p, TAIL_SAMPLE_BYTES if limit is None else limit,
                       self.kn_buffers, self.tail_from,
                       small_only=TAIL_SMALL_MAPS_ONLY and self.vw == 16)
        self._bands()
        if self.p.tail:
            head_segments(self.p, self.kn_buffers)
            if TAIL_CHUNKS and self.threads > 1:
                self.p.tail_chunks, self.p.tail_min_chunk = self.threads, TAIL_MIN_CHUNK
        return self.p

    def _bands(self) -> None:
        """Runs of convs before the tail in row bands (native.bands), the head's buffers
        packed again for the lifetimes that gives them."""
        p = self.p
        if not self.band_major:  # (band_layout plans on these calls for the next lowering)
            return
        head = p.tail or len(p.calls)
        t_op = p.calls[p.tail].op if p.tail else None
        added = BD.band_calls(p, head, l2_bytes(), self.band_major, self.band_rings)
        if not added:
            return
        if p.tail:
            p.tail += added
            _pack_head(p, t_op)
        else:
            p.arena = _pack(list(p.buffers.values()))

    def _buffers(self, roots: dict[str, str]) -> None:
        """Lifetimes of the activations (inputs come from the caller), then arena offsets."""
        plan = self.plan
        kn = {op.output for op in plan.ops if op.attrs.get("out_kn")} | self.kn_res
        self.kn_buffers = set(kn) | set(self.kn_heads)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        # tensors a fusion never writes, and the views of them
        dropped = {roots[made] for _, made in self.fused.values()} | \
            {roots[name] for name in self.q8_dropped}
        for j, op in enumerate(plan.ops):
            i = self.fused[j][0] if j in self.fused else j  # a fused add runs in its conv
            for name in op.inputs:
                if name in plan.constants or roots[name] in dropped:
                    continue
                r = roots[name]
                last[r] = max(last.get(r, -1), i)
            if roots[op.output] in dropped:
                continue
            r = roots[op.output]
            first[r] = min(first.get(r, i), i)
            last[r] = max(last.get(r, -1), i)
        for name in plan.outputs:
            last[roots[name]] = len(plan.ops)
        for r, f in first.items():
            if r in plan.inputs or r in plan.constants:
                continue
            spec = plan.tensors[r]
            nbytes = numel(self.shape(r)) * np.dtype(spec.dtype).itemsize
            if r in self.cs:
                nbytes = numel(self.shape(r)[:2]) * self.cs[r] * 4
            lead = 0
            if r in self.pk:  # packed: N rounded up to a block (a bound affine in N)
                c, h, w = (d.value for d in self.shape(r)[1:])
                nbytes = nbytes + (PACK_B - 1) * c * h * w * 4
                if r in self.pk_slack:  # (a masked conv's reads around it: _shifted_pkm)
                    lead, nbytes = 64, nbytes + 3 * 64
            if r in kn:  # a features x batch hand-over: rows kn_stride(m) apart
                shape = self.shape(r)
                nbytes = shape[-1] * kn_stride(numel(shape[:-1])) * 4
            elif r in self.kn_heads:  # (B, H, S, D) held as (H*D, B*S) rows
                B, H, S, D = self.shape(r)
                nbytes = H * D * self.kn_heads[r] * 4
            self.p.buffers[r] = Buffer(r, nbytes, f, last[r], lead=lead)
        if RES_IN_PLACE:
            self._in_place(roots, first, last)
        self.p.arena = _pack(list(self.p.buffers.values()))
        self.p.scratch_per_thread = max((c.scratch for c in self.p.calls), default=0)

    def _in_place(self, roots: dict[str, str], first: dict[str, int],
                  last: dict[str, int]) -> None:
        """Residual sums written over their addend (Buffer.share): a fused add's output
        whose only writer is its conv, the addend's last use that conv, both laid out alike
        in buffers of one size, and every call of the conv touching the addend one that reads
        each residual element only where it then writes the sum (res_in_place). The conv's
        output lines are then the ones its epilogue has just read, not lines fetched for
        ownership from L3 or DRAM (ResNet-50's conv3s: their sum and residual are 6-26 MB at
        batch 16)."""
        plan, bufs = self.plan, self.p.buffers
        safe = {id(c) for c in self.res_in_place}
        for j, (i, made) in self.fused.items():
            add = plan.ops[j]
            if add.kind != "binary" or len(add.inputs) != 2 or made not in add.inputs:
                continue
            other = add.inputs[1] if add.inputs[0] == made else add.inputs[0]
            o, r = add.output, other
            if roots.get(o) != o or roots.get(r) != r or o == r or o not in bufs or \
                    r not in bufs or o in plan.outputs or first.get(o) != i or \
                    last.get(r) != i or bufs[o].share:
                continue
            if any(n in self.kn_buffers or n in self.band_major for n in (o, r)) or \
                    self.cs.get(o) != self.cs.get(r) or self.tm.get(o) != self.tm.get(r) or \
                    (o in self.pk) != (r in self.pk) or \
                    self.pktm.get(o) != self.pktm.get(r) or \
                    bufs[o].lead != bufs[r].lead or str(bufs[o].nbytes) != str(bufs[r].nbytes):
                continue
            touching = [c for c in self.p.calls if c.op == i and
                        any(a.kind == "tensor" and roots.get(a.name) == r for a in c.args)]
            if touching and all(id(c) in safe for c in touching):
                bufs[o].share = r

    # ---- elementwise ----------------------------------------------------------------------
    def op_reshape(self, op: Op):
        return None

    def op_act(self, op: Op):
        act, a, b = _act(op)
        x, out = op.inputs[0], op.output
        if self._dtype(x) != "float32" or self._dtype(out) != "float32":
            dts = [self._dtype(x), self._dtype(out)]
            if act != "relu" or dts[0] != dts[1] or dts[0] not in DTYPES:
                raise Unsupported(f"{act} on {dts[0]}")
            n = numel(self.shape(out))  # relu of integers: max(x, 0)
            dims, xs = _pad([n], [const(1)])
            zero = self.derived("scalar", np.zeros(1, np.float64))
            dt = DTYPES[dts[0]]
            self.call(self.numba("k_binary_any"),
                      [T(x), zero, T(out), I(ANY_FNS["maximum"]), I(dt), I(DTYPES["float64"]),
                       I(dt)] + [I(d) for d in dims] + [I(s) for s in xs] +
                      [I(0)] * len(xs), const(1), float(n(1)))
            return
        self.call(self.numba("k_act"), [T(op.inputs[0]), T(op.output), I(A.act_code(act)),
                                        F(a), F(b)], numel(self.shape(op.output)), 8.0)

    def op_binary(self, op: Op):
        out = op.output
        kn = self._add_norm(op)
        if kn is not None:
            return "native add + layer_norm" + (KN_LABEL if kn else "")
        oshape = self.shape(out)
        fname = op.attrs.get("fn")
        if len(op.inputs) == 2:
            names = list(op.inputs)
        else:
            scalar = np.array([float(op.attrs["scalar"])], np.float64)
            s = self.derived("scalar", scalar)
            names = [s, op.inputs[0]] if op.attrs.get("scalar_first") else [op.inputs[0], s]
        dts = [("float64" if isinstance(x, Slot) else self._dtype(x)) for x in names]
        fast = fname in BINARY_FNS and self._dtype(out) == "float32" and \
            all(d == "float32" for d in dts)
        operands = []
        for x in names:
            if isinstance(x, Slot):
                operands.append((x if not fast else self.derived(
                    "scalar32", np.array([float(op.attrs["scalar"])], np.float32)),
                    [const(0)] * len(oshape)))
            else:
                operands.append((self.tensor_slot(x), self.bcast_strides(x, oshape)))
        (xs_slot, xs), (ys_slot, ys) = operands
        cdims, (_, xs, ys) = _collapse(oshape, _strides(oshape), xs, ys)
        dims, xs = _pad(cdims, xs)
        _, ys = _pad(cdims, ys)
        rows = numel(dims[:-1])
        cost = float(dims[-1](1))
        tail = [I(d) for d in dims] + [I(s) for s in xs] + [I(s) for s in ys]
        act, a, b = _act(op)
        if fast:
            self.call(self.numba("k_binary"),
                      [xs_slot, ys_slot, T(out), I(BINARY_FNS[fname]), I(A.act_code(act)),
                       F(a), F(b)] + tail, rows, cost)
            return
        if fname not in ANY_FNS or any(d not in DTYPES for d in dts + [self._dtype(out)]):
            raise Unsupported(f"binary {fname} on {dts} -> {self._dtype(out)}")
        self.call(self.numba("k_binary_any"),
                  [xs_slot, ys_slot, T(out), I(ANY_FNS[fname])] +
                  [I(DTYPES[d]) for d in dts + [self._dtype(out)]] + tail, rows, cost)
        self.act_pass(out, act, a, b)

    def op_where(self, op: Op):
        ins = list(op.inputs)
        out = op.output
        cond = ins.pop(0)
        oshape = self.shape(out)
        if self._dtype(cond) != "bool" or self._dtype(out) != "float32":
            raise Unsupported(f"where -> {self._dtype(out)}")
        branches = []
        for key in ("a", "b"):
            val = op.attrs.get(key)
            if val is None:
                name = ins.pop(0)
                if self._dtype(name) != "float32":
                    raise Unsupported(f"where over {self._dtype(name)}")
                branches.append((self.tensor_slot(name), self.bcast_strides(name, oshape)))
            else:
                c = self.derived("scalar32", np.array([float(val)], np.float32))
                branches.append((c, [const(0)] * len(oshape)))
        (xs_slot, xs), (ys_slot, ys) = branches
        cdims, (_, cs, xs, ys) = _collapse(oshape, _strides(oshape),
                                           self.bcast_strides(cond, oshape), xs, ys)
        dims, cs = _pad(cdims, cs)
        _, xs = _pad(cdims, xs)
        _, ys = _pad(cdims, ys)
        self.call(self.numba("k_where"),
                  [self.tensor_slot(cond), xs_slot, ys_slot, T(out)] +
                  [I(v) for v in dims + cs + xs + ys], numel(dims[:-1]),
                  float(self.example(out)[-1]) if oshape else 1.0)

    def op_unary(self, op: Op):
        x, out = op.inputs[0], op.output
        fn = UNARY_FNS.get(op.attrs.get("fn"))
        if fn is None or self._dtype(x) != "float32" or self._dtype(out) != "float32":
            raise Unsupported(f"unary {op.attrs.get('fn')} on {self._dtype(x)}")
        self.call(self.numba("k_unary"), [T(x), T(out), I(fn)], numel(self.shape(out)), 20.0)

    def op_affine(self, op: Op):
        x, out = op.inputs[0], op.output
        shape = self.shape(x)
        if self._dtype(x) != "float32" or len(shape) < 2:
            raise Unsupported("affine on other than float32 (N, C, ...) data")
        inner = numel(shape[2:])
        self.call(self.numba("k_affine"),
                  [T(x), T(out), self.const(op.params["scale"]), self.const(op.params["shift"]),
                   I(shape[1]), I(inner)], numel(shape[:2]), 2.0 * inner(1))

    def op_matmul(self, op: Op):
        a_, b_ = op.inputs
        out = op.output
        sa_, sb_, so = self.shape(a_), self.shape(b_), self.shape(out)
        if len(sa_) < 2 or len(sb_) < 2 or any(self._dtype(t) != "float32"
                                                for t in (a_, b_, out)):
            raise Unsupported("matmul of 1-D or non-float32 operands")
        m, k = sa_[-2], sa_[-1]
        n = sb_[-1]
        batch = numel(so[:-2])
        ab, bb = numel(sa_[:-2]), numel(sb_[:-2])

        def mode(count, lead):
            if lead == so[-2 - len(lead):-2] and len(lead) == len(so) - 2:
                return batch, True  # one per output batch entry
            if count.is_const() and count.value == 1:
                return const(1), False  # broadcast
            raise Unsupported("matmul with partly broadcast batch dims")

        amod, a_step = mode(ab, sa_[:-2])
        bmod, b_step = mode(bb, sb_[:-2])
        self.gemm(x=self.tensor_slot(a_), w=self.tensor_slot(b_), out=T(out), bias=None,
                  bias_mode="none", M=m, Nn=n, K=k, lda=k, ldb=n, ldc=n,
                  act=("none", 0.0, 0.0), batch=batch, sa=m * k if a_step else 0,
                  sb=k * n if b_step else 0, sc=m * n, amod=amod, bmod=bmod)
        return "native dense"

    def op_cast(self, op: Op):
        x, out = op.inputs[0], op.output
        dts = [self._dtype(x), self._dtype(out)]
        if any(d not in DTYPES for d in dts):
            raise Unsupported(f"cast {dts[0]} -> {dts[1]}")
        n = numel(self.shape(out))
        rows = n.cdiv(1024)  # rows of 1024 (the last one short: a rank-6 shape cannot say so)
        dims, xs = _pad([n], [const(1)])
        if n(1) > 1024 and n(2) % 1024 == 0 and n(1) % 1024 == 0:
            dims, xs = _pad([n.fdiv(1024), const(1024)], [const(1024), const(1)])
        else:
            rows = const(1)
        self.call(self.numba("k_binary_any"),
                  [T(x), T(x), T(out), I(-1), I(DTYPES[dts[0]]), I(DTYPES[dts[0]]),
                   I(DTYPES[dts[1]])] + [I(d) for d in dims] + [I(s) for s in xs] * 2,
                  rows, float(min(n(1), 1024)))

    def _dtype(self, name: str) -> str:
        if name in self.plan.constants:
            return str(self.plan.constants[name].dtype)
        return self.plan.tensors[name].dtype

    def op_reduce(self, op: Op):
        x, out = op.inputs[0], op.output
        fn = REDUCE_FNS.get(op.attrs.get("fn"))
        if fn is None or self._dtype(x) != "float32" or self._dtype(out) != "float32":
            raise Unsupported(f"reduce {op.attrs.get('fn')} on {self._dtype(x)}")
        shape = self.shape(x)
        st = _strides(shape)
        axes = sorted({int(a) % len(shape) for a in op.attrs["axes"]})
        kept = [i for i in range(len(shape)) if i not in axes]
        if len(kept) > 4 or len(axes) > 4:
            raise Unsupported("reduce over more than 4 kept or reduced dims")

        def four(idx):
            d = [shape[i] for i in idx]
            s_ = [st[i] for i in idx]
            return [const(1)] * (4 - len(d)) + d, [const(0)] * (4 - len(d)) + s_

        kd, ks = four(kept)
        rd, rs = four(axes)
        self.call(self.numba("k_reduce"),
                  [T(x), T(out), I(fn)] + [I(v) for v in kd + ks + rd + rs],
                  numel(kd), float(numel(rd)(1)))

    def op_sdpa(self, op: Op):
        q, k, v = op.inputs[:3]
        mask = op.inputs[3] if len(op.inputs) > 3 else None
        out = op.output
        shapes = [self.shape(t) for t in (q, k, v, out)]
        if any(len(sh) not in (3, 4) for sh in shapes):
            raise Unsupported("attention over other than 3-D or 4-D tensors")
        q4, k4, v4, o4 = ([const(1)] * (4 - len(sh)) + sh for sh in shapes)
        if not (q4[:2] == k4[:2] == v4[:2] == o4[:2]):
            raise Unsupported("attention with broadcast batch or head dims")
        nd, ns, ne = q4[3], k4[2], v4[3]
        if not (nd.is_const() and ns.is_const() and ne.is_const()):
            raise Unsupported("attention with a batch-sized sequence or head")
        scale = op.attrs.get("scale")
        scale = 1.0 / math.sqrt(nd.value) if scale is None else float(scale)
        from sparsecc.codegen.numba import attention as AT

        full = [q4[0], q4[1], q4[2], ns]
        if mask is None:
            kind, mslot, ms = AT.MASK_NONE, self.derived("zero", np.zeros(1, np.float32)), \
                [const(0)] * 4
        else:
            mdt = self._dtype(mask)
            if mdt not in ("bool", "float32"):
                raise Unsupported(f"an attention mask of {mdt}")
            kind = AT.MASK_KEEP if mdt == "bool" else AT.MASK_ADD
            mslot = self.tensor_slot(mask)
            ms = self.bcast_strides(mask, full)
        causal = bool(op.attrs.get("is_causal"))
        if env_native_kernels() != "numba":
            from sparsecc.native import attention as NA

            spec = NA.AttentionSpec(self.vw, nd.value, ne.value, ns.value, kind, causal,
                                    q in self.kn_heads, k in self.kn_heads)
            per = spec.scratch_floats()
            slots = [I(0)] * NA.N_SLOTS
            slots[NA.S_QLD] = I(self.kn_heads.get(q, const(0)))
            slots[NA.S_KLD] = I(self.kn_heads.get(k, const(0)))
            slots[NA.S_Q], slots[NA.S_K], slots[NA.S_V], slots[NA.S_OUT] = T(q), T(k), T(v), \
                T(out)
            slots[NA.S_MASK] = mslot
            slots[NA.S_B], slots[NA.S_L] = I(q4[1]), I(q4[2])
            nblk = q4[2].cdiv(NA.QB)
            slots[NA.S_NBLK] = I(nblk)
            for slot, st in zip((NA.S_MSA, NA.S_MSB, NA.S_MSI, NA.S_MSJ), ms):
                slots[slot] = I(st)
            slots[NA.S_SCALE], slots[NA.S_SCRATCH] = F(scale), SCRATCH
            slots[NA.S_PER], slots[NA.S_THREADS] = I(per), THREADS
            self.call(self.ir_kernel(spec), slots, q4[0] * q4[1] * nblk, spec.flops(NA.QB),
                      scratch=per)
            kn = "q, k" if spec.q_kn and spec.k_kn else "q" if spec.q_kn else \
                "k" if spec.k_kn else ""
            return "native attention" + (f" ({kn} {KN_LABEL[2:]}" if kn else "")
        per = (nd.value + ne.value) * ns.value + ns.value + ne.value
        slots = [T(q), T(k), T(v), T(out), mslot, I(kind), I(int(causal)), F(scale), SCRATCH,
                 I(per), THREADS]
        for dims in (q4, k4, v4, o4):
            slots += [I(d) for d in dims] + [I(s) for s in _strides(dims)]
        slots += [I(d) for d in full] + [I(s) for s in ms]
        self.call(self.numba("k_sdpa"), slots, q4[0] * q4[1],
                  2.0 * q4[2](1) * ns.value * (nd.value + ne.value), scratch=per)

    def tensor_slot(self, name: str) -> Slot:
        if name in self.plan.constants:
            return self.const(name)
        return T(name)

    def bcast_strides(self, name: str, oshape: list[E]) -> list[E]:
        shape = self.shape(name) if name not in self.plan.constants else \
            [const(d) for d in self.plan.constants[name].shape]
        strides = _strides(shape)
        k = len(oshape) - len(shape)
        out = [const(0)] * k
        for d, s, o in zip(shape, strides, oshape[k:]):
            out.append(const(0) if (d.is_const() and d.value == 1 and not
                                    (o.is_const() and o.value == 1)) else s)
        return out

    # ---- data movement --------------------------------------------------------------------
    def copy(self, src: Slot, dst: Slot, dims: list[E], xs: list[E], os_: list[E],
             itemsize: int) -> None:
        dims, (xs, os_) = _collapse(dims, xs, os_)
        _, os_ = _pad(dims, os_)
        dims, xs = _pad(dims, xs)
        rows = const(1)
        for d in dims[:-1]:
            rows = rows * d
        kern = {1: "k_copy8", 4: "k_copy32", 8: "k_copy64"}.get(itemsize)
        if kern is None:
            raise Unsupported(f"copy of {itemsize}-byte elements")
        self.call(self.numba(kern), [src, dst] + [I(d) for d in dims] + [I(s) for s in xs]
                  + [I(s) for s in os_], rows, 4.0)

    def _item(self, name: str) -> int:
        return np.dtype(self.plan.tensors[name].dtype).itemsize

    def op_copy(self, op: Op):
        x, out = op.inputs[0], op.output
        n = numel(self.shape(out))
        size = self._item(out)
        self.copy(T(x, itemsize=size), T(out, itemsize=size), [n], [const(1)], [const(1)],
                  size)

    def op_permute(self, op: Op):
        x, out = op.inputs[0], op.output
        perm = [int(p) for p in op.attrs["perm"]]
        xs = _strides(self.shape(x))
        size = self._item(out)
        oshape = self.shape(out)
        self.copy(T(x, itemsize=size), T(out, itemsize=size), oshape, [xs[p] for p in perm],
                  _strides(oshape), size)

    def op_expand(self, op: Op):
        x, out = op.inputs[0], op.output
        oshape = self.shape(out)
        size = self._item(out)
        self.copy(T(x, itemsize=size), T(out, itemsize=size), oshape,
                  self.bcast_strides(x, oshape), _strides(oshape), size)

    def op_slice(self, op: Op):
        x, out = op.inputs[0], op.output
        key = index_from_attr(op.attrs["index"])
        shape = self.shape(x)
        strides = _strides(shape)
        if Ellipsis in key:
            k = key.index(Ellipsis)
            fill = len(shape) - (len(key) - 1 - sum(1 for it in key if it is None))
            key = key[:k] + (slice(None),) * fill + key[k + 1:]
        off, dims, st = const(0), [], []
        axis = 0
        for it in key:
            if it is None:
                dims.append(const(1))
                st.append(const(0))
                continue
            d, s = shape[axis], strides[axis]
            axis += 1
            if isinstance(it, int):
                # an index along the batch may be past N at run time, and one past a fixed
                # dim is a bad plan: neither may read outside x (the executor raises there)
                if not d.is_const():
                    raise Unsupported("an integer index along the batch")
                if not -d.value <= it < d.value:
                    raise Unsupported(f"index {it} out of range for a dim of {d.value}")
                off = off + s * (it % d.value)
                continue
            if it == slice(None):
                dims.append(d)
                st.append(s)
                continue
            if not d.is_const():
                raise Unsupported("a bounded slice along the batch")
            start, stop, step = it.indices(d.value)
            dims.append(const(len(range(start, stop, step))))
            st.append(s * step)
            off = off + s * start
        dims += shape[axis:]
        st += strides[axis:]
        size = self._item(out)
        oshape = self.shape(out)
        if len(dims) != len(oshape):
            raise Unsupported("slice result rank")
        self.copy(T(x, off, size), T(out, itemsize=size), dims, st, _strides(dims), size)

    def op_cat(self, op: Op):
        self._join(op, stack=False)

    def op_stack(self, op: Op):
        self._join(op, stack=True)

    def _join(self, op: Op, stack: bool) -> None:
        """cat / stack: each input copied into its place along the axis (a constant input
        is read from the weights: tensor slots naming constants resolve there)."""
        out = op.output
        axis = int(op.attrs["axis"]) % len(self.plan.tensors[out].shape)
        ost = _strides(self.shape(out))
        size = self._item(out)
        # stack: the inputs' dims skip the new axis
        into = ost[:axis] + ost[axis + 1:] if stack else ost
        pos = const(0)
        for x in op.inputs:
            xshape = self.shape(x)
            self.copy(T(x, itemsize=size), T(out, pos * ost[axis], size), xshape,
                      _strides(xshape), into, size)
            pos = pos + (const(1) if stack else xshape[axis])

    # ---- rows -----------------------------------------------------------------------------
    def op_softmax(self, op: Op):
        x, out = op.inputs[0], op.output
        shape = self.shape(out)
        if int(op.attrs["axis"]) % len(shape) != len(shape) - 1:
            raise Unsupported("softmax over an inner axis")
        d = shape[-1]
        self.call(self.numba("k_softmax"), [T(x), T(out), I(d), I(int(bool(op.attrs.get(
            "log", False))))], numel(shape[:-1]), 6.0 * self.example(out)[-1])

    def _norm_add(self, i: int) -> int | None:
        """The layer norm op reading the output of add op ``i``, when one kernel computes
        norm(a + b) and the sum is never stored (a transformer's residual): an add of two
        same-shaped float32 tensors whose only reader is that norm."""
        op = self.plan.ops[i]
        if not env_native_fuse() or env_native_kernels() == "numba" or op.kind != "binary":
            return None
        if op.attrs.get("fn") != "add" or len(op.inputs) != 2 or _act(op)[0] != "none":
            return None
        j = self._only_reader(op.output)
        if j is None or self.plan.ops[j].kind != "layer_norm" or \
                self.plan.ops[j].inputs[0] != op.output:
            return None
        shape = self.plan.tensors[op.output].shape
        if any(self.plan.tensors[t].shape != shape or self._dtype(t) != "float32"
               for t in (*op.inputs, op.output, self.plan.ops[j].output)) or \
                any(t in self.plan.constants for t in op.inputs):
            return None
        return j

    def _add_norm(self, op: Op) -> bool | None:
        """The add and the norm reading it as one kernel (_norm_add): whether it runs on the
        features x tokens layout; None when they are not fused."""
        j = self._norm_add(self.i)
        if j is None:
            return None
        self.fused[j] = (self.i, op.output)
        return self._norm(j, *op.inputs)

    def _norm(self, j: int, x: str, res: str | None) -> bool:
        """Layer norm op ``j`` of x (+ res), in the features x tokens layout when its output
        is part of the residual stream held that way (_kn_stream; an input held in the other
        layout is transposed first)."""
        from sparsecc.native import norm as NM

        op = self.plan.ops[j]
        shape = self.shape(op.output)
        k = int(op.attrs["ndims"])
        d = numel(shape[len(shape) - k:])
        rows = numel(shape[:len(shape) - k])
        kn = op.output in self.kn_res
        w, b = op.params.get("weight"), op.params.get("bias")
        spec = NM.LayerNormSpec(self.vw, res is not None, w is not None, b is not None, kn)
        zero = self.derived("zero", np.zeros(1, np.float32))
        slots = [I(0)] * NM.N_SLOTS
        slots[NM.L_A] = self._layout(x, kn, rows, d)
        slots[NM.L_R] = zero if res is None else self._layout(res, kn, rows, d)
        slots[NM.L_OUT] = T(op.output)
        slots[NM.L_W] = self.const(w) if w else zero
        slots[NM.L_B] = self.const(b) if b else zero
        slots[NM.L_D], slots[NM.L_EPS] = I(d), F(float(op.attrs["eps"]))
        if kn:
            slots[NM.L_LD], slots[NM.L_M] = I(kn_stride(rows)), I(rows)
            self.call(self.ir_kernel(spec), slots, rows.cdiv(self.vw), 8.0 * d(1) * self.vw)
        else:
            self.call(self.ir_kernel(spec), slots, rows, 8.0 * d(1))
        return kn

    def _layout(self, name: str, kn: bool, m: E, d: E) -> Slot:
        """``name`` (m rows of d) as a slot in the layout asked for: itself, or a transposed
        copy in a temporary when it is held in the other one (see _kn_stream)."""
        if (name in self.kn_res) == kn:
            return T(name)
        tmp = self.temp("kn" if kn else "rm", d * kn_stride(m) * 4)
        if kn:
            self.transpose(T(name), T(tmp), m, d, dst_ld=kn_stride(m))
        else:
            self.transpose(T(name), T(tmp), d, m, src_ld=kn_stride(m))
        return T(tmp)

    def op_layer_norm(self, op: Op):
        x, out = op.inputs[0], op.output
        if env_native_kernels() != "numba" and self._dtype(x) == "float32" and \
                self._dtype(out) == "float32":
            return "native layer_norm" + (KN_LABEL if self._norm(self.i, x, None) else "")
        shape = self.shape(out)
        k = int(op.attrs["ndims"])
        d = numel(shape[len(shape) - k:])
        w, b = op.params.get("weight"), op.params.get("bias")
        zero = self.derived("zero", np.zeros(1, np.float32))
        self.call(self.numba("k_layernorm"),
                  [T(x), T(out), I(d), self.const(w) if w else zero, self.const(b) if b else zero,
                   I(int(w is not None)), I(int(b is not None)), F(float(op.attrs["eps"]))],
                  numel(shape[:len(shape) - k]), 8.0 * d(1))

    def _kn_stream(self) -> None:
        """A transformer's residual stream held as features x tokens, the layout the sparse
        linears compute in, so that their input and output transposes disappear: a float32
        layer norm over the last dim whose every reader is a sparse linear (as its input) or
        a residual add fused into a layer norm writes that layout (native.norm's kn kernel),
        and a sparse linear whose only reader is such a norm's residual add writes it too.
        An input held in the other layout is transposed where it is read (_layout): e.g. the
        embeddings' sum once, and the stream at the last norm, whose output the model returns."""
        plan = self.plan
        if not env_native_fuse() or env_native_kernels() == "numba":
            return
        adds = {}  # layer norm op index -> the residual add fused into it
        for i in range(len(plan.ops)):
            j = self._norm_add(i)
            if j is not None:
                adds[j] = i
        add_ops = set(adds.values())

        def kn_reader(r: int, t: str) -> bool:
            op = plan.ops[r]
            if r in add_ops:
                return True
            return op.kind == "linear" and SP.is_sparse(op.attrs.get("fmt")) and \
                op.inputs[0] == t and t not in op.inputs[1:] and r not in self.src_heads \
                and not op.attrs.get("in_kn") and self._dtype(op.output) == "float32"

        for op in plan.ops:
            t = op.output
            if op.kind != "layer_norm" or int(op.attrs["ndims"]) != 1 or \
                    self._dtype(op.inputs[0]) != "float32" or self._dtype(t) != "float32" or \
                    len(self.shape(t)) < 2:
                continue
            readers = self._readers(t)
            if readers and t not in plan.outputs and plan.tensors[t].alias_of is None and \
                    not any(s.alias_of == t for s in plan.tensors.values()) and \
                    all(kn_reader(r, t) for r in readers):
                self.kn_res.add(t)
        for j, i in adds.items():
            if plan.ops[j].output not in self.kn_res:
                continue
            for a in plan.ops[i].inputs:
                made = self._writers(a)
                if len(made) != 1 or self._only_reader(a) != i:
                    continue
                li = made[0]
                lop = plan.ops[li]
                if lop.kind == "linear" and SP.is_sparse(lop.attrs.get("fmt")) and \
                        not lop.attrs.get("out_kn") and li not in self.dst_heads and \
                        plan.tensors[a].alias_of is None:
                    self.kn_res.add(a)

    def op_embedding(self, op: Op):
        idx, out = op.inputs[0], op.output
        if self.plan.tensors[idx].dtype != "int64":
            raise Unsupported(f"embedding indices of {self.plan.tensors[idx].dtype}")
        table = self.plan.constants[op.params["weight"]]
        self.call(self.numba("k_embedding"),
                  [T(idx, itemsize=8), self.const(op.params["weight"]), T(out),
                   I(table.shape[0]), I(int(np.prod(table.shape[1:]))), ERR],
                  numel(self.shape(idx)), float(table.shape[-1]))

    # ---- pooling --------------------------------------------------------------------------
    def _nchw(self, name: str) -> list[Slot]:
        return [I(d) for d in self.shape(name)]

    def op_pool2d(self, op: Op):
        x, out = op.inputs[0], op.output
        a = op.attrs
        kh, kw = (int(v) for v in a["kernel"])
        sh, sw = (int(v) for v in a["stride"])
        ph, pw = (int(v) for v in a["padding"])
        ho, wo = self.shape(out)[2:]
        planes = numel(self.shape(out)[:2])
        cost = float(kh * kw * ho(1) * wo(1))
        if a["mode"] == "max":
            dh, dw = (int(v) for v in a["dilation"])
            if self._rows_pool(op):
                h, w = self.shape(x)[2:]
                src = T(x)
                pkx, pko = self._pk(x), self._pk(out)
                if x in self.wide and not pkx:  # the conv before left its rows wq wide
                    full, w = self.wide[x]  # (no crop; its packed variant wrote x packed)
                    src = T(full)
                if self._pool2_ir(op):
                    nb, c = self.shape(out)[:2]
                    spec = PL2.MaxPool2Spec(self.vw, PACK_B if pkx else 1, PACK_B if pko else 1)
                    self.call(self.ir_kernel(spec),
                              [src, T(out), I(h), I(w), I(ho), I(wo), I(c), I(nb)],
                              self._phase_n(out, nb) * c * ho, float(kh * kw * wo(1)))
                    # (either side may be packed, PACK; planes h x w floats apart, never
                    # at a channel stride of Lowering.cs)
                    self.pk_aware.add(len(self.p.calls) - 1)
                else:
                    self._pk_unpack(x, out)
                    self.call(self.numba("k_maxpool_rows"), [src, T(out), I(h), I(w), I(ho),
                                                             I(wo), I(kh), I(sh)],
                              planes * ho, float(kh * kw * wo(1)))
                return "native (fused crop)" if x in self.wide else None
            w = self.example(x)[3]
            self.call(self.numba("k_maxpool"), [T(x), T(out), *self._nchw(x), I(ho), I(wo),
                                                I(kh), I(kw), I(sh), I(sw), I(ph), I(pw),
                                                I(dh), I(dw), SCRATCH, I(w), THREADS],
                      planes, cost, scratch=w)
            return
        div = int(a.get("divisor_override") or 0)
        self.call(self.numba("k_avgpool"), [T(x), T(out), *self._nchw(x), I(ho), I(wo), I(kh),
                                            I(kw), I(sh), I(sw), I(ph), I(pw),
                                            I(int(bool(a.get("count_include_pad", True)))),
                                            I(div)], planes, cost)

    def op_adaptive_pool2d(self, op: Op):
        x, out = op.inputs[0], op.output
        ho, wo = self.shape(out)[2:]
        hw = self.example(x)[2] * self.example(x)[3]
        mean = (ho.value, wo.value, op.attrs["mode"]) == (1, 1, "avg")
        if mean and GLOBAL_MEAN_IR and self._dtype(x) == "float32":  # at x's channel stride
            nb, c = self.shape(x)[:2]
            pk = self._pk(x)
            with self._packed():
                self.call(self.ir_kernel(GM.MeanSpec(self.vw, pk)),
                          [T(x), T(out), I(hw), I(self._cstride(x)), I(c),
                           I(PACK_B if pk else 1), I(hw if pk else 0), I(nb)],
                          self._phase_n(x, nb) * c, float(hw))
            return "native global mean"
        with self._aware(mean):  # the global mean takes x's channel stride
            self.call(self.numba("k_adaptive"), [T(x), T(out), *self._nchw(x), I(ho), I(wo),
                                                 I(int(op.attrs["mode"] == "max")),
                                                 I(self._cstride(x))],
                      numel(self.shape(out)[:2]), float(hw))

    # ---- int8 linear ----------------------------------------------------------------------
    def op_qlinear(self, op: Op):
        """Quantize the input rows to uint8 codes, then the int8 SpMV (one row) or SpMM
        (grouped codes, vw rows a tile) with the dequantizing epilogue (native.qlinear)."""
        x, out = op.inputs[0], op.output
        o, k = (int(v) for v in op.attrs["weight_shape"])
        m = numel(self.shape(x)[:-1])
        actn, pa, pb = _act(op)
        idx = self.plan.constants[op.params["indices"]]
        k4 = -(-k // 4)
        scale, zero = float(op.attrs["x_scale"]), int(op.attrs["x_zero"])
        inv = F(float(np.float32(1.0 / scale)))
        w = [self.const(op.params[r]) for r in ("indptr", "indices", "data", "mult", "bias")]
        nnz = max(int(idx.shape[0]), 1)
        quant = self.ir_kernel(QL.QuantizeSpec(self.vw))

        def kernel(family, tile=1):
            return self._q8_kernel(op, family, (actn, pa, pb), tile=tile)

        one, many = [(m, "==", 1)], [(m, "!=", 1)]
        # one row: codes in the plain row; a gather SpMV over output rows, or (half the
        # groups or more stored) a GEMV over rows with every group, which needs no gather
        q1 = self.temp("q8row", const(k4 * 4))
        self.call(quant, [T(x), T(q1), I(1), I(k), I(k), I(1), inv, I(zero)], const(1),
                  4.0 * k, only_if=one)
        full = None
        if nnz >= GEMV_Q8_FILL * o * k4:
            full = np.zeros((o, k4, 4), np.int8)
            indptr = self.plan.constants[op.params["indptr"]]
            rows = np.repeat(np.arange(o), np.diff(indptr))
            full[rows, idx.astype(np.int64)] = self.plan.constants[op.params["data"]]
            full = self.derived("q8full", full)
            self.call(kernel("gemv")[0], [I(0), I(0), full, T(q1),
                                       T(out), *w[3:], I(1), I(o), I(k4), I(1), I(0),
                                       I(0), I(0)],
                      const(o), 8.0 * k4, only_if=one)
        else:
            self.call(kernel("spmv")[0], [*w[:3], T(q1), T(out), *w[3:], I(1), I(o), I(1),
                                       I(1), I(0), I(0), I(0)], const(o), 8.0 * nnz / o,
                      only_if=one)
        # several rows: grouped codes (group g of row r at dword g * ld + r), tiles of vw rows
        m = lift(m)
        tile = max(1, min(QL_TILE, -(-m(max(2, self.plan.example_batch)) // self.vw)))
        span = tile * self.vw
        ntiles = m.cdiv(span)
        ld = ntiles * span
        if self.i in self.q8_in:  # the int8 linear before wrote the codes (many rows)
            qn = self.q8_in[self.i][0]
        else:
            qn = self.temp("q8cols", (m + span) * (k4 * 4))  # >= ld * k4 dwords, affine
            self.call(quant, [T(x), T(qn), I(m), I(k), I(k), I(ld), inv, I(zero)], m,
                      4.0 * k, only_if=many)
        tiles_1 = max(ntiles(max(2, self.plan.example_batch)), 1)
        nrb = max(1, min(o, -(-4 * self.threads // tiles_1), 64))
        # the next int8 linear's grouped codes straight from the epilogue, when it alone
        # reads the output (the float output is still written on one row: the SpMV's)
        nxt = self._q8_linear_reader(out, o) if actn in ("none", "relu", "clamp") else None
        codes = []
        if nxt is not None:
            j, nop = nxt
            cn = self.temp("q8next", (m + span) * o)  # its q8cols
            self.p.buffers[cn].last = j
            self.q8_in[j] = (cn, 0)
            codes = [T(cn), F(float(np.float32(1.0 / float(nop.attrs["x_scale"])))),
                     I(int(nop.attrs["x_zero"])), I(0)]
        # every group stored: blocks of output rows sharing each codes load (no indices)
        rb = 8 if tile == 1 else 4
        dense = nnz >= GEMM_Q8_FILL * o * k4 and full is not None and o % rb == 0
        sym, fused, label = self._q8_kernel(op, "gemm" if dense else "spmm", (actn, pa, pb),
                                            tile=tile, codes=1 if codes else 0,
                                            rows=rb if dense else 1)
        wts = [I(0), I(0), full] if dense else w[:3]
        self.call(sym, [*wts, T(qn), T(out), *w[3:], I(m), I(o), I(ld), I(nrb), I(0), I(0),
                        I(0), I(0), *(codes or [I(0)] * 4), I(k4)], ntiles * nrb,
                  2.0 * 4 * (o * k4 if dense else nnz) / nrb * span, only_if=many)
        label += f" (dense rows, {rb} at once)" if dense else ""
        if not fused:
            self.act_on(out, (actn, pa, pb))
        return label + (" -> int8 codes (several rows)" if codes else "")

    def _q8_linear_reader(self, name: str, o: int) -> tuple[int, Op] | None:
        """(index, op) of the int8 linear that alone reads ``name`` (o features, a whole
        number of 4-feature groups), for its grouped codes to come from the writer."""
        if o % 4 or self.vw != 16 or "+avx512bw" not in self.features:
            return None
        j = self._only_reader(name)
        if j is None:
            return None
        nop = self.plan.ops[j]
        if nop.kind != "qlinear" or nop.inputs[0] != name or \
                int(nop.attrs["weight_shape"][1]) != o:
            return None
        return j, nop

    def _q8_kernel(self, op: Op, family: str, act, bits: int = 0, tile: int = 1,
                   residual: bool = False, codes: int = 0, rows: int = 1
                   ) -> tuple[str, bool, str]:
        """(symbol, fused?, label) of an int8 kernel for ``op`` on this CPU (``bits``: of the
        index stream it reads, default the stored group indices')."""
        actn, pa, pb = act
        fused = actn if actn in ("none", "relu", "clamp") else "none"
        vnni = self.vw == 16 and "+avx512vnni" in self.features
        if self.vw == 16 and not vnni and "+avx512bw" not in self.features:
            raise Unsupported("int8 needs AVX-512BW (or AVX2) for its 16-bit multiplies")
        if self.vw not in (8, 16):
            raise Unsupported("int8 kernels need AVX2 or AVX-512")
        idx = self.plan.constants[op.params["indices"]]
        bits = bits or (16 if idx.dtype == np.uint16 else 32)
        spec = QL.QLinearSpec(family, self.vw, vnni, bits, fused,
                              pa if fused == "clamp" else 0.0, pb if fused == "clamp" else 0.0,
                              tile, residual, codes, rows)
        return self.ir_kernel(spec), fused == actn, f"native int8 {'vnni' if vnni else 'pmaddwd'}"

    def op_qconv2d(self, op: Op):
        """Quantize into grouped polyphase planes (4 channels a dword), one int8 SpMM over
        ho x wq positions per sample whose groups read the planes at fixed offsets (the float
        shifted conv's scheme), then the crop (+ residual add + activation), or with no wrap
        columns the output (+ residual add + activation) straight from the kernel."""
        x, out = op.inputs[0], op.output
        nb, cin, h, w = self.shape(x)
        cout = self.shape(out)[1].value
        c = cin.value
        cg = -(-c // 4)
        g = SP.Shift.of(op, self.example(out))
        act = _act(op)
        res = self._residual(op, act)
        L = g.ho * g.wq
        tile = max(1, min(QL_TILE, -(-L // self.vw)))
        # no wrap columns (wq == wo: 1x1 convs, 'same' padding at stride 1 is not one): the
        # kernel writes the output itself, a residual add and its activation in its epilogue
        direct = g.wq == g.wo
        epi = act if res is None else res[2] if direct else ("none", 0.0, 0.0)
        # with no pass after the kernel, it may write the codes of the int8 1x1 conv that
        # reads its output (alone: codes only, else beside the float output)
        q8 = None
        if direct and epi[0] in ("none", "relu", "clamp"):
            q8 = self._q8_codes_out(self.plan.ops[res[0]].output if res is not None else out,
                                    cout, L, dual=True)
        # the groups' plane offsets are 32-bit whatever the stored group indices are
        sym, fused, label = self._q8_kernel(op, "conv", epi, 32, tile,
                                            residual=res is not None and direct,
                                            codes=0 if q8 is None else 1 if q8[4] else 2)
        per_sample = cg * g.phases * g.plane + g.slack  # dwords
        if per_sample >= 2**31:
            raise Unsupported("int8 conv planes past 2^31 codes a sample")
        if self.i in self.q8_in:  # x's writer wrote the codes too (_q8_codes_out)
            planes, per = self.q8_in[self.i]
            assert per == per_sample, (per, per_sample)
        else:
            planes = self.temp("q8planes", nb * per_sample * 4)
            scale, zero = float(op.attrs["x_scale"]), int(op.attrs["x_zero"])
            self.call(self.ir_kernel(QL.PhaseSpec(self.vw)),
                      [T(x), T(planes), I(nb), I(cin), I(h), I(w), I(g.ph), I(g.pw), I(g.sh),
                       I(g.sw), self.derived("pys", g.pys), I(len(g.pys)),
                       self.derived("pxs", g.pxs), I(len(g.pxs)), I(g.hq), I(g.wq),
                       I(per_sample), F(float(np.float32(1.0 / scale))), I(zero)],
                      nb * cg * g.phases, 4.0 * g.plane * 4)
        # group index tap * cg + c4 -> its dword offset in the sample's planes
        grp = self.plan.constants[op.params["indices"]].astype(np.int64)
        tap, c4 = np.divmod(grp, cg)
        dy, dx = np.divmod(tap, g.kw)
        qy, py = np.divmod(dy * g.dh, g.sh)
        qx, px = np.divmod(dx * g.dw, g.sw)
        phase = np.searchsorted(g.pys, py) * len(g.pxs) + np.searchsorted(g.pxs, px)
        offs = ((c4 * g.phases + phase) * g.plane + qy * g.wq + qx).astype(np.uint32)
        if direct:
            full = self.plan.ops[res[0]].output if res is not None else out
        else:
            full = self.temp("q8full", nb * cout * L * 4)
        ntiles = -(-L // (self.vw * tile))
        want = 4 * self.threads
        tiles_1 = max(ntiles * nb(max(2, self.plan.example_batch)), 1)
        nrb = max(1, min(cout, -(-want // tiles_1), 64))
        nnz = max(int(grp.shape[0]), 1)
        args = [self.const(op.params["indptr"]), self.derived("q8offs", offs),
                self.const(op.params["data"]), T(planes),
                I(0) if q8 is not None and q8[4] else T(full),
                self.const(op.params["mult"]), self.const(op.params["bias"]), I(L), I(cout),
                I(0), I(nrb), I(per_sample), I(cout * L), I(L),
                T(res[1]) if res is not None and direct else I(0)]
        if q8 is not None:
            args += [T(q8[0]), *q8[1:4]]
        self.call(sym, args, nb * ntiles * nrb, 2.0 * 4 * nnz / nrb * self.vw * tile)
        if direct:
            if not fused:
                self.act_pass(full, *epi)
            if res is not None:
                self.fused[res[0]] = (self.i, out)
                label += " + residual add"
            if q8 is not None:
                label += " -> int8 codes" + ("" if q8[4] else " + float32")
            return label
        label += self._crop(full, out, nb, cout, g, L, res)
        if not fused:  # (never with res: the epilogue then had no activation)
            self.act_pass(out, *act)
        return label

    # ---- linear ---------------------------------------------------------------------------
    def op_linear(self, op: Op):
        x, out = op.inputs[0], op.output
        xs, os_ = self.shape(x), self.shape(out)
        k, o = xs[-1].value, os_[-1].value
        m = numel(xs[:-1])
        act, a, b = _act(op)
        bias = op.params.get("bias")
        if not SP.is_sparse(op.attrs.get("fmt")):
            if op.attrs.get("in_kn") or op.attrs.get("out_kn"):
                raise Unsupported("a dense linear in the features x batch layout")
            guard = None
            if m(1) == 1:  # one row (batch 1): a GEMV over the row-major weight
                zero = self.derived("zero", np.zeros(1, np.float32))
                self.call(self.numba("k_gemv"),
                          [self.const(op.params["weight"]), T(x), T(out),
                           self.const(bias) if bias else zero, I(int(bias is not None)), I(o),
                           I(k), I(A.act_code(act)), F(a), F(b)], const(o), 2.0 * k,
                          only_if=[(m, "==", 1)])
                guard = [(m, "!=", 1)]
            self._linear_panels(op, x, out, m, k, o, (act, a, b), guard)
            if _fused(act) != act:
                self.act_on(out, (act, a, b), guard)
            return "native dense"
        return self.sparse_linear(op, x, out, m, k, o, (act, a, b), bias)

    def _linear_panels(self, op: Op, x: str, out: str, m: E, k: int, o: int, act,
                       guard) -> None:
        """A dense linear of m > 1 rows as GEMMs over its weight packed in panels of NR
        output columns, each K x NR contiguous (a batch entry of the GEMM: the M tiles of
        a panel run one after another and reuse it from L2), and the last part panel on
        its own. Row-major W^T (K x O) put each k step of a panel on another page: the
        classifier of ResNet-50 at batch 16 (2048 x 1000) ran at ~50 GFLOP/s."""
        w = self.plan.constants[op.params["weight"]].reshape(o, k)
        bias = op.params.get("bias")
        nr = 2 * self.vw  # (GemmSpec.nr)
        full = o // nr if LINEAR_PANELS else 0
        if full:
            packed = np.ascontiguousarray(w[:full * nr].reshape(full, nr, k).transpose(0, 2, 1))
            self.gemm(x=T(x), w=self.derived("wpanels", packed), out=T(out), bias=bias,
                      bias_mode="col", M=m, Nn=nr, K=k, lda=k, ldb=nr, ldc=o, act=act,
                      batch=full, sa=0, sb=k * nr, sc=nr, amod=full, bmod=full, sbias=nr)
            self._guard_last(guard)
        rest = o - full * nr
        if rest:
            wt = self.derived("wT", np.ascontiguousarray(w[full * nr:].T))
            bslot = None
            if bias is not None and full:
                bslot = self.derived("bias_rest",
                                     self.plan.constants[bias].reshape(-1)[full * nr:])
            self.gemm(x=T(x), w=wt, out=T(out, full * nr), bias=bias, bias_mode="col", M=m,
                      Nn=rest, K=k, lda=k, ldb=rest, ldc=o, act=act, bias_slot=bslot)
            self._guard_last(guard)

    def gemm(self, *, x: Slot, w: Slot, out: Slot, bias, bias_mode: str, M, Nn, K, lda, ldb,
             ldc, act, batch=1, sa=0, sb=0, sc=0, amod=1, bmod=1, sbias=0, a_is_w=False,
             res: Slot | None = None, bias_slot: Slot | None = None):
        """One GEMM call; ``a_is_w``: the weight is A (conv: W x cols), else B (linear);
        ``res``: a tensor laid out as out, added before the activation."""
        actn, pa, pb = act
        fused = _fused(actn)
        spec = G.GemmSpec(self.vw, bias_mode if bias else "none", fused,
                          pa if fused == "clamp" else 0.0, pb if fused == "clamp" else 0.0,
                          res is not None)
        sym = self.ir_kernel(spec)
        M, Nn, K = lift(M), lift(Nn), lift(K)
        tm, tn = M.cdiv(G.MR), Nn.cdiv(spec.nr)
        bslot = bias_slot if bias_slot is not None else self.bias_slot(bias)
        A_, B_ = (w, x) if a_is_w else (x, w)
        args = [A_, B_, out, bslot, I(M), I(Nn), I(K), I(lda), I(ldb), I(ldc), I(sa), I(sb),
                I(sc), I(amod), I(bmod), I(sbias), I(tm), I(tn), res or I(0)]
        per_item = 2.0 * G.MR * spec.nr * K(1)
        self.call(sym, args, lift(batch) * tm * tn, per_item)

    def _sparse_spec(self, op: Op, family: str, sw: SP.SparseWeight, act, has_bias: bool,
                     idx_bits: int, tile: int = 1, pattern=None, generic: bool = False):
        actn, pa, pb = act
        fused = _fused(actn, generic and family == "spmm" and pattern is None)
        spec = E_.KernelSpec(family, self.vw, tile, fused, pa if fused == "clamp" else 0.0,
                             pb if fused == "clamp" else 0.0, has_bias, idx_bits,
                             block=sw.block)
        baked = None
        if pattern is not None and SP.bakes(op, family):
            indptr, cols, xrs, span = pattern

            spec = replace(spec, pattern_hash=LK.pattern_hash(indptr, cols), xrs=int(xrs),
                           span=int(span))
            baked = E_.Pattern(indptr, cols)
        return spec, baked, fused != actn

    def sparse_linear(self, op: Op, x: str, out: str, m: E, k: int, o: int, act, bias):
        dst_heads, src_heads = self.dst_heads.get(self.i), self.src_heads.get(self.i)
        if dst_heads is not None:  # write the permuted (B, H, S, D) layout directly
            out = dst_heads[0]
        if src_heads is not None:  # read the unpermuted (B, H, S, E) tensor
            x = src_heads[0]
        params = {r: self.plan.constants[c] for r, c in op.params.items()}
        sw = SP.sparse_weight(op, params)
        bias_arr = SP._bias_for(sw, params["bias"]) if bias else np.zeros(1, np.float32)
        bslot = self.derived("bias", bias_arr)
        label = "native sparse generic"
        guard = None
        if m(1) == 1 and sw.family == "spmm":
            # one row (batch 1): the gather kernel on the row-major input; both layouts of a
            # features x batch hand-over coincide for one row
            spec, baked, tail = self._sparse_spec(op, "spmv", sw, act, bias is not None,
                                                  sw.idx_bits,
                                                  pattern=(sw.indptr, sw.indices, k, 0))
            units = sw.indptr
            if baked is not None:
                from sparsecc.codegen.llvm import emit_specialized as es

                units = es.chunk_bounds(sw.indptr, es.spmv_chunk_nnz(int(sw.indptr[-1])))
                label = "native sparse specialised"
            args = self._sparse_args(sw, bslot, T(x), T(out), L=m, xrs=k, ors=o)
            one = (m, "==", 1)
            self.call(self.sparse_kernel(spec, baked), args, len(units) - 1,
                      2.0 * sw.data.size / max(len(units) - 1, 1), only_if=one)
            if tail:
                self.act_on(out, act, one)
            guard = (m, "!=", 1)
        # several rows: SpMM over features x batch (rows kn_stride(m) floats apart)
        ld = kn_stride(m)
        if op.attrs.get("in_kn") or x in self.kn_res:
            xt = T(x)
        elif src_heads is None and (x, guard) in self.xt_of:  # one transpose for all readers
            name = self.xt_of[(x, guard)]  # (run under the same condition)
            self.p.buffers[name].last = self.i
            xt = T(name)
        else:
            name = self.temp("xt", ld * k * 4)
            if src_heads is None:
                self.xt_of[(x, guard)] = name
            if src_heads is not None:  # block (b, h): (S, E) at (b*H + h)*S*E -> (E, S)
                _, B, S, H, Eh = src_heads
                self.transpose(T(x), T(name), S, Eh, guard, src_ld=Eh, dst_ld=ld,
                               blocks=(B, H, H * S * Eh, S * Eh, S, Eh * ld))
            else:
                self.transpose(T(x), T(name), m, const(k), guard, dst_ld=ld)
            xt = T(name)
        # written as features x batch in place: a hand-over, or attention's q / k
        in_place = op.attrs.get("out_kn") or out in self.kn_res or \
            (dst_heads is not None and out in self.kn_heads)
        ot_name = None if in_place else self.temp("ot", ld * o * 4)
        ot = T(out) if ot_name is None else T(ot_name)
        tile = LK.spmm_tile(m(max(2, self.plan.example_batch)), self.vw, sw.block_rows)
        spec, _, tail = self._sparse_spec(op, sw.family, sw, act, bias is not None,
                                          sw.idx_bits, tile, generic=True)
        self.spmm(op, sw, spec, False, bslot, xt, ot, n=1, L=m, xrs=ld, ors=ld, xns=0, ons=0,
                  indices=sw.indices, x_rows=k, guard=guard)
        from sparsecc.native import transpose as TRN

        t_act = "none"
        if tail and ot_name is not None and act[0] in TRN.ACTS:
            t_act = act[0]  # applied by the output transpose: no pass of its own
        elif tail:  # over the padded rows too: a flat pass, the padding is never read
            self.act_on(ot_name or out, act, guard, n=ld * o)
        if ot_name is not None and dst_heads is not None:
            # block (b, h): (D, S) of the features x batch output at h*D*ld + b*S -> (S, D)
            _, B, S, H, D = dst_heads
            self.transpose(T(ot_name), T(out), D, S, guard, src_ld=ld, dst_ld=D,
                           blocks=(B, H, S, D * ld, H * S * D, S * D), act=t_act)
        elif ot_name is not None:
            self.transpose(T(ot_name), T(out), const(o), m, guard, src_ld=ld, act=t_act)
        return label

    def transpose(self, src: Slot, dst: Slot, m: E, k: E, guard=None, src_ld=None,
                  dst_ld=None, blocks=None, act: str = "none") -> None:
        """dst (k, m) = src (m, k)^T; rows src_ld / dst_ld floats apart (default: dense).
        ``blocks``: (nb1, nb2, ss1, ss2, ds1, ds2), the same over nb1 x nb2 blocks (see
        native.transpose)."""
        from sparsecc.native import transpose as TRN

        nb1, nb2, ss1, ss2, ds1, ds2 = blocks or (const(1), const(1), const(0), const(0),
                                                  const(0), const(0))
        self.call(self.ir_kernel(TRN.TransposeSpec(self.vw, act)),
                  [src, dst, I(m), I(k), I(k if src_ld is None else src_ld),
                   I(m if dst_ld is None else dst_ld), I(nb2), I(ss1), I(ss2), I(ds1), I(ds2)],
                  lift(nb1) * lift(nb2) * TRN.tiles(lift(m), lift(k)), 2.0 * TRN.TB * TRN.TB,
                  only_if=guard)

    def _guard_last(self, guard) -> None:
        if guard is not None:
            call = self.p.calls[-1]
            call.only_if = (call.only_if or []) + _conds(guard)

    def act_on(self, name: str, act, guard=None, n: E | None = None) -> None:
        """The activation in place on ``n`` floats (default: all) of a tensor or temporary
        (``guard``: as Call.only_if)."""
        actn, a, b = act
        own = n is None
        if own:
            n = self.p.buffers[name].nbytes.fdiv(4) if name in self.p.buffers else \
                numel(self.shape(name)[:2]) * self.cs[name] if name in self.cs else \
                numel(self.shape(name))
        with self._aware(own):  # (over the pads too: never read)
            self.call(self.numba("k_act"), [T(name), T(name), I(A.act_code(actn)), F(a),
                                            F(b)], n, 8.0, only_if=guard)

    def _sparse_args(self, sw: SP.SparseWeight, bias: Slot, x: Slot, out: Slot, **ints):
        slots = [I(0)] * E_.N_ARGS
        slots[E_.A_INDPTR] = self.derived("indptr", sw.indptr)
        slots[E_.A_IDX] = self.derived("idx", ints.pop("indices", sw.indices))
        slots[E_.A_DATA] = self.derived("data", ints.pop("data", sw.data))
        slots[E_.A_X], slots[E_.A_OUT], slots[E_.A_BIAS] = x, out, bias
        for slot, key in ((E_.A_ROWS, "rows"), (E_.A_L, "L"), (E_.A_XRS, "xrs"),
                          (E_.A_ORS, "ors"), (E_.A_NTILES, "ntiles"), (E_.A_XNS, "xns"),
                          (E_.A_ONS, "ons"), (E_.A_NRB, "nrb"), (E_.A_GN, "gn"),
                          (E_.A_NPANEL, "npanel")):
            if key in ints:
                slots[slot] = I(ints[key])
        if "rsplit" in ints:
            slots[E_.A_RSPLIT] = ints["rsplit"]
        if "indptr" in ints:
            slots[E_.A_INDPTR] = ints["indptr"]
        return slots

    def spmm(self, op: Op, sw: SP.SparseWeight, spec: E_.KernelSpec, specialise: bool,
             bias: Slot,
             x: Slot, out: Slot, *, n, L, xrs, ors, xns, ons, indices, x_rows, reach=0,
             guard=None, panel_of=None, res: Slot | None = None, xalign: bool = False,
             whole: bool = False, panels: int = 0, dual: np.ndarray | None = None,
             ods: int = 0, wrap: tuple[int, int] = (0, 0)):
        """``whole``: x's, out's (and res's) rows have room for L rounded up to whole vectors
        (their strides, or slack after them), whose extra lanes nothing else reads.
        ``dual``: the indices' pairs for dual planes (_dual_offsets), which the generic AVX2
        conv kernel takes (the others read the first copy at ``indices``). ``ods``: out is
        dual planes, the second copy ``ods`` floats past the first; the generic kernel
        writes both (KernelSpec.dual_out), else self.ods_missed is set. ``wrap``: (W', W),
        the generic kernel stores zero at out's wrap columns (KernelSpec.wrap), else
        self.wrap_missed is set.
        ``panels`` > 1: the grouped kernel runs a sample's tiles in that many panels, every
        row group over a panel before the next (emit.A_PANELS; the packed tail's blocks)."""
        fixed = lift(L).is_const() and lift(xrs).is_const()
        # the assembly addresses x and the values with 32-bit displacements
        near = lift(xns).is_const() and 4 * lift(xns).value < 2**31 and \
            4 * (sw.data.size + 256) < 2**31
        # rows in groups, pattern baked in as assembly (emit_specialized._group_asm)
        wide = lift(L).value if fixed else 0  # (the positions AVX2's generic kernel runs)
        if self.vw == 8 and whole and WHOLE_TILES:
            wide = -(-wide // 8) * 8
        mode = self._grouped(op, sw, lift(L).value, wide) if specialise and fixed and near \
            else None
        if (mode is not None or self.vw == 8) and whole and WHOLE_TILES and \
                lift(L).value % self.vw:
            # every tile whole: no second copy of the code for a part tile (AVX2: nor
            # masked loads and stores in the generic kernel's last tile, vmaskmovps)
            L = const(-(-lift(L).value // self.vw) * self.vw)
        kw = dict(n=n, L=L, xrs=xrs, ors=ors, xns=xns, ons=ons, indices=indices,
                  x_rows=x_rows, reach=reach, panel_of=panel_of, res=res, xalign=xalign,
                  panels=panels, dual=dual, ods=ods, wrap=wrap)
        if mode != "batch":
            return self._spmm_one(op, sw, spec, specialise, bias, x, out, mode == "always",
                                  guard, **kw)
        # a short row in the whole-batch tail (or any small map with AVX2): grouped when the
        # call's samples give the group code enough positions, else the row-by-row kernel
        # (two calls, one runs)
        least = GROUP_MIN_TILES if self.vw == 16 else GROUP_AVX2_MIN_TILES
        min_n = -(-least // -(-lift(L).value // self.vw))
        label = self._spmm_one(op, sw, spec, specialise, bias, x, out, True,
                               _conds(guard or []) + [(lift(n), ">=", min_n)], **kw)
        other = self._spmm_one(op, sw, spec, specialise, bias, x, out, False,
                               _conds(guard or []) + [(lift(n), "<", min_n)], **kw)
        return f"{label} at batch >= {min_n}, else {other}"

    def _spmm_one(self, op: Op, sw: SP.SparseWeight, spec: E_.KernelSpec, specialise: bool,
                  bias: Slot, x: Slot, out: Slot, grouped: bool, guard, *, n, L, xrs, ors,
                  xns, ons, indices, x_rows, reach, panel_of, res, xalign, panels, dual,
                  ods, wrap):
        from sparsecc.codegen.llvm import driver

        baked = None
        fixed = lift(L).is_const() and lift(xrs).is_const()
        if spec.edge and not grouped:
            raise AssertionError(f"rows planes without the grouped kernel: {op.layer}")
        if (spec.xts or spec.ots or spec.rts) and not grouped:
            self.untm.update(self.tm_names)  # (tile-major only in grouped kernels)
        if grouped or (specialise and SP.bakes(op, sw.family) and fixed and
                       not spec.residual):
            spec = replace(spec, pattern_hash=LK.pattern_hash(sw.indptr, indices),
                           xrs=lift(xrs).value, span=lift(L).value,
                           **(_grouping(op, sw, xalign, indices, self.vw, lift(L).value,
                                        spec.residual) if grouped else {}))
            if spec.group > 1 and panels > 1:
                spec = replace(spec, panels=True)
            elif spec.group > 1:
                groups = -(-sw.rows // spec.group)
                spec = replace(spec, kcols=self._kcols(indices, spec.span, groups))
            baked = E_.Pattern(sw.indptr, indices)
        # the generic AVX2 kernel over a conv's positions in whole vectors: tiles of 5-8
        # vectors, and column panels whose x fits what the tile's partial sums and the
        # streamed weights leave of L1 (AVX2_PANEL_X_BYTES). (Not with a part vector:
        # MobileNetV2's 1x1 convs over 7 x 7 maps 49 floats apart ran 1.5-1.8x slower in one
        # tile of 7 vectors than grouped, its 14 x 14 ones 1.1-1.2x slower in tiles of 5.)
        avx2_conv = AVX2_WIDE and baked is None and self.vw == 8 and \
            sw.family == "spmm" and op.kind != "linear" and lift(L).is_const() and \
            lift(L).value % 8 == 0
        if avx2_conv and spec.tile == 4:
            spec = replace(spec, tile=LK.wide_tile(lift(L).value, spec.vw))
        if avx2_conv and dual is not None:
            spec, indices = replace(spec, idx_bits=64), dual
        if ods and avx2_conv and spec.act in E_.FUSED_ACTS:
            spec = replace(spec, dual_out=True)
        elif ods:
            self.ods_missed = True
        if wrap[0] and avx2_conv and spec.act in E_.FUSED_ACTS and not spec.ots:
            spec = replace(spec, wrap=wrap)
        elif wrap[0]:
            self.wrap_missed = True
        sym = self.sparse_kernel(spec, baked)
        L = lift(L)
        ntiles = L.cdiv(spec.vw * spec.tile)
        row_bounds = None
        indptr, idx, data = sw.indptr, indices, sw.data
        if baked is not None:
            from sparsecc.codegen.llvm import emit_specialized as es

            row_bounds = es.spmm_bounds(sw.indptr, spec.group)
            if grouped:  # the values in the order the code reads them
                data = data[es.group_order(sw.indptr, indices, spec.group, spec.kcols)]
        units = row_bounds if row_bounds is not None else sw.indptr
        nunits = len(units) - 1
        # Row blocks per tile: enough items for every thread when there are few tiles (batch
        # 1), one block (the x tile read once) when there are many: the choice is made at run
        # time between the two, as the executor makes it when it binds a batch.
        want = 4 * self.threads
        tiles = lift(n) * ntiles
        tiles_1 = max(tiles(1), 1)
        nrb_few = max(1, min(nunits, -(-want // tiles_1))) if self.threads > 1 else 1
        variants = [(1, guard)]
        if spec.kcols:
            # a few row blocks of groups, an item one of them over a set of samples
            variants = [(self._kblock_row_blocks(nunits), guard)]
        elif spec.group > 1:
            # row blocks of a few groups, or one group each (the kernel runs row blocks
            # slowest, then samples, then tiles: a block's code is reused over the call's
            # positions; group_blocks)
            ob = 64 if spec.ots else 4 * lift(ors).value if lift(ors).is_const() else 0
            variants = [(group_blocks(nunits, sw.data.size, tiles_1, self.threads,
                                      spec.group * ob), guard)]
        elif nrb_few > 1:
            variants = [(nrb_few, _conds(guard or []) + [(tiles, "<", want)]),
                        (1, _conds(guard or []) + [(tiles, ">=", want)])]
        npanel = 1
        # AVX2, a conv over a small map with a part vector (AVX2_PART_PANELS): no panels
        short = AVX2_PART_PANELS and self.vw == 8 and op.kind != "linear" and \
            not avx2_conv and lift(L).is_const() and lift(L).value % 8 != 0 and \
            lift(L).value <= 2 * spec.tile * spec.vw
        if row_bounds is None and sw.family == "spmm" and not short:
            tile_floats = spec.tile * spec.vw
            panels = LK.column_panels(panel_of if panel_of is not None else indices, x_rows,
                                      tile_floats, 1.0 + reach / tile_floats,
                                      out_rows=sw.rows if op.kind == "linear" or avx2_conv
                                      else None,
                                      **(dict(budget=AVX2_PANEL_X_BYTES, least=8)
                                         if avx2_conv else {}))
            if panels is not None and panels[1] > 1:
                npanel = panels[1]
                indptr, idx, data = LK.panelize(indptr, idx, data, panels[0], npanel)
        # (grouped, or the generic CSR kernel in one column panel: each item's rows' residual
        # read in the epilogue, then the sum stored over it at out's offsets; no partial sums
        # through out. Row bands: native.bands drops the share)
        in_place = res is not None and npanel == 1 and not spec.kcols and \
            not spec.res_rs and spec.rts == spec.ots and \
            (spec.group > 1 if baked is not None else sw.family == "spmm")
        for nrb, cond in variants:
            rsplit = driver.nnz_splits(sw.indptr if row_bounds is None else
                                       sw.indptr[row_bounds], nrb)
            nrb = len(rsplit) - 1
            args = self._sparse_args(sw, bias, x, out, indices=idx, data=data,
                                     rows=sw.rows, L=L, xrs=xrs, ors=ors, ntiles=ntiles,
                                     xns=xns, ons=ons, nrb=nrb, gn=sw.gn, npanel=npanel,
                                     rsplit=self.derived("rsplit", rsplit),
                                     indptr=self.derived("indptr", indptr))
            if res is not None:
                args[E_.A_RES] = res
            if spec.dual_out:
                args[E_.A_ODS] = I(ods)
            args[E_.A_NB] = I(n)
            items, per_item = tiles * nrb, 2.0 * sw.data.size / nrb * spec.vw * spec.tile
            if spec.kcols:  # an item a row block of a set of samples
                # (samples a set: their x of one column block in KBLOCK_X_BYTES)
                row = _round16(spec.span) if spec.xts else max(spec.xrs, 1)  # (a channel)
                per = max(1, KBLOCK_X_BYTES // (4 * spec.kcols * row))
                args[E_.A_GXB], args[E_.A_GRR] = I(per), I(0)
                items = lift(n).cdiv(per) * nrb
                per_item *= max(ntiles(1), 1) * per
            elif spec.group > 1:
                if panels > 1:  # a block at a time, its tiles in panels
                    args[E_.A_GXB], args[E_.A_GRR] = I(xns), I(0)
                    args[E_.A_PANELS] = I(panels)
                else:
                    xsb = 4 * lift(xns).value
                    gxb = group_block(sw.data.size, nunits, xsb)
                    # tiles outer, or groups in ranges (a sample at a time in a range, its x
                    # read once a range), or neither: groups outer over blocks of samples
                    outer = group_tiles_outer(sw.data.size, xsb)
                    grr = group_ranges(sw.data.size, nunits, xsb) \
                        if gxb == GROUP_X_WHOLE and not outer else 0
                    if grr and nrb < nunits:  # (a range counts row blocks)
                        grr = max(1, -(-grr * nrb // nunits))
                    args[E_.A_GXB] = I(lift(xns).value if grr else gxb // 4)
                    args[E_.A_GRR] = I(-1 if outer else grr)
            self.call(sym, args, items, per_item, only_if=cond)
            if in_place:
                self.res_in_place.append(self.p.calls[-1])
        if spec.group > 1:
            return f"native sparse specialised (rows in groups of {spec.group}, assembly)"
        return "native sparse specialised" if baked is not None else "native sparse generic"

    def _kblock_row_blocks(self, groups: int) -> int:
        """Row blocks of a column-blocked grouped call of ``groups`` row groups (an item is
        one of them over a set of samples): KBLOCK_ITEMS a thread."""
        return max(1, min(groups, KBLOCK_ITEMS * self.threads))

    def _kcols(self, indices: np.ndarray, span: int, groups: int) -> int:
        """KernelSpec.kcols of the op's grouped call: blocks of whole input channels (with
        all their planes: a stride-2 conv has four), KBLOCK columns (channels x taps;
        KBLOCK_TAIL in the whole-batch tail, fewer where an item's code would pass
        KBLOCK_TAIL_NNZ values: a row block of ``groups`` groups over a column block) or a
        little more, or two blocks (KBLOCK_HALVES); in index units (a shifted conv's indices
        are float offsets, a pointwise one's channel rows). Only when that makes
        two blocks or more over maps of at most KBLOCK_TILES vectors (KBLOCK_TILES_S2 for a
        strided conv; ``span`` floats a sample); else 0."""
        op = self.plan.ops[self.i]
        tail = self.tail_from is not None and self.i >= self.tail_from
        cols = env_kblock(KBLOCK_TAIL if tail and KBLOCK > 0 else KBLOCK)
        if cols <= 0 or not indices.size:
            return 0
        kernel = op.attrs.get("kernel", (1, 1)) if op.kind == "conv2d" else (1, 1)
        taps = int(np.prod([int(v) for v in kernel]))
        cin = self.shape(op.inputs[0])[1].value
        per = -(-cols // taps)  # channels a block
        if tail and KBLOCK_TAIL_NNZ > 0:
            nrb = self._kblock_row_blocks(groups)
            per = max(1, min(per, KBLOCK_TAIL_NNZ * nrb * cin // indices.size))
        if cin < 2 * per and cin * taps >= KBLOCK_HALVES > 0:
            per = cin // 2  # (two blocks of half the channels)
        strided = any(int(v) > 1 for v in op.attrs.get("stride", (1,))) \
            if op.kind == "conv2d" else False
        tiles = KBLOCK_TILES_S2 if strided else KBLOCK_TILES
        if cin < 2 * per or span > tiles * self.vw:
            return 0
        return per * -(-(int(indices.max()) + 1) // cin)

    def _taps(self, op: Op, sparse: bool, cout: int) -> float:
        """The nonzero taps a channel of a planar conv ``op`` keeps on average."""
        params = {r: self.plan.constants[c] for r, c in op.params.items()}
        nnz = SP.as_csr(op, params)[2].size if sparse else \
            int(np.count_nonzero(params["weight"]))
        return nnz / max(cout, 1)

    def _expand_block(self, nnz: int, cout: int, cin: int, hw: int) -> int:
        """Channels an expand conv (``nnz`` values, cin -> cout over ``hw`` positions) inside
        a depthwise one computes at a time (DepthwiseSpec.ex_block): EXPAND_BLOCK where its
        weight is at least EXPAND_BLOCK_DENSITY dense and the channels split into such
        groups, with AVX-512; with AVX2 (2 vectors of positions a step, dwsmall.expand_step)
        only where its input is over a core's L2 a sample (EXPAND_BLOCK_AVX2), else 1."""
        ok = EXPAND_BLOCK > 1 and cout % EXPAND_BLOCK == 0 and \
            nnz >= EXPAND_BLOCK_DENSITY * cout * cin
        if self.vw != 16:
            ok = ok and EXPAND_BLOCK_AVX2 and 4 * cin * hw > l2_bytes()
        return EXPAND_BLOCK if ok else 1

    def _grouped(self, op: Op, sw: SP.SparseWeight, span: int, wide: int = 0) -> str | None:
        """Whether a CSR conv runs the grouped assembly kernel: AVX-512 or AVX2, any
        nonzero, the layer not kept generic (attrs['specialize'] False, or
        SPARSECC_GROUPED=0), and with AVX-512 "always" with at least GROUP_MIN_TILES vectors
        of output positions a sample (each group's code, fetched once a sample, runs for
        every one of them); in the whole-batch tail "batch" with fewer: at batches with that
        many positions in all. With AVX2 "batch" (GROUP_AVX2_MIN_TILES) on maps of at most
        GROUP_AVX2_SPAN floats, unless the generic kernel runs them (``wide`` positions a
        sample, whole vectors where the rows have room) in wide tiles of whole vectors; else
        none."""
        if not (self.vw in (8, 16) and sw.family == "spmm" and sw.data.size > 0 and
                op.attrs.get("specialize") is not False and env_grouped()):
            return None
        if self.vw == 8:
            if AVX2_WIDE and wide % 8 == 0 and LK.wide_tile(wide, 8) > 4:
                return None
            return "batch" if span <= GROUP_AVX2_SPAN else None
        if span >= GROUP_MIN_TILES * self.vw:
            return "always"
        return "batch" if self.tail_from is not None and self.i >= self.tail_from else None

    # ---- conv2d ---------------------------------------------------------------------------
    def op_conv2d(self, op: Op):
        x, out = op.inputs[0], op.output
        a = op.attrs
        kh, kw = (int(v) for v in a["kernel"])
        sh, sw_ = (int(v) for v in a["stride"])
        ph, pw = (int(v) for v in a["padding"])
        dh, dw = (int(v) for v in a["dilation"])
        groups = int(a["groups"])
        nb, cin, h, w = self.shape(x)
        _, cout, ho, wo = self.shape(out)
        cin_, cout_, ho_, wo_ = cin.value, cout.value, ho.value, wo.value
        act = _act(op)
        bias = op.params.get("bias")
        sparse = SP.is_sparse(a.get("fmt"))
        hw = ho_ * wo_
        # a channel's plane from one input plane: depthwise, or a 1-channel input's conv
        planar = groups == cin_ and (cin_ > 1 or cout_ > 1) and (not sparse or cin_ == 1)
        if planar and DW.fits(self.vw, h.value, w.value, ho_, wo_, sh, sw_, cin_, cout_,
                              act[0], kh, kw, ph, pw, dh, dw, self._taps(op, sparse, cout_)):
            q8 = self._q8_codes_out(out, cout_, hw)  # (codes only: no dual store here)
            ex = self.expand_in.pop(self.i, None)
            exa = ex[1] if ex else ("", 0.0, 0.0)
            spec = DW.DepthwiseSpec(self.vw, h.value, w.value, kh, kw, ph, pw, dh, dw, act[0],
                                    act[1] if act[0] == "clamp" else 0.0,
                                    act[2] if act[0] == "clamp" else 0.0, bias is not None,
                                    cout_ // cin_, sh, q8 is not None, exa[0],
                                    exa[1] if exa[0] == "clamp" else 0.0,
                                    exa[2] if exa[0] == "clamp" else 0.0,
                                    bool(ex and ex[3]))
            ecin = self.shape(ex[0].inputs[0])[1].value if ex else 0
            block = self._expand_block(len(ex[2][2]), cout_, ecin, h.value * w.value) \
                if ex else 1
            # x's (the expand's input's) and out's channel strides (Lowering.cs), out
            # tile-major where the kernel can write it so (DW_TILE_MAJOR)
            xin = ex[0].inputs[0] if ex else x
            xcs = self.cs.get(xin, 0) if DW_STRIDES else 0
            ocs = self.cs.get(out, 0) if q8 is None and DW_STRIDES else 0
            spec = replace(spec, ex_block=block, xcs=xcs, ocs=ocs)
            ots = self._tiled(out) if DW_TILE_MAJOR and q8 is None and spec.tile_out else 0
            spec = replace(spec, ots=ots, ocs=0 if ots else ocs)
            if sparse:  # the kernel skips zero taps itself: its weights as a dense table
                csr = SP.as_csr(op, {r: self.plan.constants[c] for r, c in op.params.items()})
                wslot = self.derived("wplanar", csr_to_dense(*csr, (cout_, kh * kw)))
            else:
                wslot = self.const(op.params["weight"])
            args = [T(x), wslot, self.bias_slot(bias), T(out), I(cout), I(0), I(0), I(0)]
            if q8 is not None:
                args[DW.D_OUT] = T(q8[0])
                args[DW.D_INV:DW.D_QSTRIDE + 1] = q8[1:4]
            cost = 2.0 * kh * kw * hw
            if ex:  # the expand conv's input, weights and bias
                eop, _, (eptr, eidx, edata), ebias = ex
                args[DW.D_X] = T(eop.inputs[0])
                if block > 1:  # a dense (C / M, cin, M) table
                    dense = csr_to_dense(eptr, eidx, edata, (cout_, ecin))
                    edata = dense.reshape(cout_ // block, block, ecin).transpose(0, 2, 1)
                args += [self.derived("ex_indptr", eptr.astype(np.int64)),
                         self.derived("ex_idx", eidx.astype(np.int32)),
                         self.derived("ex_data", np.ascontiguousarray(edata, np.float32)),
                         self.bias_slot(ebias), I(ecin)]
                cost += 2.0 * edata.size / cout_ * h.value * w.value
            per = DW.expand_scratch(spec)
            if per:
                args += [SCRATCH, I(per), THREADS]
            with self._aware(DW_STRIDES), self._tm_aware(out if ots else None):
                self.call(self.ir_kernel(spec), args, nb * (cout_ // block), cost * block,
                          scratch=per)
            return ("native depthwise (plane in registers)" if cin_ > 1 else
                    "native direct conv (1 input channel, planes in registers)") + \
                (" -> int8 codes" if q8 is not None else "") + \
                (f" + the 1x1 expand {ex[0].layer or ex[0].name} "
                 + (f"{block} channels at a time" if block > 1 else "a channel at a time")
                 if ex else "")
        # (the kernel sizes its output from the padding: not a "same" conv's asymmetric one)
        if SC.fits(self.vw, cin_, cout_, groups, (sh, sw_), kh, kw, wo_, act[0]) and \
                (conv_out(h.value, kh, sh, ph, dh), conv_out(w.value, kw, sw_, pw, dw)) == \
                (ho_, wo_):
            j = self._stem_pool(out, act)
            spec = SC.SmallConvSpec(self.vw, cin_, cout_, h.value, w.value, kh, kw, sh, ph, pw,
                                    dh, dw, act[0], act[1] if act[0] == "clamp" else 0.0,
                                    act[2] if act[0] == "clamp" else 0.0, bias is not None,
                                    pool=j is not None)
            if sparse:  # zero taps cost an FMA each: its weights as a dense table
                csr = SP.as_csr(op, {r: self.plan.constants[c] for r, c in op.params.items()})
                wslot = self.derived("wsmall", spec.weights(
                    csr_to_dense(*csr, (cout_, cin_ * kh * kw))))
            elif spec.row_loop:  # (a block's weights tap by tap, or Winograd's)
                wslot = self.derived("wsmall", spec.weights(
                    self.plan.constants[op.params["weight"]]))
            else:
                wslot = self.const(op.params["weight"])
            if j is not None:  # the max pool after it runs in the same kernel
                self.fused[j] = (self.i, out)
                pop = self.plan.ops[j]
                # its output may be tile-major (the 1x1 convs reading it load a tile's
                # channels from one run instead of 64 planes 12.5 KB apart)
                with self._tm_aware(pop.output) if SC.POOL_TILE_MAJOR else nullcontext():
                    spec = replace(spec, ots=self._tiled(pop.output)
                                   if SC.POOL_TILE_MAJOR else 0)
                    self.call(self.ir_kernel(spec), [T(x), wslot, self.bias_slot(bias),
                                                     T(pop.output)],
                              nb * spec.items,
                              2.0 * cout_ * cin_ * kh * kw * wo_ * ho_ / spec.items)
                kind = ("Winograd F(4x4) conv" if spec.winograd2d else
                        "Winograd F(4) along x conv" if spec.winograd else "direct conv")
                return f"native {kind} (few input channels) + max pool {pop.layer or pop.name}"
            self.call(self.ir_kernel(spec), [T(x), wslot, self.bias_slot(bias), T(out)],
                      nb * spec.items, 2.0 * cout_ * cin_ * kh * kw * wo_ * ho_ / spec.items)
            return "native direct conv (few input channels)"
        if not sparse and groups == cin_ and cin_ > 1:
            wt = self.const(op.params["weight"])
            bslot = self.bias_slot(bias)
            per = CV.depthwise_scratch(ho_, wo_, kh, kw, sh, sw_, dh, dw)
            self.call(self.numba("k_depthwise"),
                      [T(x), wt, bslot, I(int(bias is not None)), T(out), I(nb), I(cin), I(h),
                       I(w), I(cout), I(ho), I(wo), I(kh), I(kw), I(sh), I(sw_), I(ph), I(pw),
                       I(dh), I(dw), I(A.act_code(act[0])), F(act[1]), F(act[2]), SCRATCH,
                       I(per), THREADS], nb * cout_, 2.0 * kh * kw * hw, scratch=per)
            return "native depthwise"
        pointwise = (kh, kw, sh, sw_, ph, pw) == (1, 1, 1, 1, 0, 0)
        cg = cin_ // groups
        krows = cin_ * kh * kw

        def im2col() -> str:
            cols = self.temp("cols", nb * krows * hw * 4)
            self.call(self.numba("k_im2col"),
                      [T(x), T(cols), I(nb), I(cin), I(h), I(w), I(0), I(cin), I(kh), I(kw),
                       I(sh), I(sw_), I(ph), I(pw), I(dh), I(dw), I(ho), I(wo)],
                      nb * krows, float(hw))
            return cols

        if not sparse:
            weight = self.const(op.params["weight"])
            og = cout_ // groups
            kg = cg * kh * kw
            src = T(x) if pointwise and groups == 1 else T(im2col())
            res = self._residual(op, act) if groups == 1 else None
            # (with a residual: act(conv + other) into the add's output)
            out, other, act = self._fuse_residual(res, out, act)
            res_slot = None if other is None else T(other)
            self.gemm(x=src, w=weight, out=T(out), bias=bias, bias_mode="row", M=og, Nn=hw,
                      K=kg, lda=kg, ldb=hw, ldc=hw, act=act, batch=nb * groups,
                      sa=og * kg, sb=kg * hw, sc=og * hw, amod=groups, bmod=nb * groups,
                      sbias=og, a_is_w=True, res=res_slot)
            self.act_pass(out, act[0] if _fused(act[0]) != act[0] else "none", act[1], act[2])
            return "native dense" + (" + residual add" if res_slot is not None else "")
        if groups != 1:
            raise Unsupported("a sparse grouped conv")
        params = {r: self.plan.constants[c] for r, c in op.params.items()}
        j = self._expand_reader(op, out) if pointwise and env_expand() else None
        if j is not None:  # computed inside the depthwise conv after it (op_conv2d above)
            self.expand_in[j] = (op, act, SP.as_csr(op, params), bias)
            self.fused[self.i] = (j, out)
            dop = self.plan.ops[j]
            return f"fused into {dop.layer or dop.name} (expanded a channel at a time)"
        swt = SP.sparse_weight(op, params)
        bias_arr = SP._bias_for(swt, params["bias"]) if bias else np.zeros(1, np.float32)
        bslot = self.derived("bias", bias_arr)
        method = SP.conv_method(op, self.example(x), self.example(out))
        empty = swt.data.size == 0 and swt.family == "spmm"
        if empty:  # no weight left: act(bias (+ residual)) per channel; x is never read, so
            method = "pointwise"  # no phases, crop or im2col (ResNet-18's emptied layer4
            # convs at batch 1: ~70 us each through the shifted path)
        if method == "shifted":
            return self._shifted(op, swt, x, out, bslot, act)
        grouped = self._grouped(op, swt, hw)
        res = None if SP.bakes(op, swt.family) and not grouped else self._residual(op, act)
        # (with a residual: act(conv + other) into the add's output)
        out, other, act = self._fuse_residual(res, out, act)
        res_slot = None if other is None else T(other)
        xsrc = T(x) if method == "pointwise" else T(im2col())
        rows_in = 1 if empty else cin_ if method == "pointwise" else krows  # (1: no panels)
        tile = LK.spmm_tile(hw, self.vw, swt.block_rows)
        spec, _, tail = self._sparse_spec(op, swt.family, swt, act, bias is not None,
                                          swt.idx_bits, tile)
        if res_slot is not None:
            spec = replace(spec, residual=True)
        if self._pk_need(x, out, other):  # the batch packed into the positions (PACK)
            if method != "pointwise" or tail or empty:
                self._pk_unpack(x, out, other)
            span = PACK_B * hw
            xts = self._pk_tiled(x)
            spec, ors = self._pk_out_strides(spec, out, other, span, xts)
            with self._packed(), self._tm_aware(x, out, other):
                label = self.spmm(op, swt, spec, True, bslot, T(x), T(out),
                                  n=lift(nb).cdiv(PACK_B), L=span, xrs=16 if xts else span,
                                  ors=ors, xns=cin_ * span, ons=cout_ * span,
                                  indices=swt.indices, x_rows=cin_, res=res_slot, whole=True,
                                  panels=self._panels(cin_, span))
            return label + (" + residual add" if res_slot is not None else "")
        # x's and out's channels at their strides (Lowering.cs); a residual's must be out's
        xcs = self._cstride(x) if method == "pointwise" else hw
        ocs = self._cstride(out)
        xns, ons = rows_in * xcs, cout_ * ocs
        # tile-major tensors (Lowering.tm): channels 16 floats apart, tiles C x 16
        xts = self._tiled(x) if method == "pointwise" else 0
        ots = self._tiled(out)
        xcs, ocs = 16 if xts else xcs, 16 if ots else ocs
        spec = replace(spec, xts=xts, ots=ots, rts=self._tiled(other))
        # band-major tensors (native.bands): a channel's rows of a band rows x W floats apart
        bx = self.band_major.get(self.plan.storage_root(x))
        if bx and method == "pointwise":
            xcs = bx * wo_
        ocs, res_rs = self._band_strides(out, other, wo_, ocs)
        if res_slot is not None:
            self._same_cs(other, out)
            spec = replace(spec, res_rs=res_rs)
        # (room for whole tiles: a tile-major tensor's are whole)
        xwhole = method == "pointwise" and (bool(xts) or xcs >= _round16(hw))
        whole = xwhole and (bool(ots) or ocs >= _round16(hw))
        into = self._rows_target(out) if res_slot is None and not tail and not empty else None
        # (a 1x1 conv reads the positions it writes: it may run in row bands)
        band = BD.Band(ho_, wo_, 0) if pointwise and method == "pointwise" and not empty \
            else None
        if into is not None:  # the interiors of the next conv's rows planes
            with self._banded(band):
                return self._into_rows(op, swt, spec, bslot, xsrc, into, n=nb, L=hw, xrs=xcs,
                                       xns=xns, indices=swt.indices,
                                       x_rows=rows_in, whole=xwhole)
        with self._aware(), self._banded(band), \
                self._tm_aware(x if method == "pointwise" else None, out, other):
            label = self.spmm(op, swt, spec, True, bslot, xsrc, T(out), n=nb, L=hw, xrs=xcs,
                              ors=ocs, xns=xns, ons=ons,
                              indices=swt.indices, x_rows=rows_in, res=res_slot,
                              whole=whole)
        if tail:
            self.act_pass(out, *act)
        return label + (" + residual add" if res_slot is not None else "") + \
            (" (no weights: bias only)" if empty else "")

    def _band_strides(self, out: str, other: str | None, w: int, ocs: int) -> tuple[int, int]:
        """(out's channel stride, the residual's when it differs, else 0) with band-major
        tensors (native.bands: a channel's rows of a band ``rows`` x w floats apart)."""
        bo = self.band_major.get(self.plan.storage_root(out))
        ocs = bo * w if bo else ocs
        if other is None:
            return ocs, 0
        br = self.band_major.get(self.plan.storage_root(other))
        rcs = br * w if br else 16 if self._tiled(other) else self._cstride(other)
        return ocs, (rcs if rcs != ocs else 0)

    def _rows_geom(self, j: int) -> RowsGeom | None:
        """The rows planes op j reads its input from, when it takes them (ROWS_PLANES): a
        sparse 3x3 conv, stride 1 (or 2: ROWS_STRIDE2), padding 1, whose output maps are at
        least 3 wide and run the grouped kernel a sample at a time; at stride 1 its input not
        written as a shifted conv's wide rows (those go into padded planes,
        _planes_reader). None otherwise."""
        if j in self._rows_memo:
            return self._rows_memo[j]
        self._rows_memo[j] = None  # (while deciding)
        plan, op = self.plan, self.plan.ops[j]
        a = op.attrs
        stride = tuple(int(v) for v in a["stride"]) if op.kind == "conv2d" else None
        if not (ROWS_PLANES and self.vw == 16 and env_native_fuse() and op.kind == "conv2d"
                and int(a.get("groups", 1)) == 1 and SP.is_sparse(a.get("fmt"))
                and tuple(int(v) for v in a["kernel"]) == (3, 3)
                and stride in ((1, 1), (2, 2) if ROWS_STRIDE2 else (1, 1))
                and tuple(int(v) for v in a["padding"]) == (1, 1)
                and tuple(int(v) for v in a.get("dilation", (1, 1))) == (1, 1)):
            return None
        x = op.inputs[0]
        xs, os_ = self.example(x), self.example(op.output)
        c, h, w = int(xs[1]), int(os_[2]), int(os_[3])  # (output rows and columns)
        if c <= 4 or w < 3 or self._dtype(x) != "float32" or \
                SP.conv_method(op, xs, os_) != "shifted":
            return None
        params = {r: plan.constants[k] for r, k in op.params.items()}
        sw = SP.sparse_weight(op, params)
        if sw.family != "spmm" or sw.data.size == 0 or op.attrs.get("specialize") is False \
                or not env_grouped() or h * w < GROUP_MIN_TILES * self.vw:
            return None
        s = stride[0]
        made = self._writers(x)
        if s == 1 and made and self._wide_writer(made[0]):
            return None  # (stride 2 always splits x into its phase planes itself)
        L = h * w
        spill = _round16(L) - L
        # stride 1: one plane a channel, zero rows above and below (whole tiles written
        # into it stay in its rows); stride 2: four, each a phase of x's rows (the first
        # padded) and of its columns (none padded), h + 1 rows of w
        rows = h + 2 if s == 1 else h + 1
        e = max(0, -(-spill // w) - 1) if s == 1 else 0
        while (w * (rows + e)) % 16:  # every plane's interior on a cache line
            e += 1
        ps = w * (rows + e)
        # the front: f - 1 = ES.ROWS_BASE mod w (the kernel finds a tap's dx from its
        # offset), the interior at f + w on a cache line
        f = ES.ROWS_BASE + 1 + (16 // math.gcd(w, 16) - 1) * w
        planes = c * (1 if s == 1 else 4)
        geom = RowsGeom(c, h, w, e, ps, f, _round16(f + planes * ps + 96), s)
        self._rows_memo[j] = geom
        return geom

    def _wide_writer(self, i: int) -> bool:
        """Whether op i writes its output as a shifted conv's wide rows (not dense)."""
        op = self.plan.ops[i]
        if op.kind != "conv2d" or int(op.attrs.get("groups", 1)) != 1 or \
                not SP.is_sparse(op.attrs.get("fmt")):
            return False
        xs, os_ = self.example(op.inputs[0]), self.example(op.output)
        if int(xs[1]) <= 4 or SP.conv_method(op, xs, os_) != "shifted":
            return False
        g = SP.Shift.of(op, os_)
        return not (self._rows_geom(i) is not None or g.wq == g.wo and SHIFT_DIRECT)

    def _rows_target(self, name: str) -> int | None:
        """The op whose rows planes a dense writer of ``name`` writes straight into: the
        only reader of ``name``, when it takes rows planes."""
        j = self._only_reader(name)
        if j is None or j <= self.i or self.plan.ops[j].inputs[0] != name:
            return None
        g = self._rows_geom(j)
        return j if g is not None and g.stride == 1 else None

    def _into_rows(self, op: Op, swt, spec, bslot: Slot, xsrc: Slot, j: int, *, n, L, xrs,
                   xns, indices, x_rows, whole: bool, suffix: str = "", **kw) -> str:
        """A conv's dense output written into the interiors of op j's rows planes (rows of
        W, channels ps apart, after f floats), then their zero rows written."""
        g = self._rows_geom(j)
        spec = replace(spec, ots=0, rts=0)  # (out: the planes, never tile-major)
        planes = self.temp("rows_planes", n * g.per_sample * 4)
        self.planes_in[j] = planes
        cout = swt.rows
        with self._aware(), self._tm_aware(xsrc.name if spec.xts else None):
            label = self.spmm(op, swt, spec, True, bslot, xsrc, T(planes, g.f + g.w), n=n,
                              L=L, xrs=xrs, ors=g.ps, xns=xns, ons=g.per_sample,
                              indices=indices, x_rows=x_rows, whole=whole, **kw)
        with self._banded(BD.Band(g.h, g.w, -1) if self.band is not None else None):
            self.call(self.numba("k_rowpads"), [T(planes, g.f), I(n), I(cout), I(g.w),
                                                I(g.h), I(g.per_sample), I(g.ps)],
                      n * cout, float(g.ps - g.h * g.w))
        dop = self.plan.ops[j]
        return label + suffix + f" -> the rows planes of {dop.layer or dop.name}"

    def _shifted(self, op: Op, swt, x: str, out: str, bslot: Slot, act) -> str:
        if self.pk_on and self._pkm(self.i):
            # (planes the plain variant of the conv before wrote are for this one's plain
            # variant: _dual)
            self.planes_in.pop(self.i, None)
            return self._shifted_pkm(op, swt, x, out, bslot, act)
        rg = self._rows_geom(self.i)
        if rg is not None:
            return self._shifted_rows(op, swt, x, out, bslot, act, rg)
        nb, cin, _, _ = self.shape(x)
        cout = self.shape(out)[1].value
        g = self._shift(op)
        if self.i not in self.planes_in and SHIFT_WIDEN:
            # planes as wide as the next conv's (a stride-2 3x3 before a stride-1 one): the
            # extra wrap columns cost FMAs, the crop and the next phase pass disappear
            nxt = self._planes_reader(out, g, widen=True)
            if nxt is not None:
                g = replace(g, extra=nxt[1].wq - g.wq)
        shared = self._shared_phase(op, x, g)
        if shared is not None:  # x's (1, 0) phase in the rows planes of a 3x3 / 2 conv of x
            planes, rg, j = shared
            self.p.buffers[planes].last = self.i
            offs = (rg.f + (swt.indices.astype(np.int64) * 4 + 2) * rg.ps).astype(np.uint32)
            tile = LK.spmm_tile(g.ho * g.wo, self.vw, swt.block_rows)
            return self._shifted_direct(op, swt, tile, planes, out, bslot, act, g, rg.c * 4,
                                        rg.per_sample, rg.ps, offs) + \
                f" (the phase planes of {self.plan.ops[j].layer or self.plan.ops[j].name})"
        got = self._tm_gather(op, swt, x, out, bslot, act, g)
        if got is not None:
            return got
        if self.pk_on and g.wq == g.wo and SHIFT_DIRECT and self.i not in self.planes_in:
            L = g.ho * g.wo
            res = None if SP.bakes(op, swt.family) and not self._grouped(op, swt, L) else \
                self._residual(op, act)
            if self._pk(self.plan.ops[res[0]].output if res else out):
                return self._shifted_direct_pk(op, swt, x, out, bslot, act, g, res)
        rows = cin.value * g.phases
        ps = self._plane_stride(g)
        written = self.i in self.planes_in
        # dual planes the phase pass would write both copies of (PHASE_DUAL; AVX2 only,
        # where the gather of _gather_planes never runs)
        by_phase = PHASE_DUAL and not written and g.sw in PH.STRIDES and not self._pk(x) \
            and self.vw == 8
        # a sample's planes on a cache line, as the grouped kernel's aligned x loads want
        per_a, per_sample = self._sample_floats(op, rows, ps, g, written or by_phase)
        given = self.planes_in.pop(self.i, None)
        if given is not None:  # the conv before wrote them (see below)
            planes = given
            self.p.buffers[planes].last = self.i
        else:
            planes = self.temp("planes", nb * per_sample * 4)
            args = self._phase_args(x, planes, g, per_sample)
            if self._gather_planes(x, planes, g, cin.value, ps, per_sample):
                pass
            elif g.sw in PH.STRIDES:  # vectorised; an item is a sample's channel's row phase
                dual_phase = by_phase and per_sample != per_a
                with self._packed():
                    self.call(self.ir_kernel(PH.PhaseSpec(self.vw, g.sw, self._pk(x),
                                                          dual_phase)),
                              args + [I(ps)] + self._phase_io(x, nb) +
                              ([I(per_a + 8)] if dual_phase else []),
                              PH.items(self._phase_n(x, nb), cin, len(g.pys)),
                              float(ps * len(g.pxs) * (2 if dual_phase else 1)))
                if dual_phase:
                    self.dual_written.add(planes)
            else:
                self.call(self.numba("k_phase"), args, nb * rows, float(g.plane))
        L = g.ho * g.wq
        offs = g.offsets(swt.indices, ps)
        dual = None
        if per_sample != per_a and planes not in self.dual_written:
            # the second copy of the planes (_sample_floats), unless the conv before wrote it
            self.copy(T(planes), T(planes, per_a + 8), [nb, const(per_a)],
                      [const(per_sample), const(1)], [const(per_sample), const(1)], 4)
        if per_sample != per_a:
            dual = _dual_offsets(offs, per_a + 8)
        tile = LK.spmm_tile(L, self.vw, swt.block_rows)
        spec, _, tail = self._sparse_spec(op, swt.family, swt, act, "bias" in op.params, 32,
                                          tile)
        nxt = None if tail else self._planes_reader(out, g)
        if nxt is not None:
            # cross-layer: this conv's wide rows (ho x wq a channel) go straight into the
            # interiors of the next conv's padded planes (same wq; the wrap columns land on
            # the borders, zeroed after): no crop here, no phase pass there
            j, gj = nxt
            psj = self._plane_stride(gj)
            # (the next conv's per_sample; dual planes: the copy too, DUAL_WRITE)
            nxa, nxs = self._sample_floats(self.plan.ops[j], cout, psj, gj, True)
            cplanes = self.temp("next_planes", nb * nxs * 4)
            self.planes_in[j] = cplanes
            ods = nxa + 8 if nxs != nxa and DUAL_WRITE else 0
            self.ods_missed = False
            self.wrap_missed = not WRAP_ZEROS
            # (whole tiles when the extra positions stay in the channel's own plane: its
            # bottom border, zeroed after, or the gap to the next; x's reads stay in its
            # planes' slack)
            label = self.spmm(op, swt, spec, True, bslot, T(planes), T(cplanes, gj.wq + 1),
                              n=nb, L=L, xrs=1, ors=psj, xns=per_sample,
                              ons=nxs, indices=offs, x_rows=rows, reach=g.reach,
                              panel_of=offs // ps, xalign=True,
                              whole=gj.wq + _round16(L) <= psj, dual=dual, ods=ods,
                              wrap=(gj.wq, g.wo) if WRAP_ZEROS else (0, 0))
            for at in (0, ods) if ods and not self.ods_missed else (0,):
                if self.wrap_missed:  # every border float
                    self.call(self.numba("k_pads"), [T(cplanes, at), I(nb), I(cout),
                                                     I(gj.hq), I(gj.wq), I(nxs), I(psj),
                                                     I(int(not gj.share))],
                              nb * cout, float(2 * (gj.hq + gj.wq) + psj - gj.plane))
                else:  # the zeros at the wrap columns stored: the first and last runs
                    self.call(self.numba("k_endpads"), [T(cplanes, at), I(nb), I(cout),
                                                        I(gj.hq), I(gj.wq), I(nxs), I(psj)],
                              nb * cout, float(2 * gj.wq + psj - gj.plane))
            if ods and not self.ods_missed:
                self.dual_written.add(cplanes)
            dop = self.plan.ops[j]
            return label + f" -> the padded planes of {dop.layer or dop.name}"
        if g.wq == g.wo and SHIFT_DIRECT:
            return self._shifted_direct(op, swt, tile, planes, out, bslot, act, g, rows,
                                        per_sample, ps, offs)
        res = self._residual(op, act) if not tail else None
        pool = self._pool_reader(out) if not (tail or res) else None
        # the wide rows' channels at a multiple of 16 floats (aligned stores) unless the max
        # pool reads them in place
        fcs = L if pool is not None else _round16(L)
        full = self.temp("full", nb * cout * fcs * 4)
        label = self.spmm(op, swt, spec, True, bslot, T(planes), T(full), n=nb, L=L, xrs=1,
                          ors=fcs, xns=per_sample, ons=cout * fcs, indices=offs, x_rows=rows,
                          reach=g.reach, panel_of=offs // ps, xalign=True,
                          whole=fcs >= _round16(L), dual=dual)
        if res is not None:  # crop, add the residual and activate in one pass
            return label + self._crop(full, out, nb, cout, g, fcs, res)
        if pool is not None:
            # cross-layer: the max pool after this conv reads the conv's rows in place
            # (wq floats apart, wrap columns never read) and the crop pass disappears
            self.p.buffers[full].last = pool
            self.wide[out] = (full, g.wq)
            return label
        self._crop(full, out, nb, cout, g, fcs)
        if tail:
            self.act_pass(out, *act)
        return label

    def _shift(self, op: Op) -> SP.Shift:
        """The shifted conv ``op``'s plane geometry: with AVX2 (SHIFT_SHARE) a 3x3 / 1 conv
        with padding 1 keeps one padded column a row, shared by a row's right edge and the
        next row's left (Shift.share)."""
        g = SP.Shift.of(op, self.example(op.output))
        if SHIFT_SHARE and self.vw == 8 and \
                (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1, 1, 1):
            g = replace(g, share=1)
        return g

    def _shared_phase(self, op: Op, x: str, g) -> tuple[str, RowsGeom, int] | None:
        """The rows planes a 3x3 / 2 conv's phase pass made of x (Lowering.rows_x), when
        this op, a 1x1 / 2 conv without padding (a ResNet's downsample beside the block's
        strided conv1), can read x[2i, 2j] there instead of a phase pass of its own: their
        (1, 0) phase (x's even rows after the padded first row, its even columns) holds it at
        row i, column j, rows as wide as this conv's output (no wrap columns). Only outside
        the packed / plain variants and row bands, with both ops on one side of the tail.
        (The planes' temporary, their geometry, the 3x3 conv's op index.)"""
        if not SHARE_PHASE or self.pk_on or self.guard or self.band is not None or \
                x not in self.rows_x or self.i in self.planes_in or not SHIFT_DIRECT or \
                (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) != (1, 1, 2, 2, 0, 0, 1, 1):
            return None
        rg, j = self.rows_x[x][1:]
        if (rg.h, rg.w, rg.stride, rg.c) != (g.ho, g.wo, 2, self.shape(x)[1].value) or \
                (self.tail_from is not None and (j >= self.tail_from) !=
                 (self.i >= self.tail_from)):
            return None
        return self.rows_x[x]

    def _shifted_rows(self, op: Op, swt, x: str, out: str, bslot: Slot, act,
                      g: RowsGeom) -> str:
        """A 3x3 / 1 conv over rows planes (RowsGeom): the input's rows with a zero row above
        and below each channel and no padded columns, so the output positions are the dense
        ones (no wrap columns, no crop); the taps that would read across a row's edge are
        masked off per lane (KernelSpec.edge). The planes come from the conv before
        (_into_rows) or a copy of x."""
        nb = self.shape(x)[0]
        cout = self.shape(out)[1].value
        planes = self.planes_in.pop(self.i, None)
        _, _, h, w = self.shape(x)
        s = g.stride
        if planes is not None:
            self.p.buffers[planes].last = self.i
        else:
            planes = self.temp("rows_in", nb * g.per_sample * 4)
            ph = self.derived("pys", np.arange(s, dtype=np.int64))
            args = [T(x), T(planes, g.f), I(nb), I(g.c), I(h), I(w), I(1), I(0), I(s), I(s),
                    ph, I(s), ph, I(s), I(g.ps // g.w), I(g.w), I(g.per_sample)]
            with self._packed():
                self.call(self.ir_kernel(PH.PhaseSpec(self.vw, s, self._pk(x))),
                          args + [I(g.ps)] + self._phase_io(x, nb),
                          PH.items(self._phase_n(x, nb), g.c, s),
                          float(g.ps * s))
            if s == 2 and not self.guard and self.band is None:
                self.rows_x[x] = (planes, g, self.i)
        col = swt.indices.astype(np.int64)
        c, r = np.divmod(col, 9)
        dy, dx = np.divmod(r, 3)
        if s == 1:  # (dx 0: the column before, masked at a row's first)
            offs = g.f - 1 + c * g.ps + dy * g.w + dx
        else:  # phase (dy % 2, column parity); dx 0 reads the odd column before, masked
            px = (dx + 1) % 2
            offs = g.f - 1 + (c * 4 + (dy % 2) * 2 + px) * g.ps + (dy // 2) * g.w + \
                (dx > 0)
        offs = offs.astype(np.uint32)
        L = g.h * g.w
        # (with a residual: act(conv + other) into the add's output)
        out, other, act = self._fuse_residual(self._residual(op, act), out, act)
        res_slot = None if other is None else T(other)
        if other is not None:
            self._same_cs(other, out)
        spec, _, tail = self._sparse_spec(op, swt.family, swt, act, "bias" in op.params, 32, 1)
        spec = replace(spec, edge=g.w, residual=res_slot is not None)
        kw = dict(n=nb, L=L, xrs=1, xns=g.per_sample, indices=offs,
                  x_rows=g.c * (1 if s == 1 else 4), reach=2 * g.w + 2,
                  panel_of=offs // g.ps, xalign=True)
        into = self._rows_target(out) if res_slot is None and not tail else None
        band = BD.Band(g.h, g.w, 1) if s == 1 else None  # (its output rows read 3 rows)
        if into is not None:
            with self._banded(band):
                return self._into_rows(op, swt, spec, bslot, T(planes), into, whole=True,
                                       suffix=" (rows planes)", **kw)
        ocs = self._cstride(out)
        ons = cout * ocs
        ots = self._tiled(out)  # (tile-major: Lowering.tm)
        ocs, res_rs = self._band_strides(out, other, g.w, 16 if ots else ocs)
        whole = bool(ots) or ocs >= _round16(L)
        spec = replace(spec, res_rs=res_rs, ots=ots, rts=self._tiled(other))
        with self._aware(), self._banded(band), self._tm_aware(out, other):
            label = self.spmm(op, swt, spec, True, bslot, T(planes), T(out), ors=ocs,
                              ons=ons, res=res_slot, whole=whole, **kw)
        if tail:
            self.act_pass(out, *act)
        return label + " (rows planes)" + (" + residual add" if res_slot is not None else "")

    def _shifted_direct(self, op: Op, swt, tile: int, planes: str, out: str, bslot: Slot,
                        act, g, rows: int, per_sample: int, ps: int, offs: np.ndarray,
                        xts: int = 0) -> str:
        """A shifted conv without wrap columns (wq == wo: a strided 1x1 conv, ResNet's
        downsample) writes its output in place, with a residual add fused into the kernel
        as a pointwise conv's is: no crop pass."""
        nb = self.shape(out)[0]
        cout = self.shape(out)[1].value
        L = g.ho * g.wo
        # (a baked row-by-row kernel takes no residual: the add stays, as a pointwise conv's)
        res = None if SP.bakes(op, swt.family) and not self._grouped(op, swt, L) else \
            self._residual(op, act)
        out, other, act = self._fuse_residual(res, out, act)
        res_slot = None if other is None else T(other)
        if other is not None:
            self._same_cs(other, out)
        spec, _, tail = self._sparse_spec(op, swt.family, swt, act, "bias" in op.params, 32,
                                          tile)
        if res_slot is not None:
            spec = replace(spec, residual=True)
        ocs = self._cstride(out)
        ons, whole = cout * ocs, min(ps, ocs) >= _round16(L)  # (tile-major: whole tiles too)
        ots = self._tiled(out)  # (tile-major: Lowering.tm)
        ocs, res_rs = self._band_strides(out, other, g.wo, 16 if ots else ocs)
        spec = replace(spec, res_rs=res_rs, ots=ots, rts=self._tiled(other), xts=xts)
        with self._aware(), self._tm_aware(out, other):
            # (whole tiles read the planes' round-up to 16 floats, _plane_stride; tile-major
            # planes, xts: a channel's line at 16 x its index, whole tiles)
            label = self.spmm(op, swt, spec, True, bslot, T(planes), T(out), n=nb, L=L,
                              xrs=1, ors=ocs, xns=per_sample, ons=ons, indices=offs,
                              x_rows=rows, reach=g.reach,
                              panel_of=swt.indices if xts else offs // ps, xalign=True,
                              res=res_slot, whole=whole)
        if tail:
            self.act_pass(out, *act)
        return label + (" + residual add" if res_slot is not None else "")

    def _tm_gather(self, op: Op, swt, x: str, out: str, bslot: Slot, act, g) -> str | None:
        """TM_GATHER: a stride-2 1x1 conv without padding (a ResNet's downsample) in the
        per-sample head, run by the grouped kernel, reads its x's even rows and columns
        gathered tile-major (native.tmgather) instead of a phase plane; x may be plain or
        tile-major (Lowering.tm) itself. None where it does not apply."""
        root = self.plan.storage_root(x)
        if not TM_GATHER or self.vw != 16 or self.pk_on or self.guard or \
                self.band is not None or self.i in self.planes_in or not SHIFT_DIRECT or \
                not _gatherable(g) or self._pk(x) or \
                root in self.band_major and root not in self.band_rings or \
                self._dtype(x) != "float32":
            return None
        L = g.ho * g.wo
        if self._grouped(op, swt, L) != "always":
            return None
        nb, cin, h, w = self.shape(x)
        cin_ = cin.value
        ring = None
        if root in self.band_major:  # (its run's bands: native.bands.ring_offset)
            ring = (self.band_major[root], self.band_rings[root])
        elif not self._tiled(x) and self._cstride(x) < _round16(h.value * w.value):
            return None  # (a last line would read past the channel)
        tiles = -(-L // 16)
        # (a line of slack: the grouped kernel's aligned x loads may read one past a tile)
        planes = self.temp("tm_planes", nb * tiles * cin_ * 64 + 256)
        # (x's rows band by band in a row-band run that writes x: native.bands, GATHER)
        band = BD.Band(h.value, w.value, BD.GATHER_HALO,
                       (g.ho, g.wo, int(g.pys[0]), g.sh, tiles))
        with self._aware(), self._tm_aware(x), self._banded(band):
            self._gather(x, planes, g, 1, ring=ring)  # (x's channel stride, tile-major)
        offs = (swt.indices.astype(np.int64) * 16).astype(np.uint32)
        tile = LK.spmm_tile(L, self.vw, swt.block_rows)
        return self._shifted_direct(op, swt, tile, planes, out, bslot, act, g, cin_,
                                    tiles * cin_ * 16, _round16(L), offs,
                                    xts=cin_ * 16) + " (x gathered tile-major)"

    def _gather_planes(self, x: str, planes: str, g, cin: int, ps: int,
                       per_sample: int) -> bool:
        """The phase plane of a stride-2 1x1 conv without padding (one plane a channel, ps
        floats apart, ``per_sample`` a sample) from a tile-major x (Lowering.tm), which the
        phase pass does not read: native.tmgather writing plain planes (TM_GATHER; the
        kernels that do not take _tm_gather's tile-major planes, as the tail's plain variant
        at small batches). False where it does not apply (the retry then untiles x)."""
        if not (self._tiled(x) and TM_GATHER and TM_GATHER_PLANES and self.vw == 16 and
                _gatherable(g) and ps == _round16(g.ho * g.wo) and not self._pk(x)):
            return False
        with self._aware(), self._tm_aware(x):
            self._gather(x, planes, g, 1, (per_sample, ps))
        return True

    def _gather(self, x: str, out: str, g, block: int,
                planes: tuple[int, int] | None = None,
                ring: tuple[int, int] | None = None) -> None:
        """A native.tmgather call (inside the caller's awareness contexts): x's positions
        of g's one phase (base + i x sh W + j x sw) into ``out``, tile-major in blocks of
        ``block`` samples (channels 16 floats apart), or with ``planes`` (floats a sample,
        floats a channel) as plain phase planes. x plain or tile-major (Lowering.tm: its
        lines C x 16 floats apart, its channels 16); a sample of it C x its channel stride
        floats either way. ``ring`` (rows a band, bands): x band-major, a ring of bands
        (native.bands.ring_offset; block 1)."""
        nb, cin, h, w = self.shape(x)
        c, w = cin.value, w.value
        xt, xcs = self._tiled(x), self._cstride(x)
        where, xns = None, c * xcs
        if ring is not None:
            assert block == 1 and not xt and planes is None
            off = BD.ring_offset(ring[0], ring[1], c, w, h.value)
            y0, x0 = int(g.pys[0]), int(g.pxs[0])

            def where(i: int, j: int) -> int | None:
                return off(y0 + i * g.sh, x0 + j * g.sw)
            xcs, xns = ring[0] * w, ring[1] * c * ring[0] * w
        tab = TG.table(g.ho, g.wo, g.sh * w, g.sw, int(g.pys[0]) * w + int(g.pxs[0]),
                       xt or 16, block, xns, where)
        tiles = tab.shape[0]
        ons, ots, ocs = (planes[0], 16, planes[1]) if planes else (tiles * c * 16, c * 16, 16)
        self.call(self.ir_kernel(TG.GatherSpec(tab.shape[1])),
                  [T(x), T(out), I(c), I(tiles), I(xns), I(16 if xt else xcs),
                   self.derived("tmgather", tab), I(block), I(nb), I(ons), I(ots), I(ocs),
                   I(0)],
                  (lift(nb) if block == 1 else lift(nb).cdiv(block)) * tiles,
                  float(16 * c * tab.shape[1]))

    def _shifted_direct_pk(self, op: Op, swt, x: str, out: str, bslot: Slot, act, g,
                           res) -> str:
        """_shifted_direct writing a packed output (PACK): the phase pass writes the one
        phase plane of every sample packed as well (its padding samples' zero), and the
        kernel runs over the blocks, as a packed 1x1 conv."""
        nb, cin, _, _ = self.shape(x)
        cin_ = cin.value
        hw = g.ho * g.wo
        if g.sw not in PH.STRIDES or g.phases != 1 or g.hq * g.wq != hw:
            self._pk_unpack(x, out, self.plan.ops[res[0]].output if res else None)
        out, other, act = self._fuse_residual(res, out, act)
        self._pk_need(out, other)
        res_slot = None if other is None else T(other)
        span = PACK_B * hw
        blocks = lift(nb).cdiv(PACK_B)
        shared = self.pkm_x.get(x) if (g.ph, g.pw, g.sh, g.sw) == (0, 0, 2, 2) and \
            SHARE_PHASE else None
        if shared is not None and not self._pk(x):
            # the phase planes a masked 3x3 / 2 conv of x made (_shifted_pkm): x[2i, 2j] is
            # plane (c, 0, 0) of a block's four a channel, PKM_BASE floats after the slot
            self.p.buffers[shared].last = self.i
            offs = (swt.indices.astype(np.int64) * 4 * span + ES.PKM_BASE).astype(np.uint32)
            return self._pk_grouped(op, swt, T(shared), out, other, res_slot, bslot, act,
                                    g.reach, blocks, span, offs, 4 * cin_, 0) + \
                " (the phase planes of the 3x3 conv)"
        # (64 floats of slack: the aligned x loads read up to 16 past a plane)
        planes = self.temp("planes", (nb + PACK_B - 1) * cin_ * hw * 4 + 256)
        # the planes tile-major within a block (PACK_TILE_MAJOR: the kernel's x tile one run
        # of lines) where x is plain and the conv reads no padding: k_gather_pktm gathers each
        # position's float from x through a table, in place of the phase pass
        w = self.shape(x)[3].value
        xts = cin_ * 16 if PACK_TILE_MAJOR and not self._pk(x) and not self._tiled(x) and \
            self.plan.storage_root(x) not in self.band_major and g.ph == 0 and g.pw == 0 \
            and len(g.pys) == 1 and len(g.pxs) == 1 else 0
        xcs = self._cstride(x)
        # (x tile-major, Lowering.tm: only the LLVM gather reads it; else the retry untiles it)
        xt = self._tiled(x) if TM_GATHER and self.vw == 16 and g.ph == 0 and g.pw == 0 and \
            len(g.pys) == 1 and len(g.pxs) == 1 else 0
        if xt or (xts and TM_GATHER and TM_GATHER_PACKED and self.vw == 16 and xcs % 16 == 0):
            # (the LLVM gather, as in the head: _tm_gather)
            xts = cin_ * 16
            with self._packed(), self._tm_aware(planes, x):
                self._gather(x, planes, g, PACK_B)
        elif xts:
            self._to_tiles("k_gather_pktm", x, planes, nb, cin_, xcs, g.ho, g.wo,
                           g.sh * w, g.sw, g.pys[0] * w + g.pxs[0])
        else:
            args = self._phase_args(x, planes, g, cin_ * span) + [I(span)] + \
                self._phase_io(x, nb)[:3] + [I(PACK_B), I(hw), I(nb)]
            with self._packed():
                self.call(self.ir_kernel(PH.PhaseSpec(self.vw, g.sw, True)), args,
                          PH.items(blocks * PACK_B, cin, 1), float(hw))
        offs = (swt.indices.astype(np.uint32) * 16) if xts else g.offsets(swt.indices, span)
        return self._pk_grouped(op, swt, T(planes), out, other, res_slot, bslot, act,
                                g.reach, blocks, span, offs, cin_, xts)

    def _pk_grouped(self, op: Op, swt, xslot: Slot, out: str, other: str | None, res_slot,
                    bslot: Slot, act, reach: int, blocks, span: int, offs: np.ndarray,
                    rows: int, xts: int, edge: tuple[int, int] | None = None,
                    panels: int | None = None, note: str = "") -> str:
        """The packed variant's grouped call of a shifted conv (_shifted_direct_pk,
        _shifted_pkm): over the blocks, x ``rows`` planes of ``span`` floats (tile-major:
        ``xts``), out and the residual packed; ``edge`` (W, H): the masked taps
        (KernelSpec.edge_h); ``panels``: a block's tiles in panels (None: as x's size
        gives, _panels); ``note``: the label's words before the residual's."""
        cout = self.shape(out)[1].value
        tile = LK.spmm_tile(span, self.vw, swt.block_rows)
        spec, _, tail = self._sparse_spec(op, swt.family, swt, act, "bias" in op.params, 32,
                                          tile)
        if tail:
            self._pk_unpack(out)
        if res_slot is not None:
            spec = replace(spec, residual=True)
        if edge is not None:
            spec = replace(spec, edge=edge[0], edge_h=edge[1])
        spec, ors = self._pk_out_strides(spec, out, other, span, xts)
        with self._packed(), self._tm_aware(out, other):
            label = self.spmm(op, swt, spec, True, bslot, xslot, T(out), n=blocks,
                              L=span, xrs=1, ors=ors, xns=rows * span, ons=cout * span,
                              indices=offs, x_rows=rows, reach=reach,
                              panel_of=swt.indices if xts else offs // span, xalign=True,
                              res=res_slot, whole=True,
                              panels=self._panels(rows, span) if panels is None else panels)
        return label + note + (" + residual add" if res_slot is not None else "")

    def _pkm(self, j: int) -> bool:
        """Whether op j's packed variant is a PACK_MASKED conv (Lowering._shifted_pkm): a
        sparse 3x3 conv, padding 1, stride 1 over a packed x or stride 2 over x's phase
        planes (x's maps twice its output's), its output packed, the grouped kernel taking
        it (AVX-512). The packed variant of the conv before it then writes it no planes
        (the plain variant still may: _dual)."""
        if j in self._pkm_memo:
            return self._pkm_memo[j]
        op, plan = self.plan.ops[j], self.plan
        ok = False
        if PACK_MASKED and self.pk and self.vw == 16 and op.kind == "conv2d" and \
                plan.storage_root(op.output) in self.pk and int(op.attrs["groups"]) == 1 and \
                SP.is_sparse(op.attrs.get("fmt")) and \
                tuple(int(v) for v in op.attrs["kernel"]) == (3, 3) and \
                tuple(int(v) for v in op.attrs["padding"]) == (1, 1) and \
                tuple(int(v) for v in op.attrs.get("dilation", (1, 1))) == (1, 1):
            x = op.inputs[0]
            xs, os_ = self.example(x), self.example(op.output)
            s = tuple(int(v) for v in op.attrs["stride"])
            ho, wo = int(os_[2]), int(os_[3])
            geom = (s == (1, 1) and plan.storage_root(x) in self.pk) or \
                (s == (2, 2) and (int(xs[2]), int(xs[3])) == (2 * ho, 2 * wo))
            if geom and wo >= 3 and ho >= 2 and int(xs[1]) > 4 and \
                    self._dtype(x) == "float32" and \
                    SP.conv_method(op, xs, os_) == "shifted":
                params = {r: plan.constants[k] for r, k in op.params.items()}
                sw = SP.sparse_weight(op, params)
                ok = sw.family == "spmm" and \
                    self._grouped(op, sw, PACK_B * ho * wo) == "always"
        self._pkm_memo[j] = ok
        return ok

    def _shifted_pkm(self, op: Op, swt, x: str, out: str, bslot: Slot, act) -> str:
        """A 3x3 conv (padding 1) in the packed variant over the packed maps themselves
        (PACK_MASKED): one grouped call over the blocks, a tile 16 positions of a block's
        samples, tap (dy, dx) at a fixed offset from the tile in its plane, ry x W + rx
        (ry, rx in -1..1), its lanes off the map masked (KernelSpec.edge_h). Stride 1 reads
        x as it is (x's address PKM_BASE floats early, a buffer with a line of slack before
        it and two after: Lowering.pk_slack); stride 2 reads the four phase planes of x
        (x's even / odd rows and columns, no padding, each an H/2 x W/2 map) that a packed
        phase pass writes, tap dy 0 reading the odd rows' plane one row up. The residual
        add and the activation are fused; out is written where it lies (tile-major too)."""
        nb, cin, _, _ = self.shape(x)
        cin_ = cin.value
        g = SP.Shift.of(op, self.example(out))
        ho, wo = g.ho, g.wo
        span = PACK_B * ho * wo
        blocks = lift(nb).cdiv(PACK_B)
        # (the grouped kernel, which takes a residual: _pkm)
        out, other, act = self._fuse_residual(self._residual(op, act), out, act)
        if not self._pk_need(out, other):
            # the add's output it would write is plain (a dense downsample before wrote the
            # other input plain: ResNet-18 at 50 %): _pkm saw only the conv's own output, so
            # that one goes plain too and the conv takes the path that writes out's layout
            own = frozenset({self.plan.storage_root(op.output)}) & self.pk
            if not own:  # (_pkm's rule says it is; never seen)
                raise Unsupported("a masked conv over packed maps whose output is not packed")
            raise _Unpack(own)
        res_slot = None if other is None else T(other)
        col = swt.indices.astype(np.int64)
        c, r = np.divmod(col, 9)
        dy, dx = np.divmod(r, 3)
        base = ES.PKM_BASE
        if g.sh == 1:
            self._pk_need(x)
            self.pk_slack.add(self.plan.storage_root(x))
            planes, rows = x, cin_
            offs = base + c * span + (dy - 1) * wo + (dx - 1)
        else:
            # the phase planes, packed: plane (c, py, px) of block b at (b x C x 4 + c x 4 +
            # py x 2 + px) x span, sample s of the block s x H/2 x W/2 floats in; a line of
            # slack before them (the kernel's first reads) and two after
            rows = 4 * cin_
            planes = self.temp("pkm_planes", (nb + PACK_B - 1) * rows * ho * wo * 4 + 3 * 64)
            pys = self.derived("pys", np.arange(2, dtype=np.int64))
            args = [T(x), T(planes, 16), I(nb), I(cin_), I(2 * ho), I(2 * wo), I(0), I(0),
                    I(2), I(2), pys, I(2), pys, I(2), I(ho), I(wo), I(rows * span),
                    I(span)] + self._phase_io(x, nb)[:3] + [I(PACK_B), I(ho * wo), I(nb)]
            with self._packed():
                self.call(self.ir_kernel(PH.PhaseSpec(self.vw, 2, True)), args,
                          PH.items(blocks * PACK_B, cin, 2), float(2 * ho * wo))
            self.pkm_x[x] = planes
            # dy 0: the odd rows one up; 1: the even rows; 2: the odd rows (dx alike)
            py, ry = np.where(dy == 1, 0, 1), np.where(dy == 0, -1, 0)
            px, rx = np.where(dx == 1, 0, 1), np.where(dx == 0, -1, 0)
            offs = base + (c * 4 + py * 2 + px) * span + ry * wo + rx
        xslot = T(planes, 16 - base) if g.sh == 2 else T(planes, -base)
        return self._pk_grouped(op, swt, xslot, out, other, res_slot, bslot, act, 2 * wo + 2,
                                blocks, span, offs.astype(np.uint32), rows, 0, (wo, ho),
                                None if PKM_PANELS and 4 * rows * span > PKM_PANELS * l2_bytes()
                                else 0, " over the packed maps, taps masked")

    def _phase_args(self, x: str, planes: str, g, per_sample: int) -> list[Slot]:
        """The phase pass's first arguments (phase.py's kernels, k_phase): x, the planes
        (``per_sample`` floats a sample) and ``g``'s geometry."""
        nb, cin, h, w = self.shape(x)
        return [T(x), T(planes), I(nb), I(cin), I(h), I(w), I(g.ph), I(g.pw), I(g.sh),
                I(g.sw), self.derived("pys", g.pys), I(len(g.pys)), self.derived("pxs", g.pxs),
                I(len(g.pxs)), I(g.hq), I(g.wq), I(per_sample)]

    def _sample_floats(self, op: Op, rows: int, ps: int, g,
                       written: bool) -> tuple[int, int]:
        """(floats of a sample's planes, floats from one sample's planes to the next) for
        the shifted conv ``op`` of geometry ``g`` over ``rows`` planes ``ps`` floats apart,
        ``written`` by the conv before (_planes_reader) or not. Dual planes (AVX2, stride 1,
        at least DUAL_MIN_TAPS nonzeros an input channel, DUAL_MIN_TAPS_WRITTEN when
        written): the second is twice the first + 16, a copy of the planes 8 floats past
        the first copy's end (_dual_offsets), made by a pass over them that costs as much
        as ~50 of the kernel's FMAs per float, or by the conv writing them (DUAL_WRITE)."""
        a = _round16(rows * ps + g.slack)
        least = DUAL_MIN_TAPS_WRITTEN if written and DUAL_WRITE else DUAL_MIN_TAPS
        if not (DUAL_PLANES and self.vw == 8 and (g.sh, g.sw) == (1, 1) and g.kw > 1 and
                g.wq > g.wo and rows and self._taps(op, True, 1) / rows >= least):
            return a, a
        return a, 2 * a + 16

    def _plane_stride(self, g) -> int:
        """Floats from one phase plane to the next: hq*wq rounded up to 16 where the
        vectorised phase kernel writes them (taps at offset 0 then load whole cache lines:
        a 1x1 conv over 7x7 maps ran 1.5x slower than over 8x8 ones, 49 vs 64 floats a
        channel), else hq*wq (the numba kernel's strides 3+). Shared padded columns
        (Shift.share) leave a float of zeros after each plane: the last tap of a plane's last
        position reads the next row's first column, past the plane."""
        return _round16(g.plane + g.share) if g.sw in PH.STRIDES else g.plane + g.share

    def _crop(self, full: str, out: str, nb, cout: int, g, fcs: int, res=None) -> str:
        """The shifted convs' wide rows (ho x wq a channel, channels fcs floats apart)
        cropped to out (ho x wo); with ``res`` (_residual's), the add and its activation in
        the same pass, written into the add's output (the add disappears). Returns the
        label's suffix."""
        if res is None and self._pk_tiled(out):  # packed, tile-major (PACK_TILE_MAJOR)
            self._to_tiles("k_crop_pktm", full, out, nb, cout, fcs, g.ho, g.wo, g.wq)
            return ""
        if res is None and self._pk(out):  # into the packed layout (PACK)
            with self._packed():
                self.call(self.numba("k_crop_pk"), [T(full), T(out), I(nb), I(cout),
                                                    I(g.ho), I(g.wo), I(g.wq), I(fcs),
                                                    I(PACK_B)],
                          lift(nb).cdiv(PACK_B) * PACK_B * cout, float(g.ho * g.wo))
            return ""
        if res is None:
            with self._aware():
                self.call(self.numba("k_crop"), [T(full), T(out), I(nb), I(cout), I(g.ho),
                                                 I(g.wo), I(g.wq), I(fcs),
                                                 I(self._cstride(out))],
                          nb * cout, float(g.ho * g.wo))
            return ""
        dst, other, (actn, pa, pb) = self._fuse_residual(res, out, None)
        ocs = self._cstride(dst)
        self._same_cs(other, dst)
        with self._aware():
            self.call(self.numba("k_crop_res"),
                      [T(full), T(other), T(dst), I(nb), I(cout), I(g.ho), I(g.wo), I(g.wq),
                       I(A.act_code(actn)), F(pa), F(pb), I(fcs), I(ocs)],
                      nb * cout, 2.0 * g.ho * g.wo)
        return " + residual add"

    def _readers(self, name: str) -> list[int]:
        return [j for j, op in enumerate(self.plan.ops) if name in op.inputs]

    def _writers(self, name: str | None) -> list[int]:
        return [j for j, op in enumerate(self.plan.ops) if op.output == name]

    def _view_chain(self, name: str) -> tuple[int, int] | None:
        """(reshape op, its reader) when ``name``'s only reader is a reshape (a view) whose
        only reader is one op, neither is a plan output and nothing else views ``name``."""
        plan = self.plan
        rs = self._readers(name)
        if len(rs) != 1 or plan.ops[rs[0]].kind != "reshape" or name in plan.outputs:
            return None
        view = plan.ops[rs[0]].output
        if plan.tensors[view].alias_of != name or view in plan.outputs or \
                sum(t.alias_of in (name, view) for t in plan.tensors.values()) != 1:
            return None
        nxt = self._readers(view)
        return (rs[0], nxt[0]) if len(nxt) == 1 else None

    def _head_permutes(self) -> None:
        """Attention's head split and merge, fused into the sparse linears beside them. A
        linear's (B, S, H*D) output viewed as (B, S, H, D) and permuted to (B, H, S, D) is
        written in that layout by the linear's output transpose; a (B, H, S, E) tensor
        permuted to (B, S, H, E) and viewed as (B, S, H*E) is read by the next linear's input
        transpose. Both are blocks of the transpose kernel: the permute passes disappear."""
        plan = self.plan
        if not env_native_fuse():
            return

        def sparse_rows(op: Op) -> bool:
            return op.kind == "linear" and SP.is_sparse(op.attrs.get("fmt")) and \
                self._dtype(op.output) == "float32"

        def heads_perm(op: Op) -> bool:
            return op.kind == "permute" and [int(p) for p in op.attrs["perm"]] == [0, 2, 1, 3] \
                and self._dtype(op.output) == "float32"

        for li, op in enumerate(plan.ops):
            if not sparse_rows(op):
                continue
            if not op.attrs.get("out_kn"):  # output side: linear -> view -> permute
                chain = self._view_chain(op.output)
                if chain is not None and heads_perm(plan.ops[chain[1]]):
                    pi = chain[1]
                    # the view is the 4-D permute's input
                    B, S, H, D = self.shape(plan.ops[chain[0]].output)
                    os_ = self.shape(op.output)
                    if len(os_) == 3 and os_[0] == B and os_[1] == S and \
                            S.is_const() and H.is_const() and D.is_const() and \
                            H.value * D.value == os_[2].value:
                        self.dst_heads[li] = (plan.ops[pi].output, B, S, H, D)
                        self.fused[pi] = (li, op.output)
                        self._qk_kn(plan.ops[pi].output, B, S)
            if not op.attrs.get("in_kn"):  # input side: permute -> view -> linear
                x = op.inputs[0]
                made = self._writers(plan.tensors[x].alias_of)
                if plan.tensors[x].alias_of is None or len(made) != 1 or \
                        not heads_perm(plan.ops[made[0]]):
                    continue
                pi = made[0]
                perm_out = plan.ops[pi].output
                chain = self._view_chain(perm_out)
                if chain is None or chain[1] != li or self._readers(x) != [li]:
                    continue
                src = plan.ops[pi].inputs[0]
                ps = self.shape(perm_out)
                xs = self.shape(x)
                if len(ps) == 4 and len(xs) == 3 and xs[0] == ps[0] and xs[1] == ps[1] and \
                        all(d.is_const() for d in ps[1:]) and \
                        ps[2].value * ps[3].value == xs[2].value and \
                        plan.tensors[src].alias_of is None and src not in plan.constants:
                    self.src_heads[li] = (src, ps[0], ps[1], ps[2], ps[3])
                    self.fused[pi] = (li, perm_out)

    def _qk_kn(self, name: str, B: E, S: E) -> None:
        """Leave a linear's head-split output ``name`` (B, H, S, D) in its features x tokens
        layout when attention alone reads it, as q or k (native.attention's q_kn / k_kn)."""
        plan = self.plan
        readers = self._readers(name)
        if env_native_kernels() == "numba" or len(readers) != 1 or name in plan.outputs or \
                self._aliased(name):
            return
        op = plan.ops[readers[0]]
        if op.kind != "sdpa" or name not in op.inputs[:2] or name in op.inputs[2:]:
            return
        if name == op.inputs[1] and S.value < 2:  # key vectors past S read the row padding
            return
        self.kn_heads[name] = kn_stride(B * S)

    def _stem_pool(self, out: str, act: tuple) -> int | None:
        """The max pool (3x3, stride 2, padding 1) that alone reads a direct conv's output
        ``out``, when the conv's activation leaves nothing negative (the fused pool's padding
        reads as zero): smallconv runs both (a ResNet's stem)."""
        if not env_native_fuse() or not (act[0] == "relu" or
                                         (act[0] == "clamp" and act[1] >= 0.0)):
            return None
        j = self._only_reader(out)
        if j is None:
            return None
        a = self.plan.ops[j].attrs
        if self.plan.ops[j].kind != "pool2d" or a.get("mode") != "max" or \
                bool(a.get("ceil_mode", False)):
            return None
        window = [tuple(int(v) for v in a[k_]) for k_ in ("kernel", "stride", "padding")]
        dil = tuple(int(v) for v in a.get("dilation", (1, 1)))
        return j if window == [(3, 3), (2, 2), (1, 1)] and dil == (1, 1) else None

    def _only_reader(self, name: str) -> int | None:
        """The index of the one op reading ``name``, when ``name`` is not a plan output, no
        tensor aliases it and exactly one op reads it (so that op may take over its bytes)."""
        if name in self.plan.outputs or self._aliased(name):
            return None
        readers = self._readers(name)
        return readers[0] if len(readers) == 1 else None

    def _aliased(self, name: str) -> bool:
        """Whether a tensor of the plan is a view of ``name``."""
        return any(t.alias_of == name for t in self.plan.tensors.values())

    def _q8_codes_out(self, name: str, c: int, hw: int, dual: bool = False
                      ) -> tuple[str, Slot, Slot, Slot, bool] | None:
        """When an int8 1x1 conv (stride 1, no padding: its input pass is a plain quantize
        into 4-channel groups) reads ``name`` (c channels of hw positions, written by the
        kernel being lowered) and every group is whole: the temporary holding that conv's
        codes, the writer's (1 / scale, zero, dwords a sample) slots, and whether the codes
        are all that is read (no other reader, not an output: no float32 copy is written).
        Without ``dual`` the 1x1 conv must be the only reader. With AVX-512BW only (a masked
        byte store a vector)."""
        plan = self.plan
        if c % 4 or self.vw != 16 or "+avx512bw" not in self.features or self._aliased(name):
            return None
        readers = self._readers(name)
        plain = [j for j in readers if self._plain_q8(plan.ops[j], name, hw)]
        only = readers == plain and len(plain) == 1 and name not in plan.outputs
        if len(plain) != 1 or not (only or dual):
            return None
        j = plain[0]
        op = plan.ops[j]
        per_sample = c // 4 * hw + SP.Shift.of(op, self.example(op.output)).slack  # dwords,
        planes = self.temp("q8codes", self.shape(name)[0] * per_sample * 4)  # as op_qconv2d
        self.p.buffers[planes].last = j
        self.q8_in[j] = (planes, per_sample)
        if only:
            self.q8_dropped.add(name)
        scale, zero = float(op.attrs["x_scale"]), int(op.attrs["x_zero"])
        return planes, F(float(np.float32(1.0 / scale))), I(zero), I(per_sample), only

    def _expand_reader(self, op: Op, name: str) -> int | None:
        """The depthwise conv that alone reads ``name``, the output of ``op`` (a sparse 1x1
        conv whose activation fuses), when its register kernel can compute ``op`` a channel
        at a time (one depthwise channel per expanded one, a plane of at most EXPAND_PLANE)."""
        if _act(op)[0] not in E_.FUSED_ACTS:
            return None
        j = self._only_reader(name)
        if j is None:
            return None
        dop = self.plan.ops[j]
        if dop.kind != "conv2d" or dop.inputs[0] != name:
            return None
        a = dop.attrs
        _, c, h, w = (v.value for v in self.shape(name))
        _, co, ho, wo = (v.value for v in self.shape(dop.output))
        kh, kw = (int(v) for v in a["kernel"])
        sh, sw = (int(v) for v in a["stride"])
        ph, pw = (int(v) for v in a["padding"])
        dh, dw = (int(v) for v in a["dilation"])
        if int(a["groups"]) != c or co != c or c < 2 or h * w > DW.EXPAND_PLANE or \
                SP.is_sparse(a.get("fmt")):  # (op_conv2d's "planar" branch: dense weights)
            return None
        wt = SP.sparse_weight(op, {r: self.plan.constants[n] for r, n in op.params.items()})
        if not expand_inside(wt.data.size / (c * self.shape(op.inputs[0])[1].value), c, h * w):
            return None
        return j if DW.fits(self.vw, h, w, ho, wo, sh, sw, c, co, _act(dop)[0], kh, kw, ph, pw,
                            dh, dw, self._taps(dop, False, co)) else None

    def _plain_q8(self, op: Op, name: str, hw: int) -> bool:
        """Whether ``op`` is an int8 conv whose input pass quantizes ``name`` (hw positions a
        channel) into plain 4-channel groups (1x1, stride 1, no padding)."""
        if op.kind != "qconv2d" or op.inputs[0] != name:
            return False
        g = SP.Shift.of(op, self.example(op.output))
        return g.phases == 1 and (g.ph, g.pw, g.sh, g.sw) == (0, 0, 1, 1) and g.plane == hw

    def _planes_reader(self, name: str, g, widen: bool = False) -> tuple[int, SP.Shift] | None:
        """(index, geometry) of the op reading ``name`` (written by a shifted conv of
        geometry ``g``) when it is its only reader and a shifted sparse conv whose padded
        planes hold g's wide rows as their interiors: one phase, padding 1 each side, planes
        wq = g.wq wide and g.ho + 2 high (3x3 stride 1 after 3x3 stride 1). ``widen``: also
        when the planes are up to SHIFT_WIDEN columns wider than g's rows (and at most a
        quarter), which g may be widened to (3x3 stride 1 after 3x3 stride 2)."""
        j = self._only_reader(name)
        if j is None or not env_planes() or self._rows_geom(j) is not None or \
                self.pk_on and self._pkm(j):
            return None
        op = self.plan.ops[j]
        if op.kind != "conv2d" or op.inputs[0] != name or int(op.attrs["groups"]) != 1 or \
                not SP.is_sparse(op.attrs.get("fmt")) or self.example(name)[1] <= 4:
            # (<= 4 input channels: the direct small conv kernel takes it)
            return None
        params = {r: self.plan.constants[c] for r, c in op.params.items()}
        sw = SP.sparse_weight(op, params)
        if sw.data.size == 0 or sw.family != "spmm" or \
                SP.conv_method(op, self.example(name), self.example(op.output)) != "shifted":
            return None
        gj = self._shift(op)
        wider = gj.wq - g.wq
        if gj.phases != 1 or (gj.ph, gj.pw) != (1, 1) or gj.hq != g.ho + 2 or \
                gj.wq != g.wo + 2 - gj.share or wider < 0 or \
                (wider and not (widen and wider <= SHIFT_WIDEN and 4 * wider <= g.wq)):
            return None
        return j, gj

    def _pool_reader(self, name: str) -> int | None:
        """The index of the op reading ``name`` when it is its only reader and a max pool
        k_maxpool_rows runs (k x k, stride k... no padding or dilation), else None."""
        j = self._only_reader(name)
        if j is None:
            return None
        op = self.plan.ops[j]
        return j if op.kind == "pool2d" and self._rows_pool(op) else None

    def _fuse_residual(self, res, out: str, act):
        """Take the residual add ``res`` (_residual's, or None) into the conv being lowered:
        (the tensor the conv writes, the other addend or None, the activation it applies),
        the add recorded as fused into it."""
        if res is None:
            return out, None, act
        j, other, act = res
        self.fused[j] = (self.i, out)
        return self.plan.ops[j].output, other, act

    def _residual(self, op: Op, act) -> tuple[int, str, tuple[str, float, float]] | None:
        """(add op index, the other addend, the add's activation) when ``op`` (a conv with no
        activation of its own) feeds only an elementwise float32 add of a same-shaped tensor
        computed before it, whose activation the kernels fuse: then the conv writes
        act(conv + other) into the add's output and the add disappears."""
        plan = self.plan
        name = op.output
        if not env_native_fuse() or act[0] != "none":
            return None
        j = self._only_reader(name)
        if j is None:
            return None
        add = plan.ops[j]
        if add.kind != "binary" or add.attrs.get("fn") != "add" or len(add.inputs) != 2 or \
                add.inputs[0] == add.inputs[1] or _fused(_act(add)[0]) != _act(add)[0]:
            return None
        other = add.inputs[1] if add.inputs[0] == name else add.inputs[0]
        if other in plan.constants or plan.tensors[add.output].alias_of is not None or \
                add.output in plan.inputs:
            return None
        if any(self._dtype(t) != "float32" for t in (name, other, add.output)):
            return None
        if plan.tensors[other].shape != plan.tensors[name].shape or \
                plan.tensors[add.output].shape != plan.tensors[name].shape:
            return None
        made = self._writers(other)
        if other not in plan.inputs and (not made or made[0] >= self.i):
            return None  # computed after the conv (a ResNet's downsample branch)
        return j, other, _act(add)

    def _pool2_ir(self, op: Op) -> bool:
        """Whether native/pool2.py's vectorised kernel runs this pool (a 2 x 2 / 2 rows pool,
        POOL2_IR), which reads and writes the packed layout too."""
        return POOL2_IR and self._rows_pool(op) and \
            tuple(int(v) for v in op.attrs["kernel"]) == (2, 2) and \
            tuple(int(v) for v in op.attrs["stride"]) == (2, 2)

    def _rows_pool(self, op: Op) -> bool:
        """Whether k_maxpool_rows runs this pool: max, square window = stride, no padding or
        dilation, every window inside the input (no ceil_mode partial window)."""
        a = op.attrs
        if a.get("mode") != "max":
            return False
        kh, kw = (int(v) for v in a["kernel"])
        sh, sw = (int(v) for v in a["stride"])
        if kh != kw or sh != sw or tuple(a["padding"]) != (0, 0) or \
                tuple(a.get("dilation", (1, 1))) != (1, 1):
            return False
        h, w = self.example(op.inputs[0])[2:]
        ho, wo = self.example(op.output)[2:]
        return (ho - 1) * sh + kh <= h and (wo - 1) * sw + kw <= w


# Activation bytes per call above which a batch runs in chunks of samples: each chunk goes
# through the whole model while its activations stay in the caches (L2 + a share of L3); with
# enough chunks each thread runs its own (module._emit_chunks). ResNet-50 at 90 %, batch 16
# (~6-9 MB of activations per sample): 286 ms in one call, 235 ms in chunks of 2, 234 in
# chunks of 1. Same process, batch 16, 6 vs 12 MB: MiniLM (1.4 MB a sample, 4 vs 9 samples a
# chunk) 58.4 vs 67.3 ms, MobileNetV2 36.4 vs 40.0, ResNet-18 and -50 level (one sample).
CHUNK_BYTES = 6 << 20
# Op kinds that treat every sample on its own (when every tensor's leading dim is the batch;
# a permute, slice or expand that moved or resized it would break that, and batch_chunk checks
# every tensor).
PER_SAMPLE = frozenset({"conv2d", "pool2d", "adaptive_pool2d", "act", "binary", "unary",
                        "affine", "linear", "qlinear", "qconv2d", "reshape", "sdpa",
                        "embedding", "permute", "slice", "expand", "cast", "where"})


def _per_sample(plan: ExecutionPlan, op: Op) -> bool:
    """Whether ``op`` treats every sample on its own, given that every tensor it touches has
    the batch as its leading dim: a norm or softmax over dims that include the batch mixes
    samples."""
    if op.kind in PER_SAMPLE:
        return True
    rank = len(plan.tensors[op.output].shape)
    if op.kind == "layer_norm":
        return int(op.attrs["ndims"]) < rank
    if op.kind == "softmax":
        return int(op.attrs["axis"]) % rank != 0
    return False


def batch_chunk(plan: ExecutionPlan, per_sample: int) -> tuple[int, tuple[list[int],
                                                                          list[int]]]:
    """(samples per chunk, bytes per sample of each input and output) when the model may run a
    batch chunk by chunk: only per-sample ops, every activation's leading dim is the batch N
    and no other dim depends on N (so samples never mix); (0, ...) otherwise or when the whole
    batch's activations are small anyway."""
    none: tuple[int, tuple[list[int], list[int]]] = (0, ([], []))
    if not env_native_fuse() or per_sample <= 0 or \
            not all(_per_sample(plan, op) for op in plan.ops):
        return none
    for name, t in plan.tensors.items():
        if name in plan.constants:
            continue
        lead = t.shape[0] if t.shape else None
        if not (isinstance(lead, Sym) and lead.k == 1) or \
                any(isinstance(d, Sym) for d in t.shape[1:]):
            return none

    def per(name: str) -> int:
        t = plan.tensors[name]
        return int(np.prod([int(d) for d in t.shape[1:]], dtype=np.int64)) * \
            np.dtype(t.dtype).itemsize

    chunk = max(1, CHUNK_BYTES // per_sample)
    return chunk, ([per(n) for n in plan.inputs], [per(n) for n in plan.outputs])


def batch_min_chunk(plan: ExecutionPlan, chunk: int) -> int:
    """The fewest samples a chunk of a sample-parallel batch holds: 1 when most weight work is
    in layers that vectorise within a sample (convs, token rows: the MNIST CNN at batch 4 / 16
    took 0.224 / 0.728 ms in per-layer regions, 0.190 / 0.697 in chunks of 1 / 4 a thread;
    MiniLM at batch 4 / 8 15.3 / 30.4 -> 13.9 / 27.5 ms), else ``chunk``: layers whose rows
    are the samples alone vectorise over the batch and split their weights between the
    threads (an MLP in chunks of 1-16 samples ran 1.4-2.1x slower at batch 4-64: each chunk
    streams every weight). Work is weighed as weight bytes x output positions per sample."""
    rows = within = 0.0
    for op in plan.ops:
        wbytes = sum(plan.constants[c].nbytes for c in op.params.values()
                     if c in plan.constants)
        if not wbytes or op.output not in plan.tensors:
            continue
        shape = plan.tensors[op.output].shape
        if op.kind in ("conv2d", "qconv2d"):
            within += wbytes * float(np.prod([int(d) for d in shape[2:]]))
        elif len(shape) == 2:
            rows += wbytes
        else:
            within += wbytes * float(np.prod([int(d) for d in shape[1:-1]]))
    return chunk if rows > within else 1


# Per-sample activation bytes at or under which a chunked model's last layers run over the
# whole batch (tail_split): their weights are then fetched once a call instead of once a
# chunk, the grouped kernels' code runs over every sample (7 x 7 layers too, Lowering.spmm),
# and a classifier is one GEMM instead of a GEMV a sample. Every layer over the whole batch
# ran ResNet-18 at 90 %, batch 16 in 74.5 ms against 80.0 in chunks of one sample, and
# ResNet-50 in 190 against 173 (its early activations need the chunks). Same process, batch
# 16, no tail / 256 KB / 512 KB / 1 MB: ResNet-18 80.3 / 72.0 / 71.9 / -, ResNet-50 175.5 /
# 173.0 / 165.6 / 181.4, MobileNetV2 17.3 / 16.4 / 16.7 / - (global, real weights: 26.8 /
# - / 26.0); batch 1 level (ResNet-18 5.55 / 5.62 / 5.60).
TAIL_SAMPLE_BYTES = 512 << 10
# The whole-batch tail in chunks of samples, one a thread (Program.tail_chunks), when each
# chunk holds TAIL_MIN_CHUNK samples or more: no call in it then reads what the other
# thread wrote.
TAIL_CHUNKS = False
TAIL_MIN_CHUNK = 4
# Grouped kernels over whole tiles where the rows have room (Lowering.spmm's ``whole``): a
# span that is not a multiple of the vector width made the assembly twice, the second copy
# for the part tile, so ResNet-50's library held 45.8 MB of code (19.5 bytes a nonzero);
# whole tiles, 25.1 MB. Same process: ResNet-50 batch 16 / 1 1.058x / 1.100x faster,
# ResNet-18 1.033x / 1.080x, MobileNetV2 batch 16 level. With AVX2 the generic kernel's too
# (its masked last tile is vmaskmovps loads and stores): Zen 3, ResNet-18 batch 1, layer4's
# 3x3 convs (63 -> 64 floats a sample) 1.55-1.68x faster.
WHOLE_TILES = True
# An op's own temporary over the limit (a stride-2 conv's phase planes) does not keep the op
# out of the tail when what it reads and writes is under it: ResNet-50 batch 16 split at
# layer4.0.conv1 instead of conv3 (its conv2's planes 524 KB a sample), same process 1.013x
# / 1.016x faster in two runs.
TAIL_OWN_TEMPS = True
# A shifted conv without wrap columns (a strided 1x1: ResNet's downsample) writes its output
# and fuses the residual add in its kernel instead of a crop pass after (Lowering._shifted):
# ResNet-50 / -18 batch 16 1.017x / 1.012x faster in one process (k_crop_res took 0.65-0.77
# ms a downsample in ResNet-50), batch 1 level.
SHIFT_DIRECT = True
# The tail starts after the last read of a big buffer (not only its write) when that reader's
# maps have GROUP_MIN_TILES vectors of positions a sample: ResNet-18's layer2.0 downsample
# then runs in the chunks instead of reading layer1's 802 KB-a-sample output back across the
# boundary (split at layer2.1.conv1, not layer2.0.conv2). Same process, batch 16: ResNet-18
# 1.027x / 1.025x, MobileNetV2 uniform 1.029x, global 1.017x; ResNet-50 unchanged (its
# layer4.0 downsample's maps are 7 x 7, better over the batch: 0.975x when moved).
TAIL_AFTER_READS = True
# ... and no earlier than the first conv whose output maps hold fewer than TAIL_MAPS
# positions, or the 1x1 conv feeding it alone (_small_maps_start): maps of 8 vectors or more
# a sample give a grouped kernel's code enough reuse within the sample, with x in L2, while
# over the whole batch x goes to L3. ResNet-18 batch 16 tail from layer4.0.conv1 instead of
# layer2.1.conv1, same process, two runs of 60: 1.041x / 1.029x (paired medians 1.053x /
# 1.032x); MobileNetV2 uniform (from features.14) 1.040x, global 1.009x (paired 1.043x);
# ResNet-50 keeps layer4.0.conv1 (its feeder rule: from conv2, 0.985x). That was 128
# positions on the Xeon (2 MB L2 a core). On the Zen 5 (1 MB L2; its instruction fetch from
# L3 runs bench/grouped_ceiling.py's FMA-only body at 142 GFLOP/s a core with 6 MB of code
# against 255 with 90 KB) 14 x 14 maps run better over the batch too: a layer3 3x3 conv's
# 590 KB of code then comes in once a sample set instead of once a sample. 256, against 128
# in one process, batch 16: ResNet-18 (tail from layer3.0.conv1) 0.931x and 0.915x the sum
# of the calls in two runs (its layer3 convs 0.66-0.74x), MobileNetV2 uniform 0.977x, global
# 0.925x; batch 1 1.027x (ResNet-18) and 1.020x (MobileNetV2) slower: layer3's bands go.
# ResNet-50 keeps layer4.0.conv1, its layer3's 802 KB-a-sample tensors being over
# TAIL_SAMPLE_BYTES: letting those into the tail too ran its layer3 3x3 convs 0.55-0.60x the
# time on a quiet machine (the model 0.915x) and 1.10-1.32x slower on a loaded one (12.8 MB of
# the batch's x in a shared L3; the model 1.03x slower), so not taken.
TAIL_MAPS = 256
# ... and a model with no activation over the limit (every layer fits a chunk) gets a tail
# from that conv as well: its small maps' convs run the grouped kernel over the whole batch
# instead of row by row a sample. MNIST CNN 90 % global (its 7 x 7 conv, 64 -> 128, 4 vectors
# of positions a sample), bench/op_ab.py --plain, paired medians: batch 16 0.83x the time
# (0.64 -> 0.52 ms), 5 0.80x, 64 0.89x, 1 level (0.99x). With AVX-512 only: the AVX2 build
# (haswell features on the same Zen 4) ran batch 16 1.08-1.10x slower with it (paired
# medians of 1500 / 2500 calls; its 7 x 7 maps are 7 vectors of 8 a sample, no packing).
TAIL_SMALL_MAPS_ONLY = True
# Columns a shifted conv's phase planes may be widened by (zeros) so its wide rows go
# straight into the next conv's padded planes (a stride-2 3x3 conv before a stride-1 one):
# the crop and the next conv's phase pass disappear for a few extra FMAs. Same process,
# ResNet-18 batch 16: 1.009x (layer2-4.0.conv2 1.06-1.10x faster, conv1 0.95-0.98x).
SHIFT_WIDEN = 2
# With AVX2, a 3x3 / 1 conv's planes one padded column a row instead of two (Lowering._shift,
# Shift.share): a row's right padding is the next row's left, so its wide rows hold one
# wrap column instead of two (7 x 7 maps: 56 positions a channel instead of 63, rounded to 64).
SHIFT_SHARE = True
# With AVX2, a 3x3 / 1 conv's planes twice (Lowering._sample_floats, _dual_offsets): each
# x load of the generic kernel from the copy where it lies on one cache line.
DUAL_PLANES = True
DUAL_MIN_TAPS = 80
# A conv writing the next one's dual planes writes both copies (no copy pass), the next one
# taking them from DUAL_MIN_TAPS_WRITTEN nonzeros an input channel. ResNet-18 batch 16 on
# the AVX2 Zen 3 (bench/op_ab.py, one process): the writers 1.03-1.11x slower (the second
# copy's stores), their readers level to 1.05x faster without the copy pass, the sum level
# (85.52 / 85.74 ms); with layer1's 3x3 convs (58 nonzeros a channel) taking them too,
# those 1.11x faster, the sum 0.991x.
DUAL_WRITE = True
DUAL_MIN_TAPS_WRITTEN = 40
# Dual planes a phase pass makes are written twice by it (phase.PhaseSpec.dual: each item
# copies its planes while they are in L1), so they too need only DUAL_MIN_TAPS_WRITTEN, and
# no copy pass reads them back.
PHASE_DUAL = True
# A conv writing the next one's padded planes stores zeros at its wrap columns (the generic
# AVX2 kernel, KernelSpec.wrap), which land on the planes' side borders, so the pass after
# it (k_endpads) clears only each plane's first and last runs, not a float of every row
# (k_pads) from lines already out of L2.
WRAP_ZEROS = True
# 3x3 / 1 convs over rows planes (Lowering._rows_geom): the input padded by zero rows only,
# the taps across a row's edge masked per lane, the output dense: no wrap columns, no crop,
# and the conv before (a 1x1, or another rows conv) writes straight into them, so no copy
# either. Same process, batch 16: ResNet-50 1.011x / 1.035x (the second with every
# channel's interior on a cache line), ResNet-18 1.017-1.043x; batch 1 1.031x / 1.014x.
ROWS_PLANES = True
# and 3x3 / 2 convs (their x split into four phase planes, none with padded columns): no
# crop, and a stride-1 conv after them takes rows planes too. Same process: ResNet-18 batch
# 16 / 1 1.009x / 1.010x, ResNet-50 0.997x / 0.995x (its stride-2 convs feed 1x1 convs).
ROWS_STRIDE2 = True
# Tile-major activations (Lowering.tm): a sample's positions in tiles of 16, each tile's
# channels one cache line apart, where every call touching the tensor is a grouped sparse
# kernel that takes it (a 1x1 conv's x, out or residual; a rows conv's out or residual).
# The 1x1 convs reading them walk a tile's x in consecutive lines instead of one line a
# channel, H x W floats apart (bench/grouped_body.py's "x packed").
TILE_MAJOR = True
# ... and the packed tail's tensors (PACK), tile-major within a block of 16 samples where
# every packed call touching one is a grouped 1x1 conv (Lowering.pktm): its 49 tiles' x
# each one run of consecutive lines, which the prefetchers follow, where the packed layout
# puts a tile's channels 3 KB apart, one line each (x comes from L3 here: 1.6-6.4 MB a
# call). bench/packed_7x7.py (the emitted code, one core, 15 rounds): 512 -> 2048 at 68.5
# GFLOP/s packed in panels, 81.6 tile-major; 2048 -> 512 66.9 / 77.2; 512 -> 512 76.2 / 87.0.
PACK_TILE_MAJOR = True
# A stride-2 1x1 conv (a ResNet's downsample) reads x's even rows and columns from the rows
# planes a 3x3 / 2 conv of the same x made (Lowering._shared_phase): no phase pass of its own.
SHARE_PHASE = True
# A stride-2 1x1 conv in the per-sample head (ResNet-50's downsamples) reads its x's even
# rows and columns gathered tile-major (Lowering._tm_gather, native.tmgather) in place of a
# phase plane: a tile of its x is then consecutive lines, and its x (a stage's last output,
# which the next stage's first 1x1 conv reads too) may be tile-major itself.
TM_GATHER = True
# ... and the packed tail's downsample reads its x so too (Lowering._shifted_direct_pk; else
# kernels.k_gather_pktm, numba's loop a float at a time).
TM_GATHER_PACKED = True
# ... and a stride-2 1x1 conv that runs another kernel (the tail's plain variant) takes its
# phase plane from a tile-major x by the gather as well (Lowering._gather_planes), so x (the
# head's last output, which the tail's first 1x1 conv reads too) may be tile-major.
TM_GATHER_PLANES = True
# Dense linears of several rows over their weight in panels (Lowering._linear_panels):
# batch 16, same process, per op: ResNet-50's classifier 1.50 -> 0.79 ms, MobileNetV2's
# 0.87 -> 0.48 (Xeon).
LINEAR_PANELS = True
# The global average pool as a vectorised LLVM kernel (native.gmean) instead of numba's
# loop: batch 16, same process, per op, ResNet-50 1.15 -> 0.54 ms, ResNet-18 0.23 -> 0.10.
GLOBAL_MEAN_IR = True
# 2x2 / 2 max pools through native/pool2.py's vectorised kernel, not k_maxpool_rows (A/B)
POOL2_IR = True


# The whole-batch tail's small maps with the batch packed into the positions (Lowering._pack_set):
# a tensor (N, C, H, W) with H * W <= PACK_MAPS positions, not a multiple of 16, held as
# (N / PACK_B, C, PACK_B * H * W): a block's channel holds its PACK_B samples' maps one after
# another, so at 7 x 7 a channel of 16 samples is 49 whole vectors where NCHW gives each sample
# 4 vectors with 49 of 64 lanes live. Its 1x1 convs run the grouped kernel over the blocks
# with a block's tiles in panels whose x fits PACK_PANEL_BYTES (emit.A_PANELS), every row
# group over a panel before the next; the phase passes, crops and the global mean read or
# write it at the ends. The packed calls run at the batches whose blocks take no more vectors
# than the samples do plain (Lowering._pack_gain: at 7 x 7, N = 13-16, 25-32, 37-48 and 49
# on), the plain ones at the others (a block of 16 would be 15/16 padding at batch 1).
# bench/packed_7x7.py, one core, batch 16: 1.40-1.58x over NCHW on ResNet-50's layer4 1x1
# convs.
PACK = True
PACK_B = 16
PACK_MAPS = 64
PACK_PANEL_BYTES = 1 << 20
# The packed tail's 3x3 convs (padding 1; stride 1 over a packed x, stride 2 over packed phase
# planes of x) as one grouped call over the packed maps themselves, with no padding: a tap
# that would read off a map's edge is masked off per lane (KernelSpec.edge_h), so the FMAs
# cover the 49 positions of a 7 x 7 map and nothing else (NCHW's wide rows compute 64 lanes a
# sample), no crop or phase pass runs at stride 1, and the residual add is fused
# (Lowering._shifted_pkm). Off: those convs read per-sample planes and crop into the layout.
PACK_MASKED = True
# A masked conv whose block of x (its rows planes over a block's maps) is over PKM_PANELS x a
# core's L2 runs the block's tiles in panels (as the packed 1x1 convs: every row group over a
# panel's x before the next panel) instead of every group over the whole block; the others
# keep that (0: never panels). Xeon (Emerald Rapids, L2 2 MB), 2026-12-05, bench/op_ab.py
# per op at batch 16, panels / whole: ResNet-50 layer4.0.conv2 (3x3 / 2, four planes a
# channel: 6.4 MB a block) 0.74x the time, ResNet-18 layer4.0.conv1 (3.2 MB) 0.88x; the
# stride-1 ones (1.6 MB) 1.01-1.16x slower, so they stay whole (on the Zen 4, L2 1 MB, all of
# them in panels measured level: ResNet-18 layer4 0.91-1.04x).
PKM_PANELS = 1.0


def tail_split(p: Program, limit: int, kn: set[str], at: int | None = None,
               small_only: bool = False) -> None:
    """Split a chunked program (Program.tail): the tail starts at the first call after the
    last write of a buffer over ``limit`` bytes a sample (TAIL_AFTER_READS: or its last
    read) and not before _small_maps_start's conv (TAIL_MAPS; with no such buffer, at that
    conv if ``small_only``: TAIL_SMALL_MAPS_ONLY); or at op ``at``. No split when that leaves
    no call on either side, the tail holds int8 layers, or a buffer crossing it is not a
    whole number of sample-sized blocks (N x bytes, sample-major: a features x batch layout
    is not)."""
    if limit <= 0 or not p.calls:
        return

    def small(name: str) -> bool:
        root = p.plan.storage_root(name) if name in p.plan.tensors else name
        return root not in p.buffers or linear(p.buffers[root].nbytes)[0] <= limit

    def own(b: Buffer) -> bool:
        """An op's temporary (a stride-2 conv's phase planes) whose op reads and writes
        small tensors: the op may run in the tail."""
        if not (TAIL_OWN_TEMPS and b.name.startswith("~tmp") and b.first == b.last):
            return False
        op = p.plan.ops[b.first]
        return all(small(t) for t in [*op.inputs, op.output] if t not in p.plan.constants)

    def end(b: Buffer) -> int:
        """Where ``b`` stops keeping the tail away: its write, or its last read when that
        reader's output maps are big enough to run well a sample at a time (else the reader
        does better over the whole batch, its input crossing the boundary)."""
        if not TAIL_AFTER_READS or b.last >= len(p.plan.ops):
            return b.first
        return b.last if _out_maps(p.plan, b.last) >= GROUP_MIN_TILES * 16 else b.first

    big = [end(b) for b in p.buffers.values() if linear(b.nbytes)[0] > limit and not own(b)]
    t_op = at if at is not None else max(big) + 1 if big else 0
    if at is None and TAIL_MAPS and (big or small_only):
        t_op = max(t_op, _small_maps_start(p.plan))
    tail = next((ci for ci, c in enumerate(p.calls) if c.op >= t_op), len(p.calls))
    if tail == 0 or tail == len(p.calls):
        return
    t_op = p.calls[tail].op
    if any(p.plan.ops[c.op].kind in ("qconv2d", "qlinear") for c in p.calls[tail:]):
        return  # int8 layers gain nothing over the whole batch (ResNet-50 / MobileNetV2
        # int8 at batch 16, same process: 79.8 / 12.2 ms without a tail, 81.7 / 13.0 with)
    cross = [b for b in p.buffers.values() if b.first < t_op <= b.last]
    rest = [b for b in p.buffers.values() if b.first >= t_op]  # the tail's own
    for b in cross:
        a, c = linear(b.nbytes)
        if c or b.name in kn:
            return
    p.tail = tail
    p.boundary, p.boundary_offsets, p.boundary_sizes, p.boundary_bytes = [], [], [], 0
    _to_boundary(p, cross)
    _pack_head(p, t_op)
    p.tail_arena = _pack(rest)
    late = {b.name for b in rest}
    p.tail_outputs = [o for o in p.plan.outputs if p.plan.storage_root(o) in late]


# The chunked head in segments of at most SEGMENT_BYTES of grouped code and values (est.
# SEGMENT_NNZ_BYTES a nonzero), each run over every chunk of the batch before the next
# (head_segments), cut where one tensor alone crosses, at most SEGMENT_CROSS_BYTES a sample
# (a block's output). A sample at a time, a conv's code comes back from the L3 (or DRAM) for
# every sample once the head's code outgrows what stays there: on the Zen 5 (L3 share ~16
# MB), ResNet-50's layer3 3x3 convs ran 1.40-1.44 ms a call in a model of two of its blocks
# in chunks of one sample, 2.30-2.37 in one of three, 2.9-3.0 in the model's head.
SEGMENT_BYTES = 3_000_000
SEGMENT_NNZ_BYTES = 14
# the row-by-row kernels' values and indices (8 bytes a nonzero) are data the prefetchers
# stream, not code: not counted (unmeasured; the tests count them to cut AVX2 heads, where
# most convs run row-by-row, unspecialised ones too)
SEGMENT_NNZ_BYTES_GENERIC = 0
SEGMENT_CROSS_BYTES = 1 << 20
# Boundary tensors of the segments share their places where lifetimes allow (_to_boundary).
BOUNDARY_REUSE = True


def head_segments(p: Program, kn: set[str]) -> None:
    """Cut the chunked head (calls before Program.tail) into segments (Program.segments):
    walking its ops, a cut before op X once the segment's sparse convs hold more than
    SEGMENT_BYTES of code and values with X's (grouped kernels SEGMENT_NNZ_BYTES a nonzero,
    row-by-row ones SEGMENT_NNZ_BYTES_GENERIC), where the cut is clean (every call before it
    belongs to an op before X, every call after to X or later: no row-band run across it)
    and one buffer alone crosses it, sample-major (N x bytes, no features x batch layout),
    at most SEGMENT_CROSS_BYTES a sample. The buffers crossing a cut join the boundary
    region; the head's others are packed again."""
    if not SEGMENT_BYTES or not p.tail or set(p.tail_outputs) != set(p.plan.outputs):
        return
    calls = p.calls
    t_op = calls[p.tail].op
    code: dict[int, int] = {}  # op -> bytes its sparse kernel brings in a sample (est.)
    for c in calls[:p.tail]:
        k = p.kernels.get(c.kernel)
        if k is None or k.kind != "sparse":
            continue
        per = SEGMENT_NNZ_BYTES if k.spec.group > 1 else SEGMENT_NNZ_BYTES_GENERIC
        if not per:
            continue
        if k.pattern is not None:
            nnz = len(k.pattern.indices)
        else:  # an unspecialised kernel (shared by layers): the op's own nonzeros
            op = p.plan.ops[c.op]
            nnz = SP.sparse_weight(op, {r: p.plan.constants[n]
                                        for r, n in op.params.items()}).data.size
        code[c.op] = max(code.get(c.op, 0), per * int(nnz))
    head = [c.op for c in calls[:p.tail]]
    low_after = head[:]  # the lowest op from each call on
    for ci in range(len(head) - 2, -1, -1):
        low_after[ci] = min(head[ci], low_after[ci + 1])
    seen: set[int] = set()
    clean: set[int] = set()  # ops X whose first call has only lower ops before it and
    hi = -1  # none lower after it
    for ci, op in enumerate(head):
        if op not in seen:
            seen.add(op)
            if hi < op and low_after[ci] >= op:
                clean.add(op)
        hi = max(hi, op)
    cuts, acc = [], 0
    bufs = list(p.buffers.values())
    for x in sorted(seen):
        add = code.get(x, 0)
        if acc and acc + add > SEGMENT_BYTES and x in clean:
            cross = [b for b in bufs if b.first < x <= b.last]
            if len(cross) == 1 and cross[0].name not in kn:
                a, c0 = linear(cross[0].nbytes)
                if not c0 and 0 < a <= SEGMENT_CROSS_BYTES:
                    cuts.append(x)
                    acc = 0
        acc += add
    if not cuts:
        return
    bounds = set(p.boundary)
    crossing = [b for b in bufs if b.name not in bounds and b.first < t_op and
                any(b.first < x <= b.last for x in cuts)]
    # (with them the head's residual sums over their addends, Buffer.share, when they can
    # take their partner's place there: ResNet-50's layer3 outputs, one segment's and the
    # next's, in one region)
    chain = _share_chain(p, crossing, lambda b: b.name not in bounds and b.first < t_op)
    _to_boundary(p, sorted(crossing + chain, key=lambda b: b.first), reuse=BOUNDARY_REUSE,
                 optional={b.name for b in chain})
    _pack_head(p, t_op)
    p.segments = cuts


def _share_chain(p: Program, bufs: list[Buffer], allowed) -> list[Buffer]:
    """The buffers ``allowed`` accepts linked to ``bufs`` by Buffer.share (either way, on
    and on), not among them."""
    taker = {b.share: b for b in p.buffers.values() if b.share in p.buffers}
    seen = {b.name for b in bufs}
    todo, out = list(bufs), []
    while todo:
        b = todo.pop()
        for n in (p.buffers[b.share] if b.share in p.buffers else None, taker.get(b.name)):
            if n is not None and n.name not in seen and allowed(n):
                seen.add(n.name)
                out.append(n)
                todo.append(n)
    return out


def _ordered(p: Program, before: int, after: int) -> bool:
    """Whether every call of an op up to ``before`` comes before every call of an op from
    ``after`` on (no row-band run interleaves them)."""
    last = max((ci for ci, c in enumerate(p.calls) if c.op <= before), default=-1)
    return all(c.op < after for c in p.calls[:last + 1])


def _to_boundary(p: Program, bufs: list[Buffer], reuse: bool = False,
                 optional: set[str] = frozenset()) -> None:
    """Place ``bufs`` in the boundary region after what it holds: N x a sample's bytes each,
    a sample's bytes rounded up to 64 apart (offset (pos, 0): pos x N).

    With ``reuse`` (head segments) a buffer takes the place of one already there whose
    last reader runs before its first writer (op order, _ordered) and whose samples are as
    large: sample j's bytes are read in a chunk before the same chunk writes the new
    tensor's sample j over them (chunks hold whole samples and every head part takes the
    same ones), and a segment's conv then stores into lines it has just read instead of
    lines it must fetch from DRAM. ResNet-50's layer3.0, 3.2 and 3.4 outputs share one
    N x 832 KB region (the tail's layer3.5 output keeps its own: its writer reads 3.4's).
    With ``reuse`` a buffer also takes the place of its Buffer.share partner (either way)
    when nothing else there is live meanwhile; one in ``optional`` goes to the region only
    so, else it stays where it was (the head's arena)."""
    pos = p.boundary_bytes
    todo, again = list(bufs), set()
    while todo:
        b = todo.pop(0)
        size = linear(b.nbytes)[0]
        slot = _partner_slot(p, b, size) if reuse else None
        if slot is None and b.name in optional:
            if b.name not in again:  # (once more after the rest: its partner may go there)
                again.add(b.name)
                todo.append(b)
            continue
        if reuse and slot is None:
            for k, name in enumerate(p.boundary):
                old = p.buffers[name]
                if p.boundary_sizes[k] >= size and old.last < b.first and \
                        _ordered(p, old.last, b.first) and \
                        not any(p.boundary_offsets[k] == off and p.buffers[m].last >= b.first
                                for m, off in zip(p.boundary, p.boundary_offsets)):
                    slot = k
        p.boundary.append(b.name)
        p.boundary_sizes.append(size)
        if slot is not None:
            off = p.boundary_offsets[slot]
            p.boundary_offsets.append(off)
            b.offset = (off, 0)
            continue
        p.boundary_offsets.append(pos)
        b.offset = (pos, 0)
        pos += -(-size // 64) * 64
    p.boundary_bytes = pos


def _partner_slot(p: Program, b: Buffer, size: int) -> int | None:
    """The boundary entry whose place ``b`` may take as a buffer of its Buffer.share chain
    (_share_chain: a residual sum over its addend, the next block's over that, ...): the
    same size, and every tensor there b's direct partner or live before or after b, in op
    order. None if there is none."""
    chain = {c.name for c in _share_chain(p, [b], lambda _: True)}
    direct = {b.share} | {c.name for c in p.buffers.values() if c.share == b.name}
    for k, name in enumerate(p.boundary):
        if name not in chain or p.boundary_sizes[k] != size:
            continue
        off = p.boundary_offsets[k]
        if all(n in direct or n == b.name or
               (o.last < b.first and _ordered(p, o.last, b.first)) or
               (b.last < o.first and _ordered(p, b.last, o.first))
               for n, at in zip(p.boundary, p.boundary_offsets) if at == off
               for o in (p.buffers[n],)):
            return k
    return None


def _pack_head(p: Program, t_op: int) -> None:
    """The head's arena (Program.arena): its buffers (written before op ``t_op``, the tail's
    first) outside the boundary region, packed by lifetime."""
    bounds = set(p.boundary)
    p.arena = _pack([b for b in p.buffers.values() if b.first < t_op and b.name not in bounds])


def _out_maps(plan: ExecutionPlan, i: int) -> int:
    """Positions a sample of op i's output maps (H * W of an N, C, H, W output; else 0)."""
    shape = plan.tensors[plan.ops[i].output].shape
    return math.prod(int(d) for d in shape[2:]) if len(shape) == 4 else 0


def _small_maps_start(plan: ExecutionPlan) -> int:
    """The first conv op whose output has fewer than TAIL_MAPS positions a sample, or the 1x1
    conv writing its input when that conv is the output's only reader (ResNet-50's
    layer4.0.conv1 before the stride-2 conv2); 0 when there is none."""
    ops = plan.ops
    f = next((i for i, op in enumerate(ops) if op.kind == "conv2d" and
              0 < _out_maps(plan, i) < TAIL_MAPS), None)
    if f is None:
        return 0
    x = ops[f].inputs[0]
    w = next((j for j in range(f - 1, -1, -1) if ops[j].output == x), None)
    if w is not None and ops[w].kind == "conv2d" and \
            tuple(int(v) for v in ops[w].attrs["kernel"]) == (1, 1) and \
            set(plan.users().get(x, [])) == {f}:
        return w
    return f


def _gatherable(g) -> bool:
    """Whether the shifted conv of geometry ``g`` is a stride-2 1x1 conv without padding
    whose one phase plane has no wrap columns: what native.tmgather gathers."""
    return (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw) == (1, 1, 2, 2, 0, 0, 1, 1) and \
        g.wq == g.wo and len(g.pys) == 1 and len(g.pxs) == 1


def lower_program(plan: ExecutionPlan, vw: int, threads: int, features: str = "") -> Program:
    """Lower ``plan``; when the program gets a whole-batch tail, lower it again knowing where
    the tail starts, so the tail's convs may take the grouped kernel at batches whose
    positions fill it (Lowering.spmm), and split it at the same op. When its head runs a
    sample a chunk and has runs of convs worth running in row bands (native.bands), once
    more with their big tensors band-major: that program, its head in bands, keeps the one
    before as ``alt_head`` for the runs that share a sample between threads."""
    dense: frozenset[str] = frozenset()
    nopack: frozenset[str] = frozenset()
    untiled: frozenset[str] = frozenset()
    pk_untiled: frozenset[str] = frozenset()

    def lower(tail_from=None, band_major=None, tiled=True, rings=None):
        nonlocal dense, nopack, untiled, pk_untiled
        while True:  # (each retry makes at least one more tensor dense, plain or untiled)
            try:
                return Lowering(plan, vw, threads, features, tail_from, dense,
                                band_major, nopack,
                                untiled if tiled else frozenset(plan.tensors),
                                pk_untiled if tiled else frozenset(plan.tensors),
                                rings).run()
            except _Untile as exc:
                untiled = untiled | exc.names
                pk_untiled = pk_untiled | exc.pk
            except _Unpack as exc:
                nopack = nopack | exc.names
            except _Dense as exc:
                dense = dense | exc.names

    def tail_op(q: Program) -> int | None:
        return q.calls[q.tail].op if q.tail else None

    prog = lower()
    if prog.tail:
        again = lower(tail_op(prog))
        prog = again if again.tail else prog
    if prog.chunk != 1 or not env_bands():  # (bands run a sample at a time)
        return prog
    if prog.tile_major and BD.BANDS:
        # row bands where a run would be planned without tile-major tensors (a band of a
        # tile-major tensor is not whole rows), the layout elsewhere
        keep = BD.run_tensors(lower(tail_op(prog), tiled=False), l2_bytes())
        if keep & set(prog.tile_major):
            untiled = untiled | keep
            again = lower(tail_op(prog))
            prog = again if again.tail or not prog.tail else prog
    rings: dict[str, int] = {}
    layout = BD.band_layout(prog, l2_bytes(), set(prog.channel_strides) | set(prog.tile_major),
                            rings)
    if not layout:
        return prog
    banded = lower(tail_op(prog), layout, rings=rings)
    same = ("chunk", "sample_bytes", "min_chunk", "split", "boundary", "boundary_offsets",
            "boundary_sizes", "boundary_bytes", "tail_outputs", "segments", "tile_major")
    if tail_op(banded) != tail_op(prog) or \
            any(getattr(banded, f) != getattr(prog, f) for f in same):
        return prog
    # one library: the plain head's kernels and constants too, an arena that fits either head
    banded.alt_head = prog
    for sym, k in prog.kernels.items():
        banded.kernels.setdefault(sym, k)
    for name, arr in prog.weights.items():
        banded.weights.setdefault(name, arr)
    banded.arena = tuple(max(a, b) for a, b in zip(banded.arena, prog.arena))
    banded.scratch_per_thread = max(banded.scratch_per_thread, prog.scratch_per_thread)
    return banded


KN_LABEL = " (features x tokens)"


def _group_rows(op: Op, sw: SP.SparseWeight) -> int:
    """Rows a grouped kernel does together for op's weight (GROUP_ROWS, or GROUP_ROWS_DENSE
    when at least GROUP_DENSE_FROM of it is left)."""
    cells = math.prod(int(d) for d in op.attrs["weight_shape"])  # (SP.sparse_weight's too)
    return GROUP_ROWS_DENSE if sw.data.size >= GROUP_DENSE_FROM * max(cells, 1) else \
        GROUP_ROWS


def _grouping(op: Op, sw: SP.SparseWeight, xalign: bool, indices: np.ndarray, vw: int,
              span: int, residual: bool) -> dict:
    """The grouped kernel's spec fields: its rows, and with ``xalign`` (x 1 float a row, 16
    floats of slack after it: the shifted convs' planes) when some column's x is off a cache
    line, aligned loads shifted in registers (three registers after the accumulators: at
    most GROUP_ROWS_ALIGNED rows). With AVX2 (``vw`` 8): GROUP_ROWS_AVX2 rows, fewer when
    ``span`` (floats a sample) leaves a part vector, no xalign."""
    if vw == 8:
        part = span % vw != 0
        return {"group": GROUP_ROWS_AVX2 - part - (part and residual), "tile": 1}
    rows = _group_rows(op, sw)
    if xalign and env_xalign() and bool((np.asarray(indices) % 16).any()):
        return {"group": min(rows, GROUP_ROWS_ALIGNED), "tile": 1, "xalign": True}
    return {"group": rows, "tile": 1}


def _dual_offsets(offs: np.ndarray, d: int) -> np.ndarray:
    """A shifted conv's x offsets for dual planes (Lowering._sample_floats: a second copy
    of a sample's planes ``d`` floats past the first, d = 8 mod 16): per nonzero the offset
    its tile's vectors at an even vector of a cache line read, and the one those at an odd
    vector read (low and high 32 bits), each in the copy where its 8 floats lie on one line.
    A load at o = q mod 16 (lines of 16 floats) spans two lines when q > 8."""
    o = offs.astype(np.uint64)
    q = o % 16
    lo = np.where(q >= 9, o + d, o)
    hi = np.where((q >= 1) & (q <= 7), o + d, o)
    return lo | (hi << np.uint64(32))


def _round16(n: int) -> int:
    return -(-n // 16) * 16


class _Dense(Exception):
    """Tensors given channel strides that a call made for them does not take."""

    def __init__(self, names: frozenset[str]):
        super().__init__(sorted(names))
        self.names = names


class _Untile(_Dense):
    """Tensors chosen to be held tile-major (Lowering.tm; ``pk``: packed ones, Lowering.pktm)
    that a call made for them does not take so."""

    def __init__(self, names: frozenset[str], pk: frozenset[str] = frozenset()):
        super().__init__(names)
        self.pk = pk


class _Unpack(_Dense):
    """Tensors chosen to be held packed (Lowering._pack_set) that a call made for them cannot
    take packed."""


def _maps(plan: ExecutionPlan, skip) -> dict[str, tuple[int, int, int]]:
    """The (N, C, H, W) float32 activations between ops whose layout the lowering may
    choose (name -> C, H, W): not the plan's inputs or outputs, not views or viewed, C H W
    fixed, not in ``skip``."""
    viewed = {t.alias_of for t in plan.tensors.values() if t.alias_of is not None}
    out = {}
    for name, t in plan.tensors.items():
        if name in plan.constants or name in plan.inputs or name in plan.outputs or \
                name in skip or name in viewed or t.alias_of is not None or \
                t.dtype != "float32" or len(t.shape) != 4 or \
                any(isinstance(d, Sym) for d in t.shape[1:]):
            continue
        out[name] = tuple(int(d) for d in t.shape[1:])
    return out


def _strided(plan: ExecutionPlan, dense: frozenset[str]) -> dict[str, int]:
    """Lowering.cs's candidates: _maps with H*W over 16 and not a multiple of 16."""
    return {name: _round16(h * w) for name, (_, h, w) in _maps(plan, dense).items()
            if h * w > 16 and h * w % 16}


def _conds(guard) -> list | None:
    """A guard as a list of conditions (one condition may be given bare)."""
    if guard is None:
        return None
    return [guard] if isinstance(guard, tuple) else list(guard)


def kn_stride(m: E) -> E:
    """Row stride (floats) of a features x batch buffer for m rows: one cache line of padding
    (rows a power of two floats apart share L1 sets: a 384 -> 1536 layer at m = 2048 took 3.0
    instead of 2.1 ms), none for one row, where the layout equals the row-major one."""
    return m + m.gt(1) * 16


def _pack(bufs: list[Buffer]) -> tuple[int, int]:
    """Arena offsets by lifetime (greedy, largest first): a buffer may share bytes with one
    whose lifetime does not overlap. Sizes a*N + b are bounded per coefficient, so offsets
    valid at one N are valid at all. Returns the arena's size as (a, b)."""
    names = {buf.name: buf for buf in bufs}
    # (Buffer.share: placed with the buffer it takes over, that one live until its last use)
    takers = {buf.share: buf for buf in bufs if buf.share in names and
              str(buf.nbytes) == str(names[buf.share].nbytes)}
    taken = {id(buf) for buf in takers.values()}
    bufs = [buf for buf in bufs if id(buf) not in taken]
    sized = []
    for buf in bufs:
        a, b = linear(buf.nbytes)
        sized.append((buf, -(-a // 64) * 64, max(-(-b // 64) * 64, 0 if a else 64)))
    sized.sort(key=lambda t: (t[1], t[2]), reverse=True)
    placed: list[tuple[Buffer, int, int, int, int]] = []  # buf, oa, ob, a, b
    top = (0, 0)
    last = {}  # a buffer's last use, or its chain of takers' last one
    for buf in bufs:
        end = buf
        while end.name in takers:
            end = takers[end.name]
        last[buf.name] = end.last
    for buf, a, b in sized:
        live = [p for p in placed
                if not (last[p[0].name] < buf.first or last[buf.name] < p[0].first)]
        ends = [(p[1] + p[3], p[2] + p[4]) for p in live]
        worst = (max((e[0] for e in ends), default=0), max((e[1] for e in ends), default=0))
        for oa, ob in sorted({(0, 0), *ends}) + [worst]:
            if all(_disjoint((oa, ob, a, b), p[1:]) for p in live):
                break
        buf.offset = (oa, ob)
        placed.append((buf, oa, ob, a, b))
        top = (max(top[0], oa + a), max(top[1], ob + b))
        taker = buf
        while taker.name in takers:
            taker = takers[taker.name]
            taker.offset = (oa, ob)
    return top


def _disjoint(p, q) -> bool:
    """Whether ranges [oa*N + ob, + a*N + b) are disjoint for every N >= 1: one ends before
    the other starts in both coefficients."""
    oa, ob, a, b = p
    qa, qb, qa_len, qb_len = q
    return (oa + a <= qa and ob + b <= qb) or (qa + qa_len <= oa and qb + qb_len <= ob)
