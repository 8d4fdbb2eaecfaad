"""The scheduler's upkeep tasks and its single-leader lock, on the real servers."""

from __future__ import annotations

import threading

from neo4j import Driver
from sqlalchemy import text

from app.breakers import Breakers
from app.consistency import Consistency
from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.scheduler import Scheduler, Task, default_tasks
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import wait_for


def converge(settings: Settings, db: Database, graph: Neo4jGraph) -> None:
    projector = Projector(db, Outbox(settings, db), graph, RuleExtractor())
    with db.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM outbox WHERE status = 'pending'"))]
    projector.process(ids)


def test_prune_done_outbox_keeps_recent_and_open_rows(settings: Settings, db: Database) -> None:
    svc = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
    for i in range(5):
        svc.store("alice", f"note {i}")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET status = 'done', done_at = now() - interval '30 days'"
                          " WHERE id <= 3"))
        conn.execute(text("UPDATE outbox SET status = 'done', done_at = now() WHERE id = 4"))
    assert Outbox(settings, db).prune_done(limit=2) == 3  # in bounded batches
    with db.engine.begin() as conn:
        left = conn.execute(text("SELECT id, status FROM outbox ORDER BY id")).all()
    assert [(r.id, r.status) for r in left] == [(4, "done"), (5, "pending")]


def test_tombstones_are_forgotten_once_nothing_waits_for_them(
        settings: Settings, db: Database, neo4j_driver: Driver) -> None:
    graph = Neo4jGraph(settings, driver=neo4j_driver)
    graph.ensure_schema()
    svc = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
    old, _ = svc.store("alice", "Old note about Sarah Connor")
    recent, _ = svc.store("alice", "Recent note about Kyle Reese")
    waiting, _ = svc.store("alice", "Pending note about John Connor")
    converge(settings, db, graph)
    svc.delete("alice", old.id)
    svc.delete("alice", recent.id)
    converge(settings, db, graph)
    svc.delete("alice", waiting.id)  # its delete is not projected yet
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE memories SET deleted_at = now() - interval '30 days' "
                          "WHERE id IN (:a, :b)"), {"a": old.id, "b": waiting.id})
    assert Consistency(settings, db, Outbox(settings, db), graph).prune_tombstones() == 1
    with db.engine.begin() as conn:
        left = {r[0] for r in conn.execute(text("SELECT id FROM memories"))}
    assert left == {recent.id, waiting.id}
    records, _, _ = neo4j_driver.execute_query("MATCH (m:Memory) RETURN m.id AS id")
    assert {r["id"] for r in records} == {str(recent.id), str(waiting.id)}
    # The purged memory's history forgets its text; the others' history is untouched.
    with db.engine.begin() as conn:
        history = conn.execute(text("SELECT memory_id, event, content FROM memory_history "
                                    "ORDER BY memory_id, version")).all()
    assert [(r.event, r.content) for r in history if r.memory_id == old.id] == [
        ("created", None), ("deleted", None)]
    assert ("created", "Recent note about Kyle Reese") in [
        (r.event, r.content) for r in history if r.memory_id == recent.id]


def test_only_one_scheduler_acts(settings: Settings, db: Database) -> None:
    runs: list[str] = []
    schedulers = [
        Scheduler(db, [Task("probe", 0.05, lambda n=n: runs.append(n))])
        for n in ("a", "b")
    ]
    threads = [threading.Thread(target=s.run) for s in schedulers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(runs) >= 2, 20, "the leader to run its task twice")
        leaders = [s for s in schedulers if s.is_leader]
        assert len(leaders) == 1
        assert set(runs) == {"a" if leaders[0] is schedulers[0] else "b"}
        # The leader stops: the standby takes the lock over and starts acting.
        leader = leaders[0]
        standby = schedulers[1] if leader is schedulers[0] else schedulers[0]
        leader.stop()
        threads[schedulers.index(leader)].join(timeout=10)
        wait_for(lambda: standby.is_leader, 20, "the standby to take over")
    finally:
        for s in schedulers:
            s.stop()
        for t in threads:
            t.join(timeout=10)


def test_reclaim_task_returns_expired_leases(settings: Settings, db: Database) -> None:
    svc = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
    svc.store("alice", "leased and lost")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET status = 'in_flight', "
                          "lease_expires_at = now() - interval '1 minute'"))
    graph = Neo4jGraph(settings)
    try:
        outbox = Outbox(settings, db)
        tasks = default_tasks(settings, outbox, Consistency(settings, db, outbox, graph),
                              MemoryService(settings, db, outbox, HashingEmbedder(384)),
                              Breakers(settings, db, outbox), check=False)
        scheduler = Scheduler(db, tasks)
        assert "reclaim" in scheduler.tick()
    finally:
        graph.close()
    with db.engine.begin() as conn:
        row = conn.execute(text("SELECT status, attempts FROM outbox")).one()
    assert (row.status, row.attempts) == ("pending", 1)
