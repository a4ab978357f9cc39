"""Tests for L{nodepass.sniff}."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodepass.sniff import PEEK_SIZE, detect, needsSniff

ALL = "123"


def test_peekSize() -> None:
    assert PEEK_SIZE == 8


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("", False),
        ("0", False),
        ("4567890", False),
        ("abc", False),
        ("1", True),
        ("2", True),
        ("3", True),
        ("123", True),
        ("x2y", True),
        ("0,3", True),
    ],
)
def test_needsSniff(block: str, expected: bool) -> None:
    assert needsSniff(block) is expected


# --- SOCKS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("second", [0x01, 0x02])
def test_socks4(second: int) -> None:
    data = bytes([0x04, second]) + b"\x00\x50\x7f\x00\x00\x01"
    assert detect(data, "1") == "SOCKS4"


@pytest.mark.parametrize("second", [0x00, 0x03, 0x04, 0x05, 0xFF])
def test_socks4Not(second: int) -> None:
    data = bytes([0x04, second]) + b"\x00" * 6
    assert detect(data, "1") is None


@pytest.mark.parametrize("second", [0x01, 0x02, 0x03])
def test_socks5(second: int) -> None:
    data = bytes([0x05, second]) + b"\x00\x02\x01\x00\x00\x00"
    assert detect(data, "1") == "SOCKS5"


@pytest.mark.parametrize("second", [0x00, 0x04, 0x05, 0xFF])
def test_socks5Not(second: int) -> None:
    data = bytes([0x05, second]) + b"\x00" * 6
    assert detect(data, "1") is None


# --- HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.1",
        b"PUT /abc",
        b"CONNECT example.com:443 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",  # 7 letters: the space is the 8th byte
        b"A /xxxxxxx",  # 1 letter
        b"ABCDEF xx",  # 6 letters
        b"GET \x00\x00\x00\x00",  # only the token and the space matter
    ],
)
def test_http(data: bytes) -> None:
    assert detect(data, "2") == "HTTP"


@pytest.mark.parametrize(
    "data",
    [
        b"PROPFIND / HTTP/1.1",  # 8 letters: no space within the first 8 bytes
        b"MKCALENDAR / HTTP/1.1",
        b"ABCDEFGH",
        b"get / HTTP/1.1",  # lower case
        b"Get / HTTP/1.1",
        b"gET / HTTP/1.1",
        b" GET / HTTP/1.1",  # leading space
        b"GE-T / HTTP",  # non-letter inside the token
        b"G3T / HTTP",
        b"GET\t/ HTTP",
        b"GETX\r\nAB CD",  # a space after a non-letter does not count
        b"\x16\x03\x01\x02\x00\x01\x00\x01",
    ],
)
def test_httpNot(data: bytes) -> None:
    assert detect(data, "2") is None


# --- TLS ------------------------------------------------------------------------------------


def test_tls() -> None:
    clientHello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    assert detect(clientHello, "3") == "TLS"
    assert detect(b"\x16" + b"\x00" * 7, "3") == "TLS"


@pytest.mark.parametrize("first", [0x15, 0x17, 0x00, 0x80])
def test_tlsNot(first: int) -> None:
    assert detect(bytes([first]) + b"\x03\x01\x02\x00\x01\x00\x01", "3") is None


# --- order, classes and prefixes ------------------------------------------------------------


def test_disabledClasses() -> None:
    socks4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01"
    socks5 = b"\x05\x01\x00\x00\x00\x00\x00\x00"
    http = b"GET / HTTP/1.1\r\n"
    tls = b"\x16\x03\x01\x02\x00\x01\x00\x01"
    for data, enabledBy, name in [
        (socks4, "1", "SOCKS4"),
        (socks5, "1", "SOCKS5"),
        (http, "2", "HTTP"),
        (tls, "3", "TLS"),
    ]:
        for block in ["", "0", "1", "2", "3", "12", "13", "23", "123", "321", "9"]:
            expected = name if enabledBy in block else None
            assert detect(data, block) == expected, (data, block)


def test_onlyFirstEightBytesMatter() -> None:
    # Nine letters then a space: the space is beyond the peek.
    assert detect(b"ABCDEFGHI /", "2") is None
    assert detect(b"\x17" * 8 + b"\x16", ALL) is None


def test_plainTrafficNotBlocked() -> None:
    for data in [
        b"SSH-2.0-OpenSSH_9.6\r\n",  # '-' follows the letters
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"\x00" * 8,
        b"\xff" * 8,
    ]:
        assert detect(data, ALL) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04",
        b"\x04\x01",
        b"\x05\x01\x00",  # a SOCKS5 greeting is only three bytes
        b"\x16",
        b"\x16\x03\x01",
        b"GET ",
        b"GET / ",
        b"OPTIONS",
        b"\x04\x01\x00\x50\x7f\x00\x00",  # seven bytes: one short
    ],
)
def test_shortPrefixNeverBlocks(data: bytes) -> None:
    """
    A connection that ends before 8 bytes arrived is not blocked (spec §10.5), so a prefix
    shorter than PEEK_SIZE is never classified.
    """
    assert len(data) < PEEK_SIZE
    assert detect(data, ALL) is None


def test_exactlyEightBytes() -> None:
    assert detect(b"\x04\x01\x00\x50\x7f\x00\x00\x01", ALL) == "SOCKS4"
    assert detect(b"GET / HT", ALL) == "HTTP"


def test_socksCheckedBeforeOthers() -> None:
    # Nothing can match two classes at once (first bytes differ), so order only matters for
    # the result when several classes are enabled; make sure enabling all changes nothing.
    assert detect(b"\x05\x02\x00\x02\x00\x00\x00\x00", ALL) == "SOCKS5"
    assert detect(b"POST / H", ALL) == "HTTP"
    assert detect(b"\x16\x03\x03\x00\x00\x00\x00\x00", ALL) == "TLS"


@given(st.binary(min_size=PEEK_SIZE, max_size=32), st.sampled_from(["1", "2", "3", "123"]))
def test_matchesReferenceRules(data: bytes, block: str) -> None:
    """An independent transcription of the §10.5 rules agrees on arbitrary input."""
    b = data[:PEEK_SIZE]
    expected: str | None = None
    if "1" in block and b[0] == 4 and b[1] in (1, 2):
        expected = "SOCKS4"
    elif "1" in block and b[0] == 5 and 1 <= b[1] <= 3:
        expected = "SOCKS5"
    elif "2" in block and any(
        b[i] == ord(" ") and all(ord("A") <= c <= ord("Z") for c in b[:i])
        for i in range(1, PEEK_SIZE)
    ):
        expected = "HTTP"
    elif "3" in block and b[0] == 0x16:
        expected = "TLS"
    assert detect(data, block) == expected


@given(st.binary(max_size=PEEK_SIZE - 1), st.text(alphabet="0123456789"))
def test_shortNeverBlocksProperty(data: bytes, block: str) -> None:
    assert detect(data, block) is None
