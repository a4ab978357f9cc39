"""
C{allow}/C{deny} and the live connection list on real sockets: 127.0.0.1 and 127.0.0.2 as two
IPv4 sources, ::1 for IPv6 (skipped when the host has no ::1).

Instances run in this process on a private epoll reactor (never the global one), which the
test iterates until a condition holds or a deadline passes; users and targets are Twisted
protocols on the same reactor, users bound to the source address they speak for.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.failure import Failure

from nodepass.service import NodePassService, buildService
from nodepass.settings import Settings
from nodepass.url import parse
from tests.support import EchoProtocol as Echo
from tests.support import ReactorLoop as Loop
from tests.support import RecordingUser as User

pytestmark = pytest.mark.integration


def hasIPv6Loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def freePort(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


class EchoUDP(DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(data, addr)  # type: ignore[union-attr]


class UDPUser(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


class Rig:
    """
    Echo targets (TCP and UDP) and instances on one loop; users from a chosen source.
    """

    def __init__(self, loop: Loop, host: str = "127.0.0.1") -> None:
        self.loop = loop
        self.host = host
        reactor = loop.reactor
        #: What the TCP target received (the single-end health probe connects, sends nothing).
        self.targetBytes: list[bytes] = []
        seen = self.targetBytes

        class Targets(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return Echo(seen)

        self.targetPort = reactor.listenTCP(0, Targets(), interface=host)
        self.target = self.targetPort.getHost().port
        self.udpTarget = reactor.listenUDP(self.target, EchoUDP(), interface=host)
        self.events: list[LogEvent] = []
        self.services: list[NodePassService] = []

    @property
    def logLines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def start(self, url: str) -> NodePassService:
        log = Logger(namespace="nodepass", observer=_observer(self.events))
        service = buildService(parse(url), self.loop.reactor, Settings(), log)
        service.privilegedStartService()
        service.startService()
        self.services.append(service)
        return service

    def connect(self, port: int, source: str, payload: bytes = b"") -> User:
        user = User()
        host = "::1" if ":" in source else self.host

        class Once(ClientFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return user

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                user.lost = reason

        self.loop.reactor.connectTCP(host, port, Once(), bindAddress=(source, 0))
        self.loop.until(lambda: bool(user.connected or user.lost), what="connected")
        if payload and user.connected:
            user.transport.write(payload)  # type: ignore[union-attr]
        return user

    def sendUDP(self, port: int, source: str, payload: bytes) -> UDPUser:
        user = UDPUser()
        listening = self.loop.reactor.listenUDP(0, user, interface=source)
        host = "::1" if ":" in source else self.host
        listening.write(payload, (host, port))
        return user

    def stop(self) -> None:
        for service in reversed(self.services):
            done = service.stopService()
            if done is not None:
                finished: list[object] = []
                done.addBoth(finished.append)

                def stopped(f: list[object] = finished) -> bool:
                    return bool(f)

                self.loop.until(stopped, timeout=10, what="service stop")
        self.targetPort.stopListening()
        self.udpTarget.stopListening()


def _observer(events: list[LogEvent]) -> ILogObserver:
    return events.append  # type: ignore[return-value]


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    try:
        yield made
    finally:
        made.close()


def assertRefused(rig: Rig, port: int, source: str) -> None:
    """
    A TCP user from C{source} is closed without a byte, and nothing it sent reaches a target.
    """
    user = rig.connect(port, source, b"hello?")
    rig.loop.until(lambda: user.lost is not None, what="the refused user is closed")
    assert user.received == b""
    assert b"hello?" not in rig.targetBytes


def assertServed(rig: Rig, port: int, source: str) -> User:
    user = rig.connect(port, source, b"ping")
    rig.loop.until(lambda: user.received == b"ping", what=f"echo for {source}")
    return user


def udpRoundTrip(rig: Rig, port: int, source: str) -> UDPUser:
    user = rig.sendUDP(port, source, b"datagram")
    rig.loop.until(lambda: user.received == [b"datagram"], what=f"UDP echo for {source}")
    return user


def test_singleEndDenyIPv4TCPAndUDP(loop: Loop) -> None:
    rig = Rig(loop)
    listen = freePort("127.0.0.1")
    rig.start(f"client://127.0.0.1:{listen}/127.0.0.1:{rig.target}?mode=1&deny=127.0.0.2&log=info")
    try:
        assertRefused(rig, listen, "127.0.0.2")
        assertServed(rig, listen, "127.0.0.1")
        # UDP: the allowed source gets its echo; the denied one, sent first, gets nothing.
        counters = rig.services[0].counters
        denied = rig.sendUDP(listen, "127.0.0.2", b"datagram")
        udpRoundTrip(rig, listen, "127.0.0.1")
        loop.until(lambda: counters.refusedDeny == 2, what="the datagram refused")
        assert denied.received == []
        # One line for the address (TCP first), however many refusals in the minute.
        refusals = [t for t in rig.logLines if "refused 127.0.0.2:" in t]
        assert len(refusals) == 1
        assert refusals[0].startswith("singleTCPLoop: refused 127.0.0.2:")
        assert refusals[0].endswith(": in deny 127.0.0.2/32")
    finally:
        rig.stop()


def test_singleEndAllowList(loop: Loop) -> None:
    rig = Rig(loop)
    listen = freePort("127.0.0.1")
    rig.start(f"client://127.0.0.1:{listen}/127.0.0.1:{rig.target}?mode=1&allow=127.0.0.1")
    try:
        assertRefused(rig, listen, "127.0.0.2")
        assertServed(rig, listen, "127.0.0.1")
        udpRoundTrip(rig, listen, "127.0.0.1")
    finally:
        rig.stop()


@pytest.mark.skipif(not hasIPv6Loopback(), reason="no ::1 on this host")
def test_singleEndIPv6(loop: Loop) -> None:
    rig = Rig(loop, host="::1")
    refusing, serving = freePort("::1"), freePort("::1")
    target = f"[::1]:{rig.target}"
    rig.start(f"client://[::1]:{refusing}/{target}?mode=1&deny=::1")
    rig.start(f"client://[::1]:{serving}/{target}?mode=1&allow=::1&deny=127.0.0.0/8")
    try:
        assertRefused(rig, refusing, "::1")
        assert any("singleTCPLoop: refused [::1]:" in t for t in rig.logLines)
        denied = rig.sendUDP(refusing, "::1", b"datagram")
        assertServed(rig, serving, "::1")
        udpRoundTrip(rig, serving, "::1")
        counters = rig.services[0].counters
        loop.until(lambda: counters.refusedDeny == 2, what="the datagram refused")
        assert denied.received == []
        assert rig.services[1].counters.refusedDeny == 0
    finally:
        rig.stop()


def test_tunnelEntrySideDeny(loop: Loop) -> None:
    """
    A server in flow C{-} checks its entry listener: a denied user never reaches the client's
    target, an allowed one does (TCP and UDP).
    """
    rig = Rig(loop)
    tunnel, entry = freePort("127.0.0.1"), freePort("127.0.0.1")
    rig.start(f"server://key@127.0.0.1:{tunnel}/127.0.0.1:{entry}?mode=1&deny=127.0.0.2")
    rig.start(f"client://key@127.0.0.1:{tunnel}/127.0.0.1:{rig.target}?mode=2")
    try:
        deadline = time.monotonic() + 20
        while True:  # until the tunnel is up (the entry listener reads once it is)
            user = rig.connect(entry, "127.0.0.1", b"ping")

            def answered(u: User = user) -> bool:
                return u.received == b"ping" or u.lost is not None

            loop.until(answered, timeout=20)
            if user.received == b"ping":
                break
            assert time.monotonic() < deadline, rig.logLines
        assertRefused(rig, entry, "127.0.0.2")
        assert any("commonTCPLoop: refused 127.0.0.2:" in t for t in rig.logLines)
        counters = rig.services[0].counters
        denied = rig.sendUDP(entry, "127.0.0.2", b"datagram")
        udpRoundTrip(rig, entry, "127.0.0.1")
        loop.until(lambda: counters.refusedDeny == 2, what="the datagram refused")
        assert denied.received == []
    finally:
        rig.stop()


def test_closingAListedConnectionClosesTheUser(loop: Loop) -> None:
    rig = Rig(loop)
    listen = freePort("127.0.0.1")
    root = rig.start(f"client://127.0.0.1:{listen}/127.0.0.1:{rig.target}?mode=1")
    try:
        user = assertServed(rig, listen, "127.0.0.1")
        udpRoundTrip(rig, listen, "127.0.0.1")
        listed = root.connections()
        assert sorted(c["proto"] for c in listed) == ["tcp", "udp"]
        (tcp,) = [c for c in listed if c["proto"] == "tcp"]
        local: Any = user.transport.getHost()  # type: ignore[union-attr]
        assert tcp["remote"] == f"127.0.0.1:{local.port}"
        assert tcp["target"] == f"127.0.0.1:{rig.target}"
        assert (tcp["rx"], tcp["tx"]) == (4, 4)
        assert abs(tcp["since"] - time.time()) < 60
        assert root.closeConnection(tcp["id"])
        loop.until(lambda: user.lost is not None, what="the user sees the close")
        loop.until(lambda: all(c["proto"] == "udp" for c in root.connections()))
        assert not root.closeConnection(tcp["id"])
    finally:
        rig.stop()
