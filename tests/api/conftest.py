"""Fixtures for the HTTP API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import LocalTestClient
from flux.api.app import create_app
from flux.config import Settings

from .helpers import EventFactory, new_event

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def event() -> EventFactory:
    """`event(entity_id, properties, **fields)`: a valid event to POST (see helpers.new_event)."""
    return new_event


@pytest.fixture
def make_client(data_dir: Path) -> Iterator[ClientFactory]:
    """`make_client(**settings)`: an in-process client over a new app with those settings on the
    test's data dir (lifespan run); every client made is closed at the end of the test."""
    opened: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        settings = Settings(data_dir=str(data_dir), **overrides)
        test_client = LocalTestClient(
            create_app(settings), raise_server_exceptions=raise_server_exceptions
        )
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield make
    for test_client in reversed(opened):
        test_client.__exit__(None, None, None)
