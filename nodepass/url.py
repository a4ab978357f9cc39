"""
Parsing, validation and rendering of NodePass URLs.

A NodePass process is configured by exactly one URL::

    server://KEY@HOST:PORT/TARGET[,TARGET...]?param=value&...
    client://KEY@HOST:PORT/TARGET[,TARGET...]?param=value&...
    master://HOST:PORT/PREFIX?log=...&tls=...&crt=...&key=...

L{parse} turns such a URL into an immutable L{Config}, rejecting anything
malformed with a one-line L{URLError}.  Unlike the Go reference, values that
are present but invalid are errors rather than silently becoming zero.

L{enhance} and L{render} reproduce the master's URL normalisation and its
C{config} string (Go C{url.Values} semantics: sorted keys, Go query
escaping).  L{describe} builds the "started" log line with the tunnel key
masked.  L{parseDuration} and L{formatDuration} speak Go's duration syntax.

This module performs no I/O: host names are validated syntactically only and
never resolved.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote_plus

from attrs import field, frozen

from nodepass.errors import URLError

__all__ = [
    "KNOWN_PARAMS",
    "MASKED_KEY",
    "Config",
    "HostPort",
    "defaultKey",
    "describe",
    "enhance",
    "formatDuration",
    "formatNanoseconds",
    "loopConflict",
    "masterPrefix",
    "parse",
    "parseDuration",
    "parseHostPort",
    "parseNanoseconds",
    "render",
    "unknownParams",
]

#: What L{describe} prints instead of the tunnel key.
MASKED_KEY = "********"

SCHEMES = ("server", "client", "master")

#: Parameters read by the server and client cores (plus our C{lbs}, C{allow}, C{deny}, C{pin}).
KNOWN_PARAMS: tuple[str, ...] = (
    "log",
    "tls",
    "crt",
    "key",
    "dns",
    "sni",
    "min",
    "max",
    "mode",
    "type",
    "dial",
    "read",
    "rate",
    "slot",
    "proxy",
    "block",
    "notcp",
    "noudp",
    "lbs",
    "allow",
    "deny",
    "pin",
)

#: Parameters read by the master.
MASTER_PARAMS: tuple[str, ...] = ("log", "tls", "crt", "key")

LOG_LEVELS = ("none", "debug", "info", "warn", "error", "event")

DEFAULT_DNS_TTL = 300.0
DEFAULT_MIN = 64
DEFAULT_MAX = 1024
DEFAULT_SLOT = 65536
DEFAULT_MASTER_PREFIX = "/api"

# Keys the master adds to `config` when absent (master-api §7).
_RENDER_DEFAULTS: dict[str, tuple[tuple[str, str], ...]] = {
    "client": (
        ("dns", "5m0s"),
        ("sni", "none"),
        ("min", "64"),
        ("mode", "0"),
        ("dial", "auto"),
        ("read", "0s"),
        ("rate", "0"),
        ("slot", "65536"),
        ("proxy", "0"),
        ("block", "0"),
        ("notcp", "0"),
        ("noudp", "0"),
    ),
    "server": (
        ("dns", "5m0s"),
        ("max", "1024"),
        ("mode", "0"),
        ("type", "0"),
        ("dial", "auto"),
        ("read", "0s"),
        ("rate", "0"),
        ("slot", "65536"),
        ("proxy", "0"),
        ("block", "0"),
        ("notcp", "0"),
        ("noudp", "0"),
    ),
}

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_DIGITS_RE = re.compile(r"[0-9]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._\-]+")
_IPV4ISH_RE = re.compile(r"[0-9.]+")
_ZONE_RE = re.compile(r"[A-Za-z0-9._~\-]+")
_PLUGIN_RE = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
_BLOCK_RE = re.compile(r"[0-3]+")
_USERINFO_OK = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:~!$&'()*+,;=%@"
)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_GO_INT_MAX = (1 << 63) - 1


# ---------------------------------------------------------------------------
# Addresses


@frozen
class HostPort:
    """
    A C{host:port} address as written in a URL.

    @ivar host: the host without brackets (an IPv6 zone is kept as
        C{addr%zone}); C{""} means all local addresses.
    @ivar port: the port number, 1 to 65535.
    @ivar text: the address exactly as typed, brackets included.
    """

    host: str
    port: int
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def portText(self) -> str:
        """
        The port exactly as typed (it may carry leading zeros).
        """
        return self.text.rpartition(":")[2]

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """
        The host as an address object when it is an IP literal, else C{None}.
        """
        return _ipOf(self.host)

    @property
    def isIP(self) -> bool:
        """
        C{True} when the host is an IPv4 or IPv6 literal.
        """
        return self.ip is not None

    @property
    def isIPv6(self) -> bool:
        """
        C{True} when the host is an IPv6 literal.
        """
        return isinstance(self.ip, ipaddress.IPv6Address)

    @property
    def isName(self) -> bool:
        """
        C{True} when the host is a name that needs resolving.
        """
        return self.host != "" and self.ip is None

    @property
    def isLoopback(self) -> bool:
        """
        C{True} for loopback IP literals (IPv4-mapped ones included).
        """
        return _isLoopback(self.ip)

    @property
    def isUnspecified(self) -> bool:
        """
        C{True} for C{0.0.0.0} and C{::} (an empty host is I{not} unspecified).
        """
        return _isUnspecified(self.ip)


def _ipOf(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _isLoopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    return ip is not None and _unmapped(ip).is_loopback


def _isUnspecified(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    return ip is not None and _unmapped(ip).is_unspecified


def _hostProblem(host: str) -> str | None:
    """
    Check the host part of an address (brackets already removed by the
    caller when C{bracketed}); return a description of the problem or
    C{None}.
    """
    if host == "":
        return None
    if ":" in host:
        return "an IPv6 address must be written in brackets, e.g. [::1]:10101"
    if _IPV4ISH_RE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    if not _HOSTNAME_RE.fullmatch(host) or not host.isascii():
        return f"{host!r} is not a valid host name (letters, digits, '-', '_' and '.')"
    return None


def _splitHostPort(text: str) -> tuple[str, str] | str:
    """
    Split C{host:port} text.  Returns C{(host, portText)} or a problem
    description.  The host comes back without brackets.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return "missing ']' after the IPv6 address"
        inner, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            if rest == "":
                return "missing port"
            return f"unexpected {rest!r} after ']'"
        address, percent, zone = inner.partition("%")
        if percent:
            if not zone.startswith("25") or not _ZONE_RE.fullmatch(zone[2:]):
                return "an IPv6 zone must be written as %25zone, e.g. [fe80::1%25eth0]"
            zone = zone[2:]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"{address!r} is not a valid IPv6 address"
        host = address + ("%" + zone if percent else "")
        return host, rest[1:]
    host, colon, portText = text.rpartition(":")
    if not colon:
        return "missing port"
    problem = _hostProblem(host)
    if problem is not None:
        return problem
    return host, portText


