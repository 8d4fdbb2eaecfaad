"""Shared fixtures: real local servers for the session, fresh state for each test.

The servers are the project's own (devtools.harness.Stack) on free loopback ports under a
temporary folder, started on first use and stopped when the session ends, even when tests fail.
Each test gets its own database cloned from a migrated template, an empty graph and an empty
Redis. Every test that needs the servers is marked ``servers`` automatically, so
``pytest -m "not servers"`` runs without starting any.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator

import pytest
import redis as redis_lib
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.domain import Extraction
from app.embeddings import HashingEmbedder
from app.errors import ExtractionError, ExtractionRetryable
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.jobs import JobRunner
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from app.wiring import build_services
from devtools import harness
from devtools.harness import Stack

PG_PASSWORD = "test-pg-pass"
NEO4J_PASSWORD = "test-neo4j-pass"
TEMPLATE_DB = "memory_template"
_db_counter = itertools.count()

# Fast retries and short leases: a test waits seconds, not minutes, for a retry or a reclaim.
TEST_DEFAULTS: dict[str, object] = {
    "api_service_keys": "svc-key-1",
    "api_admin_keys": "adm-key-1",
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.5,
    "retry_max_attempts": 4,
    "lease_seconds": 5,
    "relay_poll_seconds": 0.2,
}


class TestServers(Stack):
    """The session's servers; ``settings`` adds the test defaults."""

    __test__ = False

    def settings(self, dbname: str, **overrides: object) -> Settings:
        return super().settings(dbname, **{**TEST_DEFAULTS, **overrides})


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> object:
    """Poll until ``check()`` is truthy; fail the test with ``what`` after ``timeout``."""
    try:
        return harness.wait_for(check, timeout, what, interval)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or through its fixtures) starts the servers."""
    for item in items:
        if "test_servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def test_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServers]:
    state = tmp_path_factory.mktemp("servers")
    with TestServers.started(state, pg_password=PG_PASSWORD, neo4j_password=NEO4J_PASSWORD,
                             template=TEMPLATE_DB) as stack:
        assert isinstance(stack, TestServers)
        yield stack


@pytest.fixture
def settings(test_servers: TestServers) -> Iterator[Settings]:
    """Settings pointing at a fresh database cloned from the migrated template."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    test_servers.create_database(name)
    yield test_servers.settings(name)
    test_servers.drop_database(name)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings, pool_size=4)
    yield database
    database.dispose()


@pytest.fixture
def neo4j_driver(test_servers: TestServers) -> Iterator[Driver]:
    """A driver on an emptied graph (constraints and indexes stay)."""
    driver = test_servers.driver()
    try:
        test_servers.clear_graph(driver)
        yield driver
    finally:
        driver.close()


@pytest.fixture
def graph(settings: Settings, neo4j_driver: Driver) -> Neo4jGraph:
    """The Neo4j graph store on the emptied graph, with its constraints."""
    store = Neo4jGraph(settings, driver=neo4j_driver)
    store.ensure_schema()
    return store


@pytest.fixture
def service(settings: Settings, db: Database) -> MemoryService:
    """The memory service with the built-in embedder."""
    return MemoryService(settings, db, Outbox(settings, db),
                         HashingEmbedder(settings.embedding_dim))


def drain(projector: Projector, db: Database, rounds: int = 20) -> None:
    """Project every open outbox row now, ignoring backoff; rows that go dead stop counting."""
    for _ in range(rounds):
        with db.engine.begin() as conn:
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
    """The rule extractor, except that while armed content with POISON fails permanently and
    content with FLAKY fails in a way a retry may fix."""

    identity = "test-poison/1"

    def __init__(self) -> None:
        self.armed = True
        self.rules = RuleExtractor()

    def extract(self, content: str) -> Extraction:
        if self.armed and "POISON" in content:
            raise ExtractionError("this content always fails")
        if self.armed and "FLAKY" in content:
            raise ExtractionRetryable("try again later")
        return self.rules.extract(content)


@pytest.fixture
def redis_client(test_servers: TestServers) -> Iterator[redis_lib.Redis]:
    """A client on an emptied Redis."""
    client = redis_lib.Redis.from_url(test_servers.urls.redis_url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def job_runner(settings: Settings) -> Iterator[JobRunner]:
    """A background sync job runner (as the scheduler process runs one) in a thread, on this
    test's database, with its own services; stopped when the test ends."""
    with build_services(settings, pool_size=4) as parts:
        runner = parts.job_runner()
        thread = threading.Thread(target=runner.run, daemon=True, name="test-job-runner")
        thread.start()
        try:
            yield runner
        finally:
            runner.stop()
            thread.join(30)
