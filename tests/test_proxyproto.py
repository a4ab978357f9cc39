"""Tests for L{nodepass.proxyproto}."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import address
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from nodepass.proxyproto import V2_SIGNATURE, header, v1Header, v2Header

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parseV1(line: bytes) -> ProxyInfo:
    assert line.endswith(b"\r\n")
    assert line.count(b"\r\n") == 1
    return V1Parser.parse(line[:-2])


def _addressOf(info: ProxyInfo, which: str) -> address.IPv4Address | address.IPv6Address:
    addr = info.source if which == "source" else info.destination
    assert isinstance(addr, (address.IPv4Address, address.IPv6Address))
    assert addr.type == "TCP"
    return addr


def hostOf(info: ProxyInfo, which: str) -> _IP:
    return ipaddress.ip_address(_addressOf(info, which).host)


def portOf(info: ProxyInfo, which: str) -> int:
    return _addressOf(info, which).port


def goCanonical(ip: _IP) -> _IP:
    """What Go's net.IP would treat the address as: IPv4-mapped IPv6 is IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# --- v1: spec §15.8 vectors -------------------------------------------------------------


def test_v1SpecVectorIPv4() -> None:
    assert (
        v1Header(("203.0.113.7", 51234), ("10.0.0.5", 8080))
        == b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\r\n"
    )


def test_v1SpecVectorIPv6() -> None:
    assert (
        v1Header(("2001:db8::7", 40000), ("2001:db8::5", 443))
        == b"PROXY TCP6 2001:db8::7 2001:db8::5 40000 443\r\n"
    )


def test_v1SpecVectorMixed() -> None:
    assert (
        v1Header(("203.0.113.7", 51234), ("2001:db8::5", 443))
        == b"PROXY TCP6 203.0.113.7 2001:db8::5 51234 443\r\n"
    )


def test_v1MixedOtherWay() -> None:
    assert (
        v1Header(("2001:db8::7", 1), ("10.0.0.5", 2)) == b"PROXY TCP6 2001:db8::7 10.0.0.5 1 2\r\n"
    )


def test_v1SpecVectorsParse() -> None:
    info = parseV1(v1Header(("203.0.113.7", 51234), ("10.0.0.5", 8080)))
    assert info.source is not None and info.destination is not None
    assert hostOf(info, "source") == ipaddress.ip_address("203.0.113.7")
    assert portOf(info, "source") == 51234
    assert hostOf(info, "destination") == ipaddress.ip_address("10.0.0.5")
    assert portOf(info, "destination") == 8080
    info6 = parseV1(v1Header(("2001:db8::7", 40000), ("2001:db8::5", 443)))
    assert hostOf(info6, "source") == ipaddress.ip_address("2001:db8::7")
    assert portOf(info6, "destination") == 443


