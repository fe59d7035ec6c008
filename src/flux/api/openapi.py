"""The OpenAPI 3.0 document (served at /openapi.json) and the Swagger UI page at /docs.

Written by hand next to the handlers, and checked against the routes by the tests, so that it
says exactly what the server does.
"""

from __future__ import annotations

from typing import Any

import orjson
import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from flux import __version__
from flux.config import SETTINGS

DOCS_STATIC: str = swagger_ui_bundle.swagger_ui_path


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Namespace name: 3 to 32 characters of `[a-z0-9-_]`.",
    "schema": {"type": "string"},
}


_CONNECTOR = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Connector name: github, gmail, linkedin or calendar.",
    "schema": {"type": "string"},
}


_SOURCE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The source's id (a UUID, from POST /api/connectors/generic).",
    "schema": {"type": "string"},
}


def _link(path: str, method: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to `method path`, its parameters taken from this exchange."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {
        "operationRef": f"#/paths/{pointer}/{method}",
        "parameters": parameters,
        "description": description,
    }


_NAMESPACE_LINKS = {
    name: _link(path, method, description, name="$response.body#/name")
    for name, path, method, description in (
        ("GetNamespace", "/api/namespaces/{name}", "get", "The namespace"),
        ("UpdateNamespace", "/api/namespaces/{name}", "put", "Change its visibility"),
        ("RotateToken", "/api/namespaces/{name}/token", "post", "Rotate its token"),
        ("DeleteNamespace", "/api/namespaces/{name}", "delete", "Delete it"),
    )
}

_BEARER: list[dict[str, list[str]]] = [
    {},
    {"bearer": []},
]  # a token is optional in the document; the rules say when


def _auth_errors(write: bool = True) -> dict[str, Any]:
    """The 401/403 answers of an endpoint that checks a namespace token (auth on)."""
    if write:
        return {
            "401": _error(
                "No token, a malformed one, one of no namespace, or an unregistered "
                "namespace (auth on)"
            ),
            "403": _error("Another namespace's token, or Flux's reserved `flux-core` namespace"),
        }
    return {
        "401": _error("A private namespace and no token, or one of no namespace"),
        "403": _error("A private namespace and another namespace's token"),
    }


_ENTITY_ID = {
    "name": "entity_id",
    "in": "path",
    "required": True,
    "description": "Entity id; a `/` in it may be sent raw or as `%2F`.",
    "schema": {"type": "string"},
}

