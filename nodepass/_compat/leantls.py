"""Import Twisted's reactor without its built-in TLS glue.

Twisted's TCP and reactor modules import C{twisted.internet._newtls} (and with it pyOpenSSL
and cryptography, about 13 MiB) when pyOpenSSL is installed.  Twisted supports running
without pyOpenSSL: C{reactor.listenSSL}/C{connectSSL} and C{transport.startTLS} are then
absent.  NodePass uses none of them (its TLS is L{nodepass.tls} over C{TLSMemoryBIOFactory},
imported only when a URL needs TLS), so a process that has not imported the reactor yet can
import it as if pyOpenSSL were missing.  The hidden modules stay importable afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Twisted's own TLS glue, hidden while the reactor's modules are imported.
BUILTIN_TLS = ("twisted.internet._newtls", "twisted.protocols.tls", "twisted.internet.ssl")


@contextmanager
def withoutBuiltinTLS() -> Iterator[None]:
    hidden = [name for name in BUILTIN_TLS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def importReactorModules() -> None:
    """
    Import Twisted's TCP, UDP and POSIX reactor modules without the built-in TLS glue (a
    no-op when they are imported already).
    """
    with withoutBuiltinTLS():
        import twisted.internet.posixbase  # noqa: F401  (imports tcp and udp)
