"""Datagrams: one copy for the single-end forwarder and both tunnel peers.

* L{DatagramCodec}: UDP datagrams on a pool connection (dataplane spec §7.1,
  §16.1).
* L{Flows}: the live flows of a listener or a session, keyed by their source,
  each holding a ``udp`` slot (§10.3) until it ends, and listed in the
  instance's L{Connections <nodepass.tunnel.exchange.Connections>} meanwhile.
* L{TargetFlow}: a connected UDP socket towards the target for one source
  (single-end §7.4, exit side §7.3), opened by L{connectTarget}; it ends after
  the read timeout without traffic either way.
* L{TunnelFlow}: the entry side of a tunnelled flow (§7.2): datagrams from one
  source over one pool connection; it ends after the read timeout without a
  reply from the tunnel.  L{PoolFeed} is the exit side's reader of that pool
  connection.
* L{EntryListener}: the UDP socket users send to (single-end tunnel address,
  entry side's target address), which counts and rate-limits what it reads
  and writes (§6.4, §10.2) and hands each datagram to its source's flow.  A
  source its L{Screen <nodepass.access.Screen>} refuses gets no flow: its
  datagrams are dropped before anything is counted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from nodepass.limits import RateLimiter, Slots
from nodepass.relay import IdleTimer, Throttle
from nodepass.stats import Counters

if TYPE_CHECKING:
    from nodepass.access import Screen
    from nodepass.balance import TargetDialer
    from nodepass.tunnel.exchange import Connections
    from nodepass.tunnel.pool import PoolConnection
    from nodepass.url import HostPort

#: Datagrams a flow holds while its far side is not ready yet; later ones are dropped.
QUEUE_LIMIT = 64


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


class Flows:
    """
    The live flows of one listener or session, keyed by source.  A flow
    holds a ``udp`` slot from L{admit} until it ends (dataplane spec §10.3).

    @param loop: the prefix of the slot-limit error line (``singleUDPLoop``,
        ``commonUDPLoop``).
    @param counters: where a slot refusal is counted (C{refusedSlot}).
    @param connections: the instance's registry, where each flow is listed
        while it lives.
    """

    def __init__(
        self,
        slots: Slots,
        log: Logger,
        loop: str,
        *,
        counters: Counters | None = None,
        connections: Connections | None = None,
    ) -> None:
        self.slots = slots
        self.log = log
        self.loop = loop
        self.counters = counters
        self.connections = connections
        self.live: dict[Any, Flow] = {}

    def __len__(self) -> int:
        return len(self.live)

    def get(self, key: Any) -> Flow | None:
        return self.live.get(key)

    def admit(self) -> bool:
        """
        Take a slot for a new flow; C{False}, after one error line, when none is left.
        """
        slots = self.slots
        if slots.tryAcquire("udp"):
            return True
        if self.counters is not None:
            self.counters.refusedSlot += 1
        self.log.error(
            "{loop}: UDP slot limit reached: {udp}/{limit}",
            loop=self.loop,
            udp=slots.udp,
            limit=slots.limit,
        )
        return False

    def add(self, flow: Flow) -> None:
        """
        Keep C{flow} (which holds a slot already) under its key.
        """
        self.live[flow.key] = flow
        if self.connections is not None:
            self.connections.add(flow)

    def ended(self, flow: Flow) -> None:
        """
        C{flow} ended: forget it and give its slot back (once).
        """
        if self.live.get(flow.key) is flow:
            del self.live[flow.key]
            self.slots.release("udp")
            if self.connections is not None:
                self.connections.discard(flow)

    def endAll(self) -> list[Deferred[None]]:
        """
        End every flow; each Deferred fires once that flow's socket is closed.
        """
        return [flow.end() for flow in list(self.live.values())]


class Flow:
    """
    One flow of a L{Flows} table.  It ends once: when told, or after
    C{timeout} seconds of C{clock} time without a L{IdleTimer.touch} of
    L{idle}.

    @param onEnd: called when the flow ends, after its slot is released
        (the exit side closes the flow's pool connection there).

    @ivar rx: bytes read from the local, non-tunnel socket for this flow (the
        source's datagrams on the entry side and single-end, the target's on
        the exit side); C{tx} the bytes written to it.
    @ivar target: the target's address, once known (L{Connections} lists it).
    """

    ended = False
    ident = ""
    since = 0.0
    rx = 0
    tx = 0
    target = ""

    def __init__(
        self,
        flows: Flows,
        key: Any,
        clock: IReactorTime,
        timeout: float,
        onEnd: Callable[[], object] | None = None,
    ) -> None:
        self.flows = flows
        self.key = key
        self.clock = clock
        self.queue: list[bytes] = []
        self.idle = IdleTimer(clock, timeout, self.end)
        self._onEnd = onEnd

    def send(self, datagram: bytes) -> None:
        """
        One datagram from the source, towards the far side.
        """
        raise NotImplementedError

    def end(self) -> Deferred[None]:
        if self.ended:
            return succeed(None)
        self.ended = True
        self.idle.cancel()
        self.flows.ended(self)
        if self._onEnd is not None:
            self._onEnd()
        return self.closed()

    def closed(self) -> Deferred[None]:
        """
        Let go of the flow's own resources; fires once they are gone.
        """
        return succeed(None)

    def describe(self) -> dict[str, Any]:
        key = self.key
        if isinstance(key, tuple):
            host, port = key[0], key[1]
            remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            remote = str(key)
        return {
            "id": self.ident,
            "proto": "udp",
            "remote": remote,
            "target": self.target,
            "rx": self.rx,
            "tx": self.tx,
            "since": self.since,
        }

    def shut(self) -> None:
        self.end()


class TargetFlow(Flow, DatagramProtocol):
    """
    A connected UDP socket towards the target for one source (dataplane spec
    §7.3, §7.4).  Datagrams sent before the socket exists wait (at most
    L{QUEUE_LIMIT}); traffic either way keeps the flow alive.

    @param reply: called with the key (the source) and each datagram from
        the target, to take it on to the source; it returns how long the
        rate limit wants reading paused (seconds).
    @param counters: given where the target socket is the counted one (the
        exit side, §6.4): it then counts and rate-limits too (§10.2).
    """

    # Twisted's "Starting protocol" lines would go to the global log, not the instance's.
    noisy = False

    def __init__(
        self,
        flows: Flows,
        key: Any,
        clock: IReactorTime,
        timeout: float,
        reply: Callable[[Any, bytes], float],
        log: Logger,
        *,
        counters: Counters | None = None,
        limiter: RateLimiter | None = None,
        onEnd: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(flows, key, clock, timeout, onEnd)
        self.reply = reply
        self.log = log
        self.counters = counters
        self.limiter = limiter
        self.port: IListeningPort | None = None
        self.throttle = Throttle(clock, self._pauseReading, self._resumeReading)

    def opened(self, port: IListeningPort) -> None:
        """
        The socket is bound and connected: send what waited.
        """
        self.port = port
        queued, self.queue = self.queue, []
        for datagram in queued:
            self.send(datagram)

    def send(self, datagram: bytes) -> None:
        self.idle.touch()
        if self.port is None:
            if len(self.queue) < QUEUE_LIMIT:
                self.queue.append(datagram)
            return
        if self.counters is not None:
            self.counters.udptx += len(datagram)
            self.tx += len(datagram)
            if self.limiter is not None:
                self.limiter.write.take(len(datagram))
        self.transport.write(datagram)  # type: ignore[union-attr,call-arg]

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.idle.touch()
        delay = 0.0
        if self.counters is not None:
            self.counters.udprx += len(data)
            self.rx += len(data)
            if self.limiter is not None:
                delay = self.limiter.read.take(len(data))
        held = self.reply(self.key, data)
        if held > delay:
            delay = held
        if delay > 0 and self.port is not None:
            self.throttle.delay(delay)

    def _pauseReading(self) -> None:
        if self.port is not None:
            self.port.stopReading()  # type: ignore[attr-defined]

    def _resumeReading(self) -> None:
        if not self.ended and self.port is not None:
            self.port.startReading()  # type: ignore[attr-defined]

    def connectionRefused(self) -> None:
        self.log.debug("UDP target refused datagrams from {source}", source=self.key)

    def end(self) -> Deferred[None]:
        if not self.ended:
            self.throttle.cancel()
        return super().end()

    def closed(self) -> Deferred[None]:
        if self.port is not None:
            return self.port.stopListening() or succeed(None)  # type: ignore[return-value]
        return succeed(None)


async def connectTarget(
    reactor: Any, dialer: TargetDialer, flow: TargetFlow, dial: str, packetSize: int
) -> HostPort | None:
    """
    Open C{flow}'s socket: resolve the first target in rotation order, bind
    (on C{dial} when it names an address, else on the target's family),
    connect, and hand over what waited.  Returns that target, or C{None}
    when the flow ended meanwhile.
    """
    index = dialer.targets.order()[0]
    target = dialer.targets.targets[index]
    ip = await dialer.resolve(index) or "127.0.0.1"
    if flow.ended:
        return None
    interface = "::" if ":" in ip else ""
    if dial not in ("auto", ""):
        interface = dial
    port = reactor.listenUDP(0, flow, interface=interface, maxPacketSize=packetSize)
    flow.transport.connect(ip, target.port)  # type: ignore[union-attr]
    flow.target = target.text
    flow.opened(port)
    return target


class TunnelFlow(Flow):
    """
    The entry side of one tunnelled flow: datagrams from one source go over
    one pool connection (dataplane spec §7.2).  Datagrams sent before the
    connection is L{attached} wait (at most L{QUEUE_LIMIT}).  Idle means no
    reply from the tunnel, whatever goes out.

    @param reply: called with the key (the source) and each datagram from
        the tunnel, to take it on to the source.
    """

    def __init__(
        self,
        flows: Flows,
        key: Any,
        clock: IReactorTime,
        timeout: float,
        framed: bool,
        reply: Callable[[Any, bytes], object],
    ) -> None:
        super().__init__(flows, key, clock, timeout)
        self.codec = DatagramCodec(framed)
        self.reply = reply
        self.conn: PoolConnection | None = None

    def send(self, datagram: bytes) -> None:
        if self.conn is None:
            if len(self.queue) < QUEUE_LIMIT:
                self.queue.append(datagram)
            return
        self.conn.write(self.codec.encode(datagram))

    def attached(self, conn: PoolConnection) -> None:
        self.conn = conn
        transport: Any = getattr(conn, "transport", None)
        if transport is not None:
            try:
                peer = transport.getPeer()
                host, port = peer.host, peer.port
            except Exception:
                pass
            else:
                self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        queued, self.queue = self.queue, []
        for datagram in queued:
            self.send(datagram)

    # Consumer of the pool connection: replies from the tunnel.
    def dataReceived(self, data: bytes) -> None:
        self.idle.touch()
        for datagram in self.codec.decode(data):
            self.reply(self.key, datagram)

    def connectionLost(self) -> None:
        self.end()

    def closed(self) -> Deferred[None]:
        if self.conn is not None:
            self.conn.close()
        return succeed(None)


class PoolFeed:
    """
    The exit side's reader of a flow's pool connection: each datagram on it
    goes to the target flow; the connection's end ends the flow (dataplane
    spec §7.3).
    """

    def __init__(self, flow: TargetFlow, codec: DatagramCodec) -> None:
        self.flow = flow
        self.codec = codec

    def dataReceived(self, data: bytes) -> None:
        for datagram in self.codec.decode(data):
            self.flow.send(datagram)

    def connectionLost(self) -> None:
        self.flow.end()


class EntryListener(DatagramProtocol):
    """
    The UDP socket users send to.  It counts what it reads and writes and
    holds reading while the rate limit asks (dataplane spec §6.4, §10.2),
    and hands each datagram to its source's flow in L{flows}.

    Subclasses set L{counters}, L{limiter}, L{flows} and L{screen} (with
    L{loop}, the prefix of its refusal lines), and say whether datagrams are
    taken now (L{accepting}) and how a source's first datagram opens its flow
    (L{newFlow}).
    """

    # Twisted's "Starting protocol" lines would go to the global log, not the instance's.
    noisy = False

    counters: Counters
    limiter: RateLimiter | None = None
    flows: Flows
    screen: Screen | None = None
    loop = "commonUDPLoop"

    def __init__(self, clock: IReactorTime) -> None:
        self.throttle = Throttle(clock, self._pause, self._resume)

    def accepting(self) -> bool:
        raise NotImplementedError

    def newFlow(self, source: Any) -> Flow | None:
        """
        A flow for C{source}'s first datagram; C{None} drops it.
        """
        raise NotImplementedError

    def _pause(self) -> None:
        self.transport.stopReading()  # type: ignore[union-attr]

    def _resume(self) -> None:
        if self.accepting():
            self.transport.startReading()  # type: ignore[union-attr]

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.accepting():
            return
        flow = self.flows.live.get(addr)
        if flow is None:
            # Refused before anything is counted or a flow (and its slot) exists.
            screen = self.screen
            if (
                screen is not None
                and screen.active
                and not screen.allows(addr[0], addr[1], self.loop)
            ):
                return
        size = len(data)
        self.counters.udprx += size
        limiter = self.limiter
        if limiter is not None:
            self.throttle.delay(limiter.read.take(size))
        if flow is None:
            flow = self.newFlow(addr)
            if flow is None:
                return
        flow.rx += size
        flow.send(data)

    def reply(self, source: Any, datagram: bytes) -> float:
        """
        Send C{datagram} back to C{source}; returns the delay the rate limit asks for.
        """
        self.counters.udptx += len(datagram)
        flow = self.flows.live.get(source)
        if flow is not None:
            flow.tx += len(datagram)
        limiter = self.limiter
        self.transport.write(datagram, source)  # type: ignore[union-attr]
        return limiter.write.take(len(datagram)) if limiter is not None else 0.0
