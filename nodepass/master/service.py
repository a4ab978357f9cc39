"""
Master mode as a Twisted service: C{nodepass master://HOST:PORT/PREFIX?...},
C{twistd nodepass master} (master spec §1, §11, §13, §14).

L{MasterService} owns the pieces and their order:

  1. at start-up (synchronously, before the reactor runs): open the SQLite state under
     C{NP_STATE_DIR} or the current directory (a corrupt database without a usable backup
     stops here, §11.6) and bind the API port (a port in use stops here, §17 a25); either
     failure exits with status 1 and one line on stderr;
  2. once the reactor runs: restore the state (API key and master ID first: the key is
     printed once, when it is created) and the webhooks, open the API, tell the webhooks
     the master started, then start the C{restart=true} instances in the background;
  3. every C{NP_RELOAD_INTERVAL}: the online backup and the error retry (§11.5); every 60 s:
     the traffic counters that changed (§11.6);
  4. on SIGTERM/SIGINT, within C{NP_SHUTDOWN_TIMEOUT} (§14): tell the webhooks, stop
     accepting connections, end the SSE streams, save the traffic, stop the children
     (SIGKILL for the ones still running when the time is up), save again, give the last
     webhook events a bounded time, close the database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Final

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from nodepass.errors import StartupError
from nodepass.master.app import DASHBOARD_DIRECTORY, LimitedRequest, MasterAPI, MasterInfo
from nodepass.master.auth import CorsPolicy, corsPolicyFromEnvironment
from nodepass.master.events import EventHub
from nodepass.master.health import HealthChecks
from nodepass.master.metrics import METRICS_PUBLIC_VARIABLE, MasterMetrics
from nodepass.master.openapi import staticDirectory
from nodepass.master.registry import MasterSettings, Registry
from nodepass.master.store import Store, StoreError
from nodepass.master.supervisor import IInstanceRunner, ProcessRunner, Supervisor
from nodepass.master.sysinfo import CpuSampler, collect
from nodepass.master.tcping import TCPing
from nodepass.master.webhooks import HubTee, Webhooks, treqPoster
from nodepass.settings import Settings
from nodepass.url import Config

__all__ = [
    "CORE_VARIABLE",
    "HOSTS_VARIABLE",
    "ISOLATE_VARIABLE",
    "STATE_DIR_VARIABLE",
    "TRAFFIC_FLUSH_INTERVAL",
    "MasterService",
    "resetKey",
    "stateDirectory",
]

log = Logger()

#: Where the master keeps its database (default: the current directory, §11.6).
STATE_DIR_VARIABLE: Final = "NP_STATE_DIR"

#: A core program to run instances with instead of this NodePass (§9.1), e.g. the Go binary.
CORE_VARIABLE: Final = "NP_CORE_BIN"

#: How often changed traffic counters are written (§11.6).
TRAFFIC_FLUSH_INTERVAL: Final = 60.0

#: Seconds of the shutdown budget kept for what follows the children's stop.
SHUTDOWN_RESERVE: Final = 1.0

#: One process per instance instead of instance hosts (any value but empty and "0").
ISOLATE_VARIABLE: Final = "NP_ISOLATE"

#: How many instance hosts: a number, or "auto" (one per CPU core, the default).
HOSTS_VARIABLE: Final = "NP_INSTANCE_HOSTS"

#: Idle time after which an API connection is closed (SSE streams excepted, §17 a6).
CONNECTION_TIMEOUT: Final = 60.0

#: Most seconds of the shutdown spent delivering the last webhook events.
WEBHOOK_DRAIN: Final = 2.0


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def stateDirectory(environ: Mapping[str, str]) -> str:
    """
    The state directory: C{NP_STATE_DIR} if set, else the current directory.
    """
    return os.path.abspath(environ.get(STATE_DIR_VARIABLE) or os.getcwd())


def resetKey(directory: str) -> str:
    """
    Replace the API key stored in C{directory} with a new one (offline: the master does not
    need to run) and return the new key.

    @raise StoreError: there is no master state there, or it cannot be opened.
    """
    from nodepass.master.auth import generateKey
    from nodepass.master.store import DATABASE_NAME, SyncStore, keyDigest

    path = os.path.join(os.path.abspath(directory), DATABASE_NAME)
    if not os.path.exists(path):
        raise StoreError(f"no master state in {os.path.abspath(directory)} ({path} is missing)")
    store = SyncStore(directory)
    store.open()
    try:
        key = generateKey()
        store.setMaster(keyDigest=keyDigest(key))
    finally:
        store.close()
    return key


def _masterSettings(config: Config) -> MasterSettings:
    return MasterSettings(
        log=config.first("log"),
        tls=str(config.effectiveTLS),
        crt=config.first("crt"),
        key=config.first("key"),
    )


def hostCount(environ: Mapping[str, str]) -> int:
    """
    How many instance hosts C{NP_INSTANCE_HOSTS} asks for: a positive number, or C{auto}
    (the default: one per CPU core).

    @raise StartupError: anything else.
    """
    raw = environ.get(HOSTS_VARIABLE, "").strip().lower()
    if raw in ("", "auto"):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if raw.isdigit() and 0 < int(raw) <= 256:
        return int(raw)
    raise StartupError(f"{HOSTS_VARIABLE}={raw}: expected a number from 1 to 256 or 'auto'")


def metricsPublic(environ: Mapping[str, str]) -> bool:
    """
    Whether C{NP_METRICS_PUBLIC} opens the metrics to scrapes without the API key.
    """
    return environ.get(METRICS_PUBLIC_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def isolated(environ: Mapping[str, str]) -> bool:
    """
    Whether instances run one process each: C{NP_ISOLATE} set (not empty, not C{0}), or a
    foreign core program in C{NP_CORE_BIN}.
    """
    flag = environ.get(ISOLATE_VARIABLE, "").strip()
    return bool(environ.get(CORE_VARIABLE, "")) or flag not in ("", "0")


class _StoreService(Service):
    """
    The SQLite state: opened before anything listens (a corrupt database without a usable
    backup stops the start here, §11.6), closed last.
    """

    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.store.openNow()
        except StoreError as e:
            raise StartupError(str(e)) from None

    def stopService(self) -> Deferred[None]:
        super().stopService()

        async def close() -> None:
            try:
                await self.store.close()
            except Exception as e:
                log.error("Cannot close the state database: {why}", why=str(e))

        return Deferred.fromCoroutine(close())


class _APIService(Service):
    """
    The API's listening port: bound in C{privilegedStartService} (a port in use stops the
    start, §17 a25), closed first at shutdown.
    """

    name = "api"

    def __init__(self, listen: Any) -> None:
        self._listen = listen
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:
            self.port = self._listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)


class _Timers(Service):
    """
    The periodic work (§11.5, §11.6), started once the state is restored.
    """

    name = "timers"

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._calls: list[LoopingCall] = []

    def every(self, interval: float, function: Any) -> None:
        call = LoopingCall(function)
        call.clock = self._clock
        call.start(interval, now=False).addErrback(lambda f: log.failure("Periodic task failed", f))
        self._calls.append(call)

    def stopService(self) -> None:
        super().stopService()
        for call in self._calls:
            if call.running:
                call.stop()
        self._calls.clear()


class MasterService(MultiService):
    """
    The master: state, instance runner, SSE hub and API on one reactor, as named children:
    C{store}, C{hosts} (unless instances are isolated), C{api} and C{timers}.

    @param config: the parsed C{master://} URL.
    @param reactor: the reactor (TCP, time, processes, threads).
    @param settings: the C{NP_*} tunables, read once; instances get them from here.
    @param environ: the master's environment: C{NP_STATE_DIR}, C{NP_CORS_ORIGINS},
        C{NP_ISOLATE}, C{NP_INSTANCE_HOSTS}, C{NP_CORE_BIN}, and what children inherit.
    @param command: the isolated child program (tests may replace it).
    @param out: where instance output lines go (default: C{sys.stdout}).
    @param fatal: told when the master cannot go on after start-up (its state cannot be
        restored); the entry point exits with status 1.
    @param runner: where instances run (tests may replace it); by default instance hosts,
        or one process each when isolated.
    """

    name = "master"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        settings: Settings,
        environ: Mapping[str, str],
        command: tuple[str, ...] | None = None,
        out: Any = None,
        fatal: Any = None,
        runner: IInstanceRunner | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.out = out
        self.reactor = reactor
        self.settings = settings
        self.environ = dict(environ)
        self._fatal = fatal
        self.directory = stateDirectory(environ)
        self.masterSettings = _masterSettings(config)
        self.store = Store(self.directory, reactor)
        self.hub = EventHub(reactor, lambda: self.registry.snapshot())
        from nodepass import __version__

        self.webhooks = Webhooks(reactor, self.store, treqPoster(reactor), __version__)
        #: A setting that makes the start fail (reported by L{privilegedStartService}).
        self._settingError: str | None = None
        self.hosts: Any = None
        if runner is None:
            runner = self._runner(command)
        self.registry = Registry(
            reactor,
            self.store,
            lambda observer: Supervisor(reactor, observer, self.environ, settings, runner=runner),
            # The SSE hub gets what it always got; the webhooks get the same events.
            HubTee(self.hub, self.webhooks),
            self.masterSettings,
            output=self._writeLine,
            masterChanged=self._masterChanged,
        )
        sampler = CpuSampler()
        try:
            cors = corsPolicyFromEnvironment(environ)
        except ValueError as e:
            self._settingError = str(e)
            cors = CorsPolicy(())
        hosts = self.hosts
        self.api = MasterAPI(
            self.registry,
            self.hub,
            TCPing(reactor, timeout=settings.reportInterval),
            lambda: collect(reactor, sampler),
            MasterInfo(self.masterSettings, config.tunnel.host, reactor),
            config.prefix,
            cors,
            staticDirectory(),
            readFile=lambda path: deferToThreadPool(reactor, reactor.getThreadPool(), _read, path),
            metrics=MasterMetrics(
                self.registry.instanceObjects,
                self.registry.restartCount,
                lambda: self.hub.subscriberCount,
                __version__,
                self.registry.refusals,
            ),
            health=HealthChecks(
                self.store.probe,
                self.registry.instanceObjects,
                hosts.health if hosts is not None else None,
                lambda: self.api.ready,
                lambda: self.registry.closing or self._stopping is not None,
            ),
            metricsPublic=metricsPublic(environ),
            webhooks=self.webhooks,
            dashboardDirectory=DASHBOARD_DIRECTORY,
            secureCookies=bool(config.effectiveTLS),
        )
        _StoreService(self.store).setServiceParent(self)
        if self.hosts is not None:
            self.hosts.setServiceParent(self)
        self.apiService = _APIService(self._listen)
        self.apiService.setServiceParent(self)
        self.timers = _Timers(reactor)
        self.timers.setServiceParent(self)
        self.ready: Deferred[None] = Deferred()
        self._stopping: Deferred[None] | None = None

    @property
    def port(self) -> Any:
        return self.apiService.port

    def _runner(self, command: tuple[str, ...] | None) -> IInstanceRunner:
        core = self.environ.get(CORE_VARIABLE, "")
        if command is not None:
            return ProcessRunner(self.reactor, self.environ, command)
        if core:
            # Another core program (the Go binary, say) gets the URL as its argument.
            return ProcessRunner(
                self.reactor, self.environ, (os.path.abspath(core),), urlArgument=True
            )
        if isolated(self.environ):
            from nodepass.master.childcontrol import ControlledRunner

            return ControlledRunner(self.reactor, self.environ)
        from nodepass.master.hosts import HostPool

        try:
            count = hostCount(self.environ)
        except StartupError as e:
            self._settingError = str(e)
            count = 1
        self.hosts = HostPool(self.reactor, self.environ, self.settings, count)
        runner: IInstanceRunner = self.hosts.runner
        return runner

    def _masterChanged(self, action: str) -> None:
        """
        Tell the webhooks about the master: C{start}, C{shutdown}, C{alias}, C{key}.
        """
        self.webhooks.masterEvent(action, self.registry.masterID, self.registry.masterAlias)

    def _writeLine(self, line: str) -> None:
        out = self.out if self.out is not None else sys.stdout
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # stdout closed: the line still reaches SSE subscribers

    # -- start ---------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        if self._settingError is not None:
            raise StartupError(self._settingError)
        core = self.environ.get(CORE_VARIABLE, "")
        if core and not os.access(core, os.X_OK):
            raise StartupError(f"{CORE_VARIABLE}={core}: not an executable file")
        try:
            super().privilegedStartService()  # the store opens, then the API port binds
        except BaseException:
            self.store.closeNow()
            raise
        log.info(
            "Master started: {address}{prefix}",
            address=self._address(),
            prefix=self.config.apiPrefix,
        )

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._restore)

    def _listen(self) -> Any:
        site = Site(self.api.resource(), timeout=CONNECTION_TIMEOUT, reactor=self.reactor)
        site.requestFactory = LimitedRequest
        site.displayTracebacks = False
        site.noisy = False
        factory: Any = site
        # The same certificate rules and log lines as a tunnel server's (§13).
        if self.config.effectiveTLS:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from nodepass.tls import serverCredentials

            credentials, _ = serverCredentials(self.config, self.reactor, self.settings)
            assert credentials is not None

            factory = TLSMemoryBIOFactory(
                credentials.contextFactory(alpn=[b"http/1.1"]), False, site
            )
        host = self.config.tunnel.host
        try:
            return self.reactor.listenTCP(self.config.tunnel.port, factory, interface=host)
        except CannotListenError as e:
            where = f"{host}:{self.config.tunnel.port}" if host else f":{self.config.tunnel.port}"
            raise StartupError(f"cannot listen on {where}: {e.socketError}") from None

    def _address(self) -> str:
        host = self.config.tunnel.host
        shown = f"[{host}]" if ":" in host else host
        port = self.port.getHost().port if self.port is not None else self.config.tunnel.port
        return f"{shown}:{port}"

    def _restore(self) -> Deferred[None]:
        async def run() -> None:
            result = await self.registry.load(autoStart=False)
            if result.createdKey is not None:
                # Printed once, whatever the log level: it is the operator's only way to
                # learn the key (a lost key is replaced with the reset command).
                log.info("API Key created: {key}", key=result.createdKey, npAlways=True)
            else:
                log.info("API Key loaded from {path}", path=self.store.path)
            log.info(
                "Loaded {count} instances from {path}",
                count=result.instances,
                path=self.store.path,
            )
            hooks = await self.webhooks.load()
            if hooks:
                log.info("Loaded {count} webhooks", count=hooks)
            self.api.ready = True
            self._masterChanged("start")
            self._startPeriodic()
            starting = self.registry.autoStart()
            starting.addErrback(lambda f: log.failure("Auto-start failed", f))

        d = Deferred.fromCoroutine(run())

        def failed(failure: Any) -> None:
            log.failure("Master error: cannot restore the state", failure)
            if self._fatal is not None:
                self._fatal(f"cannot restore the state: {failure.value}")

        d.addCallbacks(self.ready.callback, failed)
        return d

    def _startPeriodic(self) -> None:
        # Positive: the settings refuse 0 and negative values (§17 a5).
        self.timers.every(self.settings.reloadInterval, self._reload)
        self.timers.every(TRAFFIC_FLUSH_INTERVAL, self._flushTraffic)

    async def _backup(self) -> None:
        try:
            path = await self.store.periodicBackup()
        except Exception as e:
            log.error("State backup failed: {why}", why=str(e))
        else:
            log.debug("State backed up to {path}", path=path)

    def _reload(self) -> Deferred[None]:
        async def run() -> None:
            await self._backup()
            await self.registry.retryErrored()

        return Deferred.fromCoroutine(run()).addErrback(
            lambda f: log.failure("Periodic reload failed", f)
        )

    def _flushTraffic(self) -> Deferred[int]:
        def failed(f: Any) -> int:
            log.failure("Cannot save the traffic counters", f)
            return 0

        return self.registry.flushTraffic().addErrback(failed)

    # -- stop ----------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        # The children stop in this order, not MultiService's reverse one: the streams and
        # the port first, then the instances (through their hosts), then the hosts, and the
        # state last, once everything that writes to it is done.
        Service.stopService(self)
        budget = self.settings.shutdownTimeout
        started = self.reactor.seconds()
        self.timers.stopService()
        self.api.ready = False
        if self.ready.called:
            self._masterChanged("shutdown")
        # The streams hear about it first, and get a reactor turn to send it, before a
        # hundred instances start exiting at once.
        self.hub.shutdown()
        await deferLater(self.reactor, 0, lambda: None)
        await self.apiService.stopService()
        if self.ready.called:
            # Keep a part of the budget for reaping killed children, the last save and the
            # database close.
            remaining = budget - (self.reactor.seconds() - started) - SHUTDOWN_RESERVE
            await self.registry.shutdown(timeout=max(0.5, remaining))
            # The last events (the instances' stops, the shutdown) get what is left of the
            # reserve, at most WEBHOOK_DRAIN seconds; the rest are cancelled.
            remaining = budget - (self.reactor.seconds() - started) - SHUTDOWN_RESERVE / 2
            await self.webhooks.whenIdle(max(0.0, min(WEBHOOK_DRAIN, remaining)))
        self.webhooks.stop()
        if self.hosts is not None:
            await self.hosts.stopService()
        await self.getServiceNamed("store").stopService()
        log.info(
            "Master shutdown complete in {seconds:.2f}s",
            seconds=self.reactor.seconds() - started,
        )
