"""The scheduler: periodic upkeep. Several may run; only the holder of an advisory lock acts.

Tasks: reclaim expired leases, prune done outbox rows past retention, forget tombstones nothing
waits for any more, and run the consistency check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from app.db.connector import Database
from app.db.sql import q
from app.errors import MemoryPersistenceError
from app.graph.projector import GraphStore
from app.settings import Settings
from workers.relay import reclaim_expired

log = logging.getLogger(__name__)


@dataclass
class Task:
    name: str
    interval: float
    run: Callable[[], object]
    last: float = field(default=-1e18)


def prune_done_outbox(db: Database, settings: Settings, limit: int = 5000) -> int:
    """Delete done rows older than OUTBOX_RETENTION_HOURS, in bounded batches."""
    total = 0
    while True:
        with db.transaction() as conn:
            n = conn.execute(q("prune_done_outbox"), {
                "age_seconds": settings.outbox_retention_hours * 3600, "limit": limit}).rowcount
        total += n
        if n < limit:
            return total


def prune_tombstones(db: Database, graph: GraphStore, settings: Settings,
                     limit: int = 1000) -> int:
    """Forget deleted memories past retention: graph tombstone first, then the Postgres row."""
    rows = db.all("prunable_tombstones", {
        "age_seconds": settings.tombstone_retention_hours * 3600, "limit": limit})
    ids = [str(r.id) for r in rows]
    if not ids:
        return 0
    graph.prune_tombstones(ids)
    with db.transaction() as conn:
        return int(conn.execute(q("purge_memories"), {"ids": [r.id for r in rows]}).rowcount)


class Scheduler:
    """Runs the tasks on their intervals while it holds the scheduler lock."""

    def __init__(self, settings: Settings, db: Database, tasks: list[Task]) -> None:
        self.settings = settings
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
                log.info("task done", extra={"action": f"scheduler.{task.name}",
                                             "result": result})
            except MemoryPersistenceError as exc:
                log.warning("task failed", extra={"action": f"scheduler.{task.name}",
                                                  "error": str(exc)[:300]})
        return ran

    def run(self) -> None:
        """Loop until ``stop()``: hold the lock (or wait for it), run due tasks."""
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.settings.psycopg_dsn, autocommit=True,
                                           connect_timeout=5)
                    self.is_leader = False
                if not self.is_leader:
                    row = conn.execute(str(q("try_scheduler_lock").text)).fetchone()
                    self.is_leader = bool(row and row[0])
                    if self.is_leader:
                        log.info("scheduler is leader", extra={"action": "scheduler.leader"})
                if self.is_leader:
                    conn.execute("SELECT 1")  # still holding the session (and so the lock)?
                    self.tick()
            except psycopg.Error as exc:
                log.warning("scheduler lost its connection", extra={
                    "action": "scheduler.error", "error": str(exc)[:300]})
                if conn is not None:
                    conn.close()
                conn = None
                self.is_leader = False
            self.stop_event.wait(1.0)
        if conn is not None:
            conn.close()  # releases the lock

    def stop(self) -> None:
        self.stop_event.set()


def default_tasks(settings: Settings, db: Database, graph: GraphStore,
                  check: Callable[[], object] | None = None) -> list[Task]:
    tasks = [
        Task("reclaim", settings.reclaim_interval_seconds,
             lambda: reclaim_expired(db, settings)),
        Task("prune_outbox", 3600.0, lambda: prune_done_outbox(db, settings)),
        Task("prune_tombstones", 3600.0, lambda: prune_tombstones(db, graph, settings)),
    ]
    if check is not None:
        tasks.append(Task("check", settings.check_interval_seconds, check))
    return tasks

