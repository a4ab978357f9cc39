"""
Unit tests for L{nodepass.tunnel.single.SingleEnd} on a L{MemoryReactorClock}: listeners,
the CHECK_POINT line and its PING probe, the slot limit, relaying an accepted connection
and the effect of the C{dns} TTL.  No sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nodepass.resolve import Resolver
from nodepass.settings import Settings
from nodepass.tunnel.single import SingleEnd
from nodepass.url import parse
from tests.support import instanceLogger

URL = "client://127.0.0.1:9000/127.0.0.1:80?mode=1"
USER = IPv4Address("TCP", "198.51.100.9", 40001)


@implementer(IListeningPort)
class FakeUDPPort:
    """
    A listening UDP port that records what is written through it and whether it reads.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False
        self.reading = True
        self.connectedTo: tuple[str, int] | None = None
        self.sent: list[tuple[bytes, Any]] = []

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", self.port)

    def connect(self, host: str, port: int) -> None:
        self.connectedTo = (host, port)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Reactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also records C{listenUDP} calls (it has none of its own)
    and can be told to refuse a listener.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[tuple[int, Any, str, int]] = []
        self.refuse: set[str] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if "tcp" in self.refuse:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        if "udp" in self.refuse:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.udpPorts.append((port, protocol, interface, maxPacketSize))
        fake = FakeUDPPort(port)
        protocol.makeConnection(fake)
        return fake


class CountingLookup:
    def __init__(self, answer: str = "192.0.2.7") -> None:
        self.answer = answer
        self.queries: list[str] = []

    def __call__(self, host: str) -> Deferred[str]:
        self.queries.append(host)
        return succeed(self.answer)


def checkpoints(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("npEvent")]


class SingleEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.lookup = CountingLookup()

    def single(self, url: str = URL, settings: Settings | None = None) -> SingleEnd:
        config = parse(url)
        resolver = Resolver(self.reactor, config.dnsTTL, self.lookup)
        return SingleEnd(config, self.reactor, settings or Settings(), resolver)

    def accept(
        self, service: SingleEnd, peer: IPv4Address = USER
    ) -> StringTransportWithDisconnection:
        """
        Accept one user connection on the TCP listener.
        """
        factory = self.reactor.tcpServers[0][1]
        protocol = factory.buildProtocol(peer)
        transport = StringTransportWithDisconnection(peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def completeTarget(self, index: int) -> StringTransportWithDisconnection:
        """
        Complete the C{index}th outbound connection.
        """
        protocol = self.reactor.tcpClients[index][2].buildProtocol(None)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", self.reactor.tcpClients[index][0], 80)
        )
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    # -- listeners ---------------------------------------------------------------------------

    def test_bindListensForTCPAndUDP(self) -> None:
        service = self.single()
        service.bind()
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, backlog, interface), (9000, 1024, "127.0.0.1"))
        self.assertIs(factory.forwarder, service)
        [(udpPort, protocol, udpInterface, size)] = self.reactor.udpPorts
        self.assertEqual((udpPort, udpInterface, size), (9000, "127.0.0.1", 16384))
        self.assertIs(protocol.forwarder, service)
        self.assertIsNotNone(service.tcpPort)
        self.assertIsNotNone(service.udpPort)

    def test_bindUsesTheUDPBufferSize(self) -> None:
        self.single(settings=Settings(udpBufferSize=4096)).bind()
        self.assertEqual(self.reactor.udpPorts[0][3], 4096)

    def test_notcpSkipsTheTCPListener(self) -> None:
        service = self.single(URL + "&notcp=1")
        service.bind()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(len(self.reactor.udpPorts), 1)
        self.assertIsNone(service.tcpPort)

    def test_noudpSkipsTheUDPListener(self) -> None:
        service = self.single(URL + "&noudp=1")
        service.bind()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(self.reactor.udpPorts, [])
        self.assertIsNone(service.udpPort)

    def test_bindFailureIsAStartupError(self) -> None:
        from nodepass.errors import StartupError

        self.reactor.refuse.add("udp")
        service = self.single()
        service.fallbackMessage = "no server mode either"
        with self.assertRaises(StartupError) as caught:
            service.bind()
        message = str(caught.exception)
        self.assertTrue(message.startswith("cannot listen on 127.0.0.1:9000: "), message)
        self.assertTrue(message.endswith(", no server mode either"), message)
        # The TCP listener bound before the failure is given up again.
        self.assertIsNone(service.tcpPort)

    def test_startServiceBindsOnce(self) -> None:
        service = self.single()
        service.bind()
        service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(len(self.reactor.udpPorts), 1)
        self.successResultOf(service.stopService())

    # -- CHECK_POINT -------------------------------------------------------------------------

    def test_checkpointAtStartAndEveryReportInterval(self) -> None:
        service = self.single()
        with capturedLogs() as events:
            service.startService()
            self.assertEqual(
                checkpoints(events),
                [
                    "CHECK_POINT|MODE=1|PING=0ms|POOL=0|TCPS=0|UDPS=0"
                    "|TCPRX=0|TCPTX=0|UDPRX=0|UDPTX=0"
                ],
            )
            self.reactor.advance(4.9)
            self.assertEqual(len(checkpoints(events)), 1)
            self.reactor.advance(0.1)
            self.assertEqual(len(checkpoints(events)), 2)
            for _ in range(3):
                self.reactor.advance(5)
            self.assertEqual(len(checkpoints(events)), 5)
            self.successResultOf(service.stopService())
            self.reactor.advance(60)
            self.assertEqual(len(checkpoints(events)), 5)
        for e in events:
            if e.get("npEvent"):
                self.assertTrue(e["log_namespace"].startswith("nodepass"))

    def test_checkpointFollowsTheReportSetting(self) -> None:
        service = self.single(settings=Settings(reportInterval=2.0))
        with capturedLogs() as events:
            service.startService()
            self.reactor.advance(2)
            self.reactor.advance(2)
        self.assertEqual(len(checkpoints(events)), 3)
        self.successResultOf(service.stopService())

    def test_checkpointPingIsTheTargetConnectTime(self) -> None:
        service = self.single()
        with capturedLogs() as events:
            service.startService()
            # The start-up CHECK_POINT launches a probe connection to the target.
            self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 80))
            self.assertEqual(self.reactor.tcpClients[0][3], 5.0)
            self.reactor.advance(0.003)
            probe = self.completeTarget(0)
            # The probe hangs up at once.
            self.assertFalse(probe.connected)
            self.reactor.advance(5 - 0.003)
        self.assertIn("|PING=3ms|", checkpoints(events)[1])
        self.assertEqual(service.ping, 3)
        self.successResultOf(service.stopService())

    def test_checkpointPingIsZeroAfterAFailedProbe(self) -> None:
        service = self.single()
        service.ping = 7
        service.startService()
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(service.ping, 0)
        self.successResultOf(service.stopService())

    # -- whose log -------------------------------------------------------------------------

    def test_logsThroughTheInstanceLogger(self) -> None:
        """
        Given a logger, every line of the forwarder and of what it made
        (accepted connections, its target dialer, the CHECK_POINT) goes to
        it and none to the process-global publisher: several instances share
        one process.
        """
        log, mine, seenGlobally = instanceLogger(self)
        config = parse(URL + "&slot=1&log=debug")
        resolver = Resolver(self.reactor, config.dnsTTL, self.lookup, log=log)
        service = SingleEnd(config, self.reactor, Settings(), resolver, log=log)
        service.bind()
        self.accept(service)
        self.accept(service)  # over the slot limit
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(
            [formatEvent(event) for event in mine],
            [
                "Tunnel connection: 10.0.0.1:12345 <-> 198.51.100.9:40001",
                "singleTCPLoop: TCP slot limit reached: 1/1",
                "Target 127.0.0.1:80 failed: Connection was refused by other side.",
                "singleTCPLoop: dialWithRotation failed: "
                "dial 127.0.0.1:80 failed: Connection was refused by other side.",
                # The refused second connection is counted in the line's suffix.
                "CHECK_POINT|MODE=1|PING=0ms|POOL=0|TCPS=0|UDPS=0|TCPRX=0|TCPTX=0|UDPRX=0|UDPTX=0"
                "|REFUSED_SLOT=1|REFUSED_DENY=0|REFUSED_BLOCK=0",
                "Client shutdown complete",
            ],
        )
        self.assertEqual(seenGlobally, [])

    # -- slots -------------------------------------------------------------------------------

    def test_slotLimitClosesTheExtraConnection(self) -> None:
        service = self.single(URL + "&slot=1")
        service.bind()
        with capturedLogs() as events:
            firstTransport = self.accept(service)
            secondTransport = self.accept(service)
        self.assertTrue(firstTransport.connected)
        self.assertFalse(secondTransport.connected)
        self.assertEqual(service.slots.tcp, 1)
        errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
        self.assertEqual(errors, ["singleTCPLoop: TCP slot limit reached: 1/1"])
        # Only the first one dials the target.
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_slotIsReleasedWhenAConnectionEndsBeforeItsTarget(self) -> None:
        service = self.single(URL + "&slot=1")
        service.bind()
        firstTransport = self.accept(service)
        firstTransport.loseConnection()
        self.assertEqual(service.slots.tcp, 0)
        thirdTransport = self.accept(service)
        self.assertTrue(thirdTransport.connected)
        self.assertEqual(service.slots.tcp, 1)

    def test_slotIsReleasedWhenTheRelayEnds(self) -> None:
        service = self.single(URL + "&slot=1")
        service.bind()
        user = self.accept(service)
        target = self.completeTarget(0)
        self.assertEqual(service.slots.tcp, 1)
        self.assertEqual(len(service.relays), 1)
        with capturedLogs() as events:
            user.loseConnection()
        self.assertFalse(target.connected)
        self.assertEqual(service.slots.tcp, 0)
        self.assertEqual(service.relays, set())
        self.assertIn("Exchange complete: EOF", [formatEvent(e) for e in events])
        againTransport = self.accept(service)
        self.assertTrue(againTransport.connected)

    # -- relaying ----------------------------------------------------------------------------

    def test_acceptedConnectionIsRelayedToTheTarget(self) -> None:
        service = self.single()
        service.bind()
        user = self.accept(service)
        # Reading waits for the target connection.
        self.assertEqual(user.producerState, "paused")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 80))
        user.protocol.dataReceived(b"early bytes")
        target = self.completeTarget(0)
        self.assertEqual(user.producerState, "producing")
        self.assertEqual(target.value(), b"early bytes")
        user.protocol.dataReceived(b"+more")
        target.protocol.dataReceived(b"reply")
        self.assertEqual(target.value(), b"early bytes+more")
        self.assertEqual(user.value(), b"reply")
        self.assertEqual((service.counters.tcprx, service.counters.tcptx), (16, 5))
        # Backpressure: the target transport's producer pauses the user side.
        target.producer.pauseProducing()
        self.assertEqual(user.producerState, "paused")
        target.producer.resumeProducing()
        self.assertEqual(user.producerState, "producing")

    def test_dialFailureClosesTheUserConnection(self) -> None:
        service = self.single(URL + "&slot=5")
        service.bind()
        with capturedLogs() as events:
            user = self.accept(service)
            self.reactor.tcpClients[0][2].clientConnectionFailed(
                self.reactor.connectors[0], Failure(ConnectionRefusedError())
            )
        self.assertFalse(user.connected)
        self.assertEqual(service.slots.tcp, 0)
        errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("singleTCPLoop: dialWithRotation failed: dial "))

    def test_userGoneBeforeTheTargetConnects(self) -> None:
        service = self.single()
        service.bind()
        user = self.accept(service)
        user.protocol.connectionLost(Failure(ConnectionDone()))
        target = self.completeTarget(0)
        self.assertFalse(target.connected)
        self.assertEqual(service.relays, set())

    def test_perConnectionLinesFollowTheLogLevel(self) -> None:
        def lines(url: str) -> list[str]:
            self.reactor = Reactor()
            service = self.single(url)
            service.bind()
            with capturedLogs() as events:
                user = self.accept(service)
                self.completeTarget(0)
                user.loseConnection()
            return [formatEvent(e) for e in events if e["log_level"].name in ("debug", "info")]

        self.assertEqual(lines(URL + "&log=warn"), [])
        self.assertEqual(
            lines(URL),
            ["Starting exchange: 198.51.100.9:40001 <-> 127.0.0.1:80", "Exchange complete: EOF"],
        )
        debug = lines(URL + "&log=debug")
        self.assertEqual(debug[0].split(":")[0], "Tunnel connection")
        self.assertTrue(debug[0].endswith(" <-> 198.51.100.9:40001"), debug[0])
        self.assertEqual(debug[1].split(":")[0], "Target connection")
        self.assertEqual(debug[2:], lines(URL))

    def test_relayedConnectionsTurnNagleOff(self) -> None:
        class NoDelayTransport(StringTransportWithDisconnection):
            noDelay = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.noDelay = enabled

        service = self.single()
        service.bind()
        factory = self.reactor.tcpServers[0][1]
        user = factory.buildProtocol(USER)
        userTransport = NoDelayTransport(peerAddress=USER)
        user.makeConnection(userTransport)
        target = self.reactor.tcpClients[0][2].buildProtocol(None)
        targetTransport = NoDelayTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 80))
        target.makeConnection(targetTransport)
        self.assertTrue(userTransport.noDelay)
        self.assertTrue(targetTransport.noDelay)

    # -- dns TTL -----------------------------------------------------------------------------

    def test_dnsZeroLooksUpForEveryConnection(self) -> None:
        service = self.single("client://127.0.0.1:9000/backend.test:80?mode=1&dns=0")
        service.bind()
        for _ in range(3):
            self.accept(service)
        self.assertEqual(self.lookup.queries, ["backend.test"] * 3)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("192.0.2.7", 80)] * 3)

    def test_dnsTTLLooksUpOnceWithinTheTTL(self) -> None:
        service = self.single("client://127.0.0.1:9000/backend.test:80?mode=1&dns=5m")
        service.bind()
        for _ in range(3):
            self.accept(service)
            self.reactor.advance(60)
        self.assertEqual(self.lookup.queries, ["backend.test"])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("192.0.2.7", 80)] * 3)
        self.reactor.advance(120)
        self.accept(service)
        self.assertEqual(self.lookup.queries, ["backend.test"] * 2)

    def test_ipTargetsNeverLookUp(self) -> None:
        service = self.single()
        service.bind()
        self.accept(service)
        self.accept(service)
        self.assertEqual(self.lookup.queries, [])
        self.assertEqual(len(self.reactor.tcpClients), 2)

    # -- UDP -------------------------------------------------------------------------------

    def test_udpDatagramsAreForwardedPerSource(self) -> None:
        service = self.single(URL + "&slot=3")
        service.bind()
        listener = self.reactor.udpPorts[0][1]
        source = ("198.51.100.9", 5353)
        listener.datagramReceived(b"query", source)
        # One connected socket per source, towards the target.
        [(port, session, _, _)] = self.reactor.udpPorts[1:]
        self.assertEqual(port, 0)
        self.assertEqual(session.transport.connectedTo, ("127.0.0.1", 80))
        self.assertEqual(session.transport.sent, [(b"query", None)])
        self.assertEqual(service.slots.udp, 1)
        listener.datagramReceived(b"again", source)
        self.assertEqual(len(self.reactor.udpPorts), 2)
        session.datagramReceived(b"answer", ("127.0.0.1", 80))
        self.assertEqual(service.udpPort.sent, [(b"answer", source)])  # type: ignore[union-attr]
        self.assertEqual((service.counters.udprx, service.counters.udptx), (10, 6))

    def test_udpSessionEndsAfterTheReadTimeout(self) -> None:
        service = self.single(URL + "&slot=3", settings=Settings(udpReadTimeout=30.0))
        service.bind()
        listener = self.reactor.udpPorts[0][1]
        listener.datagramReceived(b"ping", ("198.51.100.9", 5353))
        session = self.reactor.udpPorts[1][1]
        self.reactor.advance(20)
        session.datagramReceived(b"pong", ("127.0.0.1", 80))
        self.reactor.advance(29)
        self.assertEqual(service.slots.udp, 1)
        self.reactor.advance(1)
        self.assertEqual(service.slots.udp, 0)
        self.assertEqual(service.udpSessions, {})
        self.assertTrue(session.transport.stopped)

    def test_udpRatePausesTheListener(self) -> None:
        # rate=1: 125 000 bytes per second.
        service = self.single(URL + "&rate=1")
        service.bind()
        listener = self.reactor.udpPorts[0][1]
        source = ("198.51.100.9", 5353)
        listener.datagramReceived(b"x" * 62_500, source)
        listener.datagramReceived(b"x" * 62_500, source)
        self.assertTrue(service.udpPort.reading)  # type: ignore[union-attr]
        listener.datagramReceived(b"x" * 62_500, source)
        self.assertFalse(service.udpPort.reading)  # type: ignore[union-attr]
        self.reactor.advance(0.5)
        self.assertTrue(service.udpPort.reading)  # type: ignore[union-attr]

    def test_udpRatePauseLastsUntilAllDebtIsPaid(self) -> None:
        service = self.single(URL + "&rate=1")
        service.bind()
        listener = self.reactor.udpPorts[0][1]
        source = ("198.51.100.9", 5353)
        # One doRead: four datagrams arrive back to back, after the pause has begun.
        for _ in range(4):
            listener.datagramReceived(b"x" * 62_500, source)
        self.reactor.advance(0.5)
        self.assertFalse(service.udpPort.reading)  # type: ignore[union-attr]
        self.reactor.advance(0.5)
        self.assertTrue(service.udpPort.reading)  # type: ignore[union-attr]

    # -- stopping ----------------------------------------------------------------------------

    def test_stopServiceStopsListenersAndWaitsForRelays(self) -> None:
        service = self.single()
        service.startService()
        udpPort = service.udpPort
        user = self.accept(service)
        # tcpClients[0] is the health probe; [1] is the user's target.
        target = self.completeTarget(1)
        d = service.stopService()
        self.assertTrue(udpPort.stopped)  # type: ignore[union-attr]
        self.assertIsNone(service.tcpPort)
        # Relays were asked to close; StringTransportWithDisconnection closes at once.
        self.assertFalse(user.connected)
        self.assertFalse(target.connected)
        self.successResultOf(d)

    def test_stopServiceAbortsRelaysAfterTheGracePeriod(self) -> None:
        service = self.single(settings=Settings(shutdownTimeout=2.0))
        service.bind()
        user = self.accept(service)
        target = self.completeTarget(0)
        # Transports that never finish closing (a peer that stopped reading).
        for transport in (user, target):
            transport.loseConnection = lambda: None  # type: ignore[method-assign]
            transport.abortConnection = (  # type: ignore[method-assign]
                lambda t=transport: StringTransportWithDisconnection.loseConnection(t)
            )
        d = service.stopService()
        self.assertNoResult(d)
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.successResultOf(d)
        self.assertFalse(user.connected)
        self.assertFalse(target.connected)


