"""Retrieval: finding what a user means, and what their memories have in common.

- ``search`` fuses two rankings of one user's live memories with reciprocal rank fusion: the
  nearest vectors (HNSW, the configured embedder's vectors only) and Postgres full-text search
  (``websearch_to_tsquery``). ``mode`` picks one list or both; every hit says where it ranked.
  ``expand="graph"`` adds the hits' graph neighbours: memories sharing entities with them.
- ``related``, ``entities``, ``entity_memories`` read the Neo4j graph. When the graph is
  unavailable, or behind Postgres for this user, they answer from the extractions cached in
  Postgres instead and say so (``degraded``) with the versions they saw. Never another user's
  data: every read is scoped by user, in Cypher and in SQL.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from app.db.connector import Database, Row
from app.domain import MAX_TOP_K, Memory, entity_key
from app.embeddings import Embedder, to_pgvector
from app.errors import GraphError, NotFound, ValidationError
from app.graph.base import GraphStore, Neighbours
from app.settings import Settings
from app.store import to_memory
from app.validation import check_limit, check_metadata, check_text, check_user_id

log = logging.getLogger(__name__)
T = TypeVar("T")

Mode = Literal["vector", "text", "hybrid"]
MODES: tuple[Mode, ...] = ("vector", "text", "hybrid")
Expand = Literal["graph"]
Source = Literal["graph", "postgres"]
NEIGHBOURS_PER_HIT = 3  # graph neighbours expand="graph" adds per hit, at most
MAX_EXTRACTIONS = 20_000  # a user's cached extractions read to count entities (degraded)
_TYPE = re.compile(r"[a-z_]{1,40}")


@dataclass(frozen=True)
class EntityRef:
    """An entity of one user: ``key`` is ``type:normalised name`` (the user is implied)."""

    key: str
    name: str
    type: str


@dataclass(frozen=True)
class Hit:
    """One search result and where it ranked."""

    memory: Memory
    score: float  # hybrid: the fused score; vector: cosine similarity; text: text rank
    similarity: float | None = None
    vector_rank: int | None = None
    text_rank: int | None = None
    text_score: float | None = None
    via: Literal["search", "graph"] = "search"
    neighbour_of: uuid.UUID | None = None
    shared: tuple[EntityRef, ...] = ()


@dataclass(frozen=True)
class Answer:
    """How a graph read was answered."""

    source: Source
    degraded: bool
    reason: str | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    mode: Mode
    embedder: str
    pending_reembed: int  # this user's memories not yet embedded by the configured embedder
    graph: Answer | None = None  # with expand="graph"


@dataclass(frozen=True)
class Related:
    memory: Memory
    shared: tuple[EntityRef, ...]


@dataclass(frozen=True)
class RelatedResult:
    memory_id: uuid.UUID
    memory_version: int
    graph_version: int | None  # None: the graph does not have the memory (yet)
    items: list[Related]
    answer: Answer


@dataclass(frozen=True)
class EntityInfo:
    entity: EntityRef
    mentions: int


@dataclass(frozen=True)
class EntitiesResult:
    items: list[EntityInfo]
    answer: Answer
    in_transit: int  # this user's changes the graph has not applied yet


@dataclass(frozen=True)
class EntityMemoriesResult:
    items: list[Memory]
    answer: Answer
    in_transit: int


def public_key(full_key: str) -> str:
    """``user\\x1ftype\\x1fname`` as the API shows it: ``type:name``."""
    _, type_, name = full_key.split("\x1f", 2)
    return f"{type_}:{name}"


def parse_key(user_id: str, key: object) -> str:
    """The full entity key of ``type:name`` for this user (the name normalised as stored)."""
    text = check_text(key, "key", max_chars=300)
    type_, sep, name = text.partition(":")
    if not sep or not _TYPE.fullmatch(type_) or not name.strip():
        raise ValidationError("key must be type:name, like person:john smith", "key")
    return entity_key(user_id, type_, name)


def _entity_refs(user_id: str, entities: object) -> dict[str, EntityRef]:
    """The entities of a cached extraction by full key (malformed entries are skipped)."""
    refs: dict[str, EntityRef] = {}
    if not isinstance(entities, dict):
        return refs
    for e in entities.get("entities", ()):
        if isinstance(e, dict) and isinstance(e.get("name"), str) \
                and isinstance(e.get("type"), str):
            full = entity_key(user_id, e["type"], e["name"])
            refs.setdefault(full, EntityRef(public_key(full), e["name"], e["type"].lower()))
    return refs


class Retrieval:
    """Search, related memories and entities of one user at a time."""

    def __init__(self, settings: Settings, db: Database, embedder: Embedder,
                 graph: GraphStore) -> None:
        self.settings = settings
        self.db = db
        self.embedder = embedder
        self.graph = graph
        self._ts_config: str | None = None

    def _memory(self, row: Row) -> Memory:
        return to_memory(row, self.settings)

    @property
    def ts_config(self) -> str:
        if self._ts_config is None:
            known = self.db.one("text_search_config", {"name": self.settings.search_language})
            self._ts_config = self.settings.search_language if known is not None else "simple"
        return self._ts_config

    def _graph(self, call: Callable[[], T]) -> tuple[T | None, str | None]:
        """The graph's answer, or None and why it could not give one."""
        try:
            return call(), None
        except GraphError as exc:
            log.warning("graph read failed; answering from Postgres", extra={
                "action": "retrieval.degraded", "error": str(exc)[:200]})
            return None, "the graph is unavailable"

    # -- search ---------------------------------------------------------------------------

    def search(self, user_id: str, query: str, *, mode: Mode = "hybrid", top_k: int = 10,
               metadata: dict[str, Any] | None = None, min_importance: int = 1,
               expand: Expand | None = None) -> SearchResult:
        """One user's live memories that best match ``query``, best first."""
        user_id = check_user_id(user_id)
        query = check_text(query, "query", max_chars=self.settings.max_content_chars)
        if mode not in MODES:
            raise ValidationError("mode must be vector, text or hybrid", "mode")
        top_k = check_limit(top_k, "top_k", MAX_TOP_K)
        if isinstance(min_importance, bool) or not isinstance(min_importance, int) \
                or not 1 <= min_importance <= 10:
            raise ValidationError("min_importance must be an integer from 1 to 10",
                                  "min_importance")
        filters = check_metadata(metadata or {}, self.settings.metadata_limits, "metadata")
        if expand not in (None, "graph"):
            raise ValidationError("expand must be graph", "expand")
        use_vector = mode in ("vector", "hybrid")
        # Each list is cut well past top_k so fusion can lift a hit ranked lower in one list.
        pool = top_k if mode != "hybrid" else min(max(top_k * 4, 40), 400)
        vector = (self.embedder.embed([query])[0] if use_vector
                  else [1.0] + [0.0] * (self.embedder.dim - 1))
        with self.db.transaction() as tx:
            # ef_search past the pool keeps recall of the HNSW scan high (bench/results).
            tx.one("search_settings", {"ef_search": min(1000, max(100, pool * 2))})
            rows = tx.all("search_candidates", {
                "user_id": user_id, "embedding": to_pgvector(vector), "query": query,
                "embedder": self.embedder.identity, "ts_config": self.ts_config,
                "use_vector": use_vector, "use_text": mode in ("text", "hybrid"),
                "metadata": _json(filters), "min_importance": min_importance, "pool": pool})
            pending = int(tx.scalar("pending_reembed", {"user_id": user_id,
                                                        "embedder": self.embedder.identity}))
        k = self.settings.search_rrf_k
        hits = []
        for r in rows:
            vrank, trank = r["vector_rank"], r["text_rank"]
            if mode == "vector":
                score = float(r["similarity"])
            elif mode == "text":
                score = float(r["text_score"])
            else:
                score = ((1.0 / (k + vrank) if vrank else 0.0)
                         + (1.0 / (k + trank) if trank else 0.0))
            hits.append(Hit(self._memory(r), score,
                            float(r["similarity"]) if r["similarity"] is not None else None,
                            int(vrank) if vrank else None, int(trank) if trank else None,
                            float(r["text_score"]) if r["text_score"] is not None else None))
        hits.sort(key=lambda h: (-h.score, str(h.memory.id)))
        hits = hits[:top_k]
        answer = None
        if expand == "graph" and hits:
            neighbours, answer = self._neighbours(user_id, hits)
            hits += neighbours
        return SearchResult(hits, mode, self.embedder.identity, pending, answer)

    def _neighbours(self, user_id: str, hits: list[Hit]) -> tuple[list[Hit], Answer]:
        """Graph neighbours of the hits (memories sharing entities), not already hits."""
        seen = {h.memory.id for h in hits}
        ids = [str(h.memory.id) for h in hits]
        found, reason = self._graph(lambda: self.graph.related(user_id, ids,
                                                               NEIGHBOURS_PER_HIT + len(ids)))
        versions = {h.memory.id: h.memory.version for h in hits}
        if found is not None:
            behind = [i for i in ids if i not in found
                      or found[i].version < versions[uuid.UUID(i)]]
            if behind:
                found, reason = None, f"the graph is behind on {len(behind)} of the hits"
        out: list[Hit] = []
        if found is not None:
            wanted: list[tuple[Hit, str, tuple[EntityRef, ...]]] = []
            for hit in hits:
                added = 0
                for rel in found[str(hit.memory.id)].related:
                    if uuid.UUID(rel.id) in seen or added == NEIGHBOURS_PER_HIT:
                        continue
                    seen.add(uuid.UUID(rel.id))
                    added += 1
                    wanted.append((hit, rel.id, tuple(
                        EntityRef(public_key(e.key), e.name, e.type) for e in rel.shared)))
            rows = {str(r["id"]): r for r in self.db.all("get_memories", {
                "ids": [w[1] for w in wanted], "user_id": user_id})}
            out = [Hit(self._memory(rows[mid]), 0.0, via="graph", neighbour_of=hit.memory.id,
                       shared=shared) for hit, mid, shared in wanted if mid in rows]
            return out, Answer("graph", False)
        for hit in hits:
            row = self.db.one("memory_for_retrieval", {"id": hit.memory.id,
                                                       "user_id": user_id})
            if row is None or not row["entity_keys"]:
                continue
            refs = _entity_refs(user_id, row["entities"])
            for r in self.db.all("related_by_entities", {
                    "user_id": user_id, "keys": row["entity_keys"],
                    "exclude": [str(i) for i in seen], "limit": NEIGHBOURS_PER_HIT}):
                seen.add(r["id"])
                out.append(Hit(self._memory(r), 0.0, via="graph", neighbour_of=hit.memory.id,
                               shared=_shared(r["shared_keys"], refs)))
        return out, Answer("postgres", True, reason)

    # -- related memories -------------------------------------------------------------------

    def related(self, user_id: str, memory_id: uuid.UUID | str, *,
                limit: int = 10) -> RelatedResult:
        """The user's live memories sharing entities with this one, most shared first, then
        most important, then most recent; each with the entities it shares."""
        user_id = check_user_id(user_id)
        limit = check_limit(limit)
        mid = _uuid(memory_id)
        source = self.db.one("memory_for_retrieval", {"id": mid, "user_id": user_id})
        if source is None:
            raise NotFound("memory not found")
        version = int(source["version"])
        found, reason = self._graph(lambda: self.graph.related(user_id, [str(mid)], limit * 3))
        node: Neighbours | None = found.get(str(mid)) if found is not None else None
        graph_version = node.version if node is not None else None
        if found is not None and (node is None or node.version < version):
            reason = ("the graph does not have this memory yet" if node is None else
                      f"the graph has version {node.version} of this memory, Postgres {version}")
        if node is not None and reason is None:
            rows = {str(r["id"]): r for r in self.db.all("get_memories", {
                "ids": [r.id for r in node.related], "user_id": user_id})}
            shared = {r.id: tuple(EntityRef(public_key(e.key), e.name, e.type)
                                  for e in r.shared) for r in node.related}
            items = [Related(self._memory(rows[i]), shared[i]) for i in shared if i in rows]
            items.sort(key=lambda x: (-len(x.shared), -x.memory.importance,
                                      -x.memory.created_at.timestamp(), str(x.memory.id)))
            return RelatedResult(mid, version, graph_version, items[:limit],
                                 Answer("graph", False))
        refs = _entity_refs(user_id, source["entities"])
        found_rows = self.db.all("related_by_entities", {
            "user_id": user_id, "keys": source["entity_keys"] or [], "exclude": [str(mid)],
            "limit": limit}) if source["entity_keys"] else []
        return RelatedResult(mid, version, graph_version,
                             [Related(self._memory(r), _shared(r["shared_keys"], refs))
                              for r in found_rows], Answer("postgres", True, reason))

    # -- entities ---------------------------------------------------------------------------

    def entities(self, user_id: str, *, query: str | None = None, type_: str | None = None,
                 limit: int = 50) -> EntitiesResult:
        """The user's entities with how many live memories mention each, most mentioned
        first; ``query`` matches part of the name (any case), ``type_`` the type."""
        user_id = check_user_id(user_id)
        limit = check_limit(limit)
        if query is not None:
            query = check_text(query, "q", max_chars=200)
        if type_ is not None and not _TYPE.fullmatch(str(type_)):
            raise ValidationError("type must be lower-case letters, like person", "type")
        in_transit = int(self.db.scalar("user_in_transit", {"user_id": user_id}))
        reason: str | None = f"{in_transit} changes are not in the graph yet" if in_transit \
            else None
        if reason is None:
            found, reason = self._graph(lambda: self.graph.entity_mentions(
                user_id, query, type_, limit))
            if found is not None:
                return EntitiesResult([EntityInfo(EntityRef(public_key(m.entity.key),
                                                            m.entity.name, m.entity.type),
                                                  m.mentions) for m in found],
                                      Answer("graph", False), in_transit)
        counts: dict[str, tuple[EntityRef, int]] = {}
        for row in self.db.all("user_extractions", {"user_id": user_id,
                                                    "limit": MAX_EXTRACTIONS}):
            for full, ref in _entity_refs(user_id, row["entities"]).items():
                previous = counts.get(full)
                counts[full] = (previous[0] if previous else ref,
                                (previous[1] if previous else 0) + 1)
        items = [EntityInfo(ref, n) for ref, n in counts.values()
                 if (type_ is None or ref.type == type_)
                 and (query is None or query.lower() in ref.name.lower())]
        items.sort(key=lambda i: (-i.mentions, i.entity.name, i.entity.key))
        return EntitiesResult(items[:limit], Answer("postgres", True, reason), in_transit)

    def entity_memories(self, user_id: str, key: str, *,
                        limit: int = 50) -> EntityMemoriesResult:
        """The user's live memories mentioning the entity ``key`` (``type:name``), most
        important first."""
        user_id = check_user_id(user_id)
        limit = check_limit(limit)
        full = parse_key(user_id, key)
        in_transit = int(self.db.scalar("user_in_transit", {"user_id": user_id}))
        reason: str | None = f"{in_transit} changes are not in the graph yet" if in_transit \
            else None
        if reason is None:
            ids, reason = self._graph(lambda: self.graph.entity_memories(user_id, full, limit))
            if ids is not None:
                rows = {str(r["id"]): r for r in self.db.all("get_memories", {
                    "ids": ids, "user_id": user_id})}
                return EntityMemoriesResult([self._memory(rows[i]) for i in ids if i in rows],
                                            Answer("graph", False), in_transit)
        found_rows = self.db.all("memories_with_entity", {"user_id": user_id, "key": full,
                                                          "limit": limit})
        return EntityMemoriesResult([self._memory(r) for r in found_rows],
                                    Answer("postgres", True, reason), in_transit)


def _shared(keys: list[str] | None, refs: dict[str, EntityRef]) -> tuple[EntityRef, ...]:
    out = []
    for full in sorted(keys or ()):
        ref = refs.get(full)
        if ref is None:
            _, type_, name = full.split("\x1f", 2)
            ref = EntityRef(public_key(full), name, type_)
        out.append(ref)
    return tuple(out)


def _uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValidationError("id must be a UUID", "id") from None


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value)
