"""A second `flux serve` on a busy port (issue 16, first contact): it must say so and exit
before it opens the log and replays it, not after a long start-up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import FluxServer


def test_a_busy_port_fails_before_the_log_is_replayed(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    events = tmp_path / "events"
    writer = server_factory(events).start()
    batch = [
        {"stream": "s", "source": "t", "payload": {"entity_id": f"p/{n}", "properties": {"n": n}}}
        for n in range(500)
    ]
    assert httpx.post(f"{writer.url}/api/events/batch", json=batch).status_code == 200
    writer.stop()

    first = server_factory(tmp_path / "first").start()
    began = time.monotonic()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "flux",
            "serve",
            "--port",
            str(first.port),
            "--data-dir",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - began
    assert second.returncode != 0
    assert f"port {first.port} is in use" in second.stderr, second.stderr
    assert "state ready" not in second.stderr and "replayed" not in second.stderr, second.stderr
    assert took < 20
    assert httpx.get(f"{first.url}/api/health").status_code == 200
