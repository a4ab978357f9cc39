"""
Tests for L{nodepass.url}: URL parsing, validation, rendering and Go durations.
"""

from __future__ import annotations

import pickle
from urllib.parse import quote

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodepass.errors import NodePassError, URLError
from nodepass.url import (
    MASKED_KEY,
    Config,
    HostPort,
    defaultKey,
    describe,
    enhance,
    formatDuration,
    formatNanoseconds,
    loopConflict,
    masterPrefix,
    parse,
    parseDuration,
    parseHostPort,
    parseNanoseconds,
    render,
    unknownParams,
)

CLIENT = "client://127.0.0.1:10101/127.0.0.1:8080"
SERVER = "server://secret@0.0.0.0:10101/127.0.0.1:8080"


def client(query: str) -> Config:
    return parse(f"{CLIENT}?{query}")


def server(query: str) -> Config:
    return parse(f"{SERVER}?{query}")


def assertRejected(query: str, param: str, value: str, allowedPart: str) -> URLError:
    with pytest.raises(URLError) as info:
        client(query)
    error = info.value
    assert error.param == param
    assert error.value == value
    assert allowedPart in error.allowed
    message = str(error)
    assert "\n" not in message
    assert repr(param) in message
    assert repr(value) in message
    assert error.allowed in message
    return error


# ---------------------------------------------------------------------------
# errors


def test_urlErrorMessageFormat() -> None:
    error = URLError("slot", "abc", "a whole number >= 0 (0 = unlimited)")
    assert str(error) == (
        "invalid value 'abc' for parameter 'slot': expected a whole number >= 0 (0 = unlimited)"
    )
    assert isinstance(error, NodePassError)
    assert isinstance(error, ValueError)


def test_urlErrorPickles() -> None:
    error = URLError("port", "x", "1-65535", "custom message")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.param, copy.value, copy.allowed, str(copy)) == (
        "port",
        "x",
        "1-65535",
        "custom message",
    )


def test_urlErrorOneLine() -> None:
    assert "\n" not in str(URLError("a", "b", "c", "line one\nline two"))
    assert "\n" not in str(URLError("a", "b\nc", "d"))


# ---------------------------------------------------------------------------
# scheme, host, port, targets


def test_schemes() -> None:
    assert parse(CLIENT).scheme == "client"
    assert parse(SERVER).scheme == "server"
    assert parse("master://0.0.0.0:9090").scheme == "master"
    assert parse("SERVER://k@h:1/t:2").scheme == "server"


def test_unknownScheme() -> None:
    with pytest.raises(URLError) as info:
        parse("foo://127.0.0.1:1/x:2")
    assert info.value.param == "scheme"
    assert str(info.value) == "unknown scheme 'foo': expected server, client or master"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1:10101",
        "://h:1/x:2",
        "client:h:1/x:2",
        "client:/h:1/x:2",
        " client://h:1/x:2",
        "client://h:1/x:2\n",
        "client://h\x00:1/x:2",
        "client://h:1/x:2\x7f",
    ],
)
def test_structurallyBad(text: str) -> None:
    with pytest.raises(URLError) as info:
        parse(text)
    assert info.value.param in ("url", "scheme")
    assert "\n" not in str(info.value)


def test_badPort() -> None:
    with pytest.raises(URLError) as info:
        parse("client://127.0.0.1:notaport/x")
    assert info.value.param == "port"
    assert info.value.value == "notaport"
    assert str(info.value) == (
        "invalid port 'notaport' in 'client://127.0.0.1:notaport/x': expected 1-65535"
    )


@pytest.mark.parametrize(
    "port", ["0", "65536", "", "-1", "+80", "1e3", "\u0661\u0662", "99999999999999"]
)
def test_badPortValues(port: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"client://127.0.0.1:{port}/x:1")
    assert info.value.param == "port"
    assert info.value.value == port


@pytest.mark.parametrize(
    "hostPort",
    [
        "127.0.0.1",
        "::1:10101",
        "[::1]",
        "[::1:10101",
        "[::1]x:1",
        "[nothex]:1",
        "a b:1",
        "256.1.1.1:1",
        "h%41:1",
        "[fe80::1%eth0]:1",
        "ex\u00e4mple.com:1",
    ],
)
def test_badTunnelHost(hostPort: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"client://{hostPort}/x:1")
    assert info.value.param in ("url", "port")


def test_tunnelHostForms() -> None:
    config = parse("server://k@[::1]:10101/127.0.0.1:80")
    assert config.tunnel == HostPort(host="::1", port=10101, text="[::1]:10101")
    assert str(config.tunnel) == "[::1]:10101"
    assert config.tunnel.isIP and config.tunnel.isIPv6 and config.tunnel.isLoopback
    empty = parse("server://k@:10101/127.0.0.1:80").tunnel
    assert (empty.host, empty.port, empty.isIP, empty.isUnspecified, empty.isName) == (
        "",
        10101,
        False,
        False,
        False,
    )
    name = parse("client://Tunnel.Example-1.com:443/127.0.0.1:80").tunnel
    assert name.host == "Tunnel.Example-1.com" and name.isName and not name.isIP
    zoned = parse("client://[fe80::1%25eth0]:443/127.0.0.1:80").tunnel
    assert zoned.host == "fe80::1%eth0" and zoned.text == "[fe80::1%25eth0]:443"
    assert parse("client://0.0.0.0:1/127.0.0.1:80").tunnel.isUnspecified
    assert parse("client://[::]:1/127.0.0.1:80").tunnel.isUnspecified


def test_portTextKeptForDefaultKey() -> None:
    config = parse("server://h:010101/t:1")
    assert config.tunnel.port == 10101
    assert config.tunnel.portText == "010101"
    assert config.key == defaultKey("010101")


