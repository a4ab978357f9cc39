"""
Tests for L{nodepass.tunnel.exchange}: dialling a target for a connection, the PROXY header
before any relayed byte, which side is counted, the set of live relays with its slots, and
the drain at shutdown (dataplane spec §6.3, §6.4, §10.3, §10.4, §13.4).

No sockets: connections sit on L{StringTransportWithDisconnection}s, targets are dialled by
a L{FakeTargetDialer}, time is a L{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.errors import DialError
from nodepass.limits import Slots
from nodepass.log import defaultLogger
from nodepass.relay import Relay, RelayProtocol
from nodepass.stats import Counters
from nodepass.tunnel.exchange import ExchangeError, Exchanges, Target, tune
from nodepass.url import parse
from tests.fakes import FakeTargetDialer

URL = "client://127.0.0.1:9000/10.0.0.5:8080?mode=1"
USER = IPv4Address("TCP", "198.51.100.9", 40001)


def connected(address: object = USER) -> tuple[RelayProtocol, StringTransportWithDisconnection]:
    protocol = RelayProtocol()
    transport = StringTransportWithDisconnection(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


class Harness:
    def __init__(self, query: str = "", slots: int = 10) -> None:
        self.clock = MemoryReactorClock()
        self.config = parse(URL + query)
        self.dialer = FakeTargetDialer(self.clock, self.config.targets)
        self.counters = Counters()
        self.slots = Slots(slots)
        self.exchanges = Exchanges(
            self.clock,
            self.config,
            self.dialer,  # type: ignore[arg-type]
            self.counters,
            None,
            self.slots,
            defaultLogger(),
        )

    def toTarget(
        self, peer: RelayProtocol, source: object = None, *, targetCounted: bool = False
    ) -> Deferred[Relay | None]:
        assert self.slots.tryAcquire("tcp")
        where = source if source is not None else lambda: (USER.host, USER.port)
        return Deferred.fromCoroutine(
            self.exchanges.toTarget(
                peer,
                where,  # type: ignore[arg-type]
                "198.51.100.9:40001",
                targetCounted=targetCounted,
            )
        )

    def target(self) -> StringTransportWithDisconnection:
        ((_, transport),) = self.dialer.connected
        return transport  # type: ignore[no-any-return]


class ToTargetTests(SynchronousTestCase):
    def test_relaysWithThePeerCounted(self) -> None:
        h = Harness()
        user, userTransport = connected()
        user.dataReceived(b"early")
        with capturedLogs() as events:
            relay = self.successResultOf(h.toTarget(user))
        self.assertIsInstance(relay, Relay)
        self.assertEqual(h.exchanges.live, {relay})
        target = h.target()
        self.assertIsInstance(target.protocol, Target)
        self.assertEqual(target.value(), b"early")
        target.protocol.dataReceived(b"reply!")
        self.assertEqual(userTransport.value(), b"reply!")
        self.assertEqual((h.counters.tcprx, h.counters.tcptx), (5, 6))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["Starting exchange: 198.51.100.9:40001 <-> 10.0.0.5:8080"],
        )

    def test_targetCounted(self) -> None:
        """
        On the exit side the target is the local socket (§6.4).
        """
        h = Harness()
        conn, _ = connected()
        self.successResultOf(h.toTarget(conn, targetCounted=True))
        conn.dataReceived(b"request")
        h.target().protocol.dataReceived(b"answer!!")
        self.assertEqual((h.counters.tcprx, h.counters.tcptx), (8, 7))

    def test_proxyV1HeaderFirst(self) -> None:
        h = Harness("&proxy=1")
        user, _ = connected()
        user.dataReceived(b"GET / HTTP/1.1\r\n")
        self.successResultOf(h.toTarget(user, lambda: ("203.0.113.7", 51234)))
        self.assertEqual(
            h.target().value(),
            b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\r\nGET / HTTP/1.1\r\n",
        )

    def test_proxyV2Header(self) -> None:
        h = Harness("&proxy=2")
        user, _ = connected()
        self.successResultOf(h.toTarget(user))
        self.assertTrue(h.target().value().startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"))

    def test_proxyDestinationIsTheTargetAsConnected(self) -> None:
        h = Harness("&proxy=1")
        h.dialer.peer = IPv6Address("TCP", "2001:db8::5", 8443)
        user, _ = connected()
        self.successResultOf(h.toTarget(user))
        self.assertEqual(h.target().value(), b"PROXY TCP6 198.51.100.9 2001:db8::5 40001 8443\r\n")

    def test_noHeaderWithoutProxy(self) -> None:
        h = Harness()
        user, _ = connected()
        sources: list[int] = []
        self.successResultOf(h.toTarget(user, lambda: sources.append(1) or ("x", 1)))
        self.assertEqual(h.target().value(), b"")
        self.assertEqual(sources, [])

    def test_badSourceFailsTheHeader(self) -> None:
        h = Harness("&proxy=1")
        user, userTransport = connected()

        def source() -> tuple[str, int]:
            raise ValueError("invalid literal for int() with base 10: 'x'")

        failure = self.failureResultOf(h.toTarget(user, source), ExchangeError)
        self.assertEqual(
            failure.getErrorMessage(),
            "sendProxyHeader failed: invalid literal for int() with base 10: 'x'",
        )
        self.assertFalse(h.target().connected)
        self.assertTrue(userTransport.connected)
        self.assertEqual(h.exchanges.live, set())
        # The caller still holds its slot.
        self.assertEqual(h.slots.tcp, 1)

    def test_badIPFailsTheHeader(self) -> None:
        h = Harness("&proxy=1")
        user, _ = connected()
        failure = self.failureResultOf(h.toTarget(user, lambda: ("not-an-ip", 1)), ExchangeError)
        self.assertTrue(failure.getErrorMessage().startswith("sendProxyHeader failed: "))

    def test_dialFailure(self) -> None:
        h = Harness()
        h.dialer.failure = DialError("dial 10.0.0.5:8080 failed: refused")
        user, userTransport = connected()
        failure = self.failureResultOf(h.toTarget(user), ExchangeError)
        self.assertEqual(
            failure.getErrorMessage(),
            "dialWithRotation failed: dial 10.0.0.5:8080 failed: refused",
        )
        self.assertTrue(userTransport.connected)
        self.assertEqual(h.exchanges.live, set())

    def test_peerGoneDuringTheDial(self) -> None:
        h = Harness()
        user, userTransport = connected()
        userTransport.loseConnection()
        self.assertIsNone(self.successResultOf(h.toTarget(user)))
        self.assertFalse(h.target().connected)
        self.assertEqual(h.exchanges.live, set())
        self.assertEqual(h.slots.tcp, 1)

    def test_perConnectionLinesFollowTheLogLevel(self) -> None:
        def lines(query: str) -> list[str]:
            h = Harness(query)
            user, userTransport = connected()
            with capturedLogs() as events:
                self.successResultOf(h.toTarget(user))
                userTransport.loseConnection()
            return [formatEvent(e).split(":")[0] for e in events]

        self.assertEqual(lines("&log=warn"), [])
        self.assertEqual(lines(""), ["Starting exchange", "Exchange complete"])
        self.assertEqual(
            lines("&log=debug"), ["Target connection", "Starting exchange", "Exchange complete"]
        )

    def test_targetGetsNagleOff(self) -> None:
        class NoDelay(StringTransportWithDisconnection):
            noDelay = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.noDelay = enabled

        transport = NoDelay()
        tune(transport)
        self.assertTrue(transport.noDelay)
        # A transport without the option is left alone.
        tune(StringTransportWithDisconnection())


class LiveRelayTests(SynchronousTestCase):
    def test_endGivesTheSlotBack(self) -> None:
        h = Harness()
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        self.assertEqual((h.slots.tcp, len(h.exchanges)), (1, 1))
        with capturedLogs() as events:
            h.target().loseConnection()
        self.assertFalse(userTransport.connected)
        self.assertEqual((h.slots.tcp, len(h.exchanges)), (0, 0))
        self.assertEqual([formatEvent(e) for e in events], ["Exchange complete: EOF"])

    def test_joinCountsTheLocalSide(self) -> None:
        h = Harness()
        h.slots.tryAcquire("tcp")
        local, _ = connected()
        remote, remoteTransport = connected()
        relay = h.exchanges.join(local, remote)
        local.dataReceived(b"abc")
        self.assertEqual(remoteTransport.value(), b"abc")
        self.assertEqual(h.counters.tcprx, 3)
        self.assertIn(relay, h.exchanges.live)

    def test_drainWithNothingLive(self) -> None:
        h = Harness()
        self.successResultOf(h.exchanges.drain(5))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_drainClosesAndFiresOnceAllEnded(self) -> None:
        h = Harness()
        pairs = []
        for _ in range(2):
            user, userTransport = connected()
            self.successResultOf(h.toTarget(user))
            pairs.append(userTransport)
        d = h.exchanges.drain(5)
        # StringTransportWithDisconnection closes at once.
        self.successResultOf(d)
        self.assertFalse(any(t.connected for t in pairs))
        self.assertEqual(h.slots.tcp, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_drainAbortsAfterTheGracePeriod(self) -> None:
        h = Harness()
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        transports = [userTransport, h.target()]
        # Transports that never finish closing (a peer that stopped reading).
        for transport in transports:
            transport.loseConnection = lambda: None  # type: ignore[method-assign]
            transport.abortConnection = (  # type: ignore[method-assign]
                lambda t=transport: StringTransportWithDisconnection.loseConnection(t)
            )
        d = h.exchanges.drain(2)
        second = h.exchanges.drain(2)
        h.clock.advance(1.9)
        self.assertNoResult(d)
        h.clock.advance(0.1)
        self.successResultOf(d)
        self.successResultOf(second)
        self.assertFalse(any(t.connected for t in transports))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_drainFiresWhenTheLastRelayEndsEarly(self) -> None:
        h = Harness()
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        userTransport.loseConnection = lambda: None  # type: ignore[method-assign]
        target = h.target()
        target.loseConnection = lambda: None  # type: ignore[method-assign]
        d = h.exchanges.drain(5)
        self.assertNoResult(d)
        # The target goes; the user's side follows later, before the grace period is over.
        StringTransportWithDisconnection.loseConnection(target)
        h.clock.advance(1)
        self.assertNoResult(d)
        StringTransportWithDisconnection.loseConnection(userTransport)
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_abort(self) -> None:
        h = Harness()
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        userTransport.abortConnection = (  # type: ignore[method-assign]
            lambda: StringTransportWithDisconnection.loseConnection(userTransport)
        )
        h.exchanges.abort()
        self.assertEqual(h.exchanges.live, set())


class ConnectionsTests(SynchronousTestCase):
    """
    L{Connections}: every relay listed under its own id while it runs, with its own byte
    counts (the instance counters still get everything), and closed by id.
    """

    def test_relaysAreListedWithTheirOwnCounts(self) -> None:
        h = Harness()
        h.clock.advance(1700000000.5)
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        user.dataReceived(b"abc")
        h.target().protocol.dataReceived(b"defgh")
        other, _ = connected(IPv6Address("TCP", "2001:db8::1", 5))
        self.successResultOf(h.toTarget(other))
        other.dataReceived(b"x")
        self.assertEqual(
            h.exchanges.connections.list(),
            [
                {
                    "id": "1",
                    "proto": "tcp",
                    "remote": "198.51.100.9:40001",
                    "target": "10.0.0.5:8080",
                    "rx": 3,
                    "tx": 5,
                    "since": 1700000000.5,
                },
                {
                    "id": "2",
                    "proto": "tcp",
                    "remote": "[2001:db8::1]:5",
                    "target": "10.0.0.5:8080",
                    "rx": 1,
                    "tx": 0,
                    "since": 1700000000.5,
                },
            ],
        )
        self.assertEqual((h.counters.tcprx, h.counters.tcptx), (4, 5))
        # It leaves the list when it ends.
        userTransport.loseConnection()
        self.assertEqual([c["id"] for c in h.exchanges.connections.list()], ["2"])

    def test_exitSideNamesTheUserItWasTold(self) -> None:
        h = Harness()
        conn, _ = connected(IPv4Address("TCP", "192.0.2.50", 10101))
        self.successResultOf(h.toTarget(conn, targetCounted=True))
        conn.dataReceived(b"request")
        h.target().protocol.dataReceived(b"answer!!")
        [entry] = h.exchanges.connections.list()
        self.assertEqual(
            (entry["remote"], entry["target"], entry["rx"], entry["tx"]),
            ("198.51.100.9:40001", "10.0.0.5:8080", 8, 7),
        )

    def test_closeIsANormalClose(self) -> None:
        h = Harness()
        user, userTransport = connected()
        self.successResultOf(h.toTarget(user))
        targetTransport = h.target()
        self.assertTrue(h.exchanges.connections.close("1"))
        self.assertFalse(userTransport.connected)
        self.assertFalse(targetTransport.connected)
        self.assertEqual(h.exchanges.connections.list(), [])
        self.assertEqual(h.slots.tcp, 0)
        self.assertFalse(h.exchanges.connections.close("1"))
        self.assertFalse(h.exchanges.connections.close("nope"))

    def test_oneRegistryForSeveralExchanges(self) -> None:
        h = Harness()
        second = Exchanges(
            h.clock,
            h.config,
            h.dialer,  # type: ignore[arg-type]
            h.counters,
            None,
            h.slots,
            defaultLogger(),
            connections=h.exchanges.connections,
        )
        a, _ = connected()
        b, _ = connected()
        h.exchanges.join(a, connected()[0])
        second.join(b, connected()[0])
        self.assertEqual([c["id"] for c in h.exchanges.connections.list()], ["1", "2"])
        self.assertEqual(len(h.exchanges.connections), 2)
