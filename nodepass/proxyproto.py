"""
PROXY protocol headers sent by the exit side to the target (spec §10.4, §15.8, §16.4).

C{proxy=1} produces the version 1 text line exactly as NodePass v1.14.0 (Go) writes it,
including its quirk of labelling a mixed IPv4/IPv6 pair C{TCP6} while keeping the IPv4 address
in dotted form.  C{proxy=2} produces the version 2 binary header (a project extension).

Addresses are given as C{(host, port)} pairs where C{host} must be an IP literal; host names
are rejected with L{ValueError} (resolving them is the caller's job).
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["V2_SIGNATURE", "header", "v1Header", "v2Header"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The fixed 12-byte signature that starts every version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# Version 2, command PROXY.
_V2_VERSION_COMMAND = 0x21
# Address family and transport: TCP over IPv4, TCP over IPv6.
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


def _parseIP(host: str, role: str) -> _IPAddress:
    """
    Parse C{host} as an IP literal and reduce it to the form Go's C{net.IP} would print.

    An IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) becomes the plain IPv4 address, as Go's
    C{IP.To4()} treats it.  An IPv6 zone (C{fe80::1%eth0}) is dropped, as C{IP.String()} does.
    """
    if not isinstance(host, str):
        raise TypeError(f"PROXY header {role} host must be a string, got {host!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"PROXY header {role} address {host!r} is not an IP literal") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        # Rebuilding from the packed form drops any scope/zone identifier.
        return ipaddress.IPv6Address(ip.packed)
    return ip


def _checkPort(port: int, role: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"PROXY header {role} port must be an int, got {port!r}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"PROXY header {role} port {port} is outside 0-65535")
    return port


def _endpoint(address: tuple[str, int], role: str) -> tuple[_IPAddress, int]:
    try:
        host, port = address
    except (TypeError, ValueError):
        raise ValueError(
            f"PROXY header {role} must be a (host, port) pair, got {address!r}"
        ) from None
    return _parseIP(host, role), _checkPort(port, role)


def _asIPv6(ip: _IPAddress) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
    return ip


def v1Header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    Build a PROXY protocol version 1 line the way NodePass v1.14.0 does.

    @param source: the original user address (C{host} must be an IP literal).
    @param destination: the target's address as connected.
    @return: C{b"PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\\r\\n"}; C{TCP4}
        only when both addresses are IPv4 (IPv4-mapped IPv6 counts as IPv4).
    @raise ValueError: if an address is not an IP literal or a port is out of range.
    @raise TypeError: if a host is not a C{str} or a port not an C{int}.
    """
    srcIP, srcPort = _endpoint(source, "source")
    dstIP, dstPort = _endpoint(destination, "destination")
    bothV4 = srcIP.version == 4 and dstIP.version == 4
    family = "TCP4" if bothV4 else "TCP6"
    # str() of a normalised ipaddress object is Go's canonical text: dotted quad for IPv4,
    # RFC 5952 compressed lower-case hex for IPv6.
    line = f"PROXY {family} {srcIP} {dstIP} {srcPort} {dstPort}\r\n"
    return line.encode("ascii")


def v2Header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    Build a PROXY protocol version 2 binary header (command PROXY, TCP).

    Both IPv4 (IPv4-mapped IPv6 counts as IPv4) gives family C{0x11} with 12 address bytes;
    otherwise family C{0x21} with 36 address bytes, an IPv4 member of a mixed pair being
    written as C{::ffff:a.b.c.d}.

    @raise ValueError: if an address is not an IP literal or a port is out of range.
    @raise TypeError: if a host is not a C{str} or a port not an C{int}.
    """
    srcIP, srcPort = _endpoint(source, "source")
    dstIP, dstPort = _endpoint(destination, "destination")
    if srcIP.version == 4 and dstIP.version == 4:
        family = _V2_TCP4
        addresses = srcIP.packed + dstIP.packed
    else:
        family = _V2_TCP6
        addresses = _asIPv6(srcIP).packed + _asIPv6(dstIP).packed
    body = addresses + struct.pack("!HH", srcPort, dstPort)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_VERSION_COMMAND, family, len(body)) + body


def header(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    Build the PROXY header for C{version} (the C{proxy=} value: 1 or 2).

    @raise ValueError: for any other version, or bad addresses.
    """
    if version == 1:
        return v1Header(source, destination)
    if version == 2:
        return v2Header(source, destination)
    raise ValueError(f"unsupported PROXY protocol version {version!r} (expected 1 or 2)")
