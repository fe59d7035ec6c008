"""Helpers for the auth tests (imported relatively): an auth-on client, namespaces, headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from starlette.testclient import TestClient

from conftest import LocalTestClient
from flux.api.app import create_app
from flux.config import Settings
from flux.server import Server
from flux.service import FluxService

from .helpers import new_event

ADMIN = "tok-admin"
JSON = {"content-type": "application/json"}

T = TypeVar("T")


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token is not None else {}


def open_client(
    data_dir: Path, clock: Callable[[], float] | None = None, **overrides: Any
) -> TestClient:
    """An entered in-process client (the caller exits it). Auth on with the admin token `ADMIN`
    and the directory off, unless `overrides` say otherwise; `clock` drives the rate limiter."""
    values: dict[str, Any] = {
        "auth_enabled": True,
        "admin_token": ADMIN,
        "directory_interval_seconds": 0,
        **overrides,
    }
    settings = Settings(data_dir=str(data_dir), **values)
    client = LocalTestClient(create_app(settings, Server(settings, clock=clock)))
    client.__enter__()
    return client


def server_of(client: TestClient) -> Server:
    """The parts of the client's server (`flux.server.Server`)."""
    server: Server = client.app.state.server  # type: ignore[attr-defined]
    return server


def service_of(client: TestClient) -> FluxService:
    return server_of(client).service


def run(client: TestClient, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a coroutine function on the app's event loop."""
    return client.portal.call(fn, *args)  # type: ignore[union-attr]


def register(
    client: TestClient, name: str, private: bool = False, admin: str | None = ADMIN
) -> str:
    """Register `name` over HTTP; returns its token."""
    response = client.post(
        "/api/namespaces", json={"name": name, "private": private}, headers=bearer(admin)
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def publish(client: TestClient, token: str | None, entity_id: str, **properties: Any) -> Any:
    return client.post(
        "/api/events",
        content=orjson.dumps(new_event(entity_id, properties or {"x": 1})),
        headers=bearer(token),
    )
