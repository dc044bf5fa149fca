"""Row bands across layers (#18's cross-layer tiles for ResNet blocks): a run of convs over
the same H x W maps in the chunked head runs a few output rows at a time, conv after conv,
so each tensor's rows are read back from L2 soon after they were written instead of from L3
a whole sample later.

ResNet-50's layer1 holds 256-channel 56 x 56 tensors, 3.2 MB a sample, more than a core's
L2: a block's output went to L3 and came back for the next block's first conv and again for
its residual add, and the 1x1 convs there ran at 20-45 GFLOP/s against 90-130 one stage on
(28 x 28 maps, 1.6 MB a tensor). DeepSparse's "tensor columns" tile the same blocks.

* Which calls (``_runs``): consecutive grouped sparse kernels over the same maps, 1x1 convs
  (positions read where they are written) and 3x3 / 1 convs over rows planes (an output row
  reads the rows beside it: a halo of one), with the rows planes' zero-row passes between
  them (``Band``, recorded by native.lower). A run qualifies when its largest tensor is more
  than a core's L2 a sample (``BAND_MIN_TENSOR``) and it holds two convs or more.
* A band of a call is the same kernel with x, out and the residual moved on by the band's
  first row and fewer tiles (emit's A_NTILES). Each conv runs ``lag`` rows behind the band
  front: its producers' lags, plus a whole band after the writer of a 3x3 conv's planes
  (``_plan_run``). Rows a band: the fewest that are whole tiles, times as many as fit
  ``BAND_BYTES`` of a row of every tensor the run touches.
* Band-major tensors (``band_layout``): a tensor every access of which is a band call's
  output or residual or a 1x1 conv's x holds each band's rows of all channels together (C x
  rows x W floats), as a ring of the bands between its write and its last read. In NCHW a
  band of a 256-channel tensor is 256 short pieces, each a cold start for the prefetcher and
  a read for ownership from L3; bands of NCHW tensors alone measured slower than no bands.
  The strides are baked into the kernels (x's row stride, KernelSpec.res_rs for a residual
  laid out unlike its sum), so native.lower lowers the plan once more knowing them.
* Bands run where the head runs one sample on one thread (sample-parallel chunks, or one
  thread). A sample shared between threads would meet after every band (ResNet-50 batch 1,
  2 threads: 5.6 % slower), so the program keeps the head lowered without bands
  (Program.alt_head) for those runs, with its own arena layout; both give the same floats.
* Every buffer live during a run stays live over all of it (no arena reuse while bands are
  in flight).
* A stride-2 gather of a run's tensor (native.tmgather: a ResNet downsample's x, its even
  rows and columns tile-major, ``GATHER``) joins the run: its call moves up to just after the
  run's last call touching that tensor (``_ordered``), and runs a range of output tiles a
  band, those whose rows the band completed. The tensor is then read only inside the run,
  so it too is band-major, a ring that never leaves L2; before, the stage's last output
  (ResNet-50 layer1's, 3.2 MB a sample) went whole to L3 or DRAM and the gather read it
  back. The gather's table names each position's place in the ring (``ring_offset``), so
  the ring's length is fixed when the run is planned (``band_layout``'s ``rings``), counting
  the bands a band's tiles reach back (a tile spans two output rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsecc.codegen.llvm import emit as E_
from sparsecc.native import tmgather as TG
from sparsecc.native.expr import N, lift, linear

# Rows in a band: the fewest whole-tile rows, times as many as fit this many bytes of a row
# of every tensor the run touches. ResNet-50 layer1 (~360 KB a row; Xeon, batch 16, per-op
# sums of one process, 20 rounds): 2 rows 179.9 ms, 4 rows 198.1 / 8 rows 194.5 in another
# round against no bands 209.5 / 201.9. A run needs a tensor over BAND_MIN_TENSOR x L2 a
# sample: layer2 too (0.5: its 1.6 MB tensors) made its 1x1 convs faster and its 3x3 ones
# slower, 186.7 against 179.9.
BAND_BYTES = 512 << 10
BAND_MIN_TENSOR = 1.0
BANDS = True
# ... and no bands where a band of every tensor's rows (the fewest whole-tile rows) would
# take more than this share of a core's L2 beside the run's code. On the Zen 5 of 2026-12-02
# (L2 1 MB a core; code fetched from L3 slowly, docs/native.md) ResNet-50's layer1 takes 2
# rows (~720 KB) and layer2 4 (~700 KB): its batch 16 ran 0.945-0.973x the time without
# bands (paired, same process, seven runs), 0.995x with layer1's alone. On the Xeon (2 MB)
# layer1's bands stay (1.066x faster there, docs/native.md).
BAND_L2_SHARE = 0.5
GATHER = True  # (a run's stride-2 gathers inside the run; A/B)
GATHER_HALO = -2  # Band.halo of a gather call


@dataclass(frozen=True)
class Band:
    """A call's place in a band run: its output maps (h rows of w positions); ``halo`` rows
    it reads beside its output rows (0: a 1x1 conv, 1: a 3x3 / 1 conv over rows planes), or
    -1 for the rows planes' zero-row pass (k_rowpads: before the run and after its producer's
    last band)."""

    h: int
    w: int
    halo: int
    # a gather (halo GATHER_HALO): its output maps' rows and columns, the row of x its
    # output row i reads, first + i x step (off the maps: none, a zero row), and its output
    # tiles of 16 positions (native.tmgather's)
    gather: tuple[int, int, int, int, int] | None = None  # (ho, wo, first, step, tiles)

    def tiles_done(self, r1: int) -> int:
        """A gather's output tiles whose x rows all lie below row r1 (all at r1 = h)."""
        ho, wo, first, step, tiles = self.gather
        if r1 >= self.h:
            return tiles
        done = 0 if r1 <= first else min(ho, (r1 - 1 - first) // step + 1)
        return min(tiles, done * wo // 16)

    def first_row(self, t: int) -> int:
        """The first x row output tile t reads (h: none)."""
        ho, wo, first, step, _ = self.gather
        i = 16 * t // wo
        return self.h if i >= ho else max(0, first + i * step)


def _root(plan, name: str) -> str:
    return plan.storage_root(name) if name in plan.tensors else name


def _grouped(p, call) -> bool:
    k = p.kernels.get(call.kernel)
    return k is not None and k.kind == "sparse" and k.spec is not None and k.spec.group > 1


def _runs(p, calls, stop: int):
    """Maximal runs [s, e) of calls before ``stop`` that may run in bands: each a grouped
    kernel or a zero-row pass with a Band of the same maps, no run condition."""
    s = None
    tiled = set(p.tile_major)
    for ci in range(stop + 1):
        c = calls[ci] if ci < stop else None
        # (a tile-major tensor's bands are not whole rows: its calls run whole)
        ok = c is not None and c.band is not None and not c.only_if and \
            (c.band.halo == -1 or c.band.halo == GATHER_HALO and GATHER or
             c.band.halo >= 0 and _grouped(p, c)) and \
            not any(a.kind == "tensor" and _root(p.plan, a.name) in tiled for a in c.args)
        if ok and s is not None and (c.band.h, c.band.w) != (calls[s].band.h, calls[s].band.w):
            yield s, ci
            s = ci
        elif ok and s is None:
            s = ci
        elif not ok and s is not None:
            yield s, ci
            s = None


def _plan_run(p, calls, s: int, e: int, l2: int):
    """(lags, rows a band) for calls[s:e], or None when the run gains nothing (its largest
    tensor fits L2, fewer than two convs) or a call writes a tensor the run read before it or
    writes twice. Lags are whole bands, so a band-major tensor's bands line up (layout)."""
    plan = p.plan
    run = calls[s:e]
    convs = [c for c in run if c.band.halo >= 0]
    if len(convs) < 2:
        return None
    h, w = run[0].band.h, run[0].band.w
    q = 16 // math.gcd(w, 16)  # rows in a whole number of 16-float tiles
    if h < 2 * q:
        return None
    written: dict[str, int] = {}
    read: set[str] = set()
    touched: set[str] = set()
    edges: list[tuple[int, int, int]] = []  # (call, producer, halo)
    for k, c in enumerate(run):
        if c.band.halo == -1:
            continue
        xr, orr = (_root(plan, c.args[a].name) for a in _io(c))
        ins = [xr]
        if c.band.halo >= 0 and c.args[E_.A_RES].kind == "tensor":
            ins.append(_root(plan, c.args[E_.A_RES].name))
        if orr in written or orr in read or orr in ins:
            return None
        edges += [(k, written[r], max(c.band.halo, 0) if j == 0 else 0)
                  for j, r in enumerate(ins) if r in written]
        written[orr] = k
        read.update(ins)
        touched.update(ins + [orr])
    sizes = [linear(p.buffers[r].nbytes)[0] for r in touched if r in p.buffers]
    if max(sizes, default=0) <= BAND_MIN_TENSOR * l2:
        return None
    row_bytes = sum(sizes) / h
    rows = q * max(1, int(BAND_BYTES // (q * row_bytes)))
    if rows >= h or rows * row_bytes > BAND_L2_SHARE * l2:
        return None
    lags = [-1 if c.band.halo == -1 else 0 for c in run]
    for k, j, halo in edges:  # (in call order: producers first)
        lags[k] = max(lags[k], lags[j] + -(-halo // rows) * rows)
    return lags, rows


def _io(call) -> tuple[int, int]:
    """The arg indices of a band call's x and output."""
    return (TG.G_X, TG.G_OUT) if call.band.halo == GATHER_HALO else (E_.A_X, E_.A_OUT)


def _window(step: int, rows: int, lag: int, h: int) -> tuple[int, int]:
    """The rows [r0, r1) a call ``lag`` rows behind the band front runs at ``step`` (empty
    when r1 <= r0)."""
    return max(0, step * rows - lag), min(h, (step + 1) * rows - lag)


def _gather_steps(band: Band, rows: int, lag: int) -> dict[int, tuple[int, int, int]]:
    """A gather's calls in its run: step -> (its rows' first, first tile, end tile), at the
    steps that complete tiles (Band.tiles_done)."""
    out, done = {}, 0
    for step in range(-(-(band.h + lag) // rows)):
        r0, r1 = _window(step, rows, lag, band.h)
        if r1 <= r0:
            continue
        upto = band.tiles_done(r1)
        if upto > done:
            out[step] = (r0, done, upto)
        done = upto
    return out


def _reach(band: Band, rows: int, lag: int) -> int:
    """Rows a gather's bands read behind their own first row (its ring needs them): over
    its steps, how far the first row of a step's first tile lies before the step's rows."""
    return max((r0 - band.first_row(t0) for r0, t0, _ in
                _gather_steps(band, rows, lag).values()), default=0)


def _rings(calls, access, s: int, e: int, lags, rows: int, roots) -> dict[str, int]:
    """Bands in the ring of each band-major tensor of ``roots`` the run calls[s:e] touches
    (``access``: _access of ``calls``): from the band its writer is at to the oldest band a
    reader (at its lag) still reads."""
    ring = {}
    for r in roots:
        uses = [(ci, ai) for ci, ai in access.get(r, []) if s <= ci < e]
        wrote = [lags[ci - s] for ci, ai in uses if ai == _io(calls[ci])[1]]
        read = [lags[ci - s] + (-(-_reach(calls[ci].band, rows, lags[ci - s]) // rows) * rows
                                if calls[ci].band.halo == GATHER_HALO else 0)
                for ci, ai in uses if ai != _io(calls[ci])[1]]
        if wrote:
            ring[r] = (max(read, default=wrote[0]) - wrote[0]) // rows + 1
    return ring


def ring_offset(rows: int, ring: int, c: int, w: int, h: int):
    """(y, x) of a band-major tensor's channel 0 -> its float in the ring (``ring`` bands
    of C x rows x w floats, a channel's rows of a band rows x w floats), None off the
    h x w maps."""
    def where(y: int, x: int) -> int | None:
        if not (0 <= y < h and 0 <= x < w):
            return None
        return (y // rows % ring) * c * rows * w + (y % rows) * w + x
    return where


def _ordered(p, calls, stop: int, only: dict[str, int] | None = None) -> list:
    """``calls`` with each gather (Band.halo GATHER_HALO) of calls[:stop] (whose x is in
    ``only``, if given) moved up to just after the last call before it touching its x, where
    that call is in a band run of the same maps (a band call, a zero-row pass or a gather)
    and no call between touches the gather's output: the gather then joins the run."""
    if not GATHER:
        return calls
    out = list(calls[:stop])
    for c in calls[:stop]:
        if c.band is None or c.band.halo != GATHER_HALO:
            continue
        at = next(i for i, d in enumerate(out) if d is c)
        xr, orr = (_root(p.plan, c.args[a].name) for a in _io(c))
        if only is not None and xr not in only:
            continue
        j = at - 1
        while j >= 0 and not any(a.kind == "tensor" and _root(p.plan, a.name) in (xr, orr)
                                 for a in out[j].args):
            j -= 1
        d = out[j] if j >= 0 else None
        if d is None or d.band is None or \
                (d.band.h, d.band.w) != (c.band.h, c.band.w) or \
                any(a.kind == "tensor" and _root(p.plan, a.name) == orr for a in d.args):
            continue
        out.insert(j + 1, out.pop(at))
    return out + list(calls[stop:])


def _access(p, calls):
    """root -> [(call index, arg index)] of every tensor slot of ``calls``."""
    seen: dict[str, list[tuple[int, int]]] = {}
    for ci, c in enumerate(calls):
        for ai, slot in enumerate(c.args):
            if slot.kind == "tensor":
                seen.setdefault(_root(p.plan, slot.name), []).append((ci, ai))
    return seen


def band_layout(p, l2: int, strided, rings: dict[str, int] | None = None) -> dict[str, int]:
    """Tensors of ``p`` (lowered without band-major tensors, so its calls are not in bands)
    to hold band-major (root -> rows a band) in the next lowering: those every
    access of which lies in one band run, as a conv's output or residual, a 1x1 conv's x
    or a gather's x (a 3x3 conv's x rows are read beside its own: NCHW planes), not a model
    input or output, not channel-strided (``strided``), in runs whose bands are whole rows
    of h. ``rings`` gets the ring's bands of each that a gather reads (its table's)."""
    plan = p.plan
    out: dict[str, int] = {}
    for calls, s, e, lags, rows in _planned_runs(p, l2):
        access = _access(p, calls)
        mine = []
        for r, uses in access.items():
            if r in plan.inputs or r in strided or r not in p.buffers or \
                    any(plan.storage_root(o) == r for o in plan.outputs):
                continue
            if all(s <= ci < e and _in_band(calls[ci], ai) for ci, ai in uses):
                out[r] = rows
                mine.append(r)
        if rings is not None:
            gathered = [r for r in mine if any(calls[ci].band.halo == GATHER_HALO
                                               for ci, _ in access[r])]
            rings.update(_rings(calls, access, s, e, lags, rows, gathered))
    return out


def _in_band(call, ai: int) -> bool:
    """Whether arg ``ai`` of a run's ``call`` may be a band-major tensor: a conv's output or
    residual, a 1x1 conv's x (a 3x3 conv's x rows are read beside its output rows: NCHW
    planes), a gather's x (its table knows the ring)."""
    halo = call.band.halo
    if halo == GATHER_HALO:
        return ai == TG.G_X
    return halo >= 0 and (ai in (E_.A_OUT, E_.A_RES) or ai == E_.A_X and halo == 0)


def run_tensors(p, l2: int) -> set[str]:
    """The tensors the calls of ``p``'s band runs touch (the runs band_layout plans on): the
    lowering keeps them out of the tile-major layout (native.lower.TILE_MAJOR), whose
    tiles are not whole rows, so the runs stay."""
    return {_root(p.plan, a.name) for calls, s, e, _, _ in _planned_runs(p, l2)
            for c in calls[s:e] for a in c.args if a.kind == "tensor"}


def _planned_runs(p, l2: int):
    """The runs [s, e) of ``p``'s head (its calls with the gathers moved up: _ordered) that
    band in rows a band (_plan_run), whole rows of h and whole tiles a band: (calls, s, e,
    lags, rows)."""
    if not BANDS:
        return
    stop = p.tail or len(p.calls)
    calls = _ordered(p, p.calls, stop)
    for s, e in _runs(p, calls, stop):
        planned = _plan_run(p, calls, s, e, l2)
        h, w = calls[s].band.h, calls[s].band.w
        if planned is not None and not h % planned[1] and not (planned[1] * w) % 16:
            yield calls, s, e, planned[0], planned[1]


def _band_call(p, call, r0: int, r1: int, h: int, w: int, layout: dict[str, int],
               ring: dict[str, int]):
    """``call`` over output rows [r0, r1): its pointers moved on r0 rows (a band-major
    tensor's: to band r0 / rows of its ring), its tiles those of the rows (the last band
    keeps the call's own last tile, whole or part)."""
    from sparsecc.native.lower import Call, I, Slot

    args = list(call.args)
    shift = r0 * w
    for a in (E_.A_X, E_.A_OUT, E_.A_RES):
        s = args[a]
        if s.kind == "tensor":
            root = _root(p.plan, s.name)
            rows = layout.get(root)
            if rows:  # C x rows x W floats a band, a ring of ring[root] bands
                move = (r0 // rows % ring[root]) * _channels(p, root, h, w) * rows * w
            else:
                move = shift
            args[a] = Slot("tensor", lift(s.expr) + 4 * move, s.name)
    total = lift(args[E_.A_NTILES].expr).value
    first = shift // 16
    tiles = total - first if r1 >= h else (r1 * w) // 16 - first
    args[E_.A_NTILES] = I(tiles)
    args[E_.A_L] = I(lift(args[E_.A_L].expr).value - shift)
    nrb = lift(args[E_.A_NRB].expr).value
    kernel = p.kernels.get(call.kernel)
    if kernel is not None and kernel.spec is not None and kernel.spec.kcols:
        # (column blocks: an item a row block of a set of samples, each over all its tiles)
        items = lift(args[E_.A_NB].expr).cdiv(args[E_.A_GXB].expr) * nrb
    else:
        items = lift(args[E_.A_NB].expr) * (tiles * nrb)
    return Call(call.kernel, args, items, call.cost, call.scratch, None, call.op, None)


def _channels(p, root: str, h: int, w: int) -> int:
    """Channels of an (N, C, h, w) float32 tensor, from its buffer's bytes a sample."""
    return linear(p.buffers[root].nbytes)[0] // (4 * h * w)


def _gather_call(call, t0: int, t1: int):
    """A gather over its output tiles [t0, t1) (native.tmgather's first-tile arg)."""
    from sparsecc.native.lower import Call, I

    args = list(call.args)
    args[TG.G_T], args[TG.G_T0] = I(t1 - t0), I(t0)
    items = lift(args[TG.G_N].expr).cdiv(args[TG.G_B].expr) * (t1 - t0)
    return Call(call.kernel, args, items, call.cost, call.scratch, None, call.op, None)


def band_calls(p, stop: int, l2: int, layout: dict[str, int],
               rings: dict[str, int] | None = None) -> int:
    """Rewrite the runs of p.calls[:stop] that hold a band-major tensor (``layout``,
    band_layout's) into bands. The program then runs its head one sample at a time on one
    thread only (Program.alt_head runs the rest). Every buffer live during a run is kept live
    over all of it (no arena reuse between bands in flight); a band-major tensor only the
    run touches shrinks to a ring of the bands between its write and its last read. Returns
    how many calls were added (the caller moves indices after ``stop`` by that many). A
    gather of a band-major tensor joins its run (_ordered), its ring the length ``rings``
    gives (band_layout's, which its table assumed)."""
    if not BANDS or not layout:
        return 0
    plan = p.plan
    calls = _ordered(p, p.calls, stop, layout)
    access = _access(p, calls)
    out, pos, added = [], 0, 0
    made: set[int] = set()
    for s, e in list(_runs(p, calls, stop)):
        planned = _plan_run(p, calls, s, e, l2)
        run = calls[s:e]
        roots = {r for r, uses in access.items() if any(s <= ci < e for ci, _ in uses)}
        if planned is None or not roots & set(layout):
            continue
        lags, rows = planned
        if any(layout.get(r, rows) != rows for r in roots):
            raise AssertionError(f"band-major tensors of {sorted(roots & set(layout))}: not "
                                 f"{rows} rows a band")
        h, w = run[0].band.h, run[0].band.w
        ring = _rings(calls, access, s, e, lags, rows, roots & set(layout))
        for r in roots & set(layout):
            given = (rings or {}).get(r)
            if any(calls[ci].band.halo == GATHER_HALO for ci, _ in access[r]) and \
                    given != ring.get(r):
                raise AssertionError(f"{r}: a ring of {ring.get(r)} bands, its gather's "
                                     f"table assumed {given}")
        out += calls[pos:s]
        pos = e
        new = [c for c in run if c.band.halo == -1]  # zero rows first
        last_of: dict[int, list] = {}  # and again after their planes' last band
        for k, c in enumerate(run):
            if c.band.halo == -1:
                planes = _root(plan, c.args[0].name)
                j = max((j for j in range(k) if run[j].band.halo >= 0 and
                         _root(plan, run[j].args[E_.A_OUT].name) == planes), default=None)
                if j is not None:
                    last_of.setdefault(j, []).append(c)
        steps = -(-(h + max(lags)) // rows)
        gathers = {k: _gather_steps(c.band, rows, lags[k]) for k, c in enumerate(run)
                   if c.band.halo == GATHER_HALO}
        for step in range(steps):
            for k, c in enumerate(run):
                if c.band.halo == -1:
                    continue
                if k in gathers:
                    if step in gathers[k]:
                        new.append(_gather_call(c, *gathers[k][step][1:]))
                    continue
                r0, r1 = _window(step, rows, lags[k], h)
                if r1 <= r0:
                    continue
                new.append(_band_call(p, c, r0, r1, h, w, layout, ring))
                if r1 >= h:
                    new += last_of.get(k, [])
        made.update(id(c) for c in new)
        labelled = set()
        for k, c in enumerate(run):  # (the report's kernel column)
            if c.band.halo == -1 or c.op not in p.labels or c.op in labelled:
                continue
            labelled.add(c.op)
            p.labels[c.op] += " (x gathered in the row bands that write it)" \
                if c.band.halo == GATHER_HALO else \
                f" in row bands of {rows} rows ({lags[k]} behind)"
        out += new
        added += len(new) - len(run)
        ops = [c.op for c in run]
        lo, hi = min(ops), max(ops)
        for b in p.buffers.values():
            if b.first <= hi and b.last >= lo:
                b.first, b.last = min(b.first, lo), max(b.last, hi)
                # (a residual sum over its addend, lower.RES_IN_PLACE: a band of the sum
                # would overwrite rows a 3x3 conv's later band still reads)
                b.share = ""
        for r, k in ring.items():  # (band_layout's tensors: never a model input or output)
            p.buffers[r].nbytes = k * _channels(p, r, h, w) * rows * w * 4 * N
    p.calls = out + calls[pos:]
    for c in p.calls:  # a band-major tensor is only ever touched a band at a time
        if id(c) not in made and any(s.kind == "tensor" and _root(plan, s.name) in layout
                                     for s in c.args):
            raise AssertionError(f"band-major tensor outside its band run: {c.kernel} (op {c.op})")
    return added
