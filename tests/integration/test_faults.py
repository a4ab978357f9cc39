"""
The fault matrix of docs/reliability.md, on 127.0.0.1 with real processes: peers killed,
stopped and restarted, a target that goes away, a slow reader, many short connections, bytes
pushed into parked pool connections, bad tunnel keys, a master killed during writes, a state
directory that cannot be written or is full, and a damaged database.

Each test bounds its waits (polls with a deadline), kills every process it started, also on
failure, and records what it measured in L{FIGURES}; ``NP_FAULT_FIGURES=path`` writes them
out as JSON at the end of the module (how docs/reliability.md got its figures).

A killed instance host is covered by tests/integration/test_hosts.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodepass.tunnel.handshake import token
from tests.support import (
    LOOPBACK,
    NodePass,
    TCPServer,
    UDPEcho,
    canConnect,
    echo,
    freePort,
    waitFor,
)
from tests.test_master_service import KEY_LINE, Master, startMaster

pytestmark = pytest.mark.integration

KEY = "f4ult"

#: What each test measured (seconds, bytes, counts), by test name.
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _writeFigures() -> Iterator[None]:
    yield
    path = os.environ.get("NP_FAULT_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def record(name: str, **figures: Any) -> None:
    FIGURES.setdefault(name, {}).update(figures)


# -- /proc ------------------------------------------------------------------------------


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def tcpStates(port: int) -> dict[str, int]:
    """
    How many IPv4 sockets whose local port is C{port} are in each state (hex codes of
    /proc/net/tcp: 01 ESTABLISHED, 08 CLOSE_WAIT, 0A LISTEN).
    """
    counts: dict[str, int] = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                counts[fields[3]] = counts.get(fields[3], 0) + 1
    return counts


def settle(
    pid: int, at: Callable[[int], bool], timeout: float, what: str, log: Callable[[], str] = str
) -> float:
    """
    Wait until C{at(fds(pid))}; return how long it took.  C{log} gives what to show when
    it does not happen.
    """
    started = time.monotonic()
    seen: list[int] = []

    def check() -> bool:
        seen.append(fds(pid))
        return at(seen[-1])

    try:
        waitFor(check, timeout, what)
    except AssertionError as e:
        raise AssertionError(
            f"{e}: fds went {seen[:3]}...{seen[-3:]}\n{fdTable(pid)}\n{log()}"
        ) from None
    return time.monotonic() - started


def fdTable(pid: int) -> str:
    """
    What each fd of C{pid} is, with the TCP states of its sockets (for a failure message).
    """
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                inodes[fields[9]] = f"{table[10:]} {fields[1]} -> {fields[2]} st={fields[3]}"
    lines = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            inode = target[8:-1] if target.startswith("socket:[") else ""
            lines.append(f"  {fd}: {target} {inodes.get(inode, '')}")
    return "\n".join(lines)


def quietFds(pid: int, samples: int = 5) -> int:
    """
    The smallest fd count over a few readings (a retrying peer opens a socket now and then).
    """
    low = fds(pid)
    for _ in range(samples - 1):
        time.sleep(0.05)
        low = min(low, fds(pid))
    return low


def steadyFds(pid: int, timeout: float = 5.0) -> int:
    """
    The fd count once it reads the same for half a second.
    """
    readings: list[tuple[float, int]] = []

    def steady() -> bool:
        readings.append((time.monotonic(), fds(pid)))
        recent = [n for at, n in readings if at >= readings[-1][0] - 0.5]
        return readings[-1][0] - readings[0][0] >= 0.5 and len(set(recent)) == 1

    waitFor(steady, timeout, f"a steady fd count for {pid}")
    return readings[-1][1]


# -- a tunnel pair ------------------------------------------------------------------------

FAST = {
    "NP_REPORT_INTERVAL": "1s",
    "NP_SERVICE_COOLDOWN": "200ms",
    "NP_SHUTDOWN_TIMEOUT": "1s",
}


class Pair:
    """
    A tls=0 server (users connect to its entry port, mode=1) and a client dialling the
    target (mode=2), each a ``python -m nodepass`` child that can be killed and started again.
    """

    def __init__(self, target: int, pool: int = 4, env: dict[str, str] | None = None) -> None:
        self.tunnel = freePort(udp=False)
        self.entry = freePort()
        self.target = target
        self.pool = pool
        self.env = {**FAST, **(env or {})}
        self.server: NodePass | None = None
        self.client: NodePass | None = None
        self.started: list[NodePass] = []

    def startServer(self) -> NodePass:
        self.server = NodePass(
            f"server://{KEY}@{LOOPBACK}:{self.tunnel}/{LOOPBACK}:{self.entry}"
            f"?mode=1&tls=0&max={self.pool}&log=info",
            self.env,
        )
        self.started.append(self.server)
        # Every listener (tunnel and entry ports) is bound once it waits for a handshake.
        server = self.server
        waitFor(lambda: "Pending tunnel handshake" in server.stdout, 15, "the server to be up")
        return self.server

    def startClient(self) -> NodePass:
        self.client = NodePass(
            f"client://{KEY}@{LOOPBACK}:{self.tunnel}/{LOOPBACK}:{self.target}"
            f"?mode=2&min={self.pool}&log=info",
            self.env,
        )
        self.started.append(self.client)
        return self.client

    def kill(self) -> None:
        for process in self.started:
            if process.proc.poll() is None:
                process.proc.kill()
            process.proc.wait(10)


@contextlib.contextmanager
def pairOf(target: int, **kwargs: Any) -> Iterator[Pair]:
    pair = Pair(target, **kwargs)
    try:
        yield pair
    finally:
        pair.kill()


def killed(process: NodePass) -> None:
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(10)


def roundTrip(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as user:

        def send() -> None:
            user.sendall(payload)
            user.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while chunk := user.recv(65536):
            chunks.append(chunk)
        sender.join(timeout)
    return b"".join(chunks)


def works(port: int, size: int = 4096) -> bool:
    payload = os.urandom(size)
    try:
        return roundTrip(port, payload) == payload
    except OSError:
        return False


def waitWorks(port: int, timeout: float = 20.0, what: str = "traffic") -> float:
    started = time.monotonic()
    waitFor(lambda: works(port), timeout, what)
    return time.monotonic() - started


def udpWorks(port: int, tag: bytes = b"u") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        dgram.settimeout(0.5)
        data = tag + os.urandom(64)
        try:
            dgram.sendto(data, (LOOPBACK, port))
            return dgram.recvfrom(65536)[0] == data
        except OSError:
            return False


class Stream:
    """
    A user sending a numbered stream through an echo target in a thread, checking that what
    comes back is exactly a prefix of what it sent (no byte of another session in it).
    """

    def __init__(self, port: int, tag: int, chunk: int = 64 * 1024) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.tag = tag
        self.block = hashlib.sha256(b"%d" % tag).digest() * (chunk // 32)
        self.sent = 0
        self.received = 0
        self.foreign = False
        self.ended = threading.Event()
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                self.sock.sendall(self.block)
                self.sent += len(self.block)

    def _receive(self) -> None:
        size = len(self.block)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                offset = self.received % size
                while data:
                    take = min(len(data), size - offset)
                    if data[:take] != self.block[offset : offset + take]:
                        self.foreign = True
                    data = data[take:]
                    self.received += take
                    offset = 0
        except OSError:
            return
        finally:
            self.ended.set()

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.ended.wait(5)


# -- the data plane -----------------------------------------------------------------------


def echoes() -> tuple[TCPServer, UDPEcho]:
    """
    A TCP and a UDP echo server on one port number (an instance dials its target over both).
    """
    for _ in range(20):
        port = freePort()
        try:
            udp = UDPEcho(port=port)
        except OSError:
            continue
        try:
            return TCPServer(echo, port=port), udp
        except OSError:
            udp.close()
    raise AssertionError("no port free for both TCP and UDP")


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_peerKilledMidTransfer(kind: str) -> None:
    """
    kill -9 of the client, then of the server, while a user's bytes flow: the survivor
    ends the user's session, closes what it held (fds back to where they were before the
    peer ever came), and carries traffic again once the peer is back; no session sees a
    byte of another.
    """
    name = f"peer killed mid-transfer ({kind})"
    tcpTarget, udpTarget = echoes()
    target = tcpTarget.port
    with tcpTarget, udpTarget, pairOf(target) as pair:
        server = pair.startServer()
        serverAlone = steadyFds(server.proc.pid)
        client = pair.startClient()
        waitWorks(pair.entry, what="the first traffic")
        clientHeld = quietFds(client.proc.pid)

        def flow(tag: int) -> Callable[[], None]:
            """
            Start a user flow; return what checks it after the peer died.
            """
            if kind == "tcp":
                stream = Stream(pair.entry, tag)
                waitFor(lambda: stream.received > 1 << 20, 10, "bytes flowing")

                def ended() -> None:
                    waitFor(stream.ended.is_set, 10, "the user's session to end")
                    assert not stream.foreign
                    assert stream.received <= stream.sent
                    stream.close()

                return ended
            dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dgram.settimeout(0.2)
            mine = b"%04d" % tag
            waitFor(lambda: udpWorks(pair.entry), 10, "datagrams flowing")
            for n in range(50):
                dgram.sendto(mine + b"%06d" % n, (LOOPBACK, pair.entry))
            got: list[bytes] = []
            with contextlib.suppress(OSError):
                while len(got) < 50:
                    got.append(dgram.recvfrom(65536)[0])

            def endedUDP() -> None:
                assert got and all(d.startswith(mine) for d in got), got[:3]
                dgram.close()

            return endedUDP

        # 1. the client dies: the server drops its sessions and pool.
        check = flow(1)
        died = time.monotonic()
        killed(client)
        check()
        settle(
            server.proc.pid,
            lambda n: n <= serverAlone,
            15,
            f"the server to let go (from {serverAlone} fds)",
            lambda: server.stdout[-3000:],
        )
        record(name, serverCleanupAfterClientKill=round(time.monotonic() - died, 2))
        assert server.proc.poll() is None
        restarted = time.monotonic()
        pair.startClient()
        waitWorks(pair.entry, what="traffic with the new client")
        check = flow(2)
        record(name, trafficBackAfterClientRestart=round(time.monotonic() - restarted, 2))

        # 2. the server dies: the client drops its sessions and pool, and retries.
        assert pair.client is not None
        clientPid = pair.client.proc.pid
        died = time.monotonic()
        killed(server)
        check()
        settle(clientPid, lambda n: n < clientHeld, 15, "the client to let go")
        record(name, clientCleanupAfterServerKill=round(time.monotonic() - died, 2))
        assert pair.client.proc.poll() is None
        restarted = time.monotonic()
        pair.startServer()
        waitWorks(pair.entry, what="traffic with the new server")
        record(name, trafficBackAfterServerRestart=round(time.monotonic() - restarted, 2))
        assert works(pair.entry, 1 << 20)


def test_serverRestartedWhileClientHoldsConnections() -> None:
    """
    The server stops (SIGTERM) and starts again while users hold sessions: the held ones
    end, the client reconnects by itself, new sessions carry traffic byte-exact.
    """
    with TCPServer(echo) as target, pairOf(target.port) as pair:
        server = pair.startServer()
        pair.startClient()
        waitWorks(pair.entry)
        held = [Stream(pair.entry, n) for n in range(5)]
        waitFor(lambda: all(s.received > 0 for s in held), 10, "the held sessions")
        server.stop()
        for stream in held:
            waitFor(stream.ended.is_set, 10, "a held session to end")
            assert not stream.foreign
            stream.close()
        restarted = time.monotonic()
        pair.startServer()
        waitWorks(pair.entry, what="traffic after the restart")
        record(
            "server restarted",
            heldSessions=5,
            trafficBack=round(time.monotonic() - restarted, 2),
        )
        for size in (1, 65536, 4 << 20):
            payload = os.urandom(size)
            assert roundTrip(pair.entry, payload, 15) == payload


def test_targetDownAndBack() -> None:
    """
    The target stops listening: users are closed without a byte, the tunnel stays up;
    when the target listens again, traffic flows on the first try.
    """
    target = TCPServer(echo)
    port = target.port
    with pairOf(port) as pair:
        server = pair.startServer()
        client = pair.startClient()
        waitWorks(pair.entry)
        target.close()
        down = time.monotonic()
        for _ in range(5):
            assert roundTrip(pair.entry, b"hello") == b""
        record("target down", refusedUsers=5, refusedWithin=round(time.monotonic() - down, 2))
        assert server.proc.poll() is None and client.proc.poll() is None
        target = TCPServer(echo, port=port)
        back = time.monotonic()
        payload = os.urandom(1 << 20)
        assert roundTrip(pair.entry, payload, 10) == payload
        record("target down", trafficBack=round(time.monotonic() - back, 2))
    target.close()


@pytest.mark.parametrize("frozen", ["client", "server"])
def test_halfOpenPeerIsDetected(frozen: str) -> None:
    """
    SIGSTOP one peer (its sockets stay open, no FIN): the other's control read timeout
    (3 x NP_REPORT_INTERVAL) ends the session (a server also closes its pool: fds back to
    the no-client level); after SIGCONT the frozen peer notices and the tunnel carries
    traffic again.
    """
    with TCPServer(echo) as target, pairOf(target.port) as pair:
        server = pair.startServer()
        serverAlone = steadyFds(server.proc.pid)
        client = pair.startClient()
        waitWorks(pair.entry)
        victim, watcher = (client, server) if frozen == "client" else (server, client)
        role = "Server" if frozen == "client" else "Client"
        line = f"{role} error: control connection timed out after 3s"
        mark = len(watcher.stdout)
        stopped = time.monotonic()
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            waitFor(lambda: line in watcher.stdout[mark:], 15, f"{line!r}:\n{watcher.stdout}")
            detected = time.monotonic() - stopped
            if frozen == "client":
                # A pool connection the client opened just before it froze still owes its
                # proof; it goes with the session (test_unprovenPoolConnectionClosesWithTheSession).
                settle(
                    server.proc.pid,
                    lambda n: n <= serverAlone,
                    5,
                    f"the server to close its pool (from {serverAlone} fds)",
                    lambda: server.stdout[-3000:],
                )
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        waitWorks(pair.entry, what="traffic after SIGCONT")
        record(
            f"half-open peer ({frozen} frozen)",
            detectedAfter=round(detected, 2),
            trafficBackAfterSIGCONT=round(time.monotonic() - resumed, 2),
        )
        assert detected >= 1.5, "a stopped peer is given 3 report intervals of silence"


def test_slowReaderKeepsMemoryBounded() -> None:
    """
    64 MiB from a fast target to a user that reads slowly through a single-end forwarder:
    the forwarder's RSS stays within a few MiB of where it was, the bytes arrive intact.
    """
    size = 64 << 20
    block = os.urandom(1 << 20)
    expected = hashlib.sha256(block * 64).hexdigest()

    def flood(conn: socket.socket) -> None:
        for _ in range(size // len(block)):
            conn.sendall(block)

    with TCPServer(flood) as target:
        port = freePort(udp=False)
        forwarder = NodePass(f"client://{LOOPBACK}:{port}/{LOOPBACK}:{target.port}?mode=1&log=warn")
        try:
            waitFor(lambda: canConnect(port), 15, "the forwarder")
            before = rssKiB(forwarder.proc.pid)
            peak = before
            digest = hashlib.sha256()
            got = 0
            started = time.monotonic()
            with socket.create_connection((LOOPBACK, port), timeout=10) as user:
                user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                while got < size:
                    data = user.recv(32 * 1024)
                    if not data:
                        break
                    digest.update(data)
                    got += len(data)
                    if got % (1 << 20) < len(data):
                        peak = max(peak, rssKiB(forwarder.proc.pid))
                    time.sleep(0.0015)  # the slow reader: at most about 20 MiB/s
            elapsed = time.monotonic() - started
            assert got == size and digest.hexdigest() == expected
            growth = (peak - before) / 1024
            record(
                "slow reader",
                bytes=size,
                seconds=round(elapsed, 1),
                rssBeforeMiB=round(before / 1024, 1),
                rssGrowthMiB=round(growth, 1),
            )
            assert growth < 8, f"the forwarder grew by {growth:.1f} MiB"
        finally:
            forwarder.stop()


def test_thousandConnectionsLeaveNoFds() -> None:
    """
    1,000 connections opened, used and closed through a pair: both ends are back to their
    fd count (the same pool size) afterwards.
    """
    with TCPServer(echo) as target, pairOf(target.port, pool=8) as pair:
        server = pair.startServer()
        client = pair.startClient()
        waitWorks(pair.entry)
        # The refill round after the first user settles the pool.
        baseServer, baseClient = steadyFds(server.proc.pid), steadyFds(client.proc.pid)
        failures: list[str] = []
        counter = iter(range(1000))
        lock = threading.Lock()

        def user() -> None:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                payload = b"%04d" % n * 16
                try:
                    if roundTrip(pair.entry, payload, 10) != payload:
                        failures.append(f"{n}: wrong bytes")
                except OSError as e:
                    failures.append(f"{n}: {e}")

        started = time.monotonic()
        users = [threading.Thread(target=user) for _ in range(8)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(60)
        took = time.monotonic() - started
        assert not failures, failures[:5]
        serverBack = settle(server.proc.pid, lambda n: n <= baseServer, 15, "server fds")
        clientBack = settle(client.proc.pid, lambda n: n <= baseClient, 15, "client fds")
        record(
            "1,000 connections",
            seconds=round(took, 1),
            serverFds=baseServer,
            clientFds=baseClient,
            fdsBackWithin=round(max(serverBack, clientBack), 2),
        )


# -- parked pool connections ------------------------------------------------------------


def handshake(
    port: int, key: str, source: str = LOOPBACK, **headers: str
) -> http.client.HTTPResponse:
    """
    One tunnel handshake, as a Go client sends it (no extension headers unless given).
    """
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10, source_address=(source, 0))
    connection.request("GET", "/", headers={"Authorization": f"Bearer {token(key)}", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


class GoLikeClient:
    """
    What a Go client does on a tls=0 tunnel, by hand: the handshake without our extension
    headers, then the control connection (ID 00000000), then as many pool connections as
    asked, each reading its 4-byte ID.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        response = handshake(port, KEY)
        assert response.status == 200, response.status
        self.control = self.connect()
        assert self.control[1] == "00000000"
        self.pool: list[socket.socket] = []

    def connect(self) -> tuple[socket.socket, str]:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=10)
        ident = b""
        while len(ident) < 4:
            chunk = sock.recv(4 - len(ident))
            assert chunk, "closed before the ID"
            ident += chunk
        return sock, ident.hex()

    def open(self, count: int) -> None:
        for _ in range(count):
            self.pool.append(self.connect()[0])

    def close(self) -> None:
        for sock in [self.control[0], *self.pool]:
            sock.close()


