"""The built-in HTTP/2 pool transport (``type=3``, dataplane spec §9.3, §15.7).

Every pool connection is one HTTP/2 request stream: ``POST /stream``, the
request body carrying the client's bytes and the response body the server's.
The client opens the stream with one DATA byte ``00`` (so the server learns
of it), the server answers ``:status 200`` and the pool protocol's 4 ID bytes
are the first response body bytes.  All pool connections of a client share
one TLS connection (ALPN ``h2``) per tunnel address; each stream is its own
byte stream with its own flow control.

Closing: the client ends the request body and cancels the response
(END_STREAM then RST_STREAM CANCEL), as the Go client does; the server ends
the response body (END_STREAM; Go's server sends nothing, which a
reimplementation must tolerate, spec §9.3).  There is no half-close.

HTTP/2 always runs over TLS here (C{minimumTLS == 1}); a connection whose TLS
handshake does not select ``h2`` is dropped.  Given no TLS creator (only
tests do that) the transport speaks cleartext HTTP/2 with prior knowledge.

The framing is C{h2}'s.  This module stays import-light (it is loaded by the
plugin scan): C{h2} is only imported when a connection is actually made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from nodepass.errors import NodePassError
from nodepass.log import defaultLogger
from nodepass.transports.interface import (
    IALPNTransport,
    ILoggingTransport,
    IPoolTLSTransport,
    PoolAddress,
    creatorOf,
)
from nodepass.transports.substream import Substream

if TYPE_CHECKING:
    from h2.connection import H2Connection

__all__ = ["HTTP2Error", "HTTP2Transport", "StreamTransport", "h2transport"]

#: The request path of a pool stream.
STREAM_PATH = b"/stream"

#: What the Go client sends as C{user-agent} (net/http's default); the
#: transport sends the same request head as the reference client (§15.7).
USER_AGENT = b"Go-http-client/2.0"

#: The answer to anything but C{POST /stream}, or when the pool is full
#: (Go's C{http.Error(w, "not found", 404)}).
NOT_FOUND = b"not found\n"

#: SETTINGS_MAX_CONCURRENT_STREAMS announced by both ends.
MAX_STREAMS = 1024

#: SETTINGS_INITIAL_WINDOW_SIZE announced by both ends: how much one stream
#: may send before its reader acknowledges it.
STREAM_WINDOW = 1 << 20

#: The receive window of the whole connection: as large as every stream's
#: together (as Go's 1 GiB), so that streams whose readers are paused (their
#: data held unacknowledged) never stall the others.
CONNECTION_WINDOW = 1 << 30

#: The window every HTTP/2 connection starts with (RFC 9113 §6.9.2).
DEFAULT_WINDOW = 65535

#: How long a server keeps a connection without streams (Go: twice the report interval).
IDLE_TIMEOUT = 10.0

#: How often a client checks its connection with a PING (Go: every report
#: interval); a connection that received nothing during a whole interval
#: after a PING is dropped (its streams end, new dials open a new one).
PING_INTERVAL = 5.0

#: How long a closing connection waits for the TLS close before dropping.
CLOSE_TIMEOUT = 5.0

#: HTTP/2 error codes used here.
NO_ERROR = 0
CANCEL = 8


class HTTP2Error(NodePassError):
    """
    An HTTP/2 pool stream could not be opened, or the connection broke the
    protocol.
    """


def requestHeaders(authority: str) -> list[tuple[bytes, bytes]]:
    """
    The request head of a pool stream, in the Go client's order (§15.7).
    """
    return [
        (b":authority", authority.encode("utf-8")),
        (b":method", b"POST"),
        (b":path", STREAM_PATH),
        (b":scheme", b"https"),
        (b"accept-encoding", b"gzip"),
        (b"user-agent", USER_AGENT),
    ]


class StreamTransport(Substream):
    """
    The transport a pool protocol sees on an HTTP/2 connection: one stream.
    Writes become DATA frames as the peer's windows allow; the rest waits in
    C{outgoing}, which is what the watermarks of L{Substream} count.
    Received DATA is acknowledged once delivered, so pausing this transport
    closes the stream's window and the peer stops sending.

    @ivar connection: the HTTP/2 connection carrying the stream.
    @ivar streamID: the stream's ID.
    """

    def __init__(self, connection: _Connection, streamID: int, protocol: IProtocol) -> None:
        super().__init__(protocol)
        self.connection = connection
        self.streamID = streamID
        self.outgoing = bytearray()
        self.readPaused = False
        self._held: list[tuple[bytes, int]] = []
        self._endAfterHeld = False

    # -- Substream ----------------------------------------------------------

    @property
    def log(self) -> Logger:
        return self.connection.log

    @property
    def clock(self) -> Any:
        return self.connection.reactor

    def describe(self) -> str:
        return f"HTTP/2 stream {self.streamID}"

    def carrier(self) -> Any:
        return self.connection.transport

    def pending(self) -> int:
        return len(self.outgoing)

    def send(self, data: bytes) -> None:
        self.outgoing += data
        self.connection.sendPending(self)

    def endOutput(self) -> None:
        """
        End the stream once what was written has been sent.
        """
        self.connection.sendPending(self)

    def reset(self) -> None:
        """
        Reset the stream at once (RST_STREAM CANCEL), dropping unsent data.
        """
        self.outgoing.clear()
        self.connection.resetStream(self.streamID, CANCEL)
        self.finish(Failure(ConnectionAborted("HTTP/2 stream reset")))

    def release(self) -> None:
        held, self._held = self._held, []
        for _, length in held:
            self.connection.acknowledge(self.streamID, length)
        self.outgoing.clear()
        self.connection.forget(self)

    # -- IPushProducer: hold received data, unacknowledged ------------------

    def pauseProducing(self) -> None:
        self.readPaused = True

    def resumeProducing(self) -> None:
        self.readPaused = False
        while self._held and not self.readPaused and not self.closed:
            data, length = self._held.pop(0)
            self._deliver(data, length)
        if not self._held and self._endAfterHeld and not self.closed:
            self._endAfterHeld = False
            self.connection.remoteEnded(self)

    # -- events from the connection -----------------------------------------

    def received(self, data: bytes, length: int) -> None:
        """
        DATA arrived (C{length} is what it counted against the windows).
        """
        if self.closed:
            self.connection.acknowledge(self.streamID, length)
        elif self.readPaused or self._held:
            self._held.append((data, length))
        else:
            self._deliver(data, length)

    def _deliver(self, data: bytes, length: int) -> None:
        self.connection.acknowledge(self.streamID, length)
        self.deliver(data)

    def ended(self) -> None:
        """
        The peer ended its direction (END_STREAM): once the held data is
        delivered, the stream is over.
        """
        if self._held:
            self._endAfterHeld = True
        else:
            self.connection.remoteEnded(self)


@cache
def _handlers() -> dict[type[Any], str]:
    """
    C{h2} event classes and the L{_Connection} methods handling them, made on
    first use so that importing this module does not import C{h2}.
    """
    from h2 import events

    return {
        events.RequestReceived: "requestReceived",
        events.ResponseReceived: "responseReceived",
        events.DataReceived: "dataFrame",
        events.StreamEnded: "streamEnded",
        events.StreamReset: "streamReset",
        events.WindowUpdated: "windowUpdated",
        events.RemoteSettingsChanged: "settingsChanged",
        events.ConnectionTerminated: "terminated",
        events.PingAckReceived: "pingAcknowledged",
    }


def _newH2(clientSide: bool) -> H2Connection:
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.settings import SettingCodes, Settings

    h2 = H2Connection(H2Configuration(client_side=clientSide, header_encoding=None))
    values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
    }
    if clientSide:
        values[SettingCodes.ENABLE_PUSH] = 0
    h2.local_settings = Settings(client=clientSide, initial_values=values)
    return h2


@implementer(IHandshakeListener, IPushProducer)
class _Connection(Protocol):
    """
    One HTTP/2 connection (over TLS, or cleartext without a TLS creator)
    carrying any number of pool streams.  Registered as the streaming
    producer of its TCP (or TLS) transport: while that transport's write
    buffer is full, streams keep their data and pause their own producers.
    """

    clientSide = False

    def __init__(self, reactor: Any, owner: HTTP2Transport, tls: bool) -> None:
        self.reactor = reactor
        self.owner = owner
        self.log = owner.log
        self.tls = tls
        self.h2 = _newH2(self.clientSide)
        self.streams: dict[int, StreamTransport] = {}
        self._blocked: dict[int, StreamTransport] = {}
        self.ready = False
        self.gone = False
        self.goingAway = False
        self.closing = False
        self.writePaused = False
        self.heard = False
        self._closeTimer: IDelayedCall | None = None

    # -- the TCP (TLS) connection ---------------------------------------------

    def connectionMade(self) -> None:
        self.owner.live.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.flush()
        if not self.tls:
            self.becameReady()

    def handshakeCompleted(self) -> None:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated != b"h2":
            self.log.debug(
                "HTTP/2 pool connection with {peer} negotiated ALPN {alpn!r}, not h2: dropped",
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
                alpn=negotiated,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.becameReady()

    def becameReady(self) -> None:
        self.ready = True

    def dataReceived(self, data: bytes) -> None:
        if self.gone:
            return
        self.heard = True
        from h2.exceptions import ProtocolError

        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self.log.debug(
                "HTTP/2 protocol error from {peer}: {error}",
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
                error=e,
            )
            self.flush()
            self.close()
            return
        handlers = _handlers()
        for event in events:
            name = handlers.get(type(event))
            if name is not None:
                getattr(self, name)(event)
        self.flush()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.gone = True
        if self._closeTimer is not None:
            if self._closeTimer.active():
                self._closeTimer.cancel()
            self._closeTimer = None
        self._blocked.clear()
        for stream in list(self.streams.values()):
            stream.finish(reason)
        self.owner.gone(self)

    def flush(self) -> None:
        """
        Write what C{h2} has queued.
        """
        data = self.h2.data_to_send()
        if data and not self.gone and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """
        End the whole connection: GOAWAY, then the TLS close (bounded by
        L{CLOSE_TIMEOUT}).
        """
        if self.closing or self.gone or self.transport is None:
            return
        self.closing = True
        self._safely(self.h2.close_connection)
        self.flush()
        transport: Any = self.transport
        if not self.ready:
            transport.abortConnection()
            return
        transport.unregisterProducer()
        transport.loseConnection()
        self._closeTimer = self.reactor.callLater(CLOSE_TIMEOUT, self._closeExpired)

    def _closeExpired(self) -> None:
        self._closeTimer = None
        if not self.gone and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- IPushProducer: the TCP (TLS) write buffer --------------------------

    def pauseProducing(self) -> None:
        self.writePaused = True

    def resumeProducing(self) -> None:
        self.writePaused = False
        self.sendAll()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    # -- sending ------------------------------------------------------------

    def _safely(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """
        Call an C{h2} method that fails when the stream (or connection) is
        already closed; C{False} when it did.
        """
        from h2.exceptions import ProtocolError

        try:
            call(*args, **kwargs)
        except ProtocolError:
            return False
        return True

    def sendPending(self, stream: StreamTransport) -> None:
        """
        Send as much of C{stream.outgoing} as the windows allow, and end the
        stream once it is empty and closing.
        """
        if self.gone:
            return
        sid = stream.streamID
        out = stream.outgoing
        if out and not self.writePaused:
            from h2.exceptions import ProtocolError

            sent = 0
            view = memoryview(out)
            try:
                while sent < len(out):
                    n = min(
                        len(out) - sent,
                        self.h2.local_flow_control_window(sid),
                        self.h2.max_outbound_frame_size,
                    )
                    if n <= 0:
                        break
                    self.h2.send_data(sid, bytes(view[sent : sent + n]))
                    sent += n
            except ProtocolError:
                sent = len(out)
            finally:
                view.release()
            del out[:sent]
        if out:
            self._blocked[sid] = stream
        else:
            self._blocked.pop(sid, None)
            if stream.disconnecting and not stream.closed:
                self.endStream(stream)
                return
        self.flush()
        if not stream.closed:
            stream.drained()

    def sendAll(self) -> None:
        for stream in list(self._blocked.values()):
            if self.writePaused or self.gone:
                return
            self.sendPending(stream)

    def endStream(self, stream: StreamTransport) -> None:
        """
        Our side closes C{stream} (everything written has been sent).
        """
        sid = stream.streamID
        self._safely(self.h2.end_stream, sid)
        if self.clientSide:
            # The Go client closes a pool stream by closing the request body
            # and cancelling the response.
            self._safely(self.h2.reset_stream, sid, CANCEL)
        self.flush()
        stream.finish(Failure(ConnectionDone("HTTP/2 stream closed")))

    def resetStream(self, sid: int, code: int) -> None:
        if self.gone:
            return
        self._safely(self.h2.reset_stream, sid, code)
        self.flush()

    def acknowledge(self, sid: int, length: int) -> None:
        """
        Reopen the windows for C{length} bytes delivered (or discarded).
        """
        if length and not self.gone:
            self._safely(self.h2.acknowledge_received_data, length, sid)
            self.flush()

    def forget(self, stream: StreamTransport) -> None:
        self.streams.pop(stream.streamID, None)
        self._blocked.pop(stream.streamID, None)
        self.streamGone()

    def streamGone(self) -> None:
        """
        A stream (or a stream being set up) is gone.
        """

    def remoteEnded(self, stream: StreamTransport) -> None:
        """
        The peer ended C{stream}: without half-close, the stream is over.
        """
        stream.outgoing.clear()
        stream.disconnecting = True
        self.endStream(stream)

    # -- h2 events ----------------------------------------------------------

    def requestReceived(self, event: Any) -> None:
        self.resetStream(event.stream_id, CANCEL)

    def responseReceived(self, event: Any) -> None:
        self.resetStream(event.stream_id, CANCEL)

    def dataFrame(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.orphanData(event)
        else:
            stream.received(event.data, event.flow_controlled_length)

    def orphanData(self, event: Any) -> None:
        """
        DATA for a stream carrying no pool protocol.
        """
        self.acknowledge(event.stream_id, event.flow_controlled_length)

    def streamEnded(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.orphanGone(event.stream_id, "ended")
        else:
            stream.ended()

    def streamReset(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.orphanGone(event.stream_id, f"reset (error code {int(event.error_code)})")
            return
        stream.outgoing.clear()
        if event.error_code in (NO_ERROR, CANCEL):
            reason = Failure(ConnectionDone("HTTP/2 stream closed by the peer"))
        else:
            reason = Failure(
                ConnectionLost(f"HTTP/2 stream reset by the peer: error code {event.error_code}")
            )
        stream.finish(reason)

    def orphanGone(self, sid: int, how: str) -> None:
        """
        A stream carrying no pool protocol ended or was reset.
        """

    def windowUpdated(self, event: Any) -> None:
        if event.stream_id == 0:
            self.sendAll()
            return
        stream = self._blocked.get(event.stream_id)
        if stream is not None:
            self.sendPending(stream)

    def settingsChanged(self, event: Any) -> None:
        from h2.settings import SettingCodes

        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self.sendAll()

    def pingAcknowledged(self, event: Any) -> None:
        pass

    def terminated(self, event: Any) -> None:
        """
        GOAWAY: no new streams; those the peer did not take are gone.
        """
        self.goingAway = True
        self.owner.gone(self, still=True)
        last = event.last_stream_id or 0
        for sid, stream in list(self.streams.items()):
            if sid > last:
                stream.finish(Failure(ConnectionLost("HTTP/2 connection going away")))
        self.streamGone()
        if event.error_code:
            self.close()


class _ServerConnection(_Connection):
    """
    The server end: each C{POST /stream} becomes a pool connection once its
    first DATA byte arrives.
    """

    clientSide = False

    def __init__(
        self, reactor: Any, owner: HTTP2Transport, tls: bool, poolFactory: IProtocolFactory
    ) -> None:
        super().__init__(reactor, owner, tls)
        self.poolFactory = poolFactory
        self.waiting: set[int] = set()
        self._idleTimer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.streamGone()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._stopIdle()
        super().connectionLost(reason)

    def requestReceived(self, event: Any) -> None:
        self._stopIdle()
        sid = event.stream_id
        headers = dict(event.headers)
        if (
            headers.get(b":method") != b"POST"
            or headers.get(b":path") != STREAM_PATH
            or event.stream_ended is not None
        ):
            self.notFound(sid)
            return
        self.waiting.add(sid)

    def orphanData(self, event: Any) -> None:
        sid = event.stream_id
        self.acknowledge(sid, event.flow_controlled_length)
        if sid in self.waiting and event.data:
            self.waiting.discard(sid)
            # The first byte only announces the stream (its value is ignored).
            self.startPool(sid, event.data[1:])

    def startPool(self, sid: int, rest: bytes) -> None:
        try:
            protocol = self.poolFactory.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        except Exception:
            self.log.failure("Pool factory failed on a new HTTP/2 stream")
            protocol = None
        if protocol is None:
            self.notFound(sid)
            return
        if not self._safely(self.h2.send_headers, sid, [(b":status", b"200")]):
            self.streamGone()
            return
        stream = StreamTransport(self, sid, protocol)
        self.streams[sid] = stream
        self.flush()
        try:
            protocol.makeConnection(stream)
        except Exception:
            self.log.failure("Pool protocol failed on a new HTTP/2 stream")
            stream.abortConnection()
            return
        if rest:
            stream.received(rest, 0)

    def notFound(self, sid: int) -> None:
        self.waiting.discard(sid)
        head = [
            (b":status", b"404"),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-length", str(len(NOT_FOUND)).encode("ascii")),
        ]
        if self._safely(self.h2.send_headers, sid, head):
            self._safely(self.h2.send_data, sid, NOT_FOUND, end_stream=True)
        self.flush()
        self.streamGone()

    def orphanGone(self, sid: int, how: str) -> None:
        self.waiting.discard(sid)
        self.streamGone()

    def streamGone(self) -> None:
        if self.gone or self.streams or self.waiting or self._idleTimer is not None:
            return
        self._idleTimer = self.reactor.callLater(IDLE_TIMEOUT, self._idleExpired)

    def _idleExpired(self) -> None:
        self._idleTimer = None
        self.log.debug("HTTP/2 pool connection idle: closing it")
        self.close()

    def _stopIdle(self) -> None:
        if self._idleTimer is not None:
            if self._idleTimer.active():
                self._idleTimer.cancel()
            self._idleTimer = None


class _ClientConnection(_Connection):
    """
    The client end, shared by the pool connections to one tunnel address:
    each dial opens a stream on it.  It closes itself when its last stream
    is gone.
    """

    clientSide = True

    def __init__(
        self, reactor: Any, owner: HTTP2Transport, tls: bool, key: Any, authority: str
    ) -> None:
        super().__init__(reactor, owner, tls)
        self.key = key
        self.authority = authority
        self.waiting: list[_Dial] = []
        self.opening: dict[int, _Dial] = {}
        self.connecting: Deferred[Any] | None = None
        self._pingTimer: IDelayedCall | None = None
        self._pinged = False

    def start(self, endpoint: Any, factory: IProtocolFactory) -> None:
        connecting = self.connecting = endpoint.connect(factory)
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, result: Any) -> None:
        self.connecting = None

    def _connectFailed(self, failure: Failure) -> None:
        self.connecting = None
        self.gone = True
        self.owner.gone(self)
        waiting, self.waiting = self.waiting, []
        for dial in waiting:
            dial.fail(failure)

    def usable(self) -> bool:
        if self.gone or self.goingAway or self.closing:
            return False
        busy = len(self.streams) + len(self.opening) + len(self.waiting)
        return busy < min(MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams)

    def add(self, dial: _Dial) -> None:
        if self.ready:
            self.openStream(dial)
        else:
            self.waiting.append(dial)

    def becameReady(self) -> None:
        super().becameReady()
        self._pingTimer = self.reactor.callLater(PING_INTERVAL, self._ping)
        waiting, self.waiting = self.waiting, []
        for dial in waiting:
            self.openStream(dial)
        self.streamGone()

    def openStream(self, dial: _Dial) -> None:
        from h2.exceptions import ProtocolError

        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, requestHeaders(self.authority))
            self.h2.send_data(sid, b"\x00")
        except ProtocolError as e:
            self.flush()
            dial.fail(Failure(HTTP2Error(f"cannot open an HTTP/2 stream: {e}")))
            self.streamGone()
            return
        dial.streamID = sid
        self.opening[sid] = dial
        self.flush()

    def withdraw(self, dial: _Dial) -> None:
        """
        C{dial} was cancelled or timed out.
        """
        if dial in self.waiting:
            self.waiting.remove(dial)
        elif dial.streamID is not None and self.opening.pop(dial.streamID, None) is dial:
            self.resetStream(dial.streamID, CANCEL)
        self.streamGone()

    def responseReceived(self, event: Any) -> None:
        sid = event.stream_id
        dial = self.opening.pop(sid, None)
        if dial is None:
            self.resetStream(sid, CANCEL)
            return
        status = dict(event.headers).get(b":status", b"")
        if status != b"200":
            self.resetStream(sid, CANCEL)
            dial.fail(
                Failure(
                    HTTP2Error(
                        f"HTTP/2 pool stream to {dial.description} refused: "
                        f"status {status.decode('ascii', 'replace')}"
                    )
                )
            )
            self.streamGone()
            return
        stream = StreamTransport(self, sid, dial.protocol)
        self.streams[sid] = stream
        dial.opened(stream)
        if event.stream_ended is not None and not stream.closed:
            stream.ended()

    def orphanGone(self, sid: int, how: str) -> None:
        dial = self.opening.pop(sid, None)
        if dial is not None:
            dial.fail(Failure(HTTP2Error(f"HTTP/2 pool stream to {dial.description} {how}")))
        self.streamGone()

    def streamGone(self) -> None:
        if self.gone or self.streams or self.opening or self.waiting:
            return
        self.owner.gone(self, still=True)
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.ready or self.transport is not None:
            self.close()

    def _ping(self) -> None:
        self._pingTimer = None
        if self.gone or self.closing:
            return
        if self._pinged and not self.heard:
            self.log.info(
                "HTTP/2 pool connection to {peer} silent for {seconds} s after a PING: dropped",
                peer=self.transport.getPeer(),  # type: ignore[union-attr]
                seconds=PING_INTERVAL,
            )
            self.owner.gone(self, still=True)
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.heard = False
        self._pinged = True
        self._safely(self.h2.ping, os.urandom(8))
        self.flush()
        self._pingTimer = self.reactor.callLater(PING_INTERVAL, self._ping)

    def close(self) -> None:
        self._stopPing()
        super().close()

    def _stopPing(self) -> None:
        if self._pingTimer is not None:
            if self._pingTimer.active():
                self._pingTimer.cancel()
            self._pingTimer = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._stopPing()
        super().connectionLost(reason)
        dials = [*self.waiting, *self.opening.values()]
        self.waiting, self.opening = [], {}
        for dial in dials:
            dial.fail(
                Failure(
                    HTTP2Error(
                        f"HTTP/2 connection to {dial.description} lost: {reason.getErrorMessage()}"
                    )
                )
            )


class _Dial:
    """
    One pool connection being opened: a stream on a shared connection, all
    within C{timeout}; fires C{result} with the pool protocol.
    """

    def __init__(self, reactor: Any, protocol: IProtocol, description: str, log: Logger) -> None:
        self.log = log
        self.reactor = reactor
        self.protocol = protocol
        self.description = description
        self.connection: _ClientConnection | None = None
        self.streamID: int | None = None
        self.result: Deferred[IProtocol] = Deferred(self._cancel)

    def start(self, connection: _ClientConnection, timeout: float) -> Deferred[IProtocol]:
        self.connection = connection
        self.result.addTimeout(timeout, self.reactor, onTimeoutCancel=self._timedOut)
        connection.add(self)
        return self.result

    def fail(self, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)

    def opened(self, stream: StreamTransport) -> None:
        if self.result.called:
            stream.abortConnection()
            return
        try:
            self.protocol.makeConnection(stream)
        except Exception as e:
            self.log.failure("Pool protocol failed on a new HTTP/2 stream")
            stream.abortConnection()
            self.fail(Failure(HTTP2Error(f"pool protocol failed on {self.description}: {e}")))
            return
        self.result.callback(self.protocol)

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        if self.connection is not None:
            self.connection.withdraw(self)

    def _timedOut(self, result: Any, timeout: float | None) -> Failure:
        return Failure(
            HTTP2Error(f"HTTP/2 pool stream to {self.description} not open after {timeout} s")
        )


class _ServerFactory(Factory):
    noisy = False

    def __init__(
        self, reactor: Any, owner: HTTP2Transport, poolFactory: IProtocolFactory, tls: bool
    ) -> None:
        self.reactor = reactor
        self.owner = owner
        self.poolFactory = poolFactory
        self.tls = tls

    def buildProtocol(self, addr: Any) -> _ServerConnection:
        connection = _ServerConnection(self.reactor, self.owner, self.tls, self.poolFactory)
        connection.factory = self
        return connection


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, connection: _ClientConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> _ClientConnection:
        return self.connection


@implementer(IPlugin, ILoggingTransport, IPoolTLSTransport, IALPNTransport)
class HTTP2Transport:
    """
    Pool connections are HTTP/2 streams on one TLS connection (ALPN ``h2``)
    per tunnel address.

    C{tls} is a L{PoolTLS <nodepass.transports.interface.PoolTLS>} or, from
    older callers, a pyOpenSSL creator or L{None}.

    @ivar alpn: the ALPN protocols the TLS creators given to this transport
        must offer.
    @ivar live: the HTTP/2 connections currently open, both ends.
    @ivar log: what its connections log through (by default, a logger
        publishing to the global log publisher; see L{withLogger}).
    """

    name = "h2"
    typeCode = "3"
    halfClose = False
    minimumTLS = 1
    readyAfterHandshake = False
    alpn = [b"h2"]

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else defaultLogger()
        self.live: set[_Connection] = set()
        self._clients: dict[Any, list[_ClientConnection]] = {}
        self._quiet: list[Deferred[None]] = []

    def withLogger(self, log: Logger) -> HTTP2Transport:
        """
        A transport of its own, with its own connections, logging through C{log}.
        """
        return HTTP2Transport(log)

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        creator = creatorOf(tls)
        factory: IProtocolFactory = _ServerFactory(reactor, self, poolFactory, creator is not None)
        if creator is None:
            return factory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return TLSMemoryBIOFactory(creator, False, factory, clock=reactor)

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        creator = creatorOf(tls)
        try:
            hash(creator)
            same: Any = creator
        except TypeError:
            same = id(creator)
        key = (reactor, address.ip, address.port, address.serverName, same)
        description = f"https://{address.text}{STREAM_PATH.decode()}"
        dial = _Dial(reactor, protocol, description, self.log)
        for connection in self._clients.get(key, []):
            if connection.usable():
                return dial.start(connection, timeout)
        connection = _ClientConnection(reactor, self, creator is not None, key, address.serverName)
        self._clients.setdefault(key, []).append(connection)
        result = dial.start(connection, timeout)
        factory: IProtocolFactory = _ClientFactory(connection)
        if creator is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(creator, True, factory, clock=reactor)
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

        kind = TCP6ClientEndpoint if ":" in address.ip else TCP4ClientEndpoint
        connection.start(kind(reactor, address.ip, address.port, timeout), factory)
        return result

    def gone(self, connection: _Connection, still: bool = False) -> None:
        """
        C{connection} takes no new streams (C{still}: it is still open), or
        is closed.
        """
        if isinstance(connection, _ClientConnection):
            siblings = self._clients.get(connection.key)
            if siblings is not None and connection in siblings:
                siblings.remove(connection)
                if not siblings:
                    del self._clients[connection.key]
        if still:
            return
        self.live.discard(connection)
        if not self.live:
            waiters, self._quiet = self._quiet, []
            for waiter in waiters:
                waiter.callback(None)

    def whenQuiet(self) -> Deferred[None]:
        """
        Fires once no HTTP/2 connection of this transport is open (for tests
        and orderly shutdown).
        """
        d: Deferred[None] = Deferred()
        if self.live:
            self._quiet.append(d)
        else:
            d.callback(None)
        return d

    def closeIdle(self) -> None:
        """
        Close every client connection that carries no stream.
        """
        for connection in list(self.live):
            if isinstance(connection, _ClientConnection):
                connection.streamGone()


h2transport = HTTP2Transport()
