"""
L{nodepass.instancemetrics}: the CHECK_POINT tap and the text a standalone scrape gets.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import Logger

from nodepass.errors import StartupError
from nodepass.instancemetrics import CheckpointTap, metricsText, parseAddress
from nodepass.stats import Counters, logCheckpoint


def test_tapKeepsTheLastCheckpointAndPassesEverythingOn() -> None:
    seen: list[dict[str, Any]] = []
    tap = CheckpointTap(seen.append)
    log = Logger(namespace="nodepass", observer=tap)
    log.info("hello")
    logCheckpoint(log, 1, 12, 3, 4, 5, Counters(tcprx=10))
    assert len(seen) == 2
    assert tap.last is not None and (tap.last.ping, tap.last.tcps, tap.last.tcprx) == (12, 4, 10)


def test_textParses() -> None:
    seen: list[dict[str, Any]] = []
    tap = CheckpointTap(seen.append)
    counters = Counters(tcprx=100, tcptx=200, refusedDeny=3)
    assert b"nodepass_instance_pool" not in metricsText(None, counters, "1.0")
    logCheckpoint(Logger(observer=tap), 1, 1500, 7, 2, 1, counters)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            metricsText(tap.last, counters, "1.0").decode()
        )
        for s in family.samples
    }
    assert (
        samples[("nodepass_instance_bytes_total", (("direction", "rx"), ("proto", "tcp")))] == 100
    )
    assert samples[("nodepass_refused_connections_total", (("reason", "deny"),))] == 3
    assert samples[("nodepass_instance_connections", (("proto", "tcp"),))] == 2
    assert samples[("nodepass_instance_ping_seconds", ())] == 1.5
    assert samples[("nodepass_instance_pool", ())] == 7


def test_address() -> None:
    assert parseAddress("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parseAddress("[::1]:9100") == ("::1", 9100)
    for bad in ("9100", "127.0.0.1:", "127.0.0.1:0", "host:99999", ":80"):
        with pytest.raises(StartupError, match="NP_METRICS_ADDR"):
            parseAddress(bad)
