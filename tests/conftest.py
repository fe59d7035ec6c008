"""Shared fixtures: settings on a temp data dir, an in-process app client, and a real server
process (`flux serve`) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.types import ASGIApp

from flux.api.app import create_app
from flux.config import Settings

REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str = "a condition", timeout: float = 20.0) -> T:
    """The first truthy value of `check()`, polled every 20 ms; the test fails after `timeout`
    seconds (20 by default: long enough for a loaded 2-core machine, bounded all the same)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalTestClient(TestClient):
    """Starlette's TestClient as a local caller: requests go to `http://localhost` (a Host the
    server accepts when bound to loopback; Starlette's `testserver` is refused like any other
    name) and JSON bodies say so (`content-type: application/json` unless a test sets another:
    Flux refuses a body of any other type with 415)."""

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        options.setdefault("base_url", "http://localhost")
        options.setdefault("headers", {"content-type": "application/json"})
        super().__init__(app, **options)

    def websocket_connect(self, url: str, *args: Any, **kwargs: Any) -> WebSocketTestSession:
        return super().websocket_connect(urljoin("ws://localhost", url), *args, **kwargs)


@contextlib.contextmanager
def untyped(client: TestClient) -> Iterator[TestClient]:
    """`client` without its default content type: its bodies go with no `Content-Type`."""
    saved = client.headers.pop("content-type", None)
    try:
        yield client
    finally:
        if saved is not None:
            client.headers["content-type"] = saved


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Flux runs on asyncio (uvloop in production): `@pytest.mark.anyio` tests run there only.
    anyio's own fixture would also run them on trio whenever trio is installed (selenium,
    which the browser tests use, brings it)."""
    return "asyncio"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=str(data_dir))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process (lifespan included) behind an HTTP client."""
    with LocalTestClient(create_app(settings)) as test_client:
        yield test_client


class FluxServer:
    """A real `flux serve` process. `start()` waits until it answers /api/health. `port` picks
    the port (a restart on the same address); a free one by default."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """`args`: more `flux serve` flags."""
        self.data_dir = data_dir
        self.args = list(args)
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    def start(
        self, timeout: float = 60.0, ready: Callable[[httpx.Response], bool] | None = None
    ) -> FluxServer:
        """`ready` says which health answer counts as started (a 200 by default)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flux",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                answer = httpx.get(f"{self.url}/api/health", timeout=1.0)
                if ready(answer) if ready is not None else answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the process; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(data_dir: Path, env: dict[str, str] | None = None) -> FluxServer:
    """A started FluxServer; if it does not come up, its process is killed before raising."""
    srv = FluxServer(data_dir, env)
    try:
        return srv.start()
    except BaseException:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()
        raise


def module_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str] | None = None
) -> Iterator[FluxServer]:
    """For a module-scoped fixture: one started server with its own data dir, stopped after."""
    srv = start_server(tmp_path_factory.mktemp(name) / "data", env)
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[FluxServer]]:
    started: list[FluxServer] = []

    class Factory(FluxServer):
        def start(
            self, timeout: float = 60.0, ready: Callable[[httpx.Response], bool] | None = None
        ) -> FluxServer:
            started.append(self)
            return super().start(timeout, ready)

    yield Factory
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()


@pytest.fixture
def server(server_factory: type[FluxServer], data_dir: Path) -> Iterator[FluxServer]:
    """A running `flux serve` on a free port with its own data dir."""
    srv = server_factory(data_dir).start()
    yield srv
    srv.stop()
