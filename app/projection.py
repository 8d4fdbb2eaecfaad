"""One projection step: outbox rows in, graph written, rows finished or rescheduled.

Guarantees (DESIGN invariants 2, 3, 5):
- The worker reads each memory's *current* state from Postgres; the event only names the memory.
  So duplicate, late and reordered deliveries all converge on the latest state.
- A row is marked done only after the graph has (at least) the version it names.
- Every failure is written back to the row (attempts, next attempt time, error history); the
  last one turns it dead and writes a dead letter. Nothing is only logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, RowMapping

from app.db.connector import Database
from app.db.sql import q
from app.domain import Extraction, entity_key
from app.errors import ExtractionError, GraphError, MemoryPersistenceError
from app.extraction import Extractor
from app.graph.projector import EntityRow, GraphStore, MemoryProjection, RelationRow
from app.retry import backoff_delay
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one call to ``Projector.process`` did, for logs, metrics and tests."""

    done: int = 0
    fenced: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    extracted: int = 0
    cache_hits: int = 0
    errors: list[str] = field(default_factory=list)


def extraction_to_json(extraction: Extraction) -> dict[str, Any]:
    return extraction.model_dump(mode="json")


def cache_is_current(m: RowMapping) -> bool:
    """Whether a memory row's cached extraction was made from its current content."""
    return m["entities"] is not None and m["extracted_hash"] == m["content_hash"]


def cached_extraction(m: RowMapping, identity: str | None = None) -> Extraction | None:
    """The current cached extraction of a memory row (made by ``identity``, when given)."""
    if not cache_is_current(m) or (identity is not None and m["extractor"] != identity):
        return None
    return Extraction.model_validate(m["entities"])


def extraction_params(memory_id: object, content_hash: str, identity: str,
                      extraction: Extraction) -> dict[str, Any]:
    """The parameters of ``save_extraction`` for one fresh result."""
    return {"id": memory_id, "entities": json.dumps(extraction_to_json(extraction)),
            "extractor": identity, "content_hash": content_hash}


def projection_from_state(row: Row[Any], extraction: Extraction | None) -> MemoryProjection:
    """The graph state a memory row implies (deleted memories mention nothing)."""
    m = row._mapping
    if m["deleted_at"] is not None or extraction is None:
        return MemoryProjection(id=str(m["memory_id"]), user_id=m["memory_user_id"],
                                version=int(m["version"]), deleted=True)
    return build_projection(str(m["memory_id"]), m["memory_user_id"], int(m["version"]),
                            int(m["importance"]), m["content_hash"], extraction)


def build_projection(memory_id: str, user_id: str, version: int, importance: int,
                     content_hash: str, extraction: Extraction) -> MemoryProjection:
    """Entity keys are user + type + normalised name, so users never share an entity."""
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


