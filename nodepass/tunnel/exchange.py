"""Exchanges: a connection relayed to a target, and the set of live relays.

One copy for the single-end forwarder and both tunnel peers:

* L{Exchanges.toTarget} dials a target through the L{TargetDialer}
  (rotation and failover, dataplane spec §10.1), writes the PROXY header
  first when ``proxy`` asks for it (§10.4), then relays (§6.3);
* L{Exchanges.join} relays two connections that are both there already (the
  entry side: a user and a pool connection);
* every relay is kept in L{Exchanges.live} until it ends, which gives its
  ``tcp`` slot back (§10.3); L{Exchanges.drain} is the shutdown (§13.4):
  close them all, abort what is left after the grace period;
* L{Connections}: the live connections of one instance, each TCP relay and
  each UDP flow under a short id, with its addresses, its own byte counts
  and when it started: what an operator lists and closes one by one.  The
  services that run an instance's connections provide L{ILiveConnections}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from nodepass import proxyproto
from nodepass.balance import TargetDialer
from nodepass.errors import NodePassError
from nodepass.limits import RateLimiter, Slots
from nodepass.log import wants
from nodepass.relay import Relay, RelayProtocol
from nodepass.stats import Counters
from nodepass.tunnel.admit import hostPort
from nodepass.url import Config

#: Read size and write-buffer high-water mark of relayed TCP connections.
#: Twisted's default is 64 KiB; 128 KiB cut the CPU time per relayed byte by
#: about a fifth in ``bench/forward.py`` (256 KiB was no better and grew the
#: peak RSS).  A paused peer still bounds what one direction buffers.
RELAY_BUFFER_SIZE = 128 * 1024


def tune(transport: Any) -> None:
    """
    Prepare a plain TCP connection for relaying: Nagle's algorithm off, as
    Go has it on every TCP connection (a relay must not hold back the last
    small segment of a reply), and larger reads.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        setTcpNoDelay(True)
    if isinstance(transport, tcp.Connection):
        transport.bufferSize = RELAY_BUFFER_SIZE


class LiveConnection(Protocol):
    """
    What a L{Connections} registry holds: a TCP relay or a UDP flow.
    """

    ident: str
    since: float

    def describe(self) -> dict[str, Any]:
        """
        C{{"id", "proto", "remote", "target", "rx", "tx", "since"}}, as L{Connections.list}
        gives it.
        """

    def shut(self) -> None:
        """
        End it as a normal close would (the user's side sees the end).
        """


