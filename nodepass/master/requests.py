"""Request bodies of the master API: decoding (Go's rules) and validation (master spec §4.2, §6.3, §8).

Everything here is pure: a body goes in, a validated value or an L{InvalidRequest} with the
exact error text comes out.  The registry applies what passes; the app turns the error into
its status code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
from attrs import frozen

from nodepass.master.messages import (
    ALIAS_TOO_LONG,
    INVALID_BODY,
    MAX_VALUE_BYTES,
    MAX_WEBHOOK_SECRET_BYTES,
    MAX_WEBHOOK_URL_BYTES,
    META_TOO_LARGE,
    TAG_KEY_TOO_LONG,
    TAG_VALUE_TOO_LONG,
    WEBHOOK_EVENTS,
    WEBHOOK_EVENTS_INVALID,
    WEBHOOK_SECRET_INVALID,
    WEBHOOK_SECRET_TOO_LONG,
    WEBHOOK_URL_INVALID,
    WEBHOOK_URL_REQUIRED,
    WEBHOOK_URL_TOO_LONG,
    InvalidRequest,
    duplicateTag,
    invalidAction,
    peerFieldTooLong,
    unknownWebhookEvent,
)

__all__ = [
    "ACTIONS",
    "MAX_META_BYTES",
    "MAX_TAGS",
    "Patch",
    "WebhookRequest",
    "bodyField",
    "decodeBody",
    "mergedMeta",
    "requireObject",
    "tooLong",
    "urlOf",
    "validateMeta",
    "validatePatch",
    "validateWebhook",
    "webhookURLProblem",
]

#: Most tags one instance may carry (§6.3 SHOULD; keeps every SSE event below 64 KiB).
MAX_TAGS: Final = 64

#: Largest serialised C{meta} object, in bytes (§6.3 SHOULD).
MAX_META_BYTES: Final = 16 * 1024

#: The PATCH actions (§8.4); C{status} is the read-only no-op NodePassDash sends (§8.4 MAY).
ACTIONS: Final = ("start", "stop", "restart", "reset", "status")


class _Object(dict[str, Any]):
    """
    A decoded JSON object that remembers which keys were repeated (§6.3: duplicate tags).
    """

    duplicates: tuple[str, ...] = ()


def _objectFromPairs(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    duplicates: list[str] = []
    for key, value in pairs:
        if key in result and key not in duplicates:
            duplicates.append(key)
        result[key] = value
    result.duplicates = tuple(duplicates)
    return result


def decodeBody(raw: bytes) -> dict[str, Any]:
    """
    Decode a request body the way Go's C{json.Decoder.Decode} does (§4.2): the first JSON
    value is read and trailing bytes are ignored.  An empty body is C{{}} (PATCH treats it as
    a no-op, POST and PUT then find no C{url}).  Repeated object keys keep the last value and
    are remembered so that PATCH can report C{Duplicate meta tag key}.  As in Go, an escaped
    lone surrogate (C{"\\ud800"}) becomes U+FFFD, so every string is valid UTF-8 text.

    @raise InvalidRequest: C{Invalid request body} if the body is not a JSON object (or is
        nested too deep to decode).
    """
    try:
        text = raw.decode("utf-8", "replace").lstrip(" \t\r\n")
        if not text:
            return {}
        value, _ = json.JSONDecoder(object_pairs_hook=_objectFromPairs).raw_decode(text)
    except (ValueError, RecursionError):
        raise InvalidRequest(INVALID_BODY) from None
    if not isinstance(value, dict):
        raise InvalidRequest(INVALID_BODY)
    if _SURROGATE_ESCAPE.search(text):
        _replaceSurrogates(value)
    return value


#: A JSON escape that may decode to a lone surrogate, and a lone surrogate.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _replaceSurrogates(value: dict[str, Any]) -> None:
    """
    Replace every lone surrogate in the keys and strings of C{value}, in place, with U+FFFD
    (Go's decoder does so).  Iterative: the value may be nested as deep as the decoder went.
    """
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(_SURROGATE.search(key) for key in item):
                pairs = list(item.items())
                item.clear()
                duplicates = list(getattr(item, "duplicates", ()))
                for key, member in pairs:
                    key = _SURROGATE.sub("\ufffd", key)
                    if key in item and key not in duplicates:
                        duplicates.append(key)
                    item[key] = member
                if isinstance(item, _Object):
                    item.duplicates = tuple(duplicates)
            for key, member in item.items():
                if isinstance(member, str):
                    item[key] = _SURROGATE.sub("\ufffd", member)
                elif isinstance(member, dict | list):
                    stack.append(member)
        elif isinstance(item, list):
            for index, member in enumerate(item):
                if isinstance(member, str):
                    item[index] = _SURROGATE.sub("\ufffd", member)
                elif isinstance(member, dict | list):
                    stack.append(member)


def bodyField(body: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """
    Go's case-insensitive field matching: the last key equal to C{name} ignoring case wins.
    """
    found, value = False, None
    for key, item in body.items():
        if key.lower() == name:
            found, value = True, item
    return found, value


def tooLong(text: str) -> bool:
    return len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES


def _isText(text: str) -> bool:
    """
    Whether C{text} is valid Unicode text (no lone surrogate): what can be stored and sent.
    L{decodeBody} never gives anything else; a caller passing its own values might.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def requireObject(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(INVALID_BODY)
    return body


def urlOf(body: object) -> str:
    found, url = bodyField(requireObject(body), "url")
    if not found or url is None or url == "":
        raise InvalidRequest(INVALID_BODY)
    if not isinstance(url, str):
        raise InvalidRequest(INVALID_BODY)
    return url


@frozen
class Patch:
    """
    A validated PATCH body; C{None} means "not given".
    """

    alias: str | None
    action: str | None
    restart: bool | None
    meta: dict[str, Any] | None


def validatePatch(body: object) -> Patch:
    """
    Check a whole PATCH body (§8.4, §6.3) without changing anything.
    """
    body = requireObject(body)
    _, alias = bodyField(body, "alias")
    _, action = bodyField(body, "action")
    restartGiven, restart = bodyField(body, "restart")
    _, meta = bodyField(body, "meta")
    if alias is not None and not (isinstance(alias, str) and _isText(alias)):
        raise InvalidRequest(INVALID_BODY)
    if action is not None and not isinstance(action, str):
        raise InvalidRequest(INVALID_BODY)
    if restart is not None and not isinstance(restart, bool):
        raise InvalidRequest(INVALID_BODY)
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidRequest(INVALID_BODY)
    if alias and tooLong(alias):
        raise InvalidRequest(ALIAS_TOO_LONG)
    if action and action not in ACTIONS:
        raise InvalidRequest(invalidAction(action))
    return Patch(
        alias=alias or None,
        action=action or None,
        restart=restart if restartGiven else None,
        meta=validateMeta(meta) if meta is not None else None,
    )


def validateMeta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """
    Validate the C{meta} part; return C{{"peer": dict | None, "tags": dict | None}} where
    C{None} means "leave unchanged".
    """
    _, peer = bodyField(meta, "peer")
    _, tags = bodyField(meta, "tags")
    if peer is not None and not isinstance(peer, Mapping):
        raise InvalidRequest(INVALID_BODY)
    if tags is not None and not isinstance(tags, Mapping):
        raise InvalidRequest(INVALID_BODY)
    newPeer: dict[str, str] | None = None
    if peer:  # §6.3 DEVIATION: {} leaves the peer unchanged, as the reference promises
        newPeer = {}
        for name in ("sid", "type", "alias"):
            _, value = bodyField(peer, name)
            if value is None:
                value = ""
            if not isinstance(value, str) or not _isText(value):
                raise InvalidRequest(INVALID_BODY)
            if tooLong(value):
                raise InvalidRequest(peerFieldTooLong(name))
            newPeer[name] = value
    newTags: dict[str, str] | None = None
    if tags is not None:
        for key, value in tags.items():
            if not isinstance(value, str) or not _isText(value) or not _isText(key):
                raise InvalidRequest(INVALID_BODY)
            if tooLong(key):
                raise InvalidRequest(TAG_KEY_TOO_LONG)
            if tooLong(value):
                raise InvalidRequest(TAG_VALUE_TOO_LONG)
        for key in getattr(tags, "duplicates", ()):
            raise InvalidRequest(duplicateTag(key))
        newTags = dict(tags)
        if len(newTags) > MAX_TAGS:
            raise InvalidRequest(META_TOO_LARGE)
    result = {"peer": newPeer, "tags": newTags}
    probe = {"peer": newPeer or {}, "tags": newTags or {}}
    if len(json.dumps(probe, ensure_ascii=False).encode("utf-8")) > MAX_META_BYTES:
        raise InvalidRequest(META_TOO_LARGE)
    return result


def mergedMeta(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    peer = patch["peer"] if patch["peer"] is not None else dict(current["peer"])
    tags = patch["tags"] if patch["tags"] is not None else dict(current["tags"])
    return {"peer": peer, "tags": tags}


# -- webhooks (P/webhooks) ---------------------------------------------------------------------


@frozen
class WebhookRequest:
    """
    A validated webhook body (C{POST} or C{PATCH P/webhooks...}); C{None} means "not given".

    @ivar events: the kinds asked for, without repeats, in the canonical order of
        L{nodepass.master.messages.WEBHOOK_EVENTS}.
    @ivar secret: the HMAC key as given; C{""} asks for unsigned deliveries.
    """

    url: str | None
    events: tuple[str, ...] | None
    secret: str | None = attrs.field(repr=False)


def webhookURLProblem(url: str) -> str | None:
    """
    Why C{url} cannot receive webhooks (one of the exact texts), or C{None} if it can: an
    C{http} or C{https} URL with a host, a valid port if any, and no spaces or control
    characters.
    """
    try:
        size = len(url.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return WEBHOOK_URL_INVALID
    if size > MAX_WEBHOOK_URL_BYTES:
        return WEBHOOK_URL_TOO_LONG
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return WEBHOOK_URL_INVALID
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        return WEBHOOK_URL_INVALID
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return WEBHOOK_URL_INVALID
    return None


def _webhookEvents(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(WEBHOOK_EVENTS_INVALID)
    for item in value:
        if not isinstance(item, str):
            raise InvalidRequest(WEBHOOK_EVENTS_INVALID)
        if item not in WEBHOOK_EVENTS:
            raise InvalidRequest(unknownWebhookEvent(item[:64]))
    return tuple(kind for kind in WEBHOOK_EVENTS if kind in value)


def validateWebhook(body: object, creating: bool) -> WebhookRequest:
    """
    Check a webhook body without changing anything.  Fields are matched ignoring case (as
    everywhere in this API); other fields are ignored.

    @param creating: C{POST}: C{url} and C{events} are required.  Otherwise (C{PATCH}) every
        field is optional and a null one is "not given".
    @raise InvalidRequest: the body is not an object, or a field is wrong (the first
        problem, in the order url, events, secret).
    """
    body = requireObject(body)
    _, url = bodyField(body, "url")
    _, events = bodyField(body, "events")
    _, secret = bodyField(body, "secret")
    if url is None or url == "":
        if creating:
            raise InvalidRequest(WEBHOOK_URL_REQUIRED)
        url = None
    elif not isinstance(url, str):
        raise InvalidRequest(WEBHOOK_URL_INVALID)
    else:
        problem = webhookURLProblem(url)
        if problem is not None:
            raise InvalidRequest(problem)
    if events is None:
        if creating:
            raise InvalidRequest(WEBHOOK_EVENTS_INVALID)
        kinds = None
    else:
        kinds = _webhookEvents(events)
    if secret is not None:
        if not isinstance(secret, str):
            raise InvalidRequest(WEBHOOK_SECRET_INVALID)
        try:
            size = len(secret.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: no bytes to sign with
            raise InvalidRequest(WEBHOOK_SECRET_INVALID) from None
        if size > MAX_WEBHOOK_SECRET_BYTES:
            raise InvalidRequest(WEBHOOK_SECRET_TOO_LONG)
    elif creating:
        secret = ""
    return WebhookRequest(url=url, events=kinds, secret=secret)