def test_targets() -> None:
    config = parse("client://h:1/ a:1 ,,[::1]:2,10.0.0.1:3,")
    assert [t.text for t in config.targets] == ["a:1", "[::1]:2", "10.0.0.1:3"]
    assert [t.host for t in config.targets] == ["a", "::1", "10.0.0.1"]
    assert [t.port for t in config.targets] == [1, 2, 3]
    assert parse("client://h:1/:8080").targets[0].host == ""
    # path is percent-decoded
    assert [t.text for t in parse("client://h:1/a:1%2Cb:2").targets] == ["a:1", "b:2"]


@pytest.mark.parametrize("path", ["", "/", "/,", "/ , "])
def test_noTargets(path: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"client://h:1{path}")
    assert info.value.param == "target"


@pytest.mark.parametrize(
    "target", ["a", "a:0", "a:x", "a:70000", "::1:80", "a:1/b:2", "[::1]", "x y:1"]
)
def test_badTargets(target: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"client://h:1/{target}")
    assert info.value.param == "target"
    assert "\n" not in str(info.value)


def test_badPathEscape() -> None:
    with pytest.raises(URLError) as info:
        parse("client://h:1/a:1%zz")
    assert info.value.param == "url"


def test_masterHasNoTargets() -> None:
    config = parse("master://0.0.0.0:9090/admin?log=debug&tls=2&crt=/c.pem&key=/k.pem")
    assert config.targets == ()
    assert config.prefix == "/admin"
    assert config.apiPrefix == "/admin/v1"
    assert (config.log, config.tls, config.crt, config.keyFile) == ("debug", 2, "/c.pem", "/k.pem")
    assert config.key == ""


@pytest.mark.parametrize(
    "url, base, prefix",
    [
        ("master://0.0.0.0:9090", "/api", "/api/v1"),
        ("master://0.0.0.0:9090/", "/api", "/api/v1"),
        ("master://0.0.0.0:9090/admin", "/admin", "/admin/v1"),
        ("master://0.0.0.0:9090/admin/", "/admin", "/admin/v1"),
        ("master://0.0.0.0:9090/a/b/", "/a/b", "/a/b/v1"),
        ("master://0.0.0.0:9090/api/v1", "/api/v1", "/api/v1/v1"),
        ("master://0.0.0.0:9090//", "", "/v1"),
        ("master://0.0.0.0:9090/my%20api", "/my api", "/my api/v1"),
    ],
)
def test_masterPrefix(url: str, base: str, prefix: str) -> None:
    config = parse(url)
    assert config.prefix == base
    assert config.apiPrefix == prefix


def test_masterPrefixFunction() -> None:
    assert masterPrefix("") == "/api/v1"
    assert masterPrefix("/") == "/api/v1"
    assert masterPrefix("/x///") == "/x/v1"
    assert masterPrefix("//") == "/v1"


def test_masterIgnoresDataPlaneParams() -> None:
    config = parse("master://:9090?slot=abc&min=0&log=warn")
    assert config.slot == 65536
    assert config.log == "warn"
    assert unknownParams(config) == ("slot", "min")


def test_masterBadTLS() -> None:
    with pytest.raises(URLError) as info:
        parse("master://:9090?tls=3")
    assert info.value.param == "tls"


# ---------------------------------------------------------------------------
# loop guard


@pytest.mark.parametrize(
    "url",
    [
        "server://k@0.0.0.0:10101/10.0.0.1:10101",
        "server://k@[::]:10101/10.0.0.1:10101",
        "server://k@10.0.0.2:10101/127.0.0.1:10101",
        "server://k@10.0.0.2:10101/127.9.9.9:10101",
        "server://k@10.0.0.2:10101/[::1]:10101",
        "server://k@10.0.0.2:10101/[::ffff:127.0.0.1]:10101",
        "client://h:10101/localhost:10101",
        "client://h:10101/127.0.0.1:80,127.0.0.1:10101",
    ],
)
def test_loopGuard(url: str) -> None:
    with pytest.raises(URLError) as info:
        parse(url)
    assert info.value.param == "target"
    assert "conflicts with target address" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "server://k@:10101/127.0.0.1:10102",
        "server://k@:10101/10.0.0.1:10101",  # empty host is not "unspecified"
        "server://k@10.0.0.2:10101/10.0.0.1:10101",
        "server://k@10.0.0.2:10101/:10101",  # empty target host is not loopback
        "server://k@0.0.0.0:10101/127.0.0.1:10102",
        "client://h:10101/example.com:10101",
    ],
)
def test_loopGuardAllows(url: str) -> None:
    parse(url)


def test_loopConflict() -> None:
    assert loopConflict("10.0.0.1", 80, "127.0.0.1", 80)
    assert loopConflict("0.0.0.0", 80, "10.0.0.2", 80)
    assert loopConflict("::", 80, "10.0.0.2", 80)
    assert not loopConflict("0.0.0.0", 80, "127.0.0.1", 81)
    assert not loopConflict("", 80, "10.0.0.2", 80)
    assert not loopConflict("10.0.0.1", 80, "", 80)


# ---------------------------------------------------------------------------
# key


@pytest.mark.parametrize(
    "port, key", [("10101", "e68be2b4"), ("443", "2339c1b2"), ("8080", "40c0f1e5")]
)
def test_defaultKeyVectors(port: str, key: str) -> None:
    assert defaultKey(port) == key
    config = parse(f"client://127.0.0.1:{port}/127.0.0.1:1")
    assert config.key == key
    assert not config.keyGiven


def test_keyDecoding() -> None:
    config = parse("server://s%40cr%2Bet+x:password@h:1/t:2")
    assert config.key == "s@cr+et+x"
    assert config.keyGiven
    assert parse("server://a@b@h:1/t:2").key == "a@b"
    # empty user name (even with a password) means the default key
    config = parse("server://:pw@h:10101/t:2")
    assert config.key == "e68be2b4"
    assert not config.keyGiven
    assert parse("server://@h:10101/t:2").key == "e68be2b4"


