"""
Property tests for L{nodepass.tunnel.handshake}, both sides.

Client side: any answer body ends in a L{TunnelConfig} or a L{HandshakeError}, and any
bytes a "server" sends back through a real L{Agent} do too; a config our server encodes
decodes to itself.  Server side: any bytes a "client" sends, in any chunks, end in exactly
one answer and a close, or a close alone, never an exception; what the channel keeps is
bounded by the head limits of the module whatever arrives; only the right token is ever
accepted.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from nodepass.log import defaultLogger
from nodepass.throttle import FailureThrottle
from nodepass.tunnel.handshake import (
    IDLE_TIMEOUT,
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINE,
    MAX_RESPONSE,
    HandshakeError,
    HandshakeResource,
    TunnelConfig,
    clientHandshake,
    decodeConfig,
    encodeConfig,
    handshakeFactory,
    token,
)

KEY = "fuzz-key"
TOKEN = token(KEY).encode()
PEER = IPv4Address("TCP", "203.0.113.10", 40001)
CONFIG = TunnelConfig(flow="-", max=1024, tls="1", type="0")

#: The answers the handshake server gives, and the body of each but the 200 and twisted.web's
#: own 400 (which has none).
ANSWERS = {
    b"200": None,
    b"400": b"",
    b"401": b"Unauthorized\n",
    b"404": b"Not Found\n",
    b"405": b"Method Not Allowed\n",
    b"429": b"Too Many Requests\n",
    b"503": b"handshake already completed\n",
}


def _failures() -> tuple[list[LogEvent], Any]:
    """
    Every log event carrying a failure, until the returned observer is removed.
    """
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
    return seen, observe


# -- the body: decodeConfig / encodeConfig -------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["-", "+", "0", "1", "2", "3", "quic", "A"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(
    [
        "flow",
        "max",
        "tls",
        "type",
        "ext",
        "auth",
        "FLOW",
        "Max",
        "TLS",
        "tYpe",
        "other",
        "\u017flow",
    ]
)


@st.composite
def configBodies(draw: Any) -> bytes:
    """
    A JSON object whose members are mostly the config's fields, with any values, in any
    order and case, sometimes repeated, with leading space and trailing bytes.
    """
    members = draw(
        st.lists(
            st.tuples(
                FIELD_NAMES,
                st.one_of(
                    JSON_VALUES,
                    st.sampled_from(["-", "+", "0", "1", "2"]),
                    st.integers(0, 2**63 + 5),
                ),
            ),
            max_size=7,
        )
    )
    text = "{" + ",".join(f"{json.dumps(n)}:{json.dumps(v)}" for n, v in members) + "}"
    before: str = draw(st.sampled_from(["", " ", "\n\t", "\ufeff"]))
    after: str = draw(st.sampled_from(["", "\n", "garbage", "}", "\n{}"]))
    return (before + text + after).encode("utf-8")


def _decoded(body: bytes) -> TunnelConfig | HandshakeError:
    try:
        return decodeConfig(body)
    except HandshakeError as error:
        return error


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=80), configBodies()))
@example(b"[" * 100_000)
@example(b'{"flow":"-","max":1024,"tls":"1","type":"0","x":' + b"[" * 50_000 + b"}")
@example(b'{"flow":"-","max":1e400,"tls":"1","type":"0"}')
@example(b'{"flow":"-","max":' + b"9" * 5000 + b',"tls":"1","type":"0"}')
@example(b'{"flow":"-","max":NaN,"tls":"1","type":"0"}')
@example(b"\xff\xfe")
def test_anyBodyIsAConfigOrAHandshakeError(body: bytes) -> None:
    """
    Any answer body (at most L{MAX_RESPONSE} bytes reach the decoder): a valid
    L{TunnelConfig} or a one-line L{HandshakeError}, never another exception.
    """
    result = _decoded(body[:MAX_RESPONSE])
    if isinstance(result, HandshakeError):
        assert "\n" not in str(result)
        assert str(result).startswith("tunnelHandshake: ")
        return
    assert result.flow in ("-", "+")
    assert result.tls in ("0", "1", "2")
    assert 0 <= result.max < 2**63
    # What was decoded is what a server of ours would say: it encodes and decodes to itself.
    assert decodeConfig(encodeConfig(result)) == result


CONFIGS = st.builds(
    TunnelConfig,
    flow=st.sampled_from(["-", "+"]),
    max=st.integers(0, 2**63 - 1),
    tls=st.sampled_from(["0", "1", "2"]),
    type=st.one_of(
        st.sampled_from(["0", "1", "2", "3"]),
        st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True),
    ),
    ext=st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(CONFIGS)
def test_encodedConfigDecodesToItself(config: TunnelConfig) -> None:
    body = encodeConfig(config)
    assert body.endswith(b"}\n") and body.count(b"\n") == 1
    assert decodeConfig(body) == config


# -- the server: HandshakeResource behind handshakeFactory ----------------------------------


class Recorder:
    def __init__(self) -> None:
        self.offers: list[bool] = []
        self.accepted: list[tuple[str, TunnelConfig]] = []

    def announce(self, ext: bool) -> TunnelConfig:
        self.offers.append(ext)
        return attrs.evolve(CONFIG, ext=ext)

    def onAccepted(self, peer: str, config: TunnelConfig) -> None:
        self.accepted.append((peer, config))


def _request(draw: Any) -> bytes:
    """
    An HTTP request, plausible enough to reach the resource most of the time: method, path,
    version, headers (the token right, wrong or missing, the extension header, odd ones,
    lengths and encodings), and a body.
    """
    method = draw(st.sampled_from([b"GET", b"GET", b"POST", b"HEAD", b"get", b"", b"G\x00T"]))
    path = draw(st.sampled_from([b"/", b"/", b"/x", b"", b"//", b"/?a=b", b"*", b"/%00"]))
    version = draw(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1", b""])
    )
    authorization = draw(
        st.sampled_from(
            [
                b"Bearer " + TOKEN,
                b"Bearer " + TOKEN,
                b"bearer " + TOKEN,
                b"Bearer  " + TOKEN,
                b"Bearer " + TOKEN[:-1],
                b"Bearer " + token("other").encode(),
                b"Basic eDp5",
                b"",
                None,
            ]
        )
    )
    headers = [b"Host: none"]
    if authorization is not None:
        headers.append(b"Authorization: " + authorization)
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [
                        b"X-NodePass-Ext: 1",
                        b"X-NodePass-Ext: 2",
                        b"Content-Length: 5",
                        b"Content-Length: -1",
                        b"Content-Length: 99999999999999999999",
                        b"Content-Length: 1, 2",
                        b"Transfer-Encoding: chunked",
                        b"Transfer-Encoding: gzip",
                        b" folded",
                        b"NoColon",
                        b": empty name",
                        b"Authorization: Bearer " + TOKEN,
                        b"X-Big: " + b"b" * 2000,
                    ]
                ),
                st.binary(max_size=20),
            ),
            max_size=6,
        )
    )
    head = b"%s %s %s\r\n" % (method, path, version) + b"\r\n".join(headers + extra) + b"\r\n\r\n"
    body = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=30),
            st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"0\r\n\r\n"]),
        )
    )
    request: bytes = head + body
    return request


@st.composite
def requestBytes(draw: Any) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        garbage: bytes = draw(st.binary(max_size=200))
        return garbage
    if kind == 1:
        # Heads far over the limits: one long line, many lines, a huge body.
        size: int = draw(st.sampled_from([MAX_HEADER_LINE + 1, MAX_HEADER_BYTES * 2, MAX_BODY * 2]))
        filler: bytes = draw(st.sampled_from([b"a", b"\r\n", b"X: y\r\n", b"\n"]))
        return b"GET / HTTP/1.1\r\nContent-Length: 999999\r\n" + filler * (size // len(filler))
    data = _request(draw)
    if kind == 2:
        # Two requests back to back on one connection.
        data += _request(draw)
    if kind == 3 and data:
        # One byte flipped somewhere.
        index = draw(st.integers(0, len(data) - 1))
        data = data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
    return data


CUTS = st.lists(st.integers(0, 1 << 20), max_size=8)


def _chunks(data: bytes, positions: list[int]) -> list[bytes]:
    """
    C{data} cut at C{positions} (taken modulo its length): what arrives, read by read.
    """
    cuts = sorted(position % (len(data) + 1) for position in positions)
    pieces, start = [], 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    return pieces


class PeerTransport(StringTransport):
    """
    A L{StringTransport} that, like a real TCP transport, lets a producer be unregistered
    twice (twisted.web's channel does so when a bad request closes it while it is closing).
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def _kept(protocol: Any) -> int:
    """
    The bytes a handshake channel holds on to: its line buffer, what it keeps of a request
    being handled, and any request body.
    """
    kept = len(getattr(protocol, "_buffer", b""))
    kept += sum(map(len, getattr(protocol, "_dataBuffer", [])))
    header = getattr(protocol, "_HTTPChannel__header", b"")
    kept += len(header)
    for request in getattr(protocol, "requests", []):
        content = getattr(request, "content", None)
        if content is not None and hasattr(content, "getbuffer"):
            kept += len(content.getbuffer())
    return kept


def _answers(written: bytes) -> list[bytes]:
    return [line.split(b" ")[1] for line in written.split(b"\r\n") if line.startswith(b"HTTP/1.")]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(requestBytes(), CUTS, st.booleans())
@example(raw=b"GET * HTTP/1.1\r\nHost: none\r\n\r\n", cuts=[], throttled=False)
@example(raw=b"OPTIONS * HTTP/1.1\r\nHost: none\r\n\r\n", cuts=[], throttled=False)
def test_serverAnswersOrClosesAndKeepsLittle(raw: bytes, cuts: list[int], throttled: bool) -> None:
    """
    Any bytes in any chunks, from a peer whose transport stops when paused: the channel
    never raises or logs a failure, keeps at most a head line's worth (plus one chunk and
    twisted.web's pipelining allowance) of what arrives, and ends the connection once its
    idle time has passed, having written at most one answer: one of the handshake's own, a
    200 only for the right token on C{GET /}.
    """
    chunks = _chunks(raw, cuts)
    clock = Clock()
    recorder = Recorder()
    throttle = (
        FailureThrottle(clock, defaultLogger(), "bad tunnel keys", slowAfter=1, blockAfter=3)
        if throttled
        else None
    )
    resource = HandshakeResource(
        KEY, recorder.announce, recorder.onAccepted, throttle=throttle, clock=clock
    )
    site = handshakeFactory(resource, clock)
    failures, observer = _failures()
    try:
        protocol = site.buildProtocol(PEER)
        transport = PeerTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        biggest = max(map(len, chunks), default=0)
        for chunk in chunks:
            if transport.disconnecting or transport.producerState != "producing":
                break
            protocol.dataReceived(chunk)
            assert _kept(protocol) <= MAX_HEADER_LINE + 2 * biggest + 65536
        clock.advance(IDLE_TIMEOUT + 5)
        clock.advance(IDLE_TIMEOUT + 5)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []
    written = transport.value()
    answers = _answers(written)
    assert transport.disconnecting, written[:200]
    # Never twisted.web's Server header: it would tell a scanner the Twisted version.
    assert b"TwistedWeb" not in written, written[:400]
    assert len(answers) <= 1, written[:400]
    if answers:
        assert written.startswith(b"HTTP/1.")
        (code,) = answers
        assert code in ANSWERS, written[:200]
        body = written.partition(b"\r\n\r\n")[2]
        if raw.startswith(b"HEAD "):
            # twisted.web sends no body for HEAD (as Go's server does).
            assert body == b""
        elif ANSWERS[code] is not None:
            assert body == ANSWERS[code]
        if code == b"200":
            assert b"Bearer " + TOKEN in raw
            assert raw.startswith(b"HEAD ") or decodeConfig(body).flow == CONFIG.flow
            assert [peer for peer, _ in recorder.accepted] == [PEER.host]
            return
    assert recorder.accepted == []


# -- the client: clientHandshake through an Agent ---------------------------------------------


@implementer(IAgentEndpointFactory)
class Endpoints:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> Any:
        return TCP4ClientEndpoint(self.reactor, uri.host.decode(), uri.port)


GOOD_ANSWER = (
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: 45\r\n\r\n" + b'{"flow":"-","max":1024,"tls":"1","type":"0"}\n'
)


@st.composite
def responseBytes(draw: Any) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        garbage: bytes = draw(st.binary(max_size=200))
        return garbage
    status = draw(
        st.sampled_from([b"200 OK", b"200 OK", b"401 Unauthorized", b"200", b"999 X", b"abc"])
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"ICY"]))
    body = draw(st.one_of(configBodies(), st.binary(max_size=40)))
    framing = draw(
        st.sampled_from(
            [
                b"Content-Length: %d\r\n" % len(body),
                b"Content-Length: %d\r\n" % (len(body) + 3),
                b"Content-Length: 0\r\n",
                b"Content-Length: x\r\n",
                b"",
                b"Transfer-Encoding: chunked\r\n",
            ]
        )
    )
    if b"chunked" in framing and draw(st.booleans()):
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer: bytes = version + b" " + status + b"\r\n" + framing + b"\r\n" + body
    if kind == 1:
        answer = GOOD_ANSWER[: draw(st.integers(0, len(GOOD_ANSWER)))]
    if kind == 2:
        answer += draw(st.binary(max_size=20))
    return answer


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responseBytes(), CUTS, st.booleans())
def test_clientEndsInAConfigOrAHandshakeError(answer: bytes, cuts: list[int], closes: bool) -> None:
    """
    Whatever a server answers, in any chunks, and whether it then closes or goes silent:
    the handshake ends in a L{TunnelConfig} or a L{HandshakeError} (the timeout at the
    latest), and the connection is not left open.
    """
    chunks = _chunks(answer, cuts)
    reactor = MemoryReactorClock()
    agent = Agent.usingEndpointFactory(reactor, Endpoints(reactor))
    results: list[Any] = []
    attempt = Deferred.fromCoroutine(
        clientHandshake(agent, "203.0.113.10:10101", "none", KEY, clock=reactor, timeout=30)
    )
    attempt.addBoth(results.append)
    host, port, factory, _, _ = reactor.tcpClients[-1]
    protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value().startswith(b"GET / HTTP/1.1\r\n")
    for chunk in chunks:
        if transport.disconnecting or results:
            break
        protocol.dataReceived(chunk)
    if closes and not transport.disconnecting:
        protocol.connectionLost(Failure(ConnectionDone()))
    reactor.advance(31)
    assert len(results) == 1, answer
    (result,) = results
    if isinstance(result, Failure):
        assert result.check(HandshakeError), result
        assert "\n" not in result.getErrorMessage()
        assert KEY not in result.getErrorMessage()
        # Closed, or stopped (what stopProducing does to a real TCP transport: it closes).
        assert transport.disconnecting or transport.producerState == "stopped" or closes, answer
    else:
        assert isinstance(result, TunnelConfig)
        assert answer.split(b" ")[1].startswith(b"200")
