"""Encrypted connector credentials: one secret per (owner, connector) in SQLite.

Secrets are sealed with AES-256-GCM (`cryptography`'s `AESGCM`) under `FLUX_ENCRYPTION_KEY`, a
fresh random 12-byte nonce per secret and no associated data; the columns hold
base64(ciphertext || 16-byte tag) and base64(nonce), as in the original's `credentials` table
(reference §10.1), so nothing readable lands on disk.

`owner` is the credential's user key: `default` with auth off, `namespace:<name>` with auth on.
A credential stored by an OAuth sign-in also holds a refresh token (sealed with its own nonce)
and the access token's expiry (`expires_at`, ISO 8601 UTC, not secret).

`Credentials` is what the connectors and the API need of a store: `CredentialStore` is the
embedded one, `flux.shared.credentials.SharedCredentialStore` the cluster's (the same sealed
values in a JetStream key-value bucket).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flux.config import ConfigError
from flux.errors import CredentialError
from flux.sqlitedb import SQLiteDB

NONCE_BYTES = 12
FILE_NAME = "credentials.db"  # in the data dir
KEY_ENV = "FLUX_ENCRYPTION_KEY"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    connector TEXT NOT NULL,
    access_token TEXT NOT NULL,
    access_token_nonce TEXT NOT NULL,
    refresh_token TEXT,
    refresh_token_nonce TEXT,
    expires_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE(user_id, connector)
);
CREATE INDEX IF NOT EXISTS idx_user_connector ON credentials(user_id, connector);
"""


def decode_key(text: str) -> bytes:
    """The 32-byte key from its standard base64 text. Raises ConfigError naming
    FLUX_ENCRYPTION_KEY (never echoing the value) if it is not exactly 32 bytes."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{KEY_ENV}: must be standard base64 of exactly 32 bytes") from None
    if len(key) != 32:
        raise ConfigError(
            f"{KEY_ENV}: must be standard base64 of exactly 32 bytes (got {len(key)} bytes)"
        )
    return key


def seal(key: bytes, plaintext: str) -> tuple[str, str]:
    """Encrypt one secret with a fresh nonce; returns (base64 ciphertext+tag, base64 nonce)."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    return base64.b64encode(sealed).decode(), base64.b64encode(nonce).decode()


def unseal(key: bytes, ciphertext: str, nonce: str) -> str:
    """Decrypt what `seal` returned. Raises CredentialError if the key is wrong or the data
    was altered."""
    try:
        plain = AESGCM(key).decrypt(base64.b64decode(nonce), base64.b64decode(ciphertext), None)
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise CredentialError("stored credential does not decrypt (wrong key?)") from exc
    return plain.decode()


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> str:
    return format_time(datetime.now(UTC))


