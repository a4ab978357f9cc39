"""
Tests for L{nodepass.tunnel.handshake}: the token vectors, the Go JSON
encoding and strict decoding of the tunnel config, the server resource (via
StubTreq and over a L{StringTransport} fed the exact bytes of a Go client),
and the client (over a L{MemoryReactorClock}-backed L{Agent} fed the exact
bytes of a Go server, and end to end against our own server in memory).
No sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from nodepass.errors import NodePassError
from nodepass.tunnel.handshake import (
    IDLE_TIMEOUT,
    HandshakeError,
    HandshakeResource,
    TunnelConfig,
    checkBearer,
    clientHandshake,
    decodeConfig,
    encodeConfig,
    handshakeFactory,
    token,
)

KEY = "secret"
TOKEN = "f9e66e179b6747ae54108f82f8ade8b3c25d76fd30afde6c395822c530196169"
BODY = b'{"flow":"-","max":1024,"tls":"1","type":"0"}\n'
CONFIG = TunnelConfig(flow="-", max=1024, tls="1", type="0")
CLIENT = IPv4Address("TCP", "203.0.113.10", 40001)

# spec §15.3: what a Go client writes.
GO_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: none\r\n"
    b"User-Agent: Go-http-client/1.1\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"\r\n"
)

# spec §15.4: what a Go server answers.
GO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: close\r\n"
    b"Content-Type: application/json\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 GMT\r\n"
    b"Content-Length: 45\r\n"
    b"\r\n" + BODY
)


def parseResponse(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """
    Split a raw HTTP/1.1 response into status line, header list and body.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip()))
    return status, headers, body


class Recorder:
    """
    The server's callbacks: C{announce} answers C{CONFIG} with the offered
    C{ext}; C{onAccepted} calls are recorded.
    """

    def __init__(self, config: TunnelConfig = CONFIG, forceExt: bool | None = None) -> None:
        self.config = config
        self.forceExt = forceExt
        self.offers: list[bool] = []
        self.accepted: list[tuple[str, TunnelConfig]] = []

    def announce(self, ext: bool) -> TunnelConfig:
        self.offers.append(ext)
        useExt = ext if self.forceExt is None else self.forceExt
        return TunnelConfig(
            flow=self.config.flow,
            max=self.config.max,
            tls=self.config.tls,
            type=self.config.type,
            ext=useExt,
        )

    def onAccepted(self, clientIP: str, config: TunnelConfig) -> None:
        self.accepted.append((clientIP, config))

    def resource(self, key: str = KEY) -> HandshakeResource:
        return HandshakeResource(key, self.announce, self.onAccepted)


class TokenTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """
        The bearer tokens of spec §15.2.
        """
        self.assertEqual(token("secret"), TOKEN)
        self.assertEqual(
            token("e68be2b4"),
            "8940572756af096447802f92b4c843ac61de93b80af9d37a85ed994508656d7e",
        )

    def test_checkBearer(self) -> None:
        """
        Only C{"Bearer "} (capital B, one space) and the exact token pass.
        """
        self.assertTrue(checkBearer(b"Bearer " + TOKEN.encode(), KEY))
        for header in (
            None,
            b"",
            TOKEN.encode(),
            b"bearer " + TOKEN.encode(),
            b"Bearer  " + TOKEN.encode(),
            b"Bearer " + TOKEN.upper().encode(),
            b"Bearer " + TOKEN[:-1].encode(),
            b"Bearer " + TOKEN.encode() + b"0",
            b"Bearer " + token("other").encode(),
        ):
            self.assertFalse(checkBearer(header, KEY), header)


