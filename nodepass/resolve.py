"""Name resolution with a TTL cache (the ``dns`` URL parameter).

``dns=<duration>`` keeps the reference's behaviour: names are resolved with
the system resolver (``getaddrinfo`` in the reactor's thread pool, never in
the reactor thread) and cached for that long; ``dns=0`` re-resolves on every
use.  ``dns=<ip>[,<ip>...]`` sends queries to those DNS servers instead, with
:mod:`twisted.names`, and caches answers for the default five minutes.
IP literals never touch the cache.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from nodepass.errors import ResolveError
from nodepass.log import defaultLogger

Lookup = Callable[[str], "Deferred[str]"]


def isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def splitServer(text: str, defaultPort: int = 53) -> tuple[str, int]:
    """
    ``1.1.1.1`` -> (``1.1.1.1``, 53); ``127.0.0.1:5353`` and ``[::1]:5353``
    carry their own port.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else defaultPort
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, defaultPort


def systemLookup(reactor: IReactorThreads) -> Lookup:
    """
    Resolve with C{getaddrinfo} in the reactor's thread pool.
    """

    def blocking(host: str) -> str:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
        # Prefer IPv4, as the reference's dialer usually does for dual-stack names.
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        return str(infos[0][4][0])

    def lookup(host: str) -> Deferred[str]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), blocking, host)  # type: ignore[arg-type]

    return lookup


def serverLookup(servers: tuple[str, ...]) -> Lookup:
    """
    Resolve by asking the given DNS servers (A records) with twisted.names.
    """
    from twisted.names import client

    resolver = client.Resolver(servers=[splitServer(server) for server in servers])

    def lookup(host: str) -> Deferred[str]:
        return resolver.getHostByName(host)  # type: ignore[no-any-return]

    return lookup


class Resolver:
    """
    Resolve host names through C{lookup}, caching answers for C{ttl} seconds
    of C{clock} time.  Concurrent lookups of one name share one query.

    @param log: the instance's logger (by default, one publishing to the
        global log publisher).
    """

    def __init__(
        self, clock: IReactorTime, ttl: float, lookup: Lookup, *, log: Logger | None = None
    ) -> None:
        self.log = log if log is not None else defaultLogger()
        self._clock = clock
        self._ttl = ttl
        self._lookup = lookup
        self._cache: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, list[Deferred[str]]] = {}
        self.lookups = 0

    def clear(self) -> None:
        self._cache.clear()

    def resolve(self, host: str) -> Deferred[str]:
        """
        The IP address text for C{host}; fails with L{ResolveError}.
        """
        if not host:
            return succeed("")
        if isIP(host):
            return succeed(host)
        cached = self._cache.get(host)
        if cached is not None:
            if cached[1] > self._clock.seconds():
                return succeed(cached[0])
            del self._cache[host]
        waiter: Deferred[str] = Deferred()
        waiting = self._pending.get(host)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._pending[host] = [waiter]
        self.lookups += 1
        d = maybeDeferred(self._lookup, host)
        d.addCallbacks(self._resolved, self._failed, callbackArgs=(host,), errbackArgs=(host,))
        return waiter

    def _resolved(self, address: str, host: str) -> None:
        if self._ttl > 0:
            self._cache[host] = (address, self._clock.seconds() + self._ttl)
        self.log.debug("Resolved {host} -> {address}", host=host, address=address)
        for waiter in self._pending.pop(host, []):
            waiter.callback(address)

    def _failed(self, reason: object, host: str) -> None:
        error = ResolveError(f"cannot resolve {host!r}: {getattr(reason, 'value', reason)}")
        for waiter in self._pending.pop(host, []):
            waiter.errback(error)
