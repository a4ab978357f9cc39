"""
The dashboard in a real browser: headless Chromium (Debian's, driven by playwright) against
a real master on 127.0.0.1.  Sign in (a wrong key first), create a single-end forwarder to
a local echo server through the form, see it running, send traffic through it and watch the
counters and the chart move, stop it, delete it, sign out.

Screenshots go to C{$NP_TEST_ARTIFACTS} (a pytest temporary directory by default).  The test
skips, saying why, when playwright or chromium is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK, TCPServer, freePort, recvAll
from tests.test_master_service import Master, startMaster, waitExchange

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_VARIABLE = "NP_TEST_ARTIFACTS"
#: Milliseconds any one wait in the page may take.
WAIT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    configured = os.environ.get(ARTIFACTS_VARIABLE)
    directory = Path(configured) if configured else tmp_path / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if executable is None:
        pytest.skip(f"chromium is not installed ({CHROMIUM} is missing)")
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, headless=True)
        except Exception as e:  # a broken install: say so rather than fail the suite
            pytest.skip(f"chromium does not start: {e}")
        try:
            yield launched
        finally:
            launched.close()


class Cutter:
    """
    A TCP forwarder on 127.0.0.1 in front of the master, so the test can drop the page's
    connections (the event stream among them) and refuse new ones for a while.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.refusing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.server = TCPServer(self._forward)
        self.port = self.server.port

    def _forward(self, conn: socket.socket) -> None:
        if self.refusing.is_set():
            return  # closed at once by TCPServer
        conn.settimeout(None)
        with socket.create_connection((LOOPBACK, self.upstream), timeout=10) as upstream:
            upstream.settimeout(None)
            with self._lock:
                self._open.update((conn, upstream))
            back = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
            back.start()
            self._pipe(conn, upstream)
            back.join(10)
            with self._lock:
                self._open.difference_update((conn, upstream))

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """
        Drop every open connection.
        """
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.refusing.set()
        self.cut()
        self.server.close()


def recvExactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def sendThrough(port: int, size: int = 256 * 1024) -> None:
    """
    One round trip of C{size} bytes through the forwarder on C{port}.
    """
    payload = os.urandom(size)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recvAll(sock, size) == payload


