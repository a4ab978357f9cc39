"""
A C{tls=1} tunnel pair on real sockets (127.0.0.1), on the fast TLS path (L{nodepass.fasttls})
and on the fallback (Twisted's TLS layer over pyOpenSSL, C{NP_FAST_TLS=0}).

Server and client instances run in this process on a private epoll reactor (never the global
one), driven by L{Loop.until}: the reactor iterates until a condition holds or a deadline
passes.  A user connects to the server's entry port; the client dials the target listener.
Every test runs on both paths, and checks which one the pool connections took.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass import fasttls
from nodepass._compat import fasttls as compat
from nodepass.service import buildService
from nodepass.settings import Settings
from nodepass.url import parse
from tests.support import ReactorLoop as Loop

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
KEY = "tlspathkey"


def freePort() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i * 7) % 251 for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


@implementer(IHalfCloseableProtocol, IPushProducer)
class Peer(Protocol):
    """
    A test end (user or target): records what it receives and how it ended; can stream a
    payload as a producer (so Twisted's write buffer pauses it) and can read slowly.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.eof = False
        self.lost: Failure | None = None
        self.connected = False
        self.outgoing = b""
        self.sent = 0
        self.paused = False

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        # Ends its side too once the other is done, as most servers and clients do.
        self.eof = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = reason

    # Streaming a payload with backpressure.

    def stream(self, payload: bytes) -> None:
        self.outgoing = payload
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < len(self.outgoing):
            chunk = self.outgoing[self.sent : self.sent + 65536]
            self.sent += len(chunk)
            self.transport.write(chunk)  # type: ignore[union-attr]
        if self.sent >= len(self.outgoing) and self.outgoing:
            self.outgoing = b""
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.paused = True


class Pair:
    """
    A tls=1 server and its client on one private reactor, a target listener, and users.
    """

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        reactor = loop.reactor
        self.targets: list[Peer] = []
        targets = self.targets

        class TargetFactory(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                peer = Peer()
                targets.append(peer)
                return peer

        self.targetPort = reactor.listenTCP(0, TargetFactory(), interface=LOOPBACK)
        target = self.targetPort.getHost().port
        tunnel, self.entry = freePort(), freePort()
        self.events: list[Any] = []
        log = Logger(namespace="nodepass", observer=self.events.append)
        settings = Settings()
        self.server = buildService(
            parse(f"server://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{self.entry}?tls=1&log=warn"),
            reactor,
            settings,
            log,
        )
        self.client = buildService(
            parse(f"client://{KEY}@{LOOPBACK}:{tunnel}/{LOOPBACK}:{target}?log=warn&mode=2"),
            reactor,
            settings,
            log,
        )
        for service in (self.server, self.client):
            service.privilegedStartService()
            service.startService()
        # Ready once a user's bytes make it to a target.
        user = self.connect()
        user.transport.write(b"hello")  # type: ignore[union-attr]
        loop.until(lambda: bool(self.targets) and bytes(self.targets[-1].received) == b"hello")
        user.transport.loseConnection()  # type: ignore[union-attr]
        loop.until(lambda: user.lost is not None and self.targets[-1].lost is not None)

    def connect(self) -> Peer:
        user = Peer()

        class UserFactory(ClientFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return user

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                user.lost = reason

        deadline = time.monotonic() + 20
        while True:
            user.lost = None
            self.loop.reactor.connectTCP(LOOPBACK, self.entry, UserFactory())
            self.loop.until(lambda: user.connected or user.lost is not None)
            if user.connected:
                return user
            if time.monotonic() > deadline:
                raise AssertionError("the entry port never accepted")
            self.loop.reactor.iterate(0.05)

    def connectPair(self) -> tuple[Peer, Peer]:
        before = len(self.targets)
        user = self.connect()
        user.transport.write(b"!")  # type: ignore[union-attr]
        self.loop.until(lambda: len(self.targets) > before and bool(self.targets[-1].received))
        target = self.targets[-1]
        assert bytes(target.received) == b"!"
        target.received.clear()
        return user, target

    def stop(self) -> None:
        for service in (self.client, self.server):
            done = service.stopService()
            if done is not None:
                finished: list[object] = []
                done.addBoth(finished.append)
                self.loop.until(lambda f=finished: bool(f), timeout=10, what="the service stops")
        self.targetPort.stopListening()


@pytest.fixture(params=[True, False], ids=["fast", "fallback"])
def pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    fast = request.param
    monkeypatch.setattr(compat, "_enabled", fast)
    made: list[object] = []
    realFast = fasttls.FastTLSProtocol.makeConnection
    realTwisted = TLSMemoryBIOProtocol.makeConnection

    def fastMade(self: Any, transport: Any) -> None:
        made.append("fast")
        realFast(self, transport)

    def twistedMade(self: Any, transport: Any) -> None:
        made.append("twisted")
        realTwisted(self, transport)

    monkeypatch.setattr(fasttls.FastTLSProtocol, "makeConnection", fastMade)
    monkeypatch.setattr(TLSMemoryBIOProtocol, "makeConnection", twistedMade)
    loop = Loop()
    try:
        ready = Pair(loop)
        # Every pool connection (both ends) took the path asked for.
        assert made and set(made) == {"fast" if fast else "twisted"}, made
        yield ready
        ready.stop()
    finally:
        loop.close()


def test_bytesExactBothWays(pair: Pair) -> None:
    """
    16 MiB from the user and 16 MiB from the target cross the tunnel at once, intact.
    """
    user, target = pair.connectPair()
    up, down = pattern(16 * MiB, 1), pattern(16 * MiB, 2)
    user.stream(up)
    target.stream(down)
    pair.loop.until(
        lambda: len(target.received) >= len(up) and len(user.received) >= len(down),
        timeout=60,
        what="32 MiB through the tunnel",
    )
    assert bytes(target.received) == up
    assert bytes(user.received) == down


def test_halfClose(pair: Pair) -> None:
    """
    A user ending its output: the target gets everything sent before, then the end, and
    both connections are closed (a TLS pool connection is not half-closed, dataplane §4).
    """
    user, target = pair.connectPair()
    request = pattern(3 * MiB, 5)
    user.transport.write(request)  # type: ignore[union-attr]
    user.transport.loseWriteConnection()  # type: ignore[union-attr]
    pair.loop.until(lambda: target.eof or target.lost is not None, what="the target's end")
    assert bytes(target.received) == request
    pair.loop.until(lambda: user.lost is not None, what="the user's connection ends")


def test_targetCloses(pair: Pair) -> None:
    """
    The target answering and closing: the user gets the whole answer, then the end.
    """
    user, target = pair.connectPair()
    answer = pattern(2 * MiB, 6)
    target.transport.write(answer)  # type: ignore[union-attr]
    target.transport.loseConnection()  # type: ignore[union-attr]
    pair.loop.until(lambda: user.lost is not None, what="the user's connection ends")
    assert bytes(user.received) == answer


def test_slowReader(pair: Pair) -> None:
    """
    A target that stops reading stops the user (backpressure through both TLS ends: the
    tunnel does not take the whole payload in); read slowly afterwards, all of it arrives.
    """
    user, target = pair.connectPair()
    for peer in (user, target):
        peer.transport.socket.setsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_RCVBUF if peer is target else socket.SO_SNDBUF, 65536
        )
    target.transport.pauseProducing()  # type: ignore[union-attr]
    payload = pattern(48 * MiB, 7)
    user.stream(payload)
    # Wait until the user has been paused with nothing moving for a while.
    still = {"sent": -1, "turns": 0}

    def stalled() -> bool:
        if user.paused and user.sent == still["sent"]:
            still["turns"] += 1
        else:
            still["sent"], still["turns"] = user.sent, 0
        return still["turns"] >= 50

    pair.loop.until(stalled, timeout=30, what="the user paused by backpressure")
    assert user.sent < len(payload)
    # Now read, a little at a time.
    reactor = pair.loop.reactor

    def readSome() -> None:
        if len(target.received) >= len(payload):
            return
        target.transport.resumeProducing()  # type: ignore[union-attr]
        reactor.callLater(0.002, pauseAgain)

    def pauseAgain() -> None:
        target.transport.pauseProducing()  # type: ignore[union-attr]
        reactor.callLater(0.002, readSome)

    readSome()
    pair.loop.until(
        lambda: len(target.received) >= len(payload), timeout=90, what="the whole payload"
    )
    assert bytes(target.received) == payload
