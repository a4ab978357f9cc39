"""The connection pool shared by a tunnel server and client (dataplane spec §4).

A pool connection is identified by 8 lowercase hex digits carried as 4 raw
bytes: the server writes them as the first application bytes of every
accepted pool connection (the first one of a pool is always ``00000000``,
which both ends then use as the control connection); the client reads them
before doing anything else.  Parked connections are single-use: the entry
side takes any of them (FIFO, L{Pool.incomingGet}) and names it in a signal;
the exit side takes that very one (L{Pool.outgoingGet}).

The client side also keeps the pool filled between ``min`` and ``max``
connections with the reference's refill algorithm (L{ClientPool}).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.errors import NodePassError
from nodepass.log import defaultLogger
from nodepass.relay import RelayProtocol

CONTROL_ID = "00000000"

#: How long the client waits for the 4 ID bytes of a new pool connection.
ID_TIMEOUT = 60.0

#: How many recently closed parked connections a pool remembers.
GONE_MEMORY = 256

#: With pool authentication (both ends ours, see docs/tunnel.md): the server follows the 4 ID
#: bytes with a fresh nonce, and the client answers with L{poolProof} before anything else.
AUTH_NONCE = 16
AUTH_PROOF = 32

#: How long the server waits for a new pool connection's proof.
AUTH_TIMEOUT = 10.0


def poolProof(key: bytes, ident: bytes, nonce: bytes) -> bytes:
    """
    What a pool connection sends to prove it knows the tunnel key: HMAC-SHA256 of its ID and
    the server's nonce for it, keyed with the tunnel key.
    """
    return hmac.new(key, b"nodepass-pool\0" + ident + nonce, hashlib.sha256).digest()


#: Bytes a parked connection keeps for the side that will take it (a peer may start sending
#: before this side has read the signal naming the connection); past this, it stops reading.
PARKED_READ_LIMIT = 256 * 1024


class PoolTimeout(NodePassError):
    """
    No pool connection became available in time.
    """


class Consumer(Protocol):
    """
    What a pool connection hands its bytes to once it is in use for
    something other than a TCP relay (the control channel, a UDP session).
    """

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self) -> None: ...


class PoolConnection(RelayProtocol):
    """
    One pool connection.  States: ``id`` (server: about to send the ID;
    client: reading it), ``parked``, then ``relay`` (joined into a
    L{nodepass.relay.Relay}) or ``consumer`` (control channel, UDP).
    """

    #: Set by the factory.
    pool: Pool
    tls = False

    def __init__(self, pool: Pool, tls: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.tls = tls
        self.halfClose = not tls
        self.ident = ""
        self.state = "id"
        self.consumer: Consumer | None = None
        self._idBuffer = b""
        self._idTimer: IDelayedCall | None = None
        #: Bytes received while parked, and the deadline for someone to take them.
        self._parkedBytes = 0
        self._claimTimer: IDelayedCall | None = None

    # -- connection events -------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        self.pool.connectionReady(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state == "id" and self.pool.readsID:
            self._idBuffer += data
            size = self.pool.idSize
            if len(self._idBuffer) < size:
                return
            head, rest = self._idBuffer[:size], self._idBuffer[size:]
            self._idBuffer = b""
            if self._idTimer is not None and self._idTimer.active():
                self._idTimer.cancel()
            self.pool.identified(self, head[:4].hex(), head[4:])
            if rest and self.state != "rejected":
                self.dataReceived(rest)
            return
        if self.state == "auth":
            self._idBuffer += data
            if len(self._idBuffer) < AUTH_PROOF:
                return
            proof, rest = self._idBuffer[:AUTH_PROOF], self._idBuffer[AUTH_PROOF:]
            self._idBuffer = b""
            self.pool.proved(self, proof)
            if rest and self.state != "rejected":
                self.dataReceived(rest)
            return
        if self.consumer is not None:
            self.consumer.dataReceived(data)
            return
        if self.state == "parked":
            self._keepWhileParked(data)
        super().dataReceived(data)

    def _keepWhileParked(self, data: bytes) -> None:
        """
        Bytes for a parked connection: owed to whoever takes it next (its peer named it in
        a signal that is still on its way), so they are kept, but only so many, and only for
        as long as a signal can take: a connection nobody takes is closed.
        """
        self._parkedBytes += len(data)
        if self._claimTimer is None:
            self._claimTimer = self.pool.clock.callLater(self.pool.getTimeout, self._unclaimed)
        if self._parkedBytes > PARKED_READ_LIMIT:
            self.gate.pause("parked")

    def _unclaimed(self) -> None:
        self._claimTimer = None
        if self.state == "parked":
            self.pool.log.debug(
                "Pool connection {id} closed: {n} bytes arrived and nothing took it",
                id=self.ident,
                n=self._parkedBytes,
            )
            self.pending = []
            self.close()

    def taken(self) -> None:
        """
        Someone took this connection out of the pool: what it kept is theirs now.
        """
        if self._claimTimer is not None and self._claimTimer.active():
            self._claimTimer.cancel()
        self._claimTimer = None
        self.gate.resume("parked")

    def readConnectionLost(self) -> None:
        if self.consumer is not None:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.state == "parked" and not self.pending:
            # The peer closed an idle pool connection: it leaves the pool now, so the pool
            # count stays true and no socket lingers half closed.
            self.close()
        else:
            super().readConnectionLost()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self._idTimer is not None and self._idTimer.active():
            self._idTimer.cancel()
        if self._claimTimer is not None and self._claimTimer.active():
            self._claimTimer.cancel()
        self._claimTimer = None
        self.lostReason = reason
        self.pool.lost(self)
        consumer, self.consumer = self.consumer, None
        super().connectionLost(reason)
        if consumer is not None:
            consumer.connectionLost()

    # -- use ---------------------------------------------------------------

    def attach(self, consumer: Consumer) -> None:
        """
        Hand this connection's bytes (including any that arrived while it was
        parked) to C{consumer}.
        """
        self.state = "consumer"
        self.consumer = consumer
        pending, self.pending = b"".join(self.pending), []
        if pending:
            consumer.dataReceived(pending)
        if self.closed:
            consumer.connectionLost()
        elif self.pendingEOF:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.loseConnection()


@implementer(IHandshakeListener)
class TLSPoolConnection(PoolConnection):
    """
    A pool connection carried by TLS: ready once the TLS handshake is done.

    Only this class declares L{IHandshakeListener}: Twisted's endpoint
    wrapper forwards just one of the optional protocol interfaces, so a
    plain TCP pool connection must declare only L{IHalfCloseableProtocol}
    or it would lose half-close.

    The peer's certificate is kept when the handshake completes, so the
    verify exchange can read it even after the connection closed.
    """

    peerCertificate: object = None

    def handshakeCompleted(self) -> None:
        getPeerCertificate = getattr(self.transport, "getPeerCertificate", None)
        if getPeerCertificate is not None:
            self.peerCertificate = getPeerCertificate()
        super().handshakeCompleted()


def poolConnection(pool: Pool, tls: bool) -> PoolConnection:
    return TLSPoolConnection(pool, True) if tls else PoolConnection(pool, False)


class _Waiter:
    def __init__(self, deferred: Deferred[PoolConnection], call: IDelayedCall) -> None:
        self.deferred = deferred
        self.call = call


class Pool:
    """
    Parked pool connections and the two ways to take them out.

    @param log: the instance's logger (by default, one publishing to the
        global log publisher).
    """

    #: Whether this side reads the 4 ID bytes (client) or writes them (server).
    readsID = False
    #: How many bytes the reading side reads before the connection is its: the ID, and the
    #: server's nonce when the pool is authenticated.
    idSize = 4

    def __init__(
        self, clock: IReactorTime, getTimeout: float = 5.0, *, log: Logger | None = None
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self.clock = clock
        self.getTimeout = getTimeout
        self.idle: OrderedDict[str, PoolConnection] = OrderedDict()
        self.active: set[PoolConnection] = set()
        self.errors = 0
        self.closed = False
        self._incoming: list[_Waiter] = []
        self._gone: OrderedDict[str, PoolConnection] = OrderedDict()
        self._outgoing: dict[str, list[_Waiter]] = {}
        self.onControl: Callable[[PoolConnection], None] | None = None

    # -- hooks for connections ------------------------------------------------

    def connectionReady(self, conn: PoolConnection) -> None:
        raise NotImplementedError

    def identified(self, conn: PoolConnection, ident: str, nonce: bytes = b"") -> None:
        raise NotImplementedError

    def proved(self, conn: PoolConnection, proof: bytes) -> None:
        raise NotImplementedError

    def lost(self, conn: PoolConnection) -> None:
        self.active.discard(conn)
        if conn.ident and self.idle.get(conn.ident) is conn:
            del self.idle[conn.ident]
            # The peer may still name it (a verify is sent just before the
            # sender closes the connection): remember it for a while, so
            # outgoingGet finds it dead at once instead of waiting 5 s.
            self._gone[conn.ident] = conn
            while len(self._gone) > GONE_MEMORY:
                self._gone.popitem(last=False)

    # -- parking -----------------------------------------------------------

    def park(self, conn: PoolConnection) -> None:
        conn.state = "parked"
        if self.closed:
            conn.close()
            return
        waiters = self._outgoing.get(conn.ident)
        if waiters:
            # Update the bookkeeping before the waiter runs: its callback may
            # close the pool (a failed verify ends the session).
            waiter = waiters.pop(0)
            if not waiters:
                del self._outgoing[conn.ident]
            self._hand(conn, waiter)
            return
        if conn.ident != CONTROL_ID and self._incoming:
            self._hand(conn, self._incoming.pop(0))
            return
        self.idle[conn.ident] = conn

    def _hand(self, conn: PoolConnection, waiter: _Waiter) -> None:
        if waiter.call.active():
            waiter.call.cancel()
        self._mark(conn)
        waiter.deferred.callback(conn)
        self.taken()

    def _mark(self, conn: PoolConnection) -> None:
        conn.state = "taken"
        conn.taken()
        self.active.add(conn)

    def _takeNow(self, conn: PoolConnection) -> Deferred[PoolConnection]:
        """
        Hand out a connection that is available at once.
        """
        self._mark(conn)
        d: Deferred[PoolConnection] = Deferred()
        d.callback(conn)
        self.taken()
        return d

    def _wait(
        self, queue: list[_Waiter], what: str, timeout: float | None = None
    ) -> Deferred[PoolConnection]:
        timeout = self.getTimeout if timeout is None else timeout

        def cancel(d: Deferred[PoolConnection]) -> None:
            for waiter in list(queue):
                if waiter.deferred is d:
                    queue.remove(waiter)
                    if waiter.call.active():
                        waiter.call.cancel()

        d: Deferred[PoolConnection] = Deferred(cancel)

        def expire() -> None:
            for waiter in list(queue):
                if waiter.deferred is d:
                    queue.remove(waiter)
            d.errback(PoolTimeout(f"{what}: no pool connection within {timeout:g}s"))

        queue.append(_Waiter(d, self.clock.callLater(timeout, expire)))
        return d

    def incomingGet(self, newest: bool = False) -> Deferred[PoolConnection]:
        """
        Any idle connection (oldest first, or newest first), waiting up to
        C{getTimeout}.
        """
        order = reversed(self.idle.items()) if newest else iter(self.idle.items())
        for ident, conn in order:
            if ident != CONTROL_ID:
                del self.idle[ident]
                return self._takeNow(conn)
        return self._wait(self._incoming, "incomingGet")

    def outgoingGet(self, ident: str, timeout: float | None = None) -> Deferred[PoolConnection]:
        """
        The connection with this ID, waiting up to C{timeout} (default
        C{getTimeout}) for it.  One the peer closed while it was parked is
        returned too (with C{closed} set), as the reference finds it.
        """
        conn = self.idle.pop(ident, None) or self._gone.pop(ident, None)
        if conn is not None:
            return self._takeNow(conn)
        return self._wait(self._outgoing.setdefault(ident, []), f"outgoingGet {ident}", timeout)

    def taken(self) -> None:
        """
        A connection just left the idle set (hook for the refill logic).
        """

    def flush(self) -> None:
        """
        Close every parked connection (dataplane spec §4.7).
        """
        idle, self.idle = list(self.idle.values()), OrderedDict()
        for conn in idle:
            conn.close()
        self.errors = 0

    def close(self) -> None:
        """
        Close parked connections and fail every waiter.  Connections in use
        are left to their relays (dataplane spec §13.3): they end by
        themselves, or with the process.
        """
        self.closed = True
        self.flush()
        self._gone.clear()
        waiters = self._incoming + [w for ws in self._outgoing.values() for w in ws]
        self._incoming, self._outgoing = [], {}
        for waiter in waiters:
            if waiter.call.active():
                waiter.call.cancel()
            waiter.deferred.errback(CancelledError("pool closed"))

    @property
    def idleCount(self) -> int:
        return sum(1 for ident in self.idle if ident != CONTROL_ID)


class ServerPool(Pool):
    """
    The passive side: accepts pool connections, gives each an ID and parks
    it, refusing connections beyond C{maxSize} idle ones or from another IP
    than the handshake's (dataplane spec §4.2).
    """

    readsID = False

    def __init__(
        self,
        clock: IReactorTime,
        maxSize: int,
        clientIP: str | None = None,
        getTimeout: float = 5.0,
        randomBytes: Callable[[int], bytes] = os.urandom,
        *,
        log: Logger | None = None,
        authKey: bytes | None = None,
    ) -> None:
        super().__init__(clock, getTimeout, log=log)
        self.maxSize = max(1, maxSize)
        self.clientIP = clientIP
        self._random = randomBytes
        self._first = True
        #: The tunnel key, when every pool connection must prove it (our client on the
        #: other end); L{None} with a Go client (the reference's unauthenticated pool).
        self.authKey = authKey
        self._expected: dict[PoolConnection, bytes] = {}
        #: Connections closed because their proof was missing or wrong.
        self.refusedProofs = 0

    def factory(self, tls: bool) -> Any:
        pool = self
        factory = Factory.forProtocol(lambda: poolConnection(pool, tls))  # type: ignore[arg-type]
        factory.noisy = False
        return factory

    def _nextID(self) -> str | None:
        if self._first:
            self._first = False
            return CONTROL_ID
        ident = self._random(4).hex()
        if ident in self.idle or ident == CONTROL_ID:
            return None
        return ident

    def connectionReady(self, conn: PoolConnection) -> None:
        if self.closed or len(self.idle) >= self.maxSize:
            conn.close()
            return
        peer: Any = conn.transport.getPeer()  # type: ignore[union-attr]
        if self.clientIP is not None and getattr(peer, "host", None) != self.clientIP:
            self.log.debug("Pool connection from {peer} refused: not the handshake IP", peer=peer)
            conn.close()
            return
        ident = self._nextID()
        if ident is None:
            conn.close()
            return
        conn.ident = ident
        raw = bytes.fromhex(ident)
        if self.authKey is None:
            conn.write(raw)
            self.park(conn)
            return
        nonce = self._random(AUTH_NONCE)
        self._expected[conn] = poolProof(self.authKey, raw, nonce)
        conn.state = "auth"
        conn._idTimer = self.clock.callLater(AUTH_TIMEOUT, self._noProof, conn)
        conn.write(raw + nonce)

    def proved(self, conn: PoolConnection, proof: bytes) -> None:
        expected = self._expected.pop(conn, None)
        if conn._idTimer is not None and conn._idTimer.active():
            conn._idTimer.cancel()
        if expected is None or not hmac.compare_digest(proof, expected):
            self._refuse(conn, "a wrong key proof")
            return
        self.park(conn)

    def _noProof(self, conn: PoolConnection) -> None:
        if self._expected.pop(conn, None) is not None:
            self._refuse(conn, "no key proof")

    def _refuse(self, conn: PoolConnection, why: str) -> None:
        self.refusedProofs += 1
        conn.state = "rejected"
        peer: Any = conn.transport.getPeer() if conn.transport is not None else "?"
        self.log.debug("Pool connection from {peer} refused: {why}", peer=peer, why=why)
        conn.close()

    def lost(self, conn: PoolConnection) -> None:
        self._expected.pop(conn, None)
        super().lost(conn)

    def close(self) -> None:
        """
        Also close the connections still owing their key proof: they belong to this pool's
        session and must not outlive it.
        """
        super().close()
        for conn in list(self._expected):
            conn.close()

    def identified(self, conn: PoolConnection, ident: str, nonce: bytes = b"") -> None:
        raise AssertionError("the server side never reads an ID")


class ClientPool(Pool):
    """
    The active side: dials pool connections through C{dial} and keeps the
    pool filled (dataplane spec §4.4): each round tops the pool up to the
    current capacity in parallel, then grows the capacity by one when nearly
    every new connection was needed at once, or shrinks it when few were,
    and paces rounds between C{minInterval} and C{maxInterval}.
    """

    readsID = True

    def __init__(
        self,
        clock: IReactorTime,
        dial: Callable[[PoolConnection], Deferred[Any]],
        minSize: int,
        maxSize: int,
        tls: bool = False,
        getTimeout: float = 5.0,
        minInterval: float = 0.1,
        maxInterval: float = 1.0,
        *,
        log: Logger | None = None,
        authKey: bytes | None = None,
    ) -> None:
        super().__init__(clock, getTimeout, log=log)
        minSize, maxSize = max(1, minSize), max(1, maxSize)
        if minSize > maxSize:
            minSize, maxSize = maxSize, minSize
        self.minSize, self.maxSize = minSize, maxSize
        self.capacity = minSize
        self.tls = tls
        self._dial = dial
        self.minInterval, self.maxInterval = minInterval, maxInterval
        self.interval = minInterval
        self._connecting: set[PoolConnection] = set()
        self._round: IDelayedCall | None = None
        self._demand: IDelayedCall | None = None
        self.dialFailures = 0
        self._tlsWarned = False
        #: The tunnel key, when the server asked every pool connection to prove it.
        self.authKey = authKey
        if authKey is not None:
            self.idSize = 4 + AUTH_NONCE

    def start(self) -> None:
        self._runRound()

    def _runRound(self) -> None:
        self._round = None
        if self.closed:
            return
        idle = len(self.idle)
        if idle < int(self.capacity * 0.2) and self.interval > self.minInterval:
            self.interval = max(self.minInterval, self.interval - 0.1)
        if idle > int(self.capacity * 0.8) and self.interval < self.maxInterval:
            self.interval = min(self.maxInterval, self.interval + 0.1)
        need = self.capacity - idle - len(self._connecting)
        attempts = [self._dialOne() for _ in range(max(0, need))]
        if not attempts:
            # A round that needed nothing still adjusts the capacity (it
            # shrinks back towards min while the pool sits idle).
            self._roundDone(0)
            return
        results: list[bool] = []

        def one(ok: bool) -> None:
            results.append(ok)
            if len(results) == len(attempts):
                self._roundDone(sum(results))

        for attempt in attempts:
            attempt.addCallback(one)

    def _roundDone(self, created: int) -> None:
        if self.closed:
            return
        ratio = created / self.capacity
        if ratio < 0.2 and self.capacity > self.minSize:
            self.capacity -= 1
        elif ratio > 0.8 and self.capacity < self.maxSize:
            self.capacity += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self.closed:
            self._round = self.clock.callLater(self.interval, self._runRound)

    def taken(self) -> None:
        """
        Refill on demand: when traffic has drained the pool below half its
        capacity between two rounds, start the next round now instead of
        after the interval.  (Not visible on the wire: the server only sees
        connections arrive sooner.  The reference waits for its timer, so a
        burst of users after a quiet period finds its pool empty for up to
        a second per round.)

        The check runs on the next reactor turn, not here: the connection
        just taken carries a user who is waiting, and dialing a round of
        new pool connections first would add their set-up cost to that
        user's connect time.
        """
        if self._demand is None and not self.closed:
            self._demand = self.clock.callLater(0, self._onDemand)

    def _onDemand(self) -> None:
        self._demand = None
        round = self._round
        if round is not None and round.active() and len(self.idle) < self.capacity // 2:
            round.cancel()
            self._runRound()

    def _dialOne(self) -> Deferred[bool]:
        conn = poolConnection(self, self.tls)
        self._connecting.add(conn)
        done: Deferred[bool] = Deferred()
        conn.created = done  # type: ignore[attr-defined]

        def failed(reason: Failure) -> None:
            self._connecting.discard(conn)
            self.dialFailures += 1
            self.log.debug("Pool dial failed: {reason}", reason=reason.getErrorMessage())
            if not done.called:
                done.callback(False)

        self._dial(conn).addErrback(failed)
        return done

    def connectionReady(self, conn: PoolConnection) -> None:
        conn._idTimer = self.clock.callLater(ID_TIMEOUT, conn.close)

    def identified(self, conn: PoolConnection, ident: str, nonce: bytes = b"") -> None:
        self._connecting.discard(conn)
        conn.ident = ident
        if self.authKey is not None:
            # The proof goes out before anything else this side writes on the connection.
            conn.write(poolProof(self.authKey, bytes.fromhex(ident), nonce))
        created: Deferred[bool] | None = getattr(conn, "created", None)
        if ident in self.idle:
            conn.state = "rejected"
            conn.close()
            if created is not None and not created.called:
                created.callback(False)
            return
        self.park(conn)
        if created is not None and not created.called:
            created.callback(True)

    def lost(self, conn: PoolConnection) -> None:
        super().lost(conn)
        if conn in self._connecting:
            self._connecting.discard(conn)
            reason = getattr(conn, "lostReason", None)
            if conn.tls and reason is not None and not self._tlsWarned:
                from OpenSSL.SSL import Error as TLSFailure

                if reason.check(TLSFailure):
                    # Once per pool: a certificate the client does not trust
                    # fails every connection the same way.
                    self._tlsWarned = True
                    self.log.warn(
                        "Pool connection TLS handshake failed: {reason}",
                        reason=reason.getErrorMessage(),
                    )
            created: Deferred[bool] | None = getattr(conn, "created", None)
            if created is not None and not created.called:
                created.callback(False)

    def close(self) -> None:
        for call in (self._round, self._demand):
            if call is not None and call.active():
                call.cancel()
        self._round = self._demand = None
        for conn in list(self._connecting):
            conn.close()
        super().close()
