#!/usr/bin/env python3
"""Benchmark: master mode (REST API + SSE) supervising many instances.

    python bench/master.py                  # full run: 100 instances, 20 subscribers (~70-90 s)
    python bench/master.py --quick          # smoke run: 10 instances, 5 subscribers (~25 s)
    python bench/master.py --json bench/results/master.json

One master is started in a fresh state directory::

    NP_STATE_DIR=TMP python -m nodepass "master://127.0.0.1:PORT/api?log=info"

and its API key is read from its output (``API Key created: ...``). Then:

 1. SSE: ``--subscribers`` streams on ``/api/v1/events`` (raw sockets, one selector
    thread, arrival times from ``time.monotonic()``); each must start with ``retry:``
    and the initial snapshot.
 2. Create ``--instances`` single-end forwarders ``client://127.0.0.1:P/127.0.0.1:T``
    (P free, T never listening): a few *paced* (the next POST only once the previous
    instance is running and listening), then back to back from one client
    (*sequential*), then from ``--create-concurrency`` threads (*concurrent*); each phase
    starts once the previous one has settled. Per instance: POST latency, POST ->
    ``create`` event and POST -> first ``update`` with status ``running`` (median over
    the subscribers), POST -> port listening (from /proc/net/tcp).
 3. API mix with every instance running: ``GET /instances``, ``GET /instances/{id}``,
    ``GET /info``, ``PATCH /instances/{id} {"alias":...}``, from 1 and from ``--clients``
    keep-alive clients (a separate load-generator process).
 4. Baselines in the same run, with the same load generator: a trivial Twisted Web
    server and a stdlib ``ThreadingHTTPServer`` that serve the same JSON (the master's
    own ``GET /instances`` body, re-serialised per request); and the time from spawning
    ``python -m nodepass client://...`` directly to its port listening.
 5. DELETE every instance (all but ``--shutdown-running K``), then SIGTERM the master,
    time its exit and check that no instance outlived it.

Memory: VmRSS of the master process alone (idle, loaded, after the API mix, after the
deletes, VmHWM peak) and the summed RSS of its process tree. Event loss: every
subscriber's events are counted by (type, id, status) and compared with the union over
all subscribers; the lifecycle events (create, running, delete) of every instance must
reach every subscriber.

All on 127.0.0.1, ephemeral ports; the master, its instances and every helper process
are killed at the end, on errors and on Ctrl-C. Progress goes to stderr, the report and
(with ``--json``) the raw results to stdout / a file.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as _dt
import hmac
import http.client
import itertools
import json
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

THIS = os.path.abspath(__file__)
PREFIX = "/api/v1"
KEY_RE = re.compile(r"API Key created: ([0-9a-f]{32})")
LEVEL_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+([A-Z]+)\s")
NOTABLE = ("WARN", "ERROR", "CRITICAL", "FATAL")
CREATE_PHASES = ("paced", "sequential", "concurrent")
BASELINE_SERVERS = ("twisted", "stdlib")


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def lat_ms(values: Iterable[float]) -> dict[str, float]:
    """summarize_latencies over seconds, reported in milliseconds (n stays a count)."""
    s = C.summarize_latencies(list(values))
    return {k: (v if k == "n" else v * 1e3) for k, v in s.items()}


def read_first_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    """The first stdout line of ``proc`` within ``timeout`` s ('' if none)."""
    box: list[str] = []
    done = threading.Event()

    def _read() -> None:
        assert proc.stdout is not None
        box.append(proc.stdout.readline())
        done.set()

    threading.Thread(target=_read, daemon=True).start()
    done.wait(timeout)
    return box[0] if box else ""


def own_cpu_seconds(pid: int) -> float | None:
    """utime+stime of ``pid`` alone (not its reaped children)."""
    return C.proc_cpu_seconds(pid, reaped=False)


def listening_tcp_ports() -> set[int]:
    """Ports with a listening TCP socket on 127.0.0.1 or the wildcard (/proc/net/tcp)."""
    out: set[int] = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[3] == "0A":
                    addr, _, port = parts[1].partition(":")
                    if addr in ("0100007F", "00000000"):
                        out.add(int(port, 16))
    except (OSError, StopIteration, ValueError):
        pass
    return out


def wait_until(pred: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


# --------------------------------------------------------------------------
# HTTP load generator and baseline servers (run as separate processes)
# --------------------------------------------------------------------------


def http_load_main(spec: dict[str, Any]) -> dict[str, Any]:
    """``clients`` keep-alive connections share ``requests`` requests; latency per request.

    Request ``i`` goes to ``paths[i % len(paths)]`` with ``body`` ("{n}" replaced by a
    number unique to the request). Timed from just before the request is written to the
    last byte of the response body (``http.client``, the same for every server).
    """
    port, key, method = spec["port"], spec["key"], spec["method"]
    paths: list[str] = spec["paths"]
    body_t: str | None = spec.get("body")
    total, clients = spec["requests"], spec["clients"]
    warmup = spec.get("warmup", 20)
    timeout = spec.get("timeout", 30.0)
    seq0 = spec.get("seq0", 0)
    headers = {"X-API-Key": key}
    if body_t is not None:
        headers["Content-Type"] = "application/json"
    perf = time.perf_counter
    counter = itertools.count()
    lat: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[collections.Counter[int]] = [collections.Counter() for _ in range(clients)]
    errors: list[collections.Counter[str]] = [collections.Counter() for _ in range(clients)]
    samples: list[str] = []
    nbytes = [0] * clients
    barrier = threading.Barrier(clients + 1)
    done_at = [0.0] * clients

    def one(conn: http.client.HTTPConnection, n: int) -> tuple[int, bytes, float]:
        path = paths[n % len(paths)]
        body = None if body_t is None else body_t.replace("{n}", str(seq0 + n)).encode()
        t = perf()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, perf() - t

    def worker(c: int) -> None:
        conn = http.client.HTTPConnection(C.HOST, port, timeout=timeout)
        for j in range(max(1, warmup // clients)):
            try:
                one(conn, total + j * clients + c)
            except (OSError, http.client.HTTPException):
                conn.close()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        while True:
            n = next(counter)
            if n >= total:
                break
            try:
                status, data, dt = one(conn, n)
            except (OSError, http.client.HTTPException) as exc:
                errors[c][type(exc).__name__] += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            statuses[c][status] += 1
            if 200 <= status < 300:
                lat[c].append(dt)
                nbytes[c] += len(data)
            elif len(samples) < 5:
                samples.append(f"HTTP {status}: {data[:200]!r}")
        done_at[c] = perf()
        conn.close()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    barrier.wait(timeout=timeout * 4)
    t0 = perf()
    for th in threads:
        th.join()
    elapsed = max(done_at) - t0 if max(done_at) > 0 else perf() - t0
    all_lat = [x for part in lat for x in part]
    status_all: collections.Counter[int] = collections.Counter()
    for s in statuses:
        status_all.update(s)
    err_all: collections.Counter[str] = collections.Counter()
    for e in errors:
        err_all.update(e)
    ok = len(all_lat)
    return {
        "count": ok,
        "elapsed": elapsed,
        "rate": ok / elapsed if elapsed > 0 else float("nan"),
        "latency_s": C.summarize_latencies(all_lat),
        "statuses": {str(k): v for k, v in sorted(status_all.items())},
        "errors": dict(err_all),
        "samples": samples,
        "bytes_avg": sum(nbytes) / ok if ok else 0,
    }


def _baseline_payloads(body_file: str) -> tuple[list[Any], dict[str, Any]]:
    with open(body_file, "rb") as f:
        items = json.loads(f.read())
    if not isinstance(items, list) or not items:
        raise SystemExit("baseline: the body file must hold a non-empty JSON array")
    return items, dict(items[-1])


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _answer(method: str, path: str, body: bytes, items: list[Any], one: dict[str, Any]) -> bytes:
    """The trivial servers' whole logic: list, one object, or one object with a new alias."""
    if method == "PATCH":
        obj = dict(one)
        alias = json.loads(body or b"{}").get("alias")
        if isinstance(alias, str):
            obj["alias"] = alias
        return _dump(obj)
    if path.rstrip("/").endswith("/instances"):
        return _dump(items)
    return _dump(one)


