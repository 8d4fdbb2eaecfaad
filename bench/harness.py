"""The benchmark's own servers and processes: started here, always stopped here.

``BenchEnv`` starts Postgres, Redis and Neo4j (app.localservers) on free loopback ports in a
temporary folder, migrates a template database, and hands each section a fresh database cloned
from it. Every subprocess a section starts (relay, dramatiq workers, the web process, the slow
proxy) is registered in ``Processes``, which stops each one by its process group on the way out,
whatever happens (exceptions, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis as redis_lib
from neo4j import Driver, GraphDatabase
from sqlalchemy import text

from app.db.connector import Database
from app.db.migrations import upgrade
from app.localservers import LocalServers, ServerUrls, free_port
from app.settings import Settings, load_settings
from bench.stats import STOP

REPO = Path(__file__).resolve().parent.parent
PG_USER = "memory"
PG_PASSWORD = "bench-pg-pass"
NEO4J_PASSWORD = "bench-neo4j-pass"
TEMPLATE_DB = "bench_template"
_T0 = time.monotonic()


def say(message: str) -> None:
    """One progress line with the time since the run began."""
    elapsed = time.monotonic() - _T0
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:05.2f}] {message}", flush=True)


def wait_for(check: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Poll ``check`` until truthy or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A subprocess this run started (in its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 60.0) -> None:
        """Wait until the process logs ``needle``; fail early if it exits."""
        def seen() -> bool:
            if self.popen.poll() is not None:
                tail = "\n".join(self.log_text().splitlines()[-20:])
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")
            return needle in self.log_text()
        wait_for(seen, timeout, f"{self.name} to log {needle!r}", interval=0.01)


class Processes:
    """Every subprocess of the run, stopped by process group (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[Proc] = []
        self._count = 0

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        self._count += 1
        log = self.log_dir / f"{self._count:02d}-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 20.0) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left; idempotent."""
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(10)
        # Children (dramatiq's worker processes) share the group: make sure none survive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {proc.name} ({proc.pid}): {exc}", file=sys.stderr)


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
    """Servers, the template database and the subprocesses of one benchmark run."""

    state_dir: Path
    urls: ServerUrls
    servers: LocalServers
    processes: Processes
    pg_port: int
    databases: list[str] = field(default_factory=list)
    keep_state: bool = False

    @classmethod
    @contextlib.contextmanager
    def started(cls, keep_state: bool = False) -> Iterator[BenchEnv]:
        """Start everything; on the way out stop every subprocess, then the servers."""
        state = Path(tempfile.mkdtemp(prefix="memctl-bench-"))
        pg_port = free_port()
        urls = ServerUrls(
            database_url=f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{pg_port}/postgres",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            neo4j_uri=f"bolt://127.0.0.1:{free_port()}",
            neo4j_user="neo4j",
            neo4j_password=NEO4J_PASSWORD,
        )
        logs = state / "logs"
        logs.mkdir()
        env = cls(state, urls, LocalServers(state, urls), Processes(logs), pg_port,
                  keep_state=keep_state)
        say(f"starting Postgres, Redis and Neo4j under {state}")
        try:
            env.servers.up(lambda s, secs: say(f"  {s.name:<8} {s.state} {s.address} "
                                               f"({secs:.1f}s)"))
            with psycopg.connect(env.admin_dsn(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
            upgrade(env.settings(TEMPLATE_DB))
            say("template database migrated")
            yield env
        finally:
            STOP.set()  # load threads still running (after Ctrl-C) stop at their next step
            # A second Ctrl-C must not cut the clean-up short.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                say("stopping subprocesses and servers")
                env.processes.stop_all()
                env.servers.down()
            finally:
                signal.signal(signal.SIGINT, previous)
                if keep_state:
                    say(f"state kept in {state}")
                else:
                    shutil.rmtree(state, ignore_errors=True)

    # -- Postgres ---------------------------------------------------------------------------

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/{dbname}"

    def database_url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/{dbname}"

    def settings(self, dbname: str, **overrides: object) -> Settings:
        """Settings for ``dbname`` on the bench servers (defaults otherwise, as production)."""
        values: dict[str, object] = {
            "database_url": self.database_url(dbname),
            "redis_url": self.urls.redis_url,
            "neo4j_uri": self.urls.neo4j_uri,
            "neo4j_user": self.urls.neo4j_user,
            "neo4j_password": self.urls.neo4j_password,
            "local_dir": self.state_dir,
        }
        values.update(overrides)
        return load_settings(**values)

    def fresh_database(self, name: str) -> Settings:
        """A new database cloned from the migrated template, with its settings."""
        dbname = f"bench_{name}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{TEMPLATE_DB}"')
        self.databases.append(dbname)
        return self.settings(dbname)

    def drop_database(self, settings: Settings) -> None:
        """Drop a section's database to free disk and memory for the next one."""
        dbname = settings.database_url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    # -- Neo4j and Redis --------------------------------------------------------------------

    def driver(self, uri: str | None = None) -> Driver:
        return GraphDatabase.driver(uri or self.urls.neo4j_uri,
                                    auth=(self.urls.neo4j_user, self.urls.neo4j_password))

    def clear_graph(self) -> None:
        """Delete every node (constraints and indexes stay)."""
        with self.driver() as driver, driver.session() as session:
            session.run("MATCH (n) CALL (n) { DETACH DELETE n } "
                        "IN TRANSACTIONS OF 5000 ROWS").consume()

    def flush_redis(self) -> None:
        client = redis_lib.Redis.from_url(self.urls.redis_url)
        try:
            client.flushall()
        finally:
            client.close()

    def reset_shared(self) -> None:
        """An empty graph and an empty Redis, between sections."""
        self.clear_graph()
        self.flush_redis()

    # -- subprocesses -----------------------------------------------------------------------

    def env_for(self, settings: Settings, **extra: str) -> dict[str, str]:
        """The environment a relay, worker or web process reads its settings from."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_", "REDIS_", "NEO4J_", "API_"))}
        env.update({
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "NEO4J_URI": settings.neo4j_uri,
            "NEO4J_USER": settings.neo4j_user,
            "NEO4J_PASSWORD": settings.neo4j_password.get_secret_value(),
            "WORKER_BATCH_SIZE": str(settings.worker_batch_size),
            "RELAY_BATCH_SIZE": str(settings.relay_batch_size),
            "LEASE_SECONDS": str(settings.lease_seconds),
            "LOCAL_DIR": str(self.state_dir),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def start_worker(self, settings: Settings, processes: int = 1, threads: int = 4,
                     neo4j_uri: str | None = None) -> Proc:
        """``python -m dramatiq workers.actors`` as the Procfile runs it; waits until ready."""
        extra = {"NEO4J_URI": neo4j_uri} if neo4j_uri else {}
        proc = self.processes.start(
            f"worker-p{processes}",
            [sys.executable, "-m", "dramatiq", "workers.actors", "--processes", str(processes),
             "--threads", str(threads)],
            self.env_for(settings, **extra))
        ready = "Worker process is ready for action"

        def booted() -> bool:
            if proc.popen.poll() is not None:
                tail = "\n".join(proc.log_text().splitlines()[-20:])
                raise RuntimeError(f"dramatiq worker exited:\n{tail}")
            return proc.log_text().count(ready) >= processes

        wait_for(booted, 90, "dramatiq worker processes", interval=0.02)
        return proc

    def start_relay(self, settings: Settings) -> Proc:
        """``memctl relay``; returns once it logged that it started."""
        proc = self.processes.start("relay", [sys.executable, "-m", "app.cli", "relay"],
                                    self.env_for(settings))
        proc.wait_log("relay started", 60)
        return proc

    def start_proxy(self, delay_ms: float) -> tuple[Proc, str]:
        """The slow-Neo4j proxy in front of the Bolt port; returns it and its bolt:// URI."""
        port = free_port()
        target = self.servers.get("neo4j").endpoint.port  # type: ignore[attr-defined]
        proc = self.processes.start(
            "proxy", [sys.executable, "-m", "bench.proxy", "--listen-port", str(port),
                      "--target-port", str(target), "--delay-ms", str(delay_ms)],
            dict(os.environ))
        proc.wait_log("ready", 30)
        return proc, f"bolt://127.0.0.1:{port}"

    def server_pids(self) -> dict[str, int]:
        """The pid of each running server (Postgres: the postmaster)."""
        out = {}
        for server in self.servers:
            pid = server.pid()
            if pid is not None:
                out[server.name] = pid
        return out

    # -- facts for the report ---------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        """Server and library versions."""
        out: dict[str, str] = {}
        with psycopg.connect(self.admin_dsn(TEMPLATE_DB)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            out["postgres"] = str(row[0]) if row else "?"
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            out["pgvector"] = str(row[0]) if row else "?"
        with self.driver() as driver:
            records, _, _ = driver.execute_query(
                "CALL dbms.components() YIELD name, versions, edition "
                "RETURN name, versions[0] AS v, edition")
            out["neo4j"] = " ".join(f"{r['v']} {r['edition']}" for r in records)
        client = redis_lib.Redis.from_url(self.urls.redis_url)
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
    with db.transaction() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM outbox WHERE status IN ('pending', 'in_flight')")).scalar_one())


def dead_outbox(db: Database) -> int:
    with db.transaction() as conn:
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
