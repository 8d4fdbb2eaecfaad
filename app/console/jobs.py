"""Consistency operations started from the console, with live progress.

INTERIM, until background jobs land: a job is ``Consistency.run`` (the one dispatch that
``memctl sync`` and ``POST /api/persistence/sync`` use) in a thread of this web process, its
progress and result kept in this process's memory. So a job is seen only by the web process
that started it, and it ends with that process. One job runs at a time per process; the
consistency lock (a Postgres advisory lock) still keeps a check from running beside a rebuild
anywhere. The console only needs ``start``, ``get`` and ``recent``, so a job queue can replace
this class without touching the pages.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from app.consistency import Progress as ProgressCallback
from app.consistency import SyncReport, SyncRequest
from app.errors import Busy, MemoryPersistenceError

log = logging.getLogger(__name__)
MAX_FINDINGS_KEPT = 200
Runner = Callable[[SyncRequest, ProgressCallback], SyncReport]


@dataclass
class Phase:
    name: str
    done: int = 0
    total: int | None = None

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, round(100 * self.done / self.total))


@dataclass
class Job:
    id: int
    request: SyncRequest
    actor: str
    started_at: datetime
    state: Literal["running", "done", "failed"] = "running"
    finished_at: datetime | None = None
    phases: list[Phase] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    def advance(self, phase: str, done: int, total: int | None) -> None:
        """The progress callback of ``Consistency.run``."""
        for p in self.phases:
            if p.name == phase:
                p.done += done
                if total is not None:
                    p.total = total
                return
        self.phases.append(Phase(phase, done, total))


class SyncJobs:
    """Runs one consistency operation at a time in a thread; remembers the last ``keep``."""

    def __init__(self, run: Runner, keep: int = 20) -> None:
        self._run = run
        self._keep = keep
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, request: SyncRequest, actor: str) -> Job:
        """Start ``request`` now; Busy while another job of this process runs."""
        with self._lock:
            if any(j.state == "running" for j in self._jobs.values()):
                raise Busy("a consistency job is already running in this web process; "
                           "wait for it to end")
            job = Job(next(self._ids), request, actor, datetime.now(UTC))
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
            thread = threading.Thread(target=self._work, args=(job,),
                                      name=f"console-job-{job.id}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        log.info("console: consistency job started", extra={
            "action": "console.job_start", "job": job.id, "operation": request.operation,
            "user_id": request.user_id, "actor": actor})
        return job

    def _work(self, job: Job) -> None:
        try:
            report = self._run(job.request, job.advance)
            job.result = report.as_dict(max_findings=MAX_FINDINGS_KEPT)
            job.state = "done"
        except MemoryPersistenceError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a job must end with a state, whatever happened
            log.exception("console: consistency job failed", extra={"action": "console.job"})
            job.error, job.state = f"internal error ({type(exc).__name__})", "failed"
        job.finished_at = datetime.now(UTC)
        log.info("console: consistency job ended", extra={
            "action": "console.job_end", "job": job.id, "state": job.state})

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        """The remembered jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def wait(self, timeout: float) -> None:
        """Wait for running jobs to end (shutdown)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
