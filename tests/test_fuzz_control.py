"""
Property tests for L{nodepass.tunnel.control}: any control line decodes to a L{Signal} or a
L{SignalError} (never another exception), any signal survives the codec, and a
L{ControlChannel} fed any bytes in any chunks hands over exactly the good lines in order,
skips the bad ones, keeps at most one line's worth of bytes, and ends (once) on a line that
is too long.
"""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from nodepass.tunnel.control import (
    ControlChannel,
    Signal,
    SignalError,
    decodeSignal,
    encodeSignal,
)

KEY = "fuzz-key"
MAX_LINE = 512
#: The channels' logger: skipped lines are logged, and nobody needs to read them here.
QUIET = Logger(observer=lambda event: None)  # type: ignore[arg-type]

KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k.encode("utf-8", "surrogatepass"))
# Field text as our peers and Go's write it: any text without lone surrogates (those become
# U+FFFD on the wire, as in Go).
FIELD_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=24)
SIGNALS = st.builds(
    Signal,
    action=st.one_of(
        st.sampled_from(["ping", "pong", "tcp", "udp", "verify", "flush", ""]), FIELD_TEXT
    ),
    remote=st.one_of(st.sampled_from(["203.0.113.9:40000", "[2001:db8::1]:5", ""]), FIELD_TEXT),
    id=st.one_of(st.sampled_from(["00000000", "1a2b3c4d", ""]), FIELD_TEXT),
    fp=st.one_of(st.just(""), FIELD_TEXT),
)


def _masked(key: str, data: bytes) -> bytes:
    """
    C{data} XORed with the key and base64-encoded: a line whose inner JSON is C{data}.
    """
    keyBytes = key.encode("utf-8")
    return base64.b64encode(bytes(b ^ keyBytes[i % len(keyBytes)] for i, b in enumerate(data)))


INNER_JSON = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"{}",
            b"null",
            b"[]",
            b'"x"',
            b"1e999",
            b'{"action":1}',
            b'{"action":null,"id":"x"}',
            b'{"ACTION":"tcp","Remote":"a:1","ID":"00000000"}',
            b'{"action":"tcp","action":"udp"}',
            b'{"\xc5\xbfomething":"x"}',
            b'{"action":"\xff\xfe"}',
            b'{"action":"\\ud800"}',
            b'{"action":' + b"[" * 5000 + b"]" * 5000 + b"}",
            b"[" * 100_000,
            b'{"action":"tcp"} trailing',
            b'{"action":NaN}',
        ]
    ),
)
LINES = st.one_of(
    st.binary(max_size=60),
    INNER_JSON.map(lambda inner: _masked(KEY, inner)),
    st.sampled_from([b"", b"=", b"====", b"AAA", b"AA==\r", b"A===", b"QUJD\x00", b"****"]),
)


@settings(max_examples=200, deadline=None)
@given(KEYS, LINES)
@example(KEY, _masked(KEY, b"[" * 100_000))
@example(KEY, _masked(KEY, b'{"id":' + b"9" * 10_000 + b"}"))
def test_anyLineIsASignalOrASignalError(key: str, line: bytes) -> None:
    """
    Any line, under any key: a L{Signal} whose fields are text, or a L{SignalError} naming
    its stage, whose message never carries the key.
    """
    try:
        signal = decodeSignal(key, line)
    except SignalError as error:
        assert error.stage in ("decode", "unmarshal")
        if len(key) > 3:
            assert key not in str(error)
        return
    for value in (signal.action, signal.remote, signal.id, signal.fp):
        assert isinstance(value, str)
        value.encode("utf-8")  # never a lone surrogate


@settings(max_examples=200, deadline=None)
@given(KEYS, SIGNALS)
def test_anySignalSurvivesTheCodec(key: str, signal: Signal) -> None:
    line = encodeSignal(key, signal)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decodeSignal(key, line) == signal
    assert decodeSignal(key, line[:-1]) == signal