@pytest.mark.parametrize(
    "userinfo", ["sec%zzret", "sec%2", "sec ret", 'sec"ret', "se%ffcret", "s\u00e9cret"]
)
def test_badKey(userinfo: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"server://{userinfo}@h:1/t:2")
    assert info.value.param == "key"
    assert "sec" not in str(info.value)
    assert "sec" not in info.value.value
    assert MASKED_KEY in str(info.value)


SECRET = "Sup3rSecretKey"


@pytest.mark.parametrize(
    "rest",
    [
        "@h:x/t:1",
        "@h:1",
        "@h:1/t:x",
        "@h:1/t:1?slot=x",
        "@h:1/t:1%zz",
        "@[::1:1/t:1",
        "@0.0.0.0:1/t:1",
        "@h:1/t:1?dial=" + SECRET,
        "/x@h:x/t:1",
        "/x@h:1",
    ],
)
def test_keyNeverInErrors(rest: str) -> None:
    with pytest.raises(URLError) as info:
        parse(f"server://{SECRET}{rest}")
    if "dial=" in rest:
        return  # the user put the key text into another parameter
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in info.value.value


def test_keyNotInReprOrDescribe() -> None:
    config = parse(f"server://{SECRET}@h:1/t:2?sni=x")
    assert config.key == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert SECRET not in describe(config)
    assert describe(config).startswith(f"server://{MASKED_KEY}@h:1/t:2?")
    default = parse("client://127.0.0.1:10101/127.0.0.1:8080")
    assert "e68be2b4" not in repr(default)
    assert "e68be2b4" not in describe(default)


def test_masterKey() -> None:
    config = parse("master://user@:9090")
    assert config.key == ""


# ---------------------------------------------------------------------------
# parameters


def test_allDefaults() -> None:
    config = parse(CLIENT)
    assert config.log == "info"
    assert config.tls == 0
    assert config.crt == ""
    assert config.keyFile == ""
    assert config.dnsTTL == 300.0
    assert config.dnsServers == ()
    assert config.sni == ""
    assert config.serverName == "none"
    assert config.min == 64
    assert config.max == 1024
    assert config.mode == 0
    assert config.type == "0"
    assert config.dial == "auto"
    assert config.read == 0.0
    assert config.rate == 0
    assert config.rateBytes == 0
    assert config.slot == 65536
    assert config.proxy == 0
    assert config.block == "0"
    assert not (config.blockSOCKS or config.blockHTTP or config.blockTLS)
    assert config.notcp is False
    assert config.noudp is False
    assert config.lbs == 0
    assert config.prefix == ""
    assert config.raw == CLIENT
    assert config.query == ()
    assert unknownParams(config) == ()


EMPTY_PARAMS = [
    "log", "tls", "crt", "key", "dns", "sni", "min", "max", "mode", "type", "dial",
    "read", "rate", "slot", "proxy", "block", "notcp", "noudp", "lbs",
]  # fmt: skip


@pytest.mark.parametrize("name", EMPTY_PARAMS)
def test_emptyValueIsAbsent(name: str) -> None:
    base = parse(CLIENT)
    for query in (f"{name}=", name, f"{name}=&{name}=bogus!"):
        config = client(query)
        assert attrs.evolve(config, raw=base.raw, query=()) == base, query


def test_firstValueWins() -> None:
    config = client("slot=10&slot=bogus&log=debug&log=none")
    assert config.slot == 10
    assert config.log == "debug"
    assert config.first("slot") == "10"
    assert config.first("missing") == ""


def test_keysAreCaseSensitive() -> None:
    config = client("SLOT=abc&Log=bogus")
    assert config.slot == 65536
    assert unknownParams(config) == ("SLOT", "Log")


@pytest.mark.parametrize("value", ["none", "debug", "info", "warn", "error", "event"])
def test_logGood(value: str) -> None:
    assert client(f"log={value}").log == value


@pytest.mark.parametrize("value", ["INFO", "verbose", "warning", "0", " info"])
def test_logBad(value: str) -> None:
    assertRejected(f"log={quote(value)}", "log", value, "none, debug, info, warn, error or event")


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), ("2", 2)])
def test_tlsGood(value: str, expected: int) -> None:
    assert server(f"tls={value}").tls == expected
    assert client(f"tls={value}").tls == expected


@pytest.mark.parametrize("value", ["3", "-1", "yes", "01", "true"])
def test_tlsBad(value: str) -> None:
    assertRejected(f"tls={value}", "tls", value, "0, 1 or 2")


def test_effectiveTLS() -> None:
    assert server("type=1").effectiveTLS == 1
    assert server("type=3").effectiveTLS == 1
    assert server("type=2").effectiveTLS == 0
    assert server("type=1&tls=2").effectiveTLS == 2
    assert server("tls=2").effectiveTLS == 2


def test_crtAndKeyFiles() -> None:
    config = server("crt=%2Fetc%2Fnp%2Fc.pem&key=/etc/np/k.pem")
    assert config.crt == "/etc/np/c.pem"
    assert config.keyFile == "/etc/np/k.pem"
    assert config.key == "secret"


@pytest.mark.parametrize(
    "value, ttl",
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
    ],
)
def test_dnsTTL(value: str, ttl: float) -> None:
    config = client(f"dns={value}")
    assert config.dnsTTL == pytest.approx(ttl)
    assert config.dnsServers == ()


