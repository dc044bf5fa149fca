"""Pattern-specialised row chunks: the nonzero pattern baked into the code.

spmm: each chunk function does a run of output rows for one tile: per nonzero one broadcast of
its value (from ``data``, so the object code holds no weights) and one FMA per vector with x
read at a constant offset. spmv (one x row): each output row is its exact run of gathers, the
columns a read-only table in the object (see ``spmv_row_chunks``). Bodies are written as IR
text (llvmlite's builder costs ~0.5 ms per nonzero, text ~10 us); the module gets
declarations and ``module_text`` splices the bodies in.
"""

from __future__ import annotations

import struct

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm.emit import F32, I1, I32, I64, VOID, KernelSpec, Pattern

# Nonzeros per generated function in a specialised kernel: bounds LLVM's time per function
# (it grows faster than linearly with function size) and the code each call brings in.
CHUNK_NNZ = 2048
# Grouped kernels address x from a register moved along it (_group_asm's xref).
X_WINDOW = True
# Rows planes (KernelSpec.edge): column offsets are ROWS_BASE + c * ps + dy * W + dx, with
# the plane stride ps a multiple of W, so (offset - ROWS_BASE) mod W is the tap's dx (0: the
# left neighbour, 2: the right one)
ROWS_BASE = 15
# Packed masked taps (KernelSpec.edge_h): column offsets are PKM_BASE + plane * span + ry * W
# + rx, x's address passed PKM_BASE floats before the tensor (a whole line: the centre tap's
# vector is an aligned one)
PKM_BASE = 16


def pkm_tap(col: int, span: int, w: int) -> tuple[int, int]:
    """(ry, rx), each in -1..1, of a packed masked tap's column offset (KernelSpec.edge_h):
    the offset less PKM_BASE taken mod the plane's ``span`` floats into -span/2..span/2,
    then split into rows of ``w``."""
    d = (col - PKM_BASE) % span
    if d > span // 2:
        d -= span
    ry = (d + w + 1) // w - 1
    return ry, d - ry * w


def _ty(lanes: int) -> str:
    """IR type of a piece: a scalar float for one lane, else a vector."""
    return "float" if lanes == 1 else f"<{lanes} x float>"


def _sfx(lanes: int) -> str:
    """Intrinsic suffix of a piece's type (llvm.fma.f32, llvm.fma.v16f32, ...)."""
    return "f32" if lanes == 1 else f"v{lanes}f32"


def _zero(lanes: int) -> str:
    return "0.0" if lanes == 1 else "zeroinitializer"