_RUNTIME_TYPES: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer", "minimum": 1},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Event": {
        "type": "object",
        "required": ["stream", "source", "timestamp", "payload"],
        "properties": {
            "eventId": {
                "type": "string",
                "nullable": True,
                "description": "Kept when given (a repeat is acknowledged once and not applied "
                "twice); a UUIDv7 is generated when absent.",
            },
            "stream": {"type": "string", "pattern": "^[a-z0-9]+(\\.[a-z0-9]+)*$"},
            "source": {"type": "string", "minLength": 1},
            "timestamp": {
                "type": "integer",
                "format": "int64",
                "minimum": 1,
                "description": "Producer time, epoch milliseconds.",
            },
            "key": {"type": "string", "nullable": True},
            "schema": {"type": "string", "nullable": True},
            "payload": {
                "type": "object",
                "description": "State uses `entity_id` (string) and `properties` (object); "
                "`properties.__deleted__: true` deletes the entity. At most 128 levels deep "
                "(the payload object is level 1).",
                "properties": {
                    "entity_id": {
                        "nullable": True,
                        "description": "A string names the entity: at most "
                        "FLUX_MAX_ENTITY_ID_LENGTH characters (1024 by default; longer: 400). "
                        "Absent, null or not a string: the event is logged but changes no "
                        "state (with auth on: 400).",
                    },
                    "properties": {"type": "object", "additionalProperties": True},
                },
                "additionalProperties": True,
            },
        },
    },
    "EventAccepted": {
        "type": "object",
        "required": ["eventId", "stream", "sequence"],
        "properties": {
            "eventId": {"type": "string"},
            "stream": {"type": "string"},
            "sequence": {"type": "integer", "description": "Log sequence of the event."},
        },
    },
    "BatchRequest": {
        "oneOf": [
            {
                "type": "object",
                "required": ["events"],
                "properties": {"events": {"type": "array", "items": {}, "minItems": 1}},
            },
            {"type": "array", "items": {}, "minItems": 1},
        ]
    },
    "BatchItemResult": {
        "type": "object",
        "required": ["index", "eventId", "stream", "error"],
        "properties": {
            "index": {"type": "integer"},
            "eventId": {"type": "string", "nullable": True},
            "stream": {"type": "string", "nullable": True},
            "error": {"type": "string", "nullable": True},
            "sequence": {"type": "integer"},
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["successful", "failed", "results"],
        "properties": {
            "successful": {"type": "integer"},
            "failed": {"type": "integer"},
            "results": {"type": "array", "items": _ref("BatchItemResult")},
        },
    },
    "Entity": {
        "type": "object",
        "required": ["id", "properties", "lastUpdated", "version"],
        "properties": {
            "id": {"type": "string"},
            "properties": {"type": "object", "additionalProperties": True},
            "lastUpdated": {"type": "string", "format": "date-time"},
            "version": {
                "type": "integer",
                "description": "Log sequence of the entity's last change.",
            },
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["entity_id", "deleted"],
        "properties": {
            "entity_id": {"type": "string"},
            "deleted": {
                "type": "boolean",
                "description": "false: the entity did not exist and nothing was logged.",
            },
            "eventId": {
                "type": "string",
                "description": "The tombstone's event id (only when `deleted` is true).",
            },
        },
    },
    "BatchDeleteRequest": {
        "type": "object",
        "description": "One filter: the first present and not null of namespace, prefix, "
        "entity_ids wins; none is a 400.",
        "properties": {
            "namespace": {"type": "string", "minLength": 1},
            "prefix": {"type": "string", "minLength": 1},
            "entity_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "BatchDeleteResult": {
        "type": "object",
        "required": ["deleted", "deleted_ids", "not_found", "failed", "errors"],
        "properties": {
            "deleted": {"type": "integer", "description": "How many entities were deleted."},
            "deleted_ids": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The ids deleted (a tombstone logged for each), in request order.",
            },
            "not_found": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Ids whose entity did not exist: nothing was logged for them.",
            },
            "failed": {
                "type": "integer",
                "description": "How many ids were refused by the namespace's rate limit.",
            },
            "errors": {
                "type": "array",
                "items": {"type": "string"},
                "description": "`<id>: rate limit exceeded` for each refused id.",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "entities", "lastSequence"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "starting", "degraded"]},
            "version": {"type": "string"},
            "entities": {"type": "integer"},
            "lastSequence": {"type": "integer"},
            "error": {"type": "string", "description": "Why it is degraded (a damaged log)"},
        },
    },
    "AdminConfig": {
        "type": "object",
        "properties": {
            s.name: {**_RUNTIME_TYPES[type(s.default)], "description": s.help}
            for s in SETTINGS
            if s.runtime
        },
    },
    "NamespaceRequest": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{3,32}$"},
            "private": {
                "type": "boolean",
                "description": "Reads of a private namespace's entities need its token.",
            },
        },
    },
    "NamespaceToken": {
        "type": "object",
        "required": ["namespaceId", "name", "token", "private"],
        "properties": {
            "namespaceId": {"type": "string"},
            "name": {"type": "string"},
            "token": {
                "type": "string",
                "description": "The bearer token: shown only here, stored only as a hash.",
            },
            "private": {"type": "boolean"},
        },
    },
    "Namespace": {
        "type": "object",
        "required": ["namespaceId", "name", "createdAt", "entityCount", "private"],
        "properties": {
            "namespaceId": {"type": "string"},
            "name": {"type": "string"},
            "createdAt": {"type": "string", "format": "date-time"},
            "entityCount": {"type": "integer", "minimum": 0},
            "private": {"type": "boolean"},
        },
    },
    "NamespaceUpdate": {
        "type": "object",
        "required": ["private"],
        "properties": {"private": {"type": "boolean"}},
    },
    "OAuthConnected": {
        "type": "object",
        "required": ["success", "message", "connector"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "message": {"type": "string", "example": "Successfully connected github"},
            "connector": {"type": "string"},
        },
    },
    "Connectors": {
        "type": "object",
        "required": ["connectors"],
        "properties": {
            "connectors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "enabled", "status"],
                    "properties": {
                        "name": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "status": {
                            "type": "string",
                            "enum": ["configured", "not_configured", "error"],
                        },
                    },
                },
            }
        },
    },
    "Connector": {
        "type": "object",
        "required": [
            "name",
            "enabled",
            "status",
            "poll_interval_seconds",
            "last_poll",
            "last_error",
            "polls",
            "failures",
            "events",
        ],
        "properties": {
            "name": {"type": "string"},
            "enabled": {"type": "boolean"},
            "status": {"type": "string", "enum": ["configured", "not_configured", "error"]},
            "poll_interval_seconds": {"type": "number"},
            "last_poll": {"type": "string", "format": "date-time", "nullable": True},
            "last_error": {"type": "string", "nullable": True},
            "polls": {"type": "integer", "minimum": 0},
            "failures": {"type": "integer", "minimum": 0},
            "events": {"type": "integer", "minimum": 0},
        },
    },
    "ConnectorToken": {
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string", "minLength": 1}},
    },
    "SourceInput": {
        "type": "object",
        "required": ["name", "url", "poll_interval_secs", "entity_key", "namespace"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "url": {
                "type": "string",
                "description": "http or https; link-local and cloud metadata addresses are "
                "refused (FLUX_SOURCES_ALLOW_LINK_LOCAL), and so are 0.0.0.0/8 and multicast.",
            },
            "poll_interval_secs": {"type": "integer", "minimum": 1, "maximum": 31536000},
            "entity_key": {
                "type": "string",
                "minLength": 1,
                "description": "A literal key, or a JSON path (`$.id`) into the response "
                "(into each item with `items`). The entity is `<namespace>/<key>`.",
            },
            "namespace": {"type": "string", "description": "3 to 32 characters of [a-z0-9-_]"},
            "auth_type": {
                "description": 'How `token` is sent: "none" (default), "bearer", or '
                '{"api_key_header": "<header>"}.',
                "oneOf": [
                    {"type": "string", "enum": ["none", "bearer"]},
                    {
                        "type": "object",
                        "required": ["api_key_header"],
                        "properties": {"api_key_header": {"type": "string"}},
                        "additionalProperties": False,
                    },
                ],
            },
            "token": {
                "type": "string",
                "description": "The upstream secret: stored encrypted, never shown again.",
            },
            "flux_namespace_token": {
                "type": "string",
                "description": "Accepted for compatibility and never stored; with auth on it "
                "must be the namespace's own token.",
            },
            "items": {
                "type": "string",
                "nullable": True,
                "description": "A JSON path selecting a list: one entity per item.",
            },
            "mapping": {
                "type": "object",
                "nullable": True,
                "additionalProperties": {"type": "string"},
                "description": 'Properties to publish: {"property": "$.path"}.',
            },
        },
    },
    "SourceCreated": {
        "type": "object",
        "required": ["source_id"],
        "properties": {"source_id": {"type": "string", "format": "uuid"}},
    },
    "Source": {
        "type": "object",
        "required": [
            "source_id",
            "type",
            "name",
            "url",
            "poll_interval_secs",
            "entity_key",
            "namespace",
            "auth_type",
            "items",
            "mapping",
            "has_token",
            "created_at",
            "status",
            "last_poll",
            "last_error",
            "polls",
            "failures",
            "events",
        ],
        "properties": {
            "source_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string", "enum": ["generic"]},
            "name": {"type": "string"},
            "url": {"type": "string"},
            "poll_interval_secs": {"type": "integer", "minimum": 1},
            "entity_key": {"type": "string"},
            "namespace": {"type": "string"},
            "auth_type": {
                "oneOf": [
                    {"type": "string", "enum": ["none", "bearer"]},
                    {
                        "type": "object",
                        "required": ["api_key_header"],
                        "properties": {"api_key_header": {"type": "string"}},
                        "additionalProperties": False,
                    },
                ]
            },
            "items": {"type": "string", "nullable": True},
            "mapping": {"type": "object", "additionalProperties": {"type": "string"}},
            "has_token": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": ["running", "error", "stopped"]},
            "last_poll": {"type": "string", "format": "date-time", "nullable": True},
            "last_error": {"type": "string", "nullable": True},
            "polls": {"type": "integer", "minimum": 0},
            "failures": {"type": "integer", "minimum": 0},
            "events": {"type": "integer", "minimum": 0},
        },
    },
    "Sources": {
        "type": "object",
        "required": ["sources"],
        "properties": {
            "sources": {"type": "array", "items": {"$ref": "#/components/schemas/Source"}}
        },
    },
    "Success": {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"type": "boolean", "enum": [True]}},
    },
}

