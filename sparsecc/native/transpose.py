"""A vectorised 2-D transpose as LLVM IR: ``dst (k, m) = src (m, k)^T`` at any row strides.

A work item is one TB x TB tile (both its source rows and its destination rows stay in L1).
Inside, each full vw x vw block is vw vector loads, log2(vw) rounds of vw two-input shuffles
and vw vector stores; blocks cut by the matrix edge go element by element. The numba loop it
replaces read one strided element per step (2.8-11 GB/s on a 2048 x 384 block here; the
sparse linears of a transformer transpose every input and output).

Batched: the same transpose over nb1 x nb2 blocks, block (p, q) reading src at p*ss1 + q*ss2
and writing dst at p*ds1 + q*ds2 (a linear's output straight into the (batch, heads, seq,
head dim) layout attention reads, and attention's output straight into the next linear's
features x batch input: no permute pass between them).

ABI ``void k(i64 start, i64 stop, i64* args)``; args: src, dst, m, k, src row stride, dst row
stride (floats), nb2, ss1, ss2, ds1, ds2; items: nb1 * nb2 * ``tiles(m, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import I32, I64
from sparsecc.native.vmath import _K

TB = 64  # tile edge, floats
T_SRC, T_DST, T_M, T_K, T_LS, T_LD, T_NB2, T_SS1, T_SS2, T_DS1, T_DS2 = range(11)
N_SLOTS = 11


def tiles(m, k):
    """Work items for an (m, k) source (expressions or ints)."""
    if hasattr(m, "cdiv"):
        return m.cdiv(TB) * k.cdiv(TB)
    return -(-m // TB) * -(-k // TB)


ACTS = ("none", "gelu")  # applied to each value on its way (a linear's unfused activation)


@dataclass(frozen=True)
class TransposeSpec:
    vw: int
    act: str = "none"

    @property
    def key(self) -> str:
        return f"transpose_v{self.vw}" + ("" if self.act == "none" else f"_{self.act}")

    def emit(self, module: ir.Module, name: str) -> None:
        emit_transpose(module, name, self.vw, self.act)


def _shuffle_rounds(b: ir.IRBuilder, rows: list[ir.Value], n: int) -> list[ir.Value]:
    """Transpose n vectors of n lanes: round h swaps bit h of the row index with bit h of the
    lane index (rows i and i+h exchange their h-blocks)."""
    h = 1
    while h < n:
        lo = ir.Constant(ir.VectorType(I32, n), [c if c & h == 0 else n + c - h
                                                 for c in range(n)])
        hi = ir.Constant(ir.VectorType(I32, n), [c + h if c & h == 0 else n + c
                                                 for c in range(n)])
        nxt = list(rows)
        for i in range(n):
            if i & h == 0:
                nxt[i] = b.shuffle_vector(rows[i], rows[i + h], lo)
                nxt[i + h] = b.shuffle_vector(rows[i], rows[i + h], hi)
        rows = nxt
        h *= 2
    return rows


def emit_transpose(module: ir.Module, name: str, vw: int, act: str = "none") -> None:
    k = _K(module, name, vw)

    b = k.b
    src, dst = k.arg_ptr(T_SRC, "src"), k.arg_ptr(T_DST, "dst")
    m, kk = k.arg_i64(T_M, "m"), k.arg_i64(T_K, "k")
    ls, ld = k.arg_i64(T_LS, "ls"), k.arg_i64(T_LD, "ld")
    nb2 = k.arg_i64(T_NB2, "nb2")
    ss1, ss2 = k.arg_i64(T_SS1, "ss1"), k.arg_i64(T_SS2, "ss2")
    ds1, ds2 = k.arg_i64(T_DS1, "ds1"), k.arg_i64(T_DS2, "ds2")
    nbk = b.sdiv(b.add(kk, I64(TB - 1)), I64(TB))
    per_block = b.mul(b.sdiv(b.add(m, I64(TB - 1)), I64(TB)), nbk)
    src0, dst0 = src, dst

    def smin(x, y):
        return b.select(b.icmp_signed("<", x, y), x, y)

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as tt:
        blk = b.sdiv(tt, per_block)
        t = b.sub(tt, b.mul(blk, per_block))
        p = b.sdiv(blk, nb2)
        q = b.sub(blk, b.mul(p, nb2))
        src = b.gep(src0, [b.add(b.mul(p, ss1), b.mul(q, ss2))], inbounds=True)
        dst = b.gep(dst0, [b.add(b.mul(p, ds1), b.mul(q, ds2))], inbounds=True)
        ti = b.sdiv(t, nbk)
        i0 = b.mul(ti, I64(TB))
        j0 = b.mul(b.sub(t, b.mul(ti, nbk)), I64(TB))
        i1 = smin(m, b.add(i0, I64(TB)))
        j1 = smin(kk, b.add(j0, I64(TB)))
        # full vw x vw blocks: i in [i0, iv), j in [j0, jv)
        iv = b.add(i0, b.mul(b.sdiv(b.sub(i1, i0), I64(vw)), I64(vw)))
        jv = b.add(j0, b.mul(b.sdiv(b.sub(j1, j0), I64(vw)), I64(vw)))
        with k.loop(i0, iv, "bi", step=vw) as bi:
            with k.loop(j0, jv, "bj", step=vw) as bj:
                rows = [k.vload(b.gep(src, [b.add(b.mul(b.add(bi, I64(r)), ls), bj)],
                                      inbounds=True), None) for r in range(vw)]
                cols = _shuffle_rounds(b, rows, vw)
                for c in range(vw):
                    k.vstore(cols[c], b.gep(dst, [b.add(b.mul(b.add(bj, I64(c)), ld), bi)],
                                            inbounds=True), None)
        # the edges: rows [iv, i1) x all columns, and rows [i0, iv) x columns [jv, j1)
        _scalar(k, src, dst, ls, ld, iv, i1, j0, j1)
        _scalar(k, src, dst, ls, ld, i0, iv, jv, j1)
        if act == "gelu":
            # over the tile's destination rows, in L1 now: one vector at a time (applied to
            # the 16 registers of a block, the activation's temporaries spilled: 3.7x slower)
            with k.loop(j0, j1, "aj") as j:
                row = b.gep(dst, [b.mul(j, ld)], inbounds=True)
                with k.loop(i0, i1, "ai", step=vw) as i:
                    live = k.lanes_lt(i, i1)
                    ptr = b.gep(row, [i], inbounds=True)
                    k.vstore(k.gelu(k.vload(ptr, live)), ptr, live)
    b.ret_void()


def _scalar(k: _K, src, dst, ls, ld, i0, i1, j0, j1) -> None:
    b = k.b
    with k.loop(j0, j1, "sj") as j:
        with k.loop(i0, i1, "si") as i:
            v = b.load(b.gep(src, [b.add(b.mul(i, ls), j)], inbounds=True))
            b.store(v, b.gep(dst, [b.add(b.mul(j, ld), i)], inbounds=True))

