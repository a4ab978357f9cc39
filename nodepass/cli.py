"""The ``nodepass URL`` console script (also ``python -m nodepass URL``).

It validates the URL before anything is bound, then runs the same service
tree as ``twistd -n nodepass URL`` in the foreground and exits with status 0
after SIGINT/SIGTERM, or 1 when the URL is invalid or start-up fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

#: Twisted's own TLS glue.  Its TCP and reactor modules import it when pyOpenSSL is
#: installed, which loads pyOpenSSL and cryptography: about 13 MiB in every instance.
#: NodePass builds its TLS itself (L{nodepass.tls} over C{TLSMemoryBIOFactory}) and imports
#: those libraries only when a URL needs TLS.
_BUILTIN_TLS = ("twisted.internet._newtls", "twisted.protocols.tls", "twisted.internet.ssl")


@contextmanager
def _withoutBuiltinTLS() -> Iterator[None]:
    """
    Import Twisted's TCP and reactor modules as if pyOpenSSL were missing, which Twisted
    supports: C{reactor.listenSSL}/C{connectSSL} and C{transport.startTLS} are then absent
    (NodePass uses none of them).  The modules stay importable afterwards.
    """
    hidden = [name for name in _BUILTIN_TLS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with _withoutBuiltinTLS():
    import twisted.internet.posixbase  # noqa: F401  (imports tcp and udp)

from twisted.python import usage  # noqa: E402

from nodepass.service import (  # noqa: E402
    USAGE,
    Options,
    buildService,
    raiseOpenFileLimit,
    transportsText,
    versionText,
)


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"Error: {message} [{os.getpid()}]\n")
    sys.stderr.write("Run 'nodepass --help' for usage.\n")
    sys.stderr.flush()
    raise SystemExit(1)


#: How a supervising master hands an instance its URL without putting it on
#: the command line, where other local users could read the key (spec §16.6).
URL_VARIABLE = "NP_INSTANCE_URL"


def _resetKey(args: Sequence[str]) -> NoReturn:
    """
    C{nodepass reset-key [STATE_DIR]}: replace a master's API key offline (master spec §5),
    for an operator who lost it.  The new key is printed once; a running master keeps the
    old one until it is restarted.
    """
    from nodepass.master.service import resetKey, stateDirectory

    if len(args) > 1:
        _fail("usage: nodepass reset-key [STATE_DIR]")
    directory = args[0] if args else stateDirectory(os.environ)
    try:
        key = resetKey(directory)
    except Exception as error:
        _fail(str(error))
    sys.stdout.write(f"API Key created: {key}\n")
    sys.stdout.write("Restart the master for the new key to take effect.\n")
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    handed = os.environ.pop(URL_VARIABLE, None)
    if not args and handed:
        args = [handed]
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\n\n" + transportsText() + "\n")
        raise SystemExit(0 if args else 1)
    if args[0] in ("-V", "--version", "version"):
        sys.stdout.write(versionText() + "\n")
        raise SystemExit(0)
    if args[0] == "reset-key":
        _resetKey(args[1:])
    if len(args) != 1:
        _fail(f"expected exactly one URL argument, got {len(args)}")
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as error:
        _fail(str(error))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    raiseOpenFileLimit()
    root = buildService(options["config"], reactor)
    globalLogBeginner.beginLoggingTo(
        [root.logObserver], discardBuffer=True, redirectStandardIO=False
    )
    root.privilegedStartService()
    root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()  # type: ignore[attr-defined]
    # Everything is stopped and closed by now: skip the interpreter's teardown of every
    # module (about 60 ms of CPU), which adds up when a master stops a hundred instances.
    code = root.exitCode
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
