"""Serve a sparsecc artifact over HTTP with the standard library only (no torch needed).

    python examples/serve.py model.scc --port 8000
    curl -s localhost:8000/health
    curl -s -X POST localhost:8000/predict -d '{"inputs": [[[...]]]}'

POST /predict takes JSON ``{"inputs": [array, ...]}`` (one per model input) or
``{"input": array}``, and answers
``{"outputs": [array, ...], "shapes": [...]}``; a body that is an ``.npy`` file
(Content-Type: application/octet-stream) works too. Bad JSON, wrong shapes or dtypes get a 4xx
with the reason; the model is shared by all request threads (sparsecc is thread-safe).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

import sparsecc
from sparsecc.ir.plan import format_shape

MAX_BODY = 64 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _spec(rt) -> list[dict]:
    plan = rt.plan
    return [{"name": n, "shape": format_shape(plan.tensors[n].shape),
             "dtype": plan.tensors[n].dtype} for n in plan.inputs]


def parse_inputs(rt, body: bytes, content_type: str) -> list[np.ndarray]:
    if content_type.startswith("application/octet-stream"):
        try:
            return [np.load(io.BytesIO(body), allow_pickle=False)]
        except ValueError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not an .npy array: {exc}") from None
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and "input" in doc:
        items = [doc["input"]]
    else:
        items = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) != len(rt.plan.inputs):
        raise BadRequest(HTTPStatus.BAD_REQUEST,
                         f'expected {{"inputs": [one array per input]}} with '
                         f'{len(rt.plan.inputs)} array(s), or {{"input": array}}')
    out = []
    for name, item in zip(rt.plan.inputs, items):
        want = rt.plan.tensors[name].dtype
        try:
            arr = np.asarray(item, dtype=want)
        except (ValueError, TypeError) as exc:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY,
                             f"input {name!r}: not a {want} array ({exc})") from None
        out.append(arr)
    return out


def make_handler(rt):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def _send(self, status: HTTPStatus, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "inputs": _spec(rt)})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self):
            if self.path != "/predict":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0:
                    raise BadRequest(HTTPStatus.BAD_REQUEST, "empty body")
                if length > MAX_BODY:
                    raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                     f"body over {MAX_BODY} bytes")
                body = self.rfile.read(length)
                inputs = parse_inputs(rt, body, self.headers.get("Content-Type", ""))
                outs = rt(*inputs)
            except BadRequest as exc:
                self._send(exc.status, {"error": str(exc), "expected": _spec(rt)})
                return
            except sparsecc.SparseccError as exc:  # shape/dtype/batch: the caller's input
                self._send(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc),
                                                             "expected": _spec(rt)})
                return
            outs = outs if isinstance(outs, tuple) else (outs,)
            self._send(HTTPStatus.OK, {"outputs": [o.tolist() for o in outs],
                                       "shapes": [list(o.shape) for o in outs]})

    return Handler


def make_server(artifact: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    rt = sparsecc.load(artifact)
    server = ThreadingHTTPServer((host, port), make_handler(rt))
    server.daemon_threads = True
    server.model = rt
    return server


def serve_in_thread(artifact: str, host: str = "127.0.0.1", port: int = 0):
    server = make_server(artifact, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    try:
        server = make_server(args.artifact, args.host, args.port)
    except sparsecc.SparseccError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {args.artifact} on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
