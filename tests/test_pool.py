"""
Tests for L{nodepass.tunnel.pool}: the ID exchange on the wire (dataplane spec §4.2, §15.5),
parking and taking connections out (§4.5), flush and close (§4.7), and the client's refill
rounds (§4.4).

Everything runs in memory: pool connections sit on L{StringTransportWithDisconnection}s (so
C{loseConnection} delivers C{connectionLost} at once), time is a L{Clock}, and the client's
dialler is a fake that hands back Deferreds fired by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nodepass.tunnel.control import Signal, decodeSignal, encodeSignal
from nodepass.tunnel.pool import (
    CONTROL_ID,
    ID_TIMEOUT,
    ClientPool,
    Pool,
    PoolConnection,
    PoolTimeout,
    ServerPool,
    TLSPoolConnection,
    poolConnection,
)

CLIENT_IP = "198.51.100.20"


class Randoms:
    """
    A C{randomBytes} replacement that returns the given byte strings in turn.
    """

    def __init__(self, *values: bytes) -> None:
        self.values = list(values)
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return self.values.pop(0)


class Recorder:
    """
    A pool connection consumer that records what it is given.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = 0

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self) -> None:
        self.lost += 1


def wire(
    conn: PoolConnection, host: str = CLIENT_IP, port: int = 40000
) -> StringTransportWithDisconnection:
    """
    Connect C{conn} to an in-memory transport whose peer is C{host:port}.
    """
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port))
    transport.protocol = conn
    conn.makeConnection(transport)
    return transport


def accept(
    pool: ServerPool, host: str = CLIENT_IP, tls: bool = False
) -> tuple[PoolConnection, StringTransportWithDisconnection]:
    """
    What the server's pool listener does with one accepted connection.
    """
    conn = pool.factory(tls).buildProtocol(IPv4Address("TCP", host, 40000))
    return conn, wire(conn, host)


def serverPool(*ids: str, maxSize: int = 16, **kwargs: Any) -> tuple[Clock, ServerPool]:
    clock = Clock()
    randoms = Randoms(*(bytes.fromhex(i) for i in ids))
    return clock, ServerPool(clock, maxSize, randomBytes=randoms, **kwargs)


def parked(*ids: str) -> tuple[Clock, ServerPool, list[PoolConnection]]:
    """
    A server pool holding the control connection and one parked connection per ID.
    """
    clock, pool = serverPool(*ids)
    conns = [accept(pool)[0] for _ in range(len(ids) + 1)]
    assert [c.ident for c in conns] == [CONTROL_ID, *ids]
    return clock, pool, conns


# -- wire format: the ID exchange (§4.2, §15.5) ----------------------------------------------


