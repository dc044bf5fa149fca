"""An analytic cost model: estimated seconds of a weight-bearing layer per storage format.

Pure functions over sizes (no torch, no kernels), so the format pass and the report can use them
and they can be unit-tested. The rates are for the kernels in this repo on the reference machine
(2 cores with AVX-512; see ``bench/kernels.py`` for the measurements behind them) and scale with
the thread count and vector width. They only need to rank formats roughly: ``autotune=True``
measures the close calls.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

# Effective per-core rates (measured with bench/kernels.py, medians) on the reference machine;
# ``calibrate.py`` measures the machine-dependent ones on the machine it runs on (Rates).
DENSE_FLOPS = 85e9  # per core: the native GEMM runs on every thread
DENSE_GEMV_BYTES = 50e9  # GEMV streams the weights
VEC_FMAS = 2.2e9  # vector FMAs/s per core in the spmm kernels (load-bound: x vector + broadcast)
# An R x 1 block shares each x vector load across R rows (measured, dense 3x3 and 1x1 layers):
BSR_GAIN = {1: 1.0, 2: 1.3, 4: 1.9, 8: 2.2, 16: 2.1}
INDEX_NS = 0.5e-9  # per stored index per tile: load, decode, address
GATHER_NNZ = 4.5e9  # nonzeros/s per core in the gather spmv
COPY_BYTES = 8e9  # per core: im2col, padding, transposes
LAUNCH_S = 4e-6  # a parallel launch
DRAM_BYTES = 24e9
OTHER_FLOPS = 8e9


# CSR convs with AVX-512 run the grouped assembly kernels (native.lower._grouped: 8 vectors of
# positions a sample or more, or over a batch's small maps): the pattern is in the code, so
# no index is loaded, and a group of rows shares each x vector. Their rate per core, in this
# model's vector FMAs (a sample's positions rounded up to whole vectors), at densities up to
# GROUPED_MAX_DENSITY; past it the estimate stays the generic kernel's (no measurement there).
# ResNet-50 uniform 50 %, batch 16 (2026-12-08, Zen 4): layer4's 1x1 convs took 4.1-4.7 ms as
# CSR against the generic estimate's 9.7 (so they ran dense, 10.0-10.7 ms), the 7 x 7 3x3
# convs 9.5-11.3 against 22.5-23.2: 3.3-4.1e9 a core in these units.
GROUPED_VEC_FMAS = 4.0e9
GROUPED_MAX_DENSITY = 0.6

# Weights up to this many bytes are read from the caches (L2s) by a batch-1 layer called
# again; larger ones stream from L3/DRAM (the calibrated GEMV and SpMV rates differ 3-7x).
CACHED_BYTES = 4 << 20


@dataclass(frozen=True)
class Rates:
    """The machine-dependent rates of the model, per core (defaults: the reference machine)."""

    dense_flops: float = DENSE_FLOPS
    # a dense kxk conv as a whole (im2col + GEMM at a conv's shape), flops/s; 0: not measured
    # (then dense_flops plus the im2col copy at COPY_BYTES)
    conv_flops: float = 0.0
    dense_gemv_bytes: float = DENSE_GEMV_BYTES  # weights past CACHED_BYTES
    cached_gemv_bytes: float = DENSE_GEMV_BYTES  # weights within CACHED_BYTES
    vec_fmas: float = VEC_FMAS
    row_ns: float = 0.0  # spmm: per output row per tile (accumulator set-up, stores, exit)
    gather_nnz: float = GATHER_NNZ  # SpMV, values + indices past CACHED_BYTES
    cached_gather_nnz: float = GATHER_NNZ
    bsr8_gain: float = BSR_GAIN[8]  # BSR 8x1 (a dense-ish layer's blocked candidate)
    source: str = "defaults (reference machine)"


DEFAULT_RATES = Rates()


@dataclass(frozen=True)
class LayerGeom:
    """A linear or conv layer as the kernels see it: out (n, rows, L) = W (rows, k) @ x (k, L)
    per sample. For a linear layer n = 1 and L = batch rows; for a conv, L = Ho*Wo."""

    rows: int
    k: int
    n: int
    L: int
    conv_kxk: bool = False  # needs im2col (dense) or padding into shifted planes (sparse)
    shift_waste: float = 0.0  # extra positions the shifted conv computes (wrap columns)
    planes: float = 0.0  # floats of padded (phase) planes the shifted conv fills per sample
    conv: bool = False  # a conv (the grouped kernels' candidate), not a linear layer


def estimate(fmt: str, g: LayerGeom, stored: int, threads: int, vw: int,
             rates: Rates | None = None) -> float:
    """Seconds for one call of a layer with ``stored`` values in format ``fmt``."""
    t = max(threads, 1)
    r_ = rates or DEFAULT_RATES
    if fmt == "dense":
        flops = 2.0 * g.rows * g.k * g.n * g.L
        wbytes = g.rows * g.k * 4
        gemv = r_.cached_gemv_bytes if wbytes <= CACHED_BYTES else r_.dense_gemv_bytes
        # a few rows (batch 16 through a 4096^2 layer) stream the weights: the roofline's max
        if g.conv_kxk and r_.conv_flops > 0:
            return flops / (r_.conv_flops * t) + LAUNCH_S
        # (and x in, out back: a 1x1 conv with few input channels over a large map, e.g.
        # MobileNetV2's 16 -> 96 at 112 x 112, is bound by them; Zen 3, AVX2: 8.0 ms at
        # batch 16 where the flops alone gave 3.6. Only past a core's L2: a small layer's
        # come from the caches. A kxk conv's im2col is the copy below.)
        acts = g.n * (g.k + g.rows) * g.L * 4
        moved = acts / (COPY_BYTES * t) if not g.conv_kxk and acts > l2_bytes() else 0.0
        gemm = max(flops / (r_.dense_flops * t), wbytes / (gemv * t), moved)
        copy = g.n * g.k * g.L * 8 / (COPY_BYTES * t) if g.conv_kxk else 0.0
        return gemm + copy + LAUNCH_S
    if fmt == "csr" and g.L == 1 and not g.conv_kxk:
        gather = r_.cached_gather_nnz if stored * 6 <= CACHED_BYTES else r_.gather_nnz
        return stored / (gather * t) + LAUNCH_S
    # blocks wider than one column cannot read shifted planes: im2col for those
    shifted = g.conv_kxk and not (fmt.startswith("bsr") and not fmt.endswith("x1"))
    L = g.L * (1.0 + g.shift_waste) if shifted else g.L
    vecs = -(-int(L) // vw)
    tiles = -(-vecs // spmm_vectors(int(L), vw))
    rate = r_.vec_fmas
    rows = g.rows  # accumulator sets per tile: rows, or block rows
    if fmt.startswith("bsr"):
        r, c = (int(v) for v in fmt[3:].split("x"))
        gain = r_.bsr8_gain if r == 8 else BSR_GAIN.get(r, 2.0)
        rate *= gain if c == 1 else 1.1
        rows = -(-g.rows // r)
    if fmt == "csr" and grouped(g, stored, vw):
        rate, index = max(rate, GROUPED_VEC_FMAS), 0.0
    else:
        index = (stored * INDEX_NS + rows * r_.row_ns * 1e-9) * tiles * g.n / t
    fma = stored * vecs * g.n / (rate * t)
    copy = 0.0
    if g.conv_kxk:
        # im2col: k x L floats; shifted: planes in + crop out
        moved = (g.planes + g.rows * L) if shifted else g.k * g.L
        copy = g.n * moved * 8 / (COPY_BYTES * t)
    return fma + index + copy + LAUNCH_S


def grouped(g: LayerGeom, stored: int, vw: int) -> bool:
    """Whether a CSR conv of ``stored`` values likely runs the grouped AVX-512 kernel (see
    GROUPED_VEC_FMAS; native.lower.GROUP_MIN_TILES: 8 vectors a sample, or a batch of them
    over small maps), at a density the grouped rate was measured at."""
    from sparsecc.native.lower import GROUP_MIN_TILES

    return g.conv and vw == 16 and g.n * -(-g.L // vw) >= GROUP_MIN_TILES and \
        stored <= GROUPED_MAX_DENSITY * g.rows * g.k


def spmm_vectors(L: int, vw: int) -> int:
    """Vectors a work item of the generic spmm kernel takes over L positions: the AVX2
    kernel's wide tiles over whole vectors (codegen.llvm.kernels.wide_tile), else 4."""
    vecs = -(-L // vw)
    if vw == 8 and L % 8 == 0:
        from sparsecc.codegen.llvm.kernels import wide_tile

        return wide_tile(L, vw)
    return min(4, vecs) or 1


def estimate_seconds(kind: str, fmt: str | None, flops: float, nbytes: float) -> float:
    """A roofline figure for ops without a layer model (pooling, norms, elementwise...)."""
    rate = DENSE_FLOPS if kind in ("matmul", "sdpa") else OTHER_FLOPS
    return max(flops / rate, nbytes / DRAM_BYTES)


@functools.cache
def l2_bytes() -> int:
    """A core's L2 from sysfs (the level-2 data or unified cache), 1 MB where unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for d in sorted(base.glob("index*")):
            if (d / "level").read_text().strip() == "2" and \
                    (d / "type").read_text().strip() in ("Unified", "Data"):
                size = (d / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20
