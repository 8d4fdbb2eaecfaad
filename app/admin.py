"""The admin service shared by ``memctl`` and the admin HTTP API: stats, health, dead letters."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis as redis_lib

from app.db.connector import Database
from app.db.sql import q
from app.errors import (
    MemoryPersistenceError,
    NotFound,
    StoreError,
    StoreUnavailable,
    ValidationError,
)
from app.graph.projector import GraphStore
from app.settings import Settings

log = logging.getLogger(__name__)

DeadStatus = Literal["dead", "replayed", "discarded"]
MAX_PAGE = 500


@dataclass(frozen=True)
class DeadLetterFilter:
    status: DeadStatus | None = "dead"
    user_id: str | None = None
    event_type: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Probe:
    ok: bool
    latency_ms: float | None
    error: str | None = None


@dataclass
class Health:
    status: Literal["ok", "degraded", "down"]
    reasons: list[str]
    postgres: Probe
    neo4j: Probe
    redis: Probe
    outbox: dict[str, Any] = field(default_factory=dict)
    dead_letters: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reasons": self.reasons,
            "servers": {name: {"ok": p.ok, "latency_ms": p.latency_ms, "error": p.error}
                        for name, p in (("postgres", self.postgres), ("neo4j", self.neo4j),
                                        ("redis", self.redis))},
            "outbox": self.outbox, "dead_letters": self.dead_letters,
        }


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str | None = None
    revision: str | None = None


@functools.cache
def code_heads() -> frozenset[str] | None:
    """The Alembic head revisions this code expects, or None where the scripts are not shipped."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.db.migrations import ROOT

    try:
        return frozenset(ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
                         .get_heads())
    except Exception as exc:  # missing alembic.ini or versions folder: check the table only
        log.warning("alembic scripts unavailable: %s", exc, extra={"action": "admin.no_scripts"})
        return None


