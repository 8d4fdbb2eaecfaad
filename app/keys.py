"""API keys: who is calling, and for which users it may act.

Two sources: the bootstrap keys of the settings (``API_SERVICE_KEYS``, ``API_ADMIN_KEYS``) and
keys kept in Postgres as sha256 hashes, created, listed and revoked with ``memctl keys`` or the
admin API. A key from Postgres may be tenant-bound: a service key with a namespace acts only on
user ids ``<namespace>:…``, so one leaked integration key cannot reach another customer.

Each web process caches lookups for API_KEY_CACHE_SECONDS (also misses, bounded in size), so a
revoked key is refused by every process within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from app.db.connector import Database
from app.errors import Forbidden, NotFound, ValidationError
from app.settings import Settings
from app.validation import check_text

Scope = Literal["service", "admin"]
SCOPES: tuple[Scope, ...] = ("service", "admin")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: its key's id, scope and namespace, never the key itself."""

    key_id: str  # "db:<id>" or "settings:<scope>:<position>"
    scope: Scope
    namespace: str | None = None

    @property
    def actor(self) -> str:
        """A non-secret label for audit records, e.g. ``api:admin-key-2`` or ``api:key-7``."""
        if self.key_id.startswith("settings:"):
            _, scope, index = self.key_id.split(":")
            return f"api:{scope}-key-{index}"
        return f"api:key-{self.key_id.removeprefix('db:')}"

    def may_act_for(self, user_id: str) -> bool:
        return self.namespace is None or user_id.startswith(self.namespace + ":")

    def authorize(self, user_id: str) -> None:
        """Raise Forbidden unless this key may act on ``user_id``'s memories."""
        if not self.may_act_for(user_id):
            raise Forbidden(f"this key may only act for user ids in namespace "
                            f"'{self.namespace}' (like '{self.namespace}:…')", field="user_id")


@dataclass(frozen=True)
class NewKey:
    """A key just created: the secret is shown once and never stored."""

    record: dict[str, Any]
    secret: str


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _match_index(given: bytes, keys: tuple[bytes, ...]) -> int | None:
    # Compare against every key, without stopping at a match, so timing says nothing about
    # which key (or how many) there are.
    found: int | None = None
    for i, key in enumerate(keys, start=1):
        if hmac.compare_digest(given, key) and found is None:
            found = i
    return found


class ApiKeys:
    """Create, list, revoke and recognise API keys."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._admin = tuple(k.get_secret_value().encode() for k in settings.api_admin_keys)
        self._service = tuple(k.get_secret_value().encode() for k in settings.api_service_keys)
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._lock = threading.Lock()

    def identify(self, secret: str) -> Principal | None:
        """The principal a key stands for, or None for an unknown or revoked key."""
        given = secret.encode("utf-8", "surrogatepass")
        admin = _match_index(given, self._admin)
        service = _match_index(given, self._service)
        if admin is not None:
            return Principal(f"settings:admin:{admin}", "admin")
        if service is not None:
            return Principal(f"settings:service:{service}", "service")
        if len(secret) > 256:  # no key of ours is this long: not worth a lookup
            return None
        digest = key_hash(secret)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                return cached[1]
        row = self.db.one("find_api_key", {"key_hash": digest})
        principal = (Principal(f"db:{row['id']}", row["scope"], row["namespace"])
                     if row is not None else None)
        with self._lock:
            self._cache[digest] = (now + self.settings.api_key_cache_seconds, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return principal

    @staticmethod
    def digest(secret: str) -> str:
        """A short, non-reversible digest of a key, to tell later that it is the same key."""
        return key_hash(secret)[:16]

    def current(self, key_id: str, digest: str) -> Principal | None:
        """The principal of a key identified earlier (by ``identify``), if it still is valid.

        A bootstrap key must still be configured at its position with the same ``digest``; a
        stored key must not be revoked (looked up, then cached like ``identify`` does, so a
        revocation reaches every process within API_KEY_CACHE_SECONDS).
        """
        kind, _, rest = key_id.partition(":")
        if kind == "settings":
            scope, _, position = rest.partition(":")
            keys = self._admin if scope == "admin" else self._service
            index = int(position) if position.isdigit() else 0
            if 1 <= index <= len(keys) and hmac.compare_digest(
                    self.digest(keys[index - 1].decode("utf-8", "surrogatepass")), digest):
                return Principal(key_id, "admin" if scope == "admin" else "service")
            return None
        if kind != "db" or not rest.isdigit() or len(rest) > 18:
            return None
        now = time.monotonic()
        cache_key = "id:" + key_id
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None and cached[0] > now:
                return cached[1]
        row = self.db.one("get_api_key", {"id": int(rest)})
        principal = (Principal(key_id, row["scope"], row["namespace"])
                     if row is not None and row["revoked_at"] is None else None)
        with self._lock:
            self._cache[cache_key] = (now + self.settings.api_key_cache_seconds, principal)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return principal

    def create(self, name: str, scope: str, namespace: str | None = None, *,
               actor: str) -> NewKey:
        """A new key; its secret is returned once and only its hash is stored."""
        name = check_text(name, "name", max_chars=200)
        if scope not in SCOPES:
            raise ValidationError("scope must be service or admin", "scope")
        if namespace is not None:
            if scope != "service":
                raise ValidationError("only a service key can be bound to a namespace",
                                      "namespace")
            if not _NAMESPACE.fullmatch(namespace):
                raise ValidationError("namespace: 1 to 64 letters, digits, '_', '.' or '-', "
                                      "starting with a letter or digit", "namespace")
        secret = ("adm_" if scope == "admin" else "svc_") + secrets.token_urlsafe(32)
        record = self.db.one("insert_api_key", {
            "name": name, "prefix": secret[:10], "key_hash": key_hash(secret), "scope": scope,
            "namespace": namespace, "created_by": actor})
        assert record is not None
        return NewKey(record, secret)

    def list(self, *, include_revoked: bool = False, limit: int = 500) -> list[dict[str, Any]]:
        return self.db.all("list_api_keys", {"include_revoked": include_revoked,
                                             "limit": limit})

    def revoke(self, key_id: int, *, actor: str) -> dict[str, Any]:
        """Revoke a key (idempotent); every process refuses it within the cache time."""
        if self.db.one("revoke_api_key", {"id": key_id, "actor": actor}) is None \
                and self.db.one("get_api_key", {"id": key_id}) is None:
            raise NotFound(f"no API key {key_id}")
        row = self.db.one("get_api_key", {"id": key_id})
        assert row is not None
        return row
