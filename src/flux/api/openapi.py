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
                    "entity_id": {"type": "string"},
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
        "required": ["entity_id", "eventId"],
        "properties": {"entity_id": {"type": "string"}, "eventId": {"type": "string"}},
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
        "required": ["deleted", "failed", "errors"],
        "properties": {
            "deleted": {"type": "integer"},
            "failed": {"type": "integer"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "entities", "lastSequence"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "starting"]},
            "version": {"type": "string"},
            "entities": {"type": "integer"},
            "lastSequence": {"type": "integer"},
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
                        "status": {"type": "string"},
                    },
                },
            }
        },
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
            "responses": {
                "200": _json(_ref("EventAccepted"), "Stored and applied"),
                "400": _error("Invalid JSON or event"),
                "413": _error("Body over the limit"),
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
            "responses": {
                "200": _json({"type": "array", "items": _ref("Event")}, "Stored events"),
                "400": _error("Missing entity or bad parameter"),
            },
        },
    },
    "/api/events/batch": {
        "post": {
            "summary": "Publish many events",
            "description": "Valid events are stored in one transaction; each invalid one is "
            "reported at its index. Body limit: body_size_limit_batch_bytes.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchRequest")}},
            },
            "responses": {
                "200": _json(_ref("BatchResult"), "Per-event results"),
                "400": _error("Not a batch, or an empty one"),
                "413": _error("Body over the limit"),
                "503": _error("The event log cannot take writes (nothing was stored)"),
            },
        },
    },
    "/api/state/entities": {
        "get": {
            "summary": "List entities",
            "parameters": [
                {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "namespace",
                    "in": "query",
                    "description": "Exact match on the part of the id before the first `/`.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {"200": _json({"type": "array", "items": _ref("Entity")}, "Entities")},
        },
    },
    "/api/state/entities/delete": {
        "post": {
            "summary": "Delete many entities",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchDeleteRequest")}},
            },
            "responses": {
                "200": _json(_ref("BatchDeleteResult"), "Tombstones stored"),
                "400": _error("No filter, a bad one, or over max_batch_delete"),
                "413": _error("Body over the limit"),
                "415": _error("Not JSON"),
            },
        },
    },
    "/api/state/entities/{entity_id}": {
        "get": {
            "summary": "One entity",
            "parameters": [_ENTITY_ID],
            "responses": {
                "200": _json(_ref("Entity"), "The entity"),
                "404": _error("Entity not found"),
            },
        },
        "delete": {
            "summary": "Delete one entity (a tombstone event, even if it does not exist)",
            "parameters": [_ENTITY_ID],
            "responses": {
                "200": _json(_ref("Deleted"), "Tombstone stored"),
                "503": _error("The event log cannot take writes"),
            },
        },
    },
    "/api/events/stream": {
        "get": {
            "summary": "Live changes as Server-Sent Events",
            "description": "The WebSocket protocol's messages (docs/websocket.md) as SSE: `id` "
            "is the version, `event` the message type, `data` the JSON message. Resume with "
            "`since` or the `Last-Event-ID` header. The WebSocket itself is at `/api/ws`.",
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
                "400": _error("A bad `since`"),
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
                "503": _json(_ref("Health"), "Starting"),
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
                "401": _error("Admin token required"),
                "403": _error("Admin operations disabled"),
                "415": _error("Not JSON"),
            },
        },
    },
    "/api/connectors": {
        "get": {
            "summary": "Connectors and their status",
            "responses": {"200": _json(_ref("Connectors"), "Connectors")},
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
