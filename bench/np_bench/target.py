"""The target server, in its own process: TCP sink, echo and source, UDP echo.

One port number serves every role, TCP and UDP, so a forwarder under test
needs only one target. The first byte a TCP client sends decides the role:

* ``E``: echo (every byte, the first included, is sent back);
* ``D<seconds>\\n``: source: the server sends for that many seconds, then
  shuts its side down (the "down" throughput test); it closes at the client's EOF;
* anything else: discard sink (bytes are counted and dropped).

The sink keeps, for the connections closed since the last ``RESET``, their
count, total bytes and the monotonic time of the first and last byte received
(``CLOCK_MONOTONIC`` is system-wide on Linux, so the orchestrator can compare
these times with its own and the load generator's). The UDP socket on the same
port number sends every datagram back to its sender and counts them.

Control protocol (a second, direct port; one line in, one JSON line out):
``RESET``, ``STATS``. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from np_bench.base import HOST
from np_bench.procs import REGISTRY, spawn_helper

ECHO = ord("E")
SOURCE = ord("D")
SINK, ECHOING, SOURCING, HEADER = 1, 2, 3, 4
SOURCE_CHUNK = 256 * 1024


class _Conn:
    __slots__ = ("deadline", "mode", "nbytes", "pending", "sock", "t_first", "t_last")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.mode = 0  # 0 undecided, then SINK, ECHOING, SOURCING or HEADER (source, reading)
        self.nbytes = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.pending = b""
        self.deadline = 0.0


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A listening TCP socket and a UDP socket with the same port number."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((HOST, 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((HOST, t.getsockname()[1]))
        except OSError:
            t.close()
            u.close()
            continue
        t.listen(4096)
        t.setblocking(False)
        u.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Up to net.core.[rw]mem_max: a late wake-up of this process must not
            # drop datagrams at 20k/s; the target is not what is measured.
            try:
                u.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        return t, u
    raise OSError("no port free for both TCP and UDP")


def serve_main(argv: Sequence[str]) -> int:
    """Sink, echo and source on one TCP port, UDP echo on it too, control on another."""
    del argv
    sel = selectors.DefaultSelector()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    source_data = memoryview(b"d" * SOURCE_CHUNK)
    stats: dict[str, Any] = {}

    def reset() -> None:
        stats.update(
            closed=0,
            bytes=0,
            t_first=None,
            t_last=None,
            echo_conns=0,
            source_conns=0,
            source_bytes=0,
            udp_dgrams=0,
            udp_bytes=0,
        )

    reset()
    open_sinks: set[_Conn] = set()
    monotonic = time.monotonic

    data_l, udp = _bind_pair()
    ctl_l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ctl_l.bind((HOST, 0))
    ctl_l.listen(64)

    def close(c: _Conn) -> None:
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        if c.mode == SINK:
            open_sinks.discard(c)
            stats["closed"] += 1
            stats["bytes"] += c.nbytes
            if c.nbytes:
                if stats["t_first"] is None or c.t_first < stats["t_first"]:
                    stats["t_first"] = c.t_first
                if stats["t_last"] is None or c.t_last > stats["t_last"]:
                    stats["t_last"] = c.t_last

    def on_write(c: _Conn) -> None:
        if c.mode == SOURCING:
            if monotonic() >= c.deadline:
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    close(c)
                    return
                c.mode = ECHOING  # reads until the client's EOF, sends nothing more
                c.pending = b""
                sel.modify(c.sock, selectors.EVENT_READ, (on_read, c))
                return
            try:
                n = c.sock.send(source_data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                close(c)
                return
            stats["source_bytes"] += n
            return
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

    def start_source(c: _Conn, header: bytes) -> None:
        try:
            seconds = float(header[1:].decode("ascii").strip() or "1")
        except ValueError:
            seconds = 1.0
        c.mode = SOURCING
        c.deadline = monotonic() + min(max(seconds, 0.0), 120.0)
        stats["source_conns"] += 1
        sel.modify(c.sock, selectors.EVENT_WRITE, (on_write, c))

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
        if c.mode == SINK:
            c.nbytes += n
            c.t_last = monotonic()
            return
        if c.mode == HEADER:
            c.pending += bytes(mv[:n])
            if b"\n" in c.pending or len(c.pending) > 64:
                start_source(c, c.pending)
            return
        if c.mode == 0:
            if buf[0] == ECHO:
                c.mode = ECHOING
                stats["echo_conns"] += 1
            elif buf[0] == SOURCE:
                c.mode = HEADER
                c.pending = bytes(mv[:n])
                if b"\n" in c.pending:
                    start_source(c, c.pending)
                return
            else:
                c.mode = SINK
                c.nbytes = n
                c.t_first = c.t_last = monotonic()
                open_sinks.add(c)
                return
        if c.pending:  # still sending the previous echo: keep the order
            c.pending += bytes(mv[:n])
            return
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

    def on_udp(sock: socket.socket) -> None:
        for _ in range(256):
            try:
                n, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stats["udp_dgrams"] += 1
            stats["udp_bytes"] += n
            try:
                sock.sendto(mv[:n], addr)
            except OSError:
                pass

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
                reset()
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
    sel.register(udp, selectors.EVENT_READ, (on_udp, udp))
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
    """Handle on a running target process (started through REGISTRY)."""

    proc: subprocess.Popen[Any]
    port: int  # TCP and UDP
    control: int

    @classmethod
    def start(cls, timeout: float = 10.0) -> TargetServer:
        proc = spawn_helper("serve", stdout=subprocess.PIPE, text=True)
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

    def stats(self) -> dict[str, Any]:
        return self.command("STATS")

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
