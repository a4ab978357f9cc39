"""The master's exact error texts (master spec §4, §5, §8) and the domain errors that carry them.

Clients match these strings (NodePassDash and NodePanel show them, scripts compare them), so
each is written once, here.  A domain error says what went wrong, not how HTTP says it: the
one table that turns an error kind into a status code is L{nodepass.master.app.STATUS_OF}.
"""

from __future__ import annotations

from typing import Final

from nodepass.errors import NodePassError

__all__ = [
    "ALIAS_TOO_LONG",
    "BODY_TOO_LARGE",
    "CONNECTION_NOT_FOUND",
    "FORBIDDEN_KEY",
    "ID_EXISTS",
    "ID_REQUIRED",
    "INTERNAL_ERROR",
    "INVALID_BODY",
    "INVALID_URL_FORMAT",
    "INVALID_URL_SCHEME",
    "KEY_INVALID",
    "KEY_REQUIRED",
    "MASTER_ALIAS_TOO_LONG",
    "MAX_VALUE_BYTES",
    "MAX_WEBHOOK_SECRET_BYTES",
    "MAX_WEBHOOK_URL_BYTES",
    "META_TOO_LARGE",
    "METHOD_NOT_ALLOWED",
    "NOT_FOUND",
    "REQUEST_TIMEOUT",
    "SHUTTING_DOWN",
    "STARTING",
    "TAG_KEY_TOO_LONG",
    "TAG_VALUE_TOO_LONG",
    "TARGET_REQUIRED",
    "TOO_MANY_REQUESTS",
    "URL_CONFLICT",
    "WEBHOOK_EVENTS",
    "WEBHOOK_EVENTS_INVALID",
    "WEBHOOK_LIMIT",
    "WEBHOOK_LIMIT_REACHED",
    "WEBHOOK_NOT_FOUND",
    "WEBHOOK_SECRET_INVALID",
    "WEBHOOK_SECRET_TOO_LONG",
    "WEBHOOK_URL_INVALID",
    "WEBHOOK_URL_REQUIRED",
    "WEBHOOK_URL_TOO_LONG",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "RegistryError",
    "Unavailable",
    "Unsupported",
    "duplicateTag",
    "invalidAction",
    "peerFieldTooLong",
    "unknownWebhookEvent",
]

#: Longest alias, peer field, tag key or tag value, in UTF-8 bytes (§6.3, Go's maxValueLen).
MAX_VALUE_BYTES: Final = 256

# -- authentication (§5) -----------------------------------------------------------------------

KEY_REQUIRED: Final = "Unauthorized: API key required"
KEY_INVALID: Final = "Unauthorized: Invalid API key"

# -- requests (§4) -----------------------------------------------------------------------------

BODY_TOO_LARGE: Final = "Request body too large"
METHOD_NOT_ALLOWED: Final = "Method not allowed"
REQUEST_TIMEOUT: Final = "Request timeout"
TARGET_REQUIRED: Final = "Target address required"
STARTING: Final = "Master is starting"
TOO_MANY_REQUESTS: Final = "Too many wrong API keys from this address: retry later"
INTERNAL_ERROR: Final = "Internal server error"

# -- instances (§8) ----------------------------------------------------------------------------

INVALID_BODY: Final = "Invalid request body"
INVALID_URL_FORMAT: Final = "Invalid URL format"
INVALID_URL_SCHEME: Final = "Invalid URL scheme"
ID_EXISTS: Final = "Instance ID already exists"
ID_REQUIRED: Final = "Instance ID is required"
NOT_FOUND: Final = "Instance not found"
FORBIDDEN_KEY: Final = "Forbidden: API Key"
URL_CONFLICT: Final = "Instance URL conflict"
ALIAS_TOO_LONG: Final = f"Instance alias exceeds maximum length {MAX_VALUE_BYTES}"
MASTER_ALIAS_TOO_LONG: Final = f"Master alias exceeds maximum length {MAX_VALUE_BYTES}"
META_TOO_LARGE: Final = "Meta size exceeds limit"
TAG_KEY_TOO_LONG: Final = f"Meta tag key exceeds maximum length {MAX_VALUE_BYTES}"
TAG_VALUE_TOO_LONG: Final = f"Meta tag value exceeds maximum length {MAX_VALUE_BYTES}"
SHUTTING_DOWN: Final = "Master is shutting down"
CONNECTION_NOT_FOUND: Final = "Connection not found"


# -- webhooks ----------------------------------------------------------------------------------

#: The event kinds a webhook can ask for, in their canonical order.
WEBHOOK_EVENTS: Final = ("create", "update", "delete", "status", "master")

#: Most webhooks a master keeps (each has its own queue of at most 1,000 events).
WEBHOOK_LIMIT: Final = 32

#: Longest webhook URL and secret, in UTF-8 bytes.
MAX_WEBHOOK_URL_BYTES: Final = 2048
MAX_WEBHOOK_SECRET_BYTES: Final = 1024

WEBHOOK_NOT_FOUND: Final = "Webhook not found"
WEBHOOK_URL_REQUIRED: Final = "Webhook URL required"
WEBHOOK_URL_INVALID: Final = "Invalid webhook URL: expected http:// or https:// and a host"
WEBHOOK_URL_TOO_LONG: Final = f"Webhook URL exceeds maximum length {MAX_WEBHOOK_URL_BYTES}"
WEBHOOK_EVENTS_INVALID: Final = "Webhook events must be a non-empty list of: " + ", ".join(
    WEBHOOK_EVENTS
)
WEBHOOK_SECRET_INVALID: Final = "Webhook secret must be a string"
WEBHOOK_SECRET_TOO_LONG: Final = f"Webhook secret exceeds maximum length {MAX_WEBHOOK_SECRET_BYTES}"
WEBHOOK_LIMIT_REACHED: Final = f"Webhook limit reached ({WEBHOOK_LIMIT})"


def unknownWebhookEvent(name: str) -> str:
    return f"Unknown webhook event: {name}"


def invalidAction(action: str) -> str:
    return f"Invalid action: {action}"


def duplicateTag(key: str) -> str:
    return f"Duplicate meta tag key: {key}"


def peerFieldTooLong(name: str) -> str:
    return f"Meta peer.{name} exceeds maximum length {MAX_VALUE_BYTES}"


# -- the domain errors -------------------------------------------------------------------------


class RegistryError(NodePassError):
    """
    A request the registry refuses.  The app answers C{{"error": message}} with the status
    its table gives the error's kind (the subclasses below).

    @ivar message: the exact error text of the spec.
    @ivar detail: an optional one-line explanation for logs (never contains the key).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidRequest(RegistryError):
    """
    The request itself is wrong: its body, a field, the URL, a missing id.
    """


class Forbidden(RegistryError):
    """
    The request names something that cannot be changed that way (the key holder).
    """


class NotFound(RegistryError):
    """
    The instance does not exist.
    """


class Conflict(RegistryError):
    """
    The request collides with the current state (same URL, an id that is taken).
    """


class Unavailable(RegistryError):
    """
    The master cannot take changes now (it is shutting down).
    """


class Unsupported(RegistryError):
    """
    The request is valid but cannot be served for this instance (it runs where the master
    cannot reach inside it).
    """
