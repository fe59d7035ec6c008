"""Generic HTTP sources: "point a URL at Flux" (reference §10.2-10.3, the original's Bento
sources, run inside the server).

Each poll GETs the source's URL and publishes what it finds:

- by default (the original): the response's top-level JSON object becomes the properties of
  entity `<namespace>/<entity_key>`;
- `entity_key` may instead be a JSON path (`$.id`, see `flux.connectors.jsonpath`) whose value
  (a string or an integer) is the key;
- `items` (a JSON path selecting a list) fans out: one entity per item, `entity_key` then being
  a path evaluated on each item;
- `mapping` (`{"property": "$.path"}`) picks and renames fields (a path the document lacks
  gives null, so a field that disappears upstream is cleared rather than left stale).

The configuration and its checks are in `flux.connectors.source_config`. `build_events` is
pure. `GenericSource.fetch` does the HTTP: the response size is capped while it streams in,
redirects are followed (at most `MAX_REDIRECTS`, each target checked by the SSRF guard; the
secret is not sent to another origin), and upstream errors become `ConnectorError`s with clear
messages, or with auth on one message that says nothing of the host (`FETCH_FAILED`).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import orjson

from flux.config import Settings
from flux.connectors import jsonpath
from flux.connectors.base import ConnectorError, EventDict
from flux.connectors.runner import describe_failure
from flux.connectors.source_config import SourceConfig
from flux.connectors.ssrf import DEFAULT_POLICY, Policy, Refused, check_url
from flux.errors import FluxError
from flux.events import now_ms, uuid7

STREAM = "generic"
SOURCE_PREFIX = "generic."
USER_AGENT = "flux-source/1.0"
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 86_400.0


# -- from a response to events (pure) ------------------------------------------------------------


class MappingError(ConnectorError):
    """The response does not have the shape the source's paths expect."""


def _key_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(
            f"the entity key at {where} is {jsonpath.kind(value)}, expected a string or an integer"
        )
    text = str(value)
    if not text:
        raise MappingError(f"the entity key at {where} is empty")
    if "\x00" in text:
        raise MappingError(f"the entity key at {where} contains the NUL character")
    return text


def _properties(config: SourceConfig, document: Any, what: str) -> dict[str, Any]:
    if config.mapping:
        properties: dict[str, Any] = {}
        for prop, text in config.mapping.items():
            try:
                properties[prop] = jsonpath.evaluate(jsonpath.parse(text), document)
            except jsonpath.PathError:
                properties[prop] = None
        return properties
    if not isinstance(document, dict):
        hint = "; set `items` to fan a list out" if isinstance(document, list) else ""
        raise MappingError(
            f"{what} is {jsonpath.kind(document)}, not a JSON object (set `mapping` to pick "
            f"values{hint})"
        )
    return document


def _event(
    source_id: str, config: SourceConfig, key: str, properties: dict[str, Any], now: int
) -> EventDict:
    return {
        "eventId": uuid7(),
        "stream": STREAM,
        "source": SOURCE_PREFIX + source_id,
        "timestamp": now,
        "key": key,
        "namespace": config.namespace,
        "payload": {"entity_id": f"{config.namespace}/{key}", "properties": properties},
    }


def build_events(
    source_id: str, config: SourceConfig, document: Any, now: int | None = None
) -> list[EventDict]:
    """The events one response yields. Raises MappingError when the response lacks what the
    paths select (its message becomes the source's `last_error`). An entity with no
    properties is left out."""
    now = now_ms() if now is None else now
    key_path = config.key_path
    if config.items is None:
        if key_path is None:
            key = config.entity_key
        else:
            try:
                value = jsonpath.evaluate(key_path, document)
            except jsonpath.PathError as exc:
                raise MappingError(f"entity_key: {exc}") from None
            key = _key_text(value, config.entity_key)
        properties = _properties(config, document, "the response")
        return [_event(source_id, config, key, properties, now)] if properties else []
    try:
        items = jsonpath.evaluate(jsonpath.parse(config.items), document)
    except jsonpath.PathError as exc:
        raise MappingError(f"items: {exc}") from None
    if not isinstance(items, list):
        raise MappingError(f"items: {config.items} is {jsonpath.kind(items)}, not a list")
    assert key_path is not None  # parse_config requires a path with `items`
    events = []
    for index, item in enumerate(items):
        try:
            value = jsonpath.evaluate(key_path, item)
        except jsonpath.PathError as exc:
            raise MappingError(f"item {index}: entity_key: {exc}") from None
        key = _key_text(value, f"item {index} {config.entity_key}")
        properties = _properties(config, item, f"item {index}")
        if properties:
            events.append(_event(source_id, config, key, properties, now))
    return events


