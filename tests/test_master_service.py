"""
Master mode end to end: ``twistd -n nodepass master://...`` in a subprocess on 127.0.0.1,
driven through its HTTP API and watched through its SSE stream, with real instance children
carrying real traffic; then killed with SIGKILL and started again on the same state.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support import (
    LOOPBACK,
    ROOT,
    TCPServer,
    canConnect,
    certificates,
    echo,
    freePort,
    recvAll,
    waitFor,
)

pytestmark = pytest.mark.integration

KEY_LINE = "API Key created: "


class Master:
    """
    A master run as ``twistd -n nodepass URL`` in C{directory}, output captured.
    """

    def __init__(
        self,
        directory: Path,
        port: int,
        query: str = "log=info",
        env: dict[str, str] | None = None,
        tls: bool = False,
        twistd: bool = True,
        prefix: list[str] | None = None,
    ) -> None:
        self.directory = directory
        self.twistd = twistd
        self.port = port
        self.tls = tls
        self.url = f"master://{LOOPBACK}:{port}/api?{query}"
        environ = dict(os.environ)
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        environ.update(NP_REPORT_INTERVAL="1s", NP_SHUTDOWN_TIMEOUT="2s")
        environ.pop("NP_STATE_DIR", None)
        environ.update(env or {})
        if twistd:
            twistdRun = "from twisted.scripts.twistd import run; run()"
            argv = [sys.executable, "-c", twistdRun, "-n", "--pidfile=", "nodepass", self.url]
        else:
            argv = [sys.executable, "-m", "nodepass", self.url]
        self.proc = subprocess.Popen(
            # A wrapper command (setpriv, unshare) may come before the interpreter.
            [*(prefix or []), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(directory),
            env=environ,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.key = ""

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self._lines.append(raw.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def waitReady(self, timeout: float = 30.0) -> None:
        """
        Wait until the state is restored and the API answers.
        """

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.output}")
            if not canConnect(self.port):
                return False
            # 503 while the state is being restored, 401 (no key) once the API is open.
            code, _, _ = self.call("GET", "/instances", key="")
            return code == 401

        waitFor(ready, timeout, "the master to restore its state")

        def keyLine() -> bool:
            # The key line comes before the API opens, but the reader thread may still be
            # on its way to it: wait for it (or for the line saying the key was loaded).
            for line in list(self._lines):
                if KEY_LINE in line:
                    self.key = line.split(KEY_LINE, 1)[1].strip()
                    return True
                if "API Key loaded" in line:
                    return True
            return False

        try:
            waitFor(keyLine, 10, "the API key line")
        except AssertionError:
            pass  # a restart at a level that does not print the "loaded" line: no key line

    def connection(self, timeout: float = 15.0) -> http.client.HTTPConnection:
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(
                LOOPBACK, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        key: str | None = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        """
        One request to C{/api/v1<path>}; returns the status, the decoded JSON body (or the
        raw bytes when it is not JSON) and the response.
        """
        connection = self.connection()
        headers = {"X-API-Key": self.key if key is None else key}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            connection.request(method, "/api/v1" + path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.getheader("Content-Type") == "application/json":
            return response.status, json.loads(payload), response
        return response.status, payload, response

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, value, _ = self.call(method, path, body)
        assert code == status, (method, path, code, value)
        return value

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    @property
    def stoppedCode(self) -> int:
        """
        The exit status after SIGTERM: C{nodepass URL} exits 0; twistd ends every
        application by re-raising the signal it received, after the graceful stop.
        """
        return -signal.SIGTERM if self.twistd else 0

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        elapsed = time.monotonic() - started
        self._reader.join(5)
        return code, elapsed

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class EventStream:
    """
    A subscriber of C{P/events} reading in a thread; every event is kept.
    """

    def __init__(self, master: Master, key: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.retryBlocks = 0
        self.status = 0
        self.contentType = ""
        self.ended = threading.Event()
        connection = master.connection(timeout=60)
        connection.request("GET", "/api/v1/events", headers={"X-API-Key": key or master.key})
        self.response = connection.getresponse()
        self.status = self.response.status
        self.contentType = self.response.getheader("Content-Type") or ""
        self._connection = connection
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        block: list[str] = []
        try:
            for raw in iter(self.response.readline, b""):
                line = raw.decode("utf-8").rstrip("\n")
                if line:
                    block.append(line)
                    continue
                if block == ["retry: 3000"]:
                    self.retryBlocks += 1
                elif block:
                    assert block[0] == "event: instance", block
                    assert block[1].startswith("data: "), block
                    self.events.append(json.loads(block[1][len("data: ") :]))
                block = []
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # the stream ended or the test closed it
        finally:
            self.ended.set()

    def waitFor(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in list(self.events) if predicate(e)]
            return bool(found)

        waitFor(seen, timeout, f"{what}; events so far: {[_brief(e) for e in self.events]}")
        return found[0]

    def mark(self) -> int:
        return len(self.events)

    def waitAfter(
        self,
        mark: int,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        def later(event: dict[str, Any]) -> bool:
            return any(e is event for e in self.events[mark:]) and predicate(event)

        return self.waitFor(later, what, timeout)

    def close(self) -> None:
        # Shut the socket down first: that wakes the reader thread, which would otherwise
        # hold the response's buffer (and so close()) until the next event or keepalive.
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(10)
        self._connection.close()


def _brief(event: dict[str, Any]) -> str:
    instance = event.get("instance") or {}
    return f"{event['type']}:{instance.get('id')}:{instance.get('status')}"


def isUpdate(id: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        instance = event.get("instance") or {}
        if event["type"] != "update" or instance.get("id") != id:
            return False
        return all(
            value(instance[name]) if callable(value) else instance[name] == value
            for name, value in fields.items()
        )

    return check


def exchange(port: int, size: int = 64 * 1024) -> bytes:
    payload = os.urandom(size)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = recvAll(sock, size)
    assert received == payload
    return received


def waitExchange(port: int, timeout: float = 20.0) -> None:
    """
    Wait until a round trip through C{port} works (the tunnel needs its pool first).
    """

    def works() -> bool:
        try:
            exchange(port, 4096)
        except (OSError, AssertionError):
            return False
        return True

    waitFor(works, timeout, f"traffic through port {port}")


@pytest.fixture
def echoServer() -> Iterator[TCPServer]:
    with TCPServer(echo) as server:
        yield server


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[list[Master]]:
    started: list[Master] = []
    yield started
    for master in started:
        master.close()


def startMaster(
    masters: list[Master], directory: Path, port: int | None = None, **kwargs: Any
) -> Master:
    master = Master(directory, port if port is not None else freePort(udp=False), **kwargs)
    masters.append(master)
    master.waitReady()
    return master


def test_master_lifecycle_survives_sigkill(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer
) -> None:
    """
    The issue's scenario: instances created through the API run, carry traffic, are
    stopped, restarted, reset, moved to another URL and deleted; after SIGKILL the next
    master finds every acknowledged change and restarts the C{restart=true} instances.
    """
    master = startMaster(masters, tmp_path)
    key = master.key
    assert len(key) == 32, master.output
    assert master.output.count(key) == 1  # printed once, never again
    stream = EventStream(master)
    assert stream.status == 200 and stream.contentType == "text/event-stream"
    stream.waitFor(
        lambda e: e["type"] == "initial" and e["instance"]["id"] == "********", "the snapshot"
    )

    tunnel, entry, entry2 = freePort(), freePort(), freePort()
    serverURL = f"server://{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}?mode=1"
    clientURL = f"client://{LOOPBACK}:{tunnel}/{LOOPBACK}:{echoServer.port}?mode=2&min=4"

    posted = time.monotonic()
    server = master.ok("POST", "/instances", {"url": serverURL, "alias": "edge"}, 201)
    sid = server["id"]
    assert server["type"] == "server" and server["restart"] is True
    assert server["url"] == serverURL.replace("?mode=1", "?log=info&mode=1")
    stream.waitFor(lambda e: e["type"] == "create" and e["instance"]["id"] == sid, "create")
    assert time.monotonic() - posted < 3.0  # NodePassDash waits 3 s for it (§18 b12)
    client = master.ok("POST", "/instances", {"url": clientURL}, 201)
    cid = client["id"]

    stream.waitFor(isUpdate(sid, status="running"), "the server running")
    stream.waitFor(isUpdate(cid, status="running"), "the client running")
    # CHECK_POINT lines become updates carrying the child's figures.
    stream.waitFor(isUpdate(sid, mode=1, pool=lambda p: p > 0), "a server checkpoint")
    stream.waitFor(isUpdate(cid, mode=2), "a client checkpoint")
    waitExchange(entry)
    exchange(entry, 256 * 1024)
    stream.waitFor(isUpdate(sid, tcprx=lambda n: n >= 256 * 1024), "traffic counted")
    assert any(e["type"] == "log" and e["instance"]["id"] == sid for e in stream.events)

    # stop / start / restart / reset
    mark = stream.mark()
    assert master.ok("PATCH", f"/instances/{sid}", {"action": "stop"})["status"] == "running"
    stream.waitAfter(mark, isUpdate(sid, status="stopped"), "the server stopped")
    waitFor(lambda: not canConnect(entry), 10, "the entry port to close")
    mark = stream.mark()
    master.ok("PATCH", f"/instances/{sid}", {"action": "start"})
    stream.waitAfter(mark, isUpdate(sid, status="running"), "the server running again")
    waitExchange(entry)
    mark = stream.mark()
    master.ok("PATCH", f"/instances/{sid}", {"action": "restart"})
    stream.waitAfter(mark, isUpdate(sid, status="stopped"), "restart: stopped")
    stream.waitAfter(mark, isUpdate(sid, status="running"), "restart: running")
    waitExchange(entry)
    reset = stream.mark()
    master.ok("PATCH", f"/instances/{sid}", {"action": "reset"})
    stream.waitAfter(reset, isUpdate(sid, tcprx=0, tcptx=0), "the reset counters")

    # metadata, the restart flag, a URL change
    master.ok("PATCH", f"/instances/{cid}", {"meta": {"tags": {"site": "lab"}}, "alias": "inner"})
    newURL = f"server://{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry2}?mode=1"
    mark = stream.mark()
    moved = master.ok("PUT", f"/instances/{sid}", {"url": newURL})
    assert moved["url"] == newURL.replace("?mode=1", "?log=info&mode=1")
    stream.waitAfter(mark, isUpdate(sid, status="running", url=moved["url"]), "the new URL")
    waitExchange(entry2)
    waitFor(lambda: not canConnect(entry), 10, "the old entry port to close")

    # a third instance that must not come back: restart=false, then one deleted
    spare = freePort()
    quiet = master.ok(
        "POST", "/instances", {"url": f"client://{LOOPBACK}:{spare}/{LOOPBACK}:9?mode=1"}, 201
    )
    master.ok("PATCH", f"/instances/{quiet['id']}", {"restart": False})
    doomed = master.ok(
        "POST", "/instances", {"url": f"client://{LOOPBACK}:{freePort()}/{LOOPBACK}:9"}, 201
    )
    stream.waitFor(isUpdate(doomed["id"], status="running"), "the doomed instance running")
    master.ok("DELETE", f"/instances/{doomed['id']}", status=204)
    stream.waitFor(
        lambda e: e["type"] == "delete" and e["instance"]["id"] == doomed["id"], "delete"
    )
    code, body, _ = master.call("GET", f"/instances/{doomed['id']}")
    assert (code, body) == (404, {"error": "Instance not found"})
    before = {i["id"]: i for i in master.ok("GET", "/instances")}

    # SIGKILL: the children go with the master (no orphans holding ports).
    stream.close()
    master.kill()
    waitFor(lambda: not canConnect(entry2), 10, "the orphaned server's port to close")
    waitFor(lambda: not canConnect(spare), 10, "the orphaned forwarder's port to close")

    again = startMaster(masters, tmp_path, master.port)
    again.key = key
    assert KEY_LINE not in again.output and key not in again.output
    after = {i["id"]: i for i in again.ok("GET", "/instances")}
    assert set(after) == set(before) == {"********", sid, cid, quiet["id"]}
    for id, old in before.items():
        for name in ("alias", "type", "url", "config", "restart", "meta"):
            assert after[id][name] == old[name], (id, name)
    assert after[cid]["meta"]["tags"] == {"site": "lab"} and after[cid]["alias"] == "inner"
    assert after["********"]["config"] == before["********"]["config"]  # the master ID

    def statuses() -> dict[str, str]:
        return {i["id"]: i["status"] for i in again.ok("GET", "/instances")}

    waitFor(lambda: statuses()[sid] == statuses()[cid] == "running", 20, "the auto-start")
    assert statuses()[quiet["id"]] == "stopped"
    waitExchange(entry2)

    code, elapsed = again.terminate()
    assert code == again.stoppedCode, again.output
    assert elapsed < 2.0 + 3.0, elapsed  # NP_SHUTDOWN_TIMEOUT plus start-up slack
    assert "Master shutdown complete" in again.output
    assert not canConnect(entry2)


def test_bad_input_changes_nothing(tmp_path: Path, masters: list[Master]) -> None:
    """
    Malformed, wrongly typed and oversized requests get JSON errors over a real socket, the
    master keeps running, and the saved state is untouched.
    """
    master = startMaster(masters, tmp_path, twistd=False)
    target = f"client://{LOOPBACK}:{freePort()}/{LOOPBACK}:9"
    created = master.ok("POST", "/instances", {"url": target, "alias": "keep"}, 201)
    id = created["id"]
    snapshot = master.ok("GET", "/instances")
    huge = json.dumps({"url": target, "alias": "x" * (2 << 20)}).encode()
    cases: list[tuple[str, str, bytes, int, str]] = [
        ("POST", "/instances", b"{not json", 400, "Invalid request body"),
        ("POST", "/instances", b'{"url": 42}', 400, "Invalid request body"),
        ("POST", "/instances", b'{"url": "server://"}', 400, "Invalid URL format"),
        ("POST", "/instances", b'{"url": "ftp://h:1/x"}', 400, "Invalid URL scheme"),
        ("POST", "/instances", huge, 413, "Request body too large"),
        ("PATCH", f"/instances/{id}", b'{"alias": 7}', 400, "Invalid request body"),
        (
            "PATCH",
            f"/instances/{id}",
            b'{"alias":"new","action":"fly"}',
            400,
            "Invalid action: fly",
        ),
        ("PATCH", "/instances/00000000", b'{"action":"stop"}', 404, "Instance not found"),
        ("PUT", f"/instances/{id}", b'{"url": "client://bad port:x/y"}', 400, "Invalid URL format"),
        ("PUT", f"/instances/{id}", huge, 413, "Request body too large"),
        ("DELETE", "/instances/********", b"", 403, "Forbidden: API Key"),
        ("POST", "/info", b"[1, 2]", 400, "Invalid request body"),
    ]
    for method, path, raw, status, message in cases:
        code, body, response = master.call(method, path, raw=raw)
        assert (code, body) == (status, {"error": message}), (method, path, code, body)
        assert response.getheader("Access-Control-Allow-Origin") == "*"
    # The docs page and its Swagger UI assets come from the master itself (no CDN).
    code, page, _ = master.call("GET", "/docs", key="")
    assert code == 200 and b"/api/v1/docs/static/swagger-ui-bundle.js" in page
    code, asset, response = master.call("GET", "/docs/static/swagger-ui-bundle.js", key="")
    assert code == 200 and len(asset) > 100_000
    assert response.getheader("Content-Type") == "text/javascript; charset=utf-8"
    code, body, _ = master.call("GET", "/instances", key="0" * 32)
    assert (code, body) == (401, {"error": "Unauthorized: Invalid API key"})
    assert master.ok("GET", "/instances") == snapshot
    assert master.proc.poll() is None
    code, _ = master.terminate()
    assert code == 0
    with sqlite3.connect(tmp_path / "nodepass.db") as db:
        rows = db.execute("SELECT id, alias FROM instances").fetchall()
    assert rows == [(id, "keep")]


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        master = Master(tmp_path, taken.getsockname()[1])
        try:
            assert master.proc.wait(30) == 1
        finally:
            master.close()
    assert "cannot listen on" in master.output


def test_corrupt_state_refuses_to_start(tmp_path: Path) -> None:
    """
    A database that cannot be read, without a backup, stops the master with one clear line
    and leaves the file as it was (a new key is never minted over it, §17 a7).
    """
    damaged = b"this is not a database" * 100
    (tmp_path / "nodepass.db").write_bytes(damaged)
    master = Master(tmp_path, freePort(udp=False))
    try:
        assert master.proc.wait(30) == 1
    finally:
        master.close()
    assert KEY_LINE not in master.output
    assert "nodepass.db" in master.output
    kept = [p for p in tmp_path.iterdir() if p.read_bytes() == damaged]
    assert kept, list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", [1, 2])
def test_master_over_tls_and_state_dir(tmp_path: Path, masters: list[Master], mode: int) -> None:
    """
    C{tls=1} serves the API over TLS 1.3 with a generated certificate, C{tls=2} with the
    given files (checked here against their CA); C{NP_STATE_DIR} chooses where the database
    lives; server instances inherit the master's TLS settings.
    """
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    query = "log=warn&tls=1"
    verify: ssl.SSLContext | None = None
    if mode == 2:
        ca, crt, key = certificates(tmp_path)
        query = f"log=warn&tls=2&crt={crt}&key={key}"
        verify = ssl.create_default_context(cafile=str(ca))
        verify.minimum_version = ssl.TLSVersion.TLSv1_3
    master = startMaster(masters, work, query=query, env={"NP_STATE_DIR": str(state)}, tls=True)
    assert len(master.key) == 32  # printed although the log level is warn
    info = master.ok("GET", "/info")
    assert (info["tls"], info["log"], info["ver"]) == (str(mode), "warn", "v1.14.0")
    created = master.ok(
        "POST", "/instances", {"url": f"server://{LOOPBACK}:{freePort()}/{LOOPBACK}:9"}, 201
    )
    assert f"log=warn&tls={mode}" in created["url"]
    if mode == 2:
        assert f"crt={quote(str(crt), safe='')}" in created["url"]
        assert verify is not None
        checked = http.client.HTTPSConnection("localhost", master.port, timeout=10, context=verify)
        checked.request("GET", "/api/v1/openapi.json")
        assert checked.getresponse().status == 200
        checked.close()
    assert (state / "nodepass.db").exists() and not (work / "nodepass.db").exists()
    plain = http.client.HTTPConnection(LOOPBACK, master.port, timeout=5)
    with pytest.raises((OSError, http.client.HTTPException)):
        plain.request("GET", "/api/v1/info")
        plain.getresponse().read()
    plain.close()


def test_periodic_backup_and_error_retry(tmp_path: Path, masters: list[Master]) -> None:
    """
    Every C{NP_RELOAD_INTERVAL} the database is backed up and instances in C{error} are
    restarted (whatever their C{restart} flag); traffic totals are saved at shutdown.
    """
    master = startMaster(masters, tmp_path, env={"NP_RELOAD_INTERVAL": "1s"}, twistd=False)
    stream = EventStream(master)
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:9?mode=1"
        created = master.ok("POST", "/instances", {"url": url}, 201)
        id = created["id"]
        master.ok("PATCH", f"/instances/{id}", {"restart": False})
        stream.waitFor(isUpdate(id, status="error"), "the instance failing on a busy port")
        waitFor(lambda: f"Retrying instance in error [{id}]" in master.output, 10, "a retry")
    mark = stream.mark()
    stream.waitAfter(mark, isUpdate(id, status="running"), "the retry that succeeds")
    waitFor(lambda: (tmp_path / "nodepass.db.backup").exists(), 10, "the periodic backup")
    with sqlite3.connect(tmp_path / "nodepass.db.backup") as db:
        assert db.execute("SELECT id FROM instances").fetchall() == [(id,)]

    with TCPServer(echo) as target:
        forward = freePort()
        relay = master.ok(
            "POST",
            "/instances",
            {"url": f"client://{LOOPBACK}:{forward}/{LOOPBACK}:{target.port}?mode=1"},
            201,
        )
        stream.waitFor(isUpdate(relay["id"], status="running"), "the forwarder running")
        waitExchange(forward)
        exchange(forward, 100_000)
        counted = stream.waitFor(
            isUpdate(relay["id"], tcprx=lambda n: n >= 100_000), "the traffic counted"
        )
    stream.close()
    code, _ = master.terminate()
    assert code == master.stoppedCode, master.output
    with sqlite3.connect(tmp_path / "nodepass.db") as db:
        (saved,) = db.execute("SELECT tcprx FROM instances WHERE id = ?", (relay["id"],)).fetchone()
    assert saved >= counted["instance"]["tcprx"]


FAKE_CORE = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("fake core started with", sys.argv[1:], flush=True)
while True:
    print("2026-01-01 00:00:00.000  EVENT  CHECK_POINT|MODE=1|PING=3ms|POOL=0|TCPS=0|UDPS=0"
          "|TCPRX=10|TCPTX=20|UDPRX=0|UDPTX=0", flush=True)
    time.sleep(0.2)
"""


