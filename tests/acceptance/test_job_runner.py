"""A background sync job outlives its runner: a real ``memctl scheduler`` process is SIGKILLed in
the middle of a rebuild, and a new runner (``memctl jobs work``) resumes the job to its end.

"In the middle" is a state the test holds, not a race: a transaction of the test locks the
second memory's row, so the rebuild (one memory per page, re-extracting) projects the first
page and then waits on the lock while its heartbeat keeps the lease.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import text

from app.consistency import Consistency, SyncRequest
from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.jobs import Jobs
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import ManagedProcess, child_env
from tests.conftest import drain, wait_for

REPO = Path(__file__).resolve().parents[2]
SCHEDULER = [sys.executable, "-m", "app.cli", "scheduler"]
RUNNER = [sys.executable, "-m", "app.cli", "jobs", "work"]


def test_a_runner_killed_mid_job_is_replaced_and_the_job_completes(
        settings: Settings, db: Database, graph: Neo4jGraph, service: MemoryService,
        tmp_path: Path) -> None:
    stored = [service.store("alice", f"Call {i} with Sarah Connor about Acme Corp")[0]
              for i in range(3)]
    drain(Projector(db, Outbox(settings, db), graph, RuleExtractor()), db)
    ids = sorted(str(m.id) for m in stored)
    env = child_env(settings, LOG_LEVEL="INFO", JOB_LEASE_SECONDS="2", JOB_POLL_SECONDS="0.2",
                    JOB_RETRY_SECONDS="0.2", SYNC_PAGE_SIZE="1", REEMBED_PER_MINUTE="0",
                    CHECK_INTERVAL_SECONDS="3600")
    jobs = Jobs(settings, db)

    with db.engine.connect() as holder:
        holder.execute(text("SELECT id FROM memories WHERE id = :id FOR UPDATE"),
                       {"id": ids[1]})
        first = ManagedProcess("scheduler", SCHEDULER, env, tmp_path / "scheduler.log",
                               cwd=REPO)
        try:
            job = jobs.submit(SyncRequest("rebuild", "alice", reextract=True), "test")
            wait_for(lambda: jobs.get(job.id).done >= 1, 60, "the rebuild's first page")
            running = jobs.get(job.id)
            assert running.status == "running" and running.phase == "rebuild"
            assert running.total == 3 and running.done == 1
            assert running.runner is not None and running.runner.endswith(f":{first.pid}")
            first.kill()  # SIGKILL, mid-job
        finally:
            first.stop()
        holder.rollback()

    stuck = jobs.get(job.id)
    assert stuck.status == "running" and stuck.attempts == 1  # until the next runner looks

    second = ManagedProcess("runner", RUNNER, env, tmp_path / "runner.log", cwd=REPO)
    try:
        wait_for(lambda: jobs.get(job.id).finished, 60, "the job to be resumed and end")
        done = jobs.get(job.id)
        assert done.status == "done", (done.error, second.log())
        assert done.attempts == 2
        assert done.runner is not None and done.runner.endswith(f":{second.pid}")
        assert done.result is not None
        rebuild = done.result["rebuild"]
        assert (rebuild["projected"], rebuild["extracted"]) == (3, 3)
        assert [(p.name, p.done, p.total) for p in done.phases] == [("rebuild", 3, 3)]
        assert second.terminate(20) == 0  # SIGTERM: a clean stop
    finally:
        second.stop()

    check = Consistency(settings, db, Outbox(settings, db), graph).check("alice", store=False)
    assert check.consistent and check.checked == 3