PATHS: dict[str, Any] = {
    "/api/events": {
        "post": {
            "summary": "Publish one event",
            "description": "Durable (logged and fsynced) and applied to the state before the "
            "200. Body limit: body_size_limit_single_bytes. Any content type is read as JSON.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Event")}},
            },
            "security": _BEARER,
            "responses": {
                "200": {
                    **_json(_ref("EventAccepted"), "Stored and applied"),
                    "links": {
                        "GetEntity": _link(
                            "/api/state/entities/{entity_id}",
                            "get",
                            "The entity the event set",
                            entity_id="$request.body#/payload/entity_id",
                        ),
                        "GetHistory": _link(
                            "/api/events",
                            "get",
                            "The entity's history",
                            entity="$request.body#/payload/entity_id",
                        ),
                    },
                },
                "400": _error("Invalid JSON or event (auth on: or an id without a namespace)"),
                **_auth_errors(),
                "413": _error("Body over the limit"),
                "429": {
                    **_error("The namespace is over its rate limit (auth on)"),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds until the namespace may publish again.",
                            "schema": {"type": "integer"},
                        }
                    },
                },
                "503": _error("The event log cannot take writes"),
            },
        },
        "get": {
            "summary": "An entity's event history, newest first",
            "parameters": [
                {"name": "entity", "in": "query", "required": True, "schema": {"type": "string"}},
                {
                    "name": "since",
                    "in": "query",
                    "description": "RFC 3339 time (an offset's `+` sent unencoded, so read "
                    "as a space, is understood); default 24 hours ago.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "description": "1 to 500, default 100; the newest events are returned.",
                    "schema": {"type": "integer"},
                },
            ],
            "security": _BEARER,
            "responses": {
                "200": _json({"type": "array", "items": _ref("Event")}, "Stored events"),
                "400": _error(
                    "Missing entity, an entity longer than FLUX_MAX_ENTITY_ID_LENGTH, or a bad "
                    "parameter"
                ),
                **_auth_errors(write=False),
            },
        },
    },
    "/api/events/batch": {
        "post": {
            "summary": "Publish many events",
            "description": "Valid events are stored in one transaction; each invalid, "
            "unauthorized or rate-limited one is reported at its index (a `Retry-After` header "
            "then says when the limited namespaces may publish again). Body limit: "
            "body_size_limit_batch_bytes.",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchRequest")}},
            },
            "responses": {
                "200": {
                    **_json(_ref("BatchResult"), "Per-event results"),
                    "headers": {
                        "Retry-After": {
                            "description": "Present when some events were rate limited: "
                            "seconds until their namespaces may publish again.",
                            "schema": {"type": "integer"},
                        }
                    },
                },
                "400": _error("Not a batch, or an empty one"),
                "413": _error("Body over the limit"),
                "503": _error("The event log cannot take writes (nothing was stored)"),
            },
        },
    },
    "/api/state/entities": {
        "get": {
            "summary": "List entities",
            "description": "Entities of private namespaces the caller may not read are left out.",
            "security": _BEARER,
            "parameters": [
                {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "namespace",
                    "in": "query",
                    "description": "Exact match on the part of the id before the first `/`.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Entity")}, "Entities"),
                "400": _error("A prefix or namespace longer than FLUX_MAX_ENTITY_ID_LENGTH"),
            },
        },
    },
    "/api/state/entities/delete": {
        "post": {
            "summary": "Delete many entities",
            "description": "Auth on: a namespace or prefix filter only reaches the caller's "
            "own namespace; every listed id is authorized before anything is deleted. Each id "
            "takes one event of the namespace's rate limit (auth on), whether its entity exists "
            "or not: the first ids up to what the namespace has left are handled, the rest are "
            "reported in `failed` and `errors`. An id whose entity does not exist is listed in "
            "`not_found` and nothing is logged for it.",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchDeleteRequest")}},
            },
            "responses": {
                "200": {
                    **_json(_ref("BatchDeleteResult"), "Tombstones stored for what existed"),
                    "headers": {
                        "Retry-After": {
                            "description": "Present when some ids were rate limited: seconds "
                            "until the namespace may delete again.",
                            "schema": {"type": "integer"},
                        }
                    },
                },
                "400": _error(
                    "No filter, a bad one, over max_batch_delete, or an id, prefix or "
                    "namespace longer than FLUX_MAX_ENTITY_ID_LENGTH"
                ),
                **_auth_errors(),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
                "503": _error("The event log cannot take writes"),
            },
        },
    },
    "/api/state/entities/{entity_id}": {
        "get": {
            "summary": "One entity",
            "security": _BEARER,
            "parameters": [_ENTITY_ID],
            "responses": {
                "200": _json(_ref("Entity"), "The entity"),
                "400": _error("An id longer than FLUX_MAX_ENTITY_ID_LENGTH"),
                **_auth_errors(write=False),
                "404": _error("Entity not found"),
            },
        },
        "delete": {
            "summary": "Delete one entity (a tombstone event; nothing if it does not exist)",
            "description": "Takes one event of the namespace's rate limit (auth on), whether "
            "the entity exists or not.",
            "security": _BEARER,
            "parameters": [_ENTITY_ID],
            "responses": {
                "200": _json(
                    _ref("Deleted"),
                    "Tombstone stored (`deleted: true`), or nothing to delete (`deleted: false`)",
                ),
                "400": _error(
                    "A bad id: a NUL character, longer than FLUX_MAX_ENTITY_ID_LENGTH (auth on: "
                    "or one without a namespace)"
                ),
                **_auth_errors(),
                "429": {
                    **_error("The namespace is over its rate limit (auth on)"),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds until the namespace may delete again.",
                            "schema": {"type": "integer"},
                        }
                    },
                },
                "503": _error("The event log cannot take writes"),
            },
        },
    },
    "/api/events/stream": {
        "get": {
            "summary": "Live changes as Server-Sent Events",
            "description": "The WebSocket protocol's messages (docs/websocket.md) as SSE: `id` "
            "is the version, `event` the message type, `data` the JSON message. Resume with "
            "`since` or the `Last-Event-ID` header: the replay, `subscribed`, then live changes, "
            "in version order. A client that does not keep up (FLUX_WS_QUEUE_LIMIT messages or "
            "FLUX_LIVE_OUTBOX_BYTES waiting, or a send stuck for "
            "FLUX_LIVE_SEND_TIMEOUT_SECONDS) gets an `error` event and the stream ends. The "
            "WebSocket itself is at `/api/ws`; it takes the same subscription in its URL "
            "(`entity_id` or `prefix`, `since`, and `snapshot=true`), refusing a bad one with "
            "400.",
            "parameters": [
                {"name": "entity_id", "in": "query", "schema": {"type": "string"}},
                {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "An endless event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error(
                    "A bad `since`, or an entity_id or prefix longer than FLUX_MAX_ENTITY_ID_LENGTH"
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Figures in the Prometheus text format",
            "responses": {
                "200": {
                    "description": "Events, entities, live connections, publishers and HTTP "
                    "request latencies",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/health": {
        "get": {
            "summary": "Liveness and readiness",
            "responses": {
                "200": _json(_ref("Health"), "Serving"),
                "503": _json(_ref("Health"), "Starting, or degraded (the event log is damaged)"),
            },
        }
    },
    "/api/admin/config": {
        "get": {
            "summary": "Runtime config",
            "responses": {"200": _json(_ref("AdminConfig"), "Current values")},
        },
        "put": {
            "summary": "Change runtime config (only the fields sent; persisted)",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("AdminConfig")}},
            },
            "responses": {
                "200": _json(_ref("AdminConfig"), "New values"),
                "400": _error("A bad value"),
                "413": _error("Body over the limit"),
                "401": _error("Admin token required"),
                "403": _error(
                    "A namespace's token, or admin operations disabled (auth on, no "
                    "FLUX_ADMIN_TOKEN)"
                ),
                "415": _error("Not JSON"),
            },
        },
    },
    "/api/namespaces": {
        "post": {
            "summary": "Register a namespace (auth on)",
            "description": "Self-service, unless FLUX_ADMIN_TOKEN is set: then the admin token "
            "is required. The answer is the only place the token ever appears.",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("NamespaceRequest")}},
            },
            "responses": {
                "200": {
                    **_json(_ref("NamespaceToken"), "Registered"),
                    "links": _NAMESPACE_LINKS,
                },
                "400": _error("A bad name"),
                "401": _error("Admin token required"),
                "403": _error("A namespace's token where the admin token is required"),
                "404": _error("Auth is off"),
                "409": _error("The name is taken or reserved"),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
                "503": _error("The registry cannot be written"),
            },
        }
    },
    "/api/namespaces/{name}": {
        "get": {
            "summary": "A namespace (never its token)",
            "security": _BEARER,
            "parameters": [_NAME],
            "responses": {
                "200": _json(_ref("Namespace"), "The namespace"),
                **_auth_errors(write=False),
                "404": _error("Unknown namespace, or auth is off"),
            },
        },
        "put": {
            "summary": "Make a namespace private or public (the admin or its own token)",
            "security": _BEARER,
            "parameters": [_NAME],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("NamespaceUpdate")}},
            },
            "responses": {
                "200": _json(_ref("Namespace"), "Changed"),
                "400": _error("A bad body"),
                "401": _error("No token, or one of no namespace"),
                "403": _error("Another namespace's token"),
                "404": _error("Unknown namespace, or auth is off"),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
                "503": _error("The registry cannot be written"),
            },
        },
        "delete": {
            "summary": "Delete a namespace and its entities (admin)",
            "security": [{"bearer": []}],
            "parameters": [_NAME],
            "responses": {
                "204": {
                    "description": "Deleted; its token is revoked, and its history is served "
                    "to nobody from now on (a namespace registered later under the name starts "
                    "empty)"
                },
                "401": _error("Admin token required"),
                "403": _error(
                    "A namespace's token, or admin operations disabled (auth on, no "
                    "FLUX_ADMIN_TOKEN)"
                ),
                "404": _error("Unknown namespace, or auth is off"),
                "503": _error("The log or the registry cannot be written"),
            },
        },
    },
    "/api/namespaces/{name}/token": {
        "post": {
            "summary": "Rotate a namespace's token (the admin or the current token)",
            "description": "The old token stops working at once.",
            "security": _BEARER,
            "parameters": [_NAME],
            "responses": {
                "200": {
                    **_json(_ref("NamespaceToken"), "The new token"),
                    "links": _NAMESPACE_LINKS,
                },
                "401": _error("No token, or one of no namespace"),
                "403": _error("Another namespace's token"),
                "404": _error("Unknown namespace, or auth is off"),
                "503": _error("The registry cannot be written"),
            },
        }
    },
    "/api/connectors": {
        "get": {
            "summary": "Connectors and their status for the caller",
            "description": "`configured` when the caller has a stored token (with auth off "
            "every caller is `default`; with auth on, any bearer names its own credentials).",
            "security": _BEARER,
            "responses": {
                "200": _json(_ref("Connectors"), "Connectors"),
                "401": _error("Auth on and no bearer token"),
            },
        }
    },
    "/api/connectors/generic": {
        "get": {
            "summary": "The caller's generic HTTP sources, with their status",
            "description": "Auth off: every source. Auth on: the sources of the token's "
            "namespace (the admin's token owns none). The upstream token is never shown "
            "(`has_token`).",
            "security": _BEARER,
            "responses": {
                "200": _json(_ref("Sources"), "Sources"),
                "401": _error("Auth on and no bearer token"),
            },
        },
        "post": {
            "summary": "Create a generic HTTP source: poll a URL, publish its JSON as entities",
            "description": "See docs/connectors/generic.md. With auth on the source belongs "
            "to the token's namespace and `namespace` must be that namespace.",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("SourceInput")}},
            },
            "responses": {
                "201": _json(_ref("SourceCreated"), "Created; the first poll starts at once"),
                "400": _error(
                    "A bad body: missing or mistyped field, refused URL (with auth on: an "
                    "internal address too), bad path, an interval under the minimum (auth on)"
                ),
                "401": _error("Auth on and no bearer token, or one of no namespace"),
                "403": _error("`namespace` is not the token's namespace, or the admin token"),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
                "429": _error(
                    "Auth on: the namespace has FLUX_SOURCES_MAX_PER_NAMESPACE sources already"
                ),
                "500": _error(
                    "A `token` and no credential store (FLUX_ENCRYPTION_KEY not set), or a "
                    "store failed"
                ),
            },
        },
    },
    "/api/connectors/generic/{id}": {
        "get": {
            "summary": "One generic source with its status",
            "security": _BEARER,
            "parameters": [_SOURCE_ID],
            "responses": {
                "200": _json(_ref("Source"), "The source"),
                "401": _error("Auth on and no bearer token"),
                "404": _error("No such source, or another namespace's"),
            },
        },
        "delete": {
            "summary": "Delete a generic source (it stops; its stored token is deleted)",
            "security": _BEARER,
            "parameters": [_SOURCE_ID],
            "responses": {
                "204": {"description": "Deleted"},
                "401": _error("Auth on and no bearer token, or one of no namespace"),
                "403": _error("The admin token (sources belong to namespaces)"),
                "404": _error("No such source, or another namespace's"),
                "500": _error("A store failed"),
            },
        },
    },
    "/api/connectors/{name}": {
        "get": {
            "summary": "One connector: status, poll interval and the last poll's outcome",
            "security": _BEARER,
            "parameters": [_CONNECTOR],
            "responses": {
                "200": _json(_ref("Connector"), "The connector"),
                "401": _error("Auth on and no bearer token"),
                "404": _error("Unknown connector"),
            },
        }
    },
    "/api/connectors/{name}/token": {
        "post": {
            "summary": "Store the caller's token for a connector (encrypted at rest)",
            "security": _BEARER,
            "parameters": [_CONNECTOR],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ConnectorToken")}},
            },
            "responses": {
                "200": _json(_ref("Success"), "Stored"),
                "400": _error("A bad body"),
                "401": _error("Auth on and no bearer token"),
                "403": _error("The admin token: connectors belong to a namespace"),
                "404": _error("Unknown connector"),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
                "500": _error(
                    "Credential storage not available (FLUX_ENCRYPTION_KEY not set), or the "
                    "store failed"
                ),
            },
        },
        "delete": {
            "summary": "Delete the caller's token for a connector",
            "security": _BEARER,
            "parameters": [_CONNECTOR],
            "responses": {
                "200": _json(_ref("Success"), "Deleted"),
                "401": _error("Auth on and no bearer token"),
                "403": _error("The admin token: connectors belong to a namespace"),
                "404": _error("Unknown connector, or no token stored"),
                "500": _error(
                    "Credential storage not available (FLUX_ENCRYPTION_KEY not set), or the "
                    "store failed"
                ),
            },
        },
    },
    "/api/connectors/{name}/oauth/start": {
        "get": {
            "summary": "Start an OAuth sign-in: redirect to the provider's authorize page",
            "description": "Only with a credential store (FLUX_ENCRYPTION_KEY set); without "
            "one, 404. The redirect carries `client_id`, `redirect_uri` "
            "(`<FLUX_OAUTH_CALLBACK_BASE_URL>/api/connectors/<name>/oauth/callback`), `scope`, "
            "a single-use `state` (valid 600 s) and `response_type=code`. With auth on, the "
            "sign-in belongs to the caller's namespace: a client such as `flux connector oauth` "
            "sends the bearer and opens the `Location` itself.",
            "security": _BEARER,
            "parameters": [_CONNECTOR],
            "responses": {
                "307": {
                    "description": "To the provider's authorize URL",
                    "headers": {
                        "Location": {
                            "description": "The authorize URL with its query",
                            "schema": {"type": "string", "format": "uri"},
                        }
                    },
                },
                "401": _error("Auth on and no bearer, or one of no namespace"),
                "403": _error("The admin token (connectors belong to a namespace)"),
                "404": _error("Unknown connector, or no credential store"),
                "500": _error(
                    "OAuth not configured for the connector (FLUX_OAUTH_<NAME>_CLIENT_ID and "
                    "_CLIENT_SECRET not set)"
                ),
            },
        }
    },
    "/api/connectors/{name}/oauth/callback": {
        "get": {
            "summary": "Finish an OAuth sign-in: exchange the code and store the tokens",
            "description": "Where the provider sends the browser back. Needs no bearer: the "
            "`state` says whose sign-in it is. Checks, in order: `error`, `code`, `state`, "
            "the state (unknown, used or expired: 401), its connector, the client settings, "
            "the code exchange (502), the store. On success the tokens are stored encrypted "
            "and the connector starts polling.",
            "parameters": [
                _CONNECTOR,
                *(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": description,
                        "schema": {"type": "string"},
                    }
                    for name, description in (
                        ("code", "The authorization code from the provider."),
                        ("state", "The state `start` issued."),
                        ("error", "The provider's error, when the user or it refused."),
                        ("error_description", "The provider's words on that error."),
                    )
                ),
            ],
            "responses": {
                "200": _json(_ref("OAuthConnected"), "Signed in; the connector starts"),
                "400": _error(
                    "The provider sent an error, `code` or `state` is missing, or the state "
                    "was issued for another connector"
                ),
                "401": _error("Invalid or expired OAuth state (possible CSRF attack)"),
                "404": _error("No credential store (FLUX_ENCRYPTION_KEY not set)"),
                "500": _error("OAuth not configured for the connector, or the store failed"),
                "502": _error("The provider's token endpoint refused or failed"),
            },
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Flux",
        "version": __version__,
        "description": "Shared, event-sourced world state: publish events, query and watch "
        'the entity state derived from them. Errors are always `{"error": "..."}`.',
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}

_DOCUMENT_BYTES = orjson.dumps(DOCUMENT)

_DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Flux API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


async def openapi_document(request: Request) -> Response:
    return Response(_DOCUMENT_BYTES, media_type="application/json")


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_DOCS_HTML)
