"""The transactional outbox: the one owner of every outbox row and dead letter.

A row's life (DESIGN invariants 1, 2, 5)::

    emit ──> pending ──claim──> in_flight ──mark_done──> done ──prune──> (gone)
               ▲  ▲                 │
               │  └─record_failure──┤   attempts + 1, next attempt after backoff
               │  └─reclaim─────────┤   the lease ran out (worker lost, message lost)
               │  └─release─────────┘   a dependency is out: no attempt counted
               │                    │
               └──────replay─── dead ◄── the last attempt failed: a dead letter is written
                                    └──discard──> the dead letter is closed with a reason

    pending ──hold──> pending, held by a breaker ──release_held (the breaker closed)──> due now

A row the projection could not finish because a dependency (Neo4j, the extractor) is out is
*released*: back to pending with its attempts unchanged. While that dependency's breaker is open
the row is *held*: ``held_by`` names the breaker, claims pass it by, and it becomes due at its
creation time (oldest first) when the breaker closes. Only failures of the row itself spend
attempts and can make dead letters.

``emit`` runs inside the caller's transaction, so a memory change and its event commit together
or not at all. Every other transition is a method here and a named statement in
``app/db/queries.sql``; nothing else in the project changes an outbox row or a dead letter.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app import metrics, tracing
from app.db.connector import Database, Listener, Tx
from app.domain import MAX_PAGE, EventType, GraphProjection, MemoryState
from app.errors import AlreadyResolved, DeadLetterNotFound, ValidationError
from app.retry import backoff_delay
from app.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "memctl_outbox"  # NOTIFY wakes idle relays; Postgres sends it only on commit
DeadStatus = Literal["dead", "replayed", "discarded"]
LEASE_LOST = "lease expired before the projection finished (worker lost or message lost)"
LEASE_LOST_IN_OUTAGE = ("lease expired while the {breaker} breaker was open: held without an "
                        "attempt until it closes")


@dataclass(frozen=True)
class WorkItem:
    """An outbox row a worker was sent, with its memory's current state."""

    outbox_id: int
    memory_id: uuid.UUID
    user_id: str
    event_type: EventType
    attempts: int
    state: MemoryState
    lease_left: float | None = None  # seconds of lease left when the worker read the row
    traceparent: str | None = None  # the W3C trace context of the request that wrote it


@dataclass(frozen=True)
class Reclaimed:
    reclaimed: int
    dead: int
    held: int = 0  # reclaimed during an outage: no attempt counted