def push(sock: socket.socket, total: int, deadline: float) -> tuple[int, str]:
    """
    Push up to C{total} bytes into C{sock} until the peer closes it or C{deadline} passes;
    return how many bytes the kernel took and how it ended.
    """
    chunk = b"\xa5" * (1 << 20)
    sent = 0
    sock.settimeout(0.2)
    while sent < total and time.monotonic() < deadline:
        try:
            sent += sock.send(chunk[: min(len(chunk), total - sent)])
        except TimeoutError:
            continue
        except OSError as e:
            return sent, type(e).__name__
    return sent, "deadline" if sent < total else "all sent"


def closedByPeer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


@pytest.mark.parametrize("peer", ["ours", "go"])
def test_pushIntoParkedPoolConnection(peer: str) -> None:
    """
    256 MiB pushed from the client's address into the server's tunnel port. Paired with our
    client (pool authentication), the rogue gets the ID and a nonce and is closed when its
    "proof" arrives; paired with a Go-like client (no authentication), the connection is
    parked, stops being read at 256 KiB and is closed when nothing takes it. Either way the
    server's RSS stays within a few MiB.
    """
    name = f"256 MiB into a parked pool connection ({peer} client)"
    with (
        TCPServer(echo) as target,
        pairOf(target.port, env={"NP_POOL_GET_TIMEOUT": "1s", "NP_REPORT_INTERVAL": "5s"}) as pair,
    ):
        server = pair.startServer()
        goLike: GoLikeClient | None = None
        if peer == "ours":
            pair.startClient()
            waitWorks(pair.entry)
        else:
            goLike = GoLikeClient(pair.tunnel)
            waitFor(
                lambda: "Pool connections are not authenticated" in server.stdout, 10, "a Go pair"
            )
        try:
            before = rssKiB(server.proc.pid)
            rogue = socket.create_connection((LOOPBACK, pair.tunnel), timeout=10)
            header = b""
            want = 20 if peer == "ours" else 4
            while len(header) < want:
                chunk = rogue.recv(want - len(header))
                assert chunk, "closed before the ID"
                header += chunk
            started = time.monotonic()
            sent, how = push(rogue, 256 << 20, started + 20)
            closed = closedByPeer(rogue, 10)
            took = time.monotonic() - started
            rogue.close()
            after = rssKiB(server.proc.pid)
            growth = (after - before) / 1024
            record(
                name,
                bytesTheKernelTook=sent,
                ended=how,
                closedWithin=round(took, 2),
                rssGrowthMiB=round(growth, 1),
            )
            assert closed and how != "all sent", (sent, how)
            assert sent < 64 << 20, sent
            assert growth < 6, f"the server grew by {growth:.1f} MiB"
            assert server.proc.poll() is None
            if peer == "ours":
                payload = os.urandom(1 << 20)
                assert roundTrip(pair.entry, payload, 10) == payload
        finally:
            if goLike is not None:
                goLike.close()