class EncodeTests(SynchronousTestCase):
    def test_goBytes(self) -> None:
        """
        The body of spec §15.4: 45 bytes, keys sorted, compact, trailing LF.
        """
        self.assertEqual(encodeConfig(CONFIG), BODY)
        self.assertEqual(len(encodeConfig(CONFIG)), 45)

    def test_ext(self) -> None:
        """
        C{"ext":1} is added, in key order, only when C{ext} is set.
        """
        config = TunnelConfig(flow="+", max=8, tls="0", type="my-plug", ext=True)
        self.assertEqual(
            encodeConfig(config), b'{"ext":1,"flow":"+","max":8,"tls":"0","type":"my-plug"}\n'
        )

    def test_roundTrip(self) -> None:
        for config in (
            CONFIG,
            TunnelConfig(flow="+", max=0, tls="2", type="3", ext=True),
            TunnelConfig(flow="-", max=2**63 - 1, tls="0", type="ws_2"),
        ):
            self.assertEqual(decodeConfig(encodeConfig(config)), config)

    def test_invalidConfig(self) -> None:
        """
        L{TunnelConfig} refuses values no peer could use.
        """
        for fields in (
            {"flow": "x"},
            {"max": -1},
            {"max": 2**63},
            {"max": True},
            {"tls": "3"},
            {"tls": 1},
            {"type": ""},
            {"type": "4"},
            {"type": "Upper"},
            {"type": "a<b"},
        ):
            arguments: dict[str, Any] = {"flow": "-", "max": 1, "tls": "0", "type": "0"}
            arguments.update(fields)
            self.assertRaises(ValueError, TunnelConfig, **arguments)


class DecodeTests(SynchronousTestCase):
    def assertFails(self, body: bytes, *words: str) -> HandshakeError:
        error = self.assertRaises(HandshakeError, decodeConfig, body)
        self.assertIsInstance(error, NodePassError)
        message = str(error)
        self.assertTrue(message.startswith("tunnelHandshake: "), message)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)
        return error

    def test_go(self) -> None:
        self.assertEqual(decodeConfig(BODY), CONFIG)
        self.assertFalse(decodeConfig(BODY).ext)

    def test_ext(self) -> None:
        """
        C{ext} is set only by C{"ext":1}.
        """
        self.assertTrue(decodeConfig(b'{"ext":1,"flow":"-","max":1024,"tls":"1","type":"0"}').ext)
        for ext in (b"0", b"2", b"true", b'"1"', b"1.0", b"null"):
            body = b'{"ext":' + ext + b',"flow":"-","max":1024,"tls":"1","type":"0"}'
            self.assertFalse(decodeConfig(body).ext, ext)

    def test_wrongTypes(self) -> None:
        """
        Go's decoder refuses a string C{max} and a numeric C{tls}; so do we.
        """
        self.assertFails(b'{"flow":"-","max":"1024","tls":"1","type":"0"}', "'max'", "string")
        self.assertFails(b'{"flow":"-","max":1024,"tls":1,"type":"0"}', "'tls'", "number")
        self.assertFails(b'{"flow":"-","max":1024.0,"tls":"1","type":"0"}', "'max'")
        self.assertFails(b'{"flow":"-","max":1e3,"tls":"1","type":"0"}', "'max'")
        self.assertFails(b'{"flow":"-","max":true,"tls":"1","type":"0"}', "'max'", "boolean")
        self.assertFails(b'{"flow":["-"],"max":1,"tls":"1","type":"0"}', "'flow'", "array")
        self.assertFails(b'{"flow":"-","max":1,"tls":"1","type":{}}', "'type'", "object")

    def test_badValues(self) -> None:
        self.assertFails(b'{"flow":"x","max":1,"tls":"1","type":"0"}', "flow")
        self.assertFails(b'{"flow":"-","max":-1,"tls":"1","type":"0"}', "max")
        self.assertFails(b'{"flow":"-","max":1,"tls":"9","type":"0"}', "tls")
        self.assertFails(b'{"flow":"-","max":1,"tls":"1","type":""}', "type")

    def test_missing(self) -> None:
        """
        Each of the four fields is required; C{null} does not count.
        """
        self.assertFails(b'{"flow":"-","max":1,"tls":"1"}', "'type'", "missing")
        self.assertFails(b'{"flow":"-","max":null,"tls":"1","type":"0"}', "'max'", "missing")
        self.assertFails(b"{}", "missing")

    def test_malformed(self) -> None:
        self.assertFails(b"", "invalid JSON")
        self.assertFails(b'{"flow":"-","max":1024', "invalid JSON")
        self.assertFails(b"<html>", "invalid JSON")
        self.assertFails(b'{"flow":"-","max":NaN,"tls":"1","type":"0"}', "invalid JSON")
        self.assertFails(b"[]", "JSON object", "array")
        self.assertFails(b"null", "JSON object", "null")
        self.assertFails(b"\xff\xfe", "UTF-8")

    def test_goLeniency(self) -> None:
        """
        Like Go: unknown fields and trailing bytes are ignored, names match
        case-insensitively, the last occurrence wins, C{null} keeps the value.
        """
        body = (
            b' {"FLOW":"+","Max":7,"tls":"1","tls":null,"Type":"0","type":"2",'
            b'"extra":{"a":[1,2]}}\n{"second":"value"}'
        )
        self.assertEqual(decodeConfig(body), TunnelConfig(flow="+", max=7, tls="1", type="2"))

    def test_everyOccurrenceTyped(self) -> None:
        """
        Go reports a wrongly typed occurrence even if a later one is fine.
        """
        self.assertFails(b'{"flow":"-","max":"1","max":1,"tls":"1","type":"0"}', "'max'")


