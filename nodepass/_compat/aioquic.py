"""The aioquic internals the QUIC pool transport relies on, in one place.

aioquic's sans-IO C{QuicConnection} has no public way to do five things
L{nodepass.transports.quic} needs (read for aioquic 1.7):

* B{A receive window that follows consumption} (L{connectionClass}): aioquic
  doubles a stream's window (C{MAX_STREAM_DATA}) whenever the data
  I{received} passes half of it, read or not, so a paused reader would
  buffer whatever the peer sends.  We override the private
  C{QuicConnection._write_stream_limits} so that the window of a stream we
  carry is what its protocol consumed plus a fixed window, raised in fixed
  steps; it reads and sets the stream's C{max_stream_data_local},
  C{max_stream_data_local_sent} and C{receiver.highest_offset}.
* B{Bytes not yet acknowledged} on a stream (L{unacknowledged}), for the
  producer watermarks: C{QuicConnection._streams[id].sender._buffer}.
* B{The peer's CONNECTION_CLOSE} as soon as it arrives (L{peerClose}):
  C{QuicConnection._close_event} (aioquic reports it only after its draining
  period).
* B{The peer's certificate} (L{peerCertificate}), for the fingerprint
  exchange: C{QuicConnection.tls._peer_certificate}.
* B{More than 128 incoming streams} (L{allowIncomingStreams}): the limit
  object C{QuicConnection._local_max_streams_bidi} (C{value}, C{sent}),
  raised before the transport parameters are first sent.

Checked: the installed aioquic is a tested release (L{TESTED}) and has the
names above (L{unsupported}); C{tests/test_compat_aioquic.py} pins each of
them against the installed aioquic, so an upgrade that renames one fails
there first.

Fallbacks, each logged once per process (through the logger of the instance
that first meets it): on an untested release, or with a name missing, or
with the switch off, L{connectionClass} is aioquic's own C{QuicConnection}
(aioquic's window rule: a paused reader may then hold more than a window).
A missing name makes its accessor answer what aioquic's public side allows:
no unacknowledged bytes (the watermarks never pause), no early close (the
connection ends after aioquic's draining period), no certificate (mode 1
and 2 fingerprint checks then fail), 128 incoming streams.

Switch: C{NP_AIOQUIC_WINDOW=0} (read by the entry point through
L{configure}), or C{enabled = False}, turns the window override off.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

__all__ = [
    "SWITCH",
    "TESTED",
    "allowIncomingStreams",
    "configure",
    "connectionClass",
    "enabled",
    "peerCertificate",
    "peerClose",
    "unacknowledged",
    "unsupported",
]

#: The environment variable of the switch.
SWITCH = "NP_AIOQUIC_WINDOW"

#: aioquic releases (major, minor) whose internals were read and tested
#: (add one once tests/test_compat_aioquic.py passes against it).
TESTED = ((1, 7),)

#: The switch: C{False} uses aioquic's own receive window rule.
enabled = True

#: What was logged already (each fallback once per process).
_logged: set[str] = set()


def configure(environ: Mapping[str, str]) -> None:
    """
    Set the switch from the process environment (C{NP_AIOQUIC_WINDOW=0}
    turns the window override off).
    """
    global enabled
    enabled = environ.get(SWITCH, "").strip() != "0"


def _once(log: Logger, key: str, message: str, **fields: Any) -> None:
    if key in _logged:
        return
    _logged.add(key)
    log.warn(message, **fields)


def _version() -> str | None:
    from importlib import metadata  # not at import time: the plugin scan loads us

    try:
        return metadata.version("aioquic")
    except metadata.PackageNotFoundError:
        return None


def _release() -> tuple[int, int] | None:
    version = _version()
    if version is None:
        return None
    parts = version.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


@functools.cache
def unsupported() -> str | None:
    """
    Why the window override cannot be used with the installed aioquic, or
    L{None} (worked out once per process).
    """
    release = _release()
    if release is None or release not in TESTED:
        return f"aioquic {_version() or '(not installed)'} is not a tested release"
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.stream import QuicStream

    if not callable(getattr(QuicConnection, "_write_stream_limits", None)):
        return "aioquic's QuicConnection has no _write_stream_limits"
    probe = QuicStream(stream_id=0, max_stream_data_local=1, max_stream_data_remote=1)
    for name in ("max_stream_data_local", "max_stream_data_local_sent", "stream_id"):
        if not hasattr(probe, name):
            return f"aioquic's QuicStream has no {name}"
    if not hasattr(probe.receiver, "highest_offset"):
        return "aioquic's stream receiver has no highest_offset"
    return None


class _Consumed:
    """
    What the window override needs of a stream we carry: the bytes its
    protocol consumed so far.
    """

    consumed: int


@functools.cache
def _windowed(window: int, step: int) -> type[QuicConnection]:
    from aioquic.quic.connection import QuicConnection

    class WindowedQuicConnection(QuicConnection):
        """
        aioquic's C{QuicConnection}, where the receive window of a stream
        listed in C{windows} is what its protocol consumed plus C{window},
        raised in steps of C{step}; other streams keep aioquic's rule.
        """

        #: Our streams by id; set on each connection (L{connectionClass}).
        windows: Mapping[int, _Consumed] = {}

        def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
            ours = self.windows.get(stream.stream_id)
            current = stream.max_stream_data_local
            if ours is None or not current:
                super()._write_stream_limits(builder, space, stream)
                return
            wanted = ours.consumed + window
            if wanted - current >= step:
                stream.max_stream_data_local = wanted
            elif stream.max_stream_data_local_sent == current:
                return
            # Let aioquic send the frame, without its own doubling rule.
            receiver = stream.receiver
            seen = receiver.highest_offset
            receiver.highest_offset = 0
            try:
                super()._write_stream_limits(builder, space, stream)
            finally:
                receiver.highest_offset = seen

    return WindowedQuicConnection


def connectionClass(window: int, step: int, log: Logger) -> type[QuicConnection]:
    """
    The C{QuicConnection} class to build connections from: with the window
    override (give each connection a C{windows} mapping of stream id to an
    object with C{consumed}) when it is switched on and supported; else
    aioquic's own, saying why once.
    """
    from aioquic.quic.connection import QuicConnection

    if not enabled:
        _once(log, "switch", "QUIC receive windows: aioquic's own rule ({switch}=0)", switch=SWITCH)
        return QuicConnection
    reason = unsupported()
    if reason is not None:
        _once(
            log,
            "unsupported",
            "QUIC receive windows: aioquic's own rule, a paused stream may hold more than "
            "its window ({reason})",
            reason=reason,
        )
        return QuicConnection
    return _windowed(window, step)


def unacknowledged(quic: QuicConnection, streamID: int, log: Logger) -> int:
    """
    Bytes written to stream C{streamID} and not yet acknowledged by the peer
    (0 for a stream aioquic no longer keeps).
    """
    streams = getattr(quic, "_streams", None)
    if streams is None:
        _once(log, "_streams", "aioquic has no QuicConnection._streams: QUIC streams never pause")
        return 0
    stream = streams.get(streamID)
    if stream is None:
        return 0
    buffer = getattr(stream.sender, "_buffer", None)
    if buffer is None:
        _once(log, "_buffer", "aioquic's stream sender has no _buffer: QUIC streams never pause")
        return 0
    return len(buffer)


#: Marks "no such attribute", to tell it from an attribute set to None.
_MISSING = object()


def peerClose(quic: QuicConnection, log: Logger) -> Any:
    """
    The C{ConnectionTerminated} event of a connection that is closing (the
    peer's CONNECTION_CLOSE, or our own), else L{None}.
    """
    event = getattr(quic, "_close_event", _MISSING)
    if event is _MISSING:
        _once(
            log,
            "_close_event",
            "aioquic has no QuicConnection._close_event: a closed QUIC connection ends "
            "after aioquic's draining period",
        )
        return None
    return event


def peerCertificate(quic: QuicConnection, log: Logger) -> Any:
    """
    The peer's verified leaf certificate (a C{cryptography} certificate) once
    the handshake is done; L{None} when the peer sent none (our server side).
    """
    tls = getattr(quic, "tls", None)
    certificate = getattr(tls, "_peer_certificate", _MISSING)
    if certificate is _MISSING:
        _once(
            log,
            "_peer_certificate",
            "aioquic has no tls._peer_certificate: QUIC peers have no certificate to check",
        )
        return None
    return certificate


def allowIncomingStreams(quic: QuicConnection, count: int, log: Logger) -> None:
    """
    Let the peer open C{count} streams at once (aioquic starts at 128 and has
    no setting for it); call before the transport parameters are first sent.
    """
    limit = getattr(quic, "_local_max_streams_bidi", None)
    if limit is None or not hasattr(limit, "value") or not hasattr(limit, "sent"):
        _once(
            log,
            "_local_max_streams_bidi",
            "aioquic has no QuicConnection._local_max_streams_bidi: peers may open 128 "
            "QUIC streams at once",
        )
        return
    limit.value = limit.sent = max(limit.value, count)
