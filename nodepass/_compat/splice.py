"""Zero-copy relaying between two plain Twisted TCP connections with C{splice(2)}.

While two connections are spliced, their bytes go socket -> pipe -> socket inside the
kernel, one pipe per direction, and never become Python C{bytes}.  It all runs in the
reactor: each socket gets a descriptor of ours (L{_End}) registered with the reactor for its
file descriptor, which reads when the socket is readable and the pipe has room, and writes
when the pipe holds bytes and the socket takes them.  The pipe is the only buffer, so a slow
reader fills it and the splicer stops reading the other socket: backpressure as with
Twisted's producers.

Private internals used, and why:

* the epoll (and poll and select) reactors keep one selectable per file descriptor, so the
  Twisted transport must stop reading and writing before our descriptor is registered for
  the same descriptor, and must not start again behind our back.  While spliced, the
  transport's producer and closing methods (C{pauseProducing}, C{loseConnection},
  C{loseWriteConnection}, C{abortConnection}, ...) are shadowed by instance attributes that
  act on the splice instead (so L{nodepass.relay.Relay}, its gates and anything else that
  pauses or closes the transport keep working), its C{start/stopReading} pause and resume
  the splice, and its C{doRead}, C{doWrite} and C{start/stopWriting} do nothing (see
  L{SHADOWS}); all are removed when the connection is handed back;
* the bytes Twisted has queued but not sent (C{dataBuffer[offset:]} and
  C{_tempDataBuffer}) are taken over and sent first, in order;
* the socket (C{transport.socket}) for C{shutdown(SHUT_WR)}, and C{transport.reactor}
  (an L{IReactorFDSet}) to register our descriptors.

When a connection is done, it is handed back to Twisted (our descriptor unregistered first)
and closed by Twisted's own C{loseConnection}, C{abortConnection} or C{connectionLost}, so
the protocol's C{connectionLost} runs as usual; end of input reaches the protocol's
C{readConnectionLost}, as Twisted would deliver it.

Checked: C{os.splice} exists (Python 3.10+ on Linux), the Twisted release is a tested one,
and every transport has the fields above; otherwise the plain relay is used, logged once.
Switch: C{NP_SPLICE=0} (read by the entry point through L{configure}) turns it off.
Pinned by C{tests/test_splice.py} (Twisted) and C{tests/integration/test_splice.py} (the
kernel: EAGAIN when empty, 0 at end of input, ECONNRESET after a reset).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.copyright import version as twistedVersion
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorFDSet,
    IReadWriteDescriptor,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.log import defaultLogger

#: The environment variable of the switch.
SWITCH = "NP_SPLICE"

#: Twisted major versions whose TCP transport and reactors were read and tested.
TESTED_TWISTED = range(22, 27)

#: The transport fields the splicer reads or resets (besides the methods it shadows).
PRIVATE_FIELDS = (
    "socket",
    "reactor",
    "dataBuffer",
    "offset",
    "_tempDataBuffer",
    "_tempDataLen",
    "connected",
    "disconnecting",
    "disconnected",
    "_writeDisconnecting",
    "_writeDisconnected",
    "producer",
)

#: The transport methods shadowed while spliced, and the method of L{_End} that stands in
#: for each.  Reading and writing are inert: an event the reactor had already taken for
#: the transport (the switch can happen inside one of its callbacks) then does nothing.
SHADOWS = {
    "pauseProducing": "pauseProducing",
    "resumeProducing": "resumeProducing",
    "stopProducing": "stopProducing",
    "loseConnection": "loseConnection",
    "loseWriteConnection": "loseWriteConnection",
    "abortConnection": "abortConnection",
    "stopReading": "pauseProducing",
    "startReading": "resumeProducing",
    "stopWriting": "inert",
    "startWriting": "inert",
    "doRead": "inert",
    "doWrite": "inert",
}

#: The transport methods shadowed while spliced.
SHADOWED = tuple(SHADOWS)

#: Capacity asked for a pipe (the kernel's default is 64 KiB).  On loopback, 1 MiB pipes cut
#: the forwarder's CPU time per byte by about a third against 64 KiB ones (bench/forward.py,
#: one stream); 256 KiB sat in between.
PIPE_SIZE = 1 << 20

#: How many pipes of the process get L{PIPE_SIZE} at once; the others keep the default.
#: Pipe buffers count against a per-user budget (C{/proc/sys/fs/pipe-user-pages-soft},
#: 64 MiB by default) and past it every new pipe of that user, in any program, is made
#: tiny, so only the first few relays get large pipes (16 MiB of budget).
LARGE_PIPES = 16

#: The most one splice call moves from a socket into a pipe.
CHUNK = 1 << 20

#: The switch: C{False} keeps every relay on the plain path.
enabled = True

_warned = False

#: Write ends of the pipes enlarged to L{PIPE_SIZE} and not closed yet.
_large: set[int] = set()

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ on Linux (named in Python 3.10+)


def configure(environ: Mapping[str, str]) -> None:
    """
    Set the switch from the process environment (C{NP_SPLICE=0} turns it off).
    """
    global enabled
    enabled = environ.get(SWITCH, "").strip() != "0"


def unsupported() -> str | None:
    """
    Why this process cannot splice at all, or C{None}.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "splice"):
        return "os.splice is not available"
    if not hasattr(os, "pipe2"):
        return "os.pipe2 is not available"
    major = int(twistedVersion.split(".")[0])
    if major not in TESTED_TWISTED:
        return f"Twisted {twistedVersion} is not a tested release"
    return None


