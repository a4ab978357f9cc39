"""
Tests for L{nodepass.balance}: the C{lbs} strategies of L{Targets} and dialling with failover
and a source address in L{TargetDialer}, on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nodepass.balance import (
    DOWN_PENALTY,
    LOWEST_LATENCY,
    PRIMARY_BACKUP,
    ROUND_ROBIN,
    TargetDialer,
    Targets,
    connectTCP,
)
from nodepass.errors import DialError, ResolveError
from nodepass.resolve import Resolver
from nodepass.url import HostPort, parseHostPort
from tests.support import instanceLogger


def hosts(*texts: str) -> list[HostPort]:
    return [parseHostPort(text) for text in texts]


THREE = hosts("10.0.0.1:80", "10.0.0.2:81", "10.0.0.3:82")


class TargetsTests(SynchronousTestCase):
    def test_requiresATarget(self) -> None:
        with self.assertRaises(ValueError):
            Targets([], ROUND_ROBIN, Clock())

    def test_length(self) -> None:
        self.assertEqual(len(Targets(THREE, ROUND_ROBIN, Clock())), 3)

    # lbs=0 ---------------------------------------------------------------------------------

    def test_roundRobinStartsOneFurtherEachCall(self) -> None:
        targets = Targets(THREE, ROUND_ROBIN, Clock())
        self.assertEqual(
            [targets.order() for _ in range(4)],
            [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]],
        )

    def test_roundRobinAdvanceShiftsTheRotation(self) -> None:
        targets = Targets(THREE, ROUND_ROBIN, Clock())
        self.assertEqual(targets.advance(), 1)
        self.assertEqual(targets.order(), [1, 2, 0])
        self.assertEqual(targets.advance(), 0)
        self.assertEqual(targets.order(), [0, 1, 2])
        self.assertEqual(targets.order(), [1, 2, 0])

    def test_roundRobinIgnoresHealth(self) -> None:
        targets = Targets(THREE, ROUND_ROBIN, Clock())
        targets.failed(0)
        targets.succeeded(2, 0.001)
        self.assertEqual(targets.order(), [0, 1, 2])

    def test_roundRobinSingleTarget(self) -> None:
        targets = Targets(hosts("10.0.0.1:80"), ROUND_ROBIN, Clock())
        for _ in range(3):
            self.assertEqual(targets.order(), [0])
        self.assertEqual(targets.advance(), 0)

    # lbs=1 ---------------------------------------------------------------------------------

    def test_latencyUnmeasuredKeepListOrder(self) -> None:
        targets = Targets(THREE, LOWEST_LATENCY, Clock())
        self.assertEqual(targets.order(), [0, 1, 2])
        self.assertEqual(targets.order(), [0, 1, 2])

    def test_latencyLowestFirstUnmeasuredBeforeMeasured(self) -> None:
        targets = Targets(THREE, LOWEST_LATENCY, Clock())
        targets.succeeded(0, 0.3)
        targets.succeeded(1, 0.1)
        self.assertEqual(targets.order(), [2, 1, 0])
        targets.succeeded(2, 0.2)
        self.assertEqual(targets.order(), [1, 2, 0])

    def test_latencyRecentlyFailedLast(self) -> None:
        clock = Clock()
        targets = Targets(THREE, LOWEST_LATENCY, clock)
        targets.succeeded(0, 0.3)
        targets.succeeded(1, 0.1)
        targets.succeeded(2, 0.2)
        targets.failed(1)
        self.assertEqual(targets.order(), [2, 0, 1])
        clock.advance(DOWN_PENALTY - 0.001)
        self.assertEqual(targets.order(), [2, 0, 1])
        clock.advance(0.001)
        self.assertEqual(targets.order(), [1, 2, 0])

    def test_latencySuccessClearsTheFailure(self) -> None:
        targets = Targets(THREE, LOWEST_LATENCY, Clock())
        targets.failed(0)
        self.assertEqual(targets.order(), [1, 2, 0])
        targets.succeeded(0, 0.05)
        self.assertEqual(targets.order()[0], 1)
        self.assertEqual(targets.order()[-1], 0)  # measured after the unmeasured ones
        targets.succeeded(1, 0.5)
        targets.succeeded(2, 0.5)
        self.assertEqual(targets.order(), [0, 1, 2])

    def test_latencyIsAMovingAverage(self) -> None:
        targets = Targets(THREE, LOWEST_LATENCY, Clock())
        targets.succeeded(0, 1.0)
        self.assertEqual(targets.latency[0], 1.0)
        targets.succeeded(0, 0.0)
        self.assertAlmostEqual(targets.latency[0], 0.7)
        self.assertEqual(targets.latency[1:], [None, None])

    def test_latencyOrderDoesNotRotate(self) -> None:
        targets = Targets(THREE, LOWEST_LATENCY, Clock())
        targets.advance()
        self.assertEqual(targets.order(), [0, 1, 2])

    # lbs=2 ---------------------------------------------------------------------------------

    def test_primaryFirst(self) -> None:
        targets = Targets(THREE, PRIMARY_BACKUP, Clock())
        for _ in range(3):
            self.assertEqual(targets.order(), [0, 1, 2])
        targets.succeeded(2, 0.001)
        targets.succeeded(0, 1.0)
        self.assertEqual(targets.order(), [0, 1, 2])

    def test_failedPrimaryLastUntilThePenaltyExpires(self) -> None:
        clock = Clock()
        targets = Targets(THREE, PRIMARY_BACKUP, clock)
        targets.failed(0)
        self.assertEqual(targets.order(), [1, 2, 0])
        clock.advance(10)
        targets.failed(1)
        self.assertEqual(targets.order(), [2, 0, 1])
        clock.advance(DOWN_PENALTY - 10)
        self.assertEqual(targets.order(), [0, 2, 1])
        clock.advance(10)
        self.assertEqual(targets.order(), [0, 1, 2])

    def test_primaryBackInFavourAfterSuccess(self) -> None:
        targets = Targets(THREE, PRIMARY_BACKUP, Clock())
        targets.failed(0)
        targets.succeeded(0, 0.01)
        self.assertEqual(targets.order(), [0, 1, 2])


def refuse(reactor: MemoryReactorClock, index: int) -> None:
    """
    Fail the C{index}th connection attempt with a refusal.
    """
    reactor.tcpClients[index][2].clientConnectionFailed(
        reactor.connectors[index], Failure(ConnectionRefusedError())
    )


def complete(reactor: MemoryReactorClock, index: int) -> StringTransport:
    """
    Complete the C{index}th connection attempt.
    """
    transport = StringTransport()
    reactor.tcpClients[index][2].buildProtocol(None).makeConnection(transport)
    return transport


def noLookup(host: str) -> Deferred[str]:
    raise AssertionError(f"unexpected lookup of {host!r}")


class TargetDialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def dialer(
        self,
        targets: list[HostPort] = THREE,
        strategy: int = ROUND_ROBIN,
        source: str | None = None,
        lookup: object = noLookup,
    ) -> TargetDialer:
        resolver = Resolver(self.reactor, 300.0, lookup)  # type: ignore[arg-type]
        return TargetDialer(
            self.reactor, Targets(targets, strategy, self.reactor), resolver, 5.0, source
        )

    def test_connectsToTheFirstTarget(self) -> None:
        dialer = self.dialer()
        protocol = Protocol()
        d = dialer.connectDeferred(protocol)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.1", 80))
        self.assertEqual(self.reactor.tcpClients[0][3], 5.0)
        self.assertIsNone(self.reactor.tcpClients[0][4])
        self.assertNoResult(d)
        self.reactor.advance(0.25)
        transport = complete(self.reactor, 0)
        self.assertEqual(self.successResultOf(d), (protocol, 0))
        self.assertIs(protocol.transport, transport)
        self.assertEqual(dialer.targets.latency[0], 0.25)

    def test_failsOverToTheNextTarget(self) -> None:
        dialer = self.dialer(strategy=PRIMARY_BACKUP)
        protocol = Protocol()
        d = dialer.connectDeferred(protocol)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        refuse(self.reactor, 0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.2", 81))
        self.assertNoResult(d)
        complete(self.reactor, 1)
        self.assertEqual(self.successResultOf(d), (protocol, 1))
        # The failed primary is tried last now.
        self.assertEqual(dialer.targets.order(), [1, 2, 0])

    def test_allTargetsFail(self) -> None:
        dialer = self.dialer()
        d = dialer.connectDeferred(Protocol())
        for index in range(3):
            self.assertEqual(self.reactor.tcpClients[index][0], f"10.0.0.{index + 1}")
            refuse(self.reactor, index)
        failure = self.failureResultOf(d, DialError)
        self.assertTrue(str(failure.value).startswith("all 3 targets failed: "))
        self.assertIn("refused", str(failure.value))
        self.assertEqual(len(self.reactor.tcpClients), 3)

    def test_singleTargetFailureNamesIt(self) -> None:
        dialer = self.dialer(hosts("10.0.0.9:8080"))
        d = dialer.connectDeferred(Protocol())
        refuse(self.reactor, 0)
        failure = self.failureResultOf(d, DialError)
        self.assertTrue(str(failure.value).startswith("dial 10.0.0.9:8080 failed: "))

    def test_roundRobinRotatesBetweenDials(self) -> None:
        dialer = self.dialer()
        first = dialer.connectDeferred(Protocol())
        complete(self.reactor, 0)
        second = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[1][0], "10.0.0.2")
        complete(self.reactor, 1)
        self.assertEqual(self.successResultOf(first)[1], 0)
        self.assertEqual(self.successResultOf(second)[1], 1)

    def test_failoverWraps(self) -> None:
        dialer = self.dialer()
        dialer.targets.advance()
        dialer.targets.advance()
        d = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[0][0], "10.0.0.3")
        refuse(self.reactor, 0)
        self.assertEqual(self.reactor.tcpClients[1][0], "10.0.0.1")
        complete(self.reactor, 1)
        self.assertEqual(self.successResultOf(d)[1], 0)

    def test_namesAreResolvedBeforeDialling(self) -> None:
        answers: dict[str, Deferred[str]] = {}

        def lookup(host: str) -> Deferred[str]:
            answers[host] = Deferred()
            return answers[host]

        dialer = self.dialer(hosts("backend.test:443"), lookup=lookup)
        d = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients, [])
        answers["backend.test"].callback("192.0.2.7")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("192.0.2.7", 443))
        complete(self.reactor, 0)
        self.assertEqual(self.successResultOf(d)[1], 0)

    def test_resolveFailureFailsOverLikeADialFailure(self) -> None:
        def lookup(host: str) -> Deferred[str]:
            if host == "gone.test":
                return fail(ResolveError("no such host"))
            return succeed("192.0.2.8")

        dialer = self.dialer(hosts("gone.test:80", "fine.test:81"), lookup=lookup)
        d = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[0][:2], ("192.0.2.8", 81))
        complete(self.reactor, 0)
        self.assertEqual(self.successResultOf(d)[1], 1)

    def test_ipv6Target(self) -> None:
        dialer = self.dialer(hosts("[::1]:8443"))
        d = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[0][:2], ("::1", 8443))
        complete(self.reactor, 0)
        self.assertEqual(self.successResultOf(d)[1], 0)

    # dial= source address -----------------------------------------------------------------

    def test_sourceAddressIsBound(self) -> None:
        dialer = self.dialer(source="10.9.9.9")
        d = dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[0][4], ("10.9.9.9", 0))
        complete(self.reactor, 0)
        self.successResultOf(d)
        dialer.connectDeferred(Protocol())
        self.assertEqual(self.reactor.tcpClients[1][4], ("10.9.9.9", 0))

    def test_autoOrEmptySourceIsNotBound(self) -> None:
        for source in ("auto", "", None):
            reactor = self.reactor = MemoryReactorClock()
            self.dialer(source=source).connectDeferred(Protocol())
            self.assertIsNone(reactor.tcpClients[0][4], source)

    def test_boundFailureFallsBackToUnboundOnce(self) -> None:
        dialer = self.dialer(source="10.9.9.9")
        protocol = Protocol()
        with capturedLogs() as events:
            d = dialer.connectDeferred(protocol)
            refuse(self.reactor, 0)
        # The same target again, without the source address.
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.1", 80))
        self.assertIsNone(self.reactor.tcpClients[1][4])
        errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertTrue(
            errors[0].startswith(
                "dialWithRotation: fallback to system auto due to dialer failure: "
            ),
            errors[0],
        )
        complete(self.reactor, 1)
        self.assertEqual(self.successResultOf(d), (protocol, 0))
        # Never bound again, not even after more failures.
        with capturedLogs() as later:
            again = dialer.connectDeferred(Protocol())
            self.assertIsNone(self.reactor.tcpClients[2][4])
            refuse(self.reactor, 2)
            self.assertIsNone(self.reactor.tcpClients[3][4])
            complete(self.reactor, 3)
        self.successResultOf(again)
        self.assertEqual([e for e in later if e["log_level"].name == "error"], [])

    def test_logsThroughTheInstanceLogger(self) -> None:
        """
        Given a logger, the dialer's lines (here the source-address fallback
        and a failed target) go to it and not to the process-global publisher.
        """
        log, mine, seenGlobally = instanceLogger(self)
        resolver = Resolver(self.reactor, 300.0, noLookup, log=log)
        dialer = TargetDialer(
            self.reactor,
            Targets(THREE, ROUND_ROBIN, self.reactor),
            resolver,
            5.0,
            "10.9.9.9",
            log=log,
        )
        dialer.connectDeferred(Protocol())
        refuse(self.reactor, 0)  # bound: falls back to no source address
        refuse(self.reactor, 1)  # the same target unbound: the next one
        lines = [formatEvent(event) for event in mine]
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("dialWithRotation: fallback to system auto"))
        self.assertTrue(lines[1].startswith("Target 10.0.0.1:80 failed: "), lines[1])
        self.assertEqual(seenGlobally, [])

    def test_unboundRetryFailureMovesToTheNextTarget(self) -> None:
        dialer = self.dialer(source="10.9.9.9")
        d = dialer.connectDeferred(Protocol())
        refuse(self.reactor, 0)  # bound
        refuse(self.reactor, 1)  # unbound retry of the same target
        self.assertEqual(self.reactor.tcpClients[2][:2], ("10.0.0.2", 81))
        self.assertIsNone(self.reactor.tcpClients[2][4])
        complete(self.reactor, 2)
        self.assertEqual(self.successResultOf(d)[1], 1)

    # the per-connection path ---------------------------------------------------------------

    def test_connectAwaitsLikeConnectDeferred(self) -> None:
        dialer = self.dialer()
        protocol = Protocol()
        d = Deferred.fromCoroutine(dialer.connect(protocol))
        complete(self.reactor, 0)
        self.assertEqual(self.successResultOf(d), (protocol, 0))

    def test_dialLogsNothing(self) -> None:
        dialer = self.dialer()
        with capturedLogs() as events:
            d = dialer.connectDeferred(Protocol())
            factory = self.reactor.tcpClients[0][2]
            factory.doStart()
            complete(self.reactor, 0)
            factory.doStop()
        self.successResultOf(d)
        self.assertEqual(events, [])

    def test_cancelStopsTheAttempt(self) -> None:
        dialer = self.dialer()
        d = dialer.connectDeferred(Protocol())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)  # type: ignore[attr-defined]
        # A late failure report from the stopped attempt is ignored.
        refuse(self.reactor, 0)
        self.assertEqual(len(self.reactor.tcpClients), 1)


class HandoffTests(SynchronousTestCase):
    """
    The protocol that C{connectTCP}'s factory builds steps aside once connected.
    """

    def test_transportIsHandedOver(self) -> None:
        reactor = MemoryReactorClock()
        protocol = Protocol()
        d = connectTCP(reactor, "127.0.0.1", 80, protocol, 5.0)
        host, port, factory, timeout, bindAddress = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout, bindAddress), ("127.0.0.1", 80, 5.0, None))
        self.assertFalse(factory.noisy)
        handoff = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = handoff
        self.assertNoResult(d)
        handoff.makeConnection(transport)
        self.assertIs(self.successResultOf(d), protocol)
        self.assertIs(transport.protocol, protocol)
        self.assertIs(protocol.transport, transport)

    def test_eventsArePassedOnWithoutAHandover(self) -> None:
        reactor = MemoryReactorClock()
        protocol = Recorder()
        connectTCP(reactor, "::1", 80, protocol, 5.0)
        connectTCP(reactor, "::1", 81, Protocol(), 5.0)
        handoff = reactor.tcpClients[0][2].buildProtocol(None)
        # Half-close support is offered exactly when the dialled protocol has it.
        self.assertTrue(IHalfCloseableProtocol.providedBy(handoff))
        plain = reactor.tcpClients[1][2].buildProtocol(None)
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain))
        handoff.makeConnection(StringTransport())
        handoff.dataReceived(b"data")
        handoff.readConnectionLost()
        handoff.writeConnectionLost()
        handoff.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(protocol.events, ["made", b"data", "readLost", "writeLost", "lost"])
        self.assertEqual(handoff.logPrefix(), "Recorder")

    def test_failureFails(self) -> None:
        reactor = MemoryReactorClock()
        d = connectTCP(reactor, "127.0.0.1", 80, Protocol(), 5.0)
        refuse(reactor, 0)
        self.failureResultOf(d, ConnectionRefusedError)


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list[object] = []

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def readConnectionLost(self) -> None:
        self.events.append("readLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeLost")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.events.append("lost")
