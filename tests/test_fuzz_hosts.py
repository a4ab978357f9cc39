"""
Property tests for an instance host's AMP channel (L{nodepass.master.host.HostProtocol}
speaking L{nodepass.master.hostproto}): any sequence of well-framed boxes (known and unknown
commands, arguments missing, misspelt, not UTF-8, not numbers; answers and boxes that are
none of AMP's kinds) gets exactly one answer or error per question, keeps the channel open
and the host serving (a Ping answers afterwards, with the true instance count); any bytes
at all never raise out of the protocol and are kept within AMP's framing limits.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.protocols import amp

from nodepass.master.host import HostProtocol, settingsToJSON
from nodepass.settings import Settings
from tests.fakes import InstanceReactor

FORWARD = "client://127.0.0.1:18080/127.0.0.1:18081?mode=1&log=info"
COMMANDS = [
    b"StartInstance",
    b"StopInstance",
    b"ResetCounters",
    b"ListConnections",
    b"CloseConnection",
    b"Ping",
    b"InstanceLines",
    b"InstanceExited",
    b"Nope",
    b"",
]
KEYS = [b"id", b"url", b"settings", b"force", b"start", b"connection", b"lines", b"code", b"x"]
VALUES = st.one_of(
    st.sampled_from(
        [
            b"a1",
            b"",
            b"\xff\xfe",
            b"True",
            b"False",
            b"maybe",
            b"0",
            b"-1",
            b"99999999999999999999999",
            b"1.5",
            b"{}",
            b"[]",
            b"null",
            b'{"reportInterval": "x"}',
            b'{"reportInterval": -1}',
            FORWARD.encode(),
            b"client://",
            b"server://127.0.0.1:18090/127.0.0.1:1?log=none",
            b"\x00\x03abc\x00\x00",
        ]
    ),
    st.binary(max_size=24),
)


def _box(**values: bytes) -> amp.AmpBox:
    box = amp.AmpBox()
    for name, value in values.items():
        box[name.encode()] = value
    return box


@st.composite
def boxes(draw: Any) -> amp.AmpBox:
    kind = draw(st.integers(0, 9))
    box = amp.AmpBox()
    if kind == 0:
        # Not a command: an answer, an error, or nothing AMP knows.
        key = draw(st.sampled_from([b"_answer", b"_error", b"other"]))
        box[key] = draw(VALUES)
        if key == b"_error":
            box[b"_error_code"] = b"X"
            box[b"_error_description"] = b"y"
        return box
    box[b"_command"] = draw(st.sampled_from(COMMANDS))
    if draw(st.integers(0, 4)):
        box[b"_ask"] = b"%d" % draw(st.integers(0, 10**6))
    for key, value in draw(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=5)):
        box[key] = value
    if box[b"_command"] == b"StartInstance" and draw(st.booleans()):
        box[b"id"] = b"a%d" % draw(st.integers(0, 3))
        box[b"url"] = FORWARD.encode()
        box[b"settings"] = settingsToJSON(Settings()).encode()
    return box


def _frames(data: bytes) -> list[dict[bytes, bytes]]:
    """
    The boxes in what the host wrote.
    """
    out: list[dict[bytes, bytes]] = []
    box: dict[bytes, bytes] = {}
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from("!H", data, offset)
        offset += 2
        if size == 0:
            out.append(box)
            box = {}
            continue
        key = data[offset : offset + size]
        offset += size
        (size,) = struct.unpack_from("!H", data, offset)
        offset += 2
        box[key] = data[offset : offset + size]
        offset += size
    assert box == {}, "a box the host left unfinished"
    return out


def _host() -> tuple[HostProtocol, StringTransport, list[LogEvent]]:
    host = HostProtocol(InstanceReactor())
    transport = StringTransport()
    host.makeConnection(transport)
    return host, transport, []


def _unexpected() -> tuple[list[LogEvent], Any]:
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
    return seen, observe


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(boxes(), max_size=8))
@example([_box(_command=b"StartInstance", _ask=b"1", id=b"\xff", url=b"x", settings=b"")])
@example([_box(_command=b"ListConnections", _ask=b"1", id=b"a", start=b"x")])
@example([_box(_command=b"StopInstance", _ask=b"1", id=b"a", force=b"maybe")])
@example([_box(_command=b"StopInstance", id=b"a")])
@example([_box(_command=b"Ping", _ask=b"1"), _box(_answer=b"7")])
@example([_box(other=b"1")])
@example([_box(_command=b"ResetCounters", _ask=b"1")])
def test_badBoxesErrTheCommandNeverTheHost(sequence: list[amp.AmpBox]) -> None:
    """
    Each question gets exactly one answer or error box with its tag, in order; boxes that
    ask nothing get nothing; the channel stays open; then a Ping is answered with the number
    of instances the host really holds.
    """
    host, transport, _ = _host()
    failures, observer = _unexpected()
    try:
        for box in sequence:
            host.dataReceived(box.serialize())
            assert not transport.disconnecting, box
        ping = amp.AmpBox(_command=b"Ping", _ask=b"ping")
        host.dataReceived(ping.serialize())
    finally:
        globalLogPublisher.removeObserver(observer)
    replies = [
        frame for frame in _frames(transport.value()) if b"_answer" in frame or b"_error" in frame
    ]
    asked = [box[b"_ask"] for box in sequence if b"_command" in box and b"_ask" in box]
    tags = [frame.get(b"_answer", frame.get(b"_error", b"")) for frame in replies]
    assert sorted(tags) == sorted([*asked, b"ping"])
    last = next(frame for frame in replies if frame.get(b"_answer") == b"ping")
    assert int(last[b"instances"]) == len(host.slots)
    assert not transport.disconnecting
    # Failures are logged only for what the host itself did wrong; bad boxes are warnings.
    assert [event.get("log_format") for event in failures] == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(boxes(), max_size=3)
        .map(lambda bs: b"".join(b.serialize() for b in bs))
        .flatmap(
            lambda data: st.integers(0, max(0, len(data) - 1)).map(
                lambda cut: data[:cut] + b"\xff" + data[cut + 1 :] if data else data
            )
        ),
        st.just(b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00"),
    ),
    st.lists(st.integers(0, 1 << 20), max_size=6),
)
def test_anyBytesNeverRaise(data: bytes, cuts: list[int]) -> None:
    """
    Any bytes, in any chunks: nothing raises out of the protocol; the channel is either
    closed (AMP's framing cannot be recovered) or still keeps no more than one key or value
    in hand.
    """
    host, transport, _ = _host()
    positions = sorted(cut % (len(data) + 1) for cut in cuts)
    start = 0
    for cut in [*positions, len(data)]:
        if transport.disconnecting:
            break
        host.dataReceived(data[start:cut])
        start = cut
        # AMP's reader keeps the bytes of one unfinished key or value (plus its length).
        kept = len(host._unprocessed) - host._compatibilityOffset
        assert kept <= 2 + 0xFFFF