def test_another_core_gets_the_url_as_its_argument(tmp_path: Path, masters: list[Master]) -> None:
    """
    C{NP_CORE_BIN} runs instances with another core program (the Go binary, say), which
    gets the URL as its only argument, as under the Go master.
    """
    core = tmp_path / "core"
    core.write_text(f"#!{sys.executable}\n{FAKE_CORE}")
    core.chmod(0o755)
    master = startMaster(masters, tmp_path, env={"NP_CORE_BIN": str(core)}, twistd=False)
    stream = EventStream(master)
    url = f"client://{LOOPBACK}:{freePort()}/{LOOPBACK}:9"
    id = master.ok("POST", "/instances", {"url": url}, 201)["id"]
    stream.waitFor(isUpdate(id, ping=3, tcprx=10, tcptx=20), "the fake core's checkpoint")
    started = stream.waitFor(
        lambda e: e["type"] == "log" and "fake core started" in e["logs"], "the fake core's line"
    )
    assert started["logs"] == f"fake core started with [{url + '?log=info'!r}]"
    mark = stream.mark()
    master.ok("PATCH", f"/instances/{id}", {"action": "stop"})
    stream.waitAfter(mark, isUpdate(id, status="stopped"), "the fake core stopped")
    stream.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NP_CORE_BIN", "{tmp}/missing", "not an executable file"),
        ("NP_CORS_ORIGINS", "not an origin", "invalid origin 'not an origin'"),
        ("NP_STATE_DIR", "{tmp}/file/state", "cannot use the state in"),
    ],
)
def test_bad_setting_refuses_to_start(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    """
    A setting the master cannot use stops it before it listens: exit 1, one line naming
    the problem, no traceback.
    """
    (tmp_path / "file").write_text("not a directory")
    port = freePort(udp=False)
    master = Master(tmp_path, port, env={variable: value.format(tmp=tmp_path)}, twistd=False)
    try:
        assert master.proc.wait(30) == 1
    finally:
        master.close()
    assert message in master.output and "Traceback" not in master.output
    assert KEY_LINE not in master.output
