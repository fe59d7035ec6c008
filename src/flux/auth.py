"""Namespaces, tokens and the checks on them. Pure: no I/O, no clock.

A namespace owns the entities whose id starts with `<name>/` (the rest of the id may hold more
slashes). It has one bearer token; the registry keeps only the token's SHA-256 (see
docs/auth.md for why a fast hash is enough for a 256-bit random token) and compares hashes with
`hmac.compare_digest`. `Access` is the in-memory index of the registry that every check reads;
`flux.namespaces` persists it.

Status codes follow the original where it answered, and tell 401 from 403 where it did not:
no token, a malformed one, or one that belongs to no namespace is 401; a valid token (another
namespace's, or the admin's) that may not do this is 403. The messages are the original's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, replace

from flux.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidEntityId,
    NamespaceNotFound,
    NotFound,
    ValidationError,
)

NAME_MIN = 3
NAME_MAX = 32
NAME_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")
RESERVED_NAMESPACE = "flux-core"  # Flux's own entities (the directory); nobody may write there

NO_TOKEN = "Authorization token not provided"
BAD_FORMAT = "Invalid authorization token format"
EMPTY_TOKEN = "Authorization token is empty"
UNKNOWN_TOKEN = "Invalid token: it belongs to no namespace"
ADMIN_DISABLED = "admin operations are disabled: this server has auth on and no FLUX_ADMIN_TOKEN"
REGISTRATION_UNAVAILABLE = "Namespace registration not available (auth disabled)"
# The history floor of a namespace being deleted: every event of it is hidden until the delete
# records the real floor (or is undone). SQLite's largest integer.
HIDE_ALL = 2**63 - 1


def check_namespace_name(name: str) -> str:
    """`name` if it is a valid namespace name (3 to 32 bytes of `[a-z0-9-_]`), else
    ValidationError with the original's message."""
    size = len(name.encode())
    if size < NAME_MIN:
        raise ValidationError(f"Namespace name too short (minimum {NAME_MIN} characters)")
    if size > NAME_MAX:
        raise ValidationError(f"Namespace name too long (maximum {NAME_MAX} characters)")
    for char in name:
        if char not in NAME_CHARS:
            raise ValidationError(f"Invalid character '{char}' (must be [a-z0-9-_])")
    return name


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the registry stores and compares: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


_ID_CHARS = string.digits + string.ascii_lowercase


def new_namespace_id() -> str:
    """`ns_` and 8 random characters of `[0-9a-z]`, as in the original."""
    return "ns_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def parse_bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case, token
    trimmed). Raises AuthError with the original's message for a missing, malformed or empty
    one. The same parser serves every endpoint (the original had three)."""
    if header is None:
        raise AuthError(NO_TOKEN)
    if not header.isascii():
        raise AuthError(BAD_FORMAT)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(BAD_FORMAT)
    token = token.strip()
    if not token:
        raise AuthError(EMPTY_TOKEN)
    return token


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request presented: the hash of its bearer token, or why it has none (the message
    a 401 would carry). Built once per request; the token itself is not kept."""

    token_hash: str | None
    problem: str | None = None

    @classmethod
    def from_header(cls, header: str | None) -> Credential:
        try:
            return cls(hash_token(parse_bearer(header)))
        except AuthError as exc:
            return cls(None, exc.message)

    @classmethod
    def from_token(cls, token: str | None) -> Credential:
        """From a bare token (a WebSocket `auth` frame, say); None or blank is anonymous."""
        if token is None or not token.strip():
            return ANONYMOUS
        return cls(hash_token(token.strip()))

    def require(self) -> str:
        """The token hash, or AuthError when there is none."""
        if self.token_hash is None:
            raise AuthError(self.problem or NO_TOKEN)
        return self.token_hash


ANONYMOUS = Credential(None, NO_TOKEN)


@dataclass(frozen=True, slots=True)
class Namespace:
    id: str
    name: str
    token_hash: str
    created_at: int  # microseconds since the epoch
    private: bool = False


def namespace_of(entity_id: str) -> str | None:
    """The part of an id before its first `/`, or None when there is no `/` or nothing before
    it."""
    head, sep, _ = entity_id.partition("/")
    return head if sep and head else None


def entity_namespace(entity_id: str | None) -> str:
    """The namespace an entity id writes to. Raises InvalidEntityId for a missing id or one
    without a namespace prefix."""
    if entity_id is None:
        raise InvalidEntityId("Missing 'entity_id' field in payload")
    namespace = namespace_of(entity_id)
    if namespace is None:
        raise InvalidEntityId(
            f"Entity ID '{entity_id}' missing namespace prefix (expected 'namespace/entity' format)"
        )
    return namespace


