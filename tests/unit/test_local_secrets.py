"""Secrets of the local stack: generated once, kept private, never printed in full."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app.settings import load_settings
from devtools.cli import ensure_local_secrets, masked
from devtools.localservers import write_secret


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "NEO4J_PASSWORD", "API_SERVICE_KEYS",
                 "API_ADMIN_KEYS", "CONSOLE_SESSION_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCAL_DIR", str(tmp_path / "state"))


def test_write_secret_is_private_from_the_first_byte(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        write_secret(tmp_path / "s" / "secret", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s" / "secret").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["secret"]  # no temporary left


def test_a_fresh_stack_gets_its_own_secrets_once(tmp_path: Path) -> None:
    first = ensure_local_secrets(load_settings())
    path = tmp_path / "state" / "secrets.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first) == {"API_SERVICE_KEYS", "API_ADMIN_KEYS", "REDIS_URL", "NEO4J_PASSWORD",
                          "DATABASE_URL", "CONSOLE_SESSION_SECRET"}
    assert len(first["CONSOLE_SESSION_SECRET"]) >= 32
    assert "memory-local" not in first["DATABASE_URL"] and ":@" not in first["REDIS_URL"]
    settings = load_settings()  # reads them back from $LOCAL_DIR/secrets.env
    assert settings.redis_url == first["REDIS_URL"]
    assert settings.api_service_keys[0].get_secret_value() == first["API_SERVICE_KEYS"]
    assert ensure_local_secrets(settings) == first  # stable


def test_configured_values_are_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6399/0")
    monkeypatch.setenv("API_SERVICE_KEYS", "mine")
    monkeypatch.setenv("CONSOLE_SESSION_SECRET", "s" * 32)
    made = ensure_local_secrets(load_settings())
    assert "REDIS_URL" not in made and "API_SERVICE_KEYS" not in made
    assert "CONSOLE_SESSION_SECRET" not in made
    assert load_settings().redis_url == "redis://127.0.0.1:6399/0"


def test_an_existing_data_folder_keeps_its_password(tmp_path: Path) -> None:
    (tmp_path / "state" / "postgres" / "data").mkdir(parents=True)
    (tmp_path / "state" / "neo4j" / "home").mkdir(parents=True)
    made = ensure_local_secrets(load_settings())
    assert "DATABASE_URL" not in made and "NEO4J_PASSWORD" not in made


def test_masked_shows_a_prefix_only() -> None:
    key = "svc_" + "a" * 40
    assert masked(key) == "svc_aaaa…" and key not in masked(key)