class Projector:
    """Projects batches of outbox rows into the graph."""

    def __init__(self, settings: Settings, db: Database, graph: GraphStore,
                 extractor: Extractor, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.db = db
        self.graph = graph
        self.extractor = extractor
        self.rng = rng or random.Random()

    def _extraction(self, row: Row[Any], outcome: Outcome,
                    to_save: list[dict[str, Any]]) -> Extraction:
        """The cached result when content and extractor are unchanged, else a fresh one.

        A fresh result is queued in ``to_save``; the batch writes them in one transaction.
        """
        m = row._mapping
        cached = cached_extraction(m, self.extractor.identity)
        if cached is not None:
            outcome.cache_hits += 1
            return cached
        extraction = self.extractor.extract(m["content"])
        outcome.extracted += 1
        to_save.append(extraction_params(m["memory_id"], m["content_hash"],
                                         self.extractor.identity, extraction))
        return extraction

    def process(self, outbox_ids: Sequence[int]) -> Outcome:
        """Project the memories these outbox rows name; finish or reschedule every row."""
        outcome = Outcome()
        rows = self.db.all("outbox_rows_for_work", {"ids": list(outbox_ids)})
        outcome.skipped = len(set(outbox_ids)) - len(rows)  # already done or dead
        by_memory: dict[str, list[Row[Any]]] = defaultdict(list)
        for row in rows:
            by_memory[str(row.memory_id)].append(row)

        batch: dict[str, MemoryProjection] = {}
        to_save: list[dict[str, Any]] = []
        for memory_id, memory_rows in by_memory.items():
            state = memory_rows[0]
            try:
                extraction = None if state.deleted_at is not None else self._extraction(
                    state, outcome, to_save)
            except ExtractionError as exc:
                self._fail(memory_rows, exc, outcome)
                continue
            except Exception as exc:  # a crashing extractor must not stop the batch
                log.exception("extractor crashed", extra={"action": "projection.extractor_crash",
                                                          "memory_id": memory_id})
                self._fail(memory_rows, ExtractionError(f"extractor crashed: {exc!r}"), outcome)
                continue
            projection = projection_from_state(state, extraction)
            if any(r.event_type == "resync" for r in memory_rows):
                projection = dataclasses.replace(projection, force=True)
            batch[memory_id] = projection

        if to_save:  # one round trip for the batch's new extractions, before the graph write
            with self.db.transaction() as conn:
                conn.execute(q("save_extraction"), to_save)
        if batch:
            self._project(batch, by_memory, outcome)
        return outcome

    def _project(self, batch: dict[str, MemoryProjection],
                 by_memory: dict[str, list[Row[Any]]], outcome: Outcome) -> None:
        try:
            result = self.graph.project(list(batch.values()))
        except GraphError as exc:
            if exc.retryable or len(batch) == 1:
                self._fail([r for mid in batch for r in by_memory[mid]], exc, outcome)
                return
            # A permanent error in a batch: project one by one so one poison memory cannot
            # hold back the others.
            for mid, projection in batch.items():
                self._project({mid: projection}, by_memory, outcome)
            return
        finished = result.applied + result.fenced
        if finished:
            with self.db.transaction() as conn:
                conn.execute(q("mark_done"), [{"memory_id": mid, "version": batch[mid].version}
                                              for mid in finished])
        count = sum(len(by_memory[mid]) for mid in finished)
        outcome.done += count
        outcome.fenced += len(result.fenced)
        log.info("projected", extra={"action": "projection.done", "memories": len(finished),
                                     "rows": count, "orphans_removed": result.orphans_removed})

    def _fail(self, rows: list[Row[Any]], exc: MemoryPersistenceError, outcome: Outcome) -> None:
        """Count an attempt on each row; schedule its retry or make it a dead letter.

        A permanent extraction error goes dead at once: the extractor is deterministic for its
        identity, so retrying cannot help, and the dead letter can be replayed once its cause
        is fixed. Graph errors always get the full retry schedule: one that looks permanent
        may still be a race with a concurrent batch.
        """
        error = f"{type(exc).__name__}: {exc}"[:4000]
        permanent = isinstance(exc, ExtractionError) and not exc.retryable
        outcome.errors.append(error)
        dead_ids = []
        with self.db.transaction() as conn:
            for row in rows:
                delay = backoff_delay(row.attempts + 1, self.settings.retry_base_seconds,
                                      self.settings.retry_cap_seconds, self.rng)
                updated = conn.execute(q("record_failure"), {
                    "id": row.outbox_id, "error": error, "delay_seconds": delay,
                    "max_attempts": (row.attempts + 1 if permanent
                                     else self.settings.retry_max_attempts),
                }).first()
                if updated is None:
                    continue
                outcome.failed += 1
                if updated.status == "dead":
                    dead_ids.append(row.outbox_id)
            if dead_ids:
                conn.execute(q("insert_dead_letter"), {"ids": dead_ids})
        outcome.dead += len(dead_ids)
        for row in rows:
            log.warning("projection failed", extra={
                "action": "projection.failed", "outbox_id": row.outbox_id,
                "memory_id": str(row.memory_id), "user_id": row.user_id,
                "attempt": row.attempts + 1, "dead": row.outbox_id in dead_ids,
                "error": error})