class Connections:
    """
    The live connections of one instance: every open TCP relay and UDP flow, under an id
    unique in the instance (a counter, in hex).

    * L{list}: one dict per connection, C{{"id", "proto", "remote", "target", "rx", "tx",
      "since"}}: C{proto} C{"tcp"} or C{"udp"}; C{remote} the user's address as
      C{host:port} (IPv6 in brackets; on the exit side, the address the entry side
      named); C{target} the target's address (on the entry side, the tunnel peer's
      address the pool connection goes to; C{""} until known); C{rx}/C{tx} the bytes read
      from and written to the local, non-tunnel socket of that connection (the instance
      counters' convention, spec §6.4); C{since} the Unix time it started, in seconds.
    * L{close}: close one by its id, as a normal close (C{False} when it is gone).

    @param clock: gives C{since} (the reactor's C{seconds()} is Unix time).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.live: dict[str, LiveConnection] = {}
        self._count = 0

    def __len__(self) -> int:
        return len(self.live)

    def add(self, connection: LiveConnection) -> None:
        """
        Give C{connection} its id and start time, and keep it.
        """
        self._count += 1
        connection.ident = f"{self._count:x}"
        connection.since = self.clock.seconds()
        self.live[connection.ident] = connection

    def discard(self, connection: LiveConnection) -> None:
        if self.live.get(connection.ident) is connection:
            del self.live[connection.ident]

    def list(self) -> list[dict[str, Any]]:
        return [connection.describe() for connection in list(self.live.values())]

    def close(self, ident: str) -> bool:
        connection = self.live.get(ident)
        if connection is None:
            return False
        connection.shut()
        return True


class ILiveConnections(Interface):
    """
    A service that runs connections of an instance and keeps them in a registry.
    """

    connections = Attribute("The instance's L{Connections}.")


class _Tally(Counters):
    """
    The counters a relay is given: what it adds goes to the instance's counters and is
    kept for this relay too (C{rx}, C{tx}).
    """

    __slots__ = ("rx", "total", "tx")

    def __init__(self, total: Counters) -> None:
        self.total = total
        self.rx = 0
        self.tx = 0

    def __repr__(self) -> str:
        return f"<relay tally rx={self.rx} tx={self.tx}>"

    @property  # type: ignore[override]
    def tcprx(self) -> int:
        return self.total.tcprx

    @tcprx.setter
    def tcprx(self, value: int) -> None:
        total = self.total
        self.rx += value - total.tcprx
        total.tcprx = value

    @property  # type: ignore[override]
    def tcptx(self) -> int:
        return self.total.tcptx

    @tcptx.setter
    def tcptx(self, value: int) -> None:
        total = self.total
        self.tx += value - total.tcptx
        total.tcptx = value


class _RelayEntry:
    """
    A relay as L{Connections} lists it.

    @param user: the user's address as the entry side named it (exit side), or C{""}:
        then the relay's local end is the user, and its remote end goes to the target.
    """

    ident = ""
    since = 0.0

    def __init__(self, relay: Relay, tally: _Tally, user: str) -> None:
        self.relay = relay
        self.tally = tally
        self.user = user

    def describe(self) -> dict[str, Any]:
        relay = self.relay
        if self.user:
            remote, target = self.user, _peerOf(relay.local)
        else:
            remote, target = _peerOf(relay.local), _peerOf(relay.remote)
        return {
            "id": self.ident,
            "proto": "tcp",
            "remote": remote,
            "target": target,
            "rx": self.tally.rx,
            "tx": self.tally.tx,
            "since": self.since,
        }

    def shut(self) -> None:
        self.relay.close()


def _peerOf(side: RelayProtocol | None) -> str:
    transport: Any = side.transport if side is not None else None
    if transport is None:
        return ""
    try:
        return hostPort(transport.getPeer())
    except Exception:
        return ""


class Target(RelayProtocol):
    """
    The outbound end of an exchange: the connection to a target.
    """


class ExchangeError(NodePassError):
    """
    The target could not be dialled, or the PROXY header not built; the
    message is the log line's text after the loop name.
    """


class Exchanges:
    """
    The live relays of one forwarder or session.

    @param config: C{read} (the idle timeout), C{proxy} and C{log} (which
        per-connection lines are built at all).
    @param slots: each relay gives a ``tcp`` slot back when it ends.
    @param connections: the instance's registry, where each relay is listed
        while it runs (by default, one of these exchanges' own).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: Config,
        dialer: TargetDialer,
        counters: Counters,
        limiter: RateLimiter | None,
        slots: Slots,
        log: Logger,
        *,
        connections: Connections | None = None,
    ) -> None:
        self.clock = clock
        self.config = config
        self.dialer = dialer
        self.counters = counters
        self.limiter = limiter
        self.slots = slots
        self.log = log
        # Per-connection lines are only built when the log level keeps them.
        self.logDebug = wants(config.log, "debug")
        self.logInfo = wants(config.log, "info")
        self.live: set[Relay] = set()
        self.connections = connections if connections is not None else Connections(clock)
        self._entries: dict[Relay, _RelayEntry] = {}
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self.live)

    # -- starting ----------------------------------------------------------------

    async def toTarget(
        self,
        peer: RelayProtocol,
        source: Callable[[], tuple[str, int]],
        peerText: str,
        *,
        targetCounted: bool,
    ) -> Relay | None:
        """
        Dial a target for C{peer}, send the PROXY header, relay.

        @param source: the user's address for the PROXY header (called only
            when one is sent; a C{ValueError} from it fails the header).
        @param peerText: the user's address as the log line shows it.
        @param targetCounted: the target is the local side, whose bytes are
            counted and rate-limited (the exit side, spec §6.4); else C{peer} is.
        @return: the relay, or C{None} when C{peer} closed during the dial
            (the target is then closed again).
        @raise ExchangeError: the dial failed, or the PROXY header could not
            be built (the target is closed again).
        """
        try:
            target, _ = await self.dialer.connect(Target())
        except Exception as reason:
            raise ExchangeError(f"dialWithRotation failed: {reason}") from None
        transport: Any = target.transport
        if peer.closed:
            transport.loseConnection()
            return None
        tune(transport)
        targetAddress: Any = transport.getPeer()
        if self.logDebug:
            self.log.debug(
                "Target connection: {local} <-> {target}",
                local=hostPort(transport.getHost()),
                target=hostPort(targetAddress),
            )
        version = self.config.proxy
        if version in (1, 2):
            try:
                header = proxyproto.header(
                    version, source(), (targetAddress.host, targetAddress.port)
                )
            except ValueError as reason:
                transport.loseConnection()
                raise ExchangeError(f"sendProxyHeader failed: {reason}") from None
            transport.write(header)
        if self.logInfo:
            self.log.info(
                "Starting exchange: {peer} <-> {target}",
                peer=peerText,
                target=hostPort(targetAddress),
            )
        if targetCounted:
            return self.join(target, peer, user=peerText)
        return self.join(peer, target)

    def join(self, local: RelayProtocol, remote: RelayProtocol, *, user: str = "") -> Relay:
        """
        Relay C{local} (the counted, rate-limited side) with C{remote}, listed in
        L{connections} while it runs.

        @param user: the user's address when C{local} is the target (the exit
            side: C{remote} is the pool connection); C{""} when C{local} is the user.
        """
        tally = _Tally(self.counters)
        relay = Relay(self.clock, tally, self.limiter, self.config.read, self._ended)
        self.live.add(relay)
        entry = _RelayEntry(relay, tally, user)
        self._entries[relay] = entry
        self.connections.add(entry)
        relay.join(local, remote)
        return relay

    def _ended(self, relay: Relay) -> None:
        self.live.discard(relay)
        entry = self._entries.pop(relay, None)
        if entry is not None:
            self.connections.discard(entry)
        self.slots.release("tcp")
        if self.logInfo:
            self.log.info("Exchange complete: EOF")
        if not self.live and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    # -- ending ---------------------------------------------------------------------

    def close(self) -> None:
        """
        Close every relay (what is buffered is still written).
        """
        for relay in list(self.live):
            relay.close()

    def abort(self) -> None:
        """
        Drop every relay at once.
        """
        for relay in list(self.live):
            relay.abort()

    def drain(self, grace: float) -> Deferred[None]:
        """
        L{close} every relay and L{abort} those still there after C{grace}
        seconds; fires once none is left.
        """
        if not self.live:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        self.close()
        timer = self.clock.callLater(grace, self.abort)
        d.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return d
