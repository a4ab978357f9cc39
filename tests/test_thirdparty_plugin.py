"""
A third-party pool transport as its author would ship it: a throwaway
distribution (``xornp``: TCP with every byte XORed with 0x5A) with its own
``twisted/plugins/xornp_nodepass.py``, installed next to NodePass (built from
this checkout, not editable) in a fresh virtual environment.  Checks that
NodePass discovers it, that it passes L{nodepass.testing}'s conformance
suite there, and that a tunnel runs over it (``type=xor``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import socket
import subprocess
import textwrap
import threading
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import LOOPBACK, ROOT, NodePass, TCPServer, echo, freePort, waitFor

pytestmark = pytest.mark.integration

KEY = 0x5A

TOY_FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        """,
    # twisted.plugins is listed as a package although it has no __init__.py
    # (and must never get one: Twisted's own would be overwritten).
    "setup.cfg": """
        [metadata]
        name = xornp
        version = 0.1.0

        [options]
        packages =
            xornp
            twisted.plugins
        install_requires =
            nodepass
        """,
    "twisted/plugins/xornp_nodepass.py": '''
        """The xornp pool transport, for twisted.plugin.getPlugins."""

        from xornp import xor

        __all__ = ["xor"]
        ''',
    "xornp/__init__.py": '''
        """A toy NodePass pool transport: TCP with every byte XORed with 0x5A.

        Obfuscation for demonstrations only: it hides nothing from anyone who
        reads this.  With tls=1/2, TLS runs inside the XOR layer.
        """

        from __future__ import annotations

        from typing import Any

        from twisted.plugin import IPlugin
        from zope.interface import implementer

        from nodepass.transports import INodePassTransport


        @implementer(IPlugin, INodePassTransport)
        class XORTransport:
            name = "xor"
            typeCode = "xor"
            halfClose = True
            minimumTLS = 0
            readyAfterHandshake = True

            def serverFactory(self, reactor: Any, poolFactory: Any, tls: Any) -> Any:
                from xornp._wire import XORFactory

                if tls is None:
                    return XORFactory(poolFactory, halfClose=True)
                from twisted.protocols.tls import TLSMemoryBIOFactory

                return XORFactory(TLSMemoryBIOFactory(tls, False, poolFactory), halfClose=False)

            def connect(
                self, reactor: Any, address: Any, protocol: Any, tls: Any, timeout: float
            ) -> Any:
                from twisted.internet.endpoints import (
                    TCP4ClientEndpoint,
                    TCP6ClientEndpoint,
                    connectProtocol,
                    wrapClientTLS,
                )

                from xornp._wire import XOREndpoint

                kind = TCP6ClientEndpoint if ":" in address.ip else TCP4ClientEndpoint
                tcp = kind(reactor, address.ip, address.port, timeout)
                endpoint: Any = XOREndpoint(tcp, halfClose=tls is None)
                if tls is not None:
                    endpoint = wrapClientTLS(tls, endpoint)
                return connectProtocol(endpoint, protocol)


        xor = XORTransport()
        ''',
    "xornp/_wire.py": '''
        """The XOR layer: a protocol wrapper over TCP, and its factory and endpoint."""

        from __future__ import annotations

        from typing import Any

        from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        from zope.interface import implementer

        _TABLE = bytes(byte ^ 0x5A for byte in range(256))


        def xor(data: bytes) -> bytes:
            return data.translate(_TABLE)


        class XORProtocol(ProtocolWrapper):
            """Transport of the wrapped protocol, protocol of the TCP connection."""

            def dataReceived(self, data: bytes) -> None:
                self.wrappedProtocol.dataReceived(xor(data))

            def write(self, data: bytes) -> None:
                self.transport.write(xor(data))

            def writeSequence(self, data: Any) -> None:
                self.write(b"".join(data))


        @implementer(IHalfCloseableProtocol)
        class HalfCloseableXORProtocol(XORProtocol):
            """Without TLS: pass the end of one direction on."""

            def readConnectionLost(self) -> None:
                if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
                    self.wrappedProtocol.readConnectionLost()
                else:
                    self.transport.loseConnection()

            def writeConnectionLost(self) -> None:
                if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
                    self.wrappedProtocol.writeConnectionLost()


        class XORFactory(WrappingFactory):
            noisy = False

            def __init__(self, wrappedFactory: Any, halfClose: bool) -> None:
                super().__init__(wrappedFactory)
                self.protocol = HalfCloseableXORProtocol if halfClose else XORProtocol


        @implementer(IStreamClientEndpoint)
        class XOREndpoint:
            """Another client endpoint with the XOR layer on its connections."""

            def __init__(self, inner: Any, halfClose: bool) -> None:
                self._inner = inner
                self._halfClose = halfClose

            def connect(self, factory: Any) -> Any:
                wrapping = XORFactory(factory, self._halfClose)
                return self._inner.connect(wrapping).addCallback(
                    lambda wrapper: wrapper.wrappedProtocol
                )
        ''',
    "xornp/test_conformance.py": """
        from twisted.trial.unittest import TestCase

        from nodepass.testing import TransportConformanceMixin
        from xornp import xor


        class XORConformanceTests(TransportConformanceMixin, TestCase):
            transport = xor
        """,
}


