"""From a URL to a running service tree: the composition root.

``twistd nodepass URL`` reaches this module through the ``nodepass`` service
maker plugin; the ``nodepass URL`` console script calls L{buildService}
directly.  Both run the same tree.  L{makeService} is the only place that
fetches the global reactor; everything below takes it as an argument, so
tests build the tree on a fake reactor.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from nodepass import COMPATIBLE_VERSION, __version__
from nodepass.errors import StartupError, URLError
from nodepass.log import NodePassLogObserver, initLine
from nodepass.relay import Counters
from nodepass.resolve import Resolver, serverLookup, systemLookup
from nodepass.settings import Settings, fromEnvironment
from nodepass.tunnel.single import SingleEnd
from nodepass.url import Config, describe, parse, unknownParams

log = Logger()

#: What ``twistd nodepass master`` (no URL) runs: loopback only.
DEFAULT_MASTER_URL = "master://127.0.0.1:9090/api"

USAGE = """\
Usage: nodepass URL

  server://KEY@HOST:PORT/TARGET[,TARGET...]?PARAMS   tunnel server
  client://KEY@HOST:PORT/TARGET[,TARGET...]?PARAMS   tunnel client, or single-end
                                                     forwarder when it can listen
                                                     on HOST:PORT itself
  master://HOST:PORT/PREFIX?PARAMS                   REST API + SSE control plane
  master                                             the same on 127.0.0.1:9090/api
  reset-key [STATE_DIR]                              replace a master's lost API key

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


class NodePassService(MultiService):
    """
    The root of one instance's service tree.

    It prints the start-up lines, starts its children, and turns a
    L{StartupError} (a port in use, say) into a clear error on stderr and
    exit status 1 instead of a traceback.
    """

    def __init__(self, config: Config, settings: Settings, logObserver: ILogObserver) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.logObserver = logObserver
        self.setName("nodepass")
        self._twistdLogging = False

    def useForTwistdLogging(self) -> None:
        """
        Make twistd log through L{logObserver} (used with ``twistd -n``).
        """
        self._twistdLogging = True

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks its application for an ILogObserver component before
        # falling back to its own format; offering ours keeps the NodePass
        # line format (which a master parses) under ``twistd -n``.
        if self._twistdLogging and isinstance(parent, Componentized):
            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, self.logObserver)

    def startService(self) -> None:
        config = self.config
        initLine(log, config.log)
        for name in unknownParams(config):
            log.warn("Ignoring unknown parameter: {name}", name=name)
        role = config.scheme.capitalize()
        if config.scheme != "master":  # the master names its listening address itself
            log.info("{role} started: {url}", role=role, url=describe(config))
        try:
            self._startChildren()
        except StartupError as error:
            log.error("{role} error: {error}", role=role, error=str(error))
            sys.stderr.write(f"Error: {error} [{os.getpid()}]\n")
            sys.stderr.flush()
            raise SystemExit(1) from None

    @property
    def exitCode(self) -> int:
        """
        The exit status a child asks for after a failure that happened once the reactor was
        running (0 normally).
        """
        return max((getattr(child, "exitCode", 0) for child in self), default=0)

    def _startChildren(self) -> None:
        prepare = getattr(self, "prepare", None)
        if prepare is not None:
            # Start-up work that logs (TLS credentials) runs after "started".
            prepare()
        for child in self:
            binder = getattr(child, "bind", None)
            if binder is not None and getattr(child, "tcpPort", None) is None:
                binder()
        super().startService()


def _resolver(config: Config, reactor: Any) -> Resolver:
    if config.dnsServers:
        return Resolver(reactor, config.dnsTTL, serverLookup(config.dnsServers))
    return Resolver(reactor, config.dnsTTL, systemLookup(reactor))


