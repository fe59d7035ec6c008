"""flux.connectors.runner: schedule, timeout, backoff and status, with an injected clock and
sleep; a real local HTTP server plays a failing and a hanging source."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from flux.connectors.base import KNOWN, Connector, ConnectorError, EventDict
from flux.connectors.runner import ConnectorRunner, Scheduler, backoff_delays
from flux.errors import RateLimited
from localhttp import QuietHTTPServer


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


class Scripted:
    """A connector whose polls follow a script: an exception to raise or events to return."""

    name = "scripted"
    poll_interval_seconds = 10.0

    def __init__(self, script: list[Exception | list[EventDict]]) -> None:
        self.script = script
        self.tokens: list[str | None] = []

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        self.tokens.append(token)
        step = self.script.pop(0) if self.script else []
        if isinstance(step, Exception):
            raise step
        return step


class JsonSource:
    """GET a URL; one event per poll with the JSON answer as properties."""

    name = "json"
    poll_interval_seconds = 5.0

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        response = await client.get(self.url)
        if response.status_code != 200:
            raise ConnectorError(f"source error: {response.status_code}")
        return [{"stream": "s", "source": "json", "payload": {"entity_id": "a"}}]


EVENT: EventDict = {"stream": "s", "source": "t", "payload": {"entity_id": "x", "properties": {}}}


def make(
    connector: Connector, sink_log: list[list[EventDict]], sleep: FakeSleep, **kw: Any
) -> ConnectorRunner:
    async def sink(events: list[EventDict]) -> None:
        sink_log.append(events)

    return ConnectorRunner(connector, sink, sleep=sleep, clock=lambda: 1_700_000_000.5, **kw)


def test_scripted_is_a_connector() -> None:
    assert isinstance(Scripted([]), Connector)
    assert list(KNOWN) == ["github", "gmail", "linkedin", "calendar"]


def test_backoff_delays() -> None:
    assert backoff_delays(1, 1.0, 10.0) == []
    assert backoff_delays(3, 60.0, 600.0) == [60.0, 120.0]
    assert backoff_delays(6, 1.0, 5.0) == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_success_publishes_and_records() -> None:
    sleep, published = FakeSleep(), []

    async def token() -> str | None:
        return "tok"

    runner = make(Scripted([[EVENT, EVENT]]), published, sleep, token=token)
    assert asyncio.run(runner.poll_once()) is True
    assert published == [[EVENT, EVENT]]
    status = runner.status.as_dict()
    assert status["polls"] == 1 and status["events"] == 2 and status["failures"] == 0
    assert status["last_error"] is None
    assert status["last_poll"] == "2023-11-14T22:13:20.500+00:00"
    assert status["poll_interval_seconds"] == 10.0
    assert sleep.calls == []
    assert runner.connector.tokens == ["tok"]  # type: ignore[attr-defined]


def test_retries_with_exponential_backoff_then_succeeds() -> None:
    sleep, published = FakeSleep(), []
    script: list[Exception | list[EventDict]] = [ConnectorError("boom"), RuntimeError("x"), [EVENT]]
    runner = make(Scripted(script), published, sleep, attempts=3, backoff_seconds=2.0)
    assert asyncio.run(runner.poll_once()) is True
    assert sleep.calls == [2.0, 4.0]
    assert runner.status.failures == 2
    assert runner.status.last_error is None
    assert published == [[EVENT]]


def test_gives_up_after_attempts_and_keeps_the_error() -> None:
    sleep, published = FakeSleep(), []
    script: list[Exception | list[EventDict]] = [ConnectorError(f"e{i}") for i in range(5)]
    runner = make(Scripted(script), published, sleep, attempts=3, backoff_seconds=1.0)
    assert asyncio.run(runner.poll_once()) is False
    assert sleep.calls == [1.0, 2.0]
    assert runner.status.last_error == "e2"
    assert runner.status.failures == 3 and runner.status.events == 0
    assert published == []


def test_sink_failure_is_recorded_not_raised() -> None:
    async def sink(events: list[EventDict]) -> None:
        raise ValueError("rejected")

    runner = ConnectorRunner(Scripted([[EVENT]]), sink, attempts=1, sleep=FakeSleep())
    assert asyncio.run(runner.poll_once()) is False
    assert runner.status.last_error == "ValueError: rejected"


def test_describe_sets_the_status_and_the_log_keeps_the_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script: list[Exception | list[EventDict]] = [
        ConnectorError("could not fetch", detail="cannot reach 10.0.0.7: refused"),
        TimeoutError(),
    ]
    runner = make(
        Scripted(script), [], FakeSleep(), attempts=2, describe=lambda exc: "said nothing"
    )
    with caplog.at_level("WARNING", logger="flux.connectors"):
        assert asyncio.run(runner.poll_once()) is False
    assert runner.status.last_error == "said nothing"
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "connector scripted: attempt 1 failed: cannot reach 10.0.0.7: refused",
        "connector scripted: attempt 2 failed: timed out",
    ]


def test_run_polls_on_the_interval() -> None:
    sleep, published = FakeSleep(), []
    runner = make(Scripted([[EVENT], ConnectorError("bad"), [EVENT]]), published, sleep, attempts=1)

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        while runner.status.polls < 4:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sleep.calls[:3] == [10.0, 10.0, 10.0]
    assert runner.status.events == 2


def test_scheduler_starts_and_stops() -> None:
    sleep, published = FakeSleep(), []

    async def main() -> None:
        scheduler = Scheduler()
        scheduler.start()  # an empty scheduler still starts what is added later
        scheduler.add("a", make(Scripted([[EVENT]]), published, sleep))
        scheduler.add("b", make(Scripted([[EVENT]]), published, sleep))
        while len(published) < 2:
            await asyncio.sleep(0)
        await scheduler.remove("b")
        assert list(scheduler.runners) == ["a"]
        await scheduler.stop()

    asyncio.run(main())
    assert published == [[EVENT], [EVENT]]


# -- a real local HTTP source ------------------------------------------------------------------


class Source:
    def __init__(self) -> None:
        self.mode = "fail"
        self.release = threading.Event()
        self.hits = 0


@pytest.fixture
def source() -> Iterator[tuple[str, Source]]:
    state = Source()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            if state.mode == "hang":
                state.release.wait(10)
            code = 200 if state.mode == "ok" else 503
            body = b"{}"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data", state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_failing_http_source(source: tuple[str, Source]) -> None:
    url, state = source
    sleep, published = FakeSleep(), []
    runner = make(JsonSource(url), published, sleep, attempts=2, backoff_seconds=0.5)
    assert asyncio.run(runner.poll_once()) is False
    assert state.hits == 2
    assert runner.status.last_error == "source error: 503"
    state.mode = "ok"
    assert asyncio.run(runner.poll_once()) is True
    assert runner.status.last_error is None and runner.status.events == 1


def test_hanging_http_source_times_out(source: tuple[str, Source]) -> None:
    url, state = source
    state.mode = "hang"
    sleep, published = FakeSleep(), []
    runner = make(JsonSource(url), published, sleep, attempts=2, timeout_seconds=0.2)
    assert asyncio.run(runner.poll_once()) is False
    assert runner.status.last_error is not None
    assert "timed out" in runner.status.last_error or "Timeout" in runner.status.last_error
    assert runner.status.failures == 2
    assert published == []


def test_unreachable_source() -> None:
    sleep, published = FakeSleep(), []
    runner = make(JsonSource("http://127.0.0.1:9/"), published, sleep, attempts=1)
    assert asyncio.run(runner.poll_once()) is False
    assert runner.status.last_error and "ConnectError" in runner.status.last_error


def test_source_asked_wait_longer_than_backoff_ends_the_poll() -> None:
    sleep, published = FakeSleep(), []
    script: list[Exception | list[EventDict]] = [ConnectorError("limited", retry_after=3600.0)]
    runner = make(Scripted(script), published, sleep, attempts=3, backoff_seconds=2.0)
    assert asyncio.run(runner.poll_once()) is False
    assert sleep.calls == []  # no retry: it would only be refused again
    assert runner.status.last_error == "limited" and runner.status.failures == 1
    assert runner.resume_at == 1_700_000_000.5 + 3600.0
    assert runner.next_delay() == 3600.0  # longer than the 10 s interval
    assert runner.next_delay() == 10.0  # once


def test_source_asked_wait_shorter_than_backoff_retries_after_the_longer() -> None:
    sleep, published = FakeSleep(), []
    script: list[Exception | list[EventDict]] = [
        ConnectorError("slow down", retry_after=1.0),
        ConnectorError("slow down", retry_after=5.0),
        [EVENT],
    ]
    runner = make(Scripted(script), published, sleep, attempts=3, backoff_seconds=2.0)
    assert asyncio.run(runner.poll_once()) is False
    # 1 s asked < 2 s backoff: retry after 2 s; 5 s asked > 4 s backoff: give up until then.
    assert sleep.calls == [2.0]
    assert runner.resume_at == 1_700_000_000.5 + 5.0
    assert published == []


def test_flux_rate_limit_is_a_wait_and_a_readable_error() -> None:
    sleep = FakeSleep()

    async def limited(events: list[EventDict]) -> None:
        raise RateLimited(30)

    runner = ConnectorRunner(
        Scripted([[EVENT], [EVENT], [EVENT]]),
        limited,
        sleep=sleep,
        attempts=3,
        backoff_seconds=60.0,
    )
    assert asyncio.run(runner.poll_once()) is False
    assert sleep.calls == [60.0, 120.0]  # the backoff is longer than the 30 s asked
    assert runner.status.last_error == "Flux refused the events: rate limit exceeded"
