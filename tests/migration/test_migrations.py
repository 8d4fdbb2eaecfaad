"""Alembic owns the schema: upgrade from empty, downgrade to nothing, upgrade again; dimensions."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from app.db.connector import Database
from app.db.migrations import alembic_config, downgrade, upgrade
from app.errors import ConfigError
from tests.conftest import TestServers

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"memories", "outbox", "dead_letters", "inconsistencies", "check_runs",
          "idempotency_keys", "memory_history"}
_counter = itertools.count()


@pytest.fixture
def empty_db(test_servers: TestServers) -> Iterator[str]:
    """A new, empty database (not cloned from the migrated template); dropped afterwards."""
    name = f"mig_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema(test_servers: TestServers, name: str) -> tuple[set[str], bool, int | None]:
    """(public tables, whether the vector extension exists, memories.embedding dimension)."""
    with psycopg.connect(test_servers.admin_dsn(name)) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        dim = conn.execute("SELECT atttypmod FROM pg_attribute WHERE attrelid ="
                           " to_regclass('memories') AND attname = 'embedding'").fetchone()
    return tables, vector is not None, (int(dim[0]) if dim else None)


def test_upgrade_downgrade_upgrade(test_servers: TestServers, empty_db: str) -> None:
    settings = test_servers.settings(empty_db, superuser=True)
    assert schema(test_servers, empty_db) == (set(), False, None)

    # The real command line, as an operator runs it: settings come from the environment.
    env = {**os.environ, "DATABASE_URL": settings.database_url, "EMBEDDING_DIM": "384"}
    result = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    tables, vector, dim = schema(test_servers, empty_db)
    assert tables >= TABLES | {"alembic_version"}
    assert vector
    assert dim == 384

    downgrade(settings, "base")
    tables, vector, dim = schema(test_servers, empty_db)
    assert not tables & TABLES
    assert not vector
    assert dim is None

    upgrade(settings)
    tables, vector, dim = schema(test_servers, empty_db)
    assert tables >= TABLES
    assert vector
    database = Database(settings, pool_size=1)
    try:
        database.check_embedding_dimension()  # the migrated dimension matches the settings
    finally:
        database.dispose()


def test_the_migration_uses_the_configured_dimension(test_servers: TestServers,
                                                     empty_db: str) -> None:
    upgrade(test_servers.settings(empty_db, superuser=True, embedding_dim=16))
    assert schema(test_servers, empty_db)[2] == 16


def test_a_mismatched_dimension_is_refused(test_servers: TestServers, empty_db: str) -> None:
    upgrade(test_servers.settings(empty_db, superuser=True, embedding_dim=384))
    database = Database(test_servers.settings(empty_db, superuser=True, embedding_dim=512),
                        pool_size=1)
    try:
        with pytest.raises(ConfigError, match="EMBEDDING_DIM") as refused:
            database.check_embedding_dimension()
    finally:
        database.dispose()
    assert "512" in str(refused.value)
    assert "384" in str(refused.value)


def test_an_unmigrated_database_is_refused(test_servers: TestServers, empty_db: str) -> None:
    database = Database(test_servers.settings(empty_db, superuser=True), pool_size=1)
    try:
        with pytest.raises(ConfigError, match="not migrated"):
            database.check_embedding_dimension()
    finally:
        database.dispose()


def test_history_backfill_gives_each_memory_its_current_version(
        test_servers: TestServers, empty_db: str) -> None:
    settings = test_servers.settings(empty_db, superuser=True)
    # The revision before the history's, wherever it is chained.
    before = ScriptDirectory.from_config(alembic_config()).get_revision(
        "0007_history").down_revision
    assert isinstance(before, str)
    upgrade(settings, before)
    ids = []
    with psycopg.connect(test_servers.admin_dsn(empty_db)) as conn:
        for user, content, meta, importance, version, deleted in (
                ("alice", "new", {"a": 1}, 3, 1, None),
                ("alice", "edited", {}, 7, 4, None),
                ("bob", "deleted", {"b": 2}, 5, 2, datetime(2026, 1, 2, tzinfo=UTC))):
            row = conn.execute(
                "INSERT INTO memories (user_id, content, content_hash, metadata, importance,"
                " version, updated_at, deleted_at) VALUES (%s, %s, 'h', %s, %s, %s,"
                " now() - interval '3 days', %s) RETURNING id",
                (user, content, json.dumps(meta), importance, version, deleted)).fetchone()
            assert row is not None
            ids.append(row[0])
    upgrade(settings)
    with psycopg.connect(test_servers.admin_dsn(empty_db)) as conn:
        entries = conn.execute(
            "SELECT memory_id, user_id, version, event, content, metadata, importance, actor,"
            " changed_at FROM memory_history ORDER BY version").fetchall()
    assert [e[:8] for e in entries] == [
        (ids[0], "alice", 1, "created", "new", {"a": 1}, 3, None),
        (ids[2], "bob", 2, "deleted", None, None, None, None),
        (ids[1], "alice", 4, "updated", "edited", {}, 7, None),
    ]
    assert entries[1][8] == datetime(2026, 1, 2, tzinfo=UTC)  # when it was deleted

    downgrade(settings, before)
    assert "memory_history" not in schema(test_servers, empty_db)[0]
