"""
The master's API description: C{P/openapi.json} and the C{P/docs} page (spec §8.10).

L{document} builds an OpenAPI 3.1 document from plain data structures.  It describes every
route of the route table (§3) relative to the server URL C{P = <prefix>/v1}, the
C{X-API-Key} header scheme (§5), the instance object (§6.1), each request body, and, for
every operation, each status code the handlers can answer with, the error messages of §8
given as examples of the C{{"error": …}} body.

Two things cannot be expressed per operation and are described once, in C{info.description}
and in each path's description: every protected route answers C{OPTIONS} with 200 and no
authentication (CORS preflight, §4.1), and a method the path does not handle gets 405
C{{"error":"Method not allowed"}} (after authentication).

L{docsPage} renders the C{P/docs} page.  When a Swagger UI 5 bundle is installed (the
C{swagger_ui_bundle} module, shipped by the C{swagger-ui-bundle-v2} distribution), the page
loads it from C{P/docs/static/}, which the application serves from L{staticDirectory}.  Swagger
UI 4 (the older C{swagger-ui-bundle} distribution) cannot render OpenAPI 3.1, so it is not
used.  Without a usable bundle the page is a small self-contained table of the routes, filled
in from C{openapi.json} by a few lines of inline script.  Either way the page loads nothing
from another host (unlike Go, §17 a22), so it works offline.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import re
from typing import Any
from urllib.parse import quote

from nodepass.master.messages import (
    ALIAS_TOO_LONG,
    BODY_TOO_LARGE,
    CONNECTION_NOT_FOUND,
    FORBIDDEN_KEY,
    ID_EXISTS,
    ID_REQUIRED,
    INVALID_BODY,
    INVALID_URL_FORMAT,
    INVALID_URL_SCHEME,
    KEY_INVALID,
    KEY_REQUIRED,
    MASTER_ALIAS_TOO_LONG,
    META_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    SHUTTING_DOWN,
    STARTING,
    TAG_KEY_TOO_LONG,
    TAG_VALUE_TOO_LONG,
    TARGET_REQUIRED,
    TOO_MANY_REQUESTS,
    URL_CONFLICT,
    WEBHOOK_EVENTS,
    WEBHOOK_EVENTS_INVALID,
    WEBHOOK_LIMIT,
    WEBHOOK_LIMIT_REACHED,
    WEBHOOK_NOT_FOUND,
    WEBHOOK_SECRET_INVALID,
    WEBHOOK_SECRET_TOO_LONG,
    WEBHOOK_URL_INVALID,
    WEBHOOK_URL_REQUIRED,
    WEBHOOK_URL_TOO_LONG,
    duplicateTag,
    invalidAction,
    peerFieldTooLong,
    unknownWebhookEvent,
)
from nodepass.master.sessions import CSRF_REFUSED, NO_SESSION, TOO_MANY_SIGN_INS
from nodepass.master.supervisor import UNAVAILABLE_ISOLATED

__all__ = [
    "DOCS_STATIC_FILES",
    "OPENAPI_VERSION",
    "apiPrefix",
    "docsPage",
    "document",
    "documentJSON",
    "staticDirectory",
]

#: The OpenAPI version the document declares.
OPENAPI_VERSION = "3.1.1"

#: The version of the API itself (the C{v1} in the route prefix), as C{info.version}.
API_VERSION = "v1"

#: Files of the Swagger UI bundle that the docs page loads from C{P/docs/static/}.
DOCS_STATIC_FILES = ("swagger-ui.css", "swagger-ui-bundle.js")

_KEY_SCHEME = "ApiKeyAuth"
_BEARER_SCHEME = "BearerAuth"
_COOKIE_SCHEME = "SessionCookie"
_REF = "#/components/schemas/"
_JSON = "application/json"

# Characters that may stay literal in a URL path (RFC 3986 pchar plus "/").
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


def apiPrefix(prefix: str) -> str:
    """
    Return the route prefix C{P} for a C{prefix} (the part before C{/v1}, §2).

    @param prefix: the decoded path prefix, already normalised (C{"/api"}, C{"/a/b"} or
        C{""}).
    @return: C{prefix + "/v1"}.
    """
    return prefix + "/" + API_VERSION


def _encodedPrefix(prefix: str) -> str:
    # The prefix is a decoded path: percent-encode what may not appear in a URL.
    return quote(apiPrefix(prefix), safe=_PATH_SAFE)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _int(fmt: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "format": fmt, "description": description, **extra}


def _counter(description: str) -> dict[str, Any]:
    return _int("int64", description, minimum=0)


def _object(
    properties: dict[str, Any],
    description: str,
    required: bool = True,
    closed: bool = True,
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description}
    schema["properties"] = properties
    if required:
        schema["required"] = list(properties)
    if closed:
        schema["additionalProperties"] = False
    return schema


_LIMIT = "At most 256 bytes of UTF-8."


def _schemas() -> dict[str, Any]:
    peer = _object(
        {
            "sid": _string("Peer service identifier, chosen by the client."),
            "type": _string("Peer type, free text (dashboards use digits such as `0`-`7`)."),
            "alias": _string("Peer display name."),
        },
        "The peer an instance belongs to. Always an object with these three strings.",
    )
    meta = _object(
        {
            "peer": _ref("Peer"),
            "tags": {
                "type": "object",
                "description": "Free-form labels, name to value. Never null; `{}` when empty.",
                "additionalProperties": {"type": "string"},
            },
        },
        "Client-owned metadata, stored and returned verbatim.",
    )
    instance = _object(
        {
            "id": _string(
                "Eight lowercase hex characters. `********` is the reserved record that "
                "holds the master's API key, alias and ID.",
                examples=["1a2b3c4d"],
            ),
            "alias": _string("Display name; empty when unset. Always present."),
            "type": _string(
                "The URL scheme of the tunnel; empty for the `********` record.",
                enum=["server", "client", ""],
            ),
            "status": _string(
                "Process state; empty for the `********` record. `error` means the child "
                "could not be spawned, exited abnormally, reported an error or went silent.",
                enum=["running", "stopped", "error", ""],
            ),
            "url": _string(
                "The tunnel URL passed to the child process, with the master's `log` and "
                "(for servers) TLS settings added and the query keys sorted. For the "
                "`********` record: in a direct answer, the API key the request was "
                "authenticated with (the new key in the answer to a key regeneration); "
                "empty in event streams."
            ),
            "config": _string(
                "The tunnel URL with every default made explicit, query keys sorted. For "
                "the `********` record: the master ID."
            ),
            "restart": {
                "type": "boolean",
                "description": "Whether the instance is started when the master boots. "
                "`true` for new instances; `false` for the `********` record.",
            },
            "meta": _ref("Meta"),
            "mode": _int("int32", "Last mode reported by the child.", minimum=0),
            "ping": _int("int32", "Last reported round-trip latency, milliseconds.", minimum=0),
            "pool": _int("int32", "Last reported number of pooled connections.", minimum=0),
            "tcps": _int("int32", "Open TCP connections.", minimum=0),
            "udps": _int("int32", "Active UDP sessions.", minimum=0),
            "tcprx": _counter("TCP bytes received, cumulative across restarts."),
            "tcptx": _counter("TCP bytes sent, cumulative across restarts."),
            "udprx": _counter("UDP bytes received, cumulative across restarts."),
            "udptx": _counter("UDP bytes sent, cumulative across restarts."),
        },
        "A tunnel instance managed by the master. All fields are always present.",
    )
    error = _object(
        {"error": _string("What went wrong, in English.")},
        "The body of every 4xx response that has one.",
    )
    create = _object(
        {
            "url": _string(
                "`server://…` or `client://…` tunnel URL (scheme case-insensitive).",
                minLength=1,
                examples=["server://0.0.0.0:10101/127.0.0.1:8080"],
            ),
            "alias": _string("Optional display name. " + _LIMIT, maxLength=256),
        },
        "Body of `POST /instances`. Other fields are ignored.",
        closed=False,
    )
    create["required"] = ["url"]
    peerUpdate = _object(
        {
            "sid": {"type": ["string", "null"], "maxLength": 256},
            "type": {"type": ["string", "null"], "maxLength": 256},
            "alias": {"type": ["string", "null"], "maxLength": 256},
        },
        "Replaces the stored peer. Missing or null fields become empty strings; an object "
        "with no fields leaves the peer unchanged. " + _LIMIT,
        required=False,
        closed=False,
    )
    metaUpdate = _object(
        {
            "peer": {"oneOf": [_ref("PeerUpdate"), {"type": "null"}]},
            "tags": {
                "type": ["object", "null"],
                "description": "Replaces the whole tag map (`{}` clears it). Keys and "
                "values: " + _LIMIT + " Duplicate keys are rejected.",
                "additionalProperties": {"type": "string", "maxLength": 256},
            },
        },
        "Metadata change. A part that is absent or null is left as it is.",
        required=False,
        closed=False,
    )
    patch = _object(
        {
            "action": _string(
                "`start` (only from `stopped`), `stop`, `restart` (stop if needed, then "
                "start) or `reset` (zero the traffic counters). Start, stop and restart run "
                "in the background: the response shows the state from before the action "
                "and the outcome arrives on `/events`. On `********`, `restart` replaces "
                "the API key.",
                enum=["start", "stop", "restart", "reset"],
            ),
            "alias": _string(
                "New display name; an empty string means 'not given'. " + _LIMIT,
                maxLength=256,
            ),
            "restart": {"type": "boolean", "description": "Start at master boot or not."},
            "meta": _ref("MetaUpdate"),
        },
        "Body of `PATCH /instances/{id}`. Every field is optional and they combine; the "
        "whole request is validated before anything is applied. An empty body changes "
        "nothing.",
        required=False,
        closed=False,
    )
    put = _object(
        {
            "url": _string(
                "The new tunnel URL; the scheme may change the instance type.",
                minLength=1,
                examples=["client://server.example:10101/127.0.0.1:8080"],
            )
        },
        "Body of `PUT /instances/{id}`.",
        closed=False,
    )
    info = _object(
        {
            "mid": _string("Master ID: 16 lowercase hex characters, fixed for life."),
            "alias": _string("Master display name."),
            "os": _string("Operating system, Go naming.", examples=["linux"]),
            "arch": _string("CPU architecture, Go naming.", examples=["amd64", "arm64"]),
            "cpu": _int(
                "int64",
                "CPU busy percentage over the last sample; -1 when unknown.",
                minimum=-1,
                maximum=100,
            ),
            "mem_total": _counter("Physical memory, bytes."),
            "mem_used": _counter("Memory in use (total minus available), bytes."),
            "swap_total": _counter("Swap size, bytes."),
            "swap_used": _counter("Swap in use, bytes."),
            "netrx": _counter("Bytes received on physical network interfaces."),
            "nettx": _counter("Bytes sent on physical network interfaces."),
            "diskr": _counter("Bytes read from disks."),
            "diskw": _counter("Bytes written to disks."),
            "sysup": _counter("System uptime, seconds."),
            "ver": _string("NodePass version.", examples=["v1.14.0"]),
            "name": _string("Host part of the master URL (or the TLS server name)."),
            "uptime": _counter("Master uptime, seconds."),
            "log": _string("The `log` setting of the master URL, as given."),
            "tls": _string("Effective API TLS mode.", enum=["0", "1", "2"]),
            "crt": _string("The `crt` setting of the master URL, as given."),
            "key": _string("The `key` setting of the master URL, as given."),
        },
        "Master information and host figures. System figures are 0 (and `cpu` -1) on "
        "systems other than Linux.",
    )
    aliasRequest = _object(
        {"alias": _string("New master alias; empty or absent clears it. " + _LIMIT)},
        "Body of `POST /info`.",
        required=False,
        closed=False,
    )
    tcping = _object(
        {
            "target": _string("The probed address, as given."),
            "connected": {"type": "boolean", "description": "Whether the TCP connect worked."},
            "latency": _int(
                "int64", "Whole milliseconds to connect, DNS included; 0 on failure.", minimum=0
            ),
            "error": {
                "type": ["string", "null"],
                "description": "Null on success, otherwise why the probe failed "
                "(`too many requests` when all probe slots stay busy for a second).",
            },
        },
        "Result of a TCP reachability probe.",
    )
    event = _object(
        {
            "type": _string(
                "Event kind.", enum=["initial", "create", "update", "delete", "log", "shutdown"]
            ),
            "time": _string("When the event was produced (RFC 3339).", format="date-time"),
            "instance": {
                "oneOf": [_ref("Instance"), {"type": "null"}],
                "description": "The instance concerned; null for `shutdown`.",
            },
            "logs": _string("The output line for `log` events; empty otherwise."),
        },
        "The JSON carried by each `data:` line of `/events`.",
    )
    return {
        "Instance": instance,
        "Meta": meta,
        "Peer": peer,
        "Error": error,
        "CreateInstanceRequest": create,
        "UpdateInstanceRequest": patch,
        "MetaUpdate": metaUpdate,
        "PeerUpdate": peerUpdate,
        "PutInstanceRequest": put,
        "MasterInfo": info,
        "UpdateMasterAliasRequest": aliasRequest,
        "TCPingResult": tcping,
        "InstanceEvent": event,
        "Health": _healthSchema(),
        **_webhookSchemas(),
        **_dashboardSchemas(),
        "Ready": _object(
            {"status": _string("Readiness.", enum=["ready", "starting", "stopping"])},
            "The answer of `/ready`.",
        ),
    }


_EVENT_KINDS = {
    "type": "array",
    "description": "The event kinds delivered: `create`, `update`, `delete` (the instance "
    "events of `/events`), `status` (an instance's status changed; not on every "
    "checkpoint), `master` (the master started, is shutting down, its alias changed or "
    "its API key was regenerated).",
    "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
    "minItems": 1,
    "uniqueItems": True,
}


def _webhookSchemas() -> dict[str, Any]:
    url = _string(
        "Where events are posted: `http://` or `https://` with a host. At most 2048 bytes.",
        format="uri",
        examples=["https://hooks.example/nodepass"],
    )
    secret = _string(
        "The HMAC-SHA256 key of the `X-NodePass-Signature` header, stored as given and "
        "never returned. Empty or absent: deliveries are not signed. At most 1024 bytes.",
        writeOnly=True,
    )
    webhook = _object(
        {
            "id": _string("Eight lowercase hex characters.", examples=["0badc0de"]),
            "url": url,
            "events": _EVENT_KINDS,
            "created": _string("When it was created (RFC 3339).", format="date-time"),
            "signed": {
                "type": "boolean",
                "description": "Whether deliveries carry a signature (a secret is set). "
                "The secret itself is never shown.",
            },
            "queued": {
                "type": "integer",
                "minimum": 0,
                "description": "Events waiting, the one being delivered included (at most "
                "1,000 wait).",
            },
            "dropped": {
                "type": "integer",
                "minimum": 0,
                "description": "Events dropped since the master started because the queue "
                "was full (the oldest go first).",
            },
        },
        "A webhook subscription.",
    )
    create = _object(
        {"url": url, "events": _EVENT_KINDS, "secret": secret},
        "Body of `POST /webhooks`: `url` and `events` are required. Field names match "
        "ignoring case; other fields are ignored.",
        required=False,
        closed=False,
    )
    create["required"] = ["url", "events"]
    update = _object(
        {"url": url, "events": _EVENT_KINDS, "secret": secret},
        "Body of `PATCH /webhooks/{id}`: any of the fields; absent or null leaves one "
        "unchanged, an empty `secret` stops signing.",
        required=False,
        closed=False,
    )
    nullableStatus = {
        "type": ["integer", "null"],
        "description": "The receiver's HTTP status; null when no answer came.",
    }
    delivery = _object(
        {
            "event": _string("The event kind.", enum=list(WEBHOOK_EVENTS)),
            "time": _string("When the attempt began (RFC 3339).", format="date-time"),
            "attempt": {
                "type": "integer",
                "minimum": 1,
                "description": "1 for the first try of an event, up to 5.",
            },
            "status": nullableStatus,
            "error": {
                "type": ["string", "null"],
                "description": "Null on success (a 2xx answer); otherwise `HTTP <status>`, "
                "`no answer within 10 s`, or why the connection failed.",
            },
            "duration": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds from the start of the attempt to its outcome.",
            },
        },
        "One delivery attempt.",
    )
    payload = _object(
        {
            "event": _string("The event kind.", enum=list(WEBHOOK_EVENTS)),
            "time": _string("When the event happened (RFC 3339).", format="date-time"),
            "instance": _ref("Instance"),
            "master": _object(
                {
                    "id": _string("The master ID (`/info.mid`)."),
                    "alias": _string("The master alias."),
                    "action": _string("What happened.", enum=["start", "shutdown", "alias", "key"]),
                },
                "The master, for `master` events. Never the API key.",
            ),
        },
        "What a receiver gets: `instance` for instance events (never the `********` "
        "record), `master` for `master` events.",
        required=False,
    )
    payload["required"] = ["event", "time"]
    return {
        "Webhook": webhook,
        "CreateWebhookRequest": create,
        "UpdateWebhookRequest": update,
        "WebhookDelivery": delivery,
        "WebhookEvent": payload,
    }


def _check(description: str, **properties: Any) -> dict[str, Any]:
    return _object(
        {"status": _string("`ok`, or `fail` when this check fails.", enum=["ok", "fail"])}
        | properties,
        description,
        required=False,
    )


def _healthSchema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return _object(
        {
            "status": _string("`ok` when every check passes.", enum=["ok", "degraded"]),
            "checks": _object(
                {
                    "store": _check(
                        "The state directory takes a write now.", writable={"type": "boolean"}
                    ),
                    "instances": _check(
                        "Instances by status; `failing` counts those with `restart=true` in "
                        "`error`.",
                        total=count,
                        running=count,
                        stopped=count,
                        error=count,
                        failing=count,
                    ),
                    "hosts": _check(
                        "Instance hosts (`mode` `hosted`) or one process per instance "
                        "(`isolated`); fails while an instance waits for a host or a dead "
                        "host is being replaced.",
                        mode=_string("How instances run.", enum=["hosted", "isolated"]),
                        alive=count,
                        limit=count,
                        instances=count,
                        waiting=count,
                        replacing={"type": "boolean"},
                    ),
                },
                "One entry per check.",
            ),
        },
        "The answer of `/health`: counts and yes/no answers, nothing secret.",
    )


def _jsonResponse(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errorResponse(description: str, *messages: str) -> dict[str, Any]:
    """
    A 4xx response with the error schema and one named example per message.
    """
    media: dict[str, Any] = {"schema": _ref("Error")}
    if messages:
        media["examples"] = {
            re.sub(r"[^A-Za-z0-9]+", "-", message).strip("-"): {"value": {"error": message}}
            for message in messages
        }
    return {"description": description, "content": {_JSON: media}}


_UNAUTHORIZED = _errorResponse(
    "The `X-API-Key` header is missing, empty or wrong.",
    KEY_REQUIRED,
    KEY_INVALID,
)
_TOO_LARGE = _errorResponse("The request body is too large.", BODY_TOO_LARGE)
_THROTTLED = _errorResponse(
    "Too many wrong API keys from this address lately: it is refused for a while (see "
    "`Retry-After`), whatever key it sends.",
    TOO_MANY_REQUESTS,
)
_TIMEOUT = _errorResponse(
    "The request (headers and body) did not arrive whole within 30 s; the connection is closed.",
    REQUEST_TIMEOUT,
)
_UNAVAILABLE = _errorResponse(
    "The master is starting or shutting down, or the change cannot be saved (a full disk, "
    "say); nothing changed.",
    STARTING,
    SHUTTING_DOWN,
)
_ID_REQUIRED = ID_REQUIRED
_NOT_FOUND = _errorResponse("No instance has this id.", NOT_FOUND)
_FORBIDDEN = _errorResponse("The `********` record cannot be replaced or deleted.", FORBIDDEN_KEY)
_ALIAS_TOO_LONG = ALIAS_TOO_LONG
_URL_ERRORS = (INVALID_BODY, INVALID_URL_FORMAT, INVALID_URL_SCHEME)


def _body(schema: str, description: str, **examples: Any) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"required": True, "description": description, "content": {_JSON: media}}


def _operation(
    operationId: str,
    summary: str,
    description: str,
    tag: str,
    responses: dict[str, Any],
    requestBody: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operationId,
        "summary": summary,
        "description": description,
        "tags": [tag],
    }
    if public:
        op["security"] = []
    if requestBody is not None:
        op["requestBody"] = requestBody
    responses = {"408": _TIMEOUT, **responses}
    if not public:
        responses = {**responses, "401": _UNAUTHORIZED, "429": _THROTTLED, "503": _UNAVAILABLE}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _methodsNote(methods: str) -> str:
    return (
        f"Handles {methods}. `OPTIONS` answers 200 without authentication (CORS preflight); "
        "any other method answers 405 `Method not allowed` once the key is accepted."
    )


def _paths() -> dict[str, Any]:
    instance = _jsonResponse("The instance.", _ref("Instance"))
    idParameter = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "Instance id (percent-decoded; everything after `/instances/`). "
        "`********` is the record holding the API key.",
        "schema": {"type": "string"},
    }
    return {
        "/instances": {
            "description": _methodsNote("`GET` and `POST`"),
            "get": _operation(
                "listInstances",
                "List instances",
                "Every instance, the `********` record first (its `url` is the caller's key).",
                "instances",
                {
                    "200": _jsonResponse(
                        "All instances.", {"type": "array", "items": _ref("Instance")}
                    )
                },
            ),
            "post": _operation(
                "createInstance",
                "Create an instance",
                "Stores a new instance and starts it in the background. Subscribers of "
                "`/events` get a `create` event, then an `update` once the child is "
                "spawned (or failed).",
                "instances",
                {
                    "201": _jsonResponse("The new instance.", _ref("Instance")),
                    "400": _errorResponse("The request is invalid.", *_URL_ERRORS, _ALIAS_TOO_LONG),
                    "409": _errorResponse("No free instance id could be allocated.", ID_EXISTS),
                    "413": _TOO_LARGE,
                },
                _body(
                    "CreateInstanceRequest",
                    "The tunnel URL and an optional alias.",
                    server={"url": "server://0.0.0.0:10101/127.0.0.1:8080", "alias": "web"},
                    client={"url": "client://server.example:10101/127.0.0.1:8080"},
                ),
            ),
        },
        "/instances/{id}": {
            "description": _methodsNote("`GET`, `PATCH`, `PUT` and `DELETE`")
            + " An empty id answers 400 and an unknown id 404 before the method is checked.",
            "parameters": [idParameter],
            "get": _operation(
                "getInstance",
                "Get an instance",
                "One instance. For `********` the `url` is empty.",
                "instances",
                {
                    "200": instance,
                    "400": _errorResponse("The id is empty.", _ID_REQUIRED),
                    "404": _NOT_FOUND,
                },
            ),
            "patch": _operation(
                "updateInstance",
                "Change an instance or run an action",
                "Applies any combination of alias, action, restart flag and metadata, all "
                'or nothing. On `********`, only `{"action": "restart"}` does something: '
                "it replaces the API key (the old key stops working at once, the response "
                "carries the new key in `url`, and every event stream is closed); anything "
                "else is ignored.",
                "instances",
                {
                    "200": _jsonResponse(
                        "The instance after the change (before any background action completes).",
                        _ref("Instance"),
                    ),
                    "400": _errorResponse(
                        "The id is empty or the request is invalid.",
                        _ID_REQUIRED,
                        INVALID_BODY,
                        invalidAction("pause"),
                        _ALIAS_TOO_LONG,
                        peerFieldTooLong("sid"),
                        peerFieldTooLong("type"),
                        peerFieldTooLong("alias"),
                        TAG_KEY_TOO_LONG,
                        TAG_VALUE_TOO_LONG,
                        duplicateTag("region"),
                        META_TOO_LARGE,
                    ),
                    "404": _NOT_FOUND,
                    "413": _TOO_LARGE,
                },
                _body(
                    "UpdateInstanceRequest",
                    "What to change. Fields may be combined.",
                    start={"action": "start"},
                    stop={"action": "stop"},
                    restart={"action": "restart"},
                    reset={"action": "reset"},
                    alias={"alias": "web"},
                    restartFlag={"restart": False},
                    tags={"meta": {"tags": {"region": "eu"}}},
                    peer={"meta": {"peer": {"sid": "42", "type": "1", "alias": "edge"}}},
                ),
            ),
            "put": _operation(
                "replaceInstanceURL",
                "Replace the tunnel URL",
                "Stops the instance if needed, stores the new URL (the type follows the "
                "scheme), and starts it in the background, even if it was stopped before.",
                "instances",
                {
                    "200": _jsonResponse(
                        "The instance with its new URL (normally still `stopped`).",
                        _ref("Instance"),
                    ),
                    "400": _errorResponse(
                        "The id is empty or the request is invalid.", _ID_REQUIRED, *_URL_ERRORS
                    ),
                    "403": _FORBIDDEN,
                    "404": _NOT_FOUND,
                    "409": _errorResponse(
                        "The new URL is the same as the current one.", URL_CONFLICT
                    ),
                    "413": _TOO_LARGE,
                },
                _body(
                    "PutInstanceRequest",
                    "The new URL.",
                    url={"url": "server://0.0.0.0:10102/127.0.0.1:8081"},
                ),
            ),
            "delete": _operation(
                "deleteInstance",
                "Delete an instance",
                "Stops the instance if it runs, removes it, and announces a `delete` event.",
                "instances",
                {
                    "204": {"description": "Deleted. No body."},
                    "400": _errorResponse("The id is empty.", _ID_REQUIRED),
                    "403": _FORBIDDEN,
                    "404": _NOT_FOUND,
                },
            ),
        },
        "/events": {
            "description": _methodsNote("`GET`"),
            "get": _operation(
                "streamEvents",
                "Stream instance events",
                "A Server-Sent Events stream. It opens with `retry: 3000`, then one "
                "`initial` event per instance (the `********` record included), then one "
                "event per change for as long as the connection lives. Every block is "
                "`event: instance` followed by a single `data:` line holding an "
                "`InstanceEvent` JSON object; there are no `id:` lines. A bare "
                "`retry: 3000` block is repeated as a keepalive. A `shutdown` event "
                "(instance null) precedes the server closing the stream.",
                "events",
                {
                    "200": {
                        "description": "The event stream.",
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "description": "SSE blocks whose `data:` lines are "
                                    "`InstanceEvent` objects.",
                                },
                                "example": 'retry: 3000\n\nevent: instance\ndata: {"type":'
                                '"initial","time":"2026-01-02T15:04:05.123456789Z",'
                                '"instance":{…},"logs":""}\n\n',
                            }
                        },
                    }
                },
            ),
        },
        "/info": {
            "description": _methodsNote("`GET` and `POST`"),
            "get": _operation(
                "getMasterInfo",
                "Master information",
                "Master settings and host figures. Takes about 100 ms when a fresh CPU "
                "sample is needed.",
                "master",
                {"200": _jsonResponse("Master information.", _ref("MasterInfo"))},
            ),
            "post": _operation(
                "setMasterAlias",
                "Set the master alias",
                "Stores the master alias and answers like `GET /info`.",
                "master",
                {
                    "200": _jsonResponse("Master information.", _ref("MasterInfo")),
                    "400": _errorResponse(
                        "The request is invalid.",
                        INVALID_BODY,
                        MASTER_ALIAS_TOO_LONG,
                    ),
                    "413": _TOO_LARGE,
                },
                _body("UpdateMasterAliasRequest", "The new alias.", alias={"alias": "edge-1"}),
            ),
        },
        "/tcping": {
            "description": _methodsNote("`GET`"),
            "get": _operation(
                "tcping",
                "Probe a TCP address",
                "Opens a TCP connection to `target` and closes it at once, without sending "
                "data. The outcome is always reported with status 200. The probe can reach "
                "any address the master can reach.",
                "master",
                {
                    "200": _jsonResponse("Probe result.", _ref("TCPingResult")),
                    "400": _errorResponse(
                        "The `target` parameter is missing or empty.", TARGET_REQUIRED
                    ),
                },
            )
            | {
                "parameters": [
                    {
                        "name": "target",
                        "in": "query",
                        "required": True,
                        "description": "`host:port`; IPv6 hosts in brackets (`[::1]:80`).",
                        "schema": {"type": "string"},
                        "allowReserved": True,
                    }
                ]
            },
        },
        **_webhookPaths(),
        **_connectionPaths(),
        **_dashboardPaths(),
        "/openapi.json": {
            "description": "Public. Answers every method except `OPTIONS` (preflight) with "
            "the document.",
            "get": _operation(
                "getOpenAPIDocument",
                "This document",
                "The OpenAPI description of this API. No key needed.",
                "documentation",
                {"200": _jsonResponse("The OpenAPI document.", {"type": "object"})},
                public=True,
            ),
        },
        "/metrics": {
            "description": "Also served at the root (`/metrics`), where Prometheus "
            "expects it. Handles `GET` and `HEAD`; `OPTIONS` answers 200 without "
            "authentication (CORS preflight); any other method answers 405 "
            "`Method not allowed`. `NP_METRICS_PUBLIC=1` serves it without the key.",
            "get": _operation(
                "getMetrics",
                "Prometheus metrics",
                "Instance figures (status, bytes, connections, pool, ping, restarts), API "
                "request counts and durations, event-stream subscribers and the build, in "
                "the Prometheus text format 0.0.4. The key is accepted as `X-API-Key` or as "
                "`Authorization: Bearer <key>`; labels never carry it.",
                "operations",
                {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "429": _THROTTLED,
                },
                public=True,
            )
            | {"security": [{_KEY_SCHEME: []}, {_BEARER_SCHEME: []}, {_COOKIE_SCHEME: []}]},
        },
        "/health": {
            "description": "Public. Also served at the root (`/health`). Handles `GET` and "
            "`HEAD`; any other method answers 405 `Method not allowed`.",
            "get": _operation(
                "getHealth",
                "Health",
                "Whether the master can do its job: the state directory takes a write, no "
                "instance that should run (`restart=true`) is in `error`, and no instance "
                "waits for an instance host. Counts only: nothing secret, no key needed.",
                "operations",
                {
                    "200": _jsonResponse("Healthy: every check is `ok`.", _ref("Health")),
                    "503": _jsonResponse("Degraded: a check failed.", _ref("Health")),
                },
                public=True,
            ),
        },
        "/ready": {
            "description": "Public, at the root only (`/ready`, not below the prefix). "
            "Handles `GET` and `HEAD`.",
            "servers": [{"url": "/", "description": "The master's root."}],
            "get": _operation(
                "getReady",
                "Readiness",
                "200 once the state is loaded and the API serves; 503 while the master "
                "starts or shuts down.",
                "operations",
                {
                    "200": _jsonResponse("Ready.", _ref("Ready")),
                    "503": _jsonResponse("Starting or stopping.", _ref("Ready")),
                },
                public=True,
            ),
        },
        "/docs": {
            "description": "Public. Answers every method except `OPTIONS` (preflight) with "
            "the page.",
            "get": _operation(
                "getDocsPage",
                "Interactive documentation",
                "An HTML page presenting this document, served entirely by the master.",
                "documentation",
                {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
            ),
        },
    }


_WEBHOOK_NOT_FOUND = _errorResponse("No webhook has this id.", WEBHOOK_NOT_FOUND)
_WEBHOOK_BODY_ERRORS = (
    INVALID_BODY,
    WEBHOOK_URL_INVALID,
    WEBHOOK_URL_TOO_LONG,
    WEBHOOK_EVENTS_INVALID,
    unknownWebhookEvent("log"),
    WEBHOOK_SECRET_INVALID,
    WEBHOOK_SECRET_TOO_LONG,
)


def _connectionPaths() -> dict[str, Any]:
    parameters = [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "description": "Instance id.",
            "schema": {"type": "string"},
        }
    ]
    connection = _object(
        {
            "id": _string("The connection's id within its instance."),
            "proto": _string("`tcp` (a relay) or `udp` (a flow).", enum=["tcp", "udp"]),
            "remote": _string("The user's address, `host:port`."),
            "target": _string("The target address, `host:port`."),
            "rx": {"type": "integer", "minimum": 0, "description": "Bytes from the user side."},
            "tx": {"type": "integer", "minimum": 0, "description": "Bytes to the user side."},
            "since": {"type": "number", "description": "When it opened (Unix time, seconds)."},
        },
        "One open connection of an instance.",
    )
    unsupported = _errorResponse(
        "The instance runs a foreign core (`NP_CORE_BIN`), which has no channel to list its "
        "connections.",
        UNAVAILABLE_ISOLATED,
    )
    return {
        "/instances/{id}/connections": {
            "description": _methodsNote("`GET`"),
            "parameters": parameters,
            "get": _operation(
                "listConnections",
                "Open connections of an instance",
                "Every open TCP relay and UDP flow of the instance, as it reports them now.",
                "instances",
                {
                    "200": _jsonResponse(
                        "The connections.", {"type": "array", "items": connection}
                    ),
                    "404": _NOT_FOUND,
                    "501": unsupported,
                },
            ),
        },
        "/instances/{id}/connections/{cid}": {
            "description": _methodsNote("`DELETE`"),
            "parameters": [
                *parameters,
                {
                    "name": "cid",
                    "in": "path",
                    "required": True,
                    "description": "Connection id, from the list.",
                    "schema": {"type": "string"},
                },
            ],
            "delete": _operation(
                "closeConnection",
                "Close one connection",
                "Closes it as a normal close: its user sees the connection end.",
                "instances",
                {
                    "204": {"description": "Closed."},
                    "404": _errorResponse(
                        "No such instance, or the connection is not open (any more).",
                        NOT_FOUND,
                        CONNECTION_NOT_FOUND,
                    ),
                    "501": unsupported,
                },
            ),
        },
    }


def _dashboardSchemas() -> dict[str, Any]:
    return {
        "SessionRequest": _object(
            {"key": _string("The master's API key.")},
            "A dashboard sign-in.",
            closed=False,
        ),
        "Session": _object(
            {
                "csrf": _string(
                    "The token every change made with the session cookie carries in `X-CSRF-Token`."
                ),
                "expires": _int("int64", "Seconds until the session ends.", minimum=0),
            },
            "A signed-in dashboard session (the cookie itself is HttpOnly).",
        ),
    }


_SESSION_COOKIE = (
    "`Set-Cookie: np_session=<token>; Path=<P>; Max-Age=28800; HttpOnly; SameSite=Strict` "
    "(and `Secure` when the master serves TLS)."
)
_CSRF_REFUSED = _errorResponse(
    "A change made with the session cookie lacks the session's `X-CSRF-Token`.",
    CSRF_REFUSED,
)


def _dashboardPaths() -> dict[str, Any]:
    session = _jsonResponse("The session.", _ref("Session"))
    return {
        "/dashboard/": {
            "description": "Public. The built-in dashboard (`GET /` redirects here with 302), "
            "and below it its files `app.css`, `app.js`, `logic.js` and `chart.js`. Handles "
            "`GET` and `HEAD`; any other method answers 405 `Method not allowed`. Every "
            "answer carries `Content-Security-Policy: default-src 'self'` (no inline "
            "script), `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.",
            "get": _operation(
                "getDashboard",
                "The dashboard",
                "The dashboard's page. It signs in with `/dashboard/session` and then uses "
                "the API with the session cookie.",
                "dashboard",
                {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
            ),
        },
        "/dashboard/session": {
            "description": "The dashboard's session. No `X-API-Key` here: `POST` checks the "
            "key in its body. A wrong or missing key answers 401, and after 5 failures "
            "within a minute from one address, sign-ins from it answer 429 with "
            "`Retry-After` until that minute has passed. Handles `GET`, `POST` and "
            "`DELETE`; any other method answers 405 `Method not allowed`. The session "
            "lasts 8 hours, ends when the API key is regenerated, and lives in the "
            "master's memory (a restart ends it).",
            "post": _operation(
                "signIn",
                "Sign in",
                "Checks the key and opens a session: the answer sets the cookie "
                + _SESSION_COOKIE
                + " Every protected route accepts that cookie instead of `X-API-Key`; a "
                "change (any method but `GET` and `HEAD`) made with it must carry the "
                "session's `csrf` token in `X-CSRF-Token`, or it answers 403. A session "
                "already carried by the request ends.",
                "dashboard",
                {
                    "200": session,
                    "400": _errorResponse("The body is not a JSON object.", INVALID_BODY),
                    "401": _UNAUTHORIZED,
                    "429": _errorResponse(
                        "Too many failed sign-ins from this address; see `Retry-After`.",
                        TOO_MANY_SIGN_INS,
                    ),
                    "503": _UNAVAILABLE,
                },
                requestBody=_body("SessionRequest", "The API key.", signIn={"key": "<key>"}),
                public=True,
            ),
            "get": _operation(
                "getSession",
                "The current session",
                "The CSRF token of the session the cookie names, so a reloaded page can "
                "go on without signing in again.",
                "dashboard",
                {
                    "200": session,
                    "401": _errorResponse("No live session.", NO_SESSION),
                    "503": _UNAVAILABLE,
                },
                public=True,
            ),
            "delete": _operation(
                "signOut",
                "Sign out",
                "Ends the session the cookie names (with its `X-CSRF-Token`) and clears "
                "the cookie; 204 also without a session.",
                "dashboard",
                {
                    "204": {"description": "Signed out; the cookie is cleared."},
                    "403": _CSRF_REFUSED,
                    "503": _UNAVAILABLE,
                },
                public=True,
            ),
        },
    }


def _webhookPaths() -> dict[str, Any]:
    webhook = _jsonResponse("The webhook (never its secret).", _ref("Webhook"))
    idParameter = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "Webhook id.",
        "schema": {"type": "string"},
    }
    return {
        "/webhooks": {
            "description": _methodsNote("`GET` and `POST`"),
            "get": _operation(
                "listWebhooks",
                "List webhooks",
                "Every webhook, in creation order.",
                "webhooks",
                {
                    "200": _jsonResponse(
                        "All webhooks.", {"type": "array", "items": _ref("Webhook")}
                    )
                },
            ),
            "post": _operation(
                "createWebhook",
                "Create a webhook",
                "Stores a webhook; from the next event on, each event of a kind it asks for "
                "is POSTed to its URL as a `WebhookEvent`, with `Content-Type: "
                "application/json`, `User-Agent: NodePass/<version>`, `X-NodePass-Event: "
                "<kind>` and, with a secret, `X-NodePass-Signature: sha256=<hex "
                "HMAC-SHA256(secret, body)>`. A 2xx answer within 10 s is a success; "
                "anything else is retried after 1, 2, 4 and 8 s (5 attempts, none later "
                "than 60 s after the first). One delivery at a time per webhook, in order; "
                f"at most 1,000 events wait (the oldest are dropped). At most {WEBHOOK_LIMIT} "
                "webhooks.",
                "webhooks",
                {
                    "201": _jsonResponse("The new webhook.", _ref("Webhook")),
                    "400": _errorResponse(
                        "The request is invalid.", WEBHOOK_URL_REQUIRED, *_WEBHOOK_BODY_ERRORS
                    ),
                    "409": _errorResponse(
                        "There are already as many webhooks as allowed.", WEBHOOK_LIMIT_REACHED
                    ),
                    "413": _TOO_LARGE,
                },
                _body(
                    "CreateWebhookRequest",
                    "The URL, the event kinds and an optional secret.",
                    status={
                        "url": "https://hooks.example/nodepass",
                        "events": ["status", "master"],
                        "secret": "a long random string",
                    },
                ),
            ),
        },
        "/webhooks/{id}": {
            "description": _methodsNote("`GET`, `PATCH` and `DELETE`")
            + " An unknown id answers 404 before the method is checked.",
            "parameters": [idParameter],
            "get": _operation(
                "getWebhook",
                "Get a webhook",
                "One webhook.",
                "webhooks",
                {"200": webhook, "404": _WEBHOOK_NOT_FOUND},
            ),
            "patch": _operation(
                "updateWebhook",
                "Change a webhook",
                "Changes any of `url`, `events` and `secret`, all or nothing. Events "
                "already waiting go to the new URL, signed with the new secret.",
                "webhooks",
                {
                    "200": webhook,
                    "400": _errorResponse("The request is invalid.", *_WEBHOOK_BODY_ERRORS),
                    "404": _WEBHOOK_NOT_FOUND,
                    "413": _TOO_LARGE,
                },
                _body(
                    "UpdateWebhookRequest",
                    "What to change.",
                    events={"events": ["create", "delete"]},
                    secret={"secret": "a new random string"},
                ),
            ),
            "delete": _operation(
                "deleteWebhook",
                "Delete a webhook",
                "Removes it; the events still waiting for it are dropped.",
                "webhooks",
                {"204": {"description": "Deleted. No body."}, "404": _WEBHOOK_NOT_FOUND},
            ),
        },
        "/webhooks/{id}/deliveries": {
            "description": _methodsNote("`GET`"),
            "parameters": [idParameter],
            "get": _operation(
                "listWebhookDeliveries",
                "Recent delivery attempts",
                "The last 100 attempts of this webhook, newest first (kept in memory, so "
                "empty after a master restart).",
                "webhooks",
                {
                    "200": _jsonResponse(
                        "The attempts.", {"type": "array", "items": _ref("WebhookDelivery")}
                    ),
                    "404": _WEBHOOK_NOT_FOUND,
                },
            ),
        },
    }


def _outgoingWebhooks() -> dict[str, Any]:
    """
    What the master sends to a webhook's URL (OpenAPI 3.1 C{webhooks}).
    """
    header = {"schema": {"type": "string"}}
    return {
        "nodepassEvent": {
            "post": {
                "operationId": "receiveNodePassEvent",
                "summary": "An event, as a webhook receives it",
                "description": "POSTed to the webhook's URL. Check `X-NodePass-Signature` "
                "against `sha256=` and the hex HMAC-SHA256 of the raw body under the "
                "secret, with a constant-time comparison.",
                "tags": ["webhooks"],
                "security": [],
                "parameters": [
                    {
                        "name": "X-NodePass-Signature",
                        "in": "header",
                        "required": False,
                        "description": "`sha256=<hex HMAC-SHA256(secret, body)>`; absent "
                        "for a webhook without a secret.",
                        **header,
                    },
                    {
                        "name": "X-NodePass-Event",
                        "in": "header",
                        "required": True,
                        "description": "The event kind.",
                        **header,
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("WebhookEvent")}},
                },
                "responses": {
                    "2XX": {"description": "Delivered."},
                    "default": {"description": "Not delivered: the attempt is retried."},
                },
            }
        }
    }


def _serverURL(prefix: str, serverURL: str | None) -> str:
    path = _encodedPrefix(prefix)
    if not serverURL:
        return path
    base = serverURL.rstrip("/")
    if base.endswith(path):
        return base
    return base + path


def document(prefix: str, version: str, serverURL: str | None = None) -> dict[str, Any]:
    """
    Build the OpenAPI 3.1 document of the master API.

    @param prefix: the path before C{/v1} (§2): C{"/api"}, C{"/a/b"} or C{""}.  Characters
        that may not appear in a URL are percent-encoded in C{servers}.
    @param version: the NodePass version the master reports (C{/info.ver}).  It goes into
        the description and C{info.x-nodepass-version}; C{info.version} is the API version,
        C{"v1"}.
    @param serverURL: an origin such as C{"https://host:9090"} to advertise an absolute
        server URL; by default the server URL is the path C{P} alone, which clients resolve
        against the address they fetched the document from.
    @return: a new JSON-compatible C{dict}; callers may change it freely.
    """
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "NodePass API",
            "version": API_VERSION,
            "x-nodepass-version": version,
            "summary": "Manage NodePass tunnel instances through a NodePass master.",
            "description": (
                f"Control plane of a NodePass master (NodePass {version}). Every route "
                "except `/openapi.json` and `/docs` needs the API key in the `X-API-Key` "
                "header, or the dashboard's session cookie (`/dashboard/session`; changes "
                "made with it carry `X-CSRF-Token`). `OPTIONS` on any route answers 200 without a key (CORS "
                "preflight). A method a route does not handle answers 405 "
                '`{"error":"Method not allowed"}` after authentication. Successful '
                "responses are bare JSON values (no envelope); errors are "
                '`{"error": "<message>"}`.'
            ),
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "servers": [
            {"url": _serverURL(prefix, serverURL), "description": "This master."},
        ],
        "security": [{_KEY_SCHEME: []}, {_COOKIE_SCHEME: []}],
        "tags": [
            {"name": "instances", "description": "Tunnel instances."},
            {"name": "events", "description": "Live instance events."},
            {"name": "master", "description": "The master itself."},
            {"name": "documentation", "description": "This description."},
            {"name": "operations", "description": "Metrics, health and readiness."},
            {"name": "webhooks", "description": "Signed HTTP callbacks on events."},
            {"name": "dashboard", "description": "The built-in web dashboard."},
        ],
        "paths": _paths(),
        "webhooks": _outgoingWebhooks(),
        "components": {
            "securitySchemes": {
                _KEY_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The master's API key (32 lowercase hex characters), "
                    "printed when it is created or regenerated.",
                },
                _BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key as a bearer token (`/metrics` only).",
                },
                _COOKIE_SCHEME: {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "np_session",
                    "description": "The dashboard's session cookie, set by "
                    "`POST /dashboard/session`. Changes made with it must carry the "
                    "session's token in `X-CSRF-Token` (403 otherwise). A request with "
                    "`X-API-Key` is judged by the key alone.",
                },
            },
            "schemas": _schemas(),
            "responses": {
                "MethodNotAllowed": _errorResponse(
                    "The route does not handle this method.", METHOD_NOT_ALLOWED
                )
            },
        },
    }


def documentJSON(prefix: str, version: str, serverURL: str | None = None) -> bytes:
    """
    L{document} as compact UTF-8 JSON, identical for identical arguments.
    """
    return json.dumps(
        document(prefix, version, serverURL), ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def _bundleDirectory() -> str | None:
    try:
        module = importlib.import_module("swagger_ui_bundle")
    except ImportError:
        return None
    path = getattr(module, "swagger_ui_path", None)
    if path is None:
        return None
    directory = str(path)
    match = re.search(r"swagger-ui-(\d+)\.", os.path.basename(directory))
    if match is None or int(match.group(1)) < 5:
        # Swagger UI before 5 cannot render OpenAPI 3.1.
        return None
    return directory


def staticDirectory() -> str | None:
    """
    Return the directory of the installed Swagger UI (5 or later) assets, or C{None}.

    The application serves it under C{P/docs/static/}; the page needs only
    L{DOCS_STATIC_FILES} from it.
    """
    directory = _bundleDirectory()
    if directory is None:
        return None
    for name in DOCS_STATIC_FILES:
        if not os.path.isfile(os.path.join(directory, name)):
            return None
    return directory


def _scriptString(value: str) -> str:
    # A JSON string literal that is also safe inside an HTML <script> element.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>NodePass API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
<style>body {{ margin: 0; }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: {specURL},
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  }});
}});
</script>
</body>
</html>
"""

