"""The memory service: the one place memory writes happen.

Each change commits together with its outbox event and its history entry (the memory's audit
trail) in one Postgres transaction; nothing here talks to Neo4j or Redis, so writes succeed
while either is down (DESIGN invariant 1).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from app.db.connector import Database, Row, Tx
from app.domain import (
    MAX_GRAPH_WAIT_SECONDS,
    Entity,
    EventType,
    HistoryEntry,
    HistoryEvent,
    HistoryPage,
    Memory,
    MemoryWithGraph,
    Page,
    content_hash,
    request_hash,
)
from app.embeddings import Embedder, to_pgvector
from app.errors import IdempotencyConflict, NotFound, ValidationError, VersionConflict
from app.outbox import Outbox
from app.settings import Settings
from app.validation import (
    check_int64,
    check_limit,
    check_metadata,
    check_text,
    check_user_id,
)

log = logging.getLogger(__name__)
MAX_ACTOR_CHARS = 200


@dataclass(frozen=True)
class NewMemory:
    content: str
    metadata: dict[str, Any] | None = None
    importance: int = 5


def _check_id(memory_id: object) -> uuid.UUID:
    if isinstance(memory_id, uuid.UUID):
        return memory_id
    try:
        return uuid.UUID(str(memory_id))
    except ValueError:
        raise ValidationError("id must be a UUID", "id") from None


def _check_importance(importance: object, field: str = "importance") -> int:
    if isinstance(importance, bool) or not isinstance(importance, int) or not 1 <= importance <= 10:
        raise ValidationError(f"{field} must be an integer from 1 to 10", field)
    return importance


def encode_cursor(created_at: datetime, memory_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{memory_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        if len(cursor) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, mid = raw.partition("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError
        return when, uuid.UUID(mid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("cursor is not one this API returned", "cursor") from None


_INVALID_METADATA = {"_invalid": "the stored metadata exceeds this API's limits; replace it "
                                 "with PATCH"}


def to_memory(m: Row, settings: Settings) -> Memory:
    """A row as the API returns it, within the API's bounds however the row was written.

    Rows written around the API (straight into Postgres) may hold metadata past the limits
    or content past MAX_CONTENT_CHARS: such metadata reads as a marker object and such content
    is cut, with ``truncated`` set, so one odd row cannot break a page of them.
    """
    metadata = m["metadata"]
    try:
        check_metadata(metadata, settings.metadata_limits)
    except ValidationError:
        metadata = _INVALID_METADATA
    content = m["content"]
    truncated = len(content) > settings.max_content_chars
    if truncated:
        content = content[:settings.max_content_chars]
    return Memory(
        id=m["id"], user_id=m["user_id"], content=content, metadata=metadata,
        importance=m["importance"], version=m["version"], created_at=m["created_at"],
        updated_at=m["updated_at"], entities=_entities(m["entities"]), truncated=truncated,
    )


def to_history_entry(h: Row, settings: Settings) -> HistoryEntry:
    """A history row within the API's bounds (a backfilled row may hold an odd memory's
    content or metadata, bounded as ``to_memory`` bounds them)."""
    content, metadata = h["content"], h["metadata"]
    truncated = content is not None and len(content) > settings.max_content_chars
    if truncated:
        content = content[:settings.max_content_chars]
    if metadata is not None:
        try:
            check_metadata(metadata, settings.metadata_limits)
        except ValidationError:
            metadata = _INVALID_METADATA
    return HistoryEntry(memory_id=h["memory_id"], user_id=h["user_id"], version=h["version"],
                        event=h["event"], content=content, metadata=metadata,
                        importance=h["importance"], actor=h["actor"],
                        changed_at=h["changed_at"], truncated=truncated)


def _check_actor(actor: object) -> str | None:
    if actor is None:
        return None
    return check_text(actor, "actor", max_chars=MAX_ACTOR_CHARS)


def check_graph_wait(seconds: object) -> float:
    """A wait for the graph in seconds, from 0 to MAX_GRAPH_WAIT_SECONDS."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not math.isfinite(seconds) or not 0 <= seconds <= MAX_GRAPH_WAIT_SECONDS:
        raise ValidationError(f"wait_for_graph must be from 0 to {MAX_GRAPH_WAIT_SECONDS:g} "
                              "seconds", "wait_for_graph")
    return float(seconds)


