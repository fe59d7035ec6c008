"""Reading request bodies with their size limit enforced while they stream in."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from flux.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from flux.events import decode_json, describe


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `limit` bytes (a declared
    Content-Length over the limit is refused before anything is read)."""
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(declared, limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(size, limit)
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


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body from an endpoint that insists on `Content-Type: application/json`."""
    require_json_content_type(request)
    doc = decode_json(await read_body(request, limit))
    if type(doc) is not dict:
        raise ValidationError(f"invalid type: {describe(doc)}, expected a JSON object")
    return doc
