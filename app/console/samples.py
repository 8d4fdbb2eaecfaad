"""The overview's history: outbox numbers sampled by the web process into a ring buffer.

INTERIM, until lag history is kept as metrics: each web process samples ``Outbox.stats()`` and
``Outbox.done_within(60)`` every CONSOLE_SAMPLE_SECONDS and keeps the last hour in memory. So
the chart starts empty when the process starts, and each web process has its own (equal, as
they read the same Postgres) history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.outbox import Outbox, OutboxStats

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3600.0
THROUGHPUT_SECONDS = 60.0


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    backlog: int  # pending + in flight
    dead: int
    lag_seconds: float
    done_per_second: float  # over the minute before ``at``


class OutboxSampler:
    """Samples the outbox every ``interval`` seconds in a daemon thread; keeps one hour."""

    def __init__(self, outbox: Outbox, interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self.interval = interval
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(WINDOW_SECONDS / interval) + 2)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = -1e18

    def sample(self) -> Sample | None:
        """Take one sample now; None (and a warning, at most once a minute) when Postgres fails."""
        try:
            stats: OutboxStats = self.outbox.stats()
            done = self.outbox.done_within(THROUGHPUT_SECONDS)
        except Exception as exc:  # the sampler must outlive any outage
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("console: could not sample the outbox: %s", exc,
                            extra={"action": "console.sample_failed"})
            return None
        taken = Sample(self.clock(), stats.pending + stats.in_flight, stats.dead,
                       stats.lag_seconds, round(done / THROUGHPUT_SECONDS, 3))
        with self._lock:
            self._samples.append(taken)
        return taken

    def samples(self, window: float = WINDOW_SECONDS) -> list[Sample]:
        """The samples of the last ``window`` seconds, oldest first."""
        since = self.clock() - window
        with self._lock:
            return [s for s in self._samples if s.at >= since]

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="console-sampler",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
