"""
Property tests for L{nodepass.sniff.detect} (C{block}): for any first bytes and any C{block}
text, the answer depends only on the first L{PEEK_SIZE} bytes and on which of C{1}, C{2}, C{3}
the text holds, names only a class that is enabled, follows the documented rules exactly, and
is C{None} for anything shorter than L{PEEK_SIZE} (a connection that ended early is relayed).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nodepass.sniff import PEEK_SIZE, detect, needsSniff

FIRST_BYTES = st.one_of(
    st.binary(max_size=16),
    st.tuples(st.sampled_from([b"\x04", b"\x05", b"\x16"]), st.binary(max_size=12)).map(
        lambda parts: parts[0] + parts[1]
    ),
    st.tuples(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
        st.binary(max_size=10),
    ).map(lambda parts: parts[0].encode() + b" " + parts[1]),
)
BLOCKS = st.one_of(st.text(alphabet="0123", max_size=4), st.text(max_size=5))


def _reference(peek: bytes, block: str) -> str | None:
    """
    The rules of the docstring, written out independently.
    """
    if "1" in block:
        if peek[0] == 4 and peek[1] in (1, 2):
            return "SOCKS4"
        if peek[0] == 5 and 1 <= peek[1] <= 3:
            return "SOCKS5"
    if "2" in block:
        space = peek.find(b" ")
        if 1 <= space <= PEEK_SIZE - 1 and all(65 <= c <= 90 for c in peek[:space]):
            return "HTTP"
    if "3" in block and peek[0] == 0x16:
        return "TLS"
    return None


@settings(max_examples=400, deadline=None)
@given(FIRST_BYTES, BLOCKS)
def test_detectFollowsTheRules(data: bytes, block: str) -> None:
    result = detect(data, block)
    assert result in (None, "SOCKS4", "SOCKS5", "HTTP", "TLS")
    if len(data) < PEEK_SIZE:
        assert result is None
        return
    assert result == _reference(data[:PEEK_SIZE], block)
    # Only the first PEEK_SIZE bytes count, and only the class digits of block.
    assert detect(data[:PEEK_SIZE], block) == result
    digits = "".join(d for d in "123" if d in block)
    assert detect(data, digits) == result
    if result is not None:
        enabled = {"SOCKS4": "1", "SOCKS5": "1", "HTTP": "2", "TLS": "3"}[result]
        assert enabled in block
        assert needsSniff(block)
    if not needsSniff(block):
        assert result is None
