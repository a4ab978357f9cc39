"""The load generator, in its own process: one kind of load per run, one JSON result.

``python -m np_bench load SPEC_JSON`` runs ``LOAD_KINDS[spec["kind"]]`` and prints
its result (or ``{"fatal": ...}``) as the last line of stdout; ``run_load`` does
that from the orchestrator. ``python -m np_bench hold SPEC_JSON`` opens many idle
connections, says so on stdout, holds them until a line on stdin, then closes
them (``Holder`` drives it). Everything connects to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from np_bench.base import HOST
from np_bench.procs import REGISTRY, spawn_helper
from np_bench.stats import summarize_latencies


def _load_stream(spec: dict[str, Any]) -> dict[str, Any]:
    """N parallel streams into the sink, for a duration or a fixed volume."""
    port, streams = spec["port"], spec["streams"]
    chunk = b"S" * spec.get("chunk", 256 * 1024)
    duration = spec.get("duration")
    per_stream = spec.get("bytes_per_stream")
    max_time = spec.get("max_time", 60.0)
    io_timeout = spec.get("io_timeout", 10.0)
    socks = []
    for _ in range(streams):
        s = socket.create_connection((HOST, port), timeout=io_timeout)
        socks.append(s)
    sent = [0] * streams
    errors: list[str] = []
    t_done = [0.0] * streams
    barrier = threading.Barrier(streams + 1)
    box: dict[str, float] = {}

    def worker(i: int) -> None:
        s = socks[i]
        barrier.wait()
        t0 = box["t0"]
        end = t0 + (duration if duration is not None else max_time)
        limit = per_stream if per_stream is not None else math.inf
        n = 0
        view = memoryview(chunk)
        try:
            while n < limit and time.monotonic() < end:
                if limit - n < len(chunk):
                    s.sendall(view[: int(limit - n)])
                    n = int(limit)
                else:
                    s.sendall(view)
                    n += len(chunk)
        except OSError as exc:
            errors.append(f"stream {i}: {exc!r}")
        sent[i] = n
        t_done[i] = time.monotonic()
        s.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    box["t0"] = time.monotonic()
    barrier.wait()
    for t in threads:
        t.join()
    return {
        "t0": box["t0"],
        "t_send_done": max(t_done),
        "sent_bytes": sum(sent),
        "per_stream_sent": sent,
        "errors": errors,
    }


def _load_rtt(spec: dict[str, Any]) -> dict[str, Any]:
    """One persistent connection, 64-byte ping-pong."""
    port, duration = spec["port"], spec["duration"]
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    size = spec.get("size", 64)
    max_count = spec.get("max_count", 1_000_000)
    warmup = spec.get("warmup", 200)
    msg = b"E" + b"y" * (size - 1)
    perf = time.perf_counter
    s = socket.create_connection((HOST, port), timeout=spec.get("io_timeout", 5.0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat: list[float] = []

    def one() -> float:
        t = perf()
        s.sendall(msg)
        got = 0
        while got < size:
            b = s.recv(size - got)
            if not b:
                raise ConnectionError("EOF")
            got += len(b)
        return perf() - t

    for _ in range(warmup):
        one()
    t0 = perf()
    end = t0 + duration
    while perf() < end and len(lat) < max_count:
        lat.append(one())
    elapsed = perf() - t0
    s.close()
    return {"elapsed": elapsed, "latency_s": summarize_latencies(lat)}


def _load_connrate(spec: dict[str, Any]) -> dict[str, Any]:
    """W workers doing connect + 64-byte echo + close in a loop; counts per second too.

    ``per_second[i]`` is the number of cycles that completed in second ``i``
    after the start (``errors_per_second`` likewise for failures), for the
    whole seconds of ``duration``; cycles that end after it count in ``count``
    but in no bin. Used to check that a forwarder sustains its rate (a pool
    that runs dry shows up as a rate that drops after the first seconds).
    """
    port, workers, duration = spec["port"], spec["workers"], spec["duration"]
    size = spec.get("size", 64)
    io_timeout = spec.get("io_timeout", 5.0)
    msg = b"E" + b"x" * (size - 1)
    nbins = max(1, int(duration))
    lat: list[list[float]] = [[] for _ in range(workers)]
    done_at: list[list[float]] = [[] for _ in range(workers)]
    failed_at: list[list[float]] = [[] for _ in range(workers)]
    errs: list[dict[str, int]] = [{} for _ in range(workers)]
    barrier = threading.Barrier(workers + 1)
    box: dict[str, float] = {}
    perf = time.perf_counter
    addr = (HOST, port)

    def worker(i: int) -> None:
        my_lat, my_done, my_fail, my_err = lat[i], done_at[i], failed_at[i], errs[i]
        barrier.wait()
        t0 = box["t0"]
        end = t0 + duration
        while perf() < end:
            t = perf()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(io_timeout)
                s.connect(addr)
                s.sendall(msg)
                got = 0
                while got < size:
                    b = s.recv(size - got)
                    if not b:
                        raise ConnectionError("EOF")
                    got += len(b)
                s.close()
                t_end = perf()
                my_lat.append(t_end - t)
                my_done.append(t_end - t0)
            except OSError as exc:
                s.close()
                my_fail.append(perf() - t0)
                key = type(exc).__name__
                my_err[key] = my_err.get(key, 0) + 1
                time.sleep(0.001)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    box["t0"] = perf()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = perf() - box["t0"]

    def bins(times: list[list[float]]) -> list[int]:
        out = [0] * nbins
        for part in times:
            for x in part:
                k = int(x)
                if 0 <= k < nbins:
                    out[k] += 1
        return out

    all_lat = [x for part in lat for x in part]
    errors: dict[str, int] = {}
    for e in errs:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    return {
        "elapsed": elapsed,
        "count": len(all_lat),
        "rate": len(all_lat) / elapsed if elapsed > 0 else math.nan,
        "latency_s": summarize_latencies(all_lat),
        "errors": errors,
        "per_second": bins(done_at),
        "errors_per_second": bins(failed_at),
    }


def _load_down(spec: dict[str, Any]) -> dict[str, Any]:
    """N parallel streams out of the target's source: each asks for ``duration`` seconds."""
    port, streams, duration = spec["port"], spec.get("streams", 1), spec["duration"]
    io_timeout = spec.get("io_timeout", 10.0)
    socks = [socket.create_connection((HOST, port), timeout=io_timeout) for _ in range(streams)]
    got = [0] * streams
    t_end = [0.0] * streams
    errors: list[str] = []
    barrier = threading.Barrier(streams + 1)
    request = f"D{duration:.3f}\n".encode()

    def worker(i: int) -> None:
        s = socks[i]
        buf = bytearray(1 << 20)
        barrier.wait()
        n = 0
        try:
            s.sendall(request)
            while True:
                k = s.recv_into(buf)
                if not k:
                    break
                n += k
        except OSError as exc:
            errors.append(f"stream {i}: {exc!r}")
        got[i] = n
        t_end[i] = time.monotonic()
        s.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    barrier.wait()
    for t in threads:
        t.join()
    return {"t0": t0, "t_end": max(t_end), "received_bytes": sum(got), "errors": errors}


