"""
The master's Server-Sent Events hub: C{GET P/events} (spec §10).

An L{EventHub} holds one L{_Subscriber} per open stream.  A stream starts with the
C{retry:} block (which also sends the headers), then one C{initial} event per instance from
the snapshot callable the caller passes, then every event published while it lives.  Each
event is framed once, when it is published (so it carries the state of that moment, not of
the moment it is sent), and the same bytes go to every subscriber.

Framing is Go's (§10.2), byte for byte::

    event: instance
    data: {"type":"update","time":"…","instance":{…},"logs":""}
    <blank line>

No C{id:} lines and no comment lines.  A keepalive (§10.5) is the bare retry block, sent by a
L{LoopingCall} on the injected clock while anyone is subscribed.

Backpressure: each subscriber registers itself as the request's push producer.  While its
transport has paused it, events go to a bounded backlog; when the backlog overflows, the
stream is ended (the client reconnects and gets a fresh snapshot, instead of silently losing
events as Go does, §17 a20).  Streams end from the server side only by firing the route
handler's Deferred with C{None} (STYLE §3 item 15), never by C{request.finish()}.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import Request
from zope.interface import implementer

__all__ = [
    "CONTENT_TYPE",
    "EVENT_NAME",
    "KEEPALIVE_INTERVAL",
    "LOG_LINE_LIMIT",
    "MAX_EVENT_BYTES",
    "RETRY_BLOCK",
    "EventHub",
    "EventTooLarge",
    "encodeJSON",
    "formatEvent",
    "formatTime",
    "truncateLogLine",
]

#: The exact C{Content-Type} of the stream (§10.1; NodePassDash compares it literally, §18 b3).
CONTENT_TYPE = b"text/event-stream"

#: The SSE event name of every block (§10.2); the kind travels in the JSON's C{type}.
EVENT_NAME = "instance"

#: First bytes of every stream, and the keepalive block (§10.2, §10.5).
RETRY_BLOCK = b"retry: 3000\n\n"

#: Seconds between keepalive blocks (§10.5; NodePassDash's idle detector fires at 5 minutes).
KEEPALIVE_INTERVAL = 30.0

#: Every event block, blank line included, stays strictly below this (r3labs' scanner, §18 b8).
MAX_EVENT_BYTES = 64 * 1024

#: Forwarded child log lines are cut to this many UTF-8 bytes (§9.2).
LOG_LINE_LIMIT = 8 * 1024

#: Default bound on the events queued for a paused subscriber before its stream is ended.
DEFAULT_BACKLOG_EVENTS = 256

#: Default bound on the bytes queued for a paused subscriber before its stream is ended.
DEFAULT_BACKLOG_BYTES = 1024 * 1024

_SURROGATES = re.compile("[\ud800-\udfff]")
# Go's encoding/json escapes these even outside HTML (SetEscapeHTML defaults to true).
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


class EventTooLarge(ValueError):
    """
    An event block would reach L{MAX_EVENT_BYTES} and cannot be shortened.
    """


def truncateLogLine(line: str, limit: int = LOG_LINE_LIMIT) -> str:
    """
    Cut C{line} to at most C{limit} bytes of UTF-8 without splitting a character.

    Lone surrogates (from undecodable child output) count as the 3 bytes of the U+FFFD that
    L{encodeJSON} puts in their place.
    """
    if len(line) * 4 <= limit:
        return line
    encoded = _SURROGATES.sub("\ufffd", line).encode("utf-8")
    if len(encoded) <= limit:
        return line
    # Count characters in the cut prefix; "ignore" drops a partial trailing character.
    kept = len(encoded[:limit].decode("utf-8", "ignore"))
    return line[:kept]


def encodeJSON(value: Any) -> bytes:
    """
    Serialise C{value} compactly on one line, escaping as Go's C{encoding/json} does.

    Non-ASCII text stays raw UTF-8; C{<}, C{>}, C{&}, U+2028 and U+2029 become C{\\uXXXX};
    control characters (such as the ESC of ANSI colours) become C{\\u00XX}; lone surrogates
    become U+FFFD.  Newlines inside strings are escaped, so the result never contains one.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # str.replace per character runs in C: three times faster than one regex with a
    # Python callback on a list of instances (every config URL is full of '&').
    for character, escaped in _GO_ESCAPES.items():
        if character in text:
            text = text.replace(character, escaped)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (from a decoded \ud800, say)
        return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def formatTime(seconds: float) -> str:
    """
    Format a POSIX time as Go's C{time.RFC3339Nano} in UTC: C{2026-11-23T15:29:47.0027Z}.

    The fraction keeps microseconds (what a float carries reliably) with trailing zeros
    removed, and is left out when zero, as Go does.
    """
    micros = round(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        stamp += "." + f"{fraction:06d}".rstrip("0")
    return stamp + "Z"


def formatEvent(
    eventType: str, instance: Mapping[str, Any] | None, time: str, logs: str = ""
) -> bytes:
    """
    Frame one event block (§10.2, §10.3).

    The payload has exactly the keys C{type}, C{time}, C{instance} and C{logs}, in that
    order; C{logs} is always a string (§18 b10).  A block that would reach
    L{MAX_EVENT_BYTES} is shortened by cutting C{logs}; if that is not enough, or there are
    no logs to cut, L{EventTooLarge} is raised.
    """
    while True:
        payload = {"type": eventType, "time": time, "instance": instance, "logs": logs}
        block = b"event: " + EVENT_NAME.encode() + b"\ndata: " + encodeJSON(payload) + b"\n\n"
        if len(block) < MAX_EVENT_BYTES:
            return block
        if not logs:
            raise EventTooLarge(f"{eventType} event of {len(block)} bytes")
        # Escaping never makes a character shorter, so cutting the excess from the raw line
        # shortens the block by at least as much.
        excess = len(block) - MAX_EVENT_BYTES + 1
        size = len(_SURROGATES.sub("\ufffd", logs).encode("utf-8"))
        logs = truncateLogLine(logs, max(0, size - excess))


@implementer(IPushProducer)
class _Subscriber:
    """
    One open stream: the request, the handler's pending Deferred and a bounded backlog.

    It is the request's push producer, so the transport tells it when the client is slow.
    """

    def __init__(
        self,
        hub: EventHub,
        request: Request,
        maxBacklogEvents: int,
        maxBacklogBytes: int,
    ) -> None:
        self._hub = hub
        self.request = request
        self._maxEvents = maxBacklogEvents
        self._maxBytes = maxBacklogBytes
        self._backlog: deque[bytes] = deque()
        self._backlogBytes = 0
        self.paused = False
        self.closed = False
        self.deferred: Deferred[None] = Deferred(lambda d: self._gone())

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._backlog and not self.paused and not self.closed:
            block = self._backlog.popleft()
            self._backlogBytes -= len(block)
            self.request.write(block)

    def stopProducing(self) -> None:
        self._gone()

    # The hub's side

    def send(self, block: bytes) -> None:
        """
        Write C{block} now, or queue it while paused; end the stream if the queue overflows.
        """
        if self.closed:
            return
        if not self.paused and not self._backlog:
            self.request.write(block)
            return
        self._backlog.append(block)
        self._backlogBytes += len(block)
        if len(self._backlog) > self._maxEvents or self._backlogBytes > self._maxBytes:
            self._hub._log.warn(
                "SSE subscriber too slow: {events} events ({size} bytes) queued, closing stream",
                events=len(self._backlog),
                size=self._backlogBytes,
            )
            self._backlog.clear()
            self._backlogBytes = 0
            self.end()

    def end(self, lastBlock: bytes | None = None) -> None:
        """
        End the stream from the server side: flush what is queued (bounded), write
        C{lastBlock}, and let Klein finish the request by firing the handler's Deferred.
        """
        if self.closed:
            return
        while self._backlog:
            self.request.write(self._backlog.popleft())
        self._backlogBytes = 0
        if lastBlock is not None:
            self.request.write(lastBlock)
        self._gone()
        self.request.unregisterProducer()
        self.deferred.callback(None)

    def _gone(self) -> None:
        """
        Stop all work for this stream (client left, handler cancelled or server ending it).
        """
        if self.closed:
            return
        self.closed = True
        self._backlog.clear()
        self._backlogBytes = 0
        self._hub._discard(self)


class EventHub:
    """
    Fan-out of master events to SSE streams.

    @param clock: schedules the keepalive.
    @param snapshot: returns the instance objects (the C{********} pseudo-instance
        included) for a new subscriber's C{initial} events; each is serialised as given.
    @param timestamp: returns the C{time} of a new event; defaults to the clock's time in
        Go's RFC 3339 form (tests pass fixed strings).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        snapshot: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        timestamp: Callable[[], str] | None = None,
        keepaliveInterval: float = KEEPALIVE_INTERVAL,
        maxBacklogEvents: int = DEFAULT_BACKLOG_EVENTS,
        maxBacklogBytes: int = DEFAULT_BACKLOG_BYTES,
    ) -> None:
        self._clock = clock
        self._snapshot = snapshot
        self._timestamp = timestamp or (lambda: formatTime(clock.seconds()))
        self._keepaliveInterval = keepaliveInterval
        self._maxBacklogEvents = maxBacklogEvents
        self._maxBacklogBytes = maxBacklogBytes
        self._subscribers: dict[_Subscriber, None] = {}
        self._keepalive: LoopingCall | None = None

    @property
    def subscriberCount(self) -> int:
        """
        The number of open streams.
        """
        return len(self._subscribers)

    def subscribe(self, request: Request) -> Deferred[None]:
        """
        Turn C{request} into an event stream; return the Deferred the route handler returns.

        The Deferred stays pending while the stream lives, fires with C{None} when the
        server ends it, and unsubscribes when cancelled (Klein does that on disconnect).
        """
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Connection", b"keep-alive")
        subscriber = _Subscriber(self, request, self._maxBacklogEvents, self._maxBacklogBytes)
        request.registerProducer(subscriber, True)
        self._subscribers[subscriber] = None
        request.notifyFinish().addBoth(lambda _: subscriber._gone())
        request.write(RETRY_BLOCK)
        for instance in self._snapshot():
            try:
                block = formatEvent("initial", instance, self._timestamp())
            except EventTooLarge as e:
                self._log.error("SSE initial event dropped: {why}", why=str(e))
                continue
            subscriber.send(block)
        self._startKeepalive()
        return subscriber.deferred

    def publish(self, eventType: str, instance: Mapping[str, Any] | None, logs: str = "") -> None:
        """
        Send an event of kind C{eventType} (C{create}, C{update}, C{delete}, C{log}) to
        every stream.  C{instance} is serialised now.  For C{log} events pass the raw child
        line as C{logs}; it is cut at L{LOG_LINE_LIMIT} bytes.
        """
        if not self._subscribers:
            return
        try:
            block = formatEvent(eventType, instance, self._timestamp(), truncateLogLine(logs))
        except EventTooLarge as e:
            self._log.error("SSE event dropped: {why}", why=str(e))
            return
        for subscriber in list(self._subscribers):
            subscriber.send(block)

    def shutdown(self) -> None:
        """
        Send C{shutdown} to every stream and end them all (§10.6).

        The hub stays usable: after an API key regeneration, clients reconnect with the new
        key and subscribe again.
        """
        block = formatEvent("shutdown", None, self._timestamp())
        for subscriber in list(self._subscribers):
            subscriber.end(block)
        self._stopKeepalive()

    def _discard(self, subscriber: _Subscriber) -> None:
        self._subscribers.pop(subscriber, None)
        if not self._subscribers:
            self._stopKeepalive()

    def _sendKeepalive(self) -> None:
        for subscriber in list(self._subscribers):
            subscriber.send(RETRY_BLOCK)

    def _startKeepalive(self) -> None:
        if self._keepalive is None and self._subscribers:
            self._keepalive = LoopingCall(self._sendKeepalive)
            self._keepalive.clock = self._clock
            self._keepalive.start(self._keepaliveInterval, now=False)

    def _stopKeepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
