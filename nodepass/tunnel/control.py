"""The tunnel control channel: signal encoding and the ping/flush timing.

Both peers of a dual-end tunnel talk over pool connection C{00000000}
(dataplane spec §4.3, §5).  Each message is one line: a signal object as
compact JSON, XORed with the tunnel key, in standard padded base64, then
C{\\n}.  This module holds the codec (L{encodeSignal}, L{decodeSignal}) and
L{ControlChannel}, which runs the protocol over any byte stream: the caller
feeds it received bytes and gives it a C{write} callable, so the same code
works over plain TCP, TLS, QUIC, WebSocket or HTTP/2 pool transports.

What the signals mean (open connections, flush the pool, check a
fingerprint) is left to a L{ControlHandler}.  Received signals are handed
over synchronously, in order, so the Go queue limits (§5.5) do not apply:
the receive side has no queue, and outgoing lines go to the transport's
own buffer, one C{write} per message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodepass.errors import NodePassError
from nodepass.log import defaultLogger

__all__ = [
    "ControlChannel",
    "ControlHandler",
    "Signal",
    "SignalError",
    "decodeSignal",
    "encodeSignal",
]


@attrs.frozen
class Signal:
    """
    One control message (spec §5.2).

    @ivar action: C{"ping"}, C{"pong"}, C{"tcp"}, C{"udp"}, C{"verify"} or
        C{"flush"}.  Other values decode fine and are passed on; the
        receiver ignores them, as Go does.
    @ivar remote: the end user's address in Go C{host:port} form.
    @ivar id: a pool connection ID (8 lower-case hex digits).
    @ivar fp: a certificate fingerprint (§8.3).

    An empty field is left out of the JSON.
    """

    action: str
    remote: str = ""
    id: str = ""
    fp: str = ""


class SignalError(NodePassError):
    """
    A control line could not be decoded.

    @ivar stage: C{"decode"} when the base64 layer is broken, C{"unmarshal"}
        when the JSON inside is; Go logs the two cases with different words.
    """

    stage: str

    def __init__(self, message: str, stage: str = "decode") -> None:
        super().__init__(message)
        self.stage = stage


# JSON field names in the order Go's encoder writes them (struct order).
_FIELDS = ("action", "remote", "id", "fp")


def _keyBytes(key: str) -> bytes:
    data = key.encode("utf-8", "surrogatepass")
    if not data:
        raise ValueError("the tunnel key must not be empty")
    return data


def _xor(data: bytes, key: bytes) -> bytes:
    """
    XOR C{data} with C{key} repeated from its first byte.
    """
    size = len(key)
    return bytes(byte ^ key[index % size] for index, byte in enumerate(data))


# Characters Go's encoder escapes in a string besides the quote, backslash
# and control characters: it is HTML-safe by default, and escapes the two
# JavaScript line terminators.
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_ESCAPED = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _escapeOne(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if "\ud800" <= char <= "\udfff":
        # A lone surrogate is not valid UTF-8; Go writes U+FFFD instead.
        return "\\ufffd"
    return f"\\u{ord(char):04x}"


def _goString(value: str) -> str:
    """
    C{value} as a JSON string literal, byte for byte what Go's
    C{json.Marshal} writes.
    """
    return '"' + _ESCAPED.sub(_escapeOne, value) + '"'


def _signalJSON(signal: Signal) -> bytes:
    parts = [f'"action":{_goString(signal.action)}']
    for name in _FIELDS[1:]:
        value: str = getattr(signal, name)
        if value:
            parts.append(f'"{name}":{_goString(value)}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def encodeSignal(key: str, signal: Signal) -> bytes:
    """
    Encode C{signal} as one control line, newline included (spec §5.1).

    @param key: the tunnel key; must not be empty.
    @raise ValueError: if C{key} is empty.
    """
    masked = _xor(_signalJSON(signal), _keyBytes(key))
    return base64.b64encode(masked) + b"\n"


# What Go's padded standard decoder accepts once CR and LF are dropped.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _unbase64(line: bytes) -> bytes:
    text = line.replace(b"\r", b"").replace(b"\n", b"")
    if _BASE64.fullmatch(text) is None:
        raise SignalError("illegal base64 data: not in the standard alphabet")
    if len(text) % 4:
        raise SignalError("illegal base64 data: truncated input")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as e:
        raise SignalError(f"illegal base64 data: {e}") from None


# The non-ASCII letters whose simple case mapping is an ASCII letter.
_FOLD_TABLE = str.maketrans({"\u0131": "I", "\u0130": "I", "\u017f": "S", "\u212a": "K"})


def _fold(name: str) -> str:
    """
    Fold a JSON key the way Go's decoder does before comparing it with a
    field name: ASCII letters case-insensitively, plus the few non-ASCII
    letters that fold onto ASCII ones (dotless and dotted I, long S, Kelvin).
    """
    if name.isascii():
        return name.upper()
    return "".join(char.upper() if char.isascii() else char.translate(_FOLD_TABLE) for char in name)


_FIELD_BY_FOLD = {name.upper(): name for name in _FIELDS}
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Ignored:
    """
    Stands for a number in the JSON text: never a valid field value, and
    not worth converting (Go accepts numbers of any size where they are
    ignored).
    """


def _number(text: str) -> _Ignored:
    return _Ignored()


def _badConstant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


class _Object(list[tuple[str, Any]]):
    """
    A JSON object as its members in text order, so duplicate keys resolve
    as in Go (the later one wins).
    """


def _kind(value: object) -> str:
    if isinstance(value, _Object):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    return "number"


def decodeSignal(key: str, line: bytes) -> Signal:
    """
    Decode one control line (spec §5.1, §5.2), as Go's peer would.

    The trailing newline is optional.  Keys may come in any order and are
    matched case-insensitively; unknown keys are ignored; a later duplicate
    wins; C{null} leaves a field empty; a missing C{action} gives the empty
    action (Go ignores such a signal).

    @param key: the tunnel key; must not be empty.  It never appears in an
        error message.
    @raise SignalError: if the line is not base64, or the JSON inside is
        broken, not an object, or has a non-string value for a known field.
    @raise ValueError: if C{key} is empty.
    """
    keyBytes = _keyBytes(key)
    raw = _xor(_unbase64(line), keyBytes)
    # Go replaces invalid UTF-8 inside strings with U+FFFD; anywhere else it
    # is a syntax error either way.
    text = raw.decode("utf-8", "replace")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_Object,
            parse_int=_number,
            parse_float=_number,
            parse_constant=_badConstant,
        )
    except (ValueError, RecursionError) as e:
        raise SignalError(f"invalid JSON: {e}", "unmarshal") from None
    if document is None:
        return Signal(action="")
    if not isinstance(document, _Object):
        raise SignalError(
            f"cannot unmarshal JSON {_kind(document)} into a signal object", "unmarshal"
        )
    values = dict.fromkeys(_FIELDS, "")
    for name, value in document:
        field = _FIELD_BY_FOLD.get(_fold(name))
        if field is None or value is None:
            continue
        if not isinstance(value, str):
            raise SignalError(
                f"cannot unmarshal JSON {_kind(value)} into signal field {field!r}", "unmarshal"
            )
        values[field] = _SURROGATE.sub("\ufffd", value)
    return Signal(**values)


class ControlHandler(Protocol):
    """
    What a L{ControlChannel} reports to the tunnel it serves.
    """

    def signal(self, signal: Signal) -> None:
        """
        A signal other than C{ping} and C{pong} arrived (including unknown
        actions, which the handler should ignore).
        """

    def pong(self, pingMs: int) -> None:
        """
        A C{pong} arrived, C{pingMs} whole milliseconds after our latest
        C{ping} (0 if none was sent yet); time for the CHECK_POINT line.
        """

    def tick(self) -> bool:
        """
        A report tick is due.  Return C{True} when the health rule of §5.4
        fires (the handler then flushes its own pool and resets its error
        counter); the channel sends C{flush} instead of C{ping}.
        """

    def controlFailed(self, reason: str) -> None:
        """
        The channel is dead: nothing arrived for 3 report intervals, or a
        line was too long.  Called at most once; the channel has stopped.
        """


class ControlChannel:
    """
    The control protocol on pool connection C{00000000}, independent of the
    transport carrying it.

    Timing follows Go's C{healthCheck} (§5.4): C{ping} at once, then at
    each report tick either C{ping} or, when L{ControlHandler.tick} says so,
    C{flush}.  After a flush Go waits one tick and then pings without
    consulting the health rule, so the tick right after a flush always
    pings.  Received bytes keep a silence timer of 3 report intervals
    alive (§5.1).

    @ivar lastPingAt: C{clock.seconds()} when the latest C{ping} was sent,
        or C{None} before the first.
    """

    lastPingAt: float | None

    def __init__(
        self,
        key: str,
        clock: IReactorTime,
        write: Callable[[bytes], None],
        handler: ControlHandler,
        reportInterval: float = 5.0,
        maxLine: int = 65536,
        *,
        log: Logger | None = None,
    ) -> None:
        """
        @param key: the tunnel key (not empty).
        @param clock: drives the report ticks and the silence timer.
        @param write: sends bytes on the control connection.
        @param handler: receives signals, pongs, ticks and the failure.
        @param reportInterval: the C{report} period in seconds (positive).
        @param maxLine: the longest acceptable line, newline excluded.
        @param log: the instance's logger (by default, one publishing to the
            global log publisher).
        """
        _keyBytes(key)
        if reportInterval <= 0:
            raise ValueError(f"reportInterval must be positive, not {reportInterval!r}")
        if maxLine < 1:
            raise ValueError(f"maxLine must be positive, not {maxLine!r}")
        self.log = log if log is not None else defaultLogger()
        self._key = key
        self._clock = clock
        self._write = write
        self._handler = handler
        self._interval = reportInterval
        self._timeout = 3 * reportInterval
        self._maxLine = maxLine
        self._buffer = b""
        self._ticker: LoopingCall | None = None
        self._silence: IDelayedCall | None = None
        self._started = False
        self._done = False
        self._pingNext = False
        self.lastPingAt = None

    def __repr__(self) -> str:
        # Never show the key.
        state = "done" if self._done else "running" if self._started else "new"
        return f"<ControlChannel {state} report={self._interval:g}s>"

    @property
    def running(self) -> bool:
        """
        Whether L{start} was called and neither L{stop} nor a failure has
        ended the channel since.
        """
        return self._started and not self._done

    def start(self) -> None:
        """
        Send the first C{ping}, start the report ticks and arm the silence
        timer.  A second call, or a call after L{stop}, does nothing.
        """
        if self._started or self._done:
            return
        self._started = True
        self._silence = self._clock.callLater(self._timeout, self._timedOut)
        self._ping()
        ticker = LoopingCall(self._tick)
        ticker.clock = self._clock
        self._ticker = ticker
        finished: Deferred[LoopingCall] = ticker.start(self._interval, now=False)
        finished.addErrback(self._tickerFailed)

    def stop(self) -> None:
        """
        Cancel the timers and ignore whatever arrives later.  Idempotent.
        """
        self._done = True
        self._buffer = b""
        if self._ticker is not None:
            if self._ticker.running:
                self._ticker.stop()
            self._ticker = None
        if self._silence is not None:
            if self._silence.active():
                self._silence.cancel()
            self._silence = None

    def send(self, signal: Signal) -> None:
        """
        Encode C{signal} and write it as one line, in a single write.
        """
        self._write(encodeSignal(self._key, signal))

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the control connection: reset the silence timer, then
        handle every complete line.  A line that does not decode is logged
        and skipped; one longer than C{maxLine} ends the channel.
        """
        if self._done or not data:
            return
        if self._silence is not None and self._silence.active():
            self._silence.reset(self._timeout)
        buffer = self._buffer + data
        start = 0
        while not self._done:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._maxLine:
                self._fail("control line too long")
                return
            line = buffer[start:end]
            start = end + 1
            self._lineReceived(line)
        if self._done:
            return
        rest = buffer[start:]
        if len(rest) > self._maxLine:
            self._fail("control line too long")
            return
        self._buffer = rest

    def _lineReceived(self, line: bytes) -> None:
        try:
            signal = decodeSignal(self._key, line)
        except SignalError as e:
            self.log.warn(
                "commonQueue: {stage} signal failed: {reason}",
                stage=e.stage,
                reason=str(e),
            )
            return
        try:
            if signal.action == "ping":
                self.send(Signal(action="pong"))
            elif signal.action == "pong":
                self._handler.pong(self._sincePing())
            else:
                self._handler.signal(signal)
        except Exception:
            self.log.failure("control signal {action!r} handling failed", action=signal.action)

    def _sincePing(self) -> int:
        if self.lastPingAt is None:
            return 0
        elapsed = self._clock.seconds() - self.lastPingAt
        # Whole milliseconds, truncated as Go's Duration.Milliseconds does;
        # rounding to microseconds first keeps float noise (2.9999999 ms for
        # a 3 ms step) from losing a millisecond.
        return max(0, round(elapsed * 1_000_000) // 1000)

    def _ping(self) -> None:
        self.lastPingAt = self._clock.seconds()
        self.send(Signal(action="ping"))

    def _tick(self) -> None:
        if self._done:
            return
        if self._pingNext:
            self._pingNext = False
            self._ping()
            return
        try:
            flush = self._handler.tick()
        except Exception:
            self.log.failure("control health check failed")
            flush = False
        if self._done:
            return
        if flush:
            self.send(Signal(action="flush"))
            self._pingNext = True
        else:
            self._ping()

    def _tickerFailed(self, failure: Failure) -> None:
        self.log.failure("control ticker failed", failure)

    def _timedOut(self) -> None:
        self._silence = None
        self._fail(f"control connection timed out after {self._timeout:g}s without data")

    def _fail(self, reason: str) -> None:
        if self._done:
            return
        self.stop()
        self._handler.controlFailed(reason)
