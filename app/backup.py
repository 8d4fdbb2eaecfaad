"""Backup and restore. Postgres is the only source of truth, so a backup is a Postgres dump.

The graph is a projection of Postgres: after a restore, ``memctl sync rebuild`` re-projects it
from the restored memories and their cached extractions, and ``memctl sync check`` proves it
equal. The outbox and dead letters are restored with the rest; rows that were in flight are
re-dispatched once their leases run out, as after any crash.

``pg_dump`` and ``pg_restore`` come from the Postgres client package (the server's major
version or newer), found in ``PG_BIN_DIR`` or on PATH. They get the connection without its
password on their command line; the password travels in their environment (PGPASSWORD), so it
never shows in a process list. A dump is created with mode 0600: it holds every memory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import make_url

from app.consistency import Progress
from app.db.connector import Database
from app.db.migrations import code_heads
from app.errors import (
    ConfigError,
    Misconfigured,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
    ValidationError,
)
from app.settings import Settings

# pg_dump --verbose names each table whose rows it writes; pg_restore each entry it restores.
_DUMPED_TABLE = re.compile(r"dumping contents of table")
_RESTORED_ENTRY = re.compile(r"pg_restore: (creating|processing data for|executing) ")


@dataclass(frozen=True)
class DumpReport:
    path: str
    bytes: int
    tables: int
    entries: int
    server_version: str
    tool: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreReport:
    path: str
    entries: int
    live_memories: int
    deleted_memories: int
    users: int
    revision: str | None
    at_code_head: bool
    tool: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backups:
    """Dump the database to a file, and restore such a file into an empty database."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    # -- the client tools -----------------------------------------------------------------

    def tool(self, name: str) -> str:
        """The path of a Postgres client program (``pg_dump``, ``pg_restore``)."""
        if self.settings.pg_bin_dir:
            candidate = Path(self.settings.pg_bin_dir) / name
            if not os.access(candidate, os.X_OK):
                raise ConfigError(f"PG_BIN_DIR: no executable {name} in "
                                  f"{self.settings.pg_bin_dir}")
            return str(candidate)
        found = shutil.which(name)
        if found is None:
            raise ConfigError(f"{name} is not on PATH: install the Postgres client of the "
                              "server's major version (or newer), or set PG_BIN_DIR")
        return found

    def _connection(self) -> tuple[str, dict[str, str]]:
        """The database URI without its password, and the environment that carries it."""
        url = make_url(self.settings.database_url)
        uri = url.set(drivername="postgresql", password=None).render_as_string(
            hide_password=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        if url.password is not None:
            env["PGPASSWORD"] = str(url.password)
        return uri, env

    def _run(self, argv: list[str], stdout: IO[bytes] | int, progress: Progress | None,
             phase: str, pattern: re.Pattern[str], total: int | None) -> None:
        """Run a client program; feed progress from its verbose lines; raise on failure."""
        _, env = self._connection()
        tail: deque[str] = deque(maxlen=12)
        counted = 0
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=subprocess.PIPE, env=env) as proc:
            assert proc.stderr is not None
            for line in _lines(proc.stderr):
                tail.append(line)
                if progress is not None and pattern.search(line):
                    step = 1 if total is None or counted < total else 0
                    counted += step
                    if step:
                        progress(phase, step, total)
            code = proc.wait()
        if code != 0:
            raise _failure(Path(argv[0]).name, [t for t in tail if "error" in t.lower()]
                           or list(tail))
        if progress is not None and total is not None and counted < total:
            progress(phase, total - counted, total)  # entries it did not name one by one

    def _entries(self, path: Path) -> int:
        """The number of entries in a dump's table of contents; ValidationError if none."""
        done = subprocess.run([self.tool("pg_restore"), "--list", str(path)],
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ValidationError(f"{path}: not a pg_dump archive "
                                  f"({_one_line(done.stderr) or 'unreadable'})", "file")
        return sum(1 for line in done.stdout.splitlines()
                   if line.strip() and not line.startswith(";"))

    # -- dump -----------------------------------------------------------------------------

    def dump(self, path: Path, progress: Progress | None = None) -> DumpReport:
        """Write the whole database to ``path`` (a new file, pg_dump's custom format)."""
        started = time.monotonic()
        if path.exists():
            raise ValidationError(f"{path} exists: give a new file name", "file")
        if not path.parent.is_dir():
            raise ValidationError(f"{path.parent} is not a folder", "file")
        pg_dump = self.tool("pg_dump")
        self.tool("pg_restore")  # needed to verify the dump: fail before writing anything
        tables = int(self.db.scalar("user_tables"))  # also proves the database answers
        server = str(self.db.scalar("server_version"))
        uri, _ = self._connection()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                self._run([pg_dump, "--format=custom", "--verbose", f"--dbname={uri}"],
                          out, progress, "dump", _DUMPED_TABLE, tables)
            entries = self._entries(path)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave a partial dump behind
            raise
        return DumpReport(str(path), path.stat().st_size, tables, entries, _version(server),
                          pg_dump, round(time.monotonic() - started, 3))

    # -- restore --------------------------------------------------------------------------

    def restore(self, path: Path, progress: Progress | None = None) -> RestoreReport:
        """Restore a dump into the configured database, which must be empty.

        One transaction: a restore that fails leaves the database as empty as it was.
        """
        started = time.monotonic()
        if not path.is_file():
            raise ValidationError(f"{path}: no such file", "file")
        pg_restore = self.tool("pg_restore")
        entries = self._entries(path)
        existing = int(self.db.scalar("user_relations"))  # also proves the database answers
        if existing:
            raise ValidationError(
                f"the database is not empty ({existing} tables, sequences or views): restore "
                "into a new, empty database (CREATE DATABASE ...) and point DATABASE_URL at it",
                "DATABASE_URL")
        uri, _ = self._connection()
        # --no-comments: the dump's COMMENT ON EXTENSION vector needs the extension's owner; an
        # application role restoring into a database where an administrator created pgvector
        # (as `memctl services` does) is not that owner, and the comment carries nothing of ours.
        self._run([pg_restore, "--verbose", "--exit-on-error", "--single-transaction",
                   "--no-owner", "--no-privileges", "--no-comments", f"--dbname={uri}",
                   str(path)],
                  subprocess.DEVNULL, progress, "restore", _RESTORED_ENTRY, entries)
        self.db.engine.dispose()  # the schema changed under the pool: start afresh
        stats = self.db.one("memory_stats", {"user_id": None})
        assert stats is not None
        try:
            revision: str | None = self.db.scalar("schema_revision")
        except StoreError:
            revision = None
        return RestoreReport(
            str(path), entries, int(stats["live"]), int(stats["deleted"]), int(stats["users"]),
            revision, revision in code_heads(), pg_restore,
            round(time.monotonic() - started, 3))


def _lines(stream: IO[bytes]) -> Iterator[str]:
    for raw in stream:
        yield raw.decode(errors="replace").rstrip()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _version(number: str) -> str:
    """180006 -> 18.6."""
    if number.isdigit() and len(number) >= 5:
        return f"{int(number) // 10000}.{int(number) % 10000}"
    return number


def _failure(tool: str, lines: list[str]) -> StoreError | Misconfigured:
    """Our error for a failed client program, from what it printed."""
    text = _one_line(" ".join(lines))
    lowered = text.lower()
    if "version mismatch" in lowered:
        return Misconfigured(f"{tool} is older than the server: use the Postgres client of "
                             f"the server's major version or newer (PG_BIN_DIR): {text}")
    refused = ("password authentication failed" in lowered
               or re.search(r"(database|role) \S+ does not exist", lowered) is not None)
    if refused:
        return StoreMisconfigured(f"{tool}: the database refuses the settings: {text}")
    if "could not connect" in lowered or "connection refused" in lowered \
            or "timeout expired" in lowered:
        return StoreUnavailable(f"{tool}: cannot reach the database: {text}")
    return StoreError(f"{tool} failed: {text}")
