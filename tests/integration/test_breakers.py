"""Dependency breakers and the rows they hold, on the real Postgres.

The breaker state machine (closed, open, half_open, misconfigured) shared by "processes"
(separate ``Breakers`` objects), the outbox's release-without-attempt and hold, the release of
held rows when a breaker closes (oldest first, with a NOTIFY), the relay holding dispatch, the
reclaim blaming an outage instead of the row, and the prober closing a breaker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text

from app.breakers import EXTRACTOR, GRAPH, Breakers, Prober
from app.db.connector import Database
from app.errors import (
    ExtractorMisconfigured,
    ExtractorRateLimited,
    GraphUnavailable,
)
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.queue import ProjectionQueue, build_broker, declare_project_actor
from app.relay import Relay
from app.settings import Settings
from app.store import MemoryService
from app.testing import FailingGraph, FakeGraph
from tests.conftest import drain, wait_for

pytestmark = pytest.mark.servers


@pytest.fixture
def tuned(settings: Settings) -> Settings:
    """A threshold of 3, a 30 s probe interval (probes are forced by the tests)."""
    return settings.model_copy(update={
        "breaker_failure_threshold": 3, "breaker_probe_seconds": 30.0,
        "breaker_misconfigured_probe_seconds": 600.0, "breaker_cache_seconds": 60.0})


@pytest.fixture
def outbox(tuned: Settings, db: Database) -> Outbox:
    return Outbox(tuned, db)


@pytest.fixture
def breakers(tuned: Settings, db: Database, outbox: Outbox) -> Breakers:
    return Breakers(tuned, db, outbox)


def other_process(tuned: Settings, db: Database) -> Breakers:
    """Another process's view: its own cache, the same Postgres."""
    return Breakers(tuned, db, Outbox(tuned, db))


def rows(db: Database) -> list[Any]:
    with db.engine.begin() as conn:
        return list(conn.execute(text(
            "SELECT id, status, attempts, held_by, next_attempt_at, last_error, errors, "
            "created_at, now() AS now FROM outbox ORDER BY id")).all())


def make_due(db: Database, name: str) -> None:
    """The breaker's next probe is due now (instead of waiting out the interval)."""
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE dependency_breakers SET next_probe_at = now() - "
                          "interval '1 second' WHERE name = :n"), {"n": name})


def in_flight(outbox: Outbox, limit: int = 100) -> list[int]:
    with outbox.claim(limit) as ids:
        return ids


def down() -> GraphUnavailable:
    return GraphUnavailable("Neo4j ServiceUnavailable: connection refused")


# -- the state machine ----------------------------------------------------------------------


def test_consecutive_failures_open_it_at_the_threshold_and_a_success_resets(
        breakers: Breakers, tuned: Settings, db: Database) -> None:
    assert breakers.allows(GRAPH) and breakers.allows(EXTRACTOR)
    breakers.failed(GRAPH, down())
    breakers.failed(GRAPH, down())
    breakers.succeeded(GRAPH)  # not consecutive any more
    for _ in range(2):
        status = breakers.failed(GRAPH, down())
        assert status is not None and status.state == "closed" and status.opened_at is None
    status = breakers.failed(GRAPH, down())
    assert status is not None and status.state == "open"
    assert status.consecutive_failures == 3
    assert status.last_error == "GraphUnavailable: Neo4j ServiceUnavailable: connection refused"
    assert status.opened_at is not None and status.next_probe_at is not None
    assert timedelta(seconds=29) < status.next_probe_at - status.opened_at < timedelta(seconds=31)
    assert not breakers.allows(GRAPH) and breakers.allows(EXTRACTOR)
    # Another process and a restarted one see the same state: it lives in Postgres.
    assert other_process(tuned, db).states()[GRAPH].state == "open"