def _shared(config: Config, reactor: Any, settings: Settings, resolver: Resolver) -> Any:
    from nodepass.balance import TargetDialer, Targets
    from nodepass.tunnel.session import Shared

    dialer = TargetDialer(
        reactor,
        Targets(config.targets, config.lbs, reactor),
        resolver,
        settings.tcpDialTimeout,
        None if config.dial == "auto" else config.dial,
    )
    return Shared(config, reactor, settings, dialer, Counters())


class AutoClient(MultiService):
    """
    ``client://`` with ``mode=0``: single-end forwarding when the tunnel
    address can be bound here, a dual-end client otherwise (spec §2.2).
    """

    name = "auto-client"

    def __init__(self, single: SingleEnd, makeDual: Callable[[], Any]) -> None:
        super().__init__()
        self.single = single
        self.makeDual = makeDual
        self.tcpPort: Any = None

    def bind(self) -> None:
        try:
            self.single.bind()
        except StartupError as error:
            log.debug("Single-end bind failed ({error}): dual-end mode", error=str(error))
            self.makeDual().setServiceParent(self)
        else:
            self.single.setServiceParent(self)
        self.tcpPort = True


def buildService(
    config: Config,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
    out: Any = None,
) -> NodePassService:
    """
    Build the service tree for C{config}.  Does no network I/O: binding
    happens when the service starts.
    """
    settings = fromEnvironment(os.environ if environ is None else environ)
    observer = NodePassLogObserver(out if out is not None else sys.stdout, config.log)
    root = NodePassService(config, settings, observer)
    if config.scheme == "client":
        resolver = _resolver(config, reactor)

        def makeDual() -> Any:
            # Imported only when needed: a plain forwarder never loads the
            # tunnel's HTTP, TLS and pool modules.
            from nodepass.tunnel.client import TunnelClient

            shared = _shared(config, reactor, settings, resolver)
            return TunnelClient(config, reactor, settings, shared, resolver)

        if config.mode == 2:
            makeDual().setServiceParent(root)
        elif config.mode == 1:
            SingleEnd(config, reactor, settings, resolver, Counters()).setServiceParent(root)
        else:
            single = SingleEnd(config, reactor, settings, resolver, Counters())
            AutoClient(single, makeDual).setServiceParent(root)
    elif config.scheme == "server":
        root.prepare = lambda: _startServer(root, config, reactor, settings)  # type: ignore[attr-defined]
    else:
        from nodepass.master.service import MasterService

        MasterService(
            config, reactor, settings, os.environ if environ is None else environ
        ).setServiceParent(root)
    return root


def _startServer(root: NodePassService, config: Config, reactor: Any, settings: Settings) -> None:
    from nodepass.transports import TransportError, forType
    from nodepass.tunnel.server import TunnelServer

    try:
        transport = forType(config.type)
    except TransportError as error:
        raise StartupError(str(error)) from None
    credentials, tlsMode = None, 0
    if config.effectiveTLS:
        from nodepass.tls import serverCredentials

        credentials, tlsMode = serverCredentials(config, reactor, settings)
    if credentials is None and transport.minimumTLS:
        from nodepass.tls import ServerCredentials

        log.info("TLS code-1: RAM cert with TLS 1.3 for stream pool")
        credentials, tlsMode = ServerCredentials.selfSigned(), transport.minimumTLS
    resolver = _resolver(config, reactor)
    TunnelServer(
        config,
        reactor,
        settings,
        _shared(config, reactor, settings, resolver),
        credentials,
        tlsMode,
        transport,
    ).setServiceParent(root)


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


def makeService(options: Options) -> NodePassService:
    """
    twistd's entry point: the only code that touches the global reactor.
    """
    from twisted.internet import reactor

    raiseOpenFileLimit()
    root = buildService(options["config"], reactor)

    def exitWithCode() -> None:
        # A failure after start-up (the master's state could not be restored): twistd itself
        # would exit 0.
        code = root.exitCode
        if code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", exitWithCode)
    parent = getattr(options, "parent", None)
    if parent is not None and parent.get("nodaemon") and not parent.get("logfile"):
        root.useForTwistdLogging()
    return root
