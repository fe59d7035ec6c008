"""flux.credentials: AES-256-GCM secrets per (owner, connector), nothing readable on disk."""

from __future__ import annotations

import base64
import os
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flux.config import ConfigError, Settings
from flux.credentials import (
    CredentialError,
    CredentialStore,
    StoredCredential,
    decode_key,
    seal,
    unseal,
)

KEY = bytes(range(32))
KEY_TEXT = base64.b64encode(KEY).decode()
SECRET = "ghp_TopSecretToken_0123456789abcdef"


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore.open(tmp_path, KEY_TEXT)


def test_put_get_delete(store: CredentialStore) -> None:
    assert store.get("default", "github") is None
    store.put("default", "github", SECRET)
    assert store.get("default", "github") == SECRET
    assert store.has("default", "github")
    assert not store.has("other", "github")
    assert store.get("default", "gmail") is None
    assert store.delete("default", "github") is True
    assert store.delete("default", "github") is False
    assert store.get("default", "github") is None


def test_put_replaces_per_owner_and_connector(store: CredentialStore) -> None:
    store.put("alice", "github", "one")
    store.put("bob", "github", "two")
    store.put("alice", "github", "three")
    store.put("alice", "gmail", "four")
    assert store.get("alice", "github") == "three"
    assert store.get("bob", "github") == "two"
    assert store.get("alice", "gmail") == "four"
    assert store.owners("github") == ["alice", "bob"]


def test_no_plaintext_on_disk(tmp_path: Path) -> None:
    store = CredentialStore.open(tmp_path, KEY_TEXT)
    store.put("default", "github", SECRET)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET.encode() not in raw
    assert b"TopSecret" not in raw
    assert base64.b64encode(SECRET.encode()) not in raw


def test_fresh_nonce_per_secret(tmp_path: Path) -> None:
    store = CredentialStore.open(tmp_path, KEY_TEXT)
    store.put("a", "github", SECRET)
    store.put("b", "github", SECRET)
    store.close()
    db = sqlite3.connect(tmp_path / "credentials.db")
    rows = db.execute("SELECT access_token, access_token_nonce FROM credentials").fetchall()
    db.close()
    assert len(rows) == 2
    (c1, n1), (c2, n2) = rows
    assert n1 != n2 and c1 != c2
    assert len(base64.b64decode(n1)) == 12
    # wire-compatible with the original: base64(ciphertext || tag), no associated data
    plain = AESGCM(KEY).decrypt(base64.b64decode(n1), base64.b64decode(c1), None)
    assert plain.decode() == SECRET


def test_survives_reopen(tmp_path: Path) -> None:
    CredentialStore.open(tmp_path, KEY_TEXT).put("default", "github", SECRET)
    assert CredentialStore.open(tmp_path, KEY_TEXT).get("default", "github") == SECRET


def test_wrong_key_does_not_decrypt(tmp_path: Path) -> None:
    CredentialStore.open(tmp_path, KEY_TEXT).put("default", "github", SECRET)
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(CredentialError):
        CredentialStore.open(tmp_path, other).get("default", "github")


def test_seal_unseal_round_trip_and_tamper() -> None:
    sealed, nonce = seal(KEY, "x")
    assert unseal(KEY, sealed, nonce) == "x"
    broken = base64.b64encode(b"\0" + base64.b64decode(sealed)[1:]).decode()
    with pytest.raises(CredentialError):
        unseal(KEY, broken, nonce)


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(b"short").decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_bad_key_is_a_config_error_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="FLUX_ENCRYPTION_KEY"):
        decode_key(text)


def test_setting_validates_key_without_echoing_it() -> None:
    assert Settings.from_env({"FLUX_ENCRYPTION_KEY": KEY_TEXT}).encryption_key == KEY_TEXT
    assert Settings.from_env({"FLUX_ENCRYPTION_KEY": ""}).encryption_key is None
    bad = base64.b64encode(b"sixteen byte key").decode()
    with pytest.raises(ConfigError, match="FLUX_ENCRYPTION_KEY") as info:
        Settings.from_env({"FLUX_ENCRYPTION_KEY": bad})
    assert bad not in str(info.value)
    assert "16 bytes" in str(info.value)
    assert KEY_TEXT not in repr(Settings(encryption_key=KEY_TEXT))


def test_store_rejects_short_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CredentialStore(tmp_path / "c.db", b"short")


def test_an_oauth_credential_keeps_its_refresh_token_and_expiry(
    store: CredentialStore, tmp_path: Path
) -> None:
    expires = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    store.put("default", "github", SECRET, refresh_token="refresh-SECRET-42", expires_at=expires)
    record = store.record("default", "github")
    assert record == StoredCredential(SECRET, "refresh-SECRET-42", expires)
    assert record.expires_at is not None and record.expires_at.tzinfo is not None
    assert SECRET not in repr(record) and "refresh-SECRET-42" not in repr(record)
    assert store.get("default", "github") == SECRET
    raw = (tmp_path / "credentials.db").read_bytes()
    assert b"refresh-SECRET-42" not in raw and SECRET.encode() not in raw
    with sqlite3.connect(tmp_path / "credentials.db") as db:
        nonces = db.execute(
            "SELECT access_token_nonce, refresh_token_nonce, expires_at FROM credentials"
        ).fetchone()
    assert nonces[0] != nonces[1]  # each secret has its own nonce
    assert nonces[2] == "2026-05-01T10:00:00Z"  # UTC
    # Storing a personal access token over it clears the refresh token and the expiry.
    store.put("default", "github", "ghp_plain")
    assert store.record("default", "github") == StoredCredential("ghp_plain")
    assert store.record("default", "gmail") is None


def test_an_unreadable_expiry_is_a_credential_error(store: CredentialStore, tmp_path: Path) -> None:
    store.put("default", "github", SECRET, expires_at=datetime.now(UTC))
    with sqlite3.connect(tmp_path / "credentials.db") as db:
        db.execute("UPDATE credentials SET expires_at = 'soon'")
    with pytest.raises(CredentialError, match="expires_at"):
        store.record("default", "github")
