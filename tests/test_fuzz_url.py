"""
Property tests for L{nodepass.url}: whatever a user types as a URL ends in a L{Config} or a
L{URLError} (never another exception), the tunnel key never shows in an error, the master's
C{config} string (L{render}) parses back to the same configuration, and L{enhance} changes
nothing L{parse} reads.
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import quote

import attrs
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodepass.errors import URLError
from nodepass.url import KNOWN_PARAMS, Config, enhance, parse, render

# -- strategies ------------------------------------------------------------------------------


def _mostly(good: Any, bad: Any) -> Any:
    """
    C{good} eleven times in twelve, C{bad} otherwise: most generated URLs get far enough to
    exercise the later checks and the round trips, and every part is sometimes broken.
    """
    return st.integers(0, 11).flatmap(lambda n: bad if n == 0 else good)


SCHEMES = _mostly(
    st.sampled_from(["server", "client", "master", "SERVER", "Client"]),
    st.sampled_from(["http", "", "s3", "server:", "1x"]),
)
HOSTS = _mostly(
    st.sampled_from(
        [
            "127.0.0.1",
            "0.0.0.0",
            "",
            "[::1]",
            "[::]",
            "[fe80::1%25eth0]",
            "[::ffff:192.0.2.1]",
            "example.com",
            "localhost",
            "a-b.c_d",
        ]
    ),
    st.one_of(
        st.sampled_from(["1.2.3", "256.1.1.1", "[", "[::1", "a b", "héllo", "[1.2.3.4]", "%41"]),
        st.text(max_size=8),
    ),
)
PORTS = _mostly(
    st.integers(1, 65_535).map(str),
    st.one_of(
        st.sampled_from(["", "0", "65536", "080", "+1", "-1", "1e3", " 1", "99999999999"]),
        st.text(alphabet="0123456789:x", max_size=6),
    ),
)
TARGETS = _mostly(
    st.tuples(HOSTS, PORTS).map(lambda hp: f"{hp[0]}:{hp[1]}"),
    st.text(max_size=12),
)
GOOD_VALUES = {
    "log": ["none", "debug", "info", "warn", "error", "event"],
    "tls": ["0", "1", "2"],
    "crt": ["/c.pem", "a b"],
    "key": ["/k.pem"],
    "dns": ["5m0s", "30s", "0", "1h2m3.5s", "1.1.1.1,8.8.8.8:53", "[::1]:53"],
    "sni": ["example.com"],
    "min": ["1", "64", "99999999999"],
    "max": ["1", "1024"],
    "mode": ["0", "1", "2"],
    "type": ["0", "1", "2", "3", "plugin-x"],
    "dial": ["auto", "192.0.2.1", "2001:db8::1"],
    "read": ["0", "10s", "1m", "1.5h"],
    "rate": ["0", "100"],
    "slot": ["0", "65536"],
    "proxy": ["0", "1", "2"],
    "block": ["0", "1", "123", "3"],
    "notcp": ["0", "1"],
    "noudp": ["0", "1"],
    "lbs": ["0", "1", "2"],
    "allow": ["10.0.0.0/8,::1", "192.0.2.1"],
    "deny": ["0.0.0.0/0"],
    "pin": ["sha256:" + "AB:" * 31 + "AB"],
}
BAD_VALUES = st.one_of(
    st.sampled_from(["", "-1", "9", "x+y", "%7e", "%zz", "a%2fb", "-5s", "1e400", "\u00e9"]),
    st.text(max_size=10),
)
PARAM = _mostly(
    st.sampled_from(KNOWN_PARAMS).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from(GOOD_VALUES[name]), st.booleans())
    ),
    st.tuples(
        st.one_of(st.sampled_from(KNOWN_PARAMS), st.text(max_size=5)), BAD_VALUES, st.booleans()
    ),
)
PARAMS = st.lists(PARAM, max_size=6)
#: Keys made of text no other part of a generated URL contains, so an error that repeats the
#: key is found: a marker, then anything (percent-encoded, or raw when it is plain).
KEY_MARK = "Zq7Kx"
KEYS = st.text(min_size=0, max_size=10).map(lambda tail: KEY_MARK + tail)


def _quote(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


def _query(params: list[tuple[str, str, bool]]) -> str:
    parts = []
    for name, value, escaped in params:
        if escaped:
            parts.append(f"{_quote(name)}={_quote(value)}")
        else:
            parts.append(f"{name}={value}")
    return "&".join(parts)


@st.composite
def urls(draw: Any, keys: Any = KEYS) -> tuple[str, str]:
    """
    A URL built from plausible and implausible parts, and the key it carries ("" if none).
    """
    scheme = draw(SCHEMES)
    key = draw(st.one_of(st.just(""), keys))
    userinfo = ""
    if key:
        # A key is typed raw or percent-encoded (a raw "?" included: the error masks
        # everything up to the last "@").
        encoded = _quote(key) if draw(st.booleans()) else key
        userinfo = encoded + draw(st.sampled_from(["", ":pw", ":"])) + "@"
    host = draw(HOSTS)
    port = draw(PORTS)
    targets = ",".join(draw(st.lists(TARGETS, min_size=1, max_size=3)))
    url = f"{scheme}://{userinfo}{host}:{port}/{targets}"
    params = draw(PARAMS)
    if params or draw(st.booleans()):
        url += "?" + _query(params)
    if draw(st.integers(0, 9)) == 0:
        url += "#" + draw(st.text(max_size=4))
    return url, key


def _parsed(text: str) -> Config | URLError:
    try:
        return parse(text)
    except URLError as error:
        return error


def _fields(config: Config) -> dict[str, Any]:
    """
    What a configuration means: every field but the text it came from.
    """
    values = attrs.asdict(config, recurse=False)
    del values["raw"], values["query"]
    return values


# -- parse -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
@example("server://")
@example("server://a@[::1%zz]:1/x")
@example("client://\udcff@h:1/t:2")
@example("master://h:1/%ff%fe")
def test_anyTextIsAConfigOrAURLError(text: str) -> None:
    """
    Arbitrary text: a L{Config} or a one-line L{URLError}, nothing else.
    """
    result = _parsed(text)
    if isinstance(result, URLError):
        assert "\n" not in str(result)
        assert result.param
    else:
        assert isinstance(result, Config)
        assert result.scheme in ("server", "client", "master")


@settings(max_examples=150, deadline=None)
@given(urls())
@example(("server://Zq7Kx@h:99999/t:1", "Zq7Kx"))
@example(("client://Zq7Kx%zz@h:1/t:1", "Zq7Kx%zz"))
@example(("server://Zq7Kx/a@h:1/t:1", "Zq7Kx/a"))
@example(("server://Zq7Kx\udcff@h:1/t:1", "Zq7Kx\udcff"))
def test_theKeyNeverShowsInAnError(case: tuple[str, str]) -> None:
    """
    A URL with a key: a L{Config} carrying exactly that key (as given), or an error whose
    text, value and allowed-list never contain it.
    """
    url, key = case
    result = _parsed(url)
    if isinstance(result, URLError):
        if key:
            for text in (str(result), result.value, result.allowed, repr(result)):
                assert key not in text, (url, text)
                assert _quote(key) not in text, (url, text)
        return
    assert KEY_MARK not in repr(result)
    if key and result.scheme != "master":
        assert result.key == key
        assert result.keyGiven


@settings(max_examples=150, deadline=None)
@given(urls())
def test_renderedConfigParsesBackTheSame(case: tuple[str, str]) -> None:
    """
    The master's C{config} string of a valid URL is itself a valid URL with the very same
    meaning, and rendering it again changes nothing.
    """
    url, _ = case
    config = _parsed(url)
    if isinstance(config, URLError):
        return
    rendered = render(config)
    again = parse(rendered)
    expected = _fields(config)
    if config.scheme == "client" and not config.sni:
        # The one default the reference's config string adds that changes a meaning: a client
        # left without sni gets sni=none (master-api §7), so a host-name tunnel's serverName
        # reads "none" there.  The instance itself runs from its url, never from config.
        expected["sni"] = "none"
    assert _fields(again) == expected, rendered
    assert render(again) == rendered


@settings(max_examples=100, deadline=None)
@given(
    urls(),
    st.sampled_from(["", "debug", "info", "event"]),
    st.sampled_from(["0", "1", "2"]),
    st.sampled_from(["", "/c.pem"]),
    st.sampled_from(["", "/k.pem"]),
)
def test_enhanceKeepsWhatParseReads(
    case: tuple[str, str], log: str, tls: str, crt: str, keyFile: str
) -> None:
    """
    L{enhance} ends in text or a L{URLError}; on a valid instance URL its result parses to the
    same configuration except for the master's settings it filled in (C{log}, C{tls},
    C{crt}, C{key}), and re-rendering the parsed result is stable.
    """
    url, key = case
    try:
        enhanced = enhance(url, masterLog=log, masterTLS=tls, masterCrt=crt, masterKey=keyFile)
    except URLError as error:
        if key:
            assert key not in str(error)
        return
    assert isinstance(enhanced, str)
    config = _parsed(url)
    if isinstance(config, URLError) or config.scheme == "master":
        return
    after = _parsed(enhanced)
    assert isinstance(after, Config), (url, enhanced, after)
    mine, theirs = _fields(config), _fields(after)
    for name in ("log", "tls", "crt", "keyFile", "pin"):
        # Filled in by the master when the URL left them out (a pin needs tls on a client).
        mine.pop(name), theirs.pop(name)
    assert mine == theirs, enhanced
    if not log:
        assert after.log == config.log
    assert render(after) == render(parse(render(after)))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_enhanceAnyText(text: str) -> None:
    try:
        result = enhance(text, masterLog="info", masterTLS="1")
    except URLError as error:
        assert "\n" not in str(error)
        return
    assert result.split(":", 1)[0] in ("server", "client")


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=string.printable, max_size=12))
def test_anyKeyTextRoundTrips(key: str) -> None:
    """
    Any key, percent-encoded, is what the parsed configuration holds, and survives
    L{render}.
    """
    url = f"server://{_quote(key)}@127.0.0.1:10101/127.0.0.1:8080"
    config = parse(url)
    if key:
        assert (config.key, config.keyGiven) == (key, True)
    assert parse(render(config)).key == config.key


def test_aKeyWithAQuestionMarkIsMasked() -> None:
    """
    Found by test_theKeyNeverShowsInAnError: C{server://se?cret@127.0.0.1:10101/...} (a key
    typed with a raw C{?}) fails as a bad host:port, and the error repeats the key.
    """
    for url, secrets in (
        ("server://se?cret@127.0.0.1:10101/127.0.0.1:8080", ["se?cret"]),
        ("server://user:pa?ss@127.0.0.1:1/127.0.0.1:2", ["user:pa", "pa?ss"]),
    ):
        try:
            parse(url)
        except URLError as error:
            for secret in secrets:
                assert secret not in str(error), str(error)
        else:
            raise AssertionError(f"{url} was accepted")