def test_a_misconfiguration_opens_at_once_and_a_starting_worker_probes_it(
        breakers: Breakers, db: Database) -> None:
    status = breakers.failed(EXTRACTOR, ExtractorMisconfigured("LLM endpoint refused (401)"))
    assert status is not None and status.state == "misconfigured"
    assert status.consecutive_failures == 1
    assert status.next_probe_at is not None and status.opened_at is not None
    assert status.next_probe_at - status.opened_at > timedelta(seconds=590)
    assert not breakers.claim_probe(EXTRACTOR)  # not due for ten minutes
    assert breakers.reprobe_misconfigured() == 1  # a worker started: probe now
    assert breakers.claim_probe(EXTRACTOR)
    assert breakers.states(fresh=True)[EXTRACTOR].state == "half_open"


def test_a_rate_limit_we_still_wait_out_is_not_counted(breakers: Breakers) -> None:
    assert breakers.failed(EXTRACTOR, ExtractorRateLimited("wait", 5.0, asked=False)) is None
    assert breakers.states(fresh=True)[EXTRACTOR].consecutive_failures == 0
    status = breakers.failed(EXTRACTOR, ExtractorRateLimited("429", 5.0))
    assert status is not None and status.consecutive_failures == 1


def test_one_process_wins_a_due_probe_and_a_failed_probe_reopens(
        breakers: Breakers, tuned: Settings, db: Database) -> None:
    for _ in range(3):
        breakers.failed(GRAPH, down())
    others = [other_process(tuned, db) for _ in range(3)]
    assert not any(b.claim_probe(GRAPH) for b in [breakers, *others])  # not due yet
    make_due(db, GRAPH)
    claims = [b.claim_probe(GRAPH) for b in [breakers, *others]]
    assert claims.count(True) == 1
    assert breakers.states(fresh=True)[GRAPH].state == "half_open"
    assert not breakers.allows(GRAPH)
    status = breakers.failed(GRAPH, down())  # the probe failed
    assert status is not None and status.state == "open"
    assert status.next_probe_at is not None
    assert status.next_probe_at > datetime.now(UTC) + timedelta(seconds=25)


def test_each_process_trusts_its_cache_until_it_expires_or_is_invalidated(
        breakers: Breakers, tuned: Settings, db: Database) -> None:
    assert breakers.allows(GRAPH)
    opener = other_process(tuned, db)
    for _ in range(3):
        opener.failed(GRAPH, down())
    assert breakers.allows(GRAPH)  # cached for BREAKER_CACHE_SECONDS (60 s here)
    assert breakers.holding() == []  # the relay's view: cached while all looked closed
    breakers.invalidate()
    assert not breakers.allows(GRAPH)
    assert breakers.holding() == [GRAPH]


# -- rows held and released -----------------------------------------------------------------


def test_released_rows_spend_no_attempt_and_wait_for_the_breaker_oldest_first(
        service: MemoryService, outbox: Outbox, breakers: Breakers, db: Database) -> None:
    for i in range(3):
        service.store("alice", f"note {i} with Sarah")
    work = outbox.work(in_flight(outbox))
    for _ in range(3):
        breakers.failed(GRAPH, down())
    # Released newest first, so "oldest first" below is not an accident of release order.
    for item in reversed(work):
        assert outbox.release([item], "GraphUnavailable: refused", breaker=GRAPH) is True
    held = rows(db)
    assert [(r.status, r.attempts, r.held_by, r.errors) for r in held] == [
        ("pending", 0, GRAPH, [])] * 3
    assert all("refused" in r.last_error for r in held)
    assert outbox.stats().held == 3
    service.store("alice", "written during the outage")
    assert len(in_flight(outbox)) == 1  # only the new row: held rows are not due

    with outbox.listener() as listener:
        assert breakers.close(GRAPH) == 3
        assert listener.wait(5.0), "closing a breaker must wake the relays"
    assert breakers.states(fresh=True)[GRAPH].state == "closed"
    after = rows(db)
    assert [r.held_by for r in after] == [None] * 4
    # Due at once, each at its creation time: claims take them oldest first.
    assert all(r.next_attempt_at == r.created_at for r in after[:3])
    assert in_flight(outbox, 2) == [r.id for r in after[:2]]
    assert in_flight(outbox) == [after[2].id]


