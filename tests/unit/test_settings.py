"""Settings: clear one-line errors naming the variable, comma-separated keys, URL checks."""

from __future__ import annotations

import pytest

from app.errors import ConfigError
from app.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("API_", "DATABASE_", "REDIS_", "NEO4J_", "RETRY_", "EMBEDDING_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_point_at_the_local_servers() -> None:
    s = load_settings()
    assert s.database_url.startswith("postgresql+psycopg://")
    assert "127.0.0.1" in s.redis_url
    assert s.neo4j_uri.startswith("bolt://127.0.0.1")


def test_keys_are_comma_separated_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_SERVICE_KEYS", " k1, k2 ,,")
    s = load_settings()
    assert [k.get_secret_value() for k in s.api_service_keys] == ["k1", "k2"]
    assert "k1" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_PORT", "eighty"),
        ("API_PORT", "70000"),
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "http://nope"),
        ("NEO4J_URI", "http://127.0.0.1:7474"),
        ("RETRY_MAX_ATTEMPTS", "0"),
        ("EMBEDDING_PROVIDER", "magic"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_plain_postgres_url_gets_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/memory")
    assert load_settings().database_url == "postgresql+psycopg://u:p@db:5432/memory"


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    Path(".env").write_text("API_PORT=8123\n")
    assert load_settings().api_port == 8123
