"""The tunnel client in dual-end mode (dataplane spec §2.2, §3.2, §13.2).

Each cycle: the HTTP handshake with the server, then a client pool dialling
the tunnel address (through TLS for ``tls=1/2`` as the server announced),
the control connection ``00000000``, and the session.  In flow ``+`` the
client is the entry side and binds its first target address once the
control channel is up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent

from nodepass import tls
from nodepass.resolve import Resolver
from nodepass.settings import Settings
from nodepass.transports import PoolAddress, forInstance, forType
from nodepass.transports.interface import (
    IALPNTransport,
    IDisconnectingTransport,
    PoolTLS,
    declareAbilities,
    tlsArgument,
)
from nodepass.tunnel.handshake import clientHandshake
from nodepass.tunnel.peer import TunnelPeer
from nodepass.tunnel.pool import ClientPool, PoolConnection
from nodepass.tunnel.session import Session, Shared
from nodepass.tunnel.verify import VerifyError
from nodepass.url import Config


class TunnelClient(TunnelPeer):
    role = "Client"
    name = "tunnel-client"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        shared: Shared,
        resolver: Resolver,
        *,
        log: Logger | None = None,
    ) -> None:
        super().__init__(config, reactor, settings, shared, log=log)
        self.resolver = resolver
        self._agent = Agent(reactor)
        self._creators: dict[tuple[int, tuple[bytes, ...]], Any] = {}
        self._transports: dict[str, Any] = {}

    def _transport(self, typeCode: str) -> Any:
        """
        The pool transport the server announced, as this instance uses it
        (its own copy, logging through our logger, when the transport logs).
        """
        transport = self._transports.get(typeCode)
        if transport is None:
            transport = declareAbilities(forInstance(forType(typeCode), self.log), self.log)
            self._transports[typeCode] = transport
        return transport

    def _creator(self, mode: int, alpn: list[bytes] | None = None) -> Any:
        key = (mode, tuple(alpn or ()))
        creator = self._creators.get(key)
        if creator is None:
            creator = tls.clientContextFactory(mode, self.config.serverName, alpn=alpn)
            self._creators[key] = creator
        return creator

    def poolTLS(self, transport: Any, tlsMode: int) -> PoolTLS:
        """
        How pool connections through C{transport} run TLS in C{tlsMode}: the
        mode, the transport's ALPN names, and a creator made (once per mode
        and names) only if the transport asks for it.
        """
        alpn = list(transport.alpn) if IALPNTransport.providedBy(transport) else []
        return PoolTLS.forClient(tlsMode, lambda: self._creator(tlsMode, alpn or None), alpn)

    def _dialer(self, transport: Any, tlsMode: int) -> Any:
        tunnel = self.config.tunnel
        timeout = self.settings.tcpDialTimeout
        tlsGiven = tlsArgument(transport, self.poolTLS(transport, tlsMode), server=False)

        def dial(conn: PoolConnection) -> Deferred[Any]:
            async def connect() -> Any:
                ip = await self.resolver.resolve(tunnel.host) or "127.0.0.1"
                address = PoolAddress(
                    tunnel.host, ip, tunnel.port, tunnel.text, self.config.serverName
                )
                return await transport.connect(self.reactor, address, conn, tlsGiven, timeout)

            return Deferred.fromCoroutine(connect())

        return dial

    async def cycle(self) -> None:
        config = self.config
        settings = self.settings
        self.log.info("Pending tunnel handshake...")
        tunnelConfig = await clientHandshake(
            self._agent,
            config.tunnel.text,
            config.serverName,
            config.key,
            https=config.tunnel.portText == "443",
            timeout=settings.tcpDialTimeout * 6,
            clock=self.reactor,
        )
        started = self.reactor.seconds()
        self.ext = tunnelConfig.ext
        self.logTunnelConfig("Loading", tunnelConfig)
        tlsMode = int(tunnelConfig.tls) if tunnelConfig.tls in ("1", "2") else 0
        if config.pin and tlsMode == 0:
            # A pinned client never relays over a tunnel whose certificate it cannot check.
            raise VerifyError(
                f"certificate pin {config.pin} set, but the server offers no TLS (tls=0)"
            )
        transport = self._transport(tunnelConfig.type)
        pool = ClientPool(
            self.reactor,
            self._dialer(transport, tlsMode),
            config.min,
            tunnelConfig.max,
            tls=tlsMode != 0 and transport.readyAfterHandshake,
            getTimeout=settings.poolGetTimeout,
            minInterval=settings.minPoolInterval,
            maxInterval=settings.maxPoolInterval,
            log=self.log,
            authKey=config.key.encode("utf-8") if tunnelConfig.auth else None,
        )
        pool.start()
        control = await self.awaitControl(pool, started)
        entry = tunnelConfig.flow == "+"
        if entry:
            try:
                self.bindEntry()
            except Exception:
                pool.close()
                control.close()
                raise
        session = Session(
            self.shared,
            pool,
            control,
            role="client",
            mode=2,
            entry=entry,
            ext=self.ext,
            tlsMode=tlsMode,
            poolHalfClose=transport.halfClose and tlsMode == 0,
            peerFingerprint=tls.peerFingerprint,
        )
        self.newSession(session)
        session.start()
        try:
            await session.ended
        finally:
            if IDisconnectingTransport.providedBy(transport):
                done = transport.disconnectAll()
                if isinstance(done, Deferred):
                    done.addErrback(
                        lambda failure: self.log.failure(
                            "Dropping pool connections failed", failure
                        )
                    )
