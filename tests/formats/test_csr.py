"""CSR packing against scipy.sparse (the reference; not used by the runtime)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecc.formats.csr import csr_to_dense, dense_to_csr, index_dtype


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(1, 70000 // 800), density=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_csr_matches_scipy(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(
        np.float32)
    indptr, indices, data = dense_to_csr(w)
    ref = sp.csr_matrix(w)
    np.testing.assert_array_equal(indptr, ref.indptr)
    np.testing.assert_array_equal(indices, ref.indices)
    np.testing.assert_array_equal(data, ref.data)
    np.testing.assert_array_equal(csr_to_dense(indptr, indices, data, w.shape), w)


def test_index_width():
    assert index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.uint32
    w = np.zeros((2, 70000), np.float32)
    w[1, 69999] = 1.0
    indptr, indices, data = dense_to_csr(w)
    assert indices.dtype == np.uint32 and indices[0] == 69999
