"""
L{nodepass.relay.Relay} on real sockets (127.0.0.1), spliced and with splicing off.

Each test runs its own epoll reactor (never the global one), driven by L{Loop.until}: the
reactor iterates until a condition holds or a deadline passes.  A relay joins an accepted
connection (the I{user}) to a connection it dials (the I{target}), as the single-end
forwarder does; the user and target ends are plain Twisted protocols of the same reactor.
Every test runs twice: with zero-copy splicing (checked to be in use) and on the plain path.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass._compat import splice
from nodepass.limits import RateLimiter
from nodepass.relay import Relay, RelayProtocol
from nodepass.stats import Counters

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
MiB = 1 << 20


def openFDs() -> int:
    return len(os.listdir("/proc/self/fd"))


class Loop:
    """
    A private epoll reactor and a way to run it until something happens.
    """

    def __init__(self) -> None:
        self.reactor: Any = EPollReactor()

    def until(self, condition: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout}s")
            self.reactor.iterate(0.01)

    def close(self) -> None:
        reactor = self.reactor
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionError("test over")))
        reactor.waker.connectionLost(None)
        reactor._poller.close()


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """
    A test end: records what it receives, its end of input and its loss; closes on end of
    input unless told to keep writing.
    """

    closeOnEOF = True

    def __init__(self) -> None:
        self.received = bytearray()
        self.eof = False
        self.lost: Failure | None = None
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.closeOnEOF:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = reason


class Target(RelayProtocol):
    """
    The dialled end: tells the user once it is connected.
    """

    def __init__(self, onConnected: Callable[[], None]) -> None:
        super().__init__()
        self.onConnected = onConnected

    def connectionMade(self) -> None:
        super().connectionMade()
        self.onConnected()


class User(RelayProtocol):
    """
    An accepted user connection: pause, dial the target, join a relay, resume.
    """

    factory: Forwarder

    def connectionMade(self) -> None:
        super().connectionMade()
        if not (self.factory.waitFor or self.factory.waitForEOF):
            self.dial()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        waiting = self.factory.waitFor
        if self.relay is None and waiting and sum(map(len, self.pending)) >= waiting:
            self.factory.waitFor = 0
            self.dial()

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        if self.relay is None and self.factory.waitForEOF:
            self.dial()

    def dial(self) -> None:
        self.gate.pause("connect")
        forwarder = self.factory
        reactor = forwarder.loop.reactor

        class Dial(ClientFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return target

        def made() -> None:
            relay = Relay(
                reactor, forwarder.counters, forwarder.limiter, forwarder.idle, forwarder.ended
            )
            forwarder.relays.append(relay)
            if forwarder.prefix:
                target.transport.write(forwarder.prefix)  # type: ignore[union-attr]
            relay.join(self, target)
            self.gate.resume("connect")

        target = Target(made)
        reactor.connectTCP(LOOPBACK, forwarder.targetPort, Dial())


class Forwarder(Factory):
    protocol = User  # type: ignore[assignment]

    def __init__(self, loop: Loop, targetPort: int) -> None:
        self.loop = loop
        self.targetPort = targetPort
        self.counters = Counters()
        self.limiter: RateLimiter | None = None
        self.idle = 0.0
        self.prefix = b""
        #: Read this many bytes from the user before dialling (they are then pending).
        self.waitFor = 0
        #: Read until the user's end of input before dialling.
        self.waitForEOF = False
        self.relays: list[Relay] = []
        self.endedRelays: list[Relay] = []

    def ended(self, relay: Relay) -> None:
        self.endedRelays.append(relay)


class Setup:
    """
    A target listener, a forwarder listener, and connected user/target test ends.
    """

    def __init__(self, loop: Loop, spliced: bool) -> None:
        self.loop = loop
        self.spliced = spliced
        self.targets: list[Peer] = []
        targets = self.targets

        class TargetFactory(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                peer = Peer()
                targets.append(peer)
                return peer

        reactor = loop.reactor
        self.targetPort = reactor.listenTCP(0, TargetFactory(), interface=LOOPBACK)
        self.forwarder = Forwarder(loop, self.targetPort.getHost().port)
        self.port = reactor.listenTCP(0, self.forwarder, interface=LOOPBACK)

    def connect(self) -> tuple[Peer, Peer, Relay]:
        user = Peer()

        class UserFactory(ClientFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return user

        before = len(self.forwarder.relays)
        self.loop.reactor.connectTCP(LOOPBACK, self.port.getHost().port, UserFactory())
        self.loop.until(lambda: len(self.forwarder.relays) > before and user.connected)
        relay = self.forwarder.relays[-1]
        target = self.targets[-1]
        self.loop.until(lambda: target.connected)
        assert (relay.spliced is not None) == self.spliced
        return user, target, relay


@pytest.fixture(params=[True, False], ids=["spliced", "plain"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    if request.param and splice.unsupported() is not None:
        pytest.skip(splice.unsupported() or "")
    saved = splice.enabled
    splice.enabled = request.param
    loop = Loop()
    try:
        yield Setup(loop, request.param)
    finally:
        splice.enabled = saved
        loop.close()


def pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i * 7) % 251 for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def test_bytesExactBothWays(setup: Setup) -> None:
    user, target, _ = setup.connect()
    up, down = pattern(16 * MiB, 1), pattern(16 * MiB, 2)
    user.transport.write(up)  # type: ignore[union-attr]
    target.transport.write(down)  # type: ignore[union-attr]
    setup.loop.until(lambda: len(target.received) >= len(up) and len(user.received) >= len(down))
    assert bytes(target.received) == up
    assert bytes(user.received) == down
    counters = setup.forwarder.counters
    assert (counters.tcprx, counters.tcptx) == (len(up), len(down))


def transferred(setup: Setup, user: Peer, target: Peer, up: bytes, down: bytes) -> None:
    setup.loop.until(lambda: len(target.received) >= len(up) and len(user.received) >= len(down))
    assert bytes(target.received) == up
    assert bytes(user.received) == down


def ended(setup: Setup, *peers: Peer) -> None:
    setup.loop.until(
        lambda: (
            all(peer.lost is not None for peer in peers)
            and len(setup.forwarder.endedRelays) == len(setup.forwarder.relays)
        )
    )


def test_queuedAndPendingBytesGoFirstInOrder(setup: Setup) -> None:
    setup.forwarder.prefix = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    setup.forwarder.waitFor = 5
    user = Peer()
    loop = setup.loop

    class UserFactory(ClientFactory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return user

    loop.reactor.connectTCP(LOOPBACK, setup.port.getHost().port, UserFactory())
    loop.until(lambda: user.connected)
    user.transport.write(b"first")  # type: ignore[union-attr]
    loop.until(lambda: bool(setup.forwarder.relays) and bool(setup.targets))
    target = setup.targets[-1]
    assert (setup.forwarder.relays[-1].spliced is not None) == setup.spliced
    body = pattern(4 * MiB, 3)
    user.transport.write(body)  # type: ignore[union-attr]
    expected = setup.forwarder.prefix + b"first" + body
    loop.until(lambda: len(target.received) >= len(expected))
    assert bytes(target.received) == expected
    # The PROXY header was written by the forwarder, not read from the user.
    assert setup.forwarder.counters.tcprx == len(b"first") + len(body)


def test_halfCloseFromTheUser(setup: Setup) -> None:
    user, target, relay = setup.connect()
    target.closeOnEOF = False
    user.transport.write(b"request")  # type: ignore[union-attr]
    user.transport.loseWriteConnection()  # type: ignore[union-attr]
    setup.loop.until(lambda: target.eof)
    assert bytes(target.received) == b"request"
    # The other direction still works after the half-close.
    answer = pattern(2 * MiB, 4)
    target.transport.write(answer)  # type: ignore[union-attr]
    setup.loop.until(lambda: len(user.received) >= len(answer))
    assert bytes(user.received) == answer
    assert not relay.ended and user.lost is None
    target.transport.loseWriteConnection()  # type: ignore[union-attr]
    setup.loop.until(lambda: user.eof)
    # The user closes on its end of input; then the relay is done with both.
    setup.loop.until(lambda: relay.ended and user.lost is not None)
    target.transport.loseConnection()  # type: ignore[union-attr]
    ended(setup, user, target)


def test_halfCloseFromTheTarget(setup: Setup) -> None:
    user, target, relay = setup.connect()
    user.closeOnEOF = False
    target.transport.write(b"banner")  # type: ignore[union-attr]
    target.transport.loseWriteConnection()  # type: ignore[union-attr]
    setup.loop.until(lambda: user.eof)
    assert bytes(user.received) == b"banner"
    body = pattern(2 * MiB, 5)
    user.transport.write(body)  # type: ignore[union-attr]
    setup.loop.until(lambda: len(target.received) >= len(body))
    assert bytes(target.received) == body
    user.transport.loseConnection()  # type: ignore[union-attr]
    ended(setup, user, target)
    assert relay.ended


def test_slowReaderPausesTheWriter(setup: Setup) -> None:
    user, target, relay = setup.connect()
    target.transport.pauseProducing()  # type: ignore[union-attr]
    body = pattern(64 * MiB, 6)
    userTransport: Any = user.transport
    userTransport.write(body)

    def queuedAtUser() -> int:
        queued: int = userTransport._tempDataLen
        offset: int = userTransport.offset
        return len(userTransport.dataBuffer) - offset + queued

    def relayStopped() -> bool:
        if relay.spliced is not None:
            end = relay.spliced.ends[0]
            return not end.reading and end.outbound.full
        assert relay.local is not None
        return "peer" in relay.local.gate.reasons

    setup.loop.until(relayStopped)
    # The kernel's buffers on the way still fill; then nothing more leaves the user.
    seen = [queuedAtUser()]

    def settled() -> bool:
        seen.append(queuedAtUser())
        return len(seen) > 30 and len(set(seen[-30:])) == 1

    setup.loop.until(settled)
    # Everything in flight (socket buffers, the pipe or Twisted's buffer) is bounded, far
    # below the 64 MiB written.
    assert len(body) - seen[-1] < 32 * MiB
    assert relayStopped()
    target.transport.resumeProducing()  # type: ignore[union-attr]
    setup.loop.until(lambda: len(target.received) >= len(body), timeout=60)
    assert bytes(target.received) == body


def test_rateIsEnforced(setup: Setup) -> None:
    rate = 4 * MiB
    setup.forwarder.limiter = RateLimiter(rate, setup.loop.reactor)
    user, target, _ = setup.connect()
    body = pattern(12 * MiB, 7)
    started = time.monotonic()
    user.transport.write(body)  # type: ignore[union-attr]
    setup.loop.until(lambda: len(target.received) >= len(body), timeout=30)
    elapsed = time.monotonic() - started
    # One second of burst, then the rate: (12 - 4) / 4 = 2 s.
    assert 1.6 < elapsed < 6.0, elapsed
    assert bytes(target.received) == body


def test_readTimeoutCloses(setup: Setup) -> None:
    setup.forwarder.idle = 0.5
    user, target, relay = setup.connect()
    user.transport.write(b"ping")  # type: ignore[union-attr]
    setup.loop.until(lambda: bytes(target.received) == b"ping")
    started = time.monotonic()
    ended(setup, user, target)
    assert time.monotonic() - started > 0.3
    assert relay.ended


def test_userResetClosesTheTarget(setup: Setup) -> None:
    user, target, relay = setup.connect()
    target.transport.write(b"hello")  # type: ignore[union-attr]
    setup.loop.until(lambda: bytes(user.received) == b"hello")
    user.transport.abortConnection()  # type: ignore[union-attr]
    ended(setup, user, target)
    assert relay.ended


def test_targetResetClosesTheUser(setup: Setup) -> None:
    user, target, relay = setup.connect()
    user.transport.write(b"hello")  # type: ignore[union-attr]
    setup.loop.until(lambda: bytes(target.received) == b"hello")
    target.transport.abortConnection()  # type: ignore[union-attr]
    ended(setup, user, target)
    assert relay.ended


def test_closeFlushesBothWays(setup: Setup) -> None:
    user, target, relay = setup.connect()
    target.transport.pauseProducing()  # type: ignore[union-attr]
    body = pattern(8 * MiB, 8)
    user.transport.write(body)  # type: ignore[union-attr]
    setup.loop.until(lambda: setup.forwarder.counters.tcprx > MiB)
    relay.close()
    target.transport.resumeProducing()  # type: ignore[union-attr]
    ended(setup, user, target)
    # What the relay had read was still written before the close.
    assert bytes(target.received) == body[: len(target.received)]
    assert setup.forwarder.counters.tcprx == len(target.received)


def test_abortDropsBoth(setup: Setup) -> None:
    user, target, relay = setup.connect()
    user.transport.write(b"x" * 1000)  # type: ignore[union-attr]
    setup.loop.until(lambda: len(target.received) == 1000)
    relay.abort()
    ended(setup, user, target)
    assert relay.ended


def test_noDescriptorLeaks(setup: Setup) -> None:
    before = openFDs()
    for n in range(5):
        user, target, _ = setup.connect()
        up, down = pattern(MiB, n), pattern(MiB, n + 10)
        user.transport.write(up)  # type: ignore[union-attr]
        target.transport.write(down)  # type: ignore[union-attr]
        transferred(setup, user, target, up, down)
        (user if n % 2 else target).transport.loseConnection()  # type: ignore[union-attr]
        ended(setup, user, target)
    assert openFDs() == before


# -- pins of the kernel behaviour the splicer relies on (real TCP on 127.0.0.1) ----------


@pytest.fixture
def tcpPair() -> Iterator[tuple[socket.socket, socket.socket]]:
    if splice.unsupported() is not None:
        pytest.skip(splice.unsupported() or "")
    listener = socket.create_server((LOOPBACK, 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 5)[0], "not readable within 5 s"


def test_pinKernelSpliceFromTCP(tcpPair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcpPair
    system = splice.System()
    r, w = system.pipe()
    try:
        # Nothing to read: EAGAIN, not 0.
        with pytest.raises(BlockingIOError):
            system.splice(server.fileno(), w, splice.CHUNK)
        client.sendall(b"spliced")
        readable(server)
        assert system.splice(server.fileno(), w, splice.CHUNK) == 7
        assert os.read(r, 100) == b"spliced"
        # End of input: 0.
        client.shutdown(socket.SHUT_WR)
        readable(server)
        assert system.splice(server.fileno(), w, splice.CHUNK) == 0
    finally:
        system.close(r)
        system.close(w)


def test_pinKernelSpliceErrors(tcpPair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcpPair
    system = splice.System()
    r, w = system.pipe()
    try:
        # An empty pipe: EAGAIN.
        with pytest.raises(BlockingIOError):
            system.splice(r, server.fileno(), 100)
        # A reset peer: an OSError other than EAGAIN, on reading and on writing.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        readable(server)
        with pytest.raises(ConnectionResetError):
            system.splice(server.fileno(), w, splice.CHUNK)
    finally:
        system.close(r)
        system.close(w)


def test_onlyTheFirstPipesAreLarge(monkeypatch: pytest.MonkeyPatch) -> None:
    if splice.unsupported() is not None:
        pytest.skip(splice.unsupported() or "")
    import fcntl

    monkeypatch.setattr(splice, "LARGE_PIPES", 2)
    monkeypatch.setattr(splice, "_large", set())
    system = splice.System()
    pipes = [system.pipe() for _ in range(3)]
    try:
        sizes = [fcntl.fcntl(w, 1032) for _, w in pipes]  # F_GETPIPE_SZ
        assert sizes[:2] == [splice.PIPE_SIZE] * 2
        assert sizes[2] < splice.PIPE_SIZE
    finally:
        for r, w in pipes:
            system.close(r)
            system.close(w)
    assert splice._large == set()


def test_endOfInputBeforeTheJoinHalfClosesAfterThePendingBytes(setup: Setup) -> None:
    setup.forwarder.waitForEOF = True
    user = Peer()
    user.closeOnEOF = False
    loop = setup.loop

    class UserFactory(ClientFactory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return user

    loop.reactor.connectTCP(LOOPBACK, setup.port.getHost().port, UserFactory())
    loop.until(lambda: user.connected)
    user.transport.write(b"whole request")  # type: ignore[union-attr]
    user.transport.loseWriteConnection()  # type: ignore[union-attr]
    loop.until(lambda: bool(setup.forwarder.relays) and bool(setup.targets))
    relay, target = setup.forwarder.relays[-1], setup.targets[-1]
    target.closeOnEOF = False
    assert (relay.spliced is not None) == setup.spliced
    loop.until(lambda: target.eof)
    assert bytes(target.received) == b"whole request"
    answer = pattern(MiB, 9)
    target.transport.write(answer)  # type: ignore[union-attr]
    target.transport.loseWriteConnection()  # type: ignore[union-attr]
    loop.until(lambda: user.eof)
    assert bytes(user.received) == answer
    loop.until(lambda: relay.ended)
    user.transport.loseConnection()  # type: ignore[union-attr]
    target.transport.loseConnection()  # type: ignore[union-attr]
    ended(setup, user, target)
