"""
Property tests for L{nodepass.proxyproto}: for any address pair the version 1 line and the
version 2 header are well formed and carry exactly the addresses and ports given (IPv4-mapped
addresses as IPv4, zones dropped); for any C{remote} a peer names in a signal, building the
header ends in bytes or a L{ValueError} (which the exit side turns into a failed exchange),
never another exception.
"""

from __future__ import annotations

import ipaddress
import re
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodepass.proxyproto import V2_SIGNATURE, header, v1Header, v2Header
from nodepass.tunnel.session import splitRemote

V1_LINE = re.compile(rb"PROXY (TCP4|TCP6) (\S+) (\S+) (\d{1,5}) (\d{1,5})\r\n")

IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
HOSTS = st.one_of(
    IPV4,
    IPV6,
    IPV4.map(lambda ip: "::ffff:" + ip),
    IPV6.map(lambda ip: ip + "%eth0"),
    st.sampled_from(["0.0.0.0", "::", "::1", "255.255.255.255", "fe80::1%1"]),
)
PORTS = st.integers(0, 0xFFFF)


def _normal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@settings(max_examples=200, deadline=None)
@given(HOSTS, PORTS, HOSTS, PORTS)
def test_v1LineCarriesTheAddresses(srcHost: str, srcPort: int, dstHost: str, dstPort: int) -> None:
    line = v1Header((srcHost, srcPort), (dstHost, dstPort))
    assert len(line) <= 107  # the protocol's longest v1 line
    match = V1_LINE.fullmatch(line)
    assert match is not None, line
    family, src, dst, sport, dport = match.groups()
    source, destination = _normal(srcHost), _normal(dstHost)
    assert family == (b"TCP4" if source.version == destination.version == 4 else b"TCP6")
    assert ipaddress.ip_address(src.decode()) == source
    assert ipaddress.ip_address(dst.decode()) == destination
    assert (int(sport), int(dport)) == (srcPort, dstPort)
    assert header(1, (srcHost, srcPort), (dstHost, dstPort)) == line


@settings(max_examples=200, deadline=None)
@given(HOSTS, PORTS, HOSTS, PORTS)
def test_v2HeaderCarriesTheAddresses(
    srcHost: str, srcPort: int, dstHost: str, dstPort: int
) -> None:
    data = v2Header((srcHost, srcPort), (dstHost, dstPort))
    assert data.startswith(V2_SIGNATURE)
    command, family, length = struct.unpack_from("!BBH", data, 12)
    body = data[16:]
    assert command == 0x21 and len(body) == length
    source, destination = _normal(srcHost), _normal(dstHost)
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if source.version == destination.version == 4:
        assert family == 0x11 and length == 12
        src, dst = ipaddress.IPv4Address(body[:4]), ipaddress.IPv4Address(body[4:8])
        ports = struct.unpack("!HH", body[8:12])
    else:
        assert family == 0x21 and length == 36
        src6, dst6 = ipaddress.IPv6Address(body[:16]), ipaddress.IPv6Address(body[16:32])
        src = src6.ipv4_mapped or src6
        dst = dst6.ipv4_mapped or dst6
        ports = struct.unpack("!HH", body[32:36])
    assert (src, dst) == (source, destination)
    assert ports == (srcPort, dstPort)


REMOTES = st.one_of(
    st.text(max_size=30),
    st.tuples(HOSTS, st.integers(-5, 70_000)).map(lambda hp: f"{hp[0]}:{hp[1]}"),
    st.tuples(IPV6, PORTS).map(lambda hp: f"[{hp[0]}]:{hp[1]}"),
    st.sampled_from(
        [
            "",
            ":",
            "host.example:80",
            "[::1]",
            "1.2.3.4:",
            "1.2.3.4:8_0",
            "1.2.3.4:" + "9" * 5000,
            "[1.2.3.4]:5",
            "::1:80",
            "1.2.3.4:٨٠",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(REMOTES, st.sampled_from([1, 2]))
@example("1.2.3.4:" + "9" * 5000, 1)
def test_anyRemoteGivesAHeaderOrAValueError(remote: str, version: int) -> None:
    """
    What the exit side does with a signal's C{remote}: split it, build the header.  Bytes
    that name a source within 0-65535, or a L{ValueError}.
    """
    try:
        data = header(version, splitRemote(remote), ("127.0.0.1", 8080))
    except ValueError:
        return
    if version == 1:
        match = V1_LINE.fullmatch(data)
        assert match is not None and 0 <= int(match.group(4)) <= 0xFFFF
    else:
        assert data.startswith(V2_SIGNATURE)


@settings(max_examples=100, deadline=None)
@given(st.integers(-3, 5).filter(lambda v: v not in (1, 2)))
def test_otherVersionsAreRefused(version: int) -> None:
    try:
        header(version, ("1.2.3.4", 1), ("5.6.7.8", 2))
    except ValueError as error:
        assert "version" in str(error)
    else:
        raise AssertionError("accepted")
