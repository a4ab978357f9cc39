"""
The import budget of an instance process: what a plain forwarder, a ``tls=0`` server and a
``tls=0`` client have imported once they carry traffic, and the lean imports of
L{nodepass._compat.leantls} they rely on (each internal it uses is pinned here).

Every process is a real one on 127.0.0.1 (the CLI's own start-up path), asked for its
C{sys.modules} with SIGUSR1 once a connection went through it.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support import LOOPBACK, ROOT, TCPServer, echo, freePort, waitFor

pytestmark = pytest.mark.integration

#: Runs ``nodepass URL`` as the console script does, and writes the names of the modules
#: really imported (a placeholder of the lean imports is not) to OUT on SIGUSR1.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from nodepass.cli import main

    def dump(signum, frame):
        names = sorted(
            name for name, module in list(sys.modules.items())
            if module is not None and type(module).__name__ != "Placeholder"
        )
        with open(sys.argv[2] + ".tmp", "w") as f:
            json.dump(names, f)
        os.rename(sys.argv[2] + ".tmp", sys.argv[2])
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump)
    main([sys.argv[1]])
    """
)

#: Never imported by any of the three processes (the brief of issue 11, and what only
#: TLS, other pool transports or the master use).
NEVER = (
    "OpenSSL",
    "cryptography",
    "nodepass.tls",
    "aioquic",
    "h2",
    "autobahn",
    "klein",
    "treq",
    "sqlite3",
    "nodepass.master",
    # What the lean imports leave out.
    "asyncio",
    "ssl",
    "_hashlib",
    "ctypes",
    "http.client",
    "twisted.internet.ssl",
    "twisted.protocols.tls",
    # The other pool transports: a type=0 lookup imports only the TCP one.
    "nodepass.transports.quic",
    "nodepass.transports.websocket",
    "nodepass.transports.http2",
)

#: Also never imported by a single-end forwarder: it has no handshake and no pool.
NEVER_SINGLE = (*NEVER, "twisted.web", "email", "nodepass.transports", "nodepass.tunnel.handshake")

#: Imported today for reasons outside the instance's own modules: (role, module) -> why.
#: Each is an expected failure until the module named is changed.
KNOWN: dict[tuple[str, str], str] = {
    ("client", "ssl"): "twisted.web.client (the handshake's Agent) loads http.cookiejar, "
    "urllib.request and http.client",
    ("client", "http.client"): "twisted.web.client loads http.cookiejar and urllib.request",
}
for _name in ("OpenSSL", "cryptography", "asyncio", "twisted.internet.ssl"):
    KNOWN[("client", _name)] = (
        "nodepass/tunnel/client.py imports nodepass.tls at module scope, and "
        "twisted.web.client imports twisted.internet.endpoints, which imports pyOpenSSL"
    )
KNOWN[("client", "nodepass.tls")] = "nodepass/tunnel/client.py imports it at module scope"
KNOWN[("client", "twisted.protocols.tls")] = KNOWN[("client", "OpenSSL")]


def _env(**extra: str) -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    environ.setdefault("NP_SHUTDOWN_TIMEOUT", "2s")
    environ.pop("NP_LEAN_IMPORTS", None)
    environ.update(extra)
    return environ


def _python(code: str, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**extra),
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


