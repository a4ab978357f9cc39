"""
Dual-end tunnels end to end: our server and our client as separate
processes on 127.0.0.1, for both flows and every TLS mode.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support import (
    LOOPBACK,
    NodePass,
    TCPServer,
    UDPEcho,
    certificates,
    echo,
    freePort,
    recvAll,
    waitFor,
)

pytestmark = pytest.mark.integration

KEY = "pairsecret"


def transfer(port: int, payload: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.settimeout(30)
        sender = threading.Thread(
            target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True
        )
        sender.start()
        received = recvAll(sock)
        sender.join(30)
    return received


def concurrently(
    port: int, count: int, exchange: Callable[[socket.socket, int], bool]
) -> list[bool]:
    """
    Open C{count} connections to C{port} at once, each running
    C{exchange(sock, index)}; the list of their outcomes (an OSError counts
    as a failure).
    """
    results: list[bool] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
                ok = exchange(sock, index)
        except OSError:
            ok = False
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def echoed(size: int) -> Callable[[socket.socket, int], bool]:
    """An exchange: send C{size + index} random bytes, expect them back."""

    def exchange(sock: socket.socket, index: int) -> bool:
        data = os.urandom(size + index)
        sock.sendall(data)
        return recvAll(sock, len(data)) == data

    return exchange


def udpRoundTrips(port: int) -> None:
    """Datagrams of several sizes through C{port} come back intact."""
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.settimeout(10)
    with dgram:
        for size in (1, 700, 3000, 9000):
            datagram = os.urandom(size)
            dgram.sendto(datagram, (LOOPBACK, port))
            assert dgram.recvfrom(65536)[0] == datagram


class Pair:
    def __init__(self, server: NodePass, client: NodePass, entry: int, target: int) -> None:
        self.server = server
        self.client = client
        self.entry = entry
        self.target = target

    def logs(self) -> str:
        return f"--- server\n{self.server.stdout}{self.server.stderr}\n--- client\n{self.client.stdout}{self.client.stderr}"


@contextmanager
def pair(
    flow: str,
    tls: int = 0,
    target: int | None = None,
    serverQuery: str = "",
    clientQuery: str = "",
    env: dict[str, str] | None = None,
    key: str = KEY,
    expectTLS: bool = False,
) -> Iterator[Pair]:
    """
    Flow ``-``: the server listens on the entry port and the client dials
    the target.  Flow ``+``: the client listens and the server dials.
    """
    tunnel = freePort()
    entry = freePort()
    target = target if target is not None else freePort()
    if flow == "-":
        serverURL = f"server://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&tls={tls}"
        clientURL = f"client://{key}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{target}?mode=2&min=16"
    else:
        serverURL = f"server://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{target}?mode=2&tls={tls}"
        clientURL = f"client://{key}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=2&min=16"
    serverURL += "&log=debug" + (f"&{serverQuery}" if serverQuery else "")
    clientURL += "&log=debug" + (f"&{clientQuery}" if clientQuery else "")
    with ExitStack() as stack:
        server = NodePass(serverURL, env)
        stack.callback(server.stop)
        server.waitForOutput("Pending tunnel handshake")
        client = NodePass(clientURL, env)
        stack.callback(client.stop)
        result = Pair(server, client, entry, target)
        try:
            waitFor(
                lambda: "CHECK_POINT" in server.stdout and "CHECK_POINT" in client.stdout,
                20,
                "both ends to report",
            )
            if tls or expectTLS:
                side = server if flow == "-" else client
                side.waitForOutput("TLS certificate fingerprint verified", 20)
        except AssertionError:
            raise AssertionError(result.logs()) from None
        yield result


FLOWS_AND_TLS = [("-", 0), ("+", 0), ("-", 1), ("+", 1)]


SIZE = 16 << 20


def digestAfterLength(conn: socket.socket) -> None:
    """Read an 8-byte length and that many bytes, answer their SHA-256."""
    header = b""
    while len(header) < 8:
        header += conn.recv(8 - len(header))
    remaining = struct.unpack("!Q", header)[0]
    digest = hashlib.sha256()
    while remaining:
        chunk = conn.recv(min(remaining, 1 << 16))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    conn.sendall(digest.digest())


def source(payload: bytes) -> Callable[[socket.socket], None]:
    def send(conn: socket.socket) -> None:
        if conn.recv(1) == b"!":
            conn.sendall(payload)

    return send


@pytest.mark.parametrize(("flow", "tls"), FLOWS_AND_TLS)
def test_16mib_upload_byte_exact(flow: str, tls: int) -> None:
    payload = os.urandom(SIZE)
    with TCPServer(digestAfterLength) as target, pair(flow, tls, target=target.port) as tunnel:
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.sendall(struct.pack("!Q", len(payload)) + payload)
            answer = recvAll(sock, 32)
    assert answer == hashlib.sha256(payload).digest()


@pytest.mark.parametrize(("flow", "tls"), FLOWS_AND_TLS)
def test_16mib_download_byte_exact(flow: str, tls: int) -> None:
    payload = os.urandom(SIZE)
    with TCPServer(source(payload)) as target, pair(flow, tls, target=target.port) as tunnel:
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.settimeout(60)
            sock.sendall(b"!")
            received = recvAll(sock)
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_plain_server_does_not_load_the_tls_libraries() -> None:
    """
    A server with tls=0 never needs pyOpenSSL or cryptography (about 10 MiB): not at
    start, not while a client is connected and traffic flows.
    """
    with TCPServer(echo) as target, pair("-", 0, target=target.port) as tunnel:
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=10) as sock:
            assert echoed(1000)(sock, 0)
        with open(f"/proc/{tunnel.server.proc.pid}/maps") as maps:
            loaded = maps.read()
    assert "cryptography" not in loaded and "OpenSSL" not in loaded


@pytest.mark.parametrize("flow", ["-", "+"])
def test_half_close_is_carried_end_to_end(flow: str) -> None:
    """Between our own peers over plain TCP, the user's EOF reaches the
    target as a half-close and the whole echo still comes back."""
    payload = os.urandom(SIZE)
    with TCPServer(echo) as target, pair(flow, 0, target=target.port) as tunnel:
        received = transfer(tunnel.entry, payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize(("flow", "tls"), FLOWS_AND_TLS)
def test_100_concurrent_connections(flow: str, tls: int) -> None:
    with TCPServer(echo) as target, pair(flow, tls, target=target.port) as tunnel:
        results = concurrently(tunnel.entry, 100, echoed(2000))
        assert len(results) == 100
        assert all(results), f"{results.count(False)} failed\n{tunnel.logs()[-3000:]}"


@pytest.mark.parametrize(("flow", "tls"), [("-", 0), ("+", 0), ("-", 1)])
def test_1000_udp_datagrams_keep_their_boundaries(flow: str, tls: int) -> None:
    port = freePort()
    with UDPEcho(port=port) as target, pair(flow, tls, target=target.port) as tunnel:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(10)
        with sock:
            sizes = [1 + (i * 37) % 4000 for i in range(1000)]
            sent = []
            received = []
            # Windows of 10 in flight keep the kernel's UDP buffers (ours,
            # the echo server's) from overflowing: UDP itself may drop.
            for start in range(0, len(sizes), 10):
                window = [os.urandom(size) for size in sizes[start : start + 10]]
                for datagram in window:
                    sock.sendto(datagram, (LOOPBACK, tunnel.entry))
                    sent.append(datagram)
                for _ in window:
                    received.append(sock.recvfrom(65536)[0])
        assert sorted(received) == sorted(sent)


def test_wrong_key_is_refused() -> None:
    tunnel = freePort()
    entry = freePort()
    server = NodePass(f"server://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&log=debug")
    try:
        server.waitForOutput("Pending tunnel handshake")
        client = NodePass(
            f"client://wrongkey@{LOOPBACK}:{tunnel}/{LOOPBACK}:9?mode=2&log=debug",
            {"NP_SERVICE_COOLDOWN": "1s"},
        )
        try:
            client.waitForOutput("Client error: tunnelHandshake: status 401", 15)
            assert "Sending tunnel config" not in server.stdout
            assert client.proc.poll() is None  # it keeps retrying
        finally:
            client.stop()
        assert "wrongkey" not in client.stdout + server.stdout
    finally:
        server.stop()


def test_server_restart_client_reconnects() -> None:
    with TCPServer(echo) as target:
        tunnel = freePort()
        entry = freePort()
        serverURL = f"server://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&log=debug"
        env = {"NP_SERVICE_COOLDOWN": "1s"}
        server = NodePass(serverURL, env)
        client = NodePass(
            f"client://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{target.port}?mode=2&min=8&log=debug",
            env,
        )
        try:
            waitFor(lambda: "CHECK_POINT" in server.stdout, 20, "first session")
            assert transfer(entry, b"before") == b"before"
            server.proc.kill()
            server.wait(10)
            client.waitForOutput("Client error", 20)
            server = NodePass(serverURL, env)
            waitFor(lambda: "CHECK_POINT" in server.stdout, 30, "second session")
            assert transfer(entry, b"after") == b"after"
            assert "Client restart" in client.stdout
        finally:
            server.stop()
            client.stop()


@pytest.mark.parametrize("flow", ["-", "+"])
def test_tls2_with_certificate_files(flow: str, tmp_path: Path) -> None:
    ca, crt, key = certificates(tmp_path)
    payload = os.urandom(SIZE)
    with (
        TCPServer(digestAfterLength) as target,
        pair(
            flow,
            2,
            target=target.port,
            serverQuery=f"crt={crt}&key={key}",
            clientQuery="sni=localhost",
            env={"SSL_CERT_FILE": str(ca)},
        ) as tunnel,
    ):
        assert "TLS code-2: localhost with TLS 1.3" in tunnel.server.stdout
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.sendall(struct.pack("!Q", len(payload)) + payload)
            assert recvAll(sock, 32) == hashlib.sha256(payload).digest()


WS_CASES = [("-", 0), ("+", 1)]


@pytest.mark.parametrize(("flow", "tls"), WS_CASES)
def test_websocket_pool_16mib_both_ways(flow: str, tls: int) -> None:
    payload = os.urandom(SIZE)
    with (
        TCPServer(digestAfterLength) as target,
        pair(flow, tls, target=target.port, serverQuery="type=2") as tunnel,
    ):
        assert "TYPE=2" in tunnel.client.stdout
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.sendall(struct.pack("!Q", len(payload)) + payload)
            assert recvAll(sock, 32) == hashlib.sha256(payload).digest()
    with (
        TCPServer(source(payload)) as target,
        pair(flow, tls, target=target.port, serverQuery="type=2") as tunnel,
    ):
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.settimeout(60)
            sock.sendall(b"!")
            assert hashlib.sha256(recvAll(sock)).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize(("flow", "tls"), WS_CASES)
def test_websocket_pool_100_concurrent_and_udp(flow: str, tls: int) -> None:
    port = freePort()
    with (
        TCPServer(echo, port=port) as target,
        UDPEcho(port=port),
        pair(flow, tls, target=target.port, serverQuery="type=2") as tunnel,
    ):
        results = concurrently(tunnel.entry, 100, echoed(1000))
        assert results.count(True) == 100, tunnel.logs()[-3000:]
        udpRoundTrips(tunnel.entry)


@pytest.mark.parametrize(
    ("flow", "tls", "poolType"),
    [("-", 1, "3"), ("+", 0, "3"), ("-", 0, "1"), ("+", 1, "1")],
    ids=["h2-flow-tls1", "h2-flow+tls0", "quic-flow-tls0", "quic-flow+tls1"],
)
def test_tls_only_pools_16mib_concurrent_and_udp(flow: str, tls: int, poolType: str) -> None:
    """
    type=3 (HTTP/2, ALPN h2) and type=1 (QUIC on the tunnel port's UDP twin,
    ALPN np-quic) always run TLS: tls=0 is raised to a generated certificate.
    """
    payload = os.urandom(SIZE)
    port = freePort()
    with (
        TCPServer(digestAfterLength, port=port) as target,
        UDPEcho(port=port),
        pair(
            flow, tls, target=target.port, serverQuery=f"type={poolType}", expectTLS=True
        ) as tunnel,
    ):
        assert f"TYPE={poolType}" in tunnel.client.stdout and "TLS=1" in tunnel.client.stdout
        with socket.create_connection((LOOPBACK, tunnel.entry), timeout=60) as sock:
            sock.sendall(struct.pack("!Q", len(payload)) + payload)
            assert recvAll(sock, 32) == hashlib.sha256(payload).digest()

        def digested(conn: socket.socket, index: int) -> bool:
            data = os.urandom(500 + index)
            conn.sendall(struct.pack("!Q", len(data)) + data)
            return recvAll(conn, 32) == hashlib.sha256(data).digest()

        results = concurrently(tunnel.entry, 100, digested)
        assert results.count(True) == 100, tunnel.logs()[-3000:]
        udpRoundTrips(tunnel.entry)