@pytest.mark.parametrize(
    "value, servers",
    [
        ("1.1.1.1", ("1.1.1.1",)),
        ("1.1.1.1,8.8.8.8", ("1.1.1.1", "8.8.8.8")),
        ("1.1.1.1:53, 8.8.8.8:5353", ("1.1.1.1:53", "8.8.8.8:5353")),
        ("2606:4700::1111", ("2606:4700::1111",)),
        ("[2606:4700::1111]:53,9.9.9.9", ("[2606:4700::1111]:53", "9.9.9.9")),
        ("1.1.1.1,", ("1.1.1.1",)),
    ],
)
def test_dnsServers(value: str, servers: tuple[str, ...]) -> None:
    config = client(f"dns={quote(value)}")
    assert config.dnsServers == servers
    assert config.dnsTTL == 300.0


@pytest.mark.parametrize(
    "value",
    [
        "30",
        "-5s",
        "5 m",
        "abc",
        "dns.google",
        "1.1.1.1:0",
        "1.1.1.1:x",
        ",",
        "1.1.1",
        "[::1]",
        "fe80::1%eth0",
        "5x",
    ],
)
def test_dnsBad(value: str) -> None:
    assertRejected(f"dns={quote(value)}", "dns", value, "DNS server")


def test_sni() -> None:
    assert client("sni=example.com").sni == "example.com"
    assert client("sni=example.com").serverName == "example.com"
    assert parse("client://tunnel.example:1/t:2").serverName == "tunnel.example"
    assert parse("client://tunnel.example:1/t:2?sni=other").serverName == "other"
    assert parse("client://[::1]:1/t:2").serverName == "none"
    assert parse("client://:1/t:2").serverName == "none"
    assert parse("client://10.1.2.3:1/t:2").serverName == "none"


@pytest.mark.parametrize("value", ["a b", "a\nb", "a\tb", "x\x00", "\u200b"])
def test_sniBad(value: str) -> None:
    assertRejected(f"sni={quote(value)}", "sni", value, "without spaces or control characters")


@pytest.mark.parametrize("name, default", [("min", 64), ("max", 1024)])
def test_minMax(name: str, default: int) -> None:
    assert getattr(client(""), name) == default
    assert getattr(client(f"{name}=1"), name) == 1
    assert getattr(client(f"{name}=0128"), name) == 128
    for bad in ["0", "-1", "+5", "1.5", "abc", "1e3", " 5", "99999999999999999999"]:
        assertRejected(f"{name}={quote(bad)}", name, bad, "whole number >= 1")


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_modeGood(value: str) -> None:
    assert client(f"mode={value}").mode == int(value)


@pytest.mark.parametrize("value", ["3", "auto", "-1", "00"])
def test_modeBad(value: str) -> None:
    assertRejected(f"mode={value}", "mode", value, "0, 1 or 2")


@pytest.mark.parametrize("value", ["0", "1", "2", "3", "kcp", "my-transport_2", "a" * 32])
def test_typeGood(value: str) -> None:
    assert server(f"type={value}").type == value


@pytest.mark.parametrize("value", ["4", "-1", "01", "KCP", "1kcp", "a" * 33, "k.cp", "k cp"])
def test_typeBad(value: str) -> None:
    assertRejected(f"type={quote(value)}", "type", value, "plugin name")


@pytest.mark.parametrize("value", ["auto", "192.0.2.1", "2001:db8::1", "::"])
def test_dialGood(value: str) -> None:
    assert client(f"dial={quote(value)}").dial == value


@pytest.mark.parametrize(
    "value", ["AUTO", "1.2.3", "01.2.3.4", "[::1]", "fe80::1%eth0", "host.example", "1.2.3.4:5"]
)
def test_dialBad(value: str) -> None:
    assertRejected(f"dial={quote(value)}", "dial", value, "auto or an IPv4/IPv6 address")


