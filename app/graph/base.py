"""The graph-store interface: what projection, checks and reads need from the graph.

Two implementations are held to one conformance suite (tests/integration/test_graph_conformance):
``Neo4jGraph`` (app/graph/neo4j.py) and the in-memory ``FakeGraph`` (app/testing.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class EntityRow:
    key: str
    name: str
    type: str


@dataclass(frozen=True)
class RelationRow:
    source: str  # entity key
    target: str  # entity key
    predicate: str


@dataclass(frozen=True)
class MemoryProjection:
    """The state of one memory to project: its current version in Postgres, never a payload."""

    id: str
    user_id: str
    version: int
    deleted: bool
    importance: int = 5
    content_hash: str = ""
    entities: tuple[EntityRow, ...] = ()
    relations: tuple[RelationRow, ...] = ()
    # Re-project even at the graph's own version (repair/rebuild of a tampered graph). Safe:
    # the state is the current one for that version, so it can only correct, never regress.
    force: bool = False

    def as_params(self) -> dict[str, object]:
        # Sorted so concurrent batches lock shared entities in one order (fewer deadlocks).
        return {
            "id": self.id, "user_id": self.user_id, "version": self.version,
            "deleted": self.deleted, "importance": self.importance,
            "content_hash": self.content_hash, "force": self.force,
            "entities": [{"key": e.key, "name": e.name, "type": e.type}
                         for e in sorted(self.entities, key=lambda e: e.key)],
            "relations": [{"source": r.source, "target": r.target, "predicate": r.predicate}
                          for r in sorted(self.relations,
                                          key=lambda r: (r.source, r.target, r.predicate))],
        }


@dataclass(frozen=True)
class ProjectResult:
    applied: list[str] = field(default_factory=list)  # memory ids written at their new version
    fenced: list[str] = field(default_factory=list)  # memory ids the graph already had as new
    orphans_removed: int = 0


@dataclass(frozen=True)
class GraphMemory:
    """A memory as the graph has it."""

    id: str
    user_id: str
    version: int
    deleted: bool
    entity_keys: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GraphCounts:
    memories: int
    tombstones: int
    entities: int
    mentions: int
    relations: int


@dataclass(frozen=True)
class RelatedMemory:
    """A live memory of the same user that shares entities with another one."""

    id: str
    importance: int
    shared: tuple[EntityRow, ...]  # the entities both mention, by key


@dataclass(frozen=True)
class Neighbours:
    """A memory as the graph has it, with the user's live memories sharing entities with it."""

    version: int
    deleted: bool
    related: tuple[RelatedMemory, ...]


@dataclass(frozen=True)
class EntityMentions:
    entity: EntityRow
    mentions: int  # live memories of the user that mention it


@dataclass(frozen=True)
class EntityLink:
    entity: EntityRow
    predicate: str  # the RELATED edge's predicate (co_mentioned for a shared sentence)
    memories: int  # memories that make this link


@dataclass(frozen=True)
class Neighbourhood:
    """A live memory's place in its user's graph, for people to look at.

    ``entities``: what the memory mentions; ``neighbours``: the user's other entities one RELATED
    hop away from those (at most the limit asked for, by key); ``relations``: the distinct RELATED
    edges among all of them that touch a mentioned entity. Each list is sorted.
    """

    memory_id: str
    entities: tuple[EntityRow, ...] = ()
    neighbours: tuple[EntityRow, ...] = ()
    relations: tuple[RelationRow, ...] = ()


class GraphStore(Protocol):
    def ensure_schema(self) -> None:
        """Create constraints and indexes (idempotent)."""

    def project(self, batch: list[MemoryProjection]) -> ProjectResult:
        """Apply a batch atomically, version-fenced: never regress, never resurrect.

        For each row newer than the graph's version: set the version and tombstone flag,
        replace the memory's MENTIONS and relationships, then remove every entity the batch
        left unmentioned. Rows not newer are reported as fenced and change nothing.
        """

    def snapshot(self, ids: list[str]) -> dict[str, GraphMemory]:
        """The graph's state of these memories (absent ids are not in the graph)."""

    def prune_tombstones(self, ids: list[str]) -> int:
        """Remove these memories' tombstones (only nodes marked deleted); returns the count."""

    def counts(self) -> GraphCounts:
        """Node and relationship counts."""

    def memory_page(self, after: str, limit: int, user_id: str | None = None
                    ) -> list[GraphMemory]:
        """Memory nodes with id > ``after`` in id order (entity_keys left empty)."""

    def orphan_entities(self, user_id: str | None, limit: int) -> list[tuple[str, str]]:
        """(key, user_id) of entities nothing mentions."""

    def cross_user_edges(self, user_id: str | None, limit: int) -> list[dict[str, str]]:
        """Edges joining two users' data: memory_id, user_id, other_user, detail."""

    def remove_memories(self, ids: list[str]) -> int:
        """Delete these Memory nodes and their edges, then entities left unmentioned."""

    def remove_orphan_entities(self, keys: list[str]) -> int:
        """Delete these entities if nothing mentions them."""

    def remove_cross_user_edges(self) -> None:
        """Delete every edge that joins two users' data."""

    def clear(self, user_id: str | None) -> None:
        """Delete the whole projection, or one user's."""

    def user_graph(self, user_id: str, limit: int) -> list[tuple[str, int, list[str]]]:
        """(memory id, version, ["type: name", ...]) of one user's live memories, by id."""

    def related(self, user_id: str, ids: list[str], limit: int) -> dict[str, Neighbours]:
        """For each of these memories the graph has for ``user_id``: its version, tombstone
        flag and up to ``limit`` of the user's live memories sharing entities with it, most
        shared first, then most important, then by id. Other users' memories are absent."""

    def entity_mentions(self, user_id: str, query: str | None, type_: str | None,
                        limit: int) -> list[EntityMentions]:
        """The user's entities that live memories mention (name containing ``query``, any
        case; of ``type_``), most mentioned first, then by name and key."""

    def entity_memories(self, user_id: str, key: str, limit: int) -> list[str]:
        """Ids of the user's live memories that mention the entity ``key``, most important
        first, then by id; empty for another user's key."""

    def entity_neighbourhood(self, user_id: str, key: str, limit: int) -> list[EntityLink]:
        """The user's entities RELATED to ``key`` (either direction), with the predicate and
        how many memories make each link, most first."""
    def neighbourhood(self, user_id: str, memory_id: str, limit: int) -> Neighbourhood | None:
        """The memory's entities and their one-hop neighbourhood in the user's own graph;
        None unless the user has this memory, live, in the graph."""

    def ping(self) -> None:
        """Raise GraphUnavailable unless the graph answers."""

    def close(self) -> None:
        """Release connections."""
