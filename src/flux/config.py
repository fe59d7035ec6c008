"""Settings, each declared once: a field of the frozen `Settings`, made by `setting(...)` with
its environment variable, default, parser, help text, whether the admin config may change it
while the server runs (`runtime`) and whether its value is secret (never shown).

Everything else is made from the declarations: `Settings.from_env`, the table `SETTINGS` (one
row per environment variable), the admin config's fields and checks (`RUNTIME_SETTINGS`,
`check_runtime`), the defaults and help of `flux serve --help`, and the table in
docs/configuration.md (`python -m flux.config --write docs/configuration.md`; a test checks it).

The environment is read once into `Settings` and passed down; nothing else in Flux reads
`os.environ`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
import types
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flux import _parsers as parse
from flux.catalogue import CONNECTORS

T = TypeVar("T")
R = TypeVar("R")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable and the value
    (a secret's value shows as `<hidden>`)."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: a row of `SETTINGS`."""

    name: str  # the `Settings` field it sets
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    runtime: bool = False
    secret: bool = False
    key: tuple[str, str] | None = None  # in a field of records (`oauth`): (entry, attribute)

    def value(self, env: Mapping[str, str]) -> Any:
        """The value `env` gives (the default when the variable is not set). Raises ConfigError
        naming the variable and its value."""
        raw = env.get(self.env)
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if self.secret else repr(raw)
            raise ConfigError(f"{self.env}={shown}: {exc}") from exc


_ROWS = "flux.setting"  # a field's metadata: its rows
_RECORD = "flux.record"  # a field of records' metadata: the record type


def setting(
    env: str,
    default: T,
    parse: Callable[[str], T],
    help: str,
    *,
    runtime: bool = False,
    secret: bool = False,
) -> T:
    """Declare a setting: a `Settings` field read from the environment variable `env` with
    `parse`. `help` is Markdown (the docs table shows it as written; `flux serve --help`
    without links and backticks). `runtime`: the admin config may change it while the server
    runs (its parser must be one `check_runtime` knows). `secret`: kept out of repr and error
    messages."""
    row = Setting("", env, default, parse, help, runtime, secret)
    return dataclasses.field(default=default, repr=not secret, metadata={_ROWS: (row,)})


def _records(record: Callable[..., R], values: Iterable[tuple[Setting, Any]]) -> Mapping[str, R]:
    entries: dict[str, dict[str, Any]] = {}
    for row, value in values:
        assert row.key is not None
        entries.setdefault(row.key[0], {})[row.key[1]] = value
    return types.MappingProxyType({name: record(**fields) for name, fields in entries.items()})


def records(record: Callable[..., R], rows: Iterable[Setting]) -> Mapping[str, R]:
    """Declare a setting that maps names to records (frozen dataclasses): one environment
    variable per attribute of each, `rows` with `key=(name, attribute)`."""
    declared = tuple(rows)
    return dataclasses.field(
        default_factory=lambda: _records(record, ((row, row.default) for row in declared)),
        metadata={_ROWS: declared, _RECORD: record},
    )


# -- OAuth clients ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthSettings:
    """One connector's OAuth app: the client registered with the provider (id and secret, None
    until set) and the provider's URLs (overridable for a local stand-in in tests)."""

    client_id: str | None
    client_secret: str | None = dataclasses.field(repr=False)
    auth_url: str
    token_url: str


def oauth_env(connector: str, attribute: str) -> str:
    """`FLUX_OAUTH_<NAME>_<ATTRIBUTE>`, e.g. FLUX_OAUTH_GITHUB_CLIENT_ID."""
    return f"FLUX_OAUTH_{connector.upper()}_{attribute.upper()}"


def _oauth_row(
    connector: str, attribute: str, default: Any, parser: Callable[[str], Any], help: str
) -> Setting:
    env = oauth_env(connector, attribute)
    secret = attribute == "client_secret"
    return Setting("", env, default, parser, help, secret=secret, key=(connector, attribute))