@pytest.mark.parametrize(
    "value, seconds", [("0", 0.0), ("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25)]
)
def test_readGood(value: str, seconds: float) -> None:
    assert client(f"read={value}").read == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["30", "-1s", "1x", "s", "1.s5"])
def test_readBad(value: str) -> None:
    assertRejected(f"read={value}", "read", value, "Go duration")


def test_rate() -> None:
    assert client("rate=0").rate == 0
    config = client("rate=100")
    assert config.rate == 100
    assert config.rateBytes == 12_500_000
    for bad in ["-1", "1.5", "fast", "+3"]:
        assertRejected(f"rate={quote(bad)}", "rate", bad, "whole number of Mbit/s >= 0")


def test_slot() -> None:
    assert client("slot=0").slot == 0
    assert client("slot=10").slot == 10
    for bad in ["-1", "1.5", "abc", "unlimited"]:
        assertRejected(f"slot={bad}", "slot", bad, "a whole number >= 0 (0 = unlimited)")


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_proxyGood(value: str) -> None:
    assert client(f"proxy={value}").proxy == int(value)


@pytest.mark.parametrize("value", ["3", "v1", "-1", "true"])
def test_proxyBad(value: str) -> None:
    assertRejected(f"proxy={value}", "proxy", value, "0, 1 or 2")


def test_block() -> None:
    config = client("block=123")
    assert (config.block, config.blockSOCKS, config.blockHTTP, config.blockTLS) == (
        "123",
        True,
        True,
        True,
    )
    config = client("block=2")
    assert (config.blockSOCKS, config.blockHTTP, config.blockTLS) == (False, True, False)
    config = client("block=03")
    assert (config.blockSOCKS, config.blockHTTP, config.blockTLS) == (False, False, True)
    assert client("block=0").block == "0"
    for bad in ["4", "socks", "1,2", "-1", "1 2"]:
        assertRejected(f"block={quote(bad)}", "block", bad, "digits 0-3")


@pytest.mark.parametrize("name", ["notcp", "noudp"])
def test_noTcpUdp(name: str) -> None:
    assert getattr(client(f"{name}=1"), name) is True
    assert getattr(client(f"{name}=0"), name) is False
    for bad in ["2", "true", "yes", "01"]:
        assertRejected(f"{name}={bad}", name, bad, "0 or 1")


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_lbsGood(value: str) -> None:
    assert client(f"lbs={value}").lbs == int(value)


@pytest.mark.parametrize("value", ["3", "rr", "-1"])
def test_lbsBad(value: str) -> None:
    assertRejected(f"lbs={value}", "lbs", value, "0, 1 or 2")


def test_unknownParams() -> None:
    config = client("foo=1&slot=5&bar&foo=2&quic=1")
    assert unknownParams(config) == ("foo", "bar", "quic")


def test_queryPairs() -> None:
    config = client("a=1&b=x+y&a=2&c&bad;=1&d=%zz&e=%41")
    assert config.query == (("a", "1"), ("b", "x y"), ("a", "2"), ("c", ""), ("e", "A"))


def test_nonUTF8ParamValue() -> None:
    assertRejected("sni=%ff", "sni", "\udcff", "UTF-8")


# ---------------------------------------------------------------------------
# describe()


def test_describeClient() -> None:
    assert describe(parse(CLIENT)) == (
        "client://********@127.0.0.1:10101/127.0.0.1:8080?dns=5m0s&sni=none&min=64&mode=0&dial=auto"
        "&read=0s&rate=0&slot=65536&proxy=0&block=0&notcp=0&noudp=0"
    )


def test_describeServer() -> None:
    config = parse(
        "server://k@[::1]:10101/a:1,b:2?dns=0&max=8&mode=1&type=2&dial=::1&read=1h&rate=5&slot=0"
        "&proxy=2&block=13&notcp=1&noudp=0&lbs=2&log=debug"
    )
    assert describe(config) == (
        "server://********@[::1]:10101/a:1,b:2?dns=0s&max=8&mode=1&type=2&dial=::1&read=1h0m0s"
        "&rate=5&slot=0&proxy=2&block=13&notcp=1&noudp=0&lbs=2"
    )


def test_describeDnsServers() -> None:
    config = client("dns=1.1.1.1,8.8.8.8&sni=sni.example&lbs=1")
    assert "?dns=1.1.1.1,8.8.8.8&sni=sni.example&" in describe(config)
    assert describe(config).endswith("&noudp=0&lbs=1")


def test_describeMaster() -> None:
    assert describe(parse("master://:9090/admin/?tls=1")) == "master://:9090/admin?log=info&tls=1"


# ---------------------------------------------------------------------------
# enhance() / render(): master-api §7


def test_specServerExample() -> None:
    url = enhance("server://0.0.0.0:10101/127.0.0.1:8080", masterLog="info", masterTLS="1")
    assert url == "server://0.0.0.0:10101/127.0.0.1:8080?log=info&tls=1"
    assert render(parse(url), masterLog="info", masterTLS="1") == (
        "server://0.0.0.0:10101/127.0.0.1:8080?block=0&dial=auto&dns=5m0s&log=info&max=1024&mode=0"
        "&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&tls=1&type=0"
    )


def test_specClientExample() -> None:
    url = enhance("client://srv:10101/127.0.0.1:8080", masterLog="info", masterTLS="1")
    assert url == "client://srv:10101/127.0.0.1:8080?log=info"
    assert render(parse(url), masterLog="info", masterTLS="1") == (
        "client://srv:10101/127.0.0.1:8080?block=0&dial=auto&dns=5m0s&log=info&min=64&mode=0"
        "&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none"
    )


def test_notcpSortsBeforeNoudp() -> None:
    rendered = render(parse("client://h:1/t:2?noudp=1&notcp=1"))
    assert rendered.index("notcp=1") < rendered.index("noudp=1")


def test_tls2CopiesCrtAndKey() -> None:
    url = enhance(
        "server://k@h:1/t:2",
        masterLog="",
        masterTLS="2",
        masterCrt="/etc/np/c.pem",
        masterKey="/etc/np/k.pem",
    )
    assert url == "server://k@h:1/t:2?crt=%2Fetc%2Fnp%2Fc.pem&key=%2Fetc%2Fnp%2Fk.pem&tls=2"
    # user values win; clients never get tls/crt/key
    assert enhance("server://h:1/t:2?crt=/mine", masterTLS="2", masterCrt="/c", masterKey="") == (
        "server://h:1/t:2?crt=%2Fmine&tls=2"
    )
    assert (
        enhance("client://h:1/t:2", masterTLS="2", masterCrt="/c", masterKey="/k")
        == "client://h:1/t:2"
    )
    # tls=1 does not copy files
    assert (
        enhance("server://h:1/t:2", masterTLS="1", masterCrt="/c", masterKey="/k")
        == "server://h:1/t:2?tls=1"
    )


def test_enhanceSortsAndReescapes() -> None:
    assert (
        enhance("client://h:1/t:2?z=1&a=x+y&m=%7e&b=a%2fb")
        == "client://h:1/t:2?a=x+y&b=a%2Fb&m=~&z=1"
    )


def test_repeatedKeys() -> None:
    assert enhance("client://h:1/t:2?b=2&a=1&b=1&a=0") == "client://h:1/t:2?a=1&a=0&b=2&b=1"
    rendered = render(parse("client://h:1/t:2?x=2&x=1"))
    assert "&x=2&x=1" in rendered


def test_semicolonPairsDropped() -> None:
    assert enhance("client://h:1/t:2?a=1;b=2&c=3&d;=4") == "client://h:1/t:2?c=3"


def test_badEscapeDropped() -> None:
    assert enhance("client://h:1/t:2?a=%zz&b=%4&c=%41") == "client://h:1/t:2?c=A"


def test_plusIsSpace() -> None:
    config = parse("client://h:1/t:2?crt=a+b")
    assert config.crt == "a b"
    assert "crt=a+b" in render(config)
    assert enhance("client://h:1/t:2?x=a%20b+c") == "client://h:1/t:2?x=a+b+c"


def test_emptyValueCountsAsAbsent() -> None:
    assert enhance("client://h:1/t:2?log=", masterLog="warn") == "client://h:1/t:2?log=warn"
    assert (
        enhance("client://h:1/t:2?log=&log=debug", masterLog="warn") == "client://h:1/t:2?log=warn"
    )
    assert enhance("client://h:1/t:2?log=error", masterLog="warn") == "client://h:1/t:2?log=error"
    assert "slot=65536" in render(parse("client://h:1/t:2?slot="))
    assert "slot=65536&" in render(parse("client://h:1/t:2?slot=&slot=7"))


def test_keyWithoutValue() -> None:
    assert enhance("client://h:1/t:2?flag") == "client://h:1/t:2?flag="


def test_enhanceKeepsPrefixVerbatim() -> None:
    assert enhance("CLIENT://K%40y@Host.Example:1/ a:1 , b:2?x=1#frag") == (
        "client://K%40y@Host.Example:1/ a:1 , b:2?x=1#frag"
    )
    assert enhance("client://h:1/t:2#") == "client://h:1/t:2"
    assert enhance("client://h:1/t:2?") == "client://h:1/t:2"
    assert enhance("client://h:1/t:2#a?b=1") == "client://h:1/t:2#a?b=1"


def test_enhanceRejectsOtherSchemes() -> None:
    for url in ("master://:9090", "http://h:1/", "nonsense"):
        with pytest.raises(URLError):
            enhance(url)


def test_renderKeepsUserParams() -> None:
    rendered = render(parse("server://k@h:1/t:2?lbs=1&dns=1.1.1.1,8.8.8.8&foo=bar"))
    assert rendered == (
        "server://k@h:1/t:2?block=0&dial=auto&dns=1.1.1.1%2C8.8.8.8&foo=bar&lbs=1&max=1024&mode=0"
        "&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&type=0"
    )
    assert "lbs" not in render(parse("server://k@h:1/t:2"))


def test_renderKeepsUserValuesVerbatim() -> None:
    rendered = render(parse("client://h:1/t:2?dns=5m&read=1h&min=010"))
    assert "dns=5m&" in rendered and "read=1h&" in rendered and "min=010&" in rendered


def test_renderMaster() -> None:
    assert (
        render(parse("master://:9090/api?tls=1&log=debug")) == "master://:9090/api?log=debug&tls=1"
    )


def test_escapeNonASCII() -> None:
    assert (
        enhance("client://h:1/t:2?x=%C3%A9&y=\u00e9&z=%ff")
        == "client://h:1/t:2?x=%C3%A9&y=%C3%A9&z=%FF"
    )


# ---------------------------------------------------------------------------
# Go durations


PARSE_TABLE = [
    ("0", 0),
    ("+0", 0),
    ("-0", 0),
    ("0s", 0),
    ("5s", 5_000_000_000),
    ("30s", 30_000_000_000),
    ("1478s", 1_478_000_000_000),
    ("+5s", 5_000_000_000),
    ("5.0s", 5_000_000_000),
    ("5.6s", 5_600_000_000),
    ("5.s", 5_000_000_000),
    (".5s", 500_000_000),
    ("1.0s", 1_000_000_000),
    ("1.00s", 1_000_000_000),
    ("1.004s", 1_004_000_000),
    ("1.0040s", 1_004_000_000),
    ("100.00100s", 100_001_000_000),
    ("10ns", 10),
    ("11us", 11_000),
    ("12\u00b5s", 12_000),
    ("12\u03bcs", 12_000),
    ("13ms", 13_000_000),
    ("14s", 14_000_000_000),
    ("15m", 900_000_000_000),
    ("16h", 57_600_000_000_000),
    ("3h30m", 12_600_000_000_000),
    ("10.5s4m", 250_500_000_000),
    ("1h1m1s1ms1us1ns", 3_661_001_001_001),
    ("39h9m14.425s", 140_954_425_000_000),
    ("52763797000ns", 52_763_797_000),
    ("0.3333333333333333333h", 1_200_000_000_000),
    ("9007199254740993ns", 9_007_199_254_740_993),
    ("9223372036854775807ns", 9_223_372_036_854_775_807),
    ("9223372036854775.807us", 9_223_372_036_854_775_807),
    ("9223372036s854ms775us807ns", 9_223_372_036_854_775_807),
    ("0.100000000000000000000h", 360_000_000_000),
    ("0.830103483285477580700h", 2_988_372_539_827),
]


@pytest.mark.parametrize("text, nanoseconds", PARSE_TABLE)
def test_parseDurationTable(text: str, nanoseconds: int) -> None:
    assert parseNanoseconds(text) == nanoseconds
    assert parseDuration(text) == nanoseconds / 1e9


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3",
        "-",
        "s",
        ".",
        "-.",
        ".s",
        "+.s",
        "1d",
        "1.2.3s",
        "3000000h",
        "9223372036854775808ns",
        "9223372036854775.808us",
        "1 s",
        " 1s",
        "1s ",
        "x1s",
        "1sx",
        "1e3s",
        "-1s",
        "-1ns",
        "\u0661s",
        "1S",
        "1Ms",
    ],
)
def test_parseDurationInvalid(text: str) -> None:
    with pytest.raises(URLError) as info:
        parseDuration(text)
    assert info.value.param == "duration"


