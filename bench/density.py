#!/usr/bin/env python3
"""Benchmark: instance density of a master - how many instances, at what memory cost.

    python bench/density.py                  # hosted 0/100/1,000 + isolated 0/100 (~40-60 s)
    python bench/density.py --quick          # hosted and isolated with 0 and 20 (~15 s)
    python bench/density.py --counts 0,100 --isolated-max 100 --json bench/results/d.json
    python bench/density.py --isolated-max 1000   # isolated 1,000 too: ~23 GiB PSS, 34 GiB RSS

Two configurations of the same master, each with every count of ``--counts``:

* ``hosted``: the default environment (``NP_ISOLATE`` removed; ``--instance-hosts N``
  sets ``NP_INSTANCE_HOSTS``): the master runs its instances inside a few instance-host
  processes, where this tree has them;
* ``isolated``: ``NP_ISOLATE=1``, one child process per instance (the baseline). It runs
  only the counts up to ``--isolated-max`` (default 100: 1,000 isolated instances need
  ~23 GiB of PSS). A ``hosted`` master that turns out to run one process per instance (a tree
  without instance hosts) is held to the same limit and the report says so.

Each (configuration, count) gets a fresh master in a fresh state directory::

    NP_STATE_DIR=TMP python -m nodepass "master://127.0.0.1:PORT/api?log=info"

its key read from ``API Key created: ...`` (the helpers of ``bench/master.py``). Then:

 1. one SSE stream on ``/api/v1/events`` (``bench/master.py``'s raw-socket Subscriber,
    arrival times stamped by its selector thread);
 2. N single-end forwarders ``client://127.0.0.1:P/127.0.0.1:T?mode=1`` (P a free port,
    T the benchmark's echo server), POSTed back to back from one keep-alive connection as
    fast as the API answers. Recorded: each POST's latency (p50/p99), the time from the
    first POST to the last ``running`` status seen on the stream (``POSTs -> running``)
    and to the last port listening in /proc/net/tcp (``-> listening``; an isolated
    master announces ``running`` when the child is spawned, before it listens);
 3. memory once the instances are up and the readings are stable (``idle``): PSS and RSS
    from /proc/PID/smaps_rollup summed over the master and all its descendants (found by
    parent pid over /proc/*/stat, repeatedly); per-instance PSS is
    (tree PSS at N - tree PSS at 0) / N, 0 being the same configuration's run with none;
 4. traffic: one TCP connection through every P (16 at a time) carrying a random 64 KiB
    payload, which must come back byte-exact from the echo server (a plain selector echo
    server in its own process); every failure is counted and the run fails unless all
    pass. The memory is read again after it (``loaded``: the headline figure, buffers
    included);
 5. SIGTERM to the master, wait for its exit (bounded), check that no descendant outlived
    it; anything left is killed.

Reported: a table per run (configuration, count, processes, tree PSS / RSS, PSS per
instance, POSTs -> running, POST latency, traffic ok/total), the hosted/isolated ratios
for the same count, the Go NodePass v1.14.0 reference figures (measured earlier on this
machine, quoted, not re-measured) and PASS/FAIL against the targets (hosted: 100
instances <= 150 MiB tree PSS, 1,000 <= 600 MiB, 100 POSTs -> running <= 1.5 s).
``--markdown`` prints the tables for docs/benchmarks.md, ``--json`` writes the raw results.

The benchmark raises its own open-file limit to the hard limit. Creating stops early if
MemAvailable drops under ``--min-available-mib``. All on 127.0.0.1; the masters, their
instances and the echo server are stopped at the end, on errors and on Ctrl-C. Progress
goes to stderr, the report to stdout. Exit status: 1 if a run failed (traffic, an instance
not running, a master that would not start or stop), 130 on Ctrl-C, else 0 (``--strict``:
also 1 when a target fails).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as _dt
import http.client
import json
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C
import master as M

THIS = os.path.abspath(__file__)
CONFIGS = ("hosted", "isolated")
PAYLOAD = 64 * 1024
TRAFFIC_THREADS = 16
MIB = 1024.0

#: Go NodePass v1.14.0 master, 100 instances, measured earlier on this machine (quoted).
GO_REFERENCE = {
    "label": "Go NodePass v1.14.0 (reference)",
    "count": 100,
    "tree_rss_mib": 1079.0,
    "tree_pss_mib": 196.0,
    "pss_per_instance_mib": 2.0,
    "to_running_s": 1.0,
}

#: (description, configuration, count, metric, limit): metric <= limit passes.
TARGETS = (
    ("hosted 100: tree PSS", "hosted", 100, "tree_pss_mib", 150.0, "MiB"),
    ("hosted 1,000: tree PSS", "hosted", 1000, "tree_pss_mib", 600.0, "MiB"),
    ("hosted 100: 100 POSTs -> running", "hosted", 100, "to_running_s", 1.5, "s"),
)


# --------------------------------------------------------------------------
# Echo server (its own process: ``density.py _echo``)
# --------------------------------------------------------------------------


def echo_main() -> int:
    """A plain non-blocking TCP echo server on 127.0.0.1; prints ``{"port": N}``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((C.HOST, 0))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    print(json.dumps({"port": lsock.getsockname()[1]}), flush=True)
    high = 1 << 20  # stop reading a connection while this much is unsent

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        conn.close()

    while True:
        for key, mask in sel.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # EMFILE and the like: the client sees a failure
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            buf: bytearray = key.data
            if mask & selectors.EVENT_READ:
                try:
                    data = conn.recv(262144)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    close(conn)
                    continue
                if data:
                    buf += data
            if buf:
                try:
                    n = conn.send(buf)
                    del buf[:n]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(conn)
                    continue
            want = (selectors.EVENT_READ if len(buf) < high else 0) | (
                selectors.EVENT_WRITE if buf else 0
            )
            if want != key.events:
                sel.modify(conn, want, buf)


