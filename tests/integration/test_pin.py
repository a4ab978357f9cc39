"""
C{pin=} on real sockets (127.0.0.1): a C{tls=1} server and a client in this process, on a
private epoll reactor iterated until a condition holds or a deadline passes.  A wrong pin
refuses the tunnel (the error line names both fingerprints, the client retries, no user byte
goes through); the right one carries traffic, whose relays the client lists and can close.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.failure import Failure

from nodepass.service import NodePassService, buildService
from nodepass.settings import Settings
from nodepass.url import parse
from tests.support import EchoProtocol as Echo
from tests.support import ReactorLoop as Loop
from tests.support import RecordingUser as User

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
WRONG = "sha256:" + ":".join(["0A"] * 32)


def freePort() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Pair:
    """
    A C{tls=1} server in flow C{-} (users connect to its entry port) and, on demand, a client
    dialling an echo target.
    """

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        reactor = loop.reactor
        self.targetBytes: list[bytes] = []
        seen = self.targetBytes

        class Targets(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return Echo(seen)

        self.targetPort = reactor.listenTCP(0, Targets(), interface=LOOPBACK)
        self.tunnel, self.entry = freePort(), freePort()
        self.events: list[LogEvent] = []
        self.services: list[NodePassService] = []
        self.server = self.start(
            f"server://pinkey@{LOOPBACK}:{self.tunnel}/{LOOPBACK}:{self.entry}?tls=1&mode=1"
        )
        credentials: Any = next(iter(self.server)).credentials  # type: ignore[attr-defined]
        self.fingerprint: str = credentials.fingerprint

    def start(self, url: str) -> NodePassService:
        observer: ILogObserver = self.events.append  # type: ignore[assignment]
        log = Logger(namespace="nodepass", observer=observer)
        # A short pause between attempts, so that a retry is seen quickly.
        service = buildService(parse(url), self.loop.reactor, Settings(serviceCooldown=0.2), log)
        service.privilegedStartService()
        service.startService()
        self.services.append(service)
        return service

    def client(self, pin: str) -> NodePassService:
        target = self.targetPort.getHost().port
        return self.start(
            f"client://pinkey@{LOOPBACK}:{self.tunnel}/{LOOPBACK}:{target}?mode=2&tls=1&pin={pin}"
        )

    @property
    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def connect(self, payload: bytes) -> User:
        user = User()

        class Once(ClientFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return user

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                user.lost = reason

        self.loop.reactor.connectTCP(LOOPBACK, self.entry, Once())
        self.loop.until(lambda: bool(user.connected or user.lost), what="connected")
        if user.connected:
            user.transport.write(payload)  # type: ignore[union-attr]
        return user

    def stop(self) -> None:
        for service in reversed(self.services):
            done = service.stopService()
            if done is not None:
                finished: list[object] = []
                done.addBoth(finished.append)

                def stopped(f: list[object] = finished) -> bool:
                    return bool(f)

                self.loop.until(stopped, timeout=10, what="service stop")
        self.targetPort.stopListening()


@pytest.fixture
def pair() -> Iterator[Pair]:
    loop = Loop()
    try:
        made = Pair(loop)
        try:
            yield made
        finally:
            made.stop()
    finally:
        loop.close()


def test_wrongPinRefusesTheTunnel(pair: Pair) -> None:
    pair.client(WRONG)
    user = pair.connect(b"secret bytes")
    expected = f"certificate pin mismatch: expected {WRONG} - presented {pair.fingerprint}"

    def refusedTwice() -> bool:
        return (
            sum(line.startswith("Client error: ") and expected in line for line in pair.lines) >= 2
        )

    # Refused, then refused again: the client retries like after any failed handshake.
    pair.loop.until(refusedTwice, what="two refusals")
    assert any(line == f"incomingVerify: {expected}" for line in pair.lines), pair.lines
    assert pair.targetBytes == []
    assert user.received == b""
    assert not any("TLS certificate fingerprint verified" in line for line in pair.lines)


def test_rightPinCarriesTraffic(pair: Pair) -> None:
    client = pair.client(pair.fingerprint.lower().replace(":", "").replace("sha256", "sha256:"))
    deadline = time.monotonic() + 20
    while True:  # the entry port reads once the tunnel is verified
        user = pair.connect(b"ping")

        def answered(u: User = user) -> bool:
            return u.received == b"ping" or u.lost is not None

        pair.loop.until(answered, what="an answer or a close")
        if user.received == b"ping":
            break
        assert time.monotonic() < deadline, pair.lines
    assert not any("pin mismatch" in line for line in pair.lines)
    # The client (exit side here) lists the relay: the user as the server named it, the target.
    (listed,) = [c for c in client.connections() if c["proto"] == "tcp"]
    local: Any = user.transport.getHost()  # type: ignore[union-attr]
    assert listed["remote"] == f"{LOOPBACK}:{local.port}"
    assert listed["target"] == f"{LOOPBACK}:{pair.targetPort.getHost().port}"
    assert (listed["rx"], listed["tx"]) == (4, 4)
    # Closing it there closes the user's connection at the other end of the tunnel.
    assert client.closeConnection(listed["id"])
    pair.loop.until(lambda: user.lost is not None, what="the user sees the close")
