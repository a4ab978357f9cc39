"""Prometheus metrics of the master (``GET /metrics``, ``GET P/v1/metrics``).

Instance figures are read from the registry when a scrape comes (nothing is copied or kept
twice): the same values as ``GET P/instances``, in the Prometheus text format.  API request
counts and durations are recorded as requests finish.  Everything lives in one
L{CollectorRegistry} per master, never in prometheus_client's global one, so two masters (or
two tests) in one process do not mix.

Labels never carry the API key; the values that can grow without bound (the request path)
are reduced to the route templates of L{routeOf}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "METRICS_PUBLIC_VARIABLE",
    "MasterMetrics",
    "routeOf",
]

#: The Content-Type of the text exposition format.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: C{NP_METRICS_PUBLIC=1} serves the metrics without the API key.
METRICS_PUBLIC_VARIABLE: Final = "NP_METRICS_PUBLIC"

#: The statuses an instance can be in (§6.2); each gets a series per instance.
STATUSES: Final = ("running", "stopped", "error")

#: Methods counted by name; anything else is counted as C{OTHER}.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Routes whose request lasts as long as the client stays (not timed).
_STREAMS: Final = frozenset({"/events"})


def routeOf(route: str) -> str:
    """
    The route template of a path below C{P/v1} (or a root route): C{/instances/{id}} for
    every instance, C{/docs/static} for every asset, C{other} for a path no route serves.
    """
    if route in ("/instances", "/events", "/info", "/tcping", "/openapi.json", "/docs"):
        return route
    if route in ("/metrics", "/health", "/ready"):
        return route
    if route.startswith("/instances/"):
        return "/instances/{id}"
    if route.startswith("/docs/static/"):
        return "/docs/static"
    return "other"


class _InstanceCollector(Collector):
    """
    The per-instance families, computed at scrape time from the registry's objects.
    """

    def __init__(
        self,
        instances: Callable[[], Iterable[Mapping[str, Any]]],
        restarts: Callable[[str], int],
        subscribers: Callable[[], int],
        version: str,
        refusals: Callable[[str], Mapping[str, int]] | None = None,
    ) -> None:
        self._instances = instances
        self._restarts = restarts
        self._refusals = refusals
        self._subscribers = subscribers
        self._version = version

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "nodepass_build_info", "The running NodePass release.", labels=["version"]
        )
        build.add_metric([self._version], 1)
        yield build
        up = GaugeMetricFamily(
            "nodepass_instance_up",
            "1 while the instance is running, else 0.",
            labels=["id", "alias", "type"],
        )
        status = GaugeMetricFamily(
            "nodepass_instance_status",
            "1 for the instance's current status, 0 for the others.",
            labels=["id", "status"],
        )
        traffic = CounterMetricFamily(
            "nodepass_instance_bytes",
            "Bytes relayed by the instance since it was created or last reset.",
            labels=["id", "proto", "direction"],
        )
        connections = GaugeMetricFamily(
            "nodepass_instance_connections",
            "Open TCP connections and UDP sessions of the instance.",
            labels=["id", "proto"],
        )
        pool = GaugeMetricFamily(
            "nodepass_instance_pool", "Idle pool connections of the instance.", labels=["id"]
        )
        ping = GaugeMetricFamily(
            "nodepass_instance_ping_seconds",
            "The instance's last measured tunnel round trip.",
            labels=["id"],
        )
        restarts = CounterMetricFamily(
            "nodepass_instance_restarts",
            "Times the instance was started again after it had run.",
            labels=["id"],
        )
        refused = CounterMetricFamily(
            "nodepass_refused_connections",
            "User connections (and UDP datagrams) the instance refused, by reason: the slot "
            "limit, the allow/deny lists, block.",
            labels=["id", "reason"],
        )
        for item in self._instances():
            id = str(item["id"])
            current = str(item["status"])
            up.add_metric([id, str(item["alias"]), str(item["type"])], current == "running")
            for name in STATUSES:
                status.add_metric([id, name], current == name)
            for proto in ("tcp", "udp"):
                for direction in ("rx", "tx"):
                    traffic.add_metric([id, proto, direction], item[proto + direction])
                connections.add_metric([id, proto], item[proto + "s"])
            pool.add_metric([id], item["pool"])
            ping.add_metric([id], item["ping"] / 1000.0)
            restarts.add_metric([id], self._restarts(id))
            if self._refusals is not None:
                for reason, count in self._refusals(id).items():
                    refused.add_metric([id, reason], count)
        yield from (up, status, traffic, connections, pool, ping, restarts)
        if self._refusals is not None:
            yield refused
        subscribers = GaugeMetricFamily(
            "nodepass_sse_subscribers", "Open event streams (P/v1/events)."
        )
        subscribers.add_metric([], self._subscribers())
        yield subscribers


class MasterMetrics:
    """
    The master's metrics: instance families read from C{instances} at scrape time, and the
    API's own request counter and duration histogram.

    @param instances: the instance objects to report (the registry's snapshot, without the
        C{********} pseudo-instance).
    @param restarts: how often an instance was started again after it had run.
    @param subscribers: how many event streams are open.
    @param version: the NodePass release for C{nodepass_build_info}.
    @param refusals: an instance's refused users by reason, for
        C{nodepass_refused_connections_total}.
    """

    def __init__(
        self,
        instances: Callable[[], Iterable[Mapping[str, Any]]],
        restarts: Callable[[str], int],
        subscribers: Callable[[], int],
        version: str,
        refusals: Callable[[str], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            _InstanceCollector(instances, restarts, subscribers, version, refusals)
        )
        self.requests = Counter(
            "nodepass_api_requests",
            "API requests answered, by method, route template and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "nodepass_api_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (event streams excluded).",
            ["route"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, code: int, seconds: float | None) -> None:
        """
        Count one answered request; time it unless C{seconds} is L{None} (a stream).
        """
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(method, route, str(code)).inc()
        if seconds is not None and route not in _STREAMS:
            self.durations.labels(route).observe(max(0.0, seconds))

    def render(self) -> bytes:
        """
        Every family in the text exposition format.
        """
        return generate_latest(self.registry)
