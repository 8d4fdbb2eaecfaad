"""Background sync jobs: check, repair, full and rebuild run by a runner, never by a web request.

``Jobs`` owns every transition of a job (each one named statement in ``queries.sql``)::

    submit ──> queued ──claim──> running ──finish──> done | failed | cancelled
                 ▲  │                │ ▲
                 │  └─cancel─────────┼─┼──────────> cancelled
                 └──requeue (Busy,   │ └─claim again once the lease ran out (runner died)
                     an outage)      └─lease ran out on the last attempt ──> failed (reap)

A runner leases a job (``FOR UPDATE SKIP LOCKED``, so runners never share one) and renews the
lease from a heartbeat thread and on every page of progress. Each claim carries a fresh token;
every later write of that runner is fenced by it, so a runner that lost its lease (paused past
it, partitioned) cannot overwrite the work of the runner that took the job over.

Guarantees: no job stays ``running`` once its runner is gone: the next runner either claims it
again (the operation restarts from its beginning; check, repair and rebuild are idempotent) or,
after ``max_attempts`` claims, reaps it as failed. Cancelling is cooperative: a queued job ends
at once, a running one at the runner's next page.

``JobRunner`` is the loop ``memctl scheduler`` (and ``memctl jobs work``) runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.consistency import Consistency, Operation, SyncReport, SyncRequest
from app.db.connector import Database, Row
from app.domain import MAX_PAGE
from app.errors import (
    Busy,
    JobFinished,
    JobNotFound,
    MemoryPersistenceError,
    ValidationError,
)
from app.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["queued", "running", "done", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
CHANNEL = "memctl_sync_jobs"
MAX_FINDINGS_KEPT = 1000  # findings a job's report lists; a check stores all of them


@dataclass(frozen=True)
class Phase:
    """One phase of a job's run: items done of its total (None when unknown)."""

    name: str
    done: int = 0
    total: int | None = None

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, round(100 * self.done / self.total))


@dataclass(frozen=True)
class Job:
    """A job as Postgres has it."""

    id: int
    request: SyncRequest
    requested_by: str
    status: Status
    phase: str | None
    done: int
    total: int | None
    phases: list[Phase]
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    lease_expires_at: datetime | None
    cancel_requested_at: datetime | None
    cancelled_by: str | None
    result: dict[str, Any] | None
    error: str | None
    runner: str | None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        params = row["params"] or {}
        return cls(
            id=int(row["id"]),
            request=SyncRequest(row["kind"], params.get("user_id"), params.get("limit"),
                                bool(params.get("dry_run")), bool(params.get("reextract"))),
            requested_by=row["requested_by"], status=row["status"], phase=row["phase"],
            done=int(row["done"]), total=None if row["total"] is None else int(row["total"]),
            phases=[Phase(p["name"], int(p["done"]), p.get("total"))
                    for p in row["phases"] or []],
            attempts=int(row["attempts"]), max_attempts=int(row["max_attempts"]),
            created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], heartbeat_at=row["heartbeat_at"],
            lease_expires_at=row["lease_expires_at"],
            cancel_requested_at=row["cancel_requested_at"], cancelled_by=row["cancelled_by"],
            result=row["result"], error=row["error"], runner=row["runner"])

    @property
    def kind(self) -> Operation:
        return self.request.operation

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def percent(self) -> int | None:
        """The current phase's completion, when its size is known."""
        if not self.total:
            return None
        return min(100, round(100 * self.done / self.total))

    @property
    def seconds(self) -> float | None:
        """How long the job ran (so far, while running), from its first claim."""
        if self.started_at is None:
            return None
        end = self.finished_at or self.heartbeat_at or self.started_at
        return round((end - self.started_at).total_seconds(), 3)

    def as_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id, "kind": self.kind, "status": self.status,
            "params": {"user_id": r.user_id, "limit": r.limit, "dry_run": r.dry_run,
                       "reextract": r.reextract},
            "requested_by": self.requested_by,
            "progress": {"phase": self.phase, "done": self.done, "total": self.total,
                         "percent": self.percent,
                         "phases": [{"name": p.name, "done": p.done, "total": p.total}
                                    for p in self.phases]},
            "attempts": self.attempts, "max_attempts": self.max_attempts,
            "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "heartbeat_at": self.heartbeat_at,
            "seconds": self.seconds,
            "cancel_requested_at": self.cancel_requested_at, "cancelled_by": self.cancelled_by,
            "error": self.error, "result": self.result,
        }


