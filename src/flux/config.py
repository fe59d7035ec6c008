"""Settings: one table of (name, environment variable, default, help), read once into a frozen
`Settings` and passed down. Nothing else in Flux reads `os.environ`.

The runtime-mutable subset (`RUNTIME_SETTINGS`) is what the admin config endpoint may change.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable and the value."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _non_negative_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _positive_float(text: str) -> float:
    value = float(text.strip())
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text.strip())
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a non-negative number")
    return value


def _port(text: str) -> int:
    value = int(text.strip())
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text


def _text(text: str) -> str:
    return text


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _origins(text: str) -> tuple[str, ...]:
    """A comma list of origins (`scheme://host[:port]`, no path) or `*`; empty: the default."""
    origins = tuple(item.rstrip("/") for item in _items(text))
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and not (sep and scheme in ("http", "https") and rest and "/" not in rest):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port]) or *")
    return origins


def _hosts(text: str) -> tuple[str, ...]:
    """A comma list of host names (any port), `[v6]` addresses or `*`; empty: the default."""
    hosts = tuple(item.lower() for item in _items(text))
    for host in hosts:
        if not host or any(c in host for c in "/@ ") or ":" in host.rpartition("]")[2]:
            raise ValueError(f"{host!r} is not a host name (without a port) or *")
    return hosts


def _auto_bool(text: str) -> str:
    """`auto`, `true` or `false` (any spelling `_bool` takes); empty is `auto`."""
    lowered = text.strip().lower()
    if lowered in ("auto", ""):
        return "auto"
    try:
        return "true" if _bool(lowered) else "false"
    except ValueError:
        raise ValueError("expected auto, true or false") from None


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma list of CIDR networks (`127.0.0.0/8, fd00::/8`); a bare address is a /32 or
    /128. Empty: none."""
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (like 10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


def _optional_text(text: str) -> str | None:
    return text or None


def _encryption_key(text: str) -> str | None:
    """Standard base64 of exactly 32 bytes (an AES-256 key); empty means unset. The text is kept
    (not the bytes) so that the key never shows in a repr; `flux.credentials` decodes it."""
    text = text.strip()
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 of exactly 32 bytes") from None
    if len(key) != 32:
        raise ValueError(f"must be standard base64 of exactly 32 bytes (got {len(key)} bytes)")
    return text


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    runtime: bool = False
    secret: bool = False


GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"

# OAuth sign-in (reference §4.11): (connector, provider, authorize URL, token URL).
OAUTH_PROVIDERS: tuple[tuple[str, str, str, str], ...] = (
    (
        "github",
        "GitHub",
        "https://github.com/login/oauth/authorize",
        "https://github.com/login/oauth/access_token",
    ),
    ("gmail", "Google (Gmail)", GOOGLE_AUTH_URL, GOOGLE_TOKEN_URL),
    (
        "linkedin",
        "LinkedIn",
        "https://www.linkedin.com/oauth/v2/authorization",
        "https://www.linkedin.com/oauth/v2/accessToken",
    ),
    ("calendar", "Google (Calendar)", GOOGLE_AUTH_URL, GOOGLE_TOKEN_URL),
)


def _oauth_settings(name: str, provider: str, auth_url: str, token_url: str) -> list[Setting]:
    """The four OAuth settings of one connector: its client id and secret, registered with the
    provider, and the provider's URLs (overridable for a local stand-in in tests)."""
    env = f"FLUX_OAUTH_{name.upper()}"
    return [
        Setting(
            f"oauth_{name}_client_id",
            f"{env}_CLIENT_ID",
            None,
            _optional_text,
            f"OAuth client id of the {name} connector's app at {provider}; with the secret, "
            f"enables /api/connectors/{name}/oauth/start.",
        ),
        Setting(
            f"oauth_{name}_client_secret",
            f"{env}_CLIENT_SECRET",
            None,
            _optional_text,
            f"OAuth client secret of the {name} connector's app at {provider}.",
            secret=True,
        ),
        Setting(
            f"oauth_{name}_auth_url",
            f"{env}_AUTH_URL",
            auth_url,
            _url,
            f"{provider}'s OAuth authorize URL, where sign-in for {name} sends the browser.",
        ),
        Setting(
            f"oauth_{name}_token_url",
            f"{env}_TOKEN_URL",
            token_url,
            _url,
            f"{provider}'s OAuth token URL, where Flux exchanges codes and refreshes tokens.",
        ),
    ]


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "FLUX_HOST", "127.0.0.1", _text, "Address the server binds to."),
    Setting("port", "PORT", 3000, _port, "TCP port of the HTTP and WebSocket API."),
    Setting(
        "data_dir",
        "FLUX_DATA_DIR",
        "./flux-data",
        _text,
        "Directory holding the event log (SQLite) and the state snapshots.",
    ),
    Setting(
        "event_log",
        "FLUX_EVENT_LOG",
        "",
        _text,
        "Event log backend URL; empty means sqlite:///<data_dir>/events.db.",
    ),
    Setting(
        "snapshot_interval_seconds",
        "FLUX_SNAPSHOT_INTERVAL_SECONDS",
        300,
        _positive_int,
        "Write a state snapshot at least this often while events arrive.",
    ),
    Setting(
        "snapshot_every_events",
        "FLUX_SNAPSHOT_EVERY_EVENTS",
        100_000,
        _positive_int,
        "Write a state snapshot once this many events arrived since the last one.",
    ),
    Setting(
        "snapshot_keep",
        "FLUX_SNAPSHOT_KEEP",
        3,
        _positive_int,
        "How many snapshots to keep (newest first).",
    ),
    Setting(
        "retention_max_age_seconds",
        "FLUX_RETENTION_MAX_AGE_SECONDS",
        0,
        _non_negative_int,
        "Drop logged events older than this once a snapshot covers them; 0 keeps them forever.",
    ),
    Setting(
        "retention_max_events",
        "FLUX_RETENTION_MAX_EVENTS",
        0,
        _non_negative_int,
        "Keep at most this many logged events (older ones go once a snapshot covers them); "
        "0 means no cap.",
    ),
    Setting(
        "log_check_after_start",
        "FLUX_LOG_CHECK_AFTER_START",
        True,
        _bool,
        "Once serving, read the whole event log once in the background (SQLite's quick_check) "
        "and report the server degraded if it is damaged.",
    ),
    Setting(
        "auth_enabled",
        "FLUX_AUTH_ENABLED",
        False,
        _bool,
        "Require namespace tokens for writes (and for reads of private namespaces); "
        "enables namespace registration and rate limits.",
    ),
    Setting(
        "admin_token",
        "FLUX_ADMIN_TOKEN",
        None,
        _optional_text,
        "Bearer token that guards admin operations (runtime config, namespaces). Unset: "
        "admin operations are open with auth off and refused with auth on.",
    ),
    Setting(
        "rate_limit_enabled",
        "FLUX_RATE_LIMIT_ENABLED",
        True,
        _bool,
        "Limit events per namespace per minute (applies with auth on).",
        runtime=True,
    ),
    Setting(
        "rate_limit_per_namespace_per_minute",
        "FLUX_RATE_LIMIT_PER_NAMESPACE_PER_MINUTE",
        10_000,
        _positive_int,
        "Events one namespace may publish per minute.",
        runtime=True,
    ),
    Setting(
        "body_size_limit_single_bytes",
        "FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES",
        1_048_576,
        _positive_int,
        "Largest body accepted by POST /api/events and the other JSON endpoints.",
        runtime=True,
    ),
    Setting(
        "body_size_limit_batch_bytes",
        "FLUX_BODY_SIZE_LIMIT_BATCH_BYTES",
        10_485_760,
        _positive_int,
        "Largest body accepted by POST /api/events/batch.",
        runtime=True,
    ),
    Setting(
        "max_batch_delete",
        "FLUX_MAX_BATCH_DELETE",
        10_000,
        _positive_int,
        "Most entities one POST /api/state/entities/delete may remove.",
        runtime=True,
    ),
    Setting(
        "max_entity_id_length",
        "FLUX_MAX_ENTITY_ID_LENGTH",
        1024,
        _positive_int,
        "Longest entity id accepted, in characters (Unicode code points), wherever an id or a "
        "prefix of one is given: events, deletes, reads, subscriptions.",
    ),
    Setting(
        "ws_queue_limit",
        "FLUX_WS_QUEUE_LIMIT",
        10_000,
        _positive_int,
        "Messages a live (WebSocket or SSE) connection may have waiting; past it the server "
        "closes the connection (the client resumes with `since`).",
    ),
    Setting(
        "live_outbox_bytes",
        "FLUX_LIVE_OUTBOX_BYTES",
        4_194_304,
        _positive_int,
        "Bytes (of JSON text) a live (WebSocket or SSE) connection may have waiting, besides "
        "FLUX_WS_QUEUE_LIMIT messages; past either the server closes the connection. One "
        "change always fits a connection that had drained its queue, however large it is.",
    ),
    Setting(
        "live_send_timeout_seconds",
        "FLUX_LIVE_SEND_TIMEOUT_SECONDS",
        30.0,
        _positive_float,
        "Time one send to a live connection may take (a client that stopped reading); past it "
        "the server closes the connection as a slow consumer.",
    ),
    Setting(
        "ws_max_subscriptions",
        "FLUX_WS_MAX_SUBSCRIPTIONS",
        1_000,
        _positive_int,
        "Subscriptions (entity ids and prefixes) one WebSocket connection may hold; past it a "
        "subscribe is answered with an error. An SSE stream holds one.",
    ),
    Setting(
        "metrics_interval_seconds",
        "FLUX_METRICS_INTERVAL_SECONDS",
        2.0,
        _positive_float,
        "How often metrics_update goes to every live connection.",
    ),
    Setting(
        "directory_interval_seconds",
        "FLUX_DIRECTORY_INTERVAL_SECONDS",
        5.0,
        _non_negative_float,
        "How often Flux brings the flux-core/directory entity up to date (only when it "
        "changed); 0 turns the directory off.",
    ),
    Setting(
        "encryption_key",
        "FLUX_ENCRYPTION_KEY",
        None,
        _encryption_key,
        "AES-256-GCM key (standard base64 of 32 bytes) for the connector credential store "
        "(<data_dir>/credentials.db); unset: connector tokens cannot be stored.",
        secret=True,
    ),
    Setting(
        "github_api_url",
        "FLUX_GITHUB_API_URL",
        "https://api.github.com",
        _url,
        "Base URL of the GitHub API the GitHub connector polls (a GitHub Enterprise server, "
        "or a local stand-in in tests).",
    ),
    Setting(
        "github_poll_interval_seconds",
        "FLUX_GITHUB_POLL_INTERVAL_SECONDS",
        300.0,
        _positive_float,
        "How often the GitHub connector polls, per stored token.",
    ),
    Setting(
        "connector_timeout_seconds",
        "FLUX_CONNECTOR_TIMEOUT_SECONDS",
        30.0,
        _positive_float,
        "Time limit of one connector or source poll attempt (every request in it included).",
    ),
    Setting(
        "connector_retry_seconds",
        "FLUX_CONNECTOR_RETRY_SECONDS",
        60.0,
        _positive_float,
        "Wait before retrying a failed poll; doubled on each further failure, up to ten "
        "times this, and 3 attempts per poll.",
    ),
    Setting(
        "source_max_response_bytes",
        "FLUX_SOURCE_MAX_RESPONSE_BYTES",
        10_485_760,
        _positive_int,
        "Largest response a generic source may return (counted while it streams in, after "
        "decompression); a bigger one fails the poll.",
    ),
    Setting(
        "sources_allow_link_local",
        "FLUX_SOURCES_ALLOW_LINK_LOCAL",
        False,
        _bool,
        "Let generic sources fetch link-local and cloud metadata addresses "
        "(169.254.0.0/16, fe80::/10, 169.254.169.254, metadata.google.internal, ...).",
    ),
    Setting(
        "sources_allow_private",
        "FLUX_SOURCES_ALLOW_PRIVATE",
        "auto",
        _auto_bool,
        "Let generic sources fetch loopback, private, CGNAT, unique-local and reserved "
        "addresses: auto (allowed with auth off, refused with auth on), true or false.",
    ),
    Setting(
        "sources_allowed_networks",
        "FLUX_SOURCES_ALLOWED_NETWORKS",
        (),
        _networks,
        "Networks (CIDR, comma separated) generic sources may fetch even when private "
        "addresses are refused, e.g. 10.20.0.0/16 for an internal API.",
    ),
    Setting(
        "sources_max_per_namespace",
        "FLUX_SOURCES_MAX_PER_NAMESPACE",
        20,
        _non_negative_int,
        "Generic sources one namespace may have (auth on); past it creating one answers "
        "429. 0: no limit.",
    ),
    Setting(
        "sources_min_poll_interval_seconds",
        "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS",
        10,
        _positive_int,
        "Shortest poll_interval_secs a generic source may have (auth on; with auth off 1).",
    ),
    Setting(
        "oauth_callback_base_url",
        "FLUX_OAUTH_CALLBACK_BASE_URL",
        "http://localhost:3000",
        _url,
        "Public base URL of this server for OAuth sign-in: providers send the browser back "
        "to <this>/api/connectors/<name>/oauth/callback (register that URL with them).",
    ),
    *(setting for provider in OAUTH_PROVIDERS for setting in _oauth_settings(*provider)),
    Setting(
        "cors_origins",
        "FLUX_CORS_ORIGINS",
        (),
        _origins,
        "Web origins (scheme://host[:port], comma separated, or *) whose pages may call the "
        "API cross-origin. Empty: none with auth off, any with auth on; the admin config only "
        "from origins named here.",
    ),
    Setting(
        "allowed_hosts",
        "FLUX_ALLOWED_HOSTS",
        (),
        _hosts,
        "Host header names the server answers (comma separated, any port; * for all). Empty: "
        "localhost, 127.0.0.1, [::1] and the bind address when bound to loopback, else any.",
    ),
    Setting(
        "header_timeout_seconds",
        "FLUX_HEADER_TIMEOUT_SECONDS",
        20.0,
        _positive_float,
        "Time a connection has to send a request's headers (from its opening, or from the "
        "previous response); past it the server answers 408 and closes.",
    ),
    Setting(
        "body_timeout_seconds",
        "FLUX_BODY_TIMEOUT_SECONDS",
        60.0,
        _positive_float,
        "Time a request has to send its whole body once its headers are in; past it the "
        "server answers 408 and closes.",
    ),
    Setting(
        "max_connections_per_client",
        "FLUX_MAX_CONNECTIONS_PER_CLIENT",
        256,
        _non_negative_int,
        "Connections (HTTP, WebSocket, SSE) one client address may hold at once; past it the "
        "new connection is answered 429 and closed. 0: no limit.",
    ),
    Setting(
        "log_level",
        "FLUX_LOG_LEVEL",
        "info",
        _text,
        "Server log level: debug, info, warning or error.",
    ),
)