def baseline_twisted_main(key: str, body_file: str) -> int:
    from twisted.internet import reactor
    from twisted.web import resource, server

    items, one = _baseline_payloads(body_file)
    expected = key.encode()

    class Trivial(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            got = request.getHeader(b"X-API-Key") or b""
            if not hmac.compare_digest(got, expected):
                request.setResponseCode(401)
                return b'{"error":"Unauthorized"}\n'
            method = request.method.decode()
            body = request.content.read() if method == "PATCH" else b""
            return _answer(method, request.path.decode(), body, items, one)

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    port = reactor.listenTCP(0, QuietSite(Trivial()), interface=C.HOST)  # type: ignore[attr-defined]
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


def baseline_stdlib_main(key: str, body_file: str) -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    items, one = _baseline_payloads(body_file)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not hmac.compare_digest(self.headers.get("X-API-Key", ""), key):
                status, data = 401, b'{"error":"Unauthorized"}\n'
            else:
                status, data = 200, _answer(self.command, self.path, body, items, one)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_PATCH = _serve

    httpd = ThreadingHTTPServer((C.HOST, 0), Handler)
    httpd.daemon_threads = True
    print(json.dumps({"port": httpd.server_address[1]}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    httpd.serve_forever()
    return 0


def worker_main(argv: Sequence[str]) -> int:
    if argv[0] == "_load":
        try:
            result = http_load_main(json.loads(argv[1]))
        except Exception as exc:  # reported to the orchestrator, which records it
            result = {"fatal": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
        return 0
    kind, key, body_file = argv[1], argv[2], argv[3]
    if kind == "twisted":
        return baseline_twisted_main(key, body_file)
    return baseline_stdlib_main(key, body_file)


def run_http_load(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = C.REGISTRY.spawn(
        [sys.executable, THIS, "_load", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=C.REPO_ROOT,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        C.REGISTRY.kill(proc)
        return {"fatal": f"load generator timed out after {timeout:.0f}s"}
    C.REGISTRY.kill(proc)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    except (ValueError, IndexError):
        return {"fatal": f"load generator failed: rc={proc.returncode} {err.strip()[-500:]}"}


@dataclass
class Baseline:
    kind: str
    proc: subprocess.Popen[Any]
    port: int

    @classmethod
    def start(cls, kind: str, key: str, body_file: str, timeout: float) -> Baseline:
        proc = C.REGISTRY.spawn(
            [sys.executable, THIS, "_baseline", kind, key, body_file],
            stdout=subprocess.PIPE,
            text=True,
            cwd=C.REPO_ROOT,
        )
        line = read_first_line(proc, timeout)
        if not line:
            C.REGISTRY.kill(proc)
            raise C.StartError(f"baseline server {kind} did not start")
        port = int(json.loads(line)["port"])
        if not C.wait_listening(port, timeout, proc):
            C.REGISTRY.kill(proc)
            raise C.StartError(f"baseline server {kind} not listening")
        return cls(kind, proc, port)

    def stop(self) -> None:
        C.REGISTRY.kill(self.proc)


# --------------------------------------------------------------------------
# The master and its API
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    t0: float
    t1: float

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Api:
    """One keep-alive connection to the master's API (``X-API-Key``)."""

    def __init__(self, port: int, key: str, timeout: float) -> None:
        self.port, self.key, self.timeout = port, key, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-API-Key": self.key}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(C.HOST, self.port, timeout=self.timeout)
            reused = self.conn.sock is not None
            t0 = time.monotonic()
            try:
                self.conn.request(method, PREFIX + path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server may close an idle keep-alive connection: retry once on a new one.
                self.close()
                if attempt == 0 and reused:
                    self.reconnects += 1
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            t1 = time.monotonic()
            if resp.will_close:
                self.close()
            return Reply(resp.status, raw, t0, t1)
        raise AssertionError("unreachable")


class Master:
    """The master process, its output (to a file, scanned for the key and for problems)."""

    def __init__(self, port: int, state_dir: str, log_path: str, query: str) -> None:
        self.port = port
        self.url = f"master://{C.HOST}:{port}/api" + (f"?{query}" if query else "")
        self.log_path = log_path
        env = dict(os.environ, NP_STATE_DIR=state_dir)
        env["PYTHONPATH"] = C.REPO_ROOT + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        self.argv = [sys.executable, "-m", "nodepass", self.url]
        self.t_spawn = time.monotonic()
        self.proc = C.REGISTRY.spawn(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=state_dir, env=env
        )
        self.key: str | None = None
        self.started = threading.Event()
        self.key_seen = threading.Event()
        self.t_started: float | None = None
        self.levels: collections.Counter[str] = collections.Counter()
        self.notable: list[str] = []
        self.notable_count = 0
        self.tracebacks = 0
        self.lines = 0
        self.seen_children: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "wb") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                self.lines += 1
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if self.key is None and (m := KEY_RE.search(line)):
                    self.key = m.group(1)
                    self.key_seen.set()
                if "Master started:" in line and not self.started.is_set():
                    self.t_started = time.monotonic()
                    self.started.set()
                m = LEVEL_RE.match(line)
                level = m.group(1) if m else ""
                if level:
                    self.levels[level] += 1
                if "Traceback" in line:
                    self.tracebacks += 1
                if level in NOTABLE or "Traceback" in line or "Unhandled" in line:
                    self.notable_count += 1
                    if len(self.notable) < 40:
                        self.notable.append(line[:400])

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:]).strip()
        except OSError:
            return ""

    def children(self) -> list[int]:
        kids = C.proc_descendants(self.pid)
        self.seen_children.update(kids)
        return kids

    def rss_kb(self) -> dict[str, int]:
        return C.proc_status_kb(self.pid, "VmRSS", "VmHWM")

    def tree_rss_kb(self) -> tuple[int, int]:
        """(sum of VmRSS over the master and its descendants, number of descendants)."""
        kids = self.children()
        total = self.rss_kb().get("VmRSS", 0)
        for k in kids:
            total += C.proc_status_kb(k, "VmRSS").get("VmRSS", 0)
        return total, len(kids)

    def kill(self) -> None:
        """SIGTERM/SIGKILL the master's group, then any instance it left (own groups)."""
        if self.proc.returncode is None:
            self.children()
        C.REGISTRY.kill(self.proc)
        for pid in sorted(self.seen_children):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"nodepass" in cmd:
                # An instance leads its own process group (nodepass.master.launch).
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


# --------------------------------------------------------------------------
# SSE subscribers: raw sockets, one selector thread, parsing in the main thread
# --------------------------------------------------------------------------


class ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding."""

    def __init__(self) -> None:
        self.buf = b""
        self.state = "size"
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out: list[bytes] = []
        while not self.done:
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(self.buf[:i].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[i + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.remaining, self.state = size, "data"
            elif self.state == "data":
                if not self.buf:
                    break
                take = self.buf[: self.remaining]
                out.append(take)
                self.buf = self.buf[len(take) :]
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.state = "crlf"
            else:
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.state = "size"
        return b"".join(out)


class Subscriber:
    """One ``GET /events`` stream. The selector thread only splits blocks and stamps them."""

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.sock: socket.socket | None = None
        self.decoder: ChunkedDecoder | None = None
        self.buf = b""
        self.blocks: list[tuple[float, bytes]] = []  # appended by the selector thread
        self.t_connect = 0.0
        self.t_headers = 0.0
        self.eof_t: float | None = None
        self.error: str | None = None
        self.content_type = ""
        # parsed by the main thread (ingest)
        self.parsed = 0
        self.first_is_retry: bool | None = None
        self.retry_t: float | None = None
        self.retries = 0
        self.initial_n = 0
        self.initial_expected = 0
        self.initial_done_t: float | None = None
        self.shutdown_t: float | None = None
        self.malformed = 0
        self.shape_errors: list[str] = []
        self.by_type: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.first: dict[tuple[str, str], float] = {}
        self.max_block = 0

    def connect(self, port: int, key: str, timeout: float) -> None:
        self.t_connect = time.monotonic()
        sock = socket.create_connection((C.HOST, port), timeout=timeout)
        sock.sendall(
            (
                f"GET {PREFIX}/events HTTP/1.1\r\nHost: {C.HOST}:{port}\r\n"
                f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n"
                "Cache-Control: no-cache\r\n\r\n"
            ).encode()
        )
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise ConnectionError(f"EOF before the response headers: {raw[:200]!r}")
            raw += chunk
        self.t_headers = time.monotonic()
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split()
        if len(status) < 2 or status[1] != "200":
            sock.close()
            raise ConnectionError(f"GET /events answered {lines[0]!r}")
        headers = {}
        for h in lines[1:]:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.content_type = headers.get("content-type", "")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.decoder = ChunkedDecoder()
        sock.setblocking(False)
        self.sock = sock
        if rest:
            self.feed(self.t_headers, rest)

    def feed(self, t: float, data: bytes) -> None:
        if self.decoder is not None:
            data = self.decoder.feed(data)
        self.buf += data
        start = 0
        while True:
            i = self.buf.find(b"\n\n", start)
            if i < 0:
                break
            block = self.buf[start:i]
            start = i + 2
            if block:
                self.blocks.append((t, block))
        if start:
            self.buf = self.buf[start:]

    def on_readable(self) -> bool:
        """Read what is there; False once the stream ended."""
        assert self.sock is not None
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.eof_t = time.monotonic()
            return False
        t = time.monotonic()
        if not data:
            self.eof_t = t
            return False
        self.feed(t, data)
        if self.decoder is not None and self.decoder.done:
            self.eof_t = t
            return False
        return True

    def ingest(self) -> None:
        n = len(self.blocks)
        for t, block in self.blocks[self.parsed : n]:
            self._parse(t, block)
        self.parsed = n

    def _shape(self, obj: dict[str, Any]) -> None:
        """The fields NodePassDash dereferences (spec §18 b10) must be there."""
        problems = []
        if not isinstance(obj.get("logs"), str):
            problems.append("logs not a string")
        inst = obj.get("instance")
        if obj.get("type") != "shutdown":
            if not isinstance(inst, dict):
                problems.append("instance not an object")
            else:
                if not isinstance(inst.get("alias"), str):
                    problems.append("instance.alias not a string")
                if not isinstance(inst.get("meta"), dict):
                    problems.append("instance.meta not an object")
        if problems and len(self.shape_errors) < 5:
            self.shape_errors.append(f"{obj.get('type')}: {', '.join(problems)}")

    def _parse(self, t: float, block: bytes) -> None:
        self.max_block = max(self.max_block, len(block) + 2)
        data = None
        retry = False
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].removeprefix(b" ")
            elif line.startswith(b"retry:"):
                retry = True
        if self.first_is_retry is None:
            self.first_is_retry = retry and data is None
        if data is None:
            if retry:
                self.retries += 1
                if self.retry_t is None:
                    self.retry_t = t
            else:
                self.malformed += 1
            return
        try:
            obj = json.loads(data)
        except ValueError:
            self.malformed += 1
            return
        if not isinstance(obj, dict):
            self.malformed += 1
            return
        self._shape(obj)
        typ = str(obj.get("type"))
        inst = obj.get("instance") if isinstance(obj.get("instance"), dict) else {}
        iid, status = str(inst.get("id", "")), str(inst.get("status", ""))
        self.by_type[typ] += 1
        self.counts[(typ, iid, status)] += 1
        if typ == "initial":
            self.initial_n += 1
            if self.initial_n == self.initial_expected:
                self.initial_done_t = t
        elif typ in ("create", "delete"):
            self.first.setdefault((typ, iid), t)
        elif typ == "update":
            self.first.setdefault((f"update:{status}", iid), t)
        elif typ == "shutdown" and self.shutdown_t is None:
            self.shutdown_t = t


class SseHub(threading.Thread):
    def __init__(self, subs: list[Subscriber]) -> None:
        super().__init__(daemon=True)
        self.subs = subs
        self.sel = selectors.DefaultSelector()
        for s in subs:
            assert s.sock is not None
            self.sel.register(s.sock, selectors.EVENT_READ, s)
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set() and self.sel.get_map():
            for key, _ in self.sel.select(0.2):
                sub: Subscriber = key.data
                if not sub.on_readable():
                    self.sel.unregister(key.fileobj)

    def ingest(self) -> None:
        for s in self.subs:
            s.ingest()

    def all_saw(self, kind: str, ids: Iterable[str]) -> bool:
        self.ingest()
        return all((kind, i) in s.first for s in self.subs for i in ids)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)
        for s in self.subs:
            if s.sock is not None:
                s.sock.close()
        self.ingest()


class BindWatcher(threading.Thread):
    """Records when each watched port starts listening (polls /proc/net/tcp)."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pending: set[int] = set()
        self.seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()

    def watch(self, port: int) -> None:
        with self._lock:
            self.pending.add(port)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            with self._lock:
                if not self.pending:
                    continue
            ports = listening_tcp_ports()
            t = time.monotonic()
            with self._lock:
                hit = self.pending & ports
                for p in hit:
                    self.seen[p] = t
                self.pending -= hit

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=2)


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


@dataclass
class Inst:
    idx: int
    phase: str
    port: int
    id: str | None = None
    t_post: float = 0.0
    post_s: float | None = None
    http_status: int | None = None
    body_status: str | None = None
    error: str | None = None
    t_delete: float | None = None
    delete_s: float | None = None
    delete_status: int | None = None


@dataclass
class Ctx:
    args: argparse.Namespace
    master: Master
    api: Api
    hub: SseHub
    binds: BindWatcher
    target_port: int
    used_ports: set[int] = field(default_factory=set)
    insts: list[Inst] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    port_lock: threading.Lock = field(default_factory=threading.Lock)

    def new_port(self) -> int:
        with self.port_lock:
            for _ in range(100):
                p = C.free_port(udp_too=True)
                if p not in self.used_ports and p != self.target_port and p != self.master.port:
                    self.used_ports.add(p)
                    return p
        raise OSError("no free port")


def create_one(ctx: Ctx, api: Api, inst: Inst) -> None:
    ctx.binds.watch(inst.port)
    url = f"client://{C.HOST}:{inst.port}/{C.HOST}:{ctx.target_port}"
    try:
        r = api.request("POST", "/instances", {"url": url})
    except (OSError, http.client.HTTPException) as exc:
        inst.error = f"POST failed: {type(exc).__name__}: {exc}"
        return
    inst.t_post, inst.post_s, inst.http_status = r.t0, r.seconds, r.status
    if r.status != 201:
        inst.error = f"POST answered {r.status}: {r.body[:300]!r}"
        return
    try:
        obj = r.json()
        inst.id = str(obj["id"])
        inst.body_status = str(obj.get("status"))
    except (ValueError, KeyError, TypeError) as exc:
        inst.error = f"POST 201 with an unreadable body ({exc}): {r.body[:300]!r}"


def create_concurrently(ctx: Ctx, batch: list[Inst]) -> None:
    """POST ``batch`` from --create-concurrency threads, one keep-alive connection each."""
    local = threading.local()
    apis: list[Api] = []

    def post(inst: Inst) -> None:
        api = getattr(local, "api", None)
        if api is None:
            api = local.api = Api(ctx.master.port, ctx.api.key, ctx.args.http_timeout)
            apis.append(api)
        create_one(ctx, api, inst)

    with concurrent.futures.ThreadPoolExecutor(ctx.args.create_concurrency) as ex:
        list(ex.map(post, batch))
    for api in apis:
        api.close()


def wait_settled(ctx: Ctx, batch: list[Inst], phase: str) -> dict[str, Any]:
    """Wait until every instance of ``batch`` is running (on every stream) and listening."""
    ids = [i.id for i in batch if i.id]
    ports = {i.port for i in batch if i.id}
    deadline = max(ctx.args.ready_timeout, 1.5 * len(ids))
    t0 = time.monotonic()
    ok = wait_until(
        lambda: ctx.hub.all_saw("update:running", ids) and ports <= ctx.binds.seen.keys(),
        deadline,
        0.05,
    )
    waited = time.monotonic() - t0
    if not ok:
        ctx.hub.ingest()
        missing = sum(1 for s in ctx.hub.subs for i in ids if ("update:running", i) not in s.first)
        ctx.errors.append(
            f"{phase}: after {deadline:.0f}s, {missing} (subscriber, instance) pairs without "
            f"a running update, {len(ports - ctx.binds.seen.keys())} ports not listening"
        )
    return {"settled": ok, "settle_s": waited}


def phase_create(ctx: Ctx, plan: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
    """Create instances per ``plan`` [(phase, count)].

    Each phase starts from a quiet machine: the next one begins only when every instance
    created so far runs and listens. Returns per phase: wall time, settling time and the
    master's own CPU seconds (POSTs and settling).
    """
    args, hub = ctx.args, ctx.hub
    out: dict[str, dict[str, Any]] = {}
    for phase, count in plan:
        if count <= 0:
            continue
        t_phase = time.monotonic()
        cpu0 = own_cpu_seconds(ctx.master.pid)
        batch = [Inst(len(ctx.insts) + i, phase, ctx.new_port()) for i in range(count)]
        ctx.insts.extend(batch)
        if phase == "paced":
            for inst in batch:
                create_one(ctx, ctx.api, inst)
                if inst.id is None:
                    continue
                iid = inst.id
                ok = wait_until(
                    lambda iid=iid, port=inst.port: (
                        hub.all_saw("update:running", [iid]) and port in ctx.binds.seen
                    ),
                    args.ready_timeout,
                )
                if not ok:
                    ctx.errors.append(f"paced instance {iid} not running+listening in time")
        elif phase == "sequential":
            for inst in batch:
                create_one(ctx, ctx.api, inst)
        else:
            create_concurrently(ctx, batch)
        post_s = time.monotonic() - t_phase
        ok_n = sum(1 for i in batch if i.id)
        settled = wait_settled(ctx, batch, phase)
        cpu1 = own_cpu_seconds(ctx.master.pid)
        out[phase] = {
            "posts_s": post_s,
            **settled,
            "master_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        }
        C.log(
            f"[create] {phase:10s} {ok_n}/{count} POSTed in {post_s:.1f}s, all running and "
            f"listening {settled['settle_s']:.1f}s later: {settled['settled']}"
            + (f" ({count - ok_n} POSTs failed)" if ok_n < count else "")
        )
    return out


def idle_cpu(master: Master, window: float) -> dict[str, float]:
    """CPU use (share of one core) of the master and of its children over ``window`` s."""

    def sample() -> tuple[float, dict[int, float]]:
        kids = {k: own_cpu_seconds(k) for k in master.children()}
        return own_cpu_seconds(master.pid) or 0.0, {k: v for k, v in kids.items() if v is not None}

    m0, k0 = sample()
    t0 = time.monotonic()
    time.sleep(window)
    m1, k1 = sample()
    dt = time.monotonic() - t0
    kids = sum(k1[k] - k0[k] for k in k1.keys() & k0.keys())
    return {"window_s": dt, "master_core": (m1 - m0) / dt, "children_core": kids / dt}


def lifecycle_stats(ctx: Ctx, insts: list[Inst]) -> dict[str, Any]:
    subs = ctx.hub.subs
    post = [i.post_s for i in insts if i.post_s is not None and i.id]
    to_create: list[float] = []
    to_running: list[float] = []
    spread_create: list[float] = []
    spread_running: list[float] = []
    to_listen: list[float] = []
    create_before_running = 0
    for i in insts:
        if not i.id:
            continue
        c = [s.first[("create", i.id)] for s in subs if ("create", i.id) in s.first]
        r = [s.first[("update:running", i.id)] for s in subs if ("update:running", i.id) in s.first]
        if c:
            to_create.append(statistics.median(c) - i.t_post)
            spread_create.append(max(c) - min(c))
        if r:
            to_running.append(statistics.median(r) - i.t_post)
            spread_running.append(max(r) - min(r))
        if c and r and statistics.median(c) <= statistics.median(r):
            create_before_running += 1
        if i.port in ctx.binds.seen:
            to_listen.append(ctx.binds.seen[i.port] - i.t_post)
    return {
        "n": len(insts),
        "created": sum(1 for i in insts if i.id),
        "post_ms": lat_ms(post),
        "post_to_create_ms": lat_ms(to_create),
        "post_to_running_ms": lat_ms(to_running),
        "post_to_listening_ms": lat_ms(to_listen),
        "fanout_spread_create_ms": lat_ms(spread_create),
        "fanout_spread_running_ms": lat_ms(spread_running),
        "create_before_running": create_before_running,
        "status_in_201": dict(collections.Counter(str(i.body_status) for i in insts if i.id)),
    }


def phase_direct_spawn(ctx: Ctx, tmpdir: str) -> dict[str, Any]:
    """Spawn ``python -m nodepass client://...`` directly; time until its port listens."""
    times: list[float] = []
    errors: list[str] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = C.REPO_ROOT + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    for k in range(ctx.args.spawn_samples):
        port = ctx.new_port()
        url = f"client://{C.HOST}:{port}/{C.HOST}:{ctx.target_port}?log={ctx.args.master_log}"
        log_path = os.path.join(tmpdir, f"direct-{k}.log")
        with open(log_path, "wb") as logf:
            t0 = time.monotonic()
            proc = C.REGISTRY.spawn(
                [sys.executable, "-m", "nodepass", url],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=C.REPO_ROOT,
                env=env,
            )
        ok = False
        while time.monotonic() - t0 < ctx.args.ready_timeout:
            if C.port_bound(port):
                ok = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.002)
        t1 = time.monotonic()
        C.REGISTRY.kill(proc)
        if ok:
            times.append(t1 - t0)
        else:
            errors.append(f"direct spawn {k}: not listening (rc={proc.returncode})")
        time.sleep(0.2)
    res: dict[str, Any] = {"spawn_to_listening_ms": lat_ms(times)}
    if errors:
        res["errors"] = errors
    return res


ENDPOINTS = ("GET /instances", "GET /instances/{id}", "GET /info", "PATCH /instances/{id}")


def endpoint_spec(name: str, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    if name == "GET /instances":
        return {"method": "GET", "paths": [f"{PREFIX}/instances"], "requests": args.requests}
    if name == "GET /instances/{id}":
        return {
            "method": "GET",
            "paths": [f"{PREFIX}/instances/{i}" for i in ids],
            "requests": args.requests,
        }
    if name == "GET /info":
        return {"method": "GET", "paths": [f"{PREFIX}/info"], "requests": args.info_requests}
    return {
        "method": "PATCH",
        "paths": [f"{PREFIX}/instances/{i}" for i in ids],
        "body": '{"alias":"x{n}"}',
        "requests": args.requests,
    }


def phase_api(
    ctx: Ctx, ids: list[str], baselines: dict[str, Baseline], key: str
) -> list[dict[str, Any]]:
    """Each endpoint, 1 then --clients clients: master, then every baseline server."""
    args = ctx.args
    rows: list[dict[str, Any]] = []
    seq = 0
    systems = [("master", ctx.master.port)] + [(k, b.port) for k, b in baselines.items()]
    for name in ENDPOINTS:
        for clients in sorted({1, args.clients}):
            row: dict[str, Any] = {"endpoint": name, "clients": clients, "systems": {}}
            for system, port in systems:
                spec = endpoint_spec(name, ids, args)
                spec.update(
                    port=port,
                    key=key,
                    clients=clients,
                    warmup=args.warmup,
                    timeout=args.http_timeout,
                    seq0=seq,
                )
                seq += spec["requests"] + args.warmup + clients
                cpu0 = own_cpu_seconds(ctx.master.pid) if system == "master" else None
                res = run_http_load(spec, timeout=args.http_timeout * 4 + spec["requests"] * 2.0)
                if cpu0 is not None and "fatal" not in res:
                    cpu1 = own_cpu_seconds(ctx.master.pid)
                    if cpu1 is not None and res.get("count"):
                        res["master_cpu_ms_per_req"] = (cpu1 - cpu0) * 1e3 / res["count"]
                row["systems"][system] = res
                if "fatal" in res:
                    ctx.errors.append(f"{name} x{clients} on {system}: {res['fatal']}")
                    C.log(f"[api] {name:22s} x{clients} {system:8s} FAILED: {res['fatal']}")
                    continue
                lat = res["latency_s"]
                bad = {k: v for k, v in res["statuses"].items() if not k.startswith("2")}
                if bad or res["errors"]:
                    ctx.errors.append(
                        f"{name} x{clients} on {system}: statuses {res['statuses']}, "
                        f"errors {res['errors']}, e.g. {res['samples'][:2]}"
                    )
                C.log(
                    f"[api] {name:22s} x{clients} {system:8s} p50 {lat['p50'] * 1e3:7.2f} ms  "
                    f"p99 {lat['p99'] * 1e3:7.2f} ms  {res['rate']:7.0f} req/s"
                    + (f"  NON-2XX {bad}" if bad else "")
                    + (f"  ERRORS {res['errors']}" if res["errors"] else "")
                )
            rows.append(row)
    return rows


def phase_delete(ctx: Ctx, insts: list[Inst]) -> dict[str, Any]:
    hub, args = ctx.hub, ctx.args
    live = [i for i in insts if i.id]
    for inst in live:
        assert inst.id is not None
        try:
            r = ctx.api.request("DELETE", f"/instances/{inst.id}")
        except (OSError, http.client.HTTPException) as exc:
            ctx.errors.append(f"DELETE {inst.id}: {type(exc).__name__}: {exc}")
            continue
        inst.t_delete, inst.delete_s, inst.delete_status = r.t0, r.seconds, r.status
        if r.status != 204:
            ctx.errors.append(f"DELETE {inst.id} answered {r.status}: {r.body[:200]!r}")
    ids = [i.id for i in live if i.id and i.delete_status == 204]
    ok = wait_until(lambda: hub.all_saw("delete", ids), args.ready_timeout, 0.05)
    if not ok:
        ctx.errors.append("not every subscriber saw every delete event in time")
    to_event: list[float] = []
    for i in live:
        if i.t_delete is None or not i.id:
            continue
        d = [s.first[("delete", i.id)] for s in hub.subs if ("delete", i.id) in s.first]
        if d:
            to_event.append(statistics.median(d) - i.t_delete)
    return {
        "n": len(live),
        "delete_ms": lat_ms([i.delete_s for i in live if i.delete_s is not None]),
        "delete_to_event_ms": lat_ms(to_event),
        "statuses": dict(collections.Counter(str(i.delete_status) for i in live)),
    }


def sse_stats(ctx: Ctx, ids: list[str], deleted: list[str]) -> dict[str, Any]:
    subs = ctx.hub.subs
    union: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for s in subs:
        union |= collections.Counter({k: v for k, v in s.counts.items() if k[0] != "initial"})
    per_sub = []
    missing_total = 0
    lifecycle_missing = 0
    for s in subs:
        own = collections.Counter({k: v for k, v in s.counts.items() if k[0] != "initial"})
        missing = sum((union - own).values())
        missing_total += missing
        lc = sum(
            1 for i in ids for kind in ("create", "update:running") if (kind, i) not in s.first
        ) + sum(1 for i in deleted if ("delete", i) not in s.first)
        lifecycle_missing += lc
        per_sub.append(
            {
                "events": sum(s.by_type.values()),
                "by_type": dict(s.by_type),
                "missing_vs_union": missing,
                "lifecycle_missing": lc,
                "retry_first": s.first_is_retry,
                "initial": s.initial_n,
                "initial_expected": s.initial_expected,
                "keepalives": max(0, s.retries - 1),
                "malformed": s.malformed,
                "shape_errors": s.shape_errors,
                "content_type": s.content_type,
                "got_shutdown": s.shutdown_t is not None,
                "eof": s.eof_t is not None,
                "error": s.error,
                "max_block_bytes": s.max_block,
            }
        )
    events = [p["events"] for p in per_sub]
    return {
        "subscribers": len(subs),
        "connect_to_headers_ms": lat_ms(s.t_headers - s.t_connect for s in subs),
        "connect_to_retry_ms": lat_ms(s.retry_t - s.t_connect for s in subs if s.retry_t),
        "connect_to_snapshot_ms": lat_ms(
            s.initial_done_t - s.t_connect for s in subs if s.initial_done_t
        ),
        "events_per_subscriber": {"min": min(events), "max": max(events)} if events else {},
        "events_union": sum(union.values()),
        "by_type_union": dict(
            sum((collections.Counter({k[0]: v}) for k, v in union.items()), collections.Counter())
        ),
        "missing_total": missing_total,
        "lifecycle_missing_total": lifecycle_missing,
        "bad_first_block": sum(1 for p in per_sub if not p["retry_first"]),
        "bad_snapshot": sum(1 for p in per_sub if p["initial"] != p["initial_expected"]),
        "per_subscriber": per_sub,
    }


def orphans(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` still alive as a nodepass process (not a zombie)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"nodepass" in cmd and state != "Z":
            out.append(pid)
    return out


def phase_shutdown(ctx: Ctx, running: int) -> dict[str, Any]:
    master = ctx.master
    kids = master.children()
    t0 = time.monotonic()
    try:
        os.kill(master.pid, signal.SIGTERM)
    except ProcessLookupError:
        return {"error": "master already gone"}
    limit = ctx.args.shutdown_limit
    try:
        rc: int | None = master.proc.wait(timeout=limit + 10)
    except subprocess.TimeoutExpired:
        rc = None
    t1 = time.monotonic()
    wait_until(lambda: all(s.eof_t is not None for s in ctx.hub.subs), 2.0, 0.02)
    ctx.hub.ingest()
    sd = [s.shutdown_t - t0 for s in ctx.hub.subs if s.shutdown_t is not None]
    left: list[int] = []
    if rc is not None:
        wait_until(lambda: not orphans(kids), 3.0, 0.05)
        left = orphans(kids)
        if left:
            ctx.errors.append(f"{len(left)} instance processes outlived the master: {left[:5]}")
    res: dict[str, Any] = {
        "running_instances": running,
        "children_at_sigterm": len(kids),
        "orphans": len(left),
        "exit_s": (t1 - t0) if rc is not None else None,
        "returncode": rc,
        "sigterm_to_shutdown_event_ms": lat_ms(sd),
        "subscribers_with_shutdown_event": len(sd),
        "subscribers_closed": sum(1 for s in ctx.hub.subs if s.eof_t is not None),
    }
    if rc is None:
        ctx.errors.append(f"master did not exit within {limit + 10:.0f}s of SIGTERM")
    elif t1 - t0 > limit:
        ctx.errors.append(f"master took {t1 - t0:.2f}s to exit (limit {limit:.1f}s)")
    if rc not in (0, None):
        ctx.errors.append(f"master exited with rc={rc} after SIGTERM")
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def f_ms(d: dict[str, float] | None, key: str, digits: int = 2) -> str:
    if not d or not d.get("n"):
        return "-"
    return C.fmt_num(d.get(key), digits)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "-"
    r = a / b
    return f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def render(results: dict[str, Any], markdown: bool = False) -> str:
    out: list[str] = []
    meta = results["meta"]
    out.append(
        f"NodePass master benchmark  {meta['date']}  host={meta['host']}  cpus={meta['cpus']}  "
        f"python={meta['python']}  nodepass={meta['nodepass']}"
    )
    out.append(
        f"instances={meta['instances']}  subscribers={meta['subscribers']}  "
        f"load average (1 min) {meta['loadavg_start'][0]:.2f} at start, "
        f"{meta.get('loadavg_end', [float('nan')])[0]:.2f} at end"
    )
    out.append("")

    api = results.get("api") or []
    if api:
        bases = [b for b in BASELINE_SERVERS if any(b in r["systems"] for r in api)]
        header = ["API latency (ms)", "n", "p50", "p99", "max", "req/s"]
        for b in bases:
            header += [f"{b} p50", f"{b} req/s", f"p50 x{b}"]
        rows = []
        for r in api:
            m = r["systems"].get("master", {})
            ml = lat_ms_from(m)
            row = [
                f"{r['endpoint']} x{r['clients']}",
                str(ml.get("n", "-")) if ml else "-",
                f_ms(ml, "p50"),
                f_ms(ml, "p99"),
                f_ms(ml, "max"),
                C.fmt_num(m.get("rate"), 0) if ml else "-",
            ]
            for b in bases:
                bl = lat_ms_from(r["systems"].get(b, {}))
                row += [
                    f_ms(bl, "p50", 3),
                    C.fmt_num(r["systems"].get(b, {}).get("rate"), 0) if bl else "-",
                    ratio(ml.get("p50") if ml else None, bl.get("p50") if bl else None),
                ]
            rows.append(row)
        out.append(C.render_table(header, rows, markdown))
        out.append(
            "  (xN = clients; GET /info includes the master's 100 ms CPU sample, spec §8.8; "
            "baselines serve the same JSON)"
        )
        out.append("")

    cr = results.get("create") or {}
    if cr:
        header = ["instance lifecycle (ms)", "n", "p50", "p90", "p99", "max"]
        rows = []
        spawn = (results.get("direct_spawn") or {}).get("spawn_to_listening_ms")
        for phase in [*CREATE_PHASES, "all"]:
            st = cr.get(phase)
            if not st or not st.get("n"):
                continue
            for key, label in (
                ("post_ms", "POST latency"),
                ("post_to_create_ms", "POST -> create event"),
                ("post_to_running_ms", "POST -> running update"),
                ("post_to_listening_ms", "POST -> port listening"),
                ("fanout_spread_running_ms", "running: spread over subs"),
            ):
                d = st.get(key)
                rows.append(
                    [
                        f"{phase}: {label}",
                        str(d.get("n", 0)) if d else "0",
                        f_ms(d, "p50", 1),
                        f_ms(d, "p90", 1),
                        f_ms(d, "p99", 1),
                        f_ms(d, "max", 1),
                    ]
                )
        if spawn and spawn.get("n"):
            rows.append(
                [
                    "baseline: direct spawn -> listening",
                    str(spawn["n"]),
                    f_ms(spawn, "p50", 1),
                    f_ms(spawn, "p90", 1),
                    f_ms(spawn, "p99", 1),
                    f_ms(spawn, "max", 1),
                ]
            )
        de = results.get("delete") or {}
        for key, label in (
            ("delete_ms", "DELETE latency"),
            ("delete_to_event_ms", "DELETE -> delete event"),
        ):
            d = de.get(key)
            if d and d.get("n"):
                rows.append(
                    [
                        label,
                        str(d["n"]),
                        f_ms(d, "p50", 1),
                        f_ms(d, "p90", 1),
                        f_ms(d, "p99", 1),
                        f_ms(d, "max", 1),
                    ]
                )
        out.append(C.render_table(header, rows, markdown))
        for phase in CREATE_PHASES:
            st = cr.get(phase)
            if not st or "posts_s" not in st:
                continue
            cpu = st.get("master_cpu_s")
            out.append(
                f"  {phase}: {st['n']} POSTs in {st['posts_s']:.1f} s, all running and listening "
                f"{st['settle_s']:.1f} s later; master CPU "
                + (
                    "-"
                    if cpu is None
                    else f"{cpu:.2f} s ({cpu * 1e3 / max(1, st['n']):.0f} ms per instance)"
                )
                + f"; status in the 201 body: {st['status_in_201']}"
            )
        paced = cr.get("paced") or {}
        if spawn and spawn.get("n") and paced.get("n"):
            out.append(
                "  paced POST -> running p50 = "
                f"{ratio(paced['post_to_running_ms'].get('p50'), spawn.get('p50'))}, "
                "POST -> listening p50 = "
                f"{ratio(paced['post_to_listening_ms'].get('p50'), spawn.get('p50'))} "
                "the direct spawn -> listening p50"
            )
        out.append("")

    mem = results.get("memory") or {}
    if mem:
        rows = []

        def mib(kb: int | None) -> str:
            return "-" if not kb else f"{kb / 1024:.1f}"

        for key, label in (
            ("idle_kb", "master VmRSS, idle (no subscriber, no instance)"),
            ("subs_kb", "master VmRSS, subscribers connected"),
            ("loaded_kb", "master VmRSS, all instances running + subscribers"),
            ("after_api_kb", "master VmRSS, after the API mix"),
            ("after_delete_kb", "master VmRSS, after deleting every instance"),
            ("hwm_kb", "master VmHWM (peak)"),
            ("tree_loaded_kb", "process tree RSS, loaded"),
            ("tree_peak_kb", "process tree RSS, sampled peak"),
            ("child_avg_kb", "per instance child, average RSS"),
        ):
            rows.append([label, mib(mem.get(key))])
        out.append(C.render_table(["memory", "MiB"], rows, markdown))
        out.append(f"  children while loaded: {mem.get('children_loaded')}")
        ic = results.get("idle_cpu")
        if ic:
            out.append(
                f"  CPU while loaded and idle ({ic['window_s']:.0f} s): master "
                f"{ic['master_core'] * 100:.1f}% of a core, its children together "
                f"{ic['children_core'] * 100:.1f}%"
            )
        out.append("")

    sse = results.get("sse") or {}
    if sse:
        out.append(
            f"SSE: {sse['subscribers']} subscribers, events per subscriber "
            f"{sse['events_per_subscriber']}, by type {sse['by_type_union']}; "
            f"missing vs union {sse['missing_total']}, lifecycle events missing "
            f"{sse['lifecycle_missing_total']}, bad first block {sse['bad_first_block']}, "
            f"bad snapshot {sse['bad_snapshot']}; connect -> retry p50 "
            f"{f_ms(sse['connect_to_retry_ms'], 'p50')} ms, -> snapshot p50 "
            f"{f_ms(sse['connect_to_snapshot_ms'], 'p50')} ms"
        )
    sd = results.get("shutdown") or {}
    if sd:
        ex = sd.get("exit_s")
        out.append(
            f"shutdown with {sd.get('running_instances')} instances running: SIGTERM -> exit "
            f"{'-' if ex is None else f'{ex:.2f}'} s "
            f"(rc={sd.get('returncode')}), {sd.get('orphans')} orphans, shutdown event on "
            f"{sd.get('subscribers_with_shutdown_event')}/{sse.get('subscribers', '?')} streams "
            f"(p50 {f_ms(sd.get('sigterm_to_shutdown_event_ms'), 'p50')} ms), "
            f"{sd.get('subscribers_closed')} streams closed"
        )
    mo = results.get("master_output") or {}
    if mo:
        out.append(
            f"master output: {mo.get('lines')} lines, levels {mo.get('levels')}, "
            f"{mo.get('notable_count')} warning/error lines, {mo.get('tracebacks')} tracebacks"
        )
    notes = list(results.get("errors") or [])
    notes += [f"master said: {x}" for x in (mo.get("notable") or [])[:15]]
    if notes:
        out.append("")
        out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def lat_ms_from(res: dict[str, Any]) -> dict[str, float] | None:
    lat = res.get("latency_s")
    if not lat or not lat.get("n"):
        return None
    return {k: (v if k == "n" else v * 1e3) for k, v in lat.items()}


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the master mode: REST API, SSE fan-out, instance supervision.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--instances", type=int, default=100, help="instances to create")
    p.add_argument("--subscribers", type=int, default=20, help="SSE streams kept open")
    p.add_argument("--requests", type=int, default=500, help="requests per endpoint and test")
    p.add_argument(
        "--info-requests",
        type=int,
        default=100,
        help="requests for GET /info (each takes >= 100 ms: the CPU sample)",
    )
    p.add_argument("--clients", type=int, default=4, help="keep-alive clients, concurrent test")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each test")
    p.add_argument("--paced", type=int, default=10, help="instances created one at a time, first")
    p.add_argument(
        "--concurrent-share",
        type=float,
        default=0.5,
        help="share of the other instances POSTed by --create-concurrency threads "
        "(the rest back to back from one client)",
    )
    p.add_argument("--create-concurrency", type=int, default=8, help="threads, concurrent POSTs")
    p.add_argument("--spawn-samples", type=int, default=5, help="direct-spawn baseline repetitions")
    p.add_argument(
        "--baselines",
        default=",".join(BASELINE_SERVERS),
        help="trivial servers to compare with: twisted, stdlib (empty: none)",
    )
    p.add_argument("--master-log", default="info", help="log= of the master URL")
    p.add_argument("--start-timeout", type=float, default=30.0, help="s for the master to listen")
    p.add_argument(
        "--ready-timeout", type=float, default=60.0, help="s for instances/events to show up"
    )
    p.add_argument("--http-timeout", type=float, default=30.0, help="s per HTTP request")
    p.add_argument(
        "--shutdown-limit",
        type=float,
        default=7.0,
        help="s the master may take to exit after SIGTERM (NP_SHUTDOWN_TIMEOUT 5 s + margin)",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="s of quiet before each memory reading"
    )
    p.add_argument(
        "--idle-window",
        type=float,
        default=5.0,
        help="s over which the CPU use of the loaded but idle master is measured",
    )
    p.add_argument(
        "--shutdown-running",
        type=int,
        default=0,
        metavar="K",
        help="delete all but K instances, so that SIGTERM stops K running instances",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10 instances, 5 subscribers, 100 requests, 2 paced, 2 spawn samples",
    )
    p.add_argument("--json", metavar="FILE", help="write raw results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.instances = min(args.instances, 10)
        args.subscribers = min(args.subscribers, 5)
        args.requests = min(args.requests, 100)
        args.info_requests = min(args.info_requests, 20)
        args.paced = min(args.paced, 2)
        args.spawn_samples = min(args.spawn_samples, 2)
        args.settle = min(args.settle, 1.0)
        args.idle_window = min(args.idle_window, 2.0)
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in args.baselines if b not in BASELINE_SERVERS]
    if bad:
        p.error(f"unknown baseline(s): {', '.join(bad)}")
    if args.instances < 1 or args.subscribers < 1 or args.requests < 1 or args.clients < 1:
        p.error("--instances, --subscribers, --requests and --clients must be >= 1")
    args.paced = max(0, min(args.paced, args.instances))
    return args


def run(args: argparse.Namespace, tmpdir: str, results: dict[str, Any]) -> None:
    state_dir = os.path.join(tmpdir, "state")
    os.makedirs(state_dir)
    query = f"log={args.master_log}" if args.master_log else ""
    master = Master(C.free_port(), state_dir, os.path.join(tmpdir, "master.log"), query)
    results["master"] = {"url": master.url, "argv": master.argv, "state_dir": state_dir}
    results["_master"] = master  # for cleanup (removed before JSON)
    ok = master.started.wait(args.start_timeout) and master.key_seen.wait(5)
    if not ok or master.key is None:
        raise C.StartError(
            f"master did not print 'Master started' and its key within {args.start_timeout:.0f}s"
            f" (rc={master.proc.poll()}):\n    {master.tail()}"
        )
    if not C.wait_listening(master.port, args.start_timeout, master.proc):
        raise C.StartError(f"master not listening on {master.port}:\n    {master.tail()}")
    results["master"]["startup_s"] = time.monotonic() - master.t_spawn
    C.log(
        f"[setup] master pid {master.pid} on {C.HOST}:{master.port}, key found, state {state_dir}"
    )
    api = Api(master.port, master.key, args.http_timeout)
    time.sleep(args.settle)
    memory: dict[str, Any] = {"idle_kb": master.rss_kb().get("VmRSS")}
    results["memory"] = memory
    sampler = C.TreeMemorySampler(master.pid, interval=0.5)
    sampler.start()

    r = api.request("GET", "/instances")
    if r.status != 200:
        raise RuntimeError(f"GET /instances answered {r.status}: {r.body[:300]!r}")
    n_initial = len(r.json())
    info = api.request("GET", "/info")
    results["master"]["info_status"] = info.status
    if info.status == 200:
        results["master"]["info"] = {
            k: v for k, v in info.json().items() if k in ("ver", "log", "tls", "name", "os", "arch")
        }

    subs = [Subscriber(i) for i in range(args.subscribers)]
    for s in subs:
        s.initial_expected = n_initial
        s.connect(master.port, master.key, args.http_timeout)
    hub = SseHub(subs)
    hub.start()
    binds = BindWatcher()
    binds.start()
    ctx = Ctx(args, master, api, hub, binds, target_port=C.free_port())
    results["_ctx"] = ctx
    ok = wait_until(
        lambda: (hub.ingest(), all(s.initial_done_t and s.retry_t for s in subs))[1], 10.0
    )
    C.log(f"[sse] {len(subs)} subscribers connected, snapshot of {n_initial} on each: {ok}")
    if not ok:
        ctx.errors.append("not every subscriber got retry + the initial snapshot within 10 s")
    time.sleep(args.settle)
    memory["subs_kb"] = master.rss_kb().get("VmRSS")

    results["direct_spawn"] = phase_direct_spawn(ctx, tmpdir)
    sp = results["direct_spawn"]["spawn_to_listening_ms"]
    C.log(f"[baseline] direct spawn -> listening p50 {f_ms(sp, 'p50', 1)} ms (n={sp['n']})")

    rest = args.instances - args.paced
    conc = round(rest * args.concurrent_share)
    plan = [("paced", args.paced), ("sequential", rest - conc), ("concurrent", conc)]
    phases = phase_create(ctx, plan)
    hub.ingest()
    create: dict[str, Any] = {}
    for phase, _n in plan:
        batch = [i for i in ctx.insts if i.phase == phase]
        if batch:
            create[phase] = lifecycle_stats(ctx, batch) | phases.get(phase, {})
    create["all"] = lifecycle_stats(ctx, ctx.insts)
    results["create"] = create
    for i in ctx.insts:
        if i.error:
            ctx.errors.append(f"instance {i.idx} ({i.phase}): {i.error}")
    for phase in [p for p, _ in plan if p in create]:
        st = create[phase]
        C.log(
            f"[create] {phase:10s} POST p50 {f_ms(st['post_ms'], 'p50')} ms, -> create p50 "
            f"{f_ms(st['post_to_create_ms'], 'p50', 1)} ms, -> running p50 "
            f"{f_ms(st['post_to_running_ms'], 'p50', 1)} ms p99 "
            f"{f_ms(st['post_to_running_ms'], 'p99', 1)} ms, -> listening p50 "
            f"{f_ms(st['post_to_listening_ms'], 'p50', 1)} ms"
        )
    ids = [i.id for i in ctx.insts if i.id]
    errored = sorted(
        {i for s in subs for (k, i) in s.first if k == "update:error" and i in set(ids)}
    )
    if errored:
        ctx.errors.append(f"{len(errored)} instances reported status error: {errored[:5]}")

    time.sleep(args.settle)
    tree, nkids = master.tree_rss_kb()
    memory["loaded_kb"] = master.rss_kb().get("VmRSS")
    memory["tree_loaded_kb"] = tree
    memory["children_loaded"] = nkids
    if nkids:
        memory["child_avg_kb"] = (tree - (memory["loaded_kb"] or 0)) // nkids
    C.log(
        f"[memory] master {memory['loaded_kb'] / 1024:.1f} MiB, tree {tree / 1024:.0f} MiB, "
        f"{nkids} children"
    )
    results["idle_cpu"] = idle_cpu(master, args.idle_window)
    ic = results["idle_cpu"]
    C.log(
        f"[idle] over {ic['window_s']:.1f}s: master {ic['master_core'] * 100:.1f}% of a core, "
        f"children {ic['children_core'] * 100:.1f}%"
    )

    r = api.request("GET", "/instances")
    listing = r.json() if r.status == 200 else []
    results["list_body_bytes"] = len(r.body)
    running = sum(1 for x in listing if x.get("status") == "running")
    results["listed"] = {"objects": len(listing), "running": running}
    if len(listing) != len(ids) + n_initial or running != len(ids):
        ctx.errors.append(
            f"GET /instances lists {len(listing)} objects, {running} running "
            f"(expected {len(ids) + n_initial}, {len(ids)} running)"
        )
    body_file = os.path.join(tmpdir, "instances.json")
    with open(body_file, "wb") as f:
        f.write(r.body)

    baselines: dict[str, Baseline] = {}
    for kind in args.baselines:
        try:
            baselines[kind] = Baseline.start(kind, master.key, body_file, args.start_timeout)
        except C.StartError as exc:
            ctx.errors.append(str(exc))
    try:
        if ids:
            results["api"] = phase_api(ctx, ids, baselines, master.key)
    finally:
        for b in baselines.values():
            b.stop()
    time.sleep(args.settle)
    memory["after_api_kb"] = master.rss_kb().get("VmRSS")

    keep = min(args.shutdown_running, len(ctx.insts))
    results["delete"] = phase_delete(ctx, ctx.insts[: len(ctx.insts) - keep])
    de = results["delete"]
    C.log(
        f"[delete] {de['n']} DELETEs p50 {f_ms(de['delete_ms'], 'p50', 1)} ms p99 "
        f"{f_ms(de['delete_ms'], 'p99', 1)} ms"
        + (f"; {keep} instances left running for the shutdown" if keep else "")
    )
    kept = sum(1 for i in ctx.insts[len(ctx.insts) - keep :] if i.id)
    wait_until(lambda: len(master.children()) <= kept, 10.0, 0.1)
    time.sleep(args.settle)
    memory["after_delete_kb"] = master.rss_kb().get("VmRSS")
    left = master.children()
    if len(left) != kept:
        ctx.errors.append(f"{len(left)} child processes alive after the DELETEs (expected {kept})")
    mem = sampler.stop()
    memory["hwm_kb"] = master.rss_kb().get("VmHWM") or mem["main_hwm_kb"]
    memory["tree_peak_kb"] = mem["tree_peak_kb"]
    memory["max_children"] = mem["max_children"]

    results["shutdown"] = phase_shutdown(ctx, kept)
    sd = results["shutdown"]
    ex = sd.get("exit_s")
    C.log(
        f"[shutdown] {kept} instances running; SIGTERM -> exit "
        f"{'-' if ex is None else f'{ex:.2f}'} s, rc={sd.get('returncode')}, "
        f"{sd.get('orphans')} orphaned children"
    )
    hub.stop()
    binds.stop()
    deleted = [i.id for i in ctx.insts if i.id and i.delete_status == 204]
    results["sse"] = sse_stats(ctx, ids, deleted)
    results["http_reconnects"] = api.reconnects


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_load", "_baseline"):
        return worker_main(argv)
    args = parse_args(argv)
    t_start = C.start_run()
    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nodepass": C.nodepass_version() or "?",
            "instances": args.instances,
            "subscribers": args.subscribers,
            "loadavg_start": os.getloadavg(),
            "args": vars(args),
        },
        "errors": [],
    }
    interrupted = False
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="nodepass-bench-master-") as tmpdir:
            try:
                run(args, tmpdir, results)
            finally:
                master: Master | None = results.pop("_master", None)
                ctx: Ctx | None = results.pop("_ctx", None)
                if ctx is not None:
                    ctx.hub.stop()
                    ctx.binds.stop()
                    results["errors"] = ctx.errors + results["errors"]
                if master is not None:
                    master.kill()
                    results["master_output"] = {
                        "lines": master.lines,
                        "levels": dict(master.levels),
                        "notable_count": master.notable_count,
                        "notable": master.notable,
                        "tracebacks": master.tracebacks,
                    }
                    if args.json:
                        keep = os.path.splitext(os.path.abspath(args.json))[0] + ".master.log"
                        try:
                            with open(master.log_path, "rb") as src, open(keep, "wb") as dst:
                                dst.write(src.read())
                            results["master_output"]["log_copy"] = keep
                        except OSError:
                            pass
                C.REGISTRY.kill_all()
    except KeyboardInterrupt:
        interrupted = True
        C.log("\ninterrupted: stopping the master and every child, reporting what was measured")
    except (C.StartError, RuntimeError, OSError, http.client.HTTPException, ValueError) as exc:
        failed = True
        results["errors"].append(f"aborted: {type(exc).__name__}: {exc}")
        C.log(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        C.REGISTRY.kill_all()
    C.end_meta(results["meta"], t_start, interrupted)
    print()
    print(render(results))
    if args.markdown:
        print()
        print(render(results, markdown=True))
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        C.write_json(args.json, results)
    else:
        print("JSON summary:")
        print(json.dumps(summary(results), indent=1, default=str))
    if interrupted:
        return 130
    return 1 if failed or results["errors"] else 0


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (the whole result goes to --json)."""
    out: dict[str, Any] = {
        "meta": {k: results["meta"].get(k) for k in ("date", "instances", "subscribers", "wall_s")}
    }
    api = {}
    for r in results.get("api") or []:
        name = f"{r['endpoint']} x{r['clients']}"
        api[name] = {}
        for system, res in r["systems"].items():
            lat = lat_ms_from(res)
            if lat:
                api[name][system] = {
                    "p50_ms": round(lat["p50"], 3),
                    "p99_ms": round(lat["p99"], 3),
                    "max_ms": round(lat["max"], 3),
                    "req_s": round(res["rate"], 1),
                }
    out["api"] = api
    lc = {}
    for phase, st in (results.get("create") or {}).items():
        lc[phase] = {
            k: {q: round(v[q], 1) for q in ("p50", "p99", "max")} | {"n": v["n"]}
            for k, v in st.items()
            if k.endswith("_ms") and v.get("n")
        } | {k: st[k] for k in ("posts_s", "settle_s", "master_cpu_s") if k in st}
    out["create"] = lc
    out["direct_spawn"] = results.get("direct_spawn")
    out["delete"] = results.get("delete")
    out["memory_kb"] = results.get("memory")
    out["idle_cpu"] = results.get("idle_cpu")
    out["shutdown"] = results.get("shutdown")
    sse = results.get("sse") or {}
    out["sse"] = {k: v for k, v in sse.items() if k != "per_subscriber"}
    out["errors"] = results.get("errors")
    return out


if __name__ == "__main__":
    sys.exit(main())
