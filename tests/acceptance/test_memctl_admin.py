"""``memctl sync|dead|outbox|health`` run as an operator runs them, against the test servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from neo4j import Driver
from sqlalchemy import text

from app.breakers import Breakers
from app.db.connector import Database
from app.errors import GraphUnavailable
from app.graph.neo4j import Neo4jGraph
from app.jobs import Jobs
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import ManagedProcess
from devtools.localservers import free_port
from tests.conftest import PoisonExtractor, drain, wait_for

pytestmark = pytest.mark.servers

MEMCTL = [sys.executable, "-m", "app.cli"]
REPO = Path(__file__).resolve().parents[2]


class Memctl:
    """Runs ``memctl`` in a clean folder with the test servers' settings in its environment."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.folder = folder
        keep = {k: v for k, v in os.environ.items()
                if k in ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR")}
        self.env = {
            **keep,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "NEO4J_URI": settings.neo4j_uri,
            "NEO4J_USER": settings.neo4j_user,
            "NEO4J_PASSWORD": settings.neo4j_password.get_secret_value(),
            "LOCAL_DIR": str(folder / "state"),
        }

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MEMCTL, *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=120, cwd=self.folder)

    def json(self, *args: str, code: int = 0, **env: str) -> Any:
        done = self(*args, "--json", **env)
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        assert done.stdout.count("\n") == 1  # one JSON document on one line, nothing else
        return json.loads(done.stdout)


@pytest.fixture
def memctl(settings: Settings, tmp_path: Path) -> Memctl:
    return Memctl(settings, tmp_path)


@pytest.fixture
def extractor() -> PoisonExtractor:
    return PoisonExtractor()


@pytest.fixture
def projector(settings: Settings, db: Database, neo4j_driver: Driver,
              extractor: PoisonExtractor) -> Projector:
    graph = Neo4jGraph(settings, driver=neo4j_driver)
    graph.ensure_schema()
    return Projector(db, Outbox(settings, db), graph, extractor)


@pytest.fixture
def world(service: MemoryService, projector: Projector, db: Database) -> list[str]:
    """Four converged memories of two users."""
    ids = [str(service.store("alice" if i % 2 else "bob",
                             f"Call {i} with Sarah Connor about Acme Corp")[0].id)
           for i in range(4)]
    drain(projector, db)
    return ids


@pytest.fixture
def poisoned(world: list[str], service: MemoryService, projector: Projector,
             db: Database) -> str:
    """One dead letter: alice's note the extractor cannot handle. Returns the memory id."""
    memory_id = str(service.store("alice", "POISON note")[0].id)
    drain(projector, db)
    return memory_id


def test_sync_check_repair_full_rebuild(memctl: Memctl, world: list[str], neo4j_driver: Driver,
                                        projector: Projector, db: Database) -> None:
    clean = memctl.json("sync", "check")
    assert clean["consistent"] is True and clean["check"]["checked"] == 4
    assert clean["findings"] == []

    neo4j_driver.execute_query("MATCH (m:Memory {id: $id}) DETACH DELETE m", id=world[0])
    found = memctl.json("sync", "check", code=1)
    assert found["consistent"] is False
    assert [(f["kind"], f["memory_id"]) for f in found["findings"]] == [
        ("missing_in_graph", world[0])]
    assert found["check"]["by_kind"]["missing_in_graph"] == 1 and found["check"]["stored"]

    planned = memctl.json("sync", "repair", "--dry-run")
    assert planned["repair"]["queued"] == 1 and planned["repair"]["dry_run"] is True
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE event_type = 'resync'")
                            ).scalar_one() == 0

    human = memctl("sync", "full")  # progress on stderr, the tables on stdout
    assert human.returncode == 0, human.stderr
    assert "missing_in_graph" in human.stdout and "queued" in human.stdout
    assert "1 inconsistencies" in human.stdout
    drain(projector, db)
    again = memctl("sync", "check", "--user", "bob", "--limit", "10")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "consistent (stored as check run" in again.stdout

    neo4j_driver.execute_query("MATCH (m:Memory) SET m.version = 0")
    rebuilt = memctl.json("sync", "rebuild")
    assert rebuilt["rebuild"]["projected"] == 4
    assert memctl.json("sync", "check")["consistent"] is True


def test_dead_letters_list_show_replay_discard(memctl: Memctl, poisoned: str,
                                              service: MemoryService, projector: Projector,
                                              extractor: PoisonExtractor, db: Database) -> None:
    page = memctl.json("dead", "list", "--user", "alice", "--error", "always", "--since",
                       "2000-01-01", "--event-type", "upsert")
    assert [d["memory_id"] for d in page["items"]] == [poisoned]
    assert page["next_before_id"] is None
    letter_id = page["items"][0]["id"]

    shown = memctl("dead", "show", str(letter_id))
    assert shown.returncode == 0, shown.stderr
    assert "ExtractionError: this content always fails" in shown.stdout  # the error history

    refused = memctl("dead", "replay")
    assert refused.returncode == 2
    assert "--all" in refused.stderr

    extractor.armed = False  # the cause is fixed
    replayed = memctl("dead", "replay", str(letter_id))
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letter" in replayed.stdout
    drain(projector, db)
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE status <> 'done'")
                            ).scalar_one() == 0

    extractor.armed = True
    service.store("bob", "POISON again")
    drain(projector, db)
    listed = memctl.json("dead", "list", "--status", "any")["items"]
    assert [d["status"] for d in listed] == ["dead", "replayed"]
    assert listed[1]["resolved_by"].startswith("cli:") and len(listed[1]["resolved_by"]) > 4
    second = listed[0]["id"]
    missing_reason = memctl("dead", "discard", str(second))
    assert missing_reason.returncode == 2
    assert "--reason is required" in missing_reason.stderr
    discarded = memctl("dead", "discard", str(second), "--reason", "test data")
    assert discarded.returncode == 0, discarded.stderr
    closed = memctl.json("dead", "list", "--status", "discarded")["items"]
    assert [(d["id"], d["resolution_note"]) for d in closed] == [(second, "test data")]
    unknown = memctl("dead", "show", "999999", "--json")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "no dead letter 999999" in unknown.stderr


