"""Exchanges: a connection relayed to a target, and the set of live relays.

One copy for the single-end forwarder and both tunnel peers:

* L{Exchanges.toTarget} dials a target through the L{TargetDialer}
  (rotation and failover, dataplane spec §10.1), writes the PROXY header
  first when ``proxy`` asks for it (§10.4), then relays (§6.3);
* L{Exchanges.join} relays two connections that are both there already (the
  entry side: a user and a pool connection);
* every relay is kept in L{Exchanges.live} until it ends, which gives its
  ``tcp`` slot back (§10.3); L{Exchanges.drain} is the shutdown (§13.4):
  close them all, abort what is left after the grace period.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

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
            return self.join(target, peer)
        return self.join(peer, target)

    def join(self, local: RelayProtocol, remote: RelayProtocol) -> Relay:
        """
        Relay C{local} (the counted, rate-limited side) with C{remote}.
        """
        relay = Relay(self.clock, self.counters, self.limiter, self.config.read, self._ended)
        self.live.add(relay)
        relay.join(local, remote)
        return relay

    def _ended(self, relay: Relay) -> None:
        self.live.discard(relay)
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
