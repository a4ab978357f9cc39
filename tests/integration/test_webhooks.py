"""
Webhooks of a real master on 127.0.0.1, received by stdlib HTTP servers on 127.0.0.1: a
stop reaches the receiver as a signed C{status} event, and a receiver that fails twice
gets the event on the third attempt, as the deliveries list shows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK, TCPServer, freePort, waitFor
from tests.test_master_service import Master, startMaster

SECRET = "integration-secret-4d1f"
FLAKY_SECRET = "integration-secret-9b07"


class Receiver:
    """
    A webhook receiver: answers the given status codes in turn, then 204, and keeps every
    request's headers and body.
    """

    def __init__(self, codes: tuple[int, ...] = ()) -> None:
        self.codes = list(codes)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    # Header names are case-insensitive: keep them in lower case.
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append((headers, body))
                    code = receiver.codes.pop(0) if receiver.codes else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[tuple[dict[str, str], bytes, dict[str, Any]]]:
        with self._lock:
            return [(headers, body, json.loads(body)) for headers, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


def verified(headers: dict[str, str], body: bytes, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-nodepass-signature", ""), expected)


def test_signedStatusEventsAndRetries(
    tmp_path: Path, masters: list[Master], echoServer: TCPServer, receivers: list[Receiver]
) -> None:
    master = startMaster(masters, tmp_path)
    good, flaky = Receiver(), Receiver((500, 500))
    receivers.extend([good, flaky])

    port = freePort(udp=False)
    url = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoServer.port}?mode=1"
    id = master.ok("POST", "/instances", {"url": url}, status=201)["id"]
    waitFor(lambda: master.ok("GET", f"/instances/{id}")["status"] == "running", 15, "running")

    hook = master.ok(
        "POST", "/webhooks", {"url": good.url, "events": ["status"], "secret": SECRET}, 201
    )
    assert hook["signed"] is True and "secret" not in hook
    flakyHook = master.ok(
        "POST",
        "/webhooks",
        {"url": flaky.url, "events": ["status", "master"], "secret": FLAKY_SECRET},
        201,
    )
    assert master.ok("GET", "/webhooks") == [hook, flakyHook]

    master.ok("PATCH", f"/instances/{id}", {"action": "stop"})

    def stopped(receiver: Receiver) -> bool:
        return any(
            e["event"] == "status" and e["instance"]["status"] == "stopped"
            for _, _, e in receiver.events()
        )

    waitFor(lambda: stopped(good), 15, "the status event at the receiver")
    (headers, body, event) = good.events()[0]
    assert verified(headers, body, SECRET)
    assert not verified(headers, body, FLAKY_SECRET)
    assert headers["content-type"] == "application/json"
    assert headers["x-nodepass-event"] == "status"
    assert headers["user-agent"].startswith("NodePass/")
    assert event["instance"]["id"] == id and event["instance"]["status"] == "stopped"
    assert set(event) == {"event", "time", "instance"}

    # 500, 500, then the third attempt (after 1 s and 2 s more) is accepted.
    waitFor(lambda: len(flaky.events()) >= 3, 20, "the third attempt at the flaky receiver")
    attempts = flaky.events()
    assert len({body for _, body, _ in attempts[:3]}) == 1
    assert all(verified(h, b, FLAKY_SECRET) for h, b, _ in attempts)
    assert stopped(flaky)

    def deliveries() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = master.ok("GET", f"/webhooks/{flakyHook['id']}/deliveries")
        return listed

    waitFor(lambda: len(deliveries()) >= 3, 10, "three deliveries listed")
    listed = deliveries()
    assert [(d["attempt"], d["status"]) for d in listed[:3]] == [(3, 204), (2, 500), (1, 500)]
    assert [d["error"] for d in listed[:3]] == [None, "HTTP 500", "HTTP 500"]
    assert all(d["event"] == "status" and d["duration"] >= 0 for d in listed[:3])

    # Deleted: no more deliveries; the secrets never reach the master's output.
    code, _, _ = master.call("DELETE", f"/webhooks/{hook['id']}")
    assert code == 204
    assert SECRET not in master.output and FLAKY_SECRET not in master.output

    # The hooks outlive a restart; the master announces its stop and its start.
    code, _ = master.terminate()
    assert code == master.stoppedCode, master.output

    def actions() -> list[str]:
        return [e["master"]["action"] for _, _, e in flaky.events() if e["event"] == "master"]

    assert actions() == ["shutdown"]
    again = startMaster(masters, tmp_path, port=master.port)
    again.key = master.key  # loaded, not printed again
    (restored,) = again.ok("GET", "/webhooks")
    stored = ("id", "url", "events", "created", "signed")
    assert {k: restored[k] for k in stored} == {k: flakyHook[k] for k in stored}
    waitFor(lambda: actions() == ["shutdown", "start"], 10, "the start event")
    mid = again.ok("GET", "/info")["mid"]
    assert [e["master"]["id"] for _, _, e in flaky.events() if e["event"] == "master"] == [mid] * 2
