"""Tests for L{nodepass.master.openapi}: the OpenAPI document and the docs page."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from nodepass.master import openapi
from nodepass.master.openapi import (
    DOCS_STATIC_FILES,
    apiPrefix,
    docsPage,
    document,
    documentJSON,
    staticDirectory,
)

VERSION = "v1.14.0"

# Route table of spec §3: path relative to P, and the methods each path handles.
ROUTES = {
    "/instances": {"get", "post"},
    "/instances/{id}": {"get", "patch", "put", "delete"},
    "/events": {"get"},
    "/info": {"get", "post"},
    "/tcping": {"get"},
    "/openapi.json": {"get"},
    "/docs": {"get"},
    "/instances/{id}/connections": {"get"},
    "/instances/{id}/connections/{cid}": {"delete"},
    "/metrics": {"get"},
    "/health": {"get"},
    "/ready": {"get"},
    "/webhooks": {"get", "post"},
    "/webhooks/{id}": {"get", "patch", "delete"},
    "/webhooks/{id}/deliveries": {"get"},
    "/dashboard/": {"get"},
    "/dashboard/session": {"get", "post", "delete"},
}
PUBLIC = {"/openapi.json", "/docs", "/health", "/ready", "/dashboard/"}
#: Public in dispatch (no key or cookie asked for), the key checked at sign-in.
SESSION = {"/dashboard/session"}
#: Public in dispatch, but checking the key (or a bearer token) itself.
OWN_SECURITY = {"/metrics"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Spec §6.1, in order: field -> (JSON type, format or None).
INSTANCE_FIELDS = [
    ("id", "string", None),
    ("alias", "string", None),
    ("type", "string", None),
    ("status", "string", None),
    ("url", "string", None),
    ("config", "string", None),
    ("restart", "boolean", None),
    ("meta", "Meta", None),
    ("mode", "integer", "int32"),
    ("ping", "integer", "int32"),
    ("pool", "integer", "int32"),
    ("tcps", "integer", "int32"),
    ("udps", "integer", "int32"),
    ("tcprx", "integer", "int64"),
    ("tcptx", "integer", "int64"),
    ("udprx", "integer", "int64"),
    ("udptx", "integer", "int64"),
]

# Spec §8.8 / §18 b6.
INFO_STRINGS = {"mid", "alias", "os", "arch", "ver", "name", "log", "tls", "crt", "key"}
INFO_INTEGERS = {
    "cpu",
    "mem_total",
    "mem_used",
    "swap_total",
    "swap_used",
    "netrx",
    "nettx",
    "diskr",
    "diskw",
    "sysup",
    "uptime",
}

# Status codes each operation can answer (spec §4, §5, §8), 405 aside (path-level); every
# operation can also get 408 (request deadline) and every protected one 503 (starting,
# shutting down, or a change that cannot be saved).
_PROTECTED = {"408", "429", "503"}
STATUSES = {
    ("/instances", "get"): {"200", "401"} | _PROTECTED,
    ("/instances", "post"): {"201", "400", "401", "409", "413"} | _PROTECTED,
    ("/instances/{id}", "get"): {"200", "400", "401", "404"} | _PROTECTED,
    ("/instances/{id}", "patch"): {"200", "400", "401", "404", "413"} | _PROTECTED,
    ("/instances/{id}", "put"): {"200", "400", "401", "403", "404", "409", "413"} | _PROTECTED,
    ("/instances/{id}", "delete"): {"204", "400", "401", "403", "404"} | _PROTECTED,
    ("/events", "get"): {"200", "401"} | _PROTECTED,
    ("/info", "get"): {"200", "401"} | _PROTECTED,
    ("/info", "post"): {"200", "400", "401", "413"} | _PROTECTED,
    ("/tcping", "get"): {"200", "400", "401"} | _PROTECTED,
    ("/openapi.json", "get"): {"200", "408"},
    ("/docs", "get"): {"200", "408"},
    ("/instances/{id}/connections", "get"): {"200", "401", "404", "501"} | _PROTECTED,
    ("/instances/{id}/connections/{cid}", "delete"): {"204", "401", "404", "501"} | _PROTECTED,
    ("/metrics", "get"): {"200", "401", "408", "429"},
    ("/health", "get"): {"200", "408", "503"},
    ("/ready", "get"): {"200", "408", "503"},
    ("/webhooks", "get"): {"200", "401"} | _PROTECTED,
    ("/webhooks", "post"): {"201", "400", "401", "409", "413"} | _PROTECTED,
    ("/webhooks/{id}", "get"): {"200", "401", "404"} | _PROTECTED,
    ("/webhooks/{id}", "patch"): {"200", "400", "401", "404", "413"} | _PROTECTED,
    ("/webhooks/{id}", "delete"): {"204", "401", "404"} | _PROTECTED,
    ("/webhooks/{id}/deliveries", "get"): {"200", "401", "404"} | _PROTECTED,
    ("/dashboard/", "get"): {"200", "408"},
    ("/dashboard/session", "post"): {"200", "400", "401", "429"} | _PROTECTED,
    ("/dashboard/session", "get"): {"200", "401", "408", "503"},
    ("/dashboard/session", "delete"): {"204", "403", "408", "503"},
}

# Error messages of spec §5 and §8 that must be documented, by operation and status.
MESSAGES = {
    ("/instances", "post", "400"): [
        "Invalid request body",
        "Invalid URL format",
        "Invalid URL scheme",
        "Instance alias exceeds maximum length 256",
    ],
    ("/instances", "post", "409"): ["Instance ID already exists"],
    ("/instances/{id}", "get", "400"): ["Instance ID is required"],
    ("/instances/{id}", "get", "404"): ["Instance not found"],
    ("/instances/{id}", "patch", "400"): [
        "Instance ID is required",
        "Instance alias exceeds maximum length 256",
        "Meta peer.sid exceeds maximum length 256",
        "Meta peer.type exceeds maximum length 256",
        "Meta peer.alias exceeds maximum length 256",
        "Meta tag key exceeds maximum length 256",
        "Meta tag value exceeds maximum length 256",
    ],
    ("/instances/{id}", "put", "400"): [
        "Instance ID is required",
        "Invalid request body",
        "Invalid URL format",
        "Invalid URL scheme",
    ],
    ("/instances/{id}", "put", "403"): ["Forbidden: API Key"],
    ("/instances/{id}", "put", "409"): ["Instance URL conflict"],
    ("/instances/{id}", "delete", "403"): ["Forbidden: API Key"],
    ("/instances/{id}", "delete", "404"): ["Instance not found"],
    ("/info", "post", "400"): [
        "Invalid request body",
        "Master alias exceeds maximum length 256",
    ],
    ("/tcping", "get", "400"): ["Target address required"],
    ("/webhooks", "post", "400"): [
        "Invalid request body",
        "Webhook URL required",
        "Invalid webhook URL: expected http:// or https:// and a host",
        "Webhook URL exceeds maximum length 2048",
        "Webhook events must be a non-empty list of: create, update, delete, status, master",
        "Unknown webhook event: log",
        "Webhook secret must be a string",
        "Webhook secret exceeds maximum length 1024",
    ],
    ("/webhooks", "post", "409"): ["Webhook limit reached (32)"],
    ("/webhooks/{id}", "patch", "400"): [
        "Invalid webhook URL: expected http:// or https:// and a host",
        "Unknown webhook event: log",
    ],
    ("/webhooks/{id}", "get", "404"): ["Webhook not found"],
    ("/webhooks/{id}", "patch", "404"): ["Webhook not found"],
    ("/webhooks/{id}", "delete", "404"): ["Webhook not found"],
    ("/webhooks/{id}/deliveries", "get", "404"): ["Webhook not found"],
    ("/dashboard/session", "post", "401"): [
        "Unauthorized: API key required",
        "Unauthorized: Invalid API key",
    ],
    ("/dashboard/session", "post", "429"): ["Too many failed sign-ins; try again later"],
    ("/dashboard/session", "get", "401"): ["Unauthorized: no session"],
    ("/dashboard/session", "delete", "403"): ["Forbidden: missing or invalid CSRF token"],
    ("/info", "get", "401"): [
        "Unauthorized: API key required",
        "Unauthorized: Invalid API key",
    ],
}


@pytest.fixture
def doc() -> dict[str, Any]:
    return document("/api", VERSION)


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local C{$ref}s until a concrete node."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/")
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = doc["components"]["schemas"][name]
    return result


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


def errorMessages(doc: dict[str, Any], response: dict[str, Any]) -> list[str]:
    media = response["content"]["application/json"]
    return [example["value"]["error"] for example in media.get("examples", {}).values()]


class TestValidity:
    @pytest.mark.parametrize("prefix", ["/api", "", "/a/b", "/with space/ü"])
    def test_validSpec(self, prefix: str) -> None:
        validator = pytest.importorskip("openapi_spec_validator")
        validator.validate(document(prefix, VERSION))

    def test_validWithServerURL(self) -> None:
        validator = pytest.importorskip("openapi_spec_validator")
        validator.validate(document("/api", VERSION, "https://master.example:9090"))

    def test_openapi31(self, doc: dict[str, Any]) -> None:
        assert doc["openapi"].startswith("3.1.")
        assert doc["info"]["version"] == "v1"
        assert doc["info"]["title"] == "NodePass API"
        assert VERSION in doc["info"]["description"]

    def test_allRefsResolve(self, doc: dict[str, Any]) -> None:
        refs: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("$ref"), str):
                    refs.append(node["$ref"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(doc)
        assert refs
        for ref in refs:
            resolve(doc, {"$ref": ref})

    def test_examplesMatchSchemas(self, doc: dict[str, Any]) -> None:
        """Every request and error example validates against its schema."""
        jsonschema = pytest.importorskip("jsonschema")
        for _, _, op in operations(doc):
            media = []
            if "requestBody" in op:
                media.append(op["requestBody"]["content"]["application/json"])
            for response in op["responses"].values():
                if "application/json" in response.get("content", {}):
                    media.append(response["content"]["application/json"])
            for m in media:
                target = {**resolve(doc, m["schema"]), "components": doc["components"]}
                for example in m.get("examples", {}).values():
                    jsonschema.validate(example["value"], target)


class TestPrefix:
    @pytest.mark.parametrize(
        ("prefix", "expected"),
        [("/api", "/api/v1"), ("", "/v1"), ("/a/b", "/a/b/v1"), ("/api/v1", "/api/v1/v1")],
    )
    def test_server(self, prefix: str, expected: str) -> None:
        assert apiPrefix(prefix) == expected
        assert document(prefix, VERSION)["servers"][0]["url"] == expected

    def test_encoded(self) -> None:
        url = document("/my api/ü", VERSION)["servers"][0]["url"]
        assert url == "/my%20api/%C3%BC/v1"

    def test_serverURL(self) -> None:
        url = document("/api", VERSION, "https://h:9090/")["servers"][0]["url"]
        assert url == "https://h:9090/api/v1"
        again = document("/api", VERSION, "https://h:9090/api/v1")["servers"][0]["url"]
        assert again == "https://h:9090/api/v1"

    def test_pathsRelative(self, doc: dict[str, Any]) -> None:
        """Paths are relative to the server URL, so they never repeat the prefix."""
        assert all(not path.startswith("/api") for path in doc["paths"])


class TestRoutes:
    def test_everyRoute(self, doc: dict[str, Any]) -> None:
        assert set(doc["paths"]) == set(ROUTES)
        for path, methods in ROUTES.items():
            present = set(doc["paths"][path]) & HTTP_METHODS
            assert present == methods, path

    def test_security(self, doc: dict[str, Any]) -> None:
        scheme = doc["components"]["securitySchemes"]["ApiKeyAuth"]
        assert scheme["type"] == "apiKey"
        assert scheme["in"] == "header"
        assert scheme["name"] == "X-API-Key"
        cookie = doc["components"]["securitySchemes"]["SessionCookie"]
        assert (cookie["type"], cookie["in"], cookie["name"]) == ("apiKey", "cookie", "np_session")
        assert doc["security"] == [{"ApiKeyAuth": []}, {"SessionCookie": []}]
        for path, _, op in operations(doc):
            if path in PUBLIC or path in SESSION:
                assert op["security"] == []
            elif path in OWN_SECURITY:
                assert op["security"] == [
                    {"ApiKeyAuth": []},
                    {"BearerAuth": []},
                    {"SessionCookie": []},
                ]
            else:
                assert "security" not in op

    def test_statusCodes(self, doc: dict[str, Any]) -> None:
        found = {(path, method): set(op["responses"]) for path, method, op in operations(doc)}
        assert found == STATUSES

    def test_errorsUseErrorSchema(self, doc: dict[str, Any]) -> None:
        for path, method, op in operations(doc):
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    media = response["content"]["application/json"]
                    assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (
                        path,
                        method,
                        status,
                    )

    def test_errorMessages(self, doc: dict[str, Any]) -> None:
        for (path, method, status), messages in MESSAGES.items():
            response = doc["paths"][path][method]["responses"][status]
            documented = errorMessages(doc, response)
            for message in messages:
                assert message in documented, (path, method, status, message)

    def test_unauthorizedEverywhere(self, doc: dict[str, Any]) -> None:
        for path, _, op in operations(doc):
            if path not in SESSION:  # its statuses are listed one by one in STATUSES
                assert ("401" in op["responses"]) == (path not in PUBLIC), path

    def test_methodNotAllowedDocumented(self, doc: dict[str, Any]) -> None:
        response = doc["components"]["responses"]["MethodNotAllowed"]
        assert errorMessages(doc, response) == ["Method not allowed"]
        for path in ROUTES:
            if path not in PUBLIC:
                assert "405" in doc["paths"][path]["description"]
        assert "405" in doc["info"]["description"]

    def test_successBodies(self, doc: dict[str, Any]) -> None:
        paths = doc["paths"]

        def body(path: str, method: str, status: str) -> dict[str, Any]:
            result: dict[str, Any] = paths[path][method]["responses"][status]["content"]
            return result

        listing = body("/instances", "get", "200")["application/json"]["schema"]
        assert listing == {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}}
        for path, method, status in [
            ("/instances", "post", "201"),
            ("/instances/{id}", "get", "200"),
            ("/instances/{id}", "patch", "200"),
            ("/instances/{id}", "put", "200"),
        ]:
            media = body(path, method, status)["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Instance"}
        assert "content" not in paths["/instances/{id}"]["delete"]["responses"]["204"]
        for method in ("get", "post"):
            media = body("/info", method, "200")["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/MasterInfo"}
        tcping = body("/tcping", "get", "200")["application/json"]["schema"]
        assert tcping == {"$ref": "#/components/schemas/TCPingResult"}
        assert set(body("/events", "get", "200")) == {"text/event-stream"}
        assert set(body("/docs", "get", "200")) == {"text/html"}
        assert set(body("/openapi.json", "get", "200")) == {"application/json"}

    def test_requestBodies(self, doc: dict[str, Any]) -> None:
        paths = doc["paths"]
        expected = {
            ("/instances", "post"): "CreateInstanceRequest",
            ("/instances/{id}", "patch"): "UpdateInstanceRequest",
            ("/instances/{id}", "put"): "PutInstanceRequest",
            ("/info", "post"): "UpdateMasterAliasRequest",
            ("/webhooks", "post"): "CreateWebhookRequest",
            ("/webhooks/{id}", "patch"): "UpdateWebhookRequest",
            ("/dashboard/session", "post"): "SessionRequest",
        }
        for path, method, op in operations(doc):
            name = expected.get((path, method))
            if name is None:
                assert "requestBody" not in op, (path, method)
            else:
                media = op["requestBody"]["content"]["application/json"]
                assert media["schema"] == {"$ref": f"#/components/schemas/{name}"}
        target = paths["/tcping"]["get"]["parameters"]
        assert [(p["name"], p["in"], p["required"]) for p in target] == [("target", "query", True)]
        idParam = paths["/instances/{id}"]["parameters"]
        assert [(p["name"], p["in"], p["required"]) for p in idParam] == [("id", "path", True)]

    def test_operationIdsUnique(self, doc: dict[str, Any]) -> None:
        ids = [op["operationId"] for _, _, op in operations(doc)]
        assert len(ids) == len(set(ids))


class TestSchemas:
    def test_instanceFields(self, doc: dict[str, Any]) -> None:
        instance = schema(doc, "Instance")
        props = instance["properties"]
        assert list(props) == [name for name, _, _ in INSTANCE_FIELDS]
        assert instance["required"] == list(props)
        assert instance["additionalProperties"] is False
        for name, kind, fmt in INSTANCE_FIELDS:
            prop = props[name]
            if kind == "Meta":
                assert prop == {"$ref": "#/components/schemas/Meta"}
                continue
            assert prop["type"] == kind, name
            assert prop.get("format") == fmt, name
            if fmt is not None:
                assert prop["minimum"] == 0, name

    def test_instanceEnums(self, doc: dict[str, Any]) -> None:
        props = schema(doc, "Instance")["properties"]
        assert set(props["type"]["enum"]) == {"server", "client", ""}
        assert set(props["status"]["enum"]) == {"running", "stopped", "error", ""}

    def test_meta(self, doc: dict[str, Any]) -> None:
        meta = schema(doc, "Meta")
        assert meta["required"] == ["peer", "tags"]
        assert meta["properties"]["peer"] == {"$ref": "#/components/schemas/Peer"}
        tags = meta["properties"]["tags"]
        assert tags["type"] == "object"
        assert tags["additionalProperties"] == {"type": "string"}
        peer = schema(doc, "Peer")
        assert list(peer["properties"]) == ["sid", "type", "alias"]
        assert peer["required"] == ["sid", "type", "alias"]
        assert all(p["type"] == "string" for p in peer["properties"].values())

    def test_instanceExampleValidates(self, doc: dict[str, Any]) -> None:
        """The pseudo-instance as spec §6.1 shows it matches the schema."""
        jsonschema = pytest.importorskip("jsonschema")
        pseudo = json.loads(
            '{"id":"********","alias":"","type":"","status":"","url":"","config":'
            '"0123456789abcdef","restart":false,"meta":{"peer":{"sid":"","type":"",'
            '"alias":""},"tags":{}},"mode":0,"ping":0,"pool":0,"tcps":0,"udps":0,'
            '"tcprx":0,"tcptx":0,"udprx":0,"udptx":0}'
        )
        target = {**schema(doc, "Instance"), "components": doc["components"]}
        jsonschema.validate(pseudo, target)
        pseudo["tcprx"] = "0"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(pseudo, target)

    def test_error(self, doc: dict[str, Any]) -> None:
        error = schema(doc, "Error")
        assert error["properties"] == {"error": error["properties"]["error"]}
        assert error["properties"]["error"]["type"] == "string"
        assert error["required"] == ["error"]

    def test_patchBody(self, doc: dict[str, Any]) -> None:
        patch = schema(doc, "UpdateInstanceRequest")
        props = patch["properties"]
        assert set(props) == {"action", "alias", "restart", "meta"}
        assert "required" not in patch
        assert set(props["action"]["enum"]) == {"start", "stop", "restart", "reset"}
        assert props["restart"]["type"] == "boolean"
        assert props["alias"]["type"] == "string"
        metaUpdate = resolve(doc, props["meta"])
        assert set(metaUpdate["properties"]) == {"peer", "tags"}
        peer = resolve(doc, metaUpdate["properties"]["peer"]["oneOf"][0])
        assert set(peer["properties"]) == {"sid", "type", "alias"}
        for value in peer["properties"].values():
            assert value["type"] == ["string", "null"]
        examples = doc["paths"]["/instances/{id}"]["patch"]["requestBody"]["content"][
            "application/json"
        ]["examples"]
        actions = {e["value"].get("action") for e in examples.values()}
        assert {"start", "stop", "restart", "reset"} <= actions

    def test_putAndCreateBodies(self, doc: dict[str, Any]) -> None:
        put = schema(doc, "PutInstanceRequest")
        assert put["required"] == ["url"]
        assert put["properties"]["url"]["type"] == "string"
        create = schema(doc, "CreateInstanceRequest")
        assert create["required"] == ["url"]
        assert set(create["properties"]) == {"url", "alias"}

    def test_masterInfo(self, doc: dict[str, Any]) -> None:
        info = schema(doc, "MasterInfo")
        props = info["properties"]
        assert set(props) == INFO_STRINGS | INFO_INTEGERS
        assert set(info["required"]) == set(props)
        for name in INFO_STRINGS:
            assert props[name]["type"] == "string", name
        for name in INFO_INTEGERS:
            assert props[name]["type"] == "integer", name
            assert props[name]["format"] == "int64", name
        assert props["cpu"]["minimum"] == -1
        assert set(props["tls"]["enum"]) == {"0", "1", "2"}
        alias = schema(doc, "UpdateMasterAliasRequest")
        assert set(alias["properties"]) == {"alias"}

    def test_tcping(self, doc: dict[str, Any]) -> None:
        result = schema(doc, "TCPingResult")
        props = result["properties"]
        assert list(props) == ["target", "connected", "latency", "error"]
        assert props["target"]["type"] == "string"
        assert props["connected"]["type"] == "boolean"
        assert (props["latency"]["type"], props["latency"]["format"]) == ("integer", "int64")
        assert props["error"]["type"] == ["string", "null"]

    def test_event(self, doc: dict[str, Any]) -> None:
        event = schema(doc, "InstanceEvent")
        props = event["properties"]
        assert list(props) == ["type", "time", "instance", "logs"]
        assert set(props["type"]["enum"]) == {
            "initial",
            "create",
            "update",
            "delete",
            "log",
            "shutdown",
        }
        assert props["logs"]["type"] == "string"


class TestJSON:
    def test_deterministic(self) -> None:
        first = documentJSON("/api", VERSION)
        assert first == documentJSON("/api", VERSION)
        assert isinstance(first, bytes)

    def test_compactUTF8(self) -> None:
        raw = documentJSON("/ü", VERSION)
        decoded = json.loads(raw.decode("utf-8"))
        assert decoded == document("/ü", VERSION)
        compact = json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))
        assert raw == compact.encode("utf-8")
        assert not raw.endswith(b"\n")

    def test_fresh(self) -> None:
        """Callers get their own copy to change."""
        first = document("/api", VERSION)
        first["paths"].clear()
        first["components"]["schemas"]["Instance"]["properties"].clear()
        assert document("/api", VERSION)["paths"]
        assert documentJSON("/api", VERSION) == documentJSON("/api", VERSION)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._inScript = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action") and value is not None:
                self.urls.append(value)
        self._inScript = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._inScript = False

    def handle_data(self, data: str) -> None:
        if self._inScript:
            self.scripts.append(data)


def links(page: bytes) -> _Links:
    parser = _Links()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser


def assertLocal(page: bytes) -> None:
    text = page.decode("utf-8")
    assert re.search(r"https?:", text, re.IGNORECASE) is None
    assert "//" not in text.replace("://", "")  # no protocol-relative URLs
    for url in links(page).urls:
        assert url.startswith("/") and not url.startswith("//"), url


class TestDocsPage:
    @pytest.mark.parametrize("swaggerUI", [True, False])
    def test_localOnly(self, swaggerUI: bool) -> None:
        for prefix in ("/api", "", "/a/b"):
            assertLocal(docsPage(prefix, swaggerUI=swaggerUI))

    def test_swaggerAssets(self) -> None:
        page = docsPage("/api", swaggerUI=True)
        found = links(page)
        assert sorted(found.urls) == sorted(f"/api/v1/docs/static/{n}" for n in DOCS_STATIC_FILES)
        script = "".join(found.scripts)
        assert '"/api/v1/openapi.json"' in script
        assert "validatorUrl: null" in script
        assert b"<title>NodePass API</title>" in page

    def test_plainPage(self) -> None:
        page = docsPage("/admin", swaggerUI=False)
        found = links(page)
        assert found.urls == ["/admin/v1/openapi.json", "/admin/v1/openapi.json"]
        assert '"/admin/v1/openapi.json"' in "".join(found.scripts)
        assert b"static" not in page

    @pytest.mark.parametrize("swaggerUI", [True, False])
    def test_hostilePrefix(self, swaggerUI: bool) -> None:
        """A prefix cannot break out of attributes or scripts."""
        page = docsPage('/x"></script><script>alert(1)</script>&', swaggerUI=swaggerUI)
        text = page.decode("utf-8")
        assert "alert(1)</script>" not in text
        assert text.count("<script") == text.count("</script>")
        assertLocal(page)

    def test_default(self) -> None:
        expected = docsPage("/api", swaggerUI=staticDirectory() is not None)
        assert docsPage("/api") == expected


class TestStaticDirectory:
    def test_bundle(self) -> None:
        directory = staticDirectory()
        if directory is None:
            pytest.skip("no Swagger UI 5 bundle installed")
        for name in DOCS_STATIC_FILES:
            assert os.path.isfile(os.path.join(directory, name))

    def test_missingModule(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(name: str) -> Any:
            raise ImportError(name)

        monkeypatch.setattr(openapi.importlib, "import_module", fail)
        assert staticDirectory() is None
        assert b"static" not in docsPage("/api")

    @pytest.mark.parametrize(
        ("dirname", "usable"), [("swagger-ui-4.15.5", False), ("swagger-ui-5.31.0", True)]
    )
    def test_version(
        self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, dirname: str, usable: bool
    ) -> None:
        """Swagger UI 4 cannot show OpenAPI 3.1, so only 5 and later are used."""
        bundle = tmp_path / dirname
        bundle.mkdir()
        for name in DOCS_STATIC_FILES:
            (bundle / name).write_text("x")

        class Module:
            swagger_ui_path = bundle

        monkeypatch.setattr(openapi.importlib, "import_module", lambda name: Module)
        assert staticDirectory() == (str(bundle) if usable else None)
        (bundle / DOCS_STATIC_FILES[0]).unlink()
        assert staticDirectory() is None


class TestWebhooks:
    def test_secretNeverShown(self, doc: dict[str, Any]) -> None:
        assert "secret" not in schema(doc, "Webhook")["properties"]
        for name in ("CreateWebhookRequest", "UpdateWebhookRequest"):
            assert schema(doc, name)["properties"]["secret"]["writeOnly"] is True
        assert schema(doc, "CreateWebhookRequest")["required"] == ["url", "events"]

    def test_eventKinds(self, doc: dict[str, Any]) -> None:
        kinds = schema(doc, "Webhook")["properties"]["events"]["items"]["enum"]
        assert kinds == ["create", "update", "delete", "status", "master"]

    def test_outgoing(self, doc: dict[str, Any]) -> None:
        post = doc["webhooks"]["nodepassEvent"]["post"]
        media = post["requestBody"]["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/WebhookEvent"}
        headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
        assert headers == {"X-NodePass-Signature", "X-NodePass-Event"}

    def test_shapesValidate(self, doc: dict[str, Any]) -> None:
        """
        What the code answers and sends validates against the documented schemas.
        """
        jsonschema = pytest.importorskip("jsonschema")
        from nodepass.master.store import StoredWebhook
        from nodepass.master.views import (
            deliveryObject,
            instanceObject,
            webhookEvent,
            webhookObject,
        )

        def check(value: Any, name: str) -> None:
            jsonschema.validate(value, {**schema(doc, name), "components": doc["components"]})

        hook = StoredWebhook("0badc0de", "https://h.example/x", ("status",), "s", 1765000000.5)
        check(webhookObject(hook, 2, 1), "Webhook")
        check(
            deliveryObject("status", 1765000000.5, 1, None, "no answer within 10 s", 10),
            "WebhookDelivery",
        )
        check(deliveryObject("master", 1765000000.5, 2, 204, None, 0.01), "WebhookDelivery")
        item = instanceObject(
            "1a2b3c4d", "", "client", "running", "client://h:1/t:2", "", True, None
        )
        check(webhookEvent("status", 1765000000.5, instance=item), "WebhookEvent")
        master = {"id": "0011223344556677", "alias": "", "action": "key"}
        check(webhookEvent("master", 1765000000.5, master=master), "WebhookEvent")
