"""The tunnel handshake: one plain HTTP/1.1 exchange on the tunnel TCP port.

The client proves it knows the tunnel key with a static bearer token and the
server answers with the tunnel configuration as a small JSON object
(dataplane spec §3, vectors §15.2-§15.4).  Both ends of this module speak the
exact bytes the Go implementation (v1.14.0) speaks; on top of that our client
sends C{X-NodePass-Ext: 1} and our server then adds C{"ext":1} to its answer,
so two peers of ours can agree on the extensions of spec §16.1.

Server side: L{HandshakeResource} served by the L{twisted.web.server.Site}
that L{handshakeFactory} builds.  Client side: L{clientHandshake} over an
L{IAgent} the caller builds.  Neither the key nor the token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from io import BytesIO
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, PotentialDataLoss, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from nodepass.errors import NodePassError
from nodepass.log import defaultLogger
from nodepass.throttle import FailureThrottle

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXT_HEADER",
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINE",
    "MAX_RESPONSE",
    "HandshakeError",
    "HandshakeResource",
    "TunnelConfig",
    "checkBearer",
    "clientHandshake",
    "decodeConfig",
    "encodeConfig",
    "handshakeFactory",
    "token",
]

EXT_HEADER = b"X-NodePass-Ext"

#: Our client's offer to prove the key on every pool connection (with C{ext} only); the
#: server agrees with C{"auth":1} (see L{nodepass.tunnel.pool.poolProof}).
POOL_AUTH_HEADER = b"X-NodePass-Pool-Auth"
"""The request header by which our client offers the extensions of spec §16.1."""

IDLE_TIMEOUT = 10.0
"""Seconds an HTTP connection to the handshake server may stay silent."""

DEFAULT_TIMEOUT = 30.0
"""
Default bound, in seconds, on the whole client exchange.  Go's client has a
30 s connect timeout and no overall one; we bound everything.
"""

MAX_HEADER_LINE = 8192
MAX_HEADERS = 64
MAX_HEADER_BYTES = 8192
MAX_BODY = 65536
MAX_RESPONSE = 65536
"""
Request limits of the handshake server.  A Go client sends about 200 bytes of
head and no body.  Beyond a limit on the head, twisted.web answers
C{400 Bad Request} and closes; a request body is never stored, and the
connection is closed once more than L{MAX_BODY} bytes of it arrived.  The
client gives up on an answer body over L{MAX_RESPONSE} bytes (Go's is 45).
"""

_BEARER = b"Bearer "
_INT64_MAX = 2**63 - 1
_TYPE_RE = re.compile(r"[0-3]|[a-z][a-z0-9_-]{0,31}")


class HandshakeError(NodePassError):
    """
    The tunnel handshake failed: a transport error, a timeout, a status other
    than 200, or an answer that is not a valid tunnel configuration.
    """


def token(key: str) -> str:
    """
    The bearer token for C{key}: lowercase hex of HMAC-SHA256 keyed with the
    tunnel key over an empty message (spec §3.3).  Static, so it only proves
    knowledge of the key.
    """
    return hmac.new(key.encode("utf-8"), b"", hashlib.sha256).hexdigest()


def checkBearer(header: bytes | None, key: str) -> bool:
    """
    Whether an C{Authorization} header value carries the token for C{key}:
    exactly C{"Bearer "} (capital B, one space) then the token, compared in
    constant time.
    """
    return _bearerMatches(header, token(key).encode("ascii"))


def _bearerMatches(header: bytes | None, expected: bytes) -> bool:
    if header is None or not header.startswith(_BEARER):
        return False
    return hmac.compare_digest(header[len(_BEARER) :], expected)


def _checkFlow(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("-", "+"):
        raise ValueError(f"flow must be '-' or '+', not {value!r}")


def _checkMax(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 0 <= value <= _INT64_MAX:
        raise ValueError(f"max must be an integer from 0 to {_INT64_MAX}, not {value!r}")


def _checkTLS(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("0", "1", "2"):
        raise ValueError(f"tls must be '0', '1' or '2', not {value!r}")


def _checkType(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _TYPE_RE.fullmatch(value):
        raise ValueError(
            f"type must be '0'..'3' or a transport name ([a-z][a-z0-9_-]{{0,31}}), not {value!r}"
        )


@attrs.frozen
class TunnelConfig:
    """
    What the server announces in the handshake (spec §3.4).

    @ivar flow: C{"-"} or C{"+"} (spec §2.3).
    @ivar max: the pool's maximum capacity.
    @ivar tls: the TLS mode of pool connections, C{"0"}, C{"1"} or C{"2"}.
    @ivar type: the pool transport, C{"0"}..C{"3"} or a transport plugin name.
    @ivar ext: both ends are ours and agreed on the extensions of spec §16.1.
    @ivar auth: both ends agreed that every pool connection proves the key (with C{ext}).
    """

    flow: str = attrs.field(validator=_checkFlow)
    max: int = attrs.field(validator=_checkMax)
    tls: str = attrs.field(validator=_checkTLS)
    type: str = attrs.field(validator=_checkType)
    ext: bool = False
    auth: bool = False


def _goJSON(text: str) -> str:
    # Go's encoder escapes these even with valid UTF-8 output; Python's does not.
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def encodeConfig(config: TunnelConfig) -> bytes:
    """
    The handshake body as Go's JSON encoder writes it: compact, keys in
    alphabetical order, one trailing newline.  C{"ext":1} is present only
    when C{config.ext} is set, so a Go client sees exactly what a Go server
    would send, e.g. C{{"flow":"-","max":1024,"tls":"1","type":"0"}\\n}.
    """
    fields: dict[str, object] = {
        "flow": config.flow,
        "max": config.max,
        "tls": config.tls,
        "type": config.type,
    }
    if config.ext:
        fields["ext"] = 1
        if config.auth:
            fields["auth"] = 1
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return (_goJSON(text) + "\n").encode("utf-8")


def _rejectConstant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


class _Object(list[tuple[str, Any]]):
    """
    A decoded JSON object as its (name, value) pairs, in order.
    """


def _jsonType(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Object):
        return "object"
    return "array"


_FIELD_TYPES: dict[str, type] = {"flow": str, "max": int, "tls": str, "type": str}


def decodeConfig(body: bytes) -> TunnelConfig:
    """
    Decode a handshake body with the rules of Go's C{encoding/json} decoding
    into the Go client's struct.

    Like Go: only the first JSON value counts (trailing bytes are ignored),
    unknown fields are ignored, field names match case-insensitively, a
    repeated field keeps its last value and C{null} leaves a field as it was;
    C{max} must be a JSON integer and C{flow}, C{tls} and C{type} JSON strings
    (C{"max":"1024"}, C{"max":1024.0} and C{"tls":1} fail).  Stricter than
    Go, which would use zero values: each of the four fields must be present
    and hold an acceptable value (see L{TunnelConfig}).  C{ext} is set only by
    C{"ext":1}.

    @raise HandshakeError: with a one-line reason when the body is unusable.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HandshakeError(f"tunnelHandshake: body is not UTF-8: {e.reason}") from None
    decoder = json.JSONDecoder(parse_constant=_rejectConstant, object_pairs_hook=_Object)
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, _ = decoder.raw_decode(text, start)
    except (ValueError, RecursionError) as e:
        # RecursionError: arrays or objects nested too deep for the decoder.
        raise HandshakeError(f"tunnelHandshake: invalid JSON body: {e}") from None
    if not isinstance(value, _Object):
        raise HandshakeError(f"tunnelHandshake: body must be a JSON object, not {_jsonType(value)}")
    found: dict[str, Any] = {}
    for name, item in value:
        field = name.casefold()
        kind = _FIELD_TYPES.get(field)
        if field in ("ext", "auth"):
            found[field] = item
        elif kind is None or item is None:
            continue
        elif type(item) is not kind:
            want = "an integer" if kind is int else "a string"
            raise HandshakeError(
                f"tunnelHandshake: field {field!r} must be {want}, not a JSON {_jsonType(item)}"
            )
        else:
            found[field] = item
    for field in _FIELD_TYPES:
        if field not in found:
            raise HandshakeError(f"tunnelHandshake: field {field!r} is missing")
    ext = found.get("ext")
    auth = found.get("auth")
    extAgreed = type(ext) is int and ext == 1
    try:
        return TunnelConfig(
            flow=found["flow"],
            max=found["max"],
            tls=found["tls"],
            type=found["type"],
            ext=extAgreed,
            auth=extAgreed and type(auth) is int and auth == 1,
        )
    except ValueError as e:
        raise HandshakeError(f"tunnelHandshake: {e}") from None


def _hostOf(address: IAddress | None) -> str:
    host = getattr(address, "host", "")
    return host if isinstance(host, str) else ""


class HandshakeResource(Resource):
    """
    Serves the tunnel handshake on the server's tunnel port (plain HTTP/1.1).

    Checks, in the order of spec §3.1: method C{GET} (else 405), path exactly
    C{/} (else 404), C{Authorization: Bearer <token>} (else 401).  Error
    bodies and headers are those of Go's C{http.Error}.  Every response says
    C{Connection: close}, and the server built by L{handshakeFactory} closes
    the connection after it.

    The first request that passes the checks wins: it gets C{200} with the
    JSON of C{announce(ext)} (C{ext} is whether the request carried
    C{X-NodePass-Ext: 1}), then C{onAccepted(clientIP, config)} is called once
    the response is handed to the transport.  The Go server shuts its HTTP
    server down at that point so never answers again; the caller of this
    resource is expected to do the same, but any request that authenticates
    before it does is answered C{503} with the body
    C{handshake already completed\\n} and C{onAccepted} is not called again.
    Requests that fail a check keep getting 405/404/401, so an unauthenticated
    peer cannot tell whether a handshake happened.  Use one resource per
    start cycle.

    C{announce} may decline the extensions (return C{ext=False} when asked)
    but never impose them: a config with C{ext} set is sent and passed on
    with C{ext=False} to a client that did not ask.

    C{log} is the instance's logger (by default, one publishing to the
    global log publisher).

    C{throttle} (a L{nodepass.throttle.FailureThrottle}, kept across start
    cycles by the server) slows down and then refuses an address that keeps
    sending a wrong token: its 401s are held back for a while, then it gets
    C{429 Too Many Requests} with C{Retry-After} before its token is looked
    at; the log gets a summary instead of a line per attempt.  Without one,
    every 401 is logged, as before.
    """

    isLeaf = True

    def __init__(
        self,
        key: str,
        announce: Callable[[bool], TunnelConfig],
        onAccepted: Callable[[str, TunnelConfig], None],
        *,
        log: Logger | None = None,
        throttle: FailureThrottle | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.log = log if log is not None else defaultLogger()
        self._throttle = throttle
        self._clock = clock
        self._token = token(key).encode("ascii")
        self._announce = announce
        self._onAccepted = onAccepted
        self._completed = False

    @property
    def completed(self) -> bool:
        """
        Whether a handshake has been accepted.
        """
        return self._completed

    def render(self, request: Request) -> bytes | int:
        peer = _hostOf(request.getClientAddress())
        if request.method != b"GET":
            return self._reject(request, peer, 405, "Method Not Allowed")
        if request.path != b"/":
            return self._reject(request, peer, 404, "Not Found")
        throttle = self._throttle
        if throttle is not None:
            wait = throttle.retryAfter(peer)
            if wait is not None:
                request.responseHeaders.setRawHeaders(b"Retry-After", [b"%d" % (int(wait) + 1)])
                return self._reject(request, peer, 429, "Too Many Requests", quiet=True)
        authorization = request.requestHeaders.getRawHeaders(b"Authorization")
        # Go's Header.Get reads the first value.
        if not _bearerMatches(authorization[0] if authorization else None, self._token):
            if throttle is None:
                return self._reject(request, peer, 401, "Unauthorized")
            if not throttle.known(peer):
                self.log.warn(
                    "Tunnel handshake rejected from {peer}: {code} {text}",
                    peer=peer,
                    code=401,
                    text="Unauthorized",
                )
            delay = throttle.failed(peer)
            if delay > 0 and self._clock is not None:
                self._rejectLater(request, peer, delay)
                return NOT_DONE_YET
            return self._reject(request, peer, 401, "Unauthorized", quiet=True)
        if throttle is not None:
            throttle.succeeded(peer)
        if self._completed:
            return self._reject(request, peer, 503, "handshake already completed")

        offered = request.requestHeaders.getRawHeaders(EXT_HEADER) == [b"1"]
        authOffered = request.requestHeaders.getRawHeaders(POOL_AUTH_HEADER) == [b"1"]
        config = self._announce(offered)
        if config.ext and not offered:
            config = attrs.evolve(config, ext=False)
        # Pool authentication needs both ends to be ours and this one to ask for it.
        config = attrs.evolve(config, auth=config.ext and authOffered)
        self._completed = True
        _respond(request, 200, b"application/json", encodeConfig(config))
        self.log.debug("Tunnel handshake accepted from {peer}", peer=peer)
        try:
            self._onAccepted(peer, config)
        except Exception:
            # The response is already out; a failing callback is a bug of the
            # caller, reported here rather than as a bogus 500.
            self.log.failure("Tunnel handshake: onAccepted failed")
        return NOT_DONE_YET

    def _rejectLater(self, request: Request, peer: str, delay: float) -> None:
        """
        Answer C{401} after C{delay} seconds, unless the peer hung up meanwhile.
        """
        assert self._clock is not None
        call = self._clock.callLater(
            delay, self._reject, request, peer, 401, "Unauthorized", quiet=True
        )

        def gone(_: object) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(gone)

    def _reject(
        self, request: Request, peer: str, code: int, text: str, quiet: bool = False
    ) -> int:
        if not quiet:  # a throttled address's attempts are summed up by the throttle
            emit = self.log.warn if code == 401 else self.log.debug
            emit(
                "Tunnel handshake rejected from {peer}: {code} {text}",
                peer=peer,
                code=code,
                text=text,
            )
        _respond(
            request,
            code,
            b"text/plain; charset=utf-8",
            (text + "\n").encode("utf-8"),
            nosniff=True,
        )
        return NOT_DONE_YET


def _respond(
    request: Request, code: int, contentType: bytes, body: bytes, nosniff: bool = False
) -> None:
    """
    Write a whole response with Go's header set and (near enough) order:
    C{Connection}, C{Content-Type}, [C{X-Content-Type-Options}], C{Date},
    C{Content-Length}.  No C{Server} header (Go sends none; twisted.web's would tell a
    scanner the Twisted version).
    """
    headers = request.responseHeaders
    headers.removeHeader(b"Server")
    date = headers.getRawHeaders(b"Date") or [datetimeToString()]
    headers.removeHeader(b"Date")
    # twisted.web has no reason phrase for 429 (Go's is "Too Many Requests").
    request.setResponseCode(code, b"Too Many Requests" if code == 429 else None)
    headers.setRawHeaders(b"Connection", [b"close"])
    headers.setRawHeaders(b"Content-Type", [contentType])
    if nosniff:
        headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
    headers.setRawHeaders(b"Date", date)
    headers.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
    request.write(body)
    request.finish()


class _HandshakeRequest(Request):
    """
    A request that never stores a body: the handshake has none, and an
    oversized one closes the connection.
    """

    _bodyBytes = 0

    def process(self) -> None:
        if self.path == b"*":
            # twisted.web answers "*" itself (405 or 200, with a Server header naming the
            # Twisted version); it is no path of ours, so the resource answers it like any
            # other: 404 (405 for a method other than GET), Go's headers.
            self.site = self.channel.site  # type: ignore[attr-defined]
            self.prepath, self.postpath = [], []
            self.render(self.site.resource)
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        if self._bodyBytes > MAX_BODY:
            self.loseConnection()


class _HandshakeChannel(HTTPChannel):
    """
    An HTTP/1.1 channel with tight head limits that closes after every
    response, as the Go handshake server effectively does.
    """

    MAX_LENGTH = MAX_HEADER_LINE
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEADER_BYTES

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False


class _HandshakeSite(Site):
    """
    A site without access log lines.
    """

    protocol = _HandshakeChannel  # type: ignore[assignment]

    def log(self, request: http.Request) -> None:
        pass


def handshakeFactory(resource: HandshakeResource, clock: IReactorTime) -> Site:
    """
    The server factory for the handshake phase of the tunnel port.

    A L{Site} serving C{resource} for every path, with no access log, the
    request head bounded (L{MAX_HEADER_LINE} bytes per line, L{MAX_HEADERS}
    header lines, L{MAX_HEADER_BYTES} in all: twisted.web answers 400 and
    closes beyond them), request bodies discarded and capped at L{MAX_BODY},
    one request per connection, and connections closed after
    L{IDLE_TIMEOUT} seconds of silence (timed on C{clock}).
    """
    site = _HandshakeSite(
        resource,
        requestFactory=_HandshakeRequest,
        timeout=IDLE_TIMEOUT,
        reactor=clock,
        parsePOSTFormSubmission=False,
    )
    site.displayTracebacks = False
    return site


class _BodyReader(Protocol):
    """
    Collects a response body, at most L{MAX_RESPONSE} bytes, into C{done}.

    L{readBody} is not used: through L{Agent} its cancellation cannot close
    the connection (the body transport has no C{abortConnection}, Twisted
    issue 8227), so a timed-out or unwanted body would keep the connection
    open.  Cancelling C{done} here stops the transfer, which drops it.  A body
    delimited by the server closing the connection (L{PotentialDataLoss})
    counts as complete, as it does for Go.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE:
            self.done.errback(
                HandshakeError(f"tunnelHandshake: response body over {MAX_RESPONSE} bytes")
            )
            self._stop()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Here, not at the top: the server side never needs twisted.web.client, which
        # loads the TLS libraries even for a plain-TCP tunnel.
        from twisted.web.client import ResponseDone

        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _cancel(self, done: Deferred[bytes]) -> None:
        self._stop()


def _readBody(response: IResponse) -> Deferred[bytes]:
    reader = _BodyReader()
    response.deliverBody(reader)
    return reader.done


def _drop(response: IResponse) -> None:
    """
    Give up on a response body we do not want, dropping the connection as
    Go's client does on C{resp.Body.Close()}.
    """
    body = _readBody(response)
    body.cancel()
    # The body no longer matters, whatever became of it.
    body.addErrback(lambda _: None)


def _isCancellation(error: BaseException) -> bool:
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(error, "reasons", None)
    return isinstance(reasons, list) and any(
        isinstance(r, Failure) and r.check(CancelledError) for r in reasons
    )


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons)
    return str(error) or type(error).__name__


def _hostHeader(serverName: str) -> bytes:
    return serverName.encode("ascii") if serverName.isascii() else serverName.encode("idna")


async def clientHandshake(
    agent: IAgent,
    tunnel: str,
    serverName: str,
    key: str,
    *,
    https: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    clock: IReactorTime,
) -> TunnelConfig:
    """
    Run the client side of the handshake (spec §3.2).

    Sends C{GET http://<tunnel>/} (C{https://} when C{https}; the caller sets
    it when the tunnel port text is C{443}) with C{Host: <serverName>} (C{none}
    for an IP tunnel without C{sni}, a host name without port otherwise),
    C{Authorization: Bearer <token>} and C{X-NodePass-Ext: 1}, then decodes
    the answer with L{decodeConfig}.  A body delimited by the server closing
    the connection is accepted, and so is a close right after the body.

    @param agent: usually C{Agent(reactor)}, built by the caller.
    @param tunnel: the tunnel address as typed in the URL, e.g.
        C{203.0.113.10:10101} or C{[2001:db8::1]:10101}.
    @param timeout: bound in seconds on the whole exchange, timed on C{clock}.

    @raise HandshakeError: on a transport error, a status other than 200, an
        unusable body or the timeout.
    """
    scheme = "https" if https else "http"
    url = f"{scheme}://{tunnel}/"

    async def exchange() -> TunnelConfig:
        headers = Headers(
            {
                b"Host": [_hostHeader(serverName)],
                b"Authorization": [_BEARER + token(key).encode("ascii")],
                EXT_HEADER: [b"1"],
                POOL_AUTH_HEADER: [b"1"],
            }
        )
        response: IResponse = await agent.request(b"GET", url.encode("ascii"), headers)
        if response.code != 200:
            _drop(response)
            raise HandshakeError(f"tunnelHandshake: status {response.code}")
        return decodeConfig(await _readBody(response))

    def timedOut(result: object, seconds: float) -> TunnelConfig:
        if isinstance(result, TunnelConfig):
            return result  # it made it after all
        raise HandshakeError(f"tunnelHandshake: timed out after {seconds:g}s")

    attempt = Deferred.fromCoroutine(exchange())
    attempt.addTimeout(timeout, clock, onTimeoutCancel=timedOut)
    try:
        return await attempt
    except HandshakeError:
        raise
    except Exception as e:
        if _isCancellation(e):
            # Our caller cancelled us (a timeout is a HandshakeError by now).
            raise CancelledError() from e
        raise HandshakeError(f"tunnelHandshake: GET {url}: {_describe(e)}") from e
