"""
Single-end forwarding end to end: ``python -m nodepass client://...`` in a
child process, real sockets on 127.0.0.1, one test per parameter effect.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from tests.support import (
    LOOPBACK,
    TCPServer,
    UDPEcho,
    canConnect,
    echo,
    freePort,
    nodepass,
    recvAll,
    waitFor,
)

pytestmark = pytest.mark.integration


def url(port: int, *targets: int, query: str = "") -> str:
    path = ",".join(f"{LOOPBACK}:{target}" for target in targets)
    tail = f"&{query}" if query else ""
    return f"client://{LOOPBACK}:{port}/{path}?mode=1&log=debug{tail}"


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def isClosedByPeer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_tcp_1mib_byte_exact_both_ways() -> None:
    payload = os.urandom(1 << 20)
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port), listen=port):
            with connect(port) as sock:
                sender = threading.Thread(
                    target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR))
                )
                sender.start()
                received = recvAll(sock)
                sender.join(10)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_forwarder_does_not_load_the_tls_libraries() -> None:
    """
    A forwarder never needs pyOpenSSL or cryptography (about 11 MiB of every instance's
    memory): the CLI imports Twisted's reactor without its built-in TLS glue.
    """
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port), listen=port) as process:
            with open(f"/proc/{process.proc.pid}/maps") as maps:
                loaded = maps.read()
            with connect(port) as sock:
                sock.sendall(b"still forwards")
                sock.shutdown(socket.SHUT_WR)
                assert recvAll(sock) == b"still forwards"
    assert "cryptography" not in loaded and "OpenSSL" not in loaded


def test_half_close_keeps_the_reply() -> None:
    """The user shuts down its write side; the target still answers after EOF."""

    def answerAfterEOF(conn: socket.socket) -> None:
        request = recvAll(conn)
        time.sleep(0)  # the reply starts only after the EOF was seen
        conn.sendall(b"got " + str(len(request)).encode())

    with TCPServer(answerAfterEOF) as target:
        port = freePort()
        with nodepass(url(port, target.port), listen=port):
            with connect(port) as sock:
                sock.sendall(b"x" * 5000)
                sock.shutdown(socket.SHUT_WR)
                assert recvAll(sock) == b"got 5000"


def test_udp_datagrams_both_ways() -> None:
    with UDPEcho(prefix=b"re:") as target:
        port = freePort()
        with nodepass(url(port, target.port), listen=port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            with sock:
                for size in (1, 100, 1400, 8000):
                    data = os.urandom(size)
                    sock.sendto(data, (LOOPBACK, port))
                    reply, source = sock.recvfrom(65536)
                    assert reply == b"re:" + data
                    assert source == (LOOPBACK, port)


def test_target_down_closes_user_and_keeps_listening() -> None:
    dead = freePort()
    port = freePort()
    with nodepass(url(port, dead), listen=port) as process:
        with connect(port) as sock:
            assert isClosedByPeer(sock)
        process.waitForOutput("dialWithRotation failed")
        assert process.proc.poll() is None
        assert canConnect(port)


def test_slot_limit_refuses_the_third_connection() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="slot=2"), listen=port) as process:
            first, second = connect(port), connect(port)
            for sock in (first, second):
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
            third = connect(port)
            assert isClosedByPeer(third)
            process.waitForOutput("TCP slot limit reached: 2/2")
            # A freed slot is reusable.
            first.close()
            third.close()

            def fourthWorks() -> bool:
                with connect(port) as sock:
                    sock.sendall(b"ok")
                    try:
                        return sock.recv(2) == b"ok"
                    except OSError:
                        return False

            waitFor(fourthWorks, 10, "a slot to be released")
            second.close()


def test_rate_limit_lower_bound() -> None:
    """rate=1 is 125000 bytes/s, with one second's worth of burst."""
    size = 512 * 1024
    done = threading.Event()
    received = []

    def sink(conn: socket.socket) -> None:
        data = recvAll(conn)
        if data:  # the health probe's empty connections do not count
            received.append(len(data))
            done.set()

    with TCPServer(sink) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="rate=1"), listen=port):
            started = time.monotonic()
            with connect(port) as sock:
                sock.sendall(b"r" * size)
                sock.shutdown(socket.SHUT_WR)
                assert done.wait(30)
            elapsed = time.monotonic() - started
    assert received == [size]
    assert elapsed >= (size - 125000) / 125000 * 0.95