FORMAT_TABLE = [
    (0, "0s"),
    (1, "1ns"),
    (1_100, "1.1\u00b5s"),
    (1_000, "1\u00b5s"),
    (2_200_000, "2.2ms"),
    (300_000_000, "300ms"),
    (3_300_000_000, "3.3s"),
    (1_500_000_000, "1.5s"),
    (60_000_000_000, "1m0s"),
    (90_000_000_000, "1m30s"),
    (300_000_000_000, "5m0s"),
    (4 * 60_000_000_000 + 5_000_000_000, "4m5s"),
    (4 * 60_000_000_000 + 5_001_000_000, "4m5.001s"),
    (3_600_000_000_000, "1h0m0s"),
    (3_723_500_000_000, "1h2m3.5s"),
    (5 * 3_600_000_000_000 + 6 * 60_000_000_000 + 7_001_000_000, "5h6m7.001s"),
    (8 * 3_600_000_000_000 + 1, "8h0m0.000000001s"),
    (9_223_372_036_854_775_807, "2562047h47m16.854775807s"),
    (-1, "-1ns"),
    (-1_500_000_000, "-1.5s"),
    (999_999_999, "999.999999ms"),
    (999, "999ns"),
    (999_999, "999.999\u00b5s"),
]


@pytest.mark.parametrize("nanoseconds, text", FORMAT_TABLE)
def test_formatNanosecondsTable(nanoseconds: int, text: str) -> None:
    assert formatNanoseconds(nanoseconds) == text


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.0, "0s"),
        (300.0, "5m0s"),
        (0.3, "300ms"),
        (1.5, "1.5s"),
        (3600, "1h0m0s"),
        (1e-6, "1\u00b5s"),
        (3723.5, "1h2m3.5s"),
        (0.25, "250ms"),
    ],
)
def test_formatDuration(seconds: float, text: str) -> None:
    assert formatDuration(seconds) == text