def check_not_reserved(entity_id: str | None) -> None:
    """Refuse a client write to Flux's own namespace (in every mode). Raises Forbidden."""
    if entity_id is not None and entity_id.startswith(RESERVED_NAMESPACE + "/"):
        raise Forbidden(f"Namespace '{RESERVED_NAMESPACE}' is reserved for Flux")


def _same(stored: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(stored, given)


class Access:
    """The namespace registry in memory, and every authorization decision made from it.

    `namespaces` maps name to `Namespace`; `_owner` maps a token hash to its namespace name (to
    tell another namespace's token, 403, from an unknown one, 401); `private` holds the names of
    private namespaces, so a read of a public entity costs one set lookup. `floors` maps the name
    of a deleted namespace to its history floor: the log's sequence when it was deleted. History
    and replays serve an entity of that name only its events above the floor, so whoever
    registers the name next starts empty and nobody reads the deleted namespace's past."""

    def __init__(self, namespaces: Iterable[Namespace] = (), admin_token: str | None = None):
        self.namespaces: dict[str, Namespace] = {}
        self._owner: dict[str, str] = {}
        self.private: set[str] = set()
        self.floors: dict[str, int] = {}
        self.admin_hash = hash_token(admin_token) if admin_token is not None else None
        for namespace in namespaces:
            self.put(namespace)

    def __len__(self) -> int:
        return len(self.namespaces)

    # -- the index ---------------------------------------------------------------------------

    def get(self, name: str) -> Namespace | None:
        return self.namespaces.get(name)

    def put(self, namespace: Namespace) -> None:
        """Add or replace a namespace; a replaced token is revoked at once."""
        self.remove(namespace.name)
        self.namespaces[namespace.name] = namespace
        self._owner[namespace.token_hash] = namespace.name
        if namespace.private:
            self.private.add(namespace.name)

    def remove(self, name: str) -> Namespace | None:
        namespace = self.namespaces.pop(name, None)
        if namespace is not None:
            self._owner.pop(namespace.token_hash, None)
            self.private.discard(name)
        return namespace

    def require(self, name: str) -> Namespace:
        namespace = self.namespaces.get(name)
        if namespace is None:
            raise NotFound("Namespace not found")
        return namespace

    def check_new(self, name: str) -> None:
        """Raises ValidationError for a bad name, Conflict for a taken or reserved one."""
        check_namespace_name(name)
        if name == RESERVED_NAMESPACE:
            raise Conflict(f"Namespace '{name}' is reserved for Flux")
        if name in self.namespaces:
            raise Conflict("Namespace name already exists")

    # -- who is this -------------------------------------------------------------------------

    def is_admin(self, credential: Credential) -> bool:
        return self.admin_hash is not None and _same(self.admin_hash, credential.token_hash)

    def owner(self, credential: Credential) -> str | None:
        """The namespace whose token this is, if any."""
        if credential.token_hash is None:
            return None
        name = self._owner.get(credential.token_hash)
        if name is None or not _same(self.namespaces[name].token_hash, credential.token_hash):
            return None
        return name

    def _refuse(self, credential: Credential, message: str) -> AuthError | Forbidden:
        """A known token (another namespace's, or the admin's) is 403; anything else is 401."""
        if self.owner(credential) is not None or self.is_admin(credential):
            return Forbidden(message)
        return AuthError(credential.problem or UNKNOWN_TOKEN)

    # -- writes ------------------------------------------------------------------------------

    def authorize_write(self, credential: Credential, entity_id: str | None) -> str:
        """The namespace `entity_id` is in, if `credential` holds its token. Raises, in this
        order: AuthError (no usable token), InvalidEntityId (no namespace in the id), Forbidden
        (Flux's reserved namespace), NamespaceNotFound (401), AuthError (a token of no
        namespace) or Forbidden (another namespace's token, or the admin's)."""
        token_hash = credential.require()
        name = entity_namespace(entity_id)
        check_not_reserved(entity_id)
        namespace = self.namespaces.get(name)
        if namespace is None:
            raise NamespaceNotFound(
                f"Namespace '{name}' not found. Register it with POST /api/namespaces"
            )
        if _same(namespace.token_hash, token_hash):
            return name
        raise self._refuse(
            credential, f"Token does not have permission to write to namespace '{name}'"
        )

    def own_namespace(self, credential: Credential) -> str:
        """The namespace the credential's token belongs to. Raises AuthError (no token, or a
        token of no namespace) or Forbidden (the admin token, which owns no data)."""
        credential.require()
        name = self.owner(credential)
        if name is None:
            raise self._refuse(credential, "The admin token owns no namespace")
        return name

    def authorize_manage(self, credential: Credential, name: str) -> Namespace:
        """For a token rotation or a visibility change: the admin or the namespace itself.
        Raises AuthError, NotFound or Forbidden."""
        credential.require()
        namespace = self.require(name)
        if self.is_admin(credential) or _same(namespace.token_hash, credential.token_hash):
            return namespace
        raise self._refuse(credential, f"Token does not own namespace '{name}'")

    # -- reads -------------------------------------------------------------------------------

    def is_private(self, entity_id: str) -> bool:
        """Whether the entity is in a private namespace (one set lookup, none when no namespace
        is private)."""
        if not self.private:
            return False
        head, sep, _ = entity_id.partition("/")
        return bool(sep) and head in self.private

    def can_read(self, credential: Credential, entity_id: str) -> bool:
        """Whether the credential may read the entity: always for a public namespace; for a
        private one, only with its token or the admin token."""
        if not self.is_private(entity_id):
            return True
        return self._may_read(credential, entity_id.partition("/")[0])

    def _may_read(self, credential: Credential, name: str) -> bool:
        namespace = self.namespaces.get(name)
        return (
            namespace is not None and _same(namespace.token_hash, credential.token_hash)
        ) or self.is_admin(credential)

    def check_read(self, credential: Credential, entity_id: str) -> None:
        """Raises AuthError (401) or Forbidden (403) when the credential may not read it."""
        if self.can_read(credential, entity_id):
            return
        name = entity_id.partition("/")[0]
        raise self._refuse(credential, f"Token does not have permission to read namespace '{name}'")

    def check_read_namespace(self, credential: Credential, name: str) -> None:
        """As check_read, for a namespace as a whole (GET /api/namespaces/{name})."""
        if name not in self.private or self._may_read(credential, name):
            return
        raise self._refuse(credential, f"Token does not have permission to read namespace '{name}'")

    def history_floor(self, entity_id: str) -> int:
        """The sequence at or below which the entity's events are not served (history and
        replays): its namespace's floor if that namespace was deleted, HIDE_ALL while it is
        being deleted, else 0. One dict lookup, none when no namespace was ever deleted."""
        if not self.floors:
            return 0
        head, sep, _ = entity_id.partition("/")
        return self.floors.get(head, 0) if sep else 0

    def hidden(self, credential: Credential) -> frozenset[str]:
        """The private namespaces the credential may not read (left out of listings)."""
        if not self.private:
            return frozenset()
        return frozenset(name for name in self.private if not self._may_read(credential, name))

    # -- admin -------------------------------------------------------------------------------

    def check_admin(
        self, credential: Credential, auth_enabled: bool, message: str = "Unauthorized"
    ) -> None:
        """The admin gate. With an admin token configured, only it passes (else AuthError with
        `message`, or Forbidden with it for a namespace's token: a valid credential that may
        not do this). Without one: open with auth off (a trusted local instance), refused with
        auth on (Forbidden), unlike the original, which left admin operations open."""
        if self.admin_hash is None:
            if auth_enabled:
                raise Forbidden(ADMIN_DISABLED)
            return
        if not self.is_admin(credential):
            if self.owner(credential) is not None:
                raise Forbidden(message)
            raise AuthError(message)

    def with_private(self, name: str, private: bool) -> Namespace:
        return replace(self.require(name), private=private)

    # -- deletion ----------------------------------------------------------------------------

    def begin_delete(self, name: str) -> tuple[Namespace, int]:
        """The first step of deleting a namespace; returns it and its previous floor (for
        `undo_delete`). Its token stops working and no write to it is admitted from here on;
        its history and replays are hidden from everyone (floor HIDE_ALL); a private one stays
        private (its entities, until their tombstones land, and the tombstones themselves are
        shown to the admin only). Raises NotFound."""
        namespace = self.require(name)
        previous = self.floors.get(name, 0)
        self.namespaces.pop(name)
        self._owner.pop(namespace.token_hash, None)
        self.floors[name] = HIDE_ALL
        return namespace, previous

    def finish_delete(self, name: str, floor: int) -> None:
        """The last step, once the floor is on disk: the namespace is gone and its events at or
        below `floor` stay hidden. Also for a namespace not begun (an undone delete's retry)."""
        self.remove(name)
        self.private.discard(name)
        self.floors[name] = floor

    def undo_delete(self, namespace: Namespace, previous_floor: int) -> None:
        """Put back a namespace whose delete failed, with its token and its old floor."""
        self.private.discard(namespace.name)
        self.put(namespace)
        if previous_floor:
            self.floors[namespace.name] = previous_floor
        else:
            self.floors.pop(namespace.name, None)