class ResourceTests(SynchronousTestCase):
    """
    L{HandshakeResource} through StubTreq.
    """

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.stub = StubTreq(self.recorder.resource())

    def request(
        self, method: str = "GET", url: str = "http://none/", **headers: str
    ) -> tuple[Any, bytes]:
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        response = self.successResultOf(self.stub.request(method, url, headers=sent))
        body = self.successResultOf(self.stub.content(response))
        return response, body

    def assertError(self, response: Any, body: bytes, code: int, text: bytes) -> None:
        self.assertEqual((response.code, body), (code, text))
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"], code)
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        # Twisted's client keeps Connection and Content-Length to itself:
        # ServerWireTests checks them on the raw bytes.
        self.assertEqual(len(headers.getRawHeaders("date", [])), 1)
        self.assertEqual(self.recorder.accepted, [])

    def test_methodNotAllowed(self) -> None:
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            response, body = self.request(method, Authorization="Bearer " + TOKEN)
            self.assertError(response, body, 405, b"Method Not Allowed\n")

    def test_head(self) -> None:
        """
        C{HEAD} is not C{GET}: 405, with the headers but no body.
        """
        response, body = self.request("HEAD", Authorization="Bearer " + TOKEN)
        self.assertEqual((response.code, body), (405, b""))

    def test_notFound(self) -> None:
        for path in ("/x", "//", "/index.html", "/%2F"):
            response, body = self.request(url="http://none" + path, Authorization="Bearer " + TOKEN)
            self.assertError(response, body, 404, b"Not Found\n")

    def test_queryIgnored(self) -> None:
        """
        Go checks the URL path, so a query string does not matter.
        """
        response, body = self.request(url="http://none/?a=b", Authorization="Bearer " + TOKEN)
        self.assertEqual((response.code, body), (200, BODY))

    def test_unauthorized(self) -> None:
        for headers in (
            {},
            {"Authorization": TOKEN},
            {"Authorization": "Bearer " + token("wrong")},
            {"Authorization": "bearer " + TOKEN},
            {"Authorization": "Basic c2VjcmV0Og=="},
        ):
            response, body = self.request(**headers)
            self.assertError(response, body, 401, b"Unauthorized\n")

    def test_checkOrder(self) -> None:
        """
        Method first, then path, then token (spec §3.1).
        """
        response, body = self.request("POST", "http://none/x")
        self.assertError(response, body, 405, b"Method Not Allowed\n")
        response, body = self.request("GET", "http://none/x", Authorization="Bearer nope")
        self.assertError(response, body, 404, b"Not Found\n")

    def test_success(self) -> None:
        response, body = self.request(Authorization="Bearer " + TOKEN)
        self.assertEqual((response.code, body), (200, BODY))
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(response.length, 45)
        self.assertIsNone(headers.getRawHeaders("x-content-type-options"))
        self.assertEqual(len(headers.getRawHeaders("date", [])), 1)
        self.assertEqual(self.recorder.offers, [False])
        self.assertEqual(self.recorder.accepted, [("127.0.0.1", CONFIG)])

    def test_ext(self) -> None:
        """
        C{X-NodePass-Ext: 1} is offered to C{announce}, and the answer has
        C{"ext":1}.
        """
        response, body = self.request(Authorization="Bearer " + TOKEN, X_NodePass_Ext="1")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b'{"ext":1,"flow":"-","max":1024,"tls":"1","type":"0"}\n')
        self.assertEqual(self.recorder.offers, [True])
        [(_, config)] = self.recorder.accepted
        self.assertTrue(config.ext)

    def test_extOtherValue(self) -> None:
        """
        Any value other than C{1} does not offer the extensions.
        """
        response, body = self.request(Authorization="Bearer " + TOKEN, X_NodePass_Ext="2")
        self.assertEqual((response.code, body), (200, BODY))
        self.assertEqual(self.recorder.offers, [False])

    def test_extDeclined(self) -> None:
        """
        The server may decline the extensions.
        """
        self.recorder.forceExt = False
        _response, body = self.request(Authorization="Bearer " + TOKEN, X_NodePass_Ext="1")
        self.assertEqual(body, BODY)
        self.assertFalse(self.recorder.accepted[0][1].ext)

    def test_extNeverImposed(self) -> None:
        """
        A config with C{ext} set is not imposed on a client that did not ask.
        """
        self.recorder.forceExt = True
        _response, body = self.request(Authorization="Bearer " + TOKEN)
        self.assertEqual(body, BODY)
        self.assertEqual(self.recorder.accepted, [("127.0.0.1", CONFIG)])

    def test_onlyFirst(self) -> None:
        """
        After a success, authenticated requests get 503 and C{onAccepted} is
        not called again; failing ones keep their own status.
        """
        resource = self.recorder.resource()
        self.stub = StubTreq(resource)
        self.assertFalse(resource.completed)
        response, body = self.request(Authorization="Bearer " + TOKEN)
        self.assertEqual(response.code, 200)
        self.assertTrue(resource.completed)
        for ext in ("", "1"):
            response, body = self.request(Authorization="Bearer " + TOKEN, X_NodePass_Ext=ext)
            self.assertEqual((response.code, body), (503, b"handshake already completed\n"))
            self.assertEqual(
                response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"]
            )
        response, body = self.request(Authorization="Bearer nope")
        self.assertEqual(response.code, 401)
        response, body = self.request("POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(len(self.recorder.accepted), 1)
        self.assertEqual(self.recorder.offers, [False])

    def test_failingCallback(self) -> None:
        """
        A failing C{onAccepted} is logged; the response is already out.
        """

        def onAccepted(clientIP: str, config: TunnelConfig) -> None:
            raise RuntimeError("boom")

        stub = StubTreq(HandshakeResource(KEY, self.recorder.announce, onAccepted))
        response = self.successResultOf(
            stub.get("http://none/", headers={"Authorization": "Bearer " + TOKEN})
        )
        self.assertEqual(self.successResultOf(stub.content(response)), BODY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ServerWireTests(SynchronousTestCase):
    """
    L{handshakeFactory} over a L{StringTransport}, fed Go's exact bytes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorder = Recorder()
        self.site = handshakeFactory(self.recorder.resource(), self.clock)

    def connect(self, peer: Any = CLIENT) -> tuple[Protocol, StringTransport]:
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_goRequest(self) -> None:
        """
        Go's request (spec §15.3) gets the response of spec §15.4, then the
        connection is closed.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST)
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, BODY)
        self.assertEqual(len(body), 45)
        names = [name for name, _ in headers]
        self.assertEqual(len(names), len(set(names)), headers)
        values = dict(headers)
        self.assertEqual(values[b"connection"], b"close")
        self.assertEqual(values[b"content-type"], b"application/json")
        self.assertEqual(values[b"content-length"], b"45")
        self.assertRegex(
            values[b"date"], rb"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]{8} GMT$"
        )
        self.assertNotIn(b"transfer-encoding", values)
        # Go's headers in Go's order, and no Server header (Go sends none).
        self.assertEqual(names, [b"connection", b"content-type", b"date", b"content-length"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.accepted, [("203.0.113.10", CONFIG)])

    def test_ipv6Peer(self) -> None:
        """
        The client IP is the bare host, as Go's C{SplitHostPort} gives it.
        """
        protocol, _transport = self.connect(IPv6Address("TCP", "2001:db8::7", 40001))
        protocol.dataReceived(GO_REQUEST)
        self.assertEqual(self.recorder.accepted, [("2001:db8::7", CONFIG)])

    def test_unauthorizedBytes(self) -> None:
        """
        The 401 of spec §15.4.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST.replace(TOKEN.encode(), token("wrong").encode()))
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(body, b"Unauthorized\n")
        values = dict(headers)
        self.assertEqual(values[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(values[b"x-content-type-options"], b"nosniff")
        self.assertEqual(values[b"content-length"], b"13")
        self.assertEqual(values[b"connection"], b"close")
        self.assertIn(b"date", values)
        goOrder = [
            b"connection",
            b"content-type",
            b"x-content-type-options",
            b"date",
            b"content-length",
        ]
        self.assertEqual([name for name, _ in headers if name in goOrder], goOrder)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.accepted, [])

    def test_http10(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, headers, body = parseResponse(transport.value())
        self.assertEqual((status, body), (b"HTTP/1.0 200 OK", BODY))
        self.assertEqual(dict(headers)[b"connection"], b"close")
        self.assertTrue(transport.disconnecting)

    def test_oneRequestPerConnection(self) -> None:
        """
        A pipelined second request on the same connection is not answered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST + GO_REQUEST)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.recorder.accepted), 1)

    def test_secondConnection(self) -> None:
        """
        A second connection that authenticates gets 503; C{onAccepted} runs once.
        """
        first, _firstTransport = self.connect()
        first.dataReceived(GO_REQUEST)
        second, secondTransport = self.connect(IPv4Address("TCP", "198.51.100.1", 5000))
        second.dataReceived(GO_REQUEST)
        status, _, body = parseResponse(secondTransport.value())
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(body, b"handshake already completed\n")
        self.assertEqual(self.recorder.accepted, [("203.0.113.10", CONFIG)])

    def test_idleTimeout(self) -> None:
        """
        A silent connection is closed after L{IDLE_TIMEOUT} seconds.
        """
        self.assertEqual(IDLE_TIMEOUT, 10.0)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HT")
        self.clock.advance(IDLE_TIMEOUT - 0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_headerLimits(self) -> None:
        """
        Too many headers get 400 and a close; too long a header line a close.
        """
        many = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(100))
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST[:-2] + many + b"\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST[:-2] + b"X-Big: " + b"a" * 9000)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.connect()
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(9))
        protocol.dataReceived(GO_REQUEST[:-2] + headers + b"\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertEqual(self.recorder.accepted, [])

    def test_bodyLimit(self) -> None:
        """
        A request body is not kept, and a large one closes the connection.
        """
        protocol, transport = self.connect()
        head = GO_REQUEST[:-2] + b"Content-Length: 1000000\r\n\r\n"
        protocol.dataReceived(head + b"x" * 70000)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.recorder.accepted, [])

    def test_smallBodyIgnored(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GO_REQUEST[:-2] + b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(parseResponse(transport.value())[2], BODY)

    def test_noAccessLogNoSecrets(self) -> None:
        """
        No access log line, and neither the key nor the token in any log.
        """
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        with capturedLogs() as events:
            protocol, _ = self.connect()
            protocol.dataReceived(GO_REQUEST.replace(TOKEN.encode(), b"bad"))
            protocol, _transport = self.connect()
            protocol.dataReceived(GO_REQUEST)
        text = "\n".join(formatEvent(event) for event in events)
        self.assertNotIn("GET /", text)
        self.assertNotIn("Go-http-client", text)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn(KEY, text)


@implementer(IAgentEndpointFactory)
class MemoryEndpoints:
    """
    Plain TCP endpoints on a L{MemoryReactorClock}, recording each URI.
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.uris: list[URI] = []

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        self.uris.append(uri)
        return TCP4ClientEndpoint(self.reactor, uri.host.decode(), uri.port)


class ClientTests(SynchronousTestCase):
    """
    L{clientHandshake} through a real L{Agent} whose connections are
    L{StringTransport}s fed by hand.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = MemoryEndpoints(self.reactor)
        self.agent = Agent.usingEndpointFactory(self.reactor, self.endpoints)

    def handshake(
        self, tunnel: str = "203.0.113.10:10101", serverName: str = "none", **kw: Any
    ) -> Deferred[TunnelConfig]:
        return Deferred.fromCoroutine(
            clientHandshake(self.agent, tunnel, serverName, KEY, clock=self.reactor, **kw)
        )

    def connect(self) -> tuple[Protocol, StringTransport]:
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def serve(self, response: bytes, **kw: Any) -> tuple[Deferred[TunnelConfig], bytes]:
        """
        Run a handshake against a server that answers C{response} then closes.
        """
        d = self.handshake(**kw)
        protocol, transport = self.connect()
        request = transport.value()
        protocol.dataReceived(response)
        protocol.connectionLost(Failure(ConnectionDone()))
        return d, request

    def failure(self, d: Deferred[TunnelConfig], *words: str) -> str:
        error = self.failureResultOf(d, HandshakeError).value
        message = str(error)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_goServer(self) -> None:
        """
        Go's response (spec §15.4), closed right after the body, decodes.
        """
        d, _request = self.serve(GO_RESPONSE)
        self.assertEqual(self.successResultOf(d), CONFIG)
        self.assertEqual(self.endpoints.uris[0].toBytes(), b"http://203.0.113.10:10101/")

    def test_requestHeaders(self) -> None:
        """
        C{Host: none} for an IP tunnel, the bearer token and the ext offer.
        """
        _d, request = self.serve(GO_RESPONSE)
        self.assertTrue(request.startswith(b"GET / HTTP/1.1\r\n"), request)
        lines = request.split(b"\r\n")
        self.assertIn(b"Host: none", lines)
        self.assertIn(b"Authorization: Bearer " + TOKEN.encode(), lines)
        self.assertIn(b"X-Nodepass-Ext: 1", [line.title() for line in lines])
        self.assertEqual(sum(line.lower().startswith(b"host:") for line in lines), 1)

    def test_namedHost(self) -> None:
        """
        A named tunnel sends its host name, without the port, as C{Host}.
        """
        _d, request = self.serve(
            GO_RESPONSE, tunnel="tunnel.example.com:10101", serverName="tunnel.example.com"
        )
        self.assertIn(b"Host: tunnel.example.com\r\n", request)
        self.assertEqual(self.endpoints.uris[0].host, b"tunnel.example.com")
        self.assertEqual(self.endpoints.uris[0].port, 10101)

    def test_ipv6Tunnel(self) -> None:
        d, request = self.serve(GO_RESPONSE, tunnel="[2001:db8::1]:10101")
        self.assertEqual(self.successResultOf(d), CONFIG)
        self.assertEqual(self.endpoints.uris[0].host, b"2001:db8::1")
        self.assertIn(b"Host: none\r\n", request)

    def test_https(self) -> None:
        """
        C{https} switches the scheme; the exchange stays bounded.
        """
        d = self.handshake(tunnel="edge.example.org:443", serverName="edge.example.org", https=True)
        self.assertEqual(self.endpoints.uris[0].scheme, b"https")
        self.assertEqual(self.endpoints.uris[0].port, 443)
        self.reactor.advance(30)
        self.failure(d, "timed out after 30s")

    def test_ext(self) -> None:
        response = GO_RESPONSE.replace(b"45", b"53").replace(b'{"flow"', b'{"ext":1,"flow"')
        d, _ = self.serve(response)
        self.assertTrue(self.successResultOf(d).ext)

    def test_closeDelimited(self) -> None:
        """
        A body without C{Content-Length}, ended by the close, is accepted.
        """
        d, _ = self.serve(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY)
        self.assertEqual(self.successResultOf(d), CONFIG)

    def test_chunked(self) -> None:
        d, _ = self.serve(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"2d\r\n"
            + BODY
            + b"\r\n0\r\n\r\n"
        )
        self.assertEqual(self.successResultOf(d), CONFIG)

    def test_status(self) -> None:
        """
        Any status but 200 fails, and the connection is dropped.
        """
        for status in (b"401 Unauthorized", b"404 Not Found", b"503 Service Unavailable"):
            d = self.handshake()
            protocol, transport = self.connect()
            protocol.dataReceived(b"HTTP/1.1 " + status + b"\r\nContent-Length: 100\r\n\r\npartial")
            message = self.failure(d)
            self.assertEqual(message, "tunnelHandshake: status " + status[:3].decode())
            # Stopping a TCP transport closes it.
            self.assertEqual(transport.producerState, "stopped")

    def test_wrongTypes(self) -> None:
        for body, word in (
            (b'{"flow":"-","max":"1024","tls":"1","type":"0"}\n', "'max'"),
            (b'{"flow":"-","max":1024,"tls":1,"type":"0"}\n', "'tls'"),
            (b"not json\n", "invalid JSON"),
        ):
            d, _ = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            self.failure(d, word)

    def test_truncated(self) -> None:
        """
        A close before the announced length is a transport error.
        """
        d, _ = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n" + BODY[:20])
        self.failure(d, "tunnelHandshake: GET http://203.0.113.10:10101/:")

    def test_connectionRefused(self) -> None:
        d = self.handshake()
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failure(d, "tunnelHandshake: GET http://203.0.113.10:10101/", "refused")

    def test_connectionLost(self) -> None:
        """
        A server that closes without answering (e.g. a pool listener).
        """
        d = self.handshake()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"\x00\x00\x00\x00")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.failure(d, "tunnelHandshake: GET")

    def test_timeout(self) -> None:
        """
        A server that accepts and never answers: the bound fires, the
        connection is dropped.
        """
        d = self.handshake(timeout=2.5)
        _protocol, transport = self.connect()
        self.reactor.advance(2.4)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(self.failure(d), "tunnelHandshake: timed out after 2.5s")
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_timeoutReadingBody(self) -> None:
        """
        A server that sends the head and then dribbles: the bound fires and
        the transfer is stopped.
        """
        d = self.handshake(timeout=3)
        protocol, transport = self.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n{")
        self.reactor.advance(2)
        protocol.dataReceived(b'"flow"')
        self.reactor.advance(1)
        self.assertEqual(self.failure(d), "tunnelHandshake: timed out after 3s")
        self.assertEqual(transport.producerState, "stopped")

    def test_bodyTooLarge(self) -> None:
        d = self.handshake()
        protocol, transport = self.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 70000)
        self.failure(d, "response body over 65536 bytes")
        self.assertEqual(transport.producerState, "stopped")

    def test_timeoutConnecting(self) -> None:
        d = self.handshake(timeout=5)
        self.reactor.advance(5)
        self.failure(d, "timed out after 5s")

    def test_cancel(self) -> None:
        """
        Cancelling the caller's Deferred cancels, it is not a handshake error.
        """
        d = self.handshake()
        d.cancel()
        self.failureResultOf(d, CancelledError)


