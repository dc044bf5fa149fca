"""Program -> object code: the model's ``run`` and every kernel it calls, over one thread pool.

The main module (small: built per model) holds, as LLVM IR:

* ``<p>_run(weights, arena, argspace, N, inputs, outputs, threads) -> i32``: fills each call's
  args block from N (every slot an expression in N) and runs the call through ``pfor``;
  returns 0, or 1 when a kernel flagged bad input (an embedding index out of range);
* ``<p>_arena_bytes(N, threads)`` and ``<p>_argspace_slots()``;
* ``pfor``: a parallel-for over libgomp's pool (``GOMP_parallel``; items handed out through an
  atomic counter in guided chunks); calls too small to pay for waking the pool run on the
  caller;
* the GEMM kernels (``gemm.py``) at the specs the model uses; everything but the entry
  points internal.

The numba kernels are one object of their own, built once per machine (``kernels_texts``),
and each sparse kernel is one too (the LLVM kernel cache's, per spec and pattern: specialised
ones are built without the IR optimiser, which would take seconds per layer).
"""

from __future__ import annotations

import re

import numpy as np
from llvmlite import ir

from sparsecc.codegen.llvm import emit as E_
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.native import kernels as NK
from sparsecc.native.expr import E, N, numel
from sparsecc.native.lower import Program

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
P8, P64 = I8.as_pointer(), I64.as_pointer()
KFN = E_.KERNEL_TYPE
# Below this many (rough) flops a call runs on the calling thread. libgomp's fork/join costs
# ~1 us here (its workers spin between regions): MNIST CNN at batch 1 took 84 us with
# 30 000, 78 with 8 000, 76 with 2 000.
SERIAL_FLOPS = 4_000
# pfor hands out guided chunks (the rest / (GUIDE x threads), at least 1) instead of a fixed
# grain of items / (4 x threads): the fixed grain left up to a chunk's imbalance at the end of
# each region (ResNet-18 at 90 %, 51 items in chunks of 6: some convs 5-7 % slower than on
# the executor's static split). Same process, batch 1: ResNet-18 6.95 -> 6.84 ms (uniform),
# 13.36 -> 13.09 (global), MobileNetV2 2.84 -> 2.78, MLP 0.318 -> 0.305, MiniLM 4.15 ->
# 4.11; batch 16 level.
GUIDE = 2
# Head segments take their chunks in alternating directions (_segment_reversed).
SERPENTINE = True
# Symbols the library may leave to the loader: libm, libc's memory functions, libgomp.
ALLOWED_EXTERNALS = re.compile(
    r"^(GOMP_parallel|omp_get_thread_num|memcpy|memset|memmove|"
    r"(exp|log|tanh|sqrt|erf|erfc|pow|sin|cos|expm1|log1p)f?)$")


def main_ir(prog: Program, prefix: str, weight_offsets: dict[str, int]) -> str:
    mod = ir.Module(name=f"{prefix}_main")
    kernels = {}
    for sym, k in prog.kernels.items():
        if k.kind == "ir":
            k.ir_spec.emit(mod, f"{prefix}_{sym}")
            fn = mod.globals[f"{prefix}_{sym}"]
        elif k.kind == "numba":
            fn = ir.Function(mod, KFN, kernel_symbol(sym))
        else:
            fn = ir.Function(mod, KFN, sparse_symbol(prefix, k))
        kernels[sym] = fn
    pfor = _emit_pfor(mod, prefix)
    team = _emit_team(mod, prefix, pfor)
    _emit_run(mod, prefix, prog, kernels, pfor, team, weight_offsets)
    _emit_sizes(mod, prefix, prog)
    return ES.module_text(mod)


def sparse_symbol(prefix: str, k) -> str:
    return f"{prefix}_{k.symbol}"


def kernel_symbol(name: str) -> str:
    """A numba kernel's entry point (the common ABI) in the kernels object."""
    return f"sparsecc_nk_{name}"


def _inner_symbol(name: str) -> str:
    # numba's mangled name is only known once numba compiled the kernel; renamed, the main
    # module can call it without compiling anything
    return f"sparsecc_nki_{name}"


def kernels_key() -> str:
    return "numba-kernels|" + NK.source_hash() + "|" + ",".join(sorted(NK.KERNELS))


def kernels_exports() -> list[str]:
    return [kernel_symbol(n) for n in sorted(NK.KERNELS)]


def kernels_texts() -> list[str]:
    """Every numba kernel's IR (compiles them) and a module of their ABI entry points: the
    kernels object, built once per machine and shared by every model's library."""
    mod = ir.Module(name="sparsecc_numba_kernels")
    texts = []
    for name in sorted(NK.KERNELS):
        kir = NK.kernel_ir(name)
        texts.append(re.sub(r'@"?' + re.escape(kir.inner) + r'"?(?=\()',
                            "@" + _inner_symbol(name), kir.text))
        inner = ir.Function(mod, ir.FunctionType(I32, [P8, P8, I64, I64, P64]),
                            _inner_symbol(name))
        fn = ir.Function(mod, KFN, kernel_symbol(name))
        fn.attributes.add("nounwind")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        ret = b.alloca(I64)
        exc = b.alloca(P8)
        b.call(inner, [b.bitcast(ret, P8), b.bitcast(exc, P8), *fn.args])
        b.ret_void()
    return [str(mod)] + texts


def _too_small(b, items: ir.Value, cost: ir.Value) -> ir.Value:
    """Whether a call is not worth sharing between threads: one item, or under SERIAL_FLOPS
    (pfor runs it on the caller, the team as one part)."""
    return b.or_(b.icmp_signed("<=", items, I64(1)),
                 b.icmp_signed("<", b.mul(items, cost), I64(SERIAL_FLOPS)))


