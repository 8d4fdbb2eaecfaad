"""Every Prometheus metric of every process, defined once, and the collector of Postgres state.

Names follow Prometheus conventions: the ``memctl_`` prefix, units in the name (``_seconds``),
``_total`` on counters, and bounded label sets: an HTTP route is its template (never the raw
path), an error is its class in our error tree, and no label ever carries a user or memory id.

The metrics live on prometheus_client's default registry, as the library intends: each process
(web, relay, scheduler, a dramatiq worker process) has its own copy and serves what it moved.
Dramatiq's worker processes write theirs to files (prometheus_client's multiprocess mode, set up
by ``workers.metrics`` before this module is first imported) and one forked process serves them.

The state of the outbox, the dead letters, the breakers and the last check is not counted by
any one process: ``StateCollector`` reads it from Postgres (through ``Outbox``, ``Breakers`` and
``Consistency``) at each scrape. The web process and the scheduler register it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.breakers import Breakers
    from app.consistency import Consistency
    from app.outbox import Outbox

log = logging.getLogger(__name__)

# -- web process --------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "memctl_http_requests", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "memctl_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
HTTP_IN_FLIGHT = Gauge(
    "memctl_http_requests_in_flight", "HTTP requests being answered now.",
    multiprocess_mode="livesum")

# -- relay --------------------------------------------------------------------------------------

RELAY_CLAIMED = Counter("memctl_relay_claimed_rows", "Outbox rows the relay claimed.")
RELAY_ENQUEUED = Counter("memctl_relay_enqueued_rows",
                         "Outbox rows the relay sent to the projection queue.")
RELAY_MESSAGES = Counter("memctl_relay_messages", "Queue messages the relay sent.")
RELAY_ENQUEUE_FAILURES = Counter(
    "memctl_relay_enqueue_failures",
    "Relay batches that could not be sent (Redis refused or Postgres failed); the claim is "
    "rolled back and the rows are sent again.")
RELAY_HELD = Counter("memctl_relay_held_rows",
                     "Rows the relay held for the extractor's open breaker.")

# -- outbox transitions (any process) -----------------------------------------------------------

OUTBOX_RECLAIMED = Counter("memctl_outbox_reclaimed_rows",
                           "In-flight rows whose lease ran out and were made due again.")
DEAD_LETTERS_WRITTEN = Counter("memctl_dead_letters_written",
                               "Dead letters written (rows whose last attempt failed).")
DEAD_LETTERS_REPLAYED = Counter("memctl_dead_letters_replayed", "Dead letters replayed.")

# -- worker (projection) ------------------------------------------------------------------------

PROJECTION_BATCH_ROWS = Histogram(
    "memctl_projection_batch_rows", "Outbox rows per projection batch (one queue message).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
PROJECTION_BATCH_DURATION = Histogram(
    "memctl_projection_batch_duration_seconds", "Time to project one batch, end to end.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
PROJECTION_ATTEMPTS = Counter(
    "memctl_projection_attempts", "Outbox rows a worker tried to project (found open).")
PROJECTED_MEMORIES = Counter(
    "memctl_projected_memories", "Memories written to the graph (or already there: fenced).")
PROJECTION_DONE_ROWS = Counter("memctl_projection_done_rows", "Outbox rows finished.")
PROJECTION_FAILURES = Counter(
    "memctl_projection_failures",
    "Rows whose projection failed and spent an attempt, by error kind (a class of our errors).",
    ["kind"])
PROJECTION_DEAD = Counter("memctl_projection_dead_rows",
                          "Rows a failed projection turned dead.")
PROJECTION_RELEASED = Counter(
    "memctl_projection_released_rows",
    "Rows sent back without an attempt, by the dependency that was out (graph, extractor) or "
    "lease (time ran short).", ["dependency"])
NEO4J_RETRIES = Counter(
    "memctl_neo4j_transaction_retries",
    "Neo4j transactions the driver ran again after a transient error (deadlock, leader switch).")

# -- scheduler ----------------------------------------------------------------------------------

SCHEDULER_LEADER = Gauge("memctl_scheduler_leader",
                         "1 while this scheduler holds the leader lock, else 0.",
                         multiprocess_mode="liveall")
SCHEDULER_TASKS = Counter("memctl_scheduler_task_runs",
                          "Scheduler task runs, by task and result (ok, error).",
                          ["task", "result"])

ERROR_KINDS = frozenset({
    "GraphConflict", "GraphError", "GraphUnavailable", "GraphMisconfigured", "ExtractionError",
    "ExtractionRetryable", "ExtractorUnavailable", "ExtractorRateLimited",
    "ExtractorMisconfigured", "StoreError", "StoreUnavailable", "MemoryPersistenceError"})


def error_kind(exc: BaseException) -> str:
    """A bounded label for an error: its nearest class among ERROR_KINDS, else ``other``."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__name__ in ERROR_KINDS), "other")


