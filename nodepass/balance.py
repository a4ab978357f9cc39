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

import ipaddress
from collections.abc import Sequence
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocol, IReactorTCP, IReactorTime
from twisted.logger import Logger

from nodepass.errors import DialError
from nodepass.resolve import Resolver
from nodepass.url import HostPort

log = Logger()

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


class TargetDialer:
    """
    Connect protocols to the targets: resolve through the DNS cache, pick the
    order with L{Targets}, fail over, and bind the C{dial} source address.

    A source address that fails once is dropped for the rest of the process
    lifetime, after one error line, as the reference does.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        targets: Targets,
        resolver: Resolver,
        timeout: float,
        sourceIP: str | None = None,
    ) -> None:
        self._reactor = reactor
        self.targets = targets
        self._resolver = resolver
        self._timeout = timeout
        self._source = None if sourceIP in (None, "", "auto") else sourceIP

    def _endpoint(self, ip: str, port: int) -> TCP4ClientEndpoint | TCP6ClientEndpoint:
        bind = (self._source, 0) if self._source else None
        if ipaddress.ip_address(ip).version == 6:
            return TCP6ClientEndpoint(self._reactor, ip, port, self._timeout, bind)
        return TCP4ClientEndpoint(self._reactor, ip, port, self._timeout, bind)

    async def resolve(self, index: int) -> str:
        return await self._resolver.resolve(self.targets.targets[index].host)

    async def _connectOne(self, index: int, protocol: P) -> P:
        target = self.targets.targets[index]
        ip = await self.resolve(index) or "127.0.0.1"
        clock: IReactorTime = self._reactor  # type: ignore[assignment]
        started = clock.seconds()
        try:
            connected = await connectProtocol(self._endpoint(ip, target.port), protocol)
        except Exception as reason:
            if self._source is None:
                raise
            log.error(
                "dialWithRotation: fallback to system auto due to dialer failure: {reason}",
                reason=reason,
            )
            self._source = None
            started = clock.seconds()
            connected = await connectProtocol(self._endpoint(ip, target.port), protocol)
        self.targets.succeeded(index, clock.seconds() - started)
        return connected  # type: ignore[no-any-return]

    async def connect(self, protocol: P) -> tuple[P, int]:
        """
        Connect C{protocol} to the first target that answers; returns it and
        the index of that target.  Fails with L{DialError} when all fail.
        """
        order = self.targets.order()
        last: BaseException | None = None
        for index in order:
            try:
                return await self._connectOne(index, protocol), index
            except Exception as reason:
                last = reason
                self.targets.failed(index)
                log.debug(
                    "Target {target} failed: {reason}",
                    target=self.targets.targets[index],
                    reason=reason,
                )
        if len(order) == 1:
            raise DialError(f"dial {self.targets.targets[order[0]]} failed: {last}")
        raise DialError(f"all {len(order)} targets failed: {last}")

    def connectDeferred(self, protocol: P) -> Deferred[tuple[P, int]]:
        return Deferred.fromCoroutine(self.connect(protocol))
