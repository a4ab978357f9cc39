"""
Tests for L{nodepass.tunnel.control}: the signal codec against the spec's
vectors (§15.6) and Go's decoding rules, and L{ControlChannel}'s timing,
line handling and failure detection.

Everything runs in memory: writes go to a L{StringTransport}, time is a
L{Clock}.
"""

from __future__ import annotations

import base64
import json

import pytest
from attrs import define, field
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from nodepass.tunnel.control import (
    ControlChannel,
    Signal,
    SignalError,
    decodeSignal,
    encodeSignal,
)

KEY = "secret"

FP = (
    "sha256:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"
    ":00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"
)

# (signal, exact JSON, line on the wire), dataplane spec §15.6.
VECTORS = [
    (Signal("ping"), b'{"action":"ping"}', b"CEcCEREdHAtBSEcEGgsEUBg=\n"),
    (Signal("pong"), b'{"action":"pong"}', b"CEcCEREdHAtBSEcEHAsEUBg=\n"),
    (Signal("flush"), b'{"action":"flush"}', b"CEcCEREdHAtBSEcSHxAQGkcJ\n"),
    (
        Signal("tcp", remote="127.0.0.1:54321", id="1a2b3c4d"),
        b'{"action":"tcp","remote":"127.0.0.1:54321","id":"1a2b3c4d"}',
        b"CEcCEREdHAtBSEcAEBVBXkcGFggMBgBWSUdSQFJaQ0tTXFRORlFQQFRWX0cKFkdOUVQCQAdHEFEHUBg=\n",
    ),
    (
        Signal("udp", remote="192.168.1.10:5353", id="deadbeef"),
        b'{"action":"udp","remote":"192.168.1.10:5353","id":"deadbeef"}',
        b"CEcCEREdHAtBSEcBFxVBXkcGFggMBgBWSUdSS1daQlNbXFRaQlVZR1ZBQEdPUAwQUV9BFgAVFwcGFwNWDg==\n",
    ),
    (
        Signal("verify", id="0badf00d", fp=FP),
        b'{"action":"verify","id":"0badf00d","fp":"' + FP.encode() + b'"}',
        b"CEcCEREdHAtBSEcCFhcKFBxWX0cKFkdOUVUBEwESQ1UHUElWFRVBSEcHGwRRR1NOQ1VZQ1ROQVdZQVZOR1FZR1BO"
        b"RVNZRVJOS11ZS1xOMiRZMCdOMCZZNiFONiBZNCNOQ1VZQ1ROQVdZQVZOR1FZR1BORVNZRVJOS11ZS1xOMiRZMCdO"
        b"MCZZNiFONiBZNCNWDg==\n",
    ),
]
VECTOR_IDS = [signal.action for signal, _, _ in VECTORS]


def xor(data: bytes, key: str | bytes = KEY) -> bytes:
    k = key.encode() if isinstance(key, str) else key
    return bytes(b ^ k[i % len(k)] for i, b in enumerate(data))


def wire(jsonText: bytes, key: str = KEY) -> bytes:
    """
    A control line carrying arbitrary JSON text (the spec's reference
    method, independent of the code under test).
    """
    return base64.b64encode(xor(jsonText, key)) + b"\n"


# -- codec: spec vectors ----------------------------------------------------------------------


@pytest.mark.parametrize(("signal", "jsonText", "line"), VECTORS, ids=VECTOR_IDS)
def test_encodeMatchesVector(signal: Signal, jsonText: bytes, line: bytes) -> None:
    assert encodeSignal(KEY, signal) == line
    assert wire(jsonText) == line


@pytest.mark.parametrize(("signal", "jsonText", "line"), VECTORS, ids=VECTOR_IDS)
def test_decodeMatchesVector(signal: Signal, jsonText: bytes, line: bytes) -> None:
    assert decodeSignal(KEY, line) == signal
    assert decodeSignal(KEY, line.rstrip(b"\n")) == signal


