"""Deployment: concurrent calls, memory over many calls, the HTTP server, torch.compile."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sparsecc
from sparsecc import zoo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = sparsecc.prune(zoo.mnist_cnn(), 0.9)
    cm = sparsecc.compile(model, torch.randn(1, 1, 28, 28))
    return model, cm.save(tmp_path_factory.mktemp("dep") / "mnist.scc")


def test_threads_give_serial_results(artifact, seed):
    _, path = artifact
    rt = sparsecc.load(path)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((int(b), 1, 28, 28)).astype(np.float32)
          for b in rng.integers(1, 5, size=64)]
    serial = [rt(x) for x in xs]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors = []

    def worker(t):
        try:
            for i in range(500):
                k = (t * 131 + i) % len(xs)
                results[(t, i)] = (k, rt(xs[k]))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 2000
    for k, out in results.values():
        np.testing.assert_array_equal(out, serial[k])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_memory_flat_over_10k_calls(artifact, seed):
    _, path = artifact
    rt = sparsecc.load(path)
    x = np.random.default_rng(seed).standard_normal((2, 1, 28, 28)).astype(np.float32)
    for _ in range(1000):
        rt(x)
    start = _rss_mb()
    for _ in range(10000):
        rt(x)
    grown = _rss_mb() - start
    print(f"RSS grew {grown:.2f} MB over 10k calls")
    assert grown < 5.0


def _request(port, method, path, body=None, ctype="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_serve_and_load(artifact, seed):
    import serve

    model, path = artifact
    server, thread = serve.serve_in_thread(str(path))
    port = server.server_port
    try:
        status, data = _request(port, "GET", "/health")
        assert status == 200 and json.loads(data)["inputs"][0]["shape"] == "(N, 1, 28, 28)"
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
        status, data = _request(port, "POST", "/predict", json.dumps({"input": x.tolist()}))
        assert status == 200
        got = np.array(json.loads(data)["outputs"][0], np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4,
                                       atol=1e-5)
        import io

        buf = io.BytesIO()
        np.save(buf, x)
        status, data = _request(port, "POST", "/predict", buf.getvalue(),
                                "application/octet-stream")
        assert status == 200
        # bad requests get a 4xx naming the problem
        for body, code, needle in [
            (b"{not json", 400, "not valid JSON"),
            (json.dumps({"foo": 1}).encode(), 400, "expected"),
            (json.dumps({"input": [[1.0, 2.0]]}).encode(), 422, "expected 4 dims"),
            (json.dumps({"input": [["a"]]}).encode(), 422, "not a float32 array"),
        ]:
            status, data = _request(port, "POST", "/predict", body)
            assert status == code, data
            assert needle in json.loads(data)["error"]
        assert _request(port, "GET", "/nope")[0] == 404
        # a bounded load test on loopback: 4 clients x 50 requests
        done, errors = [], []
        one = json.dumps({"input": x[:1].tolist()})

        def client():
            for _ in range(50):
                s, _ = _request(port, "POST", "/predict", one)
                (done if s == 200 else errors).append(s)

        t0 = time.perf_counter()
        clients = [threading.Thread(target=client) for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=120)
        seconds = time.perf_counter() - t0
        print(f"load test: {len(done)} requests in {seconds:.2f} s = "
              f"{len(done) / seconds:.0f} req/s")
        assert len(done) == 200 and not errors
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_torch_compile_backend(seed, caplog):
    from sparsecc.dynamo import sparsecc_backend

    model = zoo.resnet_basic()
    x = torch.randn(2, 3, 32, 32)
    calls = []

    def spy(gm, example_inputs, **kw):
        fn = sparsecc_backend(gm, example_inputs, **kw)
        calls.append(fn)
        return fn

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=spy, options={"sparsity": 0.9})
    with torch.no_grad():
        ref = sparsecc.prune(model, 0.9)
        np.testing.assert_allclose(compiled(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-5)
        x5 = torch.randn(5, 3, 32, 32)
        np.testing.assert_allclose(compiled(x5).numpy(), ref(x5).numpy(), rtol=1e-4, atol=1e-5)
    assert calls and all(hasattr(fn, "sparsecc_model") for fn in calls)

    class Breaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # a graph break
                y = y * 2
            return torch.cumsum(self.b(y), 1)  # no sparsecc kernel: that region runs in torch

    torch._dynamo.reset()
    b = Breaky().eval()
    with caplog.at_level(logging.WARNING, logger="sparsecc"), torch.no_grad():
        out = torch.compile(b, backend="sparsecc")(torch.ones(3, 4))
        np.testing.assert_allclose(out.numpy(), b(torch.ones(3, 4)).numpy(), rtol=1e-5)
    assert "running this region in torch" in caplog.text and "cumsum" in caplog.text


def test_backend_name_resolves_without_importing_sparsecc():
    code = ("import torch\n"
            "from torch import nn\n"
            "m = nn.Sequential(nn.Linear(3, 2)).eval()\n"
            "f = torch.compile(m, backend='sparsecc')\n"
            "x = torch.randn(2, 3)\n"
            "with torch.no_grad():\n"
            "    assert torch.allclose(f(x), m(x), atol=1e-5)\n"
            "import sys; assert 'sparsecc.dynamo' in sys.modules\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.slow
def test_runtime_extra_installs_no_torch(artifact, tmp_path, seed):
    """`pip install sparsecc[runtime]` in a fresh venv: no torch, and the artifact runs."""
    model, path = artifact
    import shutil

    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "results", "*.egg-info", "__pycache__", ".hypothesis",
        "docs", "bench"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[runtime]"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    x = np.random.default_rng(seed).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import importlib.util, sys, numpy as np, sparsecc\n"
            "assert importlib.util.find_spec('torch') is None, 'torch got installed'\n"
            f"y = sparsecc.load({str(path)!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)\n")
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                                   model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_binding_follows_the_kernel_thread_count(executor_only):
    """A binding's work splits are fixed when bound: after set_num_threads(2) a plan bound at
    1 thread gets a binding of its own (else the second core idles), with the same results."""
    import numba

    torch.manual_seed(0)
    model = sparsecc.prune(nn.Sequential(nn.Linear(64, 256), nn.ReLU(),
                                         nn.Linear(256, 32)).eval(), 0.9)
    x = torch.randn(16, 64)
    cm = sparsecc.compile(model, (x,))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = cm(x.numpy())
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        y2 = cm(x.numpy())
    finally:
        numba.set_num_threads(before)
    keys = set(cm.executor._free)
    assert {(16, 1), (16, min(2, numba.config.NUMBA_NUM_THREADS))} <= keys
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y2, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
