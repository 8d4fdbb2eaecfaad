"""The real servers the project starts answer the way the rest of the code relies on."""

from __future__ import annotations

import psycopg
import redis
from neo4j import Driver

from tests.conftest import TestServers


def test_postgres_is_18_with_pgvector(test_servers: TestServers) -> None:
    with psycopg.connect(test_servers.admin_dsn()) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        available = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert version is not None and int(version[0]) >= 180000
    assert available is not None and available[0].startswith("0.8")
    assert listen is not None and listen[0] == "127.0.0.1"


def test_migrated_template_has_the_vector_extension(test_servers: TestServers) -> None:
    with psycopg.connect(test_servers.admin_dsn("memory_template")) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        distance = conn.execute("SELECT '[1,0]'::vector <=> '[0,1]'::vector").fetchone()
    assert row is not None
    assert distance is not None and distance[0] == 1.0


def test_neo4j_answers_parameterised_cypher_over_bolt(neo4j_driver: Driver) -> None:
    records, _, _ = neo4j_driver.execute_query(
        "CREATE (n:Probe {name: $name}) RETURN n.name AS name, 1 + 1 AS two", name="x'; DROP"
    )
    assert records[0]["name"] == "x'; DROP"
    assert records[0]["two"] == 2
    info = neo4j_driver.get_server_info()
    assert info.agent.startswith("Neo4j/5.26")


def test_neo4j_refuses_a_wrong_password(test_servers: TestServers) -> None:
    import pytest
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError

    with (
        GraphDatabase.driver(test_servers.urls.neo4j_uri, auth=("neo4j", "wrong")) as driver,
        pytest.raises(AuthError),
    ):
        driver.verify_connectivity()


def test_redis_answers_ping(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    assert redis_client.config_get("bind")["bind"] == "127.0.0.1"
