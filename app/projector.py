"""One projection step: outbox rows in, graph written, rows finished or rescheduled.

Guarantees (DESIGN invariants 2, 3, 5):
- The worker reads each memory's *current* state from Postgres; the event only names the memory.
  So duplicate, late and reordered deliveries all converge on the latest state.
- A row is marked done only after the graph has (at least) the version it names.
- Every failure of a row is written back to it through the outbox (attempts, next attempt time,
  error history); the last one turns it dead and leaves a dead letter. Nothing is only logged.
- An outage of a dependency (Neo4j, the extractor's endpoint) is not the row's failure: it feeds
  the dependency's breaker and the row goes back without spending an attempt. While a breaker is
  open the worker does not call that dependency at all (``app.breakers``).
- A worker never holds rows past their lease: it stops calling the extractor at half the lease
  left and sends the rest back, due at once, without an attempt.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app import metrics, tracing
from app.breakers import EXTRACTOR, GRAPH, describe
from app.db.connector import Database
from app.domain import Extraction, MemoryState
from app.errors import (
    DependencyUnavailable,
    ExtractionError,
    ExtractorRateLimited,
    GraphError,
    MemoryPersistenceError,
    Misconfigured,
)
from app.extraction import Extractor
from app.graph.base import GraphStore, MemoryProjection
from app.outbox import Outbox, WorkItem
from app.projection import cached_extraction, extraction_record, projection_of

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)
DEFERRED = "deferred: the lease was running out before the extractor got to it"


class BreakerGate(Protocol):
    """What the projector asks of the breakers (``app.breakers.Breakers``)."""

    def allows(self, name: str) -> bool: ...

    def failed(self, name: str, exc: MemoryPersistenceError) -> object: ...

    def succeeded(self, name: str) -> None: ...

    def invalidate(self) -> None: ...


class NoBreakers:
    """No breaker state: every call is allowed and nothing is recorded (tests, tools)."""

    def allows(self, name: str) -> bool:
        return True

    def failed(self, name: str, exc: MemoryPersistenceError) -> object:
        return None

    def succeeded(self, name: str) -> None:
        return None

    def invalidate(self) -> None:
        return None


def is_dependency_failure(exc: BaseException) -> bool:
    """An outage or misconfiguration of a dependency, not a failure of the row."""
    return isinstance(exc, DependencyUnavailable | Misconfigured)


@dataclass
class Outcome:
    """What one call to ``Projector.process`` did, for logs, metrics and tests."""

    done: int = 0
    fenced: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    held: int = 0  # sent back without an attempt: a dependency is out (or time ran short)
    extracted: int = 0
    cache_hits: int = 0
    errors: list[str] = field(default_factory=list)


class Projector:
    """Projects batches of outbox rows into the graph."""

    def __init__(self, db: Database, outbox: Outbox, graph: GraphStore,
                 extractor: Extractor, breakers: BreakerGate | None = None, *,
                 retry_delay: float = 5.0, rng: random.Random | None = None) -> None:
        self.db = db
        self.outbox = outbox
        self.graph = graph
        self.extractor = extractor
        self.breakers: BreakerGate = breakers or NoBreakers()
        # A row sent back for an outage while its breaker is still closed is due again after
        # a jittered pause of up to this, so a flapping dependency is not hammered.
        self.retry_delay = retry_delay
        self.rng = rng or random.Random()

    def process(self, outbox_ids: Sequence[int]) -> Outcome:
        """Project the memories these outbox rows name; finish, reschedule or hold every row."""
        started = time.monotonic()
        metrics.PROJECTION_BATCH_ROWS.observe(len(outbox_ids))
        try:
            with tracing.span("projection", {"memctl.rows": len(outbox_ids)}) as span:
                return self._process(outbox_ids, span)
        finally:
            metrics.PROJECTION_BATCH_DURATION.observe(time.monotonic() - started)

    def _process(self, outbox_ids: Sequence[int], span: Span | None) -> Outcome:
        outcome = Outcome()
        items = self.outbox.work(outbox_ids)
        tracing.link(span, (i.traceparent for i in items))  # to the requests that wrote them
        outcome.skipped = len(set(outbox_ids)) - len(items)  # already done or dead
        metrics.PROJECTION_ATTEMPTS.inc(len(items))
        if not items:
            return outcome
        if not self.breakers.allows(GRAPH):
            self._release(items, GRAPH, "the graph breaker is open", outcome)
            return outcome
        by_memory: dict[str, list[WorkItem]] = defaultdict(list)
        for item in items:
            by_memory[str(item.memory_id)].append(item)
        # Extract no later than half the shortest lease left, so the rows finish in time.
        leases = [i.lease_left for i in items if i.lease_left is not None]
        deadline = time.monotonic() + min(leases) / 2 if leases else None

        batch: dict[str, MemoryProjection] = {}
        to_save: list[dict[str, Any]] = []
        waiting: list[WorkItem] = []  # need the extractor while it is out
        deferred: list[WorkItem] = []  # need the extractor, but time ran short
        outage: MemoryPersistenceError | None = None
        extractor_open = not self.breakers.allows(EXTRACTOR)
        extracted = False
        for memory_id, memory_items in by_memory.items():
            state = memory_items[0].state
            extraction: Extraction | None = None
            if not state.deleted:
                extraction = cached_extraction(state, self.extractor.identity)
                if extraction is not None:
                    outcome.cache_hits += 1
                elif extractor_open or outage is not None:
                    waiting += memory_items
                    continue
                elif extracted and deadline is not None and time.monotonic() > deadline:
                    # (Never before the first extraction: a late batch still makes progress.)
                    deferred += memory_items
                    continue
                else:
                    try:
                        extraction = self._extract(state, outcome, to_save)
                        extracted = True
                    except MemoryPersistenceError as exc:
                        if is_dependency_failure(exc):
                            outage = exc
                            waiting += memory_items
                        else:
                            self._fail(memory_items, exc, outcome)
                        continue
            force = any(i.event_type == "resync" for i in memory_items)
            batch[memory_id] = projection_of(state, extraction, force=force)

        if outage is not None:
            self.breakers.failed(EXTRACTOR, outage)
        elif extracted:
            self.breakers.succeeded(EXTRACTOR)
        if waiting:
            delay = outage.retry_after if isinstance(outage, ExtractorRateLimited) else None
            self._release(waiting, EXTRACTOR,
                          describe(outage) if outage else "the extractor breaker is open",
                          outcome, delay)
        if deferred:
            self._release(deferred, None, DEFERRED, outcome, 0.0)
        if to_save:  # the batch's new extractions, before the graph write
            with self.db.transaction() as tx:
                tx.execute_many("save_extraction", to_save)
        if batch:
            self._project(batch, by_memory, outcome)
        return outcome

    def _extract(self, state: MemoryState, outcome: Outcome,
                 to_save: list[dict[str, Any]]) -> Extraction:
        """A fresh extraction, queued in ``to_save`` (the batch caches them in one round trip).

        Our errors pass through; anything else is a crashing extractor, the row's failure.
        """
        try:
            extraction = self.extractor.extract(state.content)
        except MemoryPersistenceError:
            raise
        except Exception as exc:  # a crashing extractor must not stop the batch
            log.exception("extractor crashed", extra={"action": "projection.extractor_crash",
                                                      "memory_id": str(state.id)})
            raise ExtractionError(f"extractor crashed: {exc!r}") from exc
        outcome.extracted += 1
        to_save.append(extraction_record(state, self.extractor.identity, extraction))
        return extraction

    def _project(self, batch: dict[str, MemoryProjection],
                 by_memory: dict[str, list[WorkItem]], outcome: Outcome) -> bool:
        """Write the batch to the graph; False when the graph turned out to be out."""
        items = [i for mid in batch for i in by_memory[mid]]
        try:
            result = self.graph.project(list(batch.values()))
        except GraphError as exc:
            if is_dependency_failure(exc):
                self.breakers.failed(GRAPH, exc)
                self._release(items, GRAPH, describe(exc), outcome)
                return False
            if exc.retryable or len(batch) == 1:
                self._fail(items, exc, outcome)
                return True
            # A permanent error in a batch: project one by one so one poison memory cannot
            # hold back the others (and stop, sending the rest back, if the graph goes out).
            pending = list(batch.items())
            while pending:
                mid, projection = pending.pop(0)
                if not self._project({mid: projection}, by_memory, outcome):
                    rest = [i for m, _ in pending for i in by_memory[m]]
                    self._release(rest, GRAPH, "the graph went out during the batch", outcome)
                    return False
            return True
        self.breakers.succeeded(GRAPH)
        finished = result.applied + result.fenced
        self.outbox.mark_done([(mid, batch[mid].version) for mid in finished])
        count = sum(len(by_memory[mid]) for mid in finished)
        outcome.done += count
        metrics.PROJECTED_MEMORIES.inc(len(finished))
        metrics.PROJECTION_DONE_ROWS.inc(count)
        outcome.fenced += len(result.fenced)
        log.info("projected", extra={"action": "projection.done", "memories": len(finished),
                                     "rows": count, "orphans_removed": result.orphans_removed})
        return True

    def _release(self, items: list[WorkItem], breaker: str | None, why: str,
                 outcome: Outcome, delay: float | None = None) -> None:
        """Send rows back without an attempt: held while ``breaker`` is open, else due later."""
        if not items:
            return
        if delay is None:
            delay = self.rng.uniform(0.5, 1.0) * self.retry_delay
        held = self.outbox.release(items, why, breaker=breaker, delay=delay)
        if breaker is not None and not held and not self.breakers.allows(breaker):
            self.breakers.invalidate()  # our view said open, Postgres says closed
        outcome.held += len(items)
        metrics.PROJECTION_RELEASED.labels(breaker or "lease").inc(len(items))
        log.info("rows sent back without an attempt", extra={
            "action": "projection.held", "breaker": breaker, "rows": len(items),
            "held": held, "why": why[:300]})

    def _fail(self, items: list[WorkItem], exc: MemoryPersistenceError,
              outcome: Outcome) -> None:
        """Count an attempt on each row; the outbox schedules its retry or its dead letter.

        A permanent extraction error goes dead at once: the extractor is deterministic for its
        identity, so retrying cannot help, and the dead letter can be replayed once its cause
        is fixed. Graph errors always get the full retry schedule: one that looks permanent
        may still be a race with a concurrent batch.
        """
        error = describe(exc)
        permanent = isinstance(exc, ExtractionError) and not exc.retryable
        outcome.errors.append(error)
        failed = self.outbox.record_failure(items, error, permanent=permanent)
        outcome.failed += len(failed.failed)
        outcome.dead += len(failed.dead)
        metrics.PROJECTION_FAILURES.labels(metrics.error_kind(exc)).inc(len(failed.failed))
        metrics.PROJECTION_DEAD.inc(len(failed.dead))
        for item in items:
            log.warning("projection failed", extra={
                "action": "projection.failed", "outbox_id": item.outbox_id,
                "memory_id": str(item.memory_id), "user_id": item.user_id,
                "attempt": item.attempts + 1, "dead": item.outbox_id in failed.dead,
                "error": error[:300]})
