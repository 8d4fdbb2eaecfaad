"""Fakes shipped beside the real adapters, held to the same conformance suite.

``FakeGraph`` is an in-memory ``GraphStore`` with the exact fencing and orphan rules of
``Neo4jGraph``; ``FailingGraph`` wraps any store to inject failures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app.errors import GraphUnavailable
from app.graph.base import (
    EntityLink,
    EntityMentions,
    EntityRow,
    GraphCounts,
    GraphMemory,
    GraphStore,
    MemoryProjection,
    Neighbourhood,
    Neighbours,
    ProjectResult,
    RelatedMemory,
    RelationRow,
)


@dataclass
class _Node:
    """A Memory node and its MENTIONS edges (entity keys)."""

    user_id: str
    version: int = 0
    deleted: bool = False
    importance: int = 5
    mentions: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Related:
    """A RELATED edge between two entities, stamped like Neo4j's with its memory and user."""

    source: str
    target: str
    predicate: str
    memory_id: str
    user_id: str


class FakeGraph:
    """An in-memory graph store for unit tests.

    Modelled as Neo4j's graph is: Memory nodes with their MENTIONS, Entity nodes, and RELATED
    edges between entities (a list, as CREATE may make parallel edges). Deleting an entity
    deletes every edge at it, as DETACH DELETE does.
    """

    def __init__(self) -> None:
        self.memories: dict[str, _Node] = {}
        self.entities: dict[str, dict[str, str]] = {}
        self.relations: list[Related] = []
        self.available = True
        self.closed = False
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.closed:
            raise GraphUnavailable("fake graph is closed")
        if not self.available:
            raise GraphUnavailable("fake graph is down")

    def _mentioned(self) -> set[str]:
        return {k for n in self.memories.values() for k in n.mentions}

    def _delete_entities(self, keys: Iterable[str]) -> None:
        """DETACH DELETE: the entities, the MENTIONS of them and the RELATED edges at them."""
        gone = {k for k in keys if self.entities.pop(k, None) is not None}
        if gone:
            for n in self.memories.values():
                n.mentions -= gone
            self.relations = [r for r in self.relations
                              if r.source not in gone and r.target not in gone]

    def _remove_orphans(self, keys: Iterable[str]) -> int:
        """Delete those of these entities nothing mentions; returns how many."""
        mentioned = self._mentioned()
        orphans = sorted({k for k in keys if k in self.entities and k not in mentioned})
        self._delete_entities(orphans)
        return len(orphans)

    def _user(self, key: str) -> str | None:
        entity = self.entities.get(key)
        return entity["user_id"] if entity is not None else None

    def ensure_schema(self) -> None:
        self._check()

    def project(self, batch: list[MemoryProjection]) -> ProjectResult:
        if not batch:
            return ProjectResult()
        self._check()
        with self._lock:
            applied: list[str] = []
            old: set[str] = set()
            for p in sorted(batch, key=lambda p: p.id):
                node = self.memories.setdefault(p.id, _Node(user_id=p.user_id))
                newer = node.version < p.version or (p.force and node.version == p.version)
                if node.user_id != p.user_id or not newer:
                    continue
                node.version, node.deleted, node.importance = p.version, p.deleted, p.importance
                old |= node.mentions
                node.mentions = set()
                self.relations = [r for r in self.relations if r.memory_id != p.id]
                for e in p.entities:
                    self.entities.setdefault(e.key, {"user_id": p.user_id, "name": e.name,
                                                     "type": e.type})
                    node.mentions.add(e.key)
                # Only between entities this memory mentions, and only the user's own.
                self.relations += [
                    Related(r.source, r.target, r.predicate, p.id, p.user_id)
                    for r in sorted(p.relations, key=lambda r: (r.source, r.target, r.predicate))
                    if r.source in node.mentions and r.target in node.mentions
                    and self._user(r.source) == p.user_id and self._user(r.target) == p.user_id
                ]
                applied.append(p.id)
            removed = self._remove_orphans(old)
            done = set(applied)
            fenced = [p.id for p in batch if p.id not in done]
            return ProjectResult(applied=applied, fenced=fenced, orphans_removed=removed)

    def snapshot(self, ids: list[str]) -> dict[str, GraphMemory]:
        self._check()
        with self._lock:
            return {i: GraphMemory(i, n.user_id, n.version, n.deleted, frozenset(n.mentions))
                    for i in ids if (n := self.memories.get(i)) is not None}

    def prune_tombstones(self, ids: list[str]) -> int:
        if not ids:
            return 0
        self._check()
        with self._lock:
            gone = [i for i in dict.fromkeys(ids)
                    if i in self.memories and self.memories[i].deleted]
            for i in gone:
                del self.memories[i]
            return len(gone)

    def counts(self) -> GraphCounts:
        self._check()
        with self._lock:
            live = [n for n in self.memories.values() if not n.deleted]
            return GraphCounts(
                memories=len(live), tombstones=len(self.memories) - len(live),
                entities=len(self.entities),
                mentions=sum(len(n.mentions) for n in self.memories.values()),
                relations=len(self.relations),
            )

    def memory_page(self, after: str, limit: int, user_id: str | None = None
                    ) -> list[GraphMemory]:
        self._check()
        with self._lock:
            ids = sorted(i for i, n in self.memories.items()
                         if i > after and (user_id is None or n.user_id == user_id))[:limit]
            return [GraphMemory(i, self.memories[i].user_id, self.memories[i].version,
                                self.memories[i].deleted) for i in ids]

    def orphan_entities(self, user_id: str | None, limit: int) -> list[tuple[str, str]]:
        self._check()
        with self._lock:
            mentioned = self._mentioned()
            return [(k, e["user_id"]) for k, e in self.entities.items()
                    if k not in mentioned and (user_id is None or e["user_id"] == user_id)
                    ][:limit]

    def cross_user_edges(self, user_id: str | None, limit: int) -> list[dict[str, str]]:
        """Like Neo4j: up to ``limit`` crossing MENTIONS, then up to ``limit`` RELATED."""
        self._check()
        with self._lock:
            mentions = []
            for mid, n in self.memories.items():
                for k in sorted(n.mentions):
                    other = self.entities[k]["user_id"]
                    if other != n.user_id and user_id in (None, n.user_id, other):
                        mentions.append({"memory_id": mid, "user_id": n.user_id,
                                         "other_user": other, "detail": f"MENTIONS {k}"})
            related = []
            for r in self.relations:
                a, b = self.entities[r.source]["user_id"], self.entities[r.target]["user_id"]
                if (a != b or r.user_id != a) and user_id in (None, a, b, r.user_id):
                    related.append({"memory_id": r.memory_id, "user_id": a,
                                    "other_user": b if b != a else r.user_id,
                                    "detail": f"RELATED {r.source}->{r.target}"})
            return mentions[:limit] + related[:limit]

    def remove_memories(self, ids: list[str]) -> int:
        if not ids:
            return 0
        self._check()
        with self._lock:
            old: set[str] = set()
            for i in ids:
                node = self.memories.pop(i, None)
                if node is not None:
                    old |= node.mentions
                    self.relations = [r for r in self.relations if r.memory_id != i]
            self._remove_orphans(old)
        return len(ids)

    def remove_orphan_entities(self, keys: list[str]) -> int:
        if not keys:
            return 0
        self._check()
        with self._lock:
            return self._remove_orphans(keys)

    def remove_cross_user_edges(self) -> None:
        self._check()
        with self._lock:
            for n in self.memories.values():
                n.mentions = {k for k in n.mentions if self.entities[k]["user_id"] == n.user_id}
            self.relations = [
                r for r in self.relations
                if self.entities[r.source]["user_id"] == self.entities[r.target]["user_id"]
                == r.user_id]

    def clear(self, user_id: str | None) -> None:
        self._check()
        with self._lock:
            for i in [i for i, n in self.memories.items() if user_id in (None, n.user_id)]:
                del self.memories[i]
            self._delete_entities([k for k, e in self.entities.items()
                                   if user_id in (None, e["user_id"])])

    def user_graph(self, user_id: str, limit: int) -> list[tuple[str, int, list[str]]]:
        self._check()
        with self._lock:
            out = []
            for mid in sorted(i for i, n in self.memories.items()
                              if n.user_id == user_id and not n.deleted)[:limit]:
                entities = sorted((self.entities[k]["type"], self.entities[k]["name"])
                                  for k in self.memories[mid].mentions)
                out.append((mid, self.memories[mid].version,
                            [f"{t}: {n}" for t, n in entities]))
            return out

    def related(self, user_id: str, ids: list[str], limit: int) -> dict[str, Neighbours]:
        if not ids:
            return {}
        self._check()
        with self._lock:
            out: dict[str, Neighbours] = {}
            for mid in ids:
                node = self.memories.get(mid)
                if node is None or node.user_id != user_id:
                    continue
                mine = {k for k in node.mentions if self._user(k) == user_id}
                found = []
                for oid, other in self.memories.items():
                    if oid == mid or other.user_id != user_id or other.deleted:
                        continue
                    shared = sorted(mine & other.mentions)
                    if shared:
                        found.append(RelatedMemory(oid, other.importance, tuple(
                            EntityRow(k, self.entities[k]["name"], self.entities[k]["type"])
                            for k in shared)))
                found.sort(key=lambda r: (-len(r.shared), -r.importance, r.id))
                out[mid] = Neighbours(node.version, node.deleted, tuple(found[:limit]))
            return out

    def entity_mentions(self, user_id: str, query: str | None, type_: str | None,
                        limit: int) -> list[EntityMentions]:
        self._check()
        with self._lock:
            counts: dict[str, int] = {}
            for node in self.memories.values():
                if node.user_id != user_id or node.deleted:
                    continue
                for k in node.mentions:
                    counts[k] = counts.get(k, 0) + 1
            found = []
            for key, n in counts.items():
                e = self.entities.get(key)
                if e is None or e["user_id"] != user_id:
                    continue
                if type_ is not None and e["type"] != type_:
                    continue
                if query is not None and query.lower() not in e["name"].lower():
                    continue
                found.append(EntityMentions(EntityRow(key, e["name"], e["type"]), n))
            found.sort(key=lambda m: (-m.mentions, m.entity.name, m.entity.key))
            return found[:limit]

    def entity_memories(self, user_id: str, key: str, limit: int) -> list[str]:
        self._check()
        with self._lock:
            if self._user(key) != user_id:
                return []
            found = [(mid, n.importance) for mid, n in self.memories.items()
                     if n.user_id == user_id and not n.deleted and key in n.mentions]
            found.sort(key=lambda f: (-f[1], f[0]))
            return [mid for mid, _ in found[:limit]]

    def entity_neighbourhood(self, user_id: str, key: str, limit: int) -> list[EntityLink]:
        self._check()
        with self._lock:
            if self._user(key) != user_id:
                return []
            links: dict[tuple[str, str], set[str]] = {}
            for r in self.relations:
                if r.user_id != user_id or key not in (r.source, r.target):
                    continue
                other = r.target if r.source == key else r.source
                if self._user(other) == user_id:
                    links.setdefault((other, r.predicate), set()).add(r.memory_id)
            found = [EntityLink(EntityRow(o, self.entities[o]["name"], self.entities[o]["type"]),
                                predicate, len(memories))
                     for (o, predicate), memories in links.items()]
            found.sort(key=lambda link: (-link.memories, link.entity.key, link.predicate))
            return found[:limit]
    def neighbourhood(self, user_id: str, memory_id: str, limit: int) -> Neighbourhood | None:
        self._check()
        with self._lock:
            node = self.memories.get(memory_id)
            if node is None or node.deleted or node.user_id != user_id:
                return None
            mentioned = {k for k in node.mentions if self._user(k) == user_id}
            touching = [r for r in self.relations if r.user_id == user_id
                        and (r.source in mentioned or r.target in mentioned)]
            around = sorted({k for r in touching for k in (r.source, r.target)
                             if k not in mentioned and self._user(k) == user_id})[:limit]
            shown = mentioned | set(around)
            edges = sorted({(r.source, r.target, r.predicate) for r in touching
                            if r.source in shown and r.target in shown})

            def row(key: str) -> EntityRow:
                return EntityRow(key, self.entities[key]["name"], self.entities[key]["type"])

            return Neighbourhood(memory_id, tuple(row(k) for k in sorted(mentioned)),
                                 tuple(row(k) for k in around),
                                 tuple(RelationRow(*e) for e in edges))

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        """Like a closed driver: every later call raises GraphUnavailable."""
        self.closed = True