# -- the fetch ---------------------------------------------------------------------------------


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta seconds or an HTTP date), capped at a
    day; None when absent or unreadable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    wait = moment.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


def upstream_error(status: int, headers: httpx.Headers) -> ConnectorError:
    """The `last_error` for a non-2xx answer; 429 and 503 carry their `Retry-After`."""
    if status == 401:
        message = "upstream refused the credentials (HTTP 401): check the source's token"
    elif status == 403:
        message = "upstream denied access (HTTP 403)"
    elif status == 429:
        message = "upstream rate limit (HTTP 429)"
    elif 300 <= status < 400:
        message = f"upstream redirected (HTTP {status}) without a Location"
    else:
        message = f"upstream error: HTTP {status}"
    wait = retry_after(headers) if status in (429, 503) else None
    if wait is not None:
        message += f", asks to wait {wait:.0f}s"
    return ConnectorError(message, wait)


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The (decoded) body, or ConnectorError as soon as it passes `limit` bytes; a declared
    Content-Length over the limit is refused before reading."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit and "Content-Encoding" not in response.headers:
        raise ConnectorError(f"upstream response is over the {limit}-byte limit ({declared})")
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ConnectorError(f"upstream response is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


FETCH_FAILED = "could not fetch the URL"


class GenericSource:
    """One configured source as a `Connector`. The runner's client must use a
    `flux.connectors.ssrf.GuardedTransport` with the same `policy` (the manager gives it one):
    that is where every address is checked.

    With `detailed_errors` off (auth on) every failure to get a response (an address refused,
    a name that does not resolve, a connection refused or timed out, an error status, a bad
    redirect) reads `could not fetch the URL`, so that a tenant cannot map the hosts and ports
    the server reaches (the server log keeps the reason); what is wrong with a response the
    source did get (not JSON, too big, not the shape its paths expect) is still said. The
    poll interval is at least `min_interval_seconds`."""

    def __init__(
        self,
        source_id: str,
        config: SourceConfig,
        max_response_bytes: int = Settings.source_max_response_bytes,
        policy: Policy = DEFAULT_POLICY,
        detailed_errors: bool = True,
        min_interval_seconds: int = 1,
    ) -> None:
        self.source_id = source_id
        self.config = config
        self.max_response_bytes = max_response_bytes
        self.policy = policy
        self.detailed_errors = detailed_errors
        self.min_interval_seconds = min_interval_seconds

    @property
    def name(self) -> str:
        return f"source:{self.source_id}"

    @property
    def poll_interval_seconds(self) -> float:
        return float(max(self.config.poll_interval_secs, self.min_interval_seconds))

    def _failed(self, detail: str, retry_after: float | None = None) -> ConnectorError:
        message = detail if self.detailed_errors else FETCH_FAILED
        return ConnectorError(message, retry_after, detail=detail)

    def describe_failure(self, exc: BaseException) -> str:
        """The status's `last_error` for what a poll raised (the runner's `describe`): as
        `flux.connectors.runner.describe_failure` says, but without detail a connector error
        does not carry (a time-out, anything unexpected) when errors are not detailed."""
        if self.detailed_errors or isinstance(exc, ConnectorError | FluxError):
            return describe_failure(exc)
        return FETCH_FAILED

    async def get(self, client: httpx.AsyncClient, token: str | None) -> Any:
        """The decoded JSON at the source's URL (following redirects). Raises ConnectorError."""
        url = self.config.url
        first = _origin(httpx.URL(url))
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = check_url(url, self.policy)
            except Refused as exc:
                raise self._failed(exc.message) from None
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if _origin(target) == first:  # the secret goes only to the source's own origin
                headers.update(self.config.auth.headers(token))
            try:
                async with client.stream("GET", target, headers=headers) as response:
                    if response.is_redirect and "Location" in response.headers:
                        url = str(target.join(response.headers["Location"]))
                        continue
                    if not 200 <= response.status_code < 300:
                        error = upstream_error(response.status_code, response.headers)
                        raise self._failed(error.message, error.retry_after)
                    body = await read_capped(response, self.max_response_bytes)
            except Refused as exc:
                raise self._failed(exc.message) from None
            except httpx.TimeoutException:
                raise self._failed(f"upstream timed out ({target.host})") from None
            except httpx.TransportError as exc:
                reason = str(exc) or type(exc).__name__
                raise self._failed(f"cannot reach {target.host}: {reason}") from None
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ConnectorError(f"upstream did not answer with JSON: {exc}") from None
        raise self._failed(f"upstream redirected more than {MAX_REDIRECTS} times")

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        document = await self.get(client, token)
        return build_events(self.source_id, self.config, document)
