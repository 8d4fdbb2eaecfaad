"""Consistency check, repair and rebuild: proof that the graph equals the projection of Postgres.

The check walks Postgres in id order (keyset pages) and reads the graph for each page in one
query, then walks the graph's Memory nodes the same way for nodes Postgres does not have, and
looks for unmentioned entities and edges across users. Findings are stored (deduplicated by a
fingerprint) in ``inconsistencies``; a complete check marks what it no longer sees resolved.

Memories with an outbox row in flight are in transit, not inconsistent, and are skipped.

``run(SyncRequest)`` is the one dispatch of check, repair, full and rebuild that ``memctl sync``
and ``POST /api/persistence/sync`` share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.db.connector import Database, Row
from app.domain import Extraction, MemoryState
from app.errors import Busy, MemoryPersistenceError, ValidationError
from app.extraction import Extractor
from app.graph.base import GraphStore, MemoryProjection
from app.outbox import Outbox
from app.projection import (
    build_projection,
    cached_extraction,
    expected_keys,
    extraction_record,
)
from app.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["missing_in_graph", "stale_version", "orphan_memory", "entity_mismatch",
               "orphan_entity", "cross_user"]
KINDS: tuple[Kind, ...] = ("missing_in_graph", "stale_version", "orphan_memory",
                           "entity_mismatch", "orphan_entity", "cross_user")
Operation = Literal["check", "repair", "full", "rebuild"]
OPERATIONS: tuple[Operation, ...] = ("check", "repair", "full", "rebuild")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
SYNC_LOCK = "memctl-sync"
# (phase, items done in this step, the phase's total when known)
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Finding:
    kind: Kind
    user_id: str | None
    memory_id: str | None = None
    entity_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}|{self.memory_id or ''}|{self.entity_key or ''}"


@dataclass
class CheckReport:
    checked: int = 0
    graph_nodes_checked: int = 0
    in_transit: int = 0
    findings: list[Finding] = field(default_factory=list)
    stored: bool = False
    complete: bool = True
    seconds: float = 0.0
    run_id: int | None = None

    @property
    def by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.findings)
        return {k: counts.get(k, 0) for k in KINDS}

    @property
    def consistent(self) -> bool:
        return not self.findings

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "graph_nodes_checked": self.graph_nodes_checked,
                "in_transit": self.in_transit, "found": len(self.findings),
                "by_kind": self.by_kind, "stored": self.stored, "complete": self.complete,
                "seconds": round(self.seconds, 3), "run_id": self.run_id}


@dataclass
class RepairReport:
    queued: int = 0
    removed_memories: int = 0
    removed_entities: int = 0
    removed_cross_user_edges: bool = False
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        return {"queued": self.queued, "removed_memories": self.removed_memories,
                "removed_entities": self.removed_entities,
                "removed_cross_user_edges": self.removed_cross_user_edges,
                "dry_run": self.dry_run}


@dataclass
class RebuildReport:
    projected: int = 0
    skipped_deleted: int = 0
    extracted: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"projected": self.projected, "skipped_deleted": self.skipped_deleted,
                "extracted": self.extracted, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class SyncRequest:
    """One consistency operation, validated once for every door (CLI, HTTP)."""

    operation: Operation
    user_id: str | None = None
    limit: int | None = None
    dry_run: bool = False
    reextract: bool = False

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValidationError("operation: must be check, repair, full or rebuild",
                                  "operation")
        if self.operation == "rebuild" and self.dry_run:
            raise ValidationError("dryRun: rebuild has no dry run", "dryRun")
        if self.operation == "rebuild" and self.limit is not None:
            raise ValidationError("limit: rebuild always covers every memory in scope", "limit")
        if self.operation != "rebuild" and self.reextract:
            raise ValidationError("reextract: applies to rebuild only", "reextract")
        if self.limit is not None and self.limit < 1:
            raise ValidationError("limit: must be at least 1", "limit")


@dataclass
class SyncReport:
    """What ``Consistency.run`` did."""

    request: SyncRequest
    check: CheckReport | None = None
    repair: RepairReport | None = None
    rebuild: RebuildReport | None = None

    @property
    def consistent(self) -> bool | None:
        """check/full: whether the check found nothing."""
        return self.check.consistent if self.check is not None else None

    @property
    def failed(self) -> bool:
        """A check that found something is the failure a monitor looks for; a full run that
        repaired what it found succeeded (the repair is queued through the outbox)."""
        return (self.check is not None and not self.check.consistent
                and (self.request.operation == "check" or self.request.dry_run))

    def as_dict(self, max_findings: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"operation": self.request.operation}
        if self.check is not None:
            out["consistent"] = self.check.consistent
            out["check"] = self.check.summary()
            out["findings"] = [dataclasses.asdict(f)
                               for f in self.check.findings[:max_findings]]
        if self.repair is not None:
            out["repair"] = self.repair.summary()
        if self.rebuild is not None:
            out["rebuild"] = self.rebuild.summary()
        return out


def as_uuid(value: str | None) -> str | None:
    """The value if it is a UUID (Postgres ids are), else None."""
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


class Consistency:
    """Check, repair and rebuild the graph against Postgres."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox, graph: GraphStore,
                 extractor: Extractor | None = None, page_size: int = 2000) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.graph = graph
        self.extractor = extractor
        self.page_size = page_size

    # -- the one dispatch -----------------------------------------------------------------

    def run(self, request: SyncRequest, progress: Progress | None = None) -> SyncReport:
        """Run one operation and report it; fails fast (GraphUnavailable) when Neo4j is down."""
        self.graph.ping()  # rather than after the driver's retries
        report = SyncReport(request)
        op, user = request.operation, request.user_id
        if op == "rebuild":
            report.rebuild = self.rebuild(user, reextract=request.reextract, progress=progress)
        elif op == "repair":
            report.repair = self.repair(user_id=user, limit=request.limit,
                                        dry_run=request.dry_run, progress=progress)
        elif op == "check":
            report.check = self.check(user, limit=request.limit, store=not request.dry_run,
                                      progress=progress)
        else:
            report.check, report.repair = self.full(user, limit=request.limit,
                                                    dry_run=request.dry_run, progress=progress)
        return report

    def total(self, user_id: str | None, limit: int | None = None) -> int:
        """Memories (live and deleted) in scope: the size of a check's or rebuild's walk."""
        row = self.db.one("memory_stats", {"user_id": user_id})
        total = int(row["live"]) + int(row["deleted"]) if row is not None else 0
        return min(total, limit) if limit is not None else total

    # -- what earlier checks found ------------------------------------------------------

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent check runs, newest first (``result`` holds the summary by kind)."""
        return self.db.all("list_check_runs", {"limit": limit})

    def health(self) -> tuple[datetime | None, dict[str, int]]:
        """When the last check finished, and the unresolved findings by kind (for metrics)."""
        last = self.db.one("last_check_run")
        counts = {str(r["kind"]): int(r["n"]) for r in self.db.all("inconsistency_stats")}
        return (last["finished_at"] if last is not None else None,
                {k: counts.get(k, 0) for k in KINDS})

    def open_findings(self, user_id: str | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
        """Stored findings no later check has resolved, oldest first."""
        return self.db.all("open_inconsistencies", {"user_id": user_id, "limit": limit})

    # -- check ----------------------------------------------------------------------------

    def _compare_page(self, rows: list[Row], report: CheckReport) -> None:
        snapshot = self.graph.snapshot([str(r["id"]) for r in rows])
        for row in rows:
            state = MemoryState.from_row(row)
            mid, user = str(state.id), state.user_id
            if row["in_transit"]:
                report.in_transit += 1
                continue
            node = snapshot.get(mid)
            if state.deleted:
                if node is not None and not node.deleted:
                    report.findings.append(Finding("orphan_memory", user, mid, details={
                        "reason": "deleted in Postgres, live in the graph",
                        "graph_version": node.version, "postgres_version": state.version}))
                continue
            if node is None or node.deleted:
                report.findings.append(Finding("missing_in_graph", user, mid, details={
                    "postgres_version": state.version,
                    "graph": "tombstone" if node is not None else "absent"}))
                continue
            if node.version != state.version:
                report.findings.append(Finding("stale_version", user, mid, details={
                    "postgres_version": state.version, "graph_version": node.version}))
                continue
            keys = expected_keys(state)
            if keys is not None and keys != node.entity_keys:
                report.findings.append(Finding("entity_mismatch", user, mid, details={
                    "missing": sorted(keys - node.entity_keys)[:20],
                    "unexpected": sorted(node.entity_keys - keys)[:20]}))

    @contextmanager
    def _sync_lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the sync lock (a session-level advisory lock) or raise Busy."""
        with self.db.advisory_lock(SYNC_LOCK, shared=not exclusive) as got:
            if not got:
                raise Busy("a rebuild is running; try again when it ends" if not exclusive
                           else "a check or rebuild is running; try again when it ends")
            yield

    def check(self, user_id: str | None = None, *, limit: int | None = None,
              store: bool = True, progress: Progress | None = None) -> CheckReport:
        """Compare Postgres and the graph; store findings unless ``store`` is False.

        Raises Busy while a rebuild runs (it would see a half-built graph).
        """
        with self._sync_lock(exclusive=False):
            return self._check(user_id, limit=limit, store=store, progress=progress)

    def _check(self, user_id: str | None, *, limit: int | None, store: bool,
               progress: Progress | None) -> CheckReport:
        started = time.monotonic()
        report = CheckReport()
        run_id, since = None, None
        if store:
            row = self.db.one("check_run_start", {"scope": user_id or "all"})
            assert row is not None
            run_id, since = int(row["id"]), row["started_at"]
            report.run_id = run_id
        try:
            return self._walk(user_id, limit, store, progress, report, started, since)
        except BaseException:
            # Stopped part-way (a cancelled job, an outage): the run found nothing it could
            # vouch for, so it is not listed as a check that never ends.
            if run_id is not None:
                with suppress(MemoryPersistenceError):  # Postgres may be what failed
                    self.db.execute("check_run_discard", {"id": run_id})
            raise

    def _walk(self, user_id: str | None, limit: int | None, store: bool,
              progress: Progress | None, report: CheckReport, started: float,
              since: datetime | None) -> CheckReport:
        total = self.total(user_id, limit) if progress else None
        after = ZERO_UUID
        while True:
            size = self.page_size if limit is None else min(self.page_size,
                                                            limit - report.checked)
            if size <= 0:
                report.complete = False
                break
            rows = self.db.all("check_page", {"after": after, "user_id": user_id,
                                              "limit": size})
            if not rows:
                break
            self._compare_page(rows, report)
            report.checked += len(rows)
            after = str(rows[-1]["id"])
            if progress:
                progress("memories", len(rows), total)
            if len(rows) < size:
                break

        if report.complete:
            self._check_graph_side(user_id, report, progress)
        report.seconds = time.monotonic() - started
        if store:
            self._store(report, user_id, since)
        log.info("check done", extra={"action": "sync.check", "user_id": user_id,
                                      **report.summary()})
        return report

    def _check_graph_side(self, user_id: str | None, report: CheckReport,
                          progress: Progress | None) -> None:
        after = ""
        while True:
            nodes = self.graph.memory_page(after, self.page_size, user_id)
            if not nodes:
                break
            ids = [i for n in nodes if (i := as_uuid(n.id)) is not None]
            known = {str(r["id"]) for r in self.db.all("memories_known", {"ids": ids})}
            for node in nodes:
                if as_uuid(node.id) not in known and not node.deleted:
                    report.findings.append(Finding("orphan_memory", node.user_id, node.id,
                                                   details={"reason": "not in Postgres",
                                                            "graph_id": node.id,
                                                            "graph_version": node.version}))
            report.graph_nodes_checked += len(nodes)
            after = nodes[-1].id
            if progress:
                progress("graph", len(nodes), None)
            if len(nodes) < self.page_size:
                break
        for key, owner in self.graph.orphan_entities(user_id, 10_000):
            report.findings.append(Finding("orphan_entity", owner, None, key))
        for edge in self.graph.cross_user_edges(user_id, 10_000):
            report.findings.append(Finding(
                "cross_user", edge["user_id"], edge["memory_id"], edge["detail"],
                details={"other_user": edge["other_user"]}))

    def _store(self, report: CheckReport, user_id: str | None, since: datetime | None) -> None:
        with self.db.transaction() as tx:
            tx.execute_many("upsert_inconsistency", [{
                # A graph id that is no UUID is kept in details (graph_id) only.
                "kind": f.kind, "user_id": f.user_id, "memory_id": as_uuid(f.memory_id),
                "entity_key": f.entity_key, "fingerprint": f.fingerprint,
                "details": json.dumps(f.details)} for f in report.findings])
            if report.complete and since is not None:
                tx.execute("resolve_unseen", {"since": since, "user_id": user_id})
            tx.execute("check_run_finish", {
                "id": report.run_id, "checked": report.checked, "found": len(report.findings),
                "result": json.dumps(report.summary())})
        report.stored = True

    # -- repair ---------------------------------------------------------------------------

    def repair(self, findings: list[Finding] | None = None, *, user_id: str | None = None,
               limit: int | None = None, dry_run: bool = False,
               progress: Progress | None = None) -> RepairReport:
        """Fix findings: queue outbox events for memories Postgres has, remove graph orphans.

        With no ``findings`` given, repairs the stored open inconsistencies. Graph-only
        removals come first (cross-user edges, memories Postgres never had, orphan entities),
        then the resyncs, which re-project through the normal, version-fenced path.
        """
        if findings is None:
            rows = self.db.all("open_inconsistencies", {"user_id": user_id,
                                                        "limit": limit or 1_000_000})
            findings = [Finding(r["kind"], r["user_id"],
                                r["details"].get("graph_id")
                                or (str(r["memory_id"]) if r["memory_id"] else None),
                                r["entity_key"], r["details"]) for r in rows]
        elif limit is not None:
            findings = findings[:limit]
        report = RepairReport(dry_run=dry_run)
        resync: set[str] = set()
        never_had: set[str] = set()
        orphans: set[str] = set()
        cross = False
        for f in findings:
            if f.kind == "orphan_entity" and f.entity_key:
                orphans.add(f.entity_key)
            elif f.kind == "orphan_memory" and f.details.get("reason") == "not in Postgres":
                never_had.add(f.memory_id or "")
            elif f.kind == "cross_user":
                cross = True
                if f.memory_id:
                    resync.add(f.memory_id)
            elif f.memory_id:
                resync.add(f.memory_id)
        # A memory the graph has that Postgres lacks may be a cross-user memory id; only
        # memories Postgres really has are queued.
        if resync:
            valid = sorted(i for m in resync if (i := as_uuid(m)) is not None)
            known = {str(r["id"]) for r in self.db.all("memories_known", {"ids": valid})}
            never_had |= resync - known
            resync &= known
        if dry_run:
            report.queued = len(resync)
            report.removed_memories = len(never_had)
            report.removed_entities = len(orphans)
            report.removed_cross_user_edges = cross
            return report
        if cross:
            self.graph.remove_cross_user_edges()
            report.removed_cross_user_edges = True
        if never_had:
            report.removed_memories = self.graph.remove_memories(sorted(never_had))
        if orphans:
            report.removed_entities = self.graph.remove_orphan_entities(sorted(orphans))
        ordered = sorted(resync)
        if progress:
            progress("repair", 0, len(ordered))
        for at in range(0, len(ordered), self.page_size):
            page = ordered[at:at + self.page_size]
            report.queued += self.outbox.queue_resync(page)
            if progress:
                progress("repair", len(page), len(ordered))
        fixed = [f.fingerprint for f in findings
                 if f.kind == "orphan_entity"
                 or (f.kind == "orphan_memory" and (f.memory_id or "") in never_had)]
        if fixed:
            self.db.execute("resolve_fingerprints", {"fingerprints": fixed})
        log.info("repair done", extra={"action": "sync.repair", **report.summary()})
        return report

    def full(self, user_id: str | None = None, *, limit: int | None = None,
             dry_run: bool = False, progress: Progress | None = None
             ) -> tuple[CheckReport, RepairReport]:
        """Check, then repair what the check found."""
        report = self.check(user_id, limit=limit, store=not dry_run, progress=progress)
        return report, self.repair(report.findings, dry_run=dry_run, progress=progress)

    # -- rebuild --------------------------------------------------------------------------

    def rebuild(self, user_id: str | None = None, *, reextract: bool = False,
                progress: Progress | None = None) -> RebuildReport:
        """Re-project the graph (of one user or all) from Postgres, in batches.

        Uses the cached extraction unless ``reextract`` (or the cache is stale and an
        extractor was given). Safe while writes go on: every batch is version-fenced, so a
        page read before a concurrent update is refused if a worker already projected the
        newer version, and superseded by it otherwise. Raises Busy while a check or another
        rebuild runs.
        """
        with self._sync_lock(exclusive=True):
            return self._rebuild(user_id, reextract=reextract, progress=progress)

    def _rebuild(self, user_id: str | None, *, reextract: bool,
                 progress: Progress | None) -> RebuildReport:
        started = time.monotonic()
        report = RebuildReport()
        total = self.total(user_id) if progress else None
        self.graph.clear(user_id)
        after = ZERO_UUID
        while True:
            rows = self.db.all("rebuild_page", {"after": after, "user_id": user_id,
                                                "limit": self.page_size})
            if not rows:
                break
            batch: list[MemoryProjection] = []
            to_save: list[dict[str, Any]] = []
            for row in rows:
                state = MemoryState.from_row(row)
                if state.deleted:
                    report.skipped_deleted += 1
                    continue
                extraction = self._extraction(state, reextract, report, to_save)
                if extraction is None:
                    continue  # no cache and no extractor: the outbox will fill it in
                batch.append(build_projection(str(state.id), state.user_id, state.version,
                                              state.importance, state.content_hash,
                                              extraction))
            if to_save:  # one round trip for the page's fresh extractions
                with self.db.transaction() as tx:
                    tx.execute_many("save_extraction", to_save)
            for i in range(0, len(batch), 500):
                self.graph.project(batch[i:i + 500])
            report.projected += len(batch)
            after = str(rows[-1]["memory_id"])
            if progress:
                progress("rebuild", len(rows), total)
            if len(rows) < self.page_size:
                break
        report.seconds = time.monotonic() - started
        log.info("rebuild done", extra={"action": "sync.rebuild", "user_id": user_id,
                                        **report.summary()})
        return report

    def _extraction(self, state: MemoryState, reextract: bool, report: RebuildReport,
                    to_save: list[dict[str, Any]]) -> Extraction | None:
        """The current cache unless ``reextract``; a fresh result is queued in ``to_save``."""
        cached = cached_extraction(state)
        if (cached is not None and not reextract) or self.extractor is None:
            return cached
        extraction = self.extractor.extract(state.content)
        report.extracted += 1
        to_save.append(extraction_record(state, self.extractor.identity, extraction))
        return extraction

    # -- tombstones -----------------------------------------------------------------------

    def prune_tombstones(self, limit: int = 1000) -> int:
        """Forget deleted memories past retention that no delivery waits for any more.

        The graph's tombstone goes first, then the Postgres row: a crash between the two
        leaves a row whose next pruning removes it; never a live fence removed early. The
        purged memories' history entries lose their content in the same transaction.
        """
        rows = self.db.all("prunable_tombstones", {
            "age_seconds": self.settings.tombstone_retention_hours * 3600, "limit": limit})
        if not rows:
            return 0
        self.graph.prune_tombstones([str(r["id"]) for r in rows])
        ids = [r["id"] for r in rows]
        with self.db.transaction() as tx:
            purged = tx.execute("purge_memories", {"ids": ids})
            tx.execute("forget_purged_history", {"ids": ids})
        return purged
