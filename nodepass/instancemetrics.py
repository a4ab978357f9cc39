"""Prometheus metrics of a standalone instance: ``NP_METRICS_ADDR=127.0.0.1:PORT nodepass URL``.

A master exposes every instance's figures at its own ``/metrics``; an instance run on its
own (a systemd unit, a container) can serve the same families itself.  The figures come from
where the master gets them: the instance's CHECK_POINT line (tapped from its log events
before the level filter, so ``log=none`` does not matter) and its traffic counters.  The
endpoint has no key: bind it to a loopback or private address.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, LogEvent
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nodepass.errors import StartupError
from nodepass.stats import Checkpoint, Counters, parseCheckpoint

__all__ = ["METRICS_ADDR_VARIABLE", "CheckpointTap", "InstanceMetrics", "metricsText"]

METRICS_ADDR_VARIABLE: Final = "NP_METRICS_ADDR"

_REASONS: Final = (("slot", "refusedSlot"), ("deny", "refusedDeny"), ("block", "refusedBlock"))


@implementer(ILogObserver)
class CheckpointTap:
    """
    A log observer in front of the instance's own: keeps the latest CHECK_POINT figures and
    passes every event on unchanged.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer
        self.last: Checkpoint | None = None

    def __call__(self, event: LogEvent) -> None:
        if event.get("npEvent"):
            text = event.get("log_format") or ""
            if text.startswith("CHECK_POINT|"):
                self.last = parseCheckpoint(text) or self.last
        self.observer(event)


def metricsText(last: Checkpoint | None, counters: Counters, version: str) -> bytes:
    """
    The Prometheus text exposition of one instance (the master's family names, no C{id}).
    """
    lines = [
        "# HELP nodepass_build_info The running NodePass release.",
        "# TYPE nodepass_build_info gauge",
        f'nodepass_build_info{{version="{version}"}} 1',
        "# HELP nodepass_instance_bytes_total Bytes relayed by the instance since it started.",
        "# TYPE nodepass_instance_bytes_total counter",
    ]
    for proto in ("tcp", "udp"):
        for direction in ("rx", "tx"):
            value = getattr(counters, proto + direction)
            lines.append(
                f'nodepass_instance_bytes_total{{proto="{proto}",direction="{direction}"}} {value}'
            )
    lines += [
        "# HELP nodepass_refused_connections_total Users the instance refused, by reason.",
        "# TYPE nodepass_refused_connections_total counter",
    ]
    for reason, name in _REASONS:
        lines.append(
            f'nodepass_refused_connections_total{{reason="{reason}"}} {getattr(counters, name)}'
        )
    if last is not None:
        gauges = (
            ("nodepass_instance_connections", "Open TCP connections and UDP sessions.", None),
            ("nodepass_instance_pool", "Idle pool connections.", last.pool),
            ("nodepass_instance_ping_seconds", "Last tunnel round trip.", last.ping),
        )
        for name, help, value in gauges:
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
            if value is None:
                lines.append(f'{name}{{proto="tcp"}} {last.tcps or 0}')
                lines.append(f'{name}{{proto="udp"}} {last.udps or 0}')
            elif name.endswith("_seconds"):
                lines.append(f"{name} {value / 1000.0}")
            else:
                lines.append(f"{name} {value}")
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Page(Resource):
    isLeaf = True

    def __init__(self, metrics: InstanceMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"404 page not found\n"
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        request.setHeader(b"Server", b"NodePass")
        return self._metrics.render()


class InstanceMetrics(Service):
    """
    Serves C{GET /metrics} on C{host:port}; binds in L{privilegedStartService} (a failure is
    a L{StartupError}, like the instance's own listeners).
    """

    name = "metrics"

    def __init__(self, reactor: Any, address: str, tap: CheckpointTap, counters: Counters) -> None:
        self.reactor = reactor
        self.address = address
        self.tap = tap
        self.counters = counters
        self.listening: Any = None

    def render(self) -> bytes:
        from nodepass import __version__

        return metricsText(self.tap.last, self.counters, __version__)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        host, port = parseAddress(self.address)
        site = Site(_Page(self), reactor=self.reactor)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        try:
            self.listening = self.reactor.listenTCP(port, site, interface=host)
        except CannotListenError as e:
            raise StartupError(
                f"{METRICS_ADDR_VARIABLE}: cannot listen on {host}:{port}: {e.socketError}"
            ) from None

    def stopService(self) -> Any:
        super().stopService()
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None


def parseAddress(text: str) -> tuple[str, int]:
    """
    C{host:port} (IPv6 in brackets) from C{NP_METRICS_ADDR}.

    @raise StartupError: when it is not one.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise StartupError(f"{METRICS_ADDR_VARIABLE}={text!r}: expected host:port")
    return host, int(port)
