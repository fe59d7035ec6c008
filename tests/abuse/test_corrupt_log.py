"""A damaged event log: a real server wrote a few thousand events and stopped; then a page in
the middle of events.db is overwritten, rows go missing, or the file loses its header or its
tail. Flux must refuse to start, report itself unhealthy, or answer a clear 5xx JSON error:
never a short 200 or a silent resync. `flux check` must name the problem (exit 1) and pass a
healthy data dir (exit 0)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from conftest import FluxServer, start_server, wait_for
from flux.cli import main
from liveclient import TIMEOUT, ws_client

ENTITIES = 60
PER_ENTITY = 100  # under the history endpoint's limit of 500: one query returns them all
ENV = {
    "FLUX_SNAPSHOT_EVERY_EVENTS": "1000000",
    "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
}
NO_BACKGROUND_CHECK = {**ENV, "FLUX_LOG_CHECK_AFTER_START": "false"}


def entity(i: int) -> str:
    return f"corrupt/e{i:02d}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped server's data dir: 6,000 events (100 per entity), a final snapshot."""
    data = tmp_path_factory.mktemp("corrupt-template") / "data"
    srv = start_server(data, ENV)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            for start in range(0, ENTITIES * PER_ENTITY, 500):
                events = [
                    {
                        "stream": "corrupt.test",
                        "source": "test",
                        "timestamp": 1_700_000_000_000 + n,
                        "payload": {
                            "entity_id": entity(n % ENTITIES),
                            "properties": {"n": n, "pad": "x" * 80},
                        },
                    }
                    for n in range(start, start + 500)
                ]
                answer = http.post("/api/events/batch", json={"events": events})
                assert answer.status_code == 200 and answer.json()["failed"] == 0, answer.text
    finally:
        srv.stop()
    checkpoint(data / "events.db")
    return data


@pytest.fixture
def data(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(template, copy)
    return copy


def checkpoint(db: Path) -> None:
    """Everything in the database file itself (no WAL left to cover a damaged page)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def events_leaves(db: Path) -> tuple[list[int], int]:
    """The leaf pages of the `events` table in key order, and the page size."""
    conn = sqlite3.connect(db)
    try:
        pages = [
            int(row[0])
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' "
                "ORDER BY path"
            )
        ]
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()
    return pages, size


def damage_middle_page(db: Path) -> None:
    """Overwrite the cells of a leaf page in the middle of `events` (its header and cell
    pointers stay, so SQLite reads garbage rows instead of failing on the page)."""
    leaves, size = events_leaves(db)
    page = leaves[len(leaves) // 2]
    with open(db, "r+b") as f:
        f.seek((page - 1) * size + 100)
        f.write(b"\x55" * (size - 200))


def delete_rows(db: Path, low: int, high: int) -> None:
    """Rows of a sequence range vanish from `events` (their history rows stay)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (low, high))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def histories(srv: FluxServer) -> list[httpx.Response]:
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        return [
            http.get("/api/events", params={"entity": entity(i), "since": "2000-01-01T00:00:00Z"})
            for i in range(ENTITIES)
        ]


def assert_complete_or_refused(answers: list[httpx.Response]) -> None:
    """Each history is whole (200 with every event) or a 5xx JSON error saying the log is
    damaged; at least one is refused (the damage is in the rows they read)."""
    refused = 0
    for answer in answers:
        if answer.status_code == 200:
            assert len(answer.json()) == PER_ENTITY, f"a short 200: {len(answer.json())} events"
        else:
            assert answer.status_code == 500, answer.text
            assert answer.headers["content-type"] == "application/json"
            error = answer.json()["error"]
            assert "event log is damaged" in error and "flux check" in error, error
            refused += 1
    assert refused, "every history answered 200 although rows it reads are damaged"


def ws_replay_error(srv: FluxServer) -> str:
    async def run() -> str:
        async with ws_client(srv.url) as ws:
            await ws.send(type="subscribe", entity_id="*", since=0)
            while True:
                message = await ws.recv(TIMEOUT)
                assert message["type"] not in ("resync", "subscribed"), message
                if message["type"] == "error":
                    error: str = message["error"]
                    return error

    return asyncio.run(run())


def health(srv: FluxServer) -> httpx.Response:
    return httpx.get(f"{srv.url}/api/health", timeout=10)


