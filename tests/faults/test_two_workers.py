"""Two worker processes and two relays over interleaved writes of three users.

DESIGN invariants 3, 4 and 6: concurrent batches that touch the same entities still converge,
and users never share an entity: the same name in two users' memories is two entities.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.domain import entity_key
from app.settings import Settings
from app.store import MemoryService
from tests.faults.conftest import (
    ManagedProcess,
    Model,
    Relays,
    assert_graph_matches_postgres,
    random_writes,
    wait_drained,
)

pytestmark = pytest.mark.servers
USERS = ("alice", "bob", "carol")


@pytest.mark.slow
def test_two_workers_two_relays_converge_without_crossing_users(
        fault_settings: Settings, db: Database, service: MemoryService, relays: Relays,
        start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver) -> None:
    workers = [start_worker(), start_worker()]
    relays.start(fault_settings)
    relays.start(fault_settings)

    errors: list[BaseException] = []
    models: dict[str, Model] = {}

    def write(user: str, seed: int) -> None:
        try:
            models[user] = random_writes(service, random.Random(seed), 100, users=(user,))
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(u, i)) for i, u in enumerate(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    wait_drained(db, 120, "outbox drained by two workers",
                 logs=lambda: "\n".join(w.log() for w in workers))
    assert_graph_matches_postgres(db, neo4j_driver)
    for w in workers:
        assert "projection.done" in w.log(10_000), f"worker {w.pid} projected nothing"

    # The same name in several users' memories is one entity per user, never a shared one.
    with db.engine.begin() as conn:
        users_naming_john = {r.user_id for r in conn.execute(text(
            "SELECT DISTINCT user_id FROM memories WHERE deleted_at IS NULL"
            " AND content LIKE '%John Smith%'")).all()}
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (e:Entity {name: 'John Smith'})<-[:MENTIONS]-(m:Memory) "
        "RETURN e.key AS key, e.user_id AS user_id, collect(DISTINCT m.user_id) AS users")
    assert len(users_naming_john) >= 2, "the writes did not share a name across users"
    assert {r["user_id"] for r in records} == users_naming_john
    for r in records:
        assert r["users"] == [r["user_id"]]
        assert r["key"] == entity_key(r["user_id"], "person", "John Smith")
