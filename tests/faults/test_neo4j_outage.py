"""Neo4j stops while writes go on: rows fail, back off and retry, then converge when it returns.

DESIGN invariants 1, 2 and 5: writes never wait on Neo4j; a row is done only once the graph has
its change; every failed attempt is written to the row (attempts, next attempt, error history)
and a retryable outage never turns into dead letters while attempts remain.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import TestServers, wait_for
from tests.faults.conftest import (
    ManagedProcess,
    Relays,
    assert_graph_matches_postgres,
    dead_letters,
    outbox_counts,
    outbox_rows,
    random_writes,
    wait_drained,
)

pytestmark = pytest.mark.servers


def backing_off(db: Database) -> int:
    """Rows that failed on Neo4j and wait for a retry scheduled in the future."""
    with db.engine.begin() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts >= 1"
            " AND next_attempt_at > now() AND last_error ILIKE '%neo4j%'")).scalar_one())


def max_attempts(db: Database) -> int:
    with db.engine.begin() as conn:
        return int(conn.execute(text("SELECT coalesce(max(attempts), 0) FROM outbox"))
                   .scalar_one())


@pytest.mark.slow
def test_neo4j_outage_backs_off_then_converges(
        test_servers: TestServers, make_settings: Callable[..., Settings], db: Database,
        service: MemoryService, relays: Relays, start_worker: Callable[..., ManagedProcess],
        neo4j_driver: Driver) -> None:
    # The driver retries a transaction for up to 5 s itself: a lease of 10 s keeps the reclaim
    # of slow-failing rows out of this test, so the attempts seen are the worker's own.
    settings = make_settings(lease_seconds=10)
    worker = start_worker(settings)
    relays.start(settings)
    rng = random.Random(5)
    model = random_writes(service, rng, 20)
    wait_drained(db, 60, "outbox drained before the outage", logs=worker.log)
    assert_graph_matches_postgres(db, neo4j_driver)
    done_before = outbox_counts(db)["done"]

    neo4j = test_servers.servers.get("neo4j")
    neo4j.down()
    try:
        random_writes(service, rng, 15, model=model)  # every write commits without Neo4j
        wait_for(lambda: backing_off(db), 60, "a row failing on Neo4j and backing off")
        wait_for(lambda: max_attempts(db) >= 2, 60, "a second attempt while Neo4j is down")
        counts = outbox_counts(db)
        assert counts["done"] == done_before, "a row was marked done while Neo4j was down"
        assert counts["dead"] == 0 and dead_letters(db) == []
    finally:
        neo4j.up()

    wait_drained(db, 120, "outbox drained after Neo4j came back", logs=worker.log)
    assert_graph_matches_postgres(db, neo4j_driver)
    assert dead_letters(db) == []
    rows = outbox_rows(db)
    assert len(rows) == done_before + 15
    failed = [r for r in rows if r.attempts >= 1]
    assert failed, "no row recorded a failed attempt"
    for row in failed:
        assert len(row.errors) == row.attempts
        assert all(e["error"] and e["at"] for e in row.errors)
    assert any("Neo4j" in e["error"] for r in failed for e in r.errors)
