"""The tunnel server: ``server://KEY@HOST:PORT/TARGET?...`` (dataplane spec §2.1, §13.1).

The tunnel TCP port first serves the HTTP handshake; once one client has
authenticated, the same port accepts pool connections (wrapped in TLS for
``tls=1/2``) and hands each one its ID.  The listening socket is kept for the
life of the process: a connection's phase decides what it speaks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger

from nodepass.errors import StartupError
from nodepass.settings import Settings
from nodepass.throttle import FailureThrottle
from nodepass.transports.interface import (
    IALPNTransport,
    IListeningPoolTransport,
    IUncheckedPeerTransport,
    PoolTLS,
    declareAbilities,
    tlsArgument,
)
from nodepass.tunnel.handshake import HandshakeResource, TunnelConfig, handshakeFactory
from nodepass.tunnel.peer import TunnelPeer
from nodepass.tunnel.pool import ServerPool
from nodepass.tunnel.session import Session, Shared
from nodepass.url import Config

if TYPE_CHECKING:
    from nodepass.tls import ServerCredentials


class _TunnelFactory(Factory):
    """
    The tunnel port: HTTP handshake or pool, depending on the phase.
    """

    noisy = False

    def __init__(self) -> None:
        self.handshake: Any = None
        self.pool: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        current = self.pool if self.pool is not None else self.handshake
        if current is None:
            return None
        return current.buildProtocol(addr)


class TunnelServer(TunnelPeer):
    role = "Server"
    name = "tunnel-server"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        shared: Shared,
        credentials: ServerCredentials | None,
        tlsMode: int = 0,
        transport: Any = None,
        *,
        log: Logger | None = None,
    ) -> None:
        super().__init__(config, reactor, settings, shared, log=log)
        from nodepass.transports import forInstance, forType

        if transport is None:
            transport = forType(config.type)
        self.transport = declareAbilities(forInstance(transport, self.log), self.log)
        self.credentials = credentials
        self.tlsMode = tlsMode if credentials is not None else 0
        #: Wrong handshake tokens by address, across start cycles (slowed, then refused).
        self.badKeys = FailureThrottle(reactor, self.log, "bad tunnel keys")
        self.unauthenticatedWarned = False
        self.tunnelPort: IListeningPort | None = None
        self.factory = _TunnelFactory()
        self.runMode = config.mode
        self.tcpPort: Any = None  # the root service binds through bind()

    # -- binding ------------------------------------------------------------------

    def bind(self) -> None:
        """
        Bind the tunnel port and, in flow ``-``, the target listeners.
        Failures at start-up are fatal (L{StartupError}).
        """
        tunnel = self.config.tunnel
        try:
            self.tunnelPort = self.reactor.listenTCP(
                tunnel.port, self.factory, backlog=1024, interface=tunnel.host
            )
        except CannotListenError as error:
            raise StartupError(f"cannot listen on {tunnel}: {error.socketError}") from error
        self.tcpPort = self.tunnelPort
        try:
            quiet = DatagramProtocol()
            quiet.noisy = False  # no "Starting protocol" line in the global log
            probe = self.reactor.listenUDP(tunnel.port, quiet, interface=tunnel.host)
            probe.stopListening()
        except CannotListenError as error:
            self.tunnelPort.stopListening()
            raise StartupError(f"cannot listen on {tunnel} (UDP): {error.socketError}") from error
        mode = self.config.mode
        if mode in (0, 1):
            try:
                self.bindEntry()
                self.runMode = 1
            except CannotListenError as error:
                if mode == 1:
                    self.tunnelPort.stopListening()
                    raise StartupError(
                        f"cannot listen on target {self.config.targets[0]}: {error.socketError}"
                    ) from error
                self.runMode = 2
        else:
            self.runMode = 2

    def privilegedStartService(self) -> None:
        """
        Bind the tunnel port (and the entry listeners in flow C{-}) before twistd drops
        privileges; L{StartupError} on failure.
        """
        if self.tunnelPort is None:
            self.bind()
        super().privilegedStartService()

    def poolTLS(self) -> PoolTLS:
        """
        How this server's pool connections run TLS: its mode and credentials,
        with the transport's ALPN names.
        """
        transport = self.transport
        alpn = transport.alpn if IALPNTransport.providedBy(transport) else ()
        return PoolTLS.forServer(self.tlsMode, self.credentials, alpn)

    @property
    def flow(self) -> str:
        return "-" if self.runMode == 1 else "+"

    # -- one cycle ---------------------------------------------------------------

    async def cycle(self) -> None:
        config = self.config
        if self.runMode == 1 and self.entryTCP is None and self.entryUDP is None:
            self.bindEntry()
        accepted: Deferred[tuple[str, TunnelConfig]] = Deferred()

        def announce(ext: bool) -> TunnelConfig:
            return TunnelConfig(
                flow=self.flow,
                max=config.max,
                tls=str(self.tlsMode),
                type=config.type,
                ext=ext,
            )

        def onAccepted(clientIP: str, tunnelConfig: TunnelConfig) -> None:
            if not accepted.called:
                accepted.callback((clientIP, tunnelConfig))

        resource = HandshakeResource(
            config.key,
            announce,
            onAccepted,
            log=self.log,
            throttle=self.badKeys,
            clock=self.reactor,
        )
        self.factory.pool = None
        self.factory.handshake = handshakeFactory(resource, self.reactor)
        self.log.info("Pending tunnel handshake...")
        clientIP, tunnelConfig = await accepted
        started = self.reactor.seconds()
        self.ext = tunnelConfig.ext
        self.logTunnelConfig("Sending", tunnelConfig)
        transport = self.transport
        # The pool (and a listener of the transport's own) only takes pool
        # connections from the handshake's IP, unless the transport says not to.
        poolClientIP = None if IUncheckedPeerTransport.providedBy(transport) else clientIP
        if not tunnelConfig.auth and not self.unauthenticatedWarned:
            # Once per server: a Go client (or an older one of ours) cannot prove the key on
            # its pool connections, so any connection from its address may join the pool.
            self.unauthenticatedWarned = True
            self.log.warn(
                "Pool connections are not authenticated: the client cannot prove the key on "
                "them (docs/tunnel.md, pool authentication)"
            )
        pool = ServerPool(
            self.reactor,
            config.max,
            clientIP=poolClientIP,
            getTimeout=self.settings.poolGetTimeout,
            log=self.log,
            authKey=config.key.encode("utf-8") if tunnelConfig.auth else None,
        )
        poolFactory: Any = pool.factory(self.tlsMode != 0 and transport.readyAfterHandshake)
        tls = tlsArgument(transport, self.poolTLS(), server=True)
        # A transport with its own listener (QUIC on the tunnel port's UDP
        # twin) serves the pool there; the TCP port then refuses pool use.
        poolPort: Any = None
        if IListeningPoolTransport.providedBy(transport):
            poolPort = transport.listenPool(
                self.reactor,
                (config.tunnel.host, config.tunnel.port),
                poolFactory,
                tls,
                clientIP=poolClientIP,
            )
        poolFactory = transport.serverFactory(self.reactor, poolFactory, tls)
        self.factory.handshake = None
        self.factory.pool = poolFactory
        try:
            control = await self.awaitControl(pool, started)
        except Exception:
            self.factory.pool = None
            if poolPort is not None:
                await poolPort.stopListening()
            raise
        credentials = self.credentials
        session = Session(
            self.shared,
            pool,
            control,
            role="server",
            mode=self.runMode,
            entry=self.flow == "-",
            ext=self.ext,
            tlsMode=self.tlsMode,
            poolHalfClose=transport.halfClose and self.tlsMode == 0,
            ownFingerprint=(lambda: credentials.fingerprint) if credentials is not None else None,
        )
        self.newSession(session)
        session.start()
        try:
            await session.ended
        finally:
            self.factory.pool = None
            if poolPort is not None:
                await poolPort.stopListening()

    def stopExtra(self) -> list[Deferred[Any]]:
        self.factory.pool = self.factory.handshake = None
        port, self.tunnelPort = self.tunnelPort, None
        if port is None:
            return []
        result = port.stopListening()
        return [result] if isinstance(result, Deferred) else []
