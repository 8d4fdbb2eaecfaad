"""Two projections racing on one entity: one removes it as an orphan, the other mentions it.

DESIGN (Graph): "Concurrent batches touch shared entities ... treat Neo4j's transient errors as
retryable." Here worker 1 projects memory A's new version, which stops mentioning John Smith,
so John becomes an orphan and is deleted in worker 1's transaction. Meanwhile worker 2
projects memory B, which starts mentioning John: its MERGE finds John (still visible), then
waits for worker 1's lock. When worker 1 commits, worker 2's write fails because John is gone.
Retrying worker 2's batch would simply create John again, so the row must be retried, not
turned into a dead letter, and the graph must converge. (This test found that the row went dead
on its first attempt; fixed in commit d21e744, it now guards against a regression.)
"""

from __future__ import annotations

import threading

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph, c
from app.outbox import Outbox
from app.projection import build_projection
from app.projector import Outcome, Projector
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import wait_for
from tests.faults.conftest import (
    ENTITY_RACE_BUG,
    assert_graph_matches_postgres,
    outbox_rows,
)

pytestmark = pytest.mark.servers


@pytest.fixture
def graph(fault_settings: Settings, neo4j_driver: Driver) -> Neo4jGraph:
    g = Neo4jGraph(fault_settings, driver=neo4j_driver)
    g.ensure_schema()
    return g


def blocked_transactions(driver: Driver) -> int:
    records, _, _ = driver.execute_query(
        "SHOW TRANSACTIONS YIELD status WHERE status STARTS WITH 'Blocked' RETURN count(*) AS n")
    return int(records[0]["n"])


def drain_by_hand(projector: Projector, db: Database) -> None:
    for _ in range(10):
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'"))
        ids = [r.id for r in outbox_rows(db) if r.status in ("pending", "in_flight")]
        if not ids:
            return
        projector.process(ids)
    pytest.fail("the outbox did not drain")


def test_orphan_removal_racing_a_new_mention_is_retried_not_dead(
        fault_settings: Settings, db: Database, service: MemoryService, graph: Neo4jGraph,
        neo4j_driver: Driver) -> None:
    extractor = RuleExtractor()
    projector = Projector(db, Outbox(fault_settings, db), graph, extractor)
    a, _ = service.store("alice", "Meeting with John Smith about Q4 roadmap at Acme Corp")
    drain_by_hand(projector, db)
    a2 = service.update("alice", a.id, content="buy milk and eggs")  # A stops naming John
    b, _ = service.store("alice", "Call John Smith and Bob Jones about #hiring")
    b_row = next(r.id for r in outbox_rows(db) if r.memory_id == b.id)

    # Worker 1, mid-transaction: A v2 written, John deleted as an orphan, not yet committed.
    a_v2 = build_projection(str(a.id), "alice", a2.version, a2.importance, "hash",
                            extractor.extract(a2.content))
    session = neo4j_driver.session()
    tx = session.begin_transaction()
    outcome: dict[str, Outcome | BaseException] = {}
    try:
        records = list(tx.run(c("project_batch"), rows=[a_v2.as_params()]))
        old_keys = sorted({k for r in records for k in r["old_keys"]})
        removed = tx.run(c("remove_orphan_entities"), keys=old_keys).single(strict=True)
        assert removed["removed"] >= 1  # John Smith (with Q4 and Acme Corp)

        # Worker 2 projects B (which names John) and has to wait for worker 1's locks.
        def worker2() -> None:
            try:
                outcome["b"] = projector.process([b_row])
            except BaseException as exc:  # re-raised below
                outcome["b"] = exc

        thread = threading.Thread(target=worker2)
        thread.start()
        # (Should a fix stop worker 2 from waiting at all, it simply finishes first.)
        wait_for(lambda: blocked_transactions(neo4j_driver) >= 1 or not thread.is_alive(), 30,
                 "worker 2 to wait for worker 1's lock on the entity")
        tx.commit()
    finally:
        if not tx.closed():
            tx.rollback()
        session.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    result = outcome["b"]
    if isinstance(result, BaseException):
        raise result

    row = next(r for r in outbox_rows(db) if r.id == b_row)
    if row.status == "dead" and "EntityNotFound" in (row.last_error or ""):
        pytest.fail(f"{ENTITY_RACE_BUG}\nrow {row.id}: {row.last_error}")
    assert result.dead == 0 and row.status != "dead", row.last_error

    # Once retried, B's projection creates John again and everything converges.
    drain_by_hand(projector, db)
    assert {r.status for r in outbox_rows(db)} == {"done"}
    assert_graph_matches_postgres(db, neo4j_driver)