class EndToEndTests(SynchronousTestCase):
    """
    Our client against our server, in memory.
    """

    def exchange(self, clientKey: str) -> tuple[Deferred[TunnelConfig], Recorder]:
        reactor = MemoryReactorClock()
        agent = Agent.usingEndpointFactory(reactor, MemoryEndpoints(reactor))
        recorder = Recorder()
        site = handshakeFactory(recorder.resource(), reactor)
        d = Deferred.fromCoroutine(
            clientHandshake(agent, "203.0.113.10:10101", "none", clientKey, clock=reactor)
        )
        _, _, factory, _, _ = reactor.tcpClients[-1]
        clientAddress = IPv4Address("TCP", "198.51.100.4", 50000)
        serverAddress = IPv4Address("TCP", "203.0.113.10", 10101)
        server = site.buildProtocol(clientAddress)
        client = factory.buildProtocol(serverAddress)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, serverAddress, clientAddress),
            client,
            iosim.FakeTransport(client, False, clientAddress, serverAddress),
        )
        pump.flush()
        return d, recorder

    def test_ext(self) -> None:
        d, recorder = self.exchange(KEY)
        config = self.successResultOf(d)
        self.assertTrue(config.ext)
        self.assertEqual(recorder.accepted, [("198.51.100.4", config)])

    def test_wrongKey(self) -> None:
        d, recorder = self.exchange("other")
        self.assertEqual(
            str(self.failureResultOf(d, HandshakeError).value), "tunnelHandshake: status 401"
        )
        self.assertEqual(recorder.accepted, [])


