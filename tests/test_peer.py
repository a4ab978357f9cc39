"""
The restart loop of a tunnel peer (L{nodepass.tunnel.peer.TunnelPeer}): the pause between
two cycles grows only while attempts keep failing.  Whose log a tunnel server's and a
tunnel client's lines go to.  And the shutdown drain of running relays.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nodepass.balance import TargetDialer, Targets
from nodepass.limits import Slots
from nodepass.log import defaultLogger
from nodepass.relay import RelayProtocol
from nodepass.resolve import Resolver
from nodepass.service import NodePassService
from nodepass.settings import Settings
from nodepass.stats import Counters
from nodepass.transports.websocket import ws
from nodepass.tunnel.client import TunnelClient
from nodepass.tunnel.exchange import Exchanges, ILiveConnections
from nodepass.tunnel.peer import MAX_BACKOFF, TunnelPeer
from nodepass.tunnel.server import TunnelServer
from nodepass.tunnel.session import Shared
from nodepass.url import Config, parse
from tests.support import instanceLogger

URL = "server://127.0.0.1:10101/127.0.0.1:8080"


class _Session:
    relays: tuple[Any, ...] = ()

    def adoptEntry(self, tcp: Any, udp: Any) -> None:
        pass

    def stop(self) -> Any:
        return succeed(None)


class _Peer(TunnelPeer):
    """
    A peer whose cycles follow a script: C{True} brings a session up before the cycle
    ends, C{False} fails at once.
    """

    def __init__(self, reactor: MemoryReactorClock, script: list[bool]) -> None:
        config = parse(URL)
        settings = Settings(serviceCooldown=1.0)
        shared = Shared(config, reactor, settings, None, Counters())  # type: ignore[arg-type]
        super().__init__(config, reactor, settings, shared)
        self.ext = True
        self.script = script
        self._rng.uniform = lambda low, high: 1.0  # type: ignore[method-assign]

    async def cycle(self) -> None:
        if self.script.pop(0):
            self.newSession(_Session())  # type: ignore[arg-type]
        raise ConnectionError("cycle over")


class BackoffTests(SynchronousTestCase):
    def pauses(self, script: list[bool]) -> list[float]:
        reactor = MemoryReactorClock()
        peer = _Peer(reactor, list(script))
        peer.startService()
        seen = []
        for _ in script[:-1]:
            (call,) = reactor.getDelayedCalls()
            delay = call.getTime() - reactor.seconds()
            seen.append(delay)
            reactor.advance(delay)
        self.flushLoggedErrors()
        peer.stopping = True
        return seen

    def test_failuresInARowDouble(self) -> None:
        self.assertEqual(self.pauses([False] * 5), [1.0, 2.0, 4.0, 8.0])

    def test_establishedSessionResetsTheBackoff(self) -> None:
        """
        After a session that came up, the next pause is the base cooldown again, however
        many attempts failed before it.
        """
        self.assertEqual(self.pauses([False, False, False, True, False, False]), [1, 2, 4, 1, 2])

    def test_backoffIsCapped(self) -> None:
        self.assertEqual(self.pauses([False] * 9)[-1], MAX_BACKOFF)


class UDPPort:
    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False


class Reactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also binds UDP (a server checks its tunnel port's UDP twin).
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[UDPPort] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> UDPPort:
        bound = UDPPort(protocol)
        self.udpPorts.append(bound)
        return bound


def noLookup(host: str) -> Deferred[str]:
    raise AssertionError(f"unexpected lookup of {host!r}")


def shared(config: Config, reactor: MemoryReactorClock, log: Logger) -> tuple[Shared, Resolver]:
    """
    What a composition root builds around a peer, all logging through C{log}.
    """
    resolver = Resolver(reactor, 300.0, noLookup, log=log)
    targets = Targets(config.targets, config.lbs, reactor)
    dialer = TargetDialer(reactor, targets, resolver, 5.0, log=log)
    return Shared(config, reactor, Settings(), dialer, Counters(), log=log), resolver


class InstanceLogTests(SynchronousTestCase):
    """
    Given a logger, a peer's lines and those of what it builds go to it, none to the
    process-global publisher: several instances share one process.
    """

    def test_server(self) -> None:
        log, mine, seenGlobally = instanceLogger(self)
        reactor = Reactor()
        config = parse("server://secret@127.0.0.1:10101/127.0.0.1:8080?mode=2&type=2")
        server = TunnelServer(
            config,
            reactor,
            Settings(),
            shared(config, reactor, log)[0],
            None,
            transport=ws,
            log=log,
        )
        # The WebSocket transport logs: the server uses its own copy, on our logger.
        self.assertIsNot(server.transport, ws)
        self.assertIs(server.transport.log, log)
        server.bind()
        self.assertEqual([port.listening for port in reactor.udpPorts], [False])
        server.startService()
        # A handshake with the wrong key is refused with a warning (by the handshake resource).
        channel = reactor.tcpServers[0][1].buildProtocol(None)
        channel.makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 40001))
        )
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n")
        self.successResultOf(server.stopService())
        self.assertEqual(
            [formatEvent(event) for event in mine],
            [
                "Pending tunnel handshake...",
                "Tunnel handshake rejected from 198.51.100.9: 401 Unauthorized",
                "Server shutdown complete",
            ],
        )
        self.assertEqual(seenGlobally, [])

    def test_client(self) -> None:
        """
        The C{Client error:} line a master watches for is one of them.
        """
        log, mine, seenGlobally = instanceLogger(self)
        reactor = MemoryReactorClock()
        config = parse("client://secret@127.0.0.1:10101/127.0.0.1:8080?mode=2")
        common, resolver = shared(config, reactor, log)
        client = TunnelClient(config, reactor, Settings(), common, resolver, log=log)
        client.startService()
        # The handshake's connection is refused.
        reactor.tcpClients[0][2].clientConnectionFailed(
            reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        # HostnameEndpoint gives up at its next attempt tick; the restart pause is longer.
        reactor.advance(0.3)
        self.successResultOf(client.stopService())
        self.assertEqual(
            [formatEvent(event) for event in mine],
            [
                "Pending tunnel handshake...",
                "Client error: tunnelHandshake: GET http://127.0.0.1:10101/: "
                "Connection was refused by other side.",
                "Client shutdown complete",
            ],
        )
        self.assertEqual(seenGlobally, [])


class _DrainingSession(_Session):
    """
    A session with one running relay between two in-memory connections.
    """

    def __init__(self, reactor: MemoryReactorClock, config: Config) -> None:
        self.stopped = False
        slots = Slots(0)
        self.exchanges = Exchanges(
            reactor,
            config,
            None,
            Counters(),
            None,
            slots,
            defaultLogger(),  # type: ignore[arg-type]
        )
        self.relays = self.exchanges.live  # type: ignore[assignment]
        self.transports: list[StringTransportWithDisconnection] = []
        sides = []
        for _ in range(2):
            side = RelayProtocol()
            transport = StringTransportWithDisconnection()
            transport.protocol = side
            side.makeConnection(transport)
            sides.append(side)
            self.transports.append(transport)
        self.exchanges.join(*sides)

    def stop(self) -> Any:
        self.stopped = True
        return succeed(None)


class DrainTests(SynchronousTestCase):
    """
    At shutdown every session's running relays get C{NP_SHUTDOWN_TIMEOUT} to finish, then
    are dropped (dataplane spec §13.4).
    """

    def peer(self, reactor: MemoryReactorClock) -> tuple[TunnelPeer, _DrainingSession]:
        config = parse(URL)
        settings = Settings(shutdownTimeout=2.0)
        shared = Shared(config, reactor, settings, None, Counters())  # type: ignore[arg-type]
        peer = TunnelPeer(config, reactor, settings, shared)
        session = _DrainingSession(reactor, config)
        peer.sessions.append(session)  # type: ignore[arg-type]
        return peer, session

    def test_relaysThatCloseAtOnce(self) -> None:
        reactor = MemoryReactorClock()
        peer, session = self.peer(reactor)
        self.successResultOf(peer.stopService())
        self.assertTrue(session.stopped)
        self.assertEqual(session.relays, set())
        self.assertFalse(any(t.connected for t in session.transports))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_relaysLeftAreAbortedAfterTheGracePeriod(self) -> None:
        reactor = MemoryReactorClock()
        peer, session = self.peer(reactor)
        for transport in session.transports:
            transport.loseConnection = lambda: None  # type: ignore[method-assign]
            transport.abortConnection = (  # type: ignore[method-assign]
                lambda t=transport: StringTransportWithDisconnection.loseConnection(t)
            )
        d = peer.stopService()
        reactor.advance(1.9)
        self.assertNoResult(d)
        self.assertEqual(len(session.relays), 1)
        reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(session.relays, set())


class _Listed:
    """
    A registry entry that records its close.
    """

    ident = ""
    since = 0.0

    def __init__(self) -> None:
        self.shut_ = False

    def describe(self) -> dict[str, Any]:
        return {"id": self.ident, "proto": "tcp", "since": self.since}

    def shut(self) -> None:
        self.shut_ = True


class LiveConnectionsTests(SynchronousTestCase):
    """
    A peer's registry is its L{Shared}'s, and the instance's root service finds it wherever
    it sits in the tree.
    """

    def test_rootListsAndClosesThroughThePeer(self) -> None:
        reactor = MemoryReactorClock()
        config = parse(URL)
        settings = Settings()
        shared = Shared(config, reactor, settings, None, Counters())  # type: ignore[arg-type]
        peer = TunnelPeer(config, reactor, settings, shared)
        self.assertTrue(ILiveConnections.providedBy(peer))
        self.assertIs(peer.connections, shared.connections)
        root = NodePassService(config, settings, Logger())
        middle = MultiService()
        middle.setServiceParent(root)
        peer.setServiceParent(middle)
        self.assertEqual(root.connections(), [])
        entry = _Listed()
        reactor.advance(7)
        peer.connections.add(entry)  # type: ignore[arg-type]
        self.assertEqual(root.connections(), [{"id": "1", "proto": "tcp", "since": 7.0}])
        self.assertTrue(root.closeConnection("1"))
        self.assertTrue(entry.shut_)
        self.assertFalse(root.closeConnection("2"))