class EchoServer:
    def __init__(self, timeout: float) -> None:
        self.proc = C.REGISTRY.spawn(
            [sys.executable, THIS, "_echo"], stdout=subprocess.PIPE, text=True, cwd=C.REPO_ROOT
        )
        line = M.read_first_line(self.proc, timeout)
        if not line:
            C.REGISTRY.kill(self.proc)
            raise C.StartError("the echo server did not start")
        self.port = int(json.loads(line)["port"])
        if not C.wait_listening(self.port, timeout, self.proc):
            C.REGISTRY.kill(self.proc)
            raise C.StartError("the echo server is not listening")

    def stop(self) -> None:
        C.REGISTRY.kill(self.proc)


def echo_through(port: int, payload: bytes, timeout: float) -> str | None:
    """Send ``payload`` through ``port`` and read it back; None if byte-exact, else why not."""
    deadline = time.monotonic() + timeout
    try:
        s = socket.create_connection((C.HOST, port), timeout=timeout)
    except OSError as exc:
        return f"connect: {type(exc).__name__}: {exc}"
    sel = selectors.DefaultSelector()
    view = memoryview(payload)
    sent = 0
    got = bytearray()
    try:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < len(payload):
            left = deadline - time.monotonic()
            if left <= 0:
                return f"timeout after {timeout:.0f}s: sent {sent}, received {len(got)} bytes"
            for _key, mask in sel.select(left):
                if mask & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += s.send(view[sent : sent + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                    if sent == len(payload):
                        sel.modify(s, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        data = s.recv(262144)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return f"EOF after {len(got)} of {len(payload)} bytes (sent {sent})"
                    got += data
        if bytes(got) != payload:
            first = next(i for i, (a, b) in enumerate(zip(got, payload, strict=False)) if a != b)
            return f"echo differs from byte {first}"
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc} (sent {sent}, received {len(got)})"
    finally:
        sel.close()
        s.close()


def traffic_check(ports: list[int], timeout: float) -> dict[str, Any]:
    """One 64 KiB echo through every port, ``TRAFFIC_THREADS`` at a time."""
    t0 = time.monotonic()

    def one(port: int) -> str | None:
        return echo_through(port, os.urandom(PAYLOAD), timeout)

    with concurrent.futures.ThreadPoolExecutor(TRAFFIC_THREADS) as ex:
        outcome = list(ex.map(one, ports))
    failures = [(p, why) for p, why in zip(ports, outcome, strict=True) if why is not None]
    return {
        "total": len(ports),
        "ok": len(ports) - len(failures),
        "failed": len(failures),
        "samples": [f"port {p}: {why}" for p, why in failures[:10]],
        "wall_s": time.monotonic() - t0,
    }


# --------------------------------------------------------------------------
# /proc: the process tree, its PSS and RSS
# --------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants, by parent pid over /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is None or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    if _stat_fields(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def smaps_rollup_kb(pid: int) -> dict[str, int] | None:
    """Pss and Rss (kB) of ``pid`` from /proc/PID/smaps_rollup; None if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return out if "Pss" in out and "Rss" in out else None


def tree_memory(root: int) -> dict[str, Any]:
    """Summed PSS/RSS over ``root``'s tree; the master's own and the largest other process."""
    pss = rss = 0
    procs = 0
    master_pss = 0
    largest = 0
    for pid in process_tree(root):
        m = smaps_rollup_kb(pid)
        if m is None:
            continue
        procs += 1
        pss += m["Pss"]
        rss += m["Rss"]
        if pid == root:
            master_pss = m["Pss"]
        else:
            largest = max(largest, m["Pss"])
    return {
        "pss_kb": pss,
        "rss_kb": rss,
        "procs": procs,
        "master_pss_kb": master_pss,
        "largest_child_pss_kb": largest,
    }


def stable_memory(root: int, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    """``tree_memory`` once two readings ``interval`` apart agree within 1% (or 1 MiB)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = tree_memory(root)
    while True:
        time.sleep(interval)
        cur = tree_memory(root)
        delta = abs(cur["pss_kb"] - last["pss_kb"])
        if delta <= max(1024, cur["pss_kb"] * 0.01):
            return cur | {"stable": True, "waited_s": time.monotonic() - t0}
        if time.monotonic() >= deadline:
            return cur | {"stable": False, "waited_s": time.monotonic() - t0}
        last = cur


def mem_available_mib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / MIB
    except (OSError, ValueError, IndexError):
        pass
    return None


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def wait_until(pred: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    return M.wait_until(pred, timeout, poll)


# --------------------------------------------------------------------------
# One run: a fresh master, N instances, memory, traffic, SIGTERM
# --------------------------------------------------------------------------


class RunningSubscriber(M.Subscriber):
    """bench/master.py's Subscriber, also noting the first ``running`` status per instance.

    Whatever event carries it (``update`` is what the master sends; ``create`` or
    ``initial`` with status running would count too), and instances reported in ``error``.
    """

    def __init__(self) -> None:
        super().__init__(0)
        self.running_at: dict[str, float] = {}
        self.error_ids: set[str] = set()

    def _parse(self, t: float, block: bytes) -> None:
        super()._parse(t, block)
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                obj = json.loads(line[5:])
            except ValueError:
                return
            inst = obj.get("instance") if isinstance(obj, dict) else None
            if not isinstance(inst, dict) or obj.get("type") not in ("create", "update", "initial"):
                return
            iid, status = str(inst.get("id", "")), inst.get("status")
            if status == "running":
                self.running_at.setdefault(iid, t)
            elif status == "error":
                self.error_ids.add(iid)
            return


@contextlib.contextmanager
def environ(changes: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None removes) for the block: the master copies it."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def config_env(config: str, args: argparse.Namespace) -> dict[str, str | None]:
    if config == "isolated":
        return {"NP_ISOLATE": "1"}
    env: dict[str, str | None] = {"NP_ISOLATE": None}
    if args.instance_hosts:
        env["NP_INSTANCE_HOSTS"] = args.instance_hosts
    return env


class Run:
    """One (configuration, count): everything it started, so that it can be cleaned up."""

    def __init__(self, args: argparse.Namespace, config: str, count: int, workdir: str) -> None:
        self.args, self.config, self.count = args, config, count
        self.workdir = workdir
        self.master: M.Master | None = None
        self.api: M.Api | None = None
        self.hub: M.SseHub | None = None
        self.binds: M.BindWatcher | None = None
        self.sub: RunningSubscriber | None = None
        self.res: dict[str, Any] = {"config": config, "count": count, "errors": []}

    def error(self, msg: str) -> None:
        self.res["errors"].append(msg)
        C.log(f"[{self.config} {self.count}] ERROR: {msg}")

    def start_master(self) -> M.Master:
        args = self.args
        state_dir = os.path.join(self.workdir, "state")
        os.makedirs(state_dir)
        log_dir = args.log_dir or self.workdir
        os.makedirs(log_dir, exist_ok=True)
        log_path = os.path.join(log_dir, f"master-{self.config}-{self.count}.log")
        env = config_env(self.config, args)
        with environ(env):
            master = M.Master(C.free_port(), state_dir, log_path, "log=info")
        self.master = master
        self.res["master"] = {
            "url": master.url,
            "env": {k: v for k, v in env.items()},
            "log": log_path if args.log_dir else None,
        }
        ok = master.started.wait(args.start_timeout) and master.key_seen.wait(5)
        if not ok or master.key is None:
            raise C.StartError(
                f"master did not print 'Master started' and its key within "
                f"{args.start_timeout:.0f}s (rc={master.proc.poll()}):\n    {master.tail()}"
            )
        if not C.wait_listening(master.port, args.start_timeout, master.proc):
            raise C.StartError(f"master not listening on {master.port}:\n    {master.tail()}")
        self.res["master"]["startup_s"] = time.monotonic() - master.t_spawn
        return master

    def execute(self, echo_port: int) -> dict[str, Any]:
        args, res = self.args, self.res
        master = self.start_master()
        api = self.api = M.Api(master.port, master.key or "", args.http_timeout)
        sub = self.sub = RunningSubscriber()
        sub.connect(master.port, master.key or "", args.http_timeout)
        hub = self.hub = M.SseHub([sub])
        hub.start()
        if not wait_until(lambda: (hub.ingest(), sub.retry_t is not None)[1], 10.0):
            self.error("the SSE stream sent no retry: within 10 s")
        binds = self.binds = M.BindWatcher(0.01)
        binds.start()
        tag = f"[{self.config} {self.count}]"
        C.log(f"{tag} master pid {master.pid} on {C.HOST}:{master.port}")

        ports, ids = self.create(echo_port)
        if ids:
            self.settle(ports, ids)
        res["memory_idle"] = stable_memory(master.pid, args.settle_timeout)
        mi = res["memory_idle"]
        C.log(
            f"{tag} idle: {mi['procs']} processes, tree PSS {mi['pss_kb'] / MIB:.1f} MiB, "
            f"RSS {mi['rss_kb'] / MIB:.1f} MiB"
        )
        listening = [p for p in ports if p in binds.seen]
        if ports:
            res["traffic"] = traffic_check(listening, args.traffic_timeout)
            tr = res["traffic"]
            tr["total"] = self.count  # an instance never created or listening is a failure
            tr["failed"] = self.count - tr["ok"]
            C.log(f"{tag} traffic: {tr['ok']}/{tr['total']} echoed, {tr['wall_s']:.1f} s")
            if tr["failed"]:
                self.error(f"traffic: {tr['failed']} of {tr['total']} failed: {tr['samples'][:3]}")
            res["memory"] = stable_memory(master.pid, args.settle_timeout)
        else:
            res["memory"] = res["memory_idle"]
        mem = res["memory"]
        res["per_process"] = bool(self.count) and mem["procs"] - 1 >= self.count
        r = api.request("GET", "/instances")
        if r.status == 200:
            listing = r.json() or []
            res["listed"] = len(listing)
            res["listed_running"] = sum(1 for x in listing if x.get("status") == "running")
            if res["listed_running"] != self.count:
                self.error(
                    f"GET /instances: {res['listed_running']} of {len(listing)} running "
                    f"(expected {self.count})"
                )
        else:
            self.error(f"GET /instances answered {r.status}")
        C.log(
            f"{tag} loaded: {mem['procs']} processes, tree PSS {mem['pss_kb'] / MIB:.1f} MiB, "
            f"RSS {mem['rss_kb'] / MIB:.1f} MiB"
        )
        res["shutdown"] = self.shutdown()
        return res

    def create(self, echo_port: int) -> tuple[list[int], list[str]]:
        """POST ``count`` instances back to back; their ports and ids."""
        args, res = self.args, self.res
        assert self.api is not None and self.binds is not None and self.master is not None
        used = {echo_port, self.master.port}
        ports: list[int] = []
        ids: list[str] = []
        post_s: list[float] = []
        t_first: float | None = None
        t_last_answer = 0.0
        for n in range(self.count):
            if n % 10 == 0:
                avail = mem_available_mib()
                if avail is not None and avail < args.min_available_mib:
                    self.error(
                        f"stopped creating after {n} instances: MemAvailable {avail:.0f} MiB "
                        f"< --min-available-mib {args.min_available_mib}"
                    )
                    break
            port = C.free_port()
            while port in used:
                port = C.free_port()
            used.add(port)
            self.binds.watch(port)
            url = f"client://{C.HOST}:{port}/{C.HOST}:{echo_port}?mode=1"
            try:
                r = self.api.request("POST", "/instances", {"url": url})
            except (OSError, http.client.HTTPException) as exc:
                self.error(f"POST {n}: {type(exc).__name__}: {exc}")
                break
            if t_first is None:
                t_first = r.t0
            t_last_answer = r.t1
            post_s.append(r.seconds)
            if r.status != 201:
                self.error(f"POST {n} answered {r.status}: {r.body[:200]!r}")
                continue
            try:
                ids.append(str(r.json()["id"]))
            except (ValueError, KeyError, TypeError):
                self.error(f"POST {n}: 201 with an unreadable body {r.body[:200]!r}")
                continue
            ports.append(port)
        res["created"] = len(ids)
        res["t_first_post"] = t_first
        res["posts_s"] = (t_last_answer - t_first) if t_first is not None else None
        res["post_ms"] = M.lat_ms(post_s)
        if self.count:
            C.log(
                f"[{self.config} {self.count}] {len(ids)} POSTs in {res['posts_s'] or 0:.2f} s, "
                f"p50 {res['post_ms']['p50']:.1f} ms p99 {res['post_ms']['p99']:.1f} ms"
            )
        return ports, ids

    def settle(self, ports: list[int], ids: list[str]) -> None:
        """Wait (bounded) for every instance to be running on the stream and listening."""
        args, res = self.args, self.res
        assert self.hub is not None and self.sub is not None and self.binds is not None
        assert self.master is not None
        hub, sub, binds, master = self.hub, self.sub, self.binds, self.master
        timeout = args.ready_timeout + args.ready_per_instance * len(ids)

        def done() -> bool:
            hub.ingest()
            if master.proc.poll() is not None:
                return True
            return all(i in sub.running_at for i in ids) and all(p in binds.seen for p in ports)

        ok = wait_until(done, timeout, 0.02)
        hub.ingest()
        t0 = res["t_first_post"]
        running = [sub.running_at[i] for i in ids if i in sub.running_at]
        listening = [binds.seen[p] for p in ports if p in binds.seen]
        res["running_seen"] = len(running)
        res["listening_seen"] = len(listening)
        all_running = len(running) == len(ids) == self.count
        all_listening = len(listening) == len(ports) == self.count
        res["to_running_s"] = max(running) - t0 if all_running else None
        res["to_listening_s"] = max(listening) - t0 if all_listening else None
        gaps = [
            binds.seen[p] - sub.running_at[i]
            for i, p in zip(ids, ports, strict=True)
            if i in sub.running_at and p in binds.seen
        ]
        res["running_to_listening_ms"] = M.lat_ms(gaps)
        tag = f"[{self.config} {self.count}]"
        if master.proc.poll() is not None:
            raise RuntimeError(f"the master exited (rc={master.proc.returncode}):\n{master.tail()}")
        if not ok:
            self.error(
                f"after {timeout:.0f} s: {len(ids) - len(running)} instances not running, "
                f"{len(ports) - len(listening)} ports not listening"
            )
        errored = sub.error_ids & set(ids)
        if errored:
            self.error(f"{len(errored)} instances reported status error")
        rs, ls = res["to_running_s"], res["to_listening_s"]
        C.log(
            f"{tag} first POST -> all running "
            f"{'-' if rs is None else f'{rs:.2f}'} s, -> all listening "
            f"{'-' if ls is None else f'{ls:.2f}'} s"
        )

    def shutdown(self) -> dict[str, Any]:
        """SIGTERM the master, wait for it (bounded); no descendant may outlive it."""
        master = self.master
        assert master is not None
        kids = [p for p in process_tree(master.pid) if p != master.pid]
        master.seen_children.update(kids)
        t0 = time.monotonic()
        try:
            os.kill(master.pid, signal.SIGTERM)
        except ProcessLookupError:
            return {"error": "master already gone"}
        try:
            rc: int | None = master.proc.wait(timeout=self.args.shutdown_timeout)
        except subprocess.TimeoutExpired:
            rc = None
        exit_s = time.monotonic() - t0
        left: list[int] = []
        if rc is None:
            self.error(f"master did not exit within {self.args.shutdown_timeout:.0f} s of SIGTERM")
        else:
            wait_until(lambda: not any(alive(k) for k in kids), 5.0, 0.05)
            left = [k for k in kids if alive(k)]
            if left:
                self.error(f"{len(left)} processes outlived the master: {left[:5]}")
            if rc != 0:
                self.error(f"master exited with rc={rc} after SIGTERM")
        C.log(
            f"[{self.config} {self.count}] SIGTERM -> exit "
            f"{'-' if rc is None else f'{exit_s:.2f}'} s, rc={rc}, {len(left)} left over"
        )
        return {
            "exit_s": exit_s if rc is not None else None,
            "returncode": rc,
            "orphans": len(left),
        }

    def cleanup(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        if self.binds is not None:
            self.binds.stop()
        if self.api is not None:
            self.api.close()
        if self.master is not None:
            self.master.kill()  # SIGKILL whatever is left: group, then instances' own groups
            self.res["master_output"] = {
                "lines": self.master.lines,
                "levels": dict(self.master.levels),
                "notable_count": self.master.notable_count,
                "notable": self.master.notable[:10],
                "tracebacks": self.master.tracebacks,
            }
            if self.master.tracebacks:
                self.error(f"the master's output has {self.master.tracebacks} tracebacks")


# --------------------------------------------------------------------------
# Derived figures and the report
# --------------------------------------------------------------------------


def derive(runs: list[dict[str, Any]]) -> None:
    """Per-instance PSS against the same configuration's run with 0 instances."""
    zero = {r["config"]: r for r in runs if r["count"] == 0 and r.get("memory")}
    for r in runs:
        mem = r.get("memory")
        if not mem:
            continue
        r["tree_pss_mib"] = mem["pss_kb"] / MIB
        r["tree_rss_mib"] = mem["rss_kb"] / MIB
        base = zero.get(r["config"])
        n = r.get("created") or 0
        if base is not None and n:
            r["pss_per_instance_mib"] = (mem["pss_kb"] - base["memory"]["pss_kb"]) / MIB / n
            r["rss_per_instance_mib"] = (mem["rss_kb"] - base["memory"]["rss_kb"]) / MIB / n


def f(v: float | None, digits: int = 1) -> str:
    return C.fmt_num(v, digits)


def find(runs: list[dict[str, Any]], config: str, count: int) -> dict[str, Any] | None:
    for r in runs:
        if r["config"] == config and r["count"] == count and not r.get("skipped"):
            return r
    return None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    x = a / b
    return f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, config, count, metric, limit, unit in TARGETS:
        r = find(runs, config, count)
        v = r.get(metric) if r else None
        if r is not None and r.get("errors"):
            verdict = "FAIL" if v is None or v > limit else "PASS (run had errors)"
        else:
            verdict = "n/a" if v is None else ("PASS" if v <= limit else "FAIL")
        out.append({"target": label, "limit": limit, "unit": unit, "value": v, "verdict": verdict})
    return out


def caption(markdown: bool, text: str) -> list[str]:
    """A note under a table (a blank line first in Markdown, or it joins the table)."""
    return ["", f"*{text}*", ""] if markdown else [f"  ({text})", ""]


def render(results: dict[str, Any], markdown: bool = False) -> str:
    runs: list[dict[str, Any]] = results["runs"]
    meta = results["meta"]
    out: list[str] = []
    if not markdown:
        out.append(
            f"NodePass master density benchmark  {meta['date']}  host={meta['host']}  "
            f"cpus={meta['cpus']}  RAM {meta['mem_total_mib'] / MIB:.1f} GiB  "
            f"python={meta['python']}  nodepass={meta['nodepass']}"
        )
        out.append(
            f"counts={','.join(map(str, meta['counts']))}  isolated up to "
            f"{meta['isolated_max']}  open files {meta['nofile'][0]}  load average "
            f"{meta['loadavg_start'][0]:.2f} at start, "
            f"{meta.get('loadavg_end', [float('nan')])[0]:.2f} at end"
        )
        out.append("")
    header = [
        "configuration",
        "instances",
        "procs",
        "tree PSS MiB",
        "tree RSS MiB",
        "PSS/instance MiB",
        "POSTs->running s",
        "->listening s",
        "POST p50 ms",
        "POST p99 ms",
        "traffic ok/total",
    ]
    rows = []
    for r in runs:
        if r.get("skipped"):
            rows.append([r["config"], f"{r['count']:,}", *["-"] * 8, "skipped (see below)"])
            continue
        tr = r.get("traffic")
        post = r.get("post_ms") or {}
        procs = (r.get("memory") or {}).get("procs")
        rows.append(
            [
                r["config"] + (" (FAILED)" if r.get("errors") else ""),
                f"{r['count']:,}",
                "-" if procs is None else str(procs),
                f(r.get("tree_pss_mib")),
                f(r.get("tree_rss_mib")),
                f(r.get("pss_per_instance_mib"), 2),
                f(r.get("to_running_s"), 2),
                f(r.get("to_listening_s"), 2),
                f(post.get("p50"), 2) if post.get("n") else "-",
                f(post.get("p99"), 2) if post.get("n") else "-",
                f"{tr['ok']:,}/{tr['total']:,}" if tr else "-",
            ]
        )
    g = GO_REFERENCE
    rows.append(
        [
            str(g["label"]),
            f"{g['count']:,}",
            "-",
            f(g["tree_pss_mib"]),
            f(g["tree_rss_mib"]),
            f(g["pss_per_instance_mib"], 2),
            f(g["to_running_s"], 2),
            "-",
            "-",
            "-",
            "-",
        ]
    )
    out.append(C.render_table(header, rows, markdown))
    out += caption(
        markdown,
        "memory after the traffic check; procs = master + descendants; POSTs->running = "
        "first of the N POSTs -> last running status on the SSE stream, ->listening = to the "
        "last port listening; the Go row is quoted from an earlier measurement on this "
        "machine, not re-measured",
    )

    header = [
        "memory detail",
        "idle PSS MiB",
        "idle RSS MiB",
        "loaded PSS MiB",
        "loaded RSS MiB",
        "master alone PSS MiB",
        "largest child PSS MiB",
        "RSS/instance MiB",
    ]
    rows = []
    for r in runs:
        mi, ml = r.get("memory_idle"), r.get("memory")
        if r.get("skipped") or not ml or not mi:
            continue
        rows.append(
            [
                f"{r['config']} {r['count']:,}",
                f(mi["pss_kb"] / MIB),
                f(mi["rss_kb"] / MIB),
                f(ml["pss_kb"] / MIB),
                f(ml["rss_kb"] / MIB),
                f(ml["master_pss_kb"] / MIB),
                f(ml["largest_child_pss_kb"] / MIB),
                f(r.get("rss_per_instance_mib"), 2),
            ]
        )
    if rows:
        out.append(C.render_table(header, rows, markdown))
        out += caption(markdown, "idle: instances up, before the traffic check; loaded: after it")

    counts = sorted({r["count"] for r in runs})
    rows = []
    for n in counts:
        h, i = find(runs, "hosted", n), find(runs, "isolated", n)
        if not h or not i:
            continue
        rows.append(
            [
                f"{n:,}",
                ratio(h.get("tree_pss_mib"), i.get("tree_pss_mib")),
                ratio(h.get("tree_rss_mib"), i.get("tree_rss_mib")),
                ratio(h.get("pss_per_instance_mib"), i.get("pss_per_instance_mib")),
                ratio(h.get("to_running_s"), i.get("to_running_s")),
            ]
        )
    if rows:
        out.append(
            C.render_table(
                ["hosted / isolated", "tree PSS", "tree RSS", "PSS/instance", "POSTs->running"],
                rows,
                markdown,
            )
        )
        out.append("")

    rows = []
    for t in results.get("targets") or []:
        v = t["value"]
        rows.append(
            [
                t["target"],
                f"<= {f(t['limit'])} {t['unit']}",
                "-" if v is None else f"{f(v, 2)} {t['unit']}",
                t["verdict"],
            ]
        )
    out.append(C.render_table(["target", "limit", "measured", "verdict"], rows, markdown))
    notes = results.get("notes") or []
    if notes:
        out.append("")
        out += [f"* {n}" for n in notes]
    return "\n".join(out)


def notes(results: dict[str, Any]) -> list[str]:
    runs = results["runs"]
    out = []
    for config in CONFIGS:
        pp = [r for r in runs if r["config"] == config and r.get("per_process")]
        if config == "hosted" and pp:
            r = pp[0]
            out.append(
                f"hosted ran one process per instance ({r['memory']['procs']} processes for "
                f"{r['count']} instances): this master has no instance hosts (or ignores "
                "NP_INSTANCE_HOSTS), so hosted measures the same thing as isolated"
            )
    for r in runs:
        rs, ls = r.get("to_running_s"), r.get("to_listening_s")
        gap = r.get("running_to_listening_ms") or {}
        if gap.get("n") and gap["max"] >= 200:
            last = "" if rs is None or ls is None else f", the last one {ls - rs:.2f} s after"
            out.append(
                f"{r['config']} {r['count']:,}: running is announced before the port listens: "
                f"per instance p50 {gap['p50'] / 1e3:.2f} s, max {gap['max'] / 1e3:.2f} s later"
                f"{last} the last running status"
            )
    zero = {r["config"]: r for r in runs if r["count"] == 0 and r.get("memory")}
    h0 = zero.get("hosted")
    hn = [
        r
        for r in runs
        if r["config"] == "hosted" and r["count"] and r.get("memory") and not r.get("per_process")
    ]
    if h0 and hn and h0["memory"]["procs"] == 1 and hn[0]["memory"]["procs"] > 1:
        out.append(
            "hosted 0 has no instance host yet (they start with the first instance): the "
            "per-instance PSS of hosted includes the hosts' own cost, spread over N"
        )
    skipped = [r for r in runs if r.get("skipped")]
    for r in skipped:
        out.append(f"{r['config']} {r['count']:,} not run: {r['skipped']}")
    for r in runs:
        for e in r.get("errors") or []:
            out.append(f"{r['config']} {r['count']:,}: {e}")
    for e in results.get("errors") or []:
        out.append(e)
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="How many instances a master runs and at what memory cost: hosted "
        "(instance hosts) against isolated (NP_ISOLATE=1, one process per instance).",
    )
    p.add_argument("--counts", default="0,100,1000", help="instance counts (default 0,100,1000)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="hosted, isolated (default both)")
    p.add_argument(
        "--isolated-max",
        type=int,
        default=100,
        metavar="N",
        help="largest count run with one process per instance (default 100; 1,000 isolated "
        "instances need tens of GiB)",
    )
    p.add_argument("--instance-hosts", default="", metavar="N", help="NP_INSTANCE_HOSTS for hosted")
    p.add_argument("--quick", action="store_true", help="smoke run: counts 0,20")
    p.add_argument("--start-timeout", type=float, default=30.0, help="s for a master to listen")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="s for the instances to run and listen, plus --ready-per-instance each",
    )
    p.add_argument("--ready-per-instance", type=float, default=0.3, help="s, see --ready-timeout")
    p.add_argument("--http-timeout", type=float, default=30.0, help="s per HTTP request")
    p.add_argument("--traffic-timeout", type=float, default=15.0, help="s per echo connection")
    p.add_argument(
        "--settle-timeout", type=float, default=15.0, help="s for the memory readings to settle"
    )
    p.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="s for a master to exit on SIGTERM"
    )
    p.add_argument(
        "--min-available-mib",
        type=float,
        default=2048.0,
        help="stop creating instances when MemAvailable falls below this (default 2048)",
    )
    p.add_argument("--log-dir", metavar="DIR", help="keep the masters' logs in DIR")
    p.add_argument("--json", metavar="FILE", help="write raw results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails too")
    args = p.parse_args(argv)
    if args.quick:
        args.counts = "0,20"
    try:
        args.counts = sorted({int(x.replace("_", "")) for x in args.counts.split(",") if x})
    except ValueError:
        p.error("--counts: comma-separated integers")
    if not args.counts or min(args.counts) < 0:
        p.error("--counts: at least one count, none negative")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad or not args.configs:
        p.error(f"--configs: choose from {', '.join(CONFIGS)}")
    return args


def plan_skip(
    config: str, count: int, args: argparse.Namespace, per_process_at: int | None
) -> str | None:
    if count <= args.isolated_max:
        return None
    if config == "isolated":
        return f"isolated above --isolated-max {args.isolated_max}"
    if per_process_at is not None:
        return (
            f"hosted ran one process per instance at {per_process_at}; above --isolated-max "
            f"{args.isolated_max}"
        )
    return None


def run_all(args: argparse.Namespace, tmpdir: str, results: dict[str, Any]) -> None:
    echo = EchoServer(args.start_timeout)
    results["echo_port"] = echo.port
    try:
        for config in args.configs:
            per_process_at: int | None = None
            for count in args.counts:
                why = plan_skip(config, count, args, per_process_at)
                if why:
                    C.log(f"[{config} {count}] skipped: {why}")
                    results["runs"].append({"config": config, "count": count, "skipped": why})
                    continue
                workdir = os.path.join(tmpdir, f"{config}-{count}")
                os.makedirs(workdir)
                run = Run(args, config, count, workdir)
                results["runs"].append(run.res)
                try:
                    run.execute(echo.port)
                except (C.StartError, RuntimeError, OSError, http.client.HTTPException) as exc:
                    run.error(f"aborted: {type(exc).__name__}: {exc}")
                finally:
                    run.cleanup()
                if run.res.get("per_process") and per_process_at is None:
                    per_process_at = count
    finally:
        echo.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_echo":
        return echo_main()
    args = parse_args(argv)
    t_start = C.start_run()
    nofile = raise_nofile()
    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "mem_total_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nodepass": C.nodepass_version() or "?",
            "counts": args.counts,
            "configs": args.configs,
            "isolated_max": args.isolated_max,
            "nofile": nofile,
            "loadavg_start": os.getloadavg(),
            "args": vars(args),
        },
        "reference": GO_REFERENCE,
        "runs": [],
        "errors": [],
    }
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="nodepass-bench-density-") as tmpdir:
            run_all(args, tmpdir, results)
    except KeyboardInterrupt:
        interrupted = True
        C.log("\ninterrupted: stopping the master and every child, reporting what was measured")
    except (C.StartError, OSError) as exc:
        results["errors"].append(f"aborted: {type(exc).__name__}: {exc}")
        C.log(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        C.REGISTRY.kill_all()
    C.end_meta(results["meta"], t_start, interrupted)
    derive(results["runs"])
    results["targets"] = targets(results["runs"])
    results["notes"] = notes(results)
    print()
    print(render(results))
    if args.markdown:
        print()
        print(render(results, markdown=True))
    print(f"\n(total {results['meta']['wall_s']:.0f} s)")
    if args.json:
        C.write_json(args.json, results)
    if interrupted:
        return 130
    failed = bool(results["errors"]) or any(r.get("errors") for r in results["runs"])
    if args.strict and any(t["verdict"] == "FAIL" for t in results["targets"]):
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
