"""Projection status on reads, on the real servers: pending, failed, dead and projected as the
outbox knows them; wait_for_graph answering as soon as the projection lands; tenant isolation."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database, Tx
from app.domain import GraphProjection
from app.errors import ValidationError
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox, ReplaySelection
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from app.wiring import Services
from tests.conftest import PoisonExtractor, bearer, drain

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def extractor() -> PoisonExtractor:
    return PoisonExtractor()


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph,
              extractor: PoisonExtractor) -> Projector:
    return Projector(db, Outbox(settings, db), graph, extractor)


@pytest.fixture
def app_services(settings: Settings, service_key: str) -> Iterator[tuple[TestClient, Services]]:
    """A client of a started app, and the app's own services."""
    with TestClient(create_app(settings), headers=bearer(service_key)) as test_client:
        services = test_client.app.state.services  # type: ignore[attr-defined]
        assert isinstance(services, Services)
        yield test_client, services


@pytest.fixture
def client(app_services: tuple[TestClient, Services]) -> TestClient:
    return app_services[0]


def store(client: TestClient, content: str, user: str = "alice") -> str:
    response = client.post("/api/memories", json={"user_id": user, "content": content})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def read(client: TestClient, mid: str, user: str = "alice", **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/memories/{mid}", params={"user_id": user, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def graph_of(client: TestClient, mid: str, **params: Any) -> dict[str, Any]:
    graph: dict[str, Any] = read(client, mid, **params)["graph"]
    return graph


def open_ids(db: Database) -> list[int]:
    with db.engine.connect() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT id FROM outbox WHERE status IN ('pending', 'in_flight') ORDER BY id"))]


def test_pending_until_the_worker_runs_then_projected(
        client: TestClient, projector: Projector, db: Database) -> None:
    mid = store(client, "Meeting with John Smith about Q4")
    pending = graph_of(client, mid)
    assert pending["status"] == "pending"
    assert pending["projected_version"] is None
    assert pending["since"] is not None and pending["timed_out"] is None

    drain(projector, db)
    projected = graph_of(client, mid)
    assert projected["status"] == "projected"
    assert projected["projected_version"] == 1
    assert projected["since"] > pending["since"]

    assert client.patch(f"/api/memories/{mid}", json={
        "user_id": "alice", "content": "Meeting with John Smith about Q1"}).status_code == 200
    behind = graph_of(client, mid)
    assert (behind["status"], behind["projected_version"]) == ("pending", 1)
    drain(projector, db)
    assert (graph_of(client, mid)["status"], graph_of(client, mid)["projected_version"]) == \
        ("projected", 2)


def test_a_failed_attempt_reads_failed_and_a_dead_letter_dead_until_replayed(
        settings: Settings, client: TestClient, projector: Projector, db: Database,
        extractor: PoisonExtractor) -> None:
    flaky = store(client, "FLAKY note about Acme Corp")
    poison = store(client, "POISON note about Acme Corp")
    projector.process(open_ids(db))
    failed = graph_of(client, flaky)
    assert (failed["status"], failed["projected_version"]) == ("failed", None)
    dead = graph_of(client, poison)
    assert (dead["status"], dead["projected_version"]) == ("dead", None)
    assert dead["since"] is not None and failed["since"] is not None

    # A dead letter stays dead through later reads; a replay sends it back to pending.
    extractor.armed = False
    outbox = Outbox(settings, db)
    letter = outbox.dead_letters().items[0]
    assert letter["memory_id"] == poison
    outbox.replay(ReplaySelection(ids=(letter["id"],)), "test")
    assert graph_of(client, poison)["status"] == "pending"
    drain(projector, db)
    assert graph_of(client, poison)["status"] == "projected"
    assert graph_of(client, flaky)["status"] == "projected"


def test_a_newer_version_dead_keeps_the_older_projected_version(
        client: TestClient, projector: Projector, db: Database) -> None:
    mid = store(client, "A fine note about Acme Corp")
    drain(projector, db)
    client.patch(f"/api/memories/{mid}", json={"user_id": "alice",
                                               "content": "POISON note about Acme Corp"})
    drain(projector, db)
    graph = graph_of(client, mid)
    assert (graph["status"], graph["projected_version"]) == ("dead", 1)


def test_pruned_delivery_rows_still_read_as_projected(
        settings: Settings, service: MemoryService, projector: Projector, db: Database) -> None:
    memory, _ = service.store("alice", "An old note about Acme Corp")
    drain(projector, db)
    service.update("alice", memory.id, content="An old note about Acme Corp, edited")
    drain(projector, db)
    with db.engine.begin() as conn:  # the retention prune of done rows
        conn.execute(text("DELETE FROM outbox WHERE status = 'done'"))
    graph = service.get("alice", memory.id).graph
    assert graph == GraphProjection(status="projected", projected_version=2, since=None)
    service.update("alice", memory.id, importance=9)
    graph = service.get("alice", memory.id).graph
    assert (graph.status, graph.projected_version) == ("pending", 2)


def test_wait_for_graph_answers_as_soon_as_the_projection_lands(
        app_services: tuple[TestClient, Services], projector: Projector, db: Database,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, services = app_services
    mid = store(client, "Call Ana Lima about the offsite")
    reads: list[float] = []
    waiting = threading.Event()
    real = services.outbox.projection

    def counted(tx: Tx, *args: Any) -> GraphProjection:
        reads.append(time.monotonic())
        waiting.set()
        return real(tx, *args)

    monkeypatch.setattr(services.outbox, "projection", counted)
    projected_at: list[float] = []

    def work() -> None:
        # Project only once the request is waiting, so the wait is what is measured.
        if waiting.wait(30):
            drain(projector, db)
            projected_at.append(time.monotonic())

    worker = threading.Thread(target=work)
    worker.start()
    try:
        started = time.monotonic()
        body = read(client, mid, wait_for_graph="25s")
        answered = time.monotonic()
    finally:
        worker.join(timeout=60)
    assert body["graph"]["status"] == "projected"
    assert body["graph"]["projected_version"] == 1 and body["graph"]["timed_out"] is False
    assert projected_at and len(reads) >= 2  # it read again after the worker's projection
    assert answered - projected_at[0] < 2.0  # the next poll, not the end of the 25 seconds
    assert answered - started < 20


def test_wait_for_graph_times_out_and_says_so(client: TestClient) -> None:
    mid = store(client, "Nobody projects this")
    started = time.monotonic()
    graph = graph_of(client, mid, wait_for_graph="0.5")
    took = time.monotonic() - started
    assert graph["status"] == "pending" and graph["timed_out"] is True
    assert 0.5 <= took < 5


def test_wait_for_graph_returns_at_once_when_settled(
        client: TestClient, projector: Projector, db: Database) -> None:
    dead = store(client, "POISON at once")
    drain(projector, db)
    started = time.monotonic()
    graph = graph_of(client, dead, wait_for_graph=20)
    assert graph["status"] == "dead" and graph["timed_out"] is False
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("bad", ["31", "30.5", "-1", "abc", "5m", "1e3", "nan", "inf", "",
                                 " 5", "1000", "5.1234"])
def test_bad_waits_are_422(client: TestClient, bad: str) -> None:
    mid = store(client, "a note")
    response = client.get(f"/api/memories/{mid}", params={"user_id": "alice",
                                                           "wait_for_graph": bad})
    assert response.status_code == 422, bad
    assert response.json()["error"]["field"] == "wait_for_graph"


def test_good_waits_are_taken(client: TestClient) -> None:
    mid = store(client, "a note")
    for good in ("0", "0s", "0.05", "0.1s"):
        assert graph_of(client, mid, wait_for_graph=good)["status"] == "pending", good


def test_another_user_gets_404_and_no_wait(
        client: TestClient, projector: Projector, db: Database) -> None:
    mine = store(client, "Alice's memory")
    theirs = store(client, "POISON of bob", user="bob")
    drain(projector, db)
    for params in ({}, {"wait_for_graph": "10"}):
        started = time.monotonic()
        response = client.get(f"/api/memories/{mine}", params={"user_id": "bob", **params})
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "memory not found"
        assert time.monotonic() - started < 5
    # Bob's dead letter does not colour Alice's memory, nor Alice's projection Bob's.
    assert graph_of(client, mine)["status"] == "projected"
    assert read(client, theirs, user="bob")["graph"]["status"] == "dead"


def test_the_python_api_reports_and_waits(service: MemoryService) -> None:
    memory, _ = service.store("alice", "from a script")
    read_back = service.get("alice", memory.id)
    assert read_back.graph.status == "pending" and read_back.graph.timed_out is None
    assert read_back.content == "from a script"
    waited = service.get("alice", memory.id, wait_for_graph=0.2)
    assert waited.graph.timed_out is True
    for bad in (-1, 31, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValidationError, match="wait_for_graph"):
            service.get("alice", memory.id, wait_for_graph=bad)  # type: ignore[arg-type]
