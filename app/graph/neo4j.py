"""Neo4j implementation of the graph store, over the official driver and named Cypher."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import neo4j
import neo4j.exceptions as nx
from neo4j import GraphDatabase, ManagedTransaction

from app import metrics, statements
from app.errors import (
    ConfigError,
    GraphConflict,
    GraphError,
    GraphMisconfigured,
    GraphUnavailable,
)
from app.graph.base import (
    EntityLink,
    EntityMentions,
    EntityRow,
    GraphCounts,
    GraphMemory,
    MemoryProjection,
    Neighbourhood,
    Neighbours,
    ProjectResult,
    RelatedMemory,
    RelationRow,
)
from app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@cache
def cypher() -> dict[str, str]:
    """Every named Cypher statement."""
    return statements.load(Path(__file__).parent / "queries.cypher", comment="//")


def c(name: str) -> str:
    """The named Cypher statement."""
    return cypher()[name]


# Errors that a concurrent transaction can cause and a retry clears: an entity MERGEd by this
# batch and deleted as an orphan by another batch that committed first.
_RACE_CODES = ("Neo.ClientError.Statement.EntityNotFound",)
# The server refuses us until someone changes a setting (or a permission).
_MISCONFIGURED_CODES = ("Neo.ClientError.Database.DatabaseNotFound",
                        "Neo.ClientError.Security.Forbidden")


def convert(exc: Exception) -> GraphError:
    """Map a driver error onto our tree.

    - GraphMisconfigured: a refused login, a wrong database or a missing permission.
    - GraphUnavailable (an outage of Neo4j, feeds its breaker): no connection, a restart, no
      writable leader (a failover), a read-only database, a login rate limit.
    - GraphConflict (the row's, spends an attempt): deadlocks and other transient errors of one
      transaction, and the entity race; a retry clears them.
    - GraphError: anything else (a constraint violation, a bad statement).
    """
    message = f"Neo4j {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    code = getattr(exc, "code", None) or ""
    if isinstance(exc, nx.AuthError | nx.ConfigurationError) or code in _MISCONFIGURED_CODES:
        return GraphMisconfigured(message)
    if isinstance(exc, nx.DatabaseUnavailable | nx.NotALeader | nx.ForbiddenOnReadOnlyDatabase
                  | nx.ServiceUnavailable | nx.SessionExpired | nx.ConnectionPoolError
                  | OSError) or code == "Neo.ClientError.Security.AuthenticationRateLimit":
        return GraphUnavailable(message)
    if isinstance(exc, nx.TransientError) or code in _RACE_CODES:
        return GraphConflict(message)
    if isinstance(exc, nx.DriverError):  # the driver lost its footing: treat as unreachable
        return GraphUnavailable(message)
    return GraphError(message)


@dataclass(frozen=True)
class DriverTimeouts:
    """Driver time bounds well inside a lease, so a worker never blocks past its rows' lease.

    The driver's own retries stay short: the outbox row keeps the durable schedule, and the
    breaker stops calls while Neo4j is out. A connect and a retrying transaction take at most
    a tenth of the lease each (capped at 5 s), the wait for a pooled connection a fifth (capped
    at 10 s): with the default 60 s lease, 5, 5 and 10 s.
    """

    connect: float
    transaction_retry: float
    acquisition: float

    @classmethod
    def for_lease(cls, lease_seconds: float) -> DriverTimeouts:
        step = max(0.5, min(5.0, lease_seconds / 10))
        return cls(step, step, max(1.0, min(10.0, lease_seconds / 5)))


class Neo4jGraph:
    """The projection in Neo4j. Each batch is one write transaction (atomic)."""

    def __init__(self, settings: Settings, *, driver: neo4j.Driver | None = None) -> None:
        self.database = settings.neo4j_database
        bounds = DriverTimeouts.for_lease(settings.lease_seconds)
        try:
            self.driver = driver or GraphDatabase.driver(
                settings.neo4j_uri,
                auth=(settings.neo4j_user, settings.neo4j_password.get_secret_value()),
                max_connection_pool_size=50,
                connection_timeout=bounds.connect,
                max_transaction_retry_time=bounds.transaction_retry,
                connection_acquisition_timeout=bounds.acquisition,
                # A label, relationship type or property no node has yet (every one of them on
                # an empty graph) draws an UNRECOGNIZED warning per query, which the driver
                # logs as a multi-kilobyte WARNING: expected here, so the server is asked not to
                # send them. Other classes (performance, deprecation) still reach the log.
                notifications_disabled_classifications=[
                    neo4j.NotificationDisabledClassification.UNRECOGNIZED],
            )
        except (nx.ConfigurationError, ValueError) as exc:  # a malformed URI or auth
            raise ConfigError(f"NEO4J_URI: {exc}") from None
        self._schema_ready = False

    def _run(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except (nx.Neo4jError, nx.DriverError, OSError) as exc:
            raise convert(exc) from exc

    def _write(self, fn: Callable[[ManagedTransaction], T]) -> T:
        runs = 0

        def counted(tx: ManagedTransaction) -> T:
            # The driver runs the function again after a transient error: count those.
            nonlocal runs
            runs += 1
            if runs > 1:
                metrics.NEO4J_RETRIES.inc()
            return fn(tx)

        def work() -> T:
            with self.driver.session(database=self.database) as session:
                return session.execute_write(counted)
        return self._run(work)

    def _read(self, fn: Callable[[ManagedTransaction], T]) -> T:
        def work() -> T:
            with self.driver.session(database=self.database) as session:
                return session.execute_read(fn)
        return self._run(work)

    def ensure_schema(self) -> None:
        for statement in c("schema").split(";"):
            if statement.strip():
                self._run(lambda s=statement: self.driver.execute_query(  # type: ignore[misc]
                    s.strip(), database_=self.database))
        self._schema_ready = True

    def project(self, batch: list[MemoryProjection]) -> ProjectResult:
        if not batch:
            return ProjectResult()
        if not self._schema_ready:  # e.g. Neo4j was down when the worker started
            self.ensure_schema()
        rows = [p.as_params() for p in sorted(batch, key=lambda p: p.id)]

        def tx(t: ManagedTransaction) -> tuple[list[str], int]:
            records = list(t.run(c("project_batch"), rows=rows))
            applied = [r["id"] for r in records]
            old = sorted({k for r in records for k in r["old_keys"]})
            removed = 0
            if old:
                removed = t.run(c("remove_orphan_entities"), keys=old).single(strict=True)[
                    "removed"]
            return applied, int(removed)

        applied, removed = self._write(tx)
        done = set(applied)
        return ProjectResult(applied=applied, fenced=[p.id for p in batch if p.id not in done],
                             orphans_removed=removed)

    def snapshot(self, ids: list[str]) -> dict[str, GraphMemory]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("memory_snapshot"), ids=ids))

        return {
            r["id"]: GraphMemory(r["id"], r["user_id"], r["version"], r["deleted"],
                                 frozenset(r["entity_keys"]))
            for r in self._read(tx)
        }

    def prune_tombstones(self, ids: list[str]) -> int:
        def tx(t: ManagedTransaction) -> int:
            return int(t.run(c("prune_tombstones"), ids=ids).single(strict=True)["removed"])

        return self._write(tx) if ids else 0

    def counts(self) -> GraphCounts:
        def tx(t: ManagedTransaction) -> Any:
            return t.run(c("counts")).single(strict=True)

        r = self._read(tx)
        return GraphCounts(r["memories"], r["tombstones"], r["entities"], r["mentions"],
                           r["relations"])

    def memory_page(self, after: str, limit: int, user_id: str | None = None
                    ) -> list[GraphMemory]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("memory_page"), after=after, limit=limit, user_id=user_id))

        return [GraphMemory(r["id"], r["user_id"], r["version"], r["deleted"])
                for r in self._read(tx)]

    def orphan_entities(self, user_id: str | None, limit: int) -> list[tuple[str, str]]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("orphan_entities"), user_id=user_id, limit=limit))

        return [(r["key"], r["user_id"]) for r in self._read(tx)]

    def cross_user_edges(self, user_id: str | None, limit: int) -> list[dict[str, str]]:
        def tx(t: ManagedTransaction) -> list[dict[str, str]]:
            found = [
                {"memory_id": r["memory_id"], "user_id": r["user_id"],
                 "other_user": r["other_user"], "detail": f"MENTIONS {r['entity_key']}"}
                for r in t.run(c("cross_user_mentions"), user_id=user_id, limit=limit)
            ]
            found += [
                {"memory_id": r["memory_id"], "user_id": r["user_id"],
                 "other_user": r["other_user"], "detail": f"RELATED {r['source']}->{r['target']}"}
                for r in t.run(c("cross_user_relations"), user_id=user_id, limit=limit)
            ]
            return found

        return self._read(tx)

    def remove_memories(self, ids: list[str]) -> int:
        def tx(t: ManagedTransaction) -> int:
            keys = sorted({k for r in t.run(c("remove_memories"), ids=ids) for k in r["keys"]})
            if keys:
                t.run(c("remove_orphan_entities"), keys=keys).consume()
            return len(ids)

        return self._write(tx) if ids else 0

    def remove_orphan_entities(self, keys: list[str]) -> int:
        def tx(t: ManagedTransaction) -> int:
            return int(t.run(c("remove_orphan_entities"), keys=keys).single(strict=True)[
                "removed"])

        return self._write(tx) if keys else 0

    def remove_cross_user_edges(self) -> None:
        self._write(lambda t: t.run(c("remove_cross_user_edges")).consume())

    def clear(self, user_id: str | None) -> None:
        # CALL ... IN TRANSACTIONS needs an auto-commit transaction (session.run).
        def work() -> None:
            with self.driver.session(database=self.database) as session:
                if user_id is None:
                    session.run(c("clear_all")).consume()
                else:
                    session.run(c("clear_user"), user_id=user_id).consume()
        self._run(work)

    def user_graph(self, user_id: str, limit: int) -> list[tuple[str, int, list[str]]]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("user_graph"), user_id=user_id, limit=limit))

        return [(r["id"], r["version"], list(r["entities"])) for r in self._read(tx)]

    def related(self, user_id: str, ids: list[str], limit: int) -> dict[str, Neighbours]:
        if not ids:
            return {}

        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("related"), ids=ids, user_id=user_id, limit=limit))

        return {r["id"]: Neighbours(int(r["version"]), bool(r["deleted"]), tuple(
            RelatedMemory(o["id"], int(o["importance"]), tuple(sorted(
                (EntityRow(s["key"], s["name"], s["type"]) for s in o["shared"]),
                key=lambda e: e.key)))
            for o in r["related"])) for r in self._read(tx)}

    def entity_mentions(self, user_id: str, query: str | None, type_: str | None,
                        limit: int) -> list[EntityMentions]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("entity_mentions"), user_id=user_id, needle=query,
                              type=type_, limit=limit))

        return [EntityMentions(EntityRow(r["key"], r["name"], r["type"]), int(r["mentions"]))
                for r in self._read(tx)]

    def entity_memories(self, user_id: str, key: str, limit: int) -> list[str]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("entity_memories"), user_id=user_id, key=key, limit=limit))

        return [r["id"] for r in self._read(tx)]

    def entity_neighbourhood(self, user_id: str, key: str, limit: int) -> list[EntityLink]:
        def tx(t: ManagedTransaction) -> list[Any]:
            return list(t.run(c("entity_neighbourhood"), user_id=user_id, key=key, limit=limit))

        return [EntityLink(EntityRow(r["key"], r["name"], r["type"]), r["predicate"],
                           int(r["memories"])) for r in self._read(tx)]
    def neighbourhood(self, user_id: str, memory_id: str, limit: int) -> Neighbourhood | None:
        def tx(t: ManagedTransaction) -> Any:
            return t.run(c("memory_neighbourhood"), user_id=user_id, memory_id=memory_id,
                         limit=limit).single()

        r = self._read(tx)
        if r is None:
            return None

        def rows(items: list[dict[str, str]]) -> tuple[EntityRow, ...]:
            return tuple(sorted((EntityRow(i["key"], i["name"], i["type"]) for i in items),
                                key=lambda e: e.key))

        return Neighbourhood(
            memory_id, rows(r["entities"]), rows(r["neighbours"]),
            tuple(sorted((RelationRow(i["source"], i["target"], i["predicate"])
                          for i in r["relations"]),
                         key=lambda x: (x.source, x.target, x.predicate))))

    def ping(self) -> None:
        self._run(self.driver.verify_connectivity)

    def close(self) -> None:
        self.driver.close()