def test_poolCountTrueAfterPeerCloses() -> None:
    """
    A Go-like client parks 100 pool connections and closes them all at once: within 1 s the
    server holds none of them (no CLOSE_WAIT, fds back), so its pool count is true.
    """
    with (
        TCPServer(echo) as target,
        pairOf(target.port, pool=200, env={"NP_REPORT_INTERVAL": "5s"}) as pair,
    ):
        server = pair.startServer()
        goLike = GoLikeClient(pair.tunnel)
        try:
            waitFor(
                lambda: "Pool connections are not authenticated" in server.stdout, 10, "a Go pair"
            )
            base = quietFds(server.proc.pid)
            goLike.open(100)
            waitFor(lambda: fds(server.proc.pid) >= base + 100, 10, "100 parked connections")
            for sock in goLike.pool:
                sock.close()
            goLike.pool = []
            took = settle(server.proc.pid, lambda n: n <= base, 5, "the pool to shrink")
            assert tcpStates(pair.tunnel).get("08", 0) == 0, "CLOSE_WAIT on the tunnel port"
            record("pool count after a peer's close", parked=100, trueWithin=round(took, 2))
            assert took < 1.0, took
            assert server.proc.poll() is None
        finally:
            goLike.close()


# -- bad tunnel keys --------------------------------------------------------------------