def _portNumber(portText: str) -> int | None:
    if not _DIGITS_RE.fullmatch(portText) or len(portText) > 10:
        return None
    port = int(portText)
    if not 1 <= port <= 65535:
        return None
    return port


def parseHostPort(text: str) -> HostPort:
    """
    Parse C{host:port} (IPv6 in brackets, empty host allowed, port 1-65535).

    @raise URLError: with C{param} C{"target"} when the text is unusable.
    """
    result = _parseHostPort(text)
    if isinstance(result, HostPort):
        return result
    problem, isPort = result
    if isPort:
        raise URLError(
            "target",
            text,
            "host:port with a port 1-65535",
            f"invalid port {problem!r} in target {text!r}: expected 1-65535",
        )
    raise URLError(
        "target",
        text,
        "host:port",
        f"invalid target address {text!r}: {problem}",
    )


def _parseHostPort(text: str) -> HostPort | tuple[str, bool]:
    """
    Returns a L{HostPort}, or C{(problem, isPortProblem)}; for a port
    problem the first element is the port text.
    """
    split = _splitHostPort(text)
    if isinstance(split, str):
        return split, False
    host, portText = split
    port = _portNumber(portText)
    if port is None:
        return portText, True
    return HostPort(host=host, port=port, text=text)


def loopConflict(tunnelIP: str, tunnelPort: int, targetIP: str, targetPort: int) -> bool:
    """
    The loop guard of the reference (dataplane §1.4), for resolved addresses:
    a target conflicts with the tunnel when the ports are equal and either
    the target IP is a loopback address or the tunnel IP is unspecified.
    Empty IP text means "no IP" (neither loopback nor unspecified).
    """
    if tunnelPort != targetPort:
        return False
    return _isLoopback(_ipOf(targetIP)) or _isUnspecified(_ipOf(tunnelIP))


