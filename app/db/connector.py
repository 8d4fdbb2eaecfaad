"""The Postgres connector: the one owner of Postgres I/O.

Services run named statements (``queries.sql``) through a ``Tx`` and get plain dicts back; they
never see SQLAlchemy rows or psycopg. LISTEN/NOTIFY and advisory-lock sessions are methods here
too. Every driver error leaves this module as one of ours (``raise ... from exc``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg import sql as psql
from sqlalchemy import Connection, Engine, TextClause, create_engine, text

from app import statements
from app.errors import ConfigError, StoreError, StoreMisconfigured, StoreUnavailable
from app.settings import Settings
from app.validation import safe_json_loads

log = logging.getLogger(__name__)

Row = dict[str, Any]
Params = Mapping[str, Any]

# SQLSTATE classes that mean "cannot reach or use the server now", not "bad statement":
# 08 connection exception, 53 insufficient resources, 57P0x shutdown/crash, 40001/40P01
# serialization failure and deadlock.
_UNAVAILABLE = ("08", "53", "57P", "40001", "40P01")
# 28 invalid authorization, 3D000 no such database, 42P01 no such table (not migrated).
_MISCONFIGURED = ("28", "3D000", "42P01")
# libpq reports a refused login without a SQLSTATE, so the message is all there is to go on.
_MISCONFIGURED_TEXT = ("password authentication failed", "no pg_hba.conf entry",
                       "does not exist")


@cache
def sql() -> dict[str, str]:
    """Every named SQL statement, as text."""
    return statements.load(Path(__file__).parent / "queries.sql")


@cache
def _clause(name: str) -> TextClause:
    return text(sql()[name])


@cache
def _psycopg(name: str) -> str:
    """A statement in psycopg's ``%(name)s`` style, for the raw sessions below."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql()[name])


def convert(exc: BaseException) -> StoreError:
    """Map a SQLAlchemy/psycopg error onto our tree (the caller chains the driver error)."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None) or ""
    message = f"Postgres: {_first_line(orig)}"
    if sqlstate.startswith(_MISCONFIGURED) or (
            not sqlstate and any(t in str(orig) for t in _MISCONFIGURED_TEXT)):
        return StoreMisconfigured(message)
    unavailable = (
        isinstance(exc, sqlalchemy.exc.InterfaceError | psycopg.InterfaceError)
        or (isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated)
        or (isinstance(exc, sqlalchemy.exc.OperationalError | psycopg.OperationalError)
            and (not sqlstate or sqlstate.startswith(_UNAVAILABLE)))
    )
    if unavailable:
        return StoreUnavailable(message)
    return StoreError(message)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Tx:
    """One open transaction: named statements in, plain dicts out."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def one(self, name: str, params: Params | None = None) -> Row | None:
        row = self._conn.execute(_clause(name), dict(params or {})).first()
        return dict(row._mapping) if row is not None else None

    def all(self, name: str, params: Params | None = None) -> list[Row]:
        return [dict(r._mapping) for r in self._conn.execute(_clause(name), dict(params or {}))]

    def scalar(self, name: str, params: Params | None = None) -> Any:
        return self._conn.execute(_clause(name), dict(params or {})).scalar()

    def execute(self, name: str, params: Params | None = None) -> int:
        """Run a statement; the number of rows it changed."""
        return int(self._conn.execute(_clause(name), dict(params or {})).rowcount)

    def execute_formatted(self, name: str, **numbers: int) -> None:
        """A DDL statement whose ``{placeholders}`` are integers (types cannot be bound)."""
        values = {k: int(v) for k, v in numbers.items()}  # only integers reach the text
        self._conn.execute(text(sql()[name].format(**values)))

    def execute_many(self, name: str, params: Sequence[Params]) -> None:
        """One statement for many parameter sets, in one round trip where the driver can."""
        if params:
            self._conn.execute(_clause(name), [dict(p) for p in params])


