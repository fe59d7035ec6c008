"""Reading request bodies with their size limit enforced while they stream in."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from flux.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from flux.events import decode_json, describe

SINGLE = "body_size_limit_single_bytes"
BATCH = "body_size_limit_batch_bytes"


def body_limit(request: Request, setting: str) -> int:
    """The current value of a body-limit runtime setting (`SINGLE` or `BATCH`)."""
    limit: int = getattr(request.app.state.server.runtime.current, setting)
    return limit


async def read_body(request: Request, limit: int | str) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes the limit (a declared
    Content-Length over it is refused before anything is read). `limit` is a runtime
    setting's name (`SINGLE`, `BATCH`), which the 413 names, or a fixed number of bytes."""
    setting = limit if isinstance(limit, str) else None
    limit = body_limit(request, limit) if isinstance(limit, str) else limit
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(declared, limit, setting)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(None, limit, setting)
        chunks.append(chunk)
    return b"".join(chunks)


def declared_length(header: str | None) -> int | None:
    """The Content-Length as a number, or None when absent or not plain ASCII digits (the server
    in front has already refused those). Capped so that a 5,000-digit header costs nothing."""
    if header is None or not (header.isascii() and header.isdigit()):
        return None
    return int(header) if len(header) <= 18 else 10**18


def is_json_type(content_type: str | None) -> bool:
    """Whether a Content-Type header says JSON: `application/json` or `application/<x>+json`,
    with any parameters (`; charset=utf-8`), in any case. A missing header is not JSON."""
    if content_type is None:
        return False
    essence = content_type.partition(";")[0].strip().lower()
    if essence == "application/json":
        return True
    kind, _, subtype = essence.partition("/")
    return kind == "application" and subtype.endswith("+json") and len(subtype) > 5


def require_json_content_type(request: Request) -> None:
    """Raises UnsupportedMediaType (415) unless the body says it is JSON. Every JSON body is
    held to this: a browser sends `text/plain`, a form type or no type at all cross-site without
    a CORS preflight, but must ask first (and be refused) to send `application/json`."""
    if not is_json_type(request.headers.get("content-type")):
        raise UnsupportedMediaType("Expected request with `Content-Type: application/json`")


async def read_json_object(request: Request, limit: int | str = SINGLE) -> dict[str, Any]:
    """A JSON object body from an endpoint that insists on `Content-Type: application/json`;
    `limit` as for `read_body` (the single-event limit by default)."""
    require_json_content_type(request)
    doc = decode_json(await read_body(request, limit))
    if type(doc) is not dict:
        raise ValidationError(f"invalid type: {describe(doc)}, expected a JSON object")
    return doc
