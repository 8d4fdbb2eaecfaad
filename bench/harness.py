"""The benchmark's own servers and processes: started here, always stopped here.

The servers, the template database and the subprocesses come from ``devtools.harness``, the
one harness of tests and benchmarks: ``BenchEnv`` starts a ``Stack`` (Postgres, Redis and Neo4j
on free loopback ports in a temporary folder, a migrated template database) and hands each
section a fresh database cloned from it. Every subprocess a section starts (relay, dramatiq
workers, the web process, the slow proxy) is registered in one ``Processes``, which stops each
one by its process group on the way out, whatever happens (exceptions, Ctrl-C), before the
servers stop.

What stays here is the benchmark's own: the CPU, RSS and machine-load meters, the Neo4j retry
counter, the start-up of the relay, worker and proxy as a section needs them, the facts for the
report and a few outbox counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.connector import Database
from app.settings import Settings
from bench.stats import STOP
from devtools.harness import ManagedProcess, Processes, Stack, child_env, wait_for
from devtools.localservers import Status, free_port

PG_PASSWORD = "bench-pg-pass"
NEO4J_PASSWORD = "bench-neo4j-pass"
TEMPLATE_DB = "bench_template"
WORKER_READY = "Worker process is ready for action"
STOP_GRACE = 20.0  # seconds a subprocess gets to exit on SIGTERM at the end of the run
_T0 = time.monotonic()


def say(message: str) -> None:
    """One progress line with the time since the run began."""
    elapsed = time.monotonic() - _T0
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:05.2f}] {message}", flush=True)


def dbname(settings: Settings) -> str:
    """The database a settings object points at."""
    name = make_url(settings.database_url).database
    if not name:
        raise ValueError(f"no database in {settings.database_url!r}")
    return name


class RssSampler:
    """Polls the resident set size of a process tree in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_total = 0  # bytes, the whole tree at one instant
        self.peak_single = 0  # bytes, the largest single process
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        began = time.monotonic()
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            sizes = []
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    sizes.append(p.memory_info().rss)
            if sizes:
                total = sum(sizes)
                self.peak_total = max(self.peak_total, total)
                self.peak_single = max(self.peak_single, max(sizes))
                self.samples.append((time.monotonic() - began, total))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class CpuMeter:
    """CPU seconds (user + system) each named process tree used between start and stop.

    A tree is the process, its live descendants and the children it already reaped, so
    Postgres backends that came and went are counted. ``"bench"`` is this process alone.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self.used: dict[str, float] = {}
        self.wall_seconds = 0.0

    @staticmethod
    def _tree(pid: int, children: bool) -> float:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)] if children else [root]
        except psutil.Error:
            return 0.0
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
                if children:
                    total += t.children_user + t.children_system
        return total

    def _read(self) -> dict[str, float]:
        return {name: self._tree(pid, name != "bench") for name, pid in self.pids.items()}

    def start(self) -> None:
        self._start = self._read()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """CPU seconds by tree, their sum, and the share of all cores that sum is."""
        end = self._read()
        self.wall_seconds = time.monotonic() - self._wall
        self.used = {k: round(max(0.0, end[k] - self._start.get(k, 0.0)), 2) for k in end}
        total = sum(self.used.values())
        cores = os.cpu_count() or 1
        return {"cpu_s": self.used, "total_cpu_s": round(total, 2),
                "utilisation": round(total / (self.wall_seconds * cores), 3)}


class MachineLoad:
    """How much CPU *other* processes used while a section ran (the machine may be shared).

    Ours: this process and its descendants (children reaped included) plus the Postgres
    postmaster's tree (pg_ctl detaches it). Others: the machine's busy CPU time minus ours.
    """

    def __init__(self, extra_roots: list[int]) -> None:
        self.extra_roots = extra_roots
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _ours(self) -> float:
        seen: set[int] = set()
        total = 0.0
        for root_pid in [os.getpid(), *self.extra_roots]:
            try:
                root = psutil.Process(root_pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        idle = float(t.idle) + float(getattr(t, "iowait", 0.0))
        guest = float(getattr(t, "guest", 0.0)) + float(getattr(t, "guest_nice", 0.0))
        return float(sum(t)) - idle - guest

    def start(self) -> None:
        self._start = (time.monotonic(), self._busy(), self._ours())

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._start[0]
        busy = self._busy() - self._start[1]
        ours = self._ours() - self._start[2]
        others = max(0.0, busy - ours)
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 1), "busy_cpu_s": round(busy, 1),
                "ours_cpu_s": round(ours, 1), "others_cpu_s": round(others, 1),
                "others_share": round(others / (wall * cores), 3) if wall > 0 else 0.0,
                "load_avg_1m": round(os.getloadavg()[0], 2)}


class Neo4jRetries(logging.Handler):
    """Counts the driver's 'will be retried' warnings (deadlocks, transient errors) and keeps
    them off the console; ``take()`` returns the count since the last call."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "retried" in message:
            self.count += 1
        elif "notification" not in message:  # schema notices on an empty graph are noise
            print(f"neo4j: {message[:300]}", file=sys.stderr)

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


