"""
Property tests for L{nodepass.master.requests}: any request body (bytes) decodes to an object
or an L{InvalidRequest}; any JSON value given as a PATCH or webhook body validates to a value
that keeps every limit, or an L{InvalidRequest} with one of the exact texts; never another
exception (which the app would answer with a 500).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodepass.master.messages import (
    MAX_VALUE_BYTES,
    MAX_WEBHOOK_SECRET_BYTES,
    MAX_WEBHOOK_URL_BYTES,
    WEBHOOK_EVENTS,
    InvalidRequest,
)
from nodepass.master.requests import (
    ACTIONS,
    MAX_META_BYTES,
    MAX_TAGS,
    Patch,
    WebhookRequest,
    decodeBody,
    validatePatch,
    validateWebhook,
    webhookURLProblem,
)

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "\ud800", "é" * 200, "x" * 256, "x" * 257, "a\x00b"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _field(names: list[str], values: Any) -> Any:
    """
    One member of a body: a field the validator reads (in any case) or another, any value.
    """
    cased = st.sampled_from(names).flatmap(
        lambda name: st.sampled_from([name, name.upper(), name.title()])
    )
    return st.tuples(st.one_of(cased, st.text(max_size=5)), st.one_of(values, VALUES))


def _objects(names: list[str], values: Any) -> Any:
    return st.lists(_field(names, values), max_size=5).map(dict)


TAGS = st.one_of(
    st.dictionaries(TEXT, st.one_of(TEXT, VALUES), max_size=5),
    st.integers(60, 70).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    st.just({f"k{i}": "v" * 250 for i in range(64)}),
)
PEERS = _objects(["sid", "type", "alias"], TEXT)
METAS = _objects(["peer", "tags"], st.one_of(TAGS, PEERS))
PATCHES = st.one_of(
    VALUES,
    _objects(
        ["alias", "action", "restart", "meta"],
        st.one_of(st.sampled_from([*ACTIONS, "Start", "kill"]), TEXT, st.booleans(), METAS),
    ),
)
WEBHOOK_URLS = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1:9/hook",
            "https://example.com/x?y=1",
            "HTTP://[::1]:80/",
            "http://[::1",
            "http://host:99999/",
            "http://host:x/",
            "ftp://host/",
            "http:///nohost",
            "http://a b/",
            "http://\uff21/",
            "https://" + "a" * 3000 + ".com/",
            "http://\ud800/",
        ]
    ),
    st.text(max_size=20),
    st.text(max_size=8).map(lambda tail: "http://h/" + tail),
)
WEBHOOKS = st.one_of(
    VALUES,
    _objects(
        ["url", "events", "secret"],
        st.one_of(
            WEBHOOK_URLS,
            st.lists(st.one_of(st.sampled_from([*WEBHOOK_EVENTS, "Create", "x"]), VALUES)),
            st.lists(st.sampled_from(WEBHOOK_EVENTS), min_size=1),
            TEXT,
            st.text(min_size=MAX_WEBHOOK_SECRET_BYTES - 2, max_size=MAX_WEBHOOK_SECRET_BYTES + 2),
        ),
    ),
)


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


# -- decodeBody --------------------------------------------------------------------------------


BODIES = st.one_of(
    st.binary(max_size=60),
    VALUES.map(lambda v: json.dumps(v).encode()),
    PATCHES.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.tuples(st.sampled_from([b"", b" \n", b"\xef\xbb\xbf"]), VALUES, st.binary(max_size=8)).map(
        lambda t: t[0] + json.dumps(t[1]).encode() + t[2]
    ),
)


@settings(max_examples=150, deadline=None)
@given(BODIES)
@example(b"[" * 70_000)
@example(b'{"a":' * 20_000)
@example(b'{"alias":"\\ud800"}')
@example(b'{"meta":{"tags":{"\\udc00":"\\ud800"}}}')
@example(b'{"a":1e999}')
@example(b'{"a":' + b"9" * 5000 + b"}")
@example(b'{"a":NaN,"b":-Infinity}')
def test_anyBodyIsAnObjectOrInvalid(raw: bytes) -> None:
    """
    Any body (at most 64 KiB reach the decoder): a dict of valid text (no lone surrogate,
    as Go's decoder replaces them) or C{Invalid request body}.
    """
    try:
        body = decodeBody(raw)
    except InvalidRequest as error:
        assert error.message == "Invalid request body"
        return
    assert isinstance(body, dict)
    # Everything in it can be written back as UTF-8 JSON (the store and the events do).
    json.dumps(body, ensure_ascii=False).encode("utf-8")


# -- PATCH bodies ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(PATCHES)
@example({"meta": {"tags": {"k": "\ud800"}}})
@example({"meta": {"peer": {"alias": "\ud800"}}})
@example({"alias": "\ud800"})
def test_anyPatchIsValidOrInvalid(body: Any) -> None:
    """
    Any JSON value as a PATCH body: a L{Patch} that keeps every limit (alias and tag texts,
    the number of tags, the size of C{meta}), or an L{InvalidRequest}.
    """
    try:
        patch = validatePatch(body)
    except InvalidRequest as error:
        assert error.message and "\n" not in error.message
        return
    assert isinstance(patch, Patch)
    # Only valid text gets through: the store and the event stream write it as UTF-8.
    json.dumps([patch.alias, patch.meta], ensure_ascii=False).encode("utf-8")
    if patch.alias is not None:
        assert isinstance(patch.alias, str) and patch.alias
        assert len(patch.alias.encode("utf-8", "surrogatepass")) <= MAX_VALUE_BYTES
    assert patch.action is None or patch.action in ACTIONS
    assert patch.restart is None or isinstance(patch.restart, bool)
    if patch.meta is not None:
        peer, tags = patch.meta["peer"], patch.meta["tags"]
        if peer is not None:
            assert set(peer) == {"sid", "type", "alias"}
            assert all(
                isinstance(v, str) and len(v.encode("utf-8", "surrogatepass")) <= MAX_VALUE_BYTES
                for v in peer.values()
            )
        if tags is not None:
            assert len(tags) <= MAX_TAGS
            for key, value in tags.items():
                assert isinstance(value, str)
                assert len(key.encode("utf-8", "surrogatepass")) <= MAX_VALUE_BYTES
                assert len(value.encode("utf-8", "surrogatepass")) <= MAX_VALUE_BYTES
        probe = {"peer": peer or {}, "tags": tags or {}}
        assert (
            len(json.dumps(probe, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            <= MAX_META_BYTES
        )


@settings(max_examples=100, deadline=None)
@given(PATCHES)
def test_aDecodedPatchIsValidText(body: Any) -> None:
    """
    What arrives over HTTP goes through L{decodeBody} first: then a valid PATCH holds only
    valid UTF-8 text, which the store and the event stream can write.
    """
    raw = json.dumps(body).encode()
    try:
        patch = validatePatch(decodeBody(raw))
    except InvalidRequest:
        return
    json.dumps([patch.alias, patch.action, patch.meta], ensure_ascii=False).encode("utf-8")


# -- webhook bodies ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(WEBHOOKS, st.booleans())
@example({"url": "http://h/", "events": ["create"], "secret": "\ud800"}, True)
@example({"url": "http://[::1", "events": ["create"]}, True)
@example({"url": "http://h/", "events": ["create", "create"]}, True)
def test_anyWebhookBodyIsValidOrInvalid(body: Any, creating: bool) -> None:
    """
    Any JSON value as a webhook body, created or patched: a L{WebhookRequest} whose URL can
    receive webhooks, whose events are known kinds without repeats in the canonical order,
    and whose secret fits and is text; or an L{InvalidRequest}.
    """
    try:
        request = validateWebhook(body, creating)
    except InvalidRequest as error:
        assert error.message and "\n" not in error.message
        return
    assert isinstance(request, WebhookRequest)
    if creating:
        assert request.url is not None and request.events is not None
        assert request.secret is not None
    if request.url is not None:
        assert webhookURLProblem(request.url) is None
        assert _bytes(request.url) <= MAX_WEBHOOK_URL_BYTES
        assert request.url.split(":", 1)[0].lower() in ("http", "https")
    if request.events is not None:
        assert request.events
        assert list(request.events) == [kind for kind in WEBHOOK_EVENTS if kind in request.events]
    if request.secret is not None:
        assert _bytes(request.secret) <= MAX_WEBHOOK_SECRET_BYTES


@settings(max_examples=100, deadline=None)
@given(WEBHOOK_URLS)
def test_webhookURLProblemNeverRaises(url: str) -> None:
    problem = webhookURLProblem(url)
    assert problem is None or isinstance(problem, str)
