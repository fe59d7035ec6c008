"""The web console in a real headless Chromium against a real `flux serve`: it loads clean,
groups the entities, follows publishes and deletes live, filters, shows an entity's history,
hides private namespaces without their token, adds a generic source, and shows metrics moving.
Each test saves a screenshot of the view it drives (build/screenshots/)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from browser import Browser
from conftest import FluxServer
from jsonserver import JsonServer

from .helpers import delete, event, publish, publish_batch

ROW = 'li.entity[data-id="{}"]'


def row_present(entity_id: str) -> str:
    return f"document.querySelector({json.dumps(ROW.format(entity_id))}) !== null"


def test_the_console_is_served_at_the_root_with_a_strict_policy(server: FluxServer) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(server.url + "/console/main.js")
    assert script.headers["content-type"].startswith("text/javascript")
    missing = httpx.get(server.url + "/console/nothing.js")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_loads_with_no_console_errors_and_groups_entities(
    server: FluxServer, browser: Browser
) -> None:
    for entity_id in ("farm/sensor-1", "farm/sensor-2", "city/lamp:1", "city/lamp:2"):
        publish(server.url, entity_id, temperature=20)
    browser.open(server.url + "/")
    browser.wait(row_present("city/lamp:2"), "the entities")
    groups = browser.texts("ul.root > li.group > .group-name")
    assert "farm/" in groups and "city/" in groups
    counts = dict(zip(groups, browser.texts("ul.root > li.group > .count"), strict=True))
    assert counts["farm/"] == "2" and counts["city/"] == "2"
    # `:` groups too: city/lamp:1 and city/lamp:2 sit in city/lamp:
    assert browser.texts('li.group[data-prefix="city/lamp:"] > .count') == ["2"]
    # Collapsing a group hides its entities.
    browser.find('li.group[data-prefix="farm/"] > .toggle').click()
    browser.wait(f"!({row_present('farm/sensor-1')})", "farm/ to collapse")
    browser.screenshot("entities")
    assert browser.problems() == []


def test_a_publish_appears_within_a_second_and_a_delete_removes_it(
    server: FluxServer, browser: Browser
) -> None:
    publish(server.url, "live/a", level=1)
    browser.open(server.url + "/")
    browser.wait(row_present("live/a"), "live/a")
    # A new entity in a shown group, and one in a namespace the page has never seen.
    publish(server.url, "live/b", level=2)
    publish(server.url, "fresh/x", level=3)
    took = browser.wait(
        row_present("live/b") + " && " + row_present("fresh/x"), "the new entities", 1.0
    )
    print(f"new entities shown {took * 1000:.0f} ms after the publish")
    # A changed property of a shown entity is updated and highlighted.
    publish(server.url, "live/a", level=9)
    cell = 'li.entity[data-id="live/a"] .prop[data-name="level"] .value'
    browser.wait(
        f"document.querySelector({json.dumps(cell)}).textContent === '9'"
        f" && document.querySelector({json.dumps(cell)}).classList.contains('flash')",
        "the update, highlighted",
        1.0,
    )
    browser.screenshot("live-update")
    delete(server.url, "live/b")
    browser.wait(f"!({row_present('live/b')})", "live/b to go", 1.0)
    assert browser.problems() == []


def test_the_filter_keeps_matching_ids(server: FluxServer, browser: Browser) -> None:
    for entity_id in ("zoo/lion", "zoo/tiger", "park/lion-statue"):
        publish(server.url, entity_id, seen=True)
    browser.open(server.url + "/")
    browser.wait(row_present("zoo/tiger"), "the entities")
    browser.find("#filter").send_keys("LION")
    browser.wait(
        f"!({row_present('zoo/tiger')}) && {row_present('zoo/lion')}"
        f" && {row_present('park/lion-statue')}",
        "the filter",
    )
    browser.screenshot("filter")
    browser.find("#filter").send_keys("-st")
    browser.wait(f"!({row_present('zoo/lion')}) && {row_present('park/lion-statue')}", "more")


def test_an_entity_page_shows_state_source_and_history(
    server: FluxServer, browser: Browser
) -> None:
    for n in range(3):
        publish(server.url, "plant/pump", rpm=1000 + n)
    browser.open(server.url + "/")
    browser.wait(row_present("plant/pump"), "the pump")
    browser.find('li.entity[data-id="plant/pump"] a.id').click()
    browser.wait("document.querySelectorAll('table.history tbody tr').length === 3", "history")
    assert browser.texts("h2.entity-id") == ["plant/pump"]
    assert browser.texts("dd.source") == ["tests"]
    assert browser.texts("dd.version") == [
        str(httpx.get(server.url + "/api/state/entities/plant%2Fpump").json()["version"])
    ]
    assert browser.texts('table.props tr[data-name="rpm"] td') == ["1002"]
    # Live: a new write shows in the properties and, reloaded, in the history.
    publish(server.url, "plant/pump", rpm=1500)
    browser.wait("document.querySelectorAll('table.history tbody tr').length === 4", "more")
    assert browser.texts('table.props tr[data-name="rpm"] td') == ["1500"]
    browser.screenshot("entity")
    assert browser.problems() == []


def test_metrics_move_while_events_flow(
    server_factory: type[FluxServer], tmp_path, browser: Browser
) -> None:
    srv = server_factory(tmp_path / "data", {"FLUX_METRICS_INTERVAL_SECONDS": "0.5"}).start()
    browser.open(srv.url + "/#/metrics")
    browser.wait("document.getElementById('m-events').textContent !== '–'", "first metrics")
    before = int(browser.texts("#m-events")[0])
    for n in range(30):
        publish(srv.url, f"flow/e{n % 5}", n=n)
        time.sleep(0.03)
    browser.wait(
        f"Number(document.getElementById('m-events').textContent) >= {before + 30}"
        " && Number(document.getElementById('m-rate').textContent) > 0",
        "the event count and rate to move",
    )
    browser.wait("document.querySelector('#rate-chart polyline') !== null", "the chart")
    browser.screenshot("metrics")
    srv.stop()


@pytest.fixture
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


def test_a_generic_source_added_in_the_console_appears_in_the_api(
    server: FluxServer, browser: Browser, upstream: JsonServer
) -> None:
    browser.open(server.url + "/#/sources")
    browser.wait("document.querySelector('form#add-source') !== null", "the sources view")
    fields = {
        "name": "weather",
        "url": upstream.url("/weather"),
        "namespace": "demo",
        "entity_key": "oslo",
    }
    for name, value in fields.items():
        browser.find(f'form#add-source input[name="{name}"]').send_keys(value)
    browser.find('form#add-source button[type="submit"]').click()
    browser.wait("document.querySelector('table#sources') !== null", "the source listed")
    sources = httpx.get(server.url + "/api/connectors/generic").json()["sources"]
    assert [(s["name"], s["url"], s["namespace"]) for s in sources] == [
        ("weather", upstream.url("/weather"), "demo")
    ]
    browser.screenshot("sources")
    # Removed in the console, gone from the API.
    browser.find("table#sources button.danger").click()
    browser.wait("document.querySelector('table#sources') === null", "the source removed")
    assert httpx.get(server.url + "/api/connectors/generic").json()["sources"] == []
    assert browser.problems() == []


ADMIN = "console-admin"


def register(url: str, name: str, private: bool) -> str:
    answer = httpx.post(
        f"{url}/api/namespaces",
        json={"name": name, "private": private},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def test_a_private_namespace_shows_only_with_its_token(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    srv = server_factory(
        tmp_path / "data", {"FLUX_AUTH_ENABLED": "true", "FLUX_ADMIN_TOKEN": ADMIN}
    ).start()
    secret = register(srv.url, "secret", private=True)
    public = register(srv.url, "public", private=False)
    publish(srv.url, "secret/plans", token=secret, phase=1)
    publish(srv.url, "public/news", token=public, phase=1)
    browser.open(srv.url + "/")
    browser.wait(row_present("public/news"), "the public entity")
    # Neither the listing nor the live connection shows the private namespace.
    publish(srv.url, "secret/more", token=secret, phase=2)
    publish(srv.url, "public/more", token=public, phase=2)
    browser.wait(row_present("public/more"), "the public write")
    assert "secret/" not in browser.texts("li.group > .group-name")
    assert browser.js("return document.body.textContent.includes('secret/')") is False
    browser.screenshot("auth-without-token")
    # With the namespace's token typed in: listed, and followed live.
    browser.find("#token").send_keys(secret)
    browser.find('#token-form button[type="submit"]').click()
    browser.wait(row_present("secret/plans") + " && " + row_present("secret/more"), "secret/")
    browser.wait("window.fluxConsole.connected", "the new connection")
    time.sleep(0.3)  # the new connection's auth and subscribe frames
    publish(srv.url, "secret/live", token=secret, phase=3)
    browser.wait(row_present("secret/live"), "a live private write", 2.0)
    # The token is kept for the tab only.
    assert browser.js("return sessionStorage.getItem('flux.token')") == secret
    assert browser.js("return localStorage.length") == 0
    assert browser.js("return document.cookie") == ""
    browser.screenshot("auth-with-token")
    # Forgotten: hidden again.
    browser.find("#token-clear").click()
    browser.wait(f"!({row_present('secret/plans')}) && {row_present('public/news')}", "hidden")
    assert browser.problems() == []
    srv.stop()


def test_the_admin_token_creates_a_namespace_and_reads_the_config(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    srv = server_factory(
        tmp_path / "data", {"FLUX_AUTH_ENABLED": "true", "FLUX_ADMIN_TOKEN": ADMIN}
    ).start()
    browser.open(srv.url + "/")
    browser.find("#token").send_keys(ADMIN)
    browser.find('#token-form button[type="submit"]').click()
    browser.driver.get(srv.url + "/#/admin")
    browser.wait("document.getElementById('config').value.includes('rate_limit')", "config")
    browser.find('#namespaces input[name="ns"]').send_keys("made-here")
    browser.find('#namespaces input[name="private"]').click()
    browser.find("#ns-create").click()
    browser.wait("document.getElementById('namespace-out').textContent.includes('token')", "it")
    shown = httpx.get(
        srv.url + "/api/namespaces/made-here", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert shown.status_code == 200 and shown.json()["private"] is True
    browser.screenshot("admin")
    assert browser.problems() == []
    srv.stop()


def test_a_closed_group_counts_deletions_and_the_page_resumes_after_a_restart(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    srv = server_factory(tmp_path / "data").start()
    publish_batch(srv.url, [event(f"big/item-{n:02d}", n=n) for n in range(60)])
    browser.open(srv.url + "/")
    count = "document.querySelector('li.group[data-prefix=\"big/\"] > .count').textContent"
    browser.wait(f"{count} === '60'", "big/ with 60")
    shown = "return document.querySelectorAll('li.entity[data-id^=\"big/\"]').length"
    assert browser.js(shown) == 0  # a group of 60 stays closed
    delete(srv.url, "big/item-07")
    browser.wait(f"{count} === '59'", "big/ to count 59", 1.0)
    # A restart closes the WebSocket; the page reconnects, resumes, and follows again.
    srv.stop()
    browser.wait("!window.fluxConsole.connected", "the disconnect")
    again = server_factory(tmp_path / "data", port=srv.port).start()
    publish(again.url, "after/restart", ok=True)
    browser.wait(row_present("after/restart"), "a write after the restart", 15.0)
    browser.wait(f"{count} === '59'", "big/ still 59")
    again.stop()


def test_a_group_closed_while_it_loads_stays_closed_and_the_last_click_wins(
    server: FluxServer, browser: Browser
) -> None:
    publish_batch(server.url, [event(f"slow/item-{n:03d}", n=n) for n in range(450)])
    browser.open(server.url + "/")
    toggle = "document.querySelector('li.group[data-prefix=\"slow/\"] > .toggle')"
    browser.wait(f"{toggle} !== null", "the group slow/")
    shown = "return document.querySelectorAll('li.entity[data-id^=\"slow/\"]').length"
    # Opened and closed in one turn: the first page is still on its way when the group closes.
    browser.js(f"const t = {toggle}; t.click(); t.click();")
    time.sleep(1.0)
    assert browser.js(shown) == 0
    assert browser.js(f"return {toggle}.getAttribute('aria-expanded')") == "false"
    # "more", then closed and reopened at once: the reopened group shows its first page, not
    # the two pages "more" asked for before.
    browser.js(f"{toggle}.click();")
    browser.wait(row_present("slow/item-199"), "slow/'s first page")
    browser.js(
        "document.querySelector('li.group[data-prefix=\"slow/\"] li.more button').click();"
        f"const t = {toggle}; t.click(); t.click();"
    )
    browser.wait(row_present("slow/item-199"), "slow/ reopened")
    time.sleep(1.0)
    assert browser.js(shown) == 200
    # "more" on its own still brings the next page.
    browser.wait_click(
        'li.group[data-prefix="slow/"] li.more button',
        row_present("slow/item-399"),
        "slow/'s second page",
    )
    assert browser.js(shown) == 400
    assert browser.problems() == []


def test_an_open_group_keeps_the_pages_asked_for_when_the_page_comes_back_after_a_restart(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    """Back after a disconnect, the page reads its levels again: an open group still shows the
    pages "more" brought (it showed the first page only, and a "more" clicked as the page
    came back was lost)."""
    srv = server_factory(tmp_path / "data").start()
    publish_batch(srv.url, [event(f"paged/item-{n:03d}", n=n) for n in range(450)])
    browser.open(srv.url + "/")
    toggle = "document.querySelector('li.group[data-prefix=\"paged/\"] > .toggle')"
    browser.wait(f"{toggle} !== null", "the group paged/")
    browser.js(f"{toggle}.click();")
    browser.wait(row_present("paged/item-199"), "paged/'s first page")
    browser.wait_click(
        'li.group[data-prefix="paged/"] li.more button',
        row_present("paged/item-399"),
        "paged/'s second page",
    )
    shown = "return document.querySelectorAll('li.entity[data-id^=\"paged/\"]').length"
    assert browser.js(shown) == 400
    srv.stop()
    browser.wait("!window.fluxConsole.connected", "the disconnect")
    again = server_factory(tmp_path / "data", port=srv.port).start()
    publish(again.url, "after/restart", ok=True)
    after = "document.querySelector('li.group[data-prefix=\"after/\"]') !== null"
    browser.wait(after, "the page back after the restart", 15.0)
    browser.wait(row_present("paged/item-399"), "paged/'s two pages again")
    time.sleep(0.5)  # every render asked has arrived
    assert browser.js(shown) == 400
    assert browser.js(f"return {toggle}.getAttribute('aria-expanded')") == "true"
    again.stop()


def test_a_connector_token_set_in_the_console_configures_it(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    srv = server_factory(tmp_path / "data", {"FLUX_ENCRYPTION_KEY": key}).start()
    browser.open(srv.url + "/#/sources")
    status = "document.querySelector('#connectors tr[data-name=\"gmail\"] .status').textContent"
    browser.wait(f"{status}.startsWith('not_configured')", "gmail listed, not configured")
    browser.find('#connectors tr[data-name="gmail"] input').send_keys("upstream-secret")
    browser.find('#connectors tr[data-name="gmail"] button:not(.danger)').click()
    browser.wait(f"{status}.startsWith('configured')", "gmail configured")
    assert httpx.get(srv.url + "/api/connectors/gmail").json()["status"] == "configured"
    # The secret is never shown back.
    assert browser.js("return document.body.textContent.includes('upstream-secret')") is False
    browser.find('#connectors tr[data-name="gmail"] button.danger').click()
    browser.wait(f"{status}.startsWith('not_configured')", "gmail's token deleted")
    assert browser.problems() == []
    srv.stop()
