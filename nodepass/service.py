"""From a parsed URL to a service tree: L{buildService}.

The same tree runs a standalone instance (C{nodepass URL}, C{twistd nodepass URL}, both
through L{nodepass.tap}) and an instance inside an instance host
(L{nodepass.master.host}).  Everything an instance uses comes in as an argument: the
reactor, its L{Settings} (read once by whoever starts it), and its own L{Logger}, so that
many instances can share a process.  Building does no network I/O; every listener binds in
C{privilegedStartService} and a failure there raises L{StartupError}, which only the entry
point turns into an exit status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger

from nodepass._compat.leantls import tunnelImports
from nodepass.errors import StartupError
from nodepass.log import initLine
from nodepass.resolve import Resolver, serverLookup, systemLookup
from nodepass.settings import Settings
from nodepass.stats import Counters
from nodepass.tunnel.single import SingleEnd
from nodepass.url import Config, describe, unknownParams

__all__ = ["AutoClient", "NodePassService", "buildService"]


class NodePassService(MultiService):
    """
    The root of one instance's service tree, named C{nodepass}.

    C{privilegedStartService} prints the start-up lines, runs the start-up C{steps} (a
    server's TLS credentials, whose lines come before C{started}, as in the reference), and
    binds every child.  A L{StartupError} is logged as C{<Role> error: ...} and raised again:
    the caller decides what it means (an exit status, or an instance host's report).

    @ivar fatal: fires with an error text when a child fails after start-up (a master whose
        state cannot be restored); the entry point stops the process with status 1.
    """

    def __init__(
        self,
        config: Config,
        settings: Settings,
        log: Logger,
        logObserver: ILogObserver | None = None,
        steps: Sequence[Callable[[], None]] = (),
    ) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.log = log
        self.logObserver = logObserver
        self.steps = list(steps)
        self.fatal: list[Callable[[str], None]] = []
        #: The instance's traffic counters (one object, whichever child moves the bytes).
        self.counters = Counters()
        self.setName("nodepass")

    @property
    def role(self) -> str:
        return self.config.scheme.capitalize()

    def privilegedStartService(self) -> None:
        config, log = self.config, self.log
        initLine(log, config.log)
        for name in unknownParams(config):
            log.warn("Ignoring unknown parameter: {name}", name=name)
        try:
            for step in self.steps:
                step()
            if config.scheme != "master":  # the master names its listening address itself
                log.info("{role} started: {url}", role=self.role, url=describe(config))
            super().privilegedStartService()
        except StartupError as error:
            log.error("{role} error: {error}", role=self.role, error=str(error))
            raise

    def reportFatal(self, message: str) -> None:
        """
        A child cannot go on (called by the child): tell the entry point.
        """
        for callback in self.fatal:
            callback(message)

    def connections(self) -> list[dict[str, Any]]:
        """
        Every open TCP relay and UDP flow of this instance, one dict each:
        C{{"id", "proto", "remote", "target", "rx", "tx", "since"}} (see
        L{nodepass.tunnel.exchange.Connections}); JSON-ready.  A master has none.
        """
        return [entry for registry in self._registries() for entry in registry.list()]

    def closeConnection(self, ident: str) -> bool:
        """
        Close the connection listed under C{ident} as a normal close would (a
        TCP user sees the end of its connection; a UDP flow is forgotten);
        C{False} when there is none (any more).
        """
        return any(registry.close(ident) for registry in self._registries())

    def _registries(self) -> list[Any]:
        from nodepass.tunnel.exchange import ILiveConnections

        found: list[Any] = []
        services: list[Any] = list(self)
        while services:
            service = services.pop(0)
            if ILiveConnections.providedBy(service):
                registry = service.connections
                if all(registry is not seen for seen in found):
                    found.append(registry)
            if isinstance(service, MultiService):
                services.extend(service)
        return found


def _resolver(config: Config, reactor: Any, log: Logger) -> Resolver:
    lookup = serverLookup(config.dnsServers) if config.dnsServers else systemLookup(reactor)
    return Resolver(reactor, config.dnsTTL, lookup, log=log)


def _shared(
    config: Config,
    reactor: Any,
    settings: Settings,
    resolver: Resolver,
    counters: Counters,
    log: Logger,
) -> Any:
    from nodepass.balance import TargetDialer, Targets
    from nodepass.tunnel.session import Shared

    dialer = TargetDialer(
        reactor,
        Targets(config.targets, config.lbs, reactor),
        resolver,
        settings.tcpDialTimeout,
        None if config.dial == "auto" else config.dial,
        log=log,
    )
    return Shared(config, reactor, settings, dialer, counters, log=log)


class AutoClient(MultiService):
    """
    ``client://`` with ``mode=0``: single-end forwarding when the tunnel address can be
    bound here, a dual-end client otherwise (spec §2.2).  The choice is made when the tree
    binds (C{privilegedStartService}): it is what the bind tells.
    """

    name = "auto-client"

    def __init__(self, single: SingleEnd, makeDual: Callable[[], Any], log: Logger) -> None:
        super().__init__()
        self.single = single
        self.makeDual = makeDual
        self.log = log
        self.chosen: Any = None

    def privilegedStartService(self) -> None:
        if self.chosen is None:
            try:
                self.single.bind()
            except StartupError as error:
                self.log.debug("Single-end bind failed ({error}): dual-end mode", error=str(error))
                self.chosen = self.makeDual()
            else:
                self.chosen = self.single
            self.chosen.setServiceParent(self)
        super().privilegedStartService()


def buildService(
    config: Config,
    reactor: Any,
    settings: Settings,
    log: Logger,
    logObserver: ILogObserver | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodePassService:
    """
    The service tree for C{config}; nothing is bound or connected until it starts.

    @param settings: the C{NP_*} tunables, read once by the caller.
    @param log: this instance's logger: every line of the instance goes through it.
    @param logObserver: what C{log} writes to, offered to twistd (standalone only).
    @param environ: for C{master://} only: the master's environment (state directory,
        CORS, instance hosts, and what isolated children inherit).
    """
    root = NodePassService(config, settings, log, logObserver)
    if config.scheme == "client":
        resolver = _resolver(config, reactor, log)

        def makeDual() -> Any:
            # Imported only when needed: a plain forwarder never loads the
            # tunnel's HTTP, TLS and pool modules.
            with tunnelImports():
                from nodepass.tunnel.client import TunnelClient

            shared = _shared(config, reactor, settings, resolver, root.counters, log)
            return TunnelClient(config, reactor, settings, shared, resolver, log=log)

        if config.mode == 2:
            makeDual().setServiceParent(root)
        elif config.mode == 1:
            SingleEnd(config, reactor, settings, resolver, root.counters, log=log).setServiceParent(
                root
            )
        else:
            single = SingleEnd(config, reactor, settings, resolver, root.counters, log=log)
            AutoClient(single, makeDual, log).setServiceParent(root)
    elif config.scheme == "server":
        _buildServer(root, config, reactor, settings, log)
    else:
        from nodepass.master.service import MasterService

        MasterService(
            config, reactor, settings, dict(environ or {}), fatal=root.reportFatal
        ).setServiceParent(root)
    return root


def _buildServer(
    root: NodePassService, config: Config, reactor: Any, settings: Settings, log: Logger
) -> None:
    with tunnelImports():
        from nodepass.transports import TransportError, forType
        from nodepass.tunnel.server import TunnelServer

    try:
        transport: Any = forType(config.type)
        missing = ""
    except TransportError as error:
        # Reported when the tree starts, with the usual "Server error:" line.
        transport, missing = object(), str(error)
    resolver = _resolver(config, reactor, log)
    shared = _shared(config, reactor, settings, resolver, root.counters, log)
    server = TunnelServer(config, reactor, settings, shared, None, transport=transport, log=log)

    def credentials() -> None:
        # A start-up step: the reference prints its TLS lines before "Server started".
        if missing:
            raise StartupError(missing)
        if config.effectiveTLS:
            from nodepass.tls import serverCredentials

            server.credentials, server.tlsMode = serverCredentials(config, reactor, settings, log)
        if server.credentials is None and transport.minimumTLS:
            from nodepass.tls import ServerCredentials

            log.info("TLS code-1: RAM cert with TLS 1.3 for stream pool")
            server.credentials = ServerCredentials.selfSigned()
            server.tlsMode = transport.minimumTLS

    root.steps.append(credentials)
    server.setServiceParent(root)