def _oauth_rows() -> Iterable[Setting]:
    """The four settings of each connector with sign-in (`flux.catalogue`)."""
    for connector in CONNECTORS:
        if connector.oauth is None:
            continue
        name, provider = connector.name, connector.oauth.label
        yield _oauth_row(
            name,
            "client_id",
            None,
            parse.optional_text,
            f"Client id of the `{name}` connector's OAuth app at {provider}. With the secret, "
            f"enables `GET /api/connectors/{name}/oauth/start`; without either, it answers "
            f"`500 OAuth not configured for connector '{name}'...`.",
        )
        yield _oauth_row(
            name,
            "client_secret",
            None,
            parse.optional_text,
            "That app's client secret (never shown: a bad value is reported as `<hidden>`). "
            f"Also sent when refreshing the `{name}` tokens.",
        )
        yield _oauth_row(
            name,
            "auth_url",
            connector.oauth.auth_url,
            parse.url,
            f"{provider}'s authorize URL, where `/oauth/start` sends the browser (a local "
            "stand-in in tests).",
        )
        yield _oauth_row(
            name,
            "token_url",
            connector.oauth.token_url,
            parse.url,
            f"{provider}'s token URL, where Flux exchanges the code and refreshes tokens.",
        )


# -- the settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once. Tests build one with keyword arguments (`Settings(port=0)`)
    or from a mapping (`Settings.from_env({...})`)."""

    host: str = setting(
        "FLUX_HOST",
        "127.0.0.1",
        parse.text,
        "Address the server binds to (the original bound `0.0.0.0`; set it to expose Flux).",
    )
    port: int = setting(
        "PORT",
        3000,
        parse.port,
        "TCP port of the HTTP and WebSocket API.",
    )
    data_dir: str = setting(
        "FLUX_DATA_DIR",
        "./flux-data",
        parse.text,
        "Holds `events.db` (the SQLite event log), `snapshots/`, `runtime-config.json` and, "
        "with auth on, `namespaces.db` (the namespace registry; token hashes only).",
    )
    event_log: str = setting(
        "FLUX_EVENT_LOG",
        "",
        parse.text,
        "Event log backend URL; empty means `sqlite:///<data dir>/events.db` (or JetStream, "
        "with `FLUX_NATS_URL`). `nats://host:port[,host:port]?stream=…&subject=…&replicas=…&"
        "dedupe_window=…&timeout=…` is the JetStream log too (parameters not given come from the "
        "`FLUX_NATS_*` settings and `FLUX_DEDUPE_WINDOW_SECONDS`); this setting wins over "
        "`FLUX_NATS_URL`.",
    )
    nats_url: str = setting(
        "FLUX_NATS_URL",
        "",
        parse.nats_servers,
        "NATS servers for the JetStream event log, `nats://host:port`, several comma-separated "
        "(`nats://a:4222,nats://b:4222`). Empty (the default): the embedded SQLite log, no NATS "
        "needed. Set: the events live in the stream `FLUX_NATS_STREAM`, created at start when "
        "missing, checked when present (other settings there are a start-up error). Run the "
        "servers with `sync_interval: always` where acknowledged writes must survive power "
        "loss. Several Flux nodes may share one stream. `flux serve --nats` sets it too.",
    )
    nats_stream: str = setting(
        "FLUX_NATS_STREAM",
        "FLUX",
        parse.stream_name,
        "Name of the JetStream stream that holds the events (with `FLUX_NATS_URL`).",
    )
    nats_subject: str = setting(
        "FLUX_NATS_SUBJECT",
        "flux.events",
        parse.subject_prefix,
        "Subject prefix of that stream: it takes `<prefix>.>`, an entity's events on a subject "
        "made from its id (see `flux/log/jetstream.py`). No other stream may take these "
        "subjects.",
    )
    nats_replicas: int = setting(
        "FLUX_NATS_REPLICAS",
        1,
        parse.positive_int,
        "Copies of the stream JetStream keeps: 1, or 3 or 5 in a NATS cluster (an existing "
        "stream must have as many).",
    )
    nats_timeout_seconds: float = setting(
        "FLUX_NATS_TIMEOUT_SECONDS",
        10.0,
        parse.positive_float,
        "How long the JetStream log waits on NATS for one thing: a request, a write's "
        "acknowledgement, its own consumer delivering an acknowledged event. A write not "
        'acknowledged in time is answered 503 (`"outcome": "unknown"`: send it again with '
        "the same eventIds). Also bounds the first connection at start.",
    )
    node_id: str = setting(
        "FLUX_NODE_ID",
        "",
        parse.text,
        "This node's name in a cluster (JetStream log): it marks the WebSocket presences the "
        "node holds, and the single-runner jobs it runs. Empty: a random id made on first "
        "start and kept in `<data dir>/node-id`, so one data dir is one node across restarts.",
    )
    cluster_job_ttl_seconds: float = setting(
        "FLUX_CLUSTER_JOB_TTL_SECONDS",
        10.0,
        parse.positive_float,
        "In a cluster (JetStream log): how long a node's hold on a single-runner job (snapshots, "
        "expiries, connectors, the directory, the presence janitor) and its liveness last "
        "without renewal. The holder renews every third of it; when a node dies its jobs move "
        "to another node within about this long, and its WebSocket presences are removed.",
    )
    dedupe_window_seconds: int = setting(
        "FLUX_DEDUPE_WINDOW_SECONDS",
        120,
        parse.positive_int,
        "How long an event's `eventId` is remembered, so that the same event sent again is "
        "answered as a duplicate (its first sequence) instead of stored twice. JetStream "
        "forgets an id after this window (its stream's duplicate window); the SQLite log "
        "remembers every id it holds.",
    )
    snapshot_interval_seconds: int = setting(
        "FLUX_SNAPSHOT_INTERVAL_SECONDS",
        300,
        parse.positive_int,
        "Write a snapshot at least this often while events arrive.",
    )
    snapshot_every_events: int = setting(
        "FLUX_SNAPSHOT_EVERY_EVENTS",
        100_000,
        parse.positive_int,
        "Write a snapshot once this many events arrived since the last one.",
    )
    snapshot_keep: int = setting(
        "FLUX_SNAPSHOT_KEEP",
        3,
        parse.positive_int,
        "How many snapshots to keep (newest first).",
    )
    retention_max_age_seconds: int = setting(
        "FLUX_RETENTION_MAX_AGE_SECONDS",
        0,
        parse.non_negative_int,
        "Drop logged events older than this (only once a snapshot covers them); `0` keeps them.",
    )
    retention_max_events: int = setting(
        "FLUX_RETENTION_MAX_EVENTS",
        0,
        parse.non_negative_int,
        "Keep at most this many logged events (same rule); `0` means no cap.",
    )
    tombstones_kept: int = setting(
        "FLUX_TOMBSTONES_KEPT",
        100_000,
        parse.positive_int,
        "How many of the newest deletions `GET /api/state/changes` remembers (kept in snapshots"
        " too). A cursor older than the oldest forgotten one is answered `410` with "
        '`"resync": true` (read the whole state again, then follow changes from its version).',
    )
    changes_page_limit: int = setting(
        "FLUX_CHANGES_PAGE_LIMIT",
        1000,
        parse.positive_int,
        "Most changes one `GET /api/state/changes` page returns (its `limit` may ask for fewer);"
        " `more: true` and `next` say where the next page starts.",
    )
    lease_max_ttl_ms: int = setting(
        "FLUX_LEASE_MAX_TTL_MS",
        3_600_000,
        parse.positive_int,
        "Longest lease a client may take or renew, in milliseconds (one hour by default); a "
        "longer `ttl_ms` is a `400`.",
    )
    log_check_after_start: bool = setting(
        "FLUX_LOG_CHECK_AFTER_START",
        True,
        parse.boolean,
        "Once serving, check every page of the event log once in the background (SQLite's "
        "`quick_check`, about 0.3 s per million events on a warm cache); damage turns "
        "`/api/health` to `503 degraded`. `false` skips it (the cheap start-up checks always "
        "run; see [architecture.md](architecture.md#a-damaged-log)).",
    )
    auth_enabled: bool = setting(
        "FLUX_AUTH_ENABLED",
        False,
        parse.boolean,
        "Multi-tenancy ([auth.md](auth.md)): namespaces, tokens for writes and for reads of "
        "private namespaces, rate limits. Off: a trusted local instance, no tokens.",
    )
    admin_token: str | None = setting(
        "FLUX_ADMIN_TOKEN",
        None,
        parse.optional_text,
        "Bearer token for admin operations. Unset with auth off: admin operations are open (a "
        "trusted local instance); unset with auth on: they are refused.",
    )
    rate_limit_enabled: bool = setting(
        "FLUX_RATE_LIMIT_ENABLED",
        True,
        parse.boolean,
        "Limit events per namespace per minute (with auth on; see [auth.md](auth.md#rate-limits)).",
        runtime=True,
    )
    rate_limit_per_namespace_per_minute: int = setting(
        "FLUX_RATE_LIMIT_PER_NAMESPACE_PER_MINUTE",
        10_000,
        parse.positive_int,
        "Events one namespace may publish per minute. Every id a delete names counts as one "
        "event, whether its entity exists or not.",
        runtime=True,
    )
    body_size_limit_single_bytes: int = setting(
        "FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES",
        1_048_576,
        parse.positive_int,
        "Largest body for `POST /api/events` and the other JSON endpoints (leases excepted: "
        "16 KiB, fixed). A larger body is a 413 `payload too large: …` that says its size, "
        "the limit and this setting.",
        runtime=True,
    )
    body_size_limit_batch_bytes: int = setting(
        "FLUX_BODY_SIZE_LIMIT_BATCH_BYTES",
        10_485_760,
        parse.positive_int,
        "Largest body for `POST /api/events/batch` (a 413 names this setting).",
        runtime=True,
    )
    max_batch_delete: int = setting(
        "FLUX_MAX_BATCH_DELETE",
        10_000,
        parse.positive_int,
        "Most entities one `POST /api/state/entities/delete` may remove.",
        runtime=True,
    )
    max_entity_id_length: int = setting(
        "FLUX_MAX_ENTITY_ID_LENGTH",
        1024,
        parse.positive_int,
        "Longest entity id accepted, in characters (Unicode code points, not bytes: up to 4 KiB"
        " in UTF-8). Checked wherever an id, or a prefix or namespace of ids, is given: events "
        "(single, batch, connectors), deletes, reads (`GET /api/state/entities/{id}`, "
        "`?prefix=`, `?namespace=`, history), WebSocket and SSE subscriptions; longer is `400 "
        '{"error": "entity_id is too long: <n> characters (an entity_id has at most <limit>)"}`'
        " (`prefix is too long: …` for a prefix). Ids stored before the limit existed stay in "
        "the state; list them with `?namespace=` and delete them with a batch delete by "
        "namespace or prefix.",
    )
    ws_ping_interval_seconds: float = setting(
        "FLUX_WS_PING_INTERVAL_SECONDS",
        20.0,
        parse.positive_float,
        "How often the server pings each WebSocket client.",
    )
    ws_ping_timeout_seconds: float = setting(
        "FLUX_WS_PING_TIMEOUT_SECONDS",
        20.0,
        parse.positive_float,
        "A WebSocket client that does not answer a ping within this is disconnected (its "
        "presence, if it declared one, is removed then).",
    )
    ws_queue_limit: int = setting(
        "FLUX_WS_QUEUE_LIMIT",
        10_000,
        parse.positive_int,
        "Messages a live (WebSocket or SSE) connection may have waiting; past it (or past "
        "`FLUX_LIVE_OUTBOX_BYTES`) the server closes the connection as a slow consumer: "
        "WebSocket code 1013, an SSE `error` event (the client resumes with `since`). See "
        "[websocket.md](websocket.md#slow-consumers).",
    )
    live_outbox_bytes: int = setting(
        "FLUX_LIVE_OUTBOX_BYTES",
        4_194_304,
        parse.positive_int,
        "Bytes (of JSON text) a live connection may have waiting, snapshot and replay included "
        "(they are produced as the client reads). One change always fits a connection that had "
        "taken what it was sent, however many properties it has.",
    )
    live_send_timeout_seconds: float = setting(
        "FLUX_LIVE_SEND_TIMEOUT_SECONDS",
        30.0,
        parse.positive_float,
        "Time one send to a live connection may take without progress (a client that stopped "
        "reading); past it the server closes the connection as a slow consumer, and aborts it "
        "if the client does not take the close either.",
    )
    ws_max_subscriptions: int = setting(
        "FLUX_WS_MAX_SUBSCRIPTIONS",
        1000,
        parse.positive_int,
        "Subscriptions (entity ids and prefixes together) one WebSocket connection may hold; "
        "past it a `subscribe` is answered with an `error` (`too many subscriptions on this "
        "connection (max <n>)`) and the connection stays open. An SSE stream holds one. "
        "Matching a change against prefix subscriptions costs one lookup per distinct prefix "
        "length, whatever the number of prefixes held (see "
        "[websocket.md](websocket.md#client-messages)).",
    )
    metrics_interval_seconds: float = setting(
        "FLUX_METRICS_INTERVAL_SECONDS",
        2.0,
        parse.positive_float,
        "How often `metrics_update` goes to every live connection.",
    )
    directory_interval_seconds: float = setting(
        "FLUX_DIRECTORY_INTERVAL_SECONDS",
        5.0,
        parse.non_negative_float,
        "How often Flux brings the `flux-core/directory` entity up to date (an event is written"
        " only when it changed); `0` turns the directory off.",
    )
    encryption_key: str | None = setting(
        "FLUX_ENCRYPTION_KEY",
        None,
        parse.encryption_key,
        "AES-256-GCM key for the connector credential store `credentials.db` in the data dir: "
        'standard base64 of exactly 32 bytes (`python -c "import '
        'os,base64;print(base64.b64encode(os.urandom(32)).decode())"`). Anything else stops '
        "Flux at start with an error naming the variable (the value is not echoed). Unset: "
        "there is no credential store: every connector is `not_configured`, `POST "
        "/api/connectors/{name}/token` answers `500` and the OAuth sign-in routes answer `404`."
        " See [connectors.md](connectors.md).",
        secret=True,
    )
    github_api_url: str = setting(
        "FLUX_GITHUB_API_URL",
        "https://api.github.com",
        parse.url,
        "Base URL of the GitHub API the GitHub connector polls: a GitHub Enterprise server "
        "(`https://github.example.com/api/v3`), or a local stand-in in tests. See "
        "[connectors/github.md](connectors/github.md).",
    )
    github_poll_interval_seconds: float = setting(
        "FLUX_GITHUB_POLL_INTERVAL_SECONDS",
        300.0,
        parse.positive_float,
        "How often the GitHub connector polls, per stored token (also what `GET "
        "/api/connectors/github` reports).",
    )
    connector_timeout_seconds: float = setting(
        "FLUX_CONNECTOR_TIMEOUT_SECONDS",
        30.0,
        parse.positive_float,
        "Time limit of one connector or source poll attempt, every request in it included; also"
        " the limit of an OAuth token request.",
    )
    connector_retry_seconds: float = setting(
        "FLUX_CONNECTOR_RETRY_SECONDS",
        60.0,
        parse.positive_float,
        "Wait before retrying a failed poll; doubled on each further failure, up to ten times "
        "this, 3 attempts per poll. A wait the source asks for (rate limit, `Retry-After`) wins"
        " when longer.",
    )
    oauth_callback_base_url: str = setting(
        "FLUX_OAUTH_CALLBACK_BASE_URL",
        "http://localhost:3000",
        parse.url,
        "Public base URL of this server for OAuth sign-in: the provider sends the browser back "
        "to `<this>/api/connectors/<name>/oauth/callback`, the URL to register with the "
        "provider. See [connectors.md](connectors.md#oauth-sign-in).",
    )
    oauth: Mapping[str, OAuthSettings] = records(OAuthSettings, _oauth_rows())
    source_max_response_bytes: int = setting(
        "FLUX_SOURCE_MAX_RESPONSE_BYTES",
        10_485_760,
        parse.positive_int,
        "Largest response a generic source may return (10 MiB), counted while it streams in and"
        " after decompression; a bigger one fails the poll (`last_error` says so). See "
        "[connectors/generic.md](connectors/generic.md).",
    )
    sources_allow_link_local: bool = setting(
        "FLUX_SOURCES_ALLOW_LINK_LOCAL",
        False,
        parse.boolean,
        "Let generic sources fetch link-local and cloud metadata addresses (`169.254.0.0/16`, "
        "`fe80::/10`, `169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`, "
        "`metadata.google.internal`, ...), refused by default as a server-side request forgery "
        "guard (with auth on or off; `FLUX_SOURCES_ALLOWED_NETWORKS` does not lift it). "
        "`0.0.0.0/8` and multicast are never allowed. See "
        "[connectors/generic.md](connectors/generic.md#server-side-request-forgery-guard).",
    )
    sources_allow_private: str = setting(
        "FLUX_SOURCES_ALLOW_PRIVATE",
        "auto",
        parse.auto_bool,
        "Let generic sources fetch internal addresses: loopback (`127.0.0.0/8`, `::1`), private"
        " (`10/8`, `172.16/12`, `192.168/16`), CGNAT (`100.64.0.0/10`), unique-local "
        "(`fc00::/7`), site-local, documentation, benchmarking and reserved ranges, and IPv6 "
        "outside `2000::/3`. `auto`: allowed with auth off (a local instance polls local "
        "services), refused with auth on (a tenant must not read what only the server reaches, "
        "Flux's own admin API included). `true` or `false` decide in both modes.",
    )
    sources_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        "FLUX_SOURCES_ALLOWED_NETWORKS",
        (),
        parse.networks,
        "Networks generic sources may fetch even when internal addresses are refused: CIDRs, "
        "comma separated (`10.20.0.0/16, fd00:1::/64`; a bare address is one host). An IPv6 "
        "form of an IPv4 address (`::ffff:10.20.0.1`) is judged by the IPv4 address. A bad item"
        " stops Flux at start.",
    )
    sources_max_per_namespace: int = setting(
        "FLUX_SOURCES_MAX_PER_NAMESPACE",
        20,
        parse.non_negative_int,
        "With auth on: generic sources one namespace may have; creating one more answers `429` "
        "(`namespace '<ns>' has 20 sources, the most it may have ...`). `0`: no limit. At "
        "start, sources over the limit (made under a higher one) are kept and listed but not "
        "polled. No limit with auth off.",
    )
    sources_min_poll_interval_seconds: int = setting(
        "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS",
        10,
        parse.positive_int,
        "With auth on: the shortest `poll_interval_secs` a generic source may ask for (`400` "
        "below it); a stored source with a shorter one is polled at this interval. With auth "
        "off the minimum stays 1 s, as in the original.",
    )
    cors_origins: tuple[str, ...] = setting(
        "FLUX_CORS_ORIGINS",
        (),
        parse.origins,
        "Web origins (`scheme://host[:port]`, comma separated, or `*`) whose pages may call the"
        " API cross-origin. Empty: none with auth off, any (`*`) with auth on. `PUT "
        "/api/admin/config` is open cross-origin only to origins named here, never through the "
        "default or `*`. See "
        "[auth.md](auth.md#browsers-cors-content-types-host-websocket-origins).",
    )
    allowed_hosts: tuple[str, ...] = setting(
        "FLUX_ALLOWED_HOSTS",
        (),
        parse.hosts,
        "`Host` header names the server answers (comma separated, without port: any port "
        "matches; `*` for all); another name gets `421`. Empty: when bound to a loopback "
        "address (`127.0.0.1`, `::1`, `localhost`), `localhost`, `127.0.0.1`, `[::1]` and the "
        "bind address; bound to any other address, every name. A guard against DNS rebinding.",
    )
    mcp_allowed_origins: tuple[str, ...] = setting(
        "FLUX_MCP_ALLOWED_ORIGINS",
        (),
        parse.origins,
        "Web origins (`scheme://host[:port]`, comma separated, or `*`) whose pages may use the "
        "MCP endpoint `/mcp`. A request without `Origin` (an agent host, not a browser) always "
        "may, and so may a page of the server's own origin; any other `Origin` gets `403`. The "
        "`Host` check (`FLUX_ALLOWED_HOSTS`) applies to `/mcp` as to every path. See "
        "[mcp.md](mcp.md#streamable-http-in-flux-serve).",
    )
    header_timeout_seconds: float = setting(
        "FLUX_HEADER_TIMEOUT_SECONDS",
        20.0,
        parse.positive_float,
        "Time a connection has to send a request's headers, from its opening (or from the end "
        "of the previous response on a kept-alive connection); past it the server answers `408 "
        '{"error": "request timeout"}` and closes.',
    )
    body_timeout_seconds: float = setting(
        "FLUX_BODY_TIMEOUT_SECONDS",
        60.0,
        parse.positive_float,
        "Time a request has to send its whole body once its headers are in (`408` and close "
        "past it). A whole 10 MiB batch within 60 s needs about 175 KB/s: raise it for slower "
        "links.",
    )
    max_connections_per_client: int = setting(
        "FLUX_MAX_CONNECTIONS_PER_CLIENT",
        256,
        parse.non_negative_int,
        "Connections (HTTP, SSE, WebSocket) one client IP address may hold at once; past it a "
        'new connection is answered `429 {"error": "too many connections from this client"}` '
        "and closed. `0`: no limit. Clients behind one proxy or NAT share an address: raise it "
        "there.",
    )
    log_level: str = setting(
        "FLUX_LOG_LEVEL",
        "info",
        parse.text,
        "Server log level: `debug`, `info`, `warning` or `error`.",
    )
    hot_paths: bool = setting(
        "FLUX_HOT_PATHS",
        True,
        parse.boolean,
        "Answer the two most frequent requests, reading one entity and publishing one event, "
        "in the HTTP protocol itself instead of through the ASGI app (the same answers, about "
        "twice the rate; see docs/architecture.md). Off: every request goes through the app. "
        "Only in `flux serve`; off while `FLUX_ACCESS_LOG` is on.",
    )
    access_log: bool = setting(
        "FLUX_ACCESS_LOG",
        False,
        parse.boolean,
        "Log one line per HTTP request on the `flux.access` logger (whatever "
        "`FLUX_LOG_LEVEL` says): the client's address and port, method, path with its query, "
        'status and duration, e.g. `127.0.0.1:51234 "GET /api/health" 200 0.41ms`. Off by '
        "default.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from an environment mapping; keyword overrides (e.g. CLI flags that
        were given) win, unless None. Raises ConfigError naming the variable and its bad value
        (the first in declaration order)."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            rows: tuple[Setting, ...] = field.metadata[_ROWS]
            if not any(row.env in env for row in rows):
                continue
            record = field.metadata.get(_RECORD)
            if record is None:
                values[field.name] = rows[0].value(env)
            else:
                values[field.name] = _records(record, ((row, row.value(env)) for row in rows))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def event_log_url(self) -> str:
        """FLUX_EVENT_LOG, else the JetStream URL that FLUX_NATS_URL makes, else the SQLite log
        in the data dir. A `nats://` URL gets the FLUX_NATS_* parameters it does not name."""
        url = self.event_log or self.nats_url
        if not url:
            return f"sqlite:///{self.data_dir}/events.db"
        if not url.startswith("nats://"):
            return url
        hosts, _, query = url.removeprefix("nats://").partition("?")
        servers = [host.strip().removeprefix("nats://") for host in hosts.split(",")]
        params = self.nats_parameters()
        params.update(urllib.parse.parse_qsl(query, keep_blank_values=True))
        return f"nats://{','.join(servers)}?{urllib.parse.urlencode(params)}"

    def cluster_url(self) -> str | None:
        """The JetStream log's URL when the event log is one (cluster mode), else None."""
        url = self.event_log_url()
        return url if url.startswith("nats://") else None

    def nats_parameters(self) -> dict[str, str]:
        """The JetStream log's URL parameters these settings give (see `flux.log.open_log`)."""
        return {
            "stream": self.nats_stream,
            "subject": self.nats_subject,
            "replicas": str(self.nats_replicas),
            "dedupe_window": str(self.dedupe_window_seconds),
            "timeout": f"{self.nats_timeout_seconds:g}",
        }

    def runtime_values(self) -> dict[str, Any]:
        """The runtime settings and their values: what `GET /api/admin/config` answers and
        `runtime-config.json` holds."""
        return {name: getattr(self, name) for name in RUNTIME_SETTINGS}


