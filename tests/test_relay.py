"""
Tests for L{nodepass.relay}: the multi-reason L{Gate}, forwarding with counters,
backpressure, rate limiting, half-close, closing and the idle timeout.

Everything runs in memory: each end is a L{RelayProtocol} on a L{StringTransport} that also
records C{loseWriteConnection}, time is a L{Clock}, and connection loss is delivered by hand.
Only L{directWriter}, which reaches into Twisted's TCP transport, is tested on a local
socket pair (still no reactor and no ports).
"""

from __future__ import annotations

import socket

from attrs import define, field
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nodepass._compat.directwrite import directWriter
from nodepass.limits import RateLimiter
from nodepass.relay import Gate, Relay, RelayProtocol
from nodepass.stats import Counters


class Transport(StringTransport):
    """
    A L{StringTransport} that records half-closes as well.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


def end(halfClose: bool = True) -> tuple[RelayProtocol, Transport]:
    protocol = RelayProtocol()
    protocol.halfClose = halfClose
    transport = Transport()
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: RelayProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


@define
class Pair:
    """
    A relay between two in-memory ends, plus what it reports.
    """

    clock: Clock
    counters: Counters
    relay: Relay
    local: RelayProtocol
    remote: RelayProtocol
    lt: Transport
    rt: Transport
    ended: list[Relay] = field(factory=list)


def pair(
    limiter: RateLimiter | None = None,
    idle: float = 0.0,
    join: bool = True,
    localHalfClose: bool = True,
    remoteHalfClose: bool = True,
    clock: Clock | None = None,
) -> Pair:
    clock = clock if clock is not None else Clock()
    counters = Counters()
    ended: list[Relay] = []
    relay = Relay(clock, counters, limiter, idle, ended.append)
    local, lt = end(localHalfClose)
    remote, rt = end(remoteHalfClose)
    if join:
        relay.join(local, remote)
    return Pair(clock, counters, relay, local, remote, lt, rt, ended)


# --- Gate ---------------------------------------------------------------------------------


def test_gatePausesOnceAndResumesWhenTheLastReasonIsGone() -> None:
    transport = StringTransport()
    gate = Gate(transport)
    gate.pause("rate")
    assert transport.producerState == "paused"
    gate.pause("peer")
    gate.pause("connect")
    assert gate.reasons == {"rate", "peer", "connect"}
    gate.resume("peer")
    gate.resume("rate")
    assert transport.producerState == "paused"
    gate.resume("connect")
    assert transport.producerState == "producing"
    assert gate.reasons == set()


def test_gateSameReasonTwiceNeedsOneResume() -> None:
    transport = StringTransport()
    gate = Gate(transport)
    gate.pause("rate")
    gate.pause("rate")
    gate.resume("rate")
    assert transport.producerState == "producing"


def test_gateResumingAnAbsentReasonDoesNothing() -> None:
    transport = StringTransport()
    gate = Gate(transport)
    gate.resume("rate")
    assert transport.producerState == "producing"
    gate.pause("connect")
    gate.resume("rate")
    assert transport.producerState == "paused"
    assert gate.reasons == {"connect"}


def test_gateProducerMethodsUseThePeerReason() -> None:
    transport = StringTransport()
    gate = Gate(transport)
    gate.pauseProducing()
    assert gate.reasons == {"peer"}
    assert transport.producerState == "paused"
    gate.resumeProducing()
    assert transport.producerState == "producing"


def test_gateStopProducingClosesTheTransport() -> None:
    transport = StringTransport()
    Gate(transport).stopProducing()
    assert transport.disconnecting


# --- join and forwarding ------------------------------------------------------------------


def test_joinRegistersEachGateAsThePeersStreamingProducer() -> None:
    p = pair()
    assert p.rt.producer is p.local.gate
    assert p.rt.streaming is True
    assert p.lt.producer is p.remote.gate
    assert p.lt.streaming is True
    assert p.local.peer is p.remote and p.remote.peer is p.local
    assert p.local.relay is p.relay and p.remote.relay is p.relay


def test_forwardsAndCountsBothWays() -> None:
    p = pair()
    p.local.dataReceived(b"hello ")
    p.local.dataReceived(b"world")
    p.remote.dataReceived(b"answer")
    assert p.rt.value() == b"hello world"
    assert p.lt.value() == b"answer"
    assert p.counters.tcprx == 11
    assert p.counters.tcptx == 6
    assert p.counters.udprx == p.counters.udptx == 0


def test_countersAreSharedAcrossRelays() -> None:
    clock = Clock()
    counters = Counters()
    for _ in range(3):
        relay = Relay(clock, counters)
        local, _ = end()
        remote, _ = end()
        relay.join(local, remote)
        local.dataReceived(b"12345")
        remote.dataReceived(b"12")
    assert (counters.tcprx, counters.tcptx) == (15, 6)


def test_dataBufferedBeforeJoinIsFlushedInOrder() -> None:
    p = pair(join=False)
    p.local.dataReceived(b"GET ")
    p.local.dataReceived(b"/ HTTP/1.1\r\n")
    p.remote.dataReceived(b"banner\r\n")
    assert p.rt.value() == p.lt.value() == b""
    p.relay.join(p.local, p.remote)
    assert p.rt.value() == b"GET / HTTP/1.1\r\n"
    assert p.lt.value() == b"banner\r\n"
    assert p.local.pending == p.remote.pending == []
    assert p.counters.tcprx == 16
    assert p.counters.tcptx == 8
    p.local.dataReceived(b"more")
    assert p.rt.value() == b"GET / HTTP/1.1\r\nmore"


def test_pendingEOFIsDeliveredAfterThePendingData() -> None:
    p = pair(join=False)
    p.local.dataReceived(b"last words")
    p.local.readConnectionLost()
    assert p.local.pendingEOF
    assert not p.rt.writeClosed
    p.relay.join(p.local, p.remote)
    assert p.rt.value() == b"last words"
    assert p.rt.writeClosed
    assert not p.lt.disconnecting and not p.rt.disconnecting


def test_endOfInputSaidAgainIsIgnored() -> None:
    # A side whose input ended before the join reads its end of input once more when the
    # relay resumes it: the peer is half-closed once, and the other way still works.
    p = pair(join=False)
    p.local.readConnectionLost()
    p.relay.join(p.local, p.remote)
    halfCloses = []
    p.rt.loseWriteConnection = lambda: halfCloses.append(True)  # type: ignore[method-assign]
    p.local.readConnectionLost()
    assert halfCloses == []
    p.remote.dataReceived(b"answer")
    assert p.lt.value() == b"answer"
    assert not p.lt.disconnecting and not p.rt.disconnecting


def test_pendingEOFOnBothSidesClosesBoth() -> None:
    p = pair(join=False)
    p.local.readConnectionLost()
    p.remote.readConnectionLost()
    p.relay.join(p.local, p.remote)
    assert p.lt.disconnecting and p.rt.disconnecting


def test_sideLostBeforeJoinClosesThePeerAndEnds() -> None:
    p = pair(join=False)
    p.local.dataReceived(b"early")
    lose(p.local)
    p.relay.join(p.local, p.remote)
    assert p.rt.value() == b"early"
    assert p.rt.disconnecting
    assert p.ended == []
    lose(p.remote)
    assert p.ended == [p.relay]


def test_bothLostBeforeJoinEndsOnce() -> None:
    p = pair(join=False)
    lose(p.local)
    lose(p.remote)
    p.relay.join(p.local, p.remote)
    assert p.ended == [p.relay]
    assert p.relay.ended


# --- backpressure ---------------------------------------------------------------------------


def test_slowRemotePausesLocalReading() -> None:
    p = pair()
    # The remote transport's buffer fills up: it pauses its producer, the local gate.
    p.rt.producer.pauseProducing()
    assert p.lt.producerState == "paused"
    assert p.rt.producerState == "producing"
    p.rt.producer.resumeProducing()
    assert p.lt.producerState == "producing"


def test_slowLocalPausesRemoteReading() -> None:
    p = pair()
    p.lt.producer.pauseProducing()
    assert p.rt.producerState == "paused"
    assert p.lt.producerState == "producing"
    p.lt.producer.resumeProducing()
    assert p.rt.producerState == "producing"


def test_consumerStopClosesTheProducingSide() -> None:
    p = pair()
    p.rt.producer.stopProducing()
    assert p.lt.disconnecting


# --- rate limit -----------------------------------------------------------------------------


def test_rateDebtPausesTheLocalSideForTheDelay() -> None:
    clock = Clock()
    p = pair(limiter=RateLimiter(1000, clock), clock=clock)
    p.local.dataReceived(b"x" * 1000)
    assert p.lt.producerState == "producing"
    p.local.dataReceived(b"x" * 500)
    # The data is written at once; the source waits out the debt.
    assert p.rt.value() == b"x" * 1500
    assert p.lt.producerState == "paused"
    assert p.local.gate.reasons == {"rate"}
    clock.advance(0.499)
    assert p.lt.producerState == "paused"
    clock.advance(0.001)
    assert p.lt.producerState == "producing"
    assert p.local.gate.reasons == set()


def test_rateRemoteSideUsesTheWriteBucket() -> None:
    clock = Clock()
    limiter = RateLimiter(1000, clock)
    p = pair(limiter=limiter, clock=clock)
    p.local.dataReceived(b"r" * 1000)
    # The read bucket is empty, the write bucket is still full.
    p.remote.dataReceived(b"w" * 1000)
    assert p.rt.producerState == "producing"
    p.remote.dataReceived(b"w" * 250)
    assert p.rt.producerState == "paused"
    assert p.lt.producerState == "producing"
    assert p.lt.value() == b"w" * 1250
    clock.advance(0.25)
    assert p.rt.producerState == "producing"


def test_noLimiterNeverPauses() -> None:
    p = pair()
    p.local.dataReceived(b"x" * 10_000_000)
    assert p.lt.producerState == "producing"
    assert p.clock.getDelayedCalls() == []


def test_ratePauseEndingFirstKeepsThePeerPause() -> None:
    clock = Clock()
    p = pair(limiter=RateLimiter(1000, clock), clock=clock)
    p.local.dataReceived(b"x" * 1500)
    p.rt.producer.pauseProducing()
    assert p.local.gate.reasons == {"rate", "peer"}
    clock.advance(0.5)
    assert p.lt.producerState == "paused"
    p.rt.producer.resumeProducing()
    assert p.lt.producerState == "producing"


def test_peerPauseEndingFirstKeepsTheRatePause() -> None:
    clock = Clock()
    p = pair(limiter=RateLimiter(1000, clock), clock=clock)
    p.rt.producer.pauseProducing()
    p.local.dataReceived(b"x" * 1500)
    assert p.lt.producerState == "paused"
    p.rt.producer.resumeProducing()
    assert p.lt.producerState == "paused"
    clock.advance(0.5)
    assert p.lt.producerState == "producing"


def test_rateChunksArrivingWhilePausedExtendThePause() -> None:
    # A TLS remote (TLSMemoryBIOProtocol._flushReceiveBIO) delivers one socket read as several
    # 32 KiB chunks, after pauseProducing was called; the pause must last until all the debt
    # is paid.
    clock = Clock()
    p = pair(limiter=RateLimiter(1000, clock), clock=clock)
    p.remote.dataReceived(b"x" * 1500)  # 0.5 s of write debt
    p.remote.dataReceived(b"x" * 500)  # 1.0 s of write debt
    assert p.lt.value() == b"x" * 2000
    clock.advance(0.5)
    assert p.rt.producerState == "paused"
    clock.advance(0.5)
    assert p.rt.producerState == "producing"


def test_rateTimerIsCancelledWhenTheRelayEnds() -> None:
    clock = Clock()
    p = pair(limiter=RateLimiter(1000, clock), clock=clock)
    p.local.dataReceived(b"x" * 1500)
    p.relay.close()
    lose(p.local)
    lose(p.remote)
    assert p.ended == [p.relay]
    assert clock.getDelayedCalls() == []


# --- half-close and closing -----------------------------------------------------------------


def test_localEOFHalfClosesTheRemote() -> None:
    p = pair()
    p.local.readConnectionLost()
    assert p.local.readDone
    assert p.rt.writeClosed
    assert not p.rt.disconnecting and not p.lt.disconnecting
    # The other direction keeps flowing.
    p.remote.dataReceived(b"response")
    assert p.lt.value() == b"response"
    assert p.counters.tcptx == 8
    p.remote.readConnectionLost()
    assert p.lt.disconnecting and p.rt.disconnecting
    assert not p.lt.writeClosed


def test_remoteEOFHalfClosesTheLocal() -> None:
    p = pair()
    p.remote.readConnectionLost()
    assert p.lt.writeClosed
    assert not p.lt.disconnecting and not p.rt.disconnecting
    p.local.dataReceived(b"still")
    assert p.rt.value() == b"still"
    p.local.readConnectionLost()
    assert p.lt.disconnecting and p.rt.disconnecting


def test_noHalfCloseWhenTheSourceCannot() -> None:
    p = pair(localHalfClose=False)
    p.local.readConnectionLost()
    assert not p.rt.writeClosed
    assert p.lt.disconnecting and p.rt.disconnecting


def test_noHalfCloseWhenThePeerCannot() -> None:
    p = pair(remoteHalfClose=False)
    p.local.readConnectionLost()
    assert not p.rt.writeClosed
    assert p.lt.disconnecting and p.rt.disconnecting


def test_eofAfterThePeerIsGoneCloses() -> None:
    p = pair()
    p.remote.closed = True
    p.local.readConnectionLost()
    assert not p.rt.writeClosed
    assert p.lt.disconnecting


def test_closeFlushesAndAbortDrops() -> None:
    p = pair()
    p.relay.close()
    assert p.lt.disconnecting and p.rt.disconnecting
    assert not p.lt.disconnected and not p.rt.disconnected
    q = pair()
    q.relay.abort()
    assert q.lt.disconnected and q.rt.disconnected


def test_closeSkipsSidesAlreadyGone() -> None:
    p = pair()
    lose(p.remote)
    p.lt.disconnecting = False
    p.rt.disconnecting = False
    p.relay.close()
    p.relay.abort()
    assert not p.rt.disconnecting


def test_lostClosesThePeerAndEndsOnceBothAreGone() -> None:
    p = pair()
    lose(p.local)
    assert p.local.closed
    assert p.rt.disconnecting
    assert p.ended == []
    assert not p.relay.ended
    lose(p.remote)
    assert p.ended == [p.relay]
    assert p.relay.ended


def test_onEndIsCalledExactlyOnce() -> None:
    p = pair()
    lose(p.remote)
    lose(p.local)
    p.relay.lost(p.local)
    p.relay.lost(p.remote)
    p.relay.close()
    assert p.ended == [p.relay]


def test_onEndIsOptional() -> None:
    relay = Relay(Clock(), Counters())
    local, _ = end()
    remote, _ = end()
    relay.join(local, remote)
    lose(local)
    lose(remote)
    assert relay.ended


# --- idle timeout ---------------------------------------------------------------------------


def test_idleRelayIsClosed() -> None:
    p = pair(idle=10.0)
    p.clock.advance(9.999)
    assert not p.lt.disconnecting
    p.clock.advance(0.001)
    assert p.lt.disconnecting and p.rt.disconnecting


def test_activeRelayIsNotClosed() -> None:
    p = pair(idle=10.0)
    for _ in range(5):
        p.clock.advance(6)
        p.local.dataReceived(b"tick")
    assert not p.lt.disconnecting
    p.clock.advance(6)
    p.remote.dataReceived(b"tock")
    p.clock.advance(9.9)
    assert not p.lt.disconnecting
    p.clock.advance(0.1)
    assert p.lt.disconnecting and p.rt.disconnecting


def test_idleTimeoutOffSchedulesNothing() -> None:
    p = pair(idle=0.0)
    assert p.clock.getDelayedCalls() == []
    p.clock.advance(1e6)
    assert not p.lt.disconnecting


def test_idleTimerCancelledWhenTheRelayEnds() -> None:
    p = pair(idle=10.0)
    assert len(p.clock.getDelayedCalls()) == 1
    lose(p.local)
    lose(p.remote)
    assert p.clock.getDelayedCalls() == []


def test_idleTimeoutStartsAtJoin() -> None:
    clock = Clock()
    clock.advance(100)
    p = pair(idle=5.0, join=False, clock=clock)
    clock.advance(100)
    p.relay.join(p.local, p.remote)
    clock.advance(4.9)
    assert not p.lt.disconnecting
    clock.advance(0.1)
    assert p.lt.disconnecting


# --- writing at once ------------------------------------------------------------------------


@define
class Wire:
    """
    A Twisted TCP connection over one end of a socket pair, on a L{MemoryReactor}
    (no reactor runs: C{doWrite} is called by hand), and the other end to read from.
    """

    reactor: MemoryReactor
    connection: tcp.Connection
    other: socket.socket

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.other.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def wire(test: SynchronousTestCase, sendBuffer: int = 0) -> Wire:
    mine, other = socket.socketpair()
    if sendBuffer:
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sendBuffer)
    other.setblocking(False)
    reactor = MemoryReactor()
    connection = tcp.Connection(mine, Protocol(), reactor)
    connection.connected = True
    test.addCleanup(mine.close)
    test.addCleanup(other.close)
    return Wire(reactor, connection, other)


class DirectWriterTests(SynchronousTestCase):
    def test_otherTransportsUseWrite(self) -> None:
        transport = Transport()
        self.assertEqual(directWriter(transport), transport.write)

    def test_sendsAtOnceWhenNothingIsQueued(self) -> None:
        w = wire(self)
        directWriter(w.connection)(b"hello")
        self.assertEqual(w.received(), b"hello")
        # Nothing was queued, so the reactor was never asked to watch for writability.
        self.assertNotIn(w.connection, w.reactor.getWriters())

    def test_queuesBehindQueuedBytes(self) -> None:
        w = wire(self)
        w.connection.write(b"first ")
        directWriter(w.connection)(b"second")
        self.assertEqual(w.received(), b"")
        w.connection.doWrite()
        self.assertEqual(w.received(), b"first second")

    def test_queuesWhileClosing(self) -> None:
        w = wire(self)
        w.connection.loseConnection()
        directWriter(w.connection)(b"late")
        self.assertEqual(w.received(), b"")
        self.assertEqual(w.connection._tempDataLen, 4)

    def test_queuesWhatTheSocketDidNotTakeAndPausesTheProducer(self) -> None:
        w = wire(self, sendBuffer=4096)
        gate = Gate(Transport())
        w.connection.registerProducer(gate, True)
        send = directWriter(w.connection)
        data = bytes(range(256)) * 4096  # 1 MiB: far more than the socket takes
        send(data)
        queued = w.connection._tempDataLen
        self.assertTrue(0 < queued < len(data))
        # More than bufferSize is queued: the producer (the other end) is paused.
        self.assertEqual(gate.reasons, {"peer"})
        send(b"tail")
        received = w.received()
        while len(received) < len(data) + 4:
            w.connection.doWrite()
            received += w.received()
        self.assertEqual(received, data + b"tail")
        self.assertEqual(gate.reasons, set())

    def test_relayForwardsThroughIt(self) -> None:
        w = wire(self)
        local, _ = end()
        remote = RelayProtocol()
        remote.makeConnection(w.connection)
        relay = Relay(Clock(), Counters())
        relay.join(local, remote)
        local.dataReceived(b"relayed")
        self.assertEqual(w.received(), b"relayed")

    def test_switchOffUsesWrite(self) -> None:
        from nodepass._compat import directwrite

        w = wire(self)
        self.patch(directwrite, "enabled", True)
        directwrite.configure({"NP_DIRECT_WRITE": "0"})
        self.assertFalse(directwrite.enabled)
        self.assertEqual(directWriter(w.connection), w.connection.write)
        directwrite.configure({})
        self.assertTrue(directwrite.enabled)

    def test_untestedTwistedUsesWriteAndLogsOnce(self) -> None:
        from twisted.logger import capturedLogs

        from nodepass._compat import directwrite

        w = wire(self)
        self.patch(directwrite, "twistedVersion", "99.0.0")
        self.patch(directwrite, "_warned", False)
        with capturedLogs() as events:
            self.assertEqual(directWriter(w.connection), w.connection.write)
            self.assertEqual(directWriter(w.connection), w.connection.write)
        self.assertEqual(len(events), 1)

    def test_pinPrivateFields(self) -> None:
        from twisted.copyright import version

        from nodepass._compat import directwrite

        self.assertIn(int(version.split(".")[0]), directwrite.TESTED_TWISTED)
        w = wire(self)
        for name in directwrite.PRIVATE_FIELDS:
            self.assertTrue(hasattr(w.connection, name), name)
        # write() queues in _tempDataBuffer; writeSomeData sends and returns a count.
        w.connection.write(b"queued")
        self.assertEqual(w.connection._tempDataLen, 6)
        self.assertEqual(w.connection.writeSomeData(b"now"), 3)
        self.assertEqual(w.received(), b"now")