RUNTIME_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.runtime)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: str = "./flux-data"
    event_log: str = ""
    snapshot_interval_seconds: int = 300
    snapshot_every_events: int = 100_000
    snapshot_keep: int = 3
    retention_max_age_seconds: int = 0
    retention_max_events: int = 0
    log_check_after_start: bool = True
    auth_enabled: bool = False
    admin_token: str | None = None
    rate_limit_enabled: bool = True
    rate_limit_per_namespace_per_minute: int = 10_000
    body_size_limit_single_bytes: int = 1_048_576
    body_size_limit_batch_bytes: int = 10_485_760
    max_batch_delete: int = 10_000
    max_entity_id_length: int = 1024
    ws_queue_limit: int = 10_000
    live_outbox_bytes: int = 4_194_304
    live_send_timeout_seconds: float = 30.0
    ws_max_subscriptions: int = 1_000
    metrics_interval_seconds: float = 2.0
    directory_interval_seconds: float = 5.0
    encryption_key: str | None = dataclasses.field(default=None, repr=False)
    github_api_url: str = "https://api.github.com"
    github_poll_interval_seconds: float = 300.0
    connector_timeout_seconds: float = 30.0
    connector_retry_seconds: float = 60.0
    source_max_response_bytes: int = 10_485_760
    sources_allow_link_local: bool = False
    sources_allow_private: str = "auto"
    sources_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sources_max_per_namespace: int = 20
    sources_min_poll_interval_seconds: int = 10
    oauth_callback_base_url: str = "http://localhost:3000"
    oauth_github_client_id: str | None = None
    oauth_github_client_secret: str | None = dataclasses.field(default=None, repr=False)
    oauth_github_auth_url: str = OAUTH_PROVIDERS[0][2]
    oauth_github_token_url: str = OAUTH_PROVIDERS[0][3]
    oauth_gmail_client_id: str | None = None
    oauth_gmail_client_secret: str | None = dataclasses.field(default=None, repr=False)
    oauth_gmail_auth_url: str = OAUTH_PROVIDERS[1][2]
    oauth_gmail_token_url: str = OAUTH_PROVIDERS[1][3]
    oauth_linkedin_client_id: str | None = None
    oauth_linkedin_client_secret: str | None = dataclasses.field(default=None, repr=False)
    oauth_linkedin_auth_url: str = OAUTH_PROVIDERS[2][2]
    oauth_linkedin_token_url: str = OAUTH_PROVIDERS[2][3]
    oauth_calendar_client_id: str | None = None
    oauth_calendar_client_secret: str | None = dataclasses.field(default=None, repr=False)
    oauth_calendar_auth_url: str = OAUTH_PROVIDERS[3][2]
    oauth_calendar_token_url: str = OAUTH_PROVIDERS[3][3]
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    header_timeout_seconds: float = 20.0
    body_timeout_seconds: float = 60.0
    max_connections_per_client: int = 256
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from an environment mapping; keyword overrides (e.g. CLI flags that
        were given) win. Raises ConfigError naming the variable and its bad value."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if raw is None:
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except ValueError as exc:
                shown = "<hidden>" if setting.secret else repr(raw)
                raise ConfigError(f"{setting.env}={shown}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def event_log_url(self) -> str:
        return self.event_log or f"sqlite:///{self.data_dir}/events.db"


def _check_table() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    for setting in SETTINGS:
        assert fields.get(setting.name, object()) == setting.default, setting.name
    assert set(fields) == {s.name for s in SETTINGS}


_check_table()


def _runtime_value(name: str, value: Any) -> Any:
    """Check one runtime setting's new value (from JSON); raises ValueError naming the problem."""
    default = next(s.default for s in SETTINGS if s.name == name)
    if isinstance(default, bool):
        if type(value) is not bool:
            raise ValueError(f"{name} must be true or false")
        return value
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive integer")
    return value


@dataclass
class RuntimeConfig:
    """The settings an admin may change while the server runs (`RUNTIME_SETTINGS`)."""

    rate_limit_enabled: bool = True
    rate_limit_per_namespace_per_minute: int = 10_000
    body_size_limit_single_bytes: int = 1_048_576
    body_size_limit_batch_bytes: int = 10_485_760
    max_batch_delete: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeConfig:
        return cls(**{name: getattr(settings, name) for name in RUNTIME_SETTINGS})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RUNTIME_SETTINGS}

    def validated(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The known keys of `changes`, checked; unknown keys are ignored (as in the original).
        Raises ValueError on the first bad value."""
        return {
            name: _runtime_value(name, value)
            for name, value in changes.items()
            if name in RUNTIME_SETTINGS
        }

    def update(self, changes: Mapping[str, Any]) -> None:
        for name, value in self.validated(changes).items():
            setattr(self, name, value)