def _omp_thread_num(mod: ir.Module) -> ir.Function:
    return mod.globals.get("omp_get_thread_num") or ir.Function(
        mod, ir.FunctionType(I32, []), "omp_get_thread_num")


def _emit_pfor(mod: ir.Module, prefix: str) -> ir.Function:
    """pfor(fn, args, items, cost, threads): fn over [0, items) on ``threads`` threads."""
    ctx_t = ir.LiteralStructType([KFN.as_pointer(), P64, I64, I64, I64])
    worker_t = ir.FunctionType(ir.VoidType(), [P8])
    gomp = ir.Function(mod, ir.FunctionType(ir.VoidType(), [worker_t.as_pointer(), P8, I32, I32]),
                       "GOMP_parallel")
    worker = ir.Function(mod, worker_t, f"{prefix}_pfor_worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    ctx = b.bitcast(worker.args[0], ctx_t.as_pointer())

    def field(i):
        return b.gep(ctx, [I32(0), I32(i)], inbounds=True)

    # Items handed out through an atomic counter, not split statically: with a static split
    # one descheduled thread stalls the region (another process on one of the 2 cores made a
    # ResNet-50 call 6.7x slower that way; dynamic hand-out let the other thread take over).
    fnp, args, items, parts = (b.load(field(i)) for i in range(4))
    counter = field(4)
    head = worker.append_basic_block("head")
    take = worker.append_basic_block("take")
    body = worker.append_basic_block("body")
    done = worker.append_basic_block("done")
    b.branch(head)
    b.position_at_end(head)
    # guided: a chunk is the rest / parts (GUIDE x threads), at least 1, taken by
    # compare-and-swap: big chunks first, single items at the end
    start = b.load_atomic(counter, "monotonic", 8)
    chunk = b.sdiv(b.sub(items, start), parts)
    chunk = b.select(b.icmp_signed("<", chunk, I64(1)), I64(1), chunk)
    b.cbranch(b.icmp_signed("<", start, items), take, done)
    b.position_at_end(take)
    pair = b.cmpxchg(counter, start, b.add(start, chunk), "monotonic", "monotonic")
    b.cbranch(b.extract_value(pair, 1), body, head)
    b.position_at_end(body)
    b.call(fnp, [start, b.add(start, chunk), args])  # (chunk <= items - start)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()

    pfor = ir.Function(mod, ir.FunctionType(ir.VoidType(), [KFN.as_pointer(), P64, I64, I64,
                                                            I32]), f"{prefix}_pfor")
    pfor.linkage = "internal"
    fn, args, items, cost, threads = pfor.args
    b = ir.IRBuilder(pfor.append_basic_block("entry"))
    serial = pfor.append_basic_block("serial")
    par = pfor.append_basic_block("parallel")
    out = pfor.append_basic_block("out")
    nothing = b.icmp_signed("<=", items, I64(0))
    few = b.or_(b.icmp_signed("<=", threads, I32(1)), _too_small(b, items, cost))
    b.cbranch(nothing, out, pfor.append_basic_block("go"))
    b.position_at_end(pfor.blocks[-1])
    b.cbranch(few, serial, par)
    b.position_at_end(serial)
    b.call(fn, [I64(0), items, args])
    b.branch(out)
    b.position_at_end(par)
    ctx = b.alloca(ctx_t)
    t64 = b.sext(threads, I64)
    for i, v in enumerate((fn, args, items, b.mul(t64, I64(GUIDE)), I64(0))):
        b.store(v, b.gep(ctx, [I32(0), I32(i)], inbounds=True))
    b.call(gomp, [worker, b.bitcast(ctx, P8), threads, I32(0)])
    b.branch(out)
    b.position_at_end(out)
    b.ret_void()
    return pfor


# A run's schedule: per call (fn, args block, items, cost per item), i64 each (see _emit_team).
SCHED_FN, SCHED_ARGS, SCHED_ITEMS, SCHED_COST = range(4)
SCHED_SLOTS = 4
# The team's per-call counters (parts taken, items done) sit a cache line apart.
LINE = 8


def _sched_entry(b, sched: ir.Value, k: ir.Value) -> tuple[ir.Value, ...]:
    """(kernel, args block, items, cost per item) of call ``k`` of a schedule."""
    e = b.gep(sched, [b.mul(k, I64(SCHED_SLOTS))], inbounds=True)
    fn, args, items, cost = (b.load(b.gep(e, [I64(j)])) for j in
                             (SCHED_FN, SCHED_ARGS, SCHED_ITEMS, SCHED_COST))
    return b.inttoptr(fn, KFN.as_pointer()), b.inttoptr(args, P64), items, cost


# The team's hand-out: a call's items in threads x PARTS_PER_THREAD equal parts (at most 64).
# 8 against 4, same process, both core placements: MLP b1 3 % faster, MobileNetV2 2-4 %,
# ResNet-50 1 %, MNIST CNN 2 % slower near / level apart.
PARTS_PER_THREAD = 8


def _take_parts(b, fn, fnp, args, items, nparts, tid, taken, finished, jp) -> None:
    """Run parts of one call: thread ``tid``'s own parts first (tid*S .. tid*S+S-1: the same
    share of every call, so for a conv the same pixel tiles, and the next layer reads what
    this core wrote), then any part nobody took yet, last first (a late or descheduled
    thread's share goes to the other). A part is taken by setting its bit in ``taken``
    (atomic or); ``finished`` counts the items done."""
    S = PARTS_PER_THREAD
    b.store(I64(0), jp)
    head, body, try_, run, nxt, out = (fn.append_basic_block(f"part_{n}") for n in
                                       ("head", "body", "try", "run", "next", "out"))
    total = b.add(nparts, I64(S))  # S own parts, then every part
    b.branch(head)
    b.position_at_end(head)
    j = b.load(jp)
    b.cbranch(b.icmp_signed("<", j, total), body, out)
    b.position_at_end(body)
    p = b.select(b.icmp_signed("<", j, I64(S)), b.add(b.mul(tid, I64(S)), j),
                 b.sub(b.sub(total, j), I64(1)))
    valid = b.icmp_signed("<", p, nparts)
    bit = b.shl(I64(1), b.select(valid, p, I64(0)))
    b.cbranch(valid, try_, nxt)
    b.position_at_end(try_)
    old = b.atomic_rmw("or", taken, bit, "monotonic")
    b.cbranch(b.icmp_unsigned("==", b.and_(old, bit), I64(0)), run, nxt)
    b.position_at_end(run)
    lo = b.sdiv(b.mul(p, items), nparts)
    hi = b.sdiv(b.mul(b.add(p, I64(1)), items), nparts)
    with b.if_then(b.icmp_signed("<", lo, hi)):
        b.call(fnp, [lo, hi, args])
    b.atomic_rmw("add", finished, b.sub(hi, lo), "release")
    b.branch(nxt)
    b.position_at_end(nxt)
    b.store(b.add(j, I64(1)), jp)
    b.branch(head)
    b.position_at_end(out)


def _emit_team(mod: ir.Module, prefix: str, pfor: ir.Function) -> ir.Function:
    """team(sched, ncalls, threads): every call of the schedule in order in **one** parallel
    region per run (pfor opens one per call). Each thread walks the calls. A call's items go
    out in threads x 8 equal parts, each thread first taking its own (``_take_parts``: the
    same share of every call, so a core reads the activations it wrote itself), then any
    part left; a thread moves on to the next call once every item of this one is *done* (a
    counter of finished items, waited on with pause), not once every thread arrived: a
    thread that is not running does not hold up the calls the other can do alone (it takes
    the late one's parts; the late one finds them done and catches up), only the region's
    end waits for it, once a run instead of once a call. A call too small to share (pfor's
    rule) is one part. One thread: the calls through pfor, on the caller.

    Same process, batch 1, 2 threads, builds interleaved, the core round trip probed each
    round (native/probe.py). A region per call with guided chunks (as pfor) against a region
    per op, 56 rounds: MNIST CNN 0.076 -> 0.072 ms, MobileNetV2 2.42 -> 2.37, MiniLM 3.96 ->
    3.91, ResNet-50 13.34 -> 13.27, the MLP's 3 calls 0.764 -> 0.786. Own parts first
    against guided chunks, 68 rounds, vCPUs near (60-90 ns) / apart (350-390 ns): ResNet-50
    13.45 -> 12.97 / 26.97 -> 22.04 ms, ResNet-18 6.84 -> 6.72 / 11.76 -> 10.32, MobileNetV2
    2.45 -> 2.42 / 6.02 -> 5.33, MiniLM 4.00 -> 3.79 / 8.07 -> 6.67, MNIST CNN 0.072 ->
    0.067 / 0.152 -> 0.130 (4 parts a thread there). With a real-time busy loop on the
    second core (the worker's core taken away; guided chunks): MNIST 24-80 -> 8 ms a call
    with the region per run, MLP 24 -> 8, MiniLM 8 (400 at times) -> 12, MobileNetV2 6 -> 12:
    each region start or end that needs the moved-away worker costs a scheduler tick."""
    ctx_t = ir.LiteralStructType([P64, I64, P64, I64])  # sched, ncalls, counters, nparts
    worker_t = ir.FunctionType(ir.VoidType(), [P8])
    gomp = mod.globals["GOMP_parallel"]
    worker = ir.Function(mod, worker_t, f"{prefix}_team_worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    ctx = b.bitcast(worker.args[0], ctx_t.as_pointer())
    sched, ncalls, counters, nparts_all = (
        b.load(b.gep(ctx, [I32(0), I32(i)], inbounds=True)) for i in range(4))
    tid = b.sext(b.call(_omp_thread_num(mod), []), I64)
    kp = b.alloca(I64)
    b.store(I64(0), kp)
    jp = b.alloca(I64)
    head = worker.append_basic_block("call")
    claim = worker.append_basic_block("claim")
    wait = worker.append_basic_block("wait")
    nxt = worker.append_basic_block("next")
    done = worker.append_basic_block("done")
    b.branch(head)
    b.position_at_end(head)
    k = b.load(kp)
    b.cbranch(b.icmp_signed("<", k, ncalls), claim, done)
    b.position_at_end(claim)
    fnp, args, items, cost = _sched_entry(b, sched, k)
    line = b.gep(counters, [b.mul(k, I64(LINE))], inbounds=True)
    taken, finished = line, b.gep(line, [I64(1)], inbounds=True)
    nparts = b.select(_too_small(b, items, cost), I64(1), nparts_all)
    _take_parts(b, worker, fnp, args, items, nparts, tid, taken, finished, jp)
    b.branch(wait)
    # every item handed out: wait until all are done
    b.position_at_end(wait)
    got = b.load_atomic(finished, "acquire", 8)
    spin = worker.append_basic_block("spin")
    b.cbranch(b.icmp_signed(">=", got, items), nxt, spin)
    b.position_at_end(spin)
    b.call(mod.declare_intrinsic("llvm.x86.sse2.pause", (), ir.FunctionType(ir.VoidType(), [])),
           [])
    b.branch(wait)
    b.position_at_end(nxt)
    b.store(b.add(k, I64(1)), kp)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()

    team = ir.Function(mod, ir.FunctionType(ir.VoidType(), [P64, I64, I32]), f"{prefix}_team")
    team.linkage = "internal"
    sched, ncalls, threads = team.args
    b = ir.IRBuilder(team.append_basic_block("entry"))
    one = team.append_basic_block("one")
    par = team.append_basic_block("parallel")
    look = team.append_basic_block("look")
    # a run whose every call is too small to share stays on the caller: the region's fork
    # and join alone cost ~0.7 us (the Linear(8,8) MLP from C: 0.80 -> 0.10 us a call)
    kq = b.alloca(I64)
    b.store(I64(0), kq)
    b.cbranch(b.icmp_signed("<=", threads, I32(1)), one, look)
    b.position_at_end(look)
    k = b.load(kq)
    small = team.append_basic_block("small")
    b.cbranch(b.icmp_signed("<", k, ncalls), small, one)
    b.position_at_end(small)
    _, _, items, cost = _sched_entry(b, sched, k)
    b.store(b.add(k, I64(1)), kq)
    b.cbranch(_too_small(b, items, cost), look, par)
    b.position_at_end(one)
    kp = b.alloca(I64)
    b.store(I64(0), kp)
    head = team.append_basic_block("head")
    step = team.append_basic_block("step")
    out = team.append_basic_block("out")
    b.branch(head)
    b.position_at_end(head)
    k = b.load(kp)
    b.cbranch(b.icmp_signed("<", k, ncalls), step, out)
    b.position_at_end(step)
    b.call(pfor, [*_sched_entry(b, sched, k), threads])
    b.store(b.add(k, I64(1)), kp)
    b.branch(head)
    b.position_at_end(out)
    b.ret_void()
    b.position_at_end(par)
    counters = b.alloca(I64, b.mul(ncalls, I64(LINE)))
    memset = mod.declare_intrinsic("llvm.memset", [P8, I64])
    b.call(memset, [b.bitcast(counters, P8), I8(0), b.mul(ncalls, I64(8 * LINE)),
                    ir.Constant(ir.IntType(1), 0)])
    c = b.alloca(ctx_t)
    nparts = b.mul(b.sext(threads, I64), I64(PARTS_PER_THREAD))
    nparts = b.select(b.icmp_signed(">", nparts, I64(64)), I64(64), nparts)
    for i, v in enumerate((sched, ncalls, counters, nparts)):
        b.store(v, b.gep(c, [I32(0), I32(i)], inbounds=True))
    b.call(gomp, [worker, b.bitcast(c, P8), threads, I32(0)])
    b.ret_void()
    return team


RUN_TYPE = ir.FunctionType(I32, [P8, P8, P64, I64, P8.as_pointer(), P8.as_pointer(), I32, P64])


def _thread_area(b, prog: Program, c: ir.Value, tail: bool = False) -> ir.Value:
    """Bytes of arena one thread needs to run a chunk of ``c`` samples on its own: the chunk's
    activations (the head's, or with ``tail`` the tail's), one thread's scratch, its args
    blocks (the body's argspace), 64-byte aligned."""
    a0, b0 = prog.tail_arena if tail else prog.arena
    fixed = b0 + 4 * prog.scratch_per_thread + 64 + 64 + 8 * prog.argspace_slots + 63
    return b.and_(b.add(b.mul(c, I64(a0)), I64(fixed)), I64(-64))


def _sample_chunk(b, prog: Program, n: ir.Value) -> ir.Value:
    """Samples per chunk for a batch of ``n``: n / Program.split (two chunks a thread of the
    machine, taken off a counter) within [min_chunk, chunk]. It depends on n alone, never on
    the threads a call gets, so a batch sums in the same order on 1 thread or 2 (the adaptive
    thread choice may not change results)."""
    c = b.sdiv(n, I64(prog.split))
    c = b.select(b.icmp_signed("<", c, I64(prog.min_chunk)), I64(prog.min_chunk), c)
    return b.select(b.icmp_signed(">", c, I64(prog.chunk)), I64(prog.chunk), c)


def _chunked(b, prog: Program, n: ir.Value) -> ir.Value:
    """Whether a batch of ``n`` runs in chunks: more than one chunk's worth of samples, or
    enough for split chunks of min_chunk."""
    return b.or_(b.icmp_signed(">", n, I64(prog.chunk)),
                 b.icmp_signed(">=", n, I64(prog.split * prog.min_chunk)))


def _sample_parallel(b, prog: Program, n: ir.Value, c: ir.Value,
                     threads: ir.Value) -> ir.Value:
    """Whether the chunks of ``c`` samples run sample-parallel: more than one thread, two
    chunks a thread at least (see _emit_chunks)."""
    many = b.icmp_signed(">=", n, b.mul(b.sext(threads, I64), b.mul(c, I64(2))))
    return b.and_(many, b.icmp_signed(">", threads, I32(1)))


def _tail_chunk(b, prog: Program, n: ir.Value) -> ir.Value:
    """Samples per chunk of the tail's batch (Program.tail_chunks): n split as evenly as
    whole chunks allow, by the build's thread count, never the call's (see _sample_chunk)."""
    k = I64(prog.tail_chunks)
    return b.sdiv(b.add(n, b.sub(k, I64(1))), k)


def _tail_chunked(b, prog: Program, n: ir.Value) -> ir.Value:
    """Whether the tail's batch of ``n`` runs in chunks: TAIL_MIN_CHUNK samples a chunk at
    least."""
    return b.icmp_signed(">=", n, I64(prog.tail_chunks * prog.tail_min_chunk))


def _io_arrays(b, sample_bytes) -> tuple[ir.Value, ir.Value]:
    """Stack arrays for a chunk's input and output pointers: made once, in the function's
    entry block (an alloca in the chunk loop would grow the stack chunk after chunk)."""
    in_bytes, out_bytes = sample_bytes
    entry = b.function.entry_basic_block
    with b.goto_block(entry):
        b.position_at_start(entry)
        return b.alloca(P8, len(in_bytes) or 1), b.alloca(P8, len(out_bytes) or 1)


def _step_io(b, sample_bytes, ins, outs, c, arrays) -> tuple[ir.Value, ir.Value]:
    """Fill ``arrays`` with the input and output pointers of the chunk starting at sample
    ``c``."""
    in_bytes, out_bytes = sample_bytes
    ins_c, outs_c = arrays
    for src, dst, sizes in ((ins, ins_c, in_bytes), (outs, outs_c, out_bytes)):
        for k, size in enumerate(sizes):
            p = b.load(b.gep(src, [I64(k)], inbounds=True))
            b.store(b.gep(p, [b.mul(c, I64(size))]), b.gep(dst, [I64(k)], inbounds=True))
    return ins_c, outs_c


def _emit_chunks(mod, prefix: str, prog: Program, body: ir.Function, name: str,
                 sample_bytes, plain: ir.Function | None = None,
                 tail: bool = False, reverse: bool = False) -> ir.Function:
    """``run`` (or, with a tail, the head's driver ``name``) when the batch may be split
    (Program.chunk); ``sample_bytes``: the body's bytes a sample of each input and output.

    * Too few samples to split (``_chunked``): the body once.
    * Else chunks of ``_sample_chunk`` samples. Enough of them for every thread (>= 2 each)
      and no profiling: **sample-parallel**, each thread takes chunks off an atomic counter
      and runs the whole model on them alone, in its own share of the arena (no barrier
      between layers: a descheduled thread delays only its own chunk, and each core reads
      the activations it wrote; layer-by-layer splits ran 1.5-2.5x slower whenever the host
      placed the vCPUs on different CCDs, see native/probe.py).
    * Otherwise the chunks one after another, each on every thread.
    Profiled sample-parallel (``times``), each thread counts its calls' cycles on its own
    and adds its counts / threads to ``times`` at the end: an op's share of the wall time.
    The first nonzero error flag of a chunk is returned.

    ``plain`` (a program with row bands, native.bands; its chunks are one sample): the body
    without them, run where the body would be shared between threads (bands there meet after
    every band); the banded body runs wherever a call has one thread.

    With ``tail``, the whole-batch tail's driver (Program.tail_chunks): the batch in that
    many chunks (_tail_chunk), one a thread when the call has threads for them.

    With ``reverse``, the same chunks taken last first (a head segment whose boundary
    tensors the segment or tail after it reads: see _segment_reversed)."""
    fn = ir.Function(mod, RUN_TYPE, name)
    weights, arena, argspace, n, ins, outs, threads, times = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    whole = fn.append_basic_block("whole")
    split = fn.append_basic_block("split")
    shared = body if plain is None else \
        b.select(b.icmp_signed(">", threads, I32(1)), plain, body)  # (see plain above)
    b.cbranch(_tail_chunked(b, prog, n) if tail else _chunked(b, prog, n), split, whole)
    b.position_at_end(whole)
    b.ret(b.call(shared, list(fn.args)))
    b.position_at_end(split)
    chunk = _tail_chunk(b, prog, n) if tail else _sample_chunk(b, prog, n)
    par = fn.append_basic_block("parallel")
    serial = fn.append_basic_block("serial")
    b.cbranch(b.and_(b.icmp_signed(">", threads, I32(1)), b.icmp_signed(">", n, chunk))
              if tail else _sample_parallel(b, prog, n, chunk, threads), par, serial)

    b.position_at_end(par)
    ctx_t = ir.LiteralStructType([P8, P8, I64, P8.as_pointer(), P8.as_pointer(), I64, I64,
                                  I64, P64, I64])
    worker_t = ir.FunctionType(ir.VoidType(), [P8])
    gomp = mod.globals.get("GOMP_parallel")
    tid_fn = _omp_thread_num(mod)
    worker = ir.Function(mod, worker_t, f"{name}_samples_worker")
    worker.linkage = "internal"
    ctx = b.alloca(ctx_t)
    for i, v in enumerate((weights, arena, n, ins, outs, I64(0), I64(0), chunk, times,
                           b.sext(threads, I64))):
        b.store(v, b.gep(ctx, [I32(0), I32(i)], inbounds=True))
    b.call(gomp, [worker, b.bitcast(ctx, P8), threads, I32(0)])
    b.ret(b.trunc(b.load(b.gep(ctx, [I32(0), I32(6)], inbounds=True)), I32))

    wb = ir.IRBuilder(worker.append_basic_block("entry"))
    wctx = wb.bitcast(worker.args[0], ctx_t.as_pointer())

    def field(i):
        return wb.gep(wctx, [I32(0), I32(i)], inbounds=True)

    w_weights, w_arena, w_n, w_ins, w_outs = (wb.load(field(i)) for i in range(5))
    w_chunk = wb.load(field(7))
    w_times, w_threads = wb.load(field(8)), wb.load(field(9))
    nops = max((c.op for c in prog.calls), default=0) + 1  # (times' length at least)
    mine_t = wb.alloca(I64, nops)  # this thread's cycles per op (profiling)
    timed = wb.icmp_unsigned("!=", wb.ptrtoint(w_times, I64), I64(0))
    memset = mod.declare_intrinsic("llvm.memset", [P8, I64])
    with wb.if_then(timed):
        wb.call(memset, [wb.bitcast(mine_t, P8), I8(0), I64(8 * nops),
                         ir.Constant(ir.IntType(1), 0)])
    body_times = wb.select(timed, mine_t, ir.Constant(P64, None))
    w_arrays = _io_arrays(wb, sample_bytes)
    tid = wb.sext(wb.call(tid_fn, []), I64)
    area = _thread_area(wb, prog, w_chunk, tail)
    mine = wb.gep(w_arena, [wb.mul(tid, area)])
    my_args = wb.bitcast(wb.gep(mine, [wb.sub(area, I64(8 * prog.argspace_slots))]), P64)
    head = worker.append_basic_block("head")
    step = worker.append_basic_block("step")
    done = worker.append_basic_block("done")
    wb.branch(head)
    wb.position_at_end(head)
    c = wb.atomic_rmw("add", field(5), w_chunk, "monotonic")
    wb.cbranch(wb.icmp_signed("<", c, w_n), step, done)
    wb.position_at_end(step)
    if reverse:
        c = _reversed_start(wb, w_n, w_chunk, c)
    left = wb.sub(w_n, c)
    nc = wb.select(wb.icmp_signed("<", left, w_chunk), left, w_chunk)
    ins_c, outs_c = _step_io(wb, sample_bytes, w_ins, w_outs, c, w_arrays)
    rc = wb.call(body, [w_weights, mine, my_args, nc, ins_c, outs_c, I32(1), body_times])
    with wb.if_then(wb.icmp_signed("!=", rc, I32(0))):
        wb.atomic_rmw("xchg", field(6), wb.zext(rc, I64), "monotonic")
    wb.branch(head)
    wb.position_at_end(done)
    add = worker.append_basic_block("add_times")
    out = worker.append_basic_block("out")
    wb.cbranch(timed, add, out)
    wb.position_at_end(add)
    i = wb.phi(I64)
    i.add_incoming(I64(0), done)
    mine_i = wb.load(wb.gep(mine_t, [i], inbounds=True))
    wb.atomic_rmw("add", wb.gep(w_times, [i], inbounds=True), wb.sdiv(mine_i, w_threads),
                  "monotonic")
    nxt = wb.add(i, I64(1))
    i.add_incoming(nxt, add)
    wb.cbranch(wb.icmp_signed("<", nxt, I64(nops)), add, out)
    wb.position_at_end(out)
    wb.ret_void()

    b.position_at_end(serial)
    arrays = _io_arrays(b, sample_bytes)
    pos = b.alloca(I64)
    b.store(I64(0), pos)
    head = fn.append_basic_block("head")
    step = fn.append_basic_block("step")
    done = fn.append_basic_block("done")
    failed = fn.append_basic_block("failed")
    b.branch(head)
    b.position_at_end(head)
    c = b.load(pos)
    b.cbranch(b.icmp_signed("<", c, n), step, done)
    b.position_at_end(step)
    b.store(b.add(c, chunk), pos)
    if reverse:
        c = _reversed_start(b, n, chunk, c)
    rest = b.sub(n, c)
    nc = b.select(b.icmp_signed("<", rest, chunk), rest, chunk)
    ins_c, outs_c = _step_io(b, sample_bytes, ins, outs, c, arrays)
    rc = b.call(shared, [weights, arena, argspace, nc, ins_c, outs_c, threads, times])
    b.cbranch(b.icmp_signed("!=", rc, I32(0)), failed, head)
    b.position_at_end(failed)
    b.ret(rc)
    b.position_at_end(done)
    b.ret(I32(0))
    return fn


def _reversed_start(b, n: ir.Value, chunk: ir.Value, k: ir.Value) -> ir.Value:
    """The first sample of the chunk taken ``k`` samples from the batch's end: the chunks are
    the forward ones ([j c, min(n, (j + 1) c))), visited last first, so every sample is
    summed with the same neighbours either way."""
    last = b.mul(b.sdiv(b.sub(n, I64(1)), chunk), chunk)
    return b.sub(last, k)


def _segment_reversed(k: int, segments: int) -> bool:
    """Whether head segment ``k`` of ``segments`` runs its chunks last first
    (SERPENTINE): the last segment does, and every other one before it. A segment's
    boundary tensors are read by the next part in the order it takes its chunks; read
    in the order they were written, the oldest (the first to leave the L3) come first,
    while in the opposite order the first reads find the newest samples still cached. The
    tail reads its batch from sample 0."""
    return SERPENTINE and (segments - 1 - k) % 2 == 0


def _emit_run(mod, prefix, prog: Program, kernels, pfor, team, weight_offsets) -> None:
    """``run``: the whole program in one part; or, when the batch may be split, a chunk body
    driven by _emit_chunks; or, with a tail (Program.tail), the head's calls in chunks, then
    the tail's over the whole batch, the tensors between them in the arena's boundary
    region (the head writes them as extra outputs, the tail reads them as extra inputs).
    A head in segments (Program.segments) runs each segment over every chunk before the
    next, the tensors between segments in the boundary region too."""
    plan = prog.plan

    def part(name, calls, arena_ab, ins_names, copy_outs, out_bases=(), entry=False,
             of=prog):
        # (of: the program whose buffers the calls address: prog, or its alt_head)
        fn, slots = _emit_part(mod, of, kernels, pfor, team, weight_offsets, name, calls,
                               arena_ab, list(ins_names), list(copy_outs), list(out_bases))
        prog.argspace_slots = max(prog.argspace_slots, slots)
        if not entry:  # called by the run function only
            fn.linkage = "internal"
        return fn

    if not prog.chunk:
        part(f"{prefix}__run", prog.calls, prog.arena, plan.inputs, plan.outputs, entry=True)
        return
    alt = prog.alt_head  # (with row bands: the head without them, for shared runs)
    if not prog.tail:
        body = part(f"{prefix}__body", prog.calls, prog.arena, plan.inputs, plan.outputs)
        plain = None if alt is None else \
            part(f"{prefix}__body_plain", alt.calls, prog.arena, plan.inputs, plan.outputs,
                 of=alt)
        _emit_chunks(mod, prefix, prog, body, f"{prefix}__run", prog.sample_bytes, plain)
        return
    tail_outs = prog.tail_outputs
    head_outs = [o for o in plan.outputs if o not in tail_outs]
    tail = part(f"{prefix}__tail", prog.calls[prog.tail:], prog.tail_arena,
                plan.inputs + prog.boundary, tail_outs)
    in_b, out_b = prog.sample_bytes
    # the head's segments (Program.segments; one without), each chunked (with segments the
    # tail writes every output: head_outs is empty, lower.head_segments)
    heads = []
    segs = _segment_calls(prog, prog.calls[:prog.tail])
    alt_segs = [None] * len(segs) if alt is None else _segment_calls(prog, alt.calls[:alt.tail])
    for k, (calls, alt_calls) in enumerate(zip(segs, alt_segs)):
        sfx = f"_s{k}" if prog.segments else ""
        body = part(f"{prefix}__body{sfx}", calls, prog.arena, plan.inputs, head_outs,
                    prog.boundary)
        plain = None if alt_calls is None else \
            part(f"{prefix}__body_plain{sfx}", alt_calls, prog.arena, plan.inputs, head_outs,
                 prog.boundary, of=alt)
        head = _emit_chunks(mod, prefix, prog, body, f"{prefix}__head{sfx}",
                            (in_b, [out_b[plan.outputs.index(o)] for o in head_outs] +
                             prog.boundary_sizes), plain,
                            reverse=_segment_reversed(k, len(segs)))
        head.linkage = "internal"
        heads.append(head)

    fn = ir.Function(mod, RUN_TYPE, f"{prefix}__run")
    weights, arena, argspace, n, ins, outs, threads, times = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    base = b.ptrtoint(arena, I64)
    rest = b.inttoptr(b.add(base, b.mul(n, I64(prog.boundary_bytes))), P8)

    def array(values):
        arr = b.alloca(P8, len(values) or 1)
        for k, v in enumerate(values):
            b.store(v, b.gep(arr, [I64(k)], inbounds=True))
        return arr

    def out(o):
        return b.load(b.gep(outs, [I64(plan.outputs.index(o))], inbounds=True))

    bnd = [b.inttoptr(b.add(base, b.mul(n, I64(off))), P8) for off in prog.boundary_offsets]
    houts = array([out(o) for o in head_outs] + bnd)
    tins = array([b.load(b.gep(ins, [I64(k)], inbounds=True))
                  for k in range(len(plan.inputs))] + bnd)
    touts = array([out(o) for o in tail_outs])
    for k, head in enumerate(heads):
        rc = b.call(head, [weights, rest, argspace, n, ins, houts, threads, times])
        failed = fn.append_basic_block(f"failed{k}")
        go = fn.append_basic_block(f"next{k}")
        b.cbranch(b.icmp_signed("!=", rc, I32(0)), failed, go)
        b.position_at_end(failed)
        b.ret(rc)
        b.position_at_end(go)
    if prog.tail_chunks > 1:
        tail = _emit_chunks(mod, prefix, prog, tail, f"{prefix}__tail_chunks",
                            (in_b + prog.boundary_sizes,
                             [out_b[plan.outputs.index(o)] for o in tail_outs]), tail=True)
        tail.linkage = "internal"
    b.ret(b.call(tail, [weights, rest, argspace, n, tins, touts, threads, times]))


def _segment_calls(prog: Program, calls: list) -> list[list]:
    """The head's calls split at Program.segments' ops (lower.head_segments cuts only where
    every call before a cut belongs to an op before it)."""
    out, cur = [], []
    cuts = list(prog.segments)
    for c in calls:
        while cuts and c.op >= cuts[0]:
            out.append(cur)
            cur = []
            cuts.pop(0)
        cur.append(c)
    out.append(cur)
    return out


def _emit_part(mod, prog: Program, kernels, pfor, team, weight_offsets, name: str, calls,
               arena_ab: tuple[int, int], ins_names: list[str], copy_outs: list[str],
               out_bases: list[str]) -> tuple[ir.Function, int]:
    """One run-typed function over ``calls``: fills every call's args block and schedule
    entry from N, then runs the schedule: in one team region (_emit_team), or call by call
    through pfor when profiling (cycles per op). Tensors named in ``ins_names`` are read
    from the inputs array, those in ``out_bases`` live at outputs[len(copy_outs) + k];
    ``copy_outs`` are copied out at the end; other buffers sit in the arena (their part's
    offsets), the per-thread scratch after ``arena_ab``. Returns the function and its
    argspace slots."""
    fn = ir.Function(mod, RUN_TYPE, name)
    weights, arena, argspace, n, ins, outs, threads, times = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cycles = mod.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))
    timed = b.icmp_unsigned("!=", b.ptrtoint(times, I64), I64(0))
    memo: dict = {}
    plan = prog.plan
    scratch_a, scratch_b = arena_ab

    def ev(e: E) -> ir.Value:
        return e.emit(b, n, memo)

    def addr(base: ir.Value, off: ir.Value) -> ir.Value:
        return b.add(b.ptrtoint(base, I64), off)

    bases: dict[str, ir.Value] = {}

    def tensor_base(name: str) -> ir.Value:
        """The address of a tensor's storage (arena, or the caller's input) as i64."""
        root = plan.storage_root(name) if name in plan.tensors else name  # or a temporary
        if root in bases:
            return bases[root]
        if root in plan.constants:
            v = addr(weights, I64(weight_offsets[root]))
        elif root in ins_names:
            p = b.load(b.gep(ins, [I64(ins_names.index(root))], inbounds=True))
            v = b.ptrtoint(p, I64)
        elif root in out_bases:
            k = len(copy_outs) + out_bases.index(root)
            v = b.ptrtoint(b.load(b.gep(outs, [I64(k)], inbounds=True)), I64)
        else:
            buf = prog.buffers[root]
            oa, ob = buf.offset
            v = addr(arena, ev(N * oa + ob + buf.lead))
        bases[root] = v
        return v

    b.store(I64(0), argspace)  # slot 0: the error flag kernels may set
    err_addr = b.ptrtoint(argspace, I64)
    ncalls = len(calls)
    sched = b.alloca(I64, ncalls * SCHED_SLOTS or 1)
    scratch_addr = addr(arena, ev(N * scratch_a + scratch_b))
    pos = 1
    for ci, call in enumerate(calls):
        block = b.gep(argspace, [I64(pos)], inbounds=True)
        entry = [b.gep(sched, [I64(ci * SCHED_SLOTS + j)], inbounds=True)
                 for j in range(SCHED_SLOTS)]
        b.store(b.ptrtoint(kernels[call.kernel], I64), entry[SCHED_FN])
        b.store(b.ptrtoint(block, I64), entry[SCHED_ARGS])
        b.store(I64(max(1, int(call.cost))), entry[SCHED_COST])
        b.store(I64(0), entry[SCHED_ITEMS])  # a call whose only_if fails runs no item
        values = []
        for slot in call.args:
            if slot.kind == "int":
                values.append(ev(slot.expr))
            elif slot.kind == "tensor":
                values.append(b.add(tensor_base(slot.name), ev(slot.expr)))
            elif slot.kind == "weight":
                values.append(addr(weights, I64(weight_offsets[slot.name])))
            elif slot.kind == "scratch":
                values.append(scratch_addr)
            elif slot.kind == "threads":
                values.append(b.sext(threads, I64))
            elif slot.kind == "err":
                values.append(err_addr)
            else:
                raise ValueError(slot.kind)
        run_it = None
        if call.only_if:
            run_it = ir.Constant(ir.IntType(1), 1)
            for e, op, v in call.only_if:
                run_it = b.and_(run_it, b.icmp_signed(op, ev(e), I64(v)))
            then = fn.append_basic_block("call")
            after = fn.append_basic_block("after")
            b.cbranch(run_it, then, after)
            b.position_at_end(then)
            memo_before = dict(memo)
            bases_before = dict(bases)
        for i, v in enumerate(values):
            b.store(v, b.gep(block, [I64(i)], inbounds=True))
        b.store(ev(call.items), entry[SCHED_ITEMS])
        if run_it is not None:
            b.branch(after)
            b.position_at_end(after)
            memo.clear()
            memo.update(memo_before)  # values computed in the branch do not dominate here
            bases.clear()
            bases.update(bases_before)
        pos += len(call.args)
    # run the schedule: one team region; profiling: call by call, cycles per op
    prof = fn.append_basic_block("profile")
    run = fn.append_basic_block("run")
    after = fn.append_basic_block("ran")
    b.cbranch(timed, prof, run)
    b.position_at_end(run)
    b.call(team, [sched, I64(ncalls), threads])
    b.branch(after)
    b.position_at_end(prof)
    for ci, call in enumerate(calls):
        scheduled = _sched_entry(b, sched, I64(ci))
        t0 = b.call(cycles, [])
        b.call(pfor, [*scheduled, threads])
        slot = b.gep(times, [I64(call.op)], inbounds=True)
        b.store(b.add(b.load(slot), b.sub(b.call(cycles, []), t0)), slot)
    b.branch(after)
    b.position_at_end(after)
    # outputs: copy out of the arena (or the input they alias)
    memcpy = mod.declare_intrinsic("llvm.memcpy", [P8, P8, I64])
    for j, name in enumerate(copy_outs):
        spec = plan.tensors[name]
        nbytes = ev(numel(spec.shape) * np.dtype(spec.dtype).itemsize)
        dst = b.load(b.gep(outs, [I64(j)], inbounds=True))
        src = b.inttoptr(tensor_base(name), P8)
        b.call(memcpy, [dst, src, nbytes, ir.Constant(ir.IntType(1), 0)])
    flag = b.load(argspace)
    b.ret(b.trunc(flag, I32))
    return fn, pos


