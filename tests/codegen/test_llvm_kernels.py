"""LLVM-emitted kernels against scipy / torch references over random shapes (Hypothesis).

Covers 1-wide dims, empty rows, all-zero and fully dense matrices, every fused epilogue, masked
tails (lengths that are not a multiple of the vector width), u16 and u32 indices, 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.codegen.llvm import emit, emit_specialized, jit, kernels
from sparsecc.codegen.numba import conv as C
from sparsecc.formats.csr import dense_to_csr
from sparsecc.runtime.ops.sparse import Shift

FUSED = {"none": lambda y: y, "relu": lambda y: np.maximum(y, 0),
         "clamp": lambda y: np.clip(y, -0.5, 0.7)}


def _matrix(rng, rows, cols, density, empty_rows):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.random((rows, cols)) < density
    if empty_rows:
        w[rng.random(rows) < 0.3] = 0.0
    return w


def _spec(family, act, bias, bits, tile=1):
    a, b = (-0.5, 0.7) if act == "clamp" else (0.0, 0.0)
    return emit.KernelSpec(family, jit.host().vector_width, tile, act, a, b, bias, bits)


def _csr(w, bits):
    ip, ix, dv = dense_to_csr(w)
    return ip, ix.astype(np.uint16 if bits == 16 else np.uint32), dv


shapes = dict(rows=st.integers(1, 70), cols=st.integers(1, 90),
              density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), empty_rows=st.booleans(),
              seed=st.integers(0, 2**31 - 1), act=st.sampled_from(sorted(FUSED)),
              bias=st.booleans(), bits=st.sampled_from([16, 32]))


@settings(max_examples=40, deadline=None)
@given(**shapes, L=st.integers(1, 140), n=st.integers(1, 3), tile=st.sampled_from([1, 2, 4]),
       threads=st.sampled_from([1, 2]), npanel=st.sampled_from([1, 2, 5]))
def test_spmm_matches_scipy(rows, cols, density, empty_rows, seed, act, bias, bits, L, n, tile,
                            threads, npanel):
    """Including column panels (partial sums through out; activation after the last)."""
    rng = np.random.default_rng(seed)
    w = _matrix(rng, rows, cols, density, empty_rows)
    x = rng.standard_normal((n, cols, L)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((n, rows, L), np.nan, np.float32)
    ip, ix, dv = _csr(w, bits)
    kern = kernels.build(_spec("spmm", act, bias, bits, tile))
    per = -(-cols // npanel)
    panels = (ix.astype(np.int64) // per, -(-cols // per)) if npanel > 1 else None
    kernels.spmm_launch(kern, ip, ix, dv, bv, x, out, n=n, L=L, xrs=L, ors=L, xns=cols * L,
                        ons=rows * L, threads=threads, panels=panels)()
    ref = np.stack([sp.csr_matrix(w) @ x[i] for i in range(n)])
    if bias:
        ref += bv[None, :, None]
    np.testing.assert_allclose(out, FUSED[act](ref), rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(**shapes, m=st.integers(1, 3), threads=st.sampled_from([1, 2]))
def test_spmv_matches_scipy(rows, cols, density, empty_rows, seed, act, bias, bits, m, threads):
    _check_spmv(kernels.build(_spec("spmv", act, bias, bits)), rows, cols, density, empty_rows,
                seed, act, bias, bits, m, threads)


def _check_spmv(kern, rows, cols, density, empty_rows, seed, act, bias, bits, m, threads):
    """A gather SpMV kernel on a random matrix and x rows against scipy."""
    rng = np.random.default_rng(seed)
    w = _matrix(rng, rows, cols, density, empty_rows)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((m, rows), np.nan, np.float32)
    ip, ix, dv = _csr(w, bits)
    kernels.spmv_launch(kern, ip, ix, dv, bv, x, out, m=m, threads=threads)()
    ref = (sp.csr_matrix(w) @ x.T).T + (bv if bias else 0)
    np.testing.assert_allclose(out, FUSED[act](ref), rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(**shapes, m=st.integers(1, 2))
def test_spmv_avx2_code_path(rows, cols, density, empty_rows, seed, act, bias, bits, m):
    """The 8-lane gather SpMV (full vectors, then the masked tail of < 8 nonzeros a row) as an
    AVX2-only CPU builds it (haswell object, no AVX-512), run here against scipy."""
    haswell = jit.Host("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,"
                                  "-avx512f,-avx512bw,-avx512dq,-avx512vl")
    a, b = (-0.5, 0.7) if act == "clamp" else (0.0, 0.0)
    spec = emit.KernelSpec("spmv", 8, 1, act, a, b, bias, bits)
    obj = jit.compile_ir(kernels.kernel_ir(spec, None, "kernel"), h=haswell)
    kern = kernels.LlvmKernel(spec, jit.load_object(obj, ["kernel"])["kernel"], obj)
    _check_spmv(kern, rows, cols, density, empty_rows, seed, act, bias, bits, m, 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cin=st.integers(1, 9), cout=st.integers(1, 9),
       h=st.integers(1, 13), w=st.integers(1, 21), k=st.sampled_from([1, 2, 3, 5]),
       pad=st.integers(0, 2), dil=st.sampled_from([1, 2]), stride=st.sampled_from([1, 2, 3]),
       density=st.sampled_from([0.0, 0.3, 1.0]))
def test_shifted_conv_matches_torch(seed, cin, cout, h, w, k, pad, dil, stride, density):
    """The im2col-free kxk conv: pad into flat (phase) planes, SpMM at plane offsets, crop."""
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    if ho < 1 or wo < 1:
        return
    rng = np.random.default_rng(seed)
    wt = _matrix(rng, cout, cin * k * k, density, False).reshape(cout, cin, k, k)
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    g = Shift(k, k, stride, stride, dil, dil, pad, pad, ho, wo)
    rows = cin * g.phases
    padded = np.full((2, rows * g.plane + g.slack), np.nan, np.float32)
    padded[:, rows * g.plane:] = 0.0
    L = ho * g.wq
    full = np.zeros((2, cout, L), np.float32)
    out = np.zeros((2, cout, ho, wo), np.float32)
    ip, ix, dv = dense_to_csr(wt.reshape(cout, -1))
    offs = g.offsets(ix)
    kern = kernels.build(_spec("spmm", "none", False, 32, 2))
    g.fill(x, padded[:, :rows * g.plane].reshape(2, rows, g.plane))
    panels = (offs.astype(np.int64) // g.plane // 2, -(-rows // 2))  # 2 planes per panel
    kernels.spmm_launch(kern, ip, offs, dv, np.zeros(1, np.float32), padded, full, n=2,
                        L=L, xrs=1, ors=L, xns=padded.shape[1], ons=cout * L,
                        threads=2, panels=panels)()
    C.crop_rows(full, g.wq, wo, out)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), padding=pad, dilation=dil,
                   stride=stride).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_object_code_round_trip():
    """Object code from the cache links again (the artifact path) and computes the same."""
    spec = _spec("spmv", "relu", True, 16)
    obj = jit.compile_ir(kernels.kernel_ir(spec))
    addr = jit.load_object(obj, ["kernel"])["kernel"]
    assert addr and obj[:4] == b"\x7fELF"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), cols=st.integers(1, 40),
       block=st.sampled_from([(4, 1), (8, 1), (1, 4), (2, 2), (16, 1)]),
       density=st.sampled_from([0.0, 0.2, 1.0]), L=st.integers(1, 70), act=st.sampled_from(
           sorted(FUSED)), bias=st.booleans(), threads=st.sampled_from([1, 2]))
def test_bsr_matches_dense(seed, rows, cols, block, density, L, act, bias, threads):
    from sparsecc.formats.bsr import bsr_to_dense, dense_to_bsr

    r, c = block
    cols = -(-cols // c) * c  # the runtime only packs BSR when the columns divide
    rng = np.random.default_rng(seed)
    w = _matrix(rng, rows, cols, density, False)
    ip, ix, dv = dense_to_bsr(w, r, c)
    np.testing.assert_array_equal(bsr_to_dense(ip, ix, dv, w.shape), w)
    w = bsr_to_dense(ip, ix, dv, w.shape)
    x = rng.standard_normal((1, cols, L)).astype(np.float32)
    bv = np.zeros(-(-rows // r) * r, np.float32)
    bv[:rows] = rng.standard_normal(rows)
    out = np.full((1, rows, L), np.nan, np.float32)
    spec = emit.KernelSpec("bsr", jit.host().vector_width,
                           kernels.spmm_tile(L, jit.host().vector_width, r), act,
                           *((-0.5, 0.7) if act == "clamp" else (0.0, 0.0)), bias,
                           16, block=(r, c))
    kernels.spmm_launch(kernels.build(spec), ip, ix, dv.reshape(-1), bv, x, out, n=1, L=L,
                        xrs=L, ors=L, xns=0, ons=0, threads=threads, rows=rows)()
    ref = w @ x[0] + (bv[:rows, None] if bias else 0)
    np.testing.assert_allclose(out[0], FUSED[act](ref), rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), cols=st.integers(1, 50),
       nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 1)]), L=st.integers(1, 70),
       act=st.sampled_from(sorted(FUSED)), bias=st.booleans())
def test_nm_matches_dense(seed, rows, cols, nm, L, act, bias):
    from sparsecc.formats.nm import dense_to_nm, nm_to_dense

    n_, m_ = nm
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    pad = -cols % m_
    g = np.pad(w, ((0, 0), (0, pad))).reshape(rows, -1, m_)
    keep = np.argsort(rng.random(g.shape), axis=2)[:, :, :n_]
    mask = np.zeros(g.shape, bool)
    np.put_along_axis(mask, keep, True, axis=2)
    w = (g * mask).reshape(rows, -1)[:, :cols]
    vals, offs = dense_to_nm(w, n_, m_)
    np.testing.assert_array_equal(nm_to_dense(vals, offs, n_, m_, cols), w)
    x = rng.standard_normal((1, cols, L)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((1, rows, L), np.nan, np.float32)
    spec = emit.KernelSpec("nm", jit.host().vector_width, kernels.spmm_tile(L, 16), act,
                           *((-0.5, 0.7) if act == "clamp" else (0.0, 0.0)), bias, 8,
                           block=nm)
    gn = vals.shape[1]
    kernels.spmm_launch(kernels.build(spec), np.arange(rows + 1, dtype=np.int64) * gn,
                        offs.reshape(-1), vals.reshape(-1), bv, x, out, n=1, L=L, xrs=L, ors=L,
                        xns=0, ons=0, threads=2, gn=gn)()
    ref = w @ x[0] + (bv[:, None] if bias else 0)
    np.testing.assert_allclose(out[0], FUSED[act](ref), rtol=1e-4, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 24), cols=st.integers(1, 40), density=st.sampled_from([0.0, 0.2, 1.0]),
       empty_rows=st.booleans(), seed=st.integers(0, 2**31 - 1),
       act=st.sampled_from(sorted(FUSED)), bias=st.booleans(), L=st.integers(1, 70),
       tile=st.sampled_from([1, 2, 4]), baked_stride=st.booleans(), threads=st.sampled_from([1, 2]))
def test_specialised_spmm_matches_scipy(rows, cols, density, empty_rows, seed, act, bias, L, tile,
                                        baked_stride, threads):
    """The pattern baked into the code (offsets as immediates, one function per row chunk)."""
    rng = np.random.default_rng(seed)
    w = _matrix(rng, rows, cols, density, empty_rows)
    x = rng.standard_normal((2, cols, L)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((2, rows, L), np.nan, np.float32)
    ip, ix, dv = _csr(w, 16)
    spec = emit.KernelSpec("spmm", jit.host().vector_width, tile, act,
                           *((-0.5, 0.7) if act == "clamp" else (0.0, 0.0)), bias, 16,
                           pattern_hash=kernels.pattern_hash(ip, ix),
                           xrs=L if baked_stride else 0, span=L)
    kern = kernels.build(spec, emit.Pattern(ip, ix))
    bounds = emit_specialized.chunk_bounds(ip)
    kernels.spmm_launch(kern, ip, ix, dv, bv, x, out, n=2, L=L, xrs=L, ors=L, xns=cols * L,
                        ons=rows * L, threads=threads, row_bounds=bounds)()
    ref = np.stack([w @ x[i] for i in range(2)]) + (bv[None, :, None] if bias else 0)
    np.testing.assert_allclose(out, FUSED[act](ref), rtol=1e-4, atol=1e-5)


def test_specialised_spmm_several_chunks_and_samples():
    """A pattern over several chunk functions, three samples and a masked tail: chunks are
    the outermost work unit, so every (chunk, sample, tile) must be visited exactly once."""
    rng = np.random.default_rng(7)
    rows, cols, L, n = 300, 200, 37, 3
    w = _matrix(rng, rows, cols, 0.1, True)
    ip, ix, dv = _csr(w, 16)
    assert len(emit_specialized.chunk_bounds(ip)) > 3
    x = rng.standard_normal((n, cols, L)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    spec = emit.KernelSpec("spmm", jit.host().vector_width, 2, "relu", 0.0, 0.0, True, 16,
                           pattern_hash=kernels.pattern_hash(ip, ix), xrs=L, span=L)
    kern = kernels.build(spec, emit.Pattern(ip, ix))
    for threads in (1, 2):
        out = np.full((n, rows, L), np.nan, np.float32)
        kernels.spmm_launch(kern, ip, ix, dv, bv, x, out, n=n, L=L, xrs=L, ors=L,
                            xns=cols * L, ons=rows * L, threads=threads,
                            row_bounds=emit_specialized.chunk_bounds(ip))()
        ref = np.stack([w @ x[i] for i in range(n)]) + bv[None, :, None]
        np.testing.assert_allclose(out, np.maximum(ref, 0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("span", "vw", "tile", "want"), [
    (64, 16, 4, None),                                            # no tail
    (49, 16, 4, [(0, 16, 16), (16, 16, 16), (32, 16, 16), (48, 1, 1)]),  # ResNet-50 @7
    (196, 16, 4, [(0, 4, 4)]),                                    # @14: 3 full tiles + 4
    (1, 16, 1, [(0, 1, 1)]),                                      # batch 1: scalar
    (13, 8, 2, [(0, 8, 8), (8, 8, 5)]),                           # masked: 5 of 8 lanes
    (22, 8, 4, [(0, 8, 8), (8, 8, 8), (16, 8, 6)]),
])
def test_tail_pieces_cover_exactly_the_extent(span, vw, tile, want):
    got = emit_specialized.pieces(span, vw, tile, tail=True)
    if want is None:
        assert got == []
        return
    assert got == want
    width = vw * tile
    assert sum(live for _, _, live in got) == span % width


def _specialised_spmv(w, act, bias, m, threads, rng):
    rows, cols = w.shape
    x = rng.standard_normal((m, cols)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((m, rows), np.nan, np.float32)
    ip, ix, dv = _csr(w, 32)
    spec = emit.KernelSpec("spmv", jit.host().vector_width, 1, act,
                           *((-0.5, 0.7) if act == "clamp" else (0.0, 0.0)), bias, 32,
                           pattern_hash=kernels.pattern_hash(ip, ix), xrs=cols)
    kern = kernels.build(spec, emit.Pattern(ip, ix))
    bounds = emit_specialized.chunk_bounds(ip, emit_specialized.spmv_chunk_nnz(int(ip[-1])))
    kernels.spmv_launch(kern, ip, ix, dv, bv, x, out, m=m, threads=threads,
                        row_bounds=bounds)()
    ref = (w.astype(np.float64) @ x.T.astype(np.float64)).T + (bv if bias else 0)
    np.testing.assert_allclose(out, FUSED[act](ref), rtol=1e-4, atol=1e-5)
    return bounds


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 90), density=st.sampled_from([0.0, 0.2, 1.0]),
       empty_rows=st.booleans(), seed=st.integers(0, 2**31 - 1),
       act=st.sampled_from(sorted(FUSED)), bias=st.booleans(), m=st.integers(1, 3),
       threads=st.sampled_from([1, 2]))
def test_specialised_spmv_matches_dense(rows, cols, density, empty_rows, seed, act, bias, m,
                                        threads):
    """Batch-1 rows with the pattern baked in: exact gathers per row, the last one masked,
    the column vectors a table in the object code."""
    rng = np.random.default_rng(seed)
    _specialised_spmv(_matrix(rng, rows, cols, density, empty_rows), act, bias, m, threads, rng)


def test_specialised_spmv_chunks_long_rows_and_wide_x():
    """Many chunk functions (a row longer than a chunk gets its own), and an x wider than
    16-bit indices reach (a 32-bit table)."""
    rng = np.random.default_rng(3)
    w = _matrix(rng, 300, 200, 0.1, True)
    w[17] = rng.standard_normal(200)  # one dense row
    bounds = _specialised_spmv(w, "relu", True, 1, 2, rng)
    assert len(bounds) > 10
    assert emit_specialized.spmv_index_bits(200) == 16
    wide = _matrix(rng, 5, 70_000, 0.002, False)
    wide[2, -1] = 1.5  # the last column, past 2^16
    assert emit_specialized.spmv_index_bits(70_000) == 32
    _specialised_spmv(wide, "none", False, 1, 1, rng)


def test_specialised_spmm_windows_over_a_wide_x():
    """Loads through window bases (short displacements): x rows far apart (many windows per
    row) and more nonzeros than one value window."""
    rng = np.random.default_rng(5)
    rows, cols, L = 40, 3000, 16
    w = _matrix(rng, rows, cols, 0.05, False)
    ip, ix, dv = _csr(w, 16)
    x = rng.standard_normal((1, cols, L)).astype(np.float32)
    bv = rng.standard_normal(rows).astype(np.float32)
    out = np.full((1, rows, L), np.nan, np.float32)
    spec = emit.KernelSpec("spmm", jit.host().vector_width, 1, "none", 0.0, 0.0, True, 16,
                           pattern_hash=kernels.pattern_hash(ip, ix), xrs=L, span=L)
    text = kernels.kernel_ir(spec, emit.Pattern(ip, ix))
    assert text.count('asm sideeffect ""') > rows  # x windows restart every row
    kern = kernels.build(spec, emit.Pattern(ip, ix))
    kernels.spmm_launch(kern, ip, ix, dv, bv, x, out, n=1, L=L, xrs=L, ors=L, xns=0, ons=0,
                        threads=2, row_bounds=emit_specialized.chunk_bounds(ip))()
    np.testing.assert_allclose(out[0], w @ x[0] + bv[:, None], rtol=1e-4, atol=1e-5)