def degraded(answer: httpx.Response) -> bool:
    return answer.status_code == 503 and answer.json().get("status") == "degraded"


def test_a_damaged_page_the_start_check_misses_is_refused_by_history_and_replay(
    server_factory: type[FluxServer], data: Path
) -> None:
    damage_middle_page(data / "events.db")
    srv = server_factory(data, NO_BACKGROUND_CHECK).start()
    try:
        assert health(srv).status_code == 200  # the snapshot covers the log: nothing read yet
        assert_complete_or_refused(histories(srv))
        error = ws_replay_error(srv)
        assert "event log is damaged" in error and "flux check" in error, error
        answer = health(srv)
        assert degraded(answer), answer.text
        body = answer.json()
        assert "flux check" in body["error"] and body["lastSequence"] == ENTITIES * PER_ENTITY
    finally:
        srv.stop()


def test_missing_rows_are_refused_by_history_and_replay_not_skipped_or_resynced(
    server_factory: type[FluxServer], data: Path
) -> None:
    delete_rows(data / "events.db", 3001, 3010)
    srv = server_factory(data, NO_BACKGROUND_CHECK).start()
    try:
        assert_complete_or_refused(histories(srv))
        error = ws_replay_error(srv)
        assert "event log is damaged" in error and "3001" in error, error
        assert degraded(health(srv))
    finally:
        srv.stop()


def test_the_background_check_after_start_reports_a_damaged_page(
    server_factory: type[FluxServer], data: Path
) -> None:
    damage_middle_page(data / "events.db")
    srv = server_factory(data, ENV).start(ready=lambda a: a.status_code in (200, 503))
    try:
        answer = wait_for(lambda: (lambda a: a if degraded(a) else None)(health(srv)), "degraded")
        assert "events.db" in answer.json()["error"]
    finally:
        srv.stop()
    assert "flux check" in srv.logs()


def _truncate(db: Path) -> None:
    leaves, size = events_leaves(db)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size - 4 * size)


def _header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"\x00" * 100)


def _middle_page_without_snapshot(db: Path) -> None:
    damage_middle_page(db)
    shutil.rmtree(db.parent / "snapshots")


def _rows_missing_without_snapshot(db: Path) -> None:
    delete_rows(db, 2001, 2003)
    shutil.rmtree(db.parent / "snapshots")


@pytest.mark.parametrize(
    "damage", [_truncate, _header, _middle_page_without_snapshot, _rows_missing_without_snapshot]
)
def test_a_log_that_fails_the_start_check_is_refused(
    server_factory: type[FluxServer], data: Path, damage: object
) -> None:
    assert callable(damage)
    damage(data / "events.db")
    srv = server_factory(data, NO_BACKGROUND_CHECK)
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    logs = srv.logs()
    assert "event log is damaged" in logs and "flux check" in logs, logs[-3000:]
    assert str(data / "events.db") in logs


def _sql(db: Path, statement: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(statement)
    finally:
        conn.close()


def check(data: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", "--data-dir", str(data)])
    return result.exit_code, result.output


def test_flux_check_passes_a_healthy_data_dir(data: Path) -> None:
    code, output = check(data)
    assert code == 0, output
    assert "no problems found" in output


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda db: damage_middle_page(db), "integrity"),
        (lambda db: delete_rows(db, 4001, 4005), "4001..4005"),
        (_header, "not a database"),
        # history rows are written in batches behind the events (to meta's history_upto,
        # 4,500 here): one missing below the mark, one above it that the writer never wrote
        (lambda db: _sql(db, "DELETE FROM entity_history WHERE seq = 100"), "1 events have no"),
        (
            lambda db: _sql(
                db,
                "INSERT INTO entity_history SELECT 0, entity_id, 5990 FROM events WHERE seq = 5990",
            ),
            "1 rows point at no matching event (first at sequence 5990)",
        ),
    ],
)
def test_flux_check_names_the_problem_and_exits_1(data: Path, damage: object, says: str) -> None:
    assert callable(damage)
    damage(data / "events.db")
    code, output = check(data)
    assert code == 1, output
    assert says in output, output


def test_flux_check_reports_a_snapshot_that_does_not_match_the_log(data: Path) -> None:
    (snapshot,) = (data / "snapshots").iterdir()
    snapshot.write_bytes(snapshot.read_bytes()[:-20])
    code, output = check(data)
    assert code == 1, output
    assert snapshot.name in output, output
