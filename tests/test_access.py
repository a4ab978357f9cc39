"""
L{nodepass.access}: the allow/deny lists, their parser, and how refusals are logged.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger

from nodepass.access import AccessList, RefusalLog, Screen, parseNetworks, peerIP
from nodepass.stats import Counters


def lists(allow: str = "", deny: str = "") -> AccessList:
    return AccessList(parseNetworks(allow), parseNetworks(deny))


# -- the parser ---------------------------------------------------------------------------


def test_bareAddressesAreSingleHosts() -> None:
    assert parseNetworks("192.0.2.1,2001:db8::1") == (
        ipaddress.IPv4Network("192.0.2.1/32"),
        ipaddress.IPv6Network("2001:db8::1/128"),
    )


def test_blocksTrimmingEmptiesAndDuplicates() -> None:
    assert parseNetworks(" 10.0.0.0/8 ,, 10.0.0.0/8,fd00::/8,") == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("fd00::/8"),
    )
    assert parseNetworks("") == ()


def test_hostBitsAreCleared() -> None:
    assert parseNetworks("192.0.2.77/24") == (ipaddress.IPv4Network("192.0.2.0/24"),)


def test_mappedBlocksBecomeIPv4() -> None:
    assert parseNetworks("::ffff:10.1.0.0/112") == (ipaddress.IPv4Network("10.1.0.0/16"),)


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0/33",
        "::/129",
        "256.1.1.1",
        "10.0.0",
        "example.com",
        "[::1]",
        "fe80::1%eth0",
        "10.0.0.0/255.0.0.0",
        "10.0.0.0/ 8",
        "10.0.0.0/-1",
        "010.0.0.1",
        "1.2.3.4/8/8",
        "\u0661.1.1.1",
        "a",
    ],
)
def test_malformedElementsAreRefused(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseNetworks("10.0.0.1," + text)
    assert repr(text.strip()) in str(caught.value)
    assert "\n" not in str(caught.value)


@given(st.text())
def test_anyTextGivesNetworksOrValueError(text: str) -> None:
    try:
        networks = parseNetworks(text)
    except ValueError as error:
        assert "\n" not in str(error)
    else:
        for network in networks:
            assert isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network))


@given(st.lists(st.ip_addresses(), max_size=5))
def test_everyAddressParsesToItsHost(addresses: list[Any]) -> None:
    networks = parseNetworks(",".join(str(address) for address in addresses))
    for address in addresses:
        assert AccessList(networks).check(str(address)) is None


# -- matching -----------------------------------------------------------------------------


def test_noListsAllowEverything() -> None:
    assert not AccessList().active
    assert AccessList().check("203.0.113.9") is None
    assert AccessList().check("not an address") is None


def test_allowListAdmitsOnlyItsNetworks() -> None:
    access = lists(allow="127.0.0.1,::1,10.0.0.0/8")
    assert access.check("127.0.0.1") is None
    assert access.check("10.200.3.4") is None
    assert access.check("::1") is None
    assert access.check("127.0.0.2") == "not in the allow list"
    assert access.check("2001:db8::5") == "not in the allow list"


def test_denyWins() -> None:
    access = lists(allow="10.0.0.0/8", deny="10.9.0.0/16")
    assert access.check("10.1.2.3") is None
    assert access.check("10.9.2.3") == "in deny 10.9.0.0/16"


def test_denyAloneAllowsTheRest() -> None:
    access = lists(deny="127.0.0.2,2001:db8::/32")
    assert access.check("127.0.0.1") is None
    assert access.check("127.0.0.2") == "in deny 127.0.0.2/32"
    assert access.check("2001:db8:1::1") == "in deny 2001:db8::/32"
    assert access.check("::1") is None


def test_mappedPeersMatchAsIPv4() -> None:
    access = lists(allow="127.0.0.1", deny="192.0.2.0/24")
    assert access.check("::ffff:127.0.0.1") is None
    assert access.check("::ffff:192.0.2.1") == "in deny 192.0.2.0/24"
    assert peerIP("::ffff:127.0.0.1") == ipaddress.IPv4Address("127.0.0.1")


def test_zonesAreIgnoredAndNamesRefused() -> None:
    access = lists(allow="fe80::/10")
    assert access.check("fe80::1%eth0") is None
    assert access.check("somewhere") == "not an IP address"


def test_familiesNeverMix() -> None:
    assert lists(allow="0.0.0.0/0").check("::1") == "not in the allow list"
    assert lists(allow="::/0").check("127.0.0.1") == "not in the allow list"


# -- logging refusals ---------------------------------------------------------------------


def test_oneLinePerAddressPerMinuteThenASummary() -> None:
    clock = Clock()
    told: list[int] = []
    refusals = RefusalLog(clock, told.append)
    assert refusals.refused("192.0.2.1")
    assert not refusals.refused("192.0.2.1")
    assert not refusals.refused("192.0.2.1")
    assert refusals.refused("192.0.2.2")
    clock.advance(59)
    assert told == []
    clock.advance(1)
    assert told == [2]
    assert refusals.refused("192.0.2.1")
    clock.advance(120)
    assert told == [2]
    assert not clock.getDelayedCalls()


def test_theTableIsBounded() -> None:
    """
    At most C{capacity} addresses get a line in a minute; more new ones are summed up (so
    spoofed sources can neither grow the table nor flood the log).
    """
    clock = Clock()
    told: list[int] = []
    refusals = RefusalLog(clock, told.append, capacity=3)
    assert [refusals.refused(f"192.0.2.{n}") for n in range(10)] == [True] * 3 + [False] * 7
    assert len(refusals._logged) == 3
    clock.advance(30)
    assert not refusals.refused("192.0.2.0")
    clock.advance(30)
    # The first minute is over: its addresses are forgotten, its held refusals told.
    assert told == [8]
    assert refusals.refused("192.0.2.9")
    assert refusals.refused("192.0.2.0")
    assert len(refusals._logged) == 2


def test_stopCancelsThePendingSummary() -> None:
    clock = Clock()
    told: list[int] = []
    refusals = RefusalLog(clock, told.append)
    refusals.refused("192.0.2.1")
    refusals.refused("192.0.2.1")
    refusals.stop()
    clock.advance(120)
    assert told == [] and not clock.getDelayedCalls()


def test_screenCountsAndLogs() -> None:
    clock = Clock()
    events: list[LogEvent] = []
    counters = Counters()
    screen = Screen(
        lists(deny="192.0.2.0/24,2001:db8::/32"),
        clock,
        counters,
        Logger(namespace="nodepass", observer=cast(ILogObserver, events.append)),
    )
    assert screen.active
    assert screen.allows("127.0.0.1", 5000, "singleTCPLoop")
    assert not screen.allows("192.0.2.5", 5000, "singleTCPLoop")
    assert not screen.allows("192.0.2.5", 5001, "singleUDPLoop")
    assert not screen.allows("2001:db8::7", 5002, "commonTCPLoop")
    assert counters.refusedDeny == 3
    lines = [
        (event["log_format"].format(**event), event["log_level"].name)
        for event in events
        if "log_format" in event
    ]
    assert lines == [
        ("singleTCPLoop: refused 192.0.2.5:5000: in deny 192.0.2.0/24", "warn"),
        ("commonTCPLoop: refused [2001:db8::7]:5002: in deny 2001:db8::/32", "warn"),
    ]
    clock.advance(60)
    assert (
        events[-1]["log_format"].format(**events[-1]) == "access: 1 more refused in the last minute"
    )
    screen.stop()
