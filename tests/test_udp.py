"""
Tests for L{nodepass.tunnel.udp}: the flow table and its slots, target flows (queueing, idle
expiry, counting and the rate limit), opening a target socket, tunnelled flows, the exit
side's pool feed and the entry listener (dataplane spec §6.4, §7, §10.2, §10.3).

No sockets: UDP ports are L{DatagramSocket}s from a L{DatagramReactor}, pool connections are
L{FakePoolConnection}s, time is the reactor's clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.access import AccessList, Screen, parseNetworks
from nodepass.limits import RateLimiter, Slots
from nodepass.log import defaultLogger
from nodepass.stats import Counters
from nodepass.tunnel.exchange import Connections
from nodepass.tunnel.udp import (
    QUEUE_LIMIT,
    DatagramCodec,
    EntryListener,
    Flow,
    Flows,
    PoolFeed,
    TargetFlow,
    TunnelFlow,
    connectTarget,
)
from nodepass.url import parse
from tests.fakes import DatagramReactor, DatagramSocket, FakePoolConnection, FakeTargetDialer

SOURCE = ("198.51.100.9", 5353)
#: rate=1: 125 000 bytes per second in each direction.
RATE = 125_000


def flows(limit: int = 0, loop: str = "testUDPLoop") -> Flows:
    return Flows(Slots(limit), defaultLogger(), loop)


class Replies:
    """
    A flow's C{reply}: records datagrams (and the keys they came with), answers a fixed
    delay.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.datagrams: list[bytes] = []
        self.keys: list[Any] = []
        self.delay = delay

    def __call__(self, key: Any, datagram: bytes) -> float:
        self.keys.append(key)
        self.datagrams.append(datagram)
        return self.delay


class CodecTests(SynchronousTestCase):
    """
    More of the codec is tested (with hypothesis) in tests/test_session.py.
    """

    def test_framedByteByByte(self) -> None:
        encoder, decoder = DatagramCodec(True), DatagramCodec(True)
        stream = b"".join(encoder.encode(d) for d in (b"", b"a", b"x" * 300))
        out: list[bytes] = []
        for offset in range(len(stream)):
            out.extend(decoder.decode(stream[offset : offset + 1]))
        self.assertEqual(out, [b"", b"a", b"x" * 300])

    def test_largestDatagram(self) -> None:
        codec = DatagramCodec(True)
        datagram = b"y" * 65535
        encoded = codec.encode(datagram)
        self.assertEqual(encoded[:2], b"\xff\xff")
        self.assertEqual(codec.decode(encoded[:40000]), [])
        self.assertEqual(codec.decode(encoded[40000:]), [datagram])

    def test_unframedIsOneDatagramPerRead(self) -> None:
        codec = DatagramCodec(False)
        self.assertEqual(codec.encode(b"abc"), b"abc")
        self.assertEqual(codec.decode(b"\x00\x03abc"), [b"\x00\x03abc"])