# -- the channel ----------------------------------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.pongs = 0
        self.failures: list[str] = []

    def signal(self, signal: Signal) -> None:
        self.signals.append(signal)

    def pong(self, pingMs: int) -> None:
        assert pingMs >= 0
        self.pongs += 1

    def tick(self) -> bool:
        return False

    def controlFailed(self, reason: str) -> None:
        self.failures.append(reason)


STREAM_LINES = st.lists(
    st.one_of(
        SIGNALS.map(lambda s: encodeSignal(KEY, s)[:-1]),
        LINES.map(lambda line: line.replace(b"\n", b"")),
        st.integers(MAX_LINE - 2, MAX_LINE + 2).map(lambda n: b"A" * n),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    STREAM_LINES,
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.lists(st.integers(0, 1 << 20), max_size=10),
)
@example([b"A" * (MAX_LINE + 1)], b"\n", False, [])
@example([b"A" * (MAX_LINE * 3)], b"\n", False, [1, 2, 3])
def test_channelHandsOverTheGoodLinesAndKeepsLittle(
    lines: list[bytes], ending: bytes, finished: bool, cuts: list[int]
) -> None:
    """
    A stream of lines (good signals, garbage, lines around the length limit), cut anywhere:
    the handler gets every decodable line's signal in order (a ping is answered with a pong
    instead), undecodable lines are skipped, the buffer never holds more than C{maxLine}
    bytes, and the first line over the limit ends the channel with one C{controlFailed},
    after which nothing more is handed over.
    """
    stream = ending.join(lines) + (ending if finished else b"")
    positions = sorted(cut % (len(stream) + 1) for cut in cuts)
    clock = Clock()
    written: list[bytes] = []
    handler = Handler()
    channel = ControlChannel(
        KEY,
        clock,
        written.append,
        handler,
        maxLine=MAX_LINE,
        log=QUIET,
    )
    channel.start()
    start = 0
    for cut in [*positions, len(stream)]:
        channel.dataReceived(stream[start:cut])
        start = cut
        assert len(channel._buffer) <= MAX_LINE

    # What the channel should have done, line by line.
    expected: list[Signal] = []
    pongs = 0
    pings = 0
    failed = False
    complete = lines if finished else lines[:-1]
    for line in complete:
        if len(line) + len(ending) - 1 > MAX_LINE:
            failed = True
            break
        try:
            signal = decodeSignal(KEY, line)
        except SignalError:
            continue
        if signal.action == "ping":
            pings += 1
        elif signal.action == "pong":
            pongs += 1
        else:
            expected.append(signal)
    if not failed and not finished and lines and len(lines[-1]) > MAX_LINE:
        failed = True  # an unfinished line already over the limit
    assert handler.failures == (["control line too long"] if failed else [])
    assert channel.running is not failed
    if not failed:
        assert handler.signals == expected
        assert handler.pongs == pongs
        answered = [line for line in written[1:] if decodeSignal(KEY, line).action == "pong"]
        assert len(answered) == pings
    else:
        assert handler.signals == expected[: len(handler.signals)]
        assert channel._buffer == b""
    before = (list(handler.signals), handler.pongs)
    channel.dataReceived(encodeSignal(KEY, Signal(action="tcp", id="00000000")))
    if failed:
        assert (handler.signals, handler.pongs) == before


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=4096), st.lists(st.integers(0, 1 << 20), max_size=10))
def test_channelNeverRaisesOnBytes(data: bytes, cuts: list[int]) -> None:
    """
    Raw bytes, any chunks: no exception, the buffer bounded, at most one failure.
    """
    handler = Handler()
    channel = ControlChannel(KEY, Clock(), lambda data: None, handler, maxLine=64, log=QUIET)
    channel.start()
    positions = sorted(cut % (len(data) + 1) for cut in cuts)
    start = 0
    for cut in [*positions, len(data)]:
        channel.dataReceived(data[start:cut])
        start = cut
        assert len(channel._buffer) <= 64
    assert len(handler.failures) <= 1