@pytest.mark.parametrize(
    "nanoseconds, text", [row for row in FORMAT_TABLE if row[0] >= 0 and row[0] < 2**52]
)
def test_formatParseRoundTrip(nanoseconds: int, text: str) -> None:
    assert formatDuration(parseDuration(text)) == text


# ---------------------------------------------------------------------------
# misc API


def test_parseHostPort() -> None:
    assert parseHostPort("[::1]:80") == HostPort("::1", 80, "[::1]:80")
    assert parseHostPort("example.com:443").isName
    with pytest.raises(URLError) as info:
        parseHostPort("example.com:0")
    assert info.value.param == "target"


def test_configIsFrozen() -> None:
    config = parse(CLIENT)
    with pytest.raises(AttributeError):
        config.slot = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------
# property tests

_hostnames = st.from_regex(r"[a-z][a-z0-9\-]{0,10}(\.[a-z][a-z0-9]{0,5}){0,2}", fullmatch=True)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
_hosts = st.one_of(_hostnames, _ipv4, _ipv6, st.just(""))
_ports = st.integers(1, 65535).map(str)
_durations = st.one_of(
    st.sampled_from(["0", "0s", "5m", "5m0s", "1h", "300ms", "1.5s", "1h2m3.5s"]),
    st.integers(0, 10**15).map(formatNanoseconds),
)
_dnsLists = st.lists(_ipv4, min_size=1, max_size=3).map(",".join)

_paramValues: dict[str, st.SearchStrategy[str]] = {
    "log": st.sampled_from(["none", "debug", "info", "warn", "error", "event", ""]),
    "tls": st.sampled_from(["0", "1", "2"]),
    "crt": st.text(max_size=10),
    "key": st.text(max_size=10),
    "dns": st.one_of(_durations, _dnsLists),
    "sni": st.from_regex(r"[a-zA-Z0-9.\-]{0,10}", fullmatch=True),
    "min": st.integers(1, 10**6).map(str),
    "max": st.integers(1, 10**6).map(str),
    "mode": st.sampled_from(["0", "1", "2"]),
    "type": st.one_of(
        st.sampled_from(["0", "1", "2", "3"]),
        st.from_regex(r"[a-z][a-z0-9_\-]{0,31}", fullmatch=True),
    ),
    "dial": st.one_of(st.just("auto"), st.ip_addresses().map(str)),
    "read": _durations,
    "rate": st.integers(0, 10**5).map(str),
    "slot": st.integers(0, 10**6).map(str),
    "proxy": st.sampled_from(["0", "1", "2"]),
    "block": st.from_regex(r"[0-3]{1,4}", fullmatch=True),
    "notcp": st.sampled_from(["0", "1"]),
    "noudp": st.sampled_from(["0", "1"]),
    "lbs": st.sampled_from(["0", "1", "2"]),
    "x-unknown": st.text(max_size=10),
}


def _encodePair(name: str, value: str) -> str:
    return quote(name, safe="") + "=" + quote(value, safe="")


_anyKeys = st.one_of(st.just(""), st.text(min_size=1, max_size=12))
_distinctKeys = st.from_regex(r"Zq[0-9a-f]{10}Xy", fullmatch=True)


@st.composite
def validURLs(draw: st.DrawFn, keys: st.SearchStrategy[str] = _anyKeys) -> str:
    scheme = draw(st.sampled_from(["server", "client", "Client"]))
    key = draw(keys)
    userinfo = quote(key, safe="") + "@" if key or draw(st.booleans()) else ""
    port = draw(_ports)
    tunnelHost = draw(_hosts)
    targets = draw(
        st.lists(
            st.tuples(st.one_of(_hostnames, _ipv6, st.just("10.1.2.3")), _ports).filter(
                lambda t: t[1] != port
            ),
            min_size=1,
            max_size=3,
        )
    )
    names = draw(st.lists(st.sampled_from(sorted(_paramValues)), max_size=8))
    pairs = [_encodePair(name, draw(_paramValues[name])) for name in names]
    fragment = draw(st.sampled_from(["", "#frag"]))
    query = ("?" + "&".join(pairs)) if pairs else ""
    path = ",".join(f"{host}:{p}" for host, p in targets)
    return f"{scheme}://{userinfo}{tunnelHost}:{port}/{path}{query}{fragment}"


