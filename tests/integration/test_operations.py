"""
Metrics and health of a real master on 127.0.0.1: a scrape shows the traffic that went
through an instance, and C{/health} follows the state directory's writability.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK, TCPServer, canConnect, freePort, waitFor
from tests.test_master_app import scrape
from tests.test_master_service import Master, startMaster


def get(master: Master, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, master.port, timeout=15)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def tcpRx(master: Master, id: str) -> float:
    code, body = get(master, "/metrics", {"Authorization": f"Bearer {master.key}"})
    assert code == 200, body
    samples = scrape(body.decode())
    return samples[
        ("nodepass_instance_bytes_total", (("direction", "rx"), ("id", id), ("proto", "tcp")))
    ]


def test_scrapeCountsTheBytesSent(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer
) -> None:
    master = startMaster(masters, tmp_path)
    port = freePort(udp=False)
    url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoServer.port}?mode=1"
    id = master.ok("POST", "/instances", {"url": url}, status=201)["id"]
    waitFor(lambda: master.ok("GET", f"/instances/{id}")["status"] == "running", 15, "running")
    before = tcpRx(master, id)
    payload = bytes(range(256)) * 256  # 64 KiB

    def echoed() -> bool:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=5) as user:
                user.sendall(payload)
                user.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := user.recv(65536):
                    got += chunk
            return got == payload
        except OSError:
            return False

    waitFor(echoed, 15, "the instance to carry traffic")
    # The figures arrive with the instance's next CHECK_POINT (every second here).
    waitFor(lambda: tcpRx(master, id) - before >= len(payload), 15, "the scrape to show it")


def _immutable(path: Path, on: bool) -> bool:
    """
    Set or clear the immutable flag of a directory (C{chattr}): nothing can be created in it,
    not even by root, while files already there can still be written.
    """
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(
        ["chattr", "+i" if on else "-i", str(path)], capture_output=True, timeout=10
    )
    return done.returncode == 0


def test_healthFollowsAReadOnlyStateDirectory(tmp_path: Path, masters: list[Master]) -> None:
    """
    The state directory stops taking new files (immutable, as a read-only file system
    would): C{/health} turns 503 without naming the path, and 200 again once it is writable.
    """
    state = tmp_path / "state"
    state.mkdir()
    master = startMaster(masters, tmp_path, env={"NP_STATE_DIR": str(state)})

    def health() -> int:
        return get(master, "/health")[0]

    assert health() == 200
    if not _immutable(state, True):
        pytest.skip("chattr +i is not available on this file system")
    try:
        waitFor(lambda: health() == 503, 10, "/health to turn 503")
        code, body = get(master, "/api/v1/health")
        assert code == 503 and b'"writable":false' in body, body
        assert str(state).encode() not in body
    finally:
        _immutable(state, False)
    waitFor(lambda: health() == 200, 10, "/health to come back")


@pytest.mark.parametrize("isolate", ["", "1"], ids=["hosted", "isolated"])
def test_liveConnectionsListedAndClosed(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer, isolate: str
) -> None:
    """
    A user connection through an instance (in an instance host, or in a process of its own
    with NP_ISOLATE=1) is listed with its addresses and bytes; DELETE closes it, and the user
    sees the end of the stream.
    """
    master = startMaster(masters, tmp_path, env={"NP_ISOLATE": isolate} if isolate else None)
    port = freePort(udp=False)
    url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoServer.port}?mode=1"
    id = master.ok("POST", "/instances", {"url": url}, status=201)["id"]
    waitFor(lambda: master.ok("GET", f"/instances/{id}")["status"] == "running", 15, "running")
    waitFor(lambda: canConnect(port), 15, "the instance to listen")
    user = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        user.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += user.recv(65536)

        def listed() -> list[Any]:
            found: list[Any] = master.ok("GET", f"/instances/{id}/connections")
            return [c for c in found if c["proto"] == "tcp" and c["rx"] >= 1000]

        waitFor(lambda: bool(listed()), 15, "the connection to be listed")
        (entry,) = listed()
        assert entry["remote"] == f"{LOOPBACK}:{user.getsockname()[1]}"
        assert entry["target"].endswith(f":{echoServer.port}")
        code, _, _ = master.call("DELETE", f"/instances/{id}/connections/{entry['id']}")
        assert code == 204
        user.settimeout(10)
        assert user.recv(65536) == b""
        gone = [c["id"] for c in master.ok("GET", f"/instances/{id}/connections")]
        assert entry["id"] not in gone
        code, body, _ = master.call("DELETE", f"/instances/{id}/connections/{entry['id']}")
        assert (code, body) == (404, {"error": "Connection not found"})
    finally:
        user.close()


def test_standaloneMetrics(echoServer: TCPServer) -> None:
    """
    NP_METRICS_ADDR: a standalone forwarder serves its own /metrics, and the byte counter
    grows by what went through it.
    """
    from tests.support import NodePass

    port, metricsPort = freePort(udp=False), freePort(udp=False)
    proc = NodePass(
        f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoServer.port}?mode=1&log=none",
        env={"NP_METRICS_ADDR": f"{LOOPBACK}:{metricsPort}", "NP_REPORT_INTERVAL": "1s"},
    )
    try:
        waitFor(lambda: canConnect(metricsPort) and canConnect(port), 15, "listening")
        with socket.create_connection((LOOPBACK, port), timeout=5) as user:
            user.sendall(b"m" * 65536)
            got = 0
            while got < 65536:
                got += len(user.recv(65536))

        def rx() -> float:
            connection = http.client.HTTPConnection(LOOPBACK, metricsPort, timeout=5)
            connection.request("GET", "/metrics")
            body = connection.getresponse().read().decode()
            connection.close()
            key = ("nodepass_instance_bytes_total", (("direction", "rx"), ("proto", "tcp")))
            return scrape(body).get(key, 0)

        waitFor(lambda: rx() >= 65536, 15, "the counter to show the bytes")
    finally:
        proc.proc.kill()
        proc.proc.wait(10)
