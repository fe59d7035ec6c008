"""flux.auth, pure: names, bearer parsing, token hashing, and every decision `Access` makes."""

from __future__ import annotations

import hashlib

import pytest

from flux.auth import (
    ADMIN_DISABLED,
    ANONYMOUS,
    BAD_FORMAT,
    EMPTY_TOKEN,
    HIDE_ALL,
    NO_TOKEN,
    UNKNOWN_TOKEN,
    Access,
    Credential,
    Namespace,
    check_namespace_name,
    check_not_reserved,
    entity_namespace,
    hash_token,
    namespace_of,
    new_namespace_id,
    new_token,
    parse_bearer,
)
from flux.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidEntityId,
    NamespaceNotFound,
    NotFound,
    ValidationError,
)


def ns(name: str, token: str, private: bool = False) -> Namespace:
    return Namespace(f"ns_{name[:8]:0<8}", name, hash_token(token), 1_700_000_000_000_000, private)


def cred(token: str | None) -> Credential:
    return Credential.from_token(token)


ALPHA, BETA, ADMIN = cred("tok-alpha"), cred("tok-beta"), cred("tok-admin")
UNKNOWN = cred("tok-nobody")


@pytest.fixture
def access() -> Access:
    return Access([ns("alpha", "tok-alpha"), ns("beta", "tok-beta")], admin_token="tok-admin")


# -- names, tokens, headers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "a" * 32, "my-ns_01", "0-_"])
def test_valid_names(name: str) -> None:
    assert check_namespace_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Namespace name too short (minimum 3 characters)"),
        ("ab", "Namespace name too short (minimum 3 characters)"),
        ("é", "Namespace name too short (minimum 3 characters)"),  # 2 bytes
        ("a" * 33, "Namespace name too long (maximum 32 characters)"),
        ("Abc", "Invalid character 'A' (must be [a-z0-9-_])"),
        ("ab c", "Invalid character ' ' (must be [a-z0-9-_])"),
        ("ab/c", "Invalid character '/' (must be [a-z0-9-_])"),
        ("abé", "Invalid character 'é' (must be [a-z0-9-_])"),
        ("a.b", "Invalid character '.' (must be [a-z0-9-_])"),
    ],
)
def test_invalid_names(name: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_namespace_name(name)
    assert caught.value.message == message


def test_tokens_are_long_random_and_hashed_with_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) == 43 for t in tokens)
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    ids = {new_namespace_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("ns_") and len(i) == 11 and i[3:].isalnum() for i in ids)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("  Bearer abc", "abc"),
        ("Bearer a b", "a b"),
    ],
)
def test_parse_bearer(header: str, token: str) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, NO_TOKEN),
        ("", BAD_FORMAT),
        ("abc", BAD_FORMAT),
        ("Basic abc", BAD_FORMAT),
        ("Bearerabc", BAD_FORMAT),
        ("Bearer tökén", BAD_FORMAT),
        ("Bearer", EMPTY_TOKEN),
        ("Bearer    ", EMPTY_TOKEN),
    ],
)
def test_parse_bearer_refuses(header: str | None, message: str) -> None:
    with pytest.raises(AuthError) as caught:
        parse_bearer(header)
    assert caught.value.message == message
    credential = Credential.from_header(header)
    assert credential.token_hash is None and credential.problem == message


def test_credentials_keep_only_the_hash() -> None:
    credential = Credential.from_header("Bearer s3cret")
    assert credential == Credential(hash_token("s3cret"))
    assert "s3cret" not in repr(credential)
    assert Credential.from_token(None) is ANONYMOUS
    assert Credential.from_token("  ") is ANONYMOUS
    assert Credential.from_token(" s3cret ") == credential
    with pytest.raises(AuthError, match=NO_TOKEN):
        ANONYMOUS.require()


def test_entity_namespaces() -> None:
    assert namespace_of("a/b") == "a"
    assert namespace_of("a/b/c/d") == "a"
    assert namespace_of("a/") == "a"
    assert namespace_of("ab") is None
    assert namespace_of("/ab") is None
    assert entity_namespace("matt/x/y") == "matt"
    with pytest.raises(InvalidEntityId) as caught:
        entity_namespace("solo")
    assert caught.value.message == (
        "Entity ID 'solo' missing namespace prefix (expected 'namespace/entity' format)"
    )
    assert caught.value.kind == "Invalid entity ID"
    with pytest.raises(InvalidEntityId, match="Missing 'entity_id' field in payload"):
        entity_namespace(None)
    check_not_reserved("flux-corex/a")
    check_not_reserved(None)
    with pytest.raises(Forbidden, match="Namespace 'flux-core' is reserved for Flux"):
        check_not_reserved("flux-core/directory")


# -- writes -------------------------------------------------------------------------------------


def test_write_with_the_namespace_token(access: Access) -> None:
    assert access.authorize_write(ALPHA, "alpha/e1") == "alpha"
    assert access.authorize_write(ALPHA, "alpha/deep/path/e1") == "alpha"
    assert access.authorize_write(BETA, "beta/e1") == "beta"


