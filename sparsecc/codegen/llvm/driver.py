"""Run a kernel with the common ABI ``void k(i64 start, i64 stop, i64* args)`` over threads.

One numba function calls any kernel through its address, so a new (specialised) kernel costs no
numba compilation; threads come from numba's OpenMP pool like every other kernel here.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _call_kernel(typingctx, addr, start, stop, args):
    sig = types.void(types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, llargs):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64, i64.as_pointer()])
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        builder.call(fn, [llargs[1], llargs[2], builder.inttoptr(llargs[3], i64.as_pointer())])
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def run_split(addr, splits, args):
    """Work items [splits[i], splits[i+1]) as one task each (splits balance the work)."""
    ptr = args.ctypes.data
    for i in prange(splits.shape[0] - 1):
        if splits[i + 1] > splits[i]:
            _call_kernel(addr, splits[i], splits[i + 1], ptr)


def even_splits(items: int, parts: int) -> np.ndarray:
    parts = max(1, min(parts, items))
    return (np.arange(parts + 1, dtype=np.int64) * items) // parts


def nnz_splits(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Row boundaries giving each part about the same number of nonzeros (not of rows)."""
    rows = len(indptr) - 1
    parts = max(1, min(parts, rows))
    nnz = int(indptr[-1])
    if nnz == 0:
        return even_splits(rows, parts)
    targets = (np.arange(1, parts, dtype=np.int64) * nnz) // parts
    cuts = np.searchsorted(indptr, targets, side="left")
    return np.concatenate([[0], np.clip(cuts, 0, rows), [rows]]).astype(np.int64)