class FlowsTests(SynchronousTestCase):
    def test_admitTakesASlotUntilTheFlowEnds(self) -> None:
        table = flows(limit=1)
        clock = DatagramReactor()
        self.assertTrue(table.admit())
        flow = Flow(table, SOURCE, clock, 30)
        table.add(flow)
        self.assertIs(table.get(SOURCE), flow)
        self.assertEqual((table.slots.udp, len(table)), (1, 1))
        self.successResultOf(flow.end())
        self.assertEqual((table.slots.udp, len(table)), (0, 0))
        # Ending twice gives nothing back twice.
        self.successResultOf(flow.end())
        self.assertEqual(table.slots.udp, 0)

    def test_limitLogsOneErrorWithTheLoopName(self) -> None:
        table = flows(limit=1, loop="commonUDPLoop")
        self.assertTrue(table.admit())
        with capturedLogs() as events:
            self.assertFalse(table.admit())
        self.assertEqual(
            [formatEvent(e) for e in events], ["commonUDPLoop: UDP slot limit reached: 1/1"]
        )
        self.assertEqual(events[0]["log_level"].name, "error")

    def test_aReplacedFlowDoesNotReleaseItsSuccessorsSlot(self) -> None:
        table = flows(limit=2)
        clock = DatagramReactor()
        table.admit()
        old = Flow(table, SOURCE, clock, 30)
        table.add(old)
        table.admit()
        new = Flow(table, SOURCE, clock, 30)
        table.add(new)
        old.end()
        self.assertIs(table.get(SOURCE), new)
        self.assertEqual(table.slots.udp, 2)

    def test_endAll(self) -> None:
        table = flows()
        clock = DatagramReactor()
        ended: list[str] = []
        for n in range(3):
            table.admit()
            table.add(Flow(table, n, clock, 30, onEnd=lambda n=n: ended.append(f"flow {n}")))
        waits = table.endAll()
        self.assertEqual(len(waits), 3)
        self.assertEqual(ended, ["flow 0", "flow 1", "flow 2"])
        self.assertEqual(len(table), 0)
        # No idle timer is left behind.
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idleExpiry(self) -> None:
        table = flows()
        clock = DatagramReactor()
        table.admit()
        flow = Flow(table, SOURCE, clock, 30)
        table.add(flow)
        clock.advance(20)
        flow.idle.touch()
        clock.advance(29)
        self.assertFalse(flow.ended)
        clock.advance(1)
        self.assertTrue(flow.ended)
        self.assertEqual(table.slots.udp, 0)


class TargetFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = DatagramReactor()
        self.table = flows()
        self.replies = Replies()

    def flow(self, **kwargs: Any) -> TargetFlow:
        self.table.admit()
        flow = TargetFlow(
            self.table, SOURCE, self.reactor, 30, self.replies, defaultLogger(), **kwargs
        )
        self.table.add(flow)
        return flow

    def open(self, flow: TargetFlow) -> DatagramSocket:
        socket = self.reactor.listenUDP(0, flow)
        socket.connect("127.0.0.1", 8080)
        flow.opened(socket)  # type: ignore[arg-type]
        return socket

    def test_datagramsWaitForTheSocketThenGoInOrder(self) -> None:
        flow = self.flow()
        for n in range(QUEUE_LIMIT + 3):
            flow.send(b"%d" % n)
        socket = self.open(flow)
        self.assertEqual([d for d, _ in socket.written], [b"%d" % n for n in range(QUEUE_LIMIT)])
        flow.send(b"later")
        self.assertEqual(socket.written[-1], (b"later", None))

    def test_repliesGoBack(self) -> None:
        flow = self.flow()
        self.open(flow)
        flow.datagramReceived(b"answer", ("127.0.0.1", 8080))
        self.assertEqual(self.replies.datagrams, [b"answer"])
        self.assertEqual(self.replies.keys, [SOURCE])

    def test_trafficEitherWayKeepsItAlive(self) -> None:
        flow = self.flow()
        socket = self.open(flow)
        self.reactor.advance(20)
        flow.send(b"out")
        self.reactor.advance(20)
        flow.datagramReceived(b"in", ("127.0.0.1", 8080))
        self.reactor.advance(29)
        self.assertFalse(flow.ended)
        self.reactor.advance(1)
        self.assertTrue(flow.ended)
        self.assertFalse(socket.listening)
        self.assertEqual(self.table.slots.udp, 0)

    def test_countedWhereTheTargetSocketIsTheLocalOne(self) -> None:
        counters = Counters()
        flow = self.flow(counters=counters)
        flow.send(b"queued")
        self.assertEqual(counters.udptx, 0)
        self.open(flow)
        self.assertEqual(counters.udptx, 6)
        flow.send(b"abc")
        flow.datagramReceived(b"de", ("127.0.0.1", 8080))
        self.assertEqual((counters.udprx, counters.udptx), (2, 9))

    def test_replyDelayHoldsTheTargetSocket(self) -> None:
        """
        The source side's write limit holds reading from the target until it is paid.
        """
        self.replies.delay = 0.5
        flow = self.flow()
        socket = self.open(flow)
        flow.datagramReceived(b"x", ("127.0.0.1", 8080))
        self.assertFalse(socket.reading)
        self.reactor.advance(0.5)
        self.assertTrue(socket.reading)

    def test_readLimitHoldsTheTargetSocket(self) -> None:
        """
        §10.2: where the target socket is counted, reading from it waits for read tokens.
        """
        limiter = RateLimiter(RATE, self.reactor)
        flow = self.flow(counters=Counters(), limiter=limiter)
        socket = self.open(flow)
        for _ in range(2):
            flow.datagramReceived(b"x" * (RATE // 2), ("127.0.0.1", 8080))
        self.assertTrue(socket.reading)
        flow.datagramReceived(b"x" * (RATE // 2), ("127.0.0.1", 8080))
        self.assertFalse(socket.reading)
        self.reactor.advance(0.5)
        self.assertTrue(socket.reading)

    def test_endDuringAHoldDoesNotResume(self) -> None:
        self.replies.delay = 1.0
        flow = self.flow()
        socket = self.open(flow)
        flow.datagramReceived(b"x", ("127.0.0.1", 8080))
        flow.end()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(socket.reading)

    def test_endClosesTheSocketThenCallsOnEnd(self) -> None:
        seen: list[tuple[int, bool]] = []
        flow = self.flow(onEnd=lambda: seen.append((self.table.slots.udp, socket.listening)))
        socket = self.open(flow)
        self.successResultOf(flow.end())
        self.assertEqual(seen, [(0, True)])
        self.assertFalse(socket.listening)

    def test_refusedIsLoggedAtDebug(self) -> None:
        flow = self.flow()
        with capturedLogs() as events:
            flow.connectionRefused()
        self.assertEqual(events[0]["log_level"].name, "debug")
        self.assertFalse(flow.ended)


class ConnectTargetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = DatagramReactor()
        self.table = flows()

    def connect(self, targets: str, dial: str = "auto", ip: Any = None) -> tuple[Any, TargetFlow]:
        config = parse(f"client://127.0.0.1:9000/{targets}?mode=1")
        dialer = FakeTargetDialer(self.reactor, config.targets)
        if ip is not None:
            dialer.addresses[config.targets[0].host] = ip
        flow = TargetFlow(self.table, SOURCE, self.reactor, 30, Replies(), defaultLogger())
        flow.send(b"first")
        result = Deferred.fromCoroutine(
            connectTarget(self.reactor, dialer, flow, dial, 4096)  # type: ignore[arg-type]
        )
        return result, flow

    def test_ipv4(self) -> None:
        result, flow = self.connect("192.0.2.1:53")
        self.assertEqual(str(self.successResultOf(result)), "192.0.2.1:53")
        [(port, protocol, interface, size)] = self.reactor.udpServers
        self.assertEqual((port, interface, size), (0, "", 4096))
        self.assertIs(protocol, flow)
        [socket] = self.reactor.sockets
        self.assertEqual(socket.connectedTo, ("192.0.2.1", 53))
        self.assertEqual(socket.written, [(b"first", None)])

    def test_ipv6BindsTheIPv6Wildcard(self) -> None:
        result, _ = self.connect("[2001:db8::1]:53")
        self.successResultOf(result)
        self.assertEqual(self.reactor.udpServers[0][2], "::")
        self.assertEqual(self.reactor.sockets[0].connectedTo, ("2001:db8::1", 53))

    def test_dialAddressIsTheSource(self) -> None:
        result, _ = self.connect("192.0.2.1:53", dial="192.0.2.200")
        self.successResultOf(result)
        self.assertEqual(self.reactor.udpServers[0][2], "192.0.2.200")

    def test_resolvedName(self) -> None:
        result, _ = self.connect("dns.test:53", ip="192.0.2.9")
        self.successResultOf(result)
        self.assertEqual(self.reactor.sockets[0].connectedTo, ("192.0.2.9", 53))

    def test_noAnswerMeansLoopback(self) -> None:
        result, _ = self.connect("dns.test:53", ip="")
        self.successResultOf(result)
        self.assertEqual(self.reactor.sockets[0].connectedTo, ("127.0.0.1", 53))

    def test_resolutionFailure(self) -> None:
        result, _ = self.connect("dns.test:53", ip=OSError("no such host"))
        self.failureResultOf(result, OSError)
        self.assertEqual(self.reactor.sockets, [])

    def test_flowEndedWhileResolving(self) -> None:
        config = parse("client://127.0.0.1:9000/dns.test:53?mode=1")
        dialer = FakeTargetDialer(self.reactor, config.targets)
        dialer.pendingResolve = Deferred()
        flow = TargetFlow(self.table, SOURCE, self.reactor, 30, Replies(), defaultLogger())
        result = Deferred.fromCoroutine(
            connectTarget(self.reactor, dialer, flow, "auto", 4096)  # type: ignore[arg-type]
        )
        flow.end()
        dialer.pendingResolve.callback(None)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(self.reactor.sockets, [])


class TunnelFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = DatagramReactor()
        self.table = flows()
        self.replies: list[tuple[Any, bytes]] = []

    def flow(self, framed: bool = False) -> TunnelFlow:
        self.table.admit()
        flow = TunnelFlow(
            self.table, SOURCE, self.reactor, 30, framed, lambda *reply: self.replies.append(reply)
        )
        self.table.add(flow)
        return flow

    def test_datagramsWaitForThePoolConnection(self) -> None:
        flow = self.flow()
        for n in range(QUEUE_LIMIT + 1):
            flow.send(b"%d" % n)
        conn = FakePoolConnection()
        flow.attached(conn)  # type: ignore[arg-type]
        self.assertEqual(conn.written, [b"%d" % n for n in range(QUEUE_LIMIT)])
        flow.send(b"later")
        self.assertEqual(conn.written[-1], b"later")

    def test_framedBetweenOurPeers(self) -> None:
        flow = self.flow(framed=True)
        conn = FakePoolConnection()
        flow.attached(conn)  # type: ignore[arg-type]
        flow.send(b"abc")
        self.assertEqual(conn.written, [b"\x00\x03abc"])
        flow.dataReceived(b"\x00\x02xy\x00")
        flow.dataReceived(b"\x01z")
        self.assertEqual(self.replies, [(SOURCE, b"xy"), (SOURCE, b"z")])

    def test_onlyRepliesKeepItAlive(self) -> None:
        """
        §7.2: the entry side's flow ends 30 s after the last reply from the tunnel, whatever
        goes out.
        """
        flow = self.flow()
        conn = FakePoolConnection()
        flow.attached(conn)  # type: ignore[arg-type]
        self.reactor.advance(10)
        flow.dataReceived(b"reply")
        for _ in range(29):
            self.reactor.advance(1)
            flow.send(b"out")
        self.assertFalse(flow.ended)
        self.reactor.advance(1)
        self.assertTrue(flow.ended)
        self.assertTrue(conn.closed)
        self.assertEqual(self.table.slots.udp, 0)

    def test_poolConnectionLostEndsIt(self) -> None:
        flow = self.flow()
        conn = FakePoolConnection()
        conn.attach(flow)
        flow.attached(conn)  # type: ignore[arg-type]
        conn.lose()
        self.assertTrue(flow.ended)
        self.assertEqual(len(self.table), 0)

    def test_endBeforeAttached(self) -> None:
        flow = self.flow()
        self.successResultOf(flow.end())
        self.assertEqual(self.table.slots.udp, 0)


class PoolFeedTests(SynchronousTestCase):
    def test_feedsTheTargetFlowAndEndsWithTheConnection(self) -> None:
        reactor = DatagramReactor()
        table = flows()
        conn = FakePoolConnection()
        table.admit()
        flow = TargetFlow(
            table, "192.168.1.10:5353", reactor, 30, Replies(), defaultLogger(), onEnd=conn.close
        )
        table.add(flow)
        socket = reactor.listenUDP(0, flow)
        flow.opened(socket)  # type: ignore[arg-type]
        feed = PoolFeed(flow, DatagramCodec(True))
        conn.attach(feed)
        feed.dataReceived(b"\x00\x01a\x00\x02b")
        feed.dataReceived(b"c")
        self.assertEqual([d for d, _ in socket.written], [b"a", b"bc"])
        conn.lose()
        self.assertTrue(flow.ended)
        self.assertFalse(socket.listening)


class Listener(EntryListener):
    """
    An entry listener whose flows are L{TunnelFlow}s in one table, taken while C{open}.
    """

    def __init__(self, reactor: DatagramReactor, limiter: RateLimiter | None = None) -> None:
        super().__init__(reactor)
        self.reactor = reactor
        self.counters = Counters()
        self.limiter = limiter
        self.flows = flows(limit=1)
        self.table = self.flows
        self.open = True

    def accepting(self) -> bool:
        return self.open

    def newFlow(self, source: Any) -> Flow | None:
        if not self.table.admit():
            return None
        flow = TunnelFlow(self.table, source, self.reactor, 30, False, self.reply)
        self.table.add(flow)
        return flow


class EntryListenerTests(SynchronousTestCase):
    def listener(self, limiter: RateLimiter | None = None) -> tuple[Listener, DatagramSocket]:
        reactor = DatagramReactor()
        listener = Listener(reactor, limiter)
        socket = reactor.listenUDP(9000, listener)
        return listener, socket

    def test_oneFlowPerSourceAndCounted(self) -> None:
        listener, socket = self.listener()
        listener.datagramReceived(b"one", SOURCE)
        listener.datagramReceived(b"two", SOURCE)
        flow = listener.table.get(SOURCE)
        assert isinstance(flow, TunnelFlow)
        conn = FakePoolConnection()
        flow.attached(conn)  # type: ignore[arg-type]
        self.assertEqual(conn.written, [b"one", b"two"])
        flow.dataReceived(b"reply")
        self.assertEqual(socket.written, [(b"reply", SOURCE)])
        self.assertEqual((listener.counters.udprx, listener.counters.udptx), (6, 5))

    def test_noSlotDropsTheDatagramButCountsIt(self) -> None:
        listener, _ = self.listener()
        listener.datagramReceived(b"one", SOURCE)
        with capturedLogs():
            listener.datagramReceived(b"two", ("198.51.100.10", 5353))
        self.assertEqual(len(listener.table), 1)
        self.assertEqual(listener.counters.udprx, 6)

    def test_notAcceptingDropsEverything(self) -> None:
        listener, _ = self.listener()
        listener.open = False
        listener.datagramReceived(b"one", SOURCE)
        self.assertEqual(len(listener.table), 0)
        self.assertEqual(listener.counters.udprx, 0)

    def test_readLimitHoldsTheListener(self) -> None:
        reactor = DatagramReactor()
        listener = Listener(reactor, RateLimiter(RATE, reactor))
        socket = reactor.listenUDP(9000, listener)
        for _ in range(2):
            listener.datagramReceived(b"x" * (RATE // 2), SOURCE)
        self.assertTrue(socket.reading)
        listener.datagramReceived(b"x" * (RATE // 2), SOURCE)
        self.assertFalse(socket.reading)
        reactor.advance(0.5)
        self.assertTrue(socket.reading)

    def test_noResumeOnceItStoppedAccepting(self) -> None:
        reactor = DatagramReactor()
        listener = Listener(reactor, RateLimiter(RATE, reactor))
        socket = reactor.listenUDP(9000, listener)
        listener.datagramReceived(b"x" * (RATE * 2), SOURCE)
        listener.open = False
        reactor.advance(2)
        self.assertFalse(socket.reading)

    def test_replyAnswersTheWriteDelay(self) -> None:
        reactor = DatagramReactor()
        listener = Listener(reactor, RateLimiter(RATE, reactor))
        socket = reactor.listenUDP(9000, listener)
        self.assertEqual(listener.reply(SOURCE, b"x" * RATE), 0.0)
        self.assertAlmostEqual(listener.reply(SOURCE, b"x" * (RATE // 2)), 0.5)
        self.assertEqual(len(socket.written), 2)
        self.assertEqual(listener.counters.udptx, RATE + RATE // 2)


class RegistryTests(SynchronousTestCase):
    """
    Flows in the instance's L{Connections}: listed while they live, with their own counts;
    slot and C{deny} refusals counted; refused sources dropped before a flow.
    """

    def test_flowsAreListedWhileTheyLive(self) -> None:
        reactor = DatagramReactor()
        reactor.advance(50)
        registry = Connections(reactor)
        counters = Counters()
        table = Flows(
            Slots(0), defaultLogger(), "testUDPLoop", counters=counters, connections=registry
        )
        self.assertTrue(table.admit())
        flow = Flow(table, ("2001:db8::1", 53), reactor, 30)
        table.add(flow)
        exitFlow = Flow(table, "203.0.113.7:99", reactor, 30)
        table.add(exitFlow)
        flow.rx, flow.tx, flow.target = 3, 4, "10.0.0.5:53"
        self.assertEqual(
            registry.list(),
            [
                {
                    "id": "1",
                    "proto": "udp",
                    "remote": "[2001:db8::1]:53",
                    "target": "10.0.0.5:53",
                    "rx": 3,
                    "tx": 4,
                    "since": 50.0,
                },
                {
                    "id": "2",
                    "proto": "udp",
                    "remote": "203.0.113.7:99",
                    "target": "",
                    "rx": 0,
                    "tx": 0,
                    "since": 50.0,
                },
            ],
        )
        self.assertTrue(registry.close("1"))
        self.assertTrue(flow.ended)
        self.assertEqual([c["id"] for c in registry.list()], ["2"])

    def test_slotRefusalIsCounted(self) -> None:
        counters = Counters()
        table = Flows(Slots(1), defaultLogger(), "testUDPLoop", counters=counters)
        table.admit()
        with capturedLogs():
            table.admit()
        self.assertEqual(counters.refusedSlot, 1)

    def test_targetFlowCountsItsOwnBytesWhereItIsTheLocalSocket(self) -> None:
        reactor = DatagramReactor()
        replies = Replies()
        flow = TargetFlow(
            flows(), SOURCE, reactor, 30, replies, defaultLogger(), counters=Counters()
        )
        flow.opened(reactor.listenUDP(0, flow))  # type: ignore[arg-type]
        flow.send(b"abc")
        flow.datagramReceived(b"hello", ("10.0.0.5", 53))
        self.assertEqual((flow.rx, flow.tx), (5, 3))

    def test_listenerCountsPerFlowAndDropsRefusedSources(self) -> None:
        listener, socket = EntryListenerTests().listener()
        listener.screen = Screen(
            AccessList(deny=parseNetworks("198.51.100.0/24")),
            listener.reactor,
            listener.counters,
            defaultLogger(),
        )
        with capturedLogs():
            listener.datagramReceived(b"one", SOURCE)
        self.assertEqual(len(listener.table), 0)
        self.assertEqual((listener.counters.udprx, listener.counters.refusedDeny), (0, 1))
        other = ("203.0.113.1", 1)
        listener.datagramReceived(b"four", other)
        flow = listener.table.get(other)
        assert isinstance(flow, TunnelFlow)
        flow.dataReceived(b"re")
        self.assertEqual((flow.rx, flow.tx), (4, 2))
        self.assertEqual(socket.written, [(b"re", other)])
