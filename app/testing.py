"""Fakes shipped beside the real adapters, held to the same conformance suite.

``FakeGraph`` is an in-memory ``GraphStore`` with the exact fencing and orphan rules of
``Neo4jGraph``; ``FailingGraph`` wraps any store to inject failures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from app.errors import GraphUnavailable
from app.graph.projector import (
    GraphCounts,
    GraphMemory,
    GraphStore,
    MemoryProjection,
    ProjectResult,
)


@dataclass
class _Node:
    user_id: str
    version: int = 0
    deleted: bool = False
    mentions: set[str] = field(default_factory=set)
    relations: set[tuple[str, str, str]] = field(default_factory=set)


class FakeGraph:
    """An in-memory graph store for unit tests."""

    def __init__(self) -> None:
        self.memories: dict[str, _Node] = {}
        self.entities: dict[str, dict[str, str]] = {}
        self.available = True
        self._lock = threading.Lock()

    def _check(self) -> None:
        if not self.available:
            raise GraphUnavailable("fake graph is down")

    def ensure_schema(self) -> None:
        self._check()

    def project(self, batch: list[MemoryProjection]) -> ProjectResult:
        self._check()
        with self._lock:
            applied, fenced, old = [], [], set()
            for p in sorted(batch, key=lambda p: p.id):
                node = self.memories.setdefault(p.id, _Node(user_id=p.user_id))
                newer = node.version < p.version or (p.force and node.version == p.version)
                if node.user_id != p.user_id or not newer:
                    fenced.append(p.id)
                    continue
                node.version, node.deleted = p.version, p.deleted
                old |= node.mentions
                node.mentions = set()
                for e in p.entities:
                    self.entities.setdefault(e.key, {"user_id": p.user_id, "name": e.name,
                                                     "type": e.type})
                    node.mentions.add(e.key)
                node.relations = {(r.source, r.target, r.predicate) for r in p.relations
                                  if r.source in node.mentions and r.target in node.mentions}
                applied.append(p.id)
            mentioned = {k for n in self.memories.values() for k in n.mentions}
            orphans = [k for k in old if k not in mentioned and k in self.entities]
            for k in orphans:
                del self.entities[k]
            return ProjectResult(applied=applied, fenced=fenced, orphans_removed=len(orphans))

    def snapshot(self, ids: list[str]) -> dict[str, GraphMemory]:
        self._check()
        return {i: GraphMemory(i, n.user_id, n.version, n.deleted, frozenset(n.mentions))
                for i in ids if (n := self.memories.get(i)) is not None}

    def prune_tombstones(self, ids: list[str]) -> int:
        self._check()
        with self._lock:
            gone = [i for i in ids if i in self.memories and self.memories[i].deleted]
            for i in gone:
                del self.memories[i]
            return len(gone)

    def counts(self) -> GraphCounts:
        self._check()
        live = [n for n in self.memories.values() if not n.deleted]
        return GraphCounts(
            memories=len(live), tombstones=len(self.memories) - len(live),
            entities=len(self.entities),
            mentions=sum(len(n.mentions) for n in self.memories.values()),
            relations=sum(len(n.relations) for n in self.memories.values()),
        )

    def memory_page(self, after: str, limit: int, user_id: str | None = None
                    ) -> list[GraphMemory]:
        self._check()
        ids = sorted(i for i, n in self.memories.items()
                     if i > after and (user_id is None or n.user_id == user_id))[:limit]
        return [GraphMemory(i, self.memories[i].user_id, self.memories[i].version,
                            self.memories[i].deleted) for i in ids]

    def orphan_entities(self, user_id: str | None, limit: int) -> list[tuple[str, str]]:
        self._check()
        mentioned = {k for n in self.memories.values() for k in n.mentions}
        return [(k, e["user_id"]) for k, e in self.entities.items()
                if k not in mentioned and (user_id is None or e["user_id"] == user_id)][:limit]

    def cross_user_edges(self, user_id: str | None, limit: int) -> list[dict[str, str]]:
        self._check()
        found = []
        for mid, n in self.memories.items():
            for k in n.mentions:
                other = self.entities[k]["user_id"]
                if other != n.user_id and (user_id in (None, n.user_id, other)):
                    found.append({"memory_id": mid, "user_id": n.user_id, "other_user": other,
                                  "detail": f"MENTIONS {k}"})
        return found[:limit]

    def remove_memories(self, ids: list[str]) -> int:
        self._check()
        with self._lock:
            old = set()
            for i in ids:
                node = self.memories.pop(i, None)
                if node is not None:
                    old |= node.mentions
            mentioned = {k for n in self.memories.values() for k in n.mentions}
            for k in old - mentioned:
                self.entities.pop(k, None)
        return len(ids)

    def remove_orphan_entities(self, keys: list[str]) -> int:
        self._check()
        with self._lock:
            mentioned = {k for n in self.memories.values() for k in n.mentions}
            gone = [k for k in keys if k in self.entities and k not in mentioned]
            for k in gone:
                del self.entities[k]
            return len(gone)

    def remove_cross_user_edges(self) -> None:
        self._check()
        with self._lock:
            for n in self.memories.values():
                n.mentions = {k for k in n.mentions if self.entities[k]["user_id"] == n.user_id}

    def clear(self, user_id: str | None) -> None:
        self._check()
        with self._lock:
            for i in [i for i, n in self.memories.items() if user_id in (None, n.user_id)]:
                del self.memories[i]
            for k in [k for k, e in self.entities.items() if user_id in (None, e["user_id"])]:
                del self.entities[k]

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        pass


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

    def __getattr__(self, name: str) -> object:
        # Everything but project() goes straight to the wrapped store.
        return getattr(self.inner, name)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()
