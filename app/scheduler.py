"""The scheduler: periodic upkeep. Several may run; only the holder of an advisory lock acts.

Tasks: reclaim expired leases, prune done outbox rows past retention, forget tombstones nothing
waits for any more, forget memory history past retention, and run the consistency check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app import metrics
from app.breakers import Breakers
from app.consistency import Consistency
from app.db.connector import Database
from app.errors import MemoryPersistenceError
from app.jobs import Jobs
from app.outbox import Outbox
from app.reembed import Reembedder
from app.settings import Settings
from app.store import MemoryService

log = logging.getLogger(__name__)
LEADER_LOCK = "memctl-scheduler"


@dataclass
class Task:
    name: str
    interval: float
    run: Callable[[], object]
    last: float = field(default=-1e18)


class Scheduler:
    """Runs the tasks on their intervals while it holds the scheduler lock."""

    def __init__(self, db: Database, tasks: list[Task]) -> None:
        self.db = db
        self.tasks = tasks
        self.stop_event = threading.Event()
        self.is_leader = False

    def tick(self) -> list[str]:
        """Run every due task once; returns the names run. Errors are logged, not fatal."""
        ran = []
        now = time.monotonic()
        for task in self.tasks:
            if now - task.last < task.interval:
                continue
            task.last = now
            try:
                result = task.run()
                ran.append(task.name)
                metrics.SCHEDULER_TASKS.labels(task.name, "ok").inc()
                log.info("task done", extra={"action": f"scheduler.{task.name}",
                                             "result": result})
            except MemoryPersistenceError as exc:
                metrics.SCHEDULER_TASKS.labels(task.name, "error").inc()
                log.warning("task failed", extra={"action": f"scheduler.{task.name}",
                                                  "error": str(exc)[:300]})
        return ran

    def run(self) -> None:
        """Loop until ``stop()``: hold the lock (or wait for it), run due tasks."""
        metrics.SCHEDULER_LEADER.set(0)
        while not self.stop_event.is_set():
            try:
                with self.db.session_lock(LEADER_LOCK) as lock:
                    while not self.stop_event.is_set():
                        lock.alive()  # still holding the session, and so the lock?
                        if not self.is_leader and lock.try_acquire():
                            self.is_leader = True
                            metrics.SCHEDULER_LEADER.set(1)
                            log.info("scheduler is leader", extra={"action": "scheduler.leader"})
                        if self.is_leader:
                            self.tick()
                        self.stop_event.wait(1.0)
            except MemoryPersistenceError as exc:
                log.warning("scheduler lost its connection", extra={
                    "action": "scheduler.error", "error": str(exc)[:300]})
                self.stop_event.wait(1.0)
            finally:
                self.is_leader = False  # the session is closed: the lock is released
                metrics.SCHEDULER_LEADER.set(0)

    def stop(self) -> None:
        self.stop_event.set()


def _reembed(reembedder: Reembedder, limit: int) -> dict[str, object]:
    """Move up to ``limit`` memories to the configured embedder (the model loads only then)."""
    status = reembedder.status()
    if not status.pending or not status.dimension_ok:
        return {"pending": status.pending, "dimension_ok": status.dimension_ok}
    return reembedder.run(limit=limit).__dict__


def default_tasks(settings: Settings, outbox: Outbox, consistency: Consistency,
                  memories: MemoryService, breakers: Breakers,
                  reembedder: Reembedder | None = None, check: bool = True,
                  jobs: Jobs | None = None) -> list[Task]:
    """Reclaim, pruning, background re-embedding and (with ``check``) the consistency check.

    Leases that run out while a breaker is open are blamed on the outage (no attempt).
    """
    def reclaim() -> dict[str, int]:
        result = outbox.reclaim_expired(hold_for=breakers.blocking()).__dict__
        return {**result, "stray_holds": outbox.release_stray_holds()}

    tasks = [
        Task("reclaim", settings.reclaim_interval_seconds, reclaim),
        Task("prune_outbox", 3600.0, outbox.prune_done),
        Task("prune_tombstones", 3600.0, consistency.prune_tombstones),
        Task("prune_idempotency_keys", 3600.0, memories.prune_idempotency_keys),
        Task("prune_history", 3600.0, memories.prune_history),
    ]
    if jobs is not None:
        tasks.append(Task("prune_jobs", 3600.0, jobs.prune))
    if reembedder is not None and settings.reembed_per_minute > 0:
        tasks.append(Task("reembed", 60.0, lambda: _reembed(reembedder,
                                                            settings.reembed_per_minute)))
    if check:
        tasks.append(Task("check", settings.check_interval_seconds,
                          lambda: consistency.check().summary()))
    return tasks