def writeToy(where: Path) -> Path:
    for name, text in TOY_FILES.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    assert not (where / "twisted" / "__init__.py").exists()
    assert not (where / "twisted" / "plugins" / "__init__.py").exists()
    return where


def cleanEnv() -> dict[str, str]:
    """
    The environment without anything that would put this checkout on the
    path: the venv must see only what was installed into it.
    """
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ["NP_SHUTDOWN_TIMEOUT"] = "2s"
    return environ


class Venv:
    def __init__(self, home: Path, workdir: Path) -> None:
        self.home = home
        self.python = home / "bin" / "python"
        # Not the checkout: `python -m` puts the working directory on sys.path.
        self.workdir = workdir

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=cleanEnv(),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    toy = writeToy(tmp_path_factory.mktemp("xornp"))
    home = tmp_path_factory.mktemp("venv")
    try:
        venv.create(home, with_pip=True, clear=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a virtual environment here: {error}")
    env = Venv(home, tmp_path_factory.mktemp("cwd"))
    if not env.python.exists():
        pytest.skip(f"venv created no interpreter at {env.python}")
    # Both from local paths, neither editable: NodePass as a user gets it.
    result = env.run(
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        str(ROOT),
        str(toy),
        timeout=900,
    )
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return env


def test_discovered(installed: Venv) -> None:
    """
    The venv's NodePass (not the checkout) lists both the built-in TCP
    transport and the plugin.
    """
    result = installed.run(
        "-c",
        "import nodepass, xornp; from nodepass.transports import available; "
        "print(sorted(available())); print(nodepass.__file__); print(xornp.__file__)",
    )
    assert result.returncode == 0, result.stderr
    found, nodepassFile, xornpFile = result.stdout.splitlines()[-3:]
    codes = ast.literal_eval(found)
    assert "0" in codes and "xor" in codes, result.stdout
    assert nodepassFile.startswith(str(installed.home)), nodepassFile
    assert xornpFile.startswith(str(installed.home)), xornpFile
    forType = installed.run(
        "-c", "from nodepass.transports import forType; print(forType('xor').name)"
    )
    assert forType.stdout.strip() == "xor", forType.stderr


def test_conformance(installed: Venv) -> None:
    """
    The plugin passes the conformance suite of the installed nodepass.testing,
    run the way its author would.
    """
    result = installed.run("-m", "twisted.trial", "xornp.test_conformance", timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "PASSED" in result.stdout, result.stdout


class VenvNodePass(NodePass):
    """
    L{tests.support.NodePass}, but C{python -m nodepass} of the venv, with
    no PYTHONPATH and outside the checkout.
    """

    def __init__(self, venvHome: Venv, url: str) -> None:
        self.url = url
        self.proc = subprocess.Popen(
            [str(venvHome.python), "-m", "nodepass", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=cleanEnv(),
            cwd=str(venvHome.workdir),
        )
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()


class Sniffer:
    """
    A TCP forwarder that records, per connection, the bytes each way.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[tuple[bytearray, bytearray]] = []
        self.server = TCPServer(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        up, down = bytearray(), bytearray()
        self.connections.append((up, down))
        with socket.create_connection((LOOPBACK, self.port), timeout=30) as upstream:
            back = threading.Thread(target=self._pump, args=(upstream, conn, down), daemon=True)
            back.start()
            self._pump(conn, upstream, up)
            back.join(30)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(65536):
                record += data
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wire(self) -> bytes:
        return b"".join(bytes(up) + bytes(down) for up, down in list(self.connections))


def roundTrip(port: int, payload: bytes, timeout: float = 30) -> bytes:
    """
    Send C{payload} and read as many bytes back (no half-close needed).
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        chunks, total = [], 0
        while total < len(payload):
            data = sock.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
            total += len(data)
        sender.join(timeout)
    return b"".join(chunks)


@pytest.fixture
def processes() -> Iterator[Callable[[VenvNodePass], VenvNodePass]]:
    started: list[VenvNodePass] = []

    def track(process: VenvNodePass) -> VenvNodePass:
        started.append(process)
        return process

    yield track
    for process in reversed(started):
        process.stop()


@pytest.mark.parametrize("tls", [0, 1])
def test_tunnelOverPlugin(
    installed: Venv, processes: Callable[[VenvNodePass], VenvNodePass], tls: int
) -> None:
    """
    A server selecting C{type=xor} and a client learning it from the
    handshake carry 1 MiB there and back; on the wire, the pool connections
    are XORed: without TLS the first pool connection's ID 00000000 arrives
    as ZZZZ, with TLS the client's first TLS record header is XORed.
    """
    tunnel, entry = freePort(), freePort()
    payload = os.urandom(1 << 20)
    with TCPServer(echo) as target:
        sniffer = Sniffer(tunnel)
        try:
            server = processes(
                VenvNodePass(
                    installed,
                    f"server://k@{LOOPBACK}:{tunnel}/{LOOPBACK}:{entry}"
                    f"?mode=1&type=xor&tls={tls}&log=debug",
                )
            )
            server.waitForOutput("Pending tunnel handshake", 30)
            client = processes(
                VenvNodePass(
                    installed,
                    f"client://k@{LOOPBACK}:{sniffer.server.port}/{LOOPBACK}:{target.port}"
                    "?mode=2&log=debug",
                )
            )

            def logs() -> str:
                return (
                    f"--- server\n{server.stdout}{server.stderr}\n"
                    f"--- client\n{client.stdout}{client.stderr}"
                )

            try:
                waitFor(
                    lambda: "CHECK_POINT" in server.stdout and "CHECK_POINT" in client.stdout,
                    30,
                    "both ends to report",
                )
                if tls:
                    server.waitForOutput("TLS certificate fingerprint verified", 30)
                received = roundTrip(entry, payload)
            except (AssertionError, OSError) as error:
                raise AssertionError(f"{error}\n{logs()}") from None
            assert len(received) == len(payload), logs()
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            wire = sniffer.wire()
            sample = payload[4096 : 4096 + 64]
            assert sample not in wire, "payload bytes crossed the tunnel port unXORed"
            if tls:
                # A TLS handshake record (0x16 0x03 ...) from the client, XORed.
                record = bytes([0x16 ^ KEY, 0x03 ^ KEY])
                assert any(bytes(up).startswith(record) for up, _ in sniffer.connections)
            else:
                assert any(bytes(down).startswith(b"ZZZZ") for _, down in sniffer.connections)
                assert bytes(byte ^ KEY for byte in sample) in wire, "payload not found XORed"
        finally:
            sniffer.server.close()