def _load_udp(spec: dict[str, Any]) -> dict[str, Any]:
    """Datagrams at ``rate``/s for ``duration`` s on one socket; the bytes echoed back.

    A warm-up first sends one datagram every 50 ms until one comes back (a
    tunnel sets a UDP session up on its first datagram). Loss counts bytes,
    not datagrams: a tunnel that carries UDP over a TCP stream may deliver two
    datagrams as one, or one as two.
    """
    port, rate, duration = spec["port"], spec["rate"], spec["duration"]
    size = spec.get("size", 512)
    quiet = spec.get("quiet", 0.5)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass
    s.connect((HOST, port))
    s.settimeout(0.05)
    warm = b"W" * size
    deadline = time.monotonic() + spec.get("warmup_timeout", 5.0)
    warmed = False
    while time.monotonic() < deadline and not warmed:
        try:
            s.send(warm)
            while True:
                if s.recv(65536):
                    warmed = True
        except TimeoutError:
            pass
        except OSError:
            time.sleep(0.05)
    if not warmed:
        s.close()
        return {"fatal": "no datagram came back during the warm-up"}
    # drain what the warm-up still has in flight
    end_drain = time.monotonic() + 0.3
    while time.monotonic() < end_drain:
        try:
            s.recv(65536)
        except OSError:
            pass
    if spec.get("control"):  # the target counts from here on
        with socket.create_connection((HOST, spec["control"]), timeout=5) as c:
            c.sendall(b"RESET\n")
            c.recv(256)
    count = max(1, int(rate * duration))
    payload = bytearray(b"U" * size)
    received = [0, 0]  # bytes, datagrams
    last_rx = [time.monotonic()]
    stop = threading.Event()

    def receiver() -> None:
        buf = bytearray(65536)
        while not stop.is_set():
            try:
                n = s.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:
                continue
            received[0] += n
            received[1] += 1
            last_rx[0] = time.monotonic()

    rx = threading.Thread(target=receiver, daemon=True)
    rx.start()
    sent = errors = 0
    perf = time.perf_counter
    t0 = perf()
    mono0 = time.monotonic()
    while sent < count:
        due = min(count, int((perf() - t0) * rate) + 1)
        while sent < due:
            payload[:4] = sent.to_bytes(4, "big")
            try:
                s.send(payload)
            except OSError:
                errors += 1
            sent += 1
        time.sleep(0.0005)
    send_s = perf() - t0
    t_sent = time.monotonic()
    while time.monotonic() - max(last_rx[0], t_sent) < quiet and time.monotonic() - t_sent < 5:
        time.sleep(0.02)
    stop.set()
    rx.join(timeout=1)
    s.close()
    sent_bytes = sent * size
    return {
        "t0": mono0,
        "sent": sent,
        "sent_bytes": sent_bytes,
        "send_s": send_s,
        "rate": sent / send_s if send_s > 0 else math.nan,
        "send_errors": errors,
        "received_bytes": received[0],
        "received_dgrams": received[1],
        "loss": 1 - min(received[0], sent_bytes) / sent_bytes,
    }


