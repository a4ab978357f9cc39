"""
Tests for L{nodepass._compat.splice}: the descriptor logic of zero-copy relaying over a fake
kernel (sockets and pipes as byte buffers, no file descriptors), the switch and the checks,
and pins of the Twisted internals it relies on.

The kernel's own behaviour (EAGAIN, 0 at end of input, errors on real TCP sockets) is pinned
in C{tests/integration/test_splice.py}.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest
from twisted.internet import abstract, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass._compat import splice
from nodepass._compat.splice import Splice, attach

# -- a fake kernel ------------------------------------------------------------------------


class FakeSocket:
    """
    One socket: what the peer sent and we may read, and what we sent.
    """

    def __init__(self) -> None:
        self.readable = bytearray()
        self.eof = False
        self.readError: int | None = None
        self.sent = bytearray()
        #: How many more bytes the socket takes (its free send buffer).
        self.room = 1 << 30
        self.writeError: int | None = None
        self.shut = False


class FakePipe:
    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray()
        self.capacity = capacity


class FakeSystem:
    """
    L{splice.System} over in-memory sockets and pipes; records every open pipe descriptor.
    """

    def __init__(self, pipeCapacity: int = 1024) -> None:
        self.pipeCapacity = pipeCapacity
        self.objects: dict[int, Any] = {}
        self.next = 100
        self.open: set[int] = set()
        self.failPipes = 0

    def socket(self) -> tuple[int, FakeSocket]:
        fd = self.next
        self.next += 1
        sock = FakeSocket()
        self.objects[fd] = sock
        return fd, sock

    def pipe(self) -> tuple[int, int]:
        if self.failPipes:
            self.failPipes -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        pipe = FakePipe(self.pipeCapacity)
        r, w = self.next, self.next + 1
        self.next += 2
        self.objects[r] = self.objects[w] = pipe
        self.open |= {r, w}
        return r, w

    def splice(self, src: int, dst: int, count: int) -> int:
        source, target = self.objects[src], self.objects[dst]
        if isinstance(source, FakeSocket):
            assert dst in self.open
            if source.readError is not None:
                raise OSError(source.readError, os.strerror(source.readError))
            if not source.readable:
                if source.eof:
                    return 0
                raise BlockingIOError(errno.EAGAIN, "empty socket")
            room = target.capacity - len(target.buffer)
            if room <= 0:
                raise BlockingIOError(errno.EAGAIN, "full pipe")
            n: int = min(count, room, len(source.readable))
            target.buffer += source.readable[:n]
            del source.readable[:n]
            return n
        assert src in self.open
        if not source.buffer:
            raise BlockingIOError(errno.EAGAIN, "empty pipe")
        return self._send(target, bytes(source.buffer[:count]), source.buffer)

    def _send(self, target: FakeSocket, data: bytes, origin: bytearray | None) -> int:
        if target.writeError is not None:
            raise OSError(target.writeError, os.strerror(target.writeError))
        assert not target.shut
        if target.room <= 0:
            raise BlockingIOError(errno.EAGAIN, "full socket")
        n = min(len(data), target.room)
        target.room -= n
        target.sent += data[:n]
        if origin is not None:
            del origin[:n]
        return n

    def write(self, fd: int, data: bytes) -> int:
        return self._send(self.objects[fd], data, None)

    def close(self, fd: int) -> None:
        self.open.remove(fd)

    def shutdownWrite(self, transport: Any) -> None:
        transport.sock.shut = True


class FakeFDSet:
    """
    The reactor side: which descriptors are registered for reading and writing.
    """

    def __init__(self) -> None:
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.eof = 0
        self.lost: list[Failure] = []

    def readConnectionLost(self) -> None:
        self.eof += 1

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost.append(reason)


class FakeTransport:
    """
    The Twisted TCP connection's fields and methods the splicer uses, recording calls.
    """

    def __init__(self, system: FakeSystem, reactor: FakeFDSet) -> None:
        self.fd, self.sock = system.socket()
        self.reactor = reactor
        self.protocol = Recorder()
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self._writeDisconnected = False
        self.calls: list[str] = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "Fake"

    def stopReading(self) -> None:
        self.calls.append("stopReading")

    def stopWriting(self) -> None:
        self.calls.append("stopWriting")

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")

    def stopProducing(self) -> None:
        self.calls.append("stopProducing")

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")

    def connectionLost(self, reason: Failure) -> None:
        self.calls.append("connectionLost")
        self.protocol.connectionLost(reason)


class World:
    """
    Two fake transports, spliced, and what the splice reported.
    """

    def __init__(self, pipeCapacity: int = 1024, chunk: int = 4096, **kwargs: Any) -> None:
        self.system = FakeSystem(pipeCapacity)
        self.reactor = FakeFDSet()
        self.a = FakeTransport(self.system, self.reactor)
        self.b = FakeTransport(self.system, self.reactor)
        self.reads: list[tuple[int, int]] = []
        self.kwargs = kwargs
        self.chunk = chunk

    def attach(self) -> Splice:
        spliced = attach(
            self.a,
            self.b,
            lambda index, n: self.reads.append((index, n)),
            chunk=self.chunk,
            system=self.system,  # type: ignore[arg-type]
            **self.kwargs,
        )
        assert spliced is not None
        self.splice = spliced
        self.endA, self.endB = spliced.ends
        return spliced

    def pump(self) -> None:
        """
        Let the reactor run: every registered descriptor reads or writes until nothing moves.
        """
        for _ in range(10_000):
            before = self.state()
            for end in list(self.reactor.readers):
                end.doRead()
            for end in list(self.reactor.writers):
                end.doWrite()
            if self.state() == before:
                return
        raise AssertionError("the splice never settles")

    def state(self) -> Any:
        return (
            len(self.a.sock.readable),
            len(self.b.sock.readable),
            len(self.a.sock.sent),
            len(self.b.sock.sent),
            frozenset(self.reactor.readers),
            frozenset(self.reactor.writers),
            tuple(self.a.calls),
            tuple(self.b.calls),
        )


# -- attaching ----------------------------------------------------------------------------


def test_attachDetachesTwistedAndShadowsItsMethods() -> None:
    w = World()
    w.attach()
    for transport in (w.a, w.b):
        assert transport.calls == ["stopReading", "stopWriting"]
        for name in splice.SHADOWED:
            assert name in transport.__dict__
    # Both ends read; nothing is waiting to be written.
    assert w.reactor.readers == {w.endA, w.endB}
    assert w.reactor.writers == set()
    assert w.system.open and len(w.system.open) == 4


def test_queuedAndExtraBytesGoFirstInOrder() -> None:
    w = World(extra=(b"", b"-pending"))
    w.b.dataBuffer = b"xxPROXY"
    w.b.offset = 2
    w.b._tempDataBuffer = [b" header", b"\r\n"]
    w.b._tempDataLen = 9
    w.a.sock.readable += b" and the rest"
    w.attach()
    assert (w.b.dataBuffer, w.b.offset, w.b._tempDataBuffer, w.b._tempDataLen) == (b"", 0, [], 0)
    w.pump()
    assert bytes(w.b.sock.sent) == b"PROXY header\r\n-pending and the rest"
    # Only what was read from the socket is reported as read.
    assert w.reads == [(0, len(b" and the rest"))]


def test_prefixWaitsForTheSocketToTakeIt() -> None:
    w = World(extra=(b"", b"0123456789"))
    w.b.sock.room = 4
    w.a.sock.readable += b"abc"
    w.attach()
    w.pump()
    assert bytes(w.b.sock.sent) == b"0123"
    assert w.endB in w.reactor.writers
    w.b.sock.room = 100
    w.pump()
    assert bytes(w.b.sock.sent) == b"0123456789abc"
    assert w.endB not in w.reactor.writers


def test_noPipeLeavesTheTransportsAlone() -> None:
    w = World()
    w.system.failPipes = 2
    with capturedLogs() as events:
        spliced = attach(w.a, w.b, lambda index, n: None, system=w.system)  # type: ignore[arg-type]
    assert spliced is None
    assert w.a.calls == w.b.calls == []
    assert "pauseProducing" not in w.a.__dict__
    assert w.system.open == set()
    assert len(events) <= 1  # logged once per process


def test_startsPausedAndWithEndOfInputAsTold() -> None:
    w = World(paused=(True, False), readDone=(False, True))
    w.attach()
    assert w.reactor.readers == set()
    w.a.resumeProducing()
    assert w.reactor.readers == {w.endA}


# -- moving bytes -------------------------------------------------------------------------


def test_bytesMoveBothWaysAndAreReported() -> None:
    w = World(pipeCapacity=100)
    w.attach()
    up, down = bytes(range(256)) * 10, b"down" * 300
    w.a.sock.readable += up
    w.b.sock.readable += down
    w.pump()
    assert bytes(w.b.sock.sent) == up
    assert bytes(w.a.sock.sent) == down
    assert sum(n for index, n in w.reads if index == 0) == len(up)
    assert sum(n for index, n in w.reads if index == 1) == len(down)
    # Each read is bounded by the pipe.
    assert max(n for _, n in w.reads) <= 100


def test_slowReaderStopsTheReadingAndTheBytesStayBounded() -> None:
    w = World(pipeCapacity=100)
    w.attach()
    w.b.sock.room = 0
    w.a.sock.readable += b"x" * 10_000
    w.pump()
    # The pipe is full: reading stopped, the destination waits to be writable.
    assert w.endA not in w.reactor.readers
    assert w.endB in w.reactor.writers
    assert len(w.a.sock.readable) == 10_000 - 100
    assert sum(n for _, n in w.reads) == 100
    w.b.sock.room = 1 << 30
    w.pump()
    assert bytes(w.b.sock.sent) == b"x" * 10_000
    assert w.endA in w.reactor.readers
    assert w.endB not in w.reactor.writers


def test_pauseAndResumeThroughTheTransport() -> None:
    w = World()
    w.attach()
    # The relay's gate calls the transport's own methods: they now act on the splice.
    w.a.pauseProducing()
    assert w.endA not in w.reactor.readers
    w.a.sock.readable += b"held"
    w.pump()
    assert w.b.sock.sent == b""
    w.a.resumeProducing()
    w.pump()
    assert w.b.sock.sent == b"held"
    assert "pauseProducing" not in w.a.calls


def test_theTransportsOwnEventsAndRegistrationsAreInert() -> None:
    w = World()
    w.attach()
    w.a.sock.readable += b"ours"
    # A stale event for the Twisted transport, and its own stop/start calls, change nothing.
    assert w.a.doRead() is None  # type: ignore[func-returns-value]
    assert w.a.doWrite() is None  # type: ignore[func-returns-value]
    w.a.stopWriting()
    w.a.startWriting()
    assert w.reactor.readers == {w.endA, w.endB}
    assert w.reactor.writers == set()
    # stopReading and startReading pause and resume the splice.
    w.a.stopReading()
    assert w.endA not in w.reactor.readers
    w.a.startReading()
    w.pump()
    assert w.b.sock.sent == b"ours"


def test_staleReadEventIsIgnored() -> None:
    w = World()
    w.attach()
    w.a.pauseProducing()
    w.a.sock.readable += b"late"
    w.endA.doRead()
    assert w.b.sock.sent == b""


# -- end of input and closing -------------------------------------------------------------


def test_endOfInputAfterTheBytesAndHalfClose() -> None:
    w = World()
    w.attach()
    w.b.sock.room = 2
    w.a.sock.readable += b"last"
    w.a.sock.eof = True
    w.pump()
    # End of input reaches the protocol once; A is not read again.
    assert w.a.protocol.eof == 1
    assert w.endA not in w.reactor.readers
    # The relay half-closes B: that waits until B took everything.
    w.b.loseWriteConnection()
    assert not w.b.sock.shut
    w.b.sock.room = 100
    w.pump()
    assert w.b.sock.sent == b"last"
    assert w.b.sock.shut
    assert w.b._writeDisconnected
    # The A -> B pipe is closed; B -> A still works.
    assert len(w.system.open) == 2
    w.b.sock.readable += b"answer"
    w.pump()
    assert w.a.sock.sent == b"answer"


def test_loseConnectionFlushesThenHandsBack() -> None:
    w = World()
    w.attach()
    w.b.sock.room = 3
    w.a.sock.readable += b"flush me"
    w.pump()
    w.b.loseConnection()
    assert "loseConnection" not in w.b.calls
    assert w.endB in w.reactor.writers
    w.b.sock.room = 100
    w.pump()
    assert w.b.sock.sent == b"flush me"
    # Handed back: our descriptor is gone, Twisted's own method closes it.
    assert w.b.calls[-1] == "loseConnection"
    assert w.endB not in w.reactor.readers | w.reactor.writers
    for name in splice.SHADOWED:
        assert name not in w.b.__dict__
    # Nothing can be written to B any more: A stopped reading.
    assert w.endA not in w.reactor.readers
    w.a.loseConnection()
    assert w.a.calls[-1] == "loseConnection"
    assert w.system.open == set()
    assert w.splice.done


def test_closingTwiceIsOneClose() -> None:
    w = World()
    w.attach()
    w.endA.loseConnection()
    w.endA.loseConnection()
    w.endA.abortConnection()
    assert w.a.calls.count("loseConnection") == 1
    assert "abortConnection" not in w.a.calls


def test_abortHandsBackAtOnce() -> None:
    w = World()
    w.attach()
    w.b.sock.room = 0
    w.a.sock.readable += b"dropped"
    w.pump()
    w.b.abortConnection()
    assert w.b.calls[-1] == "abortConnection"
    assert w.endB not in w.reactor.writers
    w.a.abortConnection()
    assert w.a.calls[-1] == "abortConnection"
    assert w.system.open == set()


def test_readErrorLosesThatEndAndFlushesTheOther() -> None:
    w = World()
    w.attach()
    w.b.sock.room = 0
    w.a.sock.readable += b"before"
    w.pump()
    # A reset arrives while A waits for B (not reading: the pipe may be full).
    w.a.sock.readError = errno.ECONNRESET
    w.pump()
    assert w.a.protocol.lost == []
    w.b.sock.room = 100
    w.pump()
    # What was read from A before still reached B; then A's error was found.
    assert w.b.sock.sent == b"before"
    assert w.a.calls[-1] == "connectionLost"
    assert w.a.protocol.lost[0].check(ConnectionLost)
    w.b.loseConnection()
    assert w.b.calls[-1] == "loseConnection"
    assert w.system.open == set()


def test_writeErrorLosesTheDestination() -> None:
    w = World()
    w.attach()
    w.b.sock.writeError = errno.EPIPE
    w.a.sock.readable += b"nowhere"
    w.pump()
    assert w.b.calls[-1] == "connectionLost"
    assert w.b.protocol.lost[0].check(ConnectionLost)
    # A is not read any more (its bytes have nowhere to go); the relay closes it.
    assert w.endA not in w.reactor.readers
    w.a.loseConnection()
    assert w.a.calls[-1] == "loseConnection"
    assert w.system.open == set()


def test_reactorDroppingTheDescriptorLosesTheEnd() -> None:
    w = World()
    w.attach()
    w.endA.connectionLost(Failure(ConnectionLost()))
    assert w.a.calls[-1] == "connectionLost"
    assert w.endA not in w.reactor.readers


def test_endOfInputOnAProtocolThatCannotHalfClose() -> None:
    w = World()
    w.a.protocol = Protocol()  # type: ignore[assignment]
    w.attach()
    w.a.sock.eof = True
    w.pump()
    assert w.a.calls[-1] == "connectionLost"


# -- the switch and the checks ------------------------------------------------------------


def test_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "enabled", True)
    splice.configure({"NP_SPLICE": "0"})
    assert splice.enabled is False
    splice.configure({})
    assert splice.enabled is True
    splice.configure({"NP_SPLICE": "1"})
    assert splice.enabled is True


def connection(test: Any = None) -> tuple[tcp.Connection, list[socket.socket]]:
    mine, other = socket.socketpair()
    conn = tcp.Connection(mine, Protocol(), MemoryReactor())
    conn.connected = True
    return conn, [mine, other]


def test_spliceableOnlyForOpenPlainTCP(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "enabled", True)
    conn, sockets = connection()
    try:
        assert splice.spliceable(conn) is (splice.unsupported() is None)
        assert not splice.spliceable(StringTransport())
        monkeypatch.setattr(splice, "enabled", False)
        assert not splice.spliceable(conn)
        monkeypatch.setattr(splice, "enabled", True)
        conn.disconnecting = True
        assert not splice.spliceable(conn)
        conn.disconnecting = False
        conn.producer = object()  # type: ignore[assignment]
        assert not splice.spliceable(conn)
    finally:
        for s in sockets:
            s.close()


def test_untestedTwistedFallsBackAndLogsOnce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "enabled", True)
    monkeypatch.setattr(splice, "twistedVersion", "99.1.0")
    monkeypatch.setattr(splice, "_warned", False)
    conn, sockets = connection()
    try:
        with capturedLogs() as events:
            assert not splice.spliceable(conn)
            assert not splice.spliceable(conn)
        assert len(events) == 1
        assert "99.1.0" in events[0]["reason"]
    finally:
        for s in sockets:
            s.close()


# -- pins of the Twisted internals used ---------------------------------------------------


def test_pinTwistedRelease() -> None:
    from twisted.copyright import version

    assert int(version.split(".")[0]) in splice.TESTED_TWISTED


def test_pinConnectionFieldsAndMethods() -> None:
    conn, sockets = connection()
    try:
        for name in splice.PRIVATE_FIELDS:
            assert hasattr(conn, name), name
        for name in (*splice.SHADOWED, "stopReading", "stopWriting", "connectionLost"):
            assert callable(getattr(conn, name)), name
        assert conn.fileno() == sockets[0].fileno()
        # Twisted queues a write in _tempDataBuffer until the reactor writes it.
        conn.write(b"queued")
        assert (conn._tempDataBuffer, conn._tempDataLen) == ([b"queued"], 6)
        # An instance attribute shadows the method and removing it restores Twisted's.
        conn.__dict__["loseConnection"] = lambda: None
        conn.loseConnection()
        assert not conn.disconnecting
        conn.__dict__.pop("loseConnection")
        conn.loseConnection()
        assert conn.disconnecting
    finally:
        for s in sockets:
            s.close()


def test_pinLoseConnectionAfterHalfCloseClosesAtOnce() -> None:
    # After our own shutdown(SHUT_WR) we set _writeDisconnected, so Twisted's
    # loseConnection closes without writing again.
    conn, sockets = connection()
    protocol = Recorder()
    conn.protocol = protocol
    try:
        conn._writeDisconnected = True
        abstract.FileDescriptor.loseConnection(conn)
        assert len(protocol.lost) == 1
    finally:
        for s in sockets:
            s.close()


def test_pinReadConnectionLostReachesTheProtocol() -> None:
    conn, sockets = connection()
    protocol = Recorder()
    conn.protocol = protocol
    try:
        conn.readConnectionLost(Failure(ConnectionDone()))
        assert protocol.eof == 1
        assert protocol.lost == []
    finally:
        for s in sockets:
            s.close()


def test_pinOneSelectablePerDescriptor() -> None:
    # Why the transport must stop reading and writing before our descriptor is
    # registered: the epoll reactor keeps one selectable per file descriptor.
    from twisted.internet.epollreactor import EPollReactor

    reactor: Any = EPollReactor()
    r, w = os.pipe()
    try:

        class Descriptor:
            def __init__(self) -> None:
                self.fileno = lambda: r

        first, second = Descriptor(), Descriptor()
        reactor.addReader(first)
        reactor.addWriter(second)

        def readers() -> list[Any]:
            return [x for x in reactor.getReaders() if isinstance(x, Descriptor)]

        assert readers() == [second]
        # Removing the first removes by descriptor number: the second's reading too.
        reactor.removeReader(first)
        assert readers() == []
        reactor.removeWriter(second)
    finally:
        os.close(r)
        os.close(w)
        reactor.waker.connectionLost(None)
        reactor._poller.close()
