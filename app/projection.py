"""The projection rules: what the graph must hold for a memory, as pure functions.

One set of rules serves the projector, the rebuild and the consistency check, so the three can
never disagree about entity keys, the extraction cache or what a deleted memory implies.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from app.domain import Extraction, MemoryState, entity_key
from app.graph.base import EntityRow, GraphMemory, MemoryProjection, RelationRow

# Where the graph stands on a live memory: at its version, an older one, none at all, a
# tombstone (the delete of a memory Postgres has live), or a newer version than Postgres has.
GraphStatus = Literal["current", "behind", "missing", "tombstone", "ahead"]


def graph_status(version: int, node: GraphMemory | None) -> GraphStatus:
    """How the graph's node compares with a live memory at ``version`` in Postgres."""
    if node is None:
        return "missing"
    if node.deleted:
        return "tombstone"
    if node.version == version:
        return "current"
    return "behind" if node.version < version else "ahead"


def cache_is_current(state: MemoryState) -> bool:
    """Whether a memory's cached extraction was made from its current content."""
    return state.entities is not None and state.extracted_hash == state.content_hash


def cached_extraction(state: MemoryState, identity: str | None = None) -> Extraction | None:
    """The current cached extraction of a memory (made by ``identity``, when given)."""
    if not cache_is_current(state) or (identity is not None and state.extractor != identity):
        return None
    return Extraction.model_validate(state.entities)


def extraction_record(state: MemoryState, identity: str,
                      extraction: Extraction) -> dict[str, Any]:
    """The parameters that cache one fresh extraction on its memory (``save_extraction``),
    with its entity keys (what related memories read from Postgres when the graph cannot)."""
    keys = sorted({entity_key(state.user_id, e.type, e.name) for e in extraction.entities})
    return {"id": state.id, "entities": json.dumps(extraction.model_dump(mode="json")),
            "extractor": identity, "content_hash": state.content_hash, "entity_keys": keys}


def expected_keys(state: MemoryState) -> frozenset[str] | None:
    """Entity keys the cached extraction implies, or None when the cache is not current.

    The same keys ``build_projection`` derives, straight from the stored JSON: the check runs
    this once per memory, so it skips building models.
    """
    if not cache_is_current(state) or state.entities is None:
        return None
    return frozenset(entity_key(state.user_id, e["type"], e["name"])
                     for e in state.entities.get("entities", ()))


def build_projection(memory_id: str, user_id: str, version: int, importance: int,
                     content_hash: str, extraction: Extraction) -> MemoryProjection:
    """Entity keys are user + type + normalised name, so users never share an entity.

    Relations keep only pairs of distinct entities the memory mentions.
    """
    entities: dict[str, EntityRow] = {}
    for e in extraction.entities:
        key = entity_key(user_id, e.type, e.name)
        entities.setdefault(key, EntityRow(key=key, name=e.name, type=e.type.lower()))
    relations = {
        RelationRow(entity_key(user_id, r.source.type, r.source.name),
                    entity_key(user_id, r.target.type, r.target.name), r.predicate)
        for r in extraction.relations
    }
    relations = {r for r in relations
                 if r.source in entities and r.target in entities and r.source != r.target}
    return MemoryProjection(id=memory_id, user_id=user_id, version=version, deleted=False,
                            importance=importance, content_hash=content_hash,
                            entities=tuple(entities.values()), relations=tuple(relations))


def projection_of(state: MemoryState, extraction: Extraction | None, *,
                  force: bool = False) -> MemoryProjection:
    """The graph state a memory implies: a deleted memory is a tombstone mentioning nothing."""
    if state.deleted or extraction is None:
        return MemoryProjection(id=str(state.id), user_id=state.user_id,
                                version=state.version, deleted=True, force=force)
    projection = build_projection(str(state.id), state.user_id, state.version,
                                  state.importance, state.content_hash, extraction)
    return dataclasses.replace(projection, force=True) if force else projection
