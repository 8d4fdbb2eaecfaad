"""The relay: moves due outbox rows onto Dramatiq.

It claims rows with FOR UPDATE SKIP LOCKED, leases them (status in_flight until a deadline),
enqueues the messages, then commits. A crash between enqueue and commit rolls the claim back, so
the rows are sent again: duplicates, never loss. Rows whose lease runs out (worker killed,
Redis flushed) are reclaimed and sent again. It sleeps on LISTEN/NOTIFY, with polling as a
fallback, so an idle system reacts in milliseconds without busy polling.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import psycopg
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import DramatiqError
from redis.exceptions import RedisError

from app.db.connector import Database
from app.db.sql import q
from app.errors import QueueError, StoreError
from app.settings import Settings
from workers.broker import project_message

log = logging.getLogger(__name__)
CHANNEL = "memctl_outbox"


@dataclass
class RelayStats:
    claimed: int = 0
    messages: int = 0
    reclaimed: int = 0
    dead: int = 0
    errors: int = 0


def reclaim_expired(db: Database, settings: Settings, limit: int = 1000) -> tuple[int, int]:
    """Return expired leases to pending (or dead after the last attempt); (reclaimed, dead)."""
    with db.transaction() as conn:
        rows = conn.execute(q("reclaim_expired"), {
            "limit": limit, "max_attempts": settings.retry_max_attempts}).all()
        dead = [r.id for r in rows if r.status == "dead"]
        if dead:
            conn.execute(q("insert_dead_letter"), {"ids": dead})
    if rows:
        log.warning("reclaimed expired leases", extra={
            "action": "relay.reclaim", "rows": len(rows), "dead": len(dead)})
    return len(rows), len(dead)


class Relay:
    """Claims due outbox rows and enqueues them; several relays may run at once."""

    def __init__(self, settings: Settings, db: Database, broker: RedisBroker) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.stop_event = threading.Event()
        self.stats = RelayStats()
        self._last_reclaim = 0.0

    def dispatch_once(self) -> int:
        """Claim one batch, enqueue it, commit; returns the rows dispatched."""
        s = self.settings
        try:
            with self.db.transaction() as conn:
                rows = conn.execute(q("claim_due"), {
                    "limit": s.relay_batch_size, "lease_seconds": s.lease_seconds}).all()
                ids = [r.id for r in rows]
                for i in range(0, len(ids), s.worker_batch_size):
                    try:
                        self.broker.enqueue(project_message(s, ids[i:i + s.worker_batch_size]))
                    except (RedisError, DramatiqError, OSError) as exc:
                        # Raising rolls the claim back: the rows stay due and are sent later.
                        raise QueueError(f"enqueue failed: {type(exc).__name__}: {exc}") from exc
                    self.stats.messages += 1
        except (QueueError, StoreError):
            self.stats.errors += 1
            raise
        self.stats.claimed += len(ids)
        if ids:
            log.debug("dispatched", extra={"action": "relay.dispatch", "rows": len(ids)})
        return len(ids)

    def drain(self) -> int:
        """Dispatch until nothing is due (or stop is asked)."""
        total = 0
        while not self.stop_event.is_set():
            n = self.dispatch_once()
            total += n
            if n < self.settings.relay_batch_size:
                break
        return total

    def maybe_reclaim(self) -> None:
        interval = min(self.settings.reclaim_interval_seconds, self.settings.lease_seconds / 2)
        now = time.monotonic()
        if now - self._last_reclaim >= interval:
            self._last_reclaim = now
            reclaimed, dead = reclaim_expired(self.db, self.settings)
            self.stats.reclaimed += reclaimed
            self.stats.dead += dead

    def run(self) -> None:
        """Loop until ``stop()``: drain, reclaim, then sleep on NOTIFY or the poll interval."""
        log.info("relay started", extra={"action": "relay.start"})
        backoff = 0.0
        listener: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.stop_event.is_set():
            try:
                if listener is None:
                    listener = psycopg.connect(self.settings.psycopg_dsn, autocommit=True,
                                               connect_timeout=5)
                    listener.execute(f"LISTEN {CHANNEL}")
                self.maybe_reclaim()
                self.drain()
                backoff = 0.0
                # Wake on the first notification or after the poll interval, whichever is first.
                notified = False
                for _ in listener.notifies(timeout=self.settings.relay_poll_seconds, stop_after=1):
                    notified = True
                if notified and self.settings.relay_coalesce_seconds:
                    self.stop_event.wait(self.settings.relay_coalesce_seconds)
            except (QueueError, StoreError, psycopg.Error) as exc:
                backoff = min(max(backoff * 2, 0.2), 5.0)
                log.warning("relay loop error; retrying", extra={
                    "action": "relay.error", "error": str(exc)[:300], "retry_in": backoff})
                if listener is not None:
                    listener.close()
                    listener = None
                self.stop_event.wait(backoff)
        if listener is not None:
            listener.close()
        log.info("relay stopped", extra={"action": "relay.stop", "claimed": self.stats.claimed})

    def stop(self) -> None:
        self.stop_event.set()
