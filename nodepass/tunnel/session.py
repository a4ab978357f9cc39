"""One running tunnel session: the control channel and what its signals start.

A session starts once the handshake is done and the pool has produced the
control connection (``00000000``); it ends (its L{Session.ended} Deferred
fires with the reason) when the control channel fails, a verification fails,
or the owner stops it.  The same class serves both peers: what differs is
whether this peer is the I{entry} side (accepts users, sends ``tcp``/``udp``
signals) or the I{exit} side (dials targets), dataplane spec §2.3, §6, §7.

What a signal starts is shared with the single-end forwarder: relays and
target dials in L{nodepass.tunnel.exchange}, UDP flows in
L{nodepass.tunnel.udp}; the ``verify`` exchange is L{nodepass.tunnel.verify}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodepass.access import AccessList, Screen
from nodepass.balance import TargetDialer
from nodepass.errors import NodePassError
from nodepass.limits import RateLimiter, Slots
from nodepass.log import defaultLogger
from nodepass.relay import RelayProtocol
from nodepass.settings import Settings
from nodepass.stats import Counters, logCheckpoint
from nodepass.tunnel.admit import AdmittedUser, hostPort, screened
from nodepass.tunnel.control import ControlChannel, Signal
from nodepass.tunnel.exchange import Connections, ExchangeError, Exchanges, tune
from nodepass.tunnel.pool import Pool, PoolConnection
from nodepass.tunnel.udp import (
    DatagramCodec,
    EntryListener,
    Flow,
    Flows,
    PoolFeed,
    TargetFlow,
    TunnelFlow,
    connectTarget,
)
from nodepass.tunnel.verify import Verifier, pinProblem
from nodepass.url import Config


class _Refused(Exception):
    """
    An exit-side session was refused, by the slot limit or the pin (already
    logged).
    """


class SessionError(NodePassError):
    """
    The session cannot go on (control channel lost, verification failed).
    """


def splitRemote(remote: str) -> tuple[str, int]:
    """
    A signal's ``remote`` (``host:port``, IPv6 in brackets) as a pair;
    C{ValueError} when the port is not a number.
    """
    host, _, port = remote.rpartition(":")
    return host.strip("[]"), int(port)


class Shared:
    """
    What lives for the whole process, across restarts: counters, slots, the
    rate limiter, the target dialer, the registry of live connections
    (C{connections}), the C{allow}/C{deny} check of the entry listeners
    (C{screen}), and the instance's logger (C{log}; by default, one
    publishing to the global log publisher), which every session logs
    through.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        dialer: TargetDialer,
        counters: Counters,
        *,
        log: Logger | None = None,
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self.config = config
        self.reactor = reactor
        self.settings = settings
        self.dialer = dialer
        self.counters = counters
        self.slots = Slots(config.slot)
        self.limiter = RateLimiter.fromMbps(config.rate, reactor) if config.rate else None
        self.connections = Connections(reactor)
        self.screen = Screen(AccessList(config.allow, config.deny), reactor, counters, self.log)


# -- TCP ----------------------------------------------------------------------


class _User(AdmittedUser):
    """
    A user connection accepted on the entry side's target listener.
    """

    factory: _UserFactory

    @property
    def log(self) -> Logger:
        return self.factory.session.log

    @property
    def slots(self) -> Slots:
        return self.factory.session.shared.slots

    @property
    def counters(self) -> Counters:
        return self.factory.session.shared.counters

    @property
    def block(self) -> str:
        return self.factory.session.shared.config.block

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.admit():
            tune(self.transport)
            self.screen()

    def proceed(self) -> None:
        self._take()

    def _take(self) -> None:
        self.gate.pause("connect")
        session = self.factory.session
        session.pool.incomingGet().addCallbacks(self._got, self._timeout)

    def _got(self, conn: PoolConnection) -> None:
        session = self.factory.session
        if self.closed or session.stopped:
            conn.close()
            return
        if not session.pinHolds(conn, "commonTCPLoop"):
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        peerText = self.peerText
        session.control.send(Signal("tcp", remote=peerText, id=conn.ident))
        exchanges = session.exchanges
        if exchanges.logDebug:
            session.log.debug("TCP launch signal: cid {id} -> {peer}", id=conn.ident, peer=peerText)
        if exchanges.logInfo:
            poolPeer: Any = conn.transport.getPeer()  # type: ignore[union-attr]
            session.log.info(
                "Starting exchange: {peer} <-> {target}", peer=peerText, target=hostPort(poolPeer)
            )
        session.relay(self, conn)
        self.gate.resume("connect")

    def _timeout(self, reason: Failure) -> None:
        self.log.warn("commonTCPLoop: request timeout: {reason}", reason=reason.getErrorMessage())
        if not self.closed:
            self.transport.loseConnection()  # type: ignore[union-attr]


