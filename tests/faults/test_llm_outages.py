"""The LLM extractor's endpoint fails for real (a local HTTP server): outages, rate limits, a
wrong key, and a genuinely poison memory. Issue #18.

- The endpoint answers 503 for a while, then 429 with Retry-After, then recovers, under a steady
  write load with the default delivery settings: no dead letter, no attempt spent, the
  Retry-After honoured, and the backlog projected soon after recovery.
- A wrong key shows "misconfigured" in ``memctl health`` and ``/api/persistence/status`` within
  seconds; restarting the worker with the right key converges with nothing to replay.
- A memory the model always answers badly for still becomes a dead letter after its attempts,
  while its neighbours project and the breaker stays closed.

Phase lengths come from FAULTS_LLM_OUTAGE_SECONDS (503, 20 s by default; the issue's run is
120) and FAULTS_LLM_RATE_LIMIT_SECONDS (429, 15 s by default).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from neo4j import Driver
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import child_env
from tests.conftest import bearer, wait_for
from tests.faults import llm_stub
from tests.faults.conftest import (
    REPO,
    ManagedProcess,
    Relays,
    SteadyWriter,
    assert_graph_matches_postgres,
    attempts_and_errors,
    breaker_state,
    db_now,
    dead_letters,
    env_seconds,
    graph_problems,
    not_done_before,
    outbox_counts,
    outbox_rows,
    production_delivery,
    wait_drained,
)

with warnings.catch_warnings():
    # As in test_api.py: Starlette warns when it falls back to httpx; harmless here.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.servers

KEY = "sk-stub-right-key"
WRONG_KEY = "sk-stub-wrong-key"
UNAVAILABLE = env_seconds("FAULTS_LLM_OUTAGE_SECONDS", 20)
RATE_LIMITED = env_seconds("FAULTS_LLM_RATE_LIMIT_SECONDS", 15)
RETRY_AFTER = 8.0  # longer than the 5 s probe interval, so honouring it is visible
RATE = 2.0


@pytest.fixture
def stub() -> Iterator[llm_stub.StubLLM]:
    with llm_stub.running(KEY) as server:
        yield server


def llm_settings(make_settings: Callable[..., Settings], stub: llm_stub.StubLLM,
                 key: str = KEY, **overrides: object) -> Settings:
    return make_settings(extractor="llm", llm_base_url=stub.base_url, llm_model=llm_stub.MODEL,
                         llm_api_key=key, **overrides)


def hold_for(seconds: float, db: Database) -> None:
    """Keep a fault going for ``seconds``, checking every second that no row went dead."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        counts = outbox_counts(db)
        assert counts["dead"] == 0, counts
        time.sleep(min(1.0, max(0.0, until - time.monotonic())))  # the fault's own clock


@pytest.mark.slow
@pytest.mark.timeout(UNAVAILABLE + RATE_LIMITED + 360)
def test_llm_down_then_rate_limiting_then_back_ends_with_no_dead_letters(
        stub: llm_stub.StubLLM, make_settings: Callable[..., Settings], db: Database,
        relays: Relays, start_worker: Callable[..., ManagedProcess], neo4j_driver: Driver,
        service_key: str, admin_key: str) -> None:
    settings = llm_settings(make_settings, stub, **production_delivery())
    worker = start_worker(settings)
    relays.start(settings)
    with TestClient(create_app(settings)) as writes, \
            TestClient(create_app(settings), headers=bearer(admin_key)) as admin:
        writer = SteadyWriter(writes, service_key, RATE).start()
        try:
            wait_for(lambda: outbox_counts(db)["done"] >= 5, 60, "projection before the fault")

            stub.mode = "unavailable"
            failing = time.monotonic()
            wait_for(lambda: breaker_state(db, "extractor")["state"] != "closed", 60,
                     "the extractor breaker to open")
            opened_after = time.monotonic() - failing
            status = admin.get("/api/persistence/status").json()
            assert status["status"] == "degraded"
            assert status["breakers"]["extractor"]["state"] in ("open", "half_open")
            assert "503" in status["breakers"]["extractor"]["last_error"]
            assert status["breakers"]["graph"]["state"] == "closed"
            hold_for(UNAVAILABLE - (time.monotonic() - failing), db)

            stub.retry_after, stub.mode = RETRY_AFTER, "rate_limited"
            limiting = time.monotonic()
            hold_for(RATE_LIMITED, db)

            stub.mode = "ok"
            back = db_now(db)
            recovered = time.monotonic()
            wait_for(lambda: not_done_before(db, back) == 0, 120,
                     "every row written before the endpoint recovered to be projected")
            lag = time.monotonic() - recovered
        finally:
            writer.stop()
    wait_drained(db, 120, "outbox drained after the writes stopped", logs=worker.log)
    assert_graph_matches_postgres(db, neo4j_driver)

    top, _ = attempts_and_errors(db)
    limited = stub.answered(429)
    print(f"\nllm outage: 503 for {UNAVAILABLE:.0f}s, 429 (Retry-After {RETRY_AFTER:g}s) for "
          f"{RATE_LIMITED:.0f}s, {writer.written} writes at {RATE:g}/s; breaker open "
          f"{opened_after:.1f}s after the first 503; {len(stub.answered(503))} requests "
          f"answered 503, {len(limited)} answered 429; converged {lag:.1f}s after recovery; "
          f"dead letters {len(dead_letters(db))}; highest attempts {top}")
    assert writer.failures() == []
    assert dead_letters(db) == [] and top == 0
    # Retry-After honoured: after each 429, this process asked again only once it had passed.
    after_limit = stub.answered(since=limiting)
    for answered, following in itertools.pairwise(after_limit):
        if answered.status == 429:
            assert following.at - answered.at >= RETRY_AFTER - 0.5, (answered, following)
    assert limited, "the endpoint was never asked while it rate limited"
    # While the breaker was open only probes reached the endpoint (one per probe interval, and
    # the few calls that opened it), not every row written meanwhile.
    asked = len(stub.answered(since=failing)) - len(stub.answered(since=recovered))
    probes = (UNAVAILABLE + RATE_LIMITED) / settings.breaker_probe_seconds
    assert asked < 10 + 1.5 * probes, asked
    assert lag < 60
    assert breaker_state(db, "extractor")["state"] == "closed"


