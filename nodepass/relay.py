"""Splice two stream connections together.

A L{Relay} joins a I{local} connection (the user's socket on the entry side,
or the target socket on the exit side: the one whose bytes are counted and
rate-limited, dataplane spec §6.4 and §10.2) with a I{remote} one.  It adds,
on top of plain forwarding:

* backpressure both ways: each transport is registered as the streaming
  producer of the other, so a slow reader pauses the fast writer instead of
  growing a buffer;
* half-close: end of input on one side shuts down only the write half of
  the other (when that transport supports it), and both are closed once both
  directions are finished;
* byte counters, a shared rate limit and an idle timeout (``read=``);
* where both ends are plain Twisted TCP connections, the bytes move socket ->
  pipe -> socket with C{splice(2)} inside the kernel
  (L{nodepass._compat.splice}), still readiness-driven in the reactor and with
  everything above kept; elsewhere (TLS, WebSocket, HTTP/2, QUIC) on plain TCP
  chunks are sent as soon as they are read instead of on the next reactor
  iteration (L{nodepass._compat.directwrite}).

Several reasons can hold a transport paused at once (the peer's full write
buffer, the rate limit, waiting for the outbound connection), so pausing
goes through a small L{Gate} that resumes only when every reason is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass._compat import splice
from nodepass._compat.directwrite import directWriter
from nodepass.limits import RateLimiter
from nodepass.stats import Counters

#: The most one splice moves at a time when a rate limit applies (the pause for the debt
#: follows each chunk, so smaller chunks keep the rate smoother).
RATE_CHUNK = 64 * 1024


class Throttle:
    """
    Hold something paused until a deadline that only ever moves later.

    A rate limiter answers every chunk with the delay until all the debt so
    far is paid; new chunks can still arrive while paused (a TLS layer or a
    UDP port delivers what it already read), so the hold is extended to the
    latest deadline instead of stacking timers that would resume too early.
    """

    def __init__(
        self, clock: IReactorTime, pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self._clock = clock
        self._pause = pause
        self._resume = resume
        self._call: IDelayedCall | None = None
        self._deadline = 0.0

    @property
    def holding(self) -> bool:
        return self._call is not None

    def delay(self, seconds: float) -> None:
        if seconds <= 0:
            return
        deadline = self._clock.seconds() + seconds
        if self._call is not None:
            if deadline > self._deadline:
                self._deadline = deadline
                self._call.reset(seconds)
            return
        self._deadline = deadline
        self._pause()
        self._call = self._clock.callLater(seconds, self._release)

    def _release(self) -> None:
        self._call = None
        self._resume()

    def cancel(self) -> None:
        """
        Forget the hold without resuming (the thing held is gone).
        """
        if self._call is not None:
            self._call.cancel()
            self._call = None


class IdleTimer:
    """
    Call C{expire} once nothing was L{touch}ed for C{timeout} seconds of
    C{clock} time.

    A touch only records the time (cheap enough for every chunk or
    datagram); the single pending call re-arms itself for the remainder when
    it finds recent activity.
    """

    def __init__(self, clock: IReactorTime, timeout: float, expire: Callable[[], object]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._expire = expire
        self._last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        self._last = self._clock.seconds()

    def _check(self) -> None:
        quiet = self._clock.seconds() - self._last
        if quiet >= self._timeout:
            self._call = None
            self._expire()
        else:
            self._call = self._clock.callLater(self._timeout - quiet, self._check)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


@implementer(IPushProducer)
class Gate:
    """
    Pause a transport for any number of independent reasons; it reads again
    only when no reason is left.  Registered with the peer transport as its
    streaming producer (the C{"peer"} reason).
    """

    def __init__(self, transport: ITransport) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        self.pause("peer")

    def resumeProducing(self) -> None:
        self.resume("peer")

    def stopProducing(self) -> None:
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    One end of a relay.  Before L{Relay.join} it just buffers what arrives;
    subclasses decide when to join (after a target connects, after sniffing).
    """

    relay: Relay | None = None
    peer: RelayProtocol | None = None
    gate: Gate
    #: Whether this end's transport may be half-closed (plain TCP only).
    halfClose = True
    readDone = False
    closed = False
    #: Whether the relay registered the peer as this end's producer.
    producing = False

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pendingEOF = False
        #: How the relay writes to this end (set by L{Relay.join}).
        self.send: Callable[[bytes], None] | None = None

    def connectionMade(self) -> None:
        self.gate = Gate(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        if self.relay is None:
            self.pending.append(data)
        else:
            self.relay.forward(self, data)

    def readConnectionLost(self) -> None:
        if self.relay is None:
            self.pendingEOF = True
        else:
            self.relay.endOfInput(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        if self.relay is not None:
            self.relay.lost(self)


def _shut(side: RelayProtocol) -> None:
    """
    Close one end after its buffered data is written.  Its producer (the
    other end) is unregistered first: a TLS transport does not start its
    shutdown while a producer is registered, and the relay is done with
    backpressure anyway.
    """
    transport: Any = side.transport
    if side.producing:
        side.producing = False
        try:
            transport.unregisterProducer()
        except RuntimeError:
            pass  # already gone with the peer's connection
    transport.loseConnection()


class Relay:
    """
    Move bytes between C{local} and C{remote} until both are done.

    @param onEnd: called once, when both connections are gone.
    """

    def __init__(
        self,
        clock: IReactorTime,
        counters: Counters,
        limiter: RateLimiter | None = None,
        idleTimeout: float = 0.0,
        onEnd: Callable[[Relay], None] | None = None,
    ) -> None:
        self._clock = clock
        self._counters = counters
        self._limiter = limiter
        self._idle = idleTimeout
        self._onEnd = onEnd
        self._idleTimer: IdleTimer | None = None
        self.local: RelayProtocol | None = None
        self.remote: RelayProtocol | None = None
        self.ended = False
        self._throttles: dict[RelayProtocol, Throttle] = {}
        #: The kernel-side relay, when both ends are spliced (see L{join}).
        self.spliced: splice.Splice | None = None

    def join(self, local: RelayProtocol, remote: RelayProtocol) -> None:
        """
        Connect the two ends, flush what either buffered, and start reading.
        """
        self.local, self.remote = local, remote
        local.peer, remote.peer = remote, local
        local.relay = remote.relay = self
        if self._splice(local, remote):
            return
        local.send = directWriter(local.transport)
        remote.send = directWriter(remote.transport)
        remote.transport.registerProducer(local.gate, True)  # type: ignore[union-attr]
        local.transport.registerProducer(remote.gate, True)  # type: ignore[union-attr]
        local.producing = remote.producing = True
        if self._idle > 0:
            self._idleTimer = IdleTimer(self._clock, self._idle, self.close)
        for side in (local, remote):
            data, side.pending = b"".join(side.pending), []
            if data:
                self.forward(side, data)
        for side in (local, remote):
            if side.closed:
                self.lost(side)
            elif side.pendingEOF:
                self.endOfInput(side)

    def _splice(self, local: RelayProtocol, remote: RelayProtocol) -> bool:
        """
        Join the ends in the kernel when both are plain TCP connections; C{False} (and
        nothing changed) when they are not, or the pipes cannot be made.
        """
        if local.closed or remote.closed:
            return False
        if not (splice.spliceable(local.transport) and splice.spliceable(remote.transport)):
            return False
        toRemote, toLocal = b"".join(local.pending), b"".join(remote.pending)
        spliced = splice.attach(
            local.transport,
            remote.transport,
            self._splicedRead,
            extra=(toLocal, toRemote),
            paused=(bool(local.gate.reasons), bool(remote.gate.reasons)),
            readDone=(local.pendingEOF, remote.pendingEOF),
            chunk=splice.CHUNK if self._limiter is None else RATE_CHUNK,
        )
        if spliced is None:
            return False
        self.spliced = spliced
        local.pending, remote.pending = [], []
        local.send, remote.send = local.transport.write, remote.transport.write  # type: ignore[union-attr]
        if self._idle > 0:
            self._idleTimer = IdleTimer(self._clock, self._idle, self.close)
        for side, data in ((local, toRemote), (remote, toLocal)):
            if data:
                self._read(side, len(data))
        for side in (local, remote):
            if side.pendingEOF and not side.closed:
                self.endOfInput(side)
        return True

    def _splicedRead(self, index: int, size: int) -> None:
        side = self.local if index == 0 else self.remote
        assert side is not None
        self._read(side, size)

    def _read(self, source: RelayProtocol, size: int) -> None:
        """
        Count C{size} bytes read from C{source}, take them from the rate limit (pausing
        C{source} for the debt) and note the activity.
        """
        limiter = self._limiter
        if source is self.local:
            self._counters.tcprx += size
            delay = limiter.read.take(size) if limiter is not None else 0.0
        else:
            self._counters.tcptx += size
            delay = limiter.write.take(size) if limiter is not None else 0.0
        if self._idleTimer is not None:
            self._idleTimer.touch()
        if delay > 0:
            self._throttle(source).delay(delay)

    def forward(self, source: RelayProtocol, data: bytes) -> None:
        peer = source.peer
        assert peer is not None
        self._read(source, len(data))
        peer.send(data)  # type: ignore[misc]

    def _throttle(self, side: RelayProtocol) -> Throttle:
        throttle = self._throttles.get(side)
        if throttle is None:
            gate = side.gate
            throttle = Throttle(
                self._clock, lambda: gate.pause("rate"), lambda: gate.resume("rate")
            )
            self._throttles[side] = throttle
        return throttle

    def endOfInput(self, source: RelayProtocol) -> None:
        if source.readDone:
            # Twisted says it again when a side whose input ended before the join is
            # resumed; half-closing the peer a second time would make Twisted write to
            # a shut socket and drop the connection.
            return
        source.readDone = True
        peer = source.peer
        assert peer is not None
        if peer.readDone or peer.closed:
            self.close()
        elif peer.halfClose and source.halfClose:
            peer.transport.loseWriteConnection()  # type: ignore[union-attr]
        else:
            self.close()

    def lost(self, side: RelayProtocol) -> None:
        peer = side.peer
        if peer is not None and not peer.closed:
            _shut(peer)
        elif peer is not None:
            self._finish()

    def close(self) -> None:
        """
        Close both ends (buffered data is still flushed).
        """
        for side in (self.local, self.remote):
            if side is not None and not side.closed:
                _shut(side)

    def abort(self) -> None:
        """
        Drop both ends at once (shutdown after the grace period).
        """
        for side in (self.local, self.remote):
            if side is not None and not side.closed:
                side.transport.abortConnection()  # type: ignore[union-attr]

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._idleTimer is not None:
            self._idleTimer.cancel()
            self._idleTimer = None
        for throttle in self._throttles.values():
            throttle.cancel()
        self._throttles.clear()
        if self._onEnd is not None:
            self._onEnd(self)