NEO4J_RETRIES = Neo4jRetries()
_neo4j_log = logging.getLogger("neo4j")
_neo4j_log.addHandler(NEO4J_RETRIES)
_neo4j_log.propagate = False


@dataclass
class BenchEnv:
    """The servers (a ``devtools.harness.Stack``) and the subprocesses of one benchmark run."""

    stack: Stack
    processes: Processes

    @classmethod
    @contextlib.contextmanager
    def started(cls, keep_state: bool = False) -> Iterator[BenchEnv]:
        """Start everything; on the way out stop every subprocess, then the servers."""
        state = Path(tempfile.mkdtemp(prefix="memctl-bench-"))
        logs = state / "logs"
        logs.mkdir()
        processes = Processes(logs)
        previous: Any = None  # the SIGINT handler while the clean-up ignores a second Ctrl-C

        def report(s: Status, secs: float) -> None:
            say(f"  {s.name:<8} {s.state} {s.address} ({secs:.1f}s)")

        say(f"starting Postgres, Redis and Neo4j under {state}")
        try:
            with Stack.started(state, pg_password=PG_PASSWORD, neo4j_password=NEO4J_PASSWORD,
                               template=TEMPLATE_DB, report=report) as stack:
                say("template database migrated")
                try:
                    yield cls(stack, processes)
                finally:
                    STOP.set()  # load threads still running (after Ctrl-C) stop at their next step
                    # A second Ctrl-C must not cut the clean-up short (the servers stop when
                    # the Stack's block ends, after this).
                    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                    say("stopping subprocesses and servers")
                    processes.stop_all(STOP_GRACE)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if keep_state:
                say(f"state kept in {state}")
            else:
                shutil.rmtree(state, ignore_errors=True)

    # -- databases, graph and Redis (the Stack's) -------------------------------------------

    def fresh_database(self, name: str, **overrides: object) -> Settings:
        """A new database ``bench_<name>`` cloned from the template, with its settings."""
        database = f"bench_{name}"
        self.stack.create_database(database)
        return self.stack.settings(database, **overrides)

    def drop_database(self, settings: Settings) -> None:
        """Drop a section's database to free disk and memory for the next one."""
        self.stack.drop_database(dbname(settings))

    def admin_dsn(self, settings: Settings) -> str:
        """A plain psycopg DSN for the database of ``settings`` (VACUUM, EXPLAIN, ...)."""
        return self.stack.admin_dsn(dbname(settings))

    def reset_shared(self) -> None:
        """An empty graph and an empty Redis, between sections."""
        self.stack.clear_graph()
        self.stack.flush_redis()

    # -- subprocesses -----------------------------------------------------------------------

    def start_worker(self, settings: Settings, processes: int = 1, threads: int = 4,
                     neo4j_uri: str | None = None) -> ManagedProcess:
        """``python -m dramatiq workers.actors`` as the Procfile runs it; waits until ready."""
        extra = {"NEO4J_URI": neo4j_uri} if neo4j_uri else {}
        proc = self.processes.start(
            f"worker-p{processes}",
            [sys.executable, "-m", "dramatiq", "workers.actors", "--processes", str(processes),
             "--threads", str(threads)],
            child_env(settings, **extra))
        proc.wait_log(WORKER_READY, timeout=90, count=processes)
        return proc

    def start_relay(self, settings: Settings) -> ManagedProcess:
        """``memctl relay``; returns once it logged that it started."""
        proc = self.processes.start("relay", [sys.executable, "-m", "app.cli", "relay"],
                                    child_env(settings))
        proc.wait_log("relay started", 60)
        return proc

    def start_web(self, settings: Settings, timeout: float = 90) -> ManagedProcess:
        """``memctl web`` on ``settings.api_host:api_port``; returns once it answers liveness."""
        web = self.processes.start("web", [sys.executable, "-m", "app.cli", "web"],
                                   child_env(settings))
        url = f"http://{settings.api_host}:{settings.api_port}/api/health/live"
        with httpx.Client(timeout=30) as probe:
            def live() -> bool:
                if web.proc.poll() is not None:
                    raise RuntimeError(f"web exited:\n{web.log()}")
                try:
                    return probe.get(url).status_code == 200
                except httpx.HTTPError:
                    return False
            wait_for(live, timeout, "the web process", interval=0.1)
        return web

    def start_proxy(self, delay_ms: float) -> tuple[ManagedProcess, str]:
        """The slow-Neo4j proxy in front of the Bolt port; returns it and its bolt:// URI."""
        port = free_port()
        target = self.stack.servers.get("neo4j").endpoint.port
        proc = self.processes.start(
            "proxy", [sys.executable, "-m", "bench.proxy", "--listen-port", str(port),
                      "--target-port", str(target), "--delay-ms", str(delay_ms)],
            {**os.environ, "PYTHONUNBUFFERED": "1"})
        proc.wait_log("ready", 30)
        return proc, f"bolt://127.0.0.1:{port}"

    def server_pids(self) -> dict[str, int]:
        """The pid of each running server (Postgres: the postmaster)."""
        out = {}
        for server in self.stack.servers:
            pid = server.pid()
            if pid is not None:
                out[server.name] = pid
        return out

    # -- facts for the report ---------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        """Server and library versions."""
        out: dict[str, str] = {}
        with psycopg.connect(self.stack.admin_dsn(self.stack.template)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            out["postgres"] = str(row[0]) if row else "?"
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            out["pgvector"] = str(row[0]) if row else "?"
        with self.stack.driver() as driver:
            records, _, _ = driver.execute_query(
                "CALL dbms.components() YIELD name, versions, edition "
                "RETURN name, versions[0] AS v, edition")
            out["neo4j"] = " ".join(f"{r['v']} {r['edition']}" for r in records)
        client = self.stack.redis()
        try:
            out["redis"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
        import dramatiq
        import neo4j
        import sqlalchemy

        out.update({"python": platform.python_version(), "neo4j-driver": neo4j.__version__,
                    "dramatiq": dramatiq.__version__, "psycopg": psycopg.__version__,
                    "sqlalchemy": sqlalchemy.__version__})
        return out


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# -- outbox helpers used by several sections --------------------------------------------------

def open_outbox(db: Database) -> int:
    """Outbox rows not finished yet (pending or in flight)."""
    with db.engine.begin() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM outbox WHERE status IN ('pending', 'in_flight')")).scalar_one())


def dead_outbox(db: Database) -> int:
    with db.engine.begin() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM outbox WHERE status = 'dead'")).scalar_one())


def wait_drained(db: Database, timeout: float, interval: float = 0.1) -> float:
    """Wait until no outbox row is open; returns the seconds it took."""
    began = time.monotonic()
    wait_for(lambda: open_outbox(db) == 0, timeout, "the outbox to drain", interval)
    return time.monotonic() - began


_PROJECTED = re.compile(r"action=projection\.done memories=(\d+) rows=(\d+)")


def worker_log_stats(worker_log: str) -> dict[str, Any]:
    """From a worker's log: graph batches (``projection.done``), rows per batch, and how often
    the Neo4j driver retried a transaction (deadlocks between concurrent batches)."""
    rows = [int(m.group(2)) for m in _PROJECTED.finditer(worker_log)]
    retries = worker_log.count("will be retried")
    deadlocks = worker_log.count("DeadlockDetected")
    if not rows:
        return {"batches": 0, "mean_rows": None, "single_row_share": None,
                "neo4j_retries": retries, "deadlocks": deadlocks}
    return {"batches": len(rows), "mean_rows": round(sum(rows) / len(rows), 1),
            "single_row_share": round(sum(1 for r in rows if r == 1) / len(rows), 3),
            "neo4j_retries": retries, "deadlocks": deadlocks}
