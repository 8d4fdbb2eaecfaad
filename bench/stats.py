"""Latency samples, percentiles and the load generators (closed loop and paced open loop)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Set on Ctrl-C: every load generator stops at its next operation.
STOP = threading.Event()


def percentile(samples: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by linear interpolation; NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Latencies:
    """Seconds per operation plus the wall time the operations took together."""

    label: str
    samples: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    errors: int = 0
    threads: int = 1

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def throughput(self) -> float:
        """Operations per second over the wall time."""
        return self.count / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def ms(self, pct: float) -> float:
        return percentile(self.samples, pct) * 1000.0

    def summary(self) -> dict[str, Any]:
        """The numbers the report keeps (milliseconds, operations per second)."""
        return {
            "label": self.label, "threads": self.threads, "ops": self.count,
            "errors": self.errors, "wall_s": round(self.wall_seconds, 3),
            "throughput_per_s": round(self.throughput, 1),
            "p50_ms": round(self.ms(50), 3), "p95_ms": round(self.ms(95), 3),
            "p99_ms": round(self.ms(99), 3),
            "mean_ms": round(sum(self.samples) / self.count * 1000, 3) if self.samples else None,
        }


def run_closed(label: str, op: Callable[[int], object], *, threads: int, max_ops: int,
               max_seconds: float, warmup: int = 20) -> Latencies:
    """Run ``op(i)`` back to back from ``threads`` threads until ``max_ops`` or ``max_seconds``.

    ``warmup`` operations run first (single thread, not recorded) so pools and caches are warm.
    An operation that raises counts as an error and is not a latency sample.
    """
    for i in range(warmup):
        op(-1 - i)
    result = Latencies(label, threads=threads)
    counter = itertools.count()
    lock = threading.Lock()
    began = time.perf_counter()
    deadline = began + max_seconds

    def worker() -> None:
        local: list[float] = []
        errors = 0
        while not STOP.is_set():
            i = next(counter)
            if i >= max_ops or time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                op(i)
            except Exception:
                errors += 1
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            result.samples.extend(local)
            result.errors += errors

    pool = [threading.Thread(target=worker, name=f"load-{n}", daemon=True)
            for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    result.wall_seconds = time.perf_counter() - began
    return result


@dataclass
class Paced:
    """What a paced writer did: per operation its scheduled offset, result and finish time."""

    rate: float
    seconds: float
    results: list[tuple[float, Any, float]] = field(default_factory=list)
    errors: int = 0
    late: int = 0  # operations that started more than 100 ms after their scheduled time

    @property
    def achieved_rate(self) -> float:
        if not self.results:
            return 0.0
        span = max(r[2] for r in self.results) - min(r[2] for r in self.results)
        return len(self.results) / span if span > 0 else float("nan")


def run_paced(op: Callable[[int], Any], *, rate: float, seconds: float,
              threads: int = 8) -> Paced:
    """Open-loop load: operation ``i`` is due at ``start + i / rate``, whatever came before.

    Records ``(due offset, op result, time.time() when op returned)`` per operation, so a
    caller can compare the return (commit) time with when the effect became visible elsewhere.
    """
    total = int(rate * seconds)
    out = Paced(rate, seconds)
    counter = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def worker() -> None:
        while not STOP.is_set():
            i = next(counter)
            if i >= total:
                return
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.1:
                with lock:
                    out.late += 1
            try:
                value = op(i)
            except Exception:
                with lock:
                    out.errors += 1
                continue
            finished = time.time()
            with lock:
                out.results.append((due - start, value, finished))

    pool = [threading.Thread(target=worker, name=f"paced-{n}", daemon=True)
            for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return out