@settings(max_examples=300, deadline=None)
@given(validURLs(), st.sampled_from(["", "info", "debug"]), st.sampled_from(["0", "1", "2"]))
def test_renderIdempotent(url: str, masterLog: str, masterTLS: str) -> None:
    master = {
        "masterLog": masterLog,
        "masterTLS": masterTLS,
        "masterCrt": "/c.pem",
        "masterKey": "/k.pem",
    }
    once = render(parse(url), **master)
    twice = render(parse(once), **master)
    assert once == twice
    assert render(parse(render(parse(url)))) == render(parse(url))
    assert enhance(enhance(url, **master), **master) == enhance(url, **master)


@settings(max_examples=300, deadline=None)
@given(validURLs(keys=_distinctKeys))
def test_describeNeverShowsKey(url: str) -> None:
    config = parse(url)
    assert config.key.startswith("Zq") and config.keyGiven
    text = describe(config)
    assert f"://{MASKED_KEY}@" in text
    assert "\n" not in text
    assert config.key not in text
    assert config.key not in repr(config)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parseArbitraryText(text: str) -> None:
    try:
        parse(text)
    except URLError as e:
        assert "\n" not in str(e)


_urlish = st.text(
    alphabet="serverclientmaster:/@[]?&=%#,.;+ 0123456789abcdef-_\u00e9\x00", max_size=60
)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(
        ["server://", "client://", "master://", "client://k@h:1/", "server://h:1/t:2?"]
    ),
    _urlish,
)
def test_parseURLishText(prefix: str, rest: str) -> None:
    try:
        config = parse(prefix + rest)
    except URLError as e:
        assert "\n" not in str(e)
    else:
        render(config)
        describe(config)
        unknownParams(config)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_enhanceArbitraryText(text: str) -> None:
    try:
        enhance("client://h:1/t:2?" + text)
    except URLError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_formatDurationStable(seconds: float) -> None:
    text = formatDuration(seconds)
    assert formatDuration(parseDuration(text)) == text


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_formatNanosecondsParses(nanoseconds: int) -> None:
    text = formatNanoseconds(nanoseconds)
    parsed = parseDuration(text)
    if nanoseconds < 2**52:
        assert round(parsed * 1e9) == nanoseconds
    assert parseNanoseconds(text) == nanoseconds


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=20))
def test_parseDurationArbitrary(text: str) -> None:
    try:
        assert parseDuration(text) >= 0
    except URLError:
        pass


# ---------------------------------------------------------------------------
# allow / deny / pin (our extensions)

PIN = "sha256:" + ":".join(["AB"] * 32)


def test_allowDenyParsed() -> None:
    config = client("allow=127.0.0.1,10.0.0.0/8&deny=10.9.0.0/16,2001:db8::/32")
    assert [str(n) for n in config.allow] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert [str(n) for n in config.deny] == ["10.9.0.0/16", "2001:db8::/32"]
    assert server("allow=::1").allow == client("allow=::1").allow
    assert client("").allow == () and client("allow=").deny == ()


@pytest.mark.parametrize("name", ["allow", "deny"])
@pytest.mark.parametrize("value", ["10.0.0.0/33", "example.com", "10.0.0.1,,x", "[::1]"])
def test_badNetworks(name: str, value: str) -> None:
    error = assertRejected(f"{name}={quote(value)}", name, value, "CIDR")
    assert "is not an IP address or CIDR block" in str(error)


def test_networksInDescribeAndRender() -> None:
    config = client("deny=192.0.2.7/24&allow=::1,127.0.0.1")
    assert describe(config).endswith("&noudp=0&allow=::1/128,127.0.0.1/32&deny=192.0.2.0/24")
    rendered = render(config)
    assert "allow=%3A%3A1%2C127.0.0.1" in rendered and "deny=192.0.2.7%2F24" in rendered


def test_masterIgnoresAccessParams() -> None:
    config = parse("master://:9090/api?allow=junk&pin=junk")
    assert config.allow == () and config.pin == ""


@pytest.mark.parametrize(
    "value",
    [
        PIN,
        PIN.lower().replace("sha256:", "sha256:"),
        "sha256:" + "ab" * 32,
    ],
)
def test_pinNormalised(value: str) -> None:
    assert client(f"tls=1&pin={value}").pin == PIN
    assert client(f"tls=2&pin={value}").pin == PIN


@pytest.mark.parametrize(
    "value",
    ["AB:" * 31 + "AB", "sha256:" + "AB" * 31, "sha256:" + ":".join(["AB"] * 33), "sha1:AB", "x"],
)
def test_badPin(value: str) -> None:
    assertRejected(f"tls=1&pin={value}", "pin", value, "sha256:")


def test_pinNeedsTLS() -> None:
    with pytest.raises(URLError) as info:
        client(f"pin={PIN}")
    assert info.value.param == "pin"
    assert "needs tls=1 or tls=2" in str(info.value)
    assert "\n" not in str(info.value)


def test_pinIsForClients() -> None:
    with pytest.raises(URLError) as info:
        server(f"tls=1&pin={PIN}")
    assert info.value.param == "pin"
    assert "client URL" in str(info.value)


def test_pinInDescribe() -> None:
    assert describe(client(f"tls=1&pin={PIN.lower()}")).endswith(f"&noudp=0&pin={PIN}")


def test_accessParamsAreKnown() -> None:
    assert unknownParams(client(f"allow=::1&deny=::2&tls=1&pin={PIN}")) == ()


@given(st.text(max_size=60), st.sampled_from(["allow", "deny", "pin"]))
def test_accessParamsValueOrURLError(value: str, name: str) -> None:
    try:
        config = client(f"tls=1&{name}={quote(value, safe='')}")
    except URLError as error:
        assert error.param == name
        assert "\n" not in str(error)
    else:
        assert isinstance(getattr(config, name), (tuple, str))
