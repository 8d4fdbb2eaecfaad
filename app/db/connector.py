"""The Postgres connector: one SQLAlchemy engine, transactions, and driver-error conversion."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection, Engine, Row, create_engine

from app.db.sql import q
from app.errors import ConfigError, StoreError, StoreUnavailable
from app.settings import Settings

log = logging.getLogger(__name__)


# SQLSTATE classes that mean "cannot reach or use the server now", not "bad statement":
# 08 connection exception, 53 insufficient resources, 57P0x shutdown/crash, 40001/40P01
# serialization failure and deadlock.
_UNAVAILABLE = ("08", "53", "57P", "40001", "40P01")


def convert(exc: sqlalchemy.exc.SQLAlchemyError) -> StoreError:
    """Map a SQLAlchemy/psycopg error onto our tree (the driver error stays as __cause__)."""
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    unavailable = (
        isinstance(exc, sqlalchemy.exc.InterfaceError)
        or (isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated)
        or (isinstance(exc, sqlalchemy.exc.OperationalError)
            and (sqlstate is None or sqlstate.startswith(_UNAVAILABLE)))
    )
    if unavailable:
        return StoreUnavailable(f"Postgres unavailable: {_first_line(exc)}")
    return StoreError(f"Postgres error: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


class Database:
    """Owns the engine; every statement goes through ``transaction()`` or ``connect()``."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self.settings = settings
        self.engine: Engine = create_engine(
            settings.database_url,
            pool_size=pool_size or settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"connect_timeout": 5, "application_name": "memctl"},
        )

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: commits when the block ends, rolls back on any exception."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise convert(exc) from exc

    def one(self, name: str, params: Mapping[str, Any] | None = None) -> Row[Any] | None:
        with self.transaction() as conn:
            return conn.execute(q(name), dict(params or {})).first()

    def all(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row[Any]]:
        with self.transaction() as conn:
            return list(conn.execute(q(name), dict(params or {})).all())

    def ping(self) -> None:
        with self.transaction() as conn:
            conn.exec_driver_sql("SELECT 1")

    def check_embedding_dimension(self) -> None:
        """Refuse to start when EMBEDDING_DIM disagrees with the migrated column."""
        row = self.one("embedding_dimension")
        if row is None or row[0] is None:
            raise ConfigError("the database is not migrated: run 'memctl migrate'")
        if int(row[0]) != self.settings.embedding_dim:
            raise ConfigError(
                f"EMBEDDING_DIM: settings say {self.settings.embedding_dim} but the database "
                f"column memories.embedding is vector({row[0]})"
            )

    def dispose(self) -> None:
        self.engine.dispose()
