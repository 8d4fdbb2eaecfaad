"""What an operator watches, shared by ``memctl``, the admin HTTP API and the admin console:
health, stats, the users there are, and one memory as Postgres and the graph both see it.

Dead letters and outbox transitions belong to ``app.outbox``; consistency operations to
``app.consistency``. This module only reads.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app import queue
from app.breakers import Breakers, BreakerStatus
from app.db.connector import Database
from app.db.migrations import code_heads
from app.domain import MAX_PAGE, Memory
from app.errors import MemoryPersistenceError, StoreError, StoreUnavailable, ValidationError
from app.graph.base import GraphStore, Neighbourhood
from app.outbox import DeadLetterFilter, Outbox
from app.projection import GraphStatus, graph_status
from app.settings import Settings
from app.store import MemoryService
from app.validation import check_text

log = logging.getLogger(__name__)


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
    breakers: list[BreakerStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reasons": self.reasons,
            "servers": {name: dataclasses.asdict(p)
                        for name, p in (("postgres", self.postgres), ("neo4j", self.neo4j),
                                        ("redis", self.redis))},
            "outbox": self.outbox, "dead_letters": self.dead_letters,
            "breakers": {b.name: b.as_dict() for b in self.breakers},
        }


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str | None = None
    revision: str | None = None
    # Why not: the database is unreachable, refuses our settings, or is not at this code's head.
    cause: Literal["unavailable", "misconfigured", "not_migrated"] | None = None


@dataclass(frozen=True)
class MemoryView:
    """One live memory as Postgres has it, where its delivery stands, and what the graph has.

    ``graph_status`` and ``neighbourhood`` are None when the graph could not be read
    (``graph_error`` says why); the rest comes from Postgres alone.
    """

    memory: Memory
    in_transit: list[dict[str, Any]]  # outbox rows still pending or in flight
    dead_letters: list[dict[str, Any]]  # of this memory, newest first, any status
    graph_status: GraphStatus | None = None
    graph_version: int | None = None
    neighbourhood: Neighbourhood | None = None
    graph_error: str | None = None


def _probe(check: Callable[[], object]) -> Probe:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:  # any failure means unreachable; the reason is reported
        return Probe(False, None, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Probe(True, round((time.monotonic() - started) * 1000, 2))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


class AdminService:
    """Health, readiness and the numbers an operator watches."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox, breakers: Breakers,
                 graph: Callable[[], GraphStore] | None = None,
                 memories: Callable[[], MemoryService] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.breakers = breakers
        # The graph is built on first use: commands that need Postgres only never start a
        # Neo4j driver.
        self._graph = graph
        self._memories = memories

    def health(self) -> Health:
        """Reachability and latency of each server, outbox backlog and lag, dead letters, and
        the dependency breakers.

        ``down`` when Postgres is unreachable (writes fail); ``degraded`` when only Neo4j or
        Redis is, or a breaker is not closed (writes still succeed, the graph lags).
        """
        pg = _probe(self.db.ping)
        graph = self._graph
        neo = _probe(lambda: graph().ping()) if graph is not None else Probe(
            False, None, "no graph configured")
        rds = _probe(lambda: queue.ping(self.settings))
        reasons = [f"{name} unreachable: {p.error}" for name, p in
                   (("postgres", pg), ("neo4j", neo), ("redis", rds)) if not p.ok]
        health = Health("down" if not pg.ok else "degraded" if reasons else "ok", reasons,
                        pg, neo, rds)
        if pg.ok:
            try:
                health.outbox = dataclasses.asdict(self.outbox.stats())
                health.dead_letters = self.outbox.dead_letter_counts().open
                health.breakers = self.breakers.report()
            except MemoryPersistenceError as exc:
                health.status = "down"
                health.reasons.append(f"postgres query failed: {exc}")
                return health
            for b in health.breakers:
                if not b.closed:
                    health.reasons.append(breaker_reason(b))
                    health.status = "degraded"
        return health

    def readiness(self) -> Readiness:
        """Ready to serve: Postgres answers and its schema is at this code's Alembic head.

        Never touches Neo4j or Redis: writes only need Postgres.
        """
        not_migrated = "the database is not migrated: run 'memctl migrate'"
        try:
            self.db.ping()  # reachable, and our login and database accepted?
        except StoreUnavailable:
            return Readiness(False, "the database is unavailable", cause="unavailable")
        except StoreError:
            return Readiness(False, "the database refuses the configured credentials or "
                                    "database name", cause="misconfigured")
        try:
            revision = self.db.scalar("schema_revision")
        except StoreUnavailable:
            return Readiness(False, "the database is unavailable", cause="unavailable")
        except StoreError:  # no alembic_version table: never migrated
            return Readiness(False, not_migrated, cause="not_migrated")
        if revision is None:
            return Readiness(False, not_migrated, cause="not_migrated")
        heads = _heads()
        if revision not in heads:
            return Readiness(False, f"the database schema is at {revision}, this code expects "
                                    f"{', '.join(sorted(heads))}: run 'memctl migrate'",
                             str(revision), cause="not_migrated")
        return Readiness(True, None, str(revision))

    def stats(self) -> dict[str, Any]:
        """Everything an operator watches, in one dictionary."""
        memories = self.db.one("memory_stats", {"user_id": None})
        last = self.db.one("last_check_run")
        assert memories is not None
        graph: dict[str, Any] | None = None
        if self._graph is not None:
            try:
                graph = dataclasses.asdict(self._graph().counts())
            except MemoryPersistenceError as exc:
                graph = {"error": str(exc)}
        return {
            "memories": {k: memories[k] for k in ("live", "deleted", "awaiting_extraction",
                                                  "users")},
            "outbox": dataclasses.asdict(self.outbox.stats()),
            "dead_letters": dataclasses.asdict(self.outbox.dead_letter_counts()),
            "inconsistencies": {r["kind"]: r["n"] for r in self.db.all("inconsistency_stats")},
            "graph": graph,
            "last_check": _plain(last) if last is not None else None,
        }


    def users(self, prefix: str | None = None, *, after: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        """Users with live memories, by id (keyset: pass the last ``user_id`` as ``after``),
        each with its count of memories and its last change."""
        return [_plain(r) for r in self.db.all("list_users", _users_args(prefix, after, limit))]

    def memory_view(self, user_id: str, memory_id: uuid.UUID | str,
                    neighbours: int = 30) -> MemoryView:
        """One live memory of one user with its delivery and graph state (NotFound else).

        The graph status compares the graph's node with the memory's version; the
        neighbourhood is the memory's entities and their one-hop RELATED neighbours. Neo4j
        being down leaves both None and says why.
        """
        if self._memories is None:
            raise RuntimeError("this AdminService was built without a memory service")
        memory = self._memories().get(user_id, memory_id)
        mid = str(memory.id)
        in_transit = self.outbox.in_transit(memory.id, memory.user_id)
        dead = self.outbox.dead_letters(DeadLetterFilter(None, memory.user_id,
                                                         memory_id=memory.id), limit=20).items
        if self._graph is None:
            return MemoryView(memory, in_transit, dead, graph_error="no graph configured")
        try:
            graph = self._graph()
            node = graph.snapshot([mid]).get(mid)
            around = graph.neighbourhood(memory.user_id, mid, neighbours)
        except MemoryPersistenceError as exc:
            return MemoryView(memory, in_transit, dead, graph_error=str(exc))
        return MemoryView(memory, in_transit, dead, graph_status(memory.version, node),
                          node.version if node is not None else None, around)


def breaker_reason(b: BreakerStatus) -> str:
    """One line naming an open breaker, since when, what it holds back and why."""
    since = f" since {b.opened_at.isoformat(timespec='seconds')}" if b.opened_at else ""
    what = "misconfigured" if b.state == "misconfigured" else f"breaker {b.state}"
    return (f"{b.name} {what}{since}, {b.held} rows held: "
            f"{(b.last_error or 'no error recorded')[:300]}")


@functools.cache
def _heads() -> frozenset[str]:
    return code_heads()


def _users_args(prefix: str | None, after: str | None, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be from 1 to {MAX_PAGE}", "limit")
    return {"prefix": check_text(prefix, "prefix", max_chars=128) if prefix else None,
            "after": check_text(after, "after", max_chars=128) if after else None,
            "limit": limit}