@dataclass(frozen=True)
class StoredCredential:
    """One credential, decrypted: the access token, and for an OAuth sign-in the refresh token
    and when the access token expires (both None for a personal access token)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None


def sealed_columns(
    key: bytes, secret: str, refresh_token: str | None, expires_at: datetime | None
) -> tuple[str, str, str | None, str | None, str | None]:
    """What a store keeps of a credential: (access token, its nonce, refresh token, its nonce,
    expires_at text), each secret sealed with a fresh nonce; the reverse of `opened`."""
    sealed, nonce = seal(key, secret)
    refresh, refresh_nonce = (None, None)
    if refresh_token is not None:
        refresh, refresh_nonce = seal(key, refresh_token)
    expires = format_time(expires_at) if expires_at is not None else None
    return sealed, nonce, refresh, refresh_nonce, expires


def opened(
    key: bytes,
    access: str,
    access_nonce: str,
    refresh: str | None,
    refresh_nonce: str | None,
    expires: str | None,
) -> StoredCredential:
    """A stored credential's sealed columns, decrypted. Raises CredentialError if a secret does
    not decrypt or `expires` is unreadable."""
    refresh_token = None
    if refresh is not None and refresh_nonce is not None:
        refresh_token = unseal(key, refresh, refresh_nonce)
    expires_at = None
    if expires:
        try:
            expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CredentialError(f"stored expires_at is not a time: {expires!r}") from exc
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
    return StoredCredential(unseal(key, access, access_nonce), refresh_token, expires_at)


@dataclass(frozen=True)
class Sealed:
    """One credential as a store keeps it: its secrets sealed (`sealed_columns`), never opened
    (what `flux migrate` moves from a data dir into a cluster, with no key)."""

    owner: str
    connector: str
    access_token: str = field(repr=False)
    access_token_nonce: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    refresh_token_nonce: str | None = field(repr=False)
    expires_at: str | None
    created_at: str
    updated_at: str


def read_sealed(path: str | Path) -> list[Sealed]:
    """Every credential of the store file `path` (`credentials.db`), sealed as it is there,
    by owner and connector. Needs no key. Raises CredentialError."""
    db = SQLiteDB(
        path,
        _SCHEMA,
        name="the credential store",
        error=CredentialError,
        prefix="credential store: ",
    )
    db.open()
    try:
        rows = db.query(
            "SELECT user_id, connector, access_token, access_token_nonce, refresh_token,"
            " refresh_token_nonce, expires_at, created_at, updated_at FROM credentials"
            " ORDER BY user_id, connector"
        )
    finally:
        db.close()
    return [Sealed(*row) for row in rows]


class Credentials(Protocol):
    """Secrets per (owner, connector). Every call is synchronous and may block (callers on
    the event loop use `asyncio.to_thread`). Raises CredentialError."""

    def put(
        self,
        owner: str,
        connector: str,
        secret: str,
        refresh_token: str | None = None,
        expires_at: datetime | None = None,
    ) -> None: ...
    def record(self, owner: str, connector: str) -> StoredCredential | None: ...
    def get(self, owner: str, connector: str) -> str | None: ...
    def has(self, owner: str, connector: str) -> bool: ...
    def delete(self, owner: str, connector: str) -> bool: ...
    def owners(self, connector: str) -> list[str]: ...
    def close(self) -> None: ...


class CredentialStore:
    """Secrets per (owner, connector) in one SQLite file. Thread-safe; every call is short
    and synchronous (callers on the event loop may use `asyncio.to_thread`)."""

    def __init__(self, path: str | Path, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(f"{KEY_ENV}: the key must be exactly 32 bytes")
        self.path = Path(path)
        self._key = key
        self._db = SQLiteDB(
            self.path,
            _SCHEMA,
            name="the credential store",
            error=CredentialError,
            prefix="credential store: ",
        )
        self._db.open()

    @classmethod
    def open(cls, data_dir: str | Path, key_text: str) -> CredentialStore:
        """The store `<data_dir>/credentials.db` under the base64 key text."""
        return cls(Path(data_dir) / FILE_NAME, decode_key(key_text))

    def put(
        self,
        owner: str,
        connector: str,
        secret: str,
        refresh_token: str | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        """Store (or replace) the secret of (owner, connector), sealed with a fresh nonce; an
        OAuth sign-in also gives the refresh token (sealed with its own nonce) and when the
        access token expires. Replacing a credential replaces all three."""
        sealed, nonce, refresh, refresh_nonce, expires = sealed_columns(
            self._key, secret, refresh_token, expires_at
        )
        now = _now()
        self._db.execute(
            "INSERT INTO credentials (user_id, connector, access_token, access_token_nonce,"
            " refresh_token, refresh_token_nonce, expires_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(user_id, connector) DO UPDATE SET access_token = excluded.access_token,"
            " access_token_nonce = excluded.access_token_nonce,"
            " refresh_token = excluded.refresh_token,"
            " refresh_token_nonce = excluded.refresh_token_nonce,"
            " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (owner, connector, sealed, nonce, refresh, refresh_nonce, expires, now, now),
        )

    def record(self, owner: str, connector: str) -> StoredCredential | None:
        """The whole credential of (owner, connector), decrypted, or None. Raises
        CredentialError if a secret does not decrypt or `expires_at` is unreadable."""
        rows = self._db.query(
            "SELECT access_token, access_token_nonce, refresh_token, refresh_token_nonce,"
            " expires_at FROM credentials WHERE user_id = ? AND connector = ?",
            (owner, connector),
        )
        if not rows:
            return None
        return opened(self._key, *rows[0])

    def get(self, owner: str, connector: str) -> str | None:
        """The secret of (owner, connector), or None. Raises CredentialError if it does not
        decrypt."""
        rows = self._db.query(
            "SELECT access_token, access_token_nonce FROM credentials"
            " WHERE user_id = ? AND connector = ?",
            (owner, connector),
        )
        if not rows:
            return None
        return unseal(self._key, rows[0][0], rows[0][1])

    def has(self, owner: str, connector: str) -> bool:
        rows = self._db.query(
            "SELECT 1 FROM credentials WHERE user_id = ? AND connector = ?", (owner, connector)
        )
        return bool(rows)

    def delete(self, owner: str, connector: str) -> bool:
        """Remove the secret of (owner, connector); True if there was one."""
        changed = self._db.execute(
            "DELETE FROM credentials WHERE user_id = ? AND connector = ?", (owner, connector)
        )
        return changed > 0

    def owners(self, connector: str) -> list[str]:
        """Every owner holding a secret for `connector`, sorted."""
        rows = self._db.query(
            "SELECT user_id FROM credentials WHERE connector = ? ORDER BY user_id", (connector,)
        )
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        self._db.close()
