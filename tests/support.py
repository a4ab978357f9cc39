"""Helpers for integration tests: processes, ports and small servers on 127.0.0.1.

Everything here is bounded in time: waits poll with a deadline and raise
``AssertionError`` when it passes; servers run in daemon threads and stop
when the test ends.

Also, for unit tests: L{instanceLogger}, the logger an instance gets from its
composition root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import LogEvent, Logger, globalLogPublisher

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def instanceLogger(case: Any) -> tuple[Logger, list[LogEvent], list[LogEvent]]:
    """
    A logger with an observer of its own, as the composition root gives each
    instance, plus what the process-global log publisher receives until
    C{case} (a trial test case) ends.

    @return: the logger, the events it received, the global events.
    """
    mine: list[LogEvent] = []
    seenGlobally: list[LogEvent] = []
    observer = seenGlobally.append
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return Logger(namespace="nodepass", observer=mine.append), mine, seenGlobally


def freePort(udp: bool = True) -> int:
    """
    A port that is free for TCP (and UDP) on 127.0.0.1 right now.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            if not udp:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                    dgram.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port found")


def waitFor(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def canConnect(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class NodePass:
    """
    A ``python -m nodepass URL`` child process with its output captured.
    """

    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        self.url = url
        environ = dict(os.environ)
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        environ.setdefault("NP_SHUTDOWN_TIMEOUT", "2s")
        if env:
            environ.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodepass", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=environ,
            cwd=str(ROOT),
        )
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: object, into: list[bytes]) -> None:
        for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(line)

    @property
    def stdout(self) -> str:
        return b"".join(self._out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._err).decode("utf-8", "replace")

    def waitForOutput(self, text: str, timeout: float = 10.0) -> None:
        waitFor(lambda: text in self.stdout, timeout, f"{text!r} in output:\n{self.stdout}")

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"nodepass exited with {self.proc.returncode}:\n{self.stdout}\n{self.stderr}"
            )

    def waitListening(self, port: int, timeout: float = 15.0) -> None:
        """
        Wait until the process listens on C{port}.  When it logs, the first
        CHECK_POINT line (printed once every listener is bound) is the signal,
        so no probe connection is made; with C{log=none} a probe connects.
        """
        quiet = "log=none" in self.url

        def ready() -> bool:
            self._alive()
            return canConnect(port) if quiet else "CHECK_POINT" in self.stdout

        waitFor(ready, timeout, f"nodepass to listen on {port}")

    def wait(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            for reader in self._readers:
                reader.join(2)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)


@contextmanager
def nodepass(
    url: str, listen: int | None = None, env: dict[str, str] | None = None
) -> Iterator[NodePass]:
    process = NodePass(url, env)
    try:
        if listen is not None:
            process.waitListening(listen)
        yield process
    finally:
        process.stop()


class TCPServer:
    """
    A threaded TCP server on 127.0.0.1 running C{handler(conn)} per
    connection; records every accepted connection's peer address.
    """

    def __init__(self, handler: Callable[[socket.socket], None], port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted: list[tuple[str, int]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self) -> None:
        self._stopped = True
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)

    def __enter__(self) -> TCPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo(conn: socket.socket) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def recvAll(sock: socket.socket, limit: int | None = None) -> bytes:
    chunks = []
    total = 0
    while limit is None or total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


class UDPEcho:
    """
    A UDP server on 127.0.0.1 that echoes each datagram, optionally with a
    prefix, and records sources.
    """

    def __init__(self, prefix: bytes = b"", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, port))
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.sources: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65536)
            except OSError:
                return
            self.sources.append(source)
            self.sock.sendto(self.prefix + data, source)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UDPEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NodePass test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    caPath, certPath, keyPath = directory / "ca.pem", directory / "crt.pem", directory / "key.pem"
    caPath.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return caPath, certPath, keyPath


def assertForwards(
    port: int, size: int = 1 << 20, datagrams: tuple[int, ...] = (1, 512, 4000)
) -> None:
    """
    C{size} random bytes sent through C{port} with a half-close come back whole from an
    echo target, and datagrams of the given sizes come back intact over UDP.
    """
    import hashlib

    payload = os.urandom(size)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sender = threading.Thread(
            target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR))
        )
        sender.start()
        received = recvAll(sock)
        sender.join(10)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.settimeout(5)
    with dgram:
        for length in datagrams:
            data = os.urandom(length)
            dgram.sendto(data, (LOOPBACK, port))
            assert dgram.recvfrom(65536)[0] == data


class ReactorLoop:
    """
    A private epoll reactor for one test, iterated (never run) until something happens:
    services and protocols under test run in the test's own thread, with no global reactor.
    """

    def __init__(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        self.reactor: Any = EPollReactor()
        # Iterated, never run: start the thread pool its name resolver uses.
        self.threads = self.reactor.getThreadPool()
        self.threads.start()

    def until(self, condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout}s: {what or condition}")
            self.reactor.iterate(0.01)

    def close(self) -> None:
        from twisted.python.failure import Failure

        reactor = self.reactor
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionError("test over")))
        for call in reactor.getDelayedCalls():
            call.cancel()
        self.threads.stop()
        reactor.waker.connectionLost(None)
        reactor._poller.close()


class EchoProtocol(Protocol):
    """
    Echoes every byte back, and keeps what it saw in C{seen}.
    """

    def __init__(self, seen: list[bytes]) -> None:
        self.seen = seen

    def dataReceived(self, data: bytes) -> None:
        self.seen.append(data)
        self.transport.write(data)  # type: ignore[union-attr]


class RecordingUser(Protocol):
    """
    A user's connection: records what arrives, whether it connected, and how it ended.
    """

    def __init__(self) -> None:
        self.received = b""
        self.connected = False
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason
