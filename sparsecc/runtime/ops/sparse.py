"""Sparse (CSR, BSR, N:M) linear and conv2d: which kernel runs, in which layout, with which
scratch.

Backends: ``llvm`` (vector kernels emitted by ``codegen/llvm``, the default) and ``numba`` (the
portable fallback, also used when LLVM code cannot be built here). Paths:

* linear, one input row: gather SpMV straight from the row-major input;
* linear, several rows: SpMM over features x batch (the input is transposed into scratch, the
  output transposed back, unless the layout pass already hands over features x batch);
* conv 1x1 stride 1: SpMM over channels x pixels of each sample, no copy;
* other convs ("shifted", im2col-free): the input is zero-padded once into flat planes of
  width Wq, one per channel and stride phase; a nonzero (c, dy, dx) then reads its plane at a
  fixed offset, so the conv is one SpMM over Ho*Wq positions whose wrap-around columns are
  cropped afterwards;
* im2col + SpMM: the numba backend, and blocks wider than one column.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from sparsecc.codegen.numba import activations as A
from sparsecc.codegen.numba import conv as C
from sparsecc.codegen.numba import sparse as S
from sparsecc.codegen.numba import transpose as T
from sparsecc.errors import CodegenError
from sparsecc.formats.bsr import bsr_to_dense
from sparsecc.formats.csr import dense_to_csr
from sparsecc.formats.nm import nm_to_dense
from sparsecc.formats.pack import parse_format
from sparsecc.ir.plan import Op
from sparsecc.runtime.threads import kernel_threads as threads

# Above this wasted fraction of computed positions (the wrap columns), im2col wins.
_SHIFT_MAX_WASTE = 0.5


def is_sparse(fmt: str | None) -> bool:
    return fmt is not None and fmt != "dense"


@dataclass
class SparseWeight:
    """A packed weight as the kernels take it (``family`` names the LLVM kernel family)."""

    family: str  # "spmm" (CSR) | "bsr" | "nm"
    block: tuple[int, int]
    indptr: np.ndarray  # per row (block row for bsr; synthetic for nm: work split only)
    indices: np.ndarray  # column (block column; N:M offset)
    data: np.ndarray
    rows: int
    gn: int = 0  # N:M values per row

    @property
    def idx_bits(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.indices.dtype, 32)

    @property
    def block_rows(self) -> int:
        """Output rows that share each x load (R of a BSR RxC block; 1 otherwise)."""
        return self.block[0] if self.family == "bsr" else 1


def sparse_weight(op: Op, params: dict[str, np.ndarray]) -> SparseWeight:
    kind, blk = parse_format(op.attrs["fmt"])
    rows = int(op.attrs["weight_shape"][0])
    if kind in ("csr", "bsr"):
        return SparseWeight("spmm" if kind == "csr" else "bsr", blk, params["indptr"],
                            params["indices"], params["data"], rows)
    gn = params["data"].shape[0] // max(rows, 1)
    indptr = np.arange(rows + 1, dtype=np.int64) * gn
    return SparseWeight("nm", blk, indptr, params["indices"], params["data"], rows, gn)


def as_csr(op: Op, params: dict[str, np.ndarray]):
    """(indptr, indices, data) of any sparse format: the numba kernels' input."""
    kind, (a, b) = parse_format(op.attrs["fmt"])
    if kind == "csr":
        return params["indptr"], params["indices"], params["data"]
    shape = op.attrs["weight_shape"]
    rows, cols = int(shape[0]), int(np.prod(shape[1:]))
    if kind == "bsr":
        dense = bsr_to_dense(params["indptr"], params["indices"],
                             params["data"].reshape(-1, a, b), (rows, cols))
    else:
        dense = nm_to_dense(params["data"].reshape(rows, -1),
                            params["indices"].reshape(rows, -1), a, b, cols)
    return dense_to_csr(dense)


@functools.cache
def llvm_available() -> bool:
    try:
        from sparsecc.codegen.llvm import jit

        jit.host()
        return True
    except Exception:  # no usable LLVM target here: numba kernels only
        return False


def backend_of(op: Op) -> str:
    want = op.attrs.get("backend", "llvm")
    return "llvm" if want == "llvm" and llvm_available() else "numba"


