"""The relay: moves due outbox rows onto the projection queue.

It claims rows through the outbox (SKIP LOCKED, leased until a deadline), sends them, then
commits. A crash between sending and committing rolls the claim back, so the rows are sent again:
duplicates, never loss. Rows whose lease runs out (worker killed, Redis flushed) are reclaimed
and sent again. It sleeps on LISTEN/NOTIFY, with polling as a fallback, so an idle system reacts
in milliseconds without busy polling. Several relays may run at once.

While a dependency's breaker is open (``app.breakers``) the relay holds dispatch: nothing while
the graph's is open (every row needs the graph); while the extractor's is, only rows that need
no fresh extraction are sent, and the others are held until it closes. A breaker closing makes
its held rows due and wakes the relay (NOTIFY), which then drains the backlog oldest first.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from app import metrics
from app.breakers import EXTRACTOR, GRAPH, Breakers
from app.errors import QueueError, StoreError
from app.outbox import Outbox
from app.queue import ProjectionQueue
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RelayStats:
    claimed: int = 0
    messages: int = 0
    reclaimed: int = 0
    dead: int = 0
    errors: int = 0
    held: int = 0  # rows held for the extractor's breaker


class Relay:
    """Claims due outbox rows and sends them, in batches of WORKER_BATCH_SIZE per message."""

    def __init__(self, settings: Settings, outbox: Outbox, queue: ProjectionQueue,
                 breakers: Breakers) -> None:
        self.settings = settings
        self.outbox = outbox
        self.queue = queue
        self.breakers = breakers
        self.stop_event = threading.Event()
        self.stats = RelayStats()
        self._last_reclaim = 0.0
        self._holding: frozenset[str] = frozenset()

    def _held_back(self) -> frozenset[str]:
        """The breakers holding dispatch now; logs when that changes."""
        holding = frozenset(self.breakers.holding())
        if holding != self._holding:
            (log.warning if holding else log.info)(
                "dispatch held" if holding else "dispatch resumed",
                extra={"action": "relay.hold", "breakers": ",".join(sorted(holding)) or "-"})
            self._holding = holding
        return holding

    def dispatch_once(self) -> int:
        """Claim one batch, send it, commit; returns the rows dispatched."""
        size = self.settings.worker_batch_size
        holding = self._held_back()
        if GRAPH in holding:
            return 0
        while EXTRACTOR in holding and not self.stop_event.is_set():
            held = self.outbox.hold_needing_extraction(EXTRACTOR,
                                                       self.settings.relay_batch_size)
            self.stats.held += held
            metrics.RELAY_HELD.inc(held)
            if held < self.settings.relay_batch_size:
                break
        try:
            with self.outbox.claim(self.settings.relay_batch_size) as ids:
                metrics.RELAY_CLAIMED.inc(len(ids))
                for i in range(0, len(ids), size):
                    self.queue.send(ids[i:i + size])  # QueueError rolls the claim back
                    self.stats.messages += 1
                    metrics.RELAY_MESSAGES.inc()
        except (QueueError, StoreError):
            self.stats.errors += 1
            metrics.RELAY_ENQUEUE_FAILURES.inc()
            raise
        self.stats.claimed += len(ids)
        metrics.RELAY_ENQUEUED.inc(len(ids))  # the claim committed: these rows are on the queue
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
        """Reclaim expired leases every RECLAIM_INTERVAL_SECONDS (at most half a lease).

        The scheduler reclaims too; the relay does it as well so delivery never depends on a
        scheduler running. SKIP LOCKED keeps the two apart.
        """
        interval = min(self.settings.reclaim_interval_seconds, self.settings.lease_seconds / 2)
        now = time.monotonic()
        if now - self._last_reclaim >= interval:
            self._last_reclaim = now
            reclaimed = self.outbox.reclaim_expired(hold_for=self.breakers.blocking())
            self.stats.reclaimed += reclaimed.reclaimed
            self.stats.dead += reclaimed.dead
            self.outbox.release_stray_holds()

    def run(self) -> None:
        """Loop until ``stop()``: drain, reclaim, then sleep on NOTIFY or the poll interval."""
        log.info("relay started", extra={"action": "relay.start"})
        backoff = 0.0
        while not self.stop_event.is_set():
            try:
                with self.outbox.listener() as listener:
                    while not self.stop_event.is_set():
                        self.maybe_reclaim()
                        self.drain()
                        backoff = 0.0
                        # Wake on the first notification or after the poll interval.
                        notified = listener.wait(self.settings.relay_poll_seconds)
                        if notified and self.settings.relay_coalesce_seconds:
                            # Let steady traffic form batches instead of one graph
                            # transaction per write.
                            self.stop_event.wait(self.settings.relay_coalesce_seconds)
            except (QueueError, StoreError) as exc:
                backoff = min(max(backoff * 2, 0.2), 5.0)
                log.warning("relay loop error; retrying", extra={
                    "action": "relay.error", "error": str(exc)[:300], "retry_in": backoff})
                self.stop_event.wait(backoff)
        log.info("relay stopped", extra={"action": "relay.stop", "claimed": self.stats.claimed})

    def stop(self) -> None:
        self.stop_event.set()
