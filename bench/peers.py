"""Peers: the servers a run measures, each started by the harness on a free loopback port.

A peer is a name plus a way to start a server (`Peer.start`) and the set of scenarios it takes
part in. Flux is measured against every other peer of the run; the table shows Flux / peer.
To add a peer (e.g. Redis or NATS KV behind a small HTTP front, or with its own client), add a
`Peer` subclass here and list it in `PEERS`; a scenario it cannot run is left out of `scenarios`
and shows a dash.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

ALL_SCENARIOS = frozenset({"batch", "single", "get", "restart", "fanout"})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def health_status(port: int, timeout: float = 1.0) -> int | None:
    """The status of GET /api/health, or None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the harness dies without cleaning up (even by
    SIGKILL), so no server outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """One running server process (in its own process group, so stopping it stops all of it)."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _RUNNING.add(self)
        self.ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.005) -> float:
        """Poll GET /api/health until it answers 200; returns seconds since the process start."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before answering; "
                    f"see {self.log_path}"
                )
            if health_status(self.port, timeout=5.0) == 200:
                self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            time.sleep(interval)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 120.0) -> float:
        """SIGTERM the process group and wait (Flux writes its final snapshot); SIGKILL after
        `timeout`. Returns the seconds it took."""
        began = time.monotonic()
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self.proc.wait()
            # Anything left in the group (there should be nothing) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        finally:
            self._log.close()
            _RUNNING.discard(self)
        return time.monotonic() - began


_RUNNING: set[Server] = set()


def stop_all() -> None:
    """Stop every server still running (called on exit, errors and Ctrl-C)."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=30.0)


class Peer:
    name = "peer"
    scenarios: frozenset[str] = frozenset()

    def argv(self, port: int, data_dir: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, work: Path, data_dir: Path | None = None, wait: bool = True) -> Server:
        """Start the peer on a free port with `data_dir` (a fresh one under `work` if None)."""
        if data_dir is None:
            data_dir = work / f"{self.name}-data-{time.monotonic_ns()}"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = Server(
            self.name,
            self.argv(port, data_dir),
            port,
            work / "logs" / f"{self.name}-{port}.log",
            self.env(),
        )
        if wait:
            server.wait_ready()
        return server


class FluxPeer(Peer):
    """`flux serve` exactly as a user runs it, with its defaults (SQLite log, synchronous=FULL,
    snapshots every 100k events), in a fresh data dir; only the per-namespace rate limit is
    off (every bench event is in namespace `bench`, and a limit of 10,000 events a minute
    would measure the limiter, not the engine)."""

    name = "Flux"
    scenarios = ALL_SCENARIOS

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "flux",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env["PORT"] = "0"  # --port wins; keep a stray $PORT from mattering
        env["FLUX_RATE_LIMIT_ENABLED"] = "0"
        return env


class CeilingPeer(Peer):
    """The same server stack doing no work (bench/ceiling.py): the most any handler on it
    could reach on this machine."""

    name = "ceiling"
    scenarios = frozenset({"batch", "single", "get", "fanout"})

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "ceiling.py"), "--port", str(port)]


SUBJECT = FluxPeer()
PEERS: list[Peer] = [CeilingPeer()]