def test_pingIntermediateBytes() -> None:
    """
    The XORed bytes of C{ping} begin as the spec's intermediate check says.
    """
    masked = base64.b64decode(encodeSignal(KEY, Signal("ping")))
    assert masked[:16] == bytes.fromhex("08 47 02 11 11 1d 1c 0b 41 48 47 04 1a 0b 04 50")


def test_encodeOmitsEmptyFieldsAndKeepsGoOrder() -> None:
    line = encodeSignal(KEY, Signal("verify", fp="f", id="i", remote="r"))
    assert xor(base64.b64decode(line)) == b'{"action":"verify","remote":"r","id":"i","fp":"f"}'
    line = encodeSignal(KEY, Signal("x", fp="f"))
    assert xor(base64.b64decode(line)) == b'{"action":"x","fp":"f"}'


def test_encodeEscapesLikeGo() -> None:
    """
    Go's encoder is HTML-safe, escapes U+2028/U+2029, uses short escapes for
    the usual control characters, and writes other non-ASCII text as UTF-8.
    """
    line = encodeSignal(KEY, Signal('a<b>&"\\\n\t\b\f\x01\x7f\u2028é\ud800'))
    assert xor(base64.b64decode(line)) == (
        b'{"action":"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\t\\b\\f\\u0001\x7f\\u2028'
        + "é".encode()
        + b'\\ufffd"}'
    )


def test_encodeMultibyteKey() -> None:
    """
    The key is used as UTF-8 bytes.
    """
    key = "ключ"
    line = encodeSignal(key, Signal("ping"))
    assert line == wire(b'{"action":"ping"}', key)
    assert decodeSignal(key, line) == Signal("ping")


def test_emptyKeyRefused() -> None:
    with pytest.raises(ValueError):
        encodeSignal("", Signal("ping"))
    with pytest.raises(ValueError):
        decodeSignal("", b"CEcCEREdHAtBSEcEGgsEUBg=\n")


# -- codec: Go's lenient decoding -------------------------------------------------------------


def test_decodeAnyKeyOrder() -> None:
    line = wire(b'{"fp":"f","id":"1a2b3c4d","remote":"1.2.3.4:5","action":"tcp"}')
    assert decodeSignal(KEY, line) == Signal("tcp", "1.2.3.4:5", "1a2b3c4d", "f")


def test_decodeCaseInsensitiveKeys() -> None:
    line = wire(b'{"ACTION":"udp","Remote":"[::1]:53","iD":"00000001","FP":"x"}')
    assert decodeSignal(KEY, line) == Signal("udp", "[::1]:53", "00000001", "x")


def test_decodeFoldsLikeGo() -> None:
    """
    Go's case folding also maps the dotless and dotted capital I onto I.
    """
    line = wire('{"act\u0131on":"ping","\u0130d":"7"}'.encode())
    assert decodeSignal(KEY, line) == Signal("ping", id="7")


def test_decodeIgnoresUnknownKeys() -> None:
    line = wire(
        b'{"action":"ping","launch":{"a":[1,2.5,true,null]},"n":1e400,"big":' + b"9" * 5000 + b"}"
    )
    assert decodeSignal(KEY, line) == Signal("ping")


def test_decodeLaterDuplicateWins() -> None:
    line = wire(b'{"action":"ping","Action":"pong","id":"a","id":null}')
    assert decodeSignal(KEY, line) == Signal("pong", id="a")


def test_decodeMissingActionAndNull() -> None:
    """
    Go accepts C{{}} and C{null}, leaving the action empty.
    """
    assert decodeSignal(KEY, wire(b"{}")) == Signal("")
    assert decodeSignal(KEY, wire(b"null")) == Signal("")


def test_decodeUnknownAction() -> None:
    assert decodeSignal(KEY, wire(b'{"action":"launch","id":"x"}')) == Signal("launch", id="x")


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"", b"\r"])
def test_decodeLineEndings(ending: bytes) -> None:
    line = encodeSignal(KEY, Signal("pong")).rstrip(b"\n") + ending
    assert decodeSignal(KEY, line) == Signal("pong")


def test_decodeSkipsStrayNewlinesInside() -> None:
    line = encodeSignal(KEY, Signal("flush"))
    assert decodeSignal(KEY, line[:5] + b"\r\n" + line[5:9] + b"\r" + line[9:]) == Signal("flush")


