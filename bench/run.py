"""The Flux benchmark harness: `bench/run [--quick] [--results FILE]` (see bench/README.md).

Starts Flux and every peer (bench/peers.py: the ceiling, Redis, NATS KV, and Flux and the
ceiling on Granian) on free loopback ports with fresh data dirs, runs each scenario with a
warm-up and fixed counts or durations, repeats it (Flux and the peers interleaved, so a noisy
neighbour hurts both alike), keeps the median, stops everything, and prints one table of Flux's
figures, each peer's and the ratio Flux / peer, then the same as Markdown for bench/RESULTS.md.

A scenario is a function `(ctx) -> list[Row]` registered in `SCENARIOS` (bench/scenarios.py,
bench/listing.py, bench/restart.py); the shared pieces are in bench/harness.py, the report in
bench/report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench import instructions, listing, peers, report, restart, scenarios, wrk
from bench.harness import FULL, QUICK, ROOT, WORK, Context, Row
from bench.peers import Peer

SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "batch": scenarios.scenario_batch,
    "single": scenarios.scenario_single,
    "get": scenarios.scenario_get,
    "list": listing.scenario_list,
    "memory": listing.scenario_memory,
    "restart": restart.scenario_restart,
    "fanout": scenarios.scenario_fanout,
    # Not in the default run: every server under callgrind (bench/instructions.py).
    "instructions": instructions.scenario_instructions,
}
DEFAULT_SCENARIOS = [name for name in SCENARIOS if name != "instructions"]


# -- main --------------------------------------------------------------------------------------

# --peers keys -> the peers (columns) or stacks (extra rows) they select
PEER_KEYS: dict[str, list[Peer]] = {
    "ceiling": [p for p in peers.PEERS if p.name in ("ceiling", "bare ceiling")],
    "redis": [p for p in peers.PEERS if p.kind == "redis"],
    "nats": [p for p in peers.PEERS if p.name == "NATS KV"],
    "granian": list(peers.STACKS),
    # Flux itself on NATS JetStream, one node and two nodes on one stream, and NATS KV on the
    # same nats-server configuration (not in the default run: each is a nats-server of its own).
    "jetstream": [
        *[p for p in peers.MODES if isinstance(p, peers.FluxJetStreamPeer)],
        *[p for p in peers.PEERS if p.name == "NATS KV sync"],
    ],
    # Flux with its storage statement replaced (bench/storage_bound.py): single publish only.
    "bound": [p for p in peers.PEERS if isinstance(p, peers.FluxStorageBoundPeer)],
}
DEFAULT_PEERS = ("ceiling", "redis", "nats", "granian")


def choose_peers(keys: list[str]) -> tuple[list[Peer], list[Peer], list[str]]:
    """The peers and stacks selected by `keys` that can run here, and why the others cannot."""
    selected = [p for k in keys for p in PEER_KEYS[k]]
    skipped = [f"{p.name}: {why}" for p in selected if (why := p.available())]
    ok = [p for p in selected if not p.available()]
    stacks = [p for p in peers.STACKS if p in ok]
    if len(stacks) % 2:  # they come in pairs (Flux, ceiling on the same stack)
        stacks = []
    return [p for p in peers.PEERS if p in ok], stacks, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small counts and short runs (< 1 minute)"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write the Markdown report to FILE"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} [default: all but instructions]",
    )
    parser.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help=f"comma-separated subset of {', '.join(PEER_KEYS)} to compare with "
        f"[default: {','.join(DEFAULT_PEERS)}]",
    )
    parser.add_argument(
        "--batch-client",
        choices=("python", "wrk"),
        default="python",
        help="load generator for batch ingest: python sends exact counts (asyncio client), "
        "wrk runs for a time [default: python]",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        metavar="N",
        help="events/s the fan-out scenario publishes [default: 100]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data dirs")
    return parser.parse_args(argv)


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    """Stop every server on the way out, including on Ctrl-C and SIGTERM."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        peers.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Delete the data dirs that runs killed before their cleanup left behind, and only
    theirs: another run may be going on at the same time (its harness.pid names a live
    process; a run dir without one counts as live for an hour)."""
    for run_dir in WORK.glob("run-*"):
        pid_file = run_dir / "harness.pid"
        try:
            if pid_file.exists():
                if _alive(int(pid_file.read_text())):
                    continue
            elif time.time() - run_dir.stat().st_mtime < 3600:
                continue
        except (OSError, ValueError):
            continue
        for leftover in run_dir.glob("*-data*"):
            shutil.rmtree(leftover, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.fanout_rate:
        config = dataclasses.replace(config, fanout_rate=args.fanout_rate)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = [n for n in wanted if n not in PEER_KEYS]
    if unknown:
        print(f"unknown peer(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    chosen, stacks, skipped = choose_peers(wanted)
    if not wrk.available():
        print(
            "wrk not found: run bench/run, which installs it (apt-get install wrk)", file=sys.stderr
        )
        return 2
    started = datetime.now(UTC)
    remove_leftovers()
    work = WORK / f"run-{started:%Y%m%dT%H%M%S}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "harness.pid").write_text(str(os.getpid()))
    ctx = Context(config, args, work, WORK / "data", peers.SUBJECT, chosen, stacks)
    for reason in skipped:
        ctx.log(f"left out: {reason}")
        ctx.notes.append(f"Left out of this run: {reason}")
    ctx.log(f"{config.name} run, scenarios {', '.join(names)}; logs in {work.relative_to(ROOT)}")
    t0 = time.monotonic()
    busy0, own0 = report.cpu_ticks()[0], report.own_cpu()
    rows: list[Row] = []
    try:
        with cleanup():
            for i, name in enumerate(names):
                rows += SCENARIOS[name](ctx)
                if not {"list", "memory"} & set(names[i + 1 :]):
                    listing.release(ctx)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            for d in work.glob("*-data*"):
                shutil.rmtree(d, ignore_errors=True)
    elapsed = time.monotonic() - t0
    others = (report.cpu_ticks()[0] - busy0 - (report.own_cpu() - own0)) / elapsed
    ctx.notes.append(
        f"Other processes on the machine used {others:.2f} cores on average during the run "
        f"(of {os.cpu_count()}; near 0 on a quiet machine)"
    )
    print()
    print(report.text_table(report.table(ctx, rows)))
    print()
    markdown = report.report(ctx, rows, started, elapsed)
    print(markdown)
    if args.results:
        args.results.write_text(markdown)
        ctx.log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
