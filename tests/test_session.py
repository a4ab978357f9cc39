"""
Tests for L{nodepass.tunnel.session}: the control channel on pool connection C{00000000},
the C{tcp}/C{udp}/C{verify}/C{flush} signals, the CHECK_POINT line, the health rule, entry
gating in TLS modes, and the UDP datagram codec (dataplane spec §5-§8, §11.3).

No sockets and no real time: the pool is a L{ServerPool} whose connections sit on
L{StringTransportWithDisconnection}s, the reactor is a L{MemoryReactorClock} (with a minimal
C{listenUDP}), targets are dialled by a fake L{TargetDialer}, and the peer's control lines are
built with L{encodeSignal}.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hypothesis.strategies as st
from hypothesis import given
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.balance import Targets
from nodepass.errors import DialError
from nodepass.settings import Settings
from nodepass.stats import Counters
from nodepass.tunnel.control import Signal, decodeSignal, encodeSignal
from nodepass.tunnel.pool import CONTROL_ID, PoolConnection, ServerPool
from nodepass.tunnel.session import (
    Session,
    SessionError,
    Shared,
    _EntryUDP,
    _UserFactory,
)
from nodepass.tunnel.udp import DatagramCodec
from nodepass.url import parse

KEY = "secret"
URL = "server://secret@:10101/127.0.0.1:8080"
FP = "sha256:" + ":".join(["E3", "B0", "C4", "42"] * 8)
FP_OTHER = "sha256:" + ":".join(["00", "11", "22", "33"] * 8)
TARGET = IPv4Address("TCP", "10.0.0.5", 8080)

#: The master's regular expression (spec §11.3).
CHECKPOINT = re.compile(
    r"CHECK_POINT\|MODE=(\d+)\|PING=(\d+)ms\|POOL=(\d+)\|TCPS=(\d+)\|UDPS=(\d+)"
    r"\|TCPRX=(\d+)\|TCPTX=(\d+)\|UDPRX=(\d+)\|UDPTX=(\d+)"
)


class FakeUDPTransport:
    """
    Just enough of a connected UDP port for the session's datagram protocols.
    """

    def __init__(self) -> None:
        self.connectedTo: tuple[str, int] | None = None
        self.written: list[tuple[bytes, Any]] = []
        self.reading: list[str] = []
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.connectedTo = (host, port)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.stopped = True

    def stopReading(self) -> None:
        self.reading.append("stop")

    def startReading(self) -> None:
        self.reading.append("start")


class Reactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{listenUDP} connects the protocol to a L{FakeUDPTransport}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[tuple[Any, FakeUDPTransport, dict[str, Any]]] = []

    def listenUDP(self, port: int, protocol: Any, **kwargs: Any) -> FakeUDPTransport:
        transport = FakeUDPTransport()
        protocol.makeConnection(transport)
        self.udp.append((protocol, transport, kwargs))
        return transport


class FakeDialer:
    """
    A L{TargetDialer} stand-in: C{connect} connects the protocol to an in-memory transport
    whose peer is C{TARGET} (or fails, when told to).
    """

    def __init__(self, clock: Any, config: Any) -> None:
        self.targets = Targets(config.targets, 0, clock)
        self.connected: list[tuple[Any, StringTransportWithDisconnection]] = []
        self.failure: Exception | None = None

    async def connect(self, protocol: Any) -> tuple[Any, int]:
        if self.failure is not None:
            raise self.failure
        transport = StringTransportWithDisconnection(peerAddress=TARGET)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connected.append((protocol, transport))
        return protocol, 0

    async def resolve(self, index: int) -> str:
        return "127.0.0.1"


class FakePort:
    """
    An entry listener: records C{startReading}/C{stopReading}.
    """

    def __init__(self, protocol: Any = None) -> None:
        self.calls: list[str] = []
        self.protocol = protocol

    def startReading(self) -> None:
        self.calls.append("start")

    def stopReading(self) -> None:
        self.calls.append("stop")


class Randoms:
    def __init__(self, values: list[str]) -> None:
        self.values = [bytes.fromhex(v) for v in values]

    def __call__(self, n: int) -> bytes:
        return self.values.pop(0)


class Harness:
    """
    One session over an in-memory pool: the control connection and one parked connection per
    ID in C{ids}, more on demand with L{add}.
    """

    def __init__(
        self,
        url: str = URL,
        ids: tuple[str, ...] = (),
        *,
        entry: bool = False,
        tlsMode: int = 0,
        role: str = "server",
        mode: int = 2,
        ext: bool = False,
        own: str | None = None,
        seen: dict[str, str] | None = None,
    ) -> None:
        self.reactor = Reactor()
        self.config = parse(url)
        self.dialer = FakeDialer(self.reactor, self.config)
        self.counters = Counters()
        self.shared = Shared(self.config, self.reactor, Settings(), self.dialer, self.counters)  # type: ignore[arg-type]
        self.randoms = Randoms(list(ids))
        self.pool = ServerPool(self.reactor, 64, randomBytes=self.randoms)
        self.conns: dict[str, tuple[PoolConnection, StringTransportWithDisconnection]] = {}
        self.controlConn, self.controlTransport = self._accept()
        for ident in ids:
            self._accept(ident)
        taken = self.pool.outgoingGet(CONTROL_ID)
        assert taken.result is self.controlConn
        #: What the client saw as the peer certificate on each pool connection, by ID.
        self.seen = seen or {}
        self.session = Session(
            self.shared,
            self.pool,
            self.controlConn,
            role=role,
            mode=mode,
            entry=entry,
            ext=ext,
            tlsMode=tlsMode,
            ownFingerprint=(lambda: own) if own is not None else None,
            peerFingerprint=self._peerFingerprint if role == "client" else None,
        )
        self.tcpPort = FakePort()
        self.udpListener = _EntryUDP(None, self.reactor)
        self.udpTransport = FakeUDPTransport()
        self.udpListener.makeConnection(self.udpTransport)  # type: ignore[arg-type]
        self.udpPort = FakePort(self.udpListener)
        if entry:
            self.session.adoptEntry(self.tcpPort, self.udpPort)  # type: ignore[arg-type]
            self.udpListener.session = self.session

    def _peerFingerprint(self, transport: Any) -> str:
        for ident, (_, t) in self.conns.items():
            if t is transport:
                return self.seen.get(ident, "")
        return ""

    def _accept(
        self, ident: str | None = None
    ) -> tuple[PoolConnection, StringTransportWithDisconnection]:
        conn = self.pool.factory(False).buildProtocol(None)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "198.51.100.20", 40000 + len(self.conns))
        )
        transport.protocol = conn
        if ident is not None:
            # Known before it is parked: parking may hand it to a waiter at once.
            self.conns[ident] = (conn, transport)
        conn.makeConnection(transport)
        return conn, transport

    def add(self, ident: str) -> PoolConnection:
        self.randoms.values.append(bytes.fromhex(ident))
        return self._accept(ident)[0]

    def start(self) -> None:
        self.session.start()

    def feed(self, signal: Signal) -> None:
        self.controlConn.dataReceived(encodeSignal(KEY, signal))

    def lines(self) -> list[bytes]:
        raw = self.controlTransport.value()
        assert raw[:4] == b"\x00\x00\x00\x00"
        return [line + b"\n" for line in raw[4:].split(b"\n")[:-1]]

    def sent(self) -> list[Signal]:
        return [decodeSignal(KEY, line) for line in self.lines()]

    def poolOut(self, ident: str) -> bytes:
        """
        What was written on pool connection C{ident} after its ID.
        """
        return self.conns[ident][1].value()[4:]


@contextmanager
def messages() -> Iterator[list[str]]:
    with capturedLogs() as events:
        texts: list[str] = []
        yield texts
    texts.extend(formatEvent(event) for event in events)


# -- control channel basics ----------------------------------------------------------------


class ControlTests(SynchronousTestCase):
    def test_startPingsAtOnce(self) -> None:
        """
        §15.5/§15.6: after the 4 ID bytes, the first control line is the immediate C{ping}.
        """
        h = Harness()
        h.start()
        self.assertEqual(h.controlTransport.value(), b"\x00\x00\x00\x00CEcCEREdHAtBSEcEGgsEUBg=\n")

    def test_controlBytesBufferedBeforeStart(self) -> None:
        """
        Control lines that arrived while the connection was parked are handled at start, after
        this side's immediate C{ping} (§15.5: each side's first control line is its C{ping}).
        """
        h = Harness()
        h.controlConn.dataReceived(b"CEcCEREdHAtBSEcEGgsEUBg=\n")
        h.start()
        self.assertEqual(h.sent(), [Signal("ping"), Signal("pong")])

    def test_pingAnsweredWithPong(self) -> None:
        h = Harness()
        h.start()
        h.controlConn.dataReceived(b"CEcCEREdHAtBSEcEGgsEUBg=\n")
        self.assertEqual(h.lines()[-1], b"CEcCEREdHAtBSEcEHAsEUBg=\n")

    def test_unknownSignalIgnored(self) -> None:
        h = Harness(ids=("1a2b3c4d",))
        h.start()
        h.feed(Signal("launch", id="1a2b3c4d"))
        self.assertIn("1a2b3c4d", h.pool.idle)
        self.assertNoResult(h.session.ended)

    def test_controlConnectionLostEndsSession(self) -> None:
        h = Harness(ids=("1a2b3c4d",), entry=True)
        h.start()
        h.controlTransport.loseConnection()
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("control connection closed", failure.getErrorMessage())
        self.assertTrue(h.session.stopped)
        self.assertTrue(h.pool.closed)
        self.assertEqual(h.tcpPort.calls, ["start", "stop"])

    def test_silenceEndsSession(self) -> None:
        h = Harness()
        h.start()
        h.reactor.advance(14.9)
        self.assertNoResult(h.session.ended)
        h.reactor.advance(0.1)
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("timed out", failure.getErrorMessage())
        self.assertTrue(h.controlConn.closed)

    def test_stop(self) -> None:
        h = Harness(ids=("1a2b3c4d",), entry=True)
        h.start()
        self.successResultOf(h.session.stop())
        self.assertTrue(h.controlConn.closed)
        self.assertTrue(h.conns["1a2b3c4d"][0].closed)
        self.assertEqual(h.tcpPort.calls, ["start", "stop"])
        self.assertEqual(h.udpPort.calls, ["start", "stop"])
        # Later bytes and ticks do nothing.
        written = h.controlTransport.value()
        h.reactor.advance(30)
        self.assertEqual(h.controlTransport.value(), written)
        self.assertNoResult(h.session.ended)


# -- pong, CHECK_POINT, health rule, flush (§5.3, §5.4, §11.3) ------------------------------


class CheckpointTests(SynchronousTestCase):
    def test_pongLogsCheckpoint(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb", "cccccccc"), mode=1)
        h.counters.tcprx, h.counters.tcptx, h.counters.udprx, h.counters.udptx = 1, 22, 333, 4444
        h.start()
        h.reactor.advance(0.003)
        with messages() as texts:
            h.feed(Signal("pong"))
        matches = [m for m in map(CHECKPOINT.search, texts) if m]
        self.assertEqual(len(matches), 1)
        self.assertEqual(matches[0].groups(), ("1", "3", "3", "0", "0", "1", "22", "333", "4444"))
        self.assertEqual(
            matches[0].group(0),
            "CHECK_POINT|MODE=1|PING=3ms|POOL=3|TCPS=0|UDPS=0|TCPRX=1|TCPTX=22|UDPRX=333|UDPTX=4444",
        )

    def test_poolCountIsIdleExcludingTaken(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), mode=2)
        h.start()
        self.successResultOf(h.pool.incomingGet())
        h.reactor.advance(0.25)
        with messages() as texts:
            h.feed(Signal("pong"))
        (match,) = [m for m in map(CHECKPOINT.search, texts) if m]
        self.assertEqual(match.group(1, 2, 3), ("2", "250", "1"))

    def test_checkpointIsEventLevel(self) -> None:
        h = Harness()
        h.start()
        with capturedLogs() as events:
            h.feed(Signal("pong"))
        (event,) = [e for e in events if "CHECK_POINT" in formatEvent(e)]
        self.assertTrue(event.get("npEvent"))

    def test_healthRuleFlushes(self) -> None:
        """
        §5.4: at a tick with errors > idle // 2 the peer sends C{flush} instead of C{ping},
        flushes its own pool and resets the error counter; the next tick pings.
        """
        ids = ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd")
        h = Harness(ids=ids)
        h.start()
        h.pool.errors = 3
        h.reactor.advance(5)
        self.assertEqual(h.sent(), [Signal("ping"), Signal("flush")])
        self.assertEqual(h.pool.idle, {})
        self.assertTrue(all(conn.closed for conn, _ in h.conns.values()))
        self.assertFalse(h.controlConn.closed)
        self.assertEqual(h.pool.errors, 0)
        h.feed(Signal("pong"))  # keep the channel alive
        h.reactor.advance(5)
        self.assertEqual(h.sent()[-1], Signal("ping"))

    def test_healthRuleBoundary(self) -> None:
        ids = ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd")
        h = Harness(ids=ids)
        h.start()
        h.pool.errors = 2  # not > 4 // 2
        h.reactor.advance(5)
        self.assertEqual(h.sent(), [Signal("ping"), Signal("ping")])
        self.assertEqual(len(h.pool.idle), 4)
        self.assertEqual(h.pool.errors, 2)

    def test_flushSignal(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"))
        h.start()
        taken = self.successResultOf(h.pool.incomingGet())
        h.pool.errors = 9
        h.feed(Signal("flush"))
        self.assertEqual(h.pool.idle, {})
        self.assertTrue(h.conns["bbbbbbbb"][0].closed)
        self.assertFalse(taken.closed)
        self.assertFalse(h.controlConn.closed)
        self.assertEqual(h.pool.errors, 0)
        # No reply.
        self.assertEqual(h.sent(), [Signal("ping")])


# -- TCP (§6) ----------------------------------------------------------------------------------


class ExitTCPTests(SynchronousTestCase):
    def test_tcpSignalRelays(self) -> None:
        h = Harness(ids=("1a2b3c4d",))
        h.start()
        conn, _poolTransport = h.conns["1a2b3c4d"]
        conn.dataReceived(b"early ")  # the entry side does not wait for the signal
        with messages() as texts:
            h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        ((target, targetTransport),) = h.dialer.connected
        self.assertEqual(targetTransport.value(), b"early ")
        conn.dataReceived(b"request")
        self.assertEqual(targetTransport.value(), b"early request")
        target.dataReceived(b"response")
        self.assertEqual(h.poolOut("1a2b3c4d"), b"response")
        self.assertEqual((h.counters.tcprx, h.counters.tcptx), (8, 13))
        self.assertEqual(h.shared.slots.tcp, 1)
        self.assertNotIn("1a2b3c4d", h.pool.idle)
        self.assertIn("Starting exchange: 203.0.113.7:51234 <-> 10.0.0.5:8080", texts)
        # The target closes: both are closed and the slot is released.
        with messages() as texts:
            targetTransport.loseConnection()
        self.assertTrue(conn.closed)
        self.assertEqual(h.shared.slots.tcp, 0)
        self.assertEqual(h.session.relays, set())
        self.assertIn("Exchange complete: EOF", texts)

    def test_proxyHeaderFirst(self) -> None:
        """
        §10.4/§15.8: with C{proxy=1} the PROXY v1 line goes to the target before any relayed
        byte.
        """
        h = Harness(URL + "?proxy=1", ids=("1a2b3c4d",))
        h.start()
        h.conns["1a2b3c4d"][0].dataReceived(b"GET / HTTP/1.1\r\n")
        h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        ((_, targetTransport),) = h.dialer.connected
        self.assertEqual(
            targetTransport.value(),
            b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\r\nGET / HTTP/1.1\r\n",
        )

    def test_noProxyHeaderByDefault(self) -> None:
        h = Harness(ids=("1a2b3c4d",))
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        ((_, targetTransport),) = h.dialer.connected
        self.assertEqual(targetTransport.value(), b"")

    def test_notcpIgnoresTCPSignals(self) -> None:
        h = Harness(URL + "?notcp=1", ids=("1a2b3c4d",))
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        h.reactor.advance(6)
        self.assertEqual(h.dialer.connected, [])
        self.assertIn("1a2b3c4d", h.pool.idle)
        self.assertEqual(h.pool.errors, 0)

    def test_signalBeforeConnectionParked(self) -> None:
        """
        §4.5: the signal may arrive before this side parked the connection it names.
        """
        h = Harness()
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        h.reactor.advance(4)
        self.assertEqual(h.dialer.connected, [])
        h.add("1a2b3c4d")
        self.assertEqual(len(h.dialer.connected), 1)

    def test_unknownIDCountsAnError(self) -> None:
        """
        §4.6: OutgoingGet timing out logs C{commonTCPOnce: request timeout} and counts an
        error, which then trips the health rule.
        """
        h = Harness()
        h.start()
        h.reactor.advance(1)
        h.feed(Signal("tcp", remote="203.0.113.7:51234", id="deadbeef"))
        with messages() as texts:
            h.reactor.advance(5)
        self.assertEqual(h.pool.errors, 1)
        self.assertTrue(any(t.startswith("commonTCPOnce: request timeout") for t in texts))
        # The tick at 5 s came first; at 10 s: 1 error > 0 idle // 2.
        self.assertEqual(h.sent(), [Signal("ping"), Signal("ping")])
        h.reactor.advance(4)
        self.assertEqual(h.sent(), [Signal("ping"), Signal("ping"), Signal("flush")])
        self.assertEqual(h.pool.errors, 0)
        self.assertNoResult(h.session.ended)

    def test_dialFailureClosesPoolConnection(self) -> None:
        h = Harness(ids=("1a2b3c4d",))
        h.dialer.failure = DialError("connection refused")
        h.start()
        with messages() as texts:
            h.feed(Signal("tcp", remote="203.0.113.7:51234", id="1a2b3c4d"))
        self.assertTrue(h.conns["1a2b3c4d"][0].closed)
        self.assertEqual(h.shared.slots.tcp, 0)
        self.assertTrue(any("commonTCPOnce: dialWithRotation failed" in t for t in texts))
        self.assertEqual(h.pool.errors, 0)

    def test_slotLimit(self) -> None:
        h = Harness(URL + "?slot=1", ids=("aaaaaaaa", "bbbbbbbb"))
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:1", id="aaaaaaaa"))
        with messages() as texts:
            h.feed(Signal("tcp", remote="203.0.113.7:2", id="bbbbbbbb"))
        self.assertEqual(len(h.dialer.connected), 1)
        self.assertTrue(h.conns["bbbbbbbb"][0].closed)
        self.assertTrue(any("TCP slot limit reached: 1/1" in t for t in texts))


class EntryTCPTests(SynchronousTestCase):
    def user(
        self, h: Harness, host: str, port: int
    ) -> tuple[Any, StringTransportWithDisconnection]:
        protocol = _UserFactory(h.session).buildProtocol(None)
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_userConnectionSendsSignalAndRelays(self) -> None:
        """
        §6.1/§15.6: the entry side takes an idle connection, sends the C{tcp} signal naming
        it (byte for byte the §15.6 line) and relays at once.
        """
        h = Harness(ids=("1a2b3c4d",), entry=True)
        h.start()
        user, userTransport = self.user(h, "127.0.0.1", 54321)
        self.assertEqual(
            h.lines()[-1],
            b"CEcCEREdHAtBSEcAEBVBXkcGFggMBgBWSUdSQFJaQ0tTXFRORlFQQFRWX0cKFkdOUVQCQAdHEFEHUBg=\n",
        )
        user.dataReceived(b"hello")
        self.assertEqual(h.poolOut("1a2b3c4d"), b"hello")
        h.conns["1a2b3c4d"][0].dataReceived(b"world")
        self.assertEqual(userTransport.value(), b"world")
        self.assertEqual((h.counters.tcprx, h.counters.tcptx), (5, 5))
        self.assertEqual(userTransport.producerState, "producing")

    def test_emptyPoolTimesOut(self) -> None:
        h = Harness(entry=True)
        h.start()
        _user, userTransport = self.user(h, "198.51.100.9", 40001)
        self.assertEqual(userTransport.producerState, "paused")
        with messages() as texts:
            h.reactor.advance(5)
        self.assertFalse(userTransport.connected)
        self.assertTrue(any(t.startswith("commonTCPLoop: request timeout") for t in texts))
        self.assertEqual(h.shared.slots.tcp, 0)

    def test_lateConnectionServesWaitingUser(self) -> None:
        h = Harness(entry=True)
        h.start()
        user, userTransport = self.user(h, "198.51.100.9", 40001)
        user.dataReceived(b"early")
        h.reactor.advance(1)
        h.add("1a2b3c4d")
        self.assertEqual(h.sent()[-1], Signal("tcp", remote="198.51.100.9:40001", id="1a2b3c4d"))
        self.assertEqual(h.poolOut("1a2b3c4d"), b"early")
        self.assertEqual(userTransport.producerState, "producing")


# -- UDP (§7) ----------------------------------------------------------------------------------


class UDPTests(SynchronousTestCase):
    def test_exitUDPUnframed(self) -> None:
        """
        §7.1/§7.3: with a Go peer each read from the pool connection is one datagram to the
        target, and each reply datagram is one raw write, no framing.
        """
        h = Harness(ids=("deadbeef",))
        h.start()
        conn, _ = h.conns["deadbeef"]
        conn.dataReceived(b"query-1")
        h.feed(Signal("udp", remote="192.168.1.10:5353", id="deadbeef"))
        ((protocol, udp, kwargs),) = h.reactor.udp
        self.assertEqual(udp.connectedTo, ("127.0.0.1", 8080))
        self.assertEqual(kwargs["maxPacketSize"], 16384)
        conn.dataReceived(b"query-2")
        self.assertEqual([d for d, _ in udp.written], [b"query-1", b"query-2"])
        protocol.datagramReceived(b"answer", ("127.0.0.1", 8080))
        self.assertEqual(h.poolOut("deadbeef"), b"answer")
        self.assertEqual((h.counters.udprx, h.counters.udptx), (6, 14))
        self.assertEqual(h.shared.slots.udp, 1)
        # 30 s of silence ends the flow.
        h.feed(Signal("pong"))
        h.reactor.advance(10)
        h.feed(Signal("pong"))
        h.reactor.advance(10)
        h.feed(Signal("pong"))
        h.reactor.advance(10)
        self.assertTrue(conn.closed)
        self.assertTrue(udp.stopped)
        self.assertEqual(h.shared.slots.udp, 0)

    def test_exitUDPFramedBetweenOurPeers(self) -> None:
        h = Harness(ids=("deadbeef",), ext=True)
        h.start()
        conn, _ = h.conns["deadbeef"]
        h.feed(Signal("udp", remote="192.168.1.10:5353", id="deadbeef"))
        ((protocol, udp, _),) = h.reactor.udp
        conn.dataReceived(b"\x00\x02ab\x00\x03cd")
        conn.dataReceived(b"e")
        self.assertEqual([d for d, _ in udp.written], [b"ab", b"cde"])
        protocol.datagramReceived(b"xyz", ("127.0.0.1", 8080))
        self.assertEqual(h.poolOut("deadbeef"), b"\x00\x03xyz")

    def test_noudpIgnoresUDPSignals(self) -> None:
        h = Harness(URL + "?noudp=1", ids=("deadbeef",))
        h.start()
        h.feed(Signal("udp", remote="192.168.1.10:5353", id="deadbeef"))
        self.assertEqual(h.reactor.udp, [])
        self.assertIn("deadbeef", h.pool.idle)

    def test_entryUDP(self) -> None:
        h = Harness(ids=("deadbeef",), entry=True)
        h.start()
        source = ("192.168.1.10", 5353)
        h.udpListener.datagramReceived(b"one", source)
        h.udpListener.datagramReceived(b"two", source)
        self.assertEqual(h.sent()[-1], Signal("udp", remote="192.168.1.10:5353", id="deadbeef"))
        self.assertEqual(h.poolOut("deadbeef"), b"onetwo")
        h.conns["deadbeef"][0].dataReceived(b"reply")
        self.assertEqual(h.udpTransport.written, [(b"reply", source)])
        self.assertEqual((h.counters.udprx, h.counters.udptx), (6, 5))


# -- verify and entry gating (§8.4) ----------------------------------------------------------


class VerifyServerTests(SynchronousTestCase):
    def test_sendsOwnFingerprintOnOldest(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), tlsMode=1, own=FP)
        with messages() as texts:
            h.start()
        self.assertIn("TLS certificate fingerprint verifying...", texts)
        self.assertEqual(h.sent(), [Signal("ping"), Signal("verify", id="aaaaaaaa", fp=FP)])
        self.assertTrue(h.conns["aaaaaaaa"][0].closed)
        self.assertEqual(list(h.pool.idle), ["bbbbbbbb"])

    def test_rightFingerprintOpensEntry(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), tlsMode=1, own=FP, entry=True)
        h.start()
        self.assertEqual(h.tcpPort.calls, [])
        self.assertEqual(h.udpPort.calls, [])
        self.assertFalse(h.session.verified)
        with messages() as texts:
            h.feed(Signal("verify", id="bbbbbbbb", fp=FP))
        self.assertIn(f"TLS certificate fingerprint verified: {FP}", texts)
        self.assertTrue(h.session.verified)
        self.assertEqual(h.tcpPort.calls, ["start"])
        self.assertEqual(h.udpPort.calls, ["start"])
        self.assertTrue(h.conns["bbbbbbbb"][0].closed)
        self.assertNoResult(h.session.ended)

    def test_wrongFingerprintEndsSession(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), tlsMode=1, own=FP, entry=True)
        h.start()
        h.feed(Signal("verify", id="bbbbbbbb", fp=FP_OTHER))
        failure = self.failureResultOf(h.session.ended, SessionError)
        message = failure.getErrorMessage()
        self.assertIn("fingerprint mismatch", message)
        self.assertEqual(
            message,
            f"outgoingVerify: certificate fingerprint mismatch: server: {FP} - client: {FP_OTHER}",
        )
        self.assertNotIn("start", h.tcpPort.calls)
        self.assertTrue(h.session.stopped)
        self.assertTrue(h.controlConn.closed)

    def test_verifyWithoutFingerprint(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), tlsMode=1, own=FP)
        h.start()
        h.feed(Signal("verify", id="bbbbbbbb"))
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("no fingerprint", failure.getErrorMessage())

    def test_verifyUnknownIDTimesOut(self) -> None:
        h = Harness(ids=("aaaaaaaa",), tlsMode=1, own=FP)
        h.start()
        h.feed(Signal("verify", id="0badf00d", fp=FP))
        h.reactor.advance(4.9)
        self.assertNoResult(h.session.ended)
        h.reactor.advance(0.1)
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("outgoingVerify: request timeout", failure.getErrorMessage())

    def test_noIdleConnectionForOwnVerify(self) -> None:
        h = Harness(tlsMode=1, own=FP)
        h.start()
        h.reactor.advance(5)
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("incomingGet", failure.getErrorMessage())

    def test_plainModeOpensAtOnce(self) -> None:
        h = Harness(ids=("aaaaaaaa",), entry=True)
        h.start()
        self.assertTrue(h.session.verified)
        self.assertEqual(h.tcpPort.calls, ["start"])
        self.assertEqual(h.sent(), [Signal("ping")])

    def test_exitSideNeverOpens(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"), tlsMode=1, own=FP, entry=False)
        h.start()
        h.feed(Signal("verify", id="bbbbbbbb", fp=FP))
        self.assertTrue(h.session.verified)
        self.assertEqual(h.tcpPort.calls, [])


class VerifyClientTests(SynchronousTestCase):
    def test_sendsObservedFingerprintOnNewest(self) -> None:
        h = Harness(
            ids=("aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            seen={"aaaaaaaa": FP, "bbbbbbbb": FP},
        )
        h.start()
        self.assertEqual(h.sent(), [Signal("ping"), Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertTrue(h.conns["bbbbbbbb"][0].closed)

    def test_rightFingerprint(self) -> None:
        h = Harness(
            ids=("aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            entry=True,
            seen={"aaaaaaaa": FP, "bbbbbbbb": FP},
        )
        h.start()
        self.assertEqual(h.tcpPort.calls, [])
        with messages() as texts:
            h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertIn(f"TLS certificate fingerprint verified: {FP}", texts)
        self.assertEqual(h.tcpPort.calls, ["start"])
        self.assertTrue(h.conns["aaaaaaaa"][0].closed)

    def test_wrongFingerprint(self) -> None:
        """
        The client compares the server's claim with what it saw on the named connection (a
        man in the middle presents another certificate).
        """
        h = Harness(
            ids=("aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            entry=True,
            seen={"aaaaaaaa": FP_OTHER, "bbbbbbbb": FP},
        )
        h.start()
        h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertEqual(
            failure.getErrorMessage(),
            f"outgoingVerify: certificate fingerprint mismatch: server: {FP} - client: {FP_OTHER}",
        )
        self.assertEqual(h.tcpPort.calls, ["stop"])

    def test_noCertificateOnConnection(self) -> None:
        h = Harness(ids=("aaaaaaaa",), tlsMode=1, role="client")
        h.start()
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("no TLS certificate", failure.getErrorMessage())

    def test_bothNameTheSameID(self) -> None:
        """
        §8.4 race: both peers name the same (only) idle connection at once.  Each has already
        taken it out for its own verify, so the receiver uses what it saw on it instead of
        waiting for it to be parked.
        """
        h = Harness(ids=("aaaaaaaa",), tlsMode=1, role="client", entry=True, seen={"aaaaaaaa": FP})
        h.start()
        self.assertEqual(h.sent()[-1], Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertNotIn("aaaaaaaa", h.pool.idle)
        h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        self.assertTrue(h.session.verified)
        self.assertEqual(h.tcpPort.calls, ["start"])
        h.feed(Signal("pong"))
        h.reactor.advance(6)
        self.assertNoResult(h.session.ended)

    def test_bothNameTheSameIDMismatch(self) -> None:
        h = Harness(ids=("aaaaaaaa",), tlsMode=1, role="client", seen={"aaaaaaaa": FP_OTHER})
        h.start()
        h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertIn("fingerprint mismatch", failure.getErrorMessage())

    def test_ownVerifyAvoidsIDNamedByPeer(self) -> None:
        """
        The peer's verify arrives while our own verify waits for an idle connection: the
        connection it names goes to the receiver, ours uses the next one.
        """
        h = Harness(tlsMode=1, role="client", entry=True, seen={"aaaaaaaa": FP, "bbbbbbbb": FP})
        h.start()
        h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        h.reactor.advance(1)
        h.add("aaaaaaaa")
        self.assertTrue(h.session.verified)
        self.assertEqual(h.sent(), [Signal("ping")])
        h.add("bbbbbbbb")
        self.assertEqual(h.sent(), [Signal("ping"), Signal("verify", id="bbbbbbbb", fp=FP)])
        self.assertNoResult(h.session.ended)


# -- the UDP datagram codec (§7.1) -------------------------------------------------------------


datagrams = st.lists(st.binary(max_size=300), max_size=12)


@given(datagrams, st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_framedRoundTrip(items: list[bytes], cuts: list[int]) -> None:
    """
    Framed datagrams survive any splitting and coalescing of the byte stream.
    """
    encoder, decoder = DatagramCodec(True), DatagramCodec(True)
    stream = b"".join(encoder.encode(d) for d in items)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out.extend(decoder.decode(stream[start:end]))
    assert out == items
    assert decoder.decode(b"") == []


@given(datagrams)
def test_unframedOneDatagramPerRead(items: list[bytes]) -> None:
    codec = DatagramCodec(False)
    for item in items:
        assert codec.encode(item) == item
        if item:
            assert codec.decode(item) == [item]


def test_framedEncoding() -> None:
    codec = DatagramCodec(True)
    assert codec.encode(b"abc") == b"\x00\x03abc"
    assert codec.encode(b"") == b"\x00\x00"
    assert codec.decode(b"\x00") == []
    assert codec.decode(b"\x00") == [b""]


class VerifyLateMismatchTests(SynchronousTestCase):
    def test_mismatchOnLateParkedConnection(self) -> None:
        """
        The peer's verify names a connection this side parks only later; the fingerprint does
        not match.  The session ends with the mismatch, and parking that connection does not
        blow up in the pool.
        """
        h = Harness(tlsMode=1, role="client", seen={"aaaaaaaa": FP_OTHER})
        h.start()
        failures: list[Any] = []
        h.session.ended.addErrback(failures.append)
        h.feed(Signal("verify", id="aaaaaaaa", fp=FP))
        h.add("aaaaaaaa")
        self.assertEqual(len(failures), 1)
        self.assertIn("fingerprint mismatch", failures[0].getErrorMessage())


class EntryUserTuningTests(SynchronousTestCase):
    def test_userConnectionGetsNagleOff(self) -> None:
        """
        The entry side's user connections are relayed without delaying small segments, as
        single-end's are (Go sets TCP_NODELAY on every TCP connection).
        """

        class NoDelay(StringTransportWithDisconnection):
            noDelay = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.noDelay = enabled

        h = Harness(ids=("1a2b3c4d",), entry=True)
        h.start()
        protocol = _UserFactory(h.session).buildProtocol(None)
        transport = NoDelay(peerAddress=IPv4Address("TCP", "127.0.0.1", 54321))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertTrue(transport.noDelay)


# -- allow/deny, refusal counts, live connections, pin ------------------------------------

CLIENT_URL = "client://secret@server.test:10101/127.0.0.1:8080?tls=1"


class EntryAccessTests(SynchronousTestCase):
    def test_deniedUserGetsNoProtocolAndNoPoolConnection(self) -> None:
        h = Harness(URL + "?deny=198.51.100.0/24", ids=("1a2b3c4d",), entry=True)
        h.start()
        factory = _UserFactory(h.session)
        with messages() as texts:
            self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "198.51.100.9", 1)))
        self.assertIn("commonTCPLoop: refused 198.51.100.9:1: in deny 198.51.100.0/24", texts)
        self.assertEqual(h.counters.refusedDeny, 1)
        self.assertIn("1a2b3c4d", h.pool.idle)
        self.assertEqual(h.shared.slots.tcp, 0)
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "203.0.113.1", 1)))

    def test_deniedUDPSourceTakesNoPoolConnection(self) -> None:
        h = Harness(URL + "?allow=192.168.1.0/24", ids=("deadbeef",), entry=True)
        h.start()
        h.udpListener.datagramReceived(b"one", ("10.1.1.1", 5353))
        self.assertIn("deadbeef", h.pool.idle)
        self.assertEqual((h.counters.udprx, h.counters.refusedDeny), (0, 1))
        self.assertEqual(h.session.entryFlows.live, {})
        h.udpListener.datagramReceived(b"one", ("192.168.1.10", 5353))
        self.assertEqual(h.sent()[-1], Signal("udp", remote="192.168.1.10:5353", id="deadbeef"))

    def test_exitSlotRefusalsAreCounted(self) -> None:
        h = Harness(URL + "?slot=1", ids=("aaaaaaaa", "bbbbbbbb", "cccccccc"))
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:1", id="aaaaaaaa"))
        with messages():
            h.feed(Signal("tcp", remote="203.0.113.7:2", id="bbbbbbbb"))
            h.feed(Signal("udp", remote="203.0.113.7:3", id="cccccccc"))
        self.assertEqual(h.counters.refusedSlot, 2)

    def test_entryUDPRefusedForSlotsIsCounted(self) -> None:
        h = Harness(URL + "?slot=1", ids=("deadbeef",), entry=True)
        h.start()
        h.udpListener.datagramReceived(b"one", ("192.168.1.10", 1))
        with messages():
            h.udpListener.datagramReceived(b"one", ("192.168.1.10", 2))
        self.assertEqual(h.counters.refusedSlot, 1)


class LiveConnectionTests(SynchronousTestCase):
    def test_exitRelayAndFlowAreListed(self) -> None:
        h = Harness(ids=("aaaaaaaa", "bbbbbbbb"))
        h.start()
        h.feed(Signal("tcp", remote="203.0.113.7:1000", id="aaaaaaaa"))
        h.conns["aaaaaaaa"][0].dataReceived(b"request")
        h.feed(Signal("udp", remote="[2001:db8::7]:53", id="bbbbbbbb"))
        h.conns["bbbbbbbb"][0].dataReceived(b"query")
        (flow, _, _) = h.reactor.udp[0]
        flow.datagramReceived(b"answer!", ("127.0.0.1", 8080))
        listed = h.shared.connections.list()
        self.assertEqual(
            [(c["proto"], c["remote"], c["target"], c["rx"], c["tx"]) for c in listed],
            [
                ("tcp", "203.0.113.7:1000", "10.0.0.5:8080", 0, 7),
                ("udp", "[2001:db8::7]:53", "127.0.0.1:8080", 7, 5),
            ],
        )
        # Closing the flow ends it and closes its pool connection.
        self.assertTrue(h.shared.connections.close(listed[1]["id"]))
        self.assertTrue(h.conns["bbbbbbbb"][0].closed)
        self.assertEqual(len(h.shared.connections), 1)

    def test_entryRelayNamesTheUserAndThePoolPeer(self) -> None:
        h = Harness(ids=("1a2b3c4d", "deadbeef"), entry=True)
        h.start()
        user, userTransport = EntryTCPTests().user(h, "198.51.100.9", 40001)
        user.dataReceived(b"hello")
        h.udpListener.datagramReceived(b"one", ("192.168.1.10", 5353))
        listed = h.shared.connections.list()
        self.assertEqual(
            [(c["proto"], c["remote"], c["target"], c["rx"]) for c in listed],
            [
                ("tcp", "198.51.100.9:40001", "198.51.100.20:40000", 5),
                ("udp", "192.168.1.10:5353", "198.51.100.20:40001", 3),
            ],
        )
        self.assertTrue(h.shared.connections.close(listed[0]["id"]))
        self.assertFalse(userTransport.connected)


class PinTests(SynchronousTestCase):
    def test_pinnedClientSendsVerifyWhenTheCertificateMatches(self) -> None:
        h = Harness(
            f"{CLIENT_URL}&pin={FP}",
            ids=("aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            seen={"aaaaaaaa": FP, "bbbbbbbb": FP},
        )
        h.start()
        self.assertEqual(h.sent(), [Signal("ping"), Signal("verify", id="bbbbbbbb", fp=FP)])

    def test_pinMismatchEndsTheSessionBeforeAnyTraffic(self) -> None:
        h = Harness(
            f"{CLIENT_URL}&pin={FP}",
            ids=("aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            entry=True,
            seen={"aaaaaaaa": FP_OTHER, "bbbbbbbb": FP_OTHER},
        )
        with messages() as texts:
            h.start()
        message = f"incomingVerify: certificate pin mismatch: expected {FP} - presented {FP_OTHER}"
        self.assertIn(message, texts)
        failure = self.failureResultOf(h.session.ended, SessionError)
        self.assertEqual(failure.getErrorMessage(), message)
        self.assertEqual(h.sent(), [Signal("ping")])
        self.assertNotIn("start", h.tcpPort.calls)

    def test_everyPoolConnectionIsHeldToThePin(self) -> None:
        """
        On the exit side, a connection named in a C{tcp} signal whose certificate is not the
        pinned one is never relayed (a man in the middle of some connections only).
        """
        h = Harness(
            f"{CLIENT_URL}&pin={FP}",
            ids=("cccccccc", "aaaaaaaa", "bbbbbbbb"),
            tlsMode=1,
            role="client",
            seen={"aaaaaaaa": FP, "bbbbbbbb": FP, "cccccccc": FP_OTHER},
        )
        h.start()
        with messages() as texts:
            h.feed(Signal("tcp", remote="203.0.113.7:1", id="cccccccc"))
        self.assertEqual(h.dialer.connected, [])
        self.assertTrue(h.conns["cccccccc"][0].closed)
        self.assertIn(
            f"commonTCPOnce: certificate pin mismatch: expected {FP} - presented {FP_OTHER}", texts
        )
        self.failureResultOf(h.session.ended, SessionError)

    def test_serverIgnoresPin(self) -> None:
        h = Harness(ids=("aaaaaaaa",), tlsMode=1, own=FP)
        self.assertEqual(h.session.pin, "")
