"""The one place that maps errors to HTTP: status code plus `{"error": "..."}`."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from flux import errors

logger = logging.getLogger("flux.api")

STATUS: dict[type[errors.FluxError], int] = {
    errors.FluxError: 500,
    errors.ValidationError: 400,
    errors.InvalidEntityId: 400,
    errors.AuthError: 401,
    errors.NamespaceNotFound: 401,
    errors.Forbidden: 403,
    errors.OriginNotAllowed: 403,
    errors.NotFound: 404,
    errors.RequestTimeout: 408,
    errors.Conflict: 409,
    errors.ConditionFailed: 409,
    errors.MigrationRefused: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.MisdirectedRequest: 421,
    errors.RateLimited: 429,
    errors.TooManyConnections: 429,
    errors.QuotaExceeded: 429,
    errors.UpstreamError: 502,
    errors.StorageError: 503,
    errors.McpUnavailable: 503,
    errors.LogError: 500,
    errors.LogUnavailable: 503,
    errors.LogCorrupt: 500,
    errors.CredentialError: 500,
    errors.CredentialStoreUnavailable: 500,
    errors.OAuthNotConfigured: 500,
    errors.SourceStoreError: 500,
}
"""Every `FluxError` class and its status, each stated (tests/test_errors.py enumerates the
subclasses): a new class without a line here fails that test rather than silently taking its
parent's status."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def status_of(exc: errors.FluxError) -> int:
    return STATUS.get(type(exc), 500)


def response_for(exc: errors.FluxError, method: str, path: str) -> Response:
    """The answer to a FluxError: its status, `{"error": message}` and the headers its kind
    carries (`Retry-After`, `WWW-Authenticate`); a failed condition adds its details, a failed
    write to the log its `outcome` (stored or not, or unknown); a 5xx is logged."""
    headers = None
    if isinstance(exc, errors.RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, errors.AuthError):
        headers = {"WWW-Authenticate": 'Bearer realm="flux"'}
    status = status_of(exc)
    if status >= 500:
        logger.error("%s %s failed: %s", method, path, exc.message)
    if isinstance(exc, errors.ConditionFailed):
        return Response(
            orjson.dumps({"error": exc.message, **exc.details}),
            status_code=status,
            media_type="application/json",
        )
    if isinstance(exc, errors.LogError) and exc.outcome is not None:
        return Response(
            orjson.dumps({"error": exc.message, "outcome": exc.outcome}),
            status_code=status,
            media_type="application/json",
        )
    return error_response(status, exc.message, headers)


async def flux_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.FluxError)
    return response_for(exc, request.method, request.url.path)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, dict(exc.headers or {}))


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("%s %s raised", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error")


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """The client went away while sending its body: nothing was applied and nobody reads the
    answer, so no traceback in the log either."""
    logger.debug("%s %s: client disconnected mid-body", request.method, request.url.path)
    return error_response(400, "client disconnected")
