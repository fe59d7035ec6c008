"""The docs' examples run against a real server (as nats.py's tests/test_examples.py does)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from conftest import REPO, FluxServer
from liveclient import TIMEOUT, event, ws_url

WATCH = REPO / "docs" / "examples" / "watch.py"


def publish(srv: FluxServer, *events: dict[str, object]) -> None:
    response = httpx.post(f"{srv.url}/api/events/batch", json={"events": list(events)}, timeout=10)
    assert response.status_code == 200 and response.json()["failed"] == 0, response.text


class Lines:
    """A process's stdout, line by line, with a bounded wait for each."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        self.thread = threading.Thread(target=lambda: [self.queue.put(x) for x in stdout])
        self.thread.start()

    def next(self) -> str:
        return self.queue.get(timeout=TIMEOUT).rstrip("\n")


def test_watch_example_prints_changes_and_resumes_across_a_restart(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = server_factory(data_dir).start()
    publish(first, event("w/a", {"t": 1}), event("w/b", {"t": 2}), event("x/c", {"t": 3}))
    proc = subprocess.Popen(
        [sys.executable, str(WATCH), "--url", ws_url(first.url), "--prefix", "w/"]
        + ["--max-messages", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(proc)
    try:
        assert sorted([lines.next(), lines.next()]) == [
            'snapshot w/a {"t": 1} (v1)',
            'snapshot w/b {"t": 2} (v2)',
        ]
        assert lines.next() == "subscribed at v3"
        publish(first, event("w/a", {"t": 4, "u": "x"}), event("x/c", {"t": 5}))
        assert [lines.next(), lines.next()] == ["v4 w/a t=4", 'v4 w/a u="x"']
        assert first.stop() in (0, -15)
        # While it is down, the example keeps trying; a new server on the same port and data
        # dir takes more changes, which the example gets by resuming with `since`.
        second = server_factory(data_dir)
        second.port, second.url = first.port, first.url
        second.start()
        publish(second, event("w/b", {"t": 6}), event("x/c", {"t": 7}))
        httpx.delete(f"{second.url}/api/state/entities/w%2Fa", timeout=10)
        assert proc.wait(timeout=TIMEOUT) == 0  # --max-messages reached
        lines.thread.join(TIMEOUT)  # it has read everything up to EOF
        rest = [lines.next() for _ in range(lines.queue.qsize())]
        # Whether it reconnected before or after those changes, it prints each once: the
        # change it had whole (v4) is not repeated, and nothing is skipped.
        assert [line for line in rest if not line.startswith("subscribed at")] == [
            "v6 w/b t=6",
            "v8 w/a deleted",
        ]
        assert proc.stderr is not None
        assert "resuming after v4" in proc.stderr.read()
        second.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        lines.thread.join(TIMEOUT)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()


def test_watch_example_help() -> None:
    result = subprocess.run(
        [sys.executable, str(WATCH), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "--max-messages" in result.stdout


def test_the_docs_show_the_example_as_it_is() -> None:
    """Every Python snippet in docs/websocket.md is taken, line for line, from watch.py."""
    doc = (REPO / "docs" / "websocket.md").read_text()
    source = WATCH.read_text()
    snippets = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert snippets
    for snippet in snippets:
        lines = snippet.rstrip("\n").split("\n")
        indent = next(line for line in source.split("\n") if line.strip() == lines[0].strip())
        prefix = indent[: len(indent) - len(indent.lstrip())]
        assert "\n".join(prefix + line if line else line for line in lines) in source, snippet