def test_badKeysAreThrottled() -> None:  # the tunnel port
    """
    12 handshakes with a wrong key from 127.0.0.1: the first 10 get 401 (some held back),
    the last ones 429 with Retry-After; a right key from 127.0.0.2 is answered at once; the
    server's log has a few lines, not one per attempt.
    """
    with TCPServer(echo) as target, pairOf(target.port) as pair:
        server = pair.startServer()
        started = time.monotonic()
        answers: list[int] = []

        def wrong() -> None:
            answers.append(handshake(pair.tunnel, "not-the-key").status)

        first = [threading.Thread(target=wrong) for _ in range(10)]
        for thread in first:
            thread.start()
        for thread in first:
            thread.join(15)
        assert sorted(answers) == [401] * 10, answers
        later = [handshake(pair.tunnel, "not-the-key") for _ in range(2)]
        took = time.monotonic() - started
        assert [r.status for r in later] == [429, 429]
        retry = [int(r.getheader("Retry-After") or 0) for r in later]
        assert all(50 <= seconds <= 61 for seconds in retry), retry
        right = time.monotonic()
        ok = handshake(pair.tunnel, KEY, source="127.0.0.2")
        rightTook = time.monotonic() - right
        assert ok.status == 200
        assert rightTook < 1.0, rightTook
        waitFor(lambda: "refused for" in server.stdout, 5, "the block line")
        lines = [
            line
            for line in server.stdout.splitlines()
            if "127.0.0.1" in line and ("handshake rejected" in line or "bad tunnel keys" in line)
        ]
        record(
            "bad tunnel keys",
            attempts=12,
            answers=answers + [r.status for r in later],
            retryAfter=retry[-1],
            seconds=round(took, 2),
            logLines=len(lines),
            rightKeyFromOtherAddress=round(rightTook, 3),
        )
        assert 1 <= len(lines) <= 3, lines
        assert "not-the-key" not in server.stdout and token("not-the-key") not in server.stdout