@pytest.mark.parametrize(
    ("block", "opening", "name"),
    [
        ("2", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
        ("1", b"\x05\x01\x00\x00\x00\x00\x00\x00", "SOCKS5"),
        ("3", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03", "TLS"),
    ],
)
def test_block_closes_matching_protocols(block: str, opening: bytes, name: str) -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query=f"block={block}"), listen=port) as process:
            with connect(port) as sock:
                sock.sendall(opening)
                assert isClosedByPeer(sock)
            process.waitForOutput(f"blocked {name} protocol")
            # Anything else still passes, its first bytes included.
            with connect(port) as sock:
                sock.sendall(b"hello there, plain bytes")
                assert sock.recv(100).startswith(b"hello there")


def test_block_http_does_not_reach_target() -> None:
    hits: list[bytes] = []

    def record(conn: socket.socket) -> None:
        data = conn.recv(100)
        if data:
            hits.append(data)

    with TCPServer(record) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="block=2"), listen=port) as process:
            with connect(port) as sock:
                sock.sendall(b"POST /x HTTP/1.1\r\n\r\n")
                assert isClosedByPeer(sock)
            process.waitForOutput("blocked HTTP protocol")
    assert hits == []


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_reaches_target(version: int) -> None:
    headers: list[bytes] = []
    ready = threading.Event()

    def capture(conn: socket.socket) -> None:
        data = b""
        while len(data) < 200 and not data.endswith(b"payload"):
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
        if data:  # health probes connect and close without data
            headers.append(data)
            ready.set()

    with TCPServer(capture) as target:
        port = freePort()
        with nodepass(url(port, target.port, query=f"proxy={version}"), listen=port):
            with connect(port) as sock:
                sock.sendall(b"payload")
                clientPort = sock.getsockname()[1]
                assert ready.wait(10)
    data = headers[0]
    assert data.endswith(b"payload")
    if version == 1:
        expected = f"PROXY TCP4 127.0.0.1 127.0.0.1 {clientPort} {target.port}\r\n".encode()
        assert data == expected + b"payload"
    else:
        from twisted.protocols.haproxy._v2parser import V2Parser

        header = data[: -len(b"payload")]
        assert header.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
        info = V2Parser.parse(header)
        assert (info.source.host, info.source.port) == ("127.0.0.1", clientPort)
        assert (info.destination.host, info.destination.port) == ("127.0.0.1", target.port)


def _ask(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"who")
        return sock.recv(100)


def test_lbs_round_robin_spreads_and_fails_over() -> None:
    servers = [TCPServer(lambda conn, tag=tag: conn.sendall(tag)) for tag in (b"A", b"B")]
    port = freePort()
    try:
        target = url(port, servers[0].port, servers[1].port, query="lbs=0")
        with nodepass(target, listen=port):
            answers = [_ask(port) for _ in range(10)]
            assert set(answers) == {b"A", b"B"}
            servers[0].close()
            assert {_ask(port) for _ in range(6)} == {b"B"}
    finally:
        for server in servers:
            server.close()


def test_lbs_primary_backup() -> None:
    servers = [TCPServer(lambda conn, tag=tag: conn.sendall(tag)) for tag in (b"A", b"B")]
    port = freePort()
    try:
        target = url(port, servers[0].port, servers[1].port, query="lbs=2")
        with nodepass(target, listen=port):
            assert {_ask(port) for _ in range(6)} == {b"A"}
            servers[0].close()
            assert {_ask(port) for _ in range(4)} == {b"B"}
    finally:
        for server in servers:
            server.close()


