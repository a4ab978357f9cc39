"""Conformance tests for pool transport plugins.

A third-party transport (docs/plugins.md) checks itself against the contract
of L{INodePassTransport} by mixing L{TransportConformanceMixin} into a
L{twisted.trial.unittest.TestCase} (not a C{SynchronousTestCase}: the tests
run the global reactor, because C{connect} dials a real address) and setting
C{transport}::

    from twisted.trial.unittest import TestCase

    from nodepass.testing import TransportConformanceMixin
    from mypackage.transport import myTransport

    class MyTransportTests(TransportConformanceMixin, TestCase):
        transport = myTransport

Run it with ``python -m twisted.trial mypackage`` or pytest.  Each test
listens with C{transport.serverFactory} on an ephemeral port of 127.0.0.1,
dials it with C{transport.connect}, and plays a miniature pool on top: the
server side writes the 4 ID bytes first, then echoes; the client side reads
the ID, then collects.  Every wait is bounded by L{STEP_TIMEOUT} seconds and
every test closes what it opened, so trial's dirty-reactor check passes.

The TLS variants use NodePass's own mode-1 credentials (a self-signed
certificate, no verification); the plain variants are skipped when the
transport says it always runs over TLS (C{minimumTLS == 1}), and the
half-close test when it cannot half-close (C{halfClose} false).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IListeningPort,
    IProtocolFactory,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nodepass.transports.interface import (
    IALPNTransport,
    ICredentialTransport,
    IDisconnectingTransport,
    IListeningPoolTransport,
    ILoggingTransport,
    INodePassTransport,
    PoolAddress,
    PoolTLS,
    declareAbilities,
    tlsArgument,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

__all__ = ["POOL_ID", "STEP_TIMEOUT", "TransportConformanceMixin"]

_T = TypeVar("_T")

#: The ID the test server writes first on every connection (the control
#: connection's, as on a real pool's first connection).
POOL_ID = b"\x00\x00\x00\x00"

#: Seconds allowed for each step of a test (connect, a transfer, a close).
STEP_TIMEOUT = 5.0

#: What C{type=} and a plugin C{name} may be (the URL parser's syntax).
_TOKEN = re.compile(r"[a-z][a-z0-9_\-]{0,31}\Z")
_BUILTIN_CODES = ("0", "1", "2", "3")

_LOOPBACK = "127.0.0.1"


class _Event:
    """
    Something that happens once; any number of waiters, each with its own
    Deferred (so a waiter timing out never disturbs the others).
    """

    def __init__(self) -> None:
        self.happened = False
        self.value: Any = None
        self._waiters: list[Deferred[Any]] = []

    def fire(self, value: Any = None) -> None:
        if self.happened:
            return
        self.happened, self.value = True, value
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(value)

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.happened:
            d.callback(self.value)
        else:
            self._waiters.append(d)
        return d


class _Peer(Protocol):
    """
    What both test sides share: readiness (C{connectionMade}, or
    C{handshakeCompleted} when the transport is ready only after TLS), the
    bytes received after the ID, the end of input and the end of the
    connection.
    """

    def __init__(self, waitForHandshake: bool) -> None:
        self.waitForHandshake = waitForHandshake
        self.received = bytearray()
        self.ready = _Event()
        self.readLost = _Event()
        self.lost = _Event()
        self.lostReason: Failure | None = None
        self._wanted: list[tuple[int, _Event]] = []

    def connectionMade(self) -> None:
        if not self.waitForHandshake:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        if not self.ready.happened:
            self.ready.fire()
            self.whenReady()

    def whenReady(self) -> None:
        pass

    def collect(self, data: bytes) -> None:
        self.received += data
        for count, event in list(self._wanted):
            if len(self.received) >= count:
                self._wanted.remove((count, event))
                event.fire(bytes(self.received))

    def receivedAtLeast(self, count: int) -> Deferred[bytes]:
        """
        Fires with everything received (after the ID) once it is C{count}
        bytes or more.
        """
        event = _Event()
        self._wanted.append((count, event))
        self.collect(b"")
        return event.wait()

    def readConnectionLost(self) -> None:
        self.readLost.fire()
        self.endOfInput()

    def endOfInput(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lostReason = reason
        self.lost.fire()


class _Server(_Peer):
    """
    The pool's server side in miniature: writes the ID once ready, then
    echoes; at the end of input writes C{tail} (if any) and closes.
    """

    tail = b""

    def whenReady(self) -> None:
        assert self.transport is not None
        self.transport.write(POOL_ID)

    def dataReceived(self, data: bytes) -> None:
        self.collect(data)
        assert self.transport is not None
        self.transport.write(data)

    def endOfInput(self) -> None:
        assert self.transport is not None
        if self.tail:
            self.transport.write(self.tail)
        self.transport.loseConnection()


class _Client(_Peer):
    """
    The pool's client side in miniature: reads the 4 ID bytes, then collects.
    """

    def __init__(self, waitForHandshake: bool) -> None:
        super().__init__(waitForHandshake)
        self.ident = bytearray()
        self.identified = _Event()

    def dataReceived(self, data: bytes) -> None:
        if not self.identified.happened:
            need = 4 - len(self.ident)
            self.ident += data[:need]
            data = data[need:]
            if len(self.ident) < 4:
                return
            self.identified.fire(bytes(self.ident))
        if data:
            self.collect(data)


# Like the pool: a plain connection declares only IHalfCloseableProtocol, a
# TLS one only IHandshakeListener (Twisted's endpoint wrapper forwards just
# one of the optional protocol interfaces).
@implementer(IHalfCloseableProtocol)
class _PlainServer(_Server):
    pass


@implementer(IHandshakeListener)
class _TLSServer(_Server):
    pass


@implementer(IHalfCloseableProtocol)
class _PlainClient(_Client):
    pass


@implementer(IHandshakeListener)
class _TLSClient(_Client):
    pass


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], _Server]) -> None:
        self.build = build
        self.servers: list[_Server] = []
        self.accepted = _Event()

    def buildProtocol(self, addr: Any) -> _Server:
        server = self.build()
        server.factory = self
        self.servers.append(server)
        self.accepted.fire(server)
        return server


class _Pair:
    """
    One connected client and server, ready and identified.
    """

    def __init__(self, client: _Client, server: _Server) -> None:
        self.client = client
        self.server = server


def _stopOnce(port: IListeningPort) -> Any:
    """
    Stop a listener that a test may already have stopped.
    """
    if getattr(port, "_npStopped", False):
        return None
    port._npStopped = True  # type: ignore[attr-defined]
    return port.stopListening()


class TransportConformanceMixin(_Base):
    """
    The contract of L{INodePassTransport}, as tests.  Mix into
    L{twisted.trial.unittest.TestCase} (it needs the running reactor) and set
    C{transport} to the object your plugin module exposes.
    """

    #: The transport under test: set it in the subclass.
    transport: Any = None

    #: trial's per-test limit, in seconds (each step has its own, shorter
    #: limit, L{STEP_TIMEOUT}).
    timeout = 30

    # -- the object itself -------------------------------------------------

    def test_providesInterface(self) -> None:
        """
        The transport provides L{INodePassTransport} (attributes and method
        signatures, checked by L{verifyObject}).
        """
        self.assertIsNotNone(self.transport, "set `transport` on the test class")
        self.assertTrue(verifyObject(INodePassTransport, self.transport))

    def test_name(self) -> None:
        """
        C{name} is a lower-case token, as C{type=} accepts it.
        """
        name = self.transport.name
        self.assertIsInstance(name, str)
        self.assertTrue(_TOKEN.match(name), f"name {name!r} is not a lower-case token")

    def test_typeCode(self) -> None:
        """
        C{typeCode} is a string: one of the reference's numeric codes, or the
        transport's own name.
        """
        code = self.transport.typeCode
        self.assertIsInstance(code, str)
        self.assertTrue(
            code in _BUILTIN_CODES or code == self.transport.name,
            f"typeCode {code!r} is neither a built-in code nor the name {self.transport.name!r}",
        )

    def test_flags(self) -> None:
        """
        The capability flags have the documented types and values.
        """
        self.assertIsInstance(self.transport.halfClose, bool)
        self.assertIsInstance(self.transport.readyAfterHandshake, bool)
        self.assertIn(self.transport.minimumTLS, (0, 1))

    def test_withLogger(self) -> None:
        """
        A transport providing L{ILoggingTransport} gives each instance its own
        copy: another object, itself a transport, with the same name, type
        code and flags.
        """
        if not ILoggingTransport.providedBy(self.transport):
            self.skipTest(f"{self.transport.name} does not log")
        self.assertTrue(verifyObject(ILoggingTransport, self.transport))
        events: list[LogEvent] = []
        log = Logger(namespace="nodepass", observer=cast(ILogObserver, events.append))
        own = self.transport.withLogger(log)
        self.assertIsNot(own, self.transport)
        self.assertTrue(verifyObject(INodePassTransport, own))
        attributes = ("name", "typeCode", "halfClose", "minimumTLS", "readyAfterHandshake")
        self.assertEqual(
            [getattr(own, name) for name in attributes],
            [getattr(self.transport, name) for name in attributes],
        )

    def test_optionalAbilities(self) -> None:
        """
        Each optional ability the transport declares (or offers as a plain
        attribute, the older way) is complete: L{verifyObject} against its
        interface.
        """
        transport = self._abilities()
        declared = [
            interface
            for interface in (
                IListeningPoolTransport,
                ICredentialTransport,
                IALPNTransport,
                IDisconnectingTransport,
                ILoggingTransport,
            )
            if interface.providedBy(transport)
        ]
        for interface in declared:
            self.assertTrue(verifyObject(interface, transport))
        if IALPNTransport.providedBy(transport):
            alpn = transport.alpn
            self.assertTrue(
                isinstance(alpn, list) and all(isinstance(name, bytes) for name in alpn),
                f"alpn must be a list of bytes, not {alpn!r}",
            )

    # -- relaying ----------------------------------------------------------

    def test_relayPlain(self) -> Deferred[None]:
        """
        Without TLS: the ID reaches the client first, then several writes
        each way arrive complete and in order.
        """
        return Deferred.fromCoroutine(self._relay(tls=False))

    def test_relayTLS(self) -> Deferred[None]:
        """
        The same inside TLS.
        """
        return Deferred.fromCoroutine(self._relay(tls=True))

    def test_bigPlain(self) -> Deferred[None]:
        """
        Without TLS: 1 MiB goes to the server and back intact.
        """
        return Deferred.fromCoroutine(self._big(tls=False))

    def test_bigTLS(self) -> Deferred[None]:
        """
        The same inside TLS.
        """
        return Deferred.fromCoroutine(self._big(tls=True))

    def test_clientClosesPlain(self) -> Deferred[None]:
        """
        Without TLS: the client closing ends the server's connection.
        """
        return Deferred.fromCoroutine(self._close(tls=False, byClient=True))

    def test_clientClosesTLS(self) -> Deferred[None]:
        """
        The same inside TLS.
        """
        return Deferred.fromCoroutine(self._close(tls=True, byClient=True))

    def test_serverClosesPlain(self) -> Deferred[None]:
        """
        Without TLS: the server closing ends the client's connection.
        """
        return Deferred.fromCoroutine(self._close(tls=False, byClient=False))

    def test_serverClosesTLS(self) -> Deferred[None]:
        """
        The same inside TLS.
        """
        return Deferred.fromCoroutine(self._close(tls=True, byClient=False))

    def test_halfClose(self) -> Deferred[None]:
        """
        A transport with C{halfClose}: the client ending its output is the
        server's C{readConnectionLost}, and the server can still answer.
        """
        return Deferred.fromCoroutine(self._halfClose())

    def test_peerCertificate(self) -> Deferred[None]:
        """
        With TLS, the client's transport offers the server's certificate
        through C{getPeerCertificate()} (the verify exchange reads it).
        """
        return Deferred.fromCoroutine(self._peerCertificate())

    def test_connectFails(self) -> Deferred[None]:
        """
        Dialling a port where nothing listens fails the Deferred C{connect}
        returns, within the time allowed.
        """
        return Deferred.fromCoroutine(self._connectFails())

    # -- the scenarios -----------------------------------------------------

    async def _relay(self, tls: bool) -> None:
        pair = await self._connect(tls)
        chunks = [b"%03d:" % i + os.urandom(i % 7) for i in range(100)]
        for chunk in chunks:
            pair.client.transport.write(chunk)  # type: ignore[union-attr]
        expected = b"".join(chunks)
        echoed = await self._within(pair.client.receivedAtLeast(len(expected)), "the echo")
        self.assertEqual(bytes(pair.server.received), expected)
        self.assertEqual(echoed, expected)

    async def _big(self, tls: bool) -> None:
        pair = await self._connect(tls)
        payload = os.urandom(1 << 20)
        pair.client.transport.write(payload)  # type: ignore[union-attr]
        echoed = await self._within(pair.client.receivedAtLeast(len(payload)), "1 MiB echoed")
        self.assertEqual(len(pair.server.received), len(payload))
        self.assertEqual(len(echoed), len(payload))
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())

    async def _close(self, tls: bool, byClient: bool) -> None:
        pair = await self._connect(tls)
        pair.client.transport.write(b"last words")  # type: ignore[union-attr]
        await self._within(pair.client.receivedAtLeast(10), "the echo")
        closer, other = (pair.client, pair.server) if byClient else (pair.server, pair.client)
        closer.transport.loseConnection()  # type: ignore[union-attr]
        await self._within(other.lost.wait(), "connectionLost on the other side")
        await self._within(closer.lost.wait(), "connectionLost on the closing side")

    async def _halfClose(self) -> None:
        if not self.transport.halfClose:
            self.skipTest(f"{self.transport.name} does not support half-close")
        self._requirePlain()
        pair = await self._connect(False, tail=b"<after EOF>")
        pair.client.transport.write(b"request")  # type: ignore[union-attr]
        pair.client.transport.loseWriteConnection()  # type: ignore[union-attr]
        await self._within(pair.server.readLost.wait(), "readConnectionLost on the server")
        answer = await self._within(
            pair.client.receivedAtLeast(len(b"request<after EOF>")), "the answer after EOF"
        )
        self.assertEqual(answer, b"request<after EOF>")
        await self._within(pair.client.lost.wait(), "connectionLost on the client")
        await self._within(pair.server.lost.wait(), "connectionLost on the server")

    async def _peerCertificate(self) -> None:
        pair = await self._connect(True)
        transport = pair.client.transport
        getPeerCertificate = getattr(transport, "getPeerCertificate", None)
        self.assertIsNotNone(
            getPeerCertificate, f"{transport!r} offers no getPeerCertificate() with TLS"
        )
        assert getPeerCertificate is not None
        self.assertIsNotNone(getPeerCertificate(), "no peer certificate after the handshake")

    async def _connectFails(self) -> None:
        from twisted.internet import reactor

        # A port that was just in use and is closed now.
        tls = self.transport.minimumTLS >= 1
        serverTLS, clientTLS = self._credentials(tls)
        port = self._listen(_ServerFactory(lambda: _PlainServer(False)), serverTLS)
        number = self._portNumber(port)
        await maybeDeferred(_stopOnce, port)
        client = _PlainClient(False)
        try:
            await self._within(
                self.transport.connect(reactor, self._address(number), client, clientTLS, 2.0),
                "connect to fail",
            )
        except self.failureException:
            raise
        except Exception:
            return
        client.transport.loseConnection()  # type: ignore[union-attr]
        self.fail(f"connect to the closed port {number} succeeded")

    # -- the harness -------------------------------------------------------

    def _abilities(self) -> Any:
        """
        The transport with its optional abilities declared, as the tunnel
        sees it (L{declareAbilities}: a plugin offering them as plain
        attributes gets their interfaces).
        """
        return declareAbilities(self.transport)

    def _requirePlain(self) -> None:
        if self.transport.minimumTLS >= 1:
            self.skipTest(f"{self.transport.name} always runs over TLS")

    def _credentials(self, tls: bool) -> tuple[Any, Any]:
        """
        The C{tls} arguments of the server side and of the client side, in
        the form the tunnel passes this transport (L{tlsArgument}): one
        L{PoolTLS} value for an L{IPoolTLSTransport}, else L{None} or
        pyOpenSSL creators, or credentials and the mode for an
        L{ICredentialTransport}.
        """
        transport = self._abilities()
        server = client = PoolTLS()
        if tls:
            from nodepass.tls import ServerCredentials, clientContextFactory

            # A transport that negotiates an application protocol (HTTP/2:
            # h2) declares it in its ``alpn``; both ends must offer it.
            alpn = list(transport.alpn) if IALPNTransport.providedBy(transport) else []
            server = PoolTLS.forServer(1, ServerCredentials.selfSigned(), alpn)
            client = PoolTLS.forClient(
                1, lambda: clientContextFactory(1, "none", alpn=alpn or None), alpn
            )
        return (
            tlsArgument(transport, server, server=True),
            tlsArgument(transport, client, server=False),
        )

    def _address(self, port: int) -> PoolAddress:
        return PoolAddress(
            host=_LOOPBACK, ip=_LOOPBACK, port=port, text=f"{_LOOPBACK}:{port}", serverName="none"
        )

    def _portNumber(self, port: IListeningPort) -> int:
        host: Any = port.getHost()
        return int(host.port)

    def _listen(self, factory: _ServerFactory, serverTLS: Any) -> IListeningPort:
        from twisted.internet import reactor

        transport = self._abilities()
        serving = transport.serverFactory(reactor, factory, serverTLS)
        self.assertTrue(IProtocolFactory.providedBy(serving), f"serverFactory returned {serving!r}")
        port: IListeningPort
        if IListeningPoolTransport.providedBy(transport):
            # The transport serves the pool on a listener of its own.
            port = transport.listenPool(reactor, (_LOOPBACK, 0), factory, serverTLS)
        else:
            port = reactor.listenTCP(0, serving, interface=_LOOPBACK)  # type: ignore[attr-defined]
        if IDisconnectingTransport.providedBy(transport):
            self.addCleanup(transport.disconnectAll)
        self.addCleanup(_stopOnce, port)
        return port

    async def _connect(self, tls: bool, tail: bytes = b"") -> _Pair:
        """
        A client and a server connected through the transport, both ready,
        the ID read by the client; closed again when the test ends.
        """
        from twisted.internet import reactor

        if not tls:
            self._requirePlain()
        waitForHandshake = tls and bool(self.transport.readyAfterHandshake)
        serverKind = _TLSServer if tls else _PlainServer
        clientKind = _TLSClient if tls else _PlainClient

        def build() -> _Server:
            server = serverKind(waitForHandshake)
            server.tail = tail
            return server

        factory = _ServerFactory(build)
        serverTLS, clientTLS = self._credentials(tls)
        port = self._listen(factory, serverTLS)
        client = clientKind(waitForHandshake)
        self.addCleanup(self._closeAll, client, factory)
        connected = await self._within(
            self.transport.connect(
                reactor, self._address(self._portNumber(port)), client, clientTLS, STEP_TIMEOUT
            ),
            "connect",
        )
        self.assertIs(connected, client, "connect must fire with the protocol it was given")
        server: _Server = await self._within(factory.accepted.wait(), "the server's protocol")
        how = "handshakeCompleted" if waitForHandshake else "connectionMade"
        await self._within(server.ready.wait(), f"the server side to be ready ({how})")
        await self._within(client.ready.wait(), f"the client side to be ready ({how})")
        ident = await self._within(client.identified.wait(), "the 4 ID bytes")
        self.assertEqual(ident, POOL_ID)
        self.assertEqual(len(factory.servers), 1, "one dial, one server-side connection")
        return _Pair(client, server)

    async def _closeAll(self, client: _Client, factory: _ServerFactory) -> None:
        """
        Abort whatever is still connected and wait until it is gone.
        """
        for peer in [client, *factory.servers]:
            if peer.transport is not None and not peer.lost.happened:
                abort = getattr(peer.transport, "abortConnection", None)
                (abort or peer.transport.loseConnection)()
        for peer in [client, *factory.servers]:
            if peer.transport is not None:
                await self._within(peer.lost.wait(), "connections to close after the test")

    def _within(self, d: Deferred[_T], what: str) -> Deferred[_T]:
        """
        C{d}, failing the test if it has not fired within L{STEP_TIMEOUT}.
        """
        from twisted.internet import reactor

        name = self.transport.name

        def timedOut(failure: Failure) -> None:
            failure.trap(DeferredTimeout)
            raise self.failureException(
                f"{name}: timed out after {STEP_TIMEOUT:g}s waiting for {what}"
            )

        d.addTimeout(STEP_TIMEOUT, reactor)  # type: ignore[arg-type]
        d.addErrback(timedOut)
        return d
