"""API keys in Postgres: created, listed and revoked by admins; tenant-bound service keys."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.keys import ApiKeys, key_hash
from app.settings import Settings
from tests.conftest import bearer, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """A short key cache, so revocation shows within a second."""
    return settings.model_copy(update={"api_key_cache_seconds": 1.0})


@pytest.fixture
def admin(quick: Settings, admin_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(quick), headers=bearer(admin_key)) as client:
        yield client


def test_a_created_key_works_is_listed_without_its_secret_and_can_be_revoked(
        admin: TestClient, quick: Settings, db: Database) -> None:
    created = admin.post("/api/admin/keys", json={"name": "billing integration"})
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key.pop("secret")
    assert secret.startswith("svc_") and key["scope"] == "service" and key["namespace"] is None
    with db.engine.connect() as conn:  # only the hash is kept
        stored = conn.execute(text("SELECT key_hash FROM api_keys")).scalar_one()
    assert stored == key_hash(secret) and secret not in str(stored)
    listed = admin.get("/api/admin/keys").json()["items"]
    assert [k["id"] for k in listed] == [key["id"]] and "secret" not in listed[0]

    # Two web processes (two apps, each with its own key cache) accept the key...
    with TestClient(create_app(quick), headers=bearer(secret)) as one, \
            TestClient(create_app(quick), headers=bearer(secret)) as two:
        for web in (one, two):
            assert web.get("/api/memories", params={"user_id": "u"}).status_code == 200
        assert admin.delete(f"/api/admin/keys/{key['id']}").json()["revoked_by"] == \
            "api:admin-key-1"
        # ...and both refuse it within seconds of the revocation.
        for web in (one, two):
            wait_for(lambda w=web: w.get("/api/memories",  # type: ignore[misc]
                                         params={"user_id": "u"}).status_code == 401,
                     10, "the revoked key to be refused")
    assert admin.get("/api/admin/keys").json()["items"] == []
    assert admin.get("/api/admin/keys", params={"include_revoked": True}).json()["items"]
    assert admin.delete("/api/admin/keys/424242").status_code == 404


def test_a_tenant_bound_key_acts_only_in_its_namespace(admin: TestClient,
                                                       quick: Settings) -> None:
    secret = admin.post("/api/admin/keys", json={"name": "acme", "namespace": "acme"}
                        ).json()["secret"]
    with TestClient(create_app(quick), headers=bearer(secret)) as acme:
        mine = acme.post("/api/memories", json={"user_id": "acme:alice", "content": "ours"})
        assert mine.status_code == 201
        for method, path, kwargs in [
                ("POST", "/api/memories", {"json": {"user_id": "globex:bob", "content": "x"}}),
                ("GET", "/api/memories", {"params": {"user_id": "globex:bob"}}),
                ("GET", "/api/memories", {"params": {"user_id": "acme"}}),
                ("GET", f"/api/memories/{mine.json()['id']}", {"params": {"user_id": "bob"}}),
                ("POST", "/api/memories/search", {"json": {"user_id": "bob", "query": "x"}}),
                ("PATCH", f"/api/memories/{mine.json()['id']}",
                 {"json": {"user_id": "globex:bob", "importance": 3}}),
                ("DELETE", f"/api/memories/{mine.json()['id']}", {"params": {"user_id": "x"}}),
                ("POST", "/api/memory/store", {"json": {"userId": "globex:b", "content": "x"}}),
                ("GET", "/api/admin/stats", {})]:
            refused = acme.request(method, path, **kwargs)
            assert refused.status_code == 403, (method, path, refused.text)
        assert acme.get("/api/memories", params={"user_id": "acme:alice"}).json()["items"]


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x", "scope": "admin", "namespace": "acme"}, "namespace"),
    ({"name": "x", "namespace": "no spaces"}, "namespace"),
    ({"name": "x", "scope": "root"}, "scope"),
    ({"name": " "}, "name"),
])
def test_bad_key_requests_are_422(admin: TestClient, body: dict[str, str], field: str) -> None:
    refused = admin.post("/api/admin/keys", json=body)
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == field


def test_a_service_key_cannot_manage_keys(quick: Settings, service_key: str) -> None:
    with TestClient(create_app(quick), headers=bearer(service_key)) as client:
        assert client.post("/api/admin/keys", json={"name": "x"}).status_code == 403
        assert client.get("/api/admin/keys").status_code == 403


def test_unknown_keys_are_cached_but_bounded(quick: Settings, db: Database) -> None:
    keys = ApiKeys(quick, db)
    for i in range(20):
        assert keys.identify(f"nope-{i}") is None
    assert keys.identify("x" * 10_000) is None  # never looked up: no key is that long
    assert len(keys._cache) == 20
