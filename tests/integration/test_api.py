"""The HTTP API on the real Postgres: endpoints, tenant isolation, idempotency, auth, errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.errors import ConfigError
from app.settings import Settings
from devtools.localservers import free_port
from tests.conftest import TestServers, bearer, wait_for

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 and warns when it falls back to httpx; the client behaves
    # the same, and the warning (an error under filterwarnings) would stop collection.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(settings: Settings, service_key: str) -> Iterator[TestClient]:
    """A client of a started app (lifespan ran) sending the service key."""
    with TestClient(create_app(settings), headers=bearer(service_key)) as test_client:
        yield test_client


def count(db: Database, table: str, where: str = "true", **params: Any) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"),
                                params).scalar_one())


def without_graph(body: dict[str, Any]) -> dict[str, Any]:
    """A read's memory without its projection status: what a write answered."""
    return {k: v for k, v in body.items() if k != "graph"}


def store(client: TestClient, user: str = "alice", content: str = "Meeting with John about Q4",
          **extra: Any) -> dict[str, Any]:
    response = client.post("/api/memories", json={"user_id": user, "content": content, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- happy paths ------------------------------------------------------------------------------


def test_health_live_needs_no_key(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_store_returns_the_memory_and_queues_one_event(client: TestClient, db: Database) -> None:
    response = client.post("/api/memories", json={
        "user_id": "alice", "content": "Meeting with John about the Q4 roadmap",
        "metadata": {"source": "calendar", "tags": ["work"]}, "importance": 7})
    assert response.status_code == 201
    body = response.json()
    assert body["user_id"] == "alice"
    assert body["content"] == "Meeting with John about the Q4 roadmap"
    assert body["metadata"] == {"source": "calendar", "tags": ["work"]}
    assert body["importance"] == 7
    assert body["version"] == 1
    assert body["entities"] is None
    assert response.headers["ETag"] == '"1"'
    assert "Idempotent-Replayed" not in response.headers
    assert count(db, "outbox", "memory_id = :id AND memory_version = 1 AND event_type = 'upsert'",
                 id=body["id"]) == 1


def test_store_defaults_importance_and_metadata(client: TestClient) -> None:
    body = store(client)
    assert body["importance"] == 5
    assert body["metadata"] == {}


def test_get_returns_the_memory_with_its_etag(client: TestClient) -> None:
    created = store(client)
    response = client.get(f"/api/memories/{created['id']}", params={"user_id": "alice"})
    assert response.status_code == 200
    body = response.json()
    assert body.pop("graph")["status"] == "pending"  # no worker runs here
    assert body == created
    assert response.headers["ETag"] == '"1"'


def test_list_paginates_with_cursors_and_filters(client: TestClient) -> None:
    ids = [store(client, content=f"note number {i}", importance=1 + i % 3,
                 metadata={"project": "x" if i % 2 else "y"})["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"user_id": "alice", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/api/memories", params=params)
        assert response.status_code == 200
        page = response.json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once

    filtered = client.get("/api/memories", params={
        "user_id": "alice", "metadata": json.dumps({"project": "x"}), "min_importance": 2})
    assert filtered.status_code == 200
    items = filtered.json()["items"]
    assert {m["id"] for m in items} == {ids[1]}  # i=1: project x, importance 2; i=3: importance 1
    assert filtered.json()["next_cursor"] is None


def test_patch_changes_fields_and_bumps_the_version(client: TestClient, db: Database) -> None:
    created = store(client, metadata={"a": 1})
    response = client.patch(f"/api/memories/{created['id']}", json={
        "user_id": "alice", "content": "Meeting with Jane instead", "importance": 9})
    assert response.status_code == 200
    body = response.json()
    assert (body["content"], body["importance"], body["metadata"]) == (
        "Meeting with Jane instead", 9, {"a": 1})
    assert body["version"] == 2
    assert response.headers["ETag"] == '"2"'

    matched = client.patch(f"/api/memories/{created['id']}",
                           json={"user_id": "alice", "metadata": {"b": 2}},
                           headers={"If-Match": '"2"'})
    assert matched.status_code == 200
    assert matched.json()["metadata"] == {"b": 2}
    assert matched.json()["version"] == 3

    by_body = client.patch(f"/api/memories/{created['id']}",
                           json={"user_id": "alice", "importance": 1, "expected_version": 3})
    assert by_body.status_code == 200
    assert by_body.json()["version"] == 4
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT memory_version, event_type FROM outbox"
                                 " WHERE memory_id = :id ORDER BY id"), {"id": created["id"]}).all()
    assert [tuple(r) for r in rows] == [(1, "upsert"), (2, "upsert"), (3, "upsert"),
                                        (4, "upsert")]


def test_delete_tombstones_the_memory(client: TestClient, db: Database) -> None:
    created = store(client)
    response = client.delete(f"/api/memories/{created['id']}",
                             params={"user_id": "alice", "cascade": "false"})
    assert response.status_code == 200
    assert response.json() == {"id": created["id"], "version": 2, "deleted": True}
    assert client.get(f"/api/memories/{created['id']}",
                      params={"user_id": "alice"}).status_code == 404
    again = client.delete(f"/api/memories/{created['id']}", params={"user_id": "alice"})
    assert again.status_code == 404
    assert count(db, "outbox", "memory_id = :id AND memory_version = 2 AND event_type = 'delete'",
                 id=created["id"]) == 1


def test_delete_with_a_matching_version(client: TestClient) -> None:
    created = store(client)
    by_header = client.delete(f"/api/memories/{created['id']}", params={"user_id": "alice"},
                              headers={"If-Match": '"1"'})
    assert by_header.status_code == 200
    other = store(client)
    by_query = client.delete(f"/api/memories/{other['id']}",
                             params={"user_id": "alice", "expected_version": 1})
    assert by_query.status_code == 200


def test_search_returns_the_nearest_first(client: TestClient) -> None:
    store(client, content="Bought oat milk and bread at the grocery store")
    target = store(client, content="Meeting with John about the Q4 roadmap", importance=8,
                   metadata={"kind": "meeting"})
    store(client, content="The cat needs a vet appointment next week")
    response = client.post("/api/memories/search",
                           json={"user_id": "alice", "query": "John Q4 roadmap meeting"})
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3
    assert items[0]["id"] == target["id"]
    scores = [m["score"] for m in items]
    assert scores == sorted(scores, reverse=True)

    filtered = client.post("/api/memories/search", json={
        "user_id": "alice", "query": "grocery", "top_k": 5, "metadata": {"kind": "meeting"},
        "min_importance": 8})
    assert [m["id"] for m in filtered.json()["items"]] == [target["id"]]


def test_legacy_store_route_keeps_the_old_shape(client: TestClient) -> None:
    response = client.post("/api/memory/store", json={
        "userId": "alice", "content": "Old client memory", "importance": 3})
    assert response.status_code == 201
    body = response.json()
    assert (body["user_id"], body["content"], body["importance"]) == (
        "alice", "Old client memory", 3)
    with_meta = client.post("/api/memory/store", json={
        "userId": "alice", "content": "with metadata", "metadata": {"k": "v"}})
    assert with_meta.status_code == 201
    assert with_meta.json()["metadata"] == {"k": "v"}
    assert with_meta.json()["importance"] == 5
    fetched = client.get(f"/api/memories/{body['id']}", params={"user_id": "alice"})
    assert fetched.json()["content"] == "Old client memory"
    # The new shape is not the old route's: user_id is an unknown field there.
    wrong = client.post("/api/memory/store", json={"user_id": "alice", "content": "x"})
    assert wrong.status_code == 422


def test_admin_key_may_use_the_memory_api(settings: Settings, admin_key: str) -> None:
    with TestClient(create_app(settings), headers=bearer(admin_key)) as client:
        assert store(client)["version"] == 1


def test_openapi_documents_the_routes(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    assert set(paths) >= {"/api/memories", "/api/memory/store", "/api/memories/{memory_id}",
                          "/api/memories/search", "/api/health/live", "/api/admin/whoami"}
    assert set(paths["/api/memories"]) == {"get", "post"}
    assert set(paths["/api/memories/{memory_id}"]) == {"get", "patch", "delete"}
    post = paths["/api/memories"]["post"]
    assert post["summary"] == "Store a memory"
    assert {"200", "201", "401", "422", "503"} <= set(post["responses"])
    assert post["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorBody")
    assert "409" in paths["/api/memories/{memory_id}"]["patch"]["responses"]
    assert "403" in paths["/api/admin/whoami"]["get"]["responses"]
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert "security" not in paths["/api/health/live"]["get"]


# -- tenant isolation -------------------------------------------------------------------------


def test_another_users_memory_answers_as_a_missing_one(client: TestClient, db: Database) -> None:
    mine = store(client, user="alice", content="Alice's secret plan", metadata={"p": 1})
    mid, missing = mine["id"], str(uuid.uuid4())

    def both(method: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
        theirs = client.request(method, f"/api/memories/{mid}", **kwargs)
        random = client.request(method, f"/api/memories/{missing}", **kwargs)
        return theirs, random

    for method, kwargs in [
        ("GET", {"params": {"user_id": "bob"}}),
        ("PATCH", {"json": {"user_id": "bob", "content": "hijacked"}}),
        ("PATCH", {"json": {"user_id": "bob", "importance": 1, "expected_version": 1}}),
        ("PATCH", {"json": {"user_id": "bob", "importance": 1}, "headers": {"If-Match": '"9"'}}),
        ("DELETE", {"params": {"user_id": "bob"}}),
        ("DELETE", {"params": {"user_id": "bob", "expected_version": 7}}),
    ]:
        theirs, random = both(method, **kwargs)
        assert theirs.status_code == random.status_code == 404, (method, kwargs)
        assert theirs.content == random.content
        assert theirs.json() == {"error": {"code": "not_found", "message": "memory not found",
                                           "field": None}}
        assert set(theirs.headers) - {"date"} == set(random.headers) - {"date"}

    listed = client.get("/api/memories", params={"user_id": "bob"})
    assert listed.json() == {"items": [], "next_cursor": None}
    filtered = client.get("/api/memories", params={"user_id": "bob", "metadata": '{"p": 1}'})
    assert filtered.json()["items"] == []
    found = client.post("/api/memories/search",
                        json={"user_id": "bob", "query": "Alice's secret plan"})
    assert found.json()["items"] == []

    # Alice's memory is untouched: same version, one outbox row.
    response = client.get(f"/api/memories/{mid}", params={"user_id": "alice"})
    assert without_graph(response.json()) == mine
    assert count(db, "outbox", "memory_id = :id", id=mid) == 1


def test_a_users_cursor_does_not_reveal_another_users_page(client: TestClient) -> None:
    for i in range(3):
        store(client, user="alice", content=f"alice {i}")
    page = client.get("/api/memories", params={"user_id": "alice", "limit": 1}).json()
    theirs = client.get("/api/memories", params={"user_id": "bob",
                                                  "cursor": page["next_cursor"]})
    assert theirs.status_code == 200
    assert theirs.json()["items"] == []


# -- idempotency ------------------------------------------------------------------------------

ROUTES = {
    "new": ("/api/memories", lambda user, content: {"user_id": user, "content": content,
                                                    "importance": 4}),
    "legacy": ("/api/memory/store", lambda user, content: {"userId": user, "content": content,
                                                           "importance": 4}),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_idempotent_post_stores_once(client: TestClient, db: Database, route: str) -> None:
    path, body = ROUTES[route]
    key = {"Idempotency-Key": "req-42"}
    first = client.post(path, json=body("alice", "remember the milk"), headers=key)
    second = client.post(path, json=body("alice", "remember the milk"), headers=key)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert count(db, "memories") == 1
    assert count(db, "outbox") == 1

    other = client.post(path, json=body("alice", "something else"), headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert other.json()["error"]["field"] == "Idempotency-Key"

    # Keys are per user: Bob's "req-42" is a different request.
    bobs = client.post(path, json=body("bob", "remember the milk"), headers=key)
    assert bobs.status_code == 201
    assert bobs.json()["id"] != first.json()["id"]
    assert count(db, "memories") == 2
    assert count(db, "outbox") == 2


def test_both_post_routes_share_idempotency_keys(client: TestClient, db: Database) -> None:
    key = {"Idempotency-Key": "shared"}
    first = client.post("/api/memories", headers=key,
                        json={"user_id": "alice", "content": "same", "importance": 4})
    legacy = client.post("/api/memory/store", headers=key,
                         json={"userId": "alice", "content": "same", "importance": 4})
    assert legacy.status_code == 200
    assert legacy.json()["id"] == first.json()["id"]
    assert count(db, "memories") == 1


# -- authentication ---------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/memories", {"json": {"user_id": "a", "content": "x"}}),
    ("POST", "/api/memory/store", {"json": {"userId": "a", "content": "x"}}),
    ("GET", "/api/memories/{id}", {"params": {"user_id": "a"}}),
    ("GET", "/api/memories", {"params": {"user_id": "a"}}),
    ("PATCH", "/api/memories/{id}", {"json": {"user_id": "a", "importance": 2}}),
    ("DELETE", "/api/memories/{id}", {"params": {"user_id": "a"}}),
    ("POST", "/api/memories/search", {"json": {"user_id": "a", "query": "x"}}),
    ("GET", "/api/admin/whoami", {}),
]


@pytest.mark.parametrize("authorization", ["none", "Bearer not-a-key", "Basic c3ZjOg==",
                                           "Bearer", "raw service key", "Bearer service key+x"])
def test_requests_without_a_valid_key_are_401(settings: Settings, db: Database, service_key: str,
                                              authorization: str) -> None:
    value = {"none": None, "raw service key": service_key,
             "Bearer service key+x": f"Bearer {service_key}x"}.get(authorization, authorization)
    headers = {"Authorization": value} if value else {}
    with TestClient(create_app(settings)) as client:
        for method, path, kwargs in ENDPOINTS:
            response = client.request(method, path.format(id=uuid.uuid4()), headers=headers,
                                      **kwargs)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"
            assert service_key not in response.text
            assert "not-a-key" not in response.text
    assert count(db, "memories") == 0


def test_admin_route_scopes(settings: Settings, service_key: str, admin_key: str) -> None:
    with TestClient(create_app(settings)) as client:
        as_service = client.get("/api/admin/whoami", headers=bearer(service_key))
        as_admin = client.get("/api/admin/whoami", headers=bearer(admin_key))
    assert as_service.status_code == 403
    assert as_service.json()["error"]["code"] == "forbidden"
    assert as_admin.status_code == 200
    assert as_admin.json() == {"scope": "admin"}


def test_keys_never_reach_logs_or_bodies(settings: Settings, service_key: str, admin_key: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-key-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with TestClient(create_app(settings)) as client:
        for key in (service_key, admin_key, wrong):
            for method, path, kwargs in ENDPOINTS:
                response = client.request(method, path.format(id=uuid.uuid4()),
                                          headers=bearer(key), **kwargs)
                bodies.append(response.text)
            bad = client.post("/api/memories", headers=bearer(key),
                              json={"user_id": "a", "content": " ", "x": key})
            bodies.append(bad.text)
            bodies.append(client.get("/api/nowhere", headers=bearer(key)).text)
    assert caplog.records, "expected the requests to log something at DEBUG"
    logged = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    for key in (service_key, admin_key, wrong):
        assert key not in logged
        assert all(key not in body for body in bodies)


def test_served_access_log_never_has_the_key(settings: Settings, service_key: str,
                                             tmp_path: Path) -> None:
    """The real ``serve()`` under uvicorn at DEBUG: the access log is there, the key is not."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": settings.database_url, "API_PORT": str(port),
           "API_HOST": "127.0.0.1", "API_SERVICE_KEYS": service_key, "API_ADMIN_KEYS": "",
           "LOG_LEVEL": "DEBUG", "LOCAL_DIR": str(tmp_path)}
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "web"], cwd=ROOT, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/api/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, log_path.read_text()
                return False

        wait_for(up, timeout=30, what="the API to answer")
        created = httpx.post(f"{base}/api/memories", headers=bearer(service_key), timeout=10,
                             json={"user_id": "alice", "content": "served"})
        assert created.status_code == 201
        denied = httpx.get(f"{base}/api/memories", params={"user_id": "alice"}, timeout=10,
                           headers=bearer("wrong-" + service_key))
        assert denied.status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert '"POST /api/memories HTTP/1.1" 201' in output
    assert '"GET /api/memories?user_id=alice HTTP/1.1" 401' in output
    assert service_key not in output


# -- bad input --------------------------------------------------------------------------------

LONG = "x" * 10_001  # one over the default MAX_CONTENT_CHARS
BAD_INPUT: list[tuple[str, str, str, dict[str, Any], str | None]] = [
    # (case id, method, path ({id}: an existing memory), request kwargs, field)
    ("empty content", "POST", "/api/memories", {"json": {"user_id": "a", "content": ""}},
     "content"),
    ("blank content", "POST", "/api/memories", {"json": {"user_id": "a", "content": " \n\t"}},
     "content"),
    ("oversized content", "POST", "/api/memories", {"json": {"user_id": "a", "content": LONG}},
     "content"),
    ("missing content", "POST", "/api/memories", {"json": {"user_id": "a"}}, "content"),
    ("content not a string", "POST", "/api/memories", {"json": {"user_id": "a", "content": 5}},
     "content"),
    ("importance 0", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "importance": 0}}, "importance"),
    ("importance 11", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "importance": 11}}, "importance"),
    ("importance float", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "importance": 5.5}}, "importance"),
    ("importance string", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "importance": "5"}}, "importance"),
    ("importance bool", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "importance": True}}, "importance"),
    ("metadata list", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "metadata": [1, 2]}}, "metadata"),
    ("metadata string", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "metadata": "{}"}}, "metadata"),
    ("unknown field", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x", "colour": "red"}}, "colour"),
    ("empty user_id", "POST", "/api/memories", {"json": {"user_id": "", "content": "x"}},
     "user_id"),
    ("blank user_id", "POST", "/api/memories", {"json": {"user_id": "  ", "content": "x"}},
     "user_id"),
    ("long user_id", "POST", "/api/memories", {"json": {"user_id": "u" * 129, "content": "x"}},
     "user_id"),
    ("body not JSON", "POST", "/api/memories",
     {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, "body"),
    ("body not an object", "POST", "/api/memories", {"json": ["user_id", "content"]}, "body"),
    ("long Idempotency-Key", "POST", "/api/memories",
     {"json": {"user_id": "a", "content": "x"}, "headers": {"Idempotency-Key": "k" * 256}},
     "Idempotency-Key"),
    ("legacy missing userId", "POST", "/api/memory/store", {"json": {"content": "x"}}, "userId"),
    ("legacy importance", "POST", "/api/memory/store",
     {"json": {"userId": "a", "content": "x", "importance": "high"}}, "importance"),
    ("legacy blank content", "POST", "/api/memory/store",
     {"json": {"userId": "a", "content": "  "}}, "content"),
    ("get non-UUID id", "GET", "/api/memories/not-a-uuid", {"params": {"user_id": "a"}},
     "memory_id"),
    ("get without user_id", "GET", "/api/memories/{id}", {}, "user_id"),
    ("get empty user_id", "GET", "/api/memories/{id}", {"params": {"user_id": ""}}, "user_id"),
    ("list bad cursor", "GET", "/api/memories", {"params": {"user_id": "a",
                                                            "cursor": "not-a-cursor"}}, "cursor"),
    ("list limit 0", "GET", "/api/memories", {"params": {"user_id": "a", "limit": 0}}, "limit"),
    ("list limit 501", "GET", "/api/memories", {"params": {"user_id": "a", "limit": 501}},
     "limit"),
    ("list min_importance 11", "GET", "/api/memories",
     {"params": {"user_id": "a", "min_importance": 11}}, "min_importance"),
    ("list metadata not JSON", "GET", "/api/memories",
     {"params": {"user_id": "a", "metadata": "{oops"}}, "metadata"),
    ("list metadata not an object", "GET", "/api/memories",
     {"params": {"user_id": "a", "metadata": "[1]"}}, "metadata"),
    ("list blank user_id", "GET", "/api/memories", {"params": {"user_id": " "}}, "user_id"),
    ("patch non-UUID id", "PATCH", "/api/memories/123",
     {"json": {"user_id": "alice", "importance": 2}}, "memory_id"),
    ("patch nothing", "PATCH", "/api/memories/{id}", {"json": {"user_id": "alice"}}, None),
    ("patch importance", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 11}}, "importance"),
    ("patch blank content", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "content": " "}}, "content"),
    ("patch oversized content", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "content": LONG}}, "content"),
    ("patch metadata list", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "metadata": []}}, "metadata"),
    ("patch unknown field", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "version": 3}}, "version"),
    ("patch expected_version 0", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2, "expected_version": 0}}, "expected_version"),
    ("patch bad If-Match", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2}, "headers": {"If-Match": "W/\"1\""}},
     "If-Match"),
    ("patch If-Match disagrees", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2, "expected_version": 1},
      "headers": {"If-Match": '"2"'}}, "If-Match"),
    ("delete non-UUID id", "DELETE", "/api/memories/xyz", {"params": {"user_id": "alice"}},
     "memory_id"),
    ("delete empty user_id", "DELETE", "/api/memories/{id}", {"params": {"user_id": ""}},
     "user_id"),
    ("delete bad expected_version", "DELETE", "/api/memories/{id}",
     {"params": {"user_id": "alice", "expected_version": "one"}}, "expected_version"),
    ("delete bad If-Match", "DELETE", "/api/memories/{id}",
     {"params": {"user_id": "alice"}, "headers": {"If-Match": "abc"}}, "If-Match"),
    ("search top_k 0", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "x", "top_k": 0}}, "top_k"),
    ("search top_k 101", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "x", "top_k": 101}}, "top_k"),
    ("search blank query", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "  "}}, "query"),
    ("search metadata list", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "x", "metadata": ["a"]}}, "metadata"),
    ("search min_importance 0", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "x", "min_importance": 0}}, "min_importance"),
    ("search unknown field", "POST", "/api/memories/search",
     {"json": {"user_id": "a", "query": "x", "limit": 3}}, "limit"),
]


@pytest.fixture(scope="module")
def shared_app(test_servers: TestServers) -> Iterator[tuple[TestClient, Database, dict[str, Any]]]:
    """One database and app for the many bad-input cases: each must leave it unchanged."""
    name = f"api_bad_input_{os.getpid()}"
    test_servers.create_database(name)
    settings = test_servers.settings(name)
    database = Database(settings, pool_size=2)
    key = settings.api_service_keys[0].get_secret_value()
    try:
        with TestClient(create_app(settings), headers=bearer(key)) as client:
            yield client, database, store(client, user="alice", content="the original")
    finally:
        database.dispose()
        test_servers.drop_database(name)


@pytest.mark.parametrize(("method", "path", "kwargs", "field"),
                         [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_422_naming_the_field(
    shared_app: tuple[TestClient, Database, dict[str, Any]], method: str, path: str,
    kwargs: dict[str, Any], field: str | None,
) -> None:
    client, db, existing = shared_app
    response = client.request(method, path.format(id=existing["id"]), **kwargs)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field
    if field is not None:
        assert field in error["message"]
    # Nothing half-written: the one memory and its one event, unchanged.
    assert count(db, "memories") == 1
    assert count(db, "outbox") == 1
    after = client.get(f"/api/memories/{existing['id']}", params={"user_id": "alice"})
    assert without_graph(after.json()) == existing
    assert count(db, "memory_history") == 1


# -- conflicts and other errors ---------------------------------------------------------------


def test_stale_version_is_409_with_the_current_version(client: TestClient, db: Database) -> None:
    created = store(client)
    mid = created["id"]
    assert client.patch(f"/api/memories/{mid}",
                        json={"user_id": "alice", "importance": 2}).status_code == 200

    stale_header = client.patch(f"/api/memories/{mid}", headers={"If-Match": '"1"'},
                                json={"user_id": "alice", "content": "lost update"})
    stale_body = client.patch(f"/api/memories/{mid}",
                              json={"user_id": "alice", "importance": 3, "expected_version": 1})
    stale_delete = client.delete(f"/api/memories/{mid}", params={"user_id": "alice"},
                                 headers={"If-Match": '"1"'})
    stale_delete_query = client.delete(f"/api/memories/{mid}",
                                       params={"user_id": "alice", "expected_version": 1})
    for response in (stale_header, stale_body, stale_delete, stale_delete_query):
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "version_conflict"
        assert error["current_version"] == 2
        assert error["field"] == "expected_version"

    current = client.get(f"/api/memories/{mid}", params={"user_id": "alice"}).json()
    assert (current["version"], current["importance"], current["content"]) == (
        2, 2, created["content"])
    assert count(db, "outbox", "memory_id = :id", id=mid) == 2


def test_if_match_star_means_any_version(client: TestClient) -> None:
    created = store(client)
    response = client.patch(f"/api/memories/{created['id']}", headers={"If-Match": "*"},
                            json={"user_id": "alice", "importance": 6})
    assert response.status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/api/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = client.put("/api/memories")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_postgres_unavailable_is_503(client: TestClient, settings: Settings,
                                     test_servers: TestServers) -> None:
    name = settings.database_url.rsplit("/", 1)[1]
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        try:
            stored = client.post("/api/memories", json={"user_id": "a", "content": "x"})
            listed = client.get("/api/memories", params={"user_id": "a"})
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    for response in (stored, listed):
        assert response.status_code == 503
        assert response.json() == {"error": {
            "code": "store_unavailable", "message": "the database is unavailable; retry",
            "field": None}}
    assert client.get("/api/memories", params={"user_id": "a"}).status_code == 200


def test_start_up_refuses_a_mismatched_embedding_dimension(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"embedding_dim": 512}))
    with pytest.raises(ConfigError, match="EMBEDDING_DIM"), TestClient(app):
        pass  # pragma: no cover - start-up fails first


def test_writes_succeed_while_redis_and_neo4j_are_down(settings: Settings,
                                                       service_key: str) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                       "neo4j_uri": f"bolt://127.0.0.1:{free_port()}"})
    with TestClient(create_app(down), headers=bearer(service_key)) as client:
        created = store(client)
        mid = created["id"]
        assert client.patch(f"/api/memories/{mid}",
                            json={"user_id": "alice", "importance": 9}).status_code == 200
        assert client.delete(f"/api/memories/{mid}",
                             params={"user_id": "alice"}).status_code == 200