LOAD_KINDS = {
    "stream": _load_stream,
    "down": _load_down,
    "connrate": _load_connrate,
    "connrate_series": _load_connrate,  # the name pair.py has always asked for
    "rtt": _load_rtt,
    "udp": _load_udp,
}


def load_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = LOAD_KINDS[spec["kind"]](spec)
    except Exception as exc:  # reported to the orchestrator, which records it
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


def run_load(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the load generator as a separate process; its JSON result or {'fatal':...}."""
    proc = spawn_helper(
        "load", json.dumps(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        REGISTRY.kill(proc)
        return {"fatal": f"load generator timed out after {timeout:.0f}s"}
    REGISTRY.kill(proc)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    except (ValueError, IndexError):
        return {"fatal": f"load generator failed: rc={proc.returncode} {err.strip()[-500:]}"}


# -- idle connections -----------------------------------------------------------


def hold_main(argv: Sequence[str]) -> int:
    """Open ``count`` connections (``concurrency`` at a time), each proven by a 2-byte echo;
    report, hold them idle until a line (or EOF) on stdin, close them, report again."""
    spec = json.loads(argv[0])
    port, count = spec["port"], spec["count"]
    io_timeout = spec.get("io_timeout", 10.0)
    msg = b"Eh"

    def one(_i: int) -> socket.socket | str:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(io_timeout)
            s.connect((HOST, port))
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                b = s.recv(len(msg) - len(got))
                if not b:
                    raise ConnectionError("EOF")
                got += b
            return s
        except OSError as exc:
            s.close()
            return type(exc).__name__

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=spec.get("concurrency", 16)) as pool:
        results = list(pool.map(one, range(count)))
    socks = [r for r in results if isinstance(r, socket.socket)]
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, str):
            errors[r] = errors.get(r, 0) + 1
    print(
        json.dumps({"opened": len(socks), "errors": errors, "open_s": time.monotonic() - t0}),
        flush=True,
    )
    sys.stdin.readline()
    # Still open? A connection the forwarder dropped meanwhile reads EOF at once.
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) else 0
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.close()
    print(json.dumps({"still_open": alive}), flush=True)
    return 0


class Holder:
    """Drives a ``hold`` load generator: open, (the caller measures), close."""

    def __init__(self, port: int, count: int, concurrency: int, timeout: float) -> None:
        spec = {"port": port, "count": count, "concurrency": concurrency}
        self.timeout = timeout
        self.proc = spawn_helper(
            "hold",
            json.dumps(spec),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def _line(self, timeout: float) -> dict[str, Any]:
        box: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        t = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0].strip():
            return {"fatal": f"idle-connection holder gave no answer within {timeout:.0f}s"}
        result: dict[str, Any] = json.loads(box[0])
        return result

    def opened(self) -> dict[str, Any]:
        """Blocks until every connection is open (or failed): {"opened", "errors", "open_s"}."""
        return self._line(self.timeout)

    def close(self) -> dict[str, Any]:
        """Closes them all: {"still_open": n}; the holder process is then gone."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("close\n")
            self.proc.stdin.flush()
            res = self._line(30.0)
        except (OSError, ValueError) as exc:
            res = {"fatal": f"{type(exc).__name__}: {exc}"}
        REGISTRY.kill(self.proc)
        return res
