"""The entry points' side of a standalone NodePass: options, settings, logging, exit status.

``twistd nodepass URL`` reaches L{makeService} through the ``nodepass`` service maker plugin;
the ``nodepass URL`` console script (L{nodepass.cli}) calls L{standalone} and runs the
result.  This is the only module that fetches the global reactor, reads C{os.environ} for an
instance, and decides exit statuses: a start-up failure (L{StartupError}) is one line on
stderr and status 1, and so is a fatal error reported after start (C{root.fatal}).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from nodepass import COMPATIBLE_VERSION, __version__
from nodepass._compat import leantls
from nodepass.errors import StartupError, URLError
from nodepass.log import NodePassLogObserver
from nodepass.service import NodePassService, buildService
from nodepass.settings import fromEnvironment
from nodepass.url import Config, parse

__all__ = [
    "COMPAT_SWITCHES",
    "DEFAULT_MASTER_URL",
    "USAGE",
    "Options",
    "configureCompat",
    "makeService",
    "raiseOpenFileLimit",
    "standalone",
    "transportsText",
    "versionText",
]

log = Logger()

#: What ``twistd nodepass master`` (no URL) runs: loopback only.
DEFAULT_MASTER_URL: Final = "master://127.0.0.1:9090/api"

USAGE = """\
Usage: nodepass URL

  server://KEY@HOST:PORT/TARGET[,TARGET...]?PARAMS   tunnel server
  client://KEY@HOST:PORT/TARGET[,TARGET...]?PARAMS   tunnel client, or single-end
                                                     forwarder when it can listen
                                                     on HOST:PORT itself
  master://HOST:PORT/PREFIX?PARAMS                   REST API + SSE control plane
  master                                             the same on 127.0.0.1:9090/api
  reset-key [STATE_DIR]                              replace a master's lost API key
  doctor [--json] [--key KEY] [--passive] URL        check a URL step by step and
                                                     say what is wrong (docs/doctor.md)