class ThrottledWireTests(SynchronousTestCase):
    """
    A handshake resource with a L{FailureThrottle}: wrong tokens from one address are
    slowed, then refused with 429, without touching other addresses; the log gets a few
    lines, not one per attempt.
    """

    def setUp(self) -> None:
        from nodepass.throttle import FailureThrottle

        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        log = Logger(namespace="nodepass", observer=self.events.append)
        self.recorder = Recorder()
        self.throttle = FailureThrottle(self.clock, log, "bad tunnel keys")
        resource = HandshakeResource(
            KEY,
            self.recorder.announce,
            self.recorder.onAccepted,
            log=log,
            throttle=self.throttle,
            clock=self.clock,
        )
        self.site = handshakeFactory(resource, self.clock)

    def attempt(self, host: str, key: str) -> tuple[bytes, dict[bytes, bytes], StringTransport]:
        peer = IPv4Address("TCP", host, 40000)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        self.protocol = protocol
        protocol.dataReceived(
            b"GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer "
            + token(key).encode()
            + b"\r\n\r\n"
        )
        status, headers, _ = parseResponse(transport.value())
        return status, dict(headers), transport

    def test_slowedThenRefused(self) -> None:
        statuses = []
        for n in range(1, self.throttle.blockAfter):
            status, _, transport = self.attempt("198.51.100.7", "wrong")
            if n >= self.throttle.slowAfter:
                self.assertEqual(transport.value(), b"")  # held back
                self.clock.advance(self.throttle.delayFor(n))
                status, _, _ = parseResponse(transport.value())
            statuses.append(status)
        self.assertEqual(set(statuses), {b"HTTP/1.1 401 Unauthorized"})
        status, _, _ = self.attempt("198.51.100.7", "wrong")  # the last: blocked from now on
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        status, headers, _ = self.attempt("198.51.100.7", KEY)  # even the right key
        self.assertEqual(status, b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(headers[b"retry-after"], b"61")
        self.assertEqual(self.recorder.accepted, [])
        # Another address is not affected, and its right key works.
        status, _, _ = self.attempt("198.51.100.8", KEY)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        warnings = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 2, [e["log_format"] for e in warnings])

    def test_blockEnds(self) -> None:
        for _ in range(self.throttle.blockAfter):
            self.attempt("198.51.100.7", "wrong")
            self.clock.advance(3)
        self.clock.advance(61)
        status, _, _ = self.attempt("198.51.100.7", KEY)
        self.assertEqual(status, b"HTTP/1.1 200 OK")

    def test_hangUpWhileHeldBack(self) -> None:
        for _ in range(self.throttle.slowAfter - 1):
            self.attempt("198.51.100.7", "wrong")
        _, _, transport = self.attempt("198.51.100.7", "wrong")
        self.assertTrue(self.clock.getDelayedCalls())
        self.assertEqual(transport.value(), b"")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(self.throttle.maxDelay)  # the held-back answer is dropped, no error
        self.assertEqual(transport.value(), b"")


