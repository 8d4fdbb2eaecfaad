"""Shared fixtures: real local servers for the session, fresh state for each test.

The servers are the project's own (app.localservers) on free loopback ports under a temporary
folder, started on first use and stopped when the session ends, even when tests fail. Each test
gets its own database cloned from a migrated template, an empty graph and an empty Redis.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib
from neo4j import Driver, GraphDatabase
from sqlalchemy import text

from app.db.connector import Database
from app.db.migrations import upgrade
from app.domain import Extraction
from app.embeddings import HashingEmbedder
from app.errors import ExtractionError
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.localservers import LocalServers, ServerUrls, free_port
from app.projection import Projector
from app.settings import Settings, load_settings
from app.store import MemoryService

PG_USER = "memory"
PG_PASSWORD = "test-pg-pass"
NEO4J_PASSWORD = "test-neo4j-pass"
TEMPLATE_DB = "memory_template"
_db_counter = itertools.count()


@dataclass
class TestServers:
    __test__ = False
    servers: LocalServers
    urls: ServerUrls
    state_dir: Path

    def admin_dsn(self, dbname: str = "postgres") -> str:
        port = self.servers.get("postgres").endpoint.port
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{dbname}"

    def settings(self, database: str, **overrides: object) -> Settings:
        port = self.servers.get("postgres").endpoint.port
        values: dict[str, object] = {
            "database_url": f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{database}",
            "redis_url": self.urls.redis_url,
            "neo4j_uri": self.urls.neo4j_uri,
            "neo4j_user": "neo4j",
            "neo4j_password": NEO4J_PASSWORD,
            "api_service_keys": "svc-key-1",
            "api_admin_keys": "adm-key-1",
            "retry_base_seconds": 0.05,
            "retry_cap_seconds": 0.5,
            "retry_max_attempts": 4,
            "lease_seconds": 5,
            "relay_poll_seconds": 0.2,
            "local_dir": self.state_dir,
        }
        values.update(overrides)
        return load_settings(**values)


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> object:
    """Poll until ``check()`` is truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def test_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServers]:
    state = tmp_path_factory.mktemp("servers")
    urls = ServerUrls(
        database_url=f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{free_port()}/postgres",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        neo4j_uri=f"bolt://127.0.0.1:{free_port()}",
        neo4j_user="neo4j",
        neo4j_password=NEO4J_PASSWORD,
    )
    servers = LocalServers(state, urls)
    try:
        servers.up()
        ts = TestServers(servers, urls, state)
        with psycopg.connect(ts.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
            conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        upgrade(ts.settings(TEMPLATE_DB))
        yield ts
    finally:
        servers.down()


@pytest.fixture
def settings(test_servers: TestServers) -> Iterator[Settings]:
    """Settings pointing at a fresh database cloned from the migrated template."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    yield test_servers.settings(name)
    with psycopg.connect(test_servers.admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings, pool_size=4)
    yield database
    database.dispose()


@pytest.fixture
def neo4j_driver(test_servers: TestServers) -> Iterator[Driver]:
    """A driver on an emptied graph (constraints and indexes stay)."""
    driver = GraphDatabase.driver(test_servers.urls.neo4j_uri, auth=("neo4j", NEO4J_PASSWORD))
    try:
        empty_graph(driver)
        yield driver
    finally:
        driver.close()


def empty_graph(driver: Driver) -> None:
    """Delete every node (IN TRANSACTIONS needs an auto-commit transaction: session.run)."""
    with driver.session() as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()


@pytest.fixture
def graph(settings: Settings, neo4j_driver: Driver) -> Neo4jGraph:
    """The Neo4j graph store on the emptied graph, with its constraints."""
    store = Neo4jGraph(settings, driver=neo4j_driver)
    store.ensure_schema()
    return store


@pytest.fixture
def service(settings: Settings, db: Database) -> MemoryService:
    """The memory service with the built-in embedder."""
    return MemoryService(settings, db, HashingEmbedder(settings.embedding_dim))


def drain(projector: Projector, db: Database, rounds: int = 20) -> None:
    """Project every open outbox row now, ignoring backoff; rows that go dead stop counting."""
    for _ in range(rounds):
        with db.transaction() as conn:
            conn.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'"))
            ids = [r[0] for r in conn.execute(text(
                "SELECT id FROM outbox WHERE status IN ('pending', 'in_flight') ORDER BY id"))]
        if not ids:
            return
        projector.process(ids)
    pytest.fail("outbox did not drain")


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def service_key(settings: Settings) -> str:
    return settings.api_service_keys[0].get_secret_value()


@pytest.fixture
def admin_key(settings: Settings) -> str:
    return settings.api_admin_keys[0].get_secret_value()


class PoisonExtractor:
    """The rule extractor, except that content with POISON fails permanently while armed."""

    identity = "test-poison/1"

    def __init__(self) -> None:
        self.armed = True
        self.rules = RuleExtractor()

    def extract(self, content: str) -> Extraction:
        if self.armed and "POISON" in content:
            raise ExtractionError("this content always fails")
        return self.rules.extract(content)


@pytest.fixture
def redis_client(test_servers: TestServers) -> Iterator[redis_lib.Redis]:
    """A client on an emptied Redis."""
    client = redis_lib.Redis.from_url(test_servers.urls.redis_url)
    client.flushall()
    yield client
    client.flushall()
    client.close()
