"""What a tunnel server and a tunnel client share: the restart loop.

Each start cycle (handshake, pool, session) runs as one coroutine.  When it
fails, the error is logged as ``Server error: ...`` / ``Client error: ...``
(the line a master watches for), the stop routine runs, and after a pause the
cycle starts again: a fixed ``NP_SERVICE_COOLDOWN`` against a Go peer, an
exponential backoff with jitter (capped) between our own peers (dataplane
spec §13.3, §16.1).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from nodepass.log import defaultLogger
from nodepass.settings import Settings
from nodepass.stats import Counters, logCheckpoint
from nodepass.tunnel.exchange import Connections, ILiveConnections
from nodepass.tunnel.pool import CONTROL_ID, Pool, PoolConnection
from nodepass.tunnel.session import Session, Shared, _EntryUDP, _UserFactory
from nodepass.url import Config, describe

#: Upper bound of the backoff between our own peers.
MAX_BACKOFF = 30.0


@implementer(ILiveConnections)
class TunnelPeer(Service):
    """
    Base class of L{nodepass.tunnel.server.TunnelServer} and
    L{nodepass.tunnel.client.TunnelClient}.

    @param log: the instance's logger, which everything the peer makes
        (handshake, pool, sessions, transport connections) logs through; by
        default, one publishing to the global log publisher.
    """

    role = "Peer"
    #: Appended to a bind failure message (mode 0 fallback explanations).
    fallbackMessage = ""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        shared: Shared,
        *,
        log: Logger | None = None,
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self.config = config
        self.reactor = reactor
        self.settings = settings
        self.shared = shared
        self.counters: Counters = shared.counters
        self.session: Session | None = None
        self.sessions: list[Session] = []
        self.stopping = False
        self.ext = False
        self._failures = 0
        self._established = False
        self._loop: Deferred[None] | None = None
        self.entryTCP: IListeningPort | None = None
        self.entryUDP: IListeningPort | None = None
        self._rng = random.Random()

    @property
    def connections(self) -> Connections:
        """
        The live relays and flows of every session (L{Shared.connections}).
        """
        return self.shared.connections

    # -- entry listeners (kept for the life of the process) --------------------

    def bindEntry(self) -> None:
        """
        Bind TCP and UDP on the first target address, not accepting yet
        (raises CannotListenError).
        """
        if self.entryTCP is not None or self.entryUDP is not None:
            return
        config = self.config
        target = config.targets[0]
        try:
            if not config.notcp:
                self.entryTCP = self.reactor.listenTCP(
                    target.port, _UserFactory(None), backlog=1024, interface=target.host
                )
                self.entryTCP.stopReading()  # type: ignore[union-attr]
            if not config.noudp:
                self.entryUDP = self.reactor.listenUDP(
                    target.port,
                    _EntryUDP(None, self.reactor),
                    interface=target.host,
                    maxPacketSize=self.settings.udpBufferSize,
                )
                self.entryUDP.stopReading()  # type: ignore[union-attr]
        except Exception:
            self._closeEntry()
            raise

    def _closeEntry(self) -> list[Deferred[Any]]:
        waits = []
        for port in (self.entryTCP, self.entryUDP):
            if port is not None:
                result = port.stopListening()
                if isinstance(result, Deferred):
                    waits.append(result)
        self.entryTCP = self.entryUDP = None
        return waits

    # -- the loop -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda failure: failure.trap(CancelledError))

    async def cycle(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while not self.stopping:
            started = self.reactor.seconds()
            try:
                await self.cycle()
            except CancelledError:
                if self.stopping:
                    return
                self.log.error("{role} error: cancelled", role=self.role)
            except Exception as error:
                if self.stopping:
                    return
                self.log.error(
                    "{role} error: {error}", role=self.role, error=str(error) or repr(error)
                )
            await self._endSession()
            if self.stopping:
                return
            if self._established or self.reactor.seconds() - started > 60:
                # The backoff counts attempts that failed in a row: a session that came up
                # and later ended starts again from the base cooldown.
                self._failures = 0
            self._established = False
            self._failures += 1
            await deferLater(self.reactor, self._pause())
            if self.stopping:
                return
            self.log.info("{role} restart: {url}", role=self.role, url=describe(self.config))

    def _pause(self) -> float:
        cooldown = self.settings.serviceCooldown
        if not self.ext:
            return cooldown
        delay = min(MAX_BACKOFF, cooldown * 2 ** (self._failures - 1))
        return float(delay * self._rng.uniform(0.8, 1.2))

    def logTunnelConfig(self, verb: str, tunnelConfig: Any) -> None:
        """
        ``Sending tunnel config: ...`` (server) / ``Loading ...`` (client).
        """
        self.log.info(
            "{verb} tunnel config: FLOW={flow}|MAX={max}|TLS={tls}|TYPE={type}",
            verb=verb,
            flow=tunnelConfig.flow,
            max=tunnelConfig.max,
            tls=tunnelConfig.tls,
            type=tunnelConfig.type,
        )

    async def awaitControl(self, pool: Pool, started: float) -> PoolConnection:
        """
        Wait for the control connection ``00000000`` (dataplane spec §4.3).
        """
        self.log.info("Getting tunnel pool ready...")
        try:
            control = await pool.outgoingGet(
                CONTROL_ID, self.settings.handshakeTimeout + self.settings.poolGetTimeout
            )
        except Exception:
            pool.close()
            raise
        self.log.info(
            "Marking tunnel handshake as complete in {ms}ms",
            ms=int((self.reactor.seconds() - started) * 1000),
        )
        return control

    def newSession(self, session: Session) -> Session:
        self._established = True
        self.session = session
        self.sessions.append(session)
        if self.entryTCP is not None:
            self.entryTCP.factory.session = session  # type: ignore[attr-defined]
        if self.entryUDP is not None:
            self.entryUDP.protocol.session = session  # type: ignore[attr-defined]
        session.adoptEntry(self.entryTCP, self.entryUDP)
        return session

    async def _endSession(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.stop()
            if self.entryTCP is not None:
                self.entryTCP.stopReading()  # type: ignore[attr-defined]
            if self.entryUDP is not None:
                self.entryUDP.stopReading()  # type: ignore[attr-defined]
        self.sessions = [s for s in self.sessions if s.relays]

    def idleCheckpoint(self, mode: int) -> None:
        slots = self.shared.slots
        logCheckpoint(self.log, mode, 0, 0, slots.tcp, slots.udp, self.counters)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopping = True
        self.shared.screen.stop()
        if self._loop is not None and not self._loop.called:
            self._loop.cancel()
        waits: list[Deferred[Any]] = []
        sessions = list(self.sessions)
        if self.session is not None and self.session not in sessions:
            sessions.append(self.session)
        # Running relays get the grace period to finish (dataplane spec §13.4).
        grace = self.settings.shutdownTimeout
        for session in sessions:
            waits.append(session.stop())
            waits.append(session.exchanges.drain(grace))
        waits.extend(self._closeEntry())
        waits.extend(self.stopExtra())
        done = DeferredList(waits, consumeErrors=True)
        done.addCallback(lambda _: self.log.info("{role} shutdown complete", role=self.role))
        return done  # type: ignore[return-value]

    def stopExtra(self) -> list[Deferred[Any]]:
        return []