class _Child:
    def __init__(self, url: str, out: Path) -> None:
        self.url = url
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(out)],
            env=_env(),
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def modules(self) -> set[str]:
        assert self.proc.poll() is None, self.proc.communicate(timeout=5)[1]
        self.proc.send_signal(signal.SIGUSR1)
        self.proc.wait(15)
        return set(json.loads(self.out.read_text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def report(self) -> str:
        """
        How the child ended and what it wrote on stderr (it is stopped first).
        """
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=15)
        text = err.decode("utf-8", "replace") if err else ""
        return f"{self.url}: exit {self.proc.returncode}\n{text}"


def _echoes(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            sock.sendall(b"ping")
            sock.settimeout(5)
            return sock.recv(4) == b"ping"
    except OSError:
        return False


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    """
    What the interpreter imports by itself here (site hooks included): not counted.
    """
    result = _python("import json, sys; print(json.dumps(sorted(sys.modules)))")
    return set(json.loads(result.stdout))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """
    The modules of a single-end forwarder, a tls=0 type=0 server and its client, each
    taken after a connection went through it.
    """
    directory = tmp_path_factory.mktemp("imports")
    children: list[_Child] = []
    with TCPServer(echo) as target:
        try:
            entry = freePort()
            single = _Child(
                f"client://127.0.0.1:{entry}/127.0.0.1:{target.port}?mode=1",
                directory / "single.json",
            )
            children.append(single)
            tunnel, users = freePort(), freePort()
            server = _Child(
                f"server://key@127.0.0.1:{tunnel}/127.0.0.1:{users}?mode=1&tls=0",
                directory / "server.json",
            )
            children.append(server)
            client = _Child(
                f"client://key@127.0.0.1:{tunnel}/127.0.0.1:{target.port}?mode=2",
                directory / "client.json",
            )
            children.append(client)
            try:
                waitFor(lambda: _echoes(entry), 60, "an echo through the forwarder")
                waitFor(lambda: _echoes(users), 60, "an echo through the tunnel")
            except AssertionError as error:
                raise AssertionError(
                    f"{error}\n" + "\n".join(c.report() for c in children)
                ) from None
            yield {
                "single": single.modules(),
                "server": server.modules(),
                "client": client.modules(),
            }
        finally:
            for child in children:
                child.stop()


def _cases() -> Iterator[object]:
    for role, never in (("single", NEVER_SINGLE), ("server", NEVER), ("client", NEVER)):
        for name in never:
            why = KNOWN.get((role, name))
            marks = [pytest.mark.xfail(reason=why, strict=False)] if why else []
            yield pytest.param(role, name, marks=marks, id=f"{role}-{name}")


@pytest.mark.parametrize(("role", "name"), list(_cases()))
def test_not_imported(
    loaded: dict[str, set[str]], baseline: set[str], role: str, name: str
) -> None:
    """
    C{name} (or any of its submodules) is not imported by the C{role} process, unless
    the interpreter imports it by itself.
    """
    if name in baseline:
        pytest.skip(f"{name} is imported by the interpreter itself here")
    found = sorted(m for m in loaded[role] if m == name or m.startswith(name + "."))
    assert not found, f"{role} imported {found[:5]}"


def test_tunnel_has_its_handshake(loaded: dict[str, set[str]]) -> None:
    """
    The budget is taken from processes that really ran the tunnel (the HTTP handshake and
    the TCP pool are loaded), so an empty module list cannot pass it.
    """
    for role in ("server", "client"):
        assert {"twisted.web.http", "nodepass.tunnel.handshake"} <= loaded[role], role
        assert "nodepass.transports.tcp" in loaded[role], role
    assert "nodepass.tunnel.single" in loaded["single"]


# The internals the lean imports rely on, pinned.


def test_defer_takes_three_names_from_asyncio() -> None:
    """
    C{twisted.internet.defer} imports exactly L{leantls.DEFER_USES_FROM_ASYNCIO} from
    asyncio and uses the module nowhere else; only C{iscoroutine} outside annotations.
    """
    import twisted.internet.defer as defer

    from nodepass._compat import leantls

    tree = ast.parse(inspect.getsource(defer))
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "asyncio"
        for alias in node.names
    ]
    assert sorted(imported) == sorted(leantls.DEFER_USES_FROM_ASYNCIO)
    plainImports = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0] == "asyncio"
    ]
    assert plainImports == []
    annotations = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.arg | ast.FunctionDef | ast.AnnAssign)
        for part in (getattr(node, "annotation", None), getattr(node, "returns", None))
        if part is not None
        for sub in ast.walk(part)
    }
    runtime = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
        and node.id in leantls.DEFER_USES_FROM_ASYNCIO
        and id(node) not in annotations
    }
    assert runtime == {"iscoroutine"}


def test_iscoroutine_answers_as_asyncio_for_deferred() -> None:
    """
    For what C{Deferred} asks (C{iscoroutine(x) or isgenerator(x)}), the stand-in and
    asyncio agree.
    """
    import asyncio
    import collections.abc

    from nodepass._compat import leantls

    async def coroutine() -> None:
        pass

    def generator() -> Iterator[int]:
        yield 1

    class Custom(collections.abc.Coroutine):  # type: ignore[type-arg]
        def send(self, value: object) -> None:
            raise StopIteration

        def throw(self, *args: object) -> None:
            raise StopIteration

        def close(self) -> None:
            pass

        def __await__(self) -> Generator[None, None, None]:
            yield None

    pending = coroutine()
    values = [pending, generator(), Custom(), None, 1, b"x", object(), [], coroutine]
    try:
        for value in values:
            ours = leantls.iscoroutine(value) or inspect.isgenerator(value)
            theirs = asyncio.iscoroutine(value) or inspect.isgenerator(value)
            assert ours == theirs, value
    finally:
        pending.close()