def _kernel(family: str, op: Op, ctx_act: tuple, has_bias: bool, idx_bits: int, tile: int = 1,
            block: tuple[int, int] = (1, 1), pattern=None):
    """(kernel, whether the activation still needs a pass of its own). ``pattern``:
    (indptr, column-or-offset per nonzero, x row stride, extent L) to bake in, for ops the
    format pass marked ``specialize``."""
    from sparsecc.codegen.llvm import emit, jit, kernels

    act, a, b = ctx_act
    fused = act if act in emit.FUSED_ACTS else "none"
    spec = emit.KernelSpec(family, jit.host().vector_width, tile, fused,
                           a if fused == "clamp" else 0.0, b if fused == "clamp" else 0.0,
                           has_bias, idx_bits, block=block)
    baked = None
    if pattern is not None and bakes(op, family):
        indptr, cols, xrs, span = pattern
        spec = replace(spec, pattern_hash=kernels.pattern_hash(indptr, cols), xrs=int(xrs),
                       span=int(span))
        baked = emit.Pattern(indptr, cols)
    try:
        return kernels.build(spec, baked), fused != act
    except CodegenError as e:
        raise CodegenError(op.layer or op.name, str(e)) from None


def bakes(op: Op, family: str) -> bool:
    """Whether ``op`` runs a pattern-specialised kernel of ``family``: attrs['specialize'] is
    True (any CSR kernel) or "spmv" (the one-row kernel only)."""
    want = op.attrs.get("specialize")
    return family in ("spmm", "spmv") and (want is True or want == family)


def _row_bounds(kern, indptr):
    """A specialised kernel's work units are its row-chunk functions."""
    if not kern.spec.pattern_hash:
        return None
    from sparsecc.codegen.llvm import emit_specialized as es

    if kern.spec.family == "spmv":
        return es.chunk_bounds(indptr, es.spmv_chunk_nnz(int(indptr[-1])))
    return es.chunk_bounds(indptr)


def _act_tail(out: np.ndarray, code: int, a: float, b: float):
    if not out.flags.c_contiguous:  # a padded features x batch buffer: row by row, in place
        rows = out.reshape(-1, out.shape[-1])
        if not np.shares_memory(rows, out) or rows.strides[1] != rows.itemsize:
            raise AssertionError("activation tail: out must reshape to unit-stride rows")
        n, cols = rows.shape
        stride = rows.strides[0] // rows.itemsize
        # one flat view from the first row's start to the last row's end (padding included;
        # only the rows' own floats are touched)
        flat = np.lib.stride_tricks.as_strided(rows, shape=((n - 1) * stride + cols,),
                                               strides=(rows.itemsize,))
        return lambda: A.act_padded_rows(flat, n, cols, stride, code, a, b)
    flat = out.reshape(-1)
    return lambda: A.act_flat(flat, flat, code, a, b)


# ---- linear -------------------------------------------------------------------------------
def kn_stride(m: int) -> int:
    """Row stride (floats) of a features x batch buffer (scratch or hand-over) for batch m: 2^k
    floats a row put every feature row in the same L1 sets (8 KB apart at m = 2048, 12 ways), so
    such rows get one cache line of padding (a 384 -> 1536 layer at m = 2048: 3.0 -> 2.1 ms)."""
    return m + 16 if m >= 64 and m % 32 == 0 else m


def linear_scratch(op: Op, m: int, k: int, o: int) -> list[tuple[tuple[int, ...], str]]:
    """Transpose buffers for the features x batch kernels, except where the layout pass
    already hands the tensor over in that layout (or m == 1, where both layouts coincide)."""
    if m <= 1:
        return []
    need = []
    if not op.attrs.get("in_kn"):
        need.append(((k, kn_stride(m)), "float32"))
    if not op.attrs.get("out_kn"):
        need.append(((o, kn_stride(m)), "float32"))
    return need


def kn_nbytes(m: int, o: int) -> int:
    """Bytes a features x batch hand-over tensor of m rows of o features takes (padded rows);
    the executor sizes its buffer so."""
    return o * kn_stride(m) * 4 if m > 1 else m * o * 4


def _kn_view(a2: np.ndarray, rows: int, m: int) -> np.ndarray:
    """The (rows, m) features x batch view of a hand-over tensor's buffer, rows kn_stride(m)
    apart when the buffer behind ``a2`` has room for them (the executor makes it so), else
    dense. Producer and consumer see the same buffer, so they agree."""
    stride = kn_stride(m)
    root = a2
    while isinstance(root.base, np.ndarray):
        root = root.base
    end = root.ctypes.data + root.nbytes
    if stride == m or a2.ctypes.data + rows * stride * 4 > end:
        return a2.reshape(rows, m)
    return np.lib.stride_tricks.as_strided(a2, (rows, m), (stride * 4, 4))


