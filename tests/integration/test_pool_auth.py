"""
Pool authentication between our own peers, on 127.0.0.1: connections from the client's
address that cannot prove the key are refused and never carry a user's bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import LOOPBACK, NodePass, TCPServer, canConnect, echo, freePort, waitFor


@pytest.fixture
def pair() -> Iterator[tuple[int, NodePass]]:
    with TCPServer(echo) as target:
        tunnel, entry = freePort(udp=False), freePort(udp=False)
        server = NodePass(
            f"server://k3y@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&tls=0&log=info"
        )
        client = NodePass(
            f"client://k3y@{LOOPBACK}:{tunnel}/{LOOPBACK}:{target.port}?mode=2&log=info"
        )
        try:
            waitFor(lambda: canConnect(entry), 15, "the entry port")
            yield entry, server
        finally:
            for proc in (client, server):
                proc.proc.kill()
                proc.proc.wait(10)


def roundTrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=5) as user:
        user.sendall(payload)
        user.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := user.recv(65536):
            got += chunk
    return got


def test_rogueConnectionsNeverCarryUserBytes(pair: tuple[int, NodePass]) -> None:
    entry, server = pair
    waitFor(lambda: roundTrip(entry, b"warm") == b"warm", 15, "the tunnel to carry traffic")
    tunnel = int(server.url.split(":")[2].split("/")[0])
    rogues = []
    for _ in range(20):
        rogue = socket.create_connection((LOOPBACK, tunnel), timeout=5)
        header = b""
        while len(header) < 20:  # the ID and the nonce: then a proof is due
            chunk = rogue.recv(20 - len(header))
            assert chunk, "the server closed before sending the ID and nonce"
            header += chunk
        rogue.sendall(b"\x00" * 32)  # a proof without the key
        rogues.append(rogue)
    for n in range(60):
        payload = f"user {n} ".encode() * 100
        assert roundTrip(entry, payload) == payload
    for rogue in rogues:
        rogue.settimeout(5)
        assert rogue.recv(65536) == b""  # closed, and never given a user's bytes
        rogue.close()
    assert "Pool connections are not authenticated" not in server.stdout
