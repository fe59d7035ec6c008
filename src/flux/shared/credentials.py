"""Connector credentials of a cluster: the bucket `<stream>_credentials`.

One key per (owner, connector), `cred.<owner>.<connector>`, each part base64url without
padding (owners hold a `:`, which a key may not); the value is the JSON of the very columns the
embedded store keeps (`flux.credentials.sealed_columns`): secrets sealed with AES-256-GCM under
FLUX_ENCRYPTION_KEY (every node needs the same key), so nothing readable reaches NATS.

The store has the embedded store's synchronous interface (`flux.credentials.Credentials`), so
its callers, which already call it through `asyncio.to_thread`, do not change: reads come from
this node's copy of the bucket; a miss first catches up with the bucket (a credential stored
through another node a moment ago is found); a write goes to the bucket from the worker thread
(`BucketMirror.blocking`) and is applied here when it is stored.

`on_change(owner, connector, present)` is told of every change the watcher applies (the
connector manager starts or stops the connector it concerns); it must be idempotent, as it
also hears this node's own changes.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson

from flux.cluster import Cluster
from flux.credentials import (
    Sealed,
    StoredCredential,
    decode_key,
    format_time,
    opened,
    sealed_columns,
    unseal,
)
from flux.errors import CredentialError, LogUnavailable
from flux.mirror import BucketMirror

logger = logging.getLogger("flux.credentials")

KIND = "credentials"
PREFIX = "cred."

# Told when a credential appears or changes (present) or goes (not present).
OnChange = Callable[[str, str, bool], Awaitable[None]]


def _encode(part: str) -> str:
    return base64.urlsafe_b64encode(part.encode()).decode().rstrip("=")


def _decode(part: str) -> str:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def credential_key(owner: str, connector: str) -> str:
    return f"{PREFIX}{_encode(owner)}.{_encode(connector)}"


def parse_key(key: str) -> tuple[str, str] | None:
    """(owner, connector) of a credential key, or None for another key."""
    if not key.startswith(PREFIX):
        return None
    owner, sep, connector = key[len(PREFIX) :].partition(".")
    if not sep:
        return None
    try:
        return _decode(owner), _decode(connector)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def credential_entry(credential: Sealed) -> tuple[str, bytes]:
    """The key and value of a sealed credential in the bucket: the columns of its row."""
    row = {
        "access_token": credential.access_token,
        "access_token_nonce": credential.access_token_nonce,
        "refresh_token": credential.refresh_token,
        "refresh_token_nonce": credential.refresh_token_nonce,
        "expires_at": credential.expires_at,
        "created_at": credential.created_at,
        "updated_at": credential.updated_at,
    }
    return credential_key(credential.owner, credential.connector), orjson.dumps(row)


class SharedCredentialStore:
    def __init__(self, cluster: Cluster, key_text: str) -> None:
        """The store under the base64 key text (FLUX_ENCRYPTION_KEY). Raises ConfigError for a
        key that is not 32 bytes. Nothing connects until `open`."""
        self.cluster = cluster
        self._key = decode_key(key_text)
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._mirror: BucketMirror | None = None
        self.on_change: OnChange | None = None

    @property
    def mirror(self) -> BucketMirror:
        if self._mirror is None:
            raise CredentialError("credential store: not open")
        return self._mirror

    async def open(self) -> None:
        """Load every credential, then follow the bucket. Raises LogUnavailable or LogError."""
        kv = await self.cluster.bucket(KIND)
        self._mirror = BucketMirror(kv, self.cluster.bucket_name(KIND), self._apply)
        await self._mirror.start()

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
            self._mirror = None
        self._rows.clear()

    def close(self) -> None:
        """Nothing: the bucket is the cluster's; `stop` ends the watcher."""

    async def _apply(self, key: str, value: bytes | None) -> None:
        parsed = parse_key(key)
        if parsed is None:
            return
        if value is None:
            self._rows.pop(parsed, None)
        else:
            self._rows[parsed] = orjson.loads(value)
        if self.on_change is not None:
            await self.on_change(parsed[0], parsed[1], value is not None)

    # -- the synchronous interface (worker threads) ----------------------------------------

    def _row(self, owner: str, connector: str) -> dict[str, Any] | None:
        """The stored columns of (owner, connector); on a miss, after catching up with the
        bucket (if NATS does not answer, the miss stands)."""
        row = self._rows.get((owner, connector))
        if row is None:
            self.mirror.blocking(self._catch_up())
            row = self._rows.get((owner, connector))
        return row

    async def _catch_up(self) -> None:
        try:
            await self.mirror.catch_up()
        except LogUnavailable as exc:
            logger.warning("credential looked up without catching up: %s", exc)

    def put(
        self,
        owner: str,
        connector: str,
        secret: str,
        refresh_token: str | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        """Store (or replace) the credential of (owner, connector), sealed as on disk."""
        now = format_time(datetime.now(UTC))
        held = self._rows.get((owner, connector))
        sealed = Sealed(
            owner,
            connector,
            *sealed_columns(self._key, secret, refresh_token, expires_at),
            created_at=held["created_at"] if held is not None else now,
            updated_at=now,
        )
        self.mirror.blocking(self._write(*credential_entry(sealed)))

    async def _write(self, key: str, value: bytes | None) -> None:
        """Put `value` (None: delete the key) and apply it here. A delete marker's revision is
        not returned by the client, so a delete waits for the watcher to deliver it."""
        mirror = self.mirror
        try:
            if value is None:
                await mirror.kv.delete(key)
                await mirror.catch_up()
            else:
                await mirror.offer(key, value, await mirror.kv.put(key, value))
        except (TimeoutError, nats.errors.Error, LogUnavailable) as exc:
            raise CredentialError(f"credential store: {exc}") from exc

    def record(self, owner: str, connector: str) -> StoredCredential | None:
        """The whole credential, decrypted, or None. Raises CredentialError."""
        row = self._row(owner, connector)
        if row is None:
            return None
        return opened(
            self._key,
            row["access_token"],
            row["access_token_nonce"],
            row.get("refresh_token"),
            row.get("refresh_token_nonce"),
            row.get("expires_at"),
        )

    def get(self, owner: str, connector: str) -> str | None:
        row = self._row(owner, connector)
        if row is None:
            return None
        return unseal(self._key, row["access_token"], row["access_token_nonce"])

    def has(self, owner: str, connector: str) -> bool:
        return self._row(owner, connector) is not None

    def delete(self, owner: str, connector: str) -> bool:
        """Remove the credential of (owner, connector); True if there was one."""
        if self._row(owner, connector) is None:
            return False
        self.mirror.blocking(self._write(credential_key(owner, connector), None))
        return True

    def owners(self, connector: str) -> list[str]:
        return sorted(owner for owner, name in list(self._rows) if name == connector)
