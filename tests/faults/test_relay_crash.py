"""A relay that dies between enqueue and commit, and a relay process stopped with SIGTERM.

DESIGN invariant 2: the claim commits only after the message is in Redis, so a crash in between
rolls the claim back: the rows are sent again (a duplicate message), never lost, and the
duplicate is harmless because the worker projects current state and skips finished rows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from neo4j import Driver

from app.breakers import Breakers
from app.db.connector import Database
from app.outbox import Outbox
from app.queue import ProjectionQueue, build_broker
from app.relay import Relay
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import wait_for
from tests.faults.conftest import (
    RELAY_ARGV,
    ManagedProcess,
    assert_graph_matches_postgres,
    outbox_counts,
    outbox_rows,
    queued_messages,
    random_writes,
    wait_drained,
)

pytestmark = pytest.mark.servers


class RelayCrashed(Exception):
    """Stands for the relay process dying after the enqueue, before its commit."""


class CrashAfterEnqueue:
    """The real broker, except that the relay "dies" right after a real enqueue succeeds."""

    def __init__(self, real: RedisBroker) -> None:
        self.real = real
        self.sent: list[dramatiq.Message[Any]] = []

    def enqueue(self, message: dramatiq.Message[Any], **kwargs: Any) -> dramatiq.Message[Any]:
        sent = self.real.enqueue(message, **kwargs)
        self.sent.append(sent)
        raise RelayCrashed("relay died between enqueue and commit")


@pytest.fixture
def broker(fault_settings: Settings, redis_client: redis_lib.Redis) -> Iterator[RedisBroker]:
    b = build_broker(fault_settings)
    yield b
    b.close()


def test_crash_between_enqueue_and_commit_duplicates_never_loses(
        fault_settings: Settings, db: Database, service: MemoryService, broker: RedisBroker,
        start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver,
        redis_client: redis_lib.Redis) -> None:
    random_writes(service, random.Random(6), 8)  # fewer rows than a worker batch: one message
    ids = sorted(r.id for r in outbox_rows(db))

    crashing = CrashAfterEnqueue(broker)
    queue = ProjectionQueue(fault_settings, crashing)  # type: ignore[arg-type]
    outbox = Outbox(fault_settings, db)
    crashing_relay = Relay(fault_settings, outbox, queue, Breakers(fault_settings, db, outbox))
    with pytest.raises(RelayCrashed):
        crashing_relay.dispatch_once()

    # The claim rolled back: every row is still pending, unleased, with no attempt counted...
    rows = outbox_rows(db)
    assert [r.status for r in rows] == ["pending"] * len(ids)
    assert all(r.lease_expires_at is None and r.attempts == 0 for r in rows)
    # ...while the message really is in Redis.
    assert len(crashing.sent) == 1
    assert queued_messages(redis_client, fault_settings) == [ids]

    # A healthy relay sends the same rows again: a duplicate, not a loss.
    relay = Relay(fault_settings, outbox, ProjectionQueue(fault_settings, broker),
                  Breakers(fault_settings, db, outbox))
    assert relay.dispatch_once() == len(ids)
    assert sorted(queued_messages(redis_client, fault_settings)) == [ids, ids]
    assert outbox_counts(db)["in_flight"] == len(ids)

    worker = start_worker()
    wait_drained(db, 60, "outbox drained", logs=worker.log)
    wait_for(lambda: queued_messages(redis_client, fault_settings) == [], 30,
             "both messages consumed")
    assert_graph_matches_postgres(db, neo4j_driver)
    # The duplicate changed nothing: no failure, no reclaim, every row done once.
    assert all(r.status == "done" and r.attempts == 0 and r.errors == []
               for r in outbox_rows(db))
    assert relay.dispatch_once() == 0


def test_sigterm_stops_a_relay_process_cleanly(
        fault_settings: Settings, db: Database, service: MemoryService,
        processes: Callable[[str, list[str], Settings], ManagedProcess],
        redis_client: redis_lib.Redis) -> None:
    relay = processes("relay", RELAY_ARGV, fault_settings)
    relay.wait_log("relay started", timeout=30)
    service.store("alice", "Lunch with Sarah Connor and John Smith on Friday")
    # Running for real: it picks the new row up (woken by NOTIFY) and sends it.
    wait_for(lambda: outbox_counts(db)["in_flight"] == 1, 15, "the relay to dispatch")
    assert len(queued_messages(redis_client, fault_settings)) == 1

    began = time.monotonic()
    code = relay.terminate(timeout=10)
    took = time.monotonic() - began
    assert code == 0, f"relay exit code {code}:\n{relay.log()}"
    assert took < 5, f"relay took {took:.1f}s to stop"
    assert "relay stopped" in relay.log()
    assert relay.group() == []
