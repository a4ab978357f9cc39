"""Shared helpers for the NodePass benchmarks (``bench/*.py``).

This module is both a library (imported by the benchmark scripts) and a small
command-line tool that the benchmarks start as *separate processes*, so that
neither the target server nor the load generator competes with the process
under test or with the orchestrator for the same interpreter::

    python bench/_common.py serve          # target: discard sink + echo, prints its ports
    python bench/_common.py load SPEC_JSON # load generator, prints one JSON result

Everything binds to 127.0.0.1 only.

Target protocol (one port serves both roles, so a forwarder under test needs
only one target):

* the first byte a client sends decides the connection's role: ``E`` makes it
  an echo connection (every byte, the first included, is sent back), anything
  else makes it a discard sink (bytes are counted and dropped);
* the sink keeps, for the connections closed since the last ``RESET``, their
  count, total bytes and the monotonic time of the first and last byte
  received; ``CLOCK_MONOTONIC`` is system-wide on Linux, so the orchestrator
  can compare these times with its own and the load generator's.

Control protocol (a second, direct port; one line in, one JSON line out):
``RESET``, ``STATS``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import errno
import json
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

HOST = "127.0.0.1"
COMMON_PATH = os.path.abspath(__file__)
BENCH_DIR = os.path.dirname(COMMON_PATH)
REPO_ROOT = os.path.dirname(BENCH_DIR)

ECHO_MAGIC = ord("E")


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout stays clean for results."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


def ensure_commands(commands: dict[str, str], install: bool = True) -> dict[str, str | None]:
    """Make sure each command exists; ``commands`` maps command -> Debian package.

    Missing ones are installed with ``apt-get update && apt-get install -y``
    unless ``install`` is false. Returns command -> absolute path (None when
    still missing).
    """
    found = {cmd: shutil.which(cmd) for cmd in commands}
    missing = sorted({commands[c] for c, p in found.items() if p is None})
    if missing and install:
        log(f"[setup] installing {' '.join(missing)} with apt-get ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(
                ["apt-get", "update", "-qq"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                timeout=600,
            )
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", *missing],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                timeout=900,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"[setup] apt-get failed: {exc}")
        found = {cmd: shutil.which(cmd) for cmd in commands}
    elif missing:
        log(f"[setup] missing (not installing, --no-install): {' '.join(missing)}")
    return found


def command_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (out.stdout or "") + (out.stderr or "")
    for line in text.splitlines():
        if "version" in line.lower():
            return line.strip()
    return text.strip().splitlines()[0] if text.strip() else "?"


# --------------------------------------------------------------------------
# Child processes: every one is tracked, every one is killed at the end
# --------------------------------------------------------------------------


class ProcessRegistry:
    """Starts child processes in their own process group and kills them all.

    Each child is a session leader (``start_new_session=True``): Ctrl-C in the
    terminal reaches only the orchestrator, which then tears the children down
    itself, and a forking child (socat) is killed together with its forks by
    signalling its process group. The group leader is *not* reaped before the
    group is SIGKILLed, so its id cannot have been reused by then.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    @staticmethod
    def _exited_unreaped(pid: int) -> bool:
        try:
            res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        return res is not None

    def kill(self, proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
        pgid = proc.pid
        if proc.returncode is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not self._exited_unreaped(proc.pid):
                time.sleep(0.02)
            # The leader is at most a zombie here: its pid (= pgid) is still ours.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(reversed(self._procs))
        for proc in procs:
            self.kill(proc, grace=1.0)


REGISTRY = ProcessRegistry()


def install_signal_handlers() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all raise KeyboardInterrupt in the main thread.

    The benchmark catches it, kills every child and reports what it measured.
    SIGINT is (re)installed too: a shell starts background jobs with SIGINT
    ignored, and the benchmark should stop on it all the same.
    """

    def _handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _handler)


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def free_port(udp_too: bool = False) -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago.

    ``udp_too``: the same number must also be free for UDP (a transport such
    as QUIC binds both on one port).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
            return port
        except OSError:
            continue
    raise OSError("no port free for both TCP and UDP")


def port_bound(port: int, proto: str = "tcp") -> bool:
    """Whether 127.0.0.1:``port`` (or the wildcard) has a listening TCP / bound UDP socket.

    Read from ``/proc/net/{tcp,udp}``: no connection is made, no datagram sent.
    """
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    state = "0A" if proto == "tcp" else "07"  # TCP_LISTEN; an unconnected UDP socket
    try:
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] in want and parts[3] == state:
                    return True
    except (OSError, StopIteration):
        pass
    return False


def wait_listening(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    """Poll until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def echo_once(port: int, timeout: float = 3.0, size: int = 64) -> float:
    """One connect + echo + close through ``port``; returns seconds. Raises on error."""
    msg = b"E" + os.urandom(size - 1)
    t = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(msg)
        got = _recv_exact(s, len(msg))
    if got != msg:
        raise OSError("echo mismatch")
    return time.perf_counter() - t


def _recv_exact(s: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        b = s.recv(n)
        if not b:
            raise ConnectionError("EOF before full echo")
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


# --------------------------------------------------------------------------
# /proc: memory and CPU of a process tree
# --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, *fields: str) -> dict[str, int]:
    """Selected ``kB`` fields of /proc/<pid>/status (missing ones are absent)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def proc_descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = proc_children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(proc_children(p))
    return out


def set_tree_affinity(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of ``pid`` and of its descendants.

    ``sched_setaffinity`` acts on one thread, so each task is set separately.
    Children forked later inherit the affinity of the thread that forks them.
    """
    for p in [pid, *proc_descendants(pid)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def proc_cpu_seconds(pid: int, reaped: bool = True) -> float | None:
    """user+sys CPU of ``pid``, plus (``reaped``) that of the children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime..cstime are fields 14..17
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    if not reaped:
        cutime = cstime = 0
    return (utime + stime + cutime + cstime) / CLK_TCK


class TreeMemorySampler(threading.Thread):
    """Samples the memory of a process and all its descendants.

    * ``main_hwm_kb``: VmHWM (kernel-tracked peak RSS) of the main process,
      read at :meth:`stop` - exact.
    * ``tree_peak_kb``: peak of the sum of VmRSS over the main process and
      its live descendants, sampled every ``interval`` s (misses short peaks,
      over-counts pages that forked children share copy-on-write). At least
      ``main_hwm_kb``.
    * ``child_hwm_max_kb``: largest VmHWM seen in any descendant.
    * ``max_children``: most descendants seen alive at once.

    If ``limit_kb`` is set and the tree grows past it, ``on_limit`` is called
    once (the benchmark kills the forwarder: protection against a forwarder
    that buffers without back-pressure).
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.1,
        limit_kb: int | None = None,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.limit_kb = limit_kb
        self.on_limit = on_limit
        self.tree_peak_kb = 0
        self.child_hwm_max_kb = 0
        self.max_children = 0
        self.main_hwm_kb = 0
        self.limit_hit_kb: int | None = None
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        main = proc_status_kb(self.pid, "VmRSS", "VmHWM")
        if not main:
            return
        self.main_hwm_kb = max(self.main_hwm_kb, main.get("VmHWM", 0))
        total = main.get("VmRSS", 0)
        kids = proc_descendants(self.pid)
        self.max_children = max(self.max_children, len(kids))
        for kid in kids:
            st = proc_status_kb(kid, "VmRSS", "VmHWM")
            total += st.get("VmRSS", 0)
            self.child_hwm_max_kb = max(self.child_hwm_max_kb, st.get("VmHWM", 0))
        self.tree_peak_kb = max(self.tree_peak_kb, total, self.main_hwm_kb)
        if self.limit_kb is not None and self.limit_hit_kb is None and total > self.limit_kb:
            self.limit_hit_kb = total
            if self.on_limit is not None:
                self.on_limit(total)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, int]:
        self.sample()
        self._stop_evt.set()
        self.join(timeout=2)
        return {
            "main_hwm_kb": self.main_hwm_kb,
            "tree_peak_kb": self.tree_peak_kb,
            "child_hwm_max_kb": self.child_hwm_max_kb,
            "max_children": self.max_children,
        }


# --------------------------------------------------------------------------
# Statistics and formatting
# --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize_latencies(values: list[float]) -> dict[str, float]:
    values.sort()
    n = len(values)
    return {
        "n": n,
        "mean": (sum(values) / n) if n else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if n else math.nan,
    }


def fmt_num(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def render_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], markdown: bool = False
) -> str:
    rows = [list(r) for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


# --------------------------------------------------------------------------
# Target server (runs as its own process)
# --------------------------------------------------------------------------


class _Conn:
    __slots__ = ("mode", "nbytes", "pending", "sock", "t_first", "t_last")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.mode = 0  # 0 undecided, 1 sink, 2 echo
        self.nbytes = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.pending = b""


def serve_main(argv: Sequence[str]) -> int:
    """Discard sink + echo on one port, control on another (selectors/epoll)."""
    sel = selectors.DefaultSelector()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    stats: dict[str, Any] = {
        "closed": 0,
        "bytes": 0,
        "t_first": None,
        "t_last": None,
        "echo_conns": 0,
    }
    open_sinks: set[_Conn] = set()
    monotonic = time.monotonic

    def listener() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(4096)
        s.setblocking(False)
        return s

    data_l = listener()
    ctl_l = listener()

    def close(c: _Conn) -> None:
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        if c.mode == 1:
            open_sinks.discard(c)
            stats["closed"] += 1
            stats["bytes"] += c.nbytes
            if c.nbytes:
                if stats["t_first"] is None or c.t_first < stats["t_first"]:
                    stats["t_first"] = c.t_first
                if stats["t_last"] is None or c.t_last > stats["t_last"]:
                    stats["t_last"] = c.t_last

    def on_write(c: _Conn) -> None:
        try:
            n = c.sock.send(c.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(c)
            return
        c.pending = c.pending[n:]
        if not c.pending:
            sel.modify(c.sock, selectors.EVENT_READ, (on_read, c))

    def on_read(c: _Conn) -> None:
        try:
            n = c.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(c)
            return
        if n == 0:
            close(c)
            return
        if c.mode == 1:
            c.nbytes += n
            c.t_last = monotonic()
            return
        if c.mode == 0:
            if buf[0] == ECHO_MAGIC:
                c.mode = 2
                stats["echo_conns"] += 1
            else:
                c.mode = 1
                c.nbytes = n
                c.t_first = c.t_last = monotonic()
                open_sinks.add(c)
                return
        # echo
        try:
            sent = c.sock.send(mv[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            close(c)
            return
        if sent < n:
            c.pending = bytes(mv[sent:n])
            sel.modify(c.sock, selectors.EVENT_WRITE, (on_write, c))

    def on_accept(lsock: socket.socket) -> None:
        for _ in range(256):
            try:
                s, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.01)
                    return
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(s)
            sel.register(s, selectors.EVENT_READ, (on_read, c))

    def on_ctl_accept(lsock: socket.socket) -> None:
        try:
            s, _ = lsock.accept()
        except OSError:
            return
        s.settimeout(2.0)
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                line += chunk
            cmd = line.strip().upper()
            if cmd == b"RESET":
                stats.update(closed=0, bytes=0, t_first=None, t_last=None, echo_conns=0)
                reply: dict[str, Any] = {"ok": True}
            elif cmd == b"STATS":
                reply = dict(stats)
                reply["open"] = len(open_sinks)
                reply["open_bytes"] = sum(c.nbytes for c in open_sinks)
                reply["now"] = monotonic()
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            s.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            s.close()

    sel.register(data_l, selectors.EVENT_READ, (on_accept, data_l))
    sel.register(ctl_l, selectors.EVENT_READ, (on_ctl_accept, ctl_l))
    print(
        json.dumps({"port": data_l.getsockname()[1], "control": ctl_l.getsockname()[1]}),
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for key, _ev in sel.select():
            cb, arg = key.data
            cb(arg)


@dataclass
class TargetServer:
    """Handle on a running ``serve`` process (started via REGISTRY)."""

    proc: subprocess.Popen[Any]
    port: int
    control: int

    @classmethod
    def start(cls, timeout: float = 10.0) -> TargetServer:
        proc = REGISTRY.spawn(
            [sys.executable, COMMON_PATH, "serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        ready = threading.Event()
        line_box: list[str] = []

        def _read() -> None:
            line_box.append(proc.stdout.readline())  # type: ignore[union-attr]
            ready.set()

        threading.Thread(target=_read, daemon=True).start()
        if not ready.wait(timeout) or not line_box[0]:
            REGISTRY.kill(proc)
            raise RuntimeError("target server did not start")
        info = json.loads(line_box[0])
        return cls(proc, info["port"], info["control"])

    def command(self, cmd: str) -> dict[str, Any]:
        with socket.create_connection((HOST, self.control), timeout=5) as s:
            s.sendall(cmd.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        return reply

    def reset(self) -> None:
        self.command("RESET")

    def wait_sinks_closed(self, n: int, timeout: float) -> tuple[dict[str, Any], bool]:
        """Wait until ``n`` sink connections closed since RESET; (stats, complete)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.command("STATS")
            if st["closed"] >= n and st["open"] == 0:
                return st, True
            if time.monotonic() >= deadline:
                return st, False
            time.sleep(0.05)

    def stop(self) -> None:
        REGISTRY.kill(self.proc)


# --------------------------------------------------------------------------
# Load generator (runs as its own process)
# --------------------------------------------------------------------------


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


def _load_connrate(spec: dict[str, Any]) -> dict[str, Any]:
    """W workers doing connect + 64-byte echo + close in a loop."""
    port, workers, duration = spec["port"], spec["workers"], spec["duration"]
    size = spec.get("size", 64)
    io_timeout = spec.get("io_timeout", 5.0)
    msg = b"E" + b"x" * (size - 1)
    lat: list[list[float]] = [[] for _ in range(workers)]
    errs: list[dict[str, int]] = [{} for _ in range(workers)]
    barrier = threading.Barrier(workers + 1)
    box: dict[str, float] = {}
    perf = time.perf_counter
    addr = (HOST, port)
    AF, ST = socket.AF_INET, socket.SOCK_STREAM

    def worker(i: int) -> None:
        my_lat, my_err = lat[i], errs[i]
        barrier.wait()
        end = box["t0"] + duration
        while perf() < end:
            t = perf()
            s = socket.socket(AF, ST)
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
                my_lat.append(perf() - t)
            except OSError as exc:
                s.close()
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


LOAD_KINDS = {"stream": _load_stream, "connrate": _load_connrate, "rtt": _load_rtt}


def _load_connrate_series(spec: dict[str, Any]) -> dict[str, Any]:
    """Like ``connrate``, and also counts completed and failed cycles per second.

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


LOAD_KINDS["connrate_series"] = _load_connrate_series


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
    proc = REGISTRY.spawn(
        [sys.executable, COMMON_PATH, "load", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


# -- shared by every benchmark -------------------------------------------------


def start_run() -> float:
    """Signal handlers, every child killed at exit; returns the start time (monotonic)."""
    install_signal_handlers()
    atexit.register(REGISTRY.kill_all)
    return time.monotonic()


def nodepass_version() -> str | None:
    """``nodepass.__version__`` of this tree ('?' if it prints none); None if Python fails."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import nodepass; print(nodepass.__version__)"],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or "?"


def end_meta(meta: dict[str, Any], t_start: float, interrupted: bool) -> None:
    """Add the wall time, the load average at the end and ``interrupted`` to ``meta``."""
    meta["wall_s"] = time.monotonic() - t_start
    meta["loadavg_end"] = os.getloadavg()
    meta["interrupted"] = interrupted


def write_json(path: str, results: dict[str, Any]) -> None:
    """The raw results as JSON in ``path`` (its directory is created); says so on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"raw results: {path}")


# -- shared by the forwarding and the tunnel benchmarks ------------------------

#: haproxy runs one thread per process in every benchmark (stated in reports).
HAPROXY_THREADS = 1

#: The phases, in the order they run (``--phases`` picks some).
PHASES = ("tput1", "tputN", "connrate", "rtt")

#: A row of the report: metric key, label, higher_is_better (None: no ratio direction).
MetricDef = tuple[str, str, bool | None]


class StartError(RuntimeError):
    """A system under test could not be started."""


def haproxy_maxconn() -> int:
    """High, but within what the fd limit allows (haproxy needs ~2 fds per connection)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 20000
    return max(256, min(20000, (hard - 200) // 2))


def haproxy_config(listen: int, upstream: int, bind_ssl: str = "", server_ssl: str = "") -> str:
    """
    A one-hop TCP haproxy: 127.0.0.1:listen -> 127.0.0.1:upstream, optionally
    terminating TLS on the bind side or speaking TLS to the next hop.
    """
    maxconn = haproxy_maxconn()
    return f"""\
# generated by the NodePass benchmarks (bench/)
global
    nbthread {HAPROXY_THREADS}
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    maxconn {maxconn}

listen hop
    bind 127.0.0.1:{listen}{bind_ssl}
    server next 127.0.0.1:{upstream}{server_ssl}
"""


def phase_stream(port: int, srv: TargetServer, streams: int, args: Any) -> dict[str, Any]:
    """
    Throughput through C{port} with C{streams} parallel senders into the
    sink: for C{args.duration} seconds, or C{args.volume} MB in all when the
    benchmark has that option and it is set.
    """
    srv.reset()
    spec: dict[str, Any] = {
        "kind": "stream",
        "port": port,
        "streams": streams,
        "chunk": args.chunk,
    }
    volume = getattr(args, "volume", None)
    if volume:
        spec["bytes_per_stream"] = int(volume * 1e6 / streams)
        spec["max_time"] = args.max_time
        send_time = args.max_time
    else:
        spec["duration"] = args.duration
        send_time = args.duration
    load = run_load(spec, timeout=send_time + 30)
    if "fatal" in load:
        return {"error": load["fatal"]}
    st, complete = srv.wait_sinks_closed(streams, timeout=args.drain_timeout)
    received = st["bytes"] + (0 if complete else st["open_bytes"])
    t_end = st["t_last"] if complete and st["t_last"] else st["now"]
    elapsed = t_end - load["t0"]
    res: dict[str, Any] = {
        "streams": streams,
        "sent_bytes": load["sent_bytes"],
        "received_bytes": received,
        "elapsed_s": elapsed,
        "send_s": load["t_send_done"] - load["t0"],
        "drain_s": max(0.0, t_end - load["t_send_done"]),
        "mb_s": received / elapsed / 1e6 if elapsed > 0 else math.nan,
        "complete": complete,
    }
    errors = list(load["errors"])
    if not complete:
        errors.append(
            f"only {st['closed']}/{streams} streams reached the sink's EOF within "
            f"{args.drain_timeout:.0f}s after sending stopped"
        )
    elif received != load["sent_bytes"]:
        errors.append(f"data lost: sent {load['sent_bytes']} B, sink got {received} B")
    if errors:
        res["error"] = "; ".join(errors)
    return res


def parse_systems(p: argparse.ArgumentParser, value: str, known: Sequence[str]) -> list[str]:
    """``--systems`` as a list; a name not in ``known`` is a usage error."""
    systems = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in systems if s not in known]
    if bad:
        p.error(f"unknown system(s): {', '.join(bad)}")
    return systems


def parse_phases(p: argparse.ArgumentParser, value: str) -> list[str]:
    """``--phases`` as a list; a name not in ``PHASES`` is a usage error."""
    phases = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in phases if s not in PHASES]
    if bad:
        p.error(f"unknown phase(s): {', '.join(bad)} (known: {', '.join(PHASES)})")
    return phases


def check_run_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors in ``--rtt-cpu`` and ``--rounds`` (checked after ``--quick`` applied)."""
    if args.rtt_cpu >= 0 and args.rtt_cpu not in os.sched_getaffinity(0):
        p.error(f"--rtt-cpu {args.rtt_cpu} is not available to this process")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")


def phase_connrate(
    port: int,
    args: Any,
    kind: str = "connrate",
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """
    ``args.workers`` workers doing connect + echo + close through ``port`` for
    ``args.conn_duration`` seconds, with the load generator's ``kind``;
    ``extra`` adds fields computed from the load generator's result.
    """
    load = run_load(
        {
            "kind": kind,
            "port": port,
            "workers": args.workers,
            "duration": args.conn_duration,
        },
        timeout=args.conn_duration + 30,
    )
    if "fatal" in load:
        return {"error": load["fatal"]}
    res: dict[str, Any] = {
        "workers": args.workers,
        "count": load["count"],
        "rate": load["rate"],
        "p50_ms": load["latency_s"]["p50"] * 1e3,
        "p99_ms": load["latency_s"]["p99"] * 1e3,
        "latency_ms": {k: (v * 1e3 if k != "n" else v) for k, v in load["latency_s"].items()},
        "errors": load["errors"],
    }
    if extra is not None:
        res.update(extra(load))
    n_err = sum(load["errors"].values())
    if n_err:
        msg = f"{n_err} failed connections: {load['errors']}"
        # A few failures are reported but do not void the measurement.
        if load["count"] == 0 or n_err > 0.01 * load["count"]:
            res["error"] = msg
        else:
            res["warning"] = msg
    return res


def phase_rtt(port: int, pids: Sequence[int], args: Any) -> dict[str, Any]:
    """
    64-byte round trips on one connection through ``port`` for
    ``args.rtt_duration`` seconds. With ``args.rtt_cpu`` >= 0, the load
    generator and the process trees of ``pids`` are pinned to that CPU
    meanwhile: on this VM a wake-up on another CPU costs ~75 us, so without
    pinning the figure mostly says where the scheduler put the processes.
    Pinned to one CPU, it measures the work (and context switches) per
    round trip.
    """
    pin = args.rtt_cpu >= 0
    every_cpu = os.sched_getaffinity(0)
    if pin:
        for pid in pids:
            set_tree_affinity(pid, {args.rtt_cpu})
    try:
        load = run_load(
            {
                "kind": "rtt",
                "port": port,
                "duration": args.rtt_duration,
                "cpu": args.rtt_cpu if pin else None,
            },
            timeout=args.rtt_duration + 30,
        )
    finally:
        if pin:
            for pid in pids:
                set_tree_affinity(pid, every_cpu)
    if "fatal" in load:
        return {"error": load["fatal"]}
    lat = load["latency_s"]
    return {
        "count": lat["n"],
        "p50_us": lat["p50"] * 1e6,
        "p99_us": lat["p99"] * 1e6,
        "latency_us": {k: (v * 1e6 if k != "n" else v) for k, v in lat.items()},
    }


def describe_phase(res: dict[str, Any]) -> str:
    """One phase result as a progress line."""
    if "mb_s" in res:
        s = f"{res['mb_s']:9.1f} MB/s  ({res['received_bytes'] / 1e6:.0f} MB, drain {res['drain_s']:.2f}s)"
    elif "rate" in res:
        s = f"{res['rate']:9.0f} conn/s  p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms"
        if "per_second" in res:
            s += f"  per second {res['per_second']}"
            if any(res["errors_per_second"]):
                s += f"  failed per second {res['errors_per_second']}"
    elif "p50_us" in res:
        s = f"p50 {res['p50_us']:.1f} us  p99 {res['p99_us']:.1f} us  ({res['count']} round trips)"
    else:
        s = ""
    if "fwd_cpu_cores" in res:
        s += f"  fwd cpu {res['fwd_cpu_cores']:.2f} cores"
    if res.get("error"):
        s += f"  ERROR: {res['error']}"
    return s


class SystemUnderTest(Protocol):
    """What the phases need of a started system (forward.py's Forwarder, pair.py's System)."""

    port: int
    killed_reason: str | None

    def alive(self) -> bool: ...

    def cpu_seconds(self) -> float | None: ...

    def skip_reason(self) -> str: ...

    def death_reason(self) -> str: ...

    def stop(self) -> None: ...


def rss_guard(sut: SystemUnderTest, pid: int, tree: str, args: Any, tag: str) -> TreeMemorySampler:
    """
    A started memory sampler of ``pid``'s process tree that stops ``sut`` once
    the tree grows past ``args.rss_limit`` MiB; ``tree`` names it in the reason.
    """

    def on_limit(kb: int) -> None:
        sut.killed_reason = (
            f"killed: {tree} RSS {kb / 1024:.0f} MiB > --rss-limit {args.rss_limit:.0f} MiB"
        )
        log(f"[{tag}] {sut.killed_reason}")
        sut.stop()

    sampler = TreeMemorySampler(
        pid, interval=0.1, limit_kb=int(args.rss_limit * 1024), on_limit=on_limit
    )
    sampler.start()
    return sampler


def run_phases(
    sut: SystemUnderTest,
    phases: Sequence[tuple[str, Callable[[], dict[str, Any]]]],
    args: Any,
    tag: str,
    run: dict[str, Any],
    keep_cpu_s: bool = False,
) -> None:
    """
    Run those of ``phases`` that ``args.phases`` names, each followed by
    ``args.settle`` seconds of pause; results, errors and warnings go into
    ``run``. The CPU ``sut`` used is added to each result as ``fwd_cpu_cores``
    (and, with ``keep_cpu_s``, in seconds as ``fwd_cpu_s``).
    """
    for pname, fn in phases:
        if pname not in args.phases:
            continue
        if not sut.alive():
            run["errors"].append(f"{pname}: skipped, {sut.skip_reason()}")
            continue
        cpu0 = sut.cpu_seconds()
        t0 = time.monotonic()
        try:
            res = fn()
        except (OSError, ValueError, RuntimeError) as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(args.settle)  # let forks exit and be reaped, sockets close
        wall = time.monotonic() - t0
        cpu1 = sut.cpu_seconds()
        if cpu0 is not None and cpu1 is not None:
            if keep_cpu_s:
                res["fwd_cpu_s"] = cpu1 - cpu0
            res["fwd_cpu_cores"] = (cpu1 - cpu0) / max(wall - args.settle, 1e-9)
        if not sut.alive():
            res["error"] = "; ".join(filter(None, [res.get("error"), sut.death_reason()]))
        run["phases"][pname] = res
        if res.get("error"):
            run["errors"].append(f"{pname}: {res['error']}")
        if res.get("warning"):
            run.setdefault("warnings", []).append(f"{pname}: {res['warning']}")
        log(f"[{tag}] {pname:8s} {describe_phase(res)}")


def run_rounds(
    systems: Sequence[str],
    args: Any,
    runs: dict[str, list[dict[str, Any]]],
    run_system: Callable[[str, TargetServer, str, Any, str, dict[str, Any]], object],
    prefix: str,
) -> bool:
    """
    Run every system ``args.rounds`` times against one target server, the
    order alternating (ABBA); each run's dict is added to ``runs`` before
    ``run_system`` fills it. Files go to a temporary directory (``prefix``),
    or to ``args.log_dir`` where the benchmark has that option and it is set.
    Returns whether it was interrupted; every child is killed either way.
    """
    srv = None
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir:
            log_dir = getattr(args, "log_dir", None)
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                tmpdir = log_dir  # configs, certificate and process logs are kept
            srv = TargetServer.start()
            log(f"[setup] target (sink+echo) pid {srv.proc.pid} on 127.0.0.1:{srv.port}")
            for rnd in range(args.rounds):
                order = systems if rnd % 2 == 0 else list(reversed(systems))
                for s in order:
                    if srv.proc.poll() is not None:
                        raise RuntimeError("target server died")
                    run: dict[str, Any] = {"round": rnd + 1}
                    runs.setdefault(s, []).append(run)
                    run_system(s, srv, tmpdir, args, f"{s} r{rnd + 1}", run)
    except KeyboardInterrupt:
        log("\ninterrupted: stopping children, reporting what was measured")
        return True
    finally:
        if srv is not None:
            srv.stop()
        REGISTRY.kill_all()
    return False


def flatten_phases(run: dict[str, Any]) -> dict[str, float]:
    """One run's phase figures (only those measured without error) by metric key."""
    out: dict[str, float] = {}
    ph = run["phases"]

    def ok(p: str) -> dict[str, Any] | None:
        r = ph.get(p)
        return r if r and not r.get("error") else None

    if r := ok("tput1"):
        out["tput1_mb_s"] = r["mb_s"]
    if r := ok("tputN"):
        out["tputN_mb_s"] = r["mb_s"]
    if r := ok("connrate"):
        out["conn_rate"] = r["rate"]
        out["conn_p50_ms"] = r["p50_ms"]
        out["conn_p99_ms"] = r["p99_ms"]
    if r := ok("rtt"):
        out["rtt_p50_us"] = r["p50_us"]
        out["rtt_p99_us"] = r["p99_us"]
    for p, key in (("tput1", "cpu_tput1"), ("tputN", "cpu_tputN"), ("connrate", "cpu_conn")):
        if (r := ok(p)) and "fwd_cpu_cores" in r:
            out[key] = r["fwd_cpu_cores"]
    return out


def aggregate(
    runs: list[dict[str, Any]],
    flatten: Callable[[dict[str, Any]], dict[str, float]],
    rules: dict[str, Callable[[list[float]], float]] | None = None,
) -> dict[str, float]:
    """
    The figures of ``runs`` (``flatten`` picks them) over the rounds: the
    median; ``rss_*`` the maximum (it is a peak); a key in ``rules``, its rule.
    """
    flat = [flatten(r) for r in runs]
    keys = {k for f in flat for k in f}
    rules = rules or {}
    out = {}
    for k in keys:
        vals = [f[k] for f in flat if k in f]
        if k in rules:
            out[k] = rules[k](vals)
        elif k.startswith("rss_"):
            out[k] = max(vals)
        else:
            out[k] = statistics.median(vals)
    return out


def ratios(
    summary: dict[str, dict[str, float]], ref: str, bases: Iterable[str]
) -> dict[str, dict[str, float]]:
    """``ref``'s figures divided by each baseline's (those of ``bases`` in ``summary``)."""
    return {
        base: {k: summary[ref][k] / v for k, v in summary[base].items() if k in summary[ref] and v}
        for base in bases
        if base != ref and base in summary
    }


def tool_versions(tools: dict[str, str | None]) -> dict[str, str]:
    """The version lines of socat and haproxy, where ``tools`` found them."""
    versions = {}
    if tools.get("socat"):
        versions["socat"] = command_version(["socat", "-V"])
    if tools.get("haproxy"):
        versions["haproxy"] = command_version(["haproxy", "-v"])
    return versions


def run_meta(versions: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    """A result's ``meta``: date, host, CPU, kernel, Python, ``versions``, load, ``args``."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "haproxy_nbthread": HAPROXY_THREADS,
        "loadavg_start": os.getloadavg(),
        "args": args,
    }


def print_header(title: str, meta: dict[str, Any], args: Any, note: str) -> None:
    """The report's first lines: ``title``, host, load, test sizes, versions, ``note``."""
    print()
    print(
        f"{title}  {meta['date']}  host={meta['host']}  "
        f"cpus={meta['cpus']}  python={meta['python']}"
    )
    la0, la1 = meta["loadavg_start"][0], meta["loadavg_end"][0]
    print(
        f"cpu: {meta['cpu_model']}  kernel {meta['kernel']}  "
        f"load average (1 min) {la0:.2f} at start, {la1:.2f} at end"
    )
    volume = getattr(args, "volume", None)
    stream = f"{volume:.0f} MB" if volume else f"{args.duration:g}s"
    print(
        f"rounds={args.rounds} (median; RSS = max)  stream={stream}"
        f"  conn={args.conn_duration:g}s x {args.workers} workers  rtt={args.rtt_duration:g}s"
        + (f" (pinned to CPU {args.rtt_cpu})" if args.rtt_cpu >= 0 else " (not pinned)")
    )
    for s, v in meta["versions"].items():
        print(f"  {s}: {v}")
    print(f"  {note}")
    print()


def better(hib: bool | None) -> str:
    """The "better" column of a metric row."""
    return "higher" if hib else ("" if hib is None else "lower")


def metric_cell(key: str, v: float | None) -> str:
    """A summary figure as the tables show it."""
    if key == "conn_sustain":
        return "-" if v is None or math.isnan(v) else f"{v:.2f}"
    digits = 3 if key.startswith(("conn_p", "cpu_")) else 2 if key == "ready_s" else 1
    if key in ("conn_first", "conn_last"):
        digits = 0
    return fmt_num(v, digits)


def metric_table(
    metrics: Sequence[MetricDef],
    summary: dict[str, dict[str, float]],
    systems: Sequence[str],
    markdown: bool,
    ratio_columns: dict[str, dict[str, float]] | None = None,
) -> str:
    """
    A row per metric that one of ``systems`` has: its figure per system, the
    ratios (``ratio_columns``: header -> ratio by metric), which way is better.
    """
    ratio_columns = ratio_columns or {}
    rows = []
    for key, label, hib in metrics:
        if not any(key in summary.get(s, {}) for s in systems):
            continue
        row = [label.strip() if markdown else label]
        row += [metric_cell(key, summary.get(s, {}).get(key)) for s in systems]
        for by_key in ratio_columns.values():
            r = by_key.get(key)
            row.append("-" if r is None or hib is None else f"{r:.2f}x")
        row.append(better(hib))
        rows.append(row)
    header = ["metric", *systems, *ratio_columns, "better"]
    return render_table(header, rows, markdown=markdown)


def run_notes(system: str, run: dict[str, Any]) -> list[str]:
    """The errors and warnings of one run of ``system``, as notes."""
    out = [f"{system} (round {run['round']}): {e}" for e in run["errors"]]
    out += [f"{system} (round {run['round']}, warning): {w}" for w in run.get("warnings", [])]
    return out


def print_notes(notes: Sequence[str]) -> None:
    """The notes under the tables, after a blank line (nothing when there are none)."""
    if notes:
        print()
        for n in notes:
            print("note: " + n)


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("serve", "load"):
        print(__doc__)
        return 2
    if argv[0] == "serve":
        return serve_main(argv[1:])
    return load_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