def _kn_buffers(ctx, x2, o2):
    """(x as K x m, out as O x m, copy-in or None, copy-out or None)."""
    m, k = x2.shape
    o = o2.shape[1]
    scratch = list(ctx.scratch)
    if m <= 1:
        xt, cin = x2.reshape(k, m), None
    elif ctx.attr("in_kn"):
        xt, cin = _kn_view(x2, k, m), None
    else:
        xt = scratch.pop(0)[:, :m]
        cin = lambda: T.transpose_into(x2, xt)  # noqa: E731
    if m <= 1:
        ot, cout = o2.reshape(o, m), None
    elif ctx.attr("out_kn"):
        ot, cout = _kn_view(o2, o, m), None
    else:
        ot = scratch.pop(0)[:, :m]
        cout = lambda: T.transpose_into(ot, o2)  # noqa: E731
    return xt, ot, cin, cout


def bind_linear(ctx, x2: np.ndarray, o2: np.ndarray, epi: tuple):
    """x2 (m, K) and o2 (m, O) are the plan's buffers; with attrs in_kn / out_kn they hold
    K x m / O x m data (the layout pass decided so) and are read/written as such."""
    bufs = _kn_buffers(ctx, x2, o2)
    if backend_of(ctx.op) == "llvm":
        try:
            return _linear_llvm(ctx, x2, o2, epi, *bufs)
        except CodegenError as exc:
            _fell_back(ctx.op, exc)
    return _linear_numba(ctx, x2, o2, epi, *bufs)


def _fell_back(op: Op, exc: Exception) -> None:
    import warnings

    warnings.warn(f"{op.layer or op.name}: LLVM kernel unavailable ({exc}); using the numba "
                  "kernels", RuntimeWarning, stacklevel=3)


def _linear_numba(ctx, x2, o2, epi, xt, ot, cin, cout):
    bias, has_bias, code, a, b, _ = epi
    ip, ix, dv = as_csr(ctx.op, ctx.params)
    if x2.shape[0] <= 1:
        return lambda: S.csr_spmv_rows(ip, ix, dv, x2, o2, bias, has_bias, code, a, b)
    xt3, ot3 = xt.reshape(1, *xt.shape), ot.reshape(1, *ot.shape)
    run = lambda: S.csr_spmm(ip, ix, dv, xt3, ot3, bias, has_bias, code, a, b)  # noqa: E731
    return _sequence(cin, run, None, cout)


def _linear_llvm(ctx, x2, o2, epi, xt, ot, cin, cout):
    from sparsecc.codegen.llvm import kernels

    bias, has_bias, code, a, b, act = epi
    sw = sparse_weight(ctx.op, ctx.params)
    m = x2.shape[0]
    if m <= 1 and sw.family == "spmm":
        kern, tail = _kernel("spmv", ctx.op, (act, a, b), has_bias, sw.idx_bits,
                             pattern=(sw.indptr, sw.indices, x2.shape[1], 0))
        launch = kernels.spmv_launch(kern, sw.indptr, sw.indices, sw.data, bias, x2, o2, m=m,
                                     threads=threads(), row_bounds=_row_bounds(kern, sw.indptr))
        return _sequence(None, launch, _act_tail(o2, code, a, b) if tail else None, None)
    launch, post = _spmm(ctx, sw, epi, x=xt, out=ot, n=1, L=m, xrs=xt.strides[0] // 4,
                         ors=ot.strides[0] // 4, xns=0, ons=0,
                         indices=sw.indices, idx_bits=sw.idx_bits, panel_of=sw.indices,
                         x_rows=x2.shape[1])
    return _sequence(cin, launch, post, cout)


def _spmm(ctx, sw: SparseWeight, epi: tuple, *, x, out, n: int, L: int, xrs: int, ors: int,
          xns: int, ons: int, indices: np.ndarray, idx_bits: int, panel_of: np.ndarray,
          x_rows: int, reach: int = 0):
    """The spmm/bsr/nm kernel of one layer bound to ``x``/``out``: (launch, the activation pass
    on ``out`` or None). ``indices`` are what the kernel reads x rows by (columns, or plane
    offsets for the shifted conv); ``panel_of`` maps each nonzero to one of ``x_rows`` rows for
    the CSR column panels, each reading ``reach`` floats past its tile."""
    from sparsecc.codegen.llvm import jit, kernels

    bias, has_bias, code, a, b, act = epi
    tile = kernels.spmm_tile(L, jit.host().vector_width, sw.block_rows)
    kern, tail = _kernel(sw.family, ctx.op, (act, a, b), has_bias, idx_bits, tile, sw.block,
                         (sw.indptr, indices, xrs, L))
    rb = _row_bounds(kern, sw.indptr)
    panels = None
    if rb is None and sw.family == "spmm":
        tile_floats = kern.spec.tile * kern.spec.vw
        panels = kernels.column_panels(panel_of, x_rows, tile_floats, 1.0 + reach / tile_floats)
    launch = kernels.spmm_launch(kern, sw.indptr, indices, sw.data, _bias_for(sw, bias), x, out,
                                 n=n, L=L, xrs=xrs, ors=ors, xns=xns, ons=ons, threads=threads(),
                                 rows=sw.rows, gn=sw.gn, row_bounds=rb, panels=panels)
    return launch, (_act_tail(out, code, a, b) if tail else None)


