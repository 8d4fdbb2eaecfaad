"""The admin HTTP API on the real servers: status, readiness, sync operations, dead letters."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from neo4j import Driver
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.breakers import Breakers
from app.db.connector import Database
from app.db.migrations import code_heads
from app.errors import ExtractorMisconfigured
from app.graph.neo4j import Neo4jGraph
from app.jobs import JobRunner
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from devtools.localservers import free_port
from tests.conftest import PoisonExtractor, TestServers, bearer, drain, wait_for

with warnings.catch_warnings():
    # As in test_api.py: Starlette warns when it falls back to httpx; harmless here.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.servers

ADMIN_ACTOR = "api:admin-key-1"
POISON = "POISON"

HEAD = next(iter(code_heads()))


@pytest.fixture
def client(settings: Settings, admin_key: str) -> Iterator[TestClient]:
    """A started app (its own lazily connecting Neo4j driver) sending the admin key."""
    with TestClient(create_app(settings), headers=bearer(admin_key)) as test_client:
        yield test_client


@pytest.fixture
def extractor() -> PoisonExtractor:
    return PoisonExtractor()


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph,
              extractor: PoisonExtractor) -> Projector:
    return Projector(db, Outbox(settings, db), graph, extractor)




def scalar(db: Database, sql: str, **params: Any) -> Any:
    with db.engine.begin() as conn:
        return conn.execute(text(sql), params).scalar_one()


def in_graph(driver: Driver, memory_id: str) -> bool:
    records, _, _ = driver.execute_query(
        "MATCH (m:Memory {id: $id}) WHERE NOT coalesce(m.deleted, false) RETURN m",
        id=memory_id)
    return bool(records)


@pytest.fixture
def world(service: MemoryService, projector: Projector, db: Database) -> dict[str, Any]:
    """Six converged memories of two users."""
    mems = [service.store("alice" if i % 2 else "bob",
                          f"Call {i} with Sarah Connor about Acme Corp")[0] for i in range(6)]
    drain(projector, db)
    return {"memories": [str(m.id) for m in mems]}


@pytest.fixture
def dead(service: MemoryService, projector: Projector, db: Database) -> dict[str, Any]:
    """Three dead letters: alice's upsert, bob's upsert, and a resync of bob's memory."""
    alice, _ = service.store("alice", f"{POISON} note from Alice")
    bob, _ = service.store("bob", f"{POISON} note from Bob")
    service.store("alice", "A healthy note about Project Phoenix")
    drain(projector, db)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO outbox (memory_id, user_id, memory_version, event_type)"
                          " VALUES (:id, 'bob', 1, 'resync')"), {"id": bob.id})
    drain(projector, db)
    with db.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT id, user_id, event_type, memory_id FROM dead_letters ORDER BY id")).all()
    by_kind = {(r.user_id, r.event_type): r.id for r in rows}
    assert set(by_kind) == {("alice", "upsert"), ("bob", "upsert"), ("bob", "resync")}
    return {"alice": by_kind["alice", "upsert"], "bob": by_kind["bob", "upsert"],
            "resync": by_kind["bob", "resync"], "newest_first": sorted(by_kind.values())[::-1],
            "alice_memory": str(alice.id), "bob_memory": str(bob.id)}


@contextmanager
def block_database(test_servers: TestServers, settings: Settings) -> Iterator[None]:
    """Postgres refuses this test database (as if it were down) until the block ends."""
    name = settings.database_url.rsplit("/", 1)[1]
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


# -- access -----------------------------------------------------------------------------------

ADMIN_ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/persistence/status", {}),
    ("GET", "/api/persistence/sync", {}),
    ("POST", "/api/persistence/sync", {"json": {"operation": "check"}}),
    ("GET", "/api/admin/stats", {}),
    ("GET", "/api/admin/outbox/stats", {}),
    ("GET", "/api/admin/dead-letters", {}),
    ("GET", "/api/admin/dead-letters/1", {}),
    ("POST", "/api/admin/dead-letters/1/replay", {}),
    ("POST", "/api/admin/dead-letters/replay", {"json": {"all": True}}),
    ("POST", "/api/admin/dead-letters/1/discard", {"json": {"reason": "x"}}),
]