_PLAIN_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>NodePass API</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
code {{ font-size: 0.95em; }}
</style>
</head>
<body>
<h1>NodePass API</h1>
<p>Base path <code>{base}</code>. Authenticate with the <code>X-API-Key</code> header.
The full description is <a href="{specHref}">openapi.json</a>.</p>
<table>
<thead><tr><th>Method</th><th>Path</th><th>Summary</th><th>Statuses</th></tr></thead>
<tbody id="routes"><tr><td colspan="4">Loading&hellip;</td></tr></tbody>
</table>
<noscript><p>Scripts are disabled: read <a href="{specHref}">openapi.json</a>.</p></noscript>
<script>
(function () {{
  var methods = ["get", "post", "put", "patch", "delete"];
  function cell(row, text) {{
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }}
  fetch({specURL}).then(function (response) {{
    if (!response.ok) {{ throw new Error("HTTP " + response.status); }}
    return response.json();
  }}).then(function (spec) {{
    var body = document.getElementById("routes");
    body.textContent = "";
    Object.keys(spec.paths).forEach(function (path) {{
      methods.forEach(function (method) {{
        var op = spec.paths[path][method];
        if (!op) {{ return; }}
        var row = document.createElement("tr");
        cell(row, method.toUpperCase());
        cell(row, path);
        cell(row, op.summary || "");
        cell(row, Object.keys(op.responses || {{}}).join(", "));
        body.appendChild(row);
      }});
    }});
  }}).catch(function (error) {{
    document.getElementById("routes").textContent = "Could not load the description: " + error;
  }});
}})();
</script>
</body>
</html>
"""


def docsPage(prefix: str, swaggerUI: bool | None = None) -> bytes:
    """
    Render the C{P/docs} page as UTF-8 HTML.

    Every URL in the page is an absolute path on the master itself: the document at
    C{P/openapi.json} and, with Swagger UI, the assets at C{P/docs/static/}.

    @param prefix: as for L{document}.
    @param swaggerUI: use the Swagger UI page (C{True}) or the plain table (C{False}); by
        default Swagger UI when L{staticDirectory} finds it.
    """
    if swaggerUI is None:
        swaggerUI = staticDirectory() is not None
    base = _encodedPrefix(prefix)
    spec = base + "/openapi.json"
    if swaggerUI:
        page = _SWAGGER_PAGE.format(
            static=html.escape(base + "/docs/static", quote=True),
            specURL=_scriptString(spec),
        )
    else:
        page = _PLAIN_PAGE.format(
            base=html.escape(base),
            specHref=html.escape(spec, quote=True),
            specURL=_scriptString(spec),
        )
    return page.encode("utf-8")
