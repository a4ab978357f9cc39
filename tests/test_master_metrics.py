"""
L{nodepass.master.metrics} on its own: the families a scrape gets, from fake sources.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from nodepass.master.metrics import MasterMetrics, routeOf


def instance(**values: Any) -> dict[str, Any]:
    base = {
        "id": "0a1b2c3d",
        "alias": "edge",
        "type": "client",
        "status": "running",
        "tcprx": 1,
        "tcptx": 2,
        "udprx": 3,
        "udptx": 4,
        "tcps": 5,
        "udps": 6,
        "pool": 7,
        "ping": 1500,
    }
    return base | values


def samples(metrics: MasterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_refusals() -> None:
    counts = {"slot": 2, "deny": 40, "block": 1}
    metrics = MasterMetrics(lambda: [instance()], lambda id: 3, lambda: 0, "1.0", lambda id: counts)
    found = samples(metrics)
    for reason, count in counts.items():
        key = ("nodepass_refused_connections_total", (("id", "0a1b2c3d"), ("reason", reason)))
        assert found[key] == count
    assert found[("nodepass_instance_restarts_total", (("id", "0a1b2c3d"),))] == 3
    assert found[("nodepass_instance_ping_seconds", (("id", "0a1b2c3d"),))] == 1.5


def test_withoutRefusalSource() -> None:
    metrics = MasterMetrics(lambda: [instance()], lambda id: 0, lambda: 0, "1.0")
    assert not any(name.startswith("nodepass_refused") for name, _ in samples(metrics))


def test_routeTemplates() -> None:
    assert routeOf("/instances/0a1b2c3d") == "/instances/{id}"
    assert routeOf("/instances/0a1b2c3d/connections") == "/instances/{id}"
    assert routeOf("/docs/static/x.js") == "/docs/static"
    assert routeOf("/nowhere/../etc") == "other"
    assert routeOf("/metrics") == "/metrics"


def test_unknownMethodsAreOneLabel() -> None:
    metrics = MasterMetrics(lambda: [], lambda id: 0, lambda: 0, "1.0")
    metrics.observe("BREW", "other", 405, 0.01)
    metrics.observe("GET", "/info", 200, None)
    found = samples(metrics)
    key = (
        "nodepass_api_requests_total",
        (("code", "405"), ("method", "OTHER"), ("route", "other")),
    )
    assert found[key] == 1
    assert ("nodepass_api_request_duration_seconds_count", (("route", "/info"),)) not in found
