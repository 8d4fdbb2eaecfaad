"""The projection step against real Postgres and Neo4j: convergence, fencing, dead letters."""

from __future__ import annotations

import itertools
import re
import uuid
from typing import Any

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.domain import Entity, Extraction, Relation
from app.errors import ExtractionError, ExtractionRetryable, GraphConflict, GraphUnavailable
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from app.testing import FailingGraph
from tests.conftest import drain


class WordsExtractor:
    """Capitalised words are people; deterministic and obvious, so tests read clearly."""

    identity = "test-words/1"

    def __init__(self) -> None:
        self.calls = 0
        self.poison = "POISON"

    def extract(self, text: str) -> Extraction:
        self.calls += 1
        if self.poison in text:
            raise ExtractionError("this content always fails")
        if "FLAKY" in text and self.calls % 2 == 1:
            raise ExtractionRetryable("flaky")
        names = list(dict.fromkeys(re.findall(r"\b[A-Z][a-z]+\b", text)))
        entities = [Entity(name=n, type="person") for n in names]
        relations = [Relation(source=a, target=b, predicate="co_mentioned")
                     for a, b in itertools.pairwise(entities)]
        return Extraction(entities=entities, relations=relations)


@pytest.fixture
def extractor() -> WordsExtractor:
    return WordsExtractor()


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph,
              extractor: WordsExtractor) -> Projector:
    return Projector(db, Outbox(settings, db), graph, extractor)


def open_ids(db: Database) -> list[int]:
    with db.engine.begin() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT id FROM outbox WHERE status IN ('pending', 'in_flight') ORDER BY id"))]


def outbox(db: Database) -> list[Any]:
    with db.engine.begin() as conn:
        return list(conn.execute(text("SELECT * FROM outbox ORDER BY id")).all())


def graph_memory(driver: Driver, memory_id: uuid.UUID) -> dict[str, Any] | None:
    records, _, _ = driver.execute_query(
        "MATCH (m:Memory {id: $id}) OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity) "
        "RETURN m.version AS version, m.deleted AS deleted, m.user_id AS user_id, "
        "collect(e.name) AS names", id=str(memory_id))
    if not records:
        return None
    state = dict(records[0])
    state["names"] = sorted(state["names"])
    return state




def test_store_update_delete_converge(service: MemoryService, projector: Projector,
                                      db: Database, neo4j_driver: Driver) -> None:
    m, _ = service.store("alice", "lunch with John and Sarah")
    drain(projector, db)
    assert graph_memory(neo4j_driver, m.id) == {
        "version": 1, "deleted": False, "user_id": "alice", "names": ["John", "Sarah"]}

    service.update("alice", m.id, content="call with Peter")
    drain(projector, db)
    state = graph_memory(neo4j_driver, m.id)
    assert state is not None and state["version"] == 2 and state["names"] == ["Peter"]
    records, _, _ = neo4j_driver.execute_query("MATCH (e:Entity) RETURN e.name AS n")
    assert [r["n"] for r in records] == ["Peter"]  # John and Sarah were orphans: removed

    service.delete("alice", m.id)
    drain(projector, db)
    state = graph_memory(neo4j_driver, m.id)
    assert state is not None and state["deleted"] is True and state["version"] == 3
    records, _, _ = neo4j_driver.execute_query("MATCH (e:Entity) RETURN count(e) AS n")
    assert records[0]["n"] == 0
    assert {r.status for r in outbox(db)} == {"done"}


def test_rows_are_done_only_after_the_graph_has_them(service: MemoryService, db: Database,
                                                     projector: Projector,
                                                     neo4j_driver: Driver) -> None:
    m, _ = service.store("alice", "meeting with John")
    down = FailingGraph(projector.graph, lambda _: GraphUnavailable("Neo4j is down"))
    failing = Projector(db, projector.outbox, down, projector.extractor)
    assert failing.process(open_ids(db)).held == 1
    row = outbox(db)[0]
    # An outage of Neo4j is not the row's failure: back to pending, no attempt spent.
    assert row.status == "pending" and row.attempts == 0 and row.errors == []
    assert "Neo4j is down" in row.last_error and row.next_attempt_at > row.created_at
    assert graph_memory(neo4j_driver, m.id) is None
    drain(projector, db)
    assert outbox(db)[0].status == "done"
    assert graph_memory(neo4j_driver, m.id) is not None


def test_duplicate_delivery_is_harmless(service: MemoryService, projector: Projector,
                                        db: Database, neo4j_driver: Driver) -> None:
    m, _ = service.store("alice", "dinner with Anna")
    ids = open_ids(db)
    projector.process(ids)
    outcome = projector.process(ids)  # the same message again
    assert outcome.skipped == len(ids)
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (m:Memory {id: $id})-[r:MENTIONS]->() RETURN count(r) AS n", id=str(m.id))
    assert records[0]["n"] == 1