def test_released_while_closed_they_are_due_after_the_delay(
        service: MemoryService, outbox: Outbox, db: Database) -> None:
    service.store("alice", "a flapping graph")
    work = outbox.work(in_flight(outbox))
    assert outbox.release(work, "GraphUnavailable: reset", breaker=GRAPH, delay=30) is False
    (row,) = rows(db)
    assert (row.status, row.attempts, row.held_by) == ("pending", 0, None)
    assert timedelta(seconds=29) < row.next_attempt_at - row.now <= timedelta(seconds=30)
    assert in_flight(outbox) == []


def test_a_hold_and_a_close_take_turns_so_no_row_is_stranded(
        service: MemoryService, outbox: Outbox, breakers: Breakers, db: Database) -> None:
    """A worker holding rows (it saw the breaker open) while a prober closes the breaker."""
    service.store("alice", "caught between")
    (item,) = outbox.work(in_flight(outbox))
    for _ in range(3):
        breakers.failed(GRAPH, down())
    closed = threading.Event()
    with db.transaction() as tx:
        assert tx.scalar("breaker_lock", {"name": GRAPH}) == "open"  # the hold begins
        closer = threading.Thread(target=lambda: (breakers.close(GRAPH), closed.set()))
        closer.start()
        assert not closed.wait(0.5), "the close must wait for the hold to commit"
        tx.execute("release_rows", {"ids": [item.outbox_id], "error": "held",
                                    "held_by": GRAPH, "delay_seconds": 0.0})
    closer.join(10)
    assert closed.is_set()
    (row,) = rows(db)
    assert row.held_by is None and row.status == "pending"  # the close released it
    assert in_flight(outbox) == [item.outbox_id]


def test_a_lease_lost_in_an_outage_is_blamed_on_the_outage(
        service: MemoryService, outbox: Outbox, breakers: Breakers, db: Database) -> None:
    service.store("alice", "leased while Neo4j was down")
    service.store("alice", "leased while Neo4j was up")
    first, second = in_flight(outbox)
    expire = "UPDATE outbox SET lease_expires_at = now() - interval '1 second' WHERE id = :id"
    with db.engine.begin() as conn:
        conn.execute(text(expire), {"id": first})
    for _ in range(3):
        breakers.failed(GRAPH, down())
    assert breakers.blocking() == GRAPH
    result = outbox.reclaim_expired(hold_for=breakers.blocking())
    assert (result.reclaimed, result.held, result.dead) == (1, 1, 0)
    breakers.close(GRAPH)
    with db.engine.begin() as conn:
        conn.execute(text(expire), {"id": second})
    assert breakers.blocking() is None
    assert outbox.reclaim_expired(hold_for=breakers.blocking()).held == 0
    by_id = {r.id: r for r in rows(db)}
    assert (by_id[first].attempts, by_id[first].status) == (0, "pending")
    assert "breaker was open" in by_id[first].last_error
    assert (by_id[second].attempts, by_id[second].status) == (1, "pending")


def test_stray_holds_are_released_by_the_safety_net(
        service: MemoryService, outbox: Outbox, db: Database) -> None:
    service.store("alice", "held by a breaker that is closed")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET held_by = 'graph'"))
    assert in_flight(outbox) == []
    assert outbox.release_stray_holds() == 1
    assert len(in_flight(outbox)) == 1


# -- the relay ------------------------------------------------------------------------------


@pytest.fixture
def broker(tuned: Settings, redis_client: redis_lib.Redis) -> Iterator[RedisBroker]:
    b = build_broker(tuned)
    declare_project_actor(b, tuned, lambda ids: None)
    yield b
    b.close()


def sent(client: redis_lib.Redis, settings: Settings) -> list[int]:
    ids: list[int] = []
    for raw in client.hvals(f"memctl:{settings.queue_name}.msgs"):
        ids.extend(dramatiq.Message.decode(raw).args[0])
    return sorted(ids)