@pytest.mark.parametrize(
    ("credential", "entity_id", "error", "message"),
    [
        (ANONYMOUS, "alpha/e1", AuthError, NO_TOKEN),
        (Credential.from_header("Basic x"), "alpha/e1", AuthError, BAD_FORMAT),
        (ANONYMOUS, "solo", AuthError, NO_TOKEN),  # the token is checked first
        (ALPHA, "solo", InvalidEntityId, None),
        (ALPHA, None, InvalidEntityId, "Missing 'entity_id' field in payload"),
        (ALPHA, "flux-core/directory", Forbidden, "Namespace 'flux-core' is reserved for Flux"),
        (
            ALPHA,
            "gamma/e1",
            NamespaceNotFound,
            "Namespace 'gamma' not found. Register it with POST /api/namespaces",
        ),
        (UNKNOWN, "alpha/e1", AuthError, UNKNOWN_TOKEN),
        (
            BETA,
            "alpha/e1",
            Forbidden,
            "Token does not have permission to write to namespace 'alpha'",
        ),
        (
            ADMIN,
            "alpha/e1",
            Forbidden,
            "Token does not have permission to write to namespace 'alpha'",
        ),
    ],
)
def test_write_refusals(
    access: Access,
    credential: Credential,
    entity_id: str | None,
    error: type[Exception],
    message: str | None,
) -> None:
    with pytest.raises(error) as caught:
        access.authorize_write(credential, entity_id)
    assert type(caught.value) is error
    if message is not None:
        assert caught.value.message == message  # type: ignore[attr-defined]


def test_error_kinds_name_the_batch_failures() -> None:
    assert AuthError("x").kind == "Invalid token"
    assert NamespaceNotFound("x").kind == "Namespace not found"
    assert Forbidden("x").kind == "Forbidden"
    assert InvalidEntityId("x").kind == "Invalid entity ID"


def test_a_replaced_token_is_revoked_at_once(access: Access) -> None:
    old = access.require("alpha")
    access.put(Namespace(old.id, "alpha", hash_token("tok-new"), old.created_at))
    with pytest.raises(AuthError, match=UNKNOWN_TOKEN):
        access.authorize_write(ALPHA, "alpha/e1")
    assert access.authorize_write(cred("tok-new"), "alpha/e1") == "alpha"
    assert access.owner(ALPHA) is None


def test_removed_namespaces(access: Access) -> None:
    removed = access.remove("alpha")
    assert removed is not None and removed.name == "alpha"
    assert access.remove("alpha") is None
    assert len(access) == 1
    with pytest.raises(NamespaceNotFound):
        access.authorize_write(ALPHA, "alpha/e1")
    with pytest.raises(NotFound, match="Namespace not found"):
        access.require("alpha")


def test_own_namespace(access: Access) -> None:
    assert access.own_namespace(BETA) == "beta"
    with pytest.raises(AuthError, match=NO_TOKEN):
        access.own_namespace(ANONYMOUS)
    with pytest.raises(AuthError, match=UNKNOWN_TOKEN):
        access.own_namespace(UNKNOWN)
    with pytest.raises(Forbidden, match="The admin token owns no namespace"):
        access.own_namespace(ADMIN)


def test_manage_needs_the_admin_or_the_namespace(access: Access) -> None:
    assert access.authorize_manage(ALPHA, "alpha").name == "alpha"
    assert access.authorize_manage(ADMIN, "alpha").name == "alpha"
    with pytest.raises(Forbidden, match="Token does not own namespace 'alpha'"):
        access.authorize_manage(BETA, "alpha")
    with pytest.raises(AuthError, match=UNKNOWN_TOKEN):
        access.authorize_manage(UNKNOWN, "alpha")
    with pytest.raises(AuthError, match=NO_TOKEN):
        access.authorize_manage(ANONYMOUS, "alpha")
    with pytest.raises(NotFound):
        access.authorize_manage(ADMIN, "gamma")


def test_new_names(access: Access) -> None:
    access.check_new("gamma")
    with pytest.raises(Conflict, match="Namespace name already exists"):
        access.check_new("alpha")
    with pytest.raises(Conflict, match="reserved for Flux"):
        access.check_new("flux-core")
    with pytest.raises(ValidationError, match="too short"):
        access.check_new("ab")


# -- reads --------------------------------------------------------------------------------------


def test_everything_is_readable_while_nothing_is_private(access: Access) -> None:
    for credential in (ANONYMOUS, UNKNOWN, ALPHA, BETA, ADMIN):
        assert access.can_read(credential, "alpha/e1")
        assert access.hidden(credential) == frozenset()
        access.check_read(credential, "alpha/e1")
        access.check_read_namespace(credential, "alpha")