def test_decodeReplacesInvalidUTF8() -> None:
    line = wire(b'{"action":"p\xffng","id":"\\ud800"}')
    assert decodeSignal(KEY, line) == Signal("p\ufffdng", id="\ufffd")


def test_decodeNonZeroPaddingBits() -> None:
    """
    Go's standard decoder is not strict about the unused bits of the last
    quantum; neither are we.
    """
    line = encodeSignal(KEY, Signal("ping"))
    assert line.endswith(b"Bg=\n")
    assert decodeSignal(KEY, line.replace(b"Bg=\n", b"Bh=\n")) == Signal("ping")


@pytest.mark.parametrize(
    "line",
    [
        b"!!!!\n",
        b"CEcCEREdHAtBSEcEGgsEUBg\n",  # padding missing
        b"CEcCEREdHAtBSEcEGgsEUBg==\n",  # too much padding
        b"CEcC EREdHAtBSEcEGgsEUBg=\n",  # a space
        b"CEcC-REdHAtBSEcEGgsEUBg=\n",  # URL alphabet
        b"CEcCEREdHAtBSEcEGgsEUBg=CEcC\n",  # data after padding
        b"=EcCEREdHAtBSEcEGgsEUBg=\n",
    ],
)
def test_decodeRejectsBadBase64(line: bytes) -> None:
    with pytest.raises(SignalError) as info:
        decodeSignal(KEY, line)
    assert info.value.stage == "decode"


@pytest.mark.parametrize(
    "jsonText",
    [
        b"",
        b"not json",
        b'{"action":"ping"',
        b'{"action":"ping"} x',
        b'["ping"]',
        b"[]",
        b'"ping"',
        b"42",
        b"true",
        b'{"action":1}',
        b'{"action":"ping","id":7}',
        b'{"action":"ping","remote":true}',
        b'{"action":"ping","fp":["x"]}',
        b'{"action":"ping","FP":{}}',
        b'{"action":"ping","x":NaN}',
        b'{"action":"ping","x":Infinity}',
        b'{"action":"\x01"}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000,
    ],
)
def test_decodeRejectsBadJSON(jsonText: bytes) -> None:
    with pytest.raises(SignalError) as info:
        decodeSignal(KEY, wire(jsonText))
    assert info.value.stage == "unmarshal"


def test_decodeWrongKey() -> None:
    """
    A line encoded with another key does not decode, and the error does
    not show either key.
    """
    with pytest.raises(SignalError) as info:
        decodeSignal("other-key", encodeSignal(KEY, Signal("ping")))
    assert "other-key" not in str(info.value)
    assert KEY not in str(info.value)


def test_signalErrorIsNodePassError() -> None:
    from nodepass.errors import NodePassError

    assert issubclass(SignalError, NodePassError)


fieldText = st.text(max_size=40)


@given(
    key=st.text(min_size=1, max_size=40),
    action=fieldText,
    remote=fieldText,
    ident=fieldText,
    fp=fieldText,
)
def test_roundTrip(key: str, action: str, remote: str, ident: str, fp: str) -> None:
    signal = Signal(action, remote, ident, fp)
    line = encodeSignal(key, signal)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decodeSignal(key, line)
    # Lone surrogates are not UTF-8: Go writes them as U+FFFD.
    assert decoded == Signal(*(_replaceSurrogates(v) for v in (action, remote, ident, fp)))
    # The JSON inside is what the reference method produces, bar escaping.
    inner = json.loads(xor(base64.b64decode(line), key.encode("utf-8", "surrogatepass")).decode())
    names = ("action", "remote", "id", "fp")
    values = (action, remote, ident, fp)
    assert list(inner) == [n for n, v in zip(names, values, strict=True) if v or n == "action"]


def _replaceSurrogates(text: str) -> str:
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


# -- the channel ------------------------------------------------------------------------------


