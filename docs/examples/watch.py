"""Watch Flux's live state over the WebSocket (docs/websocket.md).

Subscribes with a snapshot, prints every change, remembers the last version it saw and, after a
disconnect or a server restart, subscribes again with `since` so that no change is missed or
printed twice. Needs the `websockets` package.

    python docs/examples/watch.py --prefix sensors/
    python docs/examples/watch.py --url ws://127.0.0.1:3000/api/ws --entity-id sensors/s1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


async def watch(url: str, subscription: dict[str, Any], max_messages: int | None) -> None:
    last_version: int | None = None  # the highest version received
    seen_at_last: set[str] = set()  # the properties received for it: a change sends one
    printed = 0  # message per property, and a disconnect may cut it short

    while True:
        request = {"type": "subscribe", **subscription}
        if last_version is None:
            request["snapshot"] = True  # first time: the current state, then live changes
        elif seen_at_last:
            request["since"] = last_version - 1  # get the last change again, whole
        else:
            request["since"] = last_version
        try:
            async with connect(url) as ws:
                await ws.send(json.dumps(request))
                async for frame in ws:
                    message = json.loads(frame)
                    kind = message["type"]
                    version = message.get("version")
                    if kind == "state_update":
                        if version == last_version and message["property"] in seen_at_last:
                            continue  # printed before the disconnect
                        if version != last_version:
                            last_version, seen_at_last = version, set()
                        seen_at_last.add(message["property"])
                        value = json.dumps(message["value"])
                        print(f"v{version} {message['entity_id']} {message['property']}={value}")
                    elif kind == "entity_deleted":
                        last_version, seen_at_last = version, set()
                        print(f"v{version} {message['entity_id']} deleted")
                    elif kind == "snapshot":
                        state = json.dumps(message["properties"], sort_keys=True)
                        print(f"snapshot {message['entity_id']} {state} (v{version})")
                    elif kind == "subscribed":  # everything up to `version` has been sent
                        last_version, seen_at_last = version, set()
                        print(f"subscribed at v{version}", flush=True)
                        continue
                    elif kind == "resync":  # the log no longer reaches back: start afresh
                        print(f"resync at v{version}: {message['reason']}", flush=True)
                        continue
                    elif kind == "error":
                        print(f"error: {message['error']}", file=sys.stderr)
                        continue
                    else:  # metrics_update, pong
                        continue
                    sys.stdout.flush()
                    printed += 1
                    if max_messages is not None and printed >= max_messages:
                        return
        except (OSError, ConnectionClosed, InvalidHandshake) as exc:
            print(f"disconnected ({exc}); resuming after v{last_version}", file=sys.stderr)
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:3000/api/ws")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--entity-id", help="one entity (or * for every entity, the default)")
    group.add_argument("--prefix", help="every entity whose id starts with PREFIX")
    parser.add_argument("--max-messages", type=int, help="stop after printing N changes")
    args = parser.parse_args()
    if args.prefix is not None:
        subscription = {"prefix": args.prefix}
    else:
        subscription = {"entity_id": args.entity_id or "*"}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args.url, subscription, args.max_messages))


if __name__ == "__main__":
    main()
