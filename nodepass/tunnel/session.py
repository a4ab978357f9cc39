"""One running tunnel session: control channel, TCP and UDP traffic, verify.

A session starts once the handshake is done and the pool has produced the
control connection (``00000000``); it ends (its L{Session.ended} Deferred
fires with the reason) when the control channel fails, a verification fails,
or the owner stops it.  The same class serves both peers: what differs is
whether this peer is the I{entry} side (accepts users, sends ``tcp``/``udp``
signals) or the I{exit} side (dials targets), dataplane spec §2.3, §6, §7.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodepass import proxyproto
from nodepass.balance import TargetDialer
from nodepass.errors import NodePassError
from nodepass.limits import RateLimiter, Slots
from nodepass.log import defaultLogger
from nodepass.relay import IdleTimer, Relay, RelayProtocol, Throttle
from nodepass.settings import Settings
from nodepass.stats import Counters, logCheckpoint
from nodepass.tunnel.admit import AdmittedUser, hostPort
from nodepass.tunnel.control import ControlChannel, Signal
from nodepass.tunnel.pool import Pool, PoolConnection
from nodepass.url import Config


class _NoSlot(Exception):
    """
    The slot limit refused an exit-side session (already logged).
    """


class SessionError(NodePassError):
    """
    The session cannot go on (control channel lost, verification failed).
    """


def splitRemote(remote: str) -> tuple[str, int]:
    host, _, port = remote.rpartition(":")
    return host.strip("[]"), int(port)


class Shared:
    """
    What lives for the whole process, across restarts: counters, slots, the
    rate limiter, the target dialer, and the instance's logger (C{log}; by
    default, one publishing to the global log publisher), which every
    session logs through.
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


class DatagramCodec:
    """
    UDP datagrams on a pool connection: one write per datagram and one read
    per datagram with Go peers; a 2-byte big-endian length prefix between
    our own peers (dataplane spec §7.1, §16.1), which survives coalescing.
    """

    def __init__(self, framed: bool) -> None:
        self.framed = framed
        self._buffer = b""

    def encode(self, datagram: bytes) -> bytes:
        if self.framed:
            return struct.pack("!H", len(datagram)) + datagram
        return datagram

    def decode(self, data: bytes) -> list[bytes]:
        if not self.framed:
            return [data]
        buffer = self._buffer + data
        out = []
        offset = 0
        while len(buffer) - offset >= 2:
            (size,) = struct.unpack_from("!H", buffer, offset)
            if len(buffer) - offset - 2 < size:
                break
            out.append(buffer[offset + 2 : offset + 2 + size])
            offset += 2 + size
        self._buffer = buffer[offset:]
        return out


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
    def block(self) -> str:
        return self.factory.session.shared.config.block

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.admit():
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
        session.control.send(Signal("tcp", remote=self.peerText, id=conn.ident))
        session.log.debug(
            "TCP launch signal: cid {id} -> {peer}", id=conn.ident, peer=self.peerText
        )
        poolPeer: Any = conn.transport.getPeer()  # type: ignore[union-attr]
        session.log.info("Starting exchange: {a} <-> {b}", a=self.peerText, b=hostPort(poolPeer))
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
        return super().buildProtocol(addr)


class _Target(RelayProtocol):
    pass


# -- UDP ----------------------------------------------------------------------


class _EntryUDPSession:
    """
    One user address on the entry side's UDP listener, carried over one
    pool connection.
    """

    def __init__(self, listener: _EntryUDP, source: tuple[str, int]) -> None:
        self.listener = listener
        self.source = source
        self.conn: PoolConnection | None = None
        self.queue: list[bytes] = []
        self.codec = DatagramCodec(listener.session.ext)
        session = listener.session
        # Idle means no reply from the tunnel (spec §7.2), whatever goes out.
        self.idle = IdleTimer(session.clock, session.shared.settings.udpReadTimeout, self.end)
        self.ended = False

    def send(self, datagram: bytes) -> None:
        if self.conn is None:
            if len(self.queue) < 64:
                self.queue.append(datagram)
            return
        self.conn.write(self.codec.encode(datagram))

    def attached(self, conn: PoolConnection) -> None:
        self.conn = conn
        queued, self.queue = self.queue, []
        for datagram in queued:
            self.send(datagram)

    # Consumer of the pool connection: replies from the tunnel.
    def dataReceived(self, data: bytes) -> None:
        session = self.listener.session
        self.idle.touch()
        port = self.listener.transport
        for datagram in self.codec.decode(data):
            session.shared.counters.udptx += len(datagram)
            if session.shared.limiter is not None:
                session.shared.limiter.write.take(len(datagram))
            port.write(datagram, self.source)  # type: ignore[union-attr]

    def connectionLost(self) -> None:
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.idle.cancel()
        if self.listener.sessions.get(self.source) is self:
            del self.listener.sessions[self.source]
            self.listener.session.shared.slots.release("udp")
        if self.conn is not None:
            self.conn.close()


