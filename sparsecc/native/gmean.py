"""The global average pool (adaptive to 1 x 1, mean) as LLVM IR: a work item is one
(sample, channel) plane, summed a vector at a time (the last one masked to the plane) into
two accumulators, then across the lanes, and divided by its size. The numba loop it
replaces summed a float at a time: ResNet-50's pool over 16 x 2048 planes of 7 x 7 took
0.74-1.03 ms at batch 16 (DeepSparse's 0.16-0.19).

ABI ``void k(i64 start, i64 stop, i64* args)``; args [x, out, hw, xcs]: plane t at
``x + t * xcs`` (xcs >= hw floats: a channel stride), its mean to ``out[t]``; items N * C.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I64
from sparsecc.native.vmath import _K, _hsum

M_X, M_OUT, M_HW, M_XCS = range(4)


@dataclass(frozen=True)
class MeanSpec:
    vw: int

    @property
    def key(self) -> str:
        return f"gmean_v{self.vw}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_mean(module, name, self.vw)


def emit_mean(module: ir.Module, name: str, vw: int) -> None:
    k = _K(module, name, vw)
    b = k.b
    x0, out0 = k.arg_ptr(M_X, "x"), k.arg_ptr(M_OUT, "out")
    hw, xcs = k.arg_i64(M_HW, "hw"), k.arg_i64(M_XCS, "xcs")
    zero = ir.Constant(k.vty, [0.0] * vw)
    accs = [k.alloca(k.vty, f"acc{i}") for i in range(2)]
    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        xp = b.gep(x0, [b.mul(t, xcs)])
        for acc in accs:
            b.store(zero, acc)
        # two vectors a step (two independent add chains), the second masked off past hw
        with k.loop(I64(0), hw, "j", step=2 * vw) as j:
            for i, acc in enumerate(accs):
                at = b.add(j, I64(i * vw))
                v = k.vload(b.gep(xp, [at]), k.lanes_lt(at, hw))
                b.store(b.fadd(b.load(acc), v), acc)
        s = _hsum(k, b.fadd(b.load(accs[0]), b.load(accs[1])))
        b.store(b.fdiv(s, b.sitofp(hw, F32)), b.gep(out0, [t]))
    b.ret_void()
