"""GEMMs split over threads (the dense linear/conv path) against one plain matmul."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sparsecc.runtime import threads as T


@pytest.mark.parametrize("shape", [
    ((16, 1024), (1024, 4096)),  # split by columns
    ((64, 300), (300, 1001)),  # odd column count
    ((8, 40), (40, 50)),  # below the split threshold: one call
    ((64, 576), (3, 576, 800)),  # stacked b: split by samples
    ((64, 576), (1, 576, 3137)),  # one sample: split by columns
])
def test_split_matmul_matches_numpy(seed, shape):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape[0]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    if b.ndim == 2:
        b = np.asfortranarray(b)  # a transposed weight, as the linear op passes it
    ref = np.matmul(a, b)
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            out = np.full(ref.shape, np.nan, np.float32)
            T.split_matmul(a, b, out)()
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
