"""Admitting a user connection on an entry listener.

Both the single-end forwarder and the entry side of a tunnel do the same
first steps for an accepted user (dataplane spec §6.1, §10.3, §10.5): take a
slot (or close the connection with one error line), then, when ``block`` is
set, wait for the first 8 bytes and refuse SOCKS, HTTP or TLS as asked; the
bytes read meanwhile are kept and relayed first.  What happens next, dialling
a target or taking a pool connection, is the subclass's L{proceed}.  Each
refusal is counted in the instance's L{Counters} (C{refusedSlot},
C{refusedBlock}).

The C{allow}/C{deny} lists come before all of this, in the listener's
factory (L{screened}): a refused peer never gets a protocol.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from nodepass import sniff
from nodepass.access import Screen
from nodepass.limits import Slots
from nodepass.relay import RelayProtocol
from nodepass.stats import Counters


def hostPort(address: Any) -> str:
    """
    ``host:port`` of a Twisted address, with IPv6 hosts in brackets.
    """
    host = getattr(address, "host", "?")
    port = getattr(address, "port", 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def screened(screen: Screen, addr: Any, loop: str) -> bool:
    """
    C{True} when the peer at C{addr} (a Twisted address) may connect to a
    listener screened by C{screen}; a refusal is counted and logged there.
    """
    if not screen.active:
        return True
    return screen.allows(getattr(addr, "host", ""), getattr(addr, "port", 0), loop)


class AdmittedUser(RelayProtocol):
    """
    Subclasses set L{loop} (the log prefix) and implement L{log}, L{slots},
    L{counters}, L{block} and L{proceed}.
    """

    loop = "commonTCPLoop"
    hasSlot = False
    sniffing = False

    @property
    def log(self) -> Logger:
        """
        The logger of the instance that accepted the connection.
        """
        raise NotImplementedError

    @property
    def slots(self) -> Slots:
        raise NotImplementedError

    @property
    def counters(self) -> Counters:
        """
        The instance's counters, where refusals are counted.
        """
        raise NotImplementedError

    @property
    def block(self) -> str:
        raise NotImplementedError

    def proceed(self) -> None:
        raise NotImplementedError

    @property
    def peerText(self) -> str:
        """
        The user's address as log lines show it (built only when logged).
        """
        return hostPort(self.transport.getPeer())  # type: ignore[union-attr]

    def admit(self) -> bool:
        """
        Take a slot; C{False} (and the connection closing) when none is left.
        """
        slots = self.slots
        if not slots.tryAcquire("tcp"):
            self.counters.refusedSlot += 1
            self.log.error(
                "{loop}: TCP slot limit reached: {used}/{limit}",
                loop=self.loop,
                used=slots.tcp + slots.udp,
                limit=slots.limit,
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
            return False
        self.hasSlot = True
        return True

    def screen(self) -> None:
        """
        Sniff first when C{block} asks for it, else L{proceed} at once.
        """
        if sniff.needsSniff(self.block):
            self.sniffing = True
        else:
            self.proceed()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.sniffing and self.relay is None:
            if sum(map(len, self.pending)) >= sniff.PEEK_SIZE:
                self._sniffed()

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        if self.sniffing and self.relay is None:
            self._sniffed()

    def _sniffed(self) -> None:
        self.sniffing = False
        blocked = sniff.detect(b"".join(self.pending)[: sniff.PEEK_SIZE], self.block)
        if blocked is not None:
            self.counters.refusedBlock += 1
            self.log.warn(
                "{loop}: blocked {proto} protocol from {peer}",
                loop=self.loop,
                proto=blocked,
                peer=self.peerText,
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.proceed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        if self.relay is None and self.hasSlot:
            self.slots.release("tcp")
            self.hasSlot = False
