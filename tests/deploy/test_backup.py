"""Backup and restore: Postgres is the only source of truth, so a Postgres dump is a backup.

A database with memories of several users (updated, one deleted) and its projected graph is
dumped with ``memctl backup``, restored with ``memctl restore`` into a brand-new Postgres server
(another superuser, nothing created in it) while the graph is emptied; ``memctl sync rebuild``
projects it again and ``memctl sync check`` finds it consistent, with every memory, version and
entity back and every table's rows restored.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from neo4j import Driver

from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import child_env
from devtools.localservers import Postgres, free_port
from tests.conftest import TestServers, drain

MEMCTL = [sys.executable, "-m", "app.cli"]
TABLES = ("memories", "outbox", "dead_letters", "inconsistencies", "check_runs",
          "idempotency_keys", "alembic_version")


def memctl(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(settings, PG_BIN_DIR=str(Postgres.bin_dir()), COLUMNS="120")
    return subprocess.run([*MEMCTL, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def graph_state(driver: Driver) -> dict[str, tuple[int, list[str]]]:
    """Every live memory in the graph: its version and the keys of the entities it mentions."""
    records, _, _ = driver.execute_query(
        "MATCH (m:Memory) WHERE coalesce(m.deleted, false) = false "
        "OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity) "
        "RETURN m.id AS id, m.version AS version, collect(e.key) AS keys")
    return {r["id"]: (r["version"], sorted(r["keys"])) for r in records}


def postgres_state(dsn: str) -> dict[str, Any]:
    """Every memory's version and content hash, and the rows of each table."""
    with psycopg.connect(dsn) as conn:
        memories = {str(r[0]): (r[1], r[2], r[3] is not None) for r in conn.execute(
            "SELECT id, version, content_hash, deleted_at FROM memories")}
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES}
    return {"memories": memories, "counts": counts}


@pytest.fixture
def empty_postgres(tmp_path: Path) -> Iterator[str]:
    """A new Postgres server with nothing in it but an empty database (another superuser)."""
    url = f"postgresql://restorer:restore-pass@127.0.0.1:{free_port()}/memory_restored"
    server = Postgres(tmp_path / "empty", url)
    server.up()
    try:
        yield url
    finally:
        server.down()


@pytest.mark.slow
def test_a_dump_restored_into_an_empty_postgres_gives_back_every_memory_and_the_graph(
        settings: Settings, db: Database, service: MemoryService, graph: Neo4jGraph,
        neo4j_driver: Driver, test_servers: TestServers, empty_postgres: str,
        tmp_path: Path) -> None:
    people = ["John", "Maria", "Chen", "Priya", "Omar"]
    for i in range(60):
        user = f"user-{i % 3}"
        memory, _ = service.store(user, f"Meeting with {people[i % 5]} about Q{i % 4 + 1}",
                                  importance=i % 10 + 1)
        if i % 7 == 0:
            service.update(user, memory.id, content=f"Call with {people[(i + 1) % 5]} in Q2")
        if i % 11 == 0:
            service.delete(user, memory.id)
    drain(Projector(db, Outbox(settings, db), graph, RuleExtractor()), db)
    before_graph = graph_state(neo4j_driver)
    before_pg = postgres_state(test_servers.admin_dsn(settings.database_url.rsplit("/", 1)[1]))
    assert len(before_graph) == sum(1 for *_, gone in before_pg["memories"].values() if not gone)
    assert any(version > 1 for version, _ in before_graph.values())

    dump = tmp_path / "memory.dump"
    done = memctl(settings, tmp_path, "backup", str(dump))
    assert done.returncode == 0, done.stderr
    assert "dump" in done.stderr and "backup written" in done.stdout  # progress, then result
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600  # it holds every memory
    again = memctl(settings, tmp_path, "backup", str(dump))
    assert again.returncode == 2 and "exists" in again.stderr

    # An empty Postgres and an empty graph: everything must come from the dump.
    test_servers.clear_graph(neo4j_driver)
    restored = test_servers.settings("memory_restored", database_url=empty_postgres)
    done = memctl(restored, tmp_path, "restore", str(dump))
    assert done.returncode == 0, done.stderr
    assert "restore" in done.stderr and "memctl sync rebuild" in done.stdout
    again = memctl(restored, tmp_path, "restore", str(dump))
    assert again.returncode == 2 and "not empty" in again.stderr

    rebuilt = memctl(restored, tmp_path, "sync", "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["rebuild"]["projected"] == len(before_graph)
    check = memctl(restored, tmp_path, "sync", "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["consistent"] is True and report["check"]["checked"] == len(
        before_pg["memories"])

    assert graph_state(neo4j_driver) == before_graph
    after_pg = postgres_state(empty_postgres)
    assert after_pg["memories"] == before_pg["memories"]
    # The check stored one more run; every other table is as it was.
    assert {t: n for t, n in after_pg["counts"].items() if t != "check_runs"} == \
        {t: n for t, n in before_pg["counts"].items() if t != "check_runs"}
