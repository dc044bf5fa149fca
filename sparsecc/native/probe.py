"""How far apart the cores the library runs on are: a cache line bounced between two threads
of its pool (libgomp's), timed as one round trip.

On the shared machines this project is measured on, the host moves the two vCPUs: most of
the time a round trip takes 60-90 ns (cores that share an L3), in spells of minutes 350-390 ns
(different CCDs), at times ~30 ns (one core's two hyperthreads: cheap sharing, but the FMA
units shared too). In the far placement a model split layer by layer over both threads runs
about as fast as on one (ResNet-18 90 % batch 1: 11.5-12.3 ms on 2 threads against 12.0-12.3
on 1; 6.7-7.6 ms on 2 in the near placement), because every layer reads what both cores
wrote, while a 4096^2 numpy GEMM (threads that share little) keeps its speed. The bench
records the round trip beside each cell so such figures can be told apart.
"""

from __future__ import annotations

import ctypes
import functools

from llvmlite import ir

I32, I64, I8 = ir.IntType(32), ir.IntType(64), ir.IntType(8)
# spins a thread waits for the other before it gives up (a pool of one thread, a thread that
# never arrives): ~0.1-1 s
GIVE_UP = 200_000_000


def _module() -> str:
    mod = ir.Module("sparsecc_probe")
    ctx_t = ir.LiteralStructType([ir.ArrayType(I64, 8), I64, I64, I64])  # line, rounds, cycles, ok
    worker_t = ir.FunctionType(ir.VoidType(), [I8.as_pointer()])
    gomp = ir.Function(mod, ir.FunctionType(ir.VoidType(), [worker_t.as_pointer(),
                                                            I8.as_pointer(), I32, I32]),
                       "GOMP_parallel")
    tid_fn = ir.Function(mod, ir.FunctionType(I32, []), "omp_get_thread_num")
    nth_fn = ir.Function(mod, ir.FunctionType(I32, []), "omp_get_num_threads")
    cycles = mod.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))
    pause = mod.declare_intrinsic("llvm.x86.sse2.pause", (), ir.FunctionType(ir.VoidType(), []))
    worker = ir.Function(mod, worker_t, "sparsecc_probe_worker")
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    ctx = b.bitcast(worker.args[0], ctx_t.as_pointer())
    flag = b.gep(ctx, [I32(0), I32(0), I32(0)], inbounds=True)
    rounds = b.load(b.gep(ctx, [I32(0), I32(1)], inbounds=True))
    tid = b.call(tid_fn, [])
    two = b.icmp_signed(">=", b.call(nth_fn, []), I32(2))
    active = b.and_(two, b.icmp_signed("<", tid, I32(2)))
    run = worker.append_basic_block("run")
    out = worker.append_basic_block("out")
    b.cbranch(active, run, out)
    b.position_at_end(run)
    # thread 0 writes the odd values and waits for the even ones; thread 1 the other way
    first = b.zext(b.icmp_signed("==", tid, I32(0)), I64)  # 1 on thread 0
    t0 = b.call(cycles, [])
    ip, sp = b.alloca(I64), b.alloca(I64)
    b.store(I64(0), ip)
    head, wait, spin, step, fail, done = (worker.append_basic_block(n) for n in
                                          ("head", "wait", "spin", "step", "fail", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.load(ip)
    b.store(I64(0), sp)
    b.cbranch(b.icmp_signed("<", i, rounds), wait, done)
    b.position_at_end(wait)
    # thread 0 waits for 2i (its own last write, or the start), thread 1 for 2i + 1
    want = b.add(b.mul(i, I64(2)), b.sub(I64(1), first))
    got = b.load_atomic(flag, "acquire", 8)
    b.cbranch(b.icmp_signed("==", got, want), step, spin)
    b.position_at_end(spin)
    b.call(pause, [])
    n = b.add(b.load(sp), I64(1))
    b.store(n, sp)
    b.cbranch(b.icmp_signed(">", n, I64(GIVE_UP)), fail, wait)
    b.position_at_end(step)
    b.store_atomic(b.add(want, I64(1)), flag, "release", 8)
    b.store(b.add(i, I64(1)), ip)
    b.branch(head)
    b.position_at_end(fail)
    b.store_atomic(I64(-1), b.gep(ctx, [I32(0), I32(3)], inbounds=True), "monotonic", 8)
    b.store_atomic(I64(1 << 62), flag, "release", 8)  # the other thread stops waiting too
    b.branch(out)
    b.position_at_end(done)
    with b.if_then(b.icmp_signed("==", tid, I32(0))):
        b.store(b.sub(b.call(cycles, []), t0), b.gep(ctx, [I32(0), I32(2)], inbounds=True))
    b.branch(out)
    b.position_at_end(out)
    b.ret_void()

    fn = ir.Function(mod, ir.FunctionType(I64, [I64]), "sparsecc_probe")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx = b.alloca(ctx_t)
    b.store(ir.Constant(ctx_t, None), ctx)
    b.store(fn.args[0], b.gep(ctx, [I32(0), I32(1)], inbounds=True))
    b.call(gomp, [worker, b.bitcast(ctx, I8.as_pointer()), I32(2), I32(0)])
    ok = b.load(b.gep(ctx, [I32(0), I32(3)], inbounds=True))
    spent = b.load(b.gep(ctx, [I32(0), I32(2)], inbounds=True))
    b.ret(b.select(b.icmp_signed("<", ok, I64(0)), I64(-1), spent))
    return str(mod)


@functools.cache
def _probe():
    from sparsecc.codegen.llvm import jit
    from sparsecc.native.runtime import load_gomp

    load_gomp()
    obj = jit.compile_ir(_module())
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(
        jit.load_object(obj, ["sparsecc_probe"])["sparsecc_probe"])


def core_round_trip_ns(rounds: int = 20_000) -> float | None:
    """Nanoseconds per round trip of a cache line between two threads of the pool, averaged
    over ``rounds`` round trips (~2-8 ms); None when there is no second thread to bounce with
    or no native runtime here."""
    from sparsecc.errors import CodegenError
    from sparsecc.native.model import cycles_per_second

    try:
        probe = _probe()
    except CodegenError:
        return None
    spent = probe(int(rounds))
    if spent <= 0:  # one thread in the pool (nothing timed) or a thread that never came
        return None
    return spent / cycles_per_second() / rounds * 1e9


# independent FMA chains in the peak loop: latency (4 cycles) x FMA units (2) = 8 in flight,
# with room to spare
PEAK_CHAINS = 12


def _fma_module(vw: int) -> str:
    """``void sparsecc_fma_peak(i64 iters, float* out)``: PEAK_CHAINS chains of vw-lane FMAs
    with register operands, ``iters`` rounds, their sum stored so nothing is dropped."""
    f32 = ir.FloatType()
    vty = ir.VectorType(f32, vw)
    mod = ir.Module("sparsecc_fma_peak")
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, f32.as_pointer()]),
                     "sparsecc_fma_peak")
    fma = ir.Function(mod, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{vw}f32")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    a = ir.Constant(vty, [0.999999] * vw)
    c = ir.Constant(vty, [1e-7] * vw)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    accs = [b.phi(vty) for _ in range(PEAK_CHAINS)]
    nxt = [b.call(fma, [acc, a, c]) for acc in accs]
    i2 = b.add(i, I64(1))
    i.add_incoming(I64(0), entry)
    i.add_incoming(i2, loop)
    for k, (acc, n) in enumerate(zip(accs, nxt)):
        acc.add_incoming(ir.Constant(vty, [float(k)] * vw), entry)
        acc.add_incoming(n, loop)
    b.cbranch(b.icmp_signed("<", i2, fn.args[0]), loop, done)
    b.position_at_end(done)
    total = nxt[0]
    for n in nxt[1:]:
        total = b.fadd(total, n)
    b.store(b.extract_element(total, I32(0)), fn.args[1])
    b.ret_void()
    return str(mod)


@functools.cache
def fma_peak_gflops(cores: int | None = None) -> float | None:
    """This machine's float32 FMA peak, GFLOP/s, measured: the FMA loop (_fma_module, 16 lanes
    with AVX-512, else 8) run on ``cores`` threads at once (default: every CPU), the best of
    eight ~20 ms rounds. A guest's /proc/cpuinfo gives the nominal clock (2.6 GHz on the
    Zen 5 here, whose cores run this loop at ~4 GHz: 255 GFLOP/s a core, not 166). None
    without the native runtime."""
    import os
    import threading
    import time

    from sparsecc.codegen.llvm import jit
    from sparsecc.errors import CodegenError

    vw = max(8, jit.host().vector_width)
    try:
        fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.POINTER(ctypes.c_float))(
            jit.load_object(jit.compile_ir(_fma_module(vw)),
                            ["sparsecc_fma_peak"])["sparsecc_fma_peak"])
    except CodegenError:
        return None
    cores = cores or os.cpu_count() or 1
    sink = [ctypes.c_float() for _ in range(cores)]
    fn(1000, sink[0])
    t0 = time.perf_counter()
    fn(100_000, sink[0])  # ~0.15 ms at 4 GHz: the rounds are sized from it
    iters = max(1000, int(100_000 * 0.02 / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(8):
        threads = [threading.Thread(target=fn, args=(iters, sink[k])) for k in range(cores)]
        t0 = time.perf_counter()  # ctypes lets go of the GIL: the threads run at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, cores * iters * PEAK_CHAINS * vw * 2 / (time.perf_counter() - t0))
    return best / 1e9
