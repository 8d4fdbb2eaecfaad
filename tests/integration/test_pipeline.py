"""Relay + Dramatiq worker + Neo4j end to end, in-process, on the real servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from neo4j import Driver
from sqlalchemy import text

from app.breakers import Breakers
from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.queue import ProjectionQueue, build_broker, declare_project_actor
from app.relay import Relay
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import wait_for


@dataclass
class Pipeline:
    broker: RedisBroker
    relays: list[Relay]
    service: MemoryService
    db: Database


@pytest.fixture
def broker(settings: Settings, redis_client: redis_lib.Redis) -> Iterator[RedisBroker]:
    b = build_broker(settings)
    yield b
    b.close()


def new_relay(settings: Settings, db: Database, broker: RedisBroker) -> Relay:
    outbox = Outbox(settings, db)
    return Relay(settings, outbox, ProjectionQueue(settings, broker),
                 Breakers(settings, db, outbox))


def start_relay(settings: Settings, db: Database, broker: RedisBroker,
                threads: list[threading.Thread]) -> Relay:
    relay = new_relay(settings, db, broker)
    t = threading.Thread(target=relay.run, name="relay", daemon=True)
    t.start()
    threads.append(t)
    return relay


@pytest.fixture
def pipeline(settings: Settings, db: Database, broker: RedisBroker,
             neo4j_driver: Driver) -> Iterator[Pipeline]:
    graph = Neo4jGraph(settings, driver=neo4j_driver)
    graph.ensure_schema()
    projector = Projector(db, Outbox(settings, db), graph, RuleExtractor())
    declare_project_actor(broker, settings, projector.process)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    threads: list[threading.Thread] = []
    relays = [start_relay(settings, db, broker, threads)]
    try:
        service = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
        yield Pipeline(broker, relays, service, db)
    finally:
        for r in relays:
            r.stop()
        for t in threads:
            t.join(timeout=10)
        worker.stop()


def all_done(db: Database) -> bool:
    with db.engine.begin() as conn:
        open_rows = conn.execute(text(
            "SELECT count(*) FROM outbox WHERE status <> 'done'")).scalar_one()
        total = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
    return total > 0 and open_rows == 0


def graph_versions(driver: Driver) -> dict[str, int]:
    records, _, _ = driver.execute_query("MATCH (m:Memory) RETURN m.id AS id, m.version AS v")
    return {r["id"]: r["v"] for r in records}


def test_a_stored_memory_appears_in_neo4j(pipeline: Pipeline, neo4j_driver: Driver) -> None:
    m, _ = pipeline.service.store("alice", "Meeting with John about Q4 roadmap")
    wait_for(lambda: graph_versions(neo4j_driver).get(str(m.id)) == 1, 30, "projection")
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (:Memory {id: $id})-[:MENTIONS]->(e:Entity) RETURN e.name AS n ORDER BY n",
        id=str(m.id))
    assert "John" in [r["n"] for r in records]
    wait_for(lambda: all_done(pipeline.db), 10, "outbox done")


def test_many_writes_converge_with_two_relays(pipeline: Pipeline, settings: Settings,
                                              db: Database, neo4j_driver: Driver) -> None:
    threads: list[threading.Thread] = []
    second = start_relay(settings, db, pipeline.broker, threads)
    try:
        svc = pipeline.service
        ids = []
        for i in range(60):
            m, _ = svc.store(f"user{i % 3}", f"Sync {i} with Alice Smith and Acme Corp")
            ids.append(m)
        for m in ids[::3]:
            svc.update(m.user_id, m.id, content=f"Changed plan with Bob Jones {m.id}")
        for m in ids[1::6]:
            svc.delete(m.user_id, m.id)
        wait_for(lambda: all_done(db), 60, "outbox drained")
        with db.engine.begin() as conn:
            expected = {str(r.id): r.version for r in conn.execute(
                text("SELECT id, version FROM memories")).all()}
        assert graph_versions(neo4j_driver) == expected
    finally:
        second.stop()
        for t in threads:
            t.join(timeout=10)


def test_two_relays_never_dispatch_a_row_twice_in_one_lease(
        settings: Settings, db: Database, broker: RedisBroker,
        redis_client: redis_lib.Redis) -> None:
    declare_project_actor(broker, settings, lambda ids: None)
    svc = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
    for i in range(300):
        svc.store("alice", f"note {i}")
    relays = [new_relay(settings, db, broker) for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(relay: Relay) -> None:
        barrier.wait()
        relay.drain()

    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    sent: list[int] = []
    for raw in redis_client.hvals(f"memctl:{settings.queue_name}.msgs"):
        sent.extend(dramatiq.Message.decode(raw).args[0])
    assert sorted(sent) == sorted(set(sent))  # no row in two messages
    assert len(sent) == 300
    assert all(r.stats.claimed > 0 for r in relays) or sum(r.stats.claimed for r in relays) == 300


def test_expired_leases_are_dispatched_again(settings: Settings, db: Database,
                                             broker: RedisBroker) -> None:
    declare_project_actor(broker, settings, lambda ids: None)
    svc = MemoryService(settings, db, Outbox(settings, db), HashingEmbedder(384))
    svc.store("alice", "lost message")
    relay = new_relay(settings, db, broker)
    assert relay.dispatch_once() == 1
    assert relay.dispatch_once() == 0  # leased: not sent again while the lease runs
    with db.engine.begin() as conn:  # the lease ran out (the worker died, Redis lost it)
        conn.execute(text("UPDATE outbox SET lease_expires_at = now() - interval '1 second'"))
    relay._last_reclaim = 0.0
    relay.maybe_reclaim()
    with db.engine.begin() as conn:
        row = conn.execute(text("SELECT status, attempts, last_error FROM outbox")).one()
    assert row.status == "pending" and row.attempts == 1 and "lease expired" in row.last_error
    assert relay.dispatch_once() == 1