def test_health_and_outbox_stats(memctl: Memctl) -> None:
    health = memctl.json("health")
    assert health["status"] == "ok"
    assert all(s["ok"] for s in health["servers"].values())
    stats = memctl.json("outbox", "stats")
    assert set(stats) >= {"pending", "in_flight", "done", "dead", "lag_seconds"}

    degraded = memctl.json("health", code=1, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert degraded["status"] == "degraded" and degraded["reasons"][0].startswith("redis")
    port = free_port()
    down = memctl.json("health", code=3,
                       DATABASE_URL=f"postgresql://memory:x@127.0.0.1:{port}/memory")
    assert down["status"] == "down" and down["reasons"][0].startswith("postgres")
    no_graph = memctl("sync", "check", NEO4J_URI=f"bolt://127.0.0.1:{free_port()}")
    assert no_graph.returncode == 3
    assert "Neo4j ServiceUnavailable" in no_graph.stderr


def test_health_shows_an_open_breaker_and_exits_1(memctl: Memctl, settings: Settings,
                                                 db: Database) -> None:
    breakers = Breakers(settings, db, Outbox(settings, db))
    for _ in range(settings.breaker_failure_threshold):
        breakers.failed("graph", GraphUnavailable("Neo4j ServiceUnavailable: refused"))
    health = memctl.json("health", code=1)
    assert health["status"] == "degraded"
    assert health["reasons"][0].startswith("graph breaker open since ")
    graph = health["breakers"]["graph"]
    assert graph["state"] == "open" and graph["opened_at"]
    assert graph["consecutive_failures"] == settings.breaker_failure_threshold
    assert "ServiceUnavailable" in graph["last_error"]
    text = memctl("health")
    assert text.returncode == 1
    assert "dependency breakers" in text.stdout and "open" in text.stdout
    assert "graph breaker open since" in text.stdout


def test_a_bad_setting_exits_2_with_one_line_naming_it(memctl: Memctl) -> None:
    done = memctl("sync", "check", "--json", NEO4J_URI="http://127.0.0.1:7474")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "NEO4J_URI" in lines[0]


def test_graph_shows_what_neo4j_has_for_one_user(memctl: Memctl, service: MemoryService,
                                                 projector: Projector, db: Database) -> None:
    mine, _ = service.store("alice", "Meeting with John about Q4 roadmap")
    service.store("bob", "Lunch with Sarah Connor")
    drain(projector, db)
    rows = memctl.json("graph", "alice")
    assert rows == [{"id": str(mine.id), "version": 1,
                     "entities": ["person: John", "quarter: Q4"]}]
    table = memctl("graph", "alice")
    assert table.returncode == 0 and "person: John" in table.stdout
    assert "Sarah" not in table.stdout


def test_sync_in_the_background_follows_a_job_and_jobs_lists_shows_cancels(
        memctl: Memctl, world: list[str], neo4j_driver: Driver, settings: Settings,
        db: Database, tmp_path: Path) -> None:
    runner = ManagedProcess("runner", [*MEMCTL, "jobs", "work"], memctl.env,
                            tmp_path / "runner.log", cwd=REPO)
    try:
        neo4j_driver.execute_query("MATCH (m:Memory {id: $id}) DETACH DELETE m", id=world[0])
        found = memctl.json("sync", "check", "--background", code=1)
        assert found["id"] == 1 and found["kind"] == "check" and found["status"] == "done"
        assert found["result"]["consistent"] is False
        assert found["requested_by"].startswith("cli:")

        human = memctl("sync", "full", "--background")
        assert human.returncode == 0, human.stdout + human.stderr
        assert "submitted job 2" in human.stderr and "job 2: full" in human.stdout
        assert "done" in human.stdout and "queued" in human.stdout  # the repair's summary

        listed = memctl.json("jobs", "list")
        assert [j["id"] for j in listed["items"]] == [2, 1]
        assert memctl.json("jobs", "show", "1")["result"]["check"]["found"] == 1
        assert runner.terminate(20) == 0
    finally:
        runner.stop()

    # No runner now: Ctrl-C stops following, and the job stays queued until cancelled.
    jobs = Jobs(settings, db)
    errors = tmp_path / "follower.err"
    with errors.open("w") as stderr:
        follower = subprocess.Popen([*MEMCTL, "sync", "rebuild", "--background"],
                                    env=memctl.env, cwd=memctl.folder, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
        try:
            wait_for(lambda: "submitted job 3" in errors.read_text(), 60,
                     "the rebuild job to be submitted and followed")
            follower.send_signal(signal.SIGINT)
            out, _ = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()  # reap it and close its pipe
    err = errors.read_text()
    assert follower.returncode == 130, out + err
    assert "stopped following job 3; it goes on" in err
    assert jobs.get(3).status == "queued"
    cancelled = memctl("jobs", "cancel", "3")
    assert cancelled.returncode == 0 and "job 3 cancelled" in cancelled.stdout
    again = memctl("jobs", "cancel", "3")
    assert again.returncode == 1 and "sync job 3 is cancelled already" in again.stderr
    assert memctl("jobs", "show", "99").returncode == 2  # not found: the operator's to fix