class _EntryUDP(DatagramProtocol):
    """
    The entry side's UDP listener; it outlives sessions (each new session
    adopts it).
    """

    # Twisted's "Starting protocol" lines would go to the global log, not the instance's.
    noisy = False
    session: Session

    def __init__(self, session: Session | None, clock: Any) -> None:
        self.session = session  # type: ignore[assignment]
        self.sessions: dict[Any, _EntryUDPSession] = {}
        self.throttle = Throttle(clock, self._pause, self._resume)

    def _pause(self) -> None:
        self.transport.stopReading()  # type: ignore[union-attr]

    def _resume(self) -> None:
        if self.session is not None and not self.session.stopped:
            self.transport.startReading()  # type: ignore[union-attr]

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        session = self.session
        if session is None or session.stopped:
            return
        shared = session.shared
        shared.counters.udprx += len(data)
        if shared.limiter is not None:
            self.throttle.delay(shared.limiter.read.take(len(data)))
        udp = self.sessions.get(addr)
        if udp is None:
            if not shared.slots.tryAcquire("udp"):
                session.log.error(
                    "commonUDPLoop: UDP slot limit reached: {udp}/{limit}",
                    udp=shared.slots.udp,
                    limit=shared.slots.limit,
                )
                return
            udp = _EntryUDPSession(self, addr)
            self.sessions[addr] = udp
            remote = f"{addr[0]}:{addr[1]}" if ":" not in addr[0] else f"[{addr[0]}]:{addr[1]}"

            def got(conn: PoolConnection, udp: _EntryUDPSession = udp) -> None:
                if udp.ended or session.stopped:
                    conn.close()
                    return
                session.control.send(Signal("udp", remote=remote, id=conn.ident))
                conn.attach(udp)
                udp.attached(conn)

            def failed(reason: Failure, udp: _EntryUDPSession = udp) -> None:
                session.log.warn(
                    "commonUDPLoop: request timeout: {reason}", reason=reason.getErrorMessage()
                )
                udp.end()

            session.pool.incomingGet().addCallbacks(got, failed)
        udp.send(data)


