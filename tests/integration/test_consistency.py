"""Each inconsistency kind: planted by hand, found, stored, repaired, then resolved."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.consistency import Consistency
from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import drain


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph) -> Projector:
    return Projector(db, Outbox(settings, db), graph, RuleExtractor())


@pytest.fixture
def consistency(settings: Settings, db: Database, graph: Neo4jGraph) -> Consistency:
    return Consistency(settings, db, Outbox(settings, db), graph, RuleExtractor(), page_size=7)




def stored(db: Database, open_only: bool = True) -> list[Any]:
    where = "WHERE resolved_at IS NULL" if open_only else ""
    with db.engine.begin() as conn:
        return list(conn.execute(text(f"SELECT * FROM inconsistencies {where} ORDER BY id")))


@pytest.fixture
def world(service: MemoryService, projector: Projector, db: Database) -> dict[str, Any]:
    """Twenty converged memories over two users."""
    mems = [service.store("alice" if i % 2 else "bob",
                          f"Call {i} with Sarah Connor about Acme Corp and Q4")[0]
            for i in range(20)]
    drain(projector, db)
    return {"memories": mems}


def test_a_converged_world_is_consistent(consistency: Consistency, world: dict[str, Any],
                                         db: Database) -> None:
    report = consistency.check()
    assert report.consistent, report.findings
    assert report.checked == 20 and report.graph_nodes_checked == 20
    with db.engine.begin() as conn:
        run = conn.execute(text("SELECT * FROM check_runs")).one()
    assert run.finished_at is not None and run.checked == 20 and run.found == 0


def plant(driver: Driver, cypher: str, **params: Any) -> None:
    driver.execute_query(cypher, **params)


PLANTS = {
    "missing_in_graph": "MATCH (m:Memory {id: $id}) DETACH DELETE m",
    "stale_version": "MATCH (m:Memory {id: $id}) SET m.version = m.version - 1",
    "entity_mismatch": "MATCH (m:Memory {id: $id})-[r:MENTIONS]->() DELETE r",
    "orphan_memory": "CREATE (:Memory {id: 'ghost-' + $id, user_id: 'alice', version: 1})",
    "orphan_entity": "CREATE (:Entity {key: 'alice|person|nobody', user_id: 'alice', "
                     "name: 'Nobody', type: 'person'})",
    "cross_user": "MATCH (m:Memory {id: $id}), (e:Entity {user_id: 'bob'}) "
                  "WITH m, e LIMIT 1 CREATE (m)-[:MENTIONS]->(e)",
}


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_each_kind_is_found_stored_repaired_and_resolved(
        kind: str, consistency: Consistency, world: dict[str, Any], neo4j_driver: Driver,
        projector: Projector, db: Database) -> None:
    target = next(m for m in world["memories"] if m.user_id == "alice")
    plant(neo4j_driver, PLANTS[kind], id=str(target.id))

    report = consistency.check()
    kinds = {f.kind for f in report.findings}
    assert kind in kinds, report.findings
    rows = stored(db)
    assert kind in {r.kind for r in rows}

    again = consistency.check()  # a second sighting does not duplicate the stored row
    assert len(stored(db)) == len(rows)
    assert again.run_id != report.run_id

    repair = consistency.repair()
    assert repair.queued + repair.removed_memories + repair.removed_entities > 0 or \
        repair.removed_cross_user_edges
    drain(projector, db)

    final = consistency.check()
    assert final.consistent, final.findings
    assert stored(db) == []
    resolved = stored(db, open_only=False)
    assert resolved and all(r.resolved_at is not None for r in resolved)


def test_deleted_in_postgres_but_live_in_graph(consistency: Consistency, world: dict[str, Any],
                                                service: MemoryService, projector: Projector,
                                                db: Database) -> None:
    victim = world["memories"][0]
    service.delete(victim.user_id, victim.id)
    with db.engine.begin() as conn:  # the delete event got lost (say, by a bad manual edit)
        conn.execute(text("UPDATE outbox SET status = 'done' WHERE event_type = 'delete'"))
    report = consistency.check()
    assert [f.kind for f in report.findings] == ["orphan_memory"]
    consistency.repair()
    drain(projector, db)
    assert consistency.check().consistent


def test_dry_run_reports_without_storing(consistency: Consistency, world: dict[str, Any],
                                         neo4j_driver: Driver, db: Database) -> None:
    plant(neo4j_driver, PLANTS["orphan_entity"])
    check, repair = consistency.full(dry_run=True)
    assert [f.kind for f in check.findings] == ["orphan_entity"]
    assert repair.dry_run and repair.removed_entities == 1
    assert stored(db) == []
    records, _, _ = neo4j_driver.execute_query("MATCH (e:Entity {name: 'Nobody'}) RETURN e")
    assert len(records) == 1  # nothing was touched


def test_in_transit_memories_are_not_inconsistent(consistency: Consistency,
                                                  world: dict[str, Any],
                                                  service: MemoryService) -> None:
    service.store("alice", "Fresh note about Project Phoenix")  # not projected yet
    report = consistency.check()
    assert report.consistent and report.in_transit == 1


def test_check_of_one_user_only_sees_that_user(consistency: Consistency,
                                               world: dict[str, Any],
                                               neo4j_driver: Driver) -> None:
    bob = next(m for m in world["memories"] if m.user_id == "bob")
    plant(neo4j_driver, PLANTS["missing_in_graph"], id=str(bob.id))
    assert consistency.check("alice").consistent
    assert [f.kind for f in consistency.check("bob").findings] == ["missing_in_graph"]


def test_rebuild_while_writes_go_on_ends_consistent(
        consistency: Consistency, world: dict[str, Any], service: MemoryService,
        projector: Projector, db: Database, neo4j_driver: Driver) -> None:
    plant(neo4j_driver, PLANTS["orphan_entity"])
    plant(neo4j_driver, PLANTS["stale_version"], id=str(world["memories"][1].id))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                m = world["memories"][i % len(world["memories"])]
                service.update(m.user_id, m.id, content=f"Update {i} with Kyle Reese")
                with projector.outbox.claim(50) as ids:
                    pass
                projector.process(ids)
                i += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = consistency.rebuild()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors
    assert report.projected == 20
    drain(projector, db)
    final = consistency.check()
    assert final.consistent, final.findings


def test_rebuild_of_one_user_leaves_the_other_alone(consistency: Consistency,
                                                    world: dict[str, Any],
                                                    neo4j_driver: Driver) -> None:
    before, _, _ = neo4j_driver.execute_query(
        "MATCH (m:Memory {user_id: 'bob'}) RETURN elementId(m) AS e ORDER BY e")
    report = consistency.rebuild("alice")
    assert report.projected == 10 and report.extracted == 0  # the cache served
    after, _, _ = neo4j_driver.execute_query(
        "MATCH (m:Memory {user_id: 'bob'}) RETURN elementId(m) AS e ORDER BY e")
    assert before == after
    assert consistency.check().consistent


def test_a_check_refuses_to_run_during_a_rebuild(consistency: Consistency,
                                                 world: dict[str, Any]) -> None:
    from app.errors import Busy

    with consistency._sync_lock(exclusive=True):  # as a rebuild holds it
        with pytest.raises(Busy, match="rebuild is running"):
            consistency.check()
        with pytest.raises(Busy):
            consistency.rebuild()
    with consistency._sync_lock(exclusive=False):  # checks share it with each other
        assert consistency.check().consistent
