"""Hostile and careless input: a clear 4xx naming the field, never a 5xx, nothing lost.

Each case here was a 500 (or a poisoned account) before the input contract existed; the
contract lives in app/validation.py and is applied by the request schemas and MemoryService.
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.embeddings import MiniLMEmbedder, to_pgvector
from app.errors import ValidationError
from app.retrieval import Retrieval
from app.settings import Settings
from app.store import MemoryService
from app.testing import FakeGraph
from tests.conftest import bearer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

BIG = 2**63  # one past Postgres' bigint


@pytest.fixture
def client(settings: Settings, service_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(service_key)) as test_client:
        yield test_client


@pytest.fixture
def admin(settings: Settings, admin_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(admin_key)) as test_client:
        yield test_client


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def memories_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM memories")).scalar_one())


@pytest.fixture
def existing(client: TestClient) -> dict[str, Any]:
    response = client.post("/api/memories", json={"user_id": "alice", "content": "the one"})
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


MID = "00000000-0000-4000-8000-000000000000"
# (case, method, path, request kwargs, field the 422 names)
HOSTILE: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("deep metadata on store", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "x", "metadata": nested(256)}}, "metadata"),
    ("deep metadata on patch", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "metadata": nested(256)}}, "metadata"),
    ("too many metadata keys", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "x",
               "metadata": {f"k{i}": i for i in range(300)}}}, "metadata"),
    ("metadata over 16 KiB", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "x", "metadata": {"v": "x" * 20_000}}},
     "metadata"),
    ("NaN in metadata", "POST", "/api/memories",
     {"content": b'{"user_id": "alice", "content": "x", "metadata": {"n": NaN}}',
      "headers": {"Content-Type": "application/json"}}, "metadata"),
    ("NUL in content", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "a\u0000b"}}, "content"),
    ("NUL in user_id", "POST", "/api/memories",
     {"json": {"user_id": "al\u0000ice", "content": "x"}}, "user_id"),
    ("NUL in a metadata key", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "x", "metadata": {"k\u0000": 1}}}, "metadata"),
    ("NUL in a metadata value", "POST", "/api/memories",
     {"json": {"user_id": "alice", "content": "x", "metadata": {"k": ["\u0000"]}}},
     "metadata"),
    ("lone surrogate in a metadata key", "POST", "/api/memories",
     {"content": b'{"user_id": "alice", "content": "x", "metadata": {"\\ud800": 1}}',
      "headers": {"Content-Type": "application/json"}}, "metadata"),
    ("lone surrogate in content", "POST", "/api/memories",
     {"content": b'{"user_id": "alice", "content": "\\udfff"}',
      "headers": {"Content-Type": "application/json"}}, "content"),
    ("control character in user_id", "POST", "/api/memories",
     {"json": {"user_id": "al\u001fice", "content": "x"}}, "user_id"),
    ("entity-key separator in user_id", "GET", "/api/memories",
     {"params": {"user_id": "a\x1fb"}}, "user_id"),
    ("NUL in the legacy store", "POST", "/api/memory/store",
     {"json": {"userId": "alice", "content": "x\u0000"}}, "content"),
    ("NUL in a PATCH of a missing memory", "PATCH", f"/api/memories/{MID}",
     {"json": {"user_id": "alice", "content": "x\u0000"}}, "content"),
    ("NUL in a list filter", "GET", "/api/memories",
     {"params": {"user_id": "alice", "metadata": '{"k": "\\u0000"}'}}, "metadata"),
    ("NUL in a search filter", "POST", "/api/memories/search",
     {"json": {"user_id": "alice", "query": "x", "metadata": {"k": "\u0000"}}}, "metadata"),
    ("NUL in a search query", "POST", "/api/memories/search",
     {"json": {"user_id": "alice", "query": "x\u0000"}}, "query"),
    ("list filter nested 1500 deep", "GET", "/api/memories",
     {"params": {"user_id": "alice", "metadata": '{"a":' * 1500 + "1" + "}" * 1500}},
     "metadata"),
    ("expected_version beyond bigint", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2, "expected_version": BIG}},
     "expected_version"),
    ("If-Match beyond bigint", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2}, "headers": {"If-Match": f'"{BIG}"'}},
     "If-Match"),
    ("If-Match with a superscript digit", "PATCH", "/api/memories/{id}",
     {"json": {"user_id": "alice", "importance": 2}, "headers": {"If-Match": '"²"'.encode()}},
     "If-Match"),
    ("expected_version beyond bigint on delete", "DELETE", "/api/memories/{id}",
     {"params": {"user_id": "alice", "expected_version": BIG}}, "expected_version"),
    ("a body nested past the JSON parser", "POST", "/api/memories",
     {"content": b"[" * 100_000 + b"]" * 100_000,
      "headers": {"Content-Type": "application/json"}}, "body"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_a_422_naming_the_field(
        client: TestClient, db: Database, existing: dict[str, Any], method: str, path: str,
        kwargs: dict[str, Any], field: str) -> None:
    before = memories_count(db)
    response = client.request(method, path.format(id=existing["id"]), **kwargs)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field or error["field"].startswith(field + "."), error
    assert memories_count(db) == before  # nothing stored
    # The connection was not dropped (an unhandled 500 would have): the same client goes on.
    assert client.get(f"/api/memories/{existing['id']}",
                      params={"user_id": "alice"}).status_code == 200


ADMIN_HOSTILE: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("NUL in a dead-letter error filter", "GET", "/api/admin/dead-letters",
     {"params": {"error": "x\u0000"}}, "error"),
    ("NUL in a replay filter", "POST", "/api/admin/dead-letters/replay",
     {"json": {"filter": {"user_id": "a\u0000"}}}, "filter.user_id"),
    ("before_id beyond bigint", "GET", "/api/admin/dead-letters",
     {"params": {"before_id": BIG}}, "before_id"),
    ("a number as a timestamp", "GET", "/api/admin/dead-letters",
     {"params": {"until": "0.5"}}, "until"),
    ("NUL in sync userId", "POST", "/api/persistence/sync",
     {"json": {"operation": "check", "userId": "a\u0000"}}, "userId"),
    ("dead letter id beyond bigint", "GET", f"/api/admin/dead-letters/{BIG}", {}, "dead_letter_id"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [c[1:] for c in ADMIN_HOSTILE],
                         ids=[c[0] for c in ADMIN_HOSTILE])
def test_hostile_admin_input_is_a_422(admin: TestClient, method: str, path: str,
                                      kwargs: dict[str, Any], field: str) -> None:
    response = admin.request(method, path, **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] in (field, "body." + field, field.split(".")[0])


def test_the_python_api_enforces_the_same_contract(settings: Settings, db: Database,
                                                   service: MemoryService) -> None:
    for call in (lambda: service.store("alice", "a\u0000b"),
                 lambda: service.store("al\x1fice", "x"),
                 lambda: service.store("alice", "x", metadata=nested(40)),
                 lambda: service.store("alice", "x", metadata={"n": float("nan")}),
                 lambda: service.store("alice", "x", metadata={"\ud800": 1}),
                 lambda: service.list("alice", metadata={"k": "\u0000"}),
                 lambda: Retrieval(settings, db, service.embedder, FakeGraph()).search(
                     "alice", "\u0000"),
                 lambda: service.update("alice", MID, importance=2, expected_version=BIG)):
        with pytest.raises(ValidationError):
            call()
    assert memories_count(db) == 0


# -- rows written around the API ------------------------------------------------------------


HOSTILE_ROWS = {
    "metadata 300 deep": {"metadata": json.dumps(nested(300))},
    "metadata 5000 deep": {"metadata": '{"a":' * 5000 + "1" + "}" * 5000},
    "metadata of 2 MB": {"metadata": json.dumps({"v": "x" * 2_000_000})},
    "content of 200k characters": {"content": "y" * 200_000},
    "entities of the wrong shape": {"entities": json.dumps({"entities": [{"nam": 1}, 7]})},
    "entities 5000 deep": {"entities": "[" * 5000 + "]" * 5000},
}


def plant(db: Database, case: dict[str, str]) -> str:
    """A memory row inserted straight into Postgres, as a script or old bug might (with the
    configured embedder's vector of "odd row", so a search finds it)."""
    values = {"content": "odd row", "metadata": "{}", "entities": None, **case}
    embedder = MiniLMEmbedder()
    with db.engine.begin() as conn:
        return str(conn.execute(text(
            "INSERT INTO memories (user_id, content, embedding, embedder, metadata, content_hash,"
            " entities) VALUES ('alice', :content, CAST(:embedding AS vector), :embedder,"
            " CAST(:metadata AS jsonb), 'h', CAST(:entities AS jsonb)) RETURNING id"),
            {**values, "embedding": to_pgvector(embedder.embed(["odd row"])[0]),
             "embedder": embedder.identity},
        ).scalar_one())


@pytest.mark.parametrize("case", list(HOSTILE_ROWS), ids=list(HOSTILE_ROWS))
def test_any_row_in_the_database_can_be_read_listed_searched_and_deleted(
        client: TestClient, db: Database, settings: Settings, case: str) -> None:
    client.post("/api/memories", json={"user_id": "alice", "content": "a normal one"})
    mid = plant(db, HOSTILE_ROWS[case])
    got = client.get(f"/api/memories/{mid}", params={"user_id": "alice"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert len(body["content"]) <= settings.max_content_chars
    assert len(json.dumps(body["metadata"])) <= settings.max_metadata_bytes
    page = client.get("/api/memories", params={"user_id": "alice"})
    assert page.status_code == 200 and len(page.json()["items"]) == 2
    found = client.post("/api/memories/search", json={"user_id": "alice", "query": "odd row"})
    assert found.status_code == 200 and mid in [m["id"] for m in found.json()["items"]]
    assert client.delete(f"/api/memories/{mid}", params={"user_id": "alice"}).status_code == 200
    assert client.get("/api/memories", params={"user_id": "alice"}).status_code == 200


# -- HTTP edges ------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_the_key_is_checked(settings: Settings) -> None:
    with TestClient(create_app(settings)) as anonymous:
        declared = anonymous.post("/api/memories", content=b"x" * (settings.max_body_bytes + 1),
                                  headers={"Content-Type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(settings.max_body_bytes // 65536 + 2):
                yield b"x" * 65536

        streamed = anonymous.post("/api/memories", content=chunks(),
                                  headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413


def test_options_and_wrong_methods_name_every_allowed_method(client: TestClient) -> None:
    options = client.options("/api/memories")
    assert options.status_code == 204
    assert set(options.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    wrong = client.put("/api/memories")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    one = client.put(f"/api/memories/{MID}")
    assert set(one.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE",
                                                      "OPTIONS"}


def test_the_openapi_schema_states_the_rules(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    user_id = spec["components"]["schemas"]["StoreRequest"]["properties"]["user_id"]
    assert "pattern" in user_id  # not blank, no control characters
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if method in ("post", "patch") and "requestBody" in operation:
                assert "422" in operation["responses"], (method, path)


def test_docs_are_served_locally_under_a_strict_policy(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text
    directives = dict(d.strip().split(" ", 1) for d in
                      page.headers["content-security-policy"].split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/init.js").status_code == 200


def test_docs_can_be_turned_off(settings: Settings, service_key: str) -> None:
    quiet = settings.model_copy(update={"api_docs": False})
    with TestClient(create_app(quiet), headers=bearer(service_key)) as off:
        assert off.get("/docs").status_code == 404
        assert off.get("/openapi.json").status_code == 404


def test_rejected_keys_are_logged_once_per_interval(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(settings)) as anonymous, \
            caplog.at_level(logging.WARNING, logger="app.api.guard"):
        for i in range(50):
            assert anonymous.get("/api/memories", params={"user_id": "a"},
                                 headers=bearer(f"wrong-{i}")).status_code == 401
    lines = [r for r in caplog.records if getattr(r, "action", "") == "api.auth_rejected"]
    assert len(lines) == 1 and lines[0].count == 1  # the next line will carry the other 49


def test_a_key_over_its_rate_gets_429_with_retry_after(settings: Settings,
                                                       service_key: str) -> None:
    limited = settings.model_copy(update={"api_rate_limit_per_second": 0.5,
                                          "api_rate_limit_burst": 2})
    with TestClient(create_app(limited), headers=bearer(service_key)) as client:
        answers = [client.get("/api/memories", params={"user_id": "a"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["retry-after"]) >= 1


def test_idempotency_keys_are_scoped_per_api_key_and_pruned(
        settings: Settings, db: Database, service_key: str, admin_key: str,
        service: MemoryService) -> None:
    body = {"user_id": "alice", "content": "once per key"}
    with TestClient(create_app(settings)) as client:
        first = client.post("/api/memories", json=body,
                            headers={**bearer(service_key), "Idempotency-Key": "k1"})
        again = client.post("/api/memories", json=body,
                            headers={**bearer(service_key), "Idempotency-Key": "k1"})
        other = client.post("/api/memories", json=body,
                            headers={**bearer(admin_key), "Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '2 days'"
                          " WHERE scope = 'settings:service:1'"))
    assert service.prune_idempotency_keys() == 1
    with db.engine.connect() as conn:
        left = conn.execute(text("SELECT scope FROM idempotency_keys")).scalars().all()
    assert left == ["settings:admin:1"]


def test_a_retry_after_the_memory_was_deleted_answers_404(client: TestClient) -> None:
    headers = {"Idempotency-Key": "gone"}
    first = client.post("/api/memories", json={"user_id": "alice", "content": "soon gone"},
                        headers=headers)
    client.delete(f"/api/memories/{first.json()['id']}", params={"user_id": "alice"})
    retry = client.post("/api/memories", json={"user_id": "alice", "content": "soon gone"},
                        headers=headers)
    assert retry.status_code == 404  # documented: the memory it created is gone
    assert uuid.UUID(first.json()["id"])