@dataclass(frozen=True)
class JobPage:
    items: list[Job]
    next_before_id: int | None  # pass as ``before_id`` for the next (older) page


@dataclass(frozen=True)
class Claim:
    """A runner's lease on one job: the token fences every write of this run."""

    job: Job
    token: str
    runner: str


class LeaseLost(Exception):
    """This runner's lease on the job is gone (another runner took it over, or it ended)."""


class Cancelled(Exception):
    """A cancel was asked for; raised from the progress callback between pages."""


def _json(value: object) -> str:
    return json.dumps(value, default=str)


def runner_name() -> str:
    """``host:pid``, recorded on the job while this process runs it."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}"


class Jobs:
    """Every transition of a sync job, each one named statement."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    # -- what the web process, the CLI and the console do ---------------------------------

    def submit(self, request: SyncRequest, requested_by: str) -> Job:
        """Queue ``request`` (already validated); runners are woken when it commits."""
        params = {"user_id": request.user_id, "limit": request.limit,
                  "dry_run": request.dry_run, "reextract": request.reextract}
        with self.db.transaction() as tx:
            row = tx.one("job_submit", {"kind": request.operation, "params": _json(params),
                                        "requested_by": requested_by[:200],
                                        "max_attempts": self.settings.job_max_attempts})
            tx.scalar("job_notify")
        assert row is not None
        job = Job.from_row(row)
        log.info("sync job submitted", extra={"action": "jobs.submit", "job": job.id,
                                              "kind": job.kind, "user_id": request.user_id,
                                              "requested_by": requested_by})
        return job

    def get(self, job_id: int) -> Job:
        """One job (JobNotFound else)."""
        row = self.db.one("job_get", {"id": _job_id(job_id)})
        if row is None:
            raise JobNotFound(f"no sync job {job_id}")
        return Job.from_row(row)

    def page(self, status: str | None = None, *, before_id: int | None = None,
             limit: int = 50) -> JobPage:
        """Jobs newest first, a page at a time (keyset on the id)."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status: must be one of {', '.join(STATUSES)}", "status")
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit: must be from 1 to {MAX_PAGE}", "limit")
        rows = self.db.all("job_list", {"status": status, "limit": limit + 1,
                                        "before_id": None if before_id is None
                                        else _job_id(before_id, "before_id")})
        items = [Job.from_row(r) for r in rows[:limit]]
        return JobPage(items, items[-1].id if len(rows) > limit else None)

    def cancel(self, job_id: int, actor: str) -> Job:
        """Cancel a job: at once when queued (or its runner died), else at the runner's next
        page. JobFinished when it already ended; asking twice is harmless."""
        row = self.db.one("job_cancel", {"id": _job_id(job_id), "actor": actor[:200]})
        if row is None:
            job = self.get(job_id)  # JobNotFound, or it had finished
            raise JobFinished(f"sync job {job_id} is {job.status} already")
        job = Job.from_row(row)
        log.info("sync job cancel", extra={"action": "jobs.cancel", "job": job.id,
                                           "status": job.status, "actor": actor})
        return job

    # -- what a runner does ---------------------------------------------------------------

    def reap(self) -> int:
        """End running jobs whose runner died on their last attempt (or that were being
        cancelled): failed, or cancelled. The number ended."""
        rows = self.db.all("job_reap")
        for r in rows:
            log.warning("sync job reaped: its runner stopped", extra={
                "action": "jobs.reap", "job": r["id"], "status": r["status"],
                "attempts": r["attempts"]})
        return len(rows)

    def claim(self, runner: str) -> Claim | None:
        """Lease the oldest due job (queued, or abandoned by a dead runner), if any."""
        token = str(uuid.uuid4())
        row = self.db.one("job_claim", {"runner": runner[:200], "token": token,
                                        "lease_seconds": self.settings.job_lease_seconds})
        if row is None:
            return None
        claim = Claim(Job.from_row(row), token, runner)
        log.info("sync job claimed", extra={"action": "jobs.claim", "job": claim.job.id,
                                            "kind": claim.job.kind, "runner": runner,
                                            "attempt": claim.job.attempts})
        return claim

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; whether a cancel was asked for. LeaseLost when it is gone."""
        row = self.db.one("job_heartbeat", {"id": claim.job.id, "token": claim.token,
                                            "lease_seconds": self.settings.job_lease_seconds})
        if row is None:
            raise LeaseLost(f"sync job {claim.job.id}: lease lost")
        return bool(row["cancel_requested"])

    def progress(self, claim: Claim, phases: list[Phase]) -> bool:
        """Record progress (and renew the lease); whether a cancel was asked for."""
        current = phases[-1] if phases else None
        row = self.db.one("job_progress", {
            "id": claim.job.id, "token": claim.token,
            "lease_seconds": self.settings.job_lease_seconds,
            "phase": current.name if current else None,
            "done": current.done if current else 0,
            "total": current.total if current else None,
            "phases": _json([{"name": p.name, "done": p.done, "total": p.total}
                             for p in phases])})
        if row is None:
            raise LeaseLost(f"sync job {claim.job.id}: lease lost")
        return bool(row["cancel_requested"])

    def finish(self, claim: Claim, status: Literal["done", "failed", "cancelled"], *,
               result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """End this claim's run; False when the lease was lost meanwhile (nothing changed)."""
        ended = self.db.one("job_finish", {
            "id": claim.job.id, "token": claim.token, "status": status,
            "result": None if result is None else _json(result),
            "error": None if error is None else error[:2000]}) is not None
        log.info("sync job ended", extra={"action": "jobs.finish", "job": claim.job.id,
                                          "status": status, "fenced_out": not ended})
        return ended

    def requeue(self, claim: Claim, error: str, *, delay: float, refund: bool) -> bool:
        """Back to queued, due after ``delay`` seconds; ``refund`` gives the attempt back."""
        return self.db.one("job_requeue", {
            "id": claim.job.id, "token": claim.token, "error": error[:2000],
            "delay_seconds": delay, "refund": 1 if refund else 0}) is not None

    def prune(self, limit: int = 1000) -> int:
        """Forget finished jobs past JOB_RETENTION_HOURS."""
        return self.db.execute("job_prune", {
            "age_seconds": self.settings.job_retention_hours * 3600, "limit": limit})


def _job_id(value: int, name: str = "id") -> int:
    if not 1 <= value <= 2**63 - 1:
        raise ValidationError(f"{name}: must be a positive job id", name)
    return value


@dataclass
class _Run:
    """The state of one claimed job inside its runner."""

    claim: Claim
    phases: list[Phase] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def advance(self, phase: str, done: int, total: int | None) -> None:
        for i, p in enumerate(self.phases):
            if p.name == phase:
                self.phases[i] = Phase(phase, p.done + done, total if total is not None
                                       else p.total)
                return
        self.phases.append(Phase(phase, done, total))


class JobRunner:
    """Claims jobs and runs them through ``Consistency.run`` until ``stop()``.

    The runner reaps dead runners' last attempts before each claim; while it runs a job, a
    heartbeat thread renews the lease every third of ``JOB_LEASE_SECONDS``, and the progress
    callback records each page and stops the run when a cancel was asked for or the lease was
    lost.
    """

    def __init__(self, settings: Settings, jobs: Jobs, consistency: Callable[[], Consistency],
                 db: Database, name: str | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self._consistency = consistency
        self.db = db
        self.name = name or runner_name()
        self.stop_event = threading.Event()
        self.current: int | None = None  # the id of the job being run

    def run_once(self) -> bool:
        """Reap, then claim and run one job; whether there was one."""
        self.jobs.reap()
        claim = self.jobs.claim(self.name)
        if claim is None:
            return False
        self.execute(claim)
        return True

    def run(self) -> None:
        """Loop until ``stop()``: run jobs while there are some, else wait for a NOTIFY."""
        log.info("job runner started", extra={"action": "jobs.runner", "runner": self.name})
        while not self.stop_event.is_set():
            try:
                with self.db.listener(CHANNEL) as listener:
                    while not self.stop_event.is_set():
                        if not self.run_once():
                            listener.wait(self.settings.job_poll_seconds)
            except MemoryPersistenceError as exc:
                log.warning("job runner: Postgres failed", extra={
                    "action": "jobs.runner_error", "error": str(exc)[:300]})
                self.stop_event.wait(self.settings.job_poll_seconds)

    def stop(self) -> None:
        """Stop: a job being run is handed back (queued again) at its next page."""
        self.stop_event.set()

    def execute(self, claim: Claim) -> None:
        """Run one claimed job to its end (or until the lease is lost) and record how it
        ended. Never raises for a failure of the job itself."""
        run = _Run(claim)
        self.current = claim.job.id
        beat = threading.Thread(target=self._heartbeat, args=(run,), daemon=True,
                                name=f"job-{claim.job.id}-heartbeat")
        beat.start()
        try:
            self._execute(run)
        finally:
            run.ended.set()
            beat.join()
            self.current = None

    def _execute(self, run: _Run) -> None:
        claim, jobs = run.claim, self.jobs
        job = claim.job

        def progress(phase: str, done: int, total: int | None) -> None:
            # One write per page (a page is thousands of memories): progress, the lease, and
            # whether to stop, all in one round trip.
            run.advance(phase, done, total)
            try:
                if jobs.progress(claim, run.phases):
                    run.cancel.set()
            except LeaseLost:
                run.lost.set()
            if run.lost.is_set():
                raise LeaseLost(f"sync job {job.id}: lease lost")
            if run.cancel.is_set():
                raise Cancelled(f"sync job {job.id} cancelled")
            if self.stop_event.is_set():
                raise _Stopping

        try:
            if jobs.heartbeat(claim):
                raise Cancelled(f"sync job {job.id} cancelled")
            report: SyncReport = self._consistency().run(job.request, progress)
            jobs.finish(claim, "done", result=report.as_dict(max_findings=MAX_FINDINGS_KEPT))
        except Cancelled:
            jobs.finish(claim, "cancelled", error=None)
        except LeaseLost:
            log.warning("sync job: lease lost, another runner has it", extra={
                "action": "jobs.lease_lost", "job": job.id, "runner": self.name})
        except _Stopping:
            # Shutting down: hand the job back at once, without spending its attempt.
            jobs.requeue(claim, "its runner stopped", delay=0, refund=True)
        except Busy as exc:
            # A conflicting operation (a rebuild beside a check) holds the sync lock: later.
            jobs.requeue(claim, str(exc), delay=self.settings.job_retry_seconds, refund=True)
        except MemoryPersistenceError as exc:
            if exc.retryable and job.attempts < job.max_attempts:
                jobs.requeue(claim, str(exc), delay=self.settings.job_retry_seconds * job.attempts,
                             refund=False)
            else:
                jobs.finish(claim, "failed", error=str(exc))
            log.warning("sync job failed", extra={"action": "jobs.failed", "job": job.id,
                                                  "error": str(exc)[:300]})
        except Exception as exc:  # a job must end with a state, whatever happened
            log.exception("sync job failed unexpectedly", extra={"action": "jobs.failed",
                                                                 "job": job.id})
            jobs.finish(claim, "failed", error=f"internal error ({type(exc).__name__})")

    def _heartbeat(self, run: _Run) -> None:
        interval = self.settings.job_lease_seconds / 3
        while not run.ended.wait(interval):
            try:
                if self.jobs.heartbeat(run.claim):
                    run.cancel.set()
            except LeaseLost:
                run.lost.set()
                return
            except MemoryPersistenceError as exc:  # the next beat may get through
                log.warning("sync job heartbeat failed", extra={
                    "action": "jobs.heartbeat", "job": run.claim.job.id,
                    "error": str(exc)[:300]})


class _Stopping(Exception):
    """The runner was asked to stop while running a job."""
