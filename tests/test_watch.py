"""`flux watch`: live changes over the WebSocket, against a real `flux serve`, including the
reconnect-and-resume path across a server restart and across cut connections."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, free_port
from flux.cli import main
from flux.client import LiveWatch, websocket_url

CLEAN_ENV: dict[str, str | None] = {
    "FLUX_URL": None,
    "FLUX_TOKEN": None,
    "FLUX_ADMIN_TOKEN": None,
    "FLUX_PRETTY": None,
}
CHANGES = ("state_update", "entity_deleted")


# -- helpers -----------------------------------------------------------------------------------


def publish(url: str, entity_id: str, properties: dict[str, Any]) -> int:
    """POST one event; returns its version (the log sequence)."""
    event = {
        "stream": "sensors",
        "source": "watch-test",
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": properties},
    }
    response = httpx.post(f"{url}/api/events", json=event, timeout=10)
    assert response.status_code == 200, response.text
    sequence: int = response.json()["sequence"]
    return sequence


def delete(url: str, entity_id: str) -> None:
    response = httpx.delete(f"{url}/api/state/entities/{entity_id.replace('/', '%2F')}")
    assert response.status_code == 200, response.text


def changes(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(version, type, entity, property, value) of each change message, in order."""
    return [
        (m["version"], m["type"], m["entity_id"], m.get("property"), m.get("value"))
        for m in messages
        if m["type"] in CHANGES
    ]


def flux(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={**CLEAN_ENV, "FLUX_URL": url})


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


