"""Circuit breakers for the projection's dependencies: the graph (Neo4j) and the extractor.

A dependency failure (``DependencyUnavailable`` or ``Misconfigured``, see ``app.errors``) is an
outage of the dependency, not a failure of the row that met it: it feeds the dependency's
breaker, and the row goes back without spending an attempt (``Outbox.release``)::

    closed ──N consecutive failures──> open ──probe due──> half_open ──probe passes──> closed
      │                                  ▲                     │         (held rows due now)
      └──a misconfiguration──> misconfigured ◄──probe fails────┘

- **closed**: workers call the dependency; a success resets the failure count.
- **open**: workers do not call it (their rows are held, no attempt counted); the relay holds
  dispatch (all of it for the graph; rows needing an extraction for the extractor). Every
  BREAKER_PROBE_SECONDS one worker process probes it (``Prober``).
- **misconfigured**: the dependency refuses our credentials, model or database. Opens at the
  first such answer; probed every BREAKER_MISCONFIGURED_PROBE_SECONDS, and at once when a worker
  starts (it may carry the fixed setting).
- **half_open**: a probe is out; nobody else calls the dependency meanwhile.

When a breaker closes, the rows it held are due at once, oldest first, in the same transaction.

State lives in Postgres (``dependency_breakers``) so every worker process, relay and scheduler
sees one state and a restart forgets nothing; each process caches it for BREAKER_CACHE_SECONDS
so the hot path does not read Postgres per batch. ``report()`` is what health, and later
metrics and the admin console, read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from app.db.connector import Database
from app.errors import ExtractorRateLimited, MemoryPersistenceError, Misconfigured
from app.outbox import Outbox
from app.settings import Settings

log = logging.getLogger(__name__)

GRAPH = "graph"
EXTRACTOR = "extractor"
NAMES = (GRAPH, EXTRACTOR)
BreakerState = Literal["closed", "open", "half_open", "misconfigured"]


@dataclass(frozen=True)
class BreakerStatus:
    """One breaker as Postgres has it; ``held`` is filled by ``report()`` only."""

    name: str
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    last_error: str | None = None
    last_failure_at: datetime | None = None
    next_probe_at: datetime | None = None
    updated_at: datetime | None = None
    held: int = 0

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @classmethod
    def from_row(cls, row: Mapping[str, Any], held: int = 0) -> BreakerStatus:
        return cls(str(row["name"]), cast("BreakerState", row["state"]),
                   int(row["consecutive_failures"]), row["opened_at"], row["last_error"],
                   row["last_failure_at"], row["next_probe_at"], row["updated_at"], held)

    def as_dict(self) -> dict[str, Any]:
        """Timestamps as ISO text: the breaker as health answers show it."""
        return {k: v.isoformat() if isinstance(v, datetime) else v
                for k, v in self.__dict__.items()}


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4000]


class Breakers:
    """The dependency breakers, shared by a process's threads; state in Postgres."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, BreakerStatus] = {}
        self._cached_at = float("-inf")
        # Breakers whose failure count this process may have raised since its last success.
        self._dirty: set[str] = set()

    # -- reading ------------------------------------------------------------------------------

    def states(self, *, fresh: bool = False) -> dict[str, BreakerStatus]:
        """Every breaker (unknown ones read as closed), at most BREAKER_CACHE_SECONDS old."""
        with self._lock:
            if not fresh and self._clock() - self._cached_at < self.settings.breaker_cache_seconds:
                return dict(self._cache)
        rows = self.db.all("breaker_states")
        states = {name: BreakerStatus(name) for name in NAMES}
        states.update({str(r["name"]): BreakerStatus.from_row(r) for r in rows})
        with self._lock:
            self._cache, self._cached_at = states, self._clock()
        return dict(states)

    def allows(self, name: str) -> bool:
        """Whether workers may call the dependency now (its breaker is closed; cached)."""
        return self.states()[name].closed

    def holding(self) -> list[str]:
        """The breakers that are not closed, for the relay.

        Read afresh while any was open at the last look, so dispatch resumes as soon as one
        closes; cached otherwise.
        """
        with self._lock:
            any_open = any(not s.closed for s in self._cache.values())
        return [name for name, s in self.states(fresh=any_open).items() if not s.closed]

    def blocking(self) -> str | None:
        """The breaker to blame for leases that run out now: graph first, then extractor."""
        states = self.states()
        return next((name for name in NAMES if not states[name].closed), None)

    def report(self) -> list[BreakerStatus]:
        """Every breaker read now, with the rows it holds: health, metrics, the console."""
        held = {str(r["name"]): int(r["held"]) for r in self.db.all("breaker_held_counts")}
        states = self.states(fresh=True)
        return [BreakerStatus(**{**s.__dict__, "held": held.get(name, 0)})
                for name, s in sorted(states.items())]

    def invalidate(self) -> None:
        """Forget the cache: the next read goes to Postgres."""
        with self._lock:
            self._cached_at = float("-inf")

    # -- writing ------------------------------------------------------------------------------

    def failed(self, name: str, exc: MemoryPersistenceError) -> BreakerStatus | None:
        """Count one dependency failure; open the breaker at the threshold.

        A misconfiguration opens it at once (state ``misconfigured``). A rate limit we only
        still wait out (the endpoint was not asked) is no new evidence and is not counted.
        """
        if isinstance(exc, ExtractorRateLimited) and not exc.asked:
            return None
        misconfigured = isinstance(exc, Misconfigured)
        probe = (self.settings.breaker_misconfigured_probe_seconds if misconfigured
                 else self.settings.breaker_probe_seconds)
        if isinstance(exc, ExtractorRateLimited):
            probe = max(probe, exc.retry_after)
        with self.db.transaction() as tx:
            tx.execute("breaker_ensure", {"name": name})
            row = tx.one("breaker_failure", {
                "name": name, "misconfigured": misconfigured, "error": describe(exc),
                "threshold": self.settings.breaker_failure_threshold, "probe_seconds": probe})
        assert row is not None  # breaker_ensure made the row
        status = BreakerStatus.from_row(row)
        with self._lock:
            before = self._cache.get(name, BreakerStatus(name))
            self._cache[name] = status
            self._dirty.add(name)
        if not status.closed and before.state != status.state:
            log.warning("breaker opened", extra={
                "action": "breaker.open", "breaker": name, "state": status.state,
                "failures": status.consecutive_failures, "error": describe(exc)[:300]})
        return status

    def succeeded(self, name: str) -> None:
        """The dependency just worked: close its breaker if it is open or counting failures.

        Writes only when this process saw it fail or open, so the hot path stays in memory.
        """
        with self._lock:
            cached = self._cache.get(name, BreakerStatus(name))
            needed = name in self._dirty or not cached.closed or cached.consecutive_failures > 0
        if needed:
            self.close(name)

    def close(self, name: str) -> int:
        """Close the breaker; the rows it held are due at once (same transaction).

        Returns how many rows it released.
        """
        with self.db.transaction() as tx:
            closed = tx.one("breaker_close", {"name": name}) is not None
            released = self.outbox.release_held(tx, name)
        with self._lock:
            self._dirty.discard(name)
            self._cache[name] = BreakerStatus(name, "closed")
        if closed or released:
            log.info("breaker closed", extra={"action": "breaker.close", "breaker": name,
                                              "released": released})
        return released

    def claim_probe(self, name: str) -> bool:
        """Take the breaker's due probe (half_open); False when not due or another took it."""
        with self.db.transaction() as tx:
            return tx.one("breaker_claim_probe", {
                "name": name, "timeout_seconds": self.settings.lease_seconds}) is not None

    def reprobe_misconfigured(self) -> int:
        """Probe misconfigured breakers at once: a worker starting may have fixed settings."""
        with self.db.transaction() as tx:
            return tx.execute("breaker_reprobe_misconfigured")