def test_admin_routes_refuse_a_service_key_and_no_key(settings: Settings, service_key: str,
                                                       db: Database) -> None:
    with TestClient(create_app(settings)) as anonymous:
        for method, path, kwargs in ADMIN_ENDPOINTS:
            as_service = anonymous.request(method, path, headers=bearer(service_key), **kwargs)
            assert as_service.status_code == 403, (method, path)
            assert as_service.json()["error"]["code"] == "forbidden"
            missing = anonymous.request(method, path, **kwargs)
            assert missing.status_code == 401, (method, path)
            assert missing.json()["error"]["code"] == "unauthorized"
        # The supervisor's probes need no key.
        assert anonymous.get("/api/health/live").status_code == 200
        ready = anonymous.get("/api/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "revision": HEAD}
    assert scalar(db, "SELECT count(*) FROM check_runs") == 0  # nothing ran


def test_openapi_documents_the_admin_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for method, path, _ in ADMIN_ENDPOINTS:
        templated = path.replace("/1/", "/{dead_letter_id}/").replace(
            "dead-letters/1", "dead-letters/{dead_letter_id}")
        operation = paths[templated][method.lower()]
        assert {"401", "403"} <= set(operation["responses"]), path
        assert operation["security"] == [{"ApiKey": []}], path
        assert operation["summary"], path
    assert "503" in paths["/api/persistence/status"]["get"]["responses"]
    assert "security" not in paths["/api/health/ready"]["get"]
    assert "503" in paths["/api/health/ready"]["get"]["responses"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["HealthReport"]["properties"]) >= {"breakers", "reasons", "outbox"}
    assert schemas["BreakerReport"]["properties"]["state"]["enum"] == [
        "closed", "open", "half_open", "misconfigured"]
    assert "held" in schemas["OutboxStats"]["properties"]
    body = spec["components"]["schemas"]["SyncBody"]["properties"]
    assert set(body) == {"operation", "userId", "limit", "dryRun", "reextract"}
    params = {p["name"] for p in paths["/api/persistence/sync"]["post"]["parameters"]}
    assert {"operation", "userId", "user_id", "dryRun", "dry_run"} <= params


# -- status and readiness ----------------------------------------------------------------------


def test_status_is_ok_with_every_server_up(client: TestClient) -> None:
    response = client.get("/api/persistence/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["reasons"] == []
    assert set(body["servers"]) == {"postgres", "neo4j", "redis"}
    assert all(s["ok"] and s["latency_ms"] is not None for s in body["servers"].values())
    assert body["outbox"]["pending"] == 0 and body["dead_letters"] == 0
    assert body["outbox"]["held"] == 0
    assert {n: b["state"] for n, b in body["breakers"].items()} == {
        "graph": "closed", "extractor": "closed"}


def test_status_shows_an_open_breaker_and_is_degraded(
        client: TestClient, settings: Settings, db: Database, service: MemoryService) -> None:
    outbox = Outbox(settings, db)
    breakers = Breakers(settings, db, outbox)
    breakers.failed("extractor", ExtractorMisconfigured(
        "LLM endpoint refused our settings (HTTP 401: bad key): check LLM_API_KEY"))
    service.store("alice", "waiting for the extractor")
    with outbox.claim(10) as ids:
        pass
    outbox.release(outbox.work(ids), "ExtractorMisconfigured: HTTP 401", breaker="extractor")

    response = client.get("/api/persistence/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    (reason,) = body["reasons"]
    assert reason.startswith("extractor misconfigured since ") and "1 rows held" in reason
    assert "LLM_API_KEY" in reason
    extractor = body["breakers"]["extractor"]
    assert extractor["state"] == "misconfigured" and extractor["held"] == 1
    assert extractor["opened_at"] and extractor["next_probe_at"]
    assert "HTTP 401" in extractor["last_error"]
    assert body["breakers"]["graph"]["state"] == "closed"
    assert body["outbox"]["held"] == 1

    breakers.close("extractor")
    body = client.get("/api/persistence/status").json()
    assert body["status"] == "ok" and body["outbox"]["held"] == 0
    assert "HTTP 401" in body["breakers"]["extractor"]["last_error"]  # kept for the record


def test_status_is_503_when_postgres_is_down(client: TestClient, settings: Settings,
                                             test_servers: TestServers) -> None:
    with block_database(test_servers, settings):
        status = client.get("/api/persistence/status")
        ready = client.get("/api/health/ready")
        live = client.get("/api/health/live")
    assert status.status_code == 503
    error = status.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["message"].startswith("postgres unreachable")
    assert error["health"]["status"] == "down"
    assert error["health"]["servers"]["postgres"]["ok"] is False
    assert error["health"]["servers"]["neo4j"]["ok"] is True
    assert ready.status_code == 503
    assert ready.json()["error"] == {"code": "not_ready", "field": None,
                                     "message": "the database is unavailable"}
    assert live.status_code == 200
    assert client.get("/api/persistence/status").json()["status"] == "ok"  # back again
    assert client.get("/api/health/ready").status_code == 200


@pytest.mark.parametrize("server", ["neo4j", "redis"])
def test_status_is_degraded_and_writes_go_on_when_one_server_is_down(
        settings: Settings, admin_key: str, service_key: str, server: str,
        neo4j_driver: Driver) -> None:
    down = settings.model_copy(update={
        "neo4j": {"neo4j_uri": f"bolt://127.0.0.1:{free_port()}"},
        "redis": {"redis_url": f"redis://127.0.0.1:{free_port()}/0"}}[server])
    with TestClient(create_app(down), headers=bearer(admin_key)) as client:
        status = client.get("/api/persistence/status")
        ready = client.get("/api/health/ready")
        stored = client.post("/api/memories", headers=bearer(service_key),
                             json={"user_id": "alice", "content": "written while degraded"})
        check = client.post("/api/persistence/sync?wait=true", json={"operation": "check"})
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["status"] == "degraded"
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith(f"{server} unreachable")
    assert body["servers"][server]["ok"] is False and body["servers"][server]["error"]
    assert body["servers"]["postgres"]["ok"] is True
    assert body["outbox"]["pending"] == 0
    assert ready.status_code == 200  # readiness never depends on Neo4j or Redis
    assert stored.status_code == 201
    if server == "neo4j":  # a check needs the graph: a prompt 503, not a hang
        assert check.status_code == 503
        assert check.json()["error"]["code"] == "unavailable"
    else:  # Redis plays no part in a check; the new memory is in transit, not missing
        assert check.status_code == 200, check.text
        assert check.json()["consistent"] is True and check.json()["check"]["in_transit"] == 1


def test_ready_is_503_until_the_schema_is_migrated(client: TestClient, db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000_old'"))
    stale = client.get("/api/health/ready")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": HEAD})
    assert stale.status_code == 503
    error = stale.json()["error"]
    assert error["code"] == "not_ready"
    assert "0000_old" in error["message"] and "memctl migrate" in error["message"]
    assert client.get("/api/health/ready").status_code == 200


# -- sync -------------------------------------------------------------------------------------


def sync(client: TestClient, status: int = 200, params: dict[str, Any] | None = None,
         **body: Any) -> dict[str, Any]:
    """Run a sync operation and return its report: a check inside the request (``wait=true``),
    anything else as a background job, followed to its end (the ``job_runner`` runs it)."""
    operation = body.get("operation", (params or {}).get("operation"))
    if operation == "check":
        params = {**(params or {}), "wait": "true"}
    response = client.post("/api/persistence/sync", json=body or None, params=params)
    if operation == "check":
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    wait_for(lambda: client.get(location).json()["status"] not in ("queued", "running"), 60,
             f"{operation} job to end")
    job = client.get(location).json()
    assert job["status"] == "done", job
    report: dict[str, Any] = job["result"]
    return report


def open_inconsistencies(db: Database) -> int:
    return int(scalar(db, "SELECT count(*) FROM inconsistencies WHERE resolved_at IS NULL"))


def test_check_dry_run_repair_and_check_again(client: TestClient, world: dict[str, Any],
                                              neo4j_driver: Driver, projector: Projector,
                                              db: Database, job_runner: JobRunner) -> None:
    clean = sync(client, operation="check")
    assert clean["consistent"] is True and clean["findings"] == []
    assert clean["check"]["checked"] == 6 and clean["check"]["stored"] is True
    assert set(clean["check"]["by_kind"].values()) == {0}

    target = world["memories"][1]
    neo4j_driver.execute_query("MATCH (m:Memory {id: $id}) SET m.version = m.version - 1",
                               id=target)
    dry = sync(client, operation="check", dryRun=True)
    assert dry["consistent"] is False and dry["check"]["stored"] is False
    assert [(f["kind"], f["memory_id"]) for f in dry["findings"]] == [("stale_version", target)]
    assert open_inconsistencies(db) == 0  # a dry run stores nothing

    found = sync(client, operation="check", userId="alice")
    assert found["check"]["by_kind"]["stale_version"] == 1 and found["check"]["stored"]
    assert open_inconsistencies(db) == 1
    stats = client.get("/api/persistence/sync").json()
    assert stats["inconsistencies"] == {"stale_version": 1}
    assert stats["last_check"]["found"] == 1 and stats["last_check"]["scope"] == "alice"
    assert client.get("/api/admin/stats").json()["inconsistencies"] == {"stale_version": 1}

    planned = sync(client, operation="repair", dry_run=True)
    assert planned["repair"] == {"queued": 1, "removed_memories": 0, "removed_entities": 0,
                                 "removed_cross_user_edges": False, "dry_run": True}
    assert scalar(db, "SELECT count(*) FROM outbox WHERE event_type = 'resync'") == 0

    repaired = sync(client, params={"operation": "repair", "user_id": "alice"})
    assert repaired["repair"]["queued"] == 1 and repaired["repair"]["dry_run"] is False
    drain(projector, db)
    final = sync(client, operation="check")
    assert final["consistent"] is True
    assert open_inconsistencies(db) == 0
    assert client.get("/api/persistence/sync").json()["inconsistencies"] == {}


def test_full_and_rebuild(client: TestClient, world: dict[str, Any], neo4j_driver: Driver,
                          projector: Projector, db: Database, job_runner: JobRunner) -> None:
    neo4j_driver.execute_query("MATCH (m:Memory {id: $id}) DETACH DELETE m",
                               id=world["memories"][0])
    neo4j_driver.execute_query("CREATE (:Entity {key: 'alice|person|nobody', user_id: 'alice',"
                               " name: 'Nobody', type: 'person'})")
    full = sync(client, params={"operation": "full"})
    assert full["consistent"] is False
    assert {f["kind"] for f in full["findings"]} == {"missing_in_graph", "orphan_entity"}
    assert full["repair"]["queued"] == 1 and full["repair"]["removed_entities"] == 1
    drain(projector, db)
    assert sync(client, operation="check")["consistent"] is True

    neo4j_driver.execute_query("MATCH (m:Memory {user_id: 'bob'}) SET m.version = 99")
    rebuilt = sync(client, operation="rebuild", userId="bob")
    assert rebuilt["rebuild"]["projected"] == 3 and rebuilt["rebuild"]["extracted"] == 0
    again = sync(client, operation="rebuild", reextract=True)
    assert again["rebuild"]["projected"] == 6 and again["rebuild"]["extracted"] == 6
    assert sync(client, operation="check")["consistent"] is True


@pytest.mark.parametrize(("body", "params", "field"), [
    ({"operation": "explode"}, None, "operation"),
    (None, {"operation": "explode"}, "operation"),
    ({"userId": "alice"}, None, "operation"),
    ({"operation": "rebuild", "dryRun": True}, None, "dryRun"),
    ({"operation": "rebuild", "limit": 5}, None, "limit"),
    ({"operation": "check", "reextract": True}, None, "reextract"),
    ({"operation": "check", "limit": 0}, None, "limit"),
    ({"operation": "check", "dryRun": "yes"}, None, "dryRun"),
    ({"operation": "check", "surprise": 1}, None, "surprise"),
    (None, {"operation": "check", "userId": "a", "user_id": "b"}, "userId"),
])
def test_bad_sync_requests_are_422_naming_the_field(
        client: TestClient, db: Database, body: dict[str, Any] | None,
        params: dict[str, Any] | None, field: str) -> None:
    response = client.post("/api/persistence/sync", json=body, params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == field
    assert scalar(db, "SELECT count(*) FROM check_runs") == 0


# -- dead letters -------------------------------------------------------------------------------


def listed(client: TestClient, **params: Any) -> list[int]:
    response = client.get("/api/admin/dead-letters", params=params)
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["items"]]


def test_dead_letters_are_listed_with_each_filter_and_paginated(
        client: TestClient, dead: dict[str, Any]) -> None:
    everyone = dead["newest_first"]
    assert listed(client) == everyone
    assert listed(client, user_id="alice") == [dead["alice"]]
    assert listed(client, event_type="resync") == [dead["resync"]]
    assert listed(client, error="ALWAYS FAILS") == everyone  # substring, any case
    assert listed(client, error="no such error") == []
    hour = timedelta(hours=1)
    now = datetime.now(UTC)
    assert listed(client, since=(now - hour).isoformat()) == everyone
    assert listed(client, since=(now + hour).isoformat()) == []
    assert listed(client, until=(now - hour).isoformat()) == []
    assert listed(client, until=(now + hour).replace(tzinfo=None).isoformat()) == everyone
    assert listed(client, status="replayed") == []

    seen, cursor = [], None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 1, **({"before_id": cursor} if cursor else {})}
        page = client.get("/api/admin/dead-letters", params=params).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_before_id"]
        if cursor is None:
            break
    assert seen == everyone
    full_page = client.get("/api/admin/dead-letters", params={"limit": 3}).json()
    assert full_page["next_before_id"] is None  # exactly one page: no empty page after it

    bad = client.get("/api/admin/dead-letters", params={"status": "lost"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


def test_show_replay_by_id_after_the_cause_is_fixed(
        client: TestClient, dead: dict[str, Any], extractor: PoisonExtractor,
        projector: Projector, db: Database, neo4j_driver: Driver) -> None:
    shown = client.get(f"/api/admin/dead-letters/{dead['alice']}")
    assert shown.status_code == 200
    letter = shown.json()
    assert letter["status"] == "dead" and letter["user_id"] == "alice"
    assert letter["memory_id"] == dead["alice_memory"] and letter["attempts"] == 1
    assert letter["last_error"] == "ExtractionError: this content always fails"
    assert [(e["attempt"], e["error"]) for e in letter["errors"]] == [
        (1, "ExtractionError: this content always fails")]
    assert letter["errors"][0]["at"]

    extractor.armed = False  # the cause is fixed
    replayed = client.post(f"/api/admin/dead-letters/{dead['alice']}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"replayed": [dead["alice"]], "count": 1, "skipped": []}
    with db.engine.begin() as conn:
        row = conn.execute(text("SELECT o.status, o.attempts FROM outbox o JOIN dead_letters d"
                                " ON d.outbox_id = o.id WHERE d.id = :id"),
                           {"id": dead["alice"]}).one()
    assert (row.status, row.attempts) == ("pending", 0)
    after = client.get(f"/api/admin/dead-letters/{dead['alice']}").json()
    assert after["status"] == "replayed" and after["resolved_by"] == ADMIN_ACTOR
    assert after["resolved_at"] is not None

    again = client.post(f"/api/admin/dead-letters/{dead['alice']}/replay")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_resolved"
    drain(projector, db)
    assert in_graph(neo4j_driver, dead["alice_memory"])
    assert listed(client, status="replayed") == [dead["alice"]]


def test_replay_by_filter_then_all(client: TestClient, dead: dict[str, Any],
                                   extractor: PoisonExtractor, projector: Projector,
                                   db: Database, neo4j_driver: Driver) -> None:
    extractor.armed = False
    by_filter = client.post("/api/admin/dead-letters/replay",
                            json={"filter": {"user_id": "bob", "event_type": "resync"}})
    assert by_filter.status_code == 200, by_filter.text
    assert by_filter.json()["replayed"] == [dead["resync"]]
    none_left = client.post("/api/admin/dead-letters/replay",
                            json={"filter": {"error": "nothing like this"}})
    assert none_left.json() == {"replayed": [], "count": 0, "skipped": []}

    everything = client.post("/api/admin/dead-letters/replay", json={"all": True})
    assert everything.json()["replayed"] == sorted([dead["alice"], dead["bob"]])
    assert listed(client) == []
    drain(projector, db)
    assert in_graph(neo4j_driver, dead["alice_memory"])
    assert in_graph(neo4j_driver, dead["bob_memory"])
    stats = client.get("/api/admin/stats").json()
    assert stats["dead_letters"] == {"open": 0, "replayed": 3, "discarded": 0}
    assert stats["outbox"]["dead"] == 0 and stats["outbox"]["pending"] == 0


@pytest.mark.parametrize(("body", "status", "field"), [
    ({}, 422, "ids"),
    ({"ids": [1], "all": True}, 422, "all"),
    ({"ids": [1], "filter": {"user_id": "bob"}}, 422, "filter"),
    ({"filter": {}}, 422, "filter"),
    ({"ids": []}, 422, "ids"),
    ({"filter": {"user": "bob"}}, 422, "filter.user"),
    ({"ids": [999_999]}, 404, None),
])
def test_bad_replay_requests(client: TestClient, dead: dict[str, Any], db: Database,
                             body: dict[str, Any], status: int, field: str | None) -> None:
    response = client.post("/api/admin/dead-letters/replay", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert scalar(db, "SELECT count(*) FROM dead_letters WHERE status = 'dead'") == 3


def test_discard_needs_a_reason_and_keeps_it(client: TestClient, dead: dict[str, Any],
                                             db: Database) -> None:
    url = f"/api/admin/dead-letters/{dead['bob']}/discard"
    for body in (None, {}, {"reason": "   "}):
        refused = client.post(url, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] in ("reason", "body")
    done = client.post(url, json={"reason": "Bob's note was imported by mistake"})
    assert done.status_code == 200, done.text
    assert done.json() == {"id": dead["bob"], "status": "discarded", "resolved_by": ADMIN_ACTOR,
                           "reason": "Bob's note was imported by mistake"}
    letter = client.get(f"/api/admin/dead-letters/{dead['bob']}").json()
    assert letter["status"] == "discarded"
    assert letter["resolution_note"] == "Bob's note was imported by mistake"
    assert letter["resolved_by"] == ADMIN_ACTOR
    assert client.post(url, json={"reason": "again"}).status_code == 409
    # A discarded letter is closed: replaying it by id is refused, and its row stays dead.
    assert client.post(f"/api/admin/dead-letters/{dead['bob']}/replay").status_code == 409
    assert scalar(db, "SELECT o.status FROM outbox o JOIN dead_letters d ON d.outbox_id = o.id"
                      " WHERE d.id = :id", id=dead["bob"]) == "dead"
    stats = client.get("/api/admin/stats").json()
    assert stats["dead_letters"] == {"open": 2, "replayed": 0, "discarded": 1}
    assert client.get("/api/admin/outbox/stats").json()["dead"] == 3
    assert listed(client, status="discarded") == [dead["bob"]]


def test_unknown_dead_letters_are_404(client: TestClient, db: Database) -> None:
    for method, path, kwargs in [
            ("GET", "/api/admin/dead-letters/424242", {}),
            ("POST", "/api/admin/dead-letters/424242/replay", {}),
            ("POST", "/api/admin/dead-letters/424242/discard", {"json": {"reason": "x"}})]:
        response = client.request(method, path, **kwargs)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"] == {"code": "not_found", "field": None,
                                            "message": "dead letter not found"}


def test_stats_and_outbox_stats_reflect_the_work(client: TestClient, world: dict[str, Any],
                                                 service: MemoryService) -> None:
    service.store("carol", "Something new about " + uuid.uuid4().hex)
    stats = client.get("/api/admin/stats").json()
    assert stats["memories"]["live"] == 7 and stats["memories"]["users"] == 3
    assert stats["outbox"]["pending"] == 1 and stats["outbox"]["done"] == 6
    assert stats["graph"]["memories"] == 6
    assert stats["last_check"] is None
    again = client.get("/api/persistence/sync").json()
    assert {k: v for k, v in again.items() if k != "outbox"} == {
        k: v for k, v in stats.items() if k != "outbox"}
    outbox = client.get("/api/admin/outbox/stats").json()
    assert outbox["pending"] == 1 and outbox["lag_seconds"] >= 0