class _ExitUDPSession(DatagramProtocol):
    """
    The exit side of one UDP flow: a connected socket towards the target.
    """

    noisy = False

    def __init__(self, session: Session, key: str, conn: PoolConnection) -> None:
        self.session = session
        self.key = key
        self.conn = conn
        self.codec = DatagramCodec(session.ext)
        self.port: IListeningPort | None = None
        self.queue: list[bytes] = []
        self.idle = IdleTimer(session.clock, session.shared.settings.udpReadTimeout, self.end)
        self.ended = False

    # pool -> target
    def dataReceived(self, data: bytes) -> None:
        self.idle.touch()
        for datagram in self.codec.decode(data):
            if self.port is None:
                if len(self.queue) < 64:
                    self.queue.append(datagram)
                continue
            self._toTarget(datagram)

    def _toTarget(self, datagram: bytes) -> None:
        shared = self.session.shared
        shared.counters.udptx += len(datagram)
        if shared.limiter is not None:
            shared.limiter.write.take(len(datagram))
        self.transport.write(datagram)  # type: ignore[union-attr,call-arg]

    def opened(self, port: IListeningPort) -> None:
        self.port = port
        queued, self.queue = self.queue, []
        for datagram in queued:
            self._toTarget(datagram)

    # target -> pool
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        shared = self.session.shared
        self.idle.touch()
        shared.counters.udprx += len(data)
        if shared.limiter is not None:
            shared.limiter.read.take(len(data))
        self.conn.write(self.codec.encode(data))

    def connectionRefused(self) -> None:
        self.session.log.debug("UDP target refused datagrams for {key}", key=self.key)

    def connectionLost(self, reason: Any = None) -> None:  # type: ignore[override]
        # Called both as the pool connection's consumer and by the UDP port.
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.idle.cancel()
        sessions = self.session.exitUDP
        if sessions.get(self.key) is self:
            del sessions[self.key]
            self.session.shared.slots.release("udp")
        self.conn.close()
        if self.port is not None:
            self.port.stopListening()


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
        self._ownFingerprint = ownFingerprint
        self._peerFingerprint = peerFingerprint
        self.controlConn = control
        self.poolHalfClose = poolHalfClose
        self.ended: Deferred[None] = Deferred()
        self.stopped = False
        self.ping = 0
        self.verified = tlsMode == 0
        self.relays: set[Relay] = set()
        self.exitUDP: dict[str, _ExitUDPSession] = {}
        self.tcpPort: IListeningPort | None = None
        self.udpPort: IListeningPort | None = None
        self._udpListener: _EntryUDP | None = None
        self._namedByPeer: set[str] = set()
        self._sentVerify: dict[str, str] = {}
        self.control = ControlChannel(
            shared.config.key,
            self.clock,
            control.write,
            self,
            shared.settings.reportInterval,
            log=self.log,
        )

    # -- lifecycle ---------------------------------------------------------

    def adoptEntry(self, tcpPort: IListeningPort | None, udpPort: IListeningPort | None) -> None:
        """
        Use the owner's entry listeners (bound on the first target address,
        not reading until L{_maybeOpen}).
        """
        self.tcpPort = tcpPort
        self.udpPort = udpPort
        if udpPort is not None:
            listener: _EntryUDP = udpPort.protocol  # type: ignore[attr-defined]
            listener.sessions.clear()
            self._udpListener = listener

    def start(self) -> None:
        # Our ping goes first (spec §15.5), then whatever the peer sent while
        # the control connection was parked is handled.
        self.control.start()
        self.controlConn.attach(_ControlConsumer(self))
        if self.tlsMode:
            self.log.info("TLS certificate fingerprint verifying...")
            Deferred.fromCoroutine(self._sendVerify()).addErrback(self._verifyFailed)
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
        The stop routine: control and pool go, the entry listeners stop
        reading; running relays are left to finish (or are closed by the
        owner at shutdown).
        """
        if not self.stopped:
            self.stopped = True
            self.control.stop()
            self.controlConn.close()
            self.pool.close()
            for udp in list(self.exitUDP.values()):
                udp.end()
            if self._udpListener is not None:
                for entryUDP in list(self._udpListener.sessions.values()):
                    entryUDP.end()
            for port in (self.tcpPort, self.udpPort):
                if port is not None:
                    port.stopReading()  # type: ignore[attr-defined]
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def closeRelays(self) -> None:
        for relay in list(self.relays):
            relay.close()

    def abortRelays(self) -> None:
        for relay in list(self.relays):
            relay.abort()

    # -- relays ------------------------------------------------------------

    def relay(self, local: RelayProtocol, conn: PoolConnection) -> None:
        # End-to-end half-close only between our own peers (spec §16.1); with
        # a v1.14.0 peer an EOF from the pool ends the session as it does there.
        conn.halfClose = self.poolHalfClose and self.ext
        shared = self.shared
        relay = Relay(
            self.clock,
            shared.counters,
            shared.limiter,
            shared.config.read,
            self._relayEnded,
        )
        self.relays.add(relay)
        relay.join(local, conn)

    def _relayEnded(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.shared.slots.release("tcp")
        self.log.info("Exchange complete: EOF")

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
            Deferred.fromCoroutine(self._receiveVerify(signal)).addErrback(self._verifyFailed)
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
        named pool connection (counting failures for the health rule), then
        a slot (L{_NoSlot} when the limit is reached).
        """
        try:
            conn = await self.pool.outgoingGet(signal.id)
        except Exception as reason:
            self.pool.errors += 1
            raise SessionError(f"request timeout: {reason}") from None
        if conn.closed:
            self.pool.errors += 1
            raise SessionError(f"pool connection {signal.id} was already closed")
        slots = self.shared.slots
        if not slots.tryAcquire(kind):
            self.log.error(
                "common{kind}Once: {kind} slot limit reached: {used}/{limit}",
                kind=kind.upper(),
                used=slots.tcp + slots.udp,
                limit=slots.limit,
            )
            conn.close()
            raise _NoSlot()
        return conn

    async def _exitTCP(self, signal: Signal) -> None:
        shared = self.shared
        try:
            conn = await self._named(signal, "tcp")
        except _NoSlot:
            return
        target = _Target()
        try:
            target, _ = await shared.dialer.connect(target)
        except Exception as reason:
            shared.slots.release("tcp")
            conn.close()
            raise SessionError(f"dialWithRotation failed: {reason}") from None
        targetAddress: Any = target.transport.getPeer()  # type: ignore[union-attr]
        if shared.config.proxy in (1, 2):
            try:
                host, port = splitRemote(signal.remote)
                header = proxyproto.header(
                    shared.config.proxy, (host, port), (targetAddress.host, targetAddress.port)
                )
            except ValueError as reason:
                shared.slots.release("tcp")
                conn.close()
                target.transport.loseConnection()  # type: ignore[union-attr]
                raise SessionError(f"sendProxyHeader failed: {reason}") from None
            target.transport.write(header)  # type: ignore[union-attr]
        self.log.info("Starting exchange: {a} <-> {b}", a=signal.remote, b=hostPort(targetAddress))
        if self.stopped and conn.closed:
            target.transport.loseConnection()  # type: ignore[union-attr]
        self.relay(target, conn)

    async def _exitUDP(self, signal: Signal) -> None:
        shared = self.shared
        old = self.exitUDP.get(signal.remote)
        if old is not None:
            old.end()
        try:
            conn = await self._named(signal, "udp")
        except _NoSlot:
            return
        udp = _ExitUDPSession(self, signal.remote, conn)
        self.exitUDP[signal.remote] = udp
        dialer = shared.dialer
        index = dialer.targets.order()[0]
        target = dialer.targets.targets[index]
        try:
            ip = await dialer.resolve(index) or "127.0.0.1"
        except Exception as reason:
            udp.end()
            raise SessionError(str(reason)) from None
        if udp.ended:
            return
        interface = "::" if ":" in ip else ""
        if shared.config.dial not in ("auto", ""):
            interface = shared.config.dial
        port = shared.reactor.listenUDP(
            0, udp, interface=interface, maxPacketSize=shared.settings.udpBufferSize
        )
        udp.transport.connect(ip, target.port)  # type: ignore[union-attr]
        udp.opened(port)
        # Only now take the datagrams that arrived (and keep arriving) on
        # the pool connection: the target socket is ready for all of them.
        conn.attach(udp)

    # -- verify (dataplane spec §8.4) --------------------------------------------

    async def _sendVerify(self) -> None:
        # Both peers verify at once; the server names its oldest idle
        # connection and the client its newest, so that they never pick the
        # same one (each would then miss it, spec §8.4).
        conn = await self.pool.incomingGet(newest=self.role == "client")
        # Avoid the ID the peer is verifying with, if it named one already.
        if conn.ident in self._namedByPeer:
            spare = await self.pool.incomingGet()
            conn.close()
            conn = spare
        if self._ownFingerprint is not None:
            fingerprint = self._ownFingerprint()
        else:
            fingerprint = self._fingerprintOf(conn)
        if not fingerprint:
            raise SessionError("incomingVerify: no TLS certificate on the pool connection")
        self.log.debug("TLS verify signal: cid {id} -> peer", id=conn.ident)
        self._sentVerify[conn.ident] = fingerprint
        self.control.send(Signal("verify", id=conn.ident, fp=fingerprint))
        conn.close()

    async def _receiveVerify(self, signal: Signal) -> None:
        self._namedByPeer.add(signal.id)
        if not signal.fp:
            raise SessionError("outgoingVerify: no fingerprint in signal")
        seen = self._sentVerify.get(signal.id)
        if seen is None:
            try:
                conn = await self.pool.outgoingGet(signal.id)
            except Exception:
                raise SessionError("outgoingVerify: request timeout") from None
            seen = self._fingerprintOf(conn)
            conn.close()
        # else: both peers named the same connection at once; we already
        # took it out for our own verify and noted what we saw on it.
        if self._ownFingerprint is not None:
            mine, theirs = self._ownFingerprint(), signal.fp
        else:
            mine, theirs = signal.fp, seen
        if mine != theirs:
            raise SessionError(
                f"outgoingVerify: certificate fingerprint mismatch: server: {mine} - client: {theirs}"
            )
        self.log.info("TLS certificate fingerprint verified: {fp}", fp=signal.fp)
        self.verified = True
        self._maybeOpen()

    def _fingerprintOf(self, conn: PoolConnection) -> str:
        """
        The fingerprint of the server certificate seen on C{conn} (client).
        """
        certificate = getattr(conn, "peerCertificate", None)
        if certificate is not None:
            from nodepass.tls import certificateFingerprint

            return certificateFingerprint(certificate)  # type: ignore[arg-type]
        if self._peerFingerprint is None:
            return ""
        return self._peerFingerprint(conn.transport) or ""

    def _verifyFailed(self, reason: Failure) -> None:
        if self.stopped:
            return
        message = reason.getErrorMessage()
        self.log.error("{message}", message=message)
        self.fail(message)
