"""Send relayed bytes at once on a plain Twisted TCP connection.

Twisted's C{write} only queues: the bytes go out on the next reactor iteration, after an
C{epoll_ctl} to watch for writability and before another to stop.  A relay writes each chunk
it reads, usually into an empty socket buffer, so L{directWriter} sends right away through
the transport's own C{writeSomeData} and queues only what the socket did not take (or
everything, when something is queued already, the transport is closing, or the send failed:
Twisted then reports the error as usual).  Ordering, the write buffer's producer pausing and
closing are all still Twisted's.

Private internals used (C{twisted.internet.abstract.FileDescriptor}, C{tcp.Connection}):
the write buffer fields C{_tempDataLen}, C{offset}, C{dataBuffer}, the flags
C{_writeDisconnecting}, C{disconnecting}, C{connected}, and C{writeSomeData}.  Checked on
every transport (a release that renames them gets the plain C{write}, logged once) and
pinned by C{tests/test_relay.py}.  Switch: C{NP_DIRECT_WRITE=0} (read by the entry
point through L{configure}) turns it off for the whole process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.copyright import version as twistedVersion
from twisted.internet import tcp

from nodepass.log import defaultLogger

#: The environment variable of the switch.
SWITCH = "NP_DIRECT_WRITE"

#: Twisted major versions whose private write-buffer fields were read and tested.
TESTED_TWISTED = range(22, 27)

#: What the writer reads and calls on the transport.
PRIVATE_FIELDS = (
    "_tempDataLen",
    "offset",
    "dataBuffer",
    "_writeDisconnecting",
    "disconnecting",
    "connected",
    "writeSomeData",
)

#: The switch: C{False} makes every writer the transport's plain C{write}.
enabled = True

_warned = False


def configure(environ: Mapping[str, str]) -> None:
    """
    Set the switch from the process environment (C{NP_DIRECT_WRITE=0} turns it off).
    """
    global enabled
    enabled = environ.get(SWITCH, "").strip() != "0"


def _fallBack(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        defaultLogger().info("Direct TCP writes off: {reason}", reason=reason)


def _versionSupported() -> bool:
    major = int(twistedVersion.split(".")[0])
    return major in TESTED_TWISTED


def directWriter(transport: Any) -> Callable[[bytes], None]:
    """
    C{transport.write}, or for a plain Twisted TCP connection, a write that sends at once
    when nothing is queued.
    """
    write: Callable[[bytes], None] = transport.write
    if not enabled:
        return write
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", True):
        return write
    if not _versionSupported():
        _fallBack(f"Twisted {twistedVersion} is not a tested release")
        return write
    missing = [name for name in PRIVATE_FIELDS if not hasattr(transport, name)]
    if missing:
        _fallBack(f"Twisted's TCP transport has no {', '.join(missing)}")
        return write
    writeSomeData = transport.writeSomeData
    conn: Any = transport

    def send(data: bytes) -> None:
        if (
            conn._tempDataLen
            or conn.offset != len(conn.dataBuffer)
            or conn.disconnecting
            or conn._writeDisconnecting
            or not conn.connected
        ):
            write(data)
            return
        sent = writeSomeData(data)
        if sent.__class__ is int:
            if sent < len(data):
                write(data[sent:])
        else:
            write(data)

    return send
