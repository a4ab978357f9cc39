"""The ``nodepass URL`` console script (also ``python -m nodepass URL``).

It validates the URL before anything is bound, then runs the same service
tree as ``twistd -n nodepass URL`` in the foreground and exits with status 0
after SIGINT/SIGTERM, or 1 when the URL is invalid or start-up fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from nodepass._compat import leantls

# Before anything imports Twisted: the reactor without the modules an instance never uses
# (NP_LEAN_IMPORTS=0 imports them the plain way).
leantls.configure(os.environ)
leantls.importReactorModules()

from twisted.python import usage  # noqa: E402

from nodepass.errors import StartupError  # noqa: E402
from nodepass.tap import (  # noqa: E402
    USAGE,
    Options,
    fail,
    raiseOpenFileLimit,
    standalone,
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
    if args[0] == "doctor":
        from nodepass.doctor import main as doctor

        raise SystemExit(doctor(args[1:]))
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
    root = standalone(options["config"], reactor, os.environ)
    assert root.logObserver is not None
    # Twisted's own messages (and the master's modules) go to the same lines.
    globalLogBeginner.beginLoggingTo(
        [root.logObserver], discardBuffer=True, redirectStandardIO=False
    )
    code = 0

    def fatal(message: str) -> None:
        nonlocal code
        fail(message)
        code = 1
        reactor.stop()  # type: ignore[attr-defined]

    root.fatal.append(fatal)
    try:
        root.privilegedStartService()
    except StartupError as error:
        fail(str(error))
        _exit(1)
    if "NP_CONTROL_FDS" in os.environ:
        # Started by a master as an isolated instance: answer its control channel.
        from nodepass.master.childside import serveChild

        serveChild(root, reactor, os.environ)
    # Once the reactor runs, so its signal handlers are in place before the first log line
    # (a SIGTERM right after "started" must still shut down cleanly, with status 0).
    reactor.callWhenRunning(root.startService)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()  # type: ignore[attr-defined]
    _exit(code)


def _exit(code: int) -> NoReturn:
    # Everything is stopped and closed by now: skip the interpreter's teardown of every
    # module (about 60 ms of CPU), which adds up when a master stops a hundred instances.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
