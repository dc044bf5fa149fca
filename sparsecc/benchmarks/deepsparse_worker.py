"""DeepSparse timing worker, run by the DeepSparse venv's python (not by sparsecc's).

Standalone on purpose: that venv holds numpy 1.x and deepsparse 1.8.0, not sparsecc. Reads JSON
commands on stdin, one per line, answers one JSON line each:
  {"onnx": path, "batch": b, "threads": t, "inputs": [npy paths], "min_runs": n,
   "min_time": seconds, "min_calls": n, "warm_s": seconds, "out": npy path or null}
  ("out": the first call's output is saved there and counts as a warm-up call; null: no
  such call, warm-up only within warm_s, none when it is 0)
  -> {"ok": true, "times_ms": [...]} or {"ok": false, "error": "..."}
DeepSparse is a comparison point only (evaluation licence); never a dependency of sparsecc.
"""

import json
import os
import sys
import time

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")


def main():
    import numpy as np
    from deepsparse import Engine

    engines = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            key = (cmd["onnx"], cmd["batch"], cmd["threads"])
            if key not in engines:
                engines.clear()  # one compiled engine at a time keeps memory bounded
                engines[key] = Engine(model=cmd["onnx"], batch_size=cmd["batch"],
                                      num_cores=cmd["threads"])
            eng = engines[key]
            xs = [np.load(p) for p in cmd["inputs"]]
            spent, calls = 0.0, 0
            if cmd["out"]:
                t0 = time.perf_counter()
                outs = eng.run(xs)  # the output for the correctness column, and warm-up 1
                spent, calls = time.perf_counter() - t0, 1
                np.save(cmd["out"], outs[0])
            while calls < 2 and spent < cmd["warm_s"]:  # as the suite's time_call
                t0 = time.perf_counter()
                eng.run(xs)
                spent += time.perf_counter() - t0
                calls += 1
            times, start = [], time.perf_counter()
            # >= min_runs runs or >= min_time seconds, whichever first; never fewer than
            # min_calls
            while len(times) < cmd["min_calls"] or (
                    len(times) < cmd["min_runs"] and time.perf_counter() - start < cmd["min_time"]):
                t0 = time.perf_counter()
                eng.run(xs)
                times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({"ok": True, "times_ms": times}), flush=True)
        except Exception as exc:  # reported to the suite as a skipped cell
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)


if __name__ == "__main__":
    main()