def _probe(check: Callable[[], object]) -> Probe:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:  # any failure means unreachable; the reason is reported
        return Probe(False, None, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Probe(True, round((time.monotonic() - started) * 1000, 2))


def _row(r: Any) -> dict[str, Any]:
    out = dict(r._mapping)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif k in ("memory_id",) and v is not None:
            out[k] = str(v)
    return out


class AdminService:
    """What an operator needs; every write here is recorded with the acting admin."""

    def __init__(self, settings: Settings, db: Database, graph: GraphStore | None = None) -> None:
        self.settings = settings
        self.db = db
        self.graph = graph

    # -- health and stats -----------------------------------------------------------------

    def _redis_ping(self) -> None:
        client = redis_lib.Redis.from_url(self.settings.redis_url, socket_timeout=2,
                                          socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    def health(self) -> Health:
        """Reachability and latency of each server, outbox backlog and lag, dead letters.

        ``down`` when Postgres is unreachable (writes fail); ``degraded`` when only Neo4j or
        Redis is (writes still succeed, the graph lags).
        """
        pg = _probe(self.db.ping)
        neo = _probe(self.graph.ping) if self.graph is not None else Probe(
            False, None, "no graph configured")
        rds = _probe(self._redis_ping)
        reasons = [f"{name} unreachable: {p.error}" for name, p in
                   (("postgres", pg), ("neo4j", neo), ("redis", rds)) if not p.ok]
        health = Health("down" if not pg.ok else "degraded" if reasons else "ok", reasons,
                        pg, neo, rds)
        if pg.ok:
            try:
                health.outbox = self.outbox_stats()
                dead = self.db.one("dead_letter_stats")
                health.dead_letters = int(dead.open) if dead else 0
            except MemoryPersistenceError as exc:
                health.status = "down"
                health.reasons.append(f"postgres query failed: {exc}")
        return health

    def readiness(self) -> Readiness:
        """Ready to serve: Postgres answers and its schema is at this code's Alembic head.

        Never touches Neo4j or Redis: writes only need Postgres.
        """
        try:
            row = self.db.one("schema_revision")
        except StoreUnavailable:
            return Readiness(False, "the database is unavailable")
        except StoreError:
            return Readiness(False, "the database is not migrated: run 'memctl migrate'")
        revision = str(row.version_num) if row is not None else None
        if revision is None:
            return Readiness(False, "the database is not migrated: run 'memctl migrate'")
        heads = code_heads()
        if heads is not None and revision not in heads:
            return Readiness(False, f"the database schema is at {revision}, this code expects "
                                    f"{', '.join(sorted(heads))}: run 'memctl migrate'",
                             revision)
        return Readiness(True, None, revision)

    def outbox_stats(self) -> dict[str, Any]:
        row = self.db.one("outbox_stats")
        assert row is not None
        return {"pending": row.pending, "in_flight": row.in_flight, "done": row.done,
                "dead": row.dead, "expired_leases": row.expired_leases,
                "lag_seconds": round(float(row.oldest_open_seconds), 3)}

    def stats(self) -> dict[str, Any]:
        """Everything an operator watches, in one dictionary."""
        memories = self.db.one("memory_stats", {"user_id": None})
        dead = self.db.one("dead_letter_stats")
        last = self.db.one("last_check_run")
        assert memories is not None and dead is not None
        graph: dict[str, Any] | None = None
        if self.graph is not None:
            try:
                c = self.graph.counts()
                graph = {"memories": c.memories, "tombstones": c.tombstones,
                         "entities": c.entities, "mentions": c.mentions,
                         "relations": c.relations}
            except MemoryPersistenceError as exc:
                graph = {"error": str(exc)}
        return {
            "memories": {"live": memories.live, "deleted": memories.deleted,
                         "awaiting_extraction": memories.awaiting_extraction,
                         "users": memories.users},
            "outbox": self.outbox_stats(),
            "dead_letters": {"open": dead.open, "replayed": dead.replayed,
                             "discarded": dead.discarded},
            "inconsistencies": {r.kind: r.n for r in self.db.all("inconsistency_stats")},
            "graph": graph,
            "last_check": _row(last) if last is not None else None,
        }

    # -- dead letters ---------------------------------------------------------------------

    def list_dead_letters(self, filters: DeadLetterFilter | None = None, *, limit: int = 50,
                          before_id: int | None = None) -> list[dict[str, Any]]:
        """A page of dead letters, newest first; pass the last id as ``before_id``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be from 1 to {MAX_PAGE}", "limit")
        return [_row(r) for r in self._dead_letters(filters or DeadLetterFilter(), limit,
                                                     before_id)]

    def _dead_letters(self, f: DeadLetterFilter, limit: int,
                      before_id: int | None = None) -> list[Any]:
        return self.db.all("list_dead_letters", {
            "status": f.status, "user_id": f.user_id, "event_type": f.event_type,
            "error": f.error, "since": f.since, "until": f.until, "before_id": before_id,
            "limit": limit})

    def get_dead_letter(self, dead_letter_id: int) -> dict[str, Any]:
        row = self.db.one("get_dead_letter", {"id": dead_letter_id})
        if row is None:
            raise NotFound(f"no dead letter {dead_letter_id}")
        return _row(row)

    def replay(self, *, ids: list[int] | None = None, filters: DeadLetterFilter | None = None,
               everything: bool = False, actor: str = "admin") -> list[int]:
        """Send dead letters back to the outbox (attempts reset); returns the ids replayed.

        Exactly one of ``ids``, ``filters`` or ``everything`` chooses them.
        """
        chosen = sum(x is not None and x is not False for x in (ids, filters, everything))
        if chosen != 1:
            raise ValidationError("choose dead letters by ids, by a filter, or all")
        if ids is None:
            # Only open dead letters can be replayed, whatever status the filter names.
            f = dataclasses.replace(filters or DeadLetterFilter(), status="dead")
            ids = [int(r.id) for r in self._dead_letters(f, limit=1_000_000)]
        else:
            for i in ids:
                self.get_dead_letter(i)  # NotFound for an unknown id
        if not ids:
            return []
        with self.db.transaction() as conn:
            done = [int(r.id) for r in conn.execute(q("replay_dead_letters"), {
                "ids": ids, "actor": actor, "note": "replayed"}).all()]
            conn.execute(q("notify_outbox"))
        return sorted(done)

    def discard(self, dead_letter_id: int, reason: str, actor: str = "admin") -> None:
        """Close a dead letter without replaying it; the reason is kept."""
        if not reason.strip():
            raise ValidationError("a reason is required to discard a dead letter", "reason")
        self.get_dead_letter(dead_letter_id)
        row = self.db.one("discard_dead_letter", {"id": dead_letter_id, "reason": reason,
                                                  "actor": actor})
        if row is None:
            raise ValidationError(f"dead letter {dead_letter_id} is already resolved", "id")