# ---------------------------------------------------------------------------
# Go durations

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}

_DURATION_ALLOWED = "a Go duration such as 300ms, 5s, 1m30s or 0"
_DURATION_NOT_NEGATIVE = "a Go duration that is not negative, such as 300ms, 5s, 1m30s or 0"


def _goParseDuration(text: str) -> int | None:
    """
    Go's C{time.ParseDuration}: nanoseconds, or C{None} when invalid.
    """
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        return None
    total = 0
    limit = 1 << 63
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            return None
        # leading integer
        i = 0
        value = 0
        while i < len(s) and "0" <= s[i] <= "9":
            if value > limit // 10:
                return None
            value = value * 10 + ord(s[i]) - 48
            if value > limit:
                return None
            i += 1
        pre = i > 0
        s = s[i:]
        fraction = 0
        scale = 1.0
        post = False
        if s and s[0] == ".":
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if fraction > _GO_INT_MAX // 10:
                        overflow = True
                    else:
                        candidate = fraction * 10 + ord(s[i]) - 48
                        if candidate > limit:
                            overflow = True
                        else:
                            fraction = candidate
                            scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            return None
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            return None
        unit = _UNITS.get(s[:i])
        if unit is None:
            return None
        s = s[i:]
        if value > limit // unit:
            return None
        value *= unit
        if fraction > 0:
            value += int(float(fraction) * (float(unit) / scale))
            if value > limit:
                return None
        total += value
        if total > limit:
            return None
    if neg:
        return -total
    if total > _GO_INT_MAX:
        return None
    return total


def parseNanoseconds(text: str) -> int:
    """
    Like L{parseDuration}, but returns whole nanoseconds (exact).

    @raise URLError: with C{param} C{"duration"}.
    """
    nanoseconds = _goParseDuration(text)
    if nanoseconds is None:
        raise URLError("duration", text, _DURATION_ALLOWED)
    if nanoseconds < 0:
        raise URLError("duration", text, _DURATION_NOT_NEGATIVE)
    return nanoseconds


def parseDuration(text: str) -> float:
    """
    Parse Go duration syntax (C{300ms}, C{1.5s}, C{1h2m}, C{0}) into
    seconds.  A bare number other than C{0} and negative durations are
    rejected.

    @raise URLError: with C{param} C{"duration"}.
    """
    return parseNanoseconds(text) / 1e9


def _fmtFrac(value: int, precision: int) -> tuple[str, int]:
    digits = []
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    text = "." + "".join(reversed(digits)) if printed else ""
    return text, value


def formatNanoseconds(nanoseconds: int) -> str:
    """
    Go's C{Duration.String()} for a whole number of nanoseconds.
    """
    negative = nanoseconds < 0
    u = -nanoseconds if negative else nanoseconds
    if u < 1_000_000_000:
        if u == 0:
            return "0s"
        if u < 1_000:
            precision, unit = 0, "ns"
        elif u < 1_000_000:
            precision, unit = 3, "\u00b5s"
        else:
            precision, unit = 6, "ms"
        frac, u = _fmtFrac(u, precision)
        text = f"{u}{frac}{unit}"
    else:
        frac, u = _fmtFrac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            text = f"{u % 60}m{text}"
            u //= 60
            if u > 0:
                text = f"{u}h{text}"
    return "-" + text if negative else text


def formatDuration(seconds: float) -> str:
    """
    Format seconds like Go's C{Duration.String()}: C{0s}, C{300ms},
    C{1.5s}, C{5m0s}, C{1h0m0s}, C{1\u00b5s}.
    """
    return formatNanoseconds(round(seconds * 1e9))


# ---------------------------------------------------------------------------
# Keys