class ServerIDTests(SynchronousTestCase):
    def test_firstIDIsZeroThenRandom(self) -> None:
        """
        §15.5: the first accepted connection gets exactly C{00 00 00 00}, written before
        anything else; the next gets the 4 random bytes (C{1a 2b 3c 4d} -> C{1a2b3c4d}).
        """
        randoms = Randoms(bytes.fromhex("1a2b3c4d"))
        pool = ServerPool(Clock(), 8, randomBytes=randoms)
        first, firstTransport = accept(pool)
        self.assertEqual(firstTransport.value(), b"\x00\x00\x00\x00")
        self.assertEqual(first.ident, "00000000")
        self.assertEqual(randoms.calls, [])
        second, secondTransport = accept(pool)
        self.assertEqual(secondTransport.value(), b"\x1a\x2b\x3c\x4d")
        self.assertEqual(second.ident, "1a2b3c4d")
        self.assertEqual(randoms.calls, [4])
        self.assertEqual(list(pool.idle), ["00000000", "1a2b3c4d"])
        self.assertEqual(first.state, "parked")

    def test_serverReadsNothingAsID(self) -> None:
        """
        Bytes from the client on a parked server connection are not taken for an ID; they wait
        for whoever uses the connection.
        """
        _, pool, (_control, conn) = parked("1a2b3c4d")
        conn.dataReceived(b"\x01\x02\x03\x04user")
        self.assertEqual(conn.ident, "1a2b3c4d")
        self.assertEqual(list(pool.idle), ["00000000", "1a2b3c4d"])
        recorder = Recorder()
        conn.attach(recorder)
        self.assertEqual(recorder.data, [b"\x01\x02\x03\x04user"])

    def test_tlsConnectionWaitsForHandshake(self) -> None:
        """
        Over TLS the 4 bytes are the first application data after the handshake (§15.5): the
        connection gets its ID only at C{handshakeCompleted}.
        """
        _, pool = serverPool()
        conn, transport = accept(pool, tls=True)
        self.assertIsInstance(conn, TLSPoolConnection)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(pool.idle, {})
        conn.handshakeCompleted()
        self.assertEqual(transport.value(), b"\x00\x00\x00\x00")
        self.assertEqual(list(pool.idle), [CONTROL_ID])

    def test_interfaces(self) -> None:
        """
        Only the TLS pool connection declares L{IHandshakeListener}; both stay half-closeable.
        """
        _, pool = serverPool()
        plain, tls = poolConnection(pool, False), poolConnection(pool, True)
        self.assertFalse(IHandshakeListener.providedBy(plain))
        self.assertTrue(IHandshakeListener.providedBy(tls))
        self.assertTrue(IHalfCloseableProtocol.providedBy(plain))
        self.assertTrue(plain.halfClose)
        self.assertFalse(tls.halfClose)

    def test_maxSizeRefusal(self) -> None:
        """
        §4.2.1: once C{max} connections are parked, the next is closed with no byte sent.
        """
        _, pool = serverPool("1a2b3c4d", "5e6f7081", maxSize=2)
        accept(pool)
        accept(pool)
        refused, transport = accept(pool)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(refused.closed)
        self.assertEqual(len(pool.idle), 2)
        # Taking one out makes room again.
        self.successResultOf(pool.incomingGet())
        again, transport = accept(pool)
        self.assertEqual(transport.value(), bytes.fromhex("5e6f7081"))
        self.assertFalse(again.closed)

    def test_maxSizeAtLeastOne(self) -> None:
        self.assertEqual(ServerPool(Clock(), 0).maxSize, 1)

    def test_clientIPRestriction(self) -> None:
        """
        §4.2.2: a connection from another IP than the handshake's is closed unanswered, and does
        not use up the control ID.
        """
        _, pool = serverPool("1a2b3c4d", clientIP=CLIENT_IP)
        stranger, transport = accept(pool, host="192.0.2.99")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(stranger.closed)
        self.assertEqual(pool.idle, {})
        _conn, transport = accept(pool, host=CLIENT_IP)
        self.assertEqual(transport.value(), b"\x00\x00\x00\x00")

    def test_duplicateIDRefused(self) -> None:
        """
        §4.2.4: an ID already parked closes the new connection without writing it; so does a
        random C{00000000}.
        """
        _, pool = serverPool("1a2b3c4d", "1a2b3c4d", "00000000")
        accept(pool)
        accept(pool)
        dup, transport = accept(pool)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(dup.closed)
        zero, transport = accept(pool)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(zero.closed)
        self.assertEqual(list(pool.idle), [CONTROL_ID, "1a2b3c4d"])

    def test_closedPoolRefuses(self) -> None:
        _, pool = serverPool()
        pool.close()
        conn, transport = accept(pool)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(conn.closed)

    def test_serverNeverReadsAnID(self) -> None:
        _, pool = serverPool()
        with self.assertRaises(AssertionError):
            pool.identified(poolConnection(pool, False), "00000000")