@pytest.mark.parametrize(
    ("written", "text"),
    [
        # Upper case and leading zeros are normalised.
        ("2001:0DB8:0000:0000:0000:0000:0000:0007", "2001:db8::7"),
        # The first of two equally long zero runs is compressed (RFC 5952, Go).
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        # A single zero group is not compressed.
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        # The longest run wins.
        ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::", "::"),
        # IPv4-compatible (not mapped) stays IPv6, printed in hex as Go does.
        ("::1.2.3.4", "::102:304"),
        # The zone is dropped, as net.IP.String() does.
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_v1CanonicalIPv6(written: str, text: str) -> None:
    line = v1Header((written, 1), ("2001:db8::5", 2))
    assert line == f"PROXY TCP6 {text} 2001:db8::5 1 2\r\n".encode()


def test_v1IPv4MappedIsIPv4() -> None:
    assert (
        v1Header(("::ffff:1.2.3.4", 1000), ("::FFFF:10.0.0.5", 80))
        == b"PROXY TCP4 1.2.3.4 10.0.0.5 1000 80\r\n"
    )
    assert (
        v1Header(("::ffff:1.2.3.4", 1000), ("2001:db8::5", 80))
        == b"PROXY TCP6 1.2.3.4 2001:db8::5 1000 80\r\n"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "example.com",
        "localhost",
        "",
        "1.2.3",
        "010.0.0.1",
        "[::1]",
        "1.2.3.4:80",
        "::g",
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_notIPLiteral(bad: str, version: int) -> None:
    with pytest.raises(ValueError, match="not an IP literal"):
        header(version, (bad, 1), ("10.0.0.5", 2))
    with pytest.raises(ValueError, match="destination address"):
        header(version, ("10.0.0.5", 2), (bad, 1))


@pytest.mark.parametrize("port", [-1, 65536, 1 << 20])
@pytest.mark.parametrize("version", [1, 2])
def test_badPort(port: int, version: int) -> None:
    with pytest.raises(ValueError, match="port"):
        header(version, ("10.0.0.1", port), ("10.0.0.5", 2))


@pytest.mark.parametrize("version", [0, 3, -1])
def test_badVersion(version: int) -> None:
    with pytest.raises(ValueError, match="version"):
        header(version, ("10.0.0.1", 1), ("10.0.0.5", 2))


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ((b"10.0.0.1", 1), ("10.0.0.5", 2)),
        (("10.0.0.1", "1"), ("10.0.0.5", 2)),
        (("10.0.0.1", 1), ("10.0.0.5", True)),
    ],
)
def test_wrongTypes(source: object, destination: object) -> None:
    for version in (1, 2):
        with pytest.raises(TypeError):
            header(version, source, destination)  # type: ignore[arg-type]


def test_notAPair() -> None:
    with pytest.raises(ValueError, match="pair"):
        v1Header(("10.0.0.1",), ("10.0.0.5", 2))  # type: ignore[arg-type]


def test_headerDispatch() -> None:
    src, dst = ("203.0.113.7", 51234), ("10.0.0.5", 8080)
    assert header(1, src, dst) == v1Header(src, dst)
    assert header(2, src, dst) == v2Header(src, dst)


# --- v2 -----------------------------------------------------------------------------------


def test_v2IPv4Exact() -> None:
    got = v2Header(("203.0.113.7", 51234), ("10.0.0.5", 8080))
    assert got == (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x07\x0a\x00\x00\x05\xc8\x22\x1f\x90"
    )
    info = V2Parser.parse(got)
    assert hostOf(info, "source") == ipaddress.ip_address("203.0.113.7")
    assert portOf(info, "source") == 51234
    assert hostOf(info, "destination") == ipaddress.ip_address("10.0.0.5")
    assert portOf(info, "destination") == 8080


def test_v2IPv6() -> None:
    got = v2Header(("2001:db8::7", 40000), ("2001:db8::5", 443))
    assert got[:12] == V2_SIGNATURE
    assert got[12:16] == b"\x21\x21\x00\x24"
    assert len(got) == 16 + 36
    assert got[16:32] == ipaddress.IPv6Address("2001:db8::7").packed
    assert got[32:48] == ipaddress.IPv6Address("2001:db8::5").packed
    assert got[48:] == struct.pack("!HH", 40000, 443)
    info = V2Parser.parse(got)
    assert hostOf(info, "source") == ipaddress.ip_address("2001:db8::7")
    assert portOf(info, "source") == 40000
    assert hostOf(info, "destination") == ipaddress.ip_address("2001:db8::5")
    assert portOf(info, "destination") == 443


def test_v2MixedMapsIPv4() -> None:
    got = v2Header(("203.0.113.7", 51234), ("2001:db8::5", 443))
    assert got[13] == 0x21
    assert got[16:32] == b"\x00" * 10 + b"\xff\xff" + b"\xcb\x00\x71\x07"
    info = V2Parser.parse(got)
    assert hostOf(info, "source") == ipaddress.ip_address("::ffff:203.0.113.7")
    assert hostOf(info, "destination") == ipaddress.ip_address("2001:db8::5")


def test_v2BothMappedIsIPv4() -> None:
    got = v2Header(("::ffff:1.2.3.4", 1), ("::ffff:5.6.7.8", 2))
    assert got == v2Header(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert got[13] == 0x11


# --- round trips --------------------------------------------------------------------------

_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
_ports = st.integers(min_value=0, max_value=65535)


@given(_addresses, _ports, _addresses, _ports)
def test_v1RoundTrip(src: _IP, sport: int, dst: _IP, dport: int) -> None:
    line = v1Header((str(src), sport), (str(dst), dport))
    info = parseV1(line)
    expectedSrc, expectedDst = goCanonical(src), goCanonical(dst)
    family = b"TCP4" if expectedSrc.version == expectedDst.version == 4 else b"TCP6"
    assert line.split(b" ")[1] == family
    assert hostOf(info, "source") == expectedSrc
    assert hostOf(info, "destination") == expectedDst
    assert portOf(info, "source") == sport
    assert portOf(info, "destination") == dport
    # Addresses are written in canonical text form.
    fields = line[:-2].decode().split(" ")
    assert fields[2] == str(expectedSrc)
    assert fields[3] == str(expectedDst)


@given(_addresses, _ports, _addresses, _ports)
def test_v2RoundTrip(src: _IP, sport: int, dst: _IP, dport: int) -> None:
    got = v2Header((str(src), sport), (str(dst), dport))
    assert got[:12] == V2_SIGNATURE
    assert got[12] == 0x21
    (length,) = struct.unpack("!H", got[14:16])
    assert length == len(got) - 16
    info = V2Parser.parse(got)
    expectedSrc, expectedDst = goCanonical(src), goCanonical(dst)
    if expectedSrc.version == expectedDst.version == 4:
        assert got[13] == 0x11
        assert length == 12
    else:
        assert got[13] == 0x21
        assert length == 36

    def asFamily(ip: _IP) -> _IP:
        if got[13] == 0x21 and isinstance(ip, ipaddress.IPv4Address):
            return ipaddress.IPv6Address("::ffff:" + str(ip))
        return ip

    assert hostOf(info, "source") == asFamily(expectedSrc)
    assert hostOf(info, "destination") == asFamily(expectedDst)
    assert portOf(info, "source") == sport
    assert portOf(info, "destination") == dport