def _bias_for(sw: SparseWeight, bias: np.ndarray) -> np.ndarray:
    """BSR reads a bias per row of its last (padded) block row: pad the bias to match."""
    if sw.family != "bsr" or bias.shape[0] <= 1:
        return bias
    r = sw.block[0]
    full = -(-sw.rows // r) * r
    if bias.shape[0] >= full:
        return bias
    out = np.zeros(full, np.float32)
    out[:bias.shape[0]] = bias
    return out


def _sequence(*steps):
    todo = tuple(s for s in steps if s is not None)
    if len(todo) == 1:
        return todo[0]

    def run():
        for s in todo:
            s()

    return run


# ---- conv2d -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """Geometry of the im2col-free ("shifted") conv. The padded input is split into polyphase
    planes (stride s: padded rows py, py+s, ... of one phase; only the phases some tap reads),
    each (hq, wq) and flattened. Tap (dy, dx) of channel c then reads its phase plane at one
    fixed offset for every output position oh*wq + ow, so the conv is one SpMM over ho*wq
    positions; the wq - wo wrap columns per row are cropped afterwards."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    ph: int
    pw: int
    ho: int
    wo: int
    # wrap columns beyond the taps' reach (zeros in the planes): rows as wide as the next
    # conv's padded planes, so this conv's wide rows go straight into them
    extra: int = 0
    # padded columns one row's right and the next row's left padding share (stride 1 along
    # x, at most pw): a tap past a row's last column reads the next row's first, which is
    # padding (zero), so the planes need only wo + reach - share columns
    share: int = 0

    @staticmethod
    def of(op: Op, out_shape) -> Shift:
        a = op.attrs
        return Shift(*(int(v) for v in (*a["kernel"], *a["stride"], *a["dilation"],
                                         *a["padding"], out_shape[2], out_shape[3])))

    @functools.cached_property
    def pys(self) -> np.ndarray:
        return np.unique(np.arange(self.kh) * self.dh % self.sh).astype(np.int64)

    @functools.cached_property
    def pxs(self) -> np.ndarray:
        return np.unique(np.arange(self.kw) * self.dw % self.sw).astype(np.int64)

    @property
    def phases(self) -> int:
        return len(self.pys) * len(self.pxs)

    @property
    def hq(self) -> int:
        return self.ho + (self.kh - 1) * self.dh // self.sh

    @property
    def wq(self) -> int:
        return self.wo + (self.kw - 1) * self.dw // self.sw + self.extra - self.share

    @property
    def plane(self) -> int:
        return self.hq * self.wq

    @property
    def slack(self) -> int:
        """Floats after the last plane that the wrap columns of its last rows read."""
        return self.wq - self.wo + 64

    @property
    def reach(self) -> int:
        """How far past its own position a tap reads within one plane."""
        return (self.kh - 1) * self.dh // self.sh * self.wq

    def offsets(self, indices: np.ndarray, plane_stride: int | None = None) -> np.ndarray:
        """Weight column (c, dy, dx) -> offset of its first read in the flat phase planes
        (``plane_stride`` floats apart, default hq*wq)."""
        col = indices.astype(np.int64)
        c, r = np.divmod(col, self.kh * self.kw)
        dy, dx = np.divmod(r, self.kw)
        qy, py = np.divmod(dy * self.dh, self.sh)
        qx, px = np.divmod(dx * self.dw, self.sw)
        phase = np.searchsorted(self.pys, py) * len(self.pxs) + np.searchsorted(self.pxs, px)
        ps = self.plane if plane_stride is None else plane_stride
        off = (c * self.phases + phase) * ps + qy * self.wq + qx
        return off.astype(np.uint32)

    def fill(self, x: np.ndarray, planes: np.ndarray) -> None:
        C.phase_planes(x, self.ph, self.pw, self.sh, self.sw, self.pys, self.pxs, self.hq,
                       self.wq, planes)


def conv_method(op: Op, in_shape, out_shape) -> str:
    """"pointwise" | "shifted" | "im2col" for a sparse conv (groups == 1)."""
    kh, kw = (int(v) for v in op.attrs["kernel"])
    sh, sw = (int(v) for v in op.attrs["stride"])
    ph, pw = (int(v) for v in op.attrs["padding"])
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return "pointwise"
    kind, blk = parse_format(op.attrs["fmt"])
    shiftable = kind == "csr" or (kind == "bsr" and blk[1] == 1)
    if backend_of(op) != "llvm" or not shiftable:
        return "im2col"
    g = Shift.of(op, out_shape)
    if g.phases * g.plane >= 2**31 // max(int(in_shape[1]), 1):
        return "im2col"  # offsets are u32 and the planes would not fit them
    return "shifted" if (g.wq - g.wo) / g.wq <= _SHIFT_MAX_WASTE else "im2col"


def conv_scratch(op: Op, in_shape, out_shape, method: str):
    n, cin = int(in_shape[0]), int(in_shape[1])
    cout = int(out_shape[1])
    if method == "shifted":
        g = Shift.of(op, out_shape)
        return [((n, cin * g.phases * g.plane + g.slack), "float32"),
                ((n, cout, g.ho * g.wq), "float32")]
    return None  # the dense path's scratch (im2col columns) serves


def bind_conv(ctx, x: np.ndarray, out: np.ndarray, cols, fill, epi: tuple, method: str):
    """``cols``/``fill``: im2col columns (N, K, HoWo) and the function filling them (or x as
    (N, Cin, HW) and None for pointwise; both None for the shifted method)."""
    if backend_of(ctx.op) == "llvm":
        try:
            return _conv_llvm(ctx, x, out, cols, fill, epi, method)
        except CodegenError as exc:
            _fell_back(ctx.op, exc)
    if cols is None:  # scratch was planned for the shifted LLVM path: im2col on our own
        cols, fill = _own_im2col(ctx.op, x, out)
    bias, has_bias, code, a, b, _ = epi
    n, cout = out.shape[0], out.shape[1]
    out3 = out.reshape(n, cout, -1)
    ip, ix, dv = as_csr(ctx.op, ctx.params)
    run = lambda: S.csr_spmm(ip, ix, dv, cols, out3, bias, has_bias, code, a, b)  # noqa: E731
    return _sequence(fill, run)


def _own_im2col(op: Op, x, out):
    kh, kw = (int(v) for v in op.attrs["kernel"])
    sh, sw = (int(v) for v in op.attrs["stride"])
    ph, pw = (int(v) for v in op.attrs["padding"])
    dh, dw = (int(v) for v in op.attrs["dilation"])
    n, cin = x.shape[0], x.shape[1]
    wo = out.shape[3]
    cols = np.empty((n, cin * kh * kw, out.shape[2] * wo), np.float32)
    return cols, lambda: C.im2col(x, 0, cin, kh, kw, sh, sw, ph, pw, dh, dw, wo, cols)


def _conv_llvm(ctx, x, out, cols, fill, epi, method):
    sw = sparse_weight(ctx.op, ctx.params)
    if method == "shifted":
        return _bind_shifted(ctx, sw, x, out, epi)
    n, cout = out.shape[0], out.shape[1]
    out3 = out.reshape(n, cout, -1)
    L, krows = out3.shape[2], cols.shape[1]
    launch, post = _spmm(ctx, sw, epi, x=cols, out=out3, n=n, L=L, xrs=L, ors=L,
                         xns=krows * L, ons=cout * L, indices=sw.indices, idx_bits=sw.idx_bits,
                         panel_of=sw.indices, x_rows=krows)
    return _sequence(fill, launch, post)


def _bind_shifted(ctx, sw: SparseWeight, x, out, epi):
    n, cin, cout = x.shape[0], x.shape[1], out.shape[1]
    g = Shift.of(ctx.op, out.shape)
    padded, full = ctx.scratch
    rows = cin * g.phases
    planes = padded[:, :rows * g.plane].reshape(n, rows, g.plane)
    # BSR here has 1-wide blocks, so a block column is a weight column.
    offs = g.offsets(sw.indices)
    L = g.ho * g.wq
    # Panels over phase planes: a plane's reads in one tile also span the taps' reach.
    launch, post = _spmm(ctx, sw, epi, x=padded, out=full, n=n, L=L, xrs=1, ors=L,
                         xns=padded.shape[1], ons=cout * L, indices=offs, idx_bits=32,
                         panel_of=offs // g.plane, x_rows=rows, reach=g.reach)
    if post is not None:  # the activation after the crop: only the real columns
        _, _, code, a, b, _ = epi
        post = _act_tail(out, code, a, b)
    return _sequence(lambda: g.fill(x, planes), launch,
                     lambda: C.crop_rows(full, g.wq, g.wo, out), post)
