"""Who may connect: the ``allow=`` and ``deny=`` lists of an entry listener.

* L{parseNetworks}: the text of one list (``CIDR[,CIDR...]``, IPv4 and IPv6; a bare address is
  a /32 or /128) into networks, or a L{ValueError} that says what is wrong.
* L{AccessList}: both lists; L{AccessList.check} tells whether a peer address may connect, and
  why not.  Deny wins; an empty allow list allows every address not denied.  IPv4-mapped IPv6
  addresses (``::ffff:192.0.2.1``, what a dual-stack listener reports for an IPv4 peer) are
  matched as the IPv4 address they carry, on both sides.
* L{RefusalLog}: says which refusals get a log line of their own: the first for an address in
  each minute; the others are counted and told in one summary line per minute.  It remembers
  at most L{RefusalLog.capacity} addresses, forgetting each a minute after its line; while
  that many were logged in the last minute, new addresses are summed up too, so neither the
  table nor the log grows without bound (spoofed UDP sources cannot flood it).
* L{Screen}: what an entry listener asks about each new peer: the lists, the C{deny} refusal
  count of the instance's L{Counters}, and the log lines.

Nothing here does I/O; the clock is handed in.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import frozen

if TYPE_CHECKING:
    # Types only: the URL parser imports this module, and stays free of Twisted.
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.logger import Logger

    from nodepass.stats import Counters

__all__ = ["AccessList", "Network", "RefusalLog", "Screen", "parseNetworks", "peerIP"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: One element of a list: an IPv4 or IPv6 address (hex digits, ``:`` and ``.``), then an
#: optional prefix length.  Anything else (brackets, zones, netmasks, spaces) is refused.
_ELEMENT = re.compile(r"[0-9A-Fa-f:.]{2,45}(?:/[0-9]{1,3})?")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        if network.subnet_of(_MAPPED):
            base = network.network_address.ipv4_mapped
            assert base is not None
            return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


def parseNetworks(text: str) -> tuple[Network, ...]:
    """
    The networks of a comma-separated list, in order, duplicates dropped.  Elements are
    trimmed of white space and empty ones skipped; host bits under the prefix are cleared
    (``192.0.2.7/24`` is ``192.0.2.0/24``).

    @raise ValueError: an element is not an IPv4/IPv6 address or CIDR block; the message
        names it.
    """
    networks: list[Network] = []
    for raw in text.split(","):
        element = raw.strip()
        if not element:
            continue
        if not (element.isascii() and _ELEMENT.fullmatch(element)):
            raise ValueError(f"{element!r} is not an IP address or CIDR block")
        try:
            network = _unmapped(ipaddress.ip_network(element, strict=False))
        except ValueError:
            raise ValueError(f"{element!r} is not an IP address or CIDR block") from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def peerIP(host: str) -> Address | None:
    """
    The address of a peer's host text (an IPv6 zone dropped, IPv4-mapped IPv6 as IPv4), or
    L{None} when it is not an IP address.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@frozen
class AccessList:
    """
    The allow and deny lists of one entry listener.

    @ivar allow: when not empty, only these networks may connect.
    @ivar deny: these networks may never connect (whatever C{allow} says).
    """

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @property
    def active(self) -> bool:
        """
        C{True} when either list is set (otherwise every peer is allowed, unchecked).
        """
        return bool(self.allow or self.deny)

    def check(self, host: str) -> str | None:
        """
        L{None} when a peer whose address is C{host} may connect, else the reason it may not
        (C{"in deny 10.0.0.0/8"}, C{"not in the allow list"}).  A host that is not an IP
        address is refused when a list is set.
        """
        if not self.active:
            return None
        address = peerIP(host)
        if address is None:
            return "not an IP address"
        for network in self.deny:
            if address in network:
                return f"in deny {network}"
        if not self.allow:
            return None
        for network in self.allow:
            if address in network:
                return None
        return "not in the allow list"


class RefusalLog:
    """
    Which refusals are logged one by one: L{refused} says C{True} for the first refusal of an
    address in a minute and C{False} (counting it) for the others; a minute after the first
    one held back, C{summary} is called once with how many were held back.

    @param summary: called with the number of refusals not logged one by one.
    @param capacity: addresses remembered at most.  An address is forgotten a minute after
        its line (the oldest first); while C{capacity} addresses got a line in the last
        minute, a new address is held back like a repeated one.
    """

    period = 60.0

    def __init__(
        self, clock: IReactorTime, summary: Callable[[int], Any], capacity: int = 4096
    ) -> None:
        self.clock = clock
        self.summary = summary
        self.capacity = capacity
        self._logged: OrderedDict[str, float] = OrderedDict()
        self.held = 0
        self._call: IDelayedCall | None = None

    def refused(self, address: str) -> bool:
        """
        Note a refusal of C{address} (an IP address, without the port); C{True} when it gets
        a log line of its own.
        """
        now = self.clock.seconds()
        logged = self._logged
        # Forget the addresses whose minute is over (kept in the order they were logged).
        while logged and now - next(iter(logged.values())) >= self.period:
            logged.popitem(last=False)
        if address in logged or len(logged) >= self.capacity:
            self.held += 1
            if self._call is None:
                self._call = self.clock.callLater(self.period, self._tell)
            return False
        logged[address] = now
        return True

    def _tell(self) -> None:
        self._call = None
        held, self.held = self.held, 0
        if held:
            self.summary(held)

    def stop(self) -> None:
        """
        Cancel a pending summary (the listener is going away).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class Screen:
    """
    The access check of one instance's entry listeners (TCP and UDP, every session): a refused
    peer is counted in C{counters.refusedDeny} and logged as the L{RefusalLog} allows.

    @param log: the instance's logger.
    """

    def __init__(
        self, access: AccessList, clock: IReactorTime, counters: Counters, log: Logger
    ) -> None:
        self.access = access
        self.counters = counters
        self.log = log
        self.refusals = RefusalLog(clock, self._summary)

    @property
    def active(self) -> bool:
        return self.access.active

    def allows(self, host: str, port: int, loop: str) -> bool:
        """
        C{True} when the peer C{host}:C{port} may connect; else count and perhaps log the
        refusal (C{loop} is the log line's prefix) and say C{False}.
        """
        reason = self.access.check(host)
        if reason is None:
            return True
        self.counters.refusedDeny += 1
        address = peerIP(host)
        if self.refusals.refused(host if address is None else str(address)):
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self.log.warn("{loop}: refused {peer}: {reason}", loop=loop, peer=peer, reason=reason)
        return False

    def _summary(self, held: int) -> None:
        self.log.warn("access: {n} more refused in the last minute", n=held)

    def stop(self) -> None:
        self.refusals.stop()
