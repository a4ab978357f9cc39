"""
Tests for L{nodepass.settings}: the C{NP_*} environment tunables (dataplane spec §12).
"""

from __future__ import annotations

import attrs
import pytest

from nodepass.settings import Settings, fromEnvironment

#: Every variable, its attribute and its default.
TABLE = [
    ("NP_SEMAPHORE_LIMIT", "semaphoreLimit", 65536),
    ("NP_TCP_DATA_BUF_SIZE", "tcpBufferSize", 16384),
    ("NP_UDP_DATA_BUF_SIZE", "udpBufferSize", 16384),
    ("NP_HANDSHAKE_TIMEOUT", "handshakeTimeout", 5.0),
    ("NP_TCP_DIAL_TIMEOUT", "tcpDialTimeout", 5.0),
    ("NP_UDP_DIAL_TIMEOUT", "udpDialTimeout", 5.0),
    ("NP_UDP_READ_TIMEOUT", "udpReadTimeout", 30.0),
    ("NP_POOL_GET_TIMEOUT", "poolGetTimeout", 5.0),
    ("NP_MIN_POOL_INTERVAL", "minPoolInterval", 0.1),
    ("NP_MAX_POOL_INTERVAL", "maxPoolInterval", 1.0),
    ("NP_REPORT_INTERVAL", "reportInterval", 5.0),
    ("NP_SERVICE_COOLDOWN", "serviceCooldown", 3.0),
    ("NP_SHUTDOWN_TIMEOUT", "shutdownTimeout", 5.0),
    ("NP_RELOAD_INTERVAL", "reloadInterval", 3600.0),
]

INTEGERS = [row for row in TABLE if isinstance(row[2], int)]
DURATIONS = [row for row in TABLE if isinstance(row[2], float)]


def test_defaults() -> None:
    settings = fromEnvironment({})
    assert settings == Settings()
    for _, name, default in TABLE:
        assert getattr(settings, name) == default


def test_everyFieldHasItsVariable() -> None:
    assert {f.metadata["env"]: f.name for f in attrs.fields(Settings)} == {
        env: name for env, name, _ in TABLE
    }


def test_validValues() -> None:
    settings = fromEnvironment(
        {
            "NP_REPORT_INTERVAL": "2s",
            "NP_TCP_DATA_BUF_SIZE": "4096",
            "NP_UDP_DATA_BUF_SIZE": "65507",
            "NP_SEMAPHORE_LIMIT": "1024",
            "NP_UDP_READ_TIMEOUT": "1m30s",
            "NP_MIN_POOL_INTERVAL": "250ms",
            "NP_MAX_POOL_INTERVAL": "1.5s",
            "NP_RELOAD_INTERVAL": "2h",
        }
    )
    assert settings.reportInterval == 2.0
    assert settings.tcpBufferSize == 4096
    assert settings.udpBufferSize == 65507
    assert settings.semaphoreLimit == 1024
    assert settings.udpReadTimeout == 90.0
    assert settings.minPoolInterval == pytest.approx(0.25)
    assert settings.maxPoolInterval == 1.5
    assert settings.reloadInterval == 7200.0
    # Untouched values keep their defaults.
    assert settings.shutdownTimeout == 5.0
    assert isinstance(settings.tcpBufferSize, int)


@pytest.mark.parametrize(("env", "name", "default"), DURATIONS)
def test_everyDurationIsRead(env: str, name: str, default: float) -> None:
    assert getattr(fromEnvironment({env: "42s"}), name) == 42.0


@pytest.mark.parametrize(("env", "name", "default"), INTEGERS)
def test_everyIntegerIsRead(env: str, name: str, default: int) -> None:
    assert getattr(fromEnvironment({env: "777"}), name) == 777


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "", "4k", "0x10", "1e3", "-0x1"])
@pytest.mark.parametrize(("env", "name", "default"), INTEGERS)
def test_invalidIntegersFallBack(env: str, name: str, default: int, raw: str) -> None:
    assert getattr(fromEnvironment({env: raw}), name) == default


@pytest.mark.parametrize("raw", ["abc", "-1s", "-5m", "5", "", "1x", "s", "1.5.2s"])
@pytest.mark.parametrize(("env", "name", "default"), DURATIONS)
def test_invalidDurationsFallBack(env: str, name: str, default: float, raw: str) -> None:
    assert getattr(fromEnvironment({env: raw}), name) == default


@pytest.mark.parametrize("raw", ["0", "0s", "0ms"])
def test_zeroReportIntervalFallsBack(raw: str) -> None:
    assert fromEnvironment({"NP_REPORT_INTERVAL": raw}).reportInterval == 5.0


@pytest.mark.parametrize("raw", ["0", "0s", "-1h"])
def test_nonPositiveReloadIntervalFallsBack(raw: str) -> None:
    # The reference crashes its periodic tasks on 0 (master spec §17 a5).
    assert fromEnvironment({"NP_RELOAD_INTERVAL": raw}).reloadInterval == 3600.0


@pytest.mark.parametrize("env", ["NP_TCP_DATA_BUF_SIZE", "NP_UDP_DATA_BUF_SIZE"])
def test_zeroBufferSizesFallBack(env: str) -> None:
    settings = fromEnvironment({env: "0"})
    assert (settings.tcpBufferSize, settings.udpBufferSize) == (16384, 16384)


def test_otherZeroValuesAreKept() -> None:
    settings = fromEnvironment(
        {"NP_SERVICE_COOLDOWN": "0", "NP_SEMAPHORE_LIMIT": "0", "NP_SHUTDOWN_TIMEOUT": "0s"}
    )
    assert settings.serviceCooldown == 0.0
    assert settings.semaphoreLimit == 0
    assert settings.shutdownTimeout == 0.0


def test_oneBadValueDoesNotAffectTheOthers() -> None:
    settings = fromEnvironment({"NP_REPORT_INTERVAL": "soon", "NP_TCP_DATA_BUF_SIZE": "8192"})
    assert settings.reportInterval == 5.0
    assert settings.tcpBufferSize == 8192


def test_unrelatedVariablesAreIgnored() -> None:
    assert fromEnvironment({"PATH": "/bin", "NP_UNKNOWN": "1", "np_report_interval": "1s"}) == (
        Settings()
    )


def test_settingsAreFrozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fromEnvironment({}).reportInterval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("raw", ["\u00b2", "\u2460"])
def test_nonDecimalDigitsFallBack(raw: str) -> None:
    assert fromEnvironment({"NP_TCP_DATA_BUF_SIZE": raw}).tcpBufferSize == 16384