def test_lean_process() -> None:
    """
    After the CLI's imports: no asyncio, ssl, ctypes, libcrypto or Twisted TLS glue;
    C{Deferred} works with coroutines; each hidden or deferred module is still there for
    whoever asks, and the real one.
    """
    _python(
        """
        import sys
        import nodepass.cli
        from nodepass._compat import leantls
        assert leantls.fallback is None, leantls.fallback
        for name in ("asyncio", "ssl", "_hashlib", "ctypes", "OpenSSL", "http.client",
                     "email", "twisted.internet.ssl", "twisted.protocols.tls"):
            assert name not in sys.modules, name
        for name in leantls.DEFERRED:
            assert type(sys.modules[name]) is leantls.Placeholder, name

        import twisted.python.compat, twisted.python.win32
        from twisted.internet import defer
        assert defer.iscoroutine is leantls.iscoroutine
        assert twisted.python.compat.cookielib is sys.modules["http.cookiejar"]
        assert callable(twisted.python.win32.formatError)

        async def double(x):
            return 2 * (await defer.succeed(x))
        assert defer.Deferred.fromCoroutine(double(21)).result == 42
        @defer.inlineCallbacks
        def legacy():
            value = yield double(4)  # a coroutine yielded: iscoroutine decides
            return value
        assert legacy().result == 8

        from http.cookiejar import CookieJar
        assert type(sys.modules["http.cookiejar"]) is not leantls.Placeholder
        assert twisted.python.compat.cookielib.CookieJar is CookieJar
        import urllib.request
        assert urllib.request.Request("http://127.0.0.1/").host == "127.0.0.1"
        assert type(sys.modules["urllib.request"]) is not leantls.Placeholder

        import asyncio, ctypes, ssl
        assert hasattr(asyncio, "get_running_loop") and hasattr(ssl, "SSLContext")
        assert asyncio.Future is not defer.__dict__.get("Future")
        from twisted.internet import ssl as twistedSSL
        assert twistedSSL.CertificateOptions
        import twisted.web.client
        assert twisted.web.client.Agent
        """
    )


def test_tunnel_imports() -> None:
    """
    The tunnel's modules load without twisted.web's HTTP/2 server and without libcrypto;
    the handshake's HMAC-SHA256 is the same.
    """
    import hashlib
    import hmac

    expected = hmac.new(b"key", b"", hashlib.sha256).hexdigest()
    _python(
        f"""
        import sys
        import nodepass.cli
        from nodepass._compat import leantls
        with leantls.tunnelImports():
            import nodepass.tunnel.server, nodepass.tunnel.handshake
        import twisted.web.http, hashlib, hmac
        assert twisted.web.http.H2_ENABLED is False
        for name in ("_hashlib", "h2", "twisted.web._http2", "OpenSSL", "ssl"):
            assert name not in sys.modules, name
        token = hmac.new(b"key", b"", hashlib.sha256).hexdigest()
        assert token == {expected!r}, token
        assert nodepass.tunnel.handshake.__name__
        import h2.connection, _hashlib
        """
    )


def test_switched_off() -> None:
    """
    C{NP_LEAN_IMPORTS=0}: everything is imported the plain way.
    """
    _python(
        """
        import sys
        import nodepass.cli
        from nodepass._compat import leantls
        assert not leantls.enabled and leantls.fallback is None
        assert "asyncio" in sys.modules
        assert type(sys.modules["http.cookiejar"]) is not leantls.Placeholder
        with leantls.tunnelImports():
            import nodepass.tunnel.server
        import twisted.web.http
        assert "_hashlib" in sys.modules
        """,
        NP_LEAN_IMPORTS="0",
    )