class _UserFactory(Factory):
    protocol = _User  # type: ignore[assignment]
    noisy = False
    session: Session

    def __init__(self, session: Session | None) -> None:
        self.session = session  # type: ignore[assignment]

    def buildProtocol(self, addr: Any) -> Any:
        if self.session is None or self.session.stopped:
            return None
        # Refused peers are closed at once: no byte read, no slot or pool connection taken.
        if not screened(self.session.shared.screen, addr, "commonTCPLoop"):
            return None
        return super().buildProtocol(addr)


# -- UDP ----------------------------------------------------------------------


class _EntryUDP(EntryListener):
    """
    The entry side's UDP listener; it outlives sessions (each new session
    adopts it: from then on, its flows are that session's).
    """

    def __init__(self, session: Session | None, clock: Any) -> None:
        super().__init__(clock)
        self.session = session

    @property
    def session(self) -> Session | None:
        return self._session

    @session.setter
    def session(self, session: Session | None) -> None:
        self._session = session
        if session is not None:
            self.counters = session.shared.counters
            self.limiter = session.shared.limiter
            self.flows = session.entryFlows
            self.screen = session.shared.screen

    def accepting(self) -> bool:
        return self._session is not None and not self._session.stopped

    def newFlow(self, source: Any) -> Flow | None:
        return self._session.newEntryFlow(self, source)  # type: ignore[union-attr]


class _ControlConsumer:
    def __init__(self, session: Session) -> None:
        self.session = session

    def dataReceived(self, data: bytes) -> None:
        self.session.control.dataReceived(data)

    def connectionLost(self) -> None:
        self.session.fail("control connection closed")


# -- the session ----------------------------------------------------------------


class Session:
    """
    @param entry: this peer accepts users (and sends signals).
    @param ext: both peers are ours (framed UDP, backoff).
    @param tlsMode: 0, 1 or 2; in 1/2 the verify exchange gates traffic.
    @param ownFingerprint: the server's own leaf fingerprint (server only).
    @param peerFingerprint: how to read the peer leaf fingerprint seen on a
        pool connection (client only).
    @param poolHalfClose: pool connections can carry a half-close (plain TCP
        without TLS); used only between our own peers.

    A client with ``pin=`` (in TLS modes) checks the server certificate on
    every pool connection it relays over, besides the two the verify
    exchange uses (L{pinHolds}).
    """

    def __init__(
        self,
        shared: Shared,
        pool: Pool,
        control: PoolConnection,
        *,
        role: str,
        mode: int,
        entry: bool,
        ext: bool,
        tlsMode: int,
        ownFingerprint: Any = None,
        peerFingerprint: Any = None,
        poolHalfClose: bool = True,
    ) -> None:
        self.shared = shared
        self.log = shared.log
        self.clock = shared.reactor
        self.pool = pool
        self.role = role
        self.mode = mode
        self.entry = entry
        self.ext = ext
        self.tlsMode = tlsMode
        self.controlConn = control
        self.poolHalfClose = poolHalfClose
        self.ended: Deferred[None] = Deferred()
        self.stopped = False
        self.ping = 0
        self.verified = tlsMode == 0
        self.pin = shared.config.pin if role == "client" and tlsMode else ""
        self.exchanges = Exchanges(
            self.clock,
            shared.config,
            shared.dialer,
            shared.counters,
            shared.limiter,
            shared.slots,
            self.log,
            connections=shared.connections,
        )
        #: The live relays (L{Exchanges.live}).
        self.relays = self.exchanges.live
        #: UDP flows towards the target (exit side), keyed by the signal's ``remote``.
        self.exitFlows = Flows(
            shared.slots,
            self.log,
            "commonUDPOnce",
            counters=shared.counters,
            connections=shared.connections,
        )
        #: UDP flows over the tunnel (entry side), keyed by the user's address.
        self.entryFlows = Flows(
            shared.slots,
            self.log,
            "commonUDPLoop",
            counters=shared.counters,
            connections=shared.connections,
        )
        self.tcpPort: IListeningPort | None = None
        self.udpPort: IListeningPort | None = None
        self.control = ControlChannel(
            shared.config.key,
            self.clock,
            control.write,
            self,
            shared.settings.reportInterval,
            log=self.log,
        )
        self.verifier = Verifier(
            pool,
            self.control.send,
            self.log,
            role=role,
            ownFingerprint=ownFingerprint,
            peerFingerprint=peerFingerprint,
            pin=self.pin,
            verified=self._verified,
            failed=self.fail,
        )

    # -- lifecycle ---------------------------------------------------------

    def adoptEntry(self, tcpPort: IListeningPort | None, udpPort: IListeningPort | None) -> None:
        """
        Use the owner's entry listeners (bound on the first target address,
        not reading until L{_maybeOpen}).
        """
        self.tcpPort = tcpPort
        self.udpPort = udpPort

    def start(self) -> None:
        # Our ping goes first (spec §15.5), then whatever the peer sent while
        # the control connection was parked is handled.
        self.control.start()
        self.controlConn.attach(_ControlConsumer(self))
        if self.tlsMode:
            self.verifier.start()
        self._maybeOpen()

    def _verified(self) -> None:
        self.verified = True
        self._maybeOpen()

    def _maybeOpen(self) -> None:
        if not (self.entry and self.verified) or self.stopped:
            return
        for port in (self.tcpPort, self.udpPort):
            if port is not None:
                port.startReading()  # type: ignore[attr-defined]

    def fail(self, reason: str) -> None:
        if self.stopped:
            return
        self.stop()
        self.ended.errback(SessionError(reason))

    def stop(self) -> Deferred[None]:
        """
        The stop routine: control and pool go, UDP flows end, the entry
        listeners stop reading; running relays are left to finish (or are
        drained by the owner at shutdown, L{Exchanges.drain}).
        """
        if not self.stopped:
            self.stopped = True
            self.verifier.stop()
            self.control.stop()
            self.controlConn.close()
            self.pool.close()
            self.exitFlows.endAll()
            self.entryFlows.endAll()
            for port in (self.tcpPort, self.udpPort):
                if port is not None:
                    port.stopReading()  # type: ignore[attr-defined]
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pinHolds(self, conn: PoolConnection, where: str) -> bool:
        """
        C{True} when no pin is set or the server certificate seen on C{conn}
        matches it; else close C{conn}, log the error line and end the session.
        """
        if not self.pin:
            return True
        problem = pinProblem(self.pin, self.verifier.fingerprintOf(conn))
        if problem is None:
            return True
        conn.close()
        if not self.stopped:
            message = f"{where}: {problem}"
            self.log.error("{reason}", reason=message)
            self.fail(message)
        return False

    # -- relays ------------------------------------------------------------

    def relay(self, local: RelayProtocol, conn: PoolConnection) -> None:
        # End-to-end half-close only between our own peers (spec §16.1); with
        # a v1.14.0 peer an EOF from the pool ends the session as it does there.
        conn.halfClose = self.poolHalfClose and self.ext
        self.exchanges.join(local, conn)

    # -- control handler -------------------------------------------------------

    def signal(self, signal: Signal) -> None:
        config = self.shared.config
        if signal.action == "tcp":
            if not config.notcp:
                Deferred.fromCoroutine(self._exitTCP(signal)).addErrback(
                    self._logged, "commonTCPOnce"
                )
        elif signal.action == "udp":
            if not config.noudp:
                Deferred.fromCoroutine(self._exitUDP(signal)).addErrback(
                    self._logged, "commonUDPOnce"
                )
        elif signal.action == "verify":
            self.verifier.received(signal)
        elif signal.action == "flush":
            self.pool.flush()
        else:
            self.log.debug("Ignoring unknown signal {action}", action=signal.action)

    def pong(self, pingMs: int) -> None:
        self.ping = pingMs
        self.checkpoint()

    def checkpoint(self) -> None:
        shared = self.shared
        slots = shared.slots
        logCheckpoint(
            self.log,
            self.mode,
            self.ping,
            self.pool.idleCount,
            slots.tcp,
            slots.udp,
            shared.counters,
        )

    def tick(self) -> bool:
        if self.pool.errors > self.pool.idleCount // 2:
            self.log.debug("Pool health: flushing after {n} errors", n=self.pool.errors)
            self.pool.flush()
            return True
        return False

    def controlFailed(self, reason: str) -> None:
        self.fail(reason)

    def _logged(self, reason: Failure, where: str) -> None:
        if not self.stopped:
            self.log.error("{where}: {reason}", where=where, reason=reason.getErrorMessage())

    # -- exit side ------------------------------------------------------------

    async def _named(self, signal: Signal, kind: str) -> PoolConnection:
        """
        The exit side's first steps for a ``tcp``/``udp`` signal: take the
        named pool connection (counting failures for the health rule), hold
        it to the pin, then take a slot (L{_Refused} when the pin or the slot
        limit refuses it).
        """
        try:
            conn = await self.pool.outgoingGet(signal.id)
        except Exception as reason:
            self.pool.errors += 1
            raise SessionError(f"request timeout: {reason}") from None
        if conn.closed:
            self.pool.errors += 1
            raise SessionError(f"pool connection {signal.id} was already closed")
        if not self.pinHolds(conn, f"common{kind.upper()}Once"):
            raise _Refused()
        slots = self.shared.slots
        if not slots.tryAcquire(kind):
            self.shared.counters.refusedSlot += 1
            self.log.error(
                "common{kind}Once: {kind} slot limit reached: {used}/{limit}",
                kind=kind.upper(),
                used=slots.tcp + slots.udp,
                limit=slots.limit,
            )
            conn.close()
            raise _Refused()
        return conn

    async def _exitTCP(self, signal: Signal) -> None:
        try:
            conn = await self._named(signal, "tcp")
        except _Refused:
            return
        conn.halfClose = self.poolHalfClose and self.ext
        try:
            relay = await self.exchanges.toTarget(
                conn, lambda: splitRemote(signal.remote), signal.remote, targetCounted=True
            )
        except ExchangeError as error:
            self.shared.slots.release("tcp")
            conn.close()
            raise SessionError(str(error)) from None
        if relay is None:
            # The pool connection closed while the target was dialled.
            self.shared.slots.release("tcp")

    async def _exitUDP(self, signal: Signal) -> None:
        shared = self.shared
        flows = self.exitFlows
        old = flows.get(signal.remote)
        if old is not None:
            old.end()
        try:
            conn = await self._named(signal, "udp")
        except _Refused:
            return
        codec = DatagramCodec(self.ext)

        def toPool(source: str, datagram: bytes) -> float:
            conn.write(codec.encode(datagram))
            return 0.0

        flow = TargetFlow(
            flows,
            signal.remote,
            self.clock,
            shared.settings.udpReadTimeout,
            toPool,
            self.log,
            counters=shared.counters,
            limiter=shared.limiter,
            onEnd=conn.close,
        )
        flows.add(flow)
        try:
            target = await connectTarget(
                shared.reactor,
                shared.dialer,
                flow,
                shared.config.dial,
                shared.settings.udpBufferSize,
            )
        except Exception as reason:
            flow.end()
            raise SessionError(str(reason)) from None
        if target is None:
            return
        # Only now take the datagrams that arrived (and keep arriving) on
        # the pool connection: the target socket is ready for all of them.
        conn.attach(PoolFeed(flow, codec))

    def newEntryFlow(self, listener: EntryListener, source: Any) -> Flow | None:
        """
        A flow for a user address's first datagram on the entry listener: it
        takes a slot and an idle pool connection, and names it in a ``udp``
        signal (dataplane spec §7.2).
        """
        flows = self.entryFlows
        if not flows.admit():
            return None
        tunnel = TunnelFlow(
            flows, source, self.clock, self.shared.settings.udpReadTimeout, self.ext, listener.reply
        )
        flows.add(tunnel)
        host, port = source
        remote = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"

        def got(conn: PoolConnection) -> None:
            if tunnel.ended or self.stopped:
                conn.close()
                return
            if not self.pinHolds(conn, "commonUDPLoop"):
                tunnel.end()
                return
            self.control.send(Signal("udp", remote=remote, id=conn.ident))
            conn.attach(tunnel)
            tunnel.attached(conn)

        def failed(reason: Failure) -> None:
            self.log.warn(
                "commonUDPLoop: request timeout: {reason}", reason=reason.getErrorMessage()
            )
            tunnel.end()

        self.pool.incomingGet().addCallbacks(got, failed)
        return tunnel
