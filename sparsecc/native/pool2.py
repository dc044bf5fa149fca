"""2 x 2 / 2 max pooling (no padding) as LLVM IR, vectorised along the output row.

The numba kernel it replaces for that case (native.kernels.k_maxpool_rows) spells the window
out so its row loop vectorises, but a row under 16 outputs (MNIST's CNN pools 28 -> 14 and 14
-> 7 wide) never reaches the vector loop: every output took a scalar step, and the pools
were 18 % of the MNIST CNN's batch-16 call (bench/perf_ops.py, 2026-12-07). Here a work item
is one output row, as there: a step loads 2 vw input columns of both input rows (masked past
the 2 wo columns the windows cover), takes the larger of the two rows, splits the columns
into even and odd ones with two shuffles and takes the larger of those: vw outputs, stored
masked to the row. The same comparisons in the same order as the numba kernel (rows first,
then columns; a NaN anywhere in a window is its output, as torch's), so bit for bit its
result. The MNIST CNN at 90 % (global), same process, against k_maxpool_rows (`lower.POOL2_IR`,
bench/op_ab.py --plain): batch 16 1.117x / 1.101x faster (medians / paired; 0.74 -> 0.66 ms),
batch 1 1.046x / 1.047x.

ABI ``void k(i64 start, i64 stop, i64* args)``; args as k_maxpool_rows's first six [x, out,
H, W, ho, wo] (W may be a wider row than 2 wo: a conv's uncropped rows), then [C, N]; items
planes x ho, output row r of plane t = r // ho from input rows 2 (r % ho) and 2 (r % ho) + 1.

Either side may hold the batch packed into the positions (native.lower.PACK: (N / B, C, B x
H x W), sample n's map of channel c at plane (n // B x C + c) x B + n % B). The items then
follow out's planes: with out packed, N rounded up to B, the rows of a last block's padding
samples zeros (as the other packed writers leave them); x's plane is found from the item's
sample and channel. MaxPool2Spec.xb / ob: B for a packed side, 1 for a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import I64
from sparsecc.native.vmath import _K

Q_X, Q_OUT, Q_H, Q_W, Q_HO, Q_WO, Q_C, Q_N = range(8)


@dataclass(frozen=True)
class MaxPool2Spec:
    vw: int
    xb: int = 1  # x's samples packed in blocks of xb (1: plain)
    ob: int = 1  # out's

    @property
    def key(self) -> str:
        pk = f"_x{self.xb}o{self.ob}" if (self.xb, self.ob) != (1, 1) else ""
        return f"maxpool2_v{self.vw}{pk}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_maxpool2(module, name, self.vw, self.xb, self.ob)


def _pick(k: _K, v, best):
    """v where v > best or v is NaN, else best (codegen.numba.pool._pick, lane by lane)."""
    b = k.b
    take = b.or_(b.fcmp_ordered(">", v, best), b.fcmp_unordered("uno", v, v))
    return b.select(take, v, best)


def _step(k: _K, rows, o, j, cols, wo, even, odd, masked: bool) -> None:
    """Outputs j .. j + vw - 1 of a row from input columns 2 j .. 2 j + 2 vw - 1 of both
    rows (``masked``: the lanes past the 2 wo columns and the wo outputs off)."""
    b, vw = k.b, k.vw
    c = b.add(j, j)
    got = []
    for half in range(2):  # columns c .. c + vw - 1, then the vw after them
        at = b.add(c, I64(half * vw))
        live = k.lanes_lt(at, cols) if masked else None
        r0 = k.vload(b.gep(rows[0], [at]), live)
        r1 = k.vload(b.gep(rows[1], [at]), live)
        got.append(_pick(k, r1, r0))
    ev = b.shuffle_vector(got[0], got[1], even)
    od = b.shuffle_vector(got[0], got[1], odd)
    k.vstore(_pick(k, od, ev), b.gep(o, [j]), k.lanes_lt(j, wo) if masked else None)


def _row(k: _K, rows, o, cols, wo, even, odd) -> None:
    b, vw = k.b, k.vw
    with k.loop(I64(0), wo, "j", step=vw) as j:
        whole = b.icmp_signed("<=", b.add(j, I64(vw)), wo)
        # (whole steps with plain loads and stores: AVX2's masked ones are slow on AMD)
        with b.if_else(whole) as (plain, part):
            with plain:
                _step(k, rows, o, j, cols, wo, even, odd, False)
            with part:
                _step(k, rows, o, j, cols, wo, even, odd, True)


def emit_maxpool2(module: ir.Module, name: str, vw: int, xb: int = 1, ob: int = 1) -> None:
    k = _K(module, name, vw)
    b = k.b
    x0, out0 = k.arg_ptr(Q_X, "x"), k.arg_ptr(Q_OUT, "out")
    h, w = k.arg_i64(Q_H, "h"), k.arg_i64(Q_W, "w")
    ho, wo = k.arg_i64(Q_HO, "ho"), k.arg_i64(Q_WO, "wo")
    cols = b.mul(wo, I64(2))
    i32 = ir.IntType(32)
    even = ir.Constant(ir.VectorType(i32, vw), [2 * i for i in range(vw)])
    odd = ir.Constant(ir.VectorType(i32, vw), [2 * i + 1 for i in range(vw)])
    packed = (xb, ob) != (1, 1)
    if packed:
        ch, n_all = k.arg_i64(Q_C, "c"), k.arg_i64(Q_N, "n")
    with k.loop(k.fn.args[0], k.fn.args[1], "r") as r:
        t = b.sdiv(r, ho)  # out's plane
        oh = b.sub(r, b.mul(t, ho))
        o = b.gep(out0, [b.mul(r, wo)])
        xt, real = t, None
        if packed:  # t = (blk x C + c) x ob + s: sample blk x ob + s, channel c
            per = b.mul(ch, I64(ob))
            blk = b.sdiv(t, per)
            rem = b.sub(t, b.mul(blk, per))
            c = b.sdiv(rem, I64(ob))
            n = b.add(b.mul(blk, I64(ob)), b.sub(rem, b.mul(c, I64(ob))))
            xq = b.sdiv(n, I64(xb))
            xt = b.add(b.mul(b.add(b.mul(xq, ch), c), I64(xb)), b.sub(n, b.mul(xq, I64(xb))))
            real = b.icmp_signed("<", n, n_all)
        base = b.add(b.mul(b.mul(xt, h), w), b.mul(b.mul(oh, I64(2)), w))
        rows = (b.gep(x0, [base]), b.gep(x0, [b.add(base, w)]))
        if real is None:
            _row(k, rows, o, cols, wo, even, odd)
        else:
            with b.if_else(real) as (live, pad):
                with live:
                    _row(k, rows, o, cols, wo, even, odd)
                with pad:  # (a last block's padding sample: zeros)
                    with k.loop(I64(0), wo, "j", step=vw) as j:
                        k.vstore(k.c(0.0), b.gep(o, [j]), k.lanes_lt(j, wo))
    b.ret_void()
