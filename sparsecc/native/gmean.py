"""The global average pool (adaptive to 1 x 1, mean) as LLVM IR: a work item is one
(sample, channel) plane, summed a vector at a time (the last one masked to the plane) into
two accumulators, then across the lanes, and divided by its size. The numba loop it
replaces summed a float at a time: ResNet-50's pool over 16 x 2048 planes of 7 x 7 took
0.74-1.03 ms at batch 16 (DeepSparse's 0.16-0.19).

ABI ``void k(i64 start, i64 stop, i64* args)``; args [x, out, hw, xcs, c, xb, xss, n] (xb, xss
and n read only by the MeanSpec.packed kernel): plane
(sample s, channel ch) at ``x + (s // xb) * c * xcs + (s % xb) * xss + ch * xcs`` (xcs >= hw
floats: a channel stride), its mean to ``out[s * c + ch]``. xb = 1, xss = 0: plain N, C, H, W,
item t = s * c + ch, items N * C. xb > 1: the batch packed into the positions
(native.lower.PACK), a block's samples fastest (t = (s // xb * c + ch) * xb + s % xb, so one
channel's runs of a block are read one after another), items N rounded up to xb, times C;
samples from n on (a last block's padding) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I64
from sparsecc.native.vmath import _K, _hsum

M_X, M_OUT, M_HW, M_XCS, M_C, M_XB, M_XSS, M_N = range(8)


@dataclass(frozen=True)
class MeanSpec:
    vw: int
    # x may be packed (xb read); without it the kernel has none of that arithmetic (three
    # divisions an item, against ~20 cycles of work for a 7 x 7 plane)
    packed: bool = False

    @property
    def key(self) -> str:
        return f"gmean_v{self.vw}" + ("_pk" if self.packed else "")

    def emit(self, module: ir.Module, name: str) -> None:
        emit_mean(module, name, self.vw, self.packed)


def emit_mean(module: ir.Module, name: str, vw: int, packed: bool = False) -> None:
    k = _K(module, name, vw)
    b = k.b
    x0, out0 = k.arg_ptr(M_X, "x"), k.arg_ptr(M_OUT, "out")
    hw, xcs = k.arg_i64(M_HW, "hw"), k.arg_i64(M_XCS, "xcs")
    if packed:  # (the plain kernel reads none of these)
        c, xb, xss = k.arg_i64(M_C, "c"), k.arg_i64(M_XB, "xb"), k.arg_i64(M_XSS, "xss")
        nreal = k.arg_i64(M_N, "n")
    zero = ir.Constant(k.vty, [0.0] * vw)
    accs = [k.alloca(k.vty, f"acc{i}") for i in range(2)]
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        if packed:
            q = b.sdiv(t, xb)  # block * c + ch
            s = b.sub(t, b.mul(q, xb))  # the sample in its block
            blk = b.sdiv(q, c)
            ch = b.sub(q, b.mul(blk, c))
            n = b.add(b.mul(blk, xb), s)
            xp = b.gep(x0, [b.add(b.add(b.mul(b.mul(blk, c), xcs), b.mul(s, xss)),
                                  b.mul(ch, xcs))])
            dst = b.add(b.mul(n, c), ch)
            go = b.icmp_signed("<", n, nreal)
        else:
            xp = b.gep(x0, [b.mul(t, xcs)])
            dst, go = t, ir.Constant(ir.IntType(1), 1)
        body = k.fn.append_basic_block("item")
        done = k.fn.append_basic_block("item_done")
        b.cbranch(go, body, done)
        b.position_at_end(body)
        for acc in accs:
            b.store(zero, acc)
        # two vectors a step (two independent add chains), the second masked off past hw
        with k.loop(I64(0), hw, "j", step=2 * vw) as j:
            for i, acc in enumerate(accs):
                at = b.add(j, I64(i * vw))
                v = k.vload(b.gep(xp, [at]), k.lanes_lt(at, hw))
                b.store(b.fadd(b.load(acc), v), acc)
        tot = _hsum(k, b.fadd(b.load(accs[0]), b.load(accs[1])))
        b.store(b.fdiv(tot, b.sitofp(hw, F32)), b.gep(out0, [dst]))
        b.branch(done)
        b.position_at_end(done)
    b.ret_void()
