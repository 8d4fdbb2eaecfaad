"""A worker process killed with SIGKILL mid-batch, or stopped with SIGTERM: nothing is lost.

DESIGN invariant 2: Redis is a transport; the outbox row is the ledger. A killed worker's
messages vanish with it (they sit in its Redis ack set), but their rows' leases run out, the
relay reclaims them and a fresh worker projects them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
import redis as redis_lib
from neo4j import Driver

from app.db.connector import Database
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import wait_for
from tests.faults.conftest import (
    ManagedProcess,
    Relays,
    assert_graph_matches_postgres,
    decode,
    outbox_counts,
    outbox_rows,
    queued_messages,
    random_writes,
    wait_drained,
)

pytestmark = pytest.mark.servers


def held_by_workers(client: redis_lib.Redis, settings: Settings) -> set[int]:
    """Row ids of the messages some worker had taken (its Redis ack sets), not yet acked."""
    held: set[int] = set()
    for key in client.scan_iter(match=f"memctl:__acks__.*.{settings.queue_name}"):
        for message_id in client.smembers(key):
            raw = client.hget(f"memctl:{settings.queue_name}.msgs", message_id)
            if raw is not None:
                held.update(decode(raw).args[0])
    return held


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing(
        fault_settings: Settings, db: Database, service: MemoryService, relays: Relays,
        start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver,
        redis_client: redis_lib.Redis) -> None:
    random_writes(service, random.Random(1), 300)
    total = sum(outbox_counts(db).values())
    worker = start_worker()
    relays.start(fault_settings)

    # Kill once the worker is visibly mid-run: some rows done, and it holds messages.
    def mid_run() -> bool:
        counts = outbox_counts(db)
        return counts["done"] >= 20 and bool(held_by_workers(redis_client, fault_settings))

    wait_for(mid_run, 60, "the worker to be part-way through the outbox")
    worker.kill()
    at_kill = outbox_counts(db)
    held = held_by_workers(redis_client, fault_settings)
    open_at_kill = {r.id for r in outbox_rows(db) if r.status != "done"}
    assert at_kill["done"] < total, "the worker finished before it was killed"
    assert held, "the killed worker held no messages: the kill was not mid-batch"
    lost = held & open_at_kill
    assert lost, f"every row the killed worker held was already done: {sorted(held)[:10]}"

    second = start_worker()
    wait_drained(db, 120, "outbox drained after the kill", logs=second.log)
    assert_graph_matches_postgres(db, neo4j_driver)
    rows = {r.id: r for r in outbox_rows(db)}
    assert all(rows[i].status == "done" for i in lost)
    # The lost rows came back through the ledger: their lease ran out and they were reclaimed.
    reclaimed = [i for i in lost if any("lease expired" in e["error"] for e in rows[i].errors)]
    assert reclaimed, f"no lost row was reclaimed by lease expiry: {sorted(lost)[:10]}"


@pytest.mark.slow
def test_sigterm_stops_the_worker_promptly_and_loses_nothing(
        make_settings: Callable[..., Settings], db: Database, service: MemoryService,
        relays: Relays, start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver,
        redis_client: redis_lib.Redis) -> None:
    # One row per message: per-message work paces the worker, so a backlog is left to lose.
    settings = make_settings(worker_batch_size=1)
    random_writes(service, random.Random(2), 300)
    worker = start_worker(settings)
    worker.wait_log("Worker process is ready for action.")
    relays.start(settings)
    wait_for(lambda: outbox_counts(db)["done"] >= 5 and held_by_workers(redis_client, settings),
             60, "the worker to be part-way through the outbox")

    began = time.monotonic()
    code = worker.terminate(timeout=30)
    took = time.monotonic() - began
    assert code == 0, f"worker exit code {code} after SIGTERM:\n{worker.log()}"
    assert worker.group() == [], "forked worker processes outlived their parent"
    assert took < 30
    # A graceful stop hands its prefetched messages back to the queue: every row still in
    # flight has its message waiting in Redis (no worker runs now, so the queue only grows).
    in_flight = {r.id for r in outbox_rows(db) if r.status == "in_flight"}
    queued = {i for ids in queued_messages(redis_client, settings) for i in ids}
    assert in_flight, "nothing was left to lose: the worker finished before it stopped"
    assert held_by_workers(redis_client, settings) == set()
    assert in_flight <= queued, f"rows in flight with no message: {sorted(in_flight - queued)}"

    second = start_worker(settings)
    wait_drained(db, 120, "outbox drained after SIGTERM", logs=second.log)
    assert_graph_matches_postgres(db, neo4j_driver)
