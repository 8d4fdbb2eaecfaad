"""The one harness of tests and benchmarks: servers on free ports, managed subprocesses, waits.

``Stack`` starts Postgres, Redis and Neo4j (``devtools.localservers``) on free loopback ports
under one folder, migrates a template database and clones a fresh database from it on demand.
``ManagedProcess`` runs a child in its own process group so one signal reaches all of it (the
dramatiq parent and its forked workers), and is always stopped by group. ``wait_for`` polls a
condition until a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import redis as redis_lib
from neo4j import Driver, GraphDatabase

from app.db.migrations import upgrade
from app.settings import Settings, load_settings
from devtools.localservers import LocalServers, Postgres, ServerUrls, Status, free_port

REPO = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    """Poll ``check`` until it returns something truthy (returned), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} "
                               f"(last value: {last!r})")
        time.sleep(interval)


# -- subprocesses ------------------------------------------------------------------------------


class ManagedProcess:
    """A child process in its own session, so one signal reaches its whole process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path = REPO, run_as: tuple[int, int] | None = None) -> None:
        """Start ``argv``; ``run_as`` (uid, gid), when root, runs it as that user only."""
        self.name = name
        self.log_path = log_path
        ids: dict[str, object] = ({} if run_as is None else
                                  {"user": run_as[0], "group": run_as[1], "extra_groups": []})
        with log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                **ids)  # type: ignore[call-overload]
        self.pid = self.proc.pid

    def group(self) -> list[psutil.Process]:
        """Live (non-zombie) members of the process group, forked children included."""
        members = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == self.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    members.append(p)
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return members

    def log(self, lines: int | None = 40) -> str:
        """The tail of the process's output (all of it with ``lines=None``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def wait_log(self, needle: str, timeout: float = 60, count: int = 1) -> None:
        """Wait until the output holds ``needle`` (``count`` times); fail early if it exits."""
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            return self.log(None).count(needle) >= count

        wait_for(seen, timeout, f"{self.name} to log {needle!r}", interval=0.02)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the leader only (what a process manager does)."""
        self.proc.send_signal(sig)

    def terminate(self, timeout: float) -> int:
        """SIGTERM the leader and wait for it; its return code (TimeoutError if it hangs)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} did not exit within {timeout}s of SIGTERM:\n"
                               f"{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the whole group and reap it, as a crash (or the OOM killer) would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_for(lambda: not self.group(), 10, f"{self.name} group to be gone")

    def stop(self, grace: float = 0.0) -> None:
        """SIGTERM the group (with ``grace``), then SIGKILL what is left; idempotent."""
        if grace and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        if self.proc.poll() is None or self.group():
            self.kill()
        self.proc.wait(timeout=10)


class Processes:
    """Every subprocess of a run, stopped together however the run ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[ManagedProcess] = []
        self._count = 0

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        self._count += 1
        proc = ManagedProcess(name, argv, env, self.log_dir / f"{self._count:02d}-{name}.log")
        self.running.append(proc)
        return proc

    def stop(self, proc: ManagedProcess, grace: float = 20.0) -> None:
        proc.stop(grace)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self, grace: float = 0.0) -> None:
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc, grace)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {proc.name} ({proc.pid}): {exc}")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a child (relay, worker, web, CLI) reads exactly these settings from."""
    names = {name.upper() for name in type(settings).model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(settings.process_env())
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Stack:
    """Postgres, Redis and Neo4j on free loopback ports, and a migrated template database."""

    state_dir: Path
    urls: ServerUrls
    servers: LocalServers
    pg_user: str
    pg_password: str
    template: str = "memory_template"

    @classmethod
    @contextlib.contextmanager
    def started(cls, state_dir: Path, *, pg_password: str, neo4j_password: str,
                pg_user: str = "memory", template: str = "memory_template",
                report: Callable[[Status, float], None] | None = None) -> Iterator[Stack]:
        """Start everything under ``state_dir``; stop the servers on the way out, always."""
        urls = ServerUrls(
            database_url=(f"postgresql://{pg_user}:{pg_password}@127.0.0.1:{free_port()}"
                          "/postgres"),
            # Redis with a password, as the local stack runs it.
            redis_url=f"redis://:{secrets.token_urlsafe(16)}@127.0.0.1:{free_port()}/0",
            neo4j_uri=f"bolt://127.0.0.1:{free_port()}",
            neo4j_user="neo4j",
            neo4j_password=neo4j_password,
        )
        stack = cls(state_dir, urls, LocalServers(state_dir, urls), pg_user, pg_password,
                    template)
        try:
            stack.servers.up(report)
            stack.drop_database(template)
            stack.postgres.ensure_role_and_database(template)  # owned by the app's role
            upgrade(stack.settings(template))  # migrations as the app's role
            yield stack
        finally:
            stack.servers.down()

    @property
    def postgres(self) -> Postgres:
        server = self.servers.get("postgres")
        assert isinstance(server, Postgres)
        return server

    @property
    def pg_port(self) -> int:
        return self.postgres.endpoint.port

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """The superuser's DSN (creating databases, extensions, migrating down)."""
        password = self.postgres.superuser_password
        assert password is not None
        return f"postgresql://{Postgres.SUPERUSER}:{password}@127.0.0.1:{self.pg_port}/{dbname}"

    def database_url(self, dbname: str, *, superuser: bool = False) -> str:
        """The app's role (an ordinary role owning its database), or the superuser's."""
        dsn = (self.admin_dsn(dbname) if superuser else
               f"postgresql://{self.pg_user}:{self.pg_password}@127.0.0.1:{self.pg_port}/"
               f"{dbname}")
        return dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def settings(self, dbname: str, *, superuser: bool = False,
                 **overrides: object) -> Settings:
        """Settings for ``dbname`` on these servers (defaults otherwise, as production)."""
        values: dict[str, object] = {
            "database_url": self.database_url(dbname, superuser=superuser),
            "redis_url": self.urls.redis_url,
            "neo4j_uri": self.urls.neo4j_uri,
            "neo4j_user": self.urls.neo4j_user,
            "neo4j_password": self.urls.neo4j_password,
            "local_dir": self.state_dir,
        }
        values.update(overrides)
        # Never a developer's .env: the servers here are the harness's own.
        return load_settings(_env_file=None, **values)

    def create_database(self, dbname: str) -> None:
        """A new database cloned from the migrated template (replacing one of that name)."""
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{self.template}" '
                         f'OWNER "{self.pg_user}"')

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def driver(self, uri: str | None = None) -> Driver:
        return GraphDatabase.driver(uri or self.urls.neo4j_uri,
                                    auth=(self.urls.neo4j_user, self.urls.neo4j_password))

    def clear_graph(self, driver: Driver | None = None) -> None:
        """Delete every node (constraints and indexes stay)."""
        own = driver is None
        d = driver or self.driver()
        try:
            with d.session() as session:
                # IN TRANSACTIONS needs an auto-commit transaction: session.run.
                session.run("MATCH (n) CALL (n) { DETACH DELETE n } "
                            "IN TRANSACTIONS OF 5000 ROWS").consume()
        finally:
            if own:
                d.close()

    def redis(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.urls.redis_url)

    def flush_redis(self) -> None:
        client = self.redis()
        try:
            client.flushall()
        finally:
            client.close()
