"""The `flux` command: `flux serve` runs the server; the other commands talk to one over HTTP,
mirroring scripts/flux.sh, and `flux watch` follows its live changes over the WebSocket (see
docs/cli.md).

Exit codes: 0 success, 1 the request failed (server error, unreachable server, missing admin
token), 2 usage error (bad arguments, invalid JSON), 3 a condition failed (409: nothing stored;
the conflict on stdout), 4 a changes cursor too old (410: read the whole state again).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import httpx

from flux import __version__
from flux._output import (
    JsonArgument,
    change_line,
    conflict_lines,
    connector_table,
    echo_json,
    parse_json,
    progress,
    read_secret,
    source_table,
    stdout_is_terminal,
)
from flux.client import (
    DEFAULT_URL,
    FluxClient,
    FluxClientError,
    FluxConflict,
    FluxConnectionError,
    FluxResync,
    LiveWatch,
)
from flux.config import SETTINGS, ConfigError, Settings, plain, shown_default
from flux.events import now_ms

_SETTING = {s.name: s for s in SETTINGS if s.key is None}


def _settings_help(names: tuple[str, ...] | None = None) -> str:
    """`flux serve --help`'s epilog: every setting's variable, default and help (only those of
    the settings `names`, when given)."""
    lines = ["\b", "Environment variables (flags win; see docs/configuration.md):"]
    for s in SETTINGS:
        if names is not None and s.name not in names:
            continue
        runtime = ", runtime" if s.runtime else ""
        lines.append(f"  {s.env} [default: {shown_default(s)}{runtime}]")
        lines += textwrap.wrap(
            plain(s.help),
            76,
            initial_indent=" " * 6,
            subsequent_indent=" " * 6,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return "\n".join(lines)


def _flag_help(text: str, name: str) -> str:
    """A `flux serve` flag's help: `text [default: <the setting's default>, $<its variable>].`"""
    setting = _SETTING[name]
    return f"{text} [default: {shown_default(setting)}, ${setting.env}]."


@dataclass
class ClientOptions:
    """What the client commands need, set by the group's options (tests may pre-set `transport`
    through `CliRunner.invoke(..., obj=ClientOptions(transport=...))`)."""

    url: str = DEFAULT_URL
    token: str | None = None
    admin_token: str | None = None
    pretty: bool | None = None
    transport: httpx.BaseTransport | None = None

    def client(self) -> FluxClient:
        return FluxClient(
            self.url, token=self.token, admin_token=self.admin_token, transport=self.transport
        )


ENV_HELP = f"""\b
Environment:
  FLUX_URL          server address [default: {DEFAULT_URL}]
  FLUX_TOKEN        bearer token sent on every request (namespace token)
  FLUX_ADMIN_TOKEN  bearer token for `flux admin-config JSON` (runtime config updates)
  FLUX_PRETTY       1: always indent JSON output, 0: always compact

\b
Exit codes: 0 success, 1 request failed or server unreachable, 2 usage error,
  3 condition failed (409: nothing was stored; the conflict's JSON is on stdout:
    read .current_version and retry), 4 changes cursor too old (410: resync)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=ENV_HELP)
@click.version_option(__version__, prog_name="flux")
@click.option(
    "--url",
    envvar="FLUX_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Flux server the client commands talk to [$FLUX_URL].",
)
@click.option(
    "--pretty/--compact",
    envvar="FLUX_PRETTY",
    default=None,
    help="Indent JSON output, or print it on one line [default: indent only on a terminal].",
)
@click.pass_context
def main(ctx: click.Context, url: str, pretty: bool | None) -> None:
    """Flux: publish events and query shared world state.

    Start a server with `flux serve`; the other commands talk to the server at $FLUX_URL
    (default http://localhost:3000), with $FLUX_TOKEN as bearer token when set.

    \b
    Example:
      flux publish sensors agent-01 dawn-coral/sensor-01 '{"temperature":22.5}'
      flux get dawn-coral/sensor-01
    """
    options = ctx.ensure_object(ClientOptions)
    options.url = url
    options.pretty = pretty
    options.token = os.environ.get("FLUX_TOKEN") or None
    options.admin_token = os.environ.get("FLUX_ADMIN_TOKEN") or None


@main.command(epilog=_settings_help())
@click.option("--host", default=None, help=_flag_help("Address to bind", "host"))
@click.option("--port", type=int, default=None, help=_flag_help("TCP port", "port"))
@click.option(
    "--data-dir",
    default=None,
    help=_flag_help("Where the event log and snapshots live", "data_dir"),
)
@click.option(
    "--nats",
    "nats_url",
    default=None,
    metavar="nats://HOST:PORT[,...]",
    help=_flag_help(
        "Keep the events in NATS JetStream on these servers (comma-separated), shared by "
        "every node on the same stream, instead of the SQLite log in the data dir",
        "nats_url",
    ),
)
def serve(host: str | None, port: int | None, data_dir: str | None, nats_url: str | None) -> None:
    """Run the Flux server (SQLite event log and snapshots in the data dir by default)."""
    import uvicorn

    from flux import _parsers as parse
    from flux.api.app import create_app
    from flux.api.connections import protocols, raise_open_file_limit
    from flux.api.hosts import host_check
    from flux.api.hotpaths import HotPaths

    if nats_url is not None:
        # Parsed as FLUX_NATS_URL is, so the flag and the variable give the same settings.
        try:
            nats_url = parse.nats_servers(nats_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--nats") from None
    try:
        settings = Settings.from_env(
            os.environ, host=host, port=port, data_dir=data_dir, nats_url=nats_url
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    level = settings.log_level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.access_log:
        logging.getLogger("flux.access").setLevel(logging.INFO)  # asked for: shown at any level
    if level != "DEBUG":
        # httpx logs every request of every connector poll at INFO; the connectors' own log
        # says what matters (failures, waits, starts and stops).
        logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("flux").info(
        "Flux %s starting: data dir %s, event log %s",
        __version__,
        os.path.abspath(settings.data_dir),
        settings.event_log_url(),
    )
    soft, hard = raise_open_file_limit()
    logging.getLogger("flux").info("open file limit %d (hard limit %d)", soft, hard)
    # Bound before anything opens the log: uvicorn binds after the lifespan's start-up, so a
    # busy port was found only after a full replay.
    listener = listen(settings.host, settings.port)
    app = create_app(settings)
    hot = None
    if settings.hot_paths and not settings.access_log:  # the access log is the edge's
        state = app.state
        hot = HotPaths(state.server, state.histograms, host_check(settings), state.hot_counts)
    http_protocol, ws_protocol = protocols(settings, hot)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits for open responses before the lifespan shutdown; an SSE stream never
            # ends by itself, so end every live connection first (WebSockets close with 1012).
            app.state.live.close_all()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # uvicorn's httptools and websockets-sansio protocols with header and body deadlines
        # and a per-client connection limit (flux.api.connections).
        http=http_protocol,
        ws=ws_protocol,
        lifespan="on",
        access_log=False,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=30,
        # Each message is encoded once for every subscriber; per-connection compression would
        # redo the work for each one.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
    )
    # The log writer thread releases the GIL while SQLite works; a short switch interval lets it
    # take the GIL back quickly while the event loop is busy (the default 5 ms stalls commits).
    sys.setswitchinterval(0.001)
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn shut down, then re-raised
        server.run(sockets=[listener])
    if not server.started:
        raise SystemExit(1)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (as uvicorn binds: IPv6 for a host with a colon,
    SO_REUSEADDR). Raises ClickException naming the port when it cannot be had (in use, or
    not allowed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (
            f"port {port} is in use (another Flux, or another program, listens on it)"
            if exc.errno == errno.EADDRINUSE
            else f"cannot listen on port {port}: {exc.strerror or exc}"
        )
        raise click.ClickException(
            f"{why}; nothing was started. Choose another with --port or PORT (host {host})."
        ) from None
    sock.set_inheritable(True)
    return sock


@main.command()
@click.option(
    "--data-dir",
    default=None,
    help=_flag_help("The data dir to check", "data_dir"),
)
def check(data_dir: str | None) -> None:
    """Check a data dir's event log and snapshots for damage; exit 1 if any is found.

    Reads all of it (about a second per million events, more on a cold disk): SQLite's
    integrity_check over events.db; that every sequence is stored above the retention floor
    (holes the log made itself are noted, not counted); meta's last sequence against the
    newest row; entity_history against events; every snapshot loads, is not ahead of the log,
    and, replayed to the log's end, gives the state a replay of the whole log gives.

    It only reads (one read transaction), so it may run beside a running server; the server
    goes on writing meanwhile. It checks the SQLite log in the data dir ($FLUX_EVENT_LOG
    pointing elsewhere is not followed).

    \b
    Exit codes: 0 no problems, 1 problems found (each on a `PROBLEM:` line), 2 usage error.

    \b
    Example:
      flux check --data-dir /var/lib/flux
    """
    from pathlib import Path

    from flux.check import check_data_dir

    try:
        settings = Settings.from_env(os.environ, data_dir=data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    root = Path(settings.data_dir)
    if not root.is_dir():
        raise click.UsageError(f"no data dir at {root}")
    began = time.monotonic()
    report = check_data_dir(root / "events.db", root / "snapshots", click.echo, progress)
    took = time.monotonic() - began
    if report.problems:
        click.echo(f"{len(report.problems)} problem(s) found in {root} ({took:.1f}s)")
        raise SystemExit(1)
    click.echo(f"no problems found in {root} ({took:.1f}s)")


EXIT_REFUSED = 3  # flux migrate: the cluster holds other data, or the data dir cannot move


@main.command(
    epilog=_settings_help(
        (
            "data_dir",
            "nats_url",
            "nats_stream",
            "nats_subject",
            "nats_replicas",
            "dedupe_window_seconds",
        )
    )
)
@click.option(
    "--data-dir",
    default=None,
    help=_flag_help("The embedded data dir to move (its server stopped)", "data_dir"),
)
@click.option(
    "--nats",
    "nats_url",
    default=None,
    metavar="nats://HOST:PORT[,...]",
    help=_flag_help("The NATS servers of the cluster to move it into", "nats_url"),
)
def migrate(data_dir: str | None, nats_url: str | None) -> None:
    """Move an embedded data dir into a cluster: events, snapshot, namespaces, config,
    credentials and sources.

    Copies every event of the data dir's SQLite log into the stream that `flux serve --nats`
    uses (FLUX_NATS_STREAM, FLUX_NATS_SUBJECT and FLUX_NATS_REPLICAS as for `flux serve`;
    the stream is created when missing), each at the sequence it has in the log, with its
    event id and log time: versions, history and changes cursors stay as they were. Then it
    copies the data dir's newest snapshot into the cluster's object store, and the namespace
    registry (token hashes: the tokens keep working), the runtime config, the connector
    credentials and the generic sources into the cluster's key-value buckets. Credentials are
    copied sealed, never decrypted: start every node with the FLUX_ENCRYPTION_KEY the embedded
    server had. Start the nodes with `flux serve --nats` (a new data dir each) once it has
    finished: they start from that snapshot, the stream and the buckets.

    Stop the embedded server first. Safe to run again: it checks, event by event, that what
    the stream holds is this log's beginning and copies the rest (after an interruption it
    goes on where it stopped; when all is there it copies nothing). It refuses, copying
    nothing, when the stream holds other events, or a bucket holds one of the data dir's keys
    with another value (the message names it). When retention removed the log's first
    events, the stream begins at its first retained one and the snapshot carries their
    state; without a snapshot that covers them it refuses. Progress goes to stderr, the
    summary of each step to stdout.

    \b
    Exit codes: 0 done (or nothing to do), 1 failed (NATS unreachable, a damaged log; run it
    again once fixed), 2 usage error, 3 refused (the message says why; nothing was copied).

    \b
    Example:
      flux migrate --data-dir ./flux-data --nats nats://127.0.0.1:4222
    """
    from pathlib import Path

    from flux import _parsers as parse
    from flux.errors import FluxError, MigrationRefused
    from flux.log.jetstream import from_url
    from flux.migrate import migrate as run

    if nats_url is not None:
        try:
            nats_url = parse.nats_servers(nats_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--nats") from None
    try:
        settings = Settings.from_env(os.environ, data_dir=data_dir, nats_url=nats_url)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    # The stream `flux serve` would use with these settings (FLUX_EVENT_LOG=nats://... wins,
    # as it does there); a FLUX_EVENT_LOG naming a SQLite file is not followed: the source is
    # the data dir's log.
    target_url = settings.cluster_url() or settings.replace(event_log="").cluster_url()
    if target_url is None:
        raise click.UsageError("no NATS servers to migrate into: give --nats or FLUX_NATS_URL")
    root = Path(settings.data_dir)
    if not (root / "events.db").is_file():
        raise click.UsageError(f"no event log at {root / 'events.db'}: is {root} a data dir?")
    target = from_url(target_url, settings.nats_parameters())
    began = time.monotonic()
    try:
        results = asyncio.run(run(root, target, progress, snapshot_keep=settings.snapshot_keep))
    except MigrationRefused as exc:
        click.echo(f"Error: refused: {exc.message}", err=True)
        raise SystemExit(EXIT_REFUSED) from None
    except FluxError as exc:  # NATS unreachable, a store of the data dir that does not read
        raise click.ClickException(exc.message) from None
    for result in results:
        click.echo(result.summary())
    click.echo(
        f"migrated {root} into the stream {target.stream!r} ({time.monotonic() - began:.1f}s)"
    )


# -- client commands ---------------------------------------------------------------------------


def _options() -> ClientOptions:
    return click.get_current_context().ensure_object(ClientOptions)


EXIT_CONFLICT = 3  # a condition failed (409): nothing was stored, retry against the current state
EXIT_RESYNC = 4  # a changes cursor older than the deletions the server remembers (410)


class ConflictExit(click.ClickException):
    """`Error: <message>` on stderr and exit status 3: a condition failed."""

    exit_code = EXIT_CONFLICT


class ResyncExit(click.ClickException):
    """`Error: <message>` on stderr and exit status 4: a changes cursor too old."""

    exit_code = EXIT_RESYNC


@contextlib.contextmanager
def _flux() -> Iterator[FluxClient]:
    """A client for the current command; a failed request becomes `Error: <message> (HTTP n)`
    on stderr and exit status 1. A failed condition exits 3 with the conflict explained on
    stderr and the server's answer on stdout (for scripts: its `current_version`), a changes
    cursor that is too old exits 4."""
    try:
        with _options().client() as client:
            yield client
    except FluxConflict as exc:
        _show(exc.details)
        raise ConflictExit("\n  ".join([str(exc), *conflict_lines(exc.details)])) from None
    except FluxResync as exc:
        raise ResyncExit(
            f"{exc}\n  the server is at version {exc.version}: read the state (flux list), "
            f"then follow from there (flux changes --since {exc.version})"
        ) from None
    except FluxClientError as exc:
        raise click.ClickException(str(exc)) from None


def _show(value: Any) -> None:
    echo_json(value, _options().pretty)


def _with_timestamps(events: list[Any], timestamp: int) -> list[Any]:
    """The events, each object without a `timestamp` given this one (the API requires it)."""
    return [
        {**event, "timestamp": timestamp}
        if isinstance(event, dict) and "timestamp" not in event
        else event
        for event in events
    ]


def _expected(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """`--expect KEY=JSON` pairs as `expected_properties` (None when there are none)."""
    if not pairs:
        return None
    expected: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"{pair!r}: expected KEY=JSON, e.g. status='\"open\"' or owner=null",
                param_hint="--expect",
            )
        try:
            expected[key] = parse_json(text)
        except ValueError:
            raise click.BadParameter(
                f"{pair!r}: {text!r} is not JSON (a string needs quotes: {key}='\"{text}\"')",
                param_hint="--expect",
            ) from None
    return expected


@main.command()
@click.argument("stream")
@click.argument("source")
@click.argument("entity_id")
@click.argument("properties_json", type=JsonArgument(dict))
@click.option(
    "--timestamp", type=click.IntRange(min=1), help="Event time in epoch ms [default: now]."
)
@click.option(
    "--expect-version",
    type=click.IntRange(min=0),
    metavar="N",
    help="Store only if the entity's version is N (0: only if it does not exist).",
)
@click.option("--if-absent", is_flag=True, help="Store only if the entity does not exist yet.")
@click.option(
    "--expect",
    "expect",
    multiple=True,
    metavar="KEY=JSON",
    help="Store only if property KEY is JSON now (null: absent). Repeatable.",
)
@click.option(
    "--fencing-token",
    type=click.IntRange(min=1),
    metavar="T",
    help="The entity's lease token (flux lease acquire); refused once a newer one was issued.",
)
@click.option(
    "--ttl-ms",
    type=click.IntRange(min=0),
    metavar="N",
    help="Delete the entity if it is not updated within N ms (0: no time to live any more).",
)
def publish(
    stream: str,
    source: str,
    entity_id: str,
    properties_json: dict[str, Any],
    timestamp: int | None,
    expect_version: int | None,
    if_absent: bool,
    expect: tuple[str, ...],
    fencing_token: int | None,
    ttl_ms: int | None,
) -> None:
    """Publish an event that sets properties on an entity.

    Only the properties given change; the entity's other properties are kept.

    With a condition (--expect-version, --if-absent, --expect, --fencing-token) the event
    is stored only if it holds when the server orders the event, so two agents can never
    both win. If it does not hold, nothing is stored and the command exits 3: stderr says
    why (the version now, who changed it last, who holds its lease) and stdout holds the
    server's JSON answer (`current_version`, `current`), to retry from.

    \b
    STREAM           event stream: lowercase letters, digits and dots (sensors, system)
    SOURCE           who is publishing (agent-01)
    ENTITY_ID        the entity, prefixed with your namespace (dawn-coral/sensor-01)
    PROPERTIES_JSON  JSON object of properties to set ('-' reads it from stdin)

    \b
    Examples:
      flux publish sensors agent-01 dawn-coral/sensor-01 '{"temperature":22.5,"unit":"C"}'
      flux publish tasks agent-01 dawn-coral/task-7 '{"status":"open"}' --if-absent
      flux publish tasks agent-01 dawn-coral/task-7 '{"status":"taken","by":"agent-01"}' \\
          --expect status='"open"'
      flux publish tasks agent-01 dawn-coral/counter '{"n":8}' --expect-version 41
      flux publish agents agent-01 dawn-coral/agent-01 '{"alive":true}' --ttl-ms 30000
    """
    if if_absent and expect_version not in (None, 0):
        raise click.UsageError("--if-absent means --expect-version 0; give one of them")
    expected = _expected(expect)
    progress("Publishing event to Flux...")
    with _flux() as flux:
        _show(
            flux.publish(
                stream,
                source,
                entity_id,
                properties_json,
                timestamp,
                expected_version=expect_version,
                expected_properties=expected,
                fencing_token=fencing_token,
                ttl_ms=ttl_ms,
                if_absent=if_absent,
            )
        )


@main.command()
@click.argument("events_json", type=JsonArgument(list, dict))
@click.option(
    "--atomic",
    is_flag=True,
    help='All events or none (also {"events": [...], "atomic": true}).',
)
def batch(events_json: list[Any] | dict[str, Any], atomic: bool) -> None:
    """Publish several events in one request.

    Events without a `timestamp` get the current time. Events may carry conditions
    (`expected_version`, `expected_properties`, `fencing_token`) and `ttl_ms`, as in
    `flux publish`. Exits 1 if any event was rejected; the others are stored all the same
    (see `results`). Exits 3 instead when the only rejections are failed conditions.

    With --atomic every event is stored, in consecutive versions, or none is: a failed
    condition exits 3 with the conflict (its `index` names the event), any other bad event
    exits 1.

    \b
    EVENTS_JSON  JSON array of events, or {"events": [...]} ('-' reads stdin); each event
                 is {"stream", "source", "payload": {"entity_id", "properties"}}

    \b
    Examples:
      flux batch '[{"stream":"sensors","source":"agent-01",
                    "payload":{"entity_id":"dawn-coral/sensor-01","properties":{"temp":22}}}]'
      flux batch --atomic '[
        {"stream":"tasks","source":"w1","expected_properties":{"status":"open"},
         "payload":{"entity_id":"dawn-coral/task-7","properties":{"status":"taken"}}},
        {"stream":"tasks","source":"w1","expected_properties":{"busy":false},
         "payload":{"entity_id":"dawn-coral/w1","properties":{"busy":true}}}]'
    """
    events = events_json.get("events") if isinstance(events_json, dict) else events_json
    if not isinstance(events, list):
        raise click.BadParameter(
            'expected an array of events or {"events": [...]}', param_hint="EVENTS_JSON"
        )
    if isinstance(events_json, dict) and events_json.get("atomic") is True:
        atomic = True
    progress("Publishing batch to Flux...")
    with _flux() as flux:
        result = flux.batch(_with_timestamps(events, now_ms()), atomic=atomic)
    _show(result)
    failed = result.get("failed", 0)
    if not failed:
        return
    results = [r for r in result.get("results", []) if isinstance(r, dict) and r.get("error")]
    conflicts = [r for r in results if "conflict" in r]
    lines = [f"{failed} of {len(events)} event(s) rejected (see results)"]
    lines += [f"event {r.get('index')}: {r.get('error')}" for r in conflicts]
    if len(conflicts) == failed:
        raise ConflictExit("\n  ".join(lines))
    raise click.ClickException("\n  ".join(lines))


@main.command()
@click.argument("entity_id")
def get(entity_id: str) -> None:
    """Show an entity's current state.

    The state holds every property published to the entity, merged (last write wins).

    \b
    ENTITY_ID  the entity (dawn-coral/sensor-01)

    \b
    Example:
      flux get dawn-coral/temp-sensor-01
    """
    with _flux() as flux:
        _show(flux.get(entity_id))


@main.command(name="list")
@click.option("--prefix", metavar="P", help="Only ids starting with P (scada/).")
@click.option("--namespace", metavar="NS", help="Only ids in namespace NS (the part before '/').")
def list_(prefix: str | None, namespace: str | None) -> None:
    """List entities, optionally filtered.

    With both --prefix and --namespace, an entity must match both.

    \b
    Examples:
      flux list
      flux list --prefix scada/
      flux list --namespace dawn-coral
    """
    with _flux() as flux:
        _show(flux.list(prefix=prefix, namespace=namespace))


@main.command()
@click.argument("entity_id")
def delete(entity_id: str) -> None:
    """Delete an entity.

    The deletion is logged as an event; publishing to the id again re-creates it.

    \b
    ENTITY_ID  the entity (dawn-coral/sensor-01)

    \b
    Example:
      flux delete test/old-entity
    """
    progress(f"Deleting entity {entity_id}...")
    with _flux() as flux:
        _show(flux.delete(entity_id))


@main.command(name="batch-delete")
@click.argument("filter_json", type=JsonArgument(dict))
def batch_delete(filter_json: dict[str, Any]) -> None:
    """Delete every entity that a filter selects.

    \b
    FILTER_JSON  one of {"namespace": "NS"}, {"prefix": "P"}, {"entity_ids": ["id", ...]}

    \b
    Examples:
      flux batch-delete '{"prefix":"test/"}'
      flux batch-delete '{"entity_ids":["dawn-coral/sensor-01","dawn-coral/sensor-02"]}'
    """
    progress("Batch deleting entities...")
    with _flux() as flux:
        _show(flux.batch_delete(filter_json))


@main.command()
@click.argument("entity")
@click.option("--since", metavar="TIME", help="ISO 8601 start time [default: 24 hours ago].")
@click.option(
    "--limit", type=click.IntRange(1, 500), help="At most this many events [default: 100]."
)
def history(entity: str, since: str | None, limit: int | None) -> None:
    """Show the events stored for an entity, newest first.

    \b
    ENTITY  the entity id (dawn-coral/sensor-01)

    \b
    Example:
      flux history dawn-coral/sensor-01 --since 2026-01-01T00:00:00Z --limit 10
    """
    with _flux() as flux:
        _show(flux.history(entity, since=since, limit=limit))


@main.command()
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    metavar="V",
    help="Changes after version V (a page's `next`) [default: 0, everything].",
)
@click.option("--prefix", metavar="P", help="Only ids starting with P.")
@click.option("--namespace", metavar="NS", help="Only ids in namespace NS.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N changes per page [default and maximum: the server's FLUX_CHANGES_PAGE_LIMIT].",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep polling from each page's `next` until Ctrl-C; prints the pages that hold something.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --follow: the wait between polls once caught up.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --follow: stop after this many seconds (checked at each poll).",
)
def changes(
    since: int,
    prefix: str | None,
    namespace: str | None,
    limit: int | None,
    follow: bool,
    interval: float,
    timeout: float | None,
) -> None:
    """Show what changed after a version: cheap polling without a WebSocket.

    Prints one page of GET /api/state/changes: {"changes": [entity, ...], "deleted":
    [{"id", "version"}, ...], "next": V, "more": bool}, oldest first, each changed entity as
    it is now. Ask again with --since V (the page's `next`) for what follows; `more: true`
    means a page is already waiting. With --follow it does that by itself, one JSON page per
    line when piped. Exits 4 when the server no longer remembers the deletions since
    --since (FLUX_TOMBSTONES_KEPT): read the whole state again (flux list), then follow
    from the version the error names.

    \b
    Examples:
      flux changes --prefix dawn-coral/
      flux changes --since 1200 | jq -r '.changes[].id'
      flux changes --since 1200 --follow --interval 2 | jq -c '.deleted[]'
    """
    if not follow and timeout is not None:
        raise click.UsageError("--timeout goes with --follow")
    with _flux() as flux:
        if not follow:
            page = flux.changes(since, prefix=prefix, namespace=namespace, limit=limit)
            _show(page)
            if page.get("more"):
                progress(f"More changes are waiting: flux changes --since {page.get('next')}")
            return
        progress(f"Following changes after version {since} at {_options().url} (Ctrl-C stops)...")
        deadline = None if timeout is None else time.monotonic() + timeout
        pages = flux.iter_changes(
            since, prefix=prefix, namespace=namespace, limit=limit, follow=True, interval=interval
        )
        with _stopping_quietly():
            for page in pages:
                if page["changes"] or page["deleted"]:
                    _show(page)
                if deadline is not None and time.monotonic() >= deadline:
                    return


@contextlib.contextmanager
def _stopping_quietly() -> Iterator[None]:
    """For commands that run until stopped: Ctrl-C ends them with status 0, and so does a
    reader that went away (`... | head`), without Python complaining again when it flushes
    stdout on exit."""
    try:
        yield
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


_OWNER = click.option(
    "--owner", required=True, metavar="O", help="Who holds the lease (a worker's id)."
)
_TOKEN = click.option(
    "--token",
    required=True,
    type=click.IntRange(min=1),
    metavar="T",
    help="The lease's token (from flux lease acquire).",
)


_TTL = click.option(
    "--ttl-ms",
    required=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="How long the lease lasts from now, unless renewed (at most the server's "
    "FLUX_LEASE_MAX_TTL_MS).",
)


@main.group()
def lease() -> None:
    """Leases: one owner at a time holds an entity, for a while.

    A lease is taken for a time to live and must be renewed before that runs out, else it
    ends by itself through a logged event that every subscriber sees. The lease shows in
    the entity's state (`__lease__`: owner, token, expires_at). Its token fences writes:
    `flux publish --fencing-token T` is refused once a newer lease was issued, so a holder
    that lost its lease cannot overwrite its successor's work. When the lease is not yours
    to take, renew or release, the command exits 3 and names the holder.

    \b
    Examples:
      flux lease acquire dawn-coral/leader --owner node-1 --ttl-ms 10000
      flux lease renew dawn-coral/leader --owner node-1 --token 42 --ttl-ms 10000
      flux lease release dawn-coral/leader --owner node-1 --token 42
    """


@lease.command(name="acquire")
@click.argument("entity_id")
@_OWNER
@_TTL
@click.option(
    "--presence",
    is_flag=True,
    help="Delete the entity when the lease ends (released or not renewed in time).",
)
@click.option(
    "--properties",
    "properties_json",
    type=JsonArgument(dict),
    metavar="JSON",
    help="Properties to set on the entity with the lease ('-' reads stdin).",
)
def lease_acquire(
    entity_id: str,
    owner: str,
    ttl_ms: int,
    presence: bool,
    properties_json: dict[str, Any] | None,
) -> None:
    """Take the lease on ENTITY_ID (or extend it, when you hold it).

    Prints {"entity_id", "version", "owner", "token", "acquired_at", "expires_at"}; keep the
    token for renew, release and fenced writes (it only ever grows). With --presence the
    entity is an agent's presence: it lives while the lease is renewed.

    \b
    Examples:
      flux lease acquire dawn-coral/task-7 --owner worker-3 --ttl-ms 30000
      flux lease acquire dawn-coral/agents/worker-3 --owner worker-3 --ttl-ms 15000 \\
          --presence --properties '{"skills":["scrape"]}'
    """
    with _flux() as flux:
        _show(
            flux.lease_acquire(
                entity_id, owner, ttl_ms, properties=properties_json, presence=presence
            )
        )


@lease.command(name="renew")
@click.argument("entity_id")
@_OWNER
@_TOKEN
@_TTL
def lease_renew(entity_id: str, owner: str, token: int, ttl_ms: int) -> None:
    """Extend the lease you hold on ENTITY_ID.

    Exits 3 when the lease was lost (it expired, was released or another owner took it):
    stop acting on its behalf.

    \b
    Example:
      flux lease renew dawn-coral/task-7 --owner worker-3 --token 42 --ttl-ms 30000
    """
    with _flux() as flux:
        _show(flux.lease_renew(entity_id, owner, token, ttl_ms))


@lease.command(name="release")
@click.argument("entity_id")
@_OWNER
@_TOKEN
def lease_release(entity_id: str, owner: str, token: int) -> None:
    """Give back the lease you hold on ENTITY_ID.

    Prints {"entity_id", "version", "released": true}. A presence lease's entity is deleted.

    \b
    Example:
      flux lease release dawn-coral/task-7 --owner worker-3 --token 42
    """
    with _flux() as flux:
        _show(flux.lease_release(entity_id, owner, token))


@main.command()
@click.option(
    "--table/--json",
    "as_table",
    default=None,
    help="A table (with each connector's last poll) or the server's JSON "
    "[default: a table on a terminal].",
)
def connectors(as_table: bool | None) -> None:
    """List the connectors and their status.

    On a terminal: a table of name, status, last poll, polls, events and last error (the
    caller's connectors: with auth on, $FLUX_TOKEN's namespace). Piped: the server's JSON.

    \b
    Example:
      flux connectors
      flux connectors --json | jq -r '.connectors[] | select(.status == "error") | .name'
    """
    with _flux() as flux:
        listed = flux.connectors()
        if not (stdout_is_terminal() if as_table is None else as_table):
            _show(listed)
            return
        details = [flux.connector(item["name"]) for item in listed["connectors"]]
    click.echo(connector_table(details))


@main.group()
def connector() -> None:
    """One connector: its status, its token, OAuth sign-in (see docs/connectors.md).

    With auth on, use the namespace's token ($FLUX_TOKEN): the connector belongs to that
    namespace and its entities go under it.
    """


@connector.command(name="show")
@click.argument("name")
def connector_show(name: str) -> None:
    """Show connector NAME: status, poll interval, last poll, last error and counts.

    \b
    NAME  github, gmail, linkedin or calendar

    \b
    Example:
      flux connector show github
    """
    with _flux() as flux:
        _show(flux.connector(name))


@connector.command(name="token")
@click.argument("name")
@click.option("--delete", is_flag=True, help="Delete the stored token (the connector stops).")
def connector_token(name: str, delete: bool) -> None:
    """Store a token (a personal access token) for connector NAME, or delete it.

    The server keeps it encrypted and starts polling at once. The token is never a
    command-line argument (it would land in shell history and `ps`): it is read from
    $FLUX_CONNECTOR_TOKEN if set, else from stdin when stdin is piped, else from a hidden
    prompt.

    \b
    NAME  github, gmail, linkedin or calendar

    \b
    Examples:
      flux connector token github                      # asks for it, hidden
      gh auth token | flux connector token github
      FLUX_CONNECTOR_TOKEN=ghp_... flux connector token github
      flux connector token github --delete
    """
    if delete:
        with _flux() as flux:
            _show(flux.connector_delete_token(name))
        return
    token = read_secret(os.environ.get("FLUX_CONNECTOR_TOKEN"), "FLUX_CONNECTOR_TOKEN", "Token")
    with _flux() as flux:
        _show(flux.connector_store_token(name, token))
    progress(f"Stored the {name} token; the connector polls now.")


@connector.command(name="oauth")
@click.argument("name")
def connector_oauth(name: str) -> None:
    """Print the URL that signs connector NAME in with OAuth; open it in a browser.

    The server must have a credential store ($FLUX_ENCRYPTION_KEY) and the connector's OAuth
    app (FLUX_OAUTH_<NAME>_CLIENT_ID and _CLIENT_SECRET). After you approve at the provider,
    it sends your browser to the server's callback, which stores the tokens and starts the
    connector. The URL is good for one sign-in within 10 minutes.

    \b
    NAME  github, gmail, linkedin or calendar

    \b
    Example:
      flux connector oauth github
    """
    with _flux() as flux:
        url = flux.connector_oauth_url(name)
    click.echo(url)
    progress("Open this URL in a browser to sign in (valid for 10 minutes, once).")


@main.command(name="admin-config")
@click.argument("changes_json", metavar="[JSON]", required=False, type=JsonArgument(dict))
def admin_config(changes_json: dict[str, Any] | None) -> None:
    """Show or update the runtime config.

    Updating needs $FLUX_ADMIN_TOKEN (exit 1 when it is not set).

    \b
    JSON  optional object of settings to change; the others keep their values

    \b
    Examples:
      flux admin-config
      FLUX_ADMIN_TOKEN=... flux admin-config '{"rate_limit_per_namespace_per_minute": 5000}'
    """
    if changes_json is not None and _options().admin_token is None:
        raise click.ClickException("FLUX_ADMIN_TOKEN not set")
    with _flux() as flux:
        _show(flux.admin_config(changes_json))


@main.group()
def namespace() -> None:
    """Manage namespaces (servers with FLUX_AUTH_ENABLED=true).

    Creating and deleting use $FLUX_ADMIN_TOKEN when it is set; rotating a token and
    changing visibility use $FLUX_TOKEN (the namespace's own token) or $FLUX_ADMIN_TOKEN.
    """


@namespace.command(name="create")
@click.argument("name")
@click.option("--private", is_flag=True, help="Reads of its entities need its token too.")
def namespace_create(name: str, private: bool) -> None:
    """Register namespace NAME and print its token (shown only this once).

    \b
    NAME  3 to 32 characters of a-z, 0-9, - and _

    \b
    Example:
      flux namespace create dawn-coral
    """
    with _flux() as flux:
        _show(flux.namespace_create(name, private=private))


@namespace.command(name="show")
@click.argument("name")
def namespace_show(name: str) -> None:
    """Show namespace NAME: id, creation time and entity count.

    \b
    Example:
      flux namespace show dawn-coral
    """
    with _flux() as flux:
        _show(flux.namespace_show(name))


@namespace.command(name="private")
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
def namespace_private(name: str, state: str) -> None:
    """Make namespace NAME private (on) or public (off).

    \b
    Example:
      FLUX_TOKEN=<namespace token> flux namespace private dawn-coral on
    """
    with _flux() as flux:
        _show(flux.namespace_set_private(name, state == "on"))


@namespace.command(name="rotate-token")
@click.argument("name")
def namespace_rotate_token(name: str) -> None:
    """Give namespace NAME a new token; the old one stops working at once.

    \b
    Example:
      FLUX_TOKEN=<current token> flux namespace rotate-token dawn-coral
    """
    with _flux() as flux:
        _show(flux.namespace_rotate_token(name))


@namespace.command(name="delete")
@click.argument("name")
def namespace_delete(name: str) -> None:
    """Delete namespace NAME and its entities (needs $FLUX_ADMIN_TOKEN).

    \b
    Example:
      FLUX_ADMIN_TOKEN=... flux namespace delete old-team
    """
    if _options().admin_token is None:
        raise click.ClickException("FLUX_ADMIN_TOKEN not set")
    with _flux() as flux:
        flux.namespace_delete(name)
    click.echo(f"Deleted namespace {name}", err=True)


@main.group()
def source() -> None:
    """Manage generic HTTP sources: Flux polls a URL and publishes its JSON as entities.

    See docs/connectors/generic.md. With auth on, use the namespace's token ($FLUX_TOKEN):
    a source belongs to that namespace and writes only under it.
    """


def _mapping(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        prop, sep, path = pair.partition("=")
        if not sep or not prop or not path.startswith("$"):
            raise click.BadParameter(f"{pair!r}: expected PROPERTY=$.path", param_hint="--map")
        mapping[prop] = path
    return mapping


def _secret_from_env(var: str, option: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise click.BadParameter(
            f"environment variable {var} is not set or empty", param_hint=option
        )
    return value


@source.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("--namespace", "-n", required=True, metavar="NS", help="Entities go under NS/.")
@click.option(
    "--entity-key",
    "-k",
    required=True,
    metavar="KEY",
    help="The entity's key: literal (NS/KEY), or a JSON path like '$.id'.",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Poll interval.",
)
@click.option(
    "--items",
    metavar="PATH",
    help="JSON path of a list in the response: one entity per item (--entity-key is then "
    "a path evaluated on each item).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="PROP=$.PATH",
    help="Publish property PROP from $.PATH (repeat; without it the whole object is published).",
)
@click.option(
    "--bearer-token-env",
    metavar="VAR",
    help="Send `Authorization: Bearer <$VAR>` upstream.",
)
@click.option("--bearer", is_flag=True, help="Same, with the token typed at a hidden prompt.")
@click.option(
    "--header",
    metavar="H",
    help="Send the token in header H (an API key header); the token comes from --token-env "
    "or a hidden prompt.",
)
@click.option("--token-env", metavar="VAR", help="With --header: the token is $VAR.")
def source_add(
    name: str,
    url: str,
    namespace: str,
    entity_key: str,
    every: int,
    items: str | None,
    maps: tuple[str, ...],
    bearer_token_env: str | None,
    bearer: bool,
    header: str | None,
    token_env: str | None,
) -> None:
    """Add source NAME polling URL; prints its id.

    The upstream secret never goes on the command line (where `ps` and shell history would
    see it): it is read from an environment variable or typed at a hidden prompt, sent to
    Flux once, stored encrypted (the server needs FLUX_ENCRYPTION_KEY) and never shown again.

    \b
    Examples:
      flux source add weather https://api.example.com/oslo.json -n demo -k oslo --every 300
      flux source add issues http://localhost:8080/issues -n demo \\
          --items '$.items' -k '$.id' --map title='$.title' --map state='$.state'
      API_TOKEN=... flux source add stats https://api.example.com/stats -n demo -k stats \\
          --bearer-token-env API_TOKEN
      flux source add stats https://api.example.com/stats -n demo -k stats --header X-Api-Key
    """
    if sum((bearer_token_env is not None, bearer, header is not None)) > 1:
        raise click.UsageError("use one of --bearer-token-env, --bearer and --header")
    if token_env is not None and header is None:
        raise click.UsageError("--token-env goes with --header")
    body: dict[str, Any] = {
        "name": name,
        "url": url,
        "poll_interval_secs": every,
        "entity_key": entity_key,
        "namespace": namespace,
    }
    if items is not None:
        body["items"] = items
    if maps:
        body["mapping"] = _mapping(maps)
    if bearer_token_env is not None:
        body["auth_type"] = "bearer"
        body["token"] = _secret_from_env(bearer_token_env, "--bearer-token-env")
    elif bearer:
        body["auth_type"] = "bearer"
        body["token"] = click.prompt("Upstream token", hide_input=True, err=True)
    elif header is not None:
        body["auth_type"] = {"api_key_header": header}
        if token_env is not None:
            body["token"] = _secret_from_env(token_env, "--token-env")
        else:
            body["token"] = click.prompt(f"Value of {header}", hide_input=True, err=True)
    with _flux() as flux:
        result = flux.source_add(body)
    _show(result)


@source.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON even on a terminal.")
def source_list(as_json: bool) -> None:
    """List the sources with their status: a table on a terminal, JSON when piped.

    \b
    Example:
      flux source list
      flux source list | jq '.[] | select(.status == "error")'
    """
    with _flux() as flux:
        sources = flux.sources()
    if stdout_is_terminal() and not as_json and _options().pretty is None:
        click.echo(source_table(sources))
    else:
        _show(sources)


@source.command(name="show")
@click.argument("source_id", metavar="ID")
def source_show(source_id: str) -> None:
    """Show source ID: its configuration (never the token) and status.

    \b
    Example:
      flux source show 6f0c2b1e-...
    """
    with _flux() as flux:
        _show(flux.source_show(source_id))


@source.command(name="rm")
@click.argument("source_id", metavar="ID")
def source_rm(source_id: str) -> None:
    """Remove source ID: it stops polling and its stored token is deleted (its entities stay).

    \b
    Example:
      flux source rm 6f0c2b1e-...
    """
    with _flux() as flux:
        flux.source_remove(source_id)
    click.echo(f"Removed source {source_id}", err=True)


@main.command(name="mcp")
def mcp_command() -> None:
    """Serve Flux to an AI agent host as an MCP server over stdio.

    A desktop host (Claude Desktop, an IDE, an agent framework) starts this command and
    talks MCP on its stdin/stdout. Every tool call goes to the Flux server at $FLUX_URL
    with $FLUX_TOKEN as bearer token, so the agent may do exactly what that token may.
    Nothing but MCP is written to stdout; logs go to stderr.

    \b
    Tools: publish (with expected_version, if_absent, expected_properties,
      fencing_token, ttl_ms), get, list, history, changes_since, delete, claim, renew,
      release, presence. A failed condition is a tool error giving the entity's current
      version and state. Resources: flux://entities/{id}, flux://namespaces/{namespace},
      both subscribable (notifications/resources/updated); hosts that ignore
      notifications follow changes with changes_since and its `next` cursor.

    \b
    A host's config (claude_desktop_config.json and the like):
      {"mcpServers": {"flux": {
        "command": "flux", "args": ["mcp"],
        "env": {"FLUX_URL": "http://localhost:3000", "FLUX_TOKEN": "<namespace token>"}
      }}}

    \b
    Hosts that speak streamable HTTP can use `flux serve` directly instead:
    http://localhost:3000/mcp with the header `Authorization: Bearer <token>`.
    See docs/mcp.md.
    """
    from flux.mcp.stdio import serve_stdio

    options = _options()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with _stopping_quietly():
        asyncio.run(serve_stdio(options.url, options.token))


@main.command()
def health() -> None:
    """Check the server and count its entities.

    Exits 1 when the server cannot be reached or is not ready.

    \b
    Example:
      flux health
    """
    url = _options().url
    progress(f"Testing Flux connection at {url}...")
    try:
        with _options().client() as flux:
            info = flux.health()
    except FluxClientError as exc:
        reason = exc.reason if isinstance(exc, FluxConnectionError) else str(exc)
        click.echo(f"✗ Failed to reach Flux at {url}: {reason}", err=True)
        raise SystemExit(1) from None
    click.echo(f"✓ Flux is reachable at {url}")
    click.echo(f"  Entities in state: {info.get('entities', '?')}")


@main.command()
@click.argument("entity", required=False)
@click.option("--prefix", metavar="P", help="Watch every entity whose id starts with P.")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    metavar="V",
    help="First replay every change after version V (from the event log).",
)
@click.option(
    "--snapshot/--no-snapshot",
    default=False,
    show_default=True,
    help="First show the current state of the watched entities.",
)
@click.option(
    "--json/--text",
    "as_json",
    default=None,
    help="JSON lines (the server's messages) or readable lines [default: text on a terminal].",
)
@click.option("--metrics", is_flag=True, help="Also show the server's metrics (every 2 s).")
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N changes (snapshots included).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop after this many seconds.",
)
def watch(
    entity: str | None,
    prefix: str | None,
    since: int | None,
    snapshot: bool,
    as_json: bool | None,
    metrics: bool,
    max_messages: int | None,
    timeout: float | None,
) -> None:
    """Stream live changes as they happen (WebSocket /api/ws).

    Watches one entity, every entity whose id starts with --prefix, or everything. On a
    terminal each change is one line (time, entity, property = value, version); piped, each
    server message is one JSON line. After a disconnect or a server restart it reconnects by
    itself and resumes after the last version it printed, so no change is missed or repeated.
    Ctrl-C stops it.

    \b
    ENTITY  the entity to watch (dawn-coral/sensor-01) [default: every entity]

    \b
    Examples:
      flux watch dawn-coral/sensor-01
      flux watch --prefix dawn-coral/ --snapshot
      flux watch --since 1200 | jq -c 'select(.type == "state_update")'
    """
    if entity is not None and prefix is not None:
        raise click.UsageError("give ENTITY or --prefix, not both")
    options = _options()
    text_mode = stdout_is_terminal() if as_json is None else not as_json
    try:
        live = LiveWatch(
            options.url,
            entity_id=entity,
            prefix=prefix,
            since=since,
            snapshot=snapshot,
            token=options.token,
            on_status=lambda text: click.echo(f"flux watch: {text}", err=True),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url / FLUX_URL") from None
    what = f"prefix {prefix!r}" if prefix is not None else entity or "every entity"
    progress(f"Watching {what} at {options.url}...")
    try:
        with _stopping_quietly():
            asyncio.run(_watch(live, text_mode, metrics, max_messages, timeout))
    except FluxClientError as exc:
        raise click.ClickException(str(exc)) from None


WATCHED_TYPES = frozenset({"state_update", "entity_deleted", "snapshot"})  # --max-messages


async def _watch(
    live: LiveWatch,
    text_mode: bool,
    metrics: bool,
    max_messages: int | None,
    timeout: float | None,
) -> None:
    shown = 0
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline, contextlib.aclosing(live.messages()) as stream:
            async for message, text in stream:
                kind = message.get("type")
                if kind == "metrics_update" and not metrics:
                    continue
                if kind == "resync":
                    progress(f"flux watch: resync: {message.get('reason')}")
                if text_mode:
                    line = change_line(message)
                    if line is not None:
                        click.echo(line)
                elif kind != "pong":
                    click.echo(text)
                if kind in WATCHED_TYPES:
                    shown += 1
                    if max_messages is not None and shown >= max_messages:
                        return
    except TimeoutError:
        if not deadline.expired():
            raise
