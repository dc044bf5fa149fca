"""Per-call floor: a Linear(8,8) -> ReLU -> Linear(8,8) model, where the arithmetic is nothing
and the call is everything. sparsecc from Python (torch and numpy in/out, and the library call
with preallocated outputs), sparsecc from C (the exported library in a C loop), torch eager and
ONNX Runtime, same process (C: its own process, same machine, same minute).

Usage: .venv/bin/python bench/native_floor.py [--repeats 20000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sparsecc
from sparsecc.benchmarks.suite import machine_line

C_LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "floor.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double d = *(double *)a - *(double *)b;
                                               return (d > 0) - (d < 0); }
int main(int argc, char **argv) {
    int reps = atoi(argv[1]), threads = atoi(argv[2]);
    float x[8], y[8];
    for (int i = 0; i < 8; i++) x[i] = (float)i / 8.0f - 0.5f;
    const void *in[1] = {x};
    void *out[1] = {y};
    floor_model *m = floor_model_create(threads);
    double *t = malloc(sizeof(double) * reps);
    for (int i = 0; i < 1000; i++) floor_model_run(m, 1, in, out);
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        floor_model_run(m, 1, in, out);
        t[i] = now() - t0;
    }
    qsort(t, reps, sizeof *t, cmp);
    printf("%.3f %.3f %.3f\n", 1e6 * t[reps / 2], 1e6 * t[reps / 10], 1e6 * t[reps * 9 / 10]);
    floor_model_destroy(m);
    return 0;
}
"""


def timed(fn, reps: int) -> tuple[float, float, float]:
    for _ in range(1000):
        fn()
    t = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t0
    return tuple(float(np.percentile(t, q)) * 1e6 for q in (50, 10, 90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    model.eval()
    xt = torch.randn(1, 8)
    xn = xt.numpy()
    cm = sparsecc.compile(model, xt)
    assert cm.native is not None, cm.native_status
    outs = [np.empty((1, 8), np.float32)]
    rows = {}
    rows["sparsecc, Python, torch in/out"] = timed(lambda: cm(xt), a.repeats)
    rows["sparsecc, Python, numpy in/out"] = timed(lambda: cm(xn), a.repeats)
    rows["sparsecc, Python, preallocated out"] = timed(lambda: cm.native.run([xn], outs),
                                                       a.repeats)
    with torch.no_grad():
        rows["torch eager"] = timed(lambda: model(xt), a.repeats)
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            torch.onnx.export(model, (xt,), f"{tmp}/m.onnx", dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            sess = ort.InferenceSession(f"{tmp}/m.onnx", so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            rows["onnxruntime (Python)"] = timed(lambda: sess.run(None, {name: xn}), a.repeats)
    except Exception as exc:  # noqa: BLE001 (a missing peer is reported, not fatal)
        print(f"onnxruntime skipped: {exc}")
    if shutil.which("cc"):
        from sparsecc.native.export import export_c

        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            export_c(cm.plan, d, prefix="floor_model")
            (d / "loop.c").write_text(C_LOOP.replace("floor.h", "floor_model.h"))
            subprocess.run(["cc", "-O2", "-I", str(d), str(d / "loop.c"), "-L", str(d),
                            "-lfloor_model", f"-Wl,-rpath,{d}", "-o", str(d / "loop")],
                           check=True)
            out = subprocess.run([str(d / "loop"), str(a.repeats), str(a.threads)],
                                 capture_output=True, text=True, check=True).stdout.split()
            rows["sparsecc, C (exported library)"] = tuple(float(v) for v in out)
    print(f"machine: {machine_line()}; Linear(8,8)-ReLU-Linear(8,8), batch 1, "
          f"{a.threads} threads, {a.repeats} calls each")
    print("| caller | median us | p10 | p90 |\n|---|---|---|---|")
    for k, (med, p10, p90) in rows.items():
        print(f"| {k} | {med:.2f} | {p10:.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
