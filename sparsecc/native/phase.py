"""The shifted conv's polyphase planes as LLVM IR, vectorised (stride 1 and 2 along x).

Same planes as codegen.numba.conv.phase_planes: plane (c, py, px) of sample n holds the
zero-padded input's rows py, py+sh, ... and columns px, px+sw, ... as an (hq, wq) block at
``planes + n*stride + ((c*npy + iy)*npx + ix) * ps``, ps >= hq*wq (a multiple of 16 floats
keeps every plane's rows at one alignment: the SpMM's vector loads at offset 0 do not cross
cache lines); the ps - hq*wq floats after each plane are zeroed. A work item is one (n, c, py):
it reads each of its input rows once and writes that row of all its npx planes.

Stride 1 along x is a shifted copy: vector loads masked to the row's columns (the padding
comes out zero), stores masked to the plane row. Stride 2 loads two vectors of consecutive
columns, 2j - pw + [0, 2 vw), and splits them into the even lanes (phase px = 0) and the
odd ones (px = 1) with two shuffles. The numba loop it replaces read one strided element per
step (~2.7 cycles an element here: ResNet-50's phase passes took 11 of 176 ms at batch 16).

ABI ``void k(i64 start, i64 stop, i64* args)``; args as k_phase's (x, planes, N, C, H, W, ph,
pw, sh, sw, pys, npy, pxs, npx, hq, wq, stride) then ps and x's channel stride (floats, >= H*W);
items: N * C * npy.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from sparsecc.codegen.llvm.emit import I32, I64
from sparsecc.native.vmath import _K

(P_X, P_OUT, P_N, P_C, P_H, P_W, P_PH, P_PW, P_SH, P_SW, P_PYS, P_NPY, P_PXS, P_NPX, P_HQ,
 P_WQ, P_STRIDE, P_PS, P_XCS) = range(19)
STRIDES = (1, 2)  # along x; other strides take the numba kernel


def items(nb, cin, npy):
    return nb * cin * npy


@dataclass(frozen=True)
class PhaseSpec:
    vw: int
    sw: int

    @property
    def key(self) -> str:
        return f"phase_v{self.vw}_s{self.sw}"

    def emit(self, module: ir.Module, name: str) -> None:
        emit_phase(module, name, self.vw, self.sw)


def emit_phase(module: ir.Module, name: str, vw: int, sw: int) -> None:
    if sw not in STRIDES:
        raise ValueError(f"phase kernel: stride {sw} along x")
    k = _K(module, name, vw)
    b = k.b
    x0, out0 = k.arg_ptr(P_X, "x"), k.arg_ptr(P_OUT, "out")
    c, h, w = k.arg_i64(P_C, "c"), k.arg_i64(P_H, "h"), k.arg_i64(P_W, "w")
    ph, pw, sh = k.arg_i64(P_PH, "ph"), k.arg_i64(P_PW, "pw"), k.arg_i64(P_SH, "sh")
    i64p = I64.as_pointer()
    pys = b.inttoptr(k.arg_i64(P_PYS, "pys_i"), i64p)
    pxs = b.inttoptr(k.arg_i64(P_PXS, "pxs_i"), i64p)
    npy, npx = k.arg_i64(P_NPY, "npy"), k.arg_i64(P_NPX, "npx")
    hq, wq, stride = k.arg_i64(P_HQ, "hq"), k.arg_i64(P_WQ, "wq"), k.arg_i64(P_STRIDE, "st")
    plane = b.mul(hq, wq)
    ps, xcs = k.arg_i64(P_PS, "ps"), k.arg_i64(P_XCS, "xcs")
    per = b.mul(c, npy)

    with k.loop(k.fn.args[0], k.fn.args[1], "t") as t:
        n = b.sdiv(t, per)
        r = b.sub(t, b.mul(n, per))
        ch = b.sdiv(r, npy)
        iy = b.sub(r, b.mul(ch, npy))
        py = b.load(b.gep(pys, [iy]))
        xc = b.gep(x0, [b.mul(b.add(b.mul(n, c), ch), xcs)])
        # the item's first plane: (ch*npy + iy)*npx
        first = b.mul(r, npx)
        oc = b.gep(out0, [b.add(b.mul(n, stride), b.mul(first, ps))])
        with k.loop(I64(0), hq, "i") as i:
            ih = b.sub(b.add(b.mul(i, sh), py), ph)
            live = b.and_(b.icmp_signed(">=", ih, I64(0)), b.icmp_signed("<", ih, h))
            # columns read: [0, w) of a row inside x, none of a padding row
            wl = b.select(live, w, I64(0))
            xrow = b.gep(xc, [b.mul(ih, w)])  # (not dereferenced when the row is out)
            orow = b.gep(oc, [b.mul(i, wq)])
            with k.loop(I64(0), wq, "j", step=vw) as j:
                keep = k.lanes_lt(j, wq)
                if sw == 1:
                    col = b.sub(b.add(j, b.load(pxs)), pw)
                    k.vstore(k.vload(b.gep(xrow, [col]), k.lanes_in(col, I64(0), wl)),
                             b.gep(orow, [j]), keep)
                else:
                    _pairs(k, xrow, orow, j, keep, wl, pw, pxs, npx, ps)
        with k.loop(I64(0), npx, "gx") as ix:  # the gap after each plane
            gap = b.gep(oc, [b.mul(ix, ps)])
            with k.loop(plane, ps, "g", step=vw) as j:
                k.vstore(ir.Constant(k.vty, [0.0] * vw), b.gep(gap, [j]), k.lanes_lt(j, ps))
    b.ret_void()


def _pairs(k: _K, xrow, orow, j, keep, wl, pw, pxs, npx, ps) -> None:
    """Stride 2: plane columns [j, j + vw) of every phase from input columns 2j - pw + [0,
    2 vw) (even lanes: px = 0, odd: px = 1), those in [0, wl) read."""
    b, vw = k.b, k.vw
    even = ir.Constant(ir.VectorType(I32, vw), list(range(0, 2 * vw, 2)))
    odd = ir.Constant(ir.VectorType(I32, vw), list(range(1, 2 * vw, 2)))
    col = b.sub(b.mul(j, I64(2)), pw)
    col2 = b.add(col, I64(vw))
    lo = k.vload(b.gep(xrow, [col]), k.lanes_in(col, I64(0), wl))
    hi = k.vload(b.gep(xrow, [col2]), k.lanes_in(col2, I64(0), wl))
    ev = b.shuffle_vector(lo, hi, even)
    od = b.shuffle_vector(lo, hi, odd)
    with k.loop(I64(0), npx, "ix") as ix:
        px = b.load(b.gep(pxs, [ix]))
        v = b.select(b.icmp_signed("==", px, I64(0)), ev, od)
        dst = b.gep(orow, [b.add(b.mul(ix, ps), j)])
        k.vstore(v, dst, keep)
