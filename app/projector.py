"""One projection step: outbox rows in, graph written, rows finished or rescheduled.

Guarantees (DESIGN invariants 2, 3, 5):
- The worker reads each memory's *current* state from Postgres; the event only names the memory.
  So duplicate, late and reordered deliveries all converge on the latest state.
- A row is marked done only after the graph has (at least) the version it names.
- Every failure is written back to the row through the outbox (attempts, next attempt time,
  error history); the last one turns it dead and leaves a dead letter. Nothing is only logged.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.db.connector import Database
from app.domain import Extraction, MemoryState
from app.errors import ExtractionError, GraphError, MemoryPersistenceError
from app.extraction import Extractor
from app.graph.base import GraphStore, MemoryProjection
from app.outbox import Outbox, WorkItem
from app.projection import cached_extraction, extraction_record, projection_of

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


class Projector:
    """Projects batches of outbox rows into the graph."""

    def __init__(self, db: Database, outbox: Outbox, graph: GraphStore,
                 extractor: Extractor) -> None:
        self.db = db
        self.outbox = outbox
        self.graph = graph
        self.extractor = extractor

    def _extraction(self, state: MemoryState, outcome: Outcome,
                    to_save: list[dict[str, Any]]) -> Extraction:
        """The cached result when content and extractor are unchanged, else a fresh one.

        A fresh result is queued in ``to_save``; the batch writes them in one round trip.
        """
        cached = cached_extraction(state, self.extractor.identity)
        if cached is not None:
            outcome.cache_hits += 1
            return cached
        extraction = self.extractor.extract(state.content)
        outcome.extracted += 1
        to_save.append(extraction_record(state.id, state.content_hash,
                                         self.extractor.identity, extraction))
        return extraction

    def process(self, outbox_ids: Sequence[int]) -> Outcome:
        """Project the memories these outbox rows name; finish or reschedule every row."""
        outcome = Outcome()
        items = self.outbox.work(outbox_ids)
        outcome.skipped = len(set(outbox_ids)) - len(items)  # already done or dead
        by_memory: dict[str, list[WorkItem]] = defaultdict(list)
        for item in items:
            by_memory[str(item.memory_id)].append(item)

        batch: dict[str, MemoryProjection] = {}
        to_save: list[dict[str, Any]] = []
        for memory_id, memory_items in by_memory.items():
            state = memory_items[0].state
            try:
                extraction = None if state.deleted else self._extraction(state, outcome,
                                                                         to_save)
            except ExtractionError as exc:
                self._fail(memory_items, exc, outcome)
                continue
            except Exception as exc:  # a crashing extractor must not stop the batch
                log.exception("extractor crashed", extra={"action": "projection.extractor_crash",
                                                          "memory_id": memory_id})
                self._fail(memory_items, ExtractionError(f"extractor crashed: {exc!r}"), outcome)
                continue
            force = any(i.event_type == "resync" for i in memory_items)
            batch[memory_id] = projection_of(state, extraction, force=force)

        if to_save:  # the batch's new extractions, before the graph write
            with self.db.transaction() as tx:
                tx.execute_many("save_extraction", to_save)
        if batch:
            self._project(batch, by_memory, outcome)
        return outcome

    def _project(self, batch: dict[str, MemoryProjection],
                 by_memory: dict[str, list[WorkItem]], outcome: Outcome) -> None:
        try:
            result = self.graph.project(list(batch.values()))
        except GraphError as exc:
            if exc.retryable or len(batch) == 1:
                self._fail([i for mid in batch for i in by_memory[mid]], exc, outcome)
                return
            # A permanent error in a batch: project one by one so one poison memory cannot
            # hold back the others.
            for mid, projection in batch.items():
                self._project({mid: projection}, by_memory, outcome)
            return
        finished = result.applied + result.fenced
        self.outbox.mark_done([(mid, batch[mid].version) for mid in finished])
        count = sum(len(by_memory[mid]) for mid in finished)
        outcome.done += count
        outcome.fenced += len(result.fenced)
        log.info("projected", extra={"action": "projection.done", "memories": len(finished),
                                     "rows": count, "orphans_removed": result.orphans_removed})

    def _fail(self, items: list[WorkItem], exc: MemoryPersistenceError,
              outcome: Outcome) -> None:
        """Count an attempt on each row; the outbox schedules its retry or its dead letter.

        A permanent extraction error goes dead at once: the extractor is deterministic for its
        identity, so retrying cannot help, and the dead letter can be replayed once its cause
        is fixed. Graph errors always get the full retry schedule: one that looks permanent
        may still be a race with a concurrent batch.
        """
        error = f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, ExtractionError) and not exc.retryable
        outcome.errors.append(error[:4000])
        failed = self.outbox.record_failure(items, error, permanent=permanent)
        outcome.failed += len(failed.failed)
        outcome.dead += len(failed.dead)
        for item in items:
            log.warning("projection failed", extra={
                "action": "projection.failed", "outbox_id": item.outbox_id,
                "memory_id": str(item.memory_id), "user_id": item.user_id,
                "attempt": item.attempts + 1, "dead": item.outbox_id in failed.dead,
                "error": error[:300]})