def test_private_namespaces(access: Access) -> None:
    access.put(access.with_private("alpha", True))
    assert access.private == {"alpha"}
    allowed = {ALPHA, ADMIN}
    for credential in (ANONYMOUS, UNKNOWN, ALPHA, BETA, ADMIN):
        assert access.can_read(credential, "alpha/e1") is (credential in allowed)
        assert access.can_read(credential, "alpha/x/y") is (credential in allowed)
        assert access.can_read(credential, "beta/e1")
        assert access.can_read(credential, "alpha")  # no `/`: not in the namespace
        assert access.can_read(credential, "alphabet/e1")
        assert access.hidden(credential) == (
            frozenset() if credential in allowed else frozenset({"alpha"})
        )
    message = "Token does not have permission to read namespace 'alpha'"
    with pytest.raises(AuthError, match=NO_TOKEN):
        access.check_read(ANONYMOUS, "alpha/e1")
    with pytest.raises(AuthError, match=UNKNOWN_TOKEN):
        access.check_read(UNKNOWN, "alpha/e1")
    with pytest.raises(Forbidden, match=message):
        access.check_read(BETA, "alpha/e1")
    with pytest.raises(Forbidden, match=message):
        access.check_read_namespace(BETA, "alpha")
    access.check_read_namespace(ADMIN, "alpha")
    access.check_read_namespace(ALPHA, "alpha")
    access.put(access.with_private("alpha", False))
    assert access.private == set()
    assert access.can_read(ANONYMOUS, "alpha/e1")


# -- deletion -----------------------------------------------------------------------------------


def test_a_delete_hides_the_past_from_its_first_step(access: Access) -> None:
    access.put(access.with_private("alpha", True))
    assert access.history_floor("alpha/e1") == 0
    namespace, previous = access.begin_delete("alpha")
    assert namespace.name == "alpha" and previous == 0
    # no more writes, the token is no one's
    with pytest.raises(NamespaceNotFound):
        access.authorize_write(ALPHA, "alpha/e1")
    assert access.owner(ALPHA) is None
    # everything of it hidden from history and replays; its entities still private
    assert access.history_floor("alpha/e1") == access.history_floor("alpha/x/y") == HIDE_ALL
    assert access.history_floor("alphabet/e1") == access.history_floor("beta/e1") == 0
    assert access.history_floor("alpha") == 0  # no `/`: not in the namespace
    for credential in (ANONYMOUS, UNKNOWN, ALPHA, BETA):
        assert not access.can_read(credential, "alpha/e1")
        assert "alpha" in access.hidden(credential)
    assert access.can_read(ADMIN, "alpha/e1")
    access.finish_delete("alpha", 41)
    assert access.history_floor("alpha/e1") == 41
    assert access.private == set() and access.get("alpha") is None
    # the name is free, and its next namespace keeps the floor
    access.check_new("alpha")
    access.put(ns("alpha", "tok-again"))
    assert access.history_floor("alpha/e1") == 41


def test_an_undone_delete_puts_everything_back(access: Access) -> None:
    access.put(access.with_private("alpha", True))
    access.finish_delete("beta", 7)
    access.put(ns("beta", "tok-beta"))
    for name, floor in (("alpha", 0), ("beta", 7)):
        namespace, previous = access.begin_delete(name)
        assert previous == floor
        access.undo_delete(namespace, previous)
        assert access.get(name) == namespace
        assert access.history_floor(f"{name}/e1") == floor
    assert access.private == {"alpha"}
    assert access.floors == {"beta": 7}
    assert access.authorize_write(ALPHA, "alpha/e1") == "alpha"
    assert not access.can_read(ANONYMOUS, "alpha/e1")
    with pytest.raises(NotFound):
        access.begin_delete("nobody")


# -- admin --------------------------------------------------------------------------------------


def test_admin_gate_with_an_admin_token(access: Access) -> None:
    for auth_enabled in (False, True):
        access.check_admin(ADMIN, auth_enabled)
        with pytest.raises(AuthError, match="Unauthorized"):
            access.check_admin(ANONYMOUS, auth_enabled)
        with pytest.raises(AuthError, match="Admin token required"):
            access.check_admin(UNKNOWN, auth_enabled, "Admin token required")
        with pytest.raises(Forbidden, match="Unauthorized"):
            access.check_admin(ALPHA, auth_enabled)


def test_admin_gate_without_an_admin_token() -> None:
    access = Access([ns("alpha", "tok-alpha")])
    assert not access.is_admin(ANONYMOUS)
    for credential in (ANONYMOUS, ALPHA, UNKNOWN):
        access.check_admin(credential, auth_enabled=False)  # a trusted local instance
        with pytest.raises(Forbidden) as caught:
            access.check_admin(credential, auth_enabled=True)
        assert caught.value.message == ADMIN_DISABLED


def test_is_private(access: Access) -> None:
    assert not access.is_private("alpha/e1")
    access.put(access.with_private("alpha", True))
    assert access.is_private("alpha/e1")
    assert access.is_private("alpha/")
    assert not access.is_private("alpha")
    assert not access.is_private("beta/e1")
    assert not access.is_private("/alpha")