class Watch:
    """`python -m flux watch ARGS` in a subprocess with its stdout piped (so JSON lines),
    read line by line in a thread."""

    def __init__(self, url: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env["FLUX_URL"] = url
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flux", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.messages: list[dict[str, Any]] = []
        self._errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._errors.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._errors)

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> None:
        """Read messages until `done(messages so far)` holds."""
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"timed out; got {self.messages}\n{self.stderr}") from None
            if line is None:
                self.finish()
                raise AssertionError(f"watch ended early; got {self.messages}\n{self.stderr}")
            self.messages.append(json.loads(line))

    def subscribed(self, count: int = 1) -> None:
        self.wait_for(lambda ms: sum(m["type"] == "subscribed" for m in ms) >= count)

    def finish(self, timeout: float = 30) -> int:
        """Wait for the process to stop by itself; returns its exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._join()
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.messages.append(json.loads(line))
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._join()

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def watches() -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(url: str, *args: str) -> Watch:
        watch = Watch(url, *args)
        started.append(watch)
        return watch

    yield start
    for watch in started:
        if watch.proc.poll() is None:
            watch.kill()


# -- live changes ------------------------------------------------------------------------------


def test_watch_prints_live_changes_as_json_lines(
    server: FluxServer, watches: Callable[..., Watch]
) -> None:
    watch = watches(server.url, "--max-messages", "4", "--timeout", "60")
    watch.subscribed()
    v1 = publish(server.url, "live/a", {"temperature": 22.5, "unit": "C"})
    v2 = publish(server.url, "live/b", {"on": True})
    delete(server.url, "live/a")
    assert watch.finish() == 0, watch.stderr
    assert [m["type"] for m in watch.messages] == ["subscribed", *["state_update"] * 3] + [
        "entity_deleted"
    ]
    assert changes(watch.messages) == [
        (v1, "state_update", "live/a", "temperature", 22.5),
        (v1, "state_update", "live/a", "unit", "C"),
        (v2, "state_update", "live/b", "on", True),
        (v2 + 1, "entity_deleted", "live/a", None, None),
    ]
    assert watch.messages[0] == {"type": "subscribed", "entity_id": "*", "version": 0}
    assert watch.stderr.startswith(f"Watching every entity at {server.url}...")


def test_watch_prefix_and_entity_filters(server: FluxServer, watches: Callable[..., Watch]) -> None:
    by_prefix = watches(server.url, "--prefix", "keep/", "--max-messages", "2")
    by_entity = watches(server.url, "keep/one", "--max-messages", "1")
    by_prefix.subscribed()
    by_entity.subscribed()
    publish(server.url, "drop/x", {"n": 1})
    one = publish(server.url, "keep/one", {"n": 2})
    publish(server.url, "keeper/y", {"n": 3})  # "keeper/" does not start with "keep/"
    two = publish(server.url, "keep/two", {"n": 4})
    assert by_prefix.finish() == 0, by_prefix.stderr
    assert by_entity.finish() == 0, by_entity.stderr
    assert by_prefix.messages[0] == {"type": "subscribed", "prefix": "keep/", "version": 0}
    assert changes(by_prefix.messages) == [
        (one, "state_update", "keep/one", "n", 2),
        (two, "state_update", "keep/two", "n", 4),
    ]
    assert changes(by_entity.messages) == [(one, "state_update", "keep/one", "n", 2)]


def test_watch_leaves_out_metrics_unless_asked(
    server_factory: type[FluxServer], data_dir: Path, watches: Callable[..., Watch]
) -> None:
    server = server_factory(data_dir, {"FLUX_METRICS_INTERVAL_SECONDS": "0.1"}).start()
    plain = watches(server.url, "--timeout", "3")
    with_metrics = watches(server.url, "--metrics", "--timeout", "3")
    assert plain.finish() == 0
    assert with_metrics.finish() == 0
    assert [m["type"] for m in plain.messages] == ["subscribed"]
    kinds = [m["type"] for m in with_metrics.messages]
    assert kinds.count("metrics_update") >= 3
    assert set(kinds) == {"subscribed", "metrics_update"}


# -- history -----------------------------------------------------------------------------------


def test_since_replays_exactly_the_changes_after_that_version(server: FluxServer) -> None:
    versions = [publish(server.url, f"hist/e{i % 3}", {"i": i, "sq": i * i}) for i in range(10)]
    delete(server.url, "hist/e1")
    publish(server.url, "other/x", {"i": -1})
    cut = versions[4]
    result = flux(server.url, "watch", "--prefix", "hist/", "--since", str(cut), "--timeout", "2")
    assert result.exit_code == 0, result.output
    messages = json_lines(result.stdout)
    expected: list[tuple[Any, ...]] = []
    for i, v in enumerate(versions):
        if v > cut:
            expected += [
                (v, "state_update", f"hist/e{i % 3}", "i", i),
                (v, "state_update", f"hist/e{i % 3}", "sq", i * i),
            ]
    expected.append((versions[-1] + 1, "entity_deleted", "hist/e1", None, None))
    assert changes(messages) == expected
    # Replay first, then the acknowledgement that everything up to now has been sent.
    assert messages[-1] == {"type": "subscribed", "prefix": "hist/", "version": versions[-1] + 2}
    assert len(messages) == len(expected) + 1

    # --max-messages stops in the middle of the replay, --since 0 starts from the beginning.
    result = flux(server.url, "watch", "hist/e0", "--since", "0", "--max-messages", "3")
    assert result.exit_code == 0, result.output
    assert changes(json_lines(result.stdout)) == [
        (versions[0], "state_update", "hist/e0", "i", 0),
        (versions[0], "state_update", "hist/e0", "sq", 0),
        (versions[3], "state_update", "hist/e0", "i", 3),
    ]


def test_text_output_is_one_readable_line_per_change(server: FluxServer) -> None:
    v1 = publish(server.url, "txt/a", {"temperature": 22.5, "unit": "C"})
    v2 = publish(server.url, "txt/b\nnewline", {"note": "two\nlines"})
    delete(server.url, "txt/a")
    result = flux(server.url, "watch", "--text", "--since", "0", "--timeout", "2")
    assert result.exit_code == 0, result.output
    clock = r"\d\d:\d\d:\d\d\.\d\d\d"
    patterns = [
        rf"{clock}  txt/a  temperature = 22\.5  \(v{v1}\)",
        rf'{clock}  txt/a  unit = "C"  \(v{v1}\)',
        rf'{clock}  "txt/b\\nnewline"  note = "two\\nlines"  \(v{v2}\)',
        rf"{clock}  txt/a  deleted  \(v{v2 + 1}\)",
    ]
    lines = result.stdout.splitlines()
    assert len(lines) == len(patterns), result.stdout
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)

    publish(server.url, "txt/c", {"x": 1, "y": "z"})
    result = flux(
        server.url, "watch", "--text", "--snapshot", "--prefix", "txt/c", "--timeout", "2"
    )
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf'{clock}  txt/c  snapshot: x = 1, y = "z"  \(v{v2 + 2}\)\n', result.stdout
    ), result.stdout


def test_usage_and_connection_errors(server: FluxServer) -> None:
    result = flux(server.url, "watch", "a/b", "--prefix", "a/")
    assert result.exit_code == 2
    assert "give ENTITY or --prefix, not both" in result.stderr
    result = flux("ftp://example.com", "watch")
    assert result.exit_code == 2
    assert "expected an http:// or https:// address" in result.stderr
    result = flux(f"http://127.0.0.1:{free_port()}", "watch", "--timeout", "5")
    assert result.exit_code == 1
    assert "Error: cannot reach Flux at ws://127.0.0.1:" in result.stderr
    result = flux(server.url, "watch", "--since", "-1")
    assert result.exit_code == 2


def test_websocket_url() -> None:
    assert websocket_url("http://localhost:3000") == "ws://localhost:3000/api/ws"
    assert websocket_url("https://flux.example/base/") == "wss://flux.example/base/api/ws"
    assert websocket_url("HTTP://h:1") == "ws://h:1/api/ws"
    with pytest.raises(ValueError):
        websocket_url("localhost:3000")


# -- resuming ----------------------------------------------------------------------------------


def test_resume_point_and_duplicate_filter() -> None:
    """An event that set several properties is several messages: a connection lost between
    them resumes one version earlier and drops the messages already passed on."""
    live = LiveWatch("http://h:1", prefix="ns/")
    assert live.subscribe_message() == {"type": "subscribe", "prefix": "ns/"}
    assert live.accept({"type": "subscribed", "prefix": "ns/", "version": 10})
    assert live.subscribe_message() == {"type": "subscribe", "prefix": "ns/", "since": 10}

    def update(version: int, prop: str) -> dict[str, Any]:
        return {"type": "state_update", "entity_id": "ns/a", "property": prop, "version": version}

    assert not live.accept(update(10, "a"))  # at or below a complete version: a duplicate
    assert live.accept(update(11, "a"))
    assert live.accept(update(11, "b"))
    assert not live.accept(update(11, "a"))
    # Version 11 may be incomplete (property c still to come): resume from 10.
    assert live.subscribe_message()["since"] == 10
    assert not live.accept(update(11, "b"))
    assert live.accept(update(11, "c"))
    assert live.accept(update(12, "a"))
    assert not live.accept(update(11, "d"))  # below the last version: never again
    assert live.accept({"type": "subscribed", "prefix": "ns/", "version": 12})
    assert live.subscribe_message()["since"] == 12
    assert not live.accept(update(12, "z"))

    # The caller's `since` counts as complete; a snapshot is asked for until acknowledged.
    live = LiveWatch("http://h:1", entity_id="ns/a", since=5, snapshot=True)
    assert live.subscribe_message() == {
        "type": "subscribe",
        "entity_id": "ns/a",
        "since": 5,
        "snapshot": True,
    }
    assert not live.accept(update(5, "a"))
    assert live.accept({"type": "snapshot", "entity_id": "ns/a", "properties": {}, "version": 3})
    assert live.accept({"type": "subscribed", "entity_id": "ns/a", "version": 9})
    assert live.subscribe_message() == {"type": "subscribe", "entity_id": "ns/a", "since": 9}

    # A server whose log ends before the last version seen (a new data dir): follow it from
    # where it is, with a warning, rather than drop everything up to the old version.
    said: list[str] = []
    live = LiveWatch("http://h:1", since=500, on_status=said.append)
    assert live.accept({"type": "subscribed", "entity_id": "*", "version": 7})
    assert said == ["the server is at version 7, before version 500; following it from version 7"]
    assert live.accept(update(8, "a"))


def test_watch_survives_a_server_restart_without_loss_or_repeat(
    server_factory: type[FluxServer], data_dir: Path, watches: Callable[..., Watch]
) -> None:
    server = server_factory(data_dir).start()
    before = [(f"rs/e{i % 4}", {"n": i, "half": i / 2}) for i in range(20)]
    after = [(f"rs/e{i % 4}", {"n": i, "half": i / 2}) for i in range(20, 45)]
    watch = watches(server.url, "--max-messages", str(2 * (len(before) + len(after))))
    watch.subscribed()
    for entity, props in before:
        publish(server.url, entity, props)
    watch.wait_for(lambda ms: len(changes(ms)) == 2 * len(before))

    server.stop()  # SIGTERM: the watch loses its connection
    server = server_factory(data_dir, port=server.port).start()
    for entity, props in after:
        publish(server.url, entity, props)
    assert watch.finish() == 0, watch.stderr

    expected = []
    for version, (entity, props) in enumerate(before + after, start=1):
        expected += [(version, "state_update", entity, k, v) for k, v in props.items()]
    assert changes(watch.messages) == expected
    assert "reconnecting" in watch.stderr
    # The second subscription's ack comes after its replay: when the watch reconnected after
    # the last publishes, the replay alone reaches --max-messages and the watch ends before
    # printing that ack; when it reconnected before them, the ack comes first.
    assert [m["type"] for m in watch.messages].count("subscribed") in (1, 2)


class Proxy:
    """A TCP proxy in front of the server that can cut every connection and turn new ones
    away, while the server itself keeps running."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and turn new ones away."""
        self.open = False
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                s.close()


def test_watch_replays_what_it_missed_while_cut_off(
    server: FluxServer, watches: Callable[..., Watch]
) -> None:
    proxy = Proxy(server.port)
    try:
        total = 3 * 30
        watch = watches(proxy.url, "--prefix", "cut/", "--max-messages", str(total))
        watch.subscribed()
        expected = []
        for round_ in range(3):
            if round_:
                proxy.cut()  # this round is published while the watch is cut off
            for i in range(30):
                n = round_ * 30 + i
                version = publish(server.url, f"cut/e{n % 5}", {"n": n})
                expected.append((version, "state_update", f"cut/e{n % 5}", "n", n))
            if round_:
                time.sleep(0.2)  # a reconnect attempt or two is turned away
                proxy.open = True
            count = len(expected)
            watch.wait_for(lambda ms: len(changes(ms)) == count)  # noqa: B023
        assert watch.finish() == 0, watch.stderr
    finally:
        proxy.close()
    assert changes(watch.messages) == expected
    assert watch.stderr.count("reconnected") == 2
