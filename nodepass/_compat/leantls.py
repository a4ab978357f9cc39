"""Import Twisted's reactor without what a NodePass instance never uses.

A fresh process pays for every module its imports pull in, and several of Twisted's (and the
standard library's) imports are probes for optional features NodePass does not use.  Before
the reactor is imported, L{importReactorModules} makes these probes come out empty, or
defers them, so that an idle forwarder does not carry them (figures: Twisted 26.10, CPython
3.11, RSS of a ``client://...?mode=1`` forwarder):

* C{twisted.internet._newtls}, C{twisted.protocols.tls}, C{twisted.internet.ssl}: Twisted's
  TCP and reactor modules import their TLS glue, and with it pyOpenSSL and cryptography
  (about 13 MiB), when pyOpenSSL is installed.  Twisted supports running without pyOpenSSL:
  C{reactor.listenSSL}/C{connectSSL} and C{transport.startTLS} are then absent.  NodePass
  uses none of them (its TLS is L{nodepass.tls} over C{TLSMemoryBIOFactory}, imported only
  when a URL needs TLS), so these are hidden while the reactor's modules are imported.
* C{http.cookiejar} and C{urllib.request}: C{twisted.python.compat} binds the first (as a
  deprecated alias) at import, C{xml.sax.saxutils} (under C{twisted.web.server}) the
  second, and they pull in C{http.client}, C{email}, C{ssl} and C{hashlib} (about 7 MiB,
  OpenSSL's shared libraries included).  Each is replaced by a L{Placeholder} that imports
  the real module on first attribute access (C{twisted.web.client} does, when loaded).
* C{asyncio}: C{twisted.internet.defer} imports C{AbstractEventLoop}, C{Future} and
  C{iscoroutine} from it, the first two for annotations only (asyncio and
  C{concurrent.futures}: about 3 MiB, 8 MiB with the C{ssl} it imports).  While C{twisted.internet.defer} is imported, C{asyncio} is a
  stand-in with those three names: C{iscoroutine} answers as asyncio's does for what
  C{Deferred} asks it (a coroutine, or a L{collections.abc.Coroutine}; C{Deferred} tests
  for generators itself).  The stand-in is gone once C{defer} is imported: a later
  C{import asyncio} gets the real module.
* C{ctypes} while C{twisted.python.win32} is imported: it probes C{ctypes.WinError}, which
  exists on Windows only (about 0.3 MiB).

And, while the tunnel's modules are imported (L{tunnelImports}, for C{server://} and
C{client://} only):

* C{twisted.web._http2}: C{twisted.web.http} enables HTTP/2 for its own server when C{h2} is
  installed (about 1 MiB with C{hpack} and C{hyperframe}); the tunnel's handshake is HTTP/1.1
  and NodePass's own HTTP/2 pool transport uses C{h2} directly, so C{twisted.web} runs
  without it in such a process;
* C{_hashlib}: C{hashlib} and C{hmac} use OpenSSL's libcrypto when they can (about 3.5 MiB);
  the handshake's HMAC-SHA256 and the fingerprints' SHA-256 are as well served by CPython's
  built-in hashes, so a C{tls=0} instance does not map libcrypto for them.

The hidden modules stay importable afterwards.  Checked: a tested Twisted and CPython
release (otherwise the plain imports, and L{fallback} says why: the entry point logs it
once).  Switch: C{NP_LEAN_IMPORTS=0} (read by the entry point through L{configure}) imports
everything the plain way.  Pinned by C{tests/integration/test_imports.py}.
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The environment variable of the switch.
SWITCH = "NP_LEAN_IMPORTS"

#: Twisted's own TLS glue, hidden while the reactor's modules are imported.
BUILTIN_TLS = ("twisted.internet._newtls", "twisted.protocols.tls", "twisted.internet.ssl")

#: Modules replaced by a placeholder until one of their attributes is used.
DEFERRED = ("http.cookiejar", "urllib.request")

#: Hidden while the tunnel's modules are imported (L{tunnelImports}).
TUNNEL_HIDDEN = ("twisted.web._http2", "_hashlib")

#: Twisted major versions whose imports were read and measured.
TESTED_TWISTED = range(22, 27)

#: CPython minor versions (3.x) tested.
TESTED_PYTHON = range(10, 14)

#: What C{twisted.internet.defer} imports from C{asyncio} (pinned by the tests).
DEFER_USES_FROM_ASYNCIO = ("AbstractEventLoop", "Future", "iscoroutine")

#: What C{twisted.internet.defer} imports, imported before the stand-in is in place so
#: that only C{defer} itself sees it.
DEFER_IMPORTS = (
    "inspect",
    "traceback",
    "warnings",
    "contextvars",
    "attr",
    "incremental",
    "typing_extensions",
    "twisted.internet.interfaces",
    "twisted.logger",
    "twisted.python.lockfile",
    "twisted.python.compat",
    "twisted.python.deprecate",
    "twisted.python.failure",
)

#: The switch: C{False} imports everything the plain way.
enabled = True

#: Why the lean imports were not used in this process (for the entry point to log), if so.
fallback: str | None = None


def configure(environ: Mapping[str, str]) -> None:
    """
    Set the switch from the process environment (C{NP_LEAN_IMPORTS=0} turns it off).
    """
    global enabled
    enabled = environ.get(SWITCH, "").strip() != "0"


@contextmanager
def hidden(names: Iterable[str]) -> Iterator[None]:
    """
    While the block runs, importing any of C{names} that is not imported yet raises
    C{ImportError}, as if it were not installed.
    """
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


class Placeholder(types.ModuleType):
    """
    Stands in C{sys.modules} for a module that is not imported yet; the first attribute
    looked up on it imports the real module, copies the real module's namespace into the
    placeholder (so whoever bound the placeholder sees the real thing) and answers from it.
    """

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def defer(name: str) -> None:
    """
    Put a L{Placeholder} for C{name} in C{sys.modules} (and on its parent package), unless
    C{name} is imported already or cannot be found.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    placeholder = Placeholder(name)
    placeholder.__spec__ = spec
    sys.modules[name] = placeholder
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, placeholder)


