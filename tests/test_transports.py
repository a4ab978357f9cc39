"""
Pool transport discovery (L{nodepass.transports.available} and
L{nodepass.transports.forType}) and the built-in TCP transport checked by the
conformance suite third parties use (L{nodepass.testing}).
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer, providedBy
from zope.interface.verify import verifyObject

from nodepass.testing import TransportConformanceMixin
from nodepass.transports import INodePassTransport, PoolAddress, TransportError, available, forType
from nodepass.transports.interface import (
    IALPNTransport,
    ICredentialTransport,
    IDisconnectingTransport,
    IListeningPoolTransport,
    IPoolTLSTransport,
    IUncheckedPeerTransport,
    PoolTLS,
    creatorOf,
    declareAbilities,
    tlsArgument,
)
from nodepass.transports.tcp import TCPTransport, tcp
from tests.support import ROOT


@implementer(IPlugin, INodePassTransport)
class FakeTransport:
    """
    A transport that is only ever discovered, never used.
    """

    halfClose = False
    minimumTLS = 0
    readyAfterHandshake = False

    def __init__(self, name: str, typeCode: str) -> None:
        self.name = name
        self.typeCode = typeCode

    def serverFactory(
        self, reactor: Any, poolFactory: IProtocolFactory, tls: Any
    ) -> IProtocolFactory:
        raise NotImplementedError

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        raise NotImplementedError


class DiscoveryTests(SynchronousTestCase):
    def test_builtinTCPIsInstalled(self) -> None:
        """
        The plugin scan finds the built-in TCP transport under type code 0.
        """
        found = available()
        self.assertIn("0", found)
        self.assertEqual(found["0"].name, "tcp")
        self.assertIsInstance(found["0"], TCPTransport)
        self.assertIs(forType("0"), found["0"])

    def test_explicitPlugins(self) -> None:
        """
        Given plugins replace the scan; they are keyed by type code.
        """
        ws = FakeTransport("ws", "2")
        mine = FakeTransport("mine", "mine")
        self.assertEqual(available([tcp, ws, mine]), {"0": tcp, "2": ws, "mine": mine})
        self.assertIs(forType("mine", [tcp, mine]), mine)

    def test_samePluginTwice(self) -> None:
        """
        The same object found twice (two paths to one module) is no conflict.
        """
        self.assertEqual(available([tcp, tcp]), {"0": tcp})

    def test_unknownType(self) -> None:
        """
        An unknown type fails with TransportError listing what is available.
        """
        error = self.assertRaises(TransportError, forType, "9")
        message = str(error)
        self.assertIn("type=9", message)
        self.assertIn("0 (tcp)", message)

    def test_unknownTypeAmongGiven(self) -> None:
        error = self.assertRaises(
            TransportError, forType, "9", [tcp, FakeTransport("mine", "mine")]
        )
        self.assertIn("available: 0 (tcp), mine (mine)", str(error))

    def test_unknownTypeNothingInstalled(self) -> None:
        error = self.assertRaises(TransportError, forType, "0", [])
        self.assertIn("none", str(error))

    def test_duplicateType(self) -> None:
        """
        Two plugins claiming one type code fail, naming both.
        """
        first, second = FakeTransport("alpha", "3"), FakeTransport("beta", "3")
        error = self.assertRaises(TransportError, available, [first, second])
        message = str(error)
        self.assertIn("'alpha'", message)
        self.assertIn("'beta'", message)
        self.assertIn("'3'", message)
        self.assertIn("FakeTransport", message)
        # forType checks the whole table, not only the entry it looks up.
        self.assertRaises(TransportError, forType, "0", [tcp, first, second])

    def test_duplicateName(self) -> None:
        """
        Two plugins claiming one name fail, naming both.
        """
        error = self.assertRaises(TransportError, available, [tcp, FakeTransport("tcp", "tcp")])
        message = str(error)
        self.assertIn("TCPTransport", message)
        self.assertIn("FakeTransport", message)
        self.assertIn("'tcp'", message)


def test_pluginDirectoryIsNotAPackage() -> None:
    """
    Twisted skips a twisted/plugins directory that is a package, and an
    installed __init__.py would overwrite Twisted's own.
    """
    assert (ROOT / "twisted" / "plugins" / "nodepass_transports.py").is_file()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_pluginModulesAreNamespaced() -> None:
    """
    Every plugin module we ship is prefixed with the distribution's name
    (the dropin cache is keyed by file name across all plugin directories).
    """
    modules = sorted(path.name for path in (ROOT / "twisted" / "plugins").glob("*.py"))
    assert modules
    assert all(name.startswith("nodepass_") for name in modules), modules


class TCPTransportConformanceTests(TransportConformanceMixin, TestCase):
    """
    The built-in TCP/TLS transport passes the suite third parties run.
    """

    transport = tcp


@pytest.mark.parametrize("attribute", ["name", "typeCode", "halfClose", "minimumTLS"])
def test_tcpDeclarations(attribute: str) -> None:
    expected = {"name": "tcp", "typeCode": "0", "halfClose": True, "minimumTLS": 0}
    assert getattr(tcp, attribute) == expected[attribute]


class PluginSyntaxTests(SynchronousTestCase):
    """
    Transports that no URL could select are refused, naming the plugin.
    """

    def test_invalidName(self) -> None:
        error = self.assertRaises(TransportError, available, [FakeTransport("Bad Name", "0")])
        self.assertIn("invalid name", str(error))

    def test_typeCodeMustBeBuiltinOrName(self) -> None:
        error = self.assertRaises(TransportError, available, [FakeTransport("mine", "7")])
        message = str(error)
        self.assertIn("'mine'", message)
        self.assertIn("'7'", message)


class BrokenPluginTests(SynchronousTestCase):
    """
    A plugin module that fails to import disables only itself: the other
    transports are still found, and the failure is logged.
    """

    def test_brokenModuleIsSkippedAndLogged(self) -> None:
        import tempfile
        from pathlib import Path

        from twisted.logger import globalLogPublisher

        import twisted.plugins

        directory = Path(tempfile.mkdtemp())
        (directory / "broken_nodepass_transport.py").write_text(
            "raise ImportError('this transport needs a library that is missing')\n"
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        twisted.plugins.__path__.append(str(directory))
        self.addCleanup(twisted.plugins.__path__.remove, str(directory))
        table = available()
        self.assertIn("0", table)
        self.flushLoggedErrors(ImportError)
        failures = [e.get("log_failure") or e.get("failure") for e in events]
        self.assertTrue(
            any(f is not None and "missing" in f.getErrorMessage() for f in failures),
            "the import failure was not logged",
        )


@implementer(IPlugin, INodePassTransport)
class LegacyAbilities:
    """
    A plugin written before the optional-ability interfaces: it offers them
    as plain attributes and declares only L{INodePassTransport}.
    """

    name = "legacy"
    typeCode = "legacy"
    halfClose = False
    minimumTLS = 0
    readyAfterHandshake = False
    wantsCredentials = True
    alpn = [b"np-legacy"]

    def serverFactory(self, reactor: Any, poolFactory: Any, tls: Any) -> Any:
        raise NotImplementedError

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        raise NotImplementedError

    def listenPool(
        self,
        reactor: Any,
        address: tuple[str, int],
        poolFactory: Any,
        tls: Any,
        clientIP: str | None = None,
    ) -> Any:
        raise NotImplementedError

    def disconnectAll(self) -> None:
        pass


class AbilityTests(SynchronousTestCase):
    """
    Optional abilities are interfaces; a plugin offering them the older way,
    as plain attributes, gets them declared by L{declareAbilities}.
    """

    def test_legacyAttributesBecomeInterfaces(self) -> None:
        """
        Each ability offered as an attribute is declared on the object, with
        one deprecation warning naming them.
        """
        log, events = _capturingLogger()
        transport = LegacyAbilities()
        self.assertIs(declareAbilities(transport, log), transport)
        for interface in (
            IListeningPoolTransport,
            ICredentialTransport,
            IALPNTransport,
            IDisconnectingTransport,
        ):
            self.assertTrue(interface.providedBy(transport), interface)
            self.assertTrue(verifyObject(interface, transport))
        self.assertFalse(IUncheckedPeerTransport.providedBy(transport))
        self.assertEqual(len(events), 1)
        message = formatEvent(events[0])
        self.assertIn("listenPool, wantsCredentials, alpn, disconnectAll", message)
        self.assertIn("IListeningPoolTransport", message)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        # Declared now: a second look changes nothing and says nothing.
        declareAbilities(transport, log)
        self.assertEqual(len(events), 1)
        # Other objects of the class are not touched.
        self.assertFalse(IListeningPoolTransport.providedBy(LegacyAbilities()))

    def test_falseOrAbsentIsNoAbility(self) -> None:
        """
        C{wantsCredentials = False} and absent attributes declare nothing.
        """
        log, events = _capturingLogger()
        transport = FakeTransport("plain", "plain")
        transport.wantsCredentials = False  # type: ignore[attr-defined]
        declareAbilities(transport, log)
        self.assertFalse(ICredentialTransport.providedBy(transport))
        self.assertEqual(events, [])

    def test_declaredTransportUntouched(self) -> None:
        """
        The built-ins declare their abilities themselves: nothing to add, nothing logged.
        """
        from nodepass.transports.http2 import h2transport
        from nodepass.transports.quic import quic
        from nodepass.transports.websocket import ws

        log, events = _capturingLogger()
        for transport in (tcp, ws, h2transport, quic):
            before = list(providedBy(transport))
            declareAbilities(transport, log)
            self.assertEqual(list(providedBy(transport)), before)
        self.assertEqual(events, [])

    def test_builtinAbilities(self) -> None:
        """
        What each built-in declares: WebSocket, HTTP/2 and QUIC take a L{PoolTLS};
        WebSocket takes pool connections from any address, HTTP/2 negotiates ALPN, QUIC has
        its own listener and TLS stack, ALPN, and shared connections to drop.
        """
        from nodepass.transports.http2 import h2transport
        from nodepass.transports.quic import quic
        from nodepass.transports.websocket import ws

        optional = (
            IPoolTLSTransport,
            IListeningPoolTransport,
            ICredentialTransport,
            IALPNTransport,
            IDisconnectingTransport,
            IUncheckedPeerTransport,
        )

        def declared(transport: Any) -> set[str]:
            return {i.__name__ for i in optional if i.providedBy(transport)}

        # TCP takes the older tls forms until it declares IPoolTLSTransport.
        self.assertLessEqual(declared(tcp), {"IPoolTLSTransport"})
        self.assertEqual(declared(ws), {"IPoolTLSTransport", "IUncheckedPeerTransport"})
        self.assertEqual(declared(h2transport), {"IPoolTLSTransport", "IALPNTransport"})
        self.assertEqual(
            declared(quic),
            {
                "IPoolTLSTransport",
                "IListeningPoolTransport",
                "ICredentialTransport",
                "IALPNTransport",
                "IDisconnectingTransport",
            },
        )
        for transport in (ws, h2transport, quic):
            self.assertEqual(declared(transport.withLogger(Logger())), declared(transport))


def _capturingLogger() -> tuple[Logger, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Logger(namespace="nodepass", observer=cast(ILogObserver, events.append)), events


class LegacyTCP(TCPTransport):
    """
    The TCP transport as a plugin written before the ability interfaces would
    offer ALPN and C{disconnectAll}: plain attributes only.
    """

    name = "legacytcp"
    typeCode = "legacytcp"
    alpn = [b"np-test"]

    def __init__(self) -> None:
        self.disconnects = 0

    def disconnectAll(self) -> None:
        self.disconnects += 1


class LegacyTCPConformanceTests(TransportConformanceMixin, TestCase):
    """
    Such a plugin still passes the suite: its attributes are used as before.
    """

    transport = LegacyTCP()


class RecordingCredentials:
    """
    Stands for L{nodepass.tls.ServerCredentials}: records the creators asked for.
    """

    def __init__(self) -> None:
        self.asked: list[list[bytes] | None] = []

    def contextFactory(self, alpn: list[bytes] | None = None) -> tuple[str, Any]:
        self.asked.append(alpn)
        return ("server creator", alpn)


class PoolTLSTests(SynchronousTestCase):
    """
    L{PoolTLS}: one value for how pool connections run TLS, whatever the transport.
    """

    def test_plain(self) -> None:
        tls = PoolTLS()
        self.assertEqual((tls.mode, tls.alpn, tls.credentials, tls.creator()), (0, (), None, None))
        self.assertEqual(PoolTLS.forServer(0, RecordingCredentials()), tls)  # type: ignore[arg-type]
        self.assertEqual(PoolTLS.forServer(1, None), tls)
        self.assertEqual(PoolTLS.forClient(0, lambda: self.fail("built")), tls)

    def test_modeChecked(self) -> None:
        self.assertRaises(ValueError, PoolTLS, 3)

    def test_server(self) -> None:
        """
        The server's holds its credentials and makes its creator from them, with the ALPN
        names, on first use only, once.
        """
        credentials = RecordingCredentials()
        tls = PoolTLS.forServer(2, credentials, [b"h2"])  # type: ignore[arg-type]
        self.assertEqual((tls.mode, tls.alpn), (2, (b"h2",)))
        self.assertIs(tls.credentials, credentials)
        self.assertEqual(credentials.asked, [])
        creator = tls.creator()
        self.assertEqual(creator, ("server creator", [b"h2"]))
        self.assertIs(tls.creator(), creator)
        self.assertEqual(credentials.asked, [[b"h2"]])
        without = PoolTLS.forServer(1, credentials)  # type: ignore[arg-type]
        without.creator()
        self.assertEqual(credentials.asked[-1], None)

    def test_client(self) -> None:
        made: list[object] = []

        def make() -> object:
            made.append(object())
            return made[-1]

        tls = PoolTLS.forClient(1, make, [b"np-quic"])
        self.assertEqual((tls.mode, tls.alpn, tls.credentials), (1, (b"np-quic",), None))
        self.assertEqual(made, [])
        self.assertIs(tls.creator(), tls.creator())
        self.assertEqual(len(made), 1)

    def test_valueEquality(self) -> None:
        """
        Equal settings make equal (and equally hashed) values, whatever made the creator.
        """
        one = PoolTLS.forClient(1, object, [b"h2"])
        two = PoolTLS.forClient(1, object, (b"h2",))
        self.assertEqual(one, two)
        self.assertEqual(hash(one), hash(two))
        self.assertNotEqual(one, PoolTLS.forClient(2, object, [b"h2"]))


@implementer(IPlugin, IPoolTLSTransport)
class PoolTLSAware(FakeTransport):
    pass


@implementer(IPlugin, ICredentialTransport)
class OwnTLSStack(FakeTransport):
    pass


class TLSArgumentTests(SynchronousTestCase):
    """
    What a tunnel passes a transport as C{tls}: the L{PoolTLS} value when it declares
    L{IPoolTLSTransport}, the older forms otherwise.
    """

    def setUp(self) -> None:
        self.credentials = RecordingCredentials()
        self.server = PoolTLS.forServer(1, self.credentials, [b"x"])  # type: ignore[arg-type]
        self.client = PoolTLS.forClient(2, lambda: "client creator")

    def test_poolTLSTransport(self) -> None:
        transport = PoolTLSAware("aware", "aware")
        for tls in (self.server, self.client, PoolTLS()):
            self.assertIs(tlsArgument(transport, tls, server=True), tls)
        self.assertEqual(self.credentials.asked, [])

    def test_creatorForm(self) -> None:
        """
        A TCP-like transport: the pyOpenSSL creator of its side, or None without TLS.
        """
        transport = FakeTransport("old", "old")
        self.assertEqual(
            tlsArgument(transport, self.server, server=True), ("server creator", [b"x"])
        )
        self.assertEqual(tlsArgument(transport, self.client, server=False), "client creator")
        self.assertIsNone(tlsArgument(transport, PoolTLS(), server=True))
        self.assertIsNone(tlsArgument(transport, PoolTLS(), server=False))

    def test_credentialForm(self) -> None:
        """
        A transport with a TLS stack of its own: credentials on the server, the mode on the
        client, no creator made.
        """
        transport = OwnTLSStack("own", "own")
        self.assertIs(tlsArgument(transport, self.server, server=True), self.credentials)
        self.assertEqual(tlsArgument(transport, self.client, server=False), 2)
        self.assertIsNone(tlsArgument(transport, PoolTLS(), server=False))
        self.assertEqual(self.credentials.asked, [])

    def test_creatorOf(self) -> None:
        """
        A transport taking both forms finds the creator in either.
        """
        self.assertEqual(creatorOf(self.client), "client creator")
        self.assertIsNone(creatorOf(PoolTLS()))
        self.assertEqual(creatorOf("a creator"), "a creator")
        self.assertIsNone(creatorOf(None))


class RecordingTransport(FakeTransport):
    """
    Records the C{tls} argument of each dial and connects nothing.
    """

    def __init__(self, name: str, typeCode: str) -> None:
        super().__init__(name, typeCode)
        self.given: list[Any] = []

    def connect(
        self, reactor: Any, address: PoolAddress, protocol: IProtocol, tls: Any, timeout: float
    ) -> Deferred[IProtocol]:
        self.given.append(tls)
        return succeed(protocol)


@implementer(IPoolTLSTransport, IALPNTransport)
class RecordingPoolTLSTransport(RecordingTransport):
    alpn = [b"np-test"]


def _peerParts(url: str) -> tuple[Any, MemoryReactorClock, Any, Any]:
    from nodepass.balance import TargetDialer, Targets
    from nodepass.resolve import Resolver
    from nodepass.settings import Settings
    from nodepass.stats import Counters
    from nodepass.tunnel.session import Shared
    from nodepass.url import parse

    def noLookup(host: str) -> Deferred[str]:
        raise AssertionError(f"unexpected lookup of {host!r}")

    config = parse(url)
    reactor = MemoryReactorClock()
    log = Logger(namespace="nodepass", observer=cast(ILogObserver, lambda event: None))
    resolver = Resolver(reactor, 300.0, noLookup, log=log)
    dialer = TargetDialer(reactor, Targets(config.targets, config.lbs, reactor), resolver, 5.0)
    shared = Shared(config, reactor, Settings(), dialer, Counters(), log=log)
    return config, reactor, shared, resolver


class TunnelTLSTests(SynchronousTestCase):
    """
    The tunnel server and client hand each transport the form it declares.
    """

    def test_serverPoolTLS(self) -> None:
        from nodepass.settings import Settings
        from nodepass.transports.http2 import h2transport
        from nodepass.tunnel.server import TunnelServer

        config, reactor, shared, _ = _peerParts(
            "server://k@127.0.0.1:10101/127.0.0.1:8080?type=3&tls=1"
        )
        credentials = RecordingCredentials()
        server = TunnelServer(
            config,
            reactor,
            Settings(),
            shared,
            credentials,
            1,
            transport=h2transport,  # type: ignore[arg-type]
        )
        tls = server.poolTLS()
        self.assertEqual((tls.mode, tls.alpn), (1, (b"h2",)))
        self.assertIs(tls.credentials, credentials)
        plain = TunnelServer(config, reactor, Settings(), shared, None, 1, transport=h2transport)
        self.assertEqual(plain.poolTLS(), PoolTLS())

    def test_clientDials(self) -> None:
        """
        A L{PoolTLS} transport gets the value (with its ALPN names; no creator made for it
        until it asks); the others the creator, built once, or None in mode 0.
        """
        from nodepass.settings import Settings
        from nodepass.tunnel.client import TunnelClient
        from nodepass.tunnel.pool import PoolConnection

        config, reactor, shared, resolver = _peerParts(
            "client://k@127.0.0.1:10101/127.0.0.1:8080?mode=2"
        )
        client = TunnelClient(config, reactor, Settings(), shared, resolver)
        aware = RecordingPoolTLSTransport("aware", "aware")
        old = RecordingTransport("old", "old")
        for transport, mode in ((aware, 1), (aware, 0), (old, 1), (old, 1), (old, 0)):
            dial = client._dialer(transport, mode)
            self.successResultOf(dial(cast(PoolConnection, Protocol())))
        self.assertEqual(aware.given, [PoolTLS(1, (b"np-test",)), PoolTLS()])
        self.assertEqual(list(client._creators), [(1, ())])
        creator = client._creators[(1, ())]
        self.assertEqual(old.given, [creator, creator, None])
        self.assertIs(aware.given[0].creator(), client._creators[(1, (b"np-test",))])