Probe = Callable[[], object]


class Prober:
    """Probes open breakers on their schedule, in a thread of each worker process.

    The worker process holds the dependencies' clients with its own settings, so a probe tests
    exactly what its projections would use. Processes share the schedule through Postgres:
    one probe per breaker per interval, whoever claims it.
    """

    def __init__(self, breakers: Breakers, probes: Mapping[str, Probe],
                 tick_seconds: float = 1.0) -> None:
        self.breakers = breakers
        self.probes = dict(probes)
        self.tick_seconds = tick_seconds
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> dict[str, bool]:
        """Run every due probe once; returns {breaker: passed} for the probes run."""
        ran: dict[str, bool] = {}
        states = self.breakers.states(fresh=True)
        for name, probe in self.probes.items():
            if states[name].closed or not self.breakers.claim_probe(name):
                continue
            try:
                probe()
            except MemoryPersistenceError as exc:
                self.breakers.failed(name, exc)
                ran[name] = False
                log.info("probe failed", extra={"action": "breaker.probe", "breaker": name,
                                                 "passed": False, "error": describe(exc)[:300]})
                continue
            except Exception as exc:  # an unexpected error must not kill the probe thread
                log.exception("probe crashed", extra={"action": "breaker.probe_crash",
                                                      "breaker": name})
                self.breakers.failed(name, _Crashed(describe(exc)))
                ran[name] = False
                continue
            self.breakers.close(name)
            ran[name] = True
        return ran

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except MemoryPersistenceError as exc:  # Postgres away: try again next tick
                log.warning("probe tick failed", extra={"action": "breaker.probe_error",
                                                        "error": str(exc)[:300]})
            self.stop_event.wait(self.tick_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="breaker-prober", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)


class _Crashed(MemoryPersistenceError):
    """A probe raised something outside our error tree."""