def test_the_relay_holds_dispatch_while_a_breaker_is_open(
        tuned: Settings, db: Database, service: MemoryService, outbox: Outbox,
        breakers: Breakers, broker: RedisBroker, redis_client: redis_lib.Redis) -> None:
    relay = Relay(tuned, outbox, ProjectionQueue(tuned, broker), breakers)
    cached, _ = service.store("alice", "cached note about Sarah")
    drain(Projector(db, outbox, FakeGraph(), RuleExtractor()), db)  # its extraction is cached
    service.update("alice", cached.id, importance=9)  # needs the graph only
    service.store("alice", "fresh note about Bob")  # needs the extractor
    doomed, _ = service.store("alice", "deleted note")
    service.delete("alice", doomed.id)  # a delete needs the graph only
    open_rows = {r.id for r in rows(db) if r.status == "pending"}
    assert len(open_rows) == 4

    for _ in range(3):
        breakers.failed(GRAPH, down())
    assert relay.dispatch_once() == 0  # the graph is out: nothing at all is sent
    assert sent(redis_client, tuned) == [] and relay._holding == {GRAPH}

    breakers.close(GRAPH)
    for _ in range(3):
        breakers.failed(EXTRACTOR, down())
    breakers.invalidate()
    assert relay.dispatch_once() == 3  # the update and the delete's two rows
    by_status = {r.id: (r.status, r.held_by) for r in rows(db)}
    needs_extraction = [i for i, s in by_status.items() if s == ("pending", EXTRACTOR)]
    assert len(needs_extraction) == 1 and relay.stats.held == 1
    assert sent(redis_client, tuned) == sorted(open_rows - set(needs_extraction))

    breakers.close(EXTRACTOR)
    assert relay.dispatch_once() == 1  # due at once when the breaker closes
    assert sent(redis_client, tuned) == sorted(open_rows)


# -- the projector and the prober on a breaker ---------------------------------------------


def test_an_outage_opens_the_breaker_holds_rows_and_a_probe_recovers_them(
        tuned: Settings, db: Database, service: MemoryService, outbox: Outbox,
        breakers: Breakers, graph: Neo4jGraph) -> None:
    for i in range(6):
        service.store("alice", f"note {i} with Sarah Connor")
    outage = {"on": True}
    flaky = FailingGraph(graph, lambda _: down() if outage["on"] else None)
    projector = Projector(db, outbox, flaky, RuleExtractor(), breakers, retry_delay=0.01)
    ids = in_flight(outbox)
    for i in range(3):  # three batches meet the outage: the breaker opens on the third
        outcome = projector.process(ids[i * 2:i * 2 + 2])
        assert (outcome.held, outcome.failed) == (2, 0)
    assert breakers.states(fresh=True)[GRAPH].state == "open"
    assert outbox.stats().held == 2  # the third batch; the first two are due in 10 ms
    time.sleep(0.05)
    assert projector.process(in_flight(outbox)).held == 4  # open: not even tried
    assert outbox.stats().held == 6 and all(r.attempts == 0 for r in rows(db))

    outage["on"] = False
    probes: list[str] = []
    prober = Prober(breakers, {GRAPH: lambda: probes.append("graph")})
    assert prober.tick() == {}  # not due yet
    make_due(db, GRAPH)
    assert prober.tick() == {GRAPH: True} and probes == ["graph"]
    assert breakers.states(fresh=True)[GRAPH].state == "closed"
    ids = in_flight(outbox)
    assert len(ids) == 6
    assert projector.process(ids).done == 6
    assert [(r.status, r.attempts) for r in rows(db)] == [("done", 0)] * 6


def test_a_failing_probe_keeps_the_breaker_open(
        tuned: Settings, db: Database, breakers: Breakers) -> None:
    breakers.failed(EXTRACTOR, ExtractorMisconfigured("HTTP 401"))
    make_due(db, EXTRACTOR)

    def refused() -> None:
        raise ExtractorMisconfigured("LLM endpoint refused our settings (HTTP 401)")

    prober = Prober(breakers, {EXTRACTOR: refused, GRAPH: lambda: None})
    assert prober.tick() == {EXTRACTOR: False}  # the graph is closed: not probed
    status = breakers.states(fresh=True)[EXTRACTOR]
    assert status.state == "misconfigured" and "401" in (status.last_error or "")
    assert prober.tick() == {}  # the next probe waits for its interval

    prober.start()
    try:
        make_due(db, EXTRACTOR)
        wait_for(lambda: breakers.states(fresh=True)[EXTRACTOR].consecutive_failures == 3, 10,
                 "the prober thread to probe again")
    finally:
        prober.stop()
