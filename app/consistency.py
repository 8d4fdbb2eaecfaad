"""Consistency check, repair and rebuild: proof that the graph equals the projection of Postgres.

The check walks Postgres in id order (keyset pages) and reads the graph for each page in one
query, then walks the graph's Memory nodes the same way for nodes Postgres does not have, and
looks for unmentioned entities and edges across users. Findings are stored (deduplicated by a
fingerprint) in ``inconsistencies``; a complete check marks what it no longer sees resolved.

Memories with an outbox row in flight are in transit, not inconsistent, and are skipped.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row

from app.db.connector import Database
from app.db.sql import q
from app.domain import Extraction, entity_key
from app.errors import Busy
from app.extraction import Extractor
from app.graph.projector import GraphStore, MemoryProjection
from app.projection import (
    build_projection,
    cache_is_current,
    cached_extraction,
    extraction_params,
)
from app.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["missing_in_graph", "stale_version", "orphan_memory", "entity_mismatch",
               "orphan_entity", "cross_user"]
KINDS: tuple[Kind, ...] = ("missing_in_graph", "stale_version", "orphan_memory",
                           "entity_mismatch", "orphan_entity", "cross_user")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
Progress = Callable[[str, int], None]  # (phase, items done in this step)


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


def as_uuid(value: str | None) -> str | None:
    """The value if it is a UUID (Postgres ids are), else None."""
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


def expected_keys(row: Row[Any]) -> frozenset[str] | None:
    """Entity keys the cached extraction implies, or None when the cache is not current."""
    m = row._mapping
    if not cache_is_current(m):
        return None
    # The same keys build_projection derives, without building models: this runs once per
    # memory checked and is the check's hot path.
    user = m["user_id"]
    return frozenset(entity_key(user, e["type"], e["name"])
                     for e in m["entities"].get("entities", ()))


class Consistency:
    """Check, repair and rebuild the graph against Postgres."""

    def __init__(self, settings: Settings, db: Database, graph: GraphStore,
                 extractor: Extractor | None = None, page_size: int = 2000) -> None:
        self.settings = settings
        self.db = db
        self.graph = graph
        self.extractor = extractor
        self.page_size = page_size

    # -- check ----------------------------------------------------------------------------

    def _compare_page(self, rows: list[Row[Any]], report: CheckReport) -> None:
        snapshot = self.graph.snapshot([str(r.id) for r in rows])
        for row in rows:
            mid, user = str(row.id), row.user_id
            if row.in_transit:
                report.in_transit += 1
                continue
            node = snapshot.get(mid)
            if row.deleted_at is not None:
                if node is not None and not node.deleted:
                    report.findings.append(Finding("orphan_memory", user, mid, details={
                        "reason": "deleted in Postgres, live in the graph",
                        "graph_version": node.version, "postgres_version": row.version}))
                continue
            if node is None or node.deleted:
                report.findings.append(Finding("missing_in_graph", user, mid, details={
                    "postgres_version": row.version,
                    "graph": "tombstone" if node is not None else "absent"}))
                continue
            if node.version != row.version:
                report.findings.append(Finding("stale_version", user, mid, details={
                    "postgres_version": row.version, "graph_version": node.version}))
                continue
            keys = expected_keys(row)
            if keys is not None and keys != node.entity_keys:
                report.findings.append(Finding("entity_mismatch", user, mid, details={
                    "missing": sorted(keys - node.entity_keys)[:20],
                    "unexpected": sorted(node.entity_keys - keys)[:20]}))

    @contextmanager
    def _sync_lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the sync lock (a session-level advisory lock) or raise Busy."""
        kind = "exclusive" if exclusive else "shared"
        with self.db.engine.connect() as conn:
            got = conn.execute(q(f"sync_lock_{kind}")).scalar()
            conn.commit()
            if not got:
                raise Busy("a rebuild is running; try again when it ends" if not exclusive
                           else "a check or rebuild is running; try again when it ends")
            try:
                yield
            finally:
                conn.execute(q(f"sync_unlock_{kind}"))
                conn.commit()

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
            run_id, since = row.id, row.started_at
            report.run_id = run_id

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
            after = str(rows[-1].id)
            if progress:
                progress("memories", len(rows))
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
            known = {str(r.id) for r in self.db.all("memories_known", {"ids": ids})}
            for node in nodes:
                if as_uuid(node.id) not in known and not node.deleted:
                    report.findings.append(Finding("orphan_memory", node.user_id, node.id,
                                                   details={"reason": "not in Postgres",
                                                            "graph_id": node.id,
                                                            "graph_version": node.version}))
            report.graph_nodes_checked += len(nodes)
            after = nodes[-1].id
            if progress:
                progress("graph", len(nodes))
            if len(nodes) < self.page_size:
                break
        for key, owner in self.graph.orphan_entities(user_id, 10_000):
            report.findings.append(Finding("orphan_entity", owner, None, key))
        for edge in self.graph.cross_user_edges(user_id, 10_000):
            report.findings.append(Finding(
                "cross_user", edge["user_id"], edge["memory_id"], edge["detail"],
                details={"other_user": edge["other_user"]}))

    def _store(self, report: CheckReport, user_id: str | None, since: datetime | None) -> None:
        with self.db.transaction() as conn:
            for f in report.findings:
                conn.execute(q("upsert_inconsistency"), {
                    # A graph id that is no UUID is kept in details (graph_id) only.
                    "kind": f.kind, "user_id": f.user_id, "memory_id": as_uuid(f.memory_id),
                    "entity_key": f.entity_key, "fingerprint": f.fingerprint,
                    "details": json.dumps(f.details)})
            if report.complete and since is not None:
                conn.execute(q("resolve_unseen"), {"since": since, "user_id": user_id})
            conn.execute(q("check_run_finish"), {
                "id": report.run_id, "checked": report.checked, "found": len(report.findings),
                "result": json.dumps(report.summary())})
        report.stored = True

    # -- repair ---------------------------------------------------------------------------

    def repair(self, findings: list[Finding] | None = None, *, user_id: str | None = None,
               limit: int | None = None, dry_run: bool = False) -> RepairReport:
        """Fix findings: queue outbox events for memories Postgres has, remove graph orphans.

        With no ``findings`` given, repairs the stored open inconsistencies.
        """
        if findings is None:
            rows = self.db.all("open_inconsistencies", {"user_id": user_id,
                                                        "limit": limit or 1_000_000})
            findings = [Finding(r.kind, r.user_id,
                                r.details.get("graph_id") or (str(r.memory_id) if r.memory_id
                                                              else None),
                                r.entity_key, r.details) for r in rows]
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
            known = {str(r.id) for r in self.db.all("memories_known", {"ids": valid})}
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
        if resync:
            with self.db.transaction() as conn:
                report.queued = len(conn.execute(q("queue_resync"),
                                                 {"ids": sorted(resync)}).all())
                conn.execute(q("notify_outbox"))
        fixed = [f.fingerprint for f in findings
                 if f.kind == "orphan_entity"
                 or (f.kind == "orphan_memory" and (f.memory_id or "") in never_had)]
        if fixed:
            with self.db.transaction() as conn:
                conn.execute(q("resolve_fingerprints"), {"fingerprints": fixed})
        log.info("repair done", extra={"action": "sync.repair", **report.summary()})
        return report

    def full(self, user_id: str | None = None, *, limit: int | None = None,
             dry_run: bool = False, progress: Progress | None = None
             ) -> tuple[CheckReport, RepairReport]:
        """Check, then repair what the check found."""
        report = self.check(user_id, limit=limit, store=not dry_run, progress=progress)
        return report, self.repair(report.findings, dry_run=dry_run)

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
                if row.deleted_at is not None:
                    report.skipped_deleted += 1
                    continue
                extraction = self._extraction(row, reextract, report, to_save)
                if extraction is None:
                    continue  # no cache and no extractor: the outbox will fill it in
                projection = build_projection(str(row.memory_id), row.memory_user_id,
                                              int(row.version), int(row.importance),
                                              row.content_hash, extraction)
                batch.append(projection)
            if to_save:  # one round trip for the page's fresh extractions
                with self.db.transaction() as conn:
                    conn.execute(q("save_extraction"), to_save)
            for i in range(0, len(batch), 500):
                self.graph.project(batch[i:i + 500])
            report.projected += len(batch)
            after = str(rows[-1].memory_id)
            if progress:
                progress("rebuild", len(rows))
            if len(rows) < self.page_size:
                break
        report.seconds = time.monotonic() - started
        log.info("rebuild done", extra={"action": "sync.rebuild", "user_id": user_id,
                                        **report.summary()})
        return report

    def _extraction(self, row: Row[Any], reextract: bool, report: RebuildReport,
                    to_save: list[dict[str, Any]]) -> Extraction | None:
        """The current cache unless ``reextract``; a fresh result is queued in ``to_save``."""
        m = row._mapping
        cached = cached_extraction(m)
        if (cached is not None and not reextract) or self.extractor is None:
            return cached
        extraction = self.extractor.extract(m["content"])
        report.extracted += 1
        to_save.append(extraction_params(m["memory_id"], m["content_hash"],
                                         self.extractor.identity, extraction))
        return extraction
