"""BSR and N:M packing against scipy / dense references."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.formats.bsr import block_fill, bsr_to_dense, dense_to_bsr
from sparsecc.formats.nm import dense_to_nm, fits_nm, nm_to_dense
from sparsecc.formats.pack import candidates, pack, parse_format


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), br=st.integers(1, 8), bc=st.integers(1, 8),
       r=st.sampled_from([1, 2, 4]), c=st.sampled_from([1, 2, 4]), density=st.floats(0, 1))
def test_bsr_matches_scipy(seed, br, bc, r, c, density):
    rng = np.random.default_rng(seed)
    live = rng.random((br, bc)) < density
    w = (rng.standard_normal((br * r, bc * c)) * np.kron(live, np.ones((r, c)))).astype(
        np.float32)
    ip, ix, dv = dense_to_bsr(w, r, c)
    ref = sp.bsr_matrix(w, blocksize=(r, c))
    ref.eliminate_zeros()
    np.testing.assert_array_equal(ip, ref.indptr)
    np.testing.assert_array_equal(ix, ref.indices)
    np.testing.assert_array_equal(dv, ref.data)
    np.testing.assert_array_equal(bsr_to_dense(ip, ix, dv, w.shape), w)
    assert block_fill(w, r, c) == 1.0 or np.count_nonzero(w) < w.size


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), cols=st.integers(1, 30),
       r=st.sampled_from([3, 4]), c=st.sampled_from([1, 2]))
def test_bsr_pads_odd_shapes(seed, rows, cols, r, c):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < 0.3)).astype(
        np.float32)
    ip, ix, dv = dense_to_bsr(w, r, c)
    np.testing.assert_array_equal(bsr_to_dense(ip, ix, dv, w.shape), w)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), cols=st.integers(1, 30),
       nm=st.sampled_from([(1, 4), (2, 4), (4, 8)]))
def test_nm_round_trip_and_rejects_denser(seed, rows, cols, nm):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    pad = -cols % m
    g = np.pad(w, ((0, 0), (0, pad))).reshape(rows, -1, m)
    order = np.argsort(rng.random(g.shape), axis=2)
    g[np.take_along_axis(np.zeros(g.shape, bool) | True, order, 2)
      & (np.argsort(order, axis=2) >= n)] = 0
    w = g.reshape(rows, -1)[:, :cols].copy()
    assert fits_nm(w, n, m)
    vals, offs = dense_to_nm(w, n, m)
    assert offs.max(initial=0) < m
    np.testing.assert_array_equal(nm_to_dense(vals, offs, n, m, cols), w)
    dense = rng.standard_normal((2, 8)).astype(np.float32) + 5
    assert not fits_nm(dense, n, m) or n == m


def test_candidates_and_parse():
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.random((16, 8)) < 0.3, np.ones((4, 1)))
    w = (rng.standard_normal((64, 8)) * blocks).astype(np.float32)
    cands = candidates(w, conv_kxk=False)
    assert "bsr4x1" in cands and "dense" in cands and "csr" in cands
    assert parse_format("bsr8x1") == ("bsr", (8, 1))
    assert parse_format("nm2:4") == ("nm", (2, 4))
    assert set(pack("bsr4x1", w)) == {"indptr", "indices", "data"}


def test_dense_enough_weights_are_offered_as_bsr8x1_with_zeros():
    """Unstructured weights >= 40 % dense may run as BSR 8x1 with their zeros stored (dense
    work at the BSR rate); sparser ones are not offered it, and the packing stays exact."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 72)).astype(np.float32)
    half = w * (rng.random(w.shape) < 0.5)
    sparse = w * (rng.random(w.shape) < 0.2)
    assert "bsr8x1" in candidates(half, conv_kxk=True)
    assert "bsr8x1" not in candidates(sparse, conv_kxk=True)
    assert "bsr8x1" not in candidates(half[:5], conv_kxk=True)  # fewer rows than a block
    p = pack("bsr8x1", half)
    back = bsr_to_dense(p["indptr"], p["indices"], p["data"].reshape(-1, 8, 1), half.shape)
    np.testing.assert_array_equal(back, half)