@define(slots=False)
class Recorder:
    """
    A L{ControlHandler} that records what it is told.
    """

    signals: list[Signal] = field(factory=list)
    pongs: list[int] = field(factory=list)
    ticks: int = 0
    flushAt: set[int] = field(factory=set)
    failures: list[str] = field(factory=list)

    def signal(self, signal: Signal) -> None:
        self.signals.append(signal)

    def pong(self, pingMs: int) -> None:
        self.pongs.append(pingMs)

    def tick(self) -> bool:
        self.ticks += 1
        return self.ticks in self.flushAt

    def controlFailed(self, reason: str) -> None:
        self.failures.append(reason)


@define
class Setup:
    clock: Clock
    transport: StringTransport
    handler: Recorder
    channel: ControlChannel

    def sent(self) -> list[str]:
        """
        The actions written since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return [decodeSignal(KEY, line).action for line in data.splitlines()]


def setup(start: bool = True, maxLine: int = 65536) -> Setup:
    clock = Clock()
    clock.advance(1000)
    transport = StringTransport()
    handler = Recorder()
    channel = ControlChannel(KEY, clock, transport.write, handler, 5.0, maxLine)
    if start:
        channel.start()
    return Setup(clock, transport, handler, channel)


PING = encodeSignal(KEY, Signal("ping"))
PONG = encodeSignal(KEY, Signal("pong"))


def test_startPingsAtOnce() -> None:
    s = setup(start=False)
    assert s.transport.value() == b""
    assert s.channel.lastPingAt is None
    s.channel.start()
    assert s.transport.value() == PING
    assert s.channel.lastPingAt == 1000
    assert s.channel.running


def test_eachMessageIsOneWrite() -> None:
    writes: list[bytes] = []
    channel = ControlChannel(KEY, Clock(), writes.append, Recorder())
    channel.send(Signal("tcp", "1.2.3.4:5", "1a2b3c4d"))
    channel.send(Signal("flush"))
    assert writes == [encodeSignal(KEY, Signal("tcp", "1.2.3.4:5", "1a2b3c4d")), VECTORS[2][2]]


def test_pingGetsPong() -> None:
    s = setup()
    s.transport.clear()
    s.channel.dataReceived(PING)
    assert s.transport.value() == PONG
    assert s.handler.signals == [] and s.handler.pongs == []


def test_pongReportsMilliseconds() -> None:
    s = setup()
    s.clock.advance(0.003)
    s.channel.dataReceived(PONG)
    assert s.handler.pongs == [3]
    s.clock.advance(0.0405)
    s.channel.dataReceived(PONG)
    assert s.handler.pongs == [3, 43]


def test_pongMeasuresFromLatestPing() -> None:
    s = setup()
    s.clock.advance(5)
    assert s.sent() == ["ping", "ping"]
    assert s.channel.lastPingAt == 1005
    s.clock.advance(0.25)
    s.channel.dataReceived(PONG)
    assert s.handler.pongs == [250]


def test_pongBeforeAnyPing() -> None:
    """
    Bytes that arrive before L{ControlChannel.start} are handled; a pong
    with no ping of ours reports 0 ms.
    """
    s = setup(start=False)
    s.channel.dataReceived(PONG)
    assert s.handler.pongs == [0]


def test_otherSignalsGoToHandler() -> None:
    s = setup()
    tcp = Signal("tcp", "1.2.3.4:5", "1a2b3c4d")
    lines = [tcp, Signal("flush"), Signal("verify", id="0badf00d", fp=FP), Signal("launch")]
    s.channel.dataReceived(b"".join(encodeSignal(KEY, sig) for sig in lines))
    assert s.handler.signals == lines


def test_ticksThenPings() -> None:
    s = setup()
    assert s.sent() == ["ping"]
    s.clock.advance(4.999)
    assert s.sent() == [] and s.handler.ticks == 0
    s.clock.advance(0.001)
    assert s.handler.ticks == 1
    assert s.sent() == ["ping"]
    assert s.channel.lastPingAt == 1005
    for n in range(2, 8):
        s.channel.dataReceived(PONG)  # the peer's replies keep the channel alive
        s.clock.advance(5)
        assert s.handler.ticks == n
        assert s.sent() == ["ping"]


def test_tickAsksBeforePinging() -> None:
    """
    The handler's C{tick} runs before the ping is written, so it can act on
    the pool first.
    """
    s = setup()
    s.transport.clear()
    seen: list[bytes] = []
    original = s.handler.tick

    def tick() -> bool:
        seen.append(s.transport.value())
        return original()

    s.handler.tick = tick  # type: ignore[method-assign]
    s.clock.advance(5)
    assert seen == [b""]
    assert s.sent() == ["ping"]


def test_flushReplacesPing() -> None:
    """
    When C{tick} says so, the channel sends C{flush} and no ping; like Go it
    then waits a tick and pings without asking again.
    """
    s = setup()
    s.handler.flushAt = {2, 3}
    s.sent()

    def step() -> None:
        s.channel.dataReceived(PING)  # the peer's pings keep the channel alive
        s.clock.advance(5)

    step()
    assert s.sent() == ["pong", "ping"]
    step()
    assert s.handler.ticks == 2
    assert s.sent() == ["pong", "flush"]
    assert s.channel.lastPingAt == 1005
    step()
    assert s.handler.ticks == 2
    assert s.sent() == ["pong", "ping"]
    assert s.channel.lastPingAt == 1015
    step()
    assert s.handler.ticks == 3
    assert s.sent() == ["pong", "flush"]
    step()
    step()
    assert s.handler.ticks == 4
    assert s.sent() == ["pong", "ping", "pong", "ping"]
    assert s.handler.failures == []


def test_partialLines() -> None:
    s = setup()
    line = encodeSignal(KEY, Signal("tcp", "1.2.3.4:5", "1a2b3c4d"))
    for index in range(len(line)):
        s.channel.dataReceived(line[index : index + 1])
    assert s.handler.signals == [Signal("tcp", "1.2.3.4:5", "1a2b3c4d")]
    s.transport.clear()
    s.channel.dataReceived(PING[:10])
    assert s.transport.value() == b""
    s.channel.dataReceived(PING[10:] + PING[:3])
    assert s.transport.value() == PONG
    s.channel.dataReceived(PING[3:])
    assert s.transport.value() == PONG + PONG


def test_severalLinesInOneCall() -> None:
    s = setup()
    s.transport.clear()
    s.clock.advance(0.007)
    s.channel.dataReceived(PING + PONG + encodeSignal(KEY, Signal("flush")) + PING)
    assert s.transport.value() == PONG + PONG
    assert s.handler.pongs == [7]
    assert s.handler.signals == [Signal("flush")]


def test_crlfLines() -> None:
    s = setup()
    s.channel.dataReceived(PONG.replace(b"\n", b"\r\n") * 2)
    assert s.handler.pongs == [0, 0]


def test_malformedLineSkippedWithWarning() -> None:
    s = setup()
    with capturedLogs() as events:
        s.channel.dataReceived(b"%%%\n" + wire(b"[1]") + encodeSignal(KEY, Signal("flush")))
    assert s.handler.signals == [Signal("flush")]
    assert s.handler.failures == []
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2
    assert warnings[0]["log_format"].startswith("commonQueue: ")
    from twisted.logger import formatEvent

    assert formatEvent(warnings[0]).startswith("commonQueue: decode signal failed: ")
    assert formatEvent(warnings[1]).startswith("commonQueue: unmarshal signal failed: ")
    assert all(KEY not in formatEvent(e) for e in events)


def test_emptyLineIsMalformed() -> None:
    s = setup()
    with capturedLogs() as events:
        s.channel.dataReceived(b"\n" + PONG)
    assert s.handler.pongs == [0]
    assert [e["log_level"] for e in events] == [LogLevel.warn]


def test_silenceFails() -> None:
    s = setup()
    s.clock.advance(14.999)
    assert s.handler.failures == []
    s.clock.advance(0.001)
    assert s.handler.failures == ["control connection timed out after 15s without data"]
    assert not s.channel.running
    assert s.clock.getDelayedCalls() == []
    s.transport.clear()
    s.clock.advance(100)
    s.channel.dataReceived(PING + encodeSignal(KEY, Signal("flush")))
    assert s.handler.failures == ["control connection timed out after 15s without data"]
    assert s.handler.signals == []
    assert s.transport.value() == b""


def test_timeoutFollowsReportInterval() -> None:
    clock = Clock()
    handler = Recorder()
    channel = ControlChannel(KEY, clock, lambda data: None, handler, reportInterval=0.5)
    channel.start()
    clock.advance(1.5)
    assert handler.failures == ["control connection timed out after 1.5s without data"]


def test_dataKeepsAlive() -> None:
    s = setup()
    for _ in range(20):
        s.clock.advance(5)
        s.channel.dataReceived(PING)
    assert s.handler.failures == []
    s.clock.advance(14)
    s.channel.dataReceived(b"x")  # any byte counts, even half a line
    s.clock.advance(14)
    assert s.handler.failures == []
    s.clock.advance(1)
    assert len(s.handler.failures) == 1


def test_oversizeLineFails() -> None:
    s = setup(maxLine=100)
    s.channel.dataReceived(b"A" * 100)
    assert s.handler.failures == []
    s.channel.dataReceived(b"A")
    assert s.handler.failures == ["control line too long"]
    assert s.clock.getDelayedCalls() == []


def test_oversizeCompleteLineFails() -> None:
    s = setup(maxLine=100)
    s.channel.dataReceived(PONG + b"A" * 101 + b"\n" + PONG)
    assert s.handler.pongs == [0]
    assert s.handler.failures == ["control line too long"]
    s.channel.dataReceived(b"A" * 1000)
    assert s.handler.failures == ["control line too long"]


def test_lineOfExactlyMaxLineAccepted() -> None:
    s = setup(maxLine=len(PONG) - 1)
    s.channel.dataReceived(PONG + PONG)
    assert s.handler.pongs == [0, 0]
    assert s.handler.failures == []


def test_stopCancelsTimers() -> None:
    s = setup()
    assert s.clock.getDelayedCalls() != []
    s.channel.stop()
    assert s.clock.getDelayedCalls() == []
    assert not s.channel.running
    s.channel.stop()
    s.transport.clear()
    s.clock.advance(60)
    s.channel.dataReceived(PING)
    assert s.transport.value() == b""
    assert s.handler.failures == [] and s.handler.ticks == 0
    s.channel.start()
    assert s.transport.value() == b""


def test_stopFromHandler() -> None:
    """
    A handler that stops the channel in the middle of a batch of lines sees
    no more of them.
    """
    s = setup()

    def signal(sig: Signal) -> None:
        s.handler.signals.append(sig)
        s.channel.stop()

    s.handler.signal = signal  # type: ignore[method-assign,assignment]
    s.channel.dataReceived(encodeSignal(KEY, Signal("flush")) * 3)
    assert s.handler.signals == [Signal("flush")]
    assert s.clock.getDelayedCalls() == []


def test_startTwice() -> None:
    s = setup()
    s.channel.start()
    assert s.sent() == ["ping"]
    assert len(s.clock.getDelayedCalls()) == 2


def test_handlerErrorsAreLoggedNotFatal() -> None:
    s = setup()

    def boom(*args: object) -> bool:
        raise RuntimeError("boom")

    s.handler.signal = boom  # type: ignore[method-assign,assignment]
    s.handler.tick = boom  # type: ignore[method-assign,assignment]
    s.sent()
    with capturedLogs() as events:
        s.channel.dataReceived(encodeSignal(KEY, Signal("flush")) + PING)
        s.clock.advance(5)
    assert s.sent() == ["pong", "ping"]
    assert [e["log_level"] for e in events] == [LogLevel.critical, LogLevel.critical]
    assert s.handler.failures == []


def test_reprHidesKey() -> None:
    s = setup()
    assert KEY not in repr(s.channel)


@pytest.mark.parametrize(
    "kwargs", [{"key": ""}, {"reportInterval": 0}, {"reportInterval": -1}, {"maxLine": 0}]
)
def test_badArguments(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "key": KEY,
        "clock": Clock(),
        "write": lambda data: None,
        "handler": Recorder(),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        ControlChannel(**arguments)  # type: ignore[arg-type]