# -- the master ------------------------------------------------------------------------


def health(master: Master) -> tuple[int, Any]:
    connection = master.connection()
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def forwarderURL() -> str:
    return f"client://{LOOPBACK}:{freePort(udp=False)}/{LOOPBACK}:9?mode=1&noudp=1"


def storedIds(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return {row[0] for row in db.execute("SELECT id FROM instances")}


def test_masterKilledDuringWriteBurst(tmp_path: Path, masters: list[Master]) -> None:
    """
    200 API writes (instance creations) from 4 threads; kill -9 of the master half way:
    after a restart on the same state, every write that got a 2xx is there.
    """
    master = startMaster(masters, tmp_path, env={"NP_INSTANCE_HOSTS": "1"}, twistd=False)
    urls = [forwarderURL() for _ in range(200)]
    acked: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    work = iter(urls)

    def writer() -> None:
        while True:
            with lock:
                url = next(work, None)
            if url is None:
                return
            try:
                code, body, _ = master.call("POST", "/instances", {"url": url})
            except (OSError, http.client.HTTPException) as e:
                failed.append(type(e).__name__)
                continue
            if 200 <= code < 300:
                acked.append(body["id"])
            else:
                failed.append(str(code))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    waitFor(lambda: len(acked) >= 80, 60, "80 acknowledged writes")
    master.kill()
    killedAt = len(acked)
    for thread in threads:
        thread.join(30)
    again = startMaster(masters, tmp_path, master.port, twistd=False)
    again.key = master.key
    present = {i["id"] for i in again.ok("GET", "/instances")}
    missing = [id for id in acked if id not in present]
    record(
        "master kill -9 during 200 writes",
        ackedBeforeKill=killedAt,
        acked=len(acked),
        failedAfterKill=len(failed),
        presentAfterRestart=len(present) - 1,
        missing=len(missing),
    )
    assert not missing, missing
    assert len(acked) + len(failed) == 200


def test_stateDirectoryUnwritable(tmp_path: Path, masters: list[Master]) -> None:
    """
    The state directory and its files lose their write permission under a running master
    (run without CAP_DAC_OVERRIDE, so root obeys the mode bits): /health says 503 with the
    store check failing, the process stays up, every write is either acknowledged and kept
    (SQLite still holds its files open) or refused with a clear 503; once the permission is
    back, /health is 200 and the data is whole, also after a restart.
    """
    state = tmp_path / "state"
    state.mkdir()
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not available: root would write the directory anyway")
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr!r}")
    env = {"NP_STATE_DIR": str(state), "NP_INSTANCE_HOSTS": "1", "NP_RELOAD_INTERVAL": "1s"}
    master = Master(tmp_path, freePort(udp=False), env=env, twistd=False, prefix=prefix)
    masters.append(master)
    master.waitReady()
    before = master.ok("POST", "/instances", {"url": forwarderURL()}, 201)["id"]
    assert health(master)[0] == 200
    files = [state, *state.iterdir()]
    modes = {path: path.stat().st_mode & 0o777 for path in files}
    for path in files:
        path.chmod(0o500 if path.is_dir() else 0o400)
    try:
        broken = time.monotonic()
        code, body = health(master)
        assert code == 503, body
        assert body["checks"]["store"] == {"status": "fail", "writable": False}
        answers: list[tuple[int, Any]] = []
        kept: list[str] = []
        for _ in range(3):
            code, answer, _ = master.call("POST", "/instances", {"url": forwarderURL()})
            answers.append((code, answer))
            if code == 201:
                kept.append(answer["id"])
            else:
                assert code == 503 and "the state cannot be saved" in answer["error"], answer
        assert master.proc.poll() is None
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    waitFor(lambda: health(master)[0] == 200, 10, "/health back to 200")
    record(
        "state directory unwritable",
        healthDegradedWithin=round(time.monotonic() - broken, 2),
        writes=[code for code, _ in answers],
    )
    present = {i["id"] for i in master.ok("GET", "/instances")}
    assert {before, *kept} <= present
    key = master.key
    master.terminate()
    again = startMaster(masters, tmp_path, master.port, env=env, twistd=False)
    again.key = key
    assert {before, *kept} <= {i["id"] for i in again.ok("GET", "/instances")}