class Listener:
    """A connection of its own, LISTENing on one channel."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._conn = conn

    def wait(self, timeout: float) -> bool:
        """Block until a notification or ``timeout``; whether one came."""
        try:
            return any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error as exc:
            raise convert(exc) from exc


class SessionLock:
    """A connection of its own holding a session-level advisory lock while it lives."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]], key: str) -> None:
        self._conn = conn
        self.key = key
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if free; True while this session holds it."""
        if not self.held:
            try:
                row = self._conn.execute(_psycopg("try_session_lock"),
                                         {"key": self.key}).fetchone()
            except psycopg.Error as exc:
                raise convert(exc) from exc
            self.held = bool(row and row[0])
        return self.held

    def alive(self) -> None:
        """Raise StoreUnavailable when the session (and so the lock) is gone."""
        try:
            self._conn.execute(_psycopg("ping"))
        except psycopg.Error as exc:
            self.held = False
            raise convert(exc) from exc


class Database:
    """Owns the engine; every statement goes through a ``Tx``."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self.settings = settings
        try:
            self.engine: Engine = create_engine(
                settings.database_url,
                pool_size=pool_size or settings.db_pool_size,
                max_overflow=settings.db_pool_size,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5, "application_name": "memctl"},
                # jsonb written around the API may nest past what json.loads can recurse.
                json_deserializer=safe_json_loads,
            )
        except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
            raise ConfigError(f"DATABASE_URL: {exc}") from None

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Tx]:
        """One transaction: commits when the block ends, rolls back on any exception.

        With ``conn`` (a caller's SQLAlchemy connection inside its own transaction), the
        statements join that transaction and the caller commits or rolls back.
        """
        try:
            if conn is not None:
                yield Tx(conn)
                return
            with self.engine.begin() as own:
                yield Tx(own)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise convert(exc) from exc

    def one(self, name: str, params: Params | None = None) -> Row | None:
        with self.transaction() as tx:
            return tx.one(name, params)

    def all(self, name: str, params: Params | None = None) -> list[Row]:
        with self.transaction() as tx:
            return tx.all(name, params)

    def scalar(self, name: str, params: Params | None = None) -> Any:
        with self.transaction() as tx:
            return tx.scalar(name, params)

    def execute(self, name: str, params: Params | None = None) -> int:
        with self.transaction() as tx:
            return tx.execute(name, params)

    def execute_in_batches(self, name: str, params: Params, limit: int) -> int:
        """Run a bounded statement (``LIMIT :limit``) in its own transactions until it changes
        fewer than ``limit`` rows; the total. For pruning without one long transaction."""
        total = 0
        while True:
            n = self.execute(name, {**params, "limit": limit})
            total += n
            if n < limit:
                return total

    def ping(self) -> None:
        self.scalar("ping")

    def check_embedding_dimension(self) -> None:
        """Refuse to start when EMBEDDING_DIM disagrees with the migrated column."""
        dim = self.scalar("embedding_dimension")
        if dim is None:
            raise ConfigError("the database is not migrated: run 'memctl migrate'")
        if int(dim) != self.settings.embedding_dim:
            raise ConfigError(
                f"EMBEDDING_DIM: settings say {self.settings.embedding_dim} but the database "
                f"column memories.embedding is vector({dim}): to move the memories to the new "
                "embedder, run 'memctl reembed --change-dimension' with these settings, then "
                "start the processes again"
            )

    @contextmanager
    def advisory_lock(self, key: str, *, shared: bool) -> Iterator[bool]:
        """Try a session-level advisory lock for the block; yields whether it was taken."""
        lock, unlock = (("try_lock_shared", "unlock_shared") if shared
                        else ("try_lock_exclusive", "unlock_exclusive"))
        try:
            with self.engine.connect() as conn:
                got = bool(conn.execute(_clause(lock), {"key": key}).scalar())
                conn.commit()
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(_clause(unlock), {"key": key})
                        conn.commit()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise convert(exc) from exc

    def _connect_raw(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self.settings.psycopg_dsn, autocommit=True,
                                   connect_timeout=5, application_name="memctl")
        except psycopg.Error as exc:
            raise convert(exc) from exc

    @contextmanager
    def listener(self, channel: str) -> Iterator[Listener]:
        """LISTEN on ``channel`` over a connection of its own, closed when the block ends."""
        conn = self._connect_raw()
        try:
            # A channel is an identifier, not a parameter; ours are constants of this package.
            conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(channel)))
            yield Listener(conn)
        except psycopg.Error as exc:
            raise convert(exc) from exc
        finally:
            conn.close()

    @contextmanager
    def session_lock(self, key: str) -> Iterator[SessionLock]:
        """A session for an advisory lock held as long as the block runs (leader election)."""
        conn = self._connect_raw()
        try:
            yield SessionLock(conn, key)
        finally:
            conn.close()  # closing the session releases the lock

    def dispose(self) -> None:
        self.engine.dispose()
