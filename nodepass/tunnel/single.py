"""Single-end forwarding: ``client://host:port/target`` with no server.

The client listens on its tunnel address (TCP unless ``notcp=1``, UDP unless
``noudp=1``) and forwards every connection and every datagram flow straight
to the targets (dataplane spec §2.2, §7.4, §10).  Peers that ``allow``/``deny``
refuse are closed (TCP) or dropped (UDP) before anything else happens; every
relay and flow is listed in L{SingleEnd.connections}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass import sniff
from nodepass.access import AccessList, Screen
from nodepass.balance import TargetDialer, Targets, connectTCP
from nodepass.errors import StartupError
from nodepass.limits import RateLimiter, Slots
from nodepass.log import defaultLogger, wants
from nodepass.relay import Relay
from nodepass.resolve import Resolver
from nodepass.settings import Settings
from nodepass.stats import Counters, logCheckpoint
from nodepass.tunnel.admit import AdmittedUser, hostPort, screened
from nodepass.tunnel.exchange import Connections, Exchanges, ILiveConnections, tune
from nodepass.tunnel.udp import EntryListener, Flow, Flows, TargetFlow, connectTarget
from nodepass.url import Config, HostPort


class _Inbound(AdmittedUser):
    """
    An accepted user connection: take a slot, optionally sniff the first
    bytes (``block=``), connect a target, then relay.
    """

    factory: _InboundFactory
    loop = "singleTCPLoop"

    @property
    def log(self) -> Logger:
        return self.factory.forwarder.log

    @property
    def slots(self) -> Slots:
        return self.factory.forwarder.slots

    @property
    def counters(self) -> Counters:
        return self.factory.forwarder.counters

    @property
    def block(self) -> str:
        return self.factory.forwarder.config.block

    def connectionMade(self) -> None:
        super().connectionMade()
        forwarder = self.factory.forwarder
        if not self.admit():
            return
        forwarder.inbound.add(self)
        tune(self.transport)
        if forwarder.logDebug:
            forwarder.log.debug(
                "Tunnel connection: {local} <-> {peer}",
                local=hostPort(self.transport.getHost()),  # type: ignore[union-attr]
                peer=self.peerText,
            )
        self.screen()

    def proceed(self) -> None:
        self._dial()

    def _dial(self) -> None:
        self.gate.pause("connect")
        forwarder = self.factory.forwarder
        exchange = forwarder.exchanges.toTarget(
            self, self._source, self.peerText if forwarder.logInfo else "", targetCounted=False
        )
        Deferred.fromCoroutine(exchange).addCallbacks(self._relaying, self._failed)

    def _source(self) -> tuple[str, int]:
        user: Any = self.transport.getPeer()  # type: ignore[union-attr]
        return user.host, user.port

    def _relaying(self, relay: Relay | None) -> None:
        if relay is not None:
            self.factory.forwarder.inbound.discard(self)
            self.gate.resume("connect")

    def _failed(self, reason: Failure) -> None:
        self.log.error("{loop}: {reason}", loop=self.loop, reason=reason.getErrorMessage())
        if not self.closed:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        self.factory.forwarder.inbound.discard(self)


class _InboundFactory(Factory):
    protocol = _Inbound  # type: ignore[assignment]
    noisy = False

    def __init__(self, forwarder: SingleEnd) -> None:
        self.forwarder = forwarder

    def buildProtocol(self, addr: Any) -> Any:
        # Refused peers are closed at once: no byte read, no slot taken.
        if not screened(self.forwarder.screen, addr, "singleTCPLoop"):
            return None
        return super().buildProtocol(addr)


class _UDPListener(EntryListener):
    """
    The UDP socket on the tunnel address: one L{TargetFlow} per source.
    """

    def __init__(self, forwarder: SingleEnd) -> None:
        super().__init__(forwarder.clock)
        self.forwarder = forwarder
        self.counters = forwarder.counters
        self.limiter = forwarder.limiter
        self.flows = forwarder.udpFlows
        self.screen = forwarder.screen
        self.loop = "singleUDPLoop"

    def accepting(self) -> bool:
        return self.forwarder.udpPort is not None

    def newFlow(self, source: Any) -> Flow | None:
        return self.forwarder.openUDPSession(self, source)


@implementer(ILiveConnections)
class SingleEnd(Service):
    """
    The single-end forwarder service.  Binding happens in C{startService};
    a failure raises L{StartupError}.

    @param log: the instance's logger, which everything the forwarder makes
        logs through (by default, one publishing to the global log publisher).

    @ivar connections: the live relays and flows (L{Connections}).
    @ivar screen: the C{allow}/C{deny} check of both listeners.
    """

    name = "single-end"

    #: Appended to a bind failure (mode 0: why no dual-end fallback happened).
    fallbackMessage = ""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        resolver: Resolver,
        counters: Counters | None = None,
        *,
        log: Logger | None = None,
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self.config = config
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.settings = settings
        self.resolver = resolver
        self.counters = counters if counters is not None else Counters()
        self.slots = Slots(config.slot)
        self.connections = Connections(reactor)
        self.screen = Screen(
            AccessList(config.allow, config.deny), reactor, self.counters, self.log
        )
        # Per-connection log lines are only built when the log level keeps them.
        self.logDebug = wants(config.log, "debug")
        self.logInfo = wants(config.log, "info")
        self.sniff = sniff.needsSniff(config.block)
        self.limiter = RateLimiter.fromMbps(config.rate, reactor) if config.rate else None
        self.targets = Targets(config.targets, config.lbs, reactor)
        self.dialer = TargetDialer(
            reactor,
            self.targets,
            resolver,
            settings.tcpDialTimeout,
            None if config.dial == "auto" else config.dial,
            log=self.log,
        )
        self.exchanges = Exchanges(
            reactor,
            config,
            self.dialer,
            self.counters,
            self.limiter,
            self.slots,
            self.log,
            connections=self.connections,
        )
        #: The live relays (L{Exchanges.live}).
        self.relays = self.exchanges.live
        self.tcpPort: IListeningPort | None = None
        self.udpPort: IListeningPort | None = None
        self.inbound: set[_Inbound] = set()
        self.udpFlows = Flows(
            self.slots,
            self.log,
            "singleUDPLoop",
            counters=self.counters,
            connections=self.connections,
        )
        self.ping = 0
        self._health = LoopingCall(self.checkpoint)
        self._health.clock = reactor

    # -- lifecycle ---------------------------------------------------------

    def bind(self) -> None:
        """
        Bind the tunnel address; raises L{StartupError} when it is taken.
        """
        address: HostPort = self.config.tunnel
        interface = address.host or ""
        try:
            if not self.config.notcp:
                self.tcpPort = self.reactor.listenTCP(
                    address.port, _InboundFactory(self), backlog=1024, interface=interface
                )
            if not self.config.noudp:
                self.udpPort = self.reactor.listenUDP(
                    address.port,
                    _UDPListener(self),
                    interface=interface,
                    maxPacketSize=self.settings.udpBufferSize,
                )
        except CannotListenError as error:
            if self.tcpPort is not None:
                self.tcpPort.stopListening()
                self.tcpPort = None
            message = f"cannot listen on {address}: {error.socketError}"
            if self.fallbackMessage:
                message = f"{message}, {self.fallbackMessage}"
            raise StartupError(message) from error

    def privilegedStartService(self) -> None:
        """
        Bind the listeners (before twistd drops privileges); L{StartupError} on failure.
        """
        if self.tcpPort is None and self.udpPort is None:
            self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.tcpPort is None and self.udpPort is None:
            self.bind()
        super().startService()
        self._health.start(self.settings.reportInterval, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._health.running:
            self._health.stop()
        self.screen.stop()
        waits: list[Deferred[Any]] = []
        for port in (self.tcpPort, self.udpPort):
            if port is not None:
                waits.append(port.stopListening() or succeed(None))  # type: ignore[arg-type]
        self.tcpPort = self.udpPort = None
        waits.extend(self.udpFlows.endAll())
        for inbound in list(self.inbound):
            inbound.transport.loseConnection()  # type: ignore[union-attr]
        waits.append(self.exchanges.drain(self.settings.shutdownTimeout))
        done = DeferredList(waits, consumeErrors=True)
        done.addCallback(lambda _: self.log.info("Client shutdown complete"))
        return done  # type: ignore[return-value]

    # -- UDP ----------------------------------------------------------------

    @property
    def udpSessions(self) -> dict[Any, Flow]:
        """
        The live UDP flows, by source address.
        """
        return self.udpFlows.live

    def openUDPSession(self, listener: EntryListener, source: Any) -> TargetFlow | None:
        """
        A new flow for C{source}, with its own socket towards the target
        (dataplane spec §7.4); C{None} when no slot is left.
        """
        flows = self.udpFlows
        if not flows.admit():
            return None
        flow = TargetFlow(
            flows, source, self.clock, self.settings.udpReadTimeout, listener.reply, self.log
        )
        flows.add(flow)
        opening = Deferred.fromCoroutine(
            connectTarget(
                self.reactor, self.dialer, flow, self.config.dial, self.settings.udpBufferSize
            )
        )

        def opened(target: HostPort | None) -> None:
            if target is not None:
                self.log.debug(
                    "Target connection: {source} <-> {target}",
                    source=hostPort(self.udpPort.getHost()) if self.udpPort else "?",  # type: ignore[attr-defined]
                    target=target,
                )

        def failed(reason: Failure) -> None:
            self.log.error("singleUDPLoop: {reason}", reason=reason.getErrorMessage())
            flow.end()

        opening.addCallback(opened).addErrback(failed)
        return flow

    # -- health -------------------------------------------------------------

    def checkpoint(self) -> None:
        """
        Log the CHECK_POINT line, then measure the next target's TCP connect
        time for the following one (dataplane spec §10.9).
        """
        logCheckpoint(self.log, 1, self.ping, 0, self.slots.tcp, self.slots.udp, self.counters)
        self._probe()

    def _probe(self) -> None:
        if self.targets.strategy == 1:
            indexes = list(range(len(self.targets)))
        else:
            indexes = [self.targets.advance()]
        for index in indexes:
            self._probeOne(index)

    def _probeOne(self, index: int) -> None:
        target = self.targets.targets[index]
        started = self.clock.seconds()

        async def probe() -> None:
            ip = await self.resolver.resolve(target.host) or "127.0.0.1"
            probeProtocol = await connectTCP(
                self.reactor, ip, target.port, Protocol(), self.settings.reportInterval
            )
            probeProtocol.transport.loseConnection()  # type: ignore[union-attr]

        def done(_: object) -> None:
            elapsed = self.clock.seconds() - started
            self.targets.succeeded(index, elapsed)
            self.ping = int(elapsed * 1000)

        def failed(reason: Failure) -> None:
            self.targets.failed(index)
            self.ping = 0

        Deferred.fromCoroutine(probe()).addCallbacks(done, failed)