_COROUTINES = (types.CoroutineType, collections.abc.Coroutine)


def iscoroutine(value: object) -> bool:
    """
    Whether C{value} is a coroutine: what C{Deferred} asks C{asyncio.iscoroutine}.
    """
    return isinstance(value, _COROUTINES)


class _StandIn:
    """
    A name C{twisted.internet.defer} only uses in annotations.
    """


def asyncioStandIn() -> types.ModuleType:
    """
    The C{asyncio} that C{twisted.internet.defer} sees while it is imported.
    """
    module = types.ModuleType("asyncio", "Stand-in for asyncio while Twisted's defer loads.")
    module.AbstractEventLoop = type("AbstractEventLoop", (_StandIn,), {})  # type: ignore[attr-defined]
    module.Future = type("Future", (_StandIn,), {})  # type: ignore[attr-defined]
    module.iscoroutine = iscoroutine  # type: ignore[attr-defined]
    return module


def _importDefer() -> str | None:
    """
    Import C{twisted.internet.defer} with the C{asyncio} stand-in; the reason when it could
    not be (then it is imported the plain way).
    """
    if "twisted.internet.defer" in sys.modules or "asyncio" in sys.modules:
        return None
    for name in DEFER_IMPORTS:
        importlib.import_module(name)
    reason: str | None = None
    sys.modules["asyncio"] = asyncioStandIn()
    try:
        import twisted.internet.defer
    except ImportError as error:
        reason = f"twisted.internet.defer needs more of asyncio: {error}"
    finally:
        del sys.modules["asyncio"]
    if reason is not None:
        import twisted.internet.defer  # noqa: F401
    return reason


def unsupported() -> str | None:
    """
    Why this process should import the plain way, or C{None}.
    """
    if sys.version_info[0] != 3 or sys.version_info[1] not in TESTED_PYTHON:
        return f"Python {sys.version.split()[0]} is not a tested release"
    import twisted  # the package only: its version, no twisted.python module yet

    version = str(twisted.__version__)
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) not in TESTED_TWISTED:
        return f"Twisted {version} is not a tested release"
    return None


@contextmanager
def tunnelImports() -> Iterator[None]:
    """
    Import the tunnel's modules (handshake, pool, sessions) in this block: C{twisted.web}
    without its HTTP/2 server and C{hashlib} without libcrypto, unless switched off or
    imported already.
    """
    if not enabled or unsupported() is not None:
        yield
        return
    with hidden(TUNNEL_HIDDEN):
        import hashlib  # noqa: F401
        import hmac  # noqa: F401

        yield


def importReactorModules() -> None:
    """
    Import Twisted's TCP, UDP and POSIX reactor modules without the probes above (the
    plain imports when switched off or on an untested release; a no-op for what is
    imported already).
    """
    global fallback
    fallback = unsupported() if enabled else None
    if not enabled or fallback is not None:
        import twisted.internet.posixbase

        return
    for name in DEFERRED:
        defer(name)
    import twisted.python.deprecate  # what win32 imports, not hidden

    with hidden(("ctypes",)):
        import twisted.python.win32
    fallback = _importDefer()
    with hidden(BUILTIN_TLS):
        import twisted.internet.posixbase  # noqa: F401  (imports tcp and udp)
