"""The console's admin view in a real headless Chromium against a real `flux serve` with auth
on: each namespace button (set private, rotate the token, delete) and saving the runtime config
take effect in the API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from browser import Browser
from conftest import FluxServer

from .helpers import event

ADMIN = "console-admin"
AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}
OUT = "document.getElementById('namespace-out').textContent"


def write(url: str, token: str) -> int:
    """The status of a publish to `team/` with `token`."""
    answer = httpx.post(
        f"{url}/api/events",
        json=event("team/board", note="hi"),
        headers={"authorization": f"Bearer {token}"},
    )
    return answer.status_code


def test_the_admin_buttons_change_namespaces_and_the_config(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    srv = server_factory(
        tmp_path / "data", {"FLUX_AUTH_ENABLED": "true", "FLUX_ADMIN_TOKEN": ADMIN}
    ).start()
    made = httpx.post(
        srv.url + "/api/namespaces", json={"name": "team", "private": False}, headers=AS_ADMIN
    )
    assert made.status_code == 200, made.text
    old_token = made.json()["token"]
    assert write(srv.url, old_token) == 200
    browser.open(srv.url + "/")
    browser.find("#token").send_keys(ADMIN)
    browser.find('#token-form button[type="submit"]').click()
    browser.driver.get(srv.url + "/#/admin")
    browser.wait("document.getElementById('config').value.includes('rate_limit')", "config")
    browser.find('#namespaces input[name="ns"]').send_keys("team")
    # Public: anyone reads it.
    assert httpx.get(srv.url + "/api/state/entities/team%2Fboard").status_code == 200

    # Set private.
    browser.find('#namespaces input[name="private"]').click()
    browser.wait_click("#ns-private", f"JSON.parse({OUT}).private === true", "private")
    shown = httpx.get(srv.url + "/api/namespaces/team", headers=AS_ADMIN).json()
    assert shown["private"] is True
    assert httpx.get(srv.url + "/api/state/entities/team%2Fboard").status_code == 401

    # Rotate the token: the old one stops working, the new one works.
    browser.wait_click("#ns-rotate", f"JSON.parse({OUT}).token !== undefined", "a new token")
    new_token = json.loads(browser.texts("#namespace-out")[0])["token"]
    assert new_token != old_token
    assert write(srv.url, old_token) == 401
    assert write(srv.url, new_token) == 200

    # Save a runtime config value.
    before = httpx.get(srv.url + "/api/admin/config", headers=AS_ADMIN).json()
    wanted = before["rate_limit_per_namespace_per_minute"] + 7
    browser.js(
        "const box = document.getElementById('config');"
        "const config = JSON.parse(box.value);"
        "config.rate_limit_per_namespace_per_minute = arguments[0];"
        "box.value = JSON.stringify(config, null, 2);",
        wanted,
    )
    browser.wait_click(
        "#config-save", "document.getElementById('notice').textContent === 'config saved'", "save"
    )
    after = httpx.get(srv.url + "/api/admin/config", headers=AS_ADMIN).json()
    assert after["rate_limit_per_namespace_per_minute"] == wanted
    browser.screenshot("admin-buttons")

    # Delete the namespace: gone from the API, its token with it.
    browser.wait_click("#ns-delete", f"JSON.parse({OUT}).deleted === true", "the deletion")
    assert httpx.get(srv.url + "/api/namespaces/team", headers=AS_ADMIN).status_code == 404
    assert write(srv.url, new_token) == 401
    assert browser.problems() == []
    srv.stop()