@dataclass(frozen=True)
class Failed:
    """What ``record_failure`` did: rows that counted an attempt, and those that went dead."""

    failed: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters; None matches anything."""

    status: DeadStatus | None = "dead"
    user_id: str | None = None
    event_type: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    memory_id: uuid.UUID | None = None

    @property
    def criteria(self) -> bool:
        """Whether anything but the status narrows the choice."""
        return any(v is not None for v in (self.user_id, self.event_type, self.error,
                                           self.since, self.until, self.memory_id))

    def params(self) -> dict[str, Any]:
        """The filter as the parameters of the dead-letter statements."""
        return {"status": self.status, "user_id": self.user_id, "event_type": self.event_type,
                "error": self.error, "since": self.since, "until": self.until,
                "memory_id": self.memory_id}

    def open(self) -> DeadLetterFilter:
        """The same criteria among open (dead) letters only."""
        return dataclasses.replace(self, status="dead")


@dataclass(frozen=True)
class ReplaySelection:
    """Which dead letters to replay: exactly one of ids, a filter with a criterion, or all."""

    ids: tuple[int, ...] | None = None
    filter: DeadLetterFilter | None = None
    everything: bool = False

    def __post_init__(self) -> None:
        chosen = [name for name, given in (("ids", self.ids is not None),
                                           ("filter", self.filter is not None),
                                           ("all", self.everything)) if given]
        if len(chosen) != 1:
            raise ValidationError(
                "choose the dead letters: give ids, a filter or all"
                + (f", not {' and '.join(chosen)}" if chosen else ""),
                chosen[1] if len(chosen) > 1 else "ids")
        if self.ids is not None and not self.ids:
            raise ValidationError("ids: give at least one dead letter id", "ids")
        if self.filter is not None and not self.filter.criteria:
            raise ValidationError("a filter needs at least one criterion (or use all)", "filter")


@dataclass(frozen=True)
class ReplayResult:
    replayed: list[int]
    skipped: list[int]  # requested ids that were already replayed or discarded


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[dict[str, Any]]  # newest first
    next_before_id: int | None  # pass as before_id for the next page; None on the last


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    in_flight: int
    done: int
    dead: int
    expired_leases: int
    lag_seconds: float  # age of the oldest open (pending or in-flight) row
    held: int = 0  # pending rows a dependency's breaker holds back


@dataclass(frozen=True)
class DeadLetterCounts:
    open: int
    replayed: int
    discarded: int


def _holds(tx: Tx, breaker: str) -> bool:
    """Whether ``breaker`` is open (not closed), locking its state for the transaction."""
    state = tx.scalar("breaker_lock", {"name": breaker})
    return state is not None and state != "closed"


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as ISO text and ids as strings: a dead letter as callers print or send it."""
    return {k: (v.isoformat() if isinstance(v, datetime)
                else str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}


class Outbox:
    """Every transition of an outbox row, and the dead letters they leave."""

    def __init__(self, settings: Settings, db: Database,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.db = db
        self.rng = rng or random.Random()

    # -- writing events ---------------------------------------------------------------------

    def emit(self, tx: Tx, memory_id: uuid.UUID, user_id: str, version: int,
             event: EventType) -> None:
        """Queue the delivery of one memory change, inside the transaction that makes it."""
        tx.execute("insert_outbox", {"memory_id": memory_id, "user_id": user_id,
                                     "memory_version": version, "event_type": event,
                                     "traceparent": tracing.current_traceparent()})
        tx.execute("notify_outbox", {"channel": CHANNEL})

    def queue_resync(self, memory_ids: Sequence[uuid.UUID | str]) -> int:
        """A resync event per memory at its current version (repair through the normal path)."""
        if not memory_ids:
            return 0
        with self.db.transaction() as tx:
            queued = len(tx.all("queue_resync", {"ids": [str(i) for i in memory_ids]}))
            tx.execute("notify_outbox", {"channel": CHANNEL})
        return queued

    # -- the relay's side -------------------------------------------------------------------

    @contextmanager
    def claim(self, limit: int) -> Iterator[list[int]]:
        """Lease up to ``limit`` due rows for the block; the claim commits when it ends.

        Send the rows inside the block: an exception rolls the claim back, so a crash between
        sending and committing re-sends (duplicates, never loss). Other relays skip these rows.
        """
        with self.db.transaction() as tx:
            rows = tx.all("claim_due", {"limit": limit,
                                        "lease_seconds": self.settings.lease_seconds})
            yield [int(r["id"]) for r in rows]

    def reclaim_expired(self, limit: int = 1000, hold_for: str | None = None) -> Reclaimed:
        """In-flight rows whose lease ran out count an attempt and are due again (or dead).

        With ``hold_for`` naming a breaker that is still open, the outage is to blame (a worker
        blocked on the dependency): the rows go back without an attempt, held by it.
        """
        with self.db.transaction() as tx:
            if hold_for is not None and _holds(tx, hold_for):
                rows = tx.all("reclaim_expired_held", {
                    "limit": limit, "breaker": hold_for,
                    "error": LEASE_LOST_IN_OUTAGE.format(breaker=hold_for)})
                result = Reclaimed(len(rows), 0, len(rows))
            else:
                rows = tx.all("reclaim_expired", {
                    "limit": limit, "max_attempts": self.settings.retry_max_attempts,
                    "error": LEASE_LOST})
                dead = [int(r["id"]) for r in rows if r["status"] == "dead"]
                self._write_dead_letters(tx, dead)
                result = Reclaimed(len(rows), len(dead))
        if rows:
            metrics.OUTBOX_RECLAIMED.inc(result.reclaimed)
            log.warning("reclaimed expired leases", extra={
                "action": "outbox.reclaim", "rows": result.reclaimed, "dead": result.dead,
                "held": result.held})
        return result

    def hold_needing_extraction(self, breaker: str, limit: int = 1000) -> int:
        """While ``breaker`` (the extractor's) is open, hold due rows that need an extraction.

        The relay calls this before claiming, so it sends only rows that need the graph alone.
        """
        with self.db.transaction() as tx:
            if not _holds(tx, breaker):
                return 0
            return tx.execute("hold_due_needing_extraction", {"breaker": breaker,
                                                              "limit": limit})

    def release_held(self, tx: Tx, breaker: str) -> int:
        """``breaker`` closes in ``tx``: every row it held is due at once, oldest first."""
        released = tx.execute("release_held", {"breaker": breaker})
        if released:
            tx.execute("notify_outbox", {"channel": CHANNEL})
        return released

    def release_stray_holds(self) -> int:
        """Rows held by a breaker that is closed become due (a safety net; normally none)."""
        with self.db.transaction() as tx:
            released = tx.execute("release_stray_holds")
            if released:
                tx.execute("notify_outbox", {"channel": CHANNEL})
        if released:
            log.warning("released stray holds", extra={"action": "outbox.release_stray",
                                                       "rows": released})
        return released

    def listener(self) -> AbstractContextManager[Listener]:
        """A ``Listener`` woken by every commit that emits (or replays, or queues resyncs)."""
        return self.db.listener(CHANNEL)

    # -- the worker's side ------------------------------------------------------------------

    def work(self, outbox_ids: Sequence[int]) -> list[WorkItem]:
        """The open rows among these, each with its memory's current state."""
        rows = self.db.all("outbox_rows_for_work", {"ids": list(outbox_ids)})
        return [WorkItem(int(r["outbox_id"]), r["memory_id"], r["user_id"], r["event_type"],
                         int(r["attempts"]), MemoryState.from_row(r),
                         None if r["lease_left"] is None else float(r["lease_left"]),
                         r["traceparent"])
                for r in rows]

    def mark_done(self, projected: Sequence[tuple[str, int]]) -> None:
        """The graph has (memory id, version): every open row up to that version is done."""
        if projected:
            with self.db.transaction() as tx:
                tx.execute_many("mark_done", [{"memory_id": m, "version": v}
                                              for m, v in projected])

    def record_failure(self, items: Sequence[WorkItem], error: str, *,
                       permanent: bool = False) -> Failed:
        """Count an attempt on each row; schedule its retry after backoff, or make it dead.

        ``permanent`` spends the row's last attempt at once (retrying cannot help). A row that
        goes dead leaves a dead letter with every attempt's error, in the same transaction.
        """
        error = error[:4000]
        failed, dead = [], []
        with self.db.transaction() as tx:
            for item in items:
                delay = backoff_delay(item.attempts + 1, self.settings.retry_base_seconds,
                                      self.settings.retry_cap_seconds, self.rng)
                row = tx.one("record_failure", {
                    "id": item.outbox_id, "error": error, "delay_seconds": delay,
                    "max_attempts": (item.attempts + 1 if permanent
                                     else self.settings.retry_max_attempts)})
                if row is None:  # finished meanwhile by another delivery
                    continue
                failed.append(item.outbox_id)
                if row["status"] == "dead":
                    dead.append(item.outbox_id)
            self._write_dead_letters(tx, dead)
        return Failed(failed, dead)

    def release(self, items: Sequence[WorkItem], error: str, *, breaker: str | None,
                delay: float = 0.0) -> bool:
        """Send rows back to pending without counting an attempt: their dependency is out.

        While ``breaker`` is open (checked under a lock, so a breaker closing meanwhile cannot
        strand them) the rows are held until it closes; otherwise, and without a breaker, they
        are due again after ``delay`` seconds. Returns whether they are held.
        """
        if not items:
            return False
        with self.db.transaction() as tx:
            held = breaker is not None and _holds(tx, breaker)
            tx.execute("release_rows", {
                "ids": [i.outbox_id for i in items], "error": error[:4000],
                "held_by": breaker if held else None,
                "delay_seconds": 0.0 if held else max(0.0, delay)})
        return held

    def _write_dead_letters(self, tx: Tx, outbox_ids: list[int]) -> None:
        """The one place a dead row becomes a dead letter."""
        if outbox_ids:
            tx.execute("insert_dead_letter", {"ids": outbox_ids})
            # Counted before the commit: a rolled-back transaction over-counts (rarely), and
            # the memctl_dead_letters gauge, read from Postgres, stays exact.
            metrics.DEAD_LETTERS_WRITTEN.inc(len(outbox_ids))

    # -- upkeep -----------------------------------------------------------------------------

    def prune_done(self, limit: int = 5000) -> int:
        """Delete done rows older than OUTBOX_RETENTION_HOURS, in bounded batches."""
        return self.db.execute_in_batches("prune_done_outbox", {
            "age_seconds": self.settings.outbox_retention_hours * 3600}, limit)

    # -- dead letters -----------------------------------------------------------------------

    def dead_letters(self, filters: DeadLetterFilter | None = None, *, limit: int = 50,
                     before_id: int | None = None) -> DeadLetterPage:
        """A page of dead letters, newest first (keyset on id)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be from 1 to {MAX_PAGE}", "limit")
        # One row past the page tells whether there is a next one.
        rows = self._dead_letter_rows(filters or DeadLetterFilter(), limit + 1, before_id)
        items = [_json_row(r) for r in rows[:limit]]
        return DeadLetterPage(items, items[-1]["id"] if len(rows) > limit else None)

    def _dead_letter_rows(self, f: DeadLetterFilter, limit: int,
                          before_id: int | None = None) -> list[dict[str, Any]]:
        return self.db.all("list_dead_letters", {**f.params(), "before_id": before_id,
                                                 "limit": limit})

    def count_dead_letters(self, filters: DeadLetterFilter | None = None) -> int:
        """How many dead letters the filter matches: what a replay by it would touch now."""
        return int(self.db.scalar("count_dead_letters", (filters or DeadLetterFilter()).params()))

    def dead_letter(self, dead_letter_id: int) -> dict[str, Any]:
        """One dead letter with its full error history."""
        row = self.db.one("get_dead_letter", {"id": dead_letter_id})
        if row is None:
            raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
        return _json_row(row)

    def replay(self, selection: ReplaySelection, actor: str) -> ReplayResult:
        """Send open dead letters back to pending with attempts reset; records who did it.

        Unknown ids raise DeadLetterNotFound and replay nothing; ids already replayed or
        discarded are skipped. A filter or ``everything`` chooses among open ones only.
        """
        if selection.ids is not None:
            ids = list(dict.fromkeys(selection.ids))
            for i in ids:
                self.dead_letter(i)
        else:
            f = (selection.filter or DeadLetterFilter()).open()
            ids = [int(r["id"]) for r in self._dead_letter_rows(f, limit=10_000_000)]
        done: list[int] = []
        if ids:
            with self.db.transaction() as tx:
                done = sorted(int(r["id"]) for r in tx.all("replay_dead_letters", {
                    "ids": ids, "actor": actor, "note": "replayed"}))
                tx.execute("notify_outbox", {"channel": CHANNEL})
        metrics.DEAD_LETTERS_REPLAYED.inc(len(done))
        log.info("dead letters replayed", extra={"action": "outbox.replay", "count": len(done),
                                                 "actor": actor})
        skipped = sorted(set(selection.ids or ()) - set(done))
        return ReplayResult(done, skipped)

    def replay_one(self, dead_letter_id: int, actor: str) -> ReplayResult:
        """Replay one open dead letter; NotFound or AlreadyResolved otherwise."""
        self._require_open(dead_letter_id)
        result = self.replay(ReplaySelection(ids=(dead_letter_id,)), actor)
        if not result.replayed:  # resolved by someone else in the meantime
            raise AlreadyResolved("the dead letter was already resolved")
        return result

    def discard(self, dead_letter_id: int, reason: str, actor: str) -> None:
        """Close an open dead letter without replaying it; the reason is kept."""
        if not reason.strip():
            raise ValidationError("a reason is required to discard a dead letter", "reason")
        self._require_open(dead_letter_id)
        if self.db.one("discard_dead_letter", {"id": dead_letter_id, "reason": reason,
                                               "actor": actor}) is None:
            raise AlreadyResolved("the dead letter was already resolved")
        log.info("dead letter discarded", extra={"action": "outbox.discard",
                                                 "dead_letter_id": dead_letter_id,
                                                 "actor": actor})

    def _require_open(self, dead_letter_id: int) -> None:
        status = self.dead_letter(dead_letter_id)["status"]
        if status != "dead":
            raise AlreadyResolved(f"the dead letter was already {status}")

    # -- deliveries -------------------------------------------------------------------------

    def deliveries(self, dead_letter_ids: Sequence[int]) -> list[dict[str, Any]]:
        """These dead letters (newest first) with their outbox row's state now, ``delivery``:
        pending, in_flight, done or dead; None once the row was pruned after it was done."""
        if not dead_letter_ids:
            return []
        return [_json_row(r) for r in self.db.all("dead_letter_deliveries",
                                                  {"ids": list(dead_letter_ids)})]

    def in_transit(self, memory_id: uuid.UUID, user_id: str,
                   limit: int = 20) -> list[dict[str, Any]]:
        """One user's memory's rows still pending or in flight, newest first."""
        return [_json_row(r) for r in self.db.all("memory_in_transit", {
            "memory_id": memory_id, "user_id": user_id, "limit": limit})]

    def projection(self, tx: Tx, memory_id: uuid.UUID, user_id: str,
                   version: int) -> GraphProjection:
        """Where the projection of one user's memory, now at ``version``, stands.

        Derived from the memory's outbox rows alone. Every version of a memory had one row,
        and rows disappear only once done (pruned after OUTBOX_RETENTION_HOURS), so a version
        without an unfinished row was projected even when its done row is gone. A memory
        with no open row is projected, or dead when its current version is dead.
        """
        rows = tx.all("memory_delivery", {"memory_id": memory_id, "user_id": user_id,
                                          "limit": 1000})
        done = [r for r in rows if r["status"] == "done"]
        unfinished = [r for r in rows if r["status"] != "done"]
        waiting = [r for r in unfinished if r["status"] in ("pending", "in_flight")]
        undone_versions = {int(r["memory_version"]) for r in unfinished}
        newest_done = int(done[0]["memory_version"]) if done else 0
        # The newest version with no unfinished row: done, and maybe pruned since.
        inferred = next((v for v in range(version, 0, -1) if v not in undone_versions), 0)
        projected = max(newest_done, inferred) or None
        if waiting:
            failing = [r for r in waiting if r["attempts"] > 0]
            if failing:
                return GraphProjection(status="failed", projected_version=projected,
                                       since=max(r["failed_at"] or r["updated_at"]
                                                 for r in failing))
            return GraphProjection(status="pending", projected_version=projected,
                                   since=min(r["created_at"] for r in waiting))
        if projected is not None and projected >= version:
            since = done[0]["done_at"] if newest_done >= version else None
            return GraphProjection(status="projected", projected_version=projected,
                                   since=since)
        dead = [r for r in unfinished if r["status"] == "dead"]
        return GraphProjection(status="dead", projected_version=projected,
                               since=max((r["updated_at"] for r in dead), default=None))

    # -- numbers ----------------------------------------------------------------------------

    def done_within(self, seconds: float) -> int:
        """Rows the workers finished in the last ``seconds`` (throughput)."""
        return int(self.db.scalar("outbox_done_since", {"seconds": seconds}))

    def stats(self) -> OutboxStats:
        """Rows per status, expired leases and the lag."""
        r = self.db.one("outbox_stats")
        assert r is not None
        return OutboxStats(int(r["pending"]), int(r["in_flight"]), int(r["done"]),
                           int(r["dead"]), int(r["expired_leases"]),
                           round(float(r["oldest_open_seconds"]), 3), int(r["held"]))

    def dead_letter_counts(self) -> DeadLetterCounts:
        r = self.db.one("dead_letter_stats")
        assert r is not None
        return DeadLetterCounts(int(r["open"]), int(r["replayed"]), int(r["discarded"]))
