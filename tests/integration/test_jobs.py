"""Background sync jobs on the real servers: the HTTP contract, a runner thread executing them,
progress while running, cancel, a dead runner's job resumed or failed, and fencing.

A runner here is ``JobRunner`` in a thread of the test process (the web process never runs
jobs); its graph is wrapped in a gate the test opens page by page, so "while running" is a
state the test holds, not a race. The real SIGKILL of a runner process is in
tests/acceptance/test_job_runner.py.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from neo4j import Driver
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.consistency import Consistency, SyncRequest
from app.db.connector import Database
from app.errors import JobFinished, JobNotFound
from app.graph.base import GraphStore
from app.graph.neo4j import Neo4jGraph
from app.jobs import JobRunner, Jobs
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import bearer, drain, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.servers
JOB_SETTINGS: dict[str, object] = {"job_lease_seconds": 3, "job_retry_seconds": 0.1,
                                   "job_poll_seconds": 0.2, "job_max_attempts": 2}


class Gate:
    """Holds the runner before each page's graph read until the test lets a page through."""

    def __init__(self, open_pages: int = 0) -> None:
        self.permits = threading.Semaphore(open_pages)
        self.waiting = threading.Event()

    def passage(self) -> None:
        self.waiting.set()
        if not self.permits.acquire(timeout=60):
            raise TimeoutError("the test never opened the gate")

    def let(self, pages: int = 1) -> None:
        self.permits.release(pages)

    def open(self) -> None:
        self.permits.release(100_000)


class GatedGraph:
    """The real graph store, except that every page of a check waits at the gate."""

    def __init__(self, graph: GraphStore, gate: Gate) -> None:
        self._graph = graph
        self._gate = gate

    def snapshot(self, ids: list[str]) -> Any:
        self._gate.passage()
        return self._graph.snapshot(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


@pytest.fixture
def job_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=JOB_SETTINGS)


@pytest.fixture
def jobs(job_settings: Settings, db: Database) -> Jobs:
    return Jobs(job_settings, db)


@pytest.fixture
def gate() -> Gate:
    return Gate(open_pages=100_000)


@pytest.fixture
def runner(job_settings: Settings, db: Database, graph: Neo4jGraph, jobs: Jobs,
           gate: Gate) -> Iterator[JobRunner]:
    """A runner thread on this test's database, one memory per page."""
    consistency = Consistency(job_settings, db, Outbox(job_settings, db),
                              GatedGraph(graph, gate), page_size=1)  # type: ignore[arg-type]
    loop = JobRunner(job_settings, jobs, lambda: consistency, db, name="test-runner")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    yield loop
    gate.open()
    loop.stop()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def client(job_settings: Settings, admin_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(job_settings), headers=bearer(admin_key)) as test_client:
        yield test_client


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph) -> Projector:
    return Projector(db, Outbox(settings, db), graph, _rules())


def _rules() -> Any:
    from app.extraction import RuleExtractor

    return RuleExtractor()


@pytest.fixture
def world(service: MemoryService, projector: Projector, db: Database) -> list[str]:
    """Three memories of alice and one of bob, projected."""
    ids = [str(service.store("alice", text_)[0].id) for text_ in (
        "Meeting with John Smith about the Q4 roadmap at Acme Corp",
        "Lunch with Sarah Connor in Berlin",
        "Email Jane Doe about the budget")]
    ids.append(str(service.store("bob", "Bob met Dr. Jane Doe at Globex Corporation")[0].id))
    drain(projector, db)
    return ids