def test_lbs_lowest_latency_fails_over() -> None:
    servers = [TCPServer(lambda conn, tag=tag: conn.sendall(tag)) for tag in (b"A", b"B")]
    port = freePort()
    try:
        target = url(port, servers[0].port, servers[1].port, query="lbs=1")
        with nodepass(target, listen=port):
            assert _ask(port) in (b"A", b"B")
            servers[0].close()
            assert {_ask(port) for _ in range(4)} == {b"B"}
    finally:
        for server in servers:
            server.close()


def test_dial_source_address() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="dial=127.0.0.2"), listen=port):
            with connect(port) as sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
    assert target.accepted[-1][0] == "127.0.0.2"


def test_read_idle_timeout_closes_quiet_connections() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="read=1s"), listen=port):
            with connect(port) as sock:
                # Traffic keeps it open past the timeout...
                opened = time.monotonic()
                for _ in range(4):
                    time.sleep(0.4)  # pacing the traffic, not waiting for anything
                    sock.sendall(b"k")
                    assert sock.recv(1) == b"k"
                quiet = time.monotonic()
                assert quiet - opened > 1.5
                # ...and silence closes it.
                assert isClosedByPeer(sock, timeout=10)
                assert time.monotonic() - quiet >= 0.9


def test_notcp_forwards_only_udp() -> None:
    with UDPEcho() as udpTarget, TCPServer(echo) as tcpTarget:
        assert tcpTarget.port != udpTarget.port
        port = freePort()
        with nodepass(
            f"client://{LOOPBACK}:{port}/{LOOPBACK}:{udpTarget.port}?mode=1&notcp=1"
        ) as process:
            process.waitForOutput("CHECK_POINT")
            assert not canConnect(port)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            with sock:
                sock.sendto(b"u", (LOOPBACK, port))
                assert sock.recvfrom(10)[0] == b"u"


def test_noudp_forwards_only_tcp() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="noudp=1"), listen=port):
            # The UDP port is not bound by us: we can bind it ourselves.
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with probe:
                probe.bind((LOOPBACK, port))
            with connect(port) as sock:
                sock.sendall(b"t")
                assert sock.recv(1) == b"t"


class _DNSServer:
    """
    A minimal authoritative DNS server on 127.0.0.1 answering every A query
    with 127.0.0.1 and counting queries.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.names: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, source = self.sock.recvfrom(512)
            except OSError:
                return
            ident = query[:2]
            end = 12
            labels = []
            while query[end]:
                labels.append(query[end + 1 : end + 1 + query[end]].decode())
                end += 1 + query[end]
            question = query[12 : end + 5]
            self.names.append(".".join(labels))
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(LOOPBACK)
            header = ident + struct.pack("!HHHHH", 0x8580, 1, 1, 0, 0)
            self.sock.sendto(header + question + answer, source)

    def close(self) -> None:
        self.sock.close()


def test_dns_servers_resolve_target_names() -> None:
    dns = _DNSServer()
    try:
        with TCPServer(echo) as target:
            port = freePort()
            address = f"client://{LOOPBACK}:{port}/backend.nodepass.test:{target.port}"
            with nodepass(f"{address}?mode=1&log=debug&dns={LOOPBACK}:{dns.port}", listen=port):
                for _ in range(3):
                    with connect(port) as sock:
                        sock.sendall(b"d")
                        assert sock.recv(1) == b"d"
    finally:
        dns.close()
    assert "backend.nodepass.test" in dns.names
    # Answers are cached: three connections (and the health probes) need one query.
    assert dns.names.count("backend.nodepass.test") == 1


def test_unknown_parameter_is_ignored_with_a_warning() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        with nodepass(url(port, target.port, query="colour=blue"), listen=port) as process:
            process.waitForOutput("Ignoring unknown parameter: colour")
            with connect(port) as sock:
                sock.sendall(b"z")
                assert sock.recv(1) == b"z"


def test_started_line_masks_the_key() -> None:
    with TCPServer(echo) as target:
        port = freePort()
        secret = "hunter2secret"
        with nodepass(
            f"client://{secret}@{LOOPBACK}:{port}/{LOOPBACK}:{target.port}?mode=1", listen=port
        ) as process:
            process.waitForOutput("Client started")
            process.waitForOutput("CHECK_POINT|MODE=1|")
        assert secret not in process.stdout + process.stderr