def defaultKey(portText: str) -> str:
    """
    The key used when the URL has no username: 32-bit FNV-1a over the port
    text as typed, as 8 lower-case hex digits.
    """
    h = 0x811C9DC5
    for byte in portText.encode("utf-8", "surrogateescape"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


# ---------------------------------------------------------------------------
# Go url.Values


def _unescape(text: str, plus: bool) -> str | None:
    """
    Percent-decode like Go; C{None} for a malformed escape.  With C{plus},
    C{+} decodes to a space (query mode).  Bytes that are not UTF-8 come
    back as surrogate escapes.
    """
    if "%" not in text and not (plus and "+" in text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x25:
            if i + 2 >= n:
                return None
            if data[i + 1] not in _HEX or data[i + 2] not in _HEX:
                return None
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        elif plus and c == 0x2B:
            out.append(0x20)
            i += 1
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _parseQuery(rawQuery: str) -> tuple[tuple[str, str], ...]:
    """
    Go C{url.ParseQuery}: split on C{&}, drop pairs containing C{;} or a bad
    escape, C{+} is a space, a key without C{=} has the value C{""}.
    """
    pairs: list[tuple[str, str]] = []
    for pair in rawQuery.split("&"):
        if ";" in pair or pair == "":
            continue
        rawKey, _, rawValue = pair.partition("=")
        key = _unescape(rawKey, True)
        value = _unescape(rawValue, True)
        if key is None or value is None:
            continue
        pairs.append((key, value))
    return tuple(pairs)


def _escape(text: str) -> str:
    return quote_plus(text, safe="", encoding="utf-8", errors="surrogateescape")


def _encodeQuery(values: dict[str, list[str]]) -> str:
    """
    Go C{url.Values.Encode}: keys sorted bytewise, every value of a key in
    order, Go query escaping.
    """
    parts = []
    for key in sorted(values, key=lambda k: k.encode("utf-8", "surrogateescape")):
        escapedKey = _escape(key)
        for value in values[key]:
            parts.append(f"{escapedKey}={_escape(value)}")
    return "&".join(parts)


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    return values


def _present(values: dict[str, list[str]], key: str) -> bool:
    return bool(values.get(key, [""])[0])


# ---------------------------------------------------------------------------
# URL splitting


def _redact(text: str) -> str:
    """
    Mask the userinfo of a URL so error messages never carry the key.  To
    be safe with keys typed with an unescaped C{/} or C{?}, everything up to
    the last C{@} of the whole text is masked (an C{@} in a query value is
    masked with it: harmless in an error message).
    """
    start = text.find("://")
    start = 0 if start < 0 else start + 3
    at = text.rfind("@", start)
    if at < 0:
        return text
    return text[:start] + MASKED_KEY + text[at:]


@frozen
class _Parts:
    scheme: str  # lower-cased
    prefix: str  # everything before '?', scheme lower-cased
    afterScheme: str  # prefix without "scheme:"
    rawQuery: str
    fragment: str


def _urlError(text: str, problem: str) -> URLError:
    shown = _redact(text)
    return URLError("url", shown, "scheme://host:port/...", f"invalid URL {shown!r}: {problem}")


def _split(text: str) -> _Parts:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _urlError(text, "contains characters that are not valid text") from None
    for character in text:
        if ord(character) < 0x20 or ord(character) == 0x7F:
            raise _urlError(text, "contains a control character")
    beforeFragment, _, fragment = text.partition("#")
    prefix, _, rawQuery = beforeFragment.partition("?")
    match = _SCHEME_RE.match(prefix)
    if match is None or prefix[match.end() : match.end() + 1] != ":":
        raise _urlError(text, "missing scheme: expected server://, client:// or master://")
    scheme = match.group().lower()
    if scheme not in SCHEMES:
        raise URLError(
            "scheme",
            match.group(),
            "server, client or master",
            f"unknown scheme {match.group()!r}: expected server, client or master",
        )
    afterScheme = prefix[match.end() + 1 :]
    return _Parts(
        scheme=scheme,
        prefix=scheme + ":" + afterScheme,
        afterScheme=afterScheme,
        rawQuery=rawQuery,
        fragment=fragment,
    )


# ---------------------------------------------------------------------------
# Configuration


@frozen
class Config:
    """
    A parsed and validated NodePass URL.  See C{docs/url.md} for every field.
    """

    scheme: str
    key: str = field(repr=False)
    keyGiven: bool
    tunnel: HostPort
    targets: tuple[HostPort, ...]
    prefix: str
    log: str
    tls: int
    crt: str
    keyFile: str
    dnsTTL: float
    dnsServers: tuple[str, ...]
    sni: str
    min: int
    max: int
    mode: int
    type: str
    dial: str
    read: float
    rate: int
    slot: int
    proxy: int
    block: str
    notcp: bool
    noudp: bool
    lbs: int
    raw: str = field(repr=False)
    query: tuple[tuple[str, str], ...] = field(repr=False)
    #: Where users connect (single-end listener, entry side): who may, who may not.
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Client only: the server certificate's fingerprint, C{sha256:AA:BB:...}, or C{""}.
    pin: str = ""

    @property
    def serverName(self) -> str:
        """
        TLS SNI / HTTP Host used by a client: C{sni}, else the tunnel host
        name, else C{"none"} (empty host or IP literal).
        """
        if self.sni:
            return self.sni
        if self.tunnel.host and not self.tunnel.isIP:
            return self.tunnel.host
        return "none"

    @property
    def rateBytes(self) -> int:
        """
        The rate limit in bytes per second (0 = unlimited).
        """
        return self.rate * 125_000

    @property
    def blockSOCKS(self) -> bool:
        return "1" in self.block

    @property
    def blockHTTP(self) -> bool:
        return "2" in self.block

    @property
    def blockTLS(self) -> bool:
        return "3" in self.block

    @property
    def effectiveTLS(self) -> int:
        """
        The TLS mode a server really uses: C{type=1} (QUIC) and C{type=3}
        (HTTP/2) force mode 1 when C{tls} is 0.
        """
        if self.tls == 0 and self.type in ("1", "3"):
            return 1
        return self.tls

    @property
    def apiPrefix(self) -> str:
        """
        Master only: the route prefix every API path lives under
        (C{prefix + "/v1"}, e.g. C{/api/v1}).
        """
        return self.prefix + "/v1"

    def first(self, name: str) -> str:
        """
        Go C{url.Values.Get}: the first value of a query parameter, or C{""}.
        """
        for key, value in self.query:
            if key == name:
                return value
        return ""


def masterPrefix(path: str) -> str:
    """
    The master's route prefix (master-api §2) for a decoded URL path: empty
    or C{/} becomes C{/api}, otherwise every trailing C{/} is stripped; then
    C{/v1} is appended.
    """
    return _masterBase(path) + "/v1"


def _masterBase(path: str) -> str:
    if path in ("", "/"):
        return DEFAULT_MASTER_PREFIX
    return path.rstrip("/")


def _whole(text: str) -> int | None:
    if not _DIGITS_RE.fullmatch(text) or len(text) > 19:
        return None
    value = int(text)
    return value if value <= _GO_INT_MAX else None


class _Params:
    """
    First-value lookups with validation; empty means absent.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._first: dict[str, str] = {}
        for key, value in pairs:
            self._first.setdefault(key, value)

    def get(self, name: str) -> str:
        value = self._first.get(name, "")
        if value:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise URLError(name, value, "valid UTF-8 text") from None
        return value

    def enum(self, name: str, allowed: Sequence[str], default: str) -> str:
        value = self.get(name)
        if not value:
            return default
        if value not in allowed:
            raise URLError(name, value, _oneOf(allowed))
        return value

    def number(self, name: str, default: int, minimum: int, allowed: str) -> int:
        value = self.get(name)
        if not value:
            return default
        number = _whole(value)
        if number is None or number < minimum:
            raise URLError(name, value, allowed)
        return number

    def duration(self, name: str, default: float) -> float:
        value = self.get(name)
        if not value:
            return default
        try:
            return parseDuration(value)
        except URLError as e:
            raise URLError(name, value, e.allowed) from None


def _oneOf(allowed: Sequence[str]) -> str:
    if len(allowed) == 1:
        return allowed[0]
    return "one of " + ", ".join(allowed[:-1]) + " or " + allowed[-1]


def _dnsServer(text: str) -> bool:
    """
    An IPv4 or IPv6 literal, optionally with a port (IPv6 then in brackets).
    """
    if _ipOf(text) is not None and "%" not in text:
        return True
    split = _splitHostPort(text)
    if isinstance(split, str):
        return False
    host, portText = split
    return "%" not in host and _ipOf(host) is not None and _portNumber(portText) is not None


_DNS_SERVERS = "a comma-separated list of DNS server IPs such as 1.1.1.1,8.8.8.8:53"
_DNS_ALLOWED = "a Go duration such as 5m0s, 30s or 0 (cache TTL), or " + _DNS_SERVERS


def _parseDNS(params: _Params) -> tuple[float, tuple[str, ...]]:
    value = params.get("dns")
    if not value:
        return DEFAULT_DNS_TTL, ()
    ttl = _goParseDuration(value)
    if ttl is not None:
        if ttl < 0:
            raise URLError(
                "dns", value, _DURATION_NOT_NEGATIVE + " (cache TTL), or " + _DNS_SERVERS
            )
        return ttl / 1e9, ()
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    if not servers or not all(_dnsServer(server) for server in servers):
        raise URLError("dns", value, _DNS_ALLOWED)
    return DEFAULT_DNS_TTL, servers


def _parseType(params: _Params) -> str:
    value = params.get("type")
    if not value:
        return "0"
    if value in ("0", "1", "2", "3") or (_PLUGIN_RE.fullmatch(value) and value.isascii()):
        return value
    raise URLError(
        "type",
        value,
        "0 (TCP), 1 (QUIC), 2 (WebSocket), 3 (HTTP/2) or a transport plugin name "
        "([a-z][a-z0-9_-]{0,31})",
    )


def _parseDial(params: _Params) -> str:
    value = params.get("dial")
    if not value or value == "auto":
        return "auto"
    if "%" in value or _ipOf(value) is None:
        raise URLError(
            "dial", value, "auto or an IPv4/IPv6 address such as 192.0.2.1 or 2001:db8::1"
        )
    return value


def _parseKey(text: str, userinfo: str) -> str:
    """
    Percent-decode the username of C{userinfo}; the key itself never appears
    in an error.
    """
    shown = _redact(text)
    if not all(character in _USERINFO_OK for character in userinfo):
        raise URLError(
            "key",
            MASKED_KEY,
            "a percent-encoded key",
            f"invalid URL {shown!r}: the key (user name) contains characters that must be "
            "percent-encoded",
        )
    key = _unescape(userinfo.partition(":")[0], False)
    if key is None:
        raise URLError(
            "key",
            MASKED_KEY,
            "a percent-encoded key",
            f"invalid URL {shown!r}: malformed percent-escape in the key (user name)",
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise URLError(
            "key",
            MASKED_KEY,
            "UTF-8 text",
            f"invalid URL {shown!r}: the key (user name) is not UTF-8 after percent-decoding",
        ) from None
    return key


def parse(text: str) -> Config:
    """
    Parse and validate a NodePass URL.

    @raise URLError: for anything that is not acceptable; the message is one
        line, names the offending parameter or part, and never contains the
        tunnel key.
    """
    parts = _split(text)
    shown = _redact(text)
    if not parts.afterScheme.startswith("//"):
        raise _urlError(text, f"expected {parts.scheme}://host:port")
    authority, slash, rawPath = parts.afterScheme[2:].partition("/")
    userinfo, at, hostPort = authority.rpartition("@")
    keyGiven = False
    key = ""
    if at:
        key = _parseKey(text, userinfo)
        keyGiven = key != ""

    parsedTunnel = _parseHostPort(hostPort)
    if not isinstance(parsedTunnel, HostPort):
        problem, isPort = parsedTunnel
        if "@" in rawPath:
            # Probably a key with an unescaped '/': what looks like the
            # host may be part of the key, so do not repeat it.
            raise _urlError(text, "expected host:port after the key (escape '/' in the key as %2F)")
        if isPort:
            raise URLError(
                "port",
                problem,
                "1-65535",
                f"invalid port {problem!r} in {shown!r}: expected 1-65535",
            )
        raise _urlError(text, f"bad host:port {hostPort!r}: {problem}")
    tunnel = parsedTunnel

    path = _unescape(slash + rawPath, False)
    if path is None:
        raise _urlError(text, "malformed percent-escape in the path")

    query = _parseQuery(parts.rawQuery)
    params = _Params(query)

    log = params.enum("log", LOG_LEVELS, "info")
    tls = int(params.enum("tls", ("0", "1", "2"), "0"))
    crt = params.get("crt")
    keyFile = params.get("key")

    targets: tuple[HostPort, ...] = ()
    prefix = ""
    if parts.scheme == "master":
        key = ""
        prefix = _masterBase(path)
        # Only log/tls/crt/key mean something to a master; the rest keep
        # their defaults and are reported by unknownParams().
        params = _Params(())
    else:
        if not keyGiven:
            key = defaultKey(tunnel.portText)
        targets = _parseTargets(text, path, tunnel)

    dnsTTL, dnsServers = _parseDNS(params)
    return Config(
        scheme=parts.scheme,
        key=key,
        keyGiven=keyGiven,
        tunnel=tunnel,
        targets=targets,
        prefix=prefix,
        log=log,
        tls=tls,
        crt=crt,
        keyFile=keyFile,
        dnsTTL=dnsTTL,
        dnsServers=dnsServers,
        sni=_parseSNI(params),
        min=params.number("min", DEFAULT_MIN, 1, "a whole number >= 1"),
        max=params.number("max", DEFAULT_MAX, 1, "a whole number >= 1"),
        mode=int(params.enum("mode", ("0", "1", "2"), "0")),
        type=_parseType(params),
        dial=_parseDial(params),
        read=params.duration("read", 0.0),
        rate=params.number("rate", 0, 0, "a whole number of Mbit/s >= 0 (0 = unlimited)"),
        slot=params.number("slot", DEFAULT_SLOT, 0, "a whole number >= 0 (0 = unlimited)"),
        proxy=int(params.enum("proxy", ("0", "1", "2"), "0")),
        block=_parseBlock(params),
        notcp=params.enum("notcp", ("0", "1"), "0") == "1",
        noudp=params.enum("noudp", ("0", "1"), "0") == "1",
        lbs=int(params.enum("lbs", ("0", "1", "2"), "0")),
        raw=text,
        query=query,
        allow=_parseNetworks(params, "allow"),
        deny=_parseNetworks(params, "deny"),
        pin=_parsePin(params, parts.scheme, tls),
    )


_NETWORKS_ALLOWED = (
    "a comma-separated list of IPv4/IPv6 addresses or CIDR blocks, e.g. 10.0.0.0/8,::1"
)


def _parseNetworks(
    params: _Params, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    from nodepass.access import parseNetworks

    value = params.get(name)
    try:
        return parseNetworks(value)
    except ValueError as error:
        raise URLError(
            name,
            value,
            _NETWORKS_ALLOWED,
            f"invalid value {value!r} for parameter {name!r}: {error}; expected {_NETWORKS_ALLOWED}",
        ) from None


_PIN_RE = re.compile(r"sha256:(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})")
_PIN_ALLOWED = "sha256: and the certificate's SHA-256 in hex (64 digits, ':' between pairs or not)"


def _parsePin(params: _Params, scheme: str, tls: int) -> str:
    value = params.get("pin")
    if not value:
        return ""
    if scheme != "client":
        raise URLError(
            "pin",
            value,
            "a client URL",
            "parameter 'pin' belongs on a client URL (the client checks the server's certificate)",
        )
    if not (value.isascii() and _PIN_RE.fullmatch(value)):
        raise URLError("pin", value, _PIN_ALLOWED)
    if tls == 0:
        raise URLError(
            "pin",
            value,
            "tls=1 or tls=2",
            "parameter 'pin' needs tls=1 or tls=2 on the client URL (it is checked against "
            "the server's TLS certificate)",
        )
    digits = value[len("sha256:") :].replace(":", "").upper()
    return "sha256:" + ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def _parseSNI(params: _Params) -> str:
    value = params.get("sni")
    if any(character.isspace() or not character.isprintable() for character in value):
        raise URLError("sni", value, "a server name without spaces or control characters")
    return value


def _parseBlock(params: _Params) -> str:
    value = params.get("block")
    if not value:
        return "0"
    if not _BLOCK_RE.fullmatch(value):
        raise URLError(
            "block",
            value,
            "digits 0-3 (1 = SOCKS, 2 = HTTP, 3 = TLS, 0 = nothing), e.g. 0, 1 or 123",
        )
    return value


def _parseTargets(text: str, path: str, tunnel: HostPort) -> tuple[HostPort, ...]:
    shown = _redact(text)
    elements = [element.strip() for element in path.removeprefix("/").split(",")]
    elements = [element for element in elements if element]
    if not elements:
        raise URLError(
            "target",
            "",
            "at least one host:port",
            f"no target address in {shown!r}: expected at least one host:port after the "
            "tunnel address, e.g. /127.0.0.1:8080",
        )
    targets = []
    for element in elements:
        target = parseHostPort(element)
        if target.port == tunnel.port and (
            target.isLoopback or target.host.lower() == "localhost" or tunnel.isUnspecified
        ):
            raise URLError(
                "target",
                element,
                "a target that does not loop back to the tunnel port",
                f"tunnel port {tunnel.port} conflicts with target address {element!r}",
            )
        targets.append(target)
    return tuple(targets)


def unknownParams(config: Config) -> tuple[str, ...]:
    """
    The query parameter names this scheme does not use (each once, in order
    of first appearance), so the caller can warn about them.
    """
    known = MASTER_PARAMS if config.scheme == "master" else KNOWN_PARAMS
    seen: list[str] = []
    for key, _ in config.query:
        if key not in known and key not in seen:
            seen.append(key)
    return tuple(seen)


# ---------------------------------------------------------------------------
# Master normalisation and rendering


def _enhanceValues(
    scheme: str,
    values: dict[str, list[str]],
    masterLog: str,
    masterTLS: str,
    masterCrt: str,
    masterKey: str,
) -> None:
    if masterLog and not _present(values, "log"):
        values["log"] = [masterLog]
    if scheme == "server" and masterTLS != "0":
        if not _present(values, "tls"):
            values["tls"] = [masterTLS]
        if masterTLS == "2":
            if masterCrt and not _present(values, "crt"):
                values["crt"] = [masterCrt]
            if masterKey and not _present(values, "key"):
                values["key"] = [masterKey]


def _assemble(parts: _Parts, values: dict[str, list[str]]) -> str:
    result = parts.prefix
    query = _encodeQuery(values)
    if query:
        result += "?" + query
    if parts.fragment:
        result += "#" + parts.fragment
    return result


def enhance(
    url: str,
    *,
    masterLog: str = "",
    masterTLS: str = "0",
    masterCrt: str = "",
    masterKey: str = "",
) -> str:
    """
    The master's normalisation of an instance URL (master-api §7): add the
    master's C{log} (and, for servers, C{tls}/C{crt}/C{key}) when missing,
    then re-encode the query with sorted keys.  The text before C{?} is kept
    verbatim except that the scheme is lower-cased.

    Only the scheme is checked here (it must be C{server} or C{client});
    use L{parse} to validate the rest.
    """
    parts = _split(url)
    if parts.scheme not in ("server", "client"):
        raise URLError(
            "scheme",
            parts.scheme,
            "server or client",
            f"unknown instance scheme {parts.scheme!r}: expected server or client",
        )
    values = _group(_parseQuery(parts.rawQuery))
    _enhanceValues(parts.scheme, values, masterLog, masterTLS, masterCrt, masterKey)
    return _assemble(parts, values)


def render(
    config: Config,
    *,
    masterLog: str = "",
    masterTLS: str = "0",
    masterCrt: str = "",
    masterKey: str = "",
) -> str:
    """
    The master's C{config} string (master-api §7): the URL with the master's
    settings applied as in L{enhance} and every missing default added, keys
    sorted, Go query escaping.  User parameters (such as C{lbs}) pass
    through unchanged.  A master URL is only re-encoded.
    """
    parts = _split(config.raw)
    values = _group(config.query)
    if config.scheme in _RENDER_DEFAULTS:
        _enhanceValues(config.scheme, values, masterLog, masterTLS, masterCrt, masterKey)
        for name, default in _RENDER_DEFAULTS[config.scheme]:
            if not _present(values, name):
                values[name] = [default]
    return _assemble(parts, values)


def describe(config: Config) -> str:
    """
    The URL of the "started" log line (dataplane §11.4), fields in the
    reference's order, durations Go-style, and the key masked.
    """
    if config.scheme == "master":
        return f"master://{config.tunnel}{config.prefix}?log={config.log}&tls={config.tls}"
    dns = ",".join(config.dnsServers) if config.dnsServers else formatDuration(config.dnsTTL)
    targets = ",".join(target.text for target in config.targets)
    fields = [("dns", dns)]
    if config.scheme == "server":
        fields += [("max", str(config.max)), ("mode", str(config.mode)), ("type", config.type)]
    else:
        fields += [("sni", config.serverName), ("min", str(config.min)), ("mode", str(config.mode))]
    fields += [
        ("dial", config.dial),
        ("read", formatDuration(config.read)),
        ("rate", str(config.rate)),
        ("slot", str(config.slot)),
        ("proxy", str(config.proxy)),
        ("block", config.block),
        ("notcp", "1" if config.notcp else "0"),
        ("noudp", "1" if config.noudp else "0"),
    ]
    if config.lbs:
        fields.append(("lbs", str(config.lbs)))
    for name, networks in (("allow", config.allow), ("deny", config.deny)):
        if networks:
            fields.append((name, ",".join(str(network) for network in networks)))
    if config.pin:
        fields.append(("pin", config.pin))
    query = "&".join(f"{name}={value}" for name, value in fields)
    return f"{config.scheme}://{MASKED_KEY}@{config.tunnel}/{targets}?{query}"