def pieces(span: int, vw: int, tile: int, tail: bool) -> list[tuple[int, int, int]]:
    """The vectors of one tile as (first float, lanes, live lanes): ``tile`` full vectors, or
    for the tail tile (``span`` mod the tile width) the full vectors it needs and a last piece
    that is exact where it can be (8, 4, 2 lanes, or a scalar) and masked to its live lanes
    otherwise. The extent is baked in, so no lane is computed that nobody reads."""
    if not tail:
        return [(v * vw, vw, vw) for v in range(tile)]
    rem = span % (vw * tile)
    out = [(v * vw, vw, vw) for v in range(rem // vw)]
    last = rem % vw
    if last:
        lanes = last if last & (last - 1) == 0 else vw
        out.append((rem - last, lanes, last))
    return out


def spmm_row_chunks(module, name, spec: KernelSpec, pattern: Pattern):
    """(full, tail) function pairs, each doing a run of rows with the pattern baked in; a
    variant the extent ``spec.span`` never needs is None. Bodies go to
    ``module.sparsecc_bodies`` for ``module_text``."""
    if spec.span <= 0:
        raise ValueError("a specialised kernel needs its extent (KernelSpec.span)")
    if spec.group > 1 and spec.vw not in (8, 16):
        raise ValueError("grouped rows are AVX-512 or AVX2 assembly (vw 16 or 8)")
    if spec.residual and spec.group <= 1:
        raise ValueError("a residual is fused into grouped specialised kernels only")
    if spec.res_rs and (not spec.residual or
                        4 * (spec.res_rs * pattern.rows + spec.span) >= 2**31):
        raise ValueError(f"a residual row stride of {spec.res_rs} floats")
    if spec.group > 1 and (4 * (int(pattern.indices.max(initial=0)) * max(spec.xrs, 1)
                                + spec.span + 16) >= 2**31
                           or 4 * int(pattern.indptr[-1]) + 1024 >= 2**31):
        raise ValueError("offsets past 2 GB do not fit the kernel's 32-bit displacements")
    bounds = spmm_bounds(pattern.indptr, spec.group)
    fp = F32.as_pointer()
    width = spec.vw * spec.tile
    variants = []
    if spec.span >= width:
        variants.append(("f", pieces(spec.span, spec.vw, spec.tile, False)))
    if spec.span % width:
        variants.append(("t", pieces(spec.span, spec.vw, spec.tile, True)))
    for lanes in sorted({p[1] for _, ps in variants for p in ps}):
        vt = F32 if lanes == 1 else ir.VectorType(F32, lanes)
        sfx = _sfx(lanes)
        mty = ir.VectorType(I1, lanes)
        for iname, ret, args in (
                (f"llvm.fma.{sfx}", vt, [vt] * 3),
                (f"llvm.masked.load.{sfx}.p0", vt, [fp, I32, mty, vt]),
                (f"llvm.masked.store.{sfx}.p0", VOID, [vt, fp, I32, mty])):
            if iname not in module.globals and (lanes > 1 or "masked" not in iname):
                ir.Function(module, ir.FunctionType(ret, args), iname)
    bodies = module.__dict__.setdefault("sparsecc_bodies", [])
    asm = module.__dict__.setdefault("sparsecc_asm", [])
    # each grouped body's end label by its name (the code's extent, for emit.CODE_PREFETCH)
    ends = module.__dict__.setdefault("sparsecc_ends", {})
    blocks = kblocks(pattern, spec.kcols) if spec.group > 1 else [(pattern, 0)]
    pairs = []
    for kb, (part, base) in enumerate(blocks):
        for c in range(len(bounds) - 1):
            pair = {}
            for tag, ps in variants:
                fname = f"{name}_c{kb * (len(bounds) - 1) + c}_{tag}"
                params = [fp, fp, fp, fp, I64, I64] + ([fp] if spec.residual else []) + \
                    ([I64] if spec.edge else [])
                pair[tag] = ir.Function(module, ir.FunctionType(VOID, params), fname)
                if spec.group > 1:
                    asm.extend(_group_asm(fname, spec, part, int(bounds[c]),
                                          int(bounds[c + 1]), ps, base, first=kb == 0,
                                          last=kb == len(blocks) - 1))
                    ends[fname] = ir.GlobalVariable(module, ir.IntType(8), f"{fname}_end")
                else:
                    bodies.append(_row_chunk_text(fname, spec, pattern, int(bounds[c]),
                                                  int(bounds[c + 1]), ps))
            pairs.append((pair.get("f"), pair.get("t")))
    return pairs


def kblock_count(indices: np.ndarray, kcols: int) -> int:
    """Column blocks of a grouped kernel with ``KernelSpec.kcols`` (1 without): block b holds
    the columns in [b * kcols, (b + 1) * kcols)."""
    if kcols <= 0:
        return 1
    return int(indices.max(initial=0)) // kcols + 1


def kblocks(pattern: Pattern, kcols: int) -> list[tuple[Pattern, int]]:
    """(the pattern's nonzeros in each column block, the position of the block's first value
    in the grouped order): ``kblock_count`` blocks, an empty one where no column falls."""
    nk = kblock_count(pattern.indices, kcols)
    if nk == 1:
        return [(pattern, 0)]
    ip, ix = pattern.indptr, pattern.indices.astype(np.int64)
    row = np.repeat(np.arange(len(ip) - 1), np.diff(ip))
    blk = ix // kcols
    out, base = [], 0
    for b in range(nk):
        keep = blk == b
        counts = np.bincount(row[keep], minlength=len(ip) - 1)
        out.append((Pattern(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                            pattern.indices[keep]), base))
        base += int(keep.sum())
    return out


def group_order(indptr: np.ndarray, indices: np.ndarray, group: int,
                kcols: int = 0) -> np.ndarray:
    """The order a grouped kernel reads its values in (positions into the CSR arrays): column
    block by block (``KernelSpec.kcols``), in a block row group by row group, the group's
    columns ascending, a column's rows ascending. The kernel reads ``data[group_order(...)]``
    front to back."""
    rows = len(indptr) - 1
    if group <= 1:
        return np.arange(int(indptr[-1]), dtype=np.int64)
    row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
    col = indices.astype(np.int64)
    blk = col // kcols if kcols > 0 else np.zeros_like(col)
    return np.lexsort((row, col, row // group, blk)).astype(np.int64)


def _group_asm(name: str, spec: KernelSpec, pattern: Pattern, r0: int, r1: int,
               pcs: list[tuple[int, int, int]], base: int = 0, first: bool = True,
               last: bool = True) -> list[str]:
    """A grouped row chunk as assembly, AVX-512 (``spec.vw`` 16) or AVX2 (8) (System V: rdi
    data, rsi x, rdx out, rcx bias, r8 x row stride, r9 out row stride, in floats; with
    ``spec.residual`` a 7th argument on the stack, the residual at out's offsets, added
    before the activation). Per group of rows: accumulators 0.. (row-major, one per piece),
    each column's x pieces loaded once into the registers after them and used by an FMA
    with the value broadcast for every row of the group that has the column (AVX-512: from
    memory inside the FMA; AVX2: into the register after x's, then the FMAs); the
    activation's bounds go into those x registers for the group's epilogue (AVX-512 up to
    30 rows of one piece; AVX2 14, one fewer with a part piece, whose mask takes the last
    register, and another fewer when a residual is added to that piece: AVX2 masks lanes
    with vmaskmovps, which reads and writes only the live ones).
    Values are read in ``group_order``: one pointer walking ``data`` keeps every value's
    displacement in a byte. Written as assembly, not IR: LLVM's instruction selection and
    register allocation took ~0.15 ms per nonzero on these straight-line bodies.

    A column block's chunk (``KernelSpec.kcols``; ``pattern`` its nonzeros, the first at
    ``base`` in data): unless ``first``, the accumulators start from out (the blocks before
    left their partial sums there) instead of the bias; unless ``last``, they are stored as
    they are (the residual and the activation wait for the last block)."""
    ip, ix = pattern.indptr, pattern.indices
    nv = len(pcs)
    wide = spec.vw == 16
    if spec.vw not in (8, 16):
        raise ValueError(f"grouped rows are AVX-512 or AVX2 assembly, not {spec.vw} lanes")
    reg, vptr = ("zmm", "zmmword") if wide else ("ymm", "ymmword")
    # x's registers follow the accumulators; after a group's column walk the first two of
    # them hold the activation's bounds
    xr = spec.group * nv
    # xalign: the aligned pair around a column's vector in the two registers after x's
    aligned = spec.xalign and spec.xrs == 1 and nv == 1 and pcs[0][2] == 16
    part = [v for v, p in enumerate(pcs) if p[2] < spec.vw]
    if wide:
        need, top = max(nv, 3 if aligned else 2), 32
    else:  # x's, the broadcast value's, a third for a masked residual; the mask's last
        need, top = max(nv + 1, 3 if spec.residual and part else 2), 16 - bool(part)
    if xr + need > top or nv > 4:
        raise ValueError(f"group {spec.group} x {nv} pieces does not fit the registers")
    if not wide and (spec.xalign or spec.edge):
        raise ValueError("x alignment and rows planes' edge masks are AVX-512 only")
    out = [".p2align 4", f"{name}:", "shl r9, 2"]
    emit_ = out.append
    if spec.residual:
        emit_("mov r11, qword ptr [rsp + 8]")
    edge = {}  # column offset -> the mask of its FMAs (rows planes: dx -1 / +1)
    zrow = {}  # column offset -> the mask zeroing its x lanes (packed masked taps: ry)
    if spec.edge:
        if spec.edge < 3 or nv != 1 or spec.edge_h and (spec.edge_h < 2 or spec.xts or part):
            raise ValueError("rows planes need maps 3 wide or more and one piece a tile")
        emit_(f"mov rax, qword ptr [rsp + {16 if spec.residual else 8}]")
        for at, kreg in enumerate(("k6", "k7", "k2", "k3")[:4 if spec.edge_h else 2]):
            if at:
                emit_("shr rax, 16")
            emit_(f"kmovw {kreg}, eax")
        for col in set(int(c) for c in ix):
            if spec.edge_h:
                ry, dx = pkm_tap(col, spec.span, spec.edge)
                dx += 1
                if ry:
                    zrow[col] = "k2" if ry < 0 else "k3"
            else:
                dx = (col - ROWS_BASE) % spec.edge
            if dx in (0, 2):
                edge[col] = " {k6}" if dx == 0 else " {k7}"

    if not spec.xrs:
        emit_("shl r8, 2")
    masks = {}
    for v in part:
        live = pcs[v][2]
        if wide:
            masks[v] = f"k{v + 1}"
            emit_(f"mov eax, {(1 << live) - 1}")
            emit_(f"kmovw k{v + 1}, eax")
        else:  # (one part piece, the last: its lanes' mask built in the red zone)
            masks[v] = "ymm15"
            for lane in range(8):
                emit_(f"mov dword ptr [rsp - {32 - 4 * lane}], {-1 if lane < live else 0}")
            emit_("vmovups ymm15, ymmword ptr [rsp - 32]")

    def vload(dst: str, v: int, at: str) -> None:
        """dst = the piece's vector at ``at``, its dead lanes zero (and not read)."""
        if v not in masks:
            emit_(f"vmovups {dst}, {vptr} ptr [{at}]")
        elif wide:
            emit_(f"vmovups {dst} {{{masks[v]}}} {{z}}, {vptr} ptr [{at}]")
        else:
            emit_(f"vmaskmovps {dst}, {masks[v]}, {vptr} ptr [{at}]")

    def vstore(src: str, v: int, at: str) -> None:
        """The piece's live lanes of src to ``at`` (vload's twin)."""
        if v not in masks:
            emit_(f"vmovups {vptr} ptr [{at}], {src}")
        elif wide:
            emit_(f"vmovups {vptr} ptr [{at}] {{{masks[v]}}}, {src}")
        else:
            emit_(f"vmaskmovps {vptr} ptr [{at}], {masks[v]}, {src}")

    lo, hi, tmp = f"{reg}{xr}", f"{reg}{xr + 1}", f"{reg}{xr + 2}"
    bcast = f"{reg}{xr + nv}"  # AVX2: the value broadcast for the FMAs of a nonzero
    reach = 512 if wide else 128  # a byte displacement's (EVEX scales it by 4 here)
    q = base + int(ip[r0])  # the next value's position in the reordered data
    window = None
    xwin: list = [None]  # r10 = rsi + xwin[0] while a group walks its columns

    def xref(off: int) -> str:
        """The address of x's byte ``off`` (a whole vector): from r10, moved along x when
        the offset leaves its reach, so a line-aligned load's displacement fits a byte
        (EVEX scales it by 64: 7-byte loads instead of 10)."""
        if off % 64 or not X_WINDOW or not wide:
            return f"rsi + {off}"
        if xwin[0] is None or not -8192 <= off - xwin[0] <= 8128:
            xwin[0] = off + 8128
            emit_(f"lea r10, [rsi + {xwin[0]}]")
        return f"r10 + {off - xwin[0]}"

    for g0 in range(r0, r1, spec.group):
        xwin[0] = None  # (the epilogue uses r10)
        rows = list(range(g0, min(g0 + spec.group, r1)))
        for i, o in enumerate(rows):
            if not first:
                emit_(f"imul r10, r9, {o}")
            for v in range(nv):
                acc = f"{reg}{i * nv + v}"
                if not first:
                    vload(acc, v, f"rdx + r10 + {4 * pcs[v][0]}")
                elif not spec.has_bias:
                    emit_(f"vxorps {acc}, {acc}, {acc}")
                elif v == 0:
                    emit_(f"vbroadcastss {acc}, dword ptr [rcx + {4 * o}]")
                else:
                    emit_(f"vmovaps {acc}, {reg}{i * nv}")
        cols: dict[int, list[int]] = {}
        for i, o in enumerate(rows):
            for p in range(int(ip[o]), int(ip[o + 1])):
                cols.setdefault(int(ix[p]), []).append(i)
        pair: dict[int, int] = {}  # aligned float offset -> the register holding it
        for col in sorted(cols):
            zk = zrow.get(col)
            if aligned:
                xv = [_aligned_x(emit_, col + pcs[0][0], xr, pair, xref, zk)]
            else:
                xv = [f"{reg}{xr + v}" for v in range(nv)]
                for v, (first_f, _, _) in enumerate(pcs):
                    if spec.xrs:
                        at = xref(4 * (col * spec.xrs + first_f))
                    else:
                        if v == 0:
                            emit_(f"imul r10, r8, {col}")
                        at = f"rsi + r10 + {4 * first_f}"
                    if zk is None:
                        vload(xv[v], v, at)
                    else:  # (edge_h: one full piece, AVX-512)
                        emit_(f"vmovups {xv[v]} {{{zk}}} {{z}}, {vptr} ptr [{at}]")
            for i in sorted(cols[col]):
                if window is None or not -reach <= 4 * q - window <= reach - 4:
                    window = 4 * q + reach
                    emit_(f"lea rax, [rdi + {window}]")
                value = f"dword ptr [rax + {4 * q - window}]"
                if not wide:
                    emit_(f"vbroadcastss {bcast}, {value}")
                for v in range(nv):
                    if wide:
                        emit_(f"vfmadd231ps zmm{i * nv + v}{edge.get(col, '')}, {xv[v]}, "
                              f"{value}{{1to16}}")
                    else:
                        emit_(f"vfmadd231ps ymm{i * nv + v}, {xv[v]}, {bcast}")
                q += 1
        act = spec.act if last else "none"
        window = None  # (the epilogue may use rax: the next group's values set it up again)
        if act == "relu":
            emit_(f"vxorps {lo}, {lo}, {lo}")
        elif act == "clamp":
            for r, c in ((lo, spec.act_a), (hi, spec.act_b)):
                emit_(f"mov eax, {struct.unpack('<I', struct.pack('<f', c))[0]}")
                if wide:
                    emit_(f"vpbroadcastd {r}, eax")
                else:
                    emit_(f"vmovd xmm{r[3:]}, eax")
                    emit_(f"vbroadcastss {r}, xmm{r[3:]}")
        for i, o in enumerate(rows):
            emit_(f"imul r10, r9, {o}")
            for v, (first_f, _, _) in enumerate(pcs):
                acc = f"{reg}{i * nv + v}"
                if spec.residual and last:
                    # (res_rs: the residual's own row stride, a displacement from r11)
                    at = f"r11 + {4 * (o * spec.res_rs + first_f)}" if spec.res_rs else \
                        f"r11 + r10 + {4 * first_f}"
                    if wide:
                        m = f" {{{masks[v]}}} {{z}}" if v in masks else ""
                        emit_(f"vaddps {acc}{m}, {acc}, zmmword ptr [{at}]")
                    elif v in masks:
                        vload(tmp, v, at)
                        emit_(f"vaddps {acc}, {acc}, {tmp}")
                    else:
                        emit_(f"vaddps {acc}, {acc}, ymmword ptr [{at}]")
                # x86 max / min return their second operand when one is NaN: NaN passes
                if act in ("relu", "clamp"):
                    emit_(f"vmaxps {acc}, {lo}, {acc}")
                if act == "clamp":
                    emit_(f"vminps {acc}, {hi}, {acc}")
                vstore(acc, v, f"rdx + r10 + {4 * first_f}")
    if q != base + int(ip[r1]):
        raise AssertionError("grouped chunk did not read its values")
    emit_("vzeroupper")
    emit_("ret")
    emit_(f"{name}_end:")  # (where the body's code ends: emit.CODE_PREFETCH reads it)
    return out


def _aligned_x(emit_, off: int, xr: int, pair: dict[int, int], xref=None,
               zk: str | None = None) -> str:
    """The register holding x's 16 floats from ``off`` (floats past the tile's start, which
    is on a cache line when x is). The aligned vectors at a = off - off % 16 and, off the line,
    a + 16 sit in zmm{xr+1} / zmm{xr+2} (``pair``: offset -> register), loaded only when the
    column before did not leave them there (columns go in ascending order: a 3x3 conv's dx =
    0, 1, 2 share them, and the window slides along a row); ``valignd`` then shifts the
    vector out of them into zmm{xr}. Reads up to a + 32: at most 15 floats past what the
    unaligned load it replaces read, never before the tile. The loads are unaligned ones, so
    an x that is not on a cache line is slower, not wrong. ``zk``: a mask register whose
    clear lanes come out zero (in zmm{xr}; the pair stays as it was)."""
    a, m = off - off % 16, off % 16
    want = [a, a + 16] if m else [a]
    keep = {o: r for o, r in pair.items() if o in want}
    free = [r for r in (xr + 1, xr + 2) if r not in keep.values()]
    for o in want:
        if o not in keep:
            keep[o] = free.pop(0)
            at = xref(4 * o) if xref is not None else f"rsi + {4 * o}"
            emit_(f"vmovups zmm{keep[o]}, zmmword ptr [{at}]")
    pair.clear()
    pair.update(keep)
    z = f" {{{zk}}} {{z}}" if zk else ""
    if not m:
        if not zk:
            return f"zmm{pair[a]}"
        emit_(f"vmovaps zmm{xr}{z}, zmm{pair[a]}")
        return f"zmm{xr}"
    emit_(f"valignd zmm{xr}{z}, zmm{pair[a + 16]}, zmm{pair[a]}, {m}")
    return f"zmm{xr}"


def module_text(module: ir.Module) -> str:
    """The module's IR with the text-emitted function bodies in place of their declarations."""
    bodies = module.__dict__.get("sparsecc_bodies", [])
    asm = module.__dict__.get("sparsecc_asm", [])
    text = str(module)
    if asm:
        lines = [".text", ".intel_syntax noprefix"] + asm + [".att_syntax prefix"]
        text += "\n" + "\n".join(f'module asm "{ln}"' for ln in lines) + "\n"
    if not bodies:
        return text
    defined = {b.split("@", 1)[1].split("(", 1)[0] for b in bodies}
    keep = [ln for ln in text.splitlines()
            if not (ln.startswith("declare") and "@" in ln
                    and ln.split("@", 1)[1].split("(", 1)[0].strip('"') in defined)]
    return "\n".join(keep) + "\n" + "\n".join(bodies)


def _row_chunk_text(name: str, spec: KernelSpec, pattern: Pattern, r0: int, r1: int,
                    pcs: list[tuple[int, int, int]]) -> str:
    """One specialised row-chunk function as IR text: column offsets are immediates, values
    come from ``data``; ``chains`` accumulators per piece hide the FMA latency."""
    out = [f"define internal void @{name}(ptr %data, ptr %xb, ptr %ob, ptr %bias, i64 %xrs, "
           f"i64 %ors) noinline nounwind {{", "entry:"]
    emit_ = out.append
    chains = max(1, min(4, 8 // len(pcs)))
    ip, ix = pattern.indptr, pattern.indices
    n = 0

    def tmp():
        nonlocal n
        n += 1
        return f"%t{n}"

    def mask(lanes, live):
        bits = ", ".join(f"i1 {'true' if i < live else 'false'}" for i in range(lanes))
        return f"<{lanes} x i1> <{bits}>"

    def splats(scalar):
        got = {1: scalar}
        for lanes in sorted({p[1] for p in pcs} - {1}):
            a, b = tmp(), tmp()
            emit_(f"  {a} = insertelement {_ty(lanes)} poison, float {scalar}, i64 0")
            emit_(f"  {b} = shufflevector {_ty(lanes)} {a}, {_ty(lanes)} poison, "
                  f"<{lanes} x i32> zeroinitializer")
            got[lanes] = b
        return got

    def vload(ptr, lanes, live):
        r = tmp()
        t = _ty(lanes)
        if live < lanes:
            emit_(f"  {r} = call {t} @llvm.masked.load.{_sfx(lanes)}.p0(ptr {ptr}, i32 4, "
                  f"{mask(lanes, live)}, {t} zeroinitializer)")
        else:
            emit_(f"  {r} = load {t}, ptr {ptr}, align 4")
        return r

    def gep(base, off):
        r = tmp()
        emit_(f"  {r} = getelementptr inbounds float, ptr {base}, i64 {off}")
        return r

    # Window bases (see _near): data's advance with the nonzeros, x's restart every row.
    near = {}
    vbytes = 4 * max(p[1] for p in pcs)
    x_windows = bool(spec.xrs) and spec.xrs * 4 * 8 <= 256 * vbytes

    def _near(base, off, scale):
        """A pointer to ``base + off`` floats as a window base + a displacement that fits the
        EVEX disp8 (x ``scale`` bytes): without it every x load past 8 KB and every value
        past 512 B carries a 4-byte displacement (a 4096^2 layer: ~20 -> ~14 bytes of code
        per nonzero). The base goes through an empty asm so LLVM cannot fold it back."""
        span = 256 * scale // 4
        mid = off // span * span + span // 2
        cur = near.get(base)
        if cur is None or cur[0] != mid:
            g, r = gep(base, mid), tmp()
            emit_(f'  {r} = call ptr asm sideeffect "", "=r,0"(ptr {g})')
            cur = near[base] = (mid, r)
        return gep(cur[1], off - mid)

    for o in range(r0, r1):
        near.pop("%xb", None)
        if spec.has_bias:
            bv = tmp()
            emit_(f"  {bv} = load float, ptr {gep('%bias', o)}")
            b0 = splats(bv)
            first = [b0[p[1]] for p in pcs]
        else:
            first = [_zero(p[1]) for p in pcs]
        accs = [list(first)] + [[_zero(p[1]) for p in pcs] for _ in range(chains - 1)]
        for j, p in enumerate(range(int(ip[o]), int(ip[o + 1]))):
            s_ = tmp()
            emit_(f"  {s_} = load float, ptr {_near('%data', p, 4)}")
            w = splats(s_)
            col = int(ix[p])
            if x_windows:
                base = _near("%xb", col * spec.xrs, vbytes)
            elif spec.xrs:
                base = gep("%xb", col * spec.xrs)
            else:
                off = tmp()
                emit_(f"  {off} = mul i64 %xrs, {col}")
                base = gep("%xb", off)
            acc = accs[j % chains]
            for v, (first_f, lanes, live) in enumerate(pcs):
                xv = vload(gep(base, first_f) if first_f else base, lanes, live)
                r, t = tmp(), _ty(lanes)
                emit_(f"  {r} = call {t} @llvm.fma.{_sfx(lanes)}({t} {w[lanes]}, {t} {xv}, "
                      f"{t} {acc[v]})")
                acc[v] = r
        total = accs[0]
        for extra in accs[1:]:
            nxt = []
            for (_, lanes, _), a_, e_ in zip(pcs, total, extra):
                if e_ == _zero(lanes):
                    nxt.append(a_)
                    continue
                r = tmp()
                emit_(f"  {r} = fadd {_ty(lanes)} {a_}, {e_}")
                nxt.append(r)
            total = nxt
        ooff = tmp()
        emit_(f"  {ooff} = mul i64 %ors, {o}")
        rowp = gep("%ob", ooff)
        for (first_f, lanes, live), acc_v in zip(pcs, total):
            val = _act_text(emit_, tmp, acc_v, spec, lanes)
            ptr = gep(rowp, first_f) if first_f else rowp
            if live < lanes:
                emit_(f"  call void @llvm.masked.store.{_sfx(lanes)}.p0({_ty(lanes)} {val}, "
                      f"ptr {ptr}, i32 4, {mask(lanes, live)})")
            else:
                emit_(f"  store {_ty(lanes)} {val}, ptr {ptr}, align 4")
    emit_("  ret void")
    emit_("}")
    return "\n".join(out)


def _act_text(emit_, tmp, v: str, spec: KernelSpec, lanes: int) -> str:
    if spec.act == "none":
        return v
    vt, z = _ty(lanes), _zero(lanes)
    if v == z:
        v0 = tmp()
        emit_(f"  {v0} = fadd {vt} {z}, {z}")
        v = v0

    def const(c):
        # LLVM takes a float constant as the hex of the double it widens to.
        bits = struct.pack(">d", float(np.float32(c))).hex().upper()
        one = f"float 0x{bits}"
        return one.split(" ", 1)[1] if lanes == 1 else f"<{', '.join([one] * lanes)}>"

    # compare + select rather than maxnum/minnum, which drop a NaN (torch keeps it)
    mt = "i1" if lanes == 1 else f"<{lanes} x i1>"

    def pick(op: str, val: str, bound: str) -> str:
        c, r = tmp(), tmp()
        emit_(f"  {c} = fcmp {op} {vt} {val}, {bound}")
        emit_(f"  {r} = select {mt} {c}, {vt} {bound}, {vt} {val}")
        return r

    if spec.act == "relu":
        return pick("olt", v, z)
    return pick("ogt", pick("olt", v, const(spec.act_a)), const(spec.act_b))


def spmm_bounds(indptr: np.ndarray, group: int = 1) -> np.ndarray:
    """A specialised spmm's row-chunk functions: runs of whole row groups."""
    if group <= 1:
        return chunk_bounds(indptr)
    rows = len(indptr) - 1
    return np.asarray(list(range(0, rows, group)) + [rows], np.int64)


def chunk_bounds(indptr: np.ndarray, cap: int = CHUNK_NNZ) -> np.ndarray:
    """Row boundaries of a specialised kernel's functions: runs of rows with at most ``cap``
    nonzeros (a longer row gets a function of its own)."""
    rows = len(indptr) - 1
    bounds = [0]
    start = 0
    while start < rows:
        stop = start + 1
        while stop < rows and indptr[stop + 1] - indptr[start] <= cap:
            stop += 1
        bounds.append(stop)
        start = stop
    return np.asarray(bounds, np.int64)


# ---- spmv: batch-1 rows, x gathered through index vectors kept in the object ----------------
# Nonzeros per spmv chunk function, at most: one gather does vw of them, so a chunk's code is
# ~16x smaller than a spmm chunk's; at least 16 chunks per kernel keep two threads balanced.
SPMV_CHUNK_MAX, SPMV_CHUNK_MIN = 8192, 256


def spmv_chunk_nnz(nnz: int) -> int:
    return int(min(SPMV_CHUNK_MAX, max(SPMV_CHUNK_MIN, nnz // 16)))


def spmv_code_bytes(nnz: int, rows: int) -> int:
    """Estimated object-code bytes (code + index table) of a specialised spmv kernel; fits
    bench/llvm_specialized.py's figures within ~20 % (4.5 bytes per nonzero, ~96 per row for
    its reduction and epilogue)."""
    return int(4.5 * nnz + 96 * rows)


def spmv_index_bits(k: int) -> int:
    """Width of the baked index table: 16 bits when every column of x fits."""
    return 16 if k <= 1 << 16 else 32


def spmv_row_chunks(module, name, spec: KernelSpec, pattern: Pattern) -> list[ir.Function]:
    """Functions ``void f(ptr data, ptr xrow, ptr orow, ptr bias)``, one per run of rows, for
    a row-major x row (batch 1). Each row is unrolled into its exact number of vw-wide gathers
    (the last one under a constant mask); the gathers' column vectors are a read-only table in
    the object code (the pattern), the values come from ``data``. Unlike the spmm chunks, no
    column is an immediate: one scalar FMA per nonzero with an immediate offset is 5-28 MB of
    code for a 4096^2 layer (slower than reading indices), and a gather does vw nonzeros in
    ~30 bytes of code plus 2 bytes of table per nonzero."""
    if spec.xrs <= 0:
        raise ValueError("a specialised spmv kernel needs its x width (KernelSpec.xrs)")
    vw = spec.vw
    bits = spmv_index_bits(spec.xrs)
    if pattern.indices.size and int(pattern.indices.max()) >= spec.xrs:
        raise ValueError("a column index is past the x width")
    fp = F32.as_pointer()
    vt = ir.VectorType(F32, vw)
    mty = ir.VectorType(I1, vw)
    for iname, ret, args in (
            (f"llvm.fma.v{vw}f32", vt, [vt] * 3),
            (f"llvm.masked.gather.v{vw}f32.v{vw}p0", vt,
             [ir.VectorType(fp, vw), I32, mty, vt]),
            (f"llvm.masked.load.v{vw}f32.p0", vt, [fp, I32, mty, vt]),
            (f"llvm.vector.reduce.fadd.v{vw}f32", F32, [F32, vt])):
        if iname not in module.globals:
            ir.Function(module, ir.FunctionType(ret, args), iname)
    bounds = chunk_bounds(pattern.indptr, spmv_chunk_nnz(int(pattern.indptr[-1])))
    bodies = module.__dict__.setdefault("sparsecc_bodies", [])
    fns = []
    for c in range(len(bounds) - 1):
        r0, r1 = int(bounds[c]), int(bounds[c + 1])
        table = _spmv_table(pattern, r0, r1, vw, bits)
        tab = None
        if table.size:
            ty = ir.ArrayType(ir.IntType(8), table.nbytes)
            tab = ir.GlobalVariable(module, ty, f"{name}_c{c}_ix")
            tab.initializer = ir.Constant(ty, bytearray(table.tobytes()))
            tab.global_constant = True
            tab.linkage = "internal"
            tab.align = 64
        fname = f"{name}_c{c}"
        fns.append(ir.Function(module, ir.FunctionType(VOID, [fp, fp, fp, fp]), fname))
        bodies.append(_spmv_chunk_text(fname, tab.name if tab else "", spec, pattern, r0, r1,
                                       bits))
    return fns


def _spmv_table(pattern: Pattern, r0: int, r1: int, vw: int, bits: int) -> np.ndarray:
    """Columns of rows [r0, r1), each row padded to a multiple of vw with column 0 (masked)."""
    ip, ix = pattern.indptr, pattern.indices
    dt = np.uint16 if bits == 16 else np.uint32
    parts = []
    for o in range(r0, r1):
        n = int(ip[o + 1] - ip[o])
        pad = -n % vw
        parts.append(np.asarray(ix[ip[o]:ip[o + 1]], dt))
        if pad:
            parts.append(np.zeros(pad, dt))
    return np.concatenate(parts) if parts else np.zeros(0, dt)


def _spmv_chunk_text(name: str, tab: str, spec: KernelSpec, pattern: Pattern, r0: int, r1: int,
                     bits: int) -> str:
    vw = spec.vw
    vt, it = f"<{vw} x float>", f"<{vw} x i{bits}>"
    out = [f"define internal void @{name}(ptr %data, ptr %xr, ptr %or, ptr %bias) "
           "noinline nounwind {", "entry:"]
    emit_ = out.append
    ip = pattern.indptr
    n_ = 0

    def tmp():
        nonlocal n_
        n_ += 1
        return f"%t{n_}"

    def mask(live):
        if live == vw:
            return f"<{vw} x i1> <{', '.join(['i1 true'] * vw)}>"
        return f"<{vw} x i1> <{', '.join(f'i1 {str(i < live).lower()}' for i in range(vw))}>"

    pos = 0  # entries of the table used so far
    for o in range(r0, r1):
        p0, n = int(ip[o]), int(ip[o + 1] - ip[o])
        groups = -(-n // vw)
        chains = max(1, min(4, groups))
        accs = ["zeroinitializer"] * chains
        for g in range(groups):
            live = min(vw, n - g * vw)
            tp, iv, pp, xv, dp, dv, r = (tmp() for _ in range(7))
            emit_(f"  {tp} = getelementptr inbounds i8, ptr @\"{tab}\", i64 {pos * bits // 8}")
            emit_(f"  {iv} = load {it}, ptr {tp}, align {bits // 8}")
            if bits == 16:
                iz = tmp()
                emit_(f"  {iz} = zext {it} {iv} to <{vw} x i32>")
            else:
                iz = iv
            emit_(f"  {pp} = getelementptr inbounds float, ptr %xr, <{vw} x i32> {iz}")
            emit_(f"  {xv} = call {vt} @llvm.masked.gather.v{vw}f32.v{vw}p0(<{vw} x ptr> {pp}, "
                  f"i32 4, {mask(live)}, {vt} zeroinitializer)")
            emit_(f"  {dp} = getelementptr inbounds float, ptr %data, i64 {p0 + g * vw}")
            if live == vw:
                emit_(f"  {dv} = load {vt}, ptr {dp}, align 4")
            else:
                emit_(f"  {dv} = call {vt} @llvm.masked.load.v{vw}f32.p0(ptr {dp}, i32 4, "
                      f"{mask(live)}, {vt} zeroinitializer)")
            c = g % chains
            emit_(f"  {r} = call {vt} @llvm.fma.v{vw}f32({vt} {dv}, {vt} {xv}, {vt} {accs[c]})")
            accs[c] = r
            pos += vw
        total = accs[0]
        for extra in accs[1:]:
            r = tmp()
            emit_(f"  {r} = fadd {vt} {total}, {extra}")
            total = r
        s = tmp()
        if groups:
            emit_(f"  {s} = call reassoc float @llvm.vector.reduce.fadd.v{vw}f32(float 0.0, "
                  f"{vt} {total})")
        else:
            emit_(f"  {s} = fadd float 0.0, 0.0")
        if spec.has_bias:
            bp, bv, s2 = tmp(), tmp(), tmp()
            emit_(f"  {bp} = getelementptr inbounds float, ptr %bias, i64 {o}")
            emit_(f"  {bv} = load float, ptr {bp}, align 4")
            emit_(f"  {s2} = fadd float {s}, {bv}")
            s = s2
        val = _act_text(emit_, tmp, s, spec, 1)
        op_ = tmp()
        emit_(f"  {op_} = getelementptr inbounds float, ptr %or, i64 {o}")
        emit_(f"  store float {val}, ptr {op_}, align 4")
    emit_("  ret void")
    emit_("}")
    return "\n".join(out)
