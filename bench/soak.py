#!/usr/bin/env python3
"""Soak: a master with 50 hosted instances under mixed load for minutes; does anything grow?

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --quick         # 1 minute
    python bench/soak.py --minutes 30 --json bench/results/soak.json --markdown

Not run in CI. Everything on 127.0.0.1:

* one master (``python -m nodepass master://127.0.0.1:PORT/api?log=info``, a fresh state
  directory, the default instance hosts; ``bench/master.py``'s ``Master``, which reads its
  key and logs to a file) and the benchmark's target server (``np_bench.target``: TCP echo
  and UDP echo on one port, its own process);
* ``--instances`` (50) single-end forwarders ``client://127.0.0.1:P/127.0.0.1:T?mode=1``
  created through the API;
* the load, for the whole run, each part in its own thread:
  - TCP users (``--tcp-users``, 4): connect to a random forwarder, send 'E' and 16 KiB of
    random bytes, read them back, check them byte for byte, close; about 20 a second each;
  - UDP users (``--udp-users``, 2): one datagram of 1-1,400 bytes to a random forwarder,
    the echo checked; about 50 a second each;
  - API calls (``--api-rate``, 5 a second): GET /instances, GET /instances/{id} and PATCH
    {"alias"} / {"meta"} of a random instance, from one keep-alive connection;
  - ``--subscribers`` (5) SSE streams on /events (``bench/master.py``'s raw-socket
    ``Subscriber`` and its selector thread), kept open throughout;
* once a second: the master tree's RSS (the master and every descendant, VmRSS summed),
  its open fds (/proc/PID/fd of the same processes) and the latency of one
  ``GET /instances/{id}`` on a connection of its own (a proxy for reactor lag: the answer
  waits for everything queued before it on the master's reactor).

Printed: a row per minute (per tenth of the run for runs under 3 minutes): RSS and fds
(median of the window), API latency p50/p99/max, traffic operations and failures, SSE
events received. Then the verdict: the run fails (exit 1) when the median RSS or fd count
of the last window is more than 5% above that of the second minute (the second window for
short runs: the first is warm-up), when any TCP or UDP exchange came back wrong, when an
SSE stream ended, or when the master died. Exit 130 on Ctrl-C (the partial table is still
printed), 0 otherwise.

UDP datagrams may be lost on a loaded machine (UDP is best-effort); a lost one is counted
apart and fails the run only above 1%. A wrong one always fails it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C
import master as M
from np_bench.procfs import tree_pids
from np_bench.procs import raise_nofile_limit
from np_bench.target import TargetServer

GROWTH_LIMIT = 0.05


def tree_fds(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


def tcp_user(ports: list[int], stop: threading.Event, counts: Counters, pace: float) -> None:
    while not stop.wait(pace):
        port = random.choice(ports)
        payload = b"E" + os.urandom(16 * 1024)
        try:
            with socket.create_connection((C.HOST, port), timeout=10) as sock:
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
        except OSError as e:
            counts.add("tcp_fail")
            counts.error(f"tcp {port}: {e}")
            continue
        if got == payload:
            counts.add("tcp_ok")
        else:
            counts.add("tcp_fail")
            counts.error(f"tcp {port}: {len(got)} of {len(payload)} bytes, or wrong ones")


def udp_user(ports: list[int], stop: threading.Event, counts: Counters, pace: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        while not stop.wait(pace):
            port = random.choice(ports)
            data = os.urandom(random.randint(1, 1400))
            try:
                sock.sendto(data, (C.HOST, port))
                while True:
                    got, _ = sock.recvfrom(65536)
                    if got == data:
                        counts.add("udp_ok")
                        break
                    # A late echo of an earlier datagram, counted as lost there; anything
                    # else is wrong.
                    counts.add("udp_late")
            except TimeoutError:
                counts.add("udp_lost")
            except OSError as e:
                counts.add("udp_fail")
                counts.error(f"udp {port}: {e}")


def api_user(
    port: int, key: str, ids: list[str], stop: threading.Event, counts: Counters, pace: float
) -> None:
    api = M.Api(port, key, 10)
    n = 0
    try:
        while not stop.wait(pace):
            n += 1
            id = random.choice(ids)
            calls: list[tuple[str, str, Any]] = [
                ("GET", "/instances", None),
                ("GET", f"/instances/{id}", None),
                ("PATCH", f"/instances/{id}", {"alias": f"soak-{n % 97}"}),
                ("PATCH", f"/instances/{id}", {"meta": {"tags": {"round": str(n % 13)}}}),
            ]
            method, path, body = calls[n % len(calls)]
            try:
                reply = api.request(method, path, body)
            except (OSError, http.client.HTTPException) as e:
                counts.add("api_fail")
                counts.error(f"api {method} {path}: {e}")
                continue
            if reply.status == 200:
                counts.add("api_ok")
            else:
                counts.add("api_fail")
                counts.error(f"api {method} {path}: {reply.status} {reply.body[:200]!r}")
    finally:
        api.close()


def wait_ready(master: M.Master, timeout: float) -> None:
    """
    Until ``GET /ready`` answers 200 (the state is loaded; changes answer 503 before).
    """

    def ready() -> bool:
        try:
            connection = http.client.HTTPConnection(C.HOST, master.port, timeout=5)
            connection.request("GET", "/ready")
            status = connection.getresponse().status
            connection.close()
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    if not M.wait_until(ready, timeout, 0.05):
        raise C.StartError(f"the master did not become ready:\n    {master.tail()}")


def create_instances(master: M.Master, target: int, count: int) -> tuple[list[str], list[int]]:
    assert master.key is not None
    api = M.Api(master.port, master.key, 30)
    ids, ports = [], []
    try:
        for _ in range(count):
            port = C.free_port()
            url = f"client://{C.HOST}:{port}/{C.HOST}:{target}?mode=1"
            reply = api.request("POST", "/instances", {"url": url})
            if reply.status != 201:
                raise C.StartError(f"POST /instances: {reply.status} {reply.body[:200]!r}")
            ids.append(reply.json()["id"])
            ports.append(port)
    finally:
        api.close()
    deadline = time.monotonic() + 60
    for port in ports:
        if not C.wait_listening(port, max(0.1, deadline - time.monotonic()), master.proc):
            raise C.StartError(f"forwarder on {port} not listening:\n    {master.tail()}")
    return ids, ports


def probe_latency(port: int, key: str, id: str) -> float | None:
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection(C.HOST, port, timeout=10)
        connection.request("GET", f"{M.PREFIX}/instances/{id}", headers={"X-API-Key": key})
        response = connection.getresponse()
        response.read()
        connection.close()
    except (OSError, http.client.HTTPException):
        return None
    if response.status != 200:
        return None
    return time.monotonic() - started


def windows(seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """
    The report's window length and the windows: minutes, or tenths of a short run.
    """
    size = 60.0 if seconds >= 180 else seconds / 10
    edges = []
    start = 0.0
    while start < seconds - 1e-6:
        edges.append((start, min(seconds, start + size)))
        start += size
    return size, edges


def summarise(
    samples: list[dict[str, Any]], seconds: float, markdown: bool
) -> tuple[str, dict[str, Any]]:
    size, edges = windows(seconds)
    header = [
        "window",
        "RSS MiB",
        "fds",
        "API p50 ms",
        "API p99 ms",
        "API max ms",
        "TCP ok/fail",
        "UDP ok/lost/fail",
        "API ok/fail",
        "SSE events",
    ]
    rows = []
    table: list[dict[str, Any]] = []
    for start, end in edges:
        inside = [s for s in samples if start <= s["t"] < end]
        if not inside:
            continue
        lat = sorted(s["latency"] for s in inside if s["latency"] is not None)
        first, last = inside[0]["counts"], inside[-1]["counts"]

        def delta(name: str, first: dict[str, int] = first, last: dict[str, int] = last) -> int:
            return last.get(name, 0) - first.get(name, 0)

        row = {
            "start": start,
            "end": end,
            "rss_kib": statistics.median(s["rss"] for s in inside),
            "fds": statistics.median(s["fds"] for s in inside),
            "lat_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "lat_p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "lat_max_ms": 1000 * lat[-1] if lat else None,
            "lat_missing": sum(1 for s in inside if s["latency"] is None),
            "tcp_ok": delta("tcp_ok"),
            "tcp_fail": delta("tcp_fail"),
            "udp_ok": delta("udp_ok"),
            "udp_lost": delta("udp_lost"),
            "udp_fail": delta("udp_fail"),
            "api_ok": delta("api_ok"),
            "api_fail": delta("api_fail"),
            "sse": last["sse_events"] - first["sse_events"],
        }
        table.append(row)
        label = f"{start / 60:.0f}-{end / 60:.0f} min" if size == 60 else f"{start:.0f}-{end:.0f} s"
        rows.append(
            [
                label,
                C.fmt_num(row["rss_kib"] / 1024),
                C.fmt_num(row["fds"], 0),
                C.fmt_num(row["lat_p50_ms"], 1),
                C.fmt_num(row["lat_p99_ms"], 1),
                C.fmt_num(row["lat_max_ms"], 1),
                f"{row['tcp_ok']}/{row['tcp_fail']}",
                f"{row['udp_ok']}/{row['udp_lost']}/{row['udp_fail']}",
                f"{row['api_ok']}/{row['api_fail']}",
                str(row["sse"]),
            ]
        )
    return C.render_table(header, rows, markdown=markdown), {"windows": table, "size": size}


def verdict(report: dict[str, Any], counts: dict[str, int], problems: list[str]) -> list[str]:
    table = report["windows"]
    if len(table) < 3:
        problems.append(f"only {len(table)} windows: too short a run to judge growth")
        return problems
    base, end = table[1], table[-1]
    for name, label, scale in (("rss_kib", "RSS (MiB)", 1024), ("fds", "open fds", 1)):
        growth = (end[name] - base[name]) / base[name]
        report[f"{name}_growth"] = growth
        line = (
            f"{label}: {base[name] / scale:,.1f} in the second window, "
            f"{end[name] / scale:,.1f} in the last ({growth:+.1%})"
        )
        report.setdefault("lines", []).append(line)
        if growth > GROWTH_LIMIT:
            problems.append(f"{line}: more than {GROWTH_LIMIT:.0%}")
    if counts.get("tcp_fail"):
        problems.append(f"{counts['tcp_fail']} TCP exchanges failed")
    if counts.get("udp_fail"):
        problems.append(f"{counts['udp_fail']} UDP exchanges failed")
    udp = counts.get("udp_ok", 0) + counts.get("udp_lost", 0)
    if udp and counts.get("udp_lost", 0) > 0.01 * udp:
        problems.append(f"{counts['udp_lost']} of {udp} datagrams lost (over 1%)")
    if counts.get("api_fail"):
        problems.append(f"{counts['api_fail']} API calls failed")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 minute")
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--tcp-users", type=int, default=4)
    parser.add_argument("--udp-users", type=int, default=2)
    parser.add_argument("--api-rate", type=float, default=5.0, help="API calls a second")
    parser.add_argument("--json", help="write the samples and the report here")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    return args


def run(args: argparse.Namespace, workdir: str, results: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    target = TargetServer.start()
    state = os.path.join(workdir, "state")
    os.makedirs(state)
    master = M.Master(C.free_port(), state, os.path.join(workdir, "master.log"), "log=info")
    results["master_log"] = master.log_path
    stop = threading.Event()
    threads: list[threading.Thread] = []
    hub: M.SseHub | None = None
    try:
        if not (master.started.wait(60) and master.key_seen.wait(5)) or master.key is None:
            raise C.StartError(f"the master did not start:\n    {master.tail()}")
        if not C.wait_listening(master.port, 30, master.proc):
            raise C.StartError(f"the master is not listening:\n    {master.tail()}")
        key = master.key
        wait_ready(master, 60)
        C.log(f"master on {master.port}; creating {args.instances} forwarders")
        ids, ports = create_instances(master, target.port, args.instances)
        subscribers = [M.Subscriber(n) for n in range(args.subscribers)]
        for subscriber in subscribers:
            subscriber.connect(master.port, key, 30)
        hub = M.SseHub(subscribers)
        hub.start()
        counts = Counters()
        for _ in range(args.tcp_users):
            threads.append(
                threading.Thread(target=tcp_user, args=(ports, stop, counts, 0.05), daemon=True)
            )
        for _ in range(args.udp_users):
            threads.append(
                threading.Thread(target=udp_user, args=(ports, stop, counts, 0.02), daemon=True)
            )
        threads.append(
            threading.Thread(
                target=api_user,
                args=(master.port, key, ids, stop, counts, 1.0 / args.api_rate),
                daemon=True,
            )
        )
        for thread in threads:
            thread.start()
        seconds = args.minutes * 60
        C.log(f"soaking for {seconds:.0f} s")
        samples: list[dict[str, Any]] = []
        results["samples"] = samples
        started = time.monotonic()
        tick = started
        while True:
            now = time.monotonic() - started
            if now >= seconds:
                break
            if master.proc.poll() is not None:
                problems.append(f"the master exited with {master.proc.returncode}")
                break
            hub.ingest()
            snapshot = counts.snapshot()
            snapshot["sse_events"] = sum(s.parsed for s in subscribers)
            ended = [s.idx for s in subscribers if s.eof_t is not None or s.error]
            rss, _ = master.tree_rss_kb()
            samples.append(
                {
                    "t": now,
                    "rss": rss,
                    "fds": tree_fds(master.pid),
                    "processes": len(tree_pids(master.pid)),
                    "latency": probe_latency(master.port, key, random.choice(ids)),
                    "counts": snapshot,
                }
            )
            if ended:
                problems.append(f"SSE streams {ended} ended")
                break
            if int(now) % 60 == 0 and samples[-1]["t"] - int(now) < 1:
                C.log(f"  {now:4.0f} s  RSS {rss / 1024:.1f} MiB  fds {samples[-1]['fds']}")
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(15)
        final = counts.snapshot()
        results["counts"] = final
        results["errors"] = counts.errors
        table, report = summarise(samples, min(seconds, samples[-1]["t"] + 1), args.markdown)
        results["report"] = report
        print(table)
        verdict(report, final, problems)
        for line in report.get("lines", []):
            print(line)
        return problems
    finally:
        stop.set()
        if hub is not None:
            hub.stop()
        results["notable"] = master.notable
        master.kill()
        target.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start_run()
    raise_nofile_limit()
    results: dict[str, Any] = {"args": vars(args)}
    code = 0
    with tempfile.TemporaryDirectory(prefix="np-soak-") as workdir:
        try:
            problems = run(args, workdir, results)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except C.StartError as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
        for error in results.get("errors", [])[:10]:
            print(f"  error: {error}")
        if problems:
            for problem in problems:
                print(f"FAIL: {problem}")
            code = 1
        else:
            print(f"PASS: RSS and fds within {GROWTH_LIMIT:.0%}, every exchange intact")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