def _fallBack(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        defaultLogger().info("Zero-copy relaying off: {reason}", reason=reason)


def spliceable(transport: Any) -> bool:
    """
    Whether C{transport} is a plain, open Twisted TCP connection that can be spliced now.
    """
    if not enabled or not isinstance(transport, tcp.Connection):
        return False
    if getattr(transport, "TLS", True):
        return False
    reason = unsupported()
    if reason is None:
        missing = [name for name in PRIVATE_FIELDS if not hasattr(transport, name)]
        if missing:
            reason = f"Twisted's TCP transport has no {', '.join(missing)}"
    if reason is not None:
        _fallBack(reason)
        return False
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport.disconnected
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and transport.producer is None
        and IReactorFDSet.providedBy(transport.reactor)
    )


class System:
    """
    The kernel calls the splicer makes (unit tests replace it with a fake).
    """

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if len(_large) < LARGE_PIPES:
            try:
                import fcntl

                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # over the per-user pipe budget: the default size still works
            else:
                _large.add(w)
        return r, w

    def splice(self, src: int, dst: int, count: int) -> int:
        return os.splice(src, dst, count, flags=_FLAGS)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def close(self, fd: int) -> None:
        _large.discard(fd)
        os.close(fd)

    def shutdownWrite(self, transport: Any) -> None:
        transport.socket.shutdown(socket.SHUT_WR)


class _Direction:
    """
    Bytes from C{src} to C{dst}: first C{prefix} (what was queued before the switch), then
    the pipe, which holds C{held} bytes.
    """

    __slots__ = ("dst", "full", "held", "prefix", "r", "src", "w")

    def __init__(self, src: _End, dst: _End, fds: tuple[int, int], prefix: bytes) -> None:
        self.src = src
        self.dst = dst
        self.r, self.w = fds
        self.prefix = prefix
        self.held = 0
        #: The last read found no room (or nothing): wait for the pipe to drain.
        self.full = False

    @property
    def open(self) -> bool:
        return self.r >= 0

    @property
    def pending(self) -> bool:
        return bool(self.prefix) or self.held > 0

    @property
    def accepting(self) -> bool:
        dst = self.dst
        return self.open and not (dst.released or dst.closing or dst.shutWrite)


@implementer(IReadWriteDescriptor)
class _End:
    """
    One spliced socket: the reactor's descriptor for its file descriptor, and the state of
    its transport while the splice owns it.
    """

    __slots__ = (
        "closing",
        "fd",
        "inbound",
        "index",
        "outbound",
        "paused",
        "peer",
        "reactor",
        "readDone",
        "reading",
        "released",
        "shutWrite",
        "splice",
        "transport",
        "writeShut",
        "writing",
    )

    def __init__(self, splice: Splice, transport: Any, index: int) -> None:
        self.splice = splice
        self.transport = transport
        self.index = index
        self.fd: int = transport.fileno()
        self.reactor: Any = transport.reactor
        self.peer: _End = self
        self.inbound: _Direction
        self.outbound: _Direction
        self.paused = False
        self.readDone = False
        self.closing = False
        self.shutWrite = False
        self.writeShut = False
        self.released = False
        self.reading = False
        self.writing = False

    # IReadDescriptor / IWriteDescriptor, for the reactor.
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return str(self.transport.logPrefix())

    def doRead(self) -> None:
        self.splice._read(self)

    def doWrite(self) -> None:
        self.splice._flush(self.inbound)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hang-up (or is shutting down) and dropped us
        # (removing us again in the hand-back is harmless).
        self.splice._handBack(self, "lost", reason)

    # What the transport's shadowed methods do while spliced.
    def pauseProducing(self) -> None:
        self.paused = True
        self.splice._update(self)

    def resumeProducing(self) -> None:
        self.paused = False
        self.splice._update(self)

    def loseConnection(self) -> None:
        if self.closing or self.released:
            return
        self.closing = True
        self.splice._update(self)
        self.splice._update(self.peer)
        self.splice._flush(self.inbound)

    def stopProducing(self) -> None:
        self.loseConnection()

    def loseWriteConnection(self) -> None:
        if self.shutWrite or self.released:
            return
        self.shutWrite = True
        self.splice._update(self.peer)
        self.splice._flush(self.inbound)

    def abortConnection(self) -> None:
        self.splice._handBack(self, "abort")

    def inert(self) -> None:
        pass