def test_plainStringTransportAlsoWorksForTheSlotLimit() -> None:
    """
    The slot check closes the extra connection itself (it does not rely on
    connectionLost being delivered synchronously).
    """
    reactor = Reactor()
    config = parse(URL + "&slot=1")
    service = SingleEnd(config, reactor, Settings(), Resolver(reactor, 0, CountingLookup()))
    service.bind()
    factory = reactor.tcpServers[0][1]
    transports = []
    for _ in range(2):
        transport = StringTransport(peerAddress=USER)
        factory.buildProtocol(USER).makeConnection(transport)
        transports.append(transport)
    assert [t.disconnecting for t in transports] == [False, True]


class SingleEndAccessTests(SynchronousTestCase):
    """
    C{allow}/C{deny} on the single-end listeners, refusal counts, and the list of live
    connections (L{SingleEnd.connections}).
    """

    def setUp(self) -> None:
        self.reactor = Reactor()

    def single(self, url: str) -> SingleEnd:
        config = parse(url)
        resolver = Resolver(self.reactor, config.dnsTTL, CountingLookup())
        return SingleEnd(config, self.reactor, Settings(), resolver)

    def connected(self, protocol: Any, peer: IPv4Address) -> StringTransportWithDisconnection:
        transport = StringTransportWithDisconnection(peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def accept(self, service: SingleEnd) -> StringTransportWithDisconnection:
        return self.connected(self.reactor.tcpServers[0][1].buildProtocol(USER), USER)

    def completeTarget(self, index: int) -> StringTransportWithDisconnection:
        protocol = self.reactor.tcpClients[index][2].buildProtocol(None)
        return self.connected(protocol, IPv4Address("TCP", self.reactor.tcpClients[index][0], 80))

    def test_deniedTCPPeerGetsNoProtocol(self) -> None:
        service = self.single(URL + "&deny=198.51.100.0/24&slot=5")
        service.bind()
        factory = self.reactor.tcpServers[0][1]
        with capturedLogs() as events:
            self.assertIsNone(factory.buildProtocol(USER))
            self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "198.51.100.9", 40002)))
        self.assertEqual(service.slots.tcp, 0)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(service.counters.refusedDeny, 2)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["singleTCPLoop: refused 198.51.100.9:40001: in deny 198.51.100.0/24"],
        )
        # Others are relayed as before.
        other = IPv4Address("TCP", "203.0.113.5", 40003)
        self.assertIsNotNone(factory.buildProtocol(other))

    def test_allowListAdmitsOnlyItsPeers(self) -> None:
        service = self.single(URL + "&allow=203.0.113.0/24")
        service.bind()
        factory = self.reactor.tcpServers[0][1]
        self.assertIsNone(factory.buildProtocol(USER))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "203.0.113.5", 1)))
        self.assertEqual(service.counters.refusedDeny, 1)

    def test_deniedUDPSourceIsDroppedBeforeAFlow(self) -> None:
        service = self.single(URL + "&deny=198.51.100.9")
        service.bind()
        listener = self.reactor.udpPorts[0][1]
        listener.datagramReceived(b"query", ("198.51.100.9", 5353))
        listener.datagramReceived(b"query", ("::ffff:198.51.100.9", 5354))
        self.assertEqual(len(self.reactor.udpPorts), 1)
        self.assertEqual(service.udpSessions, {})
        self.assertEqual((service.slots.udp, service.counters.udprx), (0, 0))
        self.assertEqual(service.counters.refusedDeny, 2)
        listener.datagramReceived(b"query", ("203.0.113.5", 5353))
        self.assertEqual(len(self.reactor.udpPorts), 2)

    def test_slotAndBlockRefusalsAreCounted(self) -> None:
        service = self.single(URL + "&slot=1&block=2")
        service.bind()
        first = self.accept(service)
        self.accept(service)
        self.assertEqual(service.counters.refusedSlot, 1)
        listener = self.reactor.udpPorts[0][1]
        listener.datagramReceived(b"q", ("203.0.113.5", 1))
        self.assertEqual(service.counters.refusedSlot, 2)
        first.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertFalse(first.connected)
        self.assertEqual(service.counters.refusedBlock, 1)
        self.assertEqual(service.counters.refusedDeny, 0)

    def test_liveConnectionsAreListedAndClosed(self) -> None:
        service = self.single(URL + "&slot=5")
        service.bind()
        self.reactor.advance(1000)
        user = self.accept(service)
        target = self.completeTarget(0)
        user.protocol.dataReceived(b"hello")
        target.protocol.dataReceived(b"hi")
        listener = self.reactor.udpPorts[0][1]
        listener.datagramReceived(b"query", ("2001:db8::9", 5353))
        [(_, flow, _, _)] = self.reactor.udpPorts[1:]
        flow.datagramReceived(b"answer", ("127.0.0.1", 80))
        listed = service.connections.list()
        self.assertEqual(
            listed,
            [
                {
                    "id": "1",
                    "proto": "tcp",
                    "remote": "198.51.100.9:40001",
                    "target": "127.0.0.1:80",
                    "rx": 5,
                    "tx": 2,
                    "since": 1000.0,
                },
                {
                    "id": "2",
                    "proto": "udp",
                    "remote": "[2001:db8::9]:5353",
                    "target": "127.0.0.1:80",
                    "rx": 5,
                    "tx": 6,
                    "since": 1000.0,
                },
            ],
        )
        # Closing the relay closes the user's connection (a normal close).
        self.assertTrue(service.connections.close("1"))
        self.assertFalse(user.connected)
        self.assertFalse(service.connections.close("1"))
        self.assertTrue(service.connections.close("2"))
        self.assertEqual(service.connections.list(), [])
        self.assertEqual((service.slots.tcp, service.slots.udp), (0, 0))
        # The instance counters still hold everything.
        self.assertEqual((service.counters.tcprx, service.counters.tcptx), (5, 2))
