"""
TCP reachability probes for C{GET P/tcping?target=HOST:PORT} (spec §8.9).

L{TCPing.probe} opens one TCP connection to the target, closes it as soon as
it is established (no byte is sent) and answers the JSON object of §8.9,
always with these four fields in this order::

    {"target": "127.0.0.1:18090", "connected": true, "latency": 0, "error": null}

  - C{latency}: whole milliseconds from the start of the dial (name
    resolution included) to the established connection; C{0} on failure.
  - C{error}: C{None} on success, else a one-line message shaped like Go's
    (C{"dial tcp 127.0.0.1:1: connect: connection refused"}); clients only
    display it.

Behaviour:

  - The target is used as given: C{host:port}, with IPv6 literals in
    brackets (C{[::1]:80}).  A malformed target is not an exception: it gives
    C{connected: false} and a message (capture 55).  Only the empty target is
    refused earlier, by the route, with 400 (§8.9).
  - Names are resolved by L{HostnameEndpoint} through the reactor's
    pluggable resolver (a thread pool for the default one), never by a
    blocking C{getaddrinfo} in the reactor thread.
  - At most C{slots} probes (10, like Go) run at once.  A probe that cannot
    get a slot within C{slotWait} (1 s) answers C{connected: false},
    C{error: "too many requests"}, still with status 200 (§8.9).
  - The whole dial, resolution included, is bounded by C{timeout} (the report
    interval, C{NP_REPORT_INTERVAL}, 5 s by default), measured on the
    injected clock.

Note (§17): tcping can reach any host and port, so it lets anyone holding
the API key scan networks the master can reach.  It requires the key.
"""

from __future__ import annotations

import string
from typing import Final, TypedDict

from twisted.internet import defer, error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocol, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from nodepass.errors import NodePassError

__all__ = [
    "BUSY_ERROR",
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_WAIT",
    "DEFAULT_TIMEOUT",
    "InvalidTarget",
    "ProbeResult",
    "TCPing",
    "parseTarget",
]

#: Probes that may run at once (Go's semaphore size, §8.9).
DEFAULT_SLOTS: Final = 10

#: Seconds a probe waits for a free slot before answering L{BUSY_ERROR} (§8.9).
DEFAULT_SLOT_WAIT: Final = 1.0

#: Default dial timeout in seconds: the default report interval (§8.9, §15).
DEFAULT_TIMEOUT: Final = 5.0

#: The C{error} text when no slot frees up in time (Go's text, §8.9).
BUSY_ERROR: Final = "too many requests"

_HOST_FORBIDDEN: Final = frozenset(string.whitespace + "/\\?#@[]%") | frozenset(
    chr(c) for c in range(32)
)


class ProbeResult(TypedDict):
    """
    The JSON object answered by C{GET P/tcping} (§8.9), keys in this order.
    """

    target: str
    connected: bool
    latency: int
    error: str | None


class InvalidTarget(NodePassError, ValueError):
    """
    A tcping target is not C{host:port}.  C{str()} is the message to show,
    in Go's shape (C{"dial tcp: address nonsense: missing port in address"}).
    """


def _invalid(target: str, why: str) -> InvalidTarget:
    return InvalidTarget(f"dial tcp: address {target}: {why}")


def parseTarget(target: str) -> tuple[str, int]:
    """
    Split a tcping target into host and port.

    Accepted: C{host:port}, C{ipv4:port} and C{[ipv6]:port} (a zone such as
    C{[fe80::1%eth0]:22} is allowed), with a decimal port from 1 to 65535.

    @return: the host (IPv6 without brackets) and the port.
    @raise InvalidTarget: naming what is wrong.
    """
    if not target:
        raise InvalidTarget("dial tcp: missing address")
    if target.startswith("["):
        close = target.find("]")
        if close < 0:
            raise _invalid(target, "missing ']' in address")
        host, rest = target[1:close], target[close + 1 :]
        if not rest:
            raise _invalid(target, "missing port in address")
        if not rest.startswith(":"):
            raise _invalid(target, "unexpected text after ']' in address")
        portText = rest[1:]
        if not isIPv6Address(host):
            raise _invalid(target, "not an IPv6 address in brackets")
    else:
        if ":" not in target:
            raise _invalid(target, "missing port in address")
        host, portText = target.rsplit(":", 1)
        if ":" in host:
            raise _invalid(target, "too many colons in address (put IPv6 in brackets)")
        if not host:
            raise _invalid(target, "missing host in address")
        if len(host) > 253 or any(c in _HOST_FORBIDDEN for c in host):
            raise _invalid(target, "invalid host")
    if not portText:
        raise _invalid(target, "missing port in address")
    if not (portText.isascii() and portText.isdigit()) or not 0 < int(portText) < 65536:
        raise _invalid(target, "invalid port")
    return host, int(portText)


