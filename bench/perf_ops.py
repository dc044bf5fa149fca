"""Where a compiled model's time goes as it really runs: `perf` samples mapped to the ops.

`bench/op_ab.py` and the report time ops with the library's cycle counters, but a profiled
call runs the head's chunks one after another on every thread (module._emit_chunks): no
sample-parallel chunks, so no row bands either. This tool times the plain call. It compiles
the suite's model, writes a perf map (/tmp/perf-<pid>.map) naming the library's code by op,
runs plain calls for ``--seconds`` while ``perf record`` samples this process, and prints the
samples per op and per kernel kind:

* each sparse kernel (its own object, one an op or shared by ops with the same spec) is
  named by its op(s);
* the main object's own functions (the emitted kernels: the stem, GEMM, norms, ...) and the
  shared numba-authored kernels (phase planes, crops, pads, pools, ...) by symbol: a shared
  kernel's samples cannot be split between the ops calling it.

Addresses come from the objects' symbol tables (`nm`): a function's offset in its section
plus where the loader put an exported symbol of the same object (the main and numba objects:
every function in .ltext); a grouped kernel's assembly bodies sit in a .text of their own,
found through the GOT slots its dispatcher loads them from.

The ms are a share of the samples times the median call, so they assume both threads busy
the whole call (waiting shows as scc_team_worker) and carry the sampling's noise (~2 % of a
share at 20 s). First run (2026-12-04, Zen 4, ResNet-50 uniform 90 % batch 16, 104 ms a
call): the sparse kernels 86 % of the time, the stem 8.7 %, phase passes 2.4 %.

A share is where the samples landed, not what an op costs the call. MobileNetV2 global batch 1
on 2 threads (2026-12-05): features.7.conv.2 had 0.12 ms of a 1.9 ms call (0.014 ms on one
thread); a layout change took it to 0.02 ms and the paired whole calls got 1.015x slower
(`bench/op_ab.py --plain`), and a build without that op's calls was 50-56 us
faster with either layout. Check a share against paired whole calls before acting on it
(docs/native.md, "MobileNetV2 at batch 1").

Usage (needs `perf`; sampling a process of one's own needs perf_event_paranoid <= 2):
  .venv/bin/python bench/perf_ops.py --model resnet50 --batch 16 [--seconds 20] [--top 40] \\
      [--set sparsecc.native.bands.BANDS=False]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import subprocess
import tempfile
import threading
import time

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from op_ab import applied  # noqa: E402  (bench/ is the script's directory)

from sparsecc.benchmarks import suite  # noqa: E402
from sparsecc.codegen.llvm import kernels as LK  # noqa: E402
from sparsecc.native import library as NL  # noqa: E402


def _nm(obj: bytes) -> tuple[list[tuple[str, int, int, str]], dict[str, int], str]:
    """(name, offset, size or -1, section) of an object's defined code symbols, the sizes of
    its sections and its .ltext relocations (objdump -r text)."""
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(obj)
        f.flush()

        def run(*cmd):
            return subprocess.run([*cmd, f.name], capture_output=True, text=True,
                                  check=True).stdout

        syms = []
        for line in run("nm", "--format=sysv", "--defined-only").splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) == 7 and cols[2] in ("t", "T"):
                syms.append((cols[0], int(cols[1], 16), int(cols[4], 16) if cols[4] else -1,
                             cols[6]))
        sections = {}
        for g in re.finditer(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s", run("objdump", "-h"), re.M):
            sections[g.group(1)] = int(g.group(2), 16)
        relocs = run("objdump", "-r", "-j", ".ltext") if ".ltext" in sections else ""
    return syms, sections, relocs


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def _got_targets(addr: int, kernel_off: int, relocs: str) -> dict[str, int]:
    """Where the loader put the symbols a grouped kernel's dispatcher (in .ltext, loaded at
    ``addr``; ``kernel_off`` its offset there) reaches through the GOT, by name: its
    assembly bodies, in a .text of their own. A GOTPC64 field gives the GOT, a GOT64 field
    of a symbol its slot there; {} without them."""
    got = None
    slots = []
    for g in re.finditer(r"^([0-9a-f]+) (R_X86_64_\w+)\s+(\S+)$", relocs, re.M):
        off, kind, target = int(g.group(1), 16), g.group(2), g.group(3)
        field = addr - kernel_off + off
        if kind == "R_X86_64_GOTPC64":
            a = int(target.split("+", 1)[1], 16) if "+" in target else 0
            got = field + ctypes.c_int64.from_address(field).value - a
        elif kind == "R_X86_64_GOT64":
            slots.append((target, ctypes.c_int64.from_address(field).value))
    if got is None:
        return {}
    return {name: _u64(got + slot) for name, slot in slots}


def perf_map(runner, prog) -> list[tuple[int, int, str]]:
    """(address, size, name) of the library's functions, sparse kernels named by op."""
    plan = prog.plan
    entries: list[tuple[int, int, str]] = []
    progs = [prog] + ([prog.alt_head] if prog.alt_head is not None else [])
    users: dict[str, set[str]] = collections.defaultdict(set)
    for p in progs:
        for c in p.calls:
            op = plan.ops[c.op]
            users[c.kernel].add(op.layer or op.name)
    seen = set()
    for p in progs:
        for k in p.kernels.values():
            if k.kind != "sparse" or k.spec.key in seen:
                continue
            seen.add(k.spec.key)
            kern = LK.build(k.spec, k.pattern)  # memoised: the loaded kernel
            syms, sections, relocs = _nm(kern.obj)
            name = "op:" + ("+".join(sorted(users[k.symbol])) or k.symbol)
            entry = next(s for s in syms if s[0] == "kernel")
            entries.append((kern.addr, max(entry[2], 1), name))
            bodies = {s[0]: s[1] for s in syms if s[3] != entry[3]}
            if bodies:
                for body, at in _got_targets(kern.addr, entry[1], relocs).items():
                    if body in bodies:
                        base = at - bodies[body]
                        size = sections.get(".text", 0)
                        entries.append((base, size, name + " (bodies)"))
                        break
    # the main object and the numba-authored kernels' object: every function in .ltext,
    # placed by one exported symbol's address
    anchors = [(runner.lib.objects["main"], {runner.lib.exports[0]: runner.run_addr}, "main"),
               (runner.lib.objects["numba"], next(iter(NL._KERNELS_LOADED.values())),
                "numba")]
    for obj, known, tag in anchors:
        syms, _, _ = _nm(obj)
        offs = {s[0]: s[1] for s in syms}
        exp = next(e for e in known if e in offs)
        base = known[exp] - offs[exp]
        for name, off, size, _ in syms:
            if size > 0:
                entries.append((base + off, size, f"{tag}:{name}"))
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50", choices=sorted(suite.model_specs()))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--profile", default="uniform", choices=suite.PROFILES)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="as bench/op_ab.py's: in force while the model compiles")
    args = ap.parse_args()

    spec = suite.model_specs()[args.model]
    torch.manual_seed(0)
    model = suite.prune_profile(spec.build(), args.sparsity, args.profile)
    x = spec.inputs(args.batch)
    with applied(args.set):  # (the suite's compile: Hugging Face models traced by name)
        m = suite._compile(spec, model, x, False)
    nat = m.native
    for _ in range(3):
        nat.run(x)
    entries = perf_map(nat.runner, nat.lib.program)
    pid = os.getpid()
    pmap = f"/tmp/perf-{pid}.map"  # (where perf report looks for a JIT's symbols)
    with open(pmap, "w") as f:
        for addr, size, name in sorted(entries):
            f.write(f"{addr:x} {size:x} {name}\n")

    fd, data = tempfile.mkstemp(suffix=".perf.data")
    os.close(fd)
    stop = threading.Event()
    times: list[float] = []

    def calls():
        while not stop.is_set():
            t = time.perf_counter()
            nat.run(x)
            times.append(time.perf_counter() - t)

    th = threading.Thread(target=calls)
    th.start()
    time.sleep(1.0)
    subprocess.run(["perf", "record", "-q", "-F", "2000", "-p", str(pid), "-o", data, "--",
                    "sleep", str(args.seconds)], check=True, capture_output=True)
    stop.set()
    th.join()
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "sym",
                          "--stdio", "-q"], capture_output=True, text=True).stdout
    os.unlink(data)
    os.unlink(pmap)
    rows = []
    for line in rep.splitlines():
        g = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*\S)\s*$", line)
        if g:
            rows.append((float(g.group(1)), g.group(2)))
    kinds: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, float] = collections.defaultdict(float)
    for pct, sym in rows:
        tag, _, rest = sym.partition(":")
        if tag == "op":
            kind = "sparse kernels"
            ops[rest.removesuffix(" (bodies)")] += pct
        elif tag == "numba":
            g = re.search(r"kernels(\d+)(\w+)", rest)  # (an Itanium-mangled name)
            kind = "numba:" + (g.group(2)[:int(g.group(1))] if g else
                               re.sub(r"^sparsecc_nk_", "", rest))
        elif tag == "main":
            kind = "main:" + re.sub(r"_v\d+.*$|\.\d+$", "", rest)
        else:
            kind = "outside the library"
        kinds[kind] += pct
    med = float(np.median(times)) * 1e3
    peak = suite.peak()
    mflops = {r["name"]: r.get("mflops") or 0.0 for r in m.report(measure=False).rows}
    setting = " " + " ".join(args.set) if args.set else ""
    print(f"{args.model} {args.profile} {args.sparsity:.0%} batch {args.batch}{setting}: "
          f"{len(times)} plain calls, median {med:.2f} ms; {suite.machine_line()}")
    print("(shares of this process's samples on both threads; ms a call = share x the median "
          f"call; GFLOP/s of the op's sparse FLOPs, % of the {peak:.0f} GFLOP/s FMA peak)")

    def table(title, items, rate=False):
        print(f"\n{title}")
        for name, pct in sorted(items, key=lambda kv: -kv[1])[:args.top]:
            ms = pct / 100 * med
            line = f"  {pct:6.2f} %  {ms:7.2f} ms"
            if rate:
                mf = sum(mflops.get(n, 0.0) for n in name.split("+"))
                gf = mf / ms if ms > 0 else 0.0
                line += f"  {gf:6.1f} GFLOP/s {gf / peak:4.0%}" if mf else " " * 22
            print(f"{line}  {name[:100]}")

    table("by kind", kinds.items())
    table("sparse kernels by op", ops.items(), rate=True)
    table("symbols", [(sym, pct) for pct, sym in rows])


if __name__ == "__main__":
    main()
