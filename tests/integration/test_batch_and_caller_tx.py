"""The batch API, and writes enqueued inside the caller's own transaction (library mode)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from neo4j import Driver
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.settings import Settings
from app.store import MemoryService, NewMemory
from app.wiring import build_services
from tests.conftest import bearer, drain

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def client(settings: Settings, service_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(service_key)) as test_client:
        yield test_client


def counts(db: Database) -> tuple[int, int]:
    with db.engine.connect() as conn:
        return (int(conn.execute(text("SELECT count(*) FROM memories")).scalar_one()),
                int(conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()))


def test_a_batch_stores_every_item_with_its_event(client: TestClient, db: Database) -> None:
    items: list[dict[str, Any]] = [{"content": f"note {i}", "importance": 1 + i % 10,
                                    "metadata": {"n": i}} for i in range(120)]
    stored = client.post("/api/memories/batch", json={"user_id": "alice", "items": items})
    assert stored.status_code == 201, stored.text
    body = stored.json()["items"]
    assert [m["content"] for m in body] == [i["content"] for i in items]
    assert counts(db) == (120, 120)
    page = client.get("/api/memories", params={"user_id": "alice", "limit": 500})
    assert len(page.json()["items"]) == 120


@pytest.mark.parametrize(("item", "field"), [
    ({"content": " "}, "items.2.content"),
    ({"content": "x", "metadata": {"k": "\u0000"}}, "items.2.metadata"),
    ({"content": "x", "importance": 11}, "items.2.importance"),
    ({"content": "x", "surprise": 1}, "items.2.surprise"),
])
def test_one_bad_item_is_a_422_naming_it_and_stores_nothing(
        client: TestClient, db: Database, item: dict[str, Any], field: str) -> None:
    items = [{"content": "fine"}, {"content": "fine too"}, item, {"content": "never"}]
    refused = client.post("/api/memories/batch", json={"user_id": "alice", "items": items})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == field
    assert counts(db) == (0, 0)


def test_a_batch_is_bounded(client: TestClient, settings: Settings, db: Database) -> None:
    items = [{"content": "x"}] * (settings.max_batch_items + 1)
    assert client.post("/api/memories/batch",
                       json={"user_id": "alice", "items": items}).status_code == 422
    assert client.post("/api/memories/batch",
                       json={"user_id": "alice", "items": []}).status_code == 422
    assert counts(db) == (0, 0)


def test_one_idempotency_key_covers_the_batch(client: TestClient, db: Database) -> None:
    body = {"user_id": "alice", "items": [{"content": "a"}, {"content": "b"}]}
    headers = {"Idempotency-Key": "batch-1"}
    first = client.post("/api/memories/batch", json=body, headers=headers)
    again = client.post("/api/memories/batch", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [m["id"] for m in again.json()["items"]] == [m["id"] for m in first.json()["items"]]
    other = client.post("/api/memories/batch", headers=headers,
                        json={"user_id": "alice", "items": [{"content": "c"}]})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_conflict"
    assert counts(db) == (2, 2)


# -- the caller's own transaction -------------------------------------------------------------


@pytest.fixture
def caller_table(db: Database) -> None:
    """A table of the calling service, in the same database."""
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id serial PRIMARY KEY, note text)"))


def invoices(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM invoices")).scalar_one())


@pytest.mark.usefixtures("caller_table")
def test_the_callers_rollback_leaves_no_memory_and_no_event(
        db: Database, service: MemoryService) -> None:
    def caller() -> None:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO invoices (note) VALUES ('paid')"))
            service.store("alice", "Invoice 7 paid by Acme", conn=conn)
            service.store_many("alice", [NewMemory("one"), NewMemory("two")], conn=conn)
            raise RuntimeError("the caller's own failure, after the writes")

    with pytest.raises(RuntimeError):
        caller()
    assert invoices(db) == 0
    assert counts(db) == (0, 0)


@pytest.mark.usefixtures("caller_table")
def test_the_callers_commit_is_projected(settings: Settings, db: Database,
                                         service: MemoryService, neo4j_driver: Driver) -> None:
    kept, _ = service.store("alice", "Meeting with John Smith about Q4")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO invoices (note) VALUES ('paid')"))
        memory, _ = service.store("alice", "Invoice 7 paid by Acme Corp", conn=conn)
        service.update("alice", kept.id, importance=9, conn=conn)
        assert counts(db) == (1, 1)  # not visible outside the caller's transaction yet
    assert invoices(db) == 1 and counts(db) == (2, 3)
    graph = Neo4jGraph(settings, driver=neo4j_driver)
    graph.ensure_schema()
    parts = build_services(settings, db=db, graph=graph, extractor=RuleExtractor())
    drain(parts.projector, db)
    snapshot = graph.snapshot([str(memory.id), str(kept.id)])
    assert snapshot[str(memory.id)].version == 1 and snapshot[str(kept.id)].version == 2