def _graph_polls(seconds: float) -> Iterator[float]:
    """The pauses between reads while waiting for the graph: short at first (a projection
    usually lands within a batch), then at most a quarter second, until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    delay = 0.02
    while (left := deadline - time.monotonic()) > 0:
        yield min(delay, left)
        delay = min(delay * 2, 0.25)


def _entities(extracted: object) -> list[Entity] | None:
    """The cached extraction's entities; a malformed cache reads as none found yet."""
    if not isinstance(extracted, dict):
        return None
    out = []
    for e in extracted.get("entities", ()):
        if isinstance(e, dict) and isinstance(e.get("name"), str) \
                and isinstance(e.get("type"), str):
            out.append(Entity(name=e["name"], type=e["type"]))
    return out


def _waited(memory: MemoryWithGraph) -> MemoryWithGraph:
    """The memory after a wait for the graph, saying whether the wait timed out."""
    graph = memory.graph.model_copy(update={"timed_out": not memory.graph.settled})
    return memory.model_copy(update={"graph": graph})


class MemoryService:
    """Store, update, delete, read and search one user's memories."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox,
                 embedder: Embedder) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.embedder = embedder
        # A hook between the memory write and the outbox write, for tests that prove the two
        # commit together (a failure here must leave neither).
        self.before_outbox: Callable[[Tx], None] | None = None
        self._ts_config: str | None = None

    # -- validation -----------------------------------------------------------------------

    def _check_content(self, content: object, field: str = "content") -> str:
        return check_text(content, field, max_chars=self.settings.max_content_chars)

    def _check_metadata(self, metadata: object, field: str = "metadata") -> dict[str, Any]:
        return check_metadata(metadata, self.settings.metadata_limits, field)

    def _memory(self, row: Row) -> Memory:
        return to_memory(row, self.settings)

    # -- writes ---------------------------------------------------------------------------

    def _emit(self, tx: Tx, memory_id: uuid.UUID, user_id: str, version: int,
              event: EventType) -> None:
        if self.before_outbox is not None:
            self.before_outbox(tx)
        self.outbox.emit(tx, memory_id, user_id, version, event)

    @property
    def ts_config(self) -> str:
        """The text search configuration of SEARCH_LANGUAGE, or "simple" when Postgres does not
        know it (no stemming or stop words, but every language's words are found)."""
        if self._ts_config is None:
            known = self.db.one("text_search_config", {"name": self.settings.search_language})
            if known is None:
                log.warning("unknown text search configuration; using simple", extra={
                    "action": "memory.search_language", "language": self.settings.search_language})
            self._ts_config = self.settings.search_language if known is not None else "simple"
        return self._ts_config

    def _insert(self, tx: Tx, user_id: str, item: NewMemory, vector: list[float]) -> Memory:
        row = tx.one("insert_memory", {
            "user_id": user_id, "content": item.content, "embedding": to_pgvector(vector),
            "embedder": self.embedder.identity, "metadata": json.dumps(item.metadata or {}),
            "importance": item.importance, "content_hash": content_hash(item.content),
            "ts_config": self.ts_config,
        })
        assert row is not None
        memory = self._memory(row)
        self._emit(tx, memory.id, user_id, memory.version, "upsert")
        return memory

    def _validated(self, item: NewMemory) -> NewMemory:
        return NewMemory(self._check_content(item.content),
                         self._check_metadata(item.metadata if item.metadata is not None
                                              else {}),
                         _check_importance(item.importance))

    def store(self, user_id: str, content: str, metadata: dict[str, Any] | None = None,
              importance: int = 5, idempotency_key: str | None = None, *,
              idempotency_scope: str = "", conn: Connection | None = None,
              actor: str | None = None) -> tuple[Memory, bool]:
        """Store a memory; returns it and whether it was created (False: an idempotent replay).

        An Idempotency-Key is remembered per ``idempotency_scope`` (the API key that sent it)
        and user for IDEMPOTENCY_RETENTION_HOURS; a retry within that time returns the first
        result. Once the memory it created is deleted, a retry answers NotFound.

        With ``conn`` (a SQLAlchemy connection inside the caller's own transaction) the memory
        and its outbox event join that transaction: they commit with the caller's own rows, or
        roll back with them.

        ``actor`` names who made the change in the memory's history (the HTTP API gives its
        API key's id); None leaves it unnamed.
        """
        memories, created = self._store(user_id, [NewMemory(content, metadata, importance)],
                                        idempotency_key, idempotency_scope, conn, actor,
                                        batch=False)
        return memories[0], created

    def store_many(self, user_id: str, items: Sequence[NewMemory],
                   idempotency_key: str | None = None, *, idempotency_scope: str = "",
                   conn: Connection | None = None,
                   actor: str | None = None) -> tuple[list[Memory], bool]:
        """Store several memories in one transaction, all or none (embedded in one batch).

        A bad item raises ValidationError naming it (``items.<index>.<field>``) and stores
        nothing. One Idempotency-Key covers the whole batch.
        """
        if not items:
            raise ValidationError("items: give at least one memory", "items")
        if len(items) > self.settings.max_batch_items:
            raise ValidationError(f"items: at most {self.settings.max_batch_items} per batch",
                                  "items")
        return self._store(user_id, list(items), idempotency_key, idempotency_scope, conn,
                           actor, batch=True)

    def _store(self, user_id: str, items: list[NewMemory], idempotency_key: str | None,
               idempotency_scope: str, conn: Connection | None, actor: str | None, *,
               batch: bool) -> tuple[list[Memory], bool]:
        user_id = check_user_id(user_id)
        actor = _check_actor(actor)
        checked = []
        for index, item in enumerate(items):
            try:
                checked.append(self._validated(item))
            except ValidationError as exc:
                if not batch:
                    raise
                raise ValidationError(f"items.{index}: {exc}",
                                      f"items.{index}.{exc.field}") from None
        if idempotency_key is not None:
            check_text(idempotency_key, "Idempotency-Key", max_chars=255)
        # Embeddings before the transaction opens: no transaction waits on the model.
        vectors = self.embedder.embed([i.content for i in checked])
        with self.db.transaction(conn) as tx:
            params: dict[str, Any] = {}
            fingerprint = ""
            if idempotency_key is not None:
                fingerprint = request_hash({"batch": batch, "items": [
                    {"content": i.content, "metadata": i.metadata, "importance": i.importance}
                    for i in checked]} if batch else {
                    "content": checked[0].content, "metadata": checked[0].metadata,
                    "importance": checked[0].importance})
                params = {"scope": idempotency_scope, "user_id": user_id,
                          "key": idempotency_key}
                tx.execute("idempotency_lock", params)
                seen = tx.one("idempotency_get", params)
                if seen is not None:
                    if seen["request_hash"] != fingerprint:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was used with a different request")
                    return self._replayed(tx, user_id, seen), False
            memories = [self._insert(tx, user_id, item, vector)
                        for item, vector in zip(checked, vectors, strict=True)]
            self._record(tx, user_id, [m.id for m in memories], "created", actor)
            if idempotency_key is not None:
                tx.execute("idempotency_put", {
                    **params, "request_hash": fingerprint, "memory_id": memories[0].id,
                    "memory_ids": [m.id for m in memories] if batch else None})
        for memory in memories:
            log.info("memory stored", extra={"action": "memory.store", "user_id": user_id,
                                             "memory_id": str(memory.id)})
        return memories, True

    def _record(self, tx: Tx, user_id: str, ids: Sequence[uuid.UUID], event: HistoryEvent,
                actor: str | None) -> None:
        """The history entries of a change, in its transaction: they commit (or not) with it."""
        tx.execute("record_history", {"ids": [str(i) for i in ids], "user_id": user_id,
                                       "event": event, "actor": actor})

    def _replayed(self, tx: Tx, user_id: str, seen: Row) -> list[Memory]:
        """What an Idempotency-Key created, as it is now; NotFound if any of it was deleted."""
        ids = seen["memory_ids"] or [seen["memory_id"]]
        rows = {r["id"]: r for r in tx.all("get_memories", {"ids": ids, "user_id": user_id})}
        if len(rows) != len(ids):
            raise NotFound("the memory this Idempotency-Key created was deleted")
        return [self._memory(rows[i]) for i in ids]

    def _missing_or_conflict(self, tx: Tx, user_id: str, memory_id: uuid.UUID,
                             expected_version: int | None) -> Exception:
        row = tx.one("memory_version_any_state", {"id": memory_id, "user_id": user_id})
        if row is None or row["deleted_at"] is not None or expected_version is None:
            return NotFound("memory not found")
        return VersionConflict(
            f"memory is at version {row['version']}, not {expected_version}", row["version"])

    def update(self, user_id: str, memory_id: uuid.UUID | str, *, content: str | None = None,
               metadata: dict[str, Any] | None = None, importance: int | None = None,
               expected_version: int | None = None, conn: Connection | None = None,
               actor: str | None = None) -> Memory:
        """Change content, metadata or importance; bumps the version and queues re-projection.

        The new version joins the memory's history (by ``actor``) in the same transaction.
        """
        user_id = check_user_id(user_id)
        mid = _check_id(memory_id)
        actor = _check_actor(actor)
        if content is None and metadata is None and importance is None:
            raise ValidationError("nothing to update: give content, metadata or importance")
        vector = None
        if content is not None:
            content = self._check_content(content)
            vector = to_pgvector(self.embedder.embed([content])[0])
        if metadata is not None:
            self._check_metadata(metadata)
        if importance is not None:
            _check_importance(importance)
        if expected_version is not None:
            check_int64(expected_version, "expected_version")
        with self.db.transaction(conn) as tx:
            row = tx.one("update_memory", {
                "id": mid, "user_id": user_id, "content": content, "embedding": vector,
                "embedder": self.embedder.identity if content is not None else None,
                "ts_config": self.ts_config if content is not None else None,
                "content_hash": content_hash(content) if content is not None else None,
                "metadata": json.dumps(metadata) if metadata is not None else None,
                "importance": importance, "expected_version": expected_version,
            })
            if row is None:
                raise self._missing_or_conflict(tx, user_id, mid, expected_version)
            memory = self._memory(row)
            self._record(tx, user_id, [mid], "updated", actor)
            self._emit(tx, mid, user_id, memory.version, "upsert")
        log.info("memory updated", extra={"action": "memory.update", "memory_id": str(mid),
                                          "user_id": user_id, "version": memory.version})
        return memory

    def delete(self, user_id: str, memory_id: uuid.UUID | str, *,
               expected_version: int | None = None, conn: Connection | None = None,
               actor: str | None = None) -> int:
        """Tombstone a memory and queue its removal from the graph; returns the new version.

        The graph side always removes the memory's MENTIONS and relationships and every entity
        nothing mentions any more (DESIGN: no orphans). The delete is the last entry of the
        memory's history (by ``actor``), written in the same transaction.
        """
        user_id = check_user_id(user_id)
        mid = _check_id(memory_id)
        actor = _check_actor(actor)
        if expected_version is not None:
            check_int64(expected_version, "expected_version")
        with self.db.transaction(conn) as tx:
            row = tx.one("delete_memory", {"id": mid, "user_id": user_id,
                                           "expected_version": expected_version})
            if row is None:
                raise self._missing_or_conflict(tx, user_id, mid, expected_version)
            version = int(row["version"])
            self._record(tx, user_id, [mid], "deleted", actor)
            self._emit(tx, mid, user_id, version, "delete")
        log.info("memory deleted", extra={"action": "memory.delete", "memory_id": str(mid),
                                          "user_id": user_id, "version": version})
        return version

    def prune_idempotency_keys(self, limit: int = 5000) -> int:
        """Forget Idempotency-Keys older than IDEMPOTENCY_RETENTION_HOURS, in bounded batches."""
        return self.db.execute_in_batches("prune_idempotency_keys", {
            "age_seconds": self.settings.idempotency_retention_hours * 3600}, limit)

    def prune_history(self, limit: int = 5000) -> int:
        """Forget history entries older than HISTORY_RETENTION_DAYS (0: keep them all), in
        bounded batches; a memory's latest entry is always kept."""
        if self.settings.history_retention_days <= 0:
            return 0
        return self.db.execute_in_batches("prune_history", {
            "age_seconds": self.settings.history_retention_days * 86400}, limit)

    # -- reads ----------------------------------------------------------------------------

    def get(self, user_id: str, memory_id: uuid.UUID | str, *,
            wait_for_graph: float = 0.0) -> MemoryWithGraph:
        """One live memory with where its projection stands; another user's memory is
        NotFound, like a missing one.

        With ``wait_for_graph`` (seconds, at most MAX_GRAPH_WAIT_SECONDS) the read waits until
        the current version is projected, failed or dead, or the time is up
        (``graph.timed_out`` says which).
        """
        user_id = check_user_id(user_id)
        mid = _check_id(memory_id)
        wait = check_graph_wait(wait_for_graph)
        memory = self._read(user_id, mid)
        if not wait:
            return memory
        for pause in _graph_polls(wait):
            if memory.graph.settled:
                break
            time.sleep(pause)
            memory = self._read(user_id, mid)
        return _waited(memory)

    async def get_async(self, user_id: str, memory_id: uuid.UUID | str, *,
                        wait_for_graph: float = 0.0) -> MemoryWithGraph:
        """``get`` for an event loop: reads run in worker threads, and a wait for the graph
        holds no thread between them."""
        user_id = check_user_id(user_id)
        mid = _check_id(memory_id)
        wait = check_graph_wait(wait_for_graph)
        memory = await asyncio.to_thread(self._read, user_id, mid)
        if not wait:
            return memory
        for pause in _graph_polls(wait):
            if memory.graph.settled:
                break
            await asyncio.sleep(pause)
            memory = await asyncio.to_thread(self._read, user_id, mid)
        return _waited(memory)

    def _read(self, user_id: str, mid: uuid.UUID) -> MemoryWithGraph:
        with self.db.transaction() as tx:
            row = tx.one("get_memory", {"id": mid, "user_id": user_id})
            if row is None:
                raise NotFound("memory not found")
            memory = self._memory(row)
            graph = self.outbox.projection(tx, mid, user_id, memory.version)
        return MemoryWithGraph(**dict(memory), graph=graph)

    def history(self, user_id: str, memory_id: uuid.UUID | str, *, limit: int = 50,
                before_version: int | None = None) -> HistoryPage:
        """A page of a memory's versions, newest first, deleted memories' too (without their
        content once the tombstone is purged; until HISTORY_RETENTION_DAYS forgets them);
        another user's memory is NotFound."""
        user_id = check_user_id(user_id)
        mid = _check_id(memory_id)
        check_limit(limit)
        if before_version is not None:
            check_int64(before_version, "before_version")
        params = {"memory_id": mid, "user_id": user_id}
        rows = self.db.all("memory_history", {**params, "before_version": before_version,
                                              "limit": limit + 1})
        if not rows and (before_version is None
                         or self.db.one("memory_history_exists", params) is None):
            raise NotFound("memory not found")
        items = [to_history_entry(r, self.settings) for r in rows[:limit]]
        return HistoryPage(items=items,
                           next_before_version=items[-1].version if len(rows) > limit else None)

    def list(self, user_id: str, *, limit: int = 50, cursor: str | None = None,
             metadata: dict[str, Any] | None = None, min_importance: int = 1) -> Page:
        """A page of live memories, newest first; pass ``next_cursor`` back for the next page."""
        user_id = check_user_id(user_id)
        check_limit(limit)
        _check_importance(min_importance, "min_importance")
        after = decode_cursor(cursor) if cursor else (None, None)
        rows = self.db.all("list_memories", {
            "user_id": user_id,
            "metadata": json.dumps(self._check_metadata(metadata or {}, "metadata")),
            "min_importance": min_importance, "after_created": after[0], "after_id": after[1],
            "limit": limit + 1,
        })
        items = [self._memory(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return Page(items=items, next_cursor=next_cursor)
