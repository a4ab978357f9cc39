"""
The composition root in memory: L{buildService} for every scheme (its named children, what
binds when) and L{nodepass.tap} (options, the twistd entry and its exit status), on a
L{MemoryReactorClock}: no sockets.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from nodepass.errors import StartupError
from nodepass.log import NodePassLogObserver
from nodepass.service import AutoClient, NodePassService, buildService
from nodepass.settings import Settings
from nodepass.tap import DEFAULT_MASTER_URL, Options, _Entry, standalone
from nodepass.url import parse
from tests.fakes import InstanceReactor


class RefusingReactor(InstanceReactor):
    """
    Refuses to listen on the ports in C{refused}.
    """

    def __init__(self, refused: set[int]) -> None:
        super().__init__()
        self.refused = refused

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.refused:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def build(url: str, reactor: Any = None) -> tuple[NodePassService, Any, io.StringIO]:
    reactor = reactor if reactor is not None else InstanceReactor()
    out = io.StringIO()
    observer = NodePassLogObserver(out, parse(url).log, color=False)
    root = buildService(
        parse(url), reactor, Settings(), Logger(namespace="nodepass", observer=observer), observer
    )
    return root, reactor, out


def names(root: Any) -> list[str]:
    return [child.name for child in root]


def test_singleEndTree() -> None:
    """
    mode=1: one C{single-end} child; nothing binds until C{privilegedStartService}, which
    binds TCP and UDP on the tunnel address.
    """
    root, reactor, out = build("client://127.0.0.1:7000/127.0.0.1:80?mode=1")
    assert root.name == "nodepass" and names(root) == ["single-end"]
    assert reactor.tcpServers == [] and reactor.udpServers == []
    root.privilegedStartService()
    assert [p for p, *_ in reactor.tcpServers] == [7000]
    assert [p for p, *_ in reactor.udpServers] == [7000]
    assert "Client started: client://********@127.0.0.1:7000/127.0.0.1:80?" in out.getvalue()
    root.startService()
    assert root.running


def test_autoClientChoosesAtBindTime() -> None:
    """
    mode=0: an C{auto-client} that runs single-end when the address binds, and the dual-end
    client when it does not.
    """
    root, _, _ = build("client://127.0.0.1:7001/127.0.0.1:80")
    auto = root.getServiceNamed("auto-client")
    assert isinstance(auto, AutoClient) and list(auto) == []
    root.privilegedStartService()
    assert names(auto) == ["single-end"]

    root, _, _ = build("client://k@127.0.0.1:7002/127.0.0.1:80", RefusingReactor({7002}))
    auto = root.getServiceNamed("auto-client")
    root.privilegedStartService()
    assert names(auto) == ["tunnel-client"]


def test_dualClientTree() -> None:
    root, reactor, _ = build("client://k@127.0.0.1:7003/127.0.0.1:80?mode=2")
    assert names(root) == ["tunnel-client"]
    root.privilegedStartService()
    assert reactor.tcpServers == []  # a dual-end client dials; it binds nothing at start


def test_serverTree() -> None:
    """
    A server: the TLS lines come before "Server started" (as in the reference), then the
    tunnel port binds.
    """
    root, reactor, out = build("server://k@127.0.0.1:7004/127.0.0.1:7005?tls=1&mode=2")
    assert names(root) == ["tunnel-server"]
    assert reactor.tcpServers == []
    root.privilegedStartService()
    assert [p for p, *_ in reactor.tcpServers] == [7004]
    text = out.getvalue()
    assert text.index("TLS code-1: RAM cert with TLS 1.3") < text.index("Server started:")
    server = root.getServiceNamed("tunnel-server")
    assert server.credentials is not None and server.tlsMode == 1  # type: ignore[attr-defined]


def test_twoServersHaveTheirOwnCertificates() -> None:
    one, _, _ = build("server://k@127.0.0.1:7006/127.0.0.1:1?tls=1&mode=2")
    two, _, _ = build("server://k@127.0.0.1:7007/127.0.0.1:1?tls=1&mode=2")
    one.privilegedStartService()
    two.privilegedStartService()
    first = one.getServiceNamed("tunnel-server").credentials  # type: ignore[attr-defined]
    second = two.getServiceNamed("tunnel-server").credentials  # type: ignore[attr-defined]
    assert first.fingerprint != second.fingerprint


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("client://127.0.0.1:7010/127.0.0.1:80?mode=1", "cannot listen on 127.0.0.1:7010"),
        ("server://k@127.0.0.1:7010/127.0.0.1:7011?mode=2", "cannot listen on 127.0.0.1:7010"),
    ],
)
def test_failingListenIsAStartupError(url: str, message: str) -> None:
    """
    A port in use: C{privilegedStartService} logs the role's error line and raises
    L{StartupError}; it never exits the process itself.
    """
    root, _, out = build(url, RefusingReactor({7010}))
    with pytest.raises(StartupError, match=message):
        root.privilegedStartService()
    role = "Client" if url.startswith("client") else "Server"
    assert f"ERROR  {role} error: {message}" in out.getvalue()


def test_instanceLinesNeverReachTheGlobalPublisher() -> None:
    """
    Everything an instance prints goes through its own logger.
    """
    seen: list[Any] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        root, _, out = build("client://127.0.0.1:7020/127.0.0.1:80?mode=1&log=debug")
        root.privilegedStartService()
        root.startService()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert "Client started" in out.getvalue()
    assert not [e for e in seen if "started" in str(e.get("log_format", ""))]


def test_masterTree(tmp_path: Any) -> None:
    """
    A master: named children store, hosts, api and timers; the state opens and the API
    port binds in C{privilegedStartService}.
    """
    config = parse("master://127.0.0.1:7030/api")
    reactor = InstanceReactor()
    root = buildService(
        config,
        reactor,
        Settings(),
        Logger(namespace="nodepass"),
        environ={"NP_STATE_DIR": str(tmp_path)},
    )
    master = root.getServiceNamed("master")
    assert names(master) == ["store", "hosts", "api", "timers"]
    assert reactor.tcpServers == []
    root.privilegedStartService()
    try:
        assert [p for p, *_ in reactor.tcpServers] == [7030]
        assert (tmp_path / "nodepass.db").exists()
    finally:
        master.store.closeNow()  # type: ignore[attr-defined]


def test_isolatedMasterHasNoHosts(tmp_path: Any) -> None:
    config = parse("master://127.0.0.1:7031/api")
    root = buildService(
        config,
        InstanceReactor(),
        Settings(),
        Logger(namespace="nodepass"),
        environ={"NP_STATE_DIR": str(tmp_path), "NP_ISOLATE": "1"},
    )
    assert names(root.getServiceNamed("master")) == ["store", "api", "timers"]


@pytest.mark.parametrize("value", ["0", "many", "-1", "1000"])
def test_badHostCountRefusesToStart(tmp_path: Any, value: str) -> None:
    config = parse("master://127.0.0.1:7032/api")
    root = buildService(
        config,
        InstanceReactor(),
        Settings(),
        Logger(namespace="nodepass"),
        environ={"NP_STATE_DIR": str(tmp_path), "NP_INSTANCE_HOSTS": value},
    )
    with pytest.raises(StartupError, match="NP_INSTANCE_HOSTS"):
        root.privilegedStartService()


# -- nodepass.tap ---------------------------------------------------------------------------------


def test_optionsParseTheURL() -> None:
    options = Options()
    options.parseOptions(["client://127.0.0.1:1/127.0.0.1:2"])
    assert options["config"].scheme == "client"
    options = Options()
    options.parseOptions(["master"])
    assert options["url"] == DEFAULT_MASTER_URL
    with pytest.raises(usage.UsageError):
        Options().parseOptions([])
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["ftp://x"])


def test_entryTurnsAStartupErrorIntoStatus1(capsys: Any) -> None:
    """
    Under twistd, a failed bind is one "Error:" line on stderr and SystemExit(1).
    """
    reactor = RefusingReactor({7040})
    root = standalone(
        parse("client://127.0.0.1:7040/127.0.0.1:80?mode=1"), reactor, {}, io.StringIO()
    )
    entry = _Entry(root, reactor)
    assert IService.providedBy(entry)
    with pytest.raises(SystemExit) as exited:
        entry.privilegedStartService()
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("Error: cannot listen on 127.0.0.1:7040")


def test_entryStopsTheReactorOnAFatalReport(capsys: Any) -> None:
    reactor = InstanceReactor()
    reactor.running = True
    root = standalone(
        parse("client://127.0.0.1:7041/127.0.0.1:80?mode=1"), reactor, {}, io.StringIO()
    )
    entry = _Entry(root, reactor)
    root.reportFatal("cannot restore the state: broken")
    assert entry.exitCode == 1
    assert reactor.hasStopped
    assert "Error: cannot restore the state: broken" in capsys.readouterr().err


def test_standaloneReadsSettingsFromTheEnvironment() -> None:
    root = standalone(
        parse("client://127.0.0.1:7042/127.0.0.1:80?mode=1"),
        InstanceReactor(),
        {"NP_REPORT_INTERVAL": "2s"},
        io.StringIO(),
    )
    assert root.settings.reportInterval == 2.0


def test_liveTargetConnectionKeepsNoDialState() -> None:
    """
    The connector keeps its factory for the whole life of a target connection: once the
    dial has connected, that factory no longer holds the dial (its Deferred, its target
    order), only what Twisted needs.  What a thousand idle connections cost depends on it.
    """
    import gc
    import weakref

    from twisted.internet.defer import succeed
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from nodepass.balance import ROUND_ROBIN, TargetDialer, Targets
    from nodepass.resolve import Resolver
    from nodepass.url import parseHostPort

    reactor = MemoryReactorClock()
    resolver = Resolver(reactor, 0, lambda host: succeed("127.0.0.1"))
    targets = Targets([parseHostPort("127.0.0.1:9")], ROUND_ROBIN, reactor)
    dialer = TargetDialer(reactor, targets, resolver, 5.0)
    protocol = Protocol()
    dialing = dialer.connectDeferred(protocol)
    results: list[Any] = []
    dialing.addCallback(results.append)
    factory = reactor.tcpClients[0][2]
    handoff = factory.buildProtocol(None)
    assert handoff is not None
    handoff.makeConnection(StringTransport())
    assert results == [(protocol, 0)] and protocol.transport is not None
    gone = weakref.ref(dialing)
    del dialing, handoff
    gc.collect()
    assert gone() is None
    assert factory.buildProtocol(None) is None
