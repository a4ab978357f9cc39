"""Target selection (``lbs``) and dialling targets with failover.

Strategies (dataplane spec §10.1 and §16.2):

* ``lbs=0`` round-robin with failover, the reference's behaviour: each dial
  request starts one target further along the list and tries every target
  in order until one connects;
* ``lbs=1`` lowest latency: targets sorted by their recent connect time
  (a moving average), targets that failed recently last;
* ``lbs=2`` primary-backup: the list order, targets that failed recently last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConnector,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTCP,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from nodepass.errors import DialError
from nodepass.log import defaultLogger
from nodepass.resolve import Resolver, isIP
from nodepass.url import HostPort

ROUND_ROBIN, LOWEST_LATENCY, PRIMARY_BACKUP = 0, 1, 2

#: How long a failed target is tried last by the latency and primary-backup strategies.
DOWN_PENALTY = 30.0

#: Weight of a new measurement in the latency moving average.
SMOOTHING = 0.3

P = TypeVar("P", bound=IProtocol)


class Targets:
    """
    The target list of one instance and the health state the strategies use.
    """

    def __init__(self, targets: Sequence[HostPort], strategy: int, clock: IReactorTime) -> None:
        if not targets:
            raise ValueError("at least one target is required")
        self.targets = tuple(targets)
        self.strategy = strategy
        self._clock = clock
        self._counter = 0
        self.latency: list[float | None] = [None] * len(self.targets)
        self._failedAt: list[float | None] = [None] * len(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def advance(self) -> int:
        """
        Move the round-robin counter on; returns the index it now points at.
        """
        self._counter += 1
        return self._counter % len(self.targets)

    def _down(self, index: int) -> bool:
        failed = self._failedAt[index]
        return failed is not None and self._clock.seconds() - failed < DOWN_PENALTY

    def order(self) -> list[int]:
        """
        The indexes to try, in order, for one dial request.
        """
        count = len(self.targets)
        if self.strategy == LOWEST_LATENCY:
            return sorted(
                range(count),
                key=lambda i: (self._down(i), self.latency[i] is not None, self.latency[i] or 0.0),
            )
        if self.strategy == PRIMARY_BACKUP:
            return sorted(range(count), key=self._down)
        start = self._counter % count
        self._counter += 1
        return [(start + step) % count for step in range(count)]

    def succeeded(self, index: int, elapsed: float) -> None:
        self._failedAt[index] = None
        previous = self.latency[index]
        self.latency[index] = (
            elapsed if previous is None else previous + SMOOTHING * (elapsed - previous)
        )

    def failed(self, index: int) -> None:
        self._failedAt[index] = self._clock.seconds()


class _Handoff(Protocol):
    """
    Stand in for a dialled protocol until its connection is made, then hand
    the transport over and step aside.

    C{reactor.connectTCP} wants a factory, and this is the protocol that
    factory builds.  Once connected, the wrapped protocol replaces this one
    as the transport's protocol (the seam Twisted's own C{startTLS} uses),
    so the relay's data path has no extra layer; on a transport without that
    attribute (a test double) every event is passed on instead.
    """

    def __init__(self, wrapped: IProtocol, onConnected: Callable[[], None]) -> None:
        self._wrapped = wrapped
        self._onConnected = onConnected
        if IHalfCloseableProtocol.providedBy(wrapped):
            directlyProvides(self, IHalfCloseableProtocol)

    def logPrefix(self) -> str:
        prefix = getattr(self._wrapped, "logPrefix", None)
        if prefix is None:
            return self._wrapped.__class__.__name__
        return prefix()  # type: ignore[no-any-return]

    def makeConnection(self, transport: ITransport) -> None:
        wrapped = self._wrapped
        if getattr(transport, "protocol", None) is self:
            transport.protocol = wrapped  # type: ignore[attr-defined]
        self.transport = transport
        wrapped.makeConnection(transport)
        onConnected, self._onConnected = self._onConnected, _nothing
        onConnected()

    def dataReceived(self, data: bytes) -> None:
        self._wrapped.dataReceived(data)

    def readConnectionLost(self) -> None:
        self._wrapped.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self._wrapped.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._wrapped.connectionLost(reason)


def _nothing() -> None:
    pass


class _OneShotFactory(ClientFactory):
    """
    The factory of one connection attempt.  Unlike C{connectProtocol} with
    an endpoint, it defines no class per call, logs no "Starting factory"
    events, and adds no wrapping protocol to the data path.

    The connector keeps its factory for as long as the connection lives, so once the
    attempt is decided (the connection made, or failed) the factory lets go of the
    protocol and the callbacks, and with them the dial's state.
    """

    noisy = False

    def __init__(
        self,
        protocol: IProtocol,
        onConnected: Callable[[], None],
        onFailed: Callable[[Failure], None],
    ) -> None:
        self._protocol: IProtocol | None = protocol
        self._onConnected: Callable[[], None] | None = onConnected
        self._onFailed: Callable[[Failure], None] | None = onFailed

    def _release(self) -> None:
        self._protocol = self._onConnected = self._onFailed = None

    def buildProtocol(self, addr: object) -> _Handoff | None:
        protocol, onConnected = self._protocol, self._onConnected
        self._release()
        if protocol is None or onConnected is None:
            return None  # a second connection from one attempt: refused
        return _Handoff(protocol, onConnected)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        onFailed = self._onFailed
        self._release()
        if onFailed is not None:
            onFailed(reason)


def connectTCP(
    reactor: IReactorTCP,
    host: str,
    port: int,
    protocol: P,
    timeout: float,
    bindAddress: tuple[str, int] | None = None,
) -> Deferred[P]:
    """
    Connect C{protocol} to C{host}:C{port} (an IPv4 or IPv6 literal); the
    result fires with C{protocol} once it is connected.  Cancelling it stops
    the attempt.
    """
    connector: IConnector | None = None

    def cancel(d: Deferred[P]) -> None:
        if connector is not None and not d.called:
            connector.stopConnecting()

    d: Deferred[P] = Deferred(cancel)

    def connected() -> None:
        if not d.called:
            d.callback(protocol)

    def failed(reason: Failure) -> None:
        if not d.called:
            d.errback(reason)

    factory = _OneShotFactory(protocol, connected, failed)
    connector = reactor.connectTCP(host, port, factory, timeout, bindAddress)
    return d


class _Dial(Generic[P]):
    """
    One dial request: try the targets in L{Targets.order} until one connects.

    Plain callbacks rather than a coroutine: this runs once per forwarded
    connection, and an IP-literal target needs no Deferred until the connect
    itself.
    """

    def __init__(self, dialer: TargetDialer, protocol: P) -> None:
        self.dialer = dialer
        self.protocol = protocol
        self.result: Deferred[tuple[P, int]] = Deferred(self._cancel)
        self.order = dialer.targets.order()
        self.position = 0
        self.index = -1
        self.started = 0.0
        self.bound = False
        self.connector: IConnector | None = None
        self.done = False
        self.ip = ""
        self.last: BaseException | None = None

    def start(self) -> Deferred[tuple[P, int]]:
        self._next()
        return self.result

    def _next(self) -> None:
        if self.position >= len(self.order):
            self._giveUp()
            return
        index = self.index = self.order[self.position]
        self.position += 1
        dialer = self.dialer
        address = dialer._literals[index]
        if address is not None:
            self._attempt(address)
            return
        d = dialer._resolver.resolve(dialer.targets.targets[index].host)
        d.addCallbacks(self._resolved, self._targetFailed)

    def _resolved(self, ip: str) -> None:
        if self.done:
            return
        self._attempt(ip or "127.0.0.1")

    def _attempt(self, ip: str) -> None:
        dialer = self.dialer
        source = dialer._source
        self.bound = source is not None
        self.ip = ip
        self.started = dialer._clock.seconds()
        self.connector = dialer._reactor.connectTCP(
            ip,
            dialer.targets.targets[self.index].port,
            _OneShotFactory(self.protocol, self.connected, self.attemptFailed),
            dialer._timeout,
            (source, 0) if source is not None else None,
        )

    def connected(self) -> None:
        self.connector = None
        if self.done:
            return
        self.done = True
        dialer = self.dialer
        dialer.targets.succeeded(self.index, dialer._clock.seconds() - self.started)
        self.result.callback((self.protocol, self.index))

    def attemptFailed(self, reason: Failure) -> None:
        self.connector = None
        if self.done:
            return
        dialer = self.dialer
        if self.bound and dialer._source is not None:
            dialer.log.error(
                "dialWithRotation: fallback to system auto due to dialer failure: {reason}",
                reason=reason.value,
            )
            dialer._source = None
            self._attempt(self.ip)
            return
        self._targetFailed(reason)

    def _targetFailed(self, reason: Failure) -> None:
        if self.done:
            return
        self.last = reason.value
        dialer = self.dialer
        dialer.targets.failed(self.index)
        dialer.log.debug(
            "Target {target} failed: {reason}",
            target=dialer.targets.targets[self.index],
            reason=reason.value,
        )
        self._next()

    def _giveUp(self) -> None:
        self.done = True
        targets = self.dialer.targets.targets
        if len(self.order) == 1:
            error = DialError(f"dial {targets[self.order[0]]} failed: {self.last}")
        else:
            error = DialError(f"all {len(self.order)} targets failed: {self.last}")
        self.result.errback(error)

    def _cancel(self, result: Deferred[tuple[P, int]]) -> None:
        self.done = True
        connector, self.connector = self.connector, None
        if connector is not None:
            connector.stopConnecting()


class TargetDialer:
    """
    Connect protocols to the targets: resolve through the DNS cache, pick the
    order with L{Targets}, fail over, and bind the C{dial} source address.

    A source address that fails once is dropped for the rest of the process
    lifetime, after one error line, as the reference does.

    @param log: the instance's logger (by default, one publishing to the
        global log publisher).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        targets: Targets,
        resolver: Resolver,
        timeout: float,
        sourceIP: str | None = None,
        *,
        log: Logger | None = None,
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self._reactor = reactor
        self._clock: IReactorTime = reactor  # type: ignore[assignment]
        self.targets = targets
        self._resolver = resolver
        self._timeout = timeout
        self._source = None if sourceIP in (None, "", "auto") else sourceIP
        # IP-literal targets (the common case) skip the resolver and its Deferred.
        self._literals: list[str | None] = [
            target.host if isIP(target.host) else "127.0.0.1" if not target.host else None
            for target in targets.targets
        ]

    async def resolve(self, index: int) -> str:
        return await self._resolver.resolve(self.targets.targets[index].host)

    async def connect(self, protocol: P) -> tuple[P, int]:
        """
        Connect C{protocol} to the first target that answers; returns it and
        the index of that target.  Fails with L{DialError} when all fail.
        """
        return await self.connectDeferred(protocol)

    def connectDeferred(self, protocol: P) -> Deferred[tuple[P, int]]:
        """
        L{connect} as a L{Deferred}, without a coroutine (the per-connection path).
        """
        return _Dial(self, protocol).start()
