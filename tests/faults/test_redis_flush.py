"""Redis loses its data (FLUSHALL) or goes away entirely: writes go on, nothing is lost.

DESIGN invariants 1 and 2: a write never touches Redis; the relay's claim of a row commits only
after its message is in Redis, and a row whose message vanished is reclaimed when its lease
runs out and sent again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis as redis_lib
from neo4j import Driver

from app.db.connector import Database
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import TestServers, wait_for
from tests.faults.conftest import (
    ManagedProcess,
    Relays,
    assert_graph_matches_postgres,
    outbox_counts,
    outbox_rows,
    queued_messages,
    random_writes,
    wait_drained,
)

pytestmark = pytest.mark.servers


@pytest.mark.slow
def test_flushall_loses_messages_but_not_rows(
        fault_settings: Settings, db: Database, service: MemoryService, relays: Relays,
        start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver,
        redis_client: redis_lib.Redis) -> None:
    random_writes(service, random.Random(3), 60)
    total = sum(outbox_counts(db).values())
    relays.start(fault_settings)  # no worker yet: the messages wait in Redis
    wait_for(lambda: outbox_counts(db)["in_flight"] == total, 15, "every row dispatched")
    sent = sorted(i for ids in queued_messages(redis_client, fault_settings) for i in ids)
    assert sent == sorted(r.id for r in outbox_rows(db))

    redis_client.flushall()  # Redis restarted without persistence: every message is gone
    assert queued_messages(redis_client, fault_settings) == []

    worker = start_worker()
    wait_drained(db, 60, "outbox drained after FLUSHALL", logs=worker.log)
    assert_graph_matches_postgres(db, neo4j_driver)
    for row in outbox_rows(db):
        assert row.status == "done"
        assert row.attempts >= 1, f"row {row.id} was never reclaimed"
        assert any("lease expired" in e["error"] for e in row.errors), row.errors


@pytest.mark.slow
def test_writes_succeed_while_redis_is_down_and_converge_after(
        test_servers: TestServers, fault_settings: Settings, db: Database,
        service: MemoryService, relays: Relays, start_worker: Callable[..., ManagedProcess],
        neo4j_driver: Driver, redis_client: redis_lib.Redis) -> None:
    worker = start_worker()
    relays.start(fault_settings)
    rng = random.Random(4)
    model = random_writes(service, rng, 20)
    wait_drained(db, 60, "outbox drained before the outage", logs=worker.log)
    done_before = outbox_counts(db)["done"]

    redis = test_servers.servers.get("redis")
    redis.down()
    try:
        with pytest.raises(redis_lib.ConnectionError):
            redis_client.ping()
        random_writes(service, rng, 40, model=model)  # every write commits without Redis
        counts = outbox_counts(db)
        assert counts["pending"] > 0 and counts["done"] == done_before
        # The relay keeps trying: each failed enqueue rolls its claim back, so nothing is
        # leased to a message that was never sent.
        failures = relays.running[0].relay.stats.errors
        wait_for(lambda: relays.running[0].relay.stats.errors > failures, 15,
                 "the relay to fail an enqueue")
        assert outbox_counts(db)["in_flight"] == 0
        assert all(r.attempts == 0 for r in outbox_rows(db) if r.status == "pending")
    finally:
        redis.up()

    wait_drained(db, 90, "outbox drained after Redis came back", logs=worker.log)
    assert_graph_matches_postgres(db, neo4j_driver)
    assert outbox_counts(db)["done"] == done_before + 40
