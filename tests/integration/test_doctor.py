"""
``nodepass doctor`` against real services on 127.0.0.1: a healthy pair, a wrong key, an
HTTP server on the tunnel port, a single-end forwarder and a master.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodepass import doctor
from tests.support import LOOPBACK, NodePass, TCPServer, canConnect, echo, freePort, waitFor
from tests.test_master_service import Master, startMaster


def steps(report: doctor.Report) -> dict[str, tuple[bool, str]]:
    return {step.name: (step.ok, step.detail) for step in report.steps}


@pytest.fixture
def echoTarget() -> Iterator[TCPServer]:
    with TCPServer(echo) as server:
        yield server


@pytest.fixture
def server(echoTarget: TCPServer) -> Iterator[tuple[NodePass, int]]:
    tunnel, entry = freePort(udp=False), freePort(udp=False)
    proc = NodePass(f"server://right@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&tls=1&log=info")
    try:
        waitFor(lambda: canConnect(tunnel), 15, "the server's tunnel port")
        yield proc, tunnel
    finally:
        proc.proc.kill()
        proc.proc.wait(10)


def test_healthyTLSPair(server: tuple[NodePass, int], echoTarget: TCPServer) -> None:
    _, tunnel = server
    url = f"client://right@{LOOPBACK}:{tunnel}/{LOOPBACK}:{echoTarget.port}?mode=2"
    out = io.StringIO()
    assert doctor.main([url, "--json"], out=out) == 0, out.getvalue()
    result = json.loads(out.getvalue())
    assert result["healthy"] is True
    found = {s["step"]: s for s in result["steps"]}
    assert found["handshake"]["ok"] and "tls 1" in found["handshake"]["detail"]
    assert "TLSv1." in found["tls"]["detail"] and "sha256:" in found["tls"]["detail"]
    assert "expires" in found["tls"]["detail"]
    assert found["pool"]["ok"]
    assert found[f"target {LOOPBACK}:{echoTarget.port}"]["ok"]
    assert "right" not in out.getvalue()  # the key is never printed


def test_wrongKey(server: tuple[NodePass, int]) -> None:
    _, tunnel = server
    report = doctor.diagnose(f"client://wrong@{LOOPBACK}:{tunnel}/{LOOPBACK}:1?mode=2")
    assert not report.healthy
    assert steps(report)["handshake"] == (False, "the server refused the key (401 Unauthorized)")
    out = io.StringIO()
    assert doctor.main([f"client://wrong@{LOOPBACK}:{tunnel}/{LOOPBACK}:1?mode=2"], out=out) == 1
    assert "[FAIL] handshake" in out.getvalue() and "-> The key" in out.getvalue()


def httpService(conn: socket.socket) -> None:
    conn.recv(65536)
    body = b"hello"
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: demo-httpd/1.0\r\nContent-Length: 5\r\n\r\n" + body)


def test_anotherServiceOnThePort() -> None:
    with TCPServer(httpService) as http:
        report = doctor.diagnose(f"client://k@{LOOPBACK}:{http.port}/{LOOPBACK}:1?mode=2")
    ok, detail = steps(report)["handshake"]
    assert not ok
    assert "HTTP server answered 'HTTP/1.1 200 OK' (Server: demo-httpd/1.0)" in detail


def test_nothingListening() -> None:
    port = freePort(udp=False)
    report = doctor.diagnose(f"client://k@{LOOPBACK}:{port}/{LOOPBACK}:1?mode=2", timeout=2)
    ok, detail = steps(report)["tunnel port"]
    assert not ok and "does not accept TCP" in detail


def test_badURL() -> None:
    report = doctor.diagnose("client://k@127.0.0.1:99999/x")
    assert [s.name for s in report.steps] == ["url"]
    assert not report.healthy and "99999" in report.steps[0].detail


def test_singleEnd(echoTarget: TCPServer) -> None:
    port = freePort(udp=False)
    healthy = doctor.diagnose(f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoTarget.port}?mode=1")
    assert healthy.healthy, healthy.steps
    gone = freePort(udp=False)
    broken = doctor.diagnose(f"client://{LOOPBACK}:{port}/{LOOPBACK}:{gone}?mode=1", timeout=2)
    assert steps(broken)[f"target {LOOPBACK}:{gone}"][0] is False


def test_master(tmp_path: Path, masters: list[Master]) -> None:
    master = startMaster(masters, tmp_path)
    url = f"master://{LOOPBACK}:{master.port}/api"
    good = doctor.diagnose(url, key=master.key)
    assert good.healthy, good.steps
    bad = doctor.diagnose(url, key="0" * 32)
    assert steps(bad)["key"] == (False, "the master refused the key (401)")


def test_pinMismatch(server: tuple[NodePass, int], echoTarget: TCPServer) -> None:
    _, tunnel = server
    pin = "sha256:" + ":".join(["00"] * 32)
    url = f"client://right@{LOOPBACK}:{tunnel}/{LOOPBACK}:{echoTarget.port}?mode=2&tls=1&pin={pin}"
    ok, detail = steps(doctor.diagnose(url))["tls"]
    assert not ok and f"the pin {pin} does not match" in detail


def test_certificateFromAnotherCA(tmp_path: Path, echoTarget: TCPServer) -> None:
    """
    tls=2 with a certificate from a CA this machine does not trust: the doctor says so.
    """
    from tests.test_tls import makeCA, makeLeaf

    leaf = makeLeaf(makeCA("Another CA"))
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    crt.write_bytes(leaf.certPEM)
    key.write_bytes(leaf.keyPEM)
    tunnel, entry = freePort(udp=False), freePort(udp=False)
    proc = NodePass(
        f"server://right@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1&tls=2&crt={crt}&key={key}"
    )
    try:
        waitFor(lambda: canConnect(tunnel), 15, "the server's tunnel port")
        url = f"client://right@localhost:{tunnel}/{LOOPBACK}:{echoTarget.port}?mode=2"
        ok, detail = steps(doctor.diagnose(url))["tls"]
        assert not ok and "not trusted here" in detail and "certificate" in detail, detail
    finally:
        proc.proc.kill()
        proc.proc.wait(10)


def test_portThatNeverAnswers() -> None:
    held = threading.Event()

    def silent(conn: socket.socket) -> None:
        held.wait(30)  # accept, then say nothing until the test is over

    with TCPServer(silent) as quiet:
        try:
            report = doctor.diagnose(
                f"client://k@{LOOPBACK}:{quiet.port}/{LOOPBACK}:1?mode=2", timeout=1
            )
        finally:
            held.set()
    ok, detail = steps(report)["handshake"]
    assert not ok and "accepted the connection but sent nothing within 1s" in detail