Example: nodepass "client://127.0.0.1:8080/127.0.0.1:80"
Parameters are described in docs/url.md."""


def transportsText() -> str:
    """
    One line naming the installed pool transports (``type=`` values).
    """
    from nodepass.transports import TransportError, available

    try:
        table = available()
    except TransportError as error:
        return f"Pool transports: {error}"
    listed = ", ".join(f"type={code} ({plugin.name})" for code, plugin in sorted(table.items()))
    return f"Pool transports installed: {listed or 'none'}"


def versionText() -> str:
    return f"nodepass {__version__} (compatible with NodePass {COMPATIBLE_VERSION})"


class Options(usage.Options):
    synopsis = "URL"
    longdesc = USAGE

    def getUsage(self, width: int | None = None) -> str:
        return str(super().getUsage(width)) + "\n" + transportsText() + "\n"

    def parseArgs(self, url: str | None = None) -> None:  # type: ignore[override]
        if url is None:
            raise usage.UsageError("a NodePass URL is required (server://, client:// or master://)")
        self["url"] = DEFAULT_MASTER_URL if url == "master" else url

    def postOptions(self) -> None:
        try:
            self["config"] = parse(self["url"])
        except URLError as error:
            raise usage.UsageError(str(error)) from None


def fail(message: str) -> None:
    """
    The one line a failed start prints on stderr (the master parses C{Error:} lines).
    """
    sys.stderr.write(f"Error: {message} [{os.getpid()}]\n")
    sys.stderr.flush()


#: The process-wide switches of L{nodepass._compat} modules, by environment variable.  A
#: module is imported (to read its switch) only when its variable is set: each is on by
#: default, and a process that never uses one does not load it (the TLS one imports ssl).
COMPAT_SWITCHES: Final = {
    "NP_SPLICE": "nodepass._compat.splice",
    "NP_DIRECT_WRITE": "nodepass._compat.directwrite",
    "NP_FAST_TLS": "nodepass._compat.fasttls",
    "NP_AIOQUIC_WINDOW": "nodepass._compat.aioquic",
}


def configureCompat(environ: Mapping[str, str]) -> None:
    """
    Set the switches of L{COMPAT_SWITCHES} from C{environ} (C{NP_SPLICE=0} and so on).
    """
    for variable, name in COMPAT_SWITCHES.items():
        if variable in environ:
            importlib.import_module(name).configure(environ)


def standalone(
    config: Config, reactor: Any, environ: Mapping[str, str], out: Any = None
) -> NodePassService:
    """
    One instance as its own process: settings and switches from C{environ}, log lines on
    C{out} (stdout by default) at the URL's level.
    """
    configureCompat(environ)
    observer = NodePassLogObserver(out if out is not None else sys.stdout, config.log)
    metricsAddress = environ.get("NP_METRICS_ADDR", "").strip()
    tap: Any = None
    if metricsAddress and config.scheme != "master":
        from nodepass.instancemetrics import CheckpointTap

        tap = CheckpointTap(observer)  # sees the CHECK_POINT figures, whatever the level
    log = Logger(namespace="nodepass", observer=tap if tap is not None else observer)
    if leantls.fallback is not None:
        log.debug("Lean imports off: {reason}", reason=leantls.fallback)
    root = buildService(
        config,
        reactor,
        fromEnvironment(environ),
        log,
        logObserver=observer,
        environ=environ,
    )
    if tap is not None:
        from nodepass.instancemetrics import InstanceMetrics

        InstanceMetrics(reactor, metricsAddress, tap, root.counters).setServiceParent(root)
    return root


class _Entry(Service):
    """
    What twistd runs: the tree, with start-up failures turned into status 1.

    twistd calls C{privilegedStartService} before the reactor runs; a L{StartupError} there
    is one line on stderr and C{SystemExit(1)}, which twistd reports as the exit status.
    """

    name = "entry"

    def __init__(self, root: NodePassService, reactor: Any) -> None:
        self.root = root
        self.reactor = reactor
        self.exitCode = 0
        self.twistdLogging = False
        root.fatal.append(self._fatal)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks its application for an ILogObserver component before falling back to
        # its own format; offering ours keeps the NodePass line format (which a master
        # parses) under ``twistd -n``.
        observer = self.root.logObserver
        if self.twistdLogging and observer is not None and isinstance(parent, Componentized):
            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, observer)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.root.privilegedStartService()
        except StartupError as error:
            fail(str(error))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        self.root.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self.root.stopService()

    def _fatal(self, message: str) -> None:
        fail(message)
        self.exitCode = 1
        self.reactor.stop()


def raiseOpenFileLimit() -> None:
    """
    Raise the soft limit on open files to the hard limit, as Go programs do at start.

    Every connection, pool connection, UDP session and (for a master) every child's two
    pipes is a descriptor; the usual soft limit of 1024 would cap a tunnel at a few hundred
    connections.  A system without the C{resource} module, or that refuses, keeps its limit.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            # Linux refuses an infinite soft limit for files; the kernel's maximum will do.
            hard = max(soft, _kernelFileMaximum())
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        log.debug("Cannot raise the open file limit: {error}", error=str(error))


def _kernelFileMaximum() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def makeService(options: Options) -> Service:
    """
    twistd's entry point.
    """
    from twisted.internet import reactor

    raiseOpenFileLimit()
    root = standalone(options["config"], reactor, os.environ)
    entry = _Entry(root, reactor)

    def exitWithCode() -> None:
        # A failure after start-up (the master's state could not be restored): twistd itself
        # would exit 0.
        if entry.exitCode:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(entry.exitCode)

    reactor.addSystemEventTrigger("after", "shutdown", exitWithCode)
    parent = getattr(options, "parent", None)
    if parent is not None and parent.get("nodaemon") and not parent.get("logfile"):
        entry.twistdLogging = True
    return entry