class FakeDial:
    """
    The client pool's dial function: records each connection and returns a Deferred that the
    test fires (or fails) by hand.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[PoolConnection, Deferred[Any]]] = []

    def __call__(self, conn: PoolConnection) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((conn, d))
        return d

    def connect(self, index: int) -> StringTransportWithDisconnection:
        conn, d = self.calls[index]
        transport = wire(conn, "203.0.113.1", 10101)
        d.callback(conn)
        return transport

    def refuse(self, index: int) -> None:
        self.calls[index][1].errback(ConnectionRefusedError())


def clientPool(
    minSize: int = 2, maxSize: int = 4, **kwargs: Any
) -> tuple[Clock, FakeDial, ClientPool]:
    clock = Clock()
    dial = FakeDial()
    return clock, dial, ClientPool(clock, dial, minSize, maxSize, **kwargs)


def fill(dial: FakeDial, first: int, ids: list[str]) -> list[PoolConnection]:
    """
    Connect dial attempts C{first}, C{first + 1}, ... and feed each its ID.
    """
    conns = []
    for offset, ident in enumerate(ids):
        dial.connect(first + offset)
        conn = dial.calls[first + offset][0]
        conn.dataReceived(bytes.fromhex(ident))
        conns.append(conn)
    return conns


class ClientIDTests(SynchronousTestCase):
    def test_controlIDThenControlBytes(self) -> None:
        """
        §15.5: C{00 00 00 00} followed by control bytes in the same read parks ID
        C{00000000}; the bytes after the ID are kept for the control consumer.  The client
        writes nothing on a pool connection.
        """
        _, dial, pool = clientPool()
        pool.start()
        transport = dial.connect(0)
        conn = dial.calls[0][0]
        ping = encodeSignal("secret", Signal("ping"))
        self.assertEqual(ping, b"CEcCEREdHAtBSEcEGgsEUBg=\n")
        conn.dataReceived(b"\x00\x00\x00\x00" + ping)
        self.assertEqual(conn.ident, CONTROL_ID)
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        self.assertEqual(transport.value(), b"")
        taken = self.successResultOf(pool.outgoingGet(CONTROL_ID))
        self.assertIs(taken, conn)
        recorder = Recorder()
        conn.attach(recorder)
        self.assertEqual(recorder.data, [ping])
        self.assertEqual(decodeSignal("secret", recorder.data[0]), Signal("ping"))
        conn.dataReceived(b"more")
        self.assertEqual(recorder.data, [ping, b"more"])

    def test_idInPieces(self) -> None:
        """
        The 4 ID bytes may arrive one at a time; the ID is lower-case hex.
        """
        _, dial, pool = clientPool()
        pool.start()
        dial.connect(0)
        conn = dial.calls[0][0]
        for byte in (b"\x1a", b"\x2b", b"\x3c"):
            conn.dataReceived(byte)
            self.assertEqual(pool.idle, {})
        conn.dataReceived(b"\x4d")
        self.assertEqual(conn.ident, "1a2b3c4d")
        self.assertEqual(list(pool.idle), ["1a2b3c4d"])
        self.assertEqual(conn.pending, [])

    def test_idTimeout(self) -> None:
        """
        §4.2: the client waits at most 60 s for the 4 ID bytes, then closes the connection,
        which counts as not created.
        """
        self.assertEqual(ID_TIMEOUT, 60.0)
        clock, dial, pool = clientPool(minSize=1, maxSize=1)
        pool.start()
        dial.connect(0)
        conn = dial.calls[0][0]
        conn.dataReceived(b"\x00\x00")
        clock.advance(59.9)
        self.assertFalse(conn.closed)
        clock.advance(0.1)
        self.assertTrue(conn.closed)
        self.assertEqual(pool.idle, {})
        # The round is over (created 0): the next one is scheduled and dials again.
        clock.advance(pool.interval)
        self.assertEqual(len(dial.calls), 2)

    def test_idTimerCancelledOnceIdentified(self) -> None:
        clock, dial, pool = clientPool(minSize=1, maxSize=1)
        pool.start()
        (conn,) = fill(dial, 0, ["1a2b3c4d"])
        clock.advance(ID_TIMEOUT * 2)
        self.assertFalse(conn.closed)
        self.assertIn("1a2b3c4d", pool.idle)

    def test_duplicateIDClosed(self) -> None:
        _, dial, pool = clientPool(minSize=2, maxSize=2)
        pool.start()
        first, second = fill(dial, 0, ["1a2b3c4d", "1a2b3c4d"])
        self.assertFalse(first.closed)
        self.assertTrue(second.closed)
        self.assertEqual(list(pool.idle), ["1a2b3c4d"])
        self.assertIs(pool.idle["1a2b3c4d"], first)

    def test_tlsIDTimerStartsAfterHandshake(self) -> None:
        """
        Over TLS the connection is ready (and the 60 s ID deadline starts) at the handshake.
        """
        clock, dial, pool = clientPool(minSize=1, maxSize=1, tls=True)
        pool.start()
        dial.connect(0)
        conn = dial.calls[0][0]
        self.assertIsInstance(conn, TLSPoolConnection)
        clock.advance(ID_TIMEOUT + 1)
        self.assertFalse(conn.closed)
        conn.handshakeCompleted()
        clock.advance(ID_TIMEOUT)
        self.assertTrue(conn.closed)

    def test_readsIDFlags(self) -> None:
        self.assertTrue(ClientPool.readsID)
        self.assertFalse(ServerPool.readsID)


# -- taking connections out (§4.5) ----------------------------------------------------------


class GetTests(SynchronousTestCase):
    def test_incomingGetFIFO(self) -> None:
        _, pool, (_, a, b, c) = parked("aaaaaaaa", "bbbbbbbb", "cccccccc")
        got = [self.successResultOf(pool.incomingGet()) for _ in range(3)]
        self.assertEqual(got, [a, b, c])
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        self.assertEqual(pool.active, {a, b, c})
        self.assertEqual(a.state, "taken")

    def test_incomingGetNewest(self) -> None:
        _, pool, (_, a, b, c) = parked("aaaaaaaa", "bbbbbbbb", "cccccccc")
        self.assertIs(self.successResultOf(pool.incomingGet(newest=True)), c)
        self.assertIs(self.successResultOf(pool.incomingGet()), a)
        self.assertIs(self.successResultOf(pool.incomingGet(newest=True)), b)

    def test_incomingGetNeverHandsControl(self) -> None:
        """
        The control connection is only ever taken by ID; C{incomingGet} waits instead, and a
        parked control connection does not satisfy the waiter.
        """
        _clock, pool = serverPool("1a2b3c4d")
        control, _ = accept(pool)
        d = pool.incomingGet(newest=True)
        self.assertNoResult(d)
        self.assertEqual(pool.idleCount, 0)
        conn, _ = accept(pool)
        self.assertIs(self.successResultOf(d), conn)
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        self.assertIs(pool.idle[CONTROL_ID], control)

    def test_controlNotHandedToWaitingIncomingGet(self) -> None:
        clock, pool = serverPool()
        d = pool.incomingGet()
        accept(pool)
        self.assertNoResult(d)
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        clock.advance(5)
        self.failureResultOf(d, PoolTimeout)

    def test_incomingGetTimeout(self) -> None:
        clock, pool = serverPool()
        d = pool.incomingGet()
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, PoolTimeout)
        self.assertIn("5s", failure.getErrorMessage())
        self.assertEqual(pool._incoming, [])

    def test_incomingWaitersServedInOrder(self) -> None:
        _, pool, _ = parked()
        pool._random = Randoms(bytes.fromhex("aaaaaaaa"), bytes.fromhex("bbbbbbbb"))
        first, second = pool.incomingGet(), pool.incomingGet()
        a, _ = accept(pool)
        self.assertIs(self.successResultOf(first), a)
        self.assertNoResult(second)
        b, _ = accept(pool)
        self.assertIs(self.successResultOf(second), b)
        self.assertEqual(list(pool.idle), [CONTROL_ID])

    def test_outgoingGetImmediate(self) -> None:
        _, pool, (control, _a, b) = parked("aaaaaaaa", "bbbbbbbb")
        self.assertIs(self.successResultOf(pool.outgoingGet("bbbbbbbb")), b)
        self.assertIs(self.successResultOf(pool.outgoingGet(CONTROL_ID)), control)
        self.assertEqual(list(pool.idle), ["aaaaaaaa"])

    def test_outgoingGetWaitsForParking(self) -> None:
        """
        §4.5: the ID may not be parked yet on this side; the getter gets it when it is, ahead of
        any C{incomingGet} waiter.
        """
        clock, pool, _ = parked()
        pool._random = Randoms(bytes.fromhex("1a2b3c4d"))
        incoming = pool.incomingGet()
        outgoing = pool.outgoingGet("1a2b3c4d")
        clock.advance(3)
        self.assertNoResult(outgoing)
        conn, _ = accept(pool)
        self.assertIs(self.successResultOf(outgoing), conn)
        self.assertNoResult(incoming)
        self.assertNotIn("1a2b3c4d", pool.idle)
        self.assertIn(conn, pool.active)
        incoming.cancel()
        self.failureResultOf(incoming, CancelledError)
        # The waiter's timeout was cancelled.
        clock.advance(10)
        self.assertEqual(pool._outgoing, {})

    def test_outgoingGetTimeout(self) -> None:
        clock, pool, _ = parked("aaaaaaaa")
        d = pool.outgoingGet("1a2b3c4d")
        clock.advance(4.99)
        self.assertNoResult(d)
        clock.advance(0.01)
        failure = self.failureResultOf(d, PoolTimeout)
        self.assertIn("1a2b3c4d", failure.getErrorMessage())
        # A connection parked later under that ID just stays parked.
        pool._random = Randoms(bytes.fromhex("1a2b3c4d"))
        conn, _ = accept(pool)
        self.assertIs(pool.idle["1a2b3c4d"], conn)

    def test_customGetTimeout(self) -> None:
        clock, pool = serverPool(getTimeout=2.0)
        d = pool.outgoingGet(CONTROL_ID)
        clock.advance(2)
        self.failureResultOf(d, PoolTimeout)

    def test_cancelledWaiterForgotten(self) -> None:
        clock, pool, _ = parked()
        pool._random = Randoms(bytes.fromhex("1a2b3c4d"))
        d = pool.incomingGet()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(pool._incoming, [])
        conn, _ = accept(pool)
        self.assertIs(pool.idle["1a2b3c4d"], conn)
        self.assertEqual(clock.getDelayedCalls(), [])


# -- flush, close, loss (§4.7) --------------------------------------------------------------


class FlushCloseTests(SynchronousTestCase):
    def test_flushClosesParkedOnly(self) -> None:
        _, pool, (control, a, b, c) = parked("aaaaaaaa", "bbbbbbbb", "cccccccc")
        self.successResultOf(pool.outgoingGet(CONTROL_ID))
        taken = self.successResultOf(pool.incomingGet())
        self.assertIs(taken, a)
        pool.errors = 7
        pool.flush()
        self.assertEqual(pool.idle, {})
        self.assertTrue(b.closed)
        self.assertTrue(c.closed)
        self.assertFalse(taken.closed)
        self.assertFalse(control.closed)
        self.assertEqual(pool.errors, 0)
        self.assertFalse(pool.closed)
        # The pool still works afterwards.
        pool._random = Randoms(bytes.fromhex("dddddddd"))
        d, _ = accept(pool)
        self.assertIs(self.successResultOf(pool.incomingGet()), d)

    def test_closeFailsWaitersAndClosesParkedOnes(self) -> None:
        clock, pool, (control, _a, b) = parked("aaaaaaaa", "bbbbbbbb")
        taken = self.successResultOf(pool.incomingGet())
        # Drain so incomingGet waits.
        alsoTaken = self.successResultOf(pool.incomingGet())
        incoming = pool.incomingGet()
        outgoing = pool.outgoingGet("deadbeef")
        pool.close()
        self.failureResultOf(incoming, CancelledError)
        self.failureResultOf(outgoing, CancelledError)
        self.assertTrue(pool.closed)
        self.assertTrue(control.closed)
        # A connection in use belongs to its relay, which outlives a restart
        # (spec §13.3); only parked ones are closed.
        self.assertFalse(taken.closed)
        self.assertIs(alsoTaken, b)
        self.assertFalse(b.closed)
        self.assertEqual(pool.idle, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_parkAfterCloseCloses(self) -> None:
        _, pool = serverPool()
        conn = poolConnection(pool, False)
        wire(conn)
        pool.close()
        conn.ident = "1a2b3c4d"
        pool.park(conn)
        self.assertTrue(conn.closed)
        self.assertEqual(pool.idle, {})

    def test_parkedConnectionLostIsRemoved(self) -> None:
        _, pool, (_, a, b) = parked("aaaaaaaa", "bbbbbbbb")
        a.transport.loseConnection()
        self.assertEqual(list(pool.idle), [CONTROL_ID, "bbbbbbbb"])
        self.assertIs(self.successResultOf(pool.incomingGet()), b)
        b.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(b, pool.active)

    def test_parkedClosedByItsPeerLeavesAtOnce(self) -> None:
        """
        A FIN on an idle parked connection (nothing received) closes it and takes it out of
        the pool at once, so the pool count stays true and nothing lingers in CLOSE_WAIT.
        (Go only notices when the connection is used, §4.5.)
        """
        _, pool, (_, a) = parked("aaaaaaaa")
        a.readConnectionLost()
        self.assertTrue(a.closed)
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        self.assertEqual(pool.idleCount, 0)

    def test_parkedWithOwedBytesAndEOFWaitsToBeTaken(self) -> None:
        """
        Bytes then a FIN, before this side read the signal naming the connection: both are
        kept for whoever takes it, as the peer's user sent them.
        """
        clock, pool, (_, a) = parked("aaaaaaaa")
        a.dataReceived(b"hello")
        a.readConnectionLost()
        self.assertIn("aaaaaaaa", pool.idle)
        clock.advance(pool.getTimeout - 0.1)
        self.assertFalse(a.closed)
        recorder = Recorder()
        self.successResultOf(pool.outgoingGet("aaaaaaaa")).attach(recorder)
        self.assertEqual(recorder.data, [b"hello"])
        self.assertEqual(clock.getDelayedCalls(), [])  # no claim deadline left behind

    def test_unclaimedBytesCloseTheConnection(self) -> None:
        """
        Bytes on a parked connection that nothing takes within the get timeout were not owed
        to anyone: the connection is closed and leaves the pool.
        """
        clock, pool, (_, a) = parked("aaaaaaaa")
        a.dataReceived(b"\x00" * 100)
        clock.advance(pool.getTimeout - 0.1)
        self.assertFalse(a.closed)
        clock.advance(0.1)
        self.assertTrue(a.closed)
        self.assertEqual(a.pending, [])
        self.assertEqual(list(pool.idle), [CONTROL_ID])

    def test_parkedReadsAreBounded(self) -> None:
        """
        Past PARKED_READ_LIMIT bytes a parked connection stops reading (the peer's window
        fills instead of our memory); taking it resumes reading.
        """
        from nodepass.tunnel.pool import PARKED_READ_LIMIT

        _, pool, (_, a) = parked("aaaaaaaa")
        transport: Any = a.transport
        for _ in range(PARKED_READ_LIMIT // 65536 + 1):
            self.assertEqual(transport.producerState, "producing")
            a.dataReceived(b"\x00" * 65536)
        self.assertEqual(transport.producerState, "paused")
        self.assertLessEqual(sum(map(len, a.pending)), PARKED_READ_LIMIT + 65536)
        self.successResultOf(pool.incomingGet())
        self.assertEqual(transport.producerState, "producing")

    def test_consumerConnectionLost(self) -> None:
        _, pool, (control,) = parked()
        self.successResultOf(pool.outgoingGet(CONTROL_ID))
        recorder = Recorder()
        control.attach(recorder)
        control.transport.loseConnection()
        self.assertEqual(recorder.lost, 1)
        self.assertIsNone(control.consumer)

    def test_attachAfterLoss(self) -> None:
        """
        A consumer attached to a connection that already closed hears about it at once, after
        the buffered bytes.
        """
        _, pool, (_, a) = parked("aaaaaaaa")
        self.successResultOf(pool.outgoingGet("aaaaaaaa"))
        a.dataReceived(b"late")
        a.transport.loseConnection()
        recorder = Recorder()
        a.attach(recorder)
        self.assertEqual(recorder.data, [b"late"])
        self.assertEqual(recorder.lost, 1)

    def test_consumerEOFClosesConnection(self) -> None:
        _, pool, (_, a) = parked("aaaaaaaa")
        self.successResultOf(pool.outgoingGet("aaaaaaaa"))
        recorder = Recorder()
        a.attach(recorder)
        a.readConnectionLost()
        self.assertTrue(a.closed)
        self.assertEqual(recorder.lost, 1)

    def test_idleCountExcludesControl(self) -> None:
        _, pool, _ = parked("aaaaaaaa", "bbbbbbbb")
        self.assertEqual(len(pool.idle), 3)
        self.assertEqual(pool.idleCount, 2)

    def test_baseHooksAbstract(self) -> None:
        pool = Pool(Clock())
        with self.assertRaises(NotImplementedError):
            pool.connectionReady(poolConnection(pool, False))
        with self.assertRaises(NotImplementedError):
            pool.identified(poolConnection(pool, False), CONTROL_ID)


# -- client refill rounds (§4.4) ------------------------------------------------------------


def ids(n: int, start: int = 1) -> list[str]:
    return [f"{i:08x}" for i in range(start, start + n)]


class RefillTests(SynchronousTestCase):
    def test_sizesNormalised(self) -> None:
        _, _, pool = clientPool(0, -3)
        self.assertEqual((pool.minSize, pool.maxSize, pool.capacity), (1, 1, 1))
        _, _, pool = clientPool(9, 3)
        self.assertEqual((pool.minSize, pool.maxSize, pool.capacity), (3, 9, 3))
        self.assertEqual(pool.interval, pool.minInterval)

    def test_firstRoundDialsCapacityInParallel(self) -> None:
        clock, dial, pool = clientPool(3, 6)
        pool.start()
        self.assertEqual(len(dial.calls), 3)
        # Nothing more until the round's attempts all finished.
        clock.advance(10)
        self.assertEqual(len(dial.calls), 3)
        fill(dial, 0, ids(2))
        clock.advance(10)
        self.assertEqual(len(dial.calls), 3)
        fill(dial, 2, ids(1, 3))
        self.assertEqual(len(pool.idle), 3)

    def test_capacityGrowsWhenDrained(self) -> None:
        """
        ratio = created / cap > 0.8 -> cap + 1 (up to max); the next round, one interval later,
        tops up to the new capacity.
        """
        clock, dial, pool = clientPool(2, 3)
        pool.start()
        fill(dial, 0, ids(2))
        self.assertEqual(pool.capacity, 3)
        clock.advance(0.1)
        self.assertEqual(len(dial.calls), 3)
        fill(dial, 2, ids(1, 3))
        # 1/3 created: no change; and never beyond max anyway.
        self.assertEqual(pool.capacity, 3)
        for conn in list(pool.idle.values()):
            self.successResultOf(pool.outgoingGet(conn.ident))
        clock.advance(pool.interval)
        self.assertEqual(len(dial.calls), 6)
        fill(dial, 3, ids(3, 10))
        self.assertEqual(pool.capacity, 3)

    def test_capacityShrinksAfterFailures(self) -> None:
        """
        ratio < 0.2 and cap > min -> cap - 1; dial failures count as not created.
        """
        clock, dial, pool = clientPool(2, 5)
        pool.start()
        fill(dial, 0, ids(2))
        self.assertEqual(pool.capacity, 3)
        clock.advance(0.1)
        self.assertEqual(len(dial.calls), 3)
        dial.refuse(2)
        self.assertEqual(pool.dialFailures, 1)
        self.assertEqual(pool.capacity, 2)
        # At min it stays even when everything fails.
        for conn in list(pool.idle.values()):
            self.successResultOf(pool.outgoingGet(conn.ident))
        clock.advance(pool.interval)
        self.assertEqual(len(dial.calls), 5)
        dial.refuse(3)
        dial.refuse(4)
        self.assertEqual(pool.capacity, 2)
        self.assertEqual(pool.dialFailures, 3)

    def test_dialFailureReturningFailedDeferred(self) -> None:
        clock = Clock()
        pool = ClientPool(clock, lambda conn: fail(ConnectionRefusedError()), 2, 2)
        pool.start()
        self.assertEqual(pool.dialFailures, 2)
        self.assertEqual(pool._connecting, set())
        clock.advance(pool.interval)
        self.assertEqual(pool.dialFailures, 4)

    def test_lostBeforeIDNotCreated(self) -> None:
        clock, dial, pool = clientPool(1, 3)
        pool.start()
        transport = dial.connect(0)
        transport.loseConnection()
        self.assertEqual(pool.capacity, 1)
        self.assertEqual(pool._connecting, set())
        clock.advance(pool.interval)
        self.assertEqual(len(dial.calls), 2)

    def test_capacityShrinksWhenIdle(self) -> None:
        """
        §4.4: the capacity is adjusted every round with ratio = created / cap; a round that
        needs nothing creates 0, so the capacity shrinks by one ("shrinks back one per round
        when idle"), as Go's C{adjustCapacity(created)} after every round does.
        """
        clock, dial, pool = clientPool(2, 5)
        pool.start()
        fill(dial, 0, ids(2))
        self.assertEqual(pool.capacity, 3)
        clock.advance(pool.interval)
        fill(dial, 2, ids(1, 3))
        self.assertEqual(pool.capacity, 3)
        self.assertEqual(len(pool.idle), 3)
        clock.advance(pool.interval)
        # need = 0, created = 0: ratio 0 < 0.2 and cap 3 > min 2.
        self.assertEqual(pool.capacity, 2)

    def test_intervalGrowsWhileFullAndShrinksWhileEmpty(self) -> None:
        """
        idle > floor(cap * 0.8) -> interval + 100 ms (max 1 s); idle < floor(cap * 0.2) ->
        interval - 100 ms (min 100 ms).
        """
        clock, dial, pool = clientPool(10, 10)
        pool.start()
        fill(dial, 0, ids(10))
        self.assertEqual(pool.interval, pytest.approx(0.1))
        seen = []
        for _ in range(12):
            clock.advance(pool.interval)
            seen.append(round(pool.interval, 6))
        self.assertEqual(seen, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0])
        self.assertEqual(len(dial.calls), 10)
        for ident in list(pool.idle):
            self.successResultOf(pool.outgoingGet(ident))
        # Refill on demand: once fewer than half the capacity are idle, the
        # next round starts on the next reactor turn (not inside the take,
        # whose user is waiting) instead of after the 1 s interval.
        self.assertEqual(len(dial.calls), 10)
        clock.advance(0)
        self.assertEqual(len(dial.calls), 20)
        # That round found the pool empty (idle < 20 %): the interval shrinks.
        self.assertEqual(pool.interval, pytest.approx(0.9))
        # The round in flight is not doubled by further takes.
        self.assertEqual(pool.idle, {})
        clock.advance(0)
        self.assertEqual(len(dial.calls), 20)

    def test_refillNotInTheTakersPath(self) -> None:
        """
        Taking a connection dials nothing before the taker's callbacks run;
        the refill follows on the next reactor turn, once per turn.
        """
        clock, dial, pool = clientPool(4, 4)
        pool.start()
        fill(dial, 0, ids(4))
        clock.advance(pool.interval)
        order: list[str] = []
        for ident in list(pool.idle)[:3]:
            pool.outgoingGet(ident).addCallback(lambda _: order.append(f"{len(dial.calls)}"))
        self.assertEqual(order, ["4", "4", "4"])
        clock.advance(0)
        self.assertEqual(len(dial.calls), 7)
        self.assertEqual(len(clock.getDelayedCalls()), 0)  # round in flight, nothing pending

    def test_intervalBounds(self) -> None:
        clock, dial, pool = clientPool(5, 5, minInterval=0.5, maxInterval=0.6)
        pool.start()
        self.assertEqual(pool.interval, 0.5)
        fill(dial, 0, ids(5))
        clock.advance(0.5)
        self.assertEqual(pool.interval, pytest.approx(0.6))
        clock.advance(0.6)
        self.assertEqual(pool.interval, pytest.approx(0.6))

    def test_closeStopsRounds(self) -> None:
        clock, dial, pool = clientPool(2, 2)
        pool.start()
        fill(dial, 0, ids(1))
        pending = dial.connect(1)
        pool.close()
        self.assertFalse(pending.connected)
        self.assertEqual(pool.idle, {})
        clock.advance(100)
        self.assertEqual(len(dial.calls), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connectionAfterCloseIsClosed(self) -> None:
        """
        A dial that completes after C{close} does not park its connection.
        """
        _, dial, pool = clientPool(1, 1)
        pool.start()
        pool.close()
        dial.connect(0)
        conn = dial.calls[0][0]
        conn.dataReceived(b"\x1a\x2b\x3c\x4d")
        self.assertTrue(conn.closed)
        self.assertEqual(pool.idle, {})

    def test_fullRoundDoesNotDial(self) -> None:
        clock, dial, pool = clientPool(2, 2)
        pool.start()
        fill(dial, 0, ids(2))
        for _ in range(5):
            clock.advance(pool.interval)
        self.assertEqual(len(dial.calls), 2)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_succeedImmediately(self) -> None:
        """
        A dial function whose Deferred fires before the connection is even made is fine: the
        round waits for the ID.
        """
        clock = Clock()
        conns: list[PoolConnection] = []

        def dial(conn: PoolConnection) -> Deferred[Any]:
            conns.append(conn)
            return succeed(conn)

        pool = ClientPool(clock, dial, 1, 1)
        pool.start()
        clock.advance(5)
        self.assertEqual(len(conns), 1)
        wire(conns[0])
        conns[0].dataReceived(b"\x00\x00\x00\x00")
        self.assertEqual(list(pool.idle), [CONTROL_ID])


class TrailingBytesTests(SynchronousTestCase):
    def test_bytesAfterDuplicateIDNotReadAsAnotherID(self) -> None:
        """
        A connection closed because its ID is already parked must not be parked again: the
        bytes that followed the ID are not another ID.  (Plain L{StringTransport}: like a real
        TCP transport, C{loseConnection} does not call C{connectionLost} at once.)
        """
        from twisted.internet.testing import StringTransport

        _, dial, pool = clientPool(2, 2)
        pool.start()
        fill(dial, 0, ["1a2b3c4d"])
        conn, d = dial.calls[1]
        conn.makeConnection(StringTransport())
        d.callback(conn)
        conn.dataReceived(bytes.fromhex("1a2b3c4d") + b"XYZWuser")
        self.assertTrue(conn.transport.disconnecting)
        self.assertNotIn(conn, list(pool.idle.values()))


class ReentrancyTests(SynchronousTestCase):
    def test_waiterClosingPoolWhileParking(self) -> None:
        """
        The exit side's waiter may end the whole session (and close the pool) from its
        callback, e.g. a verify whose fingerprint does not match; parking must survive that.
        """
        _, pool, _ = parked()
        pool._random = Randoms(bytes.fromhex("1a2b3c4d"))
        d = pool.outgoingGet("1a2b3c4d")
        d.addCallback(lambda conn: (pool.close(), conn.close()))
        conn, _ = accept(pool)
        self.assertTrue(conn.closed)
        self.assertTrue(pool.closed)


class PoolAuthTests(SynchronousTestCase):
    """
    Pool authentication between our own peers: the server parks a connection only once it
    proved the tunnel key for its ID and a fresh nonce.
    """

    KEY = b"tunnel-key"
    NONCE = bytes(range(16))

    def server(self) -> tuple[Clock, ServerPool]:
        from nodepass.tunnel.pool import AUTH_NONCE

        clock = Clock()
        randoms = Randoms(self.NONCE, self.NONCE, self.NONCE)
        pool = ServerPool(clock, 16, randomBytes=randoms, authKey=self.KEY)
        assert AUTH_NONCE == len(self.NONCE)
        return clock, pool

    def test_proofParksTheConnection(self) -> None:
        from nodepass.tunnel.pool import poolProof

        _, pool = self.server()
        control, transport = accept(pool)
        # The control connection (always 00000000) is authenticated like any other.
        self.assertEqual(transport.value(), b"\x00\x00\x00\x00" + self.NONCE)
        self.assertEqual(pool.idle, {})
        proof = poolProof(self.KEY, b"\x00\x00\x00\x00", self.NONCE)
        control.dataReceived(proof[:10])
        self.assertEqual(pool.idle, {})
        control.dataReceived(proof[10:] + b"first bytes")
        self.assertEqual(list(pool.idle), [CONTROL_ID])
        recorder = Recorder()
        self.successResultOf(pool.outgoingGet(CONTROL_ID)).attach(recorder)
        self.assertEqual(recorder.data, [b"first bytes"])

    def test_wrongOrMissingProofCloses(self) -> None:
        from nodepass.tunnel.pool import AUTH_TIMEOUT, poolProof

        clock, pool = self.server()
        rogue, _ = accept(pool)
        rogue.dataReceived(poolProof(b"another key", b"\x00\x00\x00\x00", self.NONCE))
        self.assertTrue(rogue.closed)
        silent, _ = accept(pool)
        clock.advance(AUTH_TIMEOUT)
        self.assertTrue(silent.closed)
        self.assertEqual((pool.idle, pool.refusedProofs), ({}, 2))

    def test_clientProvesThenParks(self) -> None:
        from nodepass.tunnel.pool import poolProof

        _, dial, pool = clientPool(1, 1, authKey=self.KEY)
        pool.start()
        transport = dial.connect(0)
        conn = dial.calls[0][0]
        conn.dataReceived(b"\x1a\x2b\x3c\x4d" + self.NONCE[:8])
        self.assertEqual((pool.idle, transport.value()), ({}, b""))
        conn.dataReceived(self.NONCE[8:])
        self.assertEqual(
            transport.value(), poolProof(self.KEY, bytes.fromhex("1a2b3c4d"), self.NONCE)
        )
        self.assertEqual(list(pool.idle), ["1a2b3c4d"])

    def test_bothEndsTogether(self) -> None:
        """
        A client pool and a server pool with the same key, wired byte for byte.
        """
        _, server = self.server()
        _, dial, client = clientPool(1, 1, authKey=self.KEY)
        client.start()
        clientTransport = dial.connect(0)
        serverConn, serverTransport = accept(server)
        dial.calls[0][0].dataReceived(serverTransport.value())
        serverConn.dataReceived(clientTransport.value())
        self.assertEqual(list(server.idle), [CONTROL_ID])
        self.assertEqual(list(client.idle), [CONTROL_ID])


class PoolAuthCloseTests(SynchronousTestCase):
    def test_closeEndsConnectionsOwingTheirProof(self) -> None:
        """
        A connection that has its ID and nonce but has not proved the key yet belongs to the
        pool's session: closing the pool closes it too, not AUTH_TIMEOUT later.
        """
        pool = ServerPool(Clock(), 16, randomBytes=Randoms(bytes(16)), authKey=b"k")
        pending, _ = accept(pool)
        self.assertEqual(pending.state, "auth")
        pool.close()
        self.assertTrue(pending.closed)
