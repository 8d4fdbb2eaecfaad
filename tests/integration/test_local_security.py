"""The local stack runs with least privilege: an ordinary role for the app, passwords on every
door, private secret files."""

from __future__ import annotations

import stat

import psycopg
import pytest
import redis as redis_lib

from app.settings import Settings
from tests.conftest import TestServers


def test_the_app_role_is_ordinary_and_owns_its_database(settings: Settings) -> None:
    with psycopg.connect(settings.psycopg_dsn) as conn:
        role = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls "
                            "FROM pg_roles WHERE rolname = current_user").fetchone()
        owner = conn.execute("SELECT pg_get_userbyid(datdba) = current_user FROM pg_database "
                             "WHERE datname = current_database()").fetchone()
        tables = conn.execute("SELECT bool_and(tableowner = current_user) FROM pg_tables "
                              "WHERE schemaname = 'public'").fetchone()
    assert role == (False, False, False, False)
    assert owner == (True,) and tables == (True,)


def test_every_postgres_login_needs_a_password_even_on_the_socket(
        test_servers: TestServers, settings: Settings) -> None:
    server = test_servers.postgres
    socket_dir = server.dir
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    for user in ("postgres", settings.database_url.split("//")[1].split(":")[0]):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host=str(socket_dir), port=server.endpoint.port, user=user,
                            dbname="postgres", connect_timeout=5).close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=server.endpoint.port, user=user,
                            password="wrong", dbname="postgres", connect_timeout=5).close()


def test_secret_files_are_private(test_servers: TestServers) -> None:
    postgres = test_servers.postgres
    assert stat.S_IMODE(postgres.superuser_file.stat().st_mode) == 0o600
    conf = test_servers.servers.get("redis").dir / "auth.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert not list(postgres.dir.glob("*.pw.*")) and not (postgres.dir / "initdb.pw").exists()


def test_redis_needs_its_password(test_servers: TestServers, settings: Settings) -> None:
    port = test_servers.servers.get("redis").endpoint.port
    anonymous = redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        with pytest.raises(redis_lib.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()
    client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()