def test_an_old_event_after_a_newer_one_changes_nothing(service: MemoryService,
                                                        projector: Projector, db: Database,
                                                        neo4j_driver: Driver) -> None:
    m, _ = service.store("alice", "walk with Bob")
    first = open_ids(db)
    service.update("alice", m.id, content="walk with Carol")
    second = [i for i in open_ids(db) if i not in first]
    projector.process(second)  # the newer event arrives first
    # ... it projected the current state and finished the older row too (version <= 2).
    assert [r.status for r in outbox(db)] == ["done", "done"]
    with db.engine.begin() as conn:  # force the old row to be delivered late anyway
        conn.execute(text("UPDATE outbox SET status = 'pending' WHERE id = :id"), {"id": first[0]})
    projector.process(first)
    state = graph_memory(neo4j_driver, m.id)
    assert state is not None and state["version"] == 2 and state["names"] == ["Carol"]


def test_a_late_stale_event_does_not_resurrect_a_deleted_memory(
        service: MemoryService, projector: Projector, db: Database, graph: Neo4jGraph,
        neo4j_driver: Driver) -> None:
    from app.graph.base import EntityRow, MemoryProjection

    m, _ = service.store("alice", "coffee with Dave")
    service.delete("alice", m.id)
    drain(projector, db)
    # A stale projection (as a worker holding version 1 in memory would write it) is refused.
    result = graph.project([MemoryProjection(
        id=str(m.id), user_id="alice", version=1, deleted=False,
        entities=(EntityRow("alice|person|dave", "Dave", "person"),))])
    assert result.fenced == [str(m.id)]
    state = graph_memory(neo4j_driver, m.id)
    assert state is not None and state["deleted"] is True and state["names"] == []
    records, _, _ = neo4j_driver.execute_query("MATCH (e:Entity) RETURN count(e) AS n")
    assert records[0]["n"] == 0


def test_poison_event_becomes_a_dead_letter_others_converge(
        service: MemoryService, projector: Projector, db: Database,
        neo4j_driver: Driver) -> None:
    good, _ = service.store("alice", "tea with Emma")
    bad, _ = service.store("alice", "POISON pill from Frank")
    projector.process(open_ids(db))
    assert graph_memory(neo4j_driver, good.id) is not None
    assert graph_memory(neo4j_driver, bad.id) is None
    rows = {r.memory_id: r for r in outbox(db)}
    assert rows[good.id].status == "done"
    assert rows[bad.id].status == "dead"  # a permanent error: retrying cannot help
    with db.engine.begin() as conn:
        dead = conn.execute(text("SELECT * FROM dead_letters")).all()
    assert len(dead) == 1 and dead[0].memory_id == bad.id and dead[0].user_id == "alice"
    assert "always fails" in dead[0].last_error
    assert dead[0].errors[0]["attempt"] == 1 and dead[0].errors[0]["at"]


def test_retryable_failures_keep_their_history_then_die(
        service: MemoryService, settings: Settings, db: Database, projector: Projector) -> None:
    service.store("alice", "visit Grace")
    # A conflict of the row's own transaction (not an outage) spends the row's attempts.
    down = FailingGraph(projector.graph, lambda _: GraphConflict("deadlock detected"))
    failing = Projector(db, Outbox(settings, db), down, projector.extractor)
    for _ in range(settings.retry_max_attempts):
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET next_attempt_at = now()"))
        failing.process([r.id for r in outbox(db)])
    row = outbox(db)[0]
    assert row.status == "dead" and row.attempts == settings.retry_max_attempts
    with db.engine.begin() as conn:
        dead = conn.execute(text("SELECT * FROM dead_letters")).one()
    assert [e["attempt"] for e in dead.errors] == list(range(1, settings.retry_max_attempts + 1))
    assert all("deadlock detected" in e["error"] for e in dead.errors)


def test_extraction_is_cached_until_content_changes(service: MemoryService,
                                                    projector: Projector, db: Database,
                                                    extractor: WordsExtractor) -> None:
    m, _ = service.store("alice", "hike with Ivan")
    drain(projector, db)
    assert extractor.calls == 1
    service.update("alice", m.id, importance=9)  # content unchanged: reuse the cached result
    drain(projector, db)
    assert extractor.calls == 1
    service.update("alice", m.id, content="hike with Judy")
    drain(projector, db)
    assert extractor.calls == 2
    with db.engine.begin() as conn:
        row = conn.execute(text("SELECT entities, extractor FROM memories")).one()
    assert row.extractor == "test-words/1"
    assert row.entities["entities"] == [{"name": "Judy", "type": "person"}]


def test_users_graphs_never_touch(service: MemoryService, projector: Projector, db: Database,
                                  neo4j_driver: Driver) -> None:
    service.store("alice", "project with Kate")
    b, _ = service.store("bob", "project with Kate")
    drain(projector, db)
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (e:Entity) RETURN e.user_id AS u, e.name AS n ORDER BY u")
    assert [(r["u"], r["n"]) for r in records] == [("alice", "Kate"), ("bob", "Kate")]
    cross, _, _ = neo4j_driver.execute_query(
        "MATCH (m:Memory)-[:MENTIONS]->(e:Entity) WHERE m.user_id <> e.user_id "
        "RETURN count(*) AS n")
    assert cross[0]["n"] == 0
    service.delete("bob", b.id)
    drain(projector, db)
    records, _, _ = neo4j_driver.execute_query("MATCH (e:Entity) RETURN e.user_id AS u")
    assert [r["u"] for r in records] == ["alice"]
