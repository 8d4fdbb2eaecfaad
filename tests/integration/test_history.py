"""Memory history (the audit trail) on the real Postgres: every version, who, when, the delete;
tenant isolation; retention by the scheduler; entries commit with the change or not at all."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.breakers import Breakers
from app.consistency import Consistency
from app.db.connector import Database, Tx
from app.embeddings import HashingEmbedder
from app.errors import NotFound, ValidationError
from app.graph.neo4j import Neo4jGraph
from app.keys import ApiKeys
from app.outbox import Outbox
from app.scheduler import Scheduler, default_tasks
from app.settings import Settings
from app.store import MemoryService, NewMemory
from tests.conftest import bearer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def client(settings: Settings, service_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(service_key)) as test_client:
        yield test_client


def history(client: TestClient, memory_id: str, user: str = "alice",
            **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/memories/{memory_id}/history",
                          params={"user_id": user, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def test_every_version_is_kept_with_the_key_id_and_the_delete_last(
        client: TestClient, db: Database) -> None:
    stored = client.post("/api/memories", json={
        "user_id": "alice", "content": "Lunch with Ana", "metadata": {"where": "cafe"},
        "importance": 4})
    assert stored.status_code == 201
    mid = stored.json()["id"]
    assert client.patch(f"/api/memories/{mid}", json={
        "user_id": "alice", "content": "Lunch with Ana and Bo"}).status_code == 200
    assert client.patch(f"/api/memories/{mid}", json={
        "user_id": "alice", "importance": 9, "metadata": {"where": "park"}}).status_code == 200
    assert client.delete(f"/api/memories/{mid}", params={"user_id": "alice"}).status_code == 200

    items = history(client, mid)["items"]
    assert [(i["version"], i["event"]) for i in items] == [
        (4, "deleted"), (3, "updated"), (2, "updated"), (1, "created")]
    assert {i["actor"] for i in items} == {"settings:service:1"}  # the key's id, not the key
    assert [(i["content"], i["metadata"], i["importance"]) for i in items] == [
        (None, None, None),
        ("Lunch with Ana and Bo", {"where": "park"}, 9),
        ("Lunch with Ana and Bo", {"where": "cafe"}, 4),
        ("Lunch with Ana", {"where": "cafe"}, 4)]
    assert all(i["memory_id"] == mid and i["user_id"] == "alice" for i in items)
    times = [i["changed_at"] for i in items]
    assert times == sorted(times, reverse=True)
    # The memory itself is gone from reads; its trail is not.
    assert client.get(f"/api/memories/{mid}", params={"user_id": "alice"}).status_code == 404
    assert "svc-key-1" not in str(rows(db, "SELECT * FROM memory_history"))


def test_a_database_key_is_named_by_its_id(settings: Settings, db: Database) -> None:
    key = ApiKeys(settings, db).create("integration", "service", actor="test")
    with TestClient(create_app(settings), headers=bearer(key.secret)) as client:
        mid = client.post("/api/memories", json={"user_id": "alice",
                                                 "content": "from a db key"}).json()["id"]
        entry = history(client, mid)["items"][0]
    assert entry["actor"] == f"db:{key.record['id']}"


def test_a_batch_records_each_memory_and_a_replay_records_nothing(
        client: TestClient, db: Database) -> None:
    headers = {"Idempotency-Key": "batch-1"}
    body = {"user_id": "alice", "items": [{"content": f"note {i}"} for i in range(3)]}
    first = client.post("/api/memories/batch", json=body, headers=headers)
    assert first.status_code == 201
    again = client.post("/api/memories/batch", json=body, headers=headers)
    assert again.status_code == 200
    for item in first.json()["items"]:
        assert [(i["version"], i["event"], i["content"]) for i in
                history(client, item["id"])["items"]] == [(1, "created", item["content"])]
    assert len(rows(db, "SELECT id FROM memory_history")) == 3


def test_another_user_gets_404(client: TestClient) -> None:
    mid = client.post("/api/memories", json={"user_id": "alice",
                                             "content": "private"}).json()["id"]
    for params in ({}, {"before_version": 5}, {"limit": 1}):
        response = client.get(f"/api/memories/{mid}/history",
                              params={"user_id": "mallory", **params})
        assert response.status_code == 404, params
        assert "private" not in response.text
    missing = client.get("/api/memories/00000000-0000-0000-0000-000000000001/history",
                         params={"user_id": "alice"})
    assert missing.status_code == 404


def test_a_namespaced_key_cannot_read_another_namespace(
        settings: Settings, db: Database, client: TestClient) -> None:
    mid = client.post("/api/memories", json={"user_id": "acme:ann",
                                             "content": "acme's"}).json()["id"]
    key = ApiKeys(settings, db).create("globex", "service", "globex", actor="test")
    with TestClient(create_app(settings), headers=bearer(key.secret)) as other:
        response = other.get(f"/api/memories/{mid}/history", params={"user_id": "acme:ann"})
    assert response.status_code == 403


def test_pages_are_newest_first_and_bounded(client: TestClient) -> None:
    mid = client.post("/api/memories", json={"user_id": "alice", "content": "v1"}).json()["id"]
    for n in range(2, 6):
        client.patch(f"/api/memories/{mid}", json={"user_id": "alice", "content": f"v{n}"})
    seen: list[int] = []
    before = None
    for _ in range(5):
        page = history(client, mid, limit=2, **({"before_version": before} if before else {}))
        seen += [i["version"] for i in page["items"]]
        before = page["next_before_version"]
        if before is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    assert history(client, mid, before_version=1)["items"] == []  # past the end: empty, no 404
    for bad in ({"limit": 0}, {"limit": 501}, {"before_version": 0},
                {"before_version": "x"}, {"before_version": 2**63}):
        response = client.get(f"/api/memories/{mid}/history",
                              params={"user_id": "alice", **bad})
        assert response.status_code == 422, bad
    assert client.get("/api/memories/not-a-uuid/history",
                      params={"user_id": "alice"}).status_code == 422


def test_library_callers_name_an_actor_or_none(service: MemoryService) -> None:
    memory, _ = service.store("alice", "from a script", actor="cli:nightly-import")
    service.update("alice", memory.id, importance=2)
    service.delete("alice", memory.id, actor="cli:cleanup")
    page = service.history("alice", memory.id)
    assert [(e.version, e.event, e.actor) for e in page.items] == [
        (3, "deleted", "cli:cleanup"), (2, "updated", None), (1, "created", "cli:nightly-import")]
    with pytest.raises(NotFound):
        service.history("bob", memory.id)
    with pytest.raises(ValidationError, match="actor"):
        service.store("alice", "x", actor="a" * 201)
    with pytest.raises(ValidationError, match="limit"):
        service.history("alice", memory.id, limit=0)


def test_history_commits_with_the_callers_transaction_or_not_at_all(
        service: MemoryService, db: Database) -> None:
    with db.engine.connect() as conn:
        with conn.begin():
            kept, _ = service.store("alice", "kept", conn=conn, actor="app:orders")
            service.store_many("alice", [NewMemory("kept too")], conn=conn)
        tx = conn.begin()
        service.store("alice", "rolled back", conn=conn)
        service.update("alice", kept.id, content="rolled back too", conn=conn)
        service.delete("alice", kept.id, conn=conn)
        tx.rollback()
    assert sorted((r.content, r.version) for r in rows(
        db, "SELECT content, version FROM memory_history")) == [("kept", 1), ("kept too", 1)]


def test_a_failed_write_leaves_no_history(service: MemoryService, db: Database) -> None:
    memory, _ = service.store("alice", "before")

    def fail(tx: Tx) -> None:
        raise RuntimeError("the outbox write fails")

    service.before_outbox = fail
    with pytest.raises(RuntimeError):
        service.update("alice", memory.id, content="after")
    with pytest.raises(RuntimeError):
        service.delete("alice", memory.id)
    with pytest.raises(RuntimeError):
        service.store("alice", "never")
    assert [(r.version, r.content) for r in rows(
        db, "SELECT version, content FROM memory_history")] == [(1, "before")]


def _age(db: Database, days: float, where: str = "true", **params: Any) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(f"UPDATE memory_history SET changed_at = now() - make_interval("
                          f"secs => :s) WHERE {where}"), {"s": days * 86400, **params})


def test_retention_prunes_old_entries_but_keeps_each_latest(
        settings: Settings, db: Database) -> None:
    kept = settings.model_copy(update={"history_retention_days": 7.0})
    outbox = Outbox(kept, db)
    svc = MemoryService(kept, db, outbox, HashingEmbedder(kept.embedding_dim))
    edited, _ = svc.store("alice", "edited")
    for n in range(2, 5):
        svc.update("alice", edited.id, content=f"edit {n}")
    old_alone, _ = svc.store("alice", "one old version")
    gone, _ = svc.store("alice", "deleted long ago")
    svc.delete("alice", gone.id)
    recent, _ = svc.store("alice", "recent")
    svc.update("alice", recent.id, content="recent edit")
    _age(db, 30, "memory_id <> :recent", recent=recent.id)  # all but the recent memory's

    graph = Neo4jGraph(kept)  # the scheduler's tasks want one; nothing here connects to it
    try:
        tasks = default_tasks(kept, outbox, Consistency(kept, db, outbox, graph), svc,
                              Breakers(kept, db, outbox), check=False)
        assert "prune_history" in Scheduler(db, tasks).tick()
    finally:
        graph.close()
    left = sorted((str(r.memory_id), r.version) for r in rows(
        db, "SELECT memory_id, version FROM memory_history"))
    assert left == sorted([(str(edited.id), 4), (str(old_alone.id), 1), (str(gone.id), 2),
                           (str(recent.id), 1), (str(recent.id), 2)])
    assert [e.event for e in svc.history("alice", gone.id).items] == ["deleted"]


def test_retention_zero_keeps_everything(service: MemoryService, db: Database) -> None:
    assert service.settings.history_retention_days == 0
    memory, _ = service.store("alice", "v1")
    service.update("alice", memory.id, content="v2")
    _age(db, 10_000)
    assert service.prune_history() == 0
    assert len(rows(db, "SELECT id FROM memory_history")) == 2


def test_pruning_goes_in_bounded_batches(settings: Settings, db: Database) -> None:
    kept = settings.model_copy(update={"history_retention_days": 1.0})
    svc = MemoryService(kept, db, Outbox(kept, db), HashingEmbedder(kept.embedding_dim))
    memory, _ = svc.store("alice", "v1")
    for n in range(2, 8):
        svc.update("alice", memory.id, content=f"v{n}")
    _age(db, 2)
    assert svc.prune_history(limit=2) == 6
    assert [e.version for e in svc.history("alice", memory.id).items] == [7]
