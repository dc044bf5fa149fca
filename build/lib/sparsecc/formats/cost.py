"""A roofline estimate of an op's time, for the report (calibrated by measurement later).

Pure functions over sizes: no torch, no kernels.
"""

from __future__ import annotations

# Effective rates on the reference machine (2 Zen 3 cores, AVX2+FMA), measured with the spine's
# kernels: BLAS GEMM sustains ~60 GFLOP/s; the simple CSR kernels ~20 GFLOP/s of useful work;
# DRAM streams ~24 GB/s.
DENSE_FLOPS = 60e9
CSR_FLOPS = 20e9
OTHER_FLOPS = 8e9
DRAM_BYTES = 24e9


def estimate_seconds(kind: str, fmt: str | None, flops: float, nbytes: float) -> float:
    if kind in ("linear", "conv2d", "matmul", "sdpa"):
        rate = CSR_FLOPS if fmt == "csr" else DENSE_FLOPS
    else:
        rate = OTHER_FLOPS
    return max(flops / rate, nbytes / DRAM_BYTES)
