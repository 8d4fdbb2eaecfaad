"""Moving a corpus to another embedder: resumable after a kill, while writes and searches go on;
a dimension change guided, not a crash; the model's files checked by sha256."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.embeddings import HashingEmbedder, MiniLMEmbedder, minilm
from app.errors import ConfigError
from app.settings import Settings
from app.store import NewMemory
from app.wiring import Services, build_services
from devtools.harness import ManagedProcess, child_env
from tests.conftest import bearer, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

MEMCTL = [sys.executable, "-m", "app.cli"]


def embedders(db: Database) -> dict[str | None, int]:
    with db.engine.connect() as conn:
        return {r[0]: int(r[1]) for r in conn.execute(text(
            "SELECT embedder, count(*) FROM memories WHERE deleted_at IS NULL "
            "GROUP BY embedder"))}


def seed(settings: Settings, db: Database, n: int) -> None:
    """``n`` memories written with the hashing embedder (as before the model was the default)."""
    with build_services(settings, db=db, embedder=HashingEmbedder(384)) as old:
        for start in range(0, n, 200):
            old.memories.store_many("alice", [
                NewMemory(f"Note {i} about the quarterly roadmap with team {i % 7}")
                for i in range(start, min(n, start + 200))])


@pytest.fixture
def parts(settings: Settings, db: Database) -> Iterator[Services]:
    """The services with the configured (default) embedder, closed after the test."""
    with build_services(settings, db=db) as built:
        yield built


def test_a_killed_reembed_resumes_and_finishes_while_writes_and_searches_go_on(
        settings: Settings, db: Database, parts: Services, tmp_path: Path) -> None:
    seed(settings, db, 1200)
    assert parts.reembedder.status().pending == 1200
    env = child_env(settings, REEMBED_BATCH_SIZE="16", LOG_LEVEL="INFO")
    run = ManagedProcess("reembed", [*MEMCTL, "reembed", "--json"], env, tmp_path / "r.log")
    try:
        wait_for(lambda: embedders(db).get(MiniLMEmbedder.identity, 0) >= 48, 120,
                 "the run to make progress")
        run.kill()  # SIGKILL mid-way, as the OOM killer would
    finally:
        run.stop()
    partial = embedders(db)
    assert 0 < partial.get(MiniLMEmbedder.identity, 0) < 1200
    # Meanwhile the API writes (with the new embedder) and searches (it says what is pending).
    written, _ = parts.memories.store("alice", "Lunch with Maria about the Lisbon trip")
    found = parts.retrieval.search("alice", "travel plans with Maria", mode="vector")
    assert found.hits[0].memory.id == written.id and found.pending_reembed > 0

    done = subprocess.run([*MEMCTL, "reembed", "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["remaining"] == 0 and report["complete"] is True
    assert report["embedded"] == 1200 - partial.get(MiniLMEmbedder.identity, 0)
    assert embedders(db) == {MiniLMEmbedder.identity: 1201}
    assert parts.retrieval.search("alice", "plans for the next quarter").pending_reembed == 0


def test_the_scheduler_and_the_admin_api_move_the_corpus_too(
        settings: Settings, db: Database, parts: Services, admin_key: str) -> None:
    seed(settings, db, 30)
    moved = parts.scheduler().tasks
    task = next(t for t in moved if t.name == "reembed")
    assert task.run()["embedded"] == 30  # type: ignore[index]
    with db.engine.begin() as conn:  # back to an old embedder, for the API to move
        conn.execute(text("UPDATE memories SET embedder = 'hashing/v1/384'"))
    with TestClient(create_app(settings), headers=bearer(admin_key)) as admin:
        assert admin.get("/api/admin/reembed").json()["pending"] == 30
        started = admin.post("/api/admin/reembed")
        assert started.status_code == 202
        wait_for(lambda: admin.get("/api/admin/reembed").json()["pending"] == 0, 60,
                 "the background run to finish")
        status = admin.get("/api/admin/reembed").json()
        wait_for(lambda: not admin.get("/api/admin/reembed").json()["running"], 30,
                 "the run to end")
        assert status["dimension_ok"] is True


def test_a_dimension_change_is_guided_then_done(settings: Settings, db: Database,
                                                tmp_path: Path) -> None:
    seed(settings, db, 20)
    small = {"EMBEDDING_PROVIDER": "hashing", "EMBEDDING_DIM": "64"}
    env = child_env(settings, **small)
    refused = subprocess.run([*MEMCTL, "reembed"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2
    assert "--change-dimension" in refused.stderr and "vector(384)" in refused.stderr
    other = Database(settings.model_copy(update={"embedding_dim": 64}), pool_size=1)
    try:
        with pytest.raises(ConfigError, match="reembed --change-dimension"):
            other.check_embedding_dimension()
    finally:
        other.dispose()

    done = subprocess.run([*MEMCTL, "reembed", "--change-dimension", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["remaining"] == 0
    assert embedders(db) == {"hashing/v1/64": 20}
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('memories_embedding_hnsw') IS NOT NULL")
                            ).scalar_one()
    small_settings = settings.model_copy(update={"embedding_provider": "hashing",
                                                 "embedding_dim": 64})
    with build_services(small_settings, db=db) as small_parts:
        assert small_parts.retrieval.search("alice", "roadmap", mode="vector").hits


def test_the_model_files_are_checked_by_sha256(monkeypatch: pytest.MonkeyPatch,
                                               settings: Settings) -> None:
    minilm._sessions.clear()
    monkeypatch.setattr(minilm, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="sha256"):
        MiniLMEmbedder().load()
    with pytest.raises(ConfigError, match="sha256"), TestClient(create_app(settings)):
        pass  # the web process refuses to start
    monkeypatch.undo()
    minilm._sessions.clear()
    MiniLMEmbedder().load()  # the pinned files load


def test_a_tampered_vocabulary_is_refused(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "vocab.txt"
    copy.write_bytes(minilm.VOCAB.read_bytes() + b"extra\n")
    minilm._sessions.clear()
    monkeypatch.setattr(minilm, "VOCAB", copy)
    with pytest.raises(ConfigError, match="vocabulary"):
        MiniLMEmbedder().load()
    monkeypatch.undo()
    minilm._sessions.clear()