class FailingGraph:
    """Wraps a store; ``fail`` decides per batch whether to raise instead of projecting."""

    def __init__(self, inner: GraphStore,
                 fail: Callable[[list[MemoryProjection]], Exception | None]) -> None:
        self.inner = inner
        self.fail = fail

    def ensure_schema(self) -> None:
        self.inner.ensure_schema()

    def project(self, batch: list[MemoryProjection]) -> ProjectResult:
        error = self.fail(batch)
        if error is not None:
            raise error
        return self.inner.project(batch)

    def snapshot(self, ids: list[str]) -> dict[str, GraphMemory]:
        return self.inner.snapshot(ids)

    def prune_tombstones(self, ids: list[str]) -> int:
        return self.inner.prune_tombstones(ids)

    def counts(self) -> GraphCounts:
        return self.inner.counts()

    def memory_page(self, after: str, limit: int, user_id: str | None = None
                    ) -> list[GraphMemory]:
        return self.inner.memory_page(after, limit, user_id)

    def orphan_entities(self, user_id: str | None, limit: int) -> list[tuple[str, str]]:
        return self.inner.orphan_entities(user_id, limit)

    def cross_user_edges(self, user_id: str | None, limit: int) -> list[dict[str, str]]:
        return self.inner.cross_user_edges(user_id, limit)

    def remove_memories(self, ids: list[str]) -> int:
        return self.inner.remove_memories(ids)

    def remove_orphan_entities(self, keys: list[str]) -> int:
        return self.inner.remove_orphan_entities(keys)

    def remove_cross_user_edges(self) -> None:
        self.inner.remove_cross_user_edges()

    def clear(self, user_id: str | None) -> None:
        self.inner.clear(user_id)

    def related(self, user_id: str, ids: list[str], limit: int) -> dict[str, Neighbours]:
        return self.inner.related(user_id, ids, limit)

    def entity_mentions(self, user_id: str, query: str | None, type_: str | None,
                        limit: int) -> list[EntityMentions]:
        return self.inner.entity_mentions(user_id, query, type_, limit)

    def entity_memories(self, user_id: str, key: str, limit: int) -> list[str]:
        return self.inner.entity_memories(user_id, key, limit)

    def entity_neighbourhood(self, user_id: str, key: str, limit: int) -> list[EntityLink]:
        return self.inner.entity_neighbourhood(user_id, key, limit)

    def user_graph(self, user_id: str, limit: int) -> list[tuple[str, int, list[str]]]:
        return self.inner.user_graph(user_id, limit)

    def neighbourhood(self, user_id: str, memory_id: str, limit: int) -> Neighbourhood | None:
        return self.inner.neighbourhood(user_id, memory_id, limit)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()