def job_of(client: TestClient, job_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/persistence/sync/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def finished(client: TestClient, job_id: int, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: job_of(client, job_id)["status"] in ("done", "failed", "cancelled"),
             timeout, f"job {job_id} to end")
    return job_of(client, job_id)


def test_a_full_sync_is_a_job_the_runner_completes_with_its_report(
        client: TestClient, runner: JobRunner, world: list[str], neo4j_driver: Driver,
        projector: Projector, db: Database) -> None:
    neo4j_driver.execute_query("MATCH (m:Memory {id: $id}) DETACH DELETE m", id=world[0])
    answer = client.post("/api/persistence/sync", json={"operation": "full"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/api/persistence/sync/jobs/{job['id']}"
    assert job["kind"] == "full" and job["status"] in ("queued", "running")
    assert job["requested_by"] == "api:admin-key-1"
    assert job["params"] == {"user_id": None, "limit": None, "dry_run": False,
                             "reextract": False}

    done = finished(client, job["id"])
    assert done["status"] == "done", done
    assert done["attempts"] == 1 and done["error"] is None
    report = done["result"]
    assert report["operation"] == "full" and report["consistent"] is False
    missing = [f["memory_id"] for f in report["findings"] if f["kind"] == "missing_in_graph"]
    orphans = [f for f in report["findings"] if f["kind"] == "orphan_entity"]
    assert missing == [world[0]] and len(orphans) == len(report["findings"]) - 1
    assert report["repair"]["queued"] == 1
    assert report["repair"]["removed_entities"] == len(orphans)
    assert done["started_at"] and done["finished_at"] and done["seconds"] >= 0
    phases = {p["name"]: p for p in done["progress"]["phases"]}
    assert phases["memories"] == {"name": "memories", "done": 4, "total": 4}
    assert phases["repair"] == {"name": "repair", "done": 1, "total": 1}
    assert phases["graph"]["done"] == 3 and phases["graph"]["total"] is None

    drain(projector, db)  # the repair went through the outbox
    check = client.post("/api/persistence/sync", params={"wait": "true"},
                        json={"operation": "check"})
    assert check.status_code == 200 and check.json()["consistent"] is True

    listed = client.get("/api/persistence/sync/jobs").json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert listed["items"][0]["status"] == "done" and listed["next_before_id"] is None


def test_progress_is_visible_while_the_job_runs(
        client: TestClient, runner: JobRunner, world: list[str], gate: Gate,
        jobs: Jobs) -> None:
    gate.permits = threading.Semaphore(2)  # two pages, then the runner waits
    job_id = client.post("/api/persistence/sync",
                         json={"operation": "check", "userId": "alice"}).json()["id"]
    wait_for(lambda: job_of(client, job_id)["progress"]["done"] == 2, 30,
             "two pages of progress")
    running = job_of(client, job_id)
    assert running["status"] == "running" and running["finished_at"] is None
    assert running["progress"]["phase"] == "memories"
    assert running["progress"]["total"] == 3 and running["progress"]["percent"] == 67
    assert running["heartbeat_at"] is not None
    assert jobs.get(job_id).runner == "test-runner"
    gate.open()
    done = finished(client, job_id)
    assert done["status"] == "done" and done["result"]["check"]["checked"] == 3
    assert done["result"]["consistent"] is True


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_page(
        client: TestClient, world: list[str], job_settings: Settings, db: Database,
        graph: Neo4jGraph, jobs: Jobs) -> None:
    # No runner yet: the job stays queued and a cancel ends it at once.
    queued = client.post("/api/persistence/sync", json={"operation": "rebuild"}).json()
    cancelled = client.post(f"/api/persistence/sync/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_by"] == "api:admin-key-1"
    again = client.post(f"/api/persistence/sync/jobs/{queued['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"

    gate = Gate(open_pages=1)
    consistency = Consistency(job_settings, db, Outbox(job_settings, db),
                              GatedGraph(graph, gate), page_size=1)  # type: ignore[arg-type]
    loop = JobRunner(job_settings, jobs, lambda: consistency, db, name="test-runner")
    running = client.post("/api/persistence/sync", json={"operation": "check"}).json()
    claim = jobs.claim("test-runner")
    assert claim is not None and claim.job.id == running["id"]
    worker = threading.Thread(target=loop.execute, args=(claim,), daemon=True)
    worker.start()
    try:
        wait_for(lambda: job_of(client, running["id"])["progress"]["done"] == 1, 30,
                 "the first page")
        asked = client.post(f"/api/persistence/sync/jobs/{running['id']}/cancel").json()
        assert asked["status"] == "running" and asked["cancel_requested_at"] is not None
        gate.let(1)  # the second page ends, and the runner sees the cancel
        worker.join(30)
    finally:
        gate.open()
        worker.join(30)
    ended = job_of(client, running["id"])
    assert ended["status"] == "cancelled" and ended["result"] is None
    assert ended["progress"]["done"] == 2 and ended["progress"]["total"] == 4
    assert jobs.claim("test-runner") is None  # nothing left to run
    with db.engine.begin() as conn:  # the check stopped part-way is not left "running"
        assert conn.execute(text("SELECT count(*) FROM check_runs")).scalar() == 0


def _expire(db: Database, job_id: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE sync_jobs SET lease_expires_at = now() - interval '1 second'"
                          " WHERE id = :id"), {"id": job_id})


def test_a_dead_runners_job_is_resumed_by_the_next_runner_and_the_dead_one_is_fenced_out(
        world: list[str], jobs: Jobs, db: Database, job_settings: Settings,
        graph: Neo4jGraph) -> None:
    job = jobs.submit(SyncRequest("check", "bob"), "test")
    dead = jobs.claim("runner-that-dies")
    assert dead is not None and dead.job.id == job.id and dead.job.attempts == 1
    # The runner died: no heartbeat, and its lease runs out.
    _expire(db, job.id)
    assert jobs.get(job.id).status == "running"
    resumed = jobs.claim("runner-two")
    assert resumed is not None and resumed.job.id == job.id and resumed.job.attempts == 2
    # The dead runner wakes up: every write of its claim changes nothing.
    assert jobs.finish(dead, "failed", error="stale") is False
    assert jobs.requeue(dead, "stale", delay=0, refund=True) is False
    with pytest.raises(Exception, match="lease lost"):
        jobs.heartbeat(dead)
    consistency = Consistency(job_settings, db, Outbox(job_settings, db), graph)
    JobRunner(job_settings, jobs, lambda: consistency, db, name="runner-two").execute(resumed)
    done = jobs.get(job.id)
    assert done.status == "done" and done.attempts == 2 and done.runner == "runner-two"
    assert done.result is not None and done.result["check"]["checked"] == 1


def test_a_job_whose_runner_died_on_its_last_attempt_fails_and_is_not_stuck(
        world: list[str], jobs: Jobs, db: Database, job_settings: Settings,
        graph: Neo4jGraph) -> None:
    job = jobs.submit(SyncRequest("rebuild"), "test")
    for attempt in (1, 2):  # JOB_MAX_ATTEMPTS=2: two runners die in turn
        claim = jobs.claim(f"dies-{attempt}")
        assert claim is not None and claim.job.attempts == attempt
        _expire(db, job.id)
    loop = JobRunner(job_settings, jobs,
                     lambda: Consistency(job_settings, db, Outbox(job_settings, db), graph),
                     db, name="survivor")
    assert loop.run_once() is False  # reaped, not claimed again
    failed = jobs.get(job.id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error == "the runner stopped (its lease ran out) on each of 2 attempts"
    # A cancel asked of a job whose runner died ends it too.
    other = jobs.submit(SyncRequest("check"), "test")
    assert jobs.claim("dies") is not None
    _expire(db, other.id)
    assert jobs.cancel(other.id, "test").status == "cancelled"


def test_a_job_that_meets_a_running_rebuild_waits_without_spending_an_attempt(
        world: list[str], jobs: Jobs, db: Database, job_settings: Settings,
        graph: Neo4jGraph) -> None:
    consistency = Consistency(job_settings, db, Outbox(job_settings, db), graph)
    loop = JobRunner(job_settings, jobs, lambda: consistency, db, name="runner")
    job = jobs.submit(SyncRequest("check"), "test")
    with db.advisory_lock("memctl-sync", shared=False) as got:  # a rebuild elsewhere
        assert got
        assert loop.run_once() is True
        waiting = jobs.get(job.id)
        assert waiting.status == "queued" and waiting.attempts == 0
        assert waiting.error is not None and "rebuild is running" in waiting.error
    wait_for(loop.run_once, 10, "the job to be claimed again")
    assert jobs.get(job.id).status == "done"


def test_wait_true_keeps_the_synchronous_contract_for_small_checks_only(
        client: TestClient, world: list[str], job_settings: Settings,
        admin_key: str) -> None:
    small = client.post("/api/persistence/sync?wait=true",
                        json={"operation": "check", "dryRun": True})
    assert small.status_code == 200, small.text
    assert small.json()["consistent"] is True and small.json()["check"]["checked"] == 4
    for operation in ("repair", "full", "rebuild"):
        refused = client.post("/api/persistence/sync?wait=true", json={"operation": operation})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "wait"
    bounded = job_settings.model_copy(update={"sync_wait_max_memories": 2})
    with TestClient(create_app(bounded), headers=bearer(admin_key)) as tight:
        over = tight.post("/api/persistence/sync?wait=true", json={"operation": "check"})
        assert over.status_code == 422 and "SYNC_WAIT_MAX_MEMORIES" in over.text
        limited = tight.post("/api/persistence/sync?wait=true",
                             json={"operation": "check", "limit": 2})
        assert limited.status_code == 200 and limited.json()["check"]["checked"] == 2
    assert client.get("/api/persistence/sync/jobs").json()["items"] == []


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/persistence/sync"),
    ("GET", "/api/persistence/sync/jobs"),
    ("GET", "/api/persistence/sync/jobs/1"),
    ("POST", "/api/persistence/sync/jobs/1/cancel"),
])
def test_job_routes_need_an_admin_key(job_settings: Settings, service_key: str, method: str,
                                      path: str, jobs: Jobs) -> None:
    job = jobs.submit(SyncRequest("check"), "test")
    assert job.id == 1
    with TestClient(create_app(job_settings)) as anonymous:
        none = anonymous.request(method, path, json={"operation": "check"})
        service = anonymous.request(method, path, json={"operation": "check"},
                                    headers=bearer(service_key))
    assert none.status_code == 401 and service.status_code == 403
    assert jobs.get(1).status == "queued" and jobs.page().items == [jobs.get(1)]


@pytest.mark.parametrize(("method", "path", "status", "field"), [
    ("GET", "/api/persistence/sync/jobs/0", 422, "job_id"),
    ("GET", "/api/persistence/sync/jobs/-1", 422, "job_id"),
    ("GET", "/api/persistence/sync/jobs/99999999999999999999", 422, "job_id"),
    ("GET", "/api/persistence/sync/jobs/abc", 422, "job_id"),
    ("GET", "/api/persistence/sync/jobs/424242", 404, None),
    ("POST", "/api/persistence/sync/jobs/424242/cancel", 404, None),
    ("GET", "/api/persistence/sync/jobs?status=exploded", 422, "status"),
    ("GET", "/api/persistence/sync/jobs?limit=0", 422, "limit"),
    ("GET", "/api/persistence/sync/jobs?limit=100000", 422, "limit"),
    ("GET", "/api/persistence/sync/jobs?before_id=0", 422, "before_id"),
    ("POST", "/api/persistence/sync?wait=maybe", 422, "wait"),
    ("POST", "/api/persistence/sync?limit=99999999999999999999", 422, "limit"),
])
def test_bad_job_requests_are_4xx(client: TestClient, method: str, path: str, status: int,
                                  field: str | None, db: Database) -> None:
    answer = client.request(method, path, json={"operation": "check"})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].get("field") == field
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM sync_jobs")).scalar() == 0


def test_jobs_page_newest_first(jobs: Jobs) -> None:
    ids = [jobs.submit(SyncRequest("check", f"user-{i}"), "test").id for i in range(5)]
    first = jobs.page(limit=2)
    assert [j.id for j in first.items] == ids[::-1][:2]
    second = jobs.page(before_id=first.next_before_id, limit=2)
    third = jobs.page(before_id=second.next_before_id, limit=2)
    assert [j.id for j in second.items + third.items] == ids[::-1][2:]
    assert third.next_before_id is None
    assert [j.id for j in jobs.page("queued", limit=10).items] == ids[::-1]
    assert jobs.page("done").items == []
    with pytest.raises(JobNotFound):
        jobs.get(999)
    jobs.cancel(ids[0], "test")
    with pytest.raises(JobFinished):
        jobs.cancel(ids[0], "test")