def test_diskFull(tmp_path: Path, masters: list[Master]) -> None:
    """
    The state on a 2 MiB tmpfs (a user and mount namespace of its own) filled to the last
    byte: writes are refused with a clear 503, /health is 503, the process stays up; once
    the space is back, writes work and everything acknowledged before is there.
    """
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available: no private tmpfs for the state")
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces are not available: {probe.stderr!r}")
    state = tmp_path / "state"
    state.mkdir()
    prefix = [
        "unshare",
        "-Urm",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=2m tmpfs {state} && exec "$@"',
        "sh",
    ]
    env = {"NP_STATE_DIR": str(state), "NP_INSTANCE_HOSTS": "1"}
    master = Master(tmp_path, freePort(udp=False), env=env, twistd=False, prefix=prefix)
    masters.append(master)
    master.waitReady()
    ids = [master.ok("POST", "/instances", {"url": forwarderURL()}, 201)["id"] for _ in range(3)]
    inside = Path(f"/proc/{master.proc.pid}/root") / str(state).lstrip("/")
    assert (inside / "nodepass.db").exists()
    filler = inside / "filler"
    fill = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fill, b"\0" * size):
                    pass
    finally:
        os.close(fill)
    full = time.monotonic()
    answers = []
    for _ in range(5):
        code, body, _ = master.call(
            "PATCH",
            f"/instances/{ids[0]}",
            {"meta": {"tags": {f"pad{n}": "x" * 250 for n in range(16)}}},
        )
        answers.append(code)
        if code == 503:
            break
    assert answers[-1] == 503, answers
    assert "the state cannot be saved" in body["error"] and "full" in body["error"], body
    code, checks = health(master)
    assert code == 503 and checks["checks"]["store"]["status"] == "fail", checks
    assert master.proc.poll() is None
    filler.unlink()
    freed = time.monotonic()
    waitFor(lambda: health(master)[0] == 200, 10, "/health back to 200")
    created = master.ok("POST", "/instances", {"url": forwarderURL()}, 201)["id"]
    record(
        "disk full",
        refusedWritesAfter=answers,
        writesBackWithin=round(time.monotonic() - freed, 2),
        degradedFor=round(time.monotonic() - full, 2),
    )
    present = {i["id"] for i in master.ok("GET", "/instances")}
    assert {*ids, created} <= present
    # A copy of the database and its WAL read here (SQLite would resolve /proc/PID/root
    # to this namespace's path), once nothing writes.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("nodepass.db", "nodepass.db-wal"):
        if (inside / name).exists():
            shutil.copyfile(inside / name, copy / name)
    assert {*ids, created} <= storedIds(copy / "nodepass.db")


