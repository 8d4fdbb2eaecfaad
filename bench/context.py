"""What every section gets: the environment, the sizes of this run, and where results go."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.harness import BenchEnv


@dataclass(frozen=True)
class Sizes:
    """How much each section does; ``quick`` is for trying the suite out (~2 minutes)."""

    write_ops: int  # per configuration, at most (store, bare insert)
    dual_ops: int  # per configuration, at most (dual write)
    dual_warmup: int  # untimed dual writes first: the JVM compiles the MERGE path as it runs
    write_seconds: float  # per configuration, at most
    slow_ms: float  # added latency on each client->Neo4j chunk
    projection_n: int  # memories pre-loaded for the end-to-end projection runs
    projection_users: int
    worker_processes: tuple[int, ...]
    lag_rates: tuple[int, ...]  # offered writes per second
    lag_seconds: float
    check_sizes: tuple[int, ...]
    search_n: int
    search_users: int
    search_queries: int
    web_requests: int

    @classmethod
    def quick(cls) -> Sizes:
        return cls(write_ops=200, dual_ops=100, dual_warmup=60, write_seconds=4.0,
                   slow_ms=20.0, projection_n=1500, projection_users=10,
                   worker_processes=(1, 2), lag_rates=(100, 300), lag_seconds=4.0,
                   check_sizes=(1000, 3000),
                   search_n=5000, search_users=5, search_queries=60, web_requests=300)

    @classmethod
    def full(cls) -> Sizes:
        return cls(write_ops=2000, dual_ops=1000, dual_warmup=200, write_seconds=10.0,
                   slow_ms=20.0,
                   projection_n=10000, projection_users=20, worker_processes=(1, 2),
                   lag_rates=(100, 300), lag_seconds=20.0, check_sizes=(10_000, 100_000),
                   search_n=100_000, search_users=5, search_queries=300, web_requests=1000)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """Shared by the sections of one run."""

    env: BenchEnv
    sizes: Sizes
    quick: bool
    # Raw latency samples (seconds) by series name, for the chart; not written to JSON.
    samples: dict[str, list[float]] = field(default_factory=dict)
    # Facts one section measures for another (worker RSS is sampled during projection runs).
    shared: dict[str, Any] = field(default_factory=dict)