class PoolAuthNegotiationTests(SynchronousTestCase):
    """
    C{auth} is agreed only between our own peers that both ask for it (with C{ext}).
    """

    def answer(self, **headers: str) -> TunnelConfig:
        recorder = Recorder()
        stub = StubTreq(recorder.resource())
        response = self.successResultOf(stub.get("http://none/", headers=headers))
        return decodeConfig(self.successResultOf(stub.content(response)))

    def test_agreement(self) -> None:
        bearer = {"Authorization": "Bearer " + TOKEN}
        both = self.answer(**bearer, **{"X-NodePass-Ext": "1", "X-NodePass-Pool-Auth": "1"})
        self.assertEqual((both.ext, both.auth), (True, True))
        extOnly = self.answer(**bearer, **{"X-NodePass-Ext": "1"})
        self.assertEqual((extOnly.ext, extOnly.auth), (True, False))
        authOnly = self.answer(**bearer, **{"X-NodePass-Pool-Auth": "1"})
        self.assertEqual((authOnly.ext, authOnly.auth), (False, False))

    def test_wire(self) -> None:
        config = TunnelConfig(flow="-", max=8, tls="0", type="0", ext=True, auth=True)
        self.assertEqual(
            encodeConfig(config), b'{"auth":1,"ext":1,"flow":"-","max":8,"tls":"0","type":"0"}\n'
        )
        self.assertEqual(decodeConfig(encodeConfig(config)), config)
        # Without ext, an auth field means nothing (and a Go client ignores both).
        plain = decodeConfig(b'{"auth":1,"flow":"-","max":8,"tls":"0","type":"0"}')
        self.assertEqual((plain.ext, plain.auth), (False, False))
        self.assertEqual(
            encodeConfig(TunnelConfig(flow="-", max=8, tls="0", type="0", auth=True)),
            b'{"flow":"-","max":8,"tls":"0","type":"0"}\n',
        )
