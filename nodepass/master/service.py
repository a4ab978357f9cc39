"""
Master mode as a Twisted service: C{nodepass master://HOST:PORT/PREFIX?...},
C{twistd nodepass master} (master spec §1, §11, §13, §14).

L{MasterService} owns the pieces and their order:

  1. at start-up (synchronously, before the reactor runs): open the SQLite state under
     C{NP_STATE_DIR} or the current directory (a corrupt database without a usable backup
     stops here, §11.6) and bind the API port (a port in use stops here, §17 a25); either
     failure exits with status 1 and one line on stderr;
  2. once the reactor runs: restore the state (API key and master ID first: the key is
     printed once, when it is created), open the API, then start the C{restart=true}
     instances in the background;
  3. every C{NP_RELOAD_INTERVAL}: the online backup and the error retry (§11.5); every 60 s:
     the traffic counters that changed (§11.6);
  4. on SIGTERM/SIGINT, within C{NP_SHUTDOWN_TIMEOUT} (§14): stop accepting connections,
     end the SSE streams, save the traffic, stop the children (SIGKILL for the ones still
     running when the time is up), save again, close the database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from nodepass.errors import StartupError
from nodepass.master.app import LimitedRequest, MasterAPI, MasterInfo
from nodepass.master.auth import CorsPolicy, corsPolicyFromEnvironment
from nodepass.master.events import EventHub
from nodepass.master.openapi import staticDirectory
from nodepass.master.registry import MasterSettings, Registry
from nodepass.master.store import Store, StoreError
from nodepass.master.supervisor import Supervisor
from nodepass.master.sysinfo import CpuSampler, collect
from nodepass.master.tcping import TCPing
from nodepass.settings import Settings
from nodepass.url import Config

__all__ = [
    "CORE_VARIABLE",
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

#: Idle time after which an API connection is closed (SSE streams excepted, §17 a6).
CONNECTION_TIMEOUT: Final = 60.0


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


class MasterService(Service):
    """
    The master: state, supervisor, SSE hub and API on one reactor.

    @param config: the parsed C{master://} URL.
    @param reactor: the reactor (TCP, time, processes, threads).
    @param settings: the C{NP_*} tunables.
    @param environ: the environment the children inherit (and C{NP_STATE_DIR},
        C{NP_CORS_ORIGINS}).
    @param command: the child program (tests may replace it).
    @param out: where child output lines go (default: C{sys.stdout}).
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
    ) -> None:
        self.config = config
        self.out = out
        self.reactor = reactor
        self.settings = settings
        self.environ = dict(environ)
        self.directory = stateDirectory(environ)
        self.masterSettings = _masterSettings(config)
        self.store = Store(self.directory, reactor)
        self.hub = EventHub(reactor, lambda: self.registry.snapshot())
        supervisorArgs: dict[str, Any] = {}
        core = self.environ.get(CORE_VARIABLE, "")
        if command is not None:
            supervisorArgs["command"] = command
        elif core:
            # Another core program (the Go binary, say) gets the URL as its argument.
            supervisorArgs.update(command=(os.path.abspath(core),), urlArgument=True)
        self.registry = Registry(
            reactor,
            self.store,
            lambda observer: Supervisor(
                reactor, observer, self.environ, settings, **supervisorArgs
            ),
            self.hub,
            self.masterSettings,
            output=self._writeLine,
        )
        sampler = CpuSampler()
        #: A setting that makes the start fail (reported by L{startService}, one line).
        self._settingError: str | None = None
        try:
            cors = corsPolicyFromEnvironment(environ)
        except ValueError as e:
            self._settingError = str(e)
            cors = CorsPolicy(())
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
        )
        self.port: Any = None
        self.ready: Deferred[None] = Deferred()
        self._periodic: list[LoopingCall] = []
        self._stopping: Deferred[None] | None = None
        #: Non-zero when start-up failed after the reactor started (the CLI exits with it).
        self.exitCode = 0

    def _writeLine(self, line: str) -> None:
        out = self.out if self.out is not None else sys.stdout
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # stdout closed: the line still reaches SSE subscribers

    # -- start ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._settingError is not None:
            raise StartupError(self._settingError)
        core = self.environ.get(CORE_VARIABLE, "")
        if core and not os.access(core, os.X_OK):
            raise StartupError(f"{CORE_VARIABLE}={core}: not an executable file")
        try:
            self.store.openNow()
        except StoreError as e:
            raise StartupError(str(e)) from None
        try:
            self.port = self._listen()
        except BaseException:
            self.store.closeNow()
            raise
        log.info(
            "Master started: {address}{prefix}",
            address=self._address(),
            prefix=self.config.apiPrefix,
        )
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
            self.api.ready = True
            self._startPeriodic()
            starting = self.registry.autoStart()
            starting.addErrback(lambda f: log.failure("Auto-start failed", f))

        d = Deferred.fromCoroutine(run())

        def failed(failure: Any) -> None:
            log.failure("Master error: cannot restore the state", failure)
            sys.stderr.write(f"Error: cannot restore the state: {failure.value} [{os.getpid()}]\n")
            sys.stderr.flush()
            self.exitCode = 1
            self.reactor.stop()

        d.addCallbacks(self.ready.callback, failed)
        return d

    def _startPeriodic(self) -> None:
        # Positive: the settings refuse 0 and negative values (§17 a5).
        self._every(self.settings.reloadInterval, self._reload)
        self._every(TRAFFIC_FLUSH_INTERVAL, self._flushTraffic)

    def _every(self, interval: float, function: Any) -> None:
        call = LoopingCall(function)
        call.clock = self.reactor
        call.start(interval, now=False).addErrback(lambda f: log.failure("Periodic task failed", f))
        self._periodic.append(call)

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
        super().stopService()
        return self._stopping

    async def _stop(self) -> None:
        budget = self.settings.shutdownTimeout
        started = self.reactor.seconds()
        for call in self._periodic:
            if call.running:
                call.stop()
        self._periodic.clear()
        self.api.ready = False
        # The streams hear about it first, and get a reactor turn to send it, before a
        # hundred children start exiting at once.
        self.hub.shutdown()
        await deferLater(self.reactor, 0, lambda: None)
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()
        if self.ready.called:
            # Keep a part of the budget for reaping killed children, the last save and the
            # database close.
            remaining = budget - (self.reactor.seconds() - started) - SHUTDOWN_RESERVE
            await self.registry.shutdown(timeout=max(0.5, remaining))
        try:
            await self.store.close()
        except Exception as e:
            log.error("Cannot close the state database: {why}", why=str(e))
        log.info(
            "Master shutdown complete in {seconds:.2f}s",
            seconds=self.reactor.seconds() - started,
        )
