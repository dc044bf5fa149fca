"""The fuzzing harness: worker processes, seed artifacts, the campaign and its summary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsecc.fuzz.mutate import FAILURES, Case, make_case


# ---- the worker (a separate process: a crash there is a crash seen, not suffered) ---------
def _run_one(req: dict) -> dict:
    import resource
    import traceback

    import sparsecc

    res: dict = {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        try:
            extra = {"max_memory": req["max_memory"]} if req.get("max_memory") else {}
            try:
                rt = sparsecc.load(req["path"], native=req.get("native", False), **extra)
            finally:  # how far loading alone raised the high-water mark (0: not at all)
                load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                res["load_growth_mb"] = (load_peak - peak) / 1024
        except sparsecc.SparseccError as exc:
            res.update(status="rejected", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            return res
        outs = {}
        for batch in req["batches"]:
            try:
                got = rt(*rt.example_inputs(req["seed"], batch, int_high=50))
            except sparsecc.SparseccError as exc:
                res.update(status="run-error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
                return res
            got = got if isinstance(got, tuple) else tuple(got.values()) if isinstance(
                got, dict) else (got,)
            for k, g in enumerate(got):
                outs[f"b{batch}_{k}"] = np.asarray(g)
        np.savez(req["out"], **outs)
        res["status"] = "ok"
        return res
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        res.update(status="raw", error="".join(
            traceback.format_exception_only(type(exc), exc)).strip()[-600:])
        return res
    finally:
        res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_main() -> None:
    """Read one JSON request per line from stdin, answer one JSON line each."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("selftest") == "abort":  # the harness's own tests: a crash and a hang
            os.abort()
        if req.get("selftest") == "hang":
            time.sleep(3600)
        res = _run_one(req)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sparsecc.fuzz", "--worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
                bufsize=1)
        return self.proc

    def ask(self, req: dict, timeout: float) -> dict:
        """The worker's answer, or crash / hang (the worker is then replaced)."""
        import selectors

        proc = self._start()
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(proc)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        if not ready:
            proc.kill()
            proc.wait()
            self.proc = None
            return {"status": "hang"}
        line = proc.stdout.readline()
        if not line:
            return self._died(proc)
        return json.loads(line)

    def _died(self, proc) -> dict:
        rc = proc.wait()
        self.proc = None
        return {"status": "crash", "error": f"worker exit code {rc}"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---- seeds and the campaign ---------------------------------------------------------------
def build_seeds(folder: Path) -> list[Path]:
    """Small real artifacts covering every op kind and format the runtime has (needs torch)."""
    import torch

    import sparsecc
    from sparsecc import zoo

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    recipes = [
        ("mlp_csr_b1", zoo.mlp((64, 96, 48, 10)), 1, {"prune": {"sparsity": 0.9}}),
        ("mlp_csr_b4", zoo.mlp((64, 96, 48, 10)), 4, {"prune": {"sparsity": 0.9}}),
        ("mlp_bsr", zoo.mlp((64, 96, 48, 10)), 2,
         {"prune": {"sparsity": 0.75, "pattern": "4x1"}, "formats": {"force": "bsr4x1"}}),
        ("mlp_nm", zoo.mlp((64, 96, 48, 10)), 2,
         {"prune": {"pattern": "2:4"}, "formats": {"force": "nm2:4"}}),
        ("lenet", zoo.lenet(), 2, {"prune": {"sparsity": 0.8}}),
        ("mobilenet_block", zoo.mobilenet_v2_block(), 1, {"prune": {"sparsity": 0.7}}),
        ("resnet_basic", zoo.resnet_basic(), 1, {"prune": {"sparsity": 0.8}}),
        ("transformer", zoo.tiny_transformer(), 2, {"prune": {"sparsity": 0.8}}),
        ("ops", _ops_model(), 2, None),
    ]
    paths = []
    for name, model, batch, recipe in recipes:
        path = folder / f"{name}.scc"
        if not path.exists():
            x = zoo.example_input(model, batch) if hasattr(model, "example_input_shape") \
                else torch.randn(batch, 3, 9, 9)
            cm = sparsecc.compile(model.eval(), x, recipe=recipe)
            cm.save(path)
        paths.append(path)
    return paths


def _ops_model():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Ops(nn.Module):
        """Shape ops, reductions, pooling variants, where/cast/unary, a dense conv + BN."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn2 = nn.BatchNorm2d(4)
            self.fc = nn.Linear(16, 6)

        def forward(self, x):
            y = self.bn(self.conv(x))                                 # 4 x 5 x 5
            y = self.bn2(F.avg_pool2d(y, 2, ceil_mode=True, count_include_pad=False))  # 3 x 3
            z = F.max_pool2d(x, 3, stride=2, padding=1, dilation=1)   # 3 x 5 x 5
            z = F.adaptive_avg_pool2d(z, 2)
            y = torch.cat([y[:, :, :2, :2], z[:, :1]], dim=1)         # 5 x 2 x 2
            y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)[:, :16]  # 16
            y = torch.where(y > 0, y, torch.exp(y) - 1).abs().sqrt()
            a = F.gelu(y[:, :, None] @ y[:, None, :]).mean(dim=2)   # matmul, act, reduce
            y = y + (y > 0.5).float() * a + y[:, :1].expand(-1, 16)  # cast, expand
            y = self.fc(y).softmax(-1) + y.mean(dim=1, keepdim=True)
            return torch.stack([y, y * 2], dim=1).amax(dim=1)

    return Ops()


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    by_mutation: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    max_rss_mb: float = 0.0  # workers' high-water mark (kernel compilation included)
    max_load_growth_mb: float = 0.0  # the most one load raised it
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.counts[f] for f in FAILURES)

    def table(self) -> str:
        lines = ["| outcome | cases |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.counts.items())]
        return "\n".join(lines)


def _same(a_path: Path, b_path: Path) -> bool:
    with np.load(a_path) as a, np.load(b_path) as b:
        if sorted(a.files) != sorted(b.files):
            return False
        for k in a.files:
            x, y = a[k], b[k]
            if x.shape != y.shape or not np.allclose(x.astype(np.float64), y.astype(np.float64),
                                                     rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
    return True


def _seed_cache(cache: Path) -> None:
    """Copy the numba kernels' object (built on this machine, in this user's cache) into the
    campaign's own cache: every worker would build it again otherwise (~100 s a worker with
    AVX2 on a Zen 3). Nothing the fuzzed artifacts hold goes the other way."""
    from sparsecc.codegen.llvm import jit
    from sparsecc.native import module as M
    from sparsecc.options import env_cache_dir

    src = jit.linked_path(jit.linked_key(M.kernels_key(), M.kernels_exports(), jit.host()))
    if src.is_file():
        dst = cache / src.relative_to(env_cache_dir())
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def campaign(seeds: list[Path], cases: int, *, workers: int = 2, seed: int = 0,
             timeout: float = 30.0, work: Path | None = None, log=None,
             progress: bool = False) -> Summary:
    """Run ``cases`` mutated artifacts over ``workers`` worker processes."""
    from concurrent.futures import ThreadPoolExecutor

    work = Path(work or tempfile.mkdtemp(prefix="sparsecc-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    _seed_cache(work / "cache")
    env = dict(os.environ, SPARSECC_CACHE_DIR=str(work / "cache"), SPARSECC_THREADS="1",
               SPARSECC_MAX_MEMORY=os.environ.get("SPARSECC_MAX_MEMORY", "2G"),
               NUMBA_NUM_THREADS="1")
    pool = [Worker(env) for _ in range(workers)]
    refs = {}
    for i, p in enumerate(seeds):  # the unmutated answers
        refs[p] = work / f"ref{i}.npz"
        res = pool[0].ask({"path": str(p), "batches": [1, 3], "seed": 7, "out": str(refs[p])},
                          timeout=600)
        if res["status"] != "ok":
            raise RuntimeError(f"seed artifact {p} does not run: {res}")
    summary = Summary()
    t0 = time.perf_counter()

    def one(k: int) -> None:
        rng = np.random.default_rng([seed, k])
        seed_path = seeds[k % len(seeds)]
        case = make_case(seed_path, rng)
        path = work / f"case{k}.scc"
        path.write_bytes(case.data)
        out = work / f"out{k}.npz"
        res = pool[k % workers].ask({"path": str(path), "batches": [1, 3], "seed": 7,
                                     "out": str(out), "native": case.native}, timeout)
        status = res["status"]
        if status == "ok":
            same = _same(out, refs[seed_path])
            status = "same" if same else ("silent" if case.must_reject else "changed")
        _record(summary, k, case, seed_path, status, res, log)
        for f in (path, out):
            f.unlink(missing_ok=True)

    try:
        # one thread per worker, each driving its own process: cases k = w, w + W, ...
        def lane(w: int) -> None:
            for k in range(w, cases, workers):
                one(k)
                if progress and k % 200 == 0:
                    print(f"[fuzz] {k}/{cases} {dict(summary.counts)}", file=sys.stderr,
                          flush=True)

        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lane, range(workers)))
    finally:
        for w in pool:
            w.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _record(summary: Summary, k: int, case: Case, seed_path: Path, status: str, res: dict,
            log) -> None:
    summary.counts[status] += 1
    summary.by_mutation.setdefault(case.name, Counter())[status] += 1
    summary.max_rss_mb = max(summary.max_rss_mb, float(res.get("rss_mb") or 0.0))
    summary.max_load_growth_mb = max(summary.max_load_growth_mb,
                                     float(res.get("load_growth_mb") or 0.0))
    row = {"case": k, "seed": seed_path.stem, "mutation": case.name, "status": status,
           "must_reject": case.must_reject, "error": res.get("error", "")[:300],
           "rss_mb": res.get("rss_mb"), "load_growth_mb": res.get("load_growth_mb")}
    if status in FAILURES:
        summary.failures.append(row)
    if log is not None:
        log.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsecc.fuzz",
                                description="structural fuzzing of .scc artifacts")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seeds-dir", default="results/fuzz/seeds")
    p.add_argument("--out", default="results/fuzz")
    args = p.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = build_seeds(Path(args.seeds_dir))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(out / f"fuzz-{stamp}.jsonl", "w") as log:
        s = campaign(seeds, args.cases, workers=args.workers, seed=args.seed,
                     timeout=args.timeout, work=out / "work", log=log, progress=True)
    print(s.table())
    print(f"{args.cases} cases in {s.seconds:.0f} s; failures {s.failed}; "
          f"worker peak RSS {s.max_rss_mb:.0f} MB, the most one load added to it "
          f"{s.max_load_growth_mb:.1f} MB; log {out / f'fuzz-{stamp}.jsonl'}")
    for f in s.failures[:20]:
        print(json.dumps(f))
    return 1 if s.failed else 0