# -- the state kept in Postgres -----------------------------------------------------------------

@dataclass(frozen=True)
class State:
    """What ``StateCollector`` reports, read from Postgres at one scrape."""

    outbox: dict[str, int]  # rows by status (pending, in_flight, done, dead, held)
    lag_seconds: float
    expired_leases: int
    dead_letters: dict[str, int]  # by status: open, replayed, discarded
    breakers_open: dict[str, bool]  # by breaker name
    last_check_timestamp: float | None
    open_findings: dict[str, int]  # unresolved inconsistencies by kind


def read_state(outbox: Outbox, breakers: Breakers, consistency: Consistency) -> State:
    """The state at this moment, through the owners of each table (no SQL here)."""
    stats = outbox.stats()
    dead = outbox.dead_letter_counts()
    last, findings = consistency.health()
    return State(
        outbox={"pending": stats.pending, "in_flight": stats.in_flight, "done": stats.done,
                "dead": stats.dead, "held": stats.held},
        lag_seconds=stats.lag_seconds, expired_leases=stats.expired_leases,
        dead_letters={"open": dead.open, "replayed": dead.replayed,
                      "discarded": dead.discarded},
        breakers_open={b.name: not b.closed for b in breakers.states(fresh=True).values()},
        last_check_timestamp=last.timestamp() if last is not None else None,
        open_findings=findings)


class StateCollector(Collector):
    """Gauges of the state Postgres holds, read at each scrape through ``read``.

    When Postgres does not answer, only ``memctl_state_up 0`` is reported (and the scrape
    still succeeds), so a dashboard shows the gap and the process-down alert stays quiet.
    """

    def __init__(self, read: Callable[[], State]) -> None:
        self.read = read
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Any]:
        return []  # the families are built at collect time; nothing to check at register

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("memctl_state_up",
                               "1 when Postgres answered the state queries of this scrape.")
        try:
            with self._lock:  # concurrent scrapes would only repeat the same queries
                state = self.read()
        except Exception as exc:  # a scrape never fails; it says Postgres did not answer
            log.warning("metrics state not read", extra={"action": "metrics.state",
                                                         "error": str(exc)[:300]})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        rows = GaugeMetricFamily("memctl_outbox_rows", "Outbox rows by status.",
                                 labels=["status"])
        for status, n in state.outbox.items():
            rows.add_metric([status], n)
        yield rows
        yield GaugeMetricFamily(
            "memctl_outbox_lag_seconds",
            "Age of the oldest open (pending or in-flight) outbox row: how far the graph is "
            "behind.", value=state.lag_seconds)
        yield GaugeMetricFamily("memctl_outbox_expired_leases",
                                "In-flight rows whose lease has run out (not yet reclaimed).",
                                value=state.expired_leases)
        dead = GaugeMetricFamily("memctl_dead_letters", "Dead letters by status (open: "
                                 "unresolved).", labels=["status"])
        for status, n in state.dead_letters.items():
            dead.add_metric([status], n)
        yield dead
        breakers = GaugeMetricFamily(
            "memctl_breaker_open", "1 while a dependency's breaker is not closed (graph: Neo4j "
            "unreachable or refusing us; extractor).", labels=["breaker"])
        for name, is_open in state.breakers_open.items():
            breakers.add_metric([name], 1 if is_open else 0)
        yield breakers
        if state.last_check_timestamp is not None:
            yield GaugeMetricFamily(
                "memctl_check_last_timestamp_seconds",
                "When the last consistency check finished (Unix time).",
                value=state.last_check_timestamp)
        findings = GaugeMetricFamily("memctl_check_open_findings",
                                     "Unresolved inconsistencies found by checks, by kind.",
                                     labels=["kind"])
        for kind, n in state.open_findings.items():
            findings.add_metric([kind], n)
        yield findings


def register_state(read: Callable[[], State],
                   registry: CollectorRegistry = REGISTRY) -> StateCollector:
    """Register a state collector (unregister it with ``registry.unregister``)."""
    collector = StateCollector(read)
    registry.register(collector)
    return collector


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread; returns the server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics served", extra={"action": "metrics.serve", "port": port})
    return server


def unregister_state(collector: StateCollector,
                     registry: CollectorRegistry = REGISTRY) -> None:
    """Stop reporting the state through ``collector``."""
    registry.unregister(collector)