class _Probe(Protocol):
    """
    Closes the connection as soon as it is made; sends nothing.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def _result(target: str, connected: bool, latency: int, message: str | None) -> ProbeResult:
    return {"target": target, "connected": connected, "latency": latency, "error": message}


def _timedOut(result: object, timeout: float) -> Failure:
    # Whatever the cancelled dial failed with (HostnameEndpoint reports
    # ConnectingCancelledError or a DNS error), a timeout is a timeout.
    return Failure(defer.TimeoutError(f"dial timed out after {timeout}s"))


def _describe(target: str, host: str, reason: BaseException) -> str:
    """
    A Go-shaped one-line message for a failed dial.
    """
    if isinstance(reason, defer.TimeoutError):
        return f"dial tcp {target}: i/o timeout"
    if isinstance(reason, error.DNSLookupError):
        return f"dial tcp: lookup {host}: no such host"
    if isinstance(reason, error.ConnectionRefusedError):
        return f"dial tcp {target}: connect: connection refused"
    if isinstance(reason, error.NoRouteError):
        return f"dial tcp {target}: connect: no route to host"
    if isinstance(reason, error.TCPTimedOutError):
        return f"dial tcp {target}: connect: connection timed out"
    text = " ".join(str(reason).split()) or type(reason).__name__
    return f"dial tcp {target}: {text}"


class TCPing:
    """
    Runs tcping probes with a bounded number of concurrent dials.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        slots: int = DEFAULT_SLOTS,
        timeout: float = DEFAULT_TIMEOUT,
        slotWait: float = DEFAULT_SLOT_WAIT,
    ) -> None:
        """
        @param reactor: connects and resolves (through L{HostnameEndpoint}:
            L{IReactorTCP}, and L{IReactorPluggableNameResolver} for
            resolution off the reactor thread) and keeps time
            (L{IReactorTime}: latency, timeouts).
        @param slots: the most probes that may run at once.
        @param timeout: seconds for the whole dial, resolution included.
        @param slotWait: seconds a probe waits for a free slot.
        @raise ValueError: for a non-positive C{slots} or C{timeout}, or a
            negative C{slotWait}.
        """
        if slots < 1:
            raise ValueError(f"tcping slots must be at least 1, not {slots}")
        if not timeout > 0:
            raise ValueError(f"tcping timeout must be positive, not {timeout}")
        if not slotWait >= 0:
            raise ValueError(f"tcping slot wait must not be negative, not {slotWait}")
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._slots = DeferredSemaphore(slots)
        self._timeout = timeout
        self._slotWait = slotWait

    @property
    def busySlots(self) -> int:
        """
        How many probes are dialling right now.
        """
        return self._slots.limit - self._slots.tokens

    def probe(self, target: str) -> Deferred[ProbeResult]:
        """
        Probe C{target} (C{host:port}).

        @return: a L{Deferred} that fires with the §8.9 object; it fails only
            if it is cancelled (the slot is then released and the dial
            abandoned).
        """
        return Deferred.fromCoroutine(self._probe(target))

    async def _probe(self, target: str) -> ProbeResult:
        try:
            host, port = parseTarget(target)
        except InvalidTarget as e:
            return _result(target, False, 0, str(e))

        acquiring = self._slots.acquire()
        acquiring.addTimeout(self._slotWait, self._clock)
        try:
            await acquiring
        except defer.TimeoutError:
            return _result(target, False, 0, BUSY_ERROR)
        try:
            return await self._dial(target, host, port)
        finally:
            self._slots.release()

    async def _dial(self, target: str, host: str, port: int) -> ProbeResult:
        start = self._clock.seconds()
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        connecting: Deferred[IProtocol] = connectProtocol(endpoint, _Probe())
        connecting.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timedOut)
        try:
            await connecting
        except (CancelledError, error.ConnectingCancelledError):
            # Our caller cancelled the probe: let it fail.
            raise
        except Exception as e:
            return _result(target, False, 0, _describe(target, host, e))
        elapsed = self._clock.seconds() - start
        return _result(target, True, max(0, int(elapsed * 1000)), None)
