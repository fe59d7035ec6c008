"""What JetStream itself reaches here with `sync_interval: always`, without Flux: the ceiling
of Flux's JetStream modes (bench/RESULTS.md, "Cluster mode").

    .venv/bin/python -m bench.jetstream_sync [--messages N]

Starts a nats-server as the harness does for those modes (peers.NatsServerPeer: a fresh store,
`sync_interval: always`), creates a stream with the settings Flux's log uses
(`flux.log.natswire.stream_config`), and publishes 1,000-message groups of 200-byte messages,
each with its own message id, from one nats-py connection: first as plain publishes, all 1,000
in flight (as Flux's log publishes a batch that is not atomic), then as JetStream atomic batches
(one commit acknowledges the 1,000). Prints messages/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid

from bench.harness import WORK
from bench.peers import NatsServerPeer, stop_all

GROUP = 1_000
BODY = b'{"v":"' + b"x" * 192 + b'"}'


async def measure(port: int, messages: int) -> tuple[float, float]:
    import nats

    from flux.log.natswire import stream_config

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream(timeout=60)
        await js.add_stream(stream_config("SYNC", "sync.>", 1, 120.0))
        began = time.monotonic()
        for g in range(messages // GROUP):
            acks = [
                await js.publish_async(f"sync.e{k}", BODY, headers={"Nats-Msg-Id": f"p{g}.{k}"})
                for k in range(GROUP)
            ]
            await asyncio.gather(*acks)
        plain = messages / (time.monotonic() - began)
        began = time.monotonic()
        for g in range(messages // GROUP):
            batch = uuid.uuid4().hex
            for k in range(1, GROUP + 1):
                headers = {
                    "Nats-Msg-Id": f"a{g}.{k}",
                    "Nats-Batch-Id": batch,
                    "Nats-Batch-Sequence": str(k),
                }
                if k < GROUP:
                    await nc.publish(f"sync.e{k}", BODY, headers=headers)
                    continue
                headers["Nats-Batch-Commit"] = "1"
                ack = await nc.request(f"sync.e{k}", BODY, headers=headers, timeout=60)
                if b'"error"' in ack.data:
                    raise RuntimeError(f"atomic batch refused: {ack.data!r}")
        atomic = messages / (time.monotonic() - began)
        return plain, atomic
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jetstream_sync", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="per mode [default: 20000]")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data_dir = WORK / f"jetstream-sync-data-{time.monotonic_ns()}"
    server = NatsServerPeer().start(WORK, data_dir)
    try:
        plain, atomic = asyncio.run(measure(server.port, args.messages))
    finally:
        stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"plain publishes, {GROUP:,} in flight: {plain:,.0f} messages/s")
    print(f"atomic batches of {GROUP:,}:         {atomic:,.0f} messages/s")


if __name__ == "__main__":
    main()
