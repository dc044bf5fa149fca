"""Pattern-specialised row chunks for the spmm kernel: the nonzero pattern as immediates.

Each chunk function does a run of output rows for one tile: per nonzero one broadcast of its
value (from ``data``, so the object code holds no weights) and one FMA per vector with x read at
a constant offset. Bodies are written as IR text (llvmlite's builder costs ~0.5 ms per nonzero,
text ~10 us); the module gets declarations and ``module_text`` splices the bodies in.
"""

from __future__ import annotations

import struct

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I1, I32, I64, VOID, KernelSpec, Pattern

# Nonzeros per generated function in a specialised kernel: bounds LLVM's time per function
# (it grows faster than linearly with function size) and the code each call brings in.
CHUNK_NNZ = 2048


def spmm_row_chunks(module, name, spec: KernelSpec, pattern: Pattern):
    """(full, masked) function pairs, each doing a run of rows with the pattern baked in;
    their bodies go to ``module.sparsecc_bodies`` for ``module_text``."""
    bounds = chunk_bounds(pattern.indptr)
    fp = F32.as_pointer()
    mty = ir.VectorType(I1, spec.vw)
    vty = ir.VectorType(F32, spec.vw)
    for iname, ret, args in (
            (f"llvm.fma.v{spec.vw}f32", vty, [vty] * 3),
            (f"llvm.maxnum.v{spec.vw}f32", vty, [vty] * 2),
            (f"llvm.minnum.v{spec.vw}f32", vty, [vty] * 2),
            (f"llvm.masked.load.v{spec.vw}f32.p0", vty, [vty.as_pointer(), I32, mty, vty]),
            (f"llvm.masked.store.v{spec.vw}f32.p0", VOID, [vty, vty.as_pointer(), I32, mty])):
        if iname not in module.globals:
            ir.Function(module, ir.FunctionType(ret, args), iname)
    bodies = module.__dict__.setdefault("sparsecc_bodies", [])
    pairs = []
    for c in range(len(bounds) - 1):
        pair = []
        for tag, masked in (("f", False), ("m", True)):
            fname = f"{name}_c{c}_{tag}"
            argtys = [fp, fp, fp, fp, I64, I64] + ([mty] * spec.tile if masked else [])
            pair.append(ir.Function(module, ir.FunctionType(VOID, argtys), fname))
            bodies.append(_row_chunk_text(fname, spec, pattern, int(bounds[c]),
                                          int(bounds[c + 1]), masked))
        pairs.append(tuple(pair))
    return pairs


def module_text(module: ir.Module) -> str:
    """The module's IR with the text-emitted function bodies in place of their declarations."""
    bodies = module.__dict__.get("sparsecc_bodies", [])
    text = str(module)
    if not bodies:
        return text
    defined = {b.split("@", 1)[1].split("(", 1)[0] for b in bodies}
    keep = [ln for ln in text.splitlines()
            if not (ln.startswith("declare") and "@" in ln
                    and ln.split("@", 1)[1].split("(", 1)[0].strip('"') in defined)]
    return "\n".join(keep) + "\n" + "\n".join(bodies)