def _takeQueued(transport: Any) -> bytes:
    """
    What Twisted has queued for C{transport} but not sent; its buffer is left empty.
    """
    queued = bytes(transport.dataBuffer[transport.offset :]) + b"".join(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    return queued


class Splice:
    """
    Two spliced TCP connections (see L{attach}).

    @ivar ends: the two L{_End}s, in the order given to L{attach}.
    """

    def __init__(
        self,
        system: System,
        onRead: Callable[[int, int], None],
        chunk: int,
    ) -> None:
        self.system = system
        self.onRead = onRead
        self.chunk = chunk
        self.ends: tuple[_End, _End]

    # -- registration ----------------------------------------------------------

    def _wantRead(self, end: _End) -> bool:
        out = end.outbound
        return not (end.released or end.readDone or end.closing or end.paused or out.full) and (
            out.accepting
        )

    def _update(self, end: _End) -> None:
        if end.released:
            return
        want = self._wantRead(end)
        if want != end.reading:
            end.reading = want
            if want:
                end.reactor.addReader(end)
            else:
                end.reactor.removeReader(end)

    def _watchWrite(self, end: _End, want: bool) -> None:
        if end.released or want == end.writing:
            return
        end.writing = want
        if want:
            end.reactor.addWriter(end)
        else:
            end.reactor.removeWriter(end)

    # -- moving bytes ----------------------------------------------------------

    def _read(self, end: _End) -> None:
        if not end.reading or not self._wantRead(end):
            return
        out = end.outbound
        try:
            count = self.system.splice(end.fd, out.w, self.chunk)
        except BlockingIOError:
            if out.held:
                out.full = True
                self._update(end)
            return
        except OSError as reason:
            self._handBack(end, "lost", Failure(ConnectionLost(str(reason))))
            return
        if count == 0:
            end.readDone = True
            self._update(end)
            self._flush(out)
            self._endOfInput(end)
            return
        out.held += count
        self._flush(out)
        self.onRead(end.index, count)

    def _flush(self, direction: _Direction) -> None:
        """
        Write what C{direction} holds into its destination, as far as it takes it.
        """
        dst = direction.dst
        if dst.released:
            return
        system = self.system
        while direction.prefix:
            try:
                sent = system.write(dst.fd, direction.prefix)
            except BlockingIOError:
                self._watchWrite(dst, True)
                return
            except OSError as reason:
                self._handBack(dst, "lost", Failure(ConnectionLost(str(reason))))
                return
            direction.prefix = direction.prefix[sent:]
        while direction.held:
            try:
                sent = system.splice(direction.r, dst.fd, direction.held)
            except BlockingIOError:
                self._watchWrite(dst, True)
                return
            except OSError as reason:
                self._handBack(dst, "lost", Failure(ConnectionLost(str(reason))))
                return
            if sent == 0:
                self._watchWrite(dst, True)
                return
            direction.held -= sent
            if direction.full:
                direction.full = False
                self._update(direction.src)
        self._watchWrite(dst, False)
        self._drained(direction)

    def _drained(self, direction: _Direction) -> None:
        """
        C{direction} holds nothing: close its pipe when no more can come, and finish what
        its destination was asked to do once flushed.
        """
        src, dst = direction.src, direction.dst
        if src.readDone or src.released or not direction.accepting:
            self._closePipe(direction)
        if dst.shutWrite and not dst.writeShut and not dst.released:
            dst.writeShut = True
            try:
                self.system.shutdownWrite(dst.transport)
            except OSError:
                pass  # already gone: the read side reports it
            # As after Twisted's own half-close: closing it later needs no more writing.
            dst.transport._writeDisconnected = True
        if dst.closing and not dst.released:
            self._handBack(dst, "lose")

    def _endOfInput(self, end: _End) -> None:
        protocol = getattr(end.transport, "protocol", None)
        halfCloseable = IHalfCloseableProtocol(protocol, None)
        if halfCloseable is None:
            self._handBack(end, "lost", Failure(ConnectionDone()))
        else:
            halfCloseable.readConnectionLost()

    # -- ending ------------------------------------------------------------------

    def _closePipe(self, direction: _Direction) -> None:
        if not direction.open:
            return
        r, w = direction.r, direction.w
        direction.r = direction.w = -1
        direction.held = 0
        direction.prefix = b""
        for fd in (r, w):
            try:
                self.system.close(fd)
            except OSError:
                pass

    def _handBack(self, end: _End, how: str, reason: Failure | None = None) -> None:
        """
        Give C{end}'s connection back to Twisted and close it C{how}: C{"lose"} (orderly),
        C{"abort"} (reset) or C{"lost"} (already broken, with C{reason}).
        """
        if end.released:
            return
        if end.reading:
            end.reactor.removeReader(end)
        if end.writing:
            end.reactor.removeWriter(end)
        end.reading = end.writing = False
        end.released = True
        transport = end.transport
        for name in SHADOWED:
            transport.__dict__.pop(name, None)
        # Nothing more can be written to this end; what it sent still goes to the peer.
        self._closePipe(end.inbound)
        peer = end.peer
        if not end.outbound.pending or peer.released:
            self._closePipe(end.outbound)
        if peer.released:
            self._closePipe(peer.outbound)
        else:
            self._update(peer)
        if how == "lose":
            transport.loseConnection()
        elif how == "abort":
            transport.abortConnection()
        else:
            transport.connectionLost(reason)
        if not peer.released and end.outbound.open:
            self._flush(end.outbound)

    @property
    def done(self) -> bool:
        """
        Both connections are handed back and both pipes closed.
        """
        a, b = self.ends
        return a.released and b.released and not a.outbound.open and not b.outbound.open


def attach(
    a: Any,
    b: Any,
    onRead: Callable[[int, int], None],
    extra: tuple[bytes, bytes] = (b"", b""),
    paused: tuple[bool, bool] = (False, False),
    readDone: tuple[bool, bool] = (False, False),
    chunk: int = CHUNK,
    system: System | None = None,
) -> Splice | None:
    """
    Splice transports C{a} and C{b} (both L{spliceable}) together; C{None} when the pipes
    cannot be made (the transports are then untouched).

    @param onRead: called with the index of the end (0 for C{a}) and the byte count of
        every read.
    @param extra: bytes to send to C{a} and to C{b} first (after what Twisted had queued
        for each).
    @param paused: whether each end starts paused (as if C{pauseProducing} was called).
    @param readDone: whether each end already delivered its end of input.
    """
    system = system if system is not None else System()
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(2):
            pipes.append(system.pipe())
    except OSError as reason:
        for r, w in pipes:
            system.close(r)
            system.close(w)
        _fallBack(f"no pipe: {reason}")
        return None
    splice = Splice(system, onRead, chunk)
    endA, endB = _End(splice, a, 0), _End(splice, b, 1)
    splice.ends = (endA, endB)
    endA.peer, endB.peer = endB, endA
    toA, toB = _takeQueued(a) + extra[0], _takeQueued(b) + extra[1]
    endA.outbound = endB.inbound = _Direction(endA, endB, pipes[0], toB)
    endB.outbound = endA.inbound = _Direction(endB, endA, pipes[1], toA)
    for end, isPaused, isDone in ((endA, paused[0], readDone[0]), (endB, paused[1], readDone[1])):
        transport = end.transport
        transport.stopReading()
        transport.stopWriting()
        standIns = {standIn: getattr(end, standIn) for standIn in set(SHADOWS.values())}
        for name, standIn in SHADOWS.items():
            transport.__dict__[name] = standIns[standIn]
        end.paused = isPaused
        end.readDone = isDone
    for end in (endA, endB):
        splice._flush(end.inbound)
    for end in (endA, endB):
        splice._update(end)
    return splice


__all__ = ["Splice", "System", "attach", "configure", "spliceable", "unsupported"]