def memctl_health(settings: Settings) -> tuple[int, dict[str, object], str]:
    done = subprocess.run([sys.executable, "-m", "app.cli", "health", "--json"],
                          env=child_env(settings), capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


@pytest.mark.slow
def test_a_wrong_llm_key_is_misconfigured_in_health_and_a_fixed_key_converges(
        stub: llm_stub.StubLLM, make_settings: Callable[..., Settings], db: Database,
        service: MemoryService, relays: Relays, start_worker: Callable[..., ManagedProcess],
        neo4j_driver: Driver, admin_key: str) -> None:
    wrong = llm_settings(make_settings, stub, WRONG_KEY)
    worker = start_worker(wrong)
    relays.start(wrong)
    written = time.monotonic()
    for i in range(6):
        service.store("alice", f"Lunch with Sarah Connor, note {i}")
    wait_for(lambda: breaker_state(db, "extractor")["state"] == "misconfigured", 30,
             "the extractor breaker to say misconfigured", interval=0.1)
    seen_after = time.monotonic() - written

    code, health, output = memctl_health(wrong)
    assert code == 1 and health["status"] == "degraded"
    extractor = health["breakers"]["extractor"]  # type: ignore[index]
    assert extractor["state"] == "misconfigured" and extractor["opened_at"]
    assert "401" in extractor["last_error"] and "LLM_API_KEY" in extractor["last_error"]
    assert WRONG_KEY not in output
    with TestClient(create_app(wrong), headers=bearer(admin_key)) as admin:
        status = admin.get("/api/persistence/status").json()
    assert status["breakers"]["extractor"]["state"] == "misconfigured"
    assert any(r.startswith("extractor misconfigured") for r in status["reasons"])
    # Nothing went dead, nothing spent an attempt: the rows wait for the setting to be fixed.
    wait_for(lambda: outbox_counts(db)["in_flight"] == 0, 30, "rows back from the worker")
    rows = outbox_rows(db)
    assert {(r.status, r.attempts, r.held_by) for r in rows} == {("pending", 0, "extractor")}
    assert dead_letters(db) == []

    worker.terminate(30)
    fixed = llm_settings(make_settings, stub, KEY)
    restarted = time.monotonic()
    worker = start_worker(fixed)
    wait_drained(db, 60, "the outbox drained with the right key", logs=worker.log)
    converged = time.monotonic() - restarted
    print(f"\nwrong llm key: misconfigured {seen_after:.1f}s after the first write; "
          f"converged {converged:.1f}s after the worker restarted with the right key")
    assert seen_after < 15
    assert_graph_matches_postgres(db, neo4j_driver)
    assert dead_letters(db) == []  # nothing to replay
    assert all(r.status == "done" and r.attempts == 0 for r in outbox_rows(db))
    code, health, _ = memctl_health(fixed)
    assert code == 0 and health["status"] == "ok"


@pytest.mark.slow
def test_a_poison_memory_still_dead_letters_while_its_neighbours_project(
        stub: llm_stub.StubLLM, make_settings: Callable[..., Settings], db: Database,
        service: MemoryService, relays: Relays, start_worker: Callable[..., ManagedProcess],
        neo4j_driver: Driver) -> None:
    # Fast retries: this test is about what counts as the row's failure, not about timing.
    settings = llm_settings(make_settings, stub, retry_max_attempts=4, lease_seconds=10)
    poison, _ = service.store("alice", "POISON pill from Peter Parker")
    neighbours = [service.store("alice" if i % 2 else "bob",
                                f"Dinner with Mary Jane, note {i}")[0] for i in range(8)]
    worker = start_worker(settings)
    relays.start(settings)

    def settled() -> bool:
        counts = outbox_counts(db)
        return counts["dead"] == 1 and counts["done"] == len(neighbours)

    wait_for(settled, 90, "the poison row dead and its neighbours done")
    (letter,) = dead_letters(db)
    assert letter.memory_id == poison.id and letter.attempts == 4
    assert [e["attempt"] for e in letter.errors] == [1, 2, 3, 4]
    assert all("malformed LLM answer" in e["error"] for e in letter.errors), letter.errors
    # The row's failures never touched the breaker: the endpoint was fine all along.
    extractor = breaker_state(db, "extractor")
    assert extractor["state"] == "closed" and extractor["opened_at"] is None
    assert extractor["last_error"] is None
    assert graph_problems(db, neo4j_driver) == [
        f"{poison.id}: live in Postgres (v1) but missing in graph"]
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'done' AND "
                                 "attempts = 0")).scalar_one() == len(neighbours)
    assert worker.proc.poll() is None
