"""The convergence check every fault test ends on must itself catch each kind of difference."""

from __future__ import annotations

import pytest
from neo4j import Driver

from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from tests.faults.conftest import assert_graph_matches_postgres, graph_problems, outbox_rows

pytestmark = pytest.mark.servers

TAMPERING = [
    # (what is done to a converged graph, a fragment the report must contain)
    ("MATCH (m:Memory {id: $live}) SET m.version = m.version - 1", "graph v1, Postgres v2"),
    ("MATCH (m:Memory {id: $live}) DETACH DELETE m", "missing in graph"),
    ("MATCH (m:Memory {id: $gone}) SET m.deleted = false", "live in graph"),
    ("MATCH (m:Memory {id: $gone}), (e:Entity {user_id: 'alice'}) WITH m, e LIMIT 1 "
     "CREATE (m)-[:MENTIONS]->(e)", "tombstone still MENTIONS"),
    ("CREATE (:Entity {key: 'alice\x1fperson\x1fghost', user_id: 'alice', name: 'Ghost'})",
     "orphan entity"),
    ("CREATE (:Memory {id: 'not-in-postgres', user_id: 'alice', version: 1})",
     "not in Postgres"),
    ("MATCH (m:Memory {id: $live}), (e:Entity {user_id: 'bob'}) WITH m, e LIMIT 1 "
     "CREATE (m)-[:MENTIONS]->(e)", "cross-user MENTIONS"),
    ("MATCH (m:Memory {id: $live})-[r:MENTIONS]->() WITH r LIMIT 1 DELETE r", "MENTIONS"),
    ("MATCH ()-[r:RELATED {memory_id: $live}]->() WITH r LIMIT 1 DELETE r", "RELATED"),
    ("MATCH (a:Entity {user_id: 'alice'}), (b:Entity {user_id: 'bob'}) WITH a, b LIMIT 1 "
     "CREATE (a)-[:RELATED {predicate: 'x', memory_id: $live, user_id: 'alice'}]->(b)",
     "cross-user or dangling RELATED"),
]


@pytest.mark.parametrize(("cypher", "reported"), TAMPERING, ids=[
    "stale-version", "missing-memory", "resurrected", "tombstone-mentions", "orphan-entity",
    "unknown-memory", "cross-user-mention", "lost-mention", "lost-relation",
    "cross-user-relation"])
def test_the_check_reports_each_kind_of_difference(
        fault_settings: Settings, db: Database, service: MemoryService, neo4j_driver: Driver,
        cypher: str, reported: str) -> None:
    graph = Neo4jGraph(fault_settings, driver=neo4j_driver)
    graph.ensure_schema()
    projector = Projector(db, Outbox(fault_settings, db), graph, RuleExtractor())
    live, _ = service.store("alice", "Meeting with John Smith about Q4 roadmap at Acme Corp")
    service.update("alice", live.id, importance=9)
    gone, _ = service.store("alice", "Lunch with Sarah Connor and John Smith on Friday")
    service.delete("alice", gone.id)
    service.store("bob", "Sarah Connor met Bob Jones in Berlin")
    projector.process([r.id for r in outbox_rows(db)])
    assert_graph_matches_postgres(db, neo4j_driver)  # converged: no false alarm

    neo4j_driver.execute_query(cypher, live=str(live.id), gone=str(gone.id))
    problems = graph_problems(db, neo4j_driver)
    assert any(reported in p for p in problems), problems
    with pytest.raises(pytest.fail.Exception, match="graph differs from Postgres"):
        assert_graph_matches_postgres(db, neo4j_driver)
