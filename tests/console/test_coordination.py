"""The console's Coordination view in a real headless Chromium against a real `flux serve`:
leases taken over HTTP appear with their holder, token and a time left that counts down, and
go when released or expired; an entity with a time to live goes when it runs out; presences
(a WebSocket connection's, an HTTP presence lease) appear and go. Everything within a second,
through the page's one live connection."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from browser import Browser
from conftest import FluxServer

from .helpers import event, publish


def row(table: str, entity_id: str) -> str:
    css = f'#{table} tr[data-id="{entity_id}"]'
    return f"document.querySelector({json.dumps(css)})"


def cells(browser: Browser, table: str, entity_id: str) -> list[str]:
    return browser.texts(f'#{table} tr[data-id="{entity_id}"] td')


def lease(url: str, op: str, **body: object) -> dict[str, object]:
    answer = httpx.post(f"{url}/api/leases/{op}", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_a_lease_shows_its_holder_counts_down_and_goes_when_released(
    server: FluxServer, browser: Browser
) -> None:
    publish(server.url, "work/task-1", status="open")  # no lease: not listed
    held = lease(server.url, "acquire", entity_id="work/schedule", owner="node-a", ttl_ms=60000)
    browser.open(server.url + "/#/coordination")
    browser.wait(f"{row('leases', 'work/schedule')} !== null", "the lease read at load")
    assert cells(browser, "leases", "work/schedule")[:3] == [
        "work/schedule",
        "node-a",
        str(held["token"]),
    ]
    assert browser.js(f"return {row('leases', 'work/task-1')}") is None
    # The time left counts down (about 60 s, shown to a tenth of a second).
    first = float(cells(browser, "leases", "work/schedule")[3].split()[0])
    time.sleep(0.5)
    later = float(cells(browser, "leases", "work/schedule")[3].split()[0])
    assert 50 < later < first <= 60
    # A lease taken while the page is open appears live, with its holder.
    other = lease(server.url, "acquire", entity_id="work/backup", owner="node-b", ttl_ms=30000)
    took = browser.wait(f"{row('leases', 'work/backup')} !== null", "a new lease", 1.0)
    print(f"a new lease shown {took * 1000:.0f} ms after it was taken")
    assert cells(browser, "leases", "work/backup")[1:3] == ["node-b", str(other["token"])]
    browser.screenshot("coordination")
    lease(server.url, "release", entity_id="work/schedule", owner="node-a", token=held["token"])
    browser.wait(f"{row('leases', 'work/schedule')} === null", "the released lease to go", 1.0)
    assert browser.js(f"return {row('leases', 'work/backup')} !== null") is True
    # The entity's page says who holds its lease, in words.
    browser.find('#leases tr[data-id="work/backup"] a.id').click()
    browser.wait("document.querySelector('dd.lease') !== null", "the entity's lease")
    assert browser.texts("dd.lease")[0].startswith(f"held by node-b, token {other['token']}")
    assert browser.problems() == []


def test_a_lease_and_a_ttl_that_run_out_go_within_a_second(
    server: FluxServer, browser: Browser
) -> None:
    browser.open(server.url + "/#/coordination")
    browser.wait("document.getElementById('leases-empty') !== null", "no lease yet")
    heartbeat = {**event("work/worker-2", heartbeat=1), "ttl_ms": 1500}
    assert httpx.post(server.url + "/api/events", json=heartbeat).status_code == 200
    held = lease(server.url, "acquire", entity_id="work/short", owner="node-c", ttl_ms=1500)
    browser.wait(
        f"{row('leases', 'work/short')} !== null && {row('ttls', 'work/worker-2')} !== null",
        "the short lease and the TTL",
        1.0,
    )
    assert cells(browser, "ttls", "work/worker-2")[1] == "1500 ms"
    expires_at = int(str(held["expires_at"])) / 1000
    browser.wait(
        f"{row('leases', 'work/short')} === null", "the expired lease to go", 1.5 + 1.0 + 1.0
    )
    gone = time.time()
    print(f"an expired lease left the page {(gone - expires_at) * 1000:.0f} ms after expires_at")
    assert gone - expires_at < 1.0
    browser.wait(f"{row('ttls', 'work/worker-2')} === null", "the expired entity to go", 1.0)
    assert browser.problems() == []


def test_presences_over_the_websocket_and_over_http_appear_and_go(
    server: FluxServer, browser: Browser
) -> None:
    browser.open(server.url + "/#/coordination")
    browser.wait("document.getElementById('presences-empty') !== null", "nobody present")
    ws_url = server.url.replace("http://", "ws://") + "/api/ws"
    with connect(ws_url) as agent:
        agent.send(
            json.dumps(
                {
                    "type": "presence",
                    "entity_id": "agents/worker-7",
                    "properties": {"online": True, "skills": ["resize"]},
                }
            )
        )
        browser.wait(f"{row('presences', 'agents/worker-7')} !== null", "the WS presence", 1.0)
        shown = cells(browser, "presences", "agents/worker-7")
        assert shown[1] == "connection"
        assert "online=true" in shown[3] and 'skills=["resize"]' in shown[3]
        # An HTTP presence lease: a presence and a lease.
        held = lease(
            server.url,
            "acquire",
            entity_id="agents/crawler-2",
            owner="crawler-2",
            ttl_ms=10000,
            presence=True,
            properties={"online": True},
        )
        browser.wait(
            f"{row('presences', 'agents/crawler-2')} !== null"
            f" && {row('leases', 'agents/crawler-2')} !== null",
            "the presence lease",
            1.0,
        )
        assert cells(browser, "presences", "agents/crawler-2")[1] == "lease of crawler-2"
        assert cells(browser, "leases", "agents/crawler-2")[4] == "presence"
        browser.screenshot("coordination-presence")
    # The connection closed: its presence goes.
    browser.wait(f"{row('presences', 'agents/worker-7')} === null", "the WS presence to go", 1.0)
    lease(
        server.url, "release", entity_id="agents/crawler-2", owner="crawler-2", token=held["token"]
    )
    browser.wait(
        f"{row('presences', 'agents/crawler-2')} === null"
        f" && {row('leases', 'agents/crawler-2')} === null",
        "the presence lease to go",
        1.0,
    )
    assert browser.problems() == []


def test_presences_present_before_the_page_opened_are_listed(
    server: FluxServer, browser: Browser
) -> None:
    ws_url = server.url.replace("http://", "ws://") + "/api/ws"
    with connect(ws_url) as agent:
        agent.send(
            json.dumps({"type": "presence", "entity_id": "agents/a1", "properties": {"on": 1}})
        )
        answer = json.loads(agent.recv())
        while answer["type"] not in ("presence", "error"):
            answer = json.loads(agent.recv())
        assert answer["type"] == "presence", answer
        browser.open(server.url + "/#/coordination")
        browser.wait(f"{row('presences', 'agents/a1')} !== null", "the presence read at load")
    browser.wait(f"{row('presences', 'agents/a1')} === null", "it to go", 1.0)


def test_after_a_restart_the_view_follows_again(
    server_factory: type[FluxServer], tmp_path: Path, browser: Browser
) -> None:
    srv = server_factory(tmp_path / "data").start()
    held = lease(srv.url, "acquire", entity_id="work/keeper", owner="node-a", ttl_ms=600000)
    browser.open(srv.url + "/#/coordination")
    browser.wait(f"{row('leases', 'work/keeper')} !== null", "the lease")
    srv.stop()
    browser.wait("!window.fluxConsole.connected", "the disconnect")
    again = server_factory(tmp_path / "data", port=srv.port).start()
    browser.wait("window.fluxConsole.connected", "the reconnection", 15.0)
    lease(again.url, "release", entity_id="work/keeper", owner="node-a", token=held["token"])
    browser.wait(f"{row('leases', 'work/keeper')} === null", "the release after the restart", 5.0)
    lease(again.url, "acquire", entity_id="work/next", owner="node-b", ttl_ms=60000)
    browser.wait(f"{row('leases', 'work/next')} !== null", "a lease after the restart", 1.0)
    again.stop()