def _table() -> tuple[Setting, ...]:
    rows = []
    for field in dataclasses.fields(Settings):
        if _ROWS not in field.metadata:
            raise TypeError(f"Settings.{field.name} is not declared with setting()")
        rows += [dataclasses.replace(row, name=field.name) for row in field.metadata[_ROWS]]
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _table()

RUNTIME_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.runtime)

# -- runtime changes (the admin config) ------------------------------------------------------

# How the admin config takes a runtime setting's value (JSON), by the setting's parser: the
# JSON type, then the parser checks the value's text. A runtime setting whose parser is not
# here fails the check below, at import.
_RUNTIME_JSON: Mapping[Callable[[str], Any], tuple[type, str]] = {
    parse.boolean: (bool, "true or false"),
    parse.positive_int: (int, "a positive integer"),
}

_RUNTIME_ROWS: Mapping[str, Setting] = {s.name: s for s in SETTINGS if s.runtime}

for _row in _RUNTIME_ROWS.values():
    if _row.key is not None or _row.parse not in _RUNTIME_JSON:
        raise TypeError(f"{_row.env}: a runtime setting needs a parser in _RUNTIME_JSON")


def check_runtime(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime settings among `changes` (JSON values), checked; other keys are ignored (as
    in the original). Raises ValueError naming the first bad one
    (`<name> must be a positive integer`)."""
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        row = _RUNTIME_ROWS.get(name)
        if row is None:
            continue
        kind, words = _RUNTIME_JSON[row.parse]
        try:
            if type(value) is not kind:
                raise ValueError(name)
            row.parse(str(value))
        except ValueError:
            raise ValueError(f"{name} must be {words}") from None
        checked[name] = value
    return checked


class RuntimeConfig:
    """The settings in effect while the server runs: the start-up `Settings` with the admin's
    runtime changes applied (`runtime-config.json`, `PUT /api/admin/config`). One object, shared
    by every part that reads a runtime setting (`runtime.current.<name>`); a change replaces
    `current` whole, so a reader never sees half of one."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeConfig:
        return cls(settings)

    def as_dict(self) -> dict[str, Any]:
        return self.current.runtime_values()

    @staticmethod
    def validated(changes: Mapping[str, Any]) -> dict[str, Any]:
        """`check_runtime`: the runtime settings among `changes`, checked. Raises ValueError."""
        return check_runtime(changes)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Check and apply runtime changes (all or none). Raises ValueError."""
        self.current = self.current.replace(**check_runtime(changes))


# -- the docs table and the CLI's help -------------------------------------------------------


def shown_default(row: Setting) -> str:
    """The default as the docs and `--help` show it: `unset`, `(empty)`, `true`, `300`."""
    default = row.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ", ".join(map(str, default)) or "(empty)"
    return str(default) or "(empty)"


def plain(text: str) -> str:
    """Help text without Markdown: a link keeps its words, code loses its backticks."""
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text).replace("`", "")


TABLE_MARK = "<!-- settings table: made from src/flux/config.py by `python -m flux.config` -->"


def markdown_table() -> str:
    """The table of every setting for docs/configuration.md."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for row in SETTINGS:
        default = shown_default(row)
        if default not in ("unset", "(empty)"):
            default = f"`{default}`"
        meaning = (("Runtime: " if row.runtime else "") + row.help).replace("|", "\\|")
        lines.append(f"| `{row.env}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def table_in(doc: str) -> tuple[int, int]:
    """Where the settings table is in `doc`: the lines starting with `|` after `TABLE_MARK`,
    as (start, end) offsets. Raises ValueError without the mark."""
    start = doc.index(TABLE_MARK + "\n") + len(TABLE_MARK) + 1
    end = start
    while doc.startswith("|", end):
        end = doc.index("\n", end) + 1
    return start, end


def _main(argv: list[str]) -> int:
    """`python -m flux.config` prints the table; `--write DOC` puts it in DOC (in place of
    the one after `TABLE_MARK`)."""
    if not argv:
        sys.stdout.write(markdown_table())
        return 0
    if len(argv) != 2 or argv[0] != "--write":
        sys.stderr.write("usage: python -m flux.config [--write docs/configuration.md]\n")
        return 2
    path = Path(argv[1])
    doc = path.read_text()
    start, end = table_in(doc)
    path.write_text(doc[:start] + markdown_table() + doc[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