def _emit_sizes(mod, prefix, prog: Program) -> None:
    fn = ir.Function(mod, ir.FunctionType(I64, [I64, I32]), f"{prefix}__arena_bytes")
    n, threads = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n_all = n
    if prog.chunk:  # one chunk's worth: the arena is reused chunk after chunk
        n = b.select(b.icmp_signed("<", n, I64(prog.chunk)), n, I64(prog.chunk))
    a0, b0 = prog.arena
    main = b.add(b.mul(n, I64(a0)), I64(b0))
    scratch = b.mul(b.sext(threads, I64), I64(4 * prog.scratch_per_thread + 64))
    need = b.add(b.add(main, scratch), I64(64))
    if prog.chunk:  # sample-parallel: a thread's area each, when there are chunks to share
        c = _sample_chunk(b, prog, n_all)
        per = b.mul(b.sext(threads, I64), _thread_area(b, prog, c))
        par = b.and_(_chunked(b, prog, n_all), _sample_parallel(b, prog, n_all, c, threads))
        per = b.select(par, per, I64(0))
        need = b.select(b.icmp_signed(">", per, need), per, need)
    if prog.tail:  # the boundary region first; the tail's buffers where the head's were
        ta, tb = prog.tail_arena
        late = b.add(b.add(b.add(b.mul(n_all, I64(ta)), I64(tb)), scratch), I64(64))
        if prog.tail_chunks > 1:  # the tail's chunks, a thread's area each
            c = _tail_chunk(b, prog, n_all)
            per = b.mul(b.sext(threads, I64), _thread_area(b, prog, c, tail=True))
            per = b.select(_tail_chunked(b, prog, n_all), per, I64(0))
            late = b.select(b.icmp_signed(">", per, late), per, late)
        need = b.select(b.icmp_signed(">", late, need), late, need)
        need = b.add(need, b.mul(n_all, I64(prog.boundary_bytes)))
    b.ret(need)
    fn = ir.Function(mod, ir.FunctionType(I64, []), f"{prefix}__argspace_slots")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(I64(prog.argspace_slots))