def test_untested_release_falls_back() -> None:
    """
    On a Twisted release that was not tested, the plain imports, with the reason kept for
    the entry point to log.
    """
    _python(
        """
        import sys
        from nodepass._compat import leantls
        leantls.TESTED_TWISTED = range(0)
        leantls.importReactorModules()
        assert leantls.fallback.startswith("Twisted "), leantls.fallback
        assert "asyncio" in sys.modules
        assert type(sys.modules.get("http.cookiejar")) is not leantls.Placeholder
        """
    )


def test_placeholder() -> None:
    """
    A deferred module is imported on first use, and whoever bound the placeholder then
    sees the real module's names.
    """
    _python(
        """
        import sys
        from nodepass._compat import leantls
        assert "colorsys" not in sys.modules
        leantls.defer("colorsys")
        import colorsys as early
        assert type(early) is leantls.Placeholder
        assert "rgb_to_hsv" not in early.__dict__
        assert early.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
        real = sys.modules["colorsys"]
        assert real is not early and early.hls_to_rgb is real.hls_to_rgb
        leantls.defer("no_such_module_here")
        assert "no_such_module_here" not in sys.modules
        with leantls.hidden(["colorsys", "wave"]):
            try:
                import wave
            except ImportError:
                pass
            else:
                raise AssertionError("wave was not hidden")
        import wave
        assert sys.modules["colorsys"] is real
        """
    )


# Built-in transports by reference: a lookup imports only the transport asked for.


def test_lookup_imports_only_the_transport_asked_for() -> None:
    """
    C{forType("0")} imports the TCP transport's module and no other built-in's;
    C{available()} loads them all, and both give the same objects.
    """
    _python(
        """
        import sys
        import nodepass.cli
        from nodepass.transports import available, forType
        tcp = forType("0")
        others = [m for m in sys.modules if m.startswith("nodepass.transports.")
                  and m not in ("nodepass.transports.interface", "nodepass.transports.tcp")]
        assert not others, others
        assert "ssl" not in sys.modules
        table = available()
        assert table["0"] is tcp and sorted(table) == ["0", "1", "2", "3"]
        assert forType("2") is table["2"] and table["2"].name == "ws"
        """
    )


class TestTransportReference:
    def test_loads_what_it_names(self) -> None:
        from nodepass.transports import TransportReference, forType
        from nodepass.transports.tcp import tcp

        reference = TransportReference("tcp", "0", "nodepass.transports.tcp:tcp")
        assert reference.load() is tcp
        assert forType("0", [reference]) is tcp

    def test_found_twice_is_no_conflict(self) -> None:
        """
        A reference and the object it names (or two equal references) are one transport.
        """
        from nodepass.transports import TransportReference, available
        from nodepass.transports.tcp import tcp

        one = TransportReference("tcp", "0", "nodepass.transports.tcp:tcp")
        two = TransportReference("tcp", "0", "nodepass.transports.tcp:tcp")
        assert available([one, tcp, two]) == {"0": tcp}

    def test_conflict_names_both(self) -> None:
        """
        Another plugin claiming a built-in's type code fails loudly, naming both.
        """
        from twisted.plugin import IPlugin
        from zope.interface import implementer

        from nodepass.transports import (
            INodePassTransport,
            TransportError,
            TransportReference,
            forType,
        )

        @implementer(IPlugin, INodePassTransport)
        class Impostor:  # type: ignore[misc]
            # Only what the lookup reads.
            name = "tcp"
            typeCode = "0"

        reference = TransportReference("tcp", "0", "nodepass.transports.tcp:tcp")
        with pytest.raises(TransportError) as caught:
            forType("0", [reference, Impostor()])
        assert "'tcp' (nodepass.transports.tcp.tcp)" in str(caught.value)
        assert "Impostor" in str(caught.value)

    def test_wrong_or_missing_target(self) -> None:
        """
        A reference to something else than it declares, or to nothing, is a
        L{TransportError} naming it, raised when it is looked up.
        """
        from nodepass.transports import TransportError, TransportReference, forType

        lying = TransportReference("tcp", "0", "nodepass.transports.websocket:ws")
        with pytest.raises(TransportError, match="is not pool transport 'tcp'"):
            forType("0", [lying])
        gone = TransportReference("gone", "gone", "no_such_package.transport:gone")
        with pytest.raises(TransportError, match="cannot be loaded"):
            forType("gone", [gone])
        with pytest.raises(TransportError, match="type=9; available: gone"):
            forType("9", [gone])