def _row_chunk_text(name: str, spec: KernelSpec, pattern: Pattern, r0: int, r1: int,
                    masked: bool) -> str:
    """One specialised row-chunk function as IR text: column offsets are immediates, values
    come from ``data``; ``chains`` accumulators per vector hide the FMA latency."""
    vw, tile = spec.vw, spec.tile
    vt = f"<{vw} x float>"
    mt = f"<{vw} x i1>"
    margs = "".join(f", {mt} %m{v}" for v in range(tile)) if masked else ""
    out = [f"define internal void @{name}(ptr %data, ptr %xb, ptr %ob, ptr %bias, i64 %xrs, "
           f"i64 %ors{margs}) noinline nounwind {{", "entry:"]
    emit_ = out.append
    chains = max(1, min(4, 8 // tile))
    ip, ix = pattern.indptr, pattern.indices
    zero = "zeroinitializer"
    fma = f"@llvm.fma.v{vw}f32"
    n = 0

    def tmp():
        nonlocal n
        n += 1
        return f"%t{n}"

    def splat(scalar):
        a, b = tmp(), tmp()
        emit_(f"  {a} = insertelement {vt} poison, float {scalar}, i64 0")
        emit_(f"  {b} = shufflevector {vt} {a}, {vt} poison, <{vw} x i32> zeroinitializer")
        return b

    def vload(ptr, v):
        r = tmp()
        if masked:
            emit_(f"  {r} = call {vt} @llvm.masked.load.v{vw}f32.p0(ptr {ptr}, i32 4, "
                  f"{mt} %m{v}, {vt} zeroinitializer)")
        else:
            emit_(f"  {r} = load {vt}, ptr {ptr}, align 4")
        return r

    def gep(base, off):
        r = tmp()
        emit_(f"  {r} = getelementptr inbounds float, ptr {base}, i64 {off}")
        return r

    for o in range(r0, r1):
        if spec.has_bias:
            bv = tmp()
            emit_(f"  {bv} = load float, ptr {gep('%bias', o)}")
            first = splat(bv)
        else:
            first = zero
        accs = [[first] * tile] + [[zero] * tile for _ in range(chains - 1)]
        for j, p in enumerate(range(int(ip[o]), int(ip[o + 1]))):
            s_ = tmp()
            emit_(f"  {s_} = load float, ptr {gep('%data', p)}")
            w = splat(s_)
            col = int(ix[p])
            if spec.xrs:
                base = gep("%xb", col * spec.xrs)
            else:
                off = tmp()
                emit_(f"  {off} = mul i64 %xrs, {col}")
                base = gep("%xb", off)
            acc = accs[j % chains]
            for v in range(tile):
                xv = vload(gep(base, v * vw) if v else base, v)
                r = tmp()
                emit_(f"  {r} = call {vt} {fma}({vt} {w}, {vt} {xv}, {vt} {acc[v]})")
                acc[v] = r
        total = accs[0]
        for extra in accs[1:]:
            nxt = []
            for a_, e_ in zip(total, extra):
                if e_ == zero:
                    nxt.append(a_)
                    continue
                r = tmp()
                emit_(f"  {r} = fadd {vt} {a_}, {e_}")
                nxt.append(r)
            total = nxt
        ooff = tmp()
        emit_(f"  {ooff} = mul i64 %ors, {o}")
        rowp = gep("%ob", ooff)
        for v in range(tile):
            val = _act_text(emit_, tmp, total[v], spec, vt)
            ptr = gep(rowp, v * vw) if v else rowp
            if masked:
                emit_(f"  call void @llvm.masked.store.v{vw}f32.p0({vt} {val}, ptr {ptr}, "
                      f"i32 4, {mt} %m{v})")
            else:
                emit_(f"  store {vt} {val}, ptr {ptr}, align 4")
    emit_("  ret void")
    emit_("}")
    return "\n".join(out)


def _act_text(emit_, tmp, v: str, spec: KernelSpec, vt: str) -> str:
    if spec.act == "none":
        return v
    if v == "zeroinitializer":
        v0 = tmp()
        emit_(f"  {v0} = fadd {vt} zeroinitializer, zeroinitializer")
        v = v0
    vw = spec.vw

    def const(c):
        # LLVM takes a float constant as the hex of the double it widens to.
        bits = struct.pack(">d", float(np.float32(c))).hex().upper()
        return f"<{', '.join(f'float 0x{bits}' for _ in range(vw))}>"

    r = tmp()
    if spec.act == "relu":
        emit_(f"  {r} = call {vt} @llvm.maxnum.v{vw}f32({vt} {v}, {vt} zeroinitializer)")
        return r
    emit_(f"  {r} = call {vt} @llvm.maxnum.v{vw}f32({vt} {v}, {vt} {const(spec.act_a)})")
    r2 = tmp()
    emit_(f"  {r2} = call {vt} @llvm.minnum.v{vw}f32({vt} {r}, {vt} {const(spec.act_b)})")
    return r2


def chunk_bounds(indptr: np.ndarray) -> np.ndarray:
    """Row boundaries of a specialised kernel's functions: runs of rows with at most
    CHUNK_NNZ nonzeros (a longer row gets a function of its own)."""
    rows = len(indptr) - 1
    bounds = [0]
    start = 0
    while start < rows:
        stop = start + 1
        while stop < rows and indptr[stop + 1] - indptr[start] <= CHUNK_NNZ:
            stop += 1
        bounds.append(stop)
        start = stop
    return np.asarray(bounds, np.int64)