def test_dashboard_journey(
    tmp_path: Path,
    masters: list[Master],
    echoServer: TCPServer,
    browser: Any,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> None:
    from playwright.sync_api import expect

    master = startMaster(masters, tmp_path)
    cutter = Cutter(master.port)
    request.addfinalizer(cutter.close)
    base = f"http://{LOOPBACK}:{cutter.port}"
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            # Answers the test asks for (401, 400) are logged as failed loads: not a problem.
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )

    try:
        # / redirects to the dashboard, which asks for the key.
        page.goto(base + "/")
        assert page.url == base + "/api/v1/dashboard/"
        expect(page.locator("#view-signin")).to_be_visible()
        expect(page.locator("#nav")).to_be_hidden()  # nothing to navigate before signing in

        # A wrong key is refused, and the page says so.
        page.fill("#signin-key", "0" * 32)
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#signin-error")).to_contain_text("Invalid API key")
        expect(page.locator("#view-instances")).to_be_hidden()
        page.screenshot(path=str(artifacts / "dashboard-signin-refused.png"))

        # The right key signs in; the key is nowhere the page can read later.
        # With the keyboard alone: the refused key is selected in its field, typing
        # replaces it, Enter submits.
        expect(page.locator("#signin-key")).to_be_focused()
        page.keyboard.type(master.key)
        page.keyboard.press("Enter")
        expect(page.locator("#view-instances")).to_be_visible()
        expect(page.locator("#stream")).to_have_text("Live")
        assert master.key not in page.url
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot see it
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        assert master.key not in page.content()
        # The Content-Security-Policy holds in the browser: an inline script does not run.
        inline = (
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.inlineRan = true'; document.head.append(s);"
            " return window.inlineRan === true; }"
        )
        with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
            assert page.evaluate(inline) is False
        problems[:] = [p for p in problems if "Content Security Policy" not in p]

        # Create a single-end forwarder to the echo server through the form.
        port = freePort(udp=False)
        page.click("#create summary")
        # Certificate files only for tls=2.
        expect(page.locator("#c-crt")).to_be_hidden()
        page.select_option("#c-tls", "2")
        expect(page.locator("#c-crt")).to_be_visible()
        page.select_option("#c-tls", "0")
        expect(page.locator("#c-crt")).to_be_hidden()
        page.select_option("#c-role", "client")
        page.select_option("#c-mode", "1")
        page.fill("#c-host", LOOPBACK)
        page.fill("#c-port", str(port))
        page.fill("#c-targets", f"{LOOPBACK}:{echoServer.port}")
        page.fill("#c-alias", "echo")
        expected = f"client://{LOOPBACK}:{port}/{LOOPBACK}:{echoServer.port}?mode=1"
        expect(page.locator("#c-url")).to_have_text(expected)
        page.click("#create-form button[type=submit]")
        expect(page.locator("#create-error")).to_be_empty()
        row = page.locator("#instances-body tr", has_text="echo")
        expect(row.locator(".badge")).to_have_text("running")

        # What the API refuses shows the API's own error text next to the form.
        page.select_option("#c-role", "client")
        page.select_option("#c-mode", "1")
        page.fill("#c-port", str(freePort(udp=False)))
        page.fill("#c-targets", f"{LOOPBACK}:{echoServer.port}")
        page.fill("#c-alias", "x" * 256 + "y")
        page.click("#create-form button[type=submit]")
        expect(page.locator("#create-error")).to_contain_text(
            "Instance alias exceeds maximum length 256"
        )
        page.click("#create summary")

        # Traffic: the counters and the chart move.
        waitExchange(port)  # running comes before the port listens
        for _ in range(3):
            sendThrough(port)
        expect(row.locator("td[data-label=Receive] .sub")).not_to_have_text("0 B")
        row.locator("a").click()
        expect(page.locator("#view-instance")).to_be_visible()
        expect(page.locator("#instance-title")).to_have_text("echo")
        chart = page.locator("#d-chart")
        expect(chart).to_have_attribute("data-peak", re.compile(r"^[1-9][0-9]*$"))
        expect(page.locator("#d-figures")).to_contain_text("Pool connections")
        expect(page.locator("#d-logs li").first).to_be_visible()  # the instance's own lines
        expect(page.locator("#d-params")).to_contain_text(f"{LOOPBACK}:{echoServer.port}")
        # Open connections: a held one is listed, and its Close button ends it for the user.
        expect(page.locator("#d-connections-note")).to_have_text("No open connection.")
        with socket.create_connection((LOOPBACK, port), timeout=10) as held:
            held.sendall(b"ping")
            assert recvExactly(held, 4) == b"ping"
            page.click("#d-connections-refresh")
            close = page.locator("#d-connections-body button", has_text="Close")
            expect(close).to_have_count(1)
            expect(page.locator("#d-connections-body")).to_contain_text("tcp")
            close.click()
            expect(page.locator("#d-connections-note")).to_have_text("No open connection.")
            try:
                assert held.recv(1) == b""
            except ConnectionResetError:
                pass  # closed either way
        # More traffic, one round per report, so the chart has a shape.
        for size in (64 * 1024, 512 * 1024, 192 * 1024, 768 * 1024):
            before = chart.get_attribute("data-points")
            sendThrough(port, size)
            expect(chart).not_to_have_attribute("data-points", before or "")
        page.screenshot(path=str(artifacts / "dashboard-instance.png"))

        # Back to the list: the rates are there.
        page.click("text=All instances")
        expect(row.locator(".badge")).to_have_text("running")
        page.screenshot(path=str(artifacts / "dashboard-instances.png"))

        # The theme follows the system's setting.
        background = "getComputedStyle(document.body).backgroundColor"
        light = page.evaluate(background)
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate(background)
        assert light != dark, (light, dark)
        page.screenshot(path=str(artifacts / "dashboard-instances-dark.png"))
        page.emulate_media(color_scheme="light")

        # A phone-sized screen: one card per instance, nothing wider than the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        expect(row.locator(".badge")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(artifacts / "dashboard-phone.png"))
        page.set_viewport_size(VIEWPORT)

        # The stream drops and comes back: the page says so, then catches up with what changed.
        cutter.refusing.set()
        cutter.cut()
        expect(page.locator("#stream")).to_have_text("Reconnecting…")
        id = master.ok("GET", "/instances")[1]["id"]
        master.ok("PATCH", f"/instances/{id}", {"meta": {"tags": {"site": "lab"}}})
        cutter.refusing.clear()
        expect(page.locator("#stream")).to_have_text("Live")
        expect(row.locator("td[data-label=Tags]")).to_have_text("site=lab")
        page.fill("#search", "site=lab")
        expect(page.locator("#instances-body tr")).to_have_count(1)
        page.fill("#search", "site=prod")
        expect(page.locator("#instances-body tr")).to_have_count(0)
        expect(page.locator("#instances-empty")).to_be_visible()
        page.fill("#search", "")

        # The master page: figures and links.
        page.click("#nav-master")
        expect(page.locator("#m-info")).to_contain_text("Version")
        expect(page.locator("#m-hooks-empty")).to_be_visible()
        page.screenshot(path=str(artifacts / "dashboard-master.png"))
        page.click("#nav-instances")

        # Stop, then delete with the confirmation.
        row.get_by_role("button", name="Stop echo").click()
        expect(row.locator(".badge")).to_have_text("stopped")
        row.get_by_role("button", name="Delete echo").click()
        expect(page.locator("#confirm")).to_be_visible()
        page.click("#confirm-ok")
        expect(page.locator("#instances-body tr", has_text="echo")).to_have_count(0)
        code, listed, _ = master.call("GET", "/instances")
        assert code == 200 and [i["id"] for i in listed] == ["********"], listed

        # A new key ends the session: the page asks to sign in again, and the new key works.
        pseudo = "/instances/%2A%2A%2A%2A%2A%2A%2A%2A"
        master.key = master.ok("PATCH", pseudo, {"action": "restart"})["url"]
        expect(page.locator("#view-signin")).to_be_visible()
        expect(page.locator("#signin-error")).to_contain_text("session has ended")
        page.fill("#signin-key", master.key)
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#stream")).to_have_text("Live")
        expect(page.locator("#instances-empty")).to_be_visible()

        # Sign out: back to the form, and the cookie no longer opens the API.
        page.click("#signout")
        expect(page.locator("#view-signin")).to_be_visible()
        answer = page.request.get(base + "/api/v1/instances")
        assert answer.status == 401
    except BaseException:
        # What the page showed when it went wrong, next to the other screenshots.
        with contextlib.suppress(Exception):
            page.screenshot(path=str(artifacts / "dashboard-failure.png"), full_page=True)
        raise
    context.close()
    assert problems == [], problems
