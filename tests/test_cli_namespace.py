"""`flux namespace ...` against a real server with auth on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FluxServer, start_server
from test_cli import flux, ok_json

ADMIN = "ns-cli-admin"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("cli-ns") / "data"
    srv: FluxServer = start_server(
        data_dir,
        {
            "FLUX_AUTH_ENABLED": "true",
            "FLUX_ADMIN_TOKEN": ADMIN,
            "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        },
    )
    yield srv.url
    srv.stop()


def test_create_publish_show_rotate_delete(url: str) -> None:
    created = ok_json(flux(url, "namespace", "create", "team-a", FLUX_ADMIN_TOKEN=ADMIN))
    assert created["name"] == "team-a" and created["token"]
    token = created["token"]

    published = flux(url, "publish", "s", "cli", "team-a/dev", '{"on":true}', FLUX_TOKEN=token)
    assert published.exit_code == 0, published.output
    denied = flux(url, "publish", "s", "cli", "team-a/dev", '{"on":false}', FLUX_TOKEN="nope")
    assert denied.exit_code == 1
    assert "401" in denied.output

    shown = ok_json(flux(url, "namespace", "show", "team-a"))
    assert shown["name"] == "team-a"
    assert shown["entityCount"] == 1
    assert "token" not in shown

    rotated = ok_json(flux(url, "namespace", "rotate-token", "team-a", FLUX_TOKEN=token))
    new_token = rotated["token"]
    assert new_token != token
    old = flux(url, "publish", "s", "cli", "team-a/dev", '{"n":1}', FLUX_TOKEN=token)
    assert old.exit_code == 1
    new = flux(url, "publish", "s", "cli", "team-a/dev", '{"n":2}', FLUX_TOKEN=new_token)
    assert new.exit_code == 0, new.output

    private = ok_json(flux(url, "namespace", "private", "team-a", "on", FLUX_TOKEN=new_token))
    assert private["private"] is True
    hidden = flux(url, "get", "team-a/dev")
    assert hidden.exit_code == 1
    seen = ok_json(flux(url, "get", "team-a/dev", FLUX_TOKEN=new_token))
    assert seen["properties"] == {"on": True, "n": 2}

    no_admin = flux(url, "namespace", "delete", "team-a")
    assert no_admin.exit_code == 1
    assert "FLUX_ADMIN_TOKEN not set" in no_admin.output
    deleted = flux(url, "namespace", "delete", "team-a", FLUX_ADMIN_TOKEN=ADMIN)
    assert deleted.exit_code == 0, deleted.output
    gone = flux(url, "namespace", "show", "team-a")
    assert gone.exit_code == 1
    assert "404" in gone.output


def test_bad_name_and_taken_name(url: str) -> None:
    bad = flux(url, "namespace", "create", "X!", FLUX_ADMIN_TOKEN=ADMIN)
    assert bad.exit_code == 1
    assert "400" in bad.output
    ok_json(flux(url, "namespace", "create", "taken", FLUX_ADMIN_TOKEN=ADMIN))
    again = flux(url, "namespace", "create", "taken", FLUX_ADMIN_TOKEN=ADMIN)
    assert again.exit_code == 1
    assert "409" in again.output
    without_admin = flux(url, "namespace", "create", "other")
    assert without_admin.exit_code == 1
    assert "401" in without_admin.output


def test_help_teaches() -> None:
    result = flux("http://127.0.0.1:9", "namespace", "--help")
    assert result.exit_code == 0
    for word in ("create", "show", "rotate-token", "delete", "private"):
        assert word in result.output
