"""Domain types shared by the service, the API, the workers and the admin tools."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["upsert", "delete", "resync"]
ProjectionStatus = Literal["pending", "projected", "failed", "dead"]
HistoryEvent = Literal["created", "updated", "deleted"]

# Bounds of the API's pages (the bounds of inputs live in app.validation and settings).
MAX_PAGE = 500
MAX_TOP_K = 100
MAX_GRAPH_WAIT_SECONDS = 30.0  # the longest a read may wait for its memory's projection


class Memory(BaseModel):
    """A memory as the API returns it."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    user_id: str
    content: str
    metadata: dict[str, Any]
    importance: int
    version: int
    created_at: datetime
    updated_at: datetime
    entities: list[Entity] | None = Field(
        default=None, description="Entities found by the extractor, once a worker has run."
    )
    truncated: bool = Field(
        default=False, description="The stored content was longer than MAX_CONTENT_CHARS and "
                                   "is cut here (only rows written around the API).")


class Entity(BaseModel):
    """An entity mentioned by a memory; ``key`` is unique per user."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str


class Relation(BaseModel):
    """A relationship between two entities of one memory; the predicate is data, not a type."""

    model_config = ConfigDict(frozen=True)

    source: Entity
    target: Entity
    predicate: str


class Extraction(BaseModel):
    """What an extractor found in one text."""

    model_config = ConfigDict(frozen=True)

    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)


class GraphProjection(BaseModel):
    """Where a memory's projection into the graph stands, as the outbox in Postgres knows it.

    ``pending``: a change waits for (or is in) delivery; ``failed``: a delivery attempt failed
    and a retry is scheduled; ``dead``: the current version ran out of attempts (a dead letter
    an admin can replay); ``projected``: the graph has the current version.
    """

    model_config = ConfigDict(frozen=True)

    status: ProjectionStatus
    projected_version: int | None = Field(description=(
        "The newest version the workers finished (the graph has it); null: none yet."))
    since: datetime | None = Field(description=(
        "When the status began: the oldest waiting change (pending), the last failure "
        "(failed), the dead end (dead), the projection (projected; null once the delivery "
        "record was pruned)."))
    timed_out: bool | None = Field(default=None, description=(
        "Only with wait_for_graph: true when the wait ended before the current version was "
        "projected, failed or dead."))

    @property
    def settled(self) -> bool:
        """Whether waiting longer is pointless: projected, failed or dead."""
        return self.status != "pending"


class MemoryWithGraph(Memory):
    """A memory as a read returns it: with where its projection into the graph stands."""

    graph: GraphProjection


class HistoryEntry(BaseModel):
    """One version of a memory: what it held, who made it and when (a delete holds nothing)."""

    model_config = ConfigDict(frozen=True)

    memory_id: uuid.UUID
    user_id: str
    version: int
    event: HistoryEvent
    content: str | None
    metadata: dict[str, Any] | None
    importance: int | None
    actor: str | None = Field(description=(
        "Who made the change: the API key's id (never the key), the actor a library caller "
        "named, or null."))
    changed_at: datetime
    truncated: bool = False


class HistoryPage(BaseModel):
    items: list[HistoryEntry] = Field(description="Newest version first.")
    next_before_version: int | None = Field(default=None, description=(
        "Pass as before_version for the next (older) page; null on the last."))


class Page(BaseModel):
    items: list[Memory]
    next_cursor: str | None = None


@dataclass(frozen=True)
class MemoryState:
    """A memory row as projection, checks and rebuilds read it (not an API shape).

    ``entities`` is the cached extraction as stored (JSON), made by ``extractor`` from the
    content whose hash is ``extracted_hash``.
    """

    id: uuid.UUID
    user_id: str
    version: int
    deleted: bool
    importance: int = 5
    content: str = ""
    content_hash: str = ""
    entities: dict[str, Any] | None = None
    extractor: str | None = None
    extracted_hash: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MemoryState:
        """From a statement's columns (``memory_id``/``memory_user_id`` where a join renames)."""
        return cls(
            id=row.get("memory_id") or row["id"],
            user_id=row.get("memory_user_id") or row["user_id"],
            version=int(row["version"]),
            deleted=row["deleted_at"] is not None,
            importance=int(row.get("importance") or 5),
            content=row.get("content") or "",
            content_hash=row.get("content_hash") or "",
            entities=row.get("entities"),
            extractor=row.get("extractor"),
            extracted_hash=row.get("extracted_hash"),
        )


def normalise_name(name: str) -> str:
    """Case-, accent-width- and whitespace-insensitive form of an entity name."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def entity_key(user_id: str, type_: str, name: str) -> str:
    """user + type + normalised name: users never share an entity."""
    return f"{user_id}\x1f{type_.lower()}\x1f{normalise_name(name)}"


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


Memory.model_rebuild()