def test_corruptDatabase(tmp_path: Path, masters: list[Master]) -> None:
    """
    The middle of nodepass.db overwritten while the master is stopped: the next master
    either restores the backup (and says so) with every instance there, or refuses to start
    with a line naming the file; it never starts with less than it had, silently.
    """
    env = {"NP_INSTANCE_HOSTS": "1", "NP_RELOAD_INTERVAL": "1s"}
    master = startMaster(masters, tmp_path, env=env, twistd=False)
    ids = {
        master.ok(
            "POST",
            "/instances",
            {"url": forwarderURL(), "alias": f"corruption-{n}"},
            201,
        )["id"]
        for n in range(30)
    }
    for id in ids:
        master.ok(
            "PATCH", f"/instances/{id}", {"meta": {"tags": {f"pad{n}": id * 30 for n in range(8)}}}
        )
    backup = tmp_path / "nodepass.db.backup"
    waitFor(lambda: backup.exists() and ids <= storedIds(backup), 15, "a backup with them all")
    key = master.key
    master.terminate()
    database = tmp_path / "nodepass.db"
    size = database.stat().st_size
    with open(database, "r+b") as damaged:
        damaged.seek(size // 2 - 4096)
        damaged.write(os.urandom(8192))
    started = time.monotonic()
    again = Master(tmp_path, master.port, env=env, twistd=False)
    masters.append(again)

    def decided() -> bool:
        return again.proc.poll() is not None or canConnect(again.port)

    waitFor(decided, 30, "the master to start or refuse")
    if again.proc.poll() is not None:
        assert again.proc.returncode == 1
        assert "nodepass.db" in again.output and KEY_LINE not in again.output, again.output
        record(
            "corrupt database",
            outcome="refused to start",
            seconds=round(time.monotonic() - started, 2),
        )
        return
    again.waitReady()
    again.key = key
    present = {i["id"] for i in again.ok("GET", "/instances")}
    restored = "is corrupt" in again.output
    record(
        "corrupt database",
        databaseBytes=size,
        outcome="backup restored" if restored else "started (the damage was not detected)",
        upWithin=round(time.monotonic() - started, 2),
        instancesBack=len(present & ids),
    )
    assert ids <= present, (len(ids - present), again.output)
    if restored:
        assert list(tmp_path.glob("nodepass.db.corrupt-*")), "the damaged file is kept"


def test_badAPIKeysAreThrottled(tmp_path: Path, masters: list[Master]) -> None:
    """
    12 requests with a wrong X-API-Key from 127.0.0.1: 401s (some held back), then 429 with
    Retry-After; the right key from 127.0.0.2 is served at once; the key never in the log.
    """
    master = startMaster(masters, tmp_path, twistd=False)

    def get(key: str, source: str = LOOPBACK) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(
            LOOPBACK, master.port, timeout=15, source_address=(source, 0)
        )
        connection.request("GET", "/api/v1/instances", headers={"X-API-Key": key})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    wrong = "0" * 32
    started = time.monotonic()
    answers: list[int] = []
    first = [threading.Thread(target=lambda: answers.append(get(wrong).status)) for _ in range(10)]
    for thread in first:
        thread.start()
    for thread in first:
        thread.join(20)
    later = [get(wrong) for _ in range(2)]
    took = time.monotonic() - started
    assert sorted(answers) == [401] * 10, answers
    assert [r.status for r in later] == [429, 429]
    retry = int(later[-1].getheader("Retry-After") or 0)
    assert 1 <= retry <= 61, retry
    right = time.monotonic()
    assert get(master.key, source="127.0.0.2").status == 200
    rightTook = time.monotonic() - right
    assert rightTook < 1.0
    lines = [line for line in master.output.splitlines() if "127.0.0.1" in line and "key" in line]
    record(
        "bad API keys",
        attempts=12,
        answers=answers + [r.status for r in later],
        retryAfter=retry,
        seconds=round(took, 2),
        logLines=len(lines),
        rightKeyFromOtherAddress=round(rightTook, 3),
    )
    assert len(lines) <= 3, lines
    assert wrong not in master.output


def test_unprovenPoolConnectionClosesWithTheSession() -> None:
    """
    A connection from the client's address that got its ID and nonce and never proves the
    key is closed when the session ends (here: the client killed), not 10 s later.
    """
    with TCPServer(echo) as target, pairOf(target.port) as pair:
        server = pair.startServer()
        serverAlone = steadyFds(server.proc.pid)
        client = pair.startClient()
        waitWorks(pair.entry)
        rogue = socket.create_connection((LOOPBACK, pair.tunnel), timeout=10)
        try:
            header = b""
            while len(header) < 20:
                chunk = rogue.recv(20 - len(header))
                assert chunk, "closed before the ID and nonce"
                header += chunk
            killed(client)
            waitFor(lambda: "Server restart" in server.stdout, 10, "the session to end")
            ended = time.monotonic()
            closed = closedByPeer(rogue, 3)
            record(
                "unproven pool connection at the session's end",
                closedWithinSeconds=round(time.monotonic() - ended, 2) if closed else None,
                serverFds=fds(server.proc.pid),
                serverAlone=serverAlone,
            )
            assert closed, "the unproven connection outlived its session by 3 s"
        finally:
            rogue.close()
