"""Single-runner jobs: work that one node of a cluster does at a time (writing snapshots and
applying retention, logging expiries, polling connectors, writing the directory, removing the
presences of dead nodes), and the liveness of the nodes.

A job named N is held by one node through the key N of the key-value bucket `<stream>_jobs`,
whose values age out after FLUX_CLUSTER_JOB_TTL_SECONDS (the bucket's max age). A node takes a
free job with `create` (which JetStream refuses while another node's key is there) and renews
it every third of the TTL with `update(N, node, last=revision)`, which JetStream refuses
unless the key is still the one this node wrote. A node that dies stops renewing: its key ages
out and another node's next attempt takes the job. A node that stops cleanly deletes its keys,
so the job moves at once. A node restarted after a kill takes back at once the jobs its
previous run still holds (the key's value is its node id: one data dir, one node).

A holder that fails to renew stops acting at once: `Job.held` is true only until one TTL after
the start of the last successful take or renewal (the key cannot age out before then), so a
node cut off from NATS, or whose loop stalled, no longer counts as holder even before it learns
that another node took over. Parts check `held` right before they act, and are told of each
change (`Job.on_change`) to start or stop their work. What they append is also guarded by the
log's own conditions, so an overlap at a hand-over cannot log an expiry twice.

Liveness: every node puts its id in the bucket `<stream>_nodes` (the same TTL) on each round;
`alive()` lists the nodes whose key has not aged out.

Embedded mode (no cluster): every job is held by this process from `start` to `stop`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from flux.cluster import Cluster
from flux.errors import LogError

logger = logging.getLogger("flux.jobs")

Handler = Callable[[bool], Awaitable[None]]


class Job:
    """One single-runner job, as this node sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._until = 0.0  # monotonic time up to which this node holds it
        self._revision = 0  # the key's revision this node wrote last (0: not holding)
        self._told = False  # what the handlers were last told
        self._handlers: list[Handler] = []

    @property
    def held(self) -> bool:
        """Whether this node may act on the job now."""
        return time.monotonic() < self._until

    def on_change(self, handler: Handler) -> None:
        """Call `handler(True)` when this node takes the job, `handler(False)` when it loses
        it (not at `Jobs.stop`: each part stops its own work then)."""
        self._handlers.append(handler)


def _node_key(node: str) -> str:
    """A valid key for any node id (base64url without padding)."""
    return base64.urlsafe_b64encode(node.encode()).decode().rstrip("=") or "_"


def _node_of(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode(errors="replace")


class Jobs:
    def __init__(self, cluster: Cluster | None, ttl: float) -> None:
        """The jobs of this node: in `cluster` (None: embedded, every job runs here), held for
        `ttl` seconds past each renewal."""
        self.cluster = cluster
        self.ttl = ttl
        self.jobs: dict[str, Job] = {}
        self._held_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def node(self) -> str | None:
        """This node's id (None: embedded)."""
        return self.cluster.node if self.cluster is not None else None

    def job(self, name: str) -> Job:
        """The job `name` (made on first use; before `start`)."""
        job = self.jobs.get(name)
        if job is None:
            job = self.jobs[name] = Job(name)
        return job

    async def start(self) -> None:
        """Embedded: hold every job. Cluster: open the buckets, announce this node, try to take
        every job, then keep doing so every third of the TTL. Raises LogError or
        LogUnavailable when the buckets cannot be opened."""
        cluster = self.cluster
        if cluster is None:
            for job in self.jobs.values():
                job._until = math.inf
                await self._tell(job)
            return
        self._held_kv = await cluster.bucket("jobs", ttl=self.ttl)
        self._nodes_kv = await cluster.bucket("nodes", ttl=self.ttl)
        await self._round()
        self._task = asyncio.create_task(self._run(), name="flux-jobs")

    async def stop(self) -> None:
        """Stop renewing; in a cluster, free the jobs held and this node's liveness key, so
        other nodes take over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        freeing = []
        for job in self.jobs.values():
            revision, job._revision, job._until, job._told = job._revision, 0, 0.0, False
            if self._held_kv is not None and revision:
                freeing.append(self._held_kv.delete(job.name, last=revision))
        cluster = self.cluster
        if self._nodes_kv is not None and cluster is not None:
            freeing.append(self._nodes_kv.delete(_node_key(cluster.node)))
        if freeing and cluster is not None and cluster.connected:
            # Cut off from NATS, the keys age out instead; a stop does not wait for that.
            await asyncio.gather(*freeing, return_exceptions=True)
        else:
            for pending in freeing:
                pending.close()

    async def alive(self) -> set[str]:
        """The ids of the nodes alive (whose liveness key has not aged out). Embedded: this
        one's. Raises LogUnavailable when NATS does not answer."""
        if self._nodes_kv is None:
            return {self.node or ""}
        try:
            keys = await self._nodes_kv.keys()
        except nats.js.errors.NoKeysError:
            return set()
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogError(f"cannot list the nodes alive: {exc}") from exc
        return {_node_of(key) for key in keys}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self._round()

    async def _round(self) -> None:
        """Renew the liveness key and every job at once (one slow answer delays no other)."""
        await asyncio.gather(self._beat(), *(self._hold(job) for job in self.jobs.values()))
        for job in self.jobs.values():
            await self._tell(job)

    async def _beat(self) -> None:
        assert self._nodes_kv is not None and self.cluster is not None
        try:
            await self._nodes_kv.put(_node_key(self.cluster.node), b"")
        except (TimeoutError, nats.errors.Error) as exc:
            logger.warning("node %s could not renew its liveness: %s", self.cluster.node, exc)

    async def _hold(self, job: Job) -> None:
        """Take the job if it is free, renew it if this node holds it."""
        kv, node = self._held_kv, self.node
        assert kv is not None and node is not None
        began = time.monotonic()
        try:
            if job._revision:
                revision = await kv.update(job.name, node.encode(), last=job._revision)
            else:
                revision = await kv.create(job.name, node.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            revision = await self._left_behind(kv, job.name, node)
            if not revision:
                if job._revision:
                    logger.warning("node %s lost job %s: another node holds it", node, job.name)
                job._revision, job._until = 0, 0.0
                return
        except (TimeoutError, nats.errors.Error) as exc:
            job._until = 0.0  # keeps the revision: the next round may still renew it
            if job._revision:
                logger.warning("node %s could not renew job %s: %s", node, job.name, exc)
            return
        job._revision, job._until = revision, began + self.ttl

    async def _left_behind(self, kv: KeyValue, name: str, node: str) -> int:
        """Retake a job this node's previous run held (it was killed, its key has not aged out
        yet): a node id is one data dir, so that run is over. Returns the new revision, or 0
        when another node holds the job."""
        try:
            entry = await kv.get(name)
            if entry.value != node.encode() or not entry.revision:
                return 0
            revision: int = await kv.update(name, node.encode(), last=entry.revision)
        except (TimeoutError, nats.errors.Error):
            return 0  # gone meanwhile, or taken: the next round tries again
        logger.info("node %s holds job %s again (left by its previous run)", node, name)
        return revision

    async def _tell(self, job: Job) -> None:
        held = job.held
        if held == job._told:
            return
        job._told = held
        if self.cluster is not None:
            if held:
                logger.info("node %s took job %s", self.cluster.node, job.name)
            else:
                logger.warning("node %s stopped job %s", self.cluster.node, job.name)
        for handler in job._handlers:
            try:
                await handler(held)
            except Exception:
                logger.exception("job %s: a handler failed", job.name)
