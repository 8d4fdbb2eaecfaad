"""The API's bodies as frozen dataclasses, written from its OpenAPI document.

Parsing takes the fields it knows and ignores the rest, so a server that adds a field does not
break an older client; the suite checks these fields against the live ``/openapi.json``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from memory_persistence_client.errors import ProtocolError

ItemT = TypeVar("ItemT")


def _obj(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _list(data: object, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise ProtocolError(f"{what}: expected a JSON array, got {type(data).__name__}")
    return data


@dataclass(frozen=True, kw_only=True)
class Entity:
    """An entity the extractor found in a memory (set once a worker has projected it)."""

    name: str
    type: str

    @classmethod
    def from_json(cls, data: object) -> Entity:
        body = _obj(data, "entity")
        try:
            return cls(name=str(body["name"]), type=str(body["type"]))
        except KeyError as exc:
            raise ProtocolError(f"entity: missing {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Memory:
    """A memory as the API returns it."""

    id: uuid.UUID
    user_id: str
    content: str
    metadata: dict[str, Any]
    importance: int
    version: int
    created_at: datetime
    updated_at: datetime
    entities: tuple[Entity, ...] | None = None
    truncated: bool = False

    @property
    def etag(self) -> str:
        """The ``If-Match`` value for this version."""
        return f'"{self.version}"'

    @classmethod
    def _fields(cls, data: object) -> dict[str, Any]:
        body = _obj(data, "memory")
        try:
            entities = body.get("entities")
            return {
                "id": uuid.UUID(str(body["id"])),
                "user_id": str(body["user_id"]),
                "content": str(body["content"]),
                "metadata": dict(_obj(body["metadata"], "memory.metadata")),
                "importance": int(body["importance"]),
                "version": int(body["version"]),
                "created_at": datetime.fromisoformat(str(body["created_at"])),
                "updated_at": datetime.fromisoformat(str(body["updated_at"])),
                "entities": None if entities is None else tuple(
                    Entity.from_json(e) for e in _list(entities, "memory.entities")),
                "truncated": bool(body.get("truncated", False)),
            }
        except KeyError as exc:
            raise ProtocolError(f"memory: missing {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"memory: {exc}") from None

    @classmethod
    def from_json(cls, data: object) -> Memory:
        return cls(**cls._fields(data))


ProjectionStatus = Literal["pending", "projected", "failed", "dead"]
HistoryEvent = Literal["created", "updated", "deleted"]
_STATUSES: frozenset[str] = frozenset({"pending", "projected", "failed", "dead"})
_EVENTS: frozenset[str] = frozenset({"created", "updated", "deleted"})


def _opt_datetime(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True, kw_only=True)
class GraphProjection:
    """Where a memory's projection into the graph stands: ``pending`` (a change waits for or
    is in delivery), ``failed`` (an attempt failed, a retry is due), ``dead`` (a dead letter
    waits for an admin) or ``projected`` (the graph has the current version).
    ``projected_version`` is the newest version the graph has (None: none yet); ``timed_out``
    is set only by a read with ``wait_for_graph``: True when the wait ran out first."""

    status: ProjectionStatus
    projected_version: int | None
    since: datetime | None
    timed_out: bool | None = None

    @property
    def settled(self) -> bool:
        """Whether waiting longer is pointless: projected, failed or dead."""
        return self.status != "pending"

    @classmethod
    def from_json(cls, data: object) -> GraphProjection:
        body = _obj(data, "graph")
        try:
            status = str(body["status"])
            if status not in _STATUSES:
                raise ValueError(f"unknown status {status!r}")
            timed_out = body.get("timed_out")
            return cls(status=status,  # type: ignore[arg-type]  # checked just above
                       projected_version=_opt_int(body.get("projected_version")),
                       since=_opt_datetime(body.get("since")),
                       timed_out=None if timed_out is None else bool(timed_out))
        except KeyError as exc:
            raise ProtocolError(f"graph: missing {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"graph: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class MemoryWithGraph(Memory):
    """A memory as ``get`` returns it: with where its projection into the graph stands."""

    graph: GraphProjection

    @classmethod
    def from_json(cls, data: object) -> MemoryWithGraph:
        body = _obj(data, "memory")
        if "graph" not in body:
            raise ProtocolError("memory: missing 'graph'")
        return cls(**cls._fields(body), graph=GraphProjection.from_json(body["graph"]))


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    """One version of a memory: what it held, who made it and when. A delete (the last entry)
    holds no content, metadata or importance. ``actor`` is the API key's id (never the key),
    the actor a library caller named, or None."""

    memory_id: uuid.UUID
    user_id: str
    version: int
    event: HistoryEvent
    content: str | None
    metadata: dict[str, Any] | None
    importance: int | None
    actor: str | None
    changed_at: datetime
    truncated: bool = False

    @classmethod
    def from_json(cls, data: object) -> HistoryEntry:
        body = _obj(data, "history entry")
        try:
            event = str(body["event"])
            if event not in _EVENTS:
                raise ValueError(f"unknown event {event!r}")
            content, metadata, actor = body.get("content"), body.get("metadata"), body.get("actor")
            return cls(memory_id=uuid.UUID(str(body["memory_id"])),
                       user_id=str(body["user_id"]), version=int(body["version"]),
                       event=event,  # type: ignore[arg-type]  # checked just above
                       content=None if content is None else str(content),
                       metadata=None if metadata is None else dict(
                           _obj(metadata, "history entry.metadata")),
                       importance=_opt_int(body.get("importance")),
                       actor=None if actor is None else str(actor),
                       changed_at=datetime.fromisoformat(str(body["changed_at"])),
                       truncated=bool(body.get("truncated", False)))
        except KeyError as exc:
            raise ProtocolError(f"history entry: missing {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"history entry: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class HistoryPage:
    """One page of a memory's history, newest version first; pass ``next_before_version`` as
    ``before_version`` for the next (older) page (None: the last)."""

    items: list[HistoryEntry]
    next_before_version: int | None = None

    @classmethod
    def from_json(cls, data: object) -> HistoryPage:
        body = _obj(data, "history page")
        try:
            return cls(items=[HistoryEntry.from_json(e)
                              for e in _list(body.get("items"), "history.items")],
                       next_before_version=_opt_int(body.get("next_before_version")))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"history page: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class StoredMemory(Memory):
    """The answer to a store: the memory, and whether it is an idempotent replay (the
    Idempotency-Key had stored it before, e.g. on an attempt whose answer was lost)."""

    replayed: bool = False

    @classmethod
    def from_response(cls, data: object, replayed: bool) -> StoredMemory:
        return cls(**cls._fields(data), replayed=replayed)


@dataclass(frozen=True, kw_only=True)
class EntityRef:
    """An entity of the user: ``key`` is ``type:name`` (the name normalised)."""

    key: str
    name: str
    type: str

    @classmethod
    def from_json(cls, data: object) -> EntityRef:
        body = _obj(data, "entity")
        try:
            return cls(key=str(body["key"]), name=str(body["name"]), type=str(body["type"]))
        except KeyError as exc:
            raise ProtocolError(f"entity: missing {exc}") from None


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class SearchHit(Memory):
    """A search hit and where it ranked. ``score``: hybrid, the fused score; vector, cosine
    similarity; text, Postgres' text rank; 0 for a graph neighbour (``via == "graph"``)."""

    score: float
    similarity: float | None = None
    vector_rank: int | None = None
    text_rank: int | None = None
    text_score: float | None = None
    via: str = "search"
    neighbour_of: uuid.UUID | None = None
    shared_entities: tuple[EntityRef, ...] = ()

    @classmethod
    def from_json(cls, data: object) -> SearchHit:
        body = _obj(data, "search hit")
        try:
            neighbour = body.get("neighbour_of")
            return cls(**cls._fields(body), score=float(body["score"]),
                       similarity=_opt_float(body.get("similarity")),
                       vector_rank=_opt_int(body.get("vector_rank")),
                       text_rank=_opt_int(body.get("text_rank")),
                       text_score=_opt_float(body.get("text_score")),
                       via=str(body.get("via", "search")),
                       neighbour_of=uuid.UUID(str(neighbour)) if neighbour else None,
                       shared_entities=tuple(EntityRef.from_json(e) for e in _list(
                           body.get("shared_entities", []), "shared_entities")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"search hit: {exc}") from None


ScoredMemory = SearchHit  # the name before hybrid search


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a listing, newest first; pass ``next_cursor`` for the next (None: last)."""

    items: list[Memory]
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, data: object) -> Page:
        body = _obj(data, "page")
        cursor = body.get("next_cursor")
        return cls(items=[Memory.from_json(m) for m in _list(body.get("items"), "page.items")],
                   next_cursor=cursor if isinstance(cursor, str) else None)


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    """The memories of a batch store, in the order given."""

    items: list[Memory]
    replayed: bool = False

    @classmethod
    def from_response(cls, data: object, replayed: bool) -> BatchResult:
        body = _obj(data, "batch")
        return cls(items=[Memory.from_json(m) for m in _list(body.get("items"), "batch.items")],
                   replayed=replayed)


@dataclass(frozen=True, kw_only=True)
class GraphAnswer:
    """How a read of the graph was answered: ``degraded`` when the graph was unavailable or
    behind and the answer comes from the extractions cached in Postgres (``source``)."""

    source: str
    degraded: bool
    reason: str | None = None

    @classmethod
    def from_json(cls, data: object) -> GraphAnswer:
        body = _obj(data, "graph answer")
        try:
            reason = body.get("reason")
            return cls(source=str(body["source"]), degraded=bool(body["degraded"]),
                       reason=None if reason is None else str(reason))
        except KeyError as exc:
            raise ProtocolError(f"graph answer: missing {exc}") from None


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """Search hits, best first; iterable and sized like a list. ``pending_reembed`` counts the
    user's memories whose vectors are not the configured embedder's yet."""

    items: list[SearchHit]
    mode: str = "hybrid"
    embedder: str = ""
    pending_reembed: int = 0
    graph: GraphAnswer | None = None
    """With ``expand="graph"``: how the neighbours were found."""

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SearchHit:
        return self.items[index]

    @classmethod
    def from_json(cls, data: object) -> SearchResult:
        body = _obj(data, "search result")
        graph = body.get("graph")
        return cls(items=[SearchHit.from_json(m)
                          for m in _list(body.get("items"), "search.items")],
                   mode=str(body.get("mode", "hybrid")), embedder=str(body.get("embedder", "")),
                   pending_reembed=int(body.get("pending_reembed", 0)),
                   graph=None if graph is None else GraphAnswer.from_json(graph))


def _answer(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a graph read's answer: ``degraded``, ``source``, ``reason``."""
    answer = GraphAnswer.from_json(body)
    return {"degraded": answer.degraded, "source": answer.source, "reason": answer.reason}


@dataclass(frozen=True, kw_only=True)
class RelatedItem:
    """A memory related to another, and the entities the two share."""

    memory: Memory
    shared_entities: tuple[EntityRef, ...]

    @classmethod
    def from_json(cls, data: object) -> RelatedItem:
        body = _obj(data, "related item")
        return cls(memory=Memory.from_json(body.get("memory")),
                   shared_entities=tuple(EntityRef.from_json(e) for e in _list(
                       body.get("shared_entities"), "related.shared_entities")))


@dataclass(frozen=True, kw_only=True)
class RelatedResult:
    """Memories sharing entities with ``memory_id``, most shared first. ``degraded``: the graph
    was down or behind (``graph_version`` < ``memory_version``, or None), and the answer comes
    from Postgres."""

    memory_id: uuid.UUID
    memory_version: int
    graph_version: int | None
    items: list[RelatedItem]
    degraded: bool
    source: str
    reason: str | None = None

    def __iter__(self) -> Iterator[RelatedItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_json(cls, data: object) -> RelatedResult:
        body = _obj(data, "related result")
        try:
            return cls(memory_id=uuid.UUID(str(body["memory_id"])),
                       memory_version=int(body["memory_version"]),
                       graph_version=_opt_int(body.get("graph_version")),
                       items=[RelatedItem.from_json(i)
                              for i in _list(body.get("items"), "related.items")],
                       **_answer(body))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"related result: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class EntityItem(EntityRef):
    """An entity of the user and how many live memories mention it."""

    mentions: int

    @classmethod
    def from_json(cls, data: object) -> EntityItem:
        body = _obj(data, "entity")
        try:
            return cls(key=str(body["key"]), name=str(body["name"]), type=str(body["type"]),
                       mentions=int(body["mentions"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"entity: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class _GraphList(Generic[ItemT]):
    """A list read from the graph; ``in_transit`` counts the user's changes the graph has not
    applied yet (``degraded`` answers come from Postgres then)."""

    items: list[ItemT]
    degraded: bool
    source: str
    reason: str | None = None
    in_transit: int = 0

    _what: ClassVar[str]

    @staticmethod
    def _item(data: object) -> Any:
        """One item, read by the subclass's model."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[ItemT]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_json(cls, data: object) -> Self:
        body = _obj(data, cls._what)
        try:
            return cls(items=[cls._item(i) for i in _list(body.get("items"), cls._what)],
                       in_transit=int(body.get("in_transit", 0)), **_answer(body))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{cls._what}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class EntitiesResult(_GraphList[EntityItem]):
    """The user's entities, most mentioned first."""

    _what = "entities result"
    _item = staticmethod(EntityItem.from_json)


@dataclass(frozen=True, kw_only=True)
class EntityMemoriesResult(_GraphList[Memory]):
    """The user's memories that mention one entity, most important first."""

    _what = "entity memories"
    _item = staticmethod(Memory.from_json)


@dataclass(frozen=True, kw_only=True)
class Deleted:
    """The answer to a delete: ``version`` is the version the delete created."""

    id: uuid.UUID
    version: int
    deleted: bool = True

    @classmethod
    def from_json(cls, data: object) -> Deleted:
        body = _obj(data, "deleted")
        try:
            return cls(id=uuid.UUID(str(body["id"])), version=int(body["version"]),
                       deleted=bool(body.get("deleted", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"deleted: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class NewMemory:
    """One item of a batch store (its user is the batch's)."""

    content: str
    metadata: dict[str, Any] | None = None
    importance: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"content": self.content}
        if self.metadata is not None:
            body["metadata"] = self.metadata
        if self.importance is not None:
            body["importance"] = self.importance
        return body


# The models the suite compares with the live schema's components, with the fields the
# client adds itself (from headers, not the body).
SCHEMA_COMPONENTS: dict[str, tuple[type[Any], frozenset[str]]] = {
    "Memory": (Memory, frozenset()),
    "SearchHit": (SearchHit, frozenset()),
    "EntityRef": (EntityRef, frozenset()),
    "Entity": (Entity, frozenset()),
    "Page": (Page, frozenset()),
    "BatchResult": (BatchResult, frozenset({"replayed"})),
    "SearchResult": (SearchResult, frozenset()),
    "Deleted": (Deleted, frozenset()),
    "BatchItem": (NewMemory, frozenset()),
    "GraphAnswer": (GraphAnswer, frozenset()),
    "RelatedItem": (RelatedItem, frozenset()),
    "RelatedResult": (RelatedResult, frozenset()),
    "EntityItem": (EntityItem, frozenset()),
    "EntitiesResult": (EntitiesResult, frozenset()),
    "EntityMemoriesResult": (EntityMemoriesResult, frozenset()),
    "GraphProjection": (GraphProjection, frozenset()),
    "MemoryWithGraph": (MemoryWithGraph, frozenset()),
    "HistoryEntry": (HistoryEntry, frozenset()),
    "HistoryPage": (HistoryPage, frozenset()),
}

__all__ = ["BatchResult", "Deleted", "EntitiesResult", "Entity", "EntityItem",
           "EntityMemoriesResult", "EntityRef", "GraphAnswer", "GraphProjection", "HistoryEntry",
           "HistoryEvent", "HistoryPage", "Memory", "MemoryWithGraph", "NewMemory", "Page",
           "ProjectionStatus",
           "RelatedItem", "RelatedResult", "ScoredMemory", "SearchHit", "SearchResult",
           "StoredMemory"]
