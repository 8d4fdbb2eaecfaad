"""Every process's metrics, scraped from the real processes through a whole delivery cycle.

web, relay, a dramatiq worker (multiprocess mode, served by its fork) and the scheduler run as
real processes, each serving its metrics; a memory is stored and projected, a poisoned one fails
(the LLM stub answers it with prose: a malformed answer) until it goes dead, it is fixed
and replayed, and the counters and gauges of each process are seen to move at each step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from devtools.harness import ManagedProcess
from devtools.localservers import free_port
from tests.conftest import bearer, wait_for
from tests.faults import llm_stub
from tests.faults.conftest import RELAY_ARGV, WORKER_ARGV

KEY = "sk-stub-metrics"
WEB_ARGV = [sys.executable, "-m", "app.cli", "web"]
SCHEDULER_ARGV = [sys.executable, "-m", "app.cli", "scheduler"]


def scrape(url: str, key: str | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]],
                                                        float]:
    """Every sample at ``url`` as {(name, labels): value}."""
    response = httpx.get(url, timeout=5, headers=bearer(key) if key else None)
    response.raise_for_status()
    return scrape_text(response.text)


def scrape_text(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        host = f"http://{settings.metrics_host}"
        self.web = f"http://127.0.0.1:{settings.api_port}"
        self.urls = {"web": f"{self.web}/metrics",
                     "relay": f"{host}:{settings.metrics_port_relay}/metrics",
                     "worker": f"{host}:{settings.metrics_port_worker}/metrics",
                     "scheduler": f"{host}:{settings.metrics_port_scheduler}/metrics"}

    def scrape(self, process: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        key = self.settings.metrics_keys[0].get_secret_value() if process == "web" else None
        return scrape(self.urls[process], key)

    def when(self, process: str, check: Callable[[Any], bool], what: str) -> Any:
        """Scrape ``process`` until ``check`` holds for its samples."""
        def ready() -> Any:
            try:
                samples = self.scrape(process)
            except httpx.HTTPError:
                return None
            return samples if check(samples) else None
        return wait_for(ready, 60, f"{process}: {what}")


@pytest.fixture
def stub() -> Iterator[llm_stub.StubLLM]:
    with llm_stub.running(KEY) as server:
        yield server


@pytest.fixture
def stack(make_settings: Callable[..., Settings], stub: llm_stub.StubLLM,
          processes: Callable[[str, list[str], Settings], ManagedProcess]) -> Stack:
    settings = make_settings(
        extractor="llm", llm_base_url=stub.base_url, llm_model=llm_stub.MODEL, llm_api_key=KEY,
        api_port=free_port(), metrics_keys="scrape-key-1", metrics_host="127.0.0.1",
        metrics_port_relay=free_port(), metrics_port_worker=free_port(),
        metrics_port_scheduler=free_port(), check_interval_seconds=1, retry_max_attempts=2,
        lease_seconds=30)  # a loaded machine must not time the batches out
    for name, argv in (("web", WEB_ARGV), ("relay", RELAY_ARGV), ("worker", WORKER_ARGV),
                       ("scheduler", SCHEDULER_ARGV)):
        processes(name, argv, settings)
    return Stack(settings)


@pytest.mark.slow
def test_each_process_counts_a_store_projection_failure_dead_letter_and_replay(
        stack: Stack) -> None:
    svc = bearer(stack.settings.api_service_keys[0].get_secret_value())
    adm = bearer(stack.settings.api_admin_keys[0].get_secret_value())

    def web_up() -> bool:
        try:
            return httpx.get(f"{stack.web}/api/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(web_up, 90, "the web process")
    # /metrics asks for a metrics key when METRICS_KEYS is set; an API key is not one.
    assert httpx.get(stack.urls["web"], timeout=5).status_code == 401
    assert httpx.get(stack.urls["web"], headers=adm, timeout=5).status_code == 401

    # 1. store: the web process counts the request by its route template and status.
    stored = httpx.post(f"{stack.web}/api/memories", headers=svc, timeout=10, json={
        "user_id": "alice", "content": "Meeting with John about Q4"})
    assert stored.status_code == 201, stored.text
    memory_id = stored.json()["id"]
    got = httpx.get(f"{stack.web}/api/memories/{memory_id}", params={"user_id": "alice"},
                    headers=svc, timeout=10)
    assert got.status_code == 200
    web = stack.scrape("web")
    assert value(web, "memctl_http_requests_total", method="POST", route="/api/memories",
                 status="201") == 1
    assert value(web, "memctl_http_request_duration_seconds_count", method="GET",
                 route="/api/memories/{memory_id}", status="200") == 1
    assert not any(memory_id in dict(labels).get("route", "") for _, labels in web), \
        "a raw path (with its id) became a label"
    assert not any("alice" in dict(labels).values() for _, labels in web), "a user id label"
    assert value(web, "memctl_http_requests_in_flight") >= 1  # this very scrape

    # 2. projection: the relay enqueues, the worker projects, the outbox shows it done.
    stack.when("relay", lambda s: value(s, "memctl_relay_enqueued_rows_total") >= 1
               and value(s, "memctl_relay_claimed_rows_total") >= 1, "a row enqueued")
    worker = stack.when("worker", lambda s: value(s, "memctl_projected_memories_total") >= 1,
                        "a memory projected")
    assert value(worker, "memctl_projection_batch_rows_count") >= 1
    assert value(worker, "memctl_projection_batch_duration_seconds_count") >= 1
    assert value(worker, "memctl_projection_attempts_total") >= 1
    assert value(worker, "memctl_projection_failures_total") == 0
    stack.when("web", lambda s: value(s, "memctl_outbox_rows", status="done") == 1
               and value(s, "memctl_outbox_lag_seconds") == 0, "the outbox drained")

    # 3. failures and a dead letter: a malformed answer fails the row (retryable), twice.
    poisoned = httpx.post(f"{stack.web}/api/memories", headers=svc, timeout=10, json={
        "user_id": "alice", "content": "POISON for Mallory"})
    assert poisoned.status_code == 201, poisoned.text
    worker = stack.when("worker", lambda s: value(s, "memctl_dead_letters_written_total") == 1,
                        "a dead letter written")
    assert value(worker, "memctl_projection_failures_total", kind="ExtractionRetryable") == 2
    assert value(worker, "memctl_projection_dead_rows_total") == 1
    web = stack.when("web", lambda s: value(s, "memctl_dead_letters", status="open") == 1,
                     "the open dead letter")
    assert value(web, "memctl_outbox_rows", status="dead") == 1
    assert value(web, "memctl_breaker_open", breaker="graph") == 0

    # 4. fix and replay: the letter is replayed, the row projected, the gauges settle.
    fixed = httpx.patch(f"{stack.web}/api/memories/{poisoned.json()['id']}", headers=svc,
                        timeout=10, json={"user_id": "alice", "content": "Lunch with Mallory"})
    assert fixed.status_code == 200, fixed.text
    replayed = httpx.post(f"{stack.web}/api/admin/dead-letters/replay", headers=adm,
                          timeout=10, json={"all": True})
    assert replayed.status_code == 200 and replayed.json()["count"] == 1, replayed.text
    web = stack.when("web", lambda s: value(s, "memctl_dead_letters", status="open") == 0
                     and value(s, "memctl_dead_letters", status="replayed") == 1
                     and value(s, "memctl_outbox_rows", status="dead") == 0
                     and value(s, "memctl_outbox_rows", status="pending") == 0
                     and value(s, "memctl_outbox_rows", status="in_flight") == 0,
                     "the replayed letter projected")
    assert value(web, "memctl_dead_letters_replayed_total") == 1
    assert value(web, "memctl_http_requests_total", method="POST",
                 route="/api/admin/dead-letters/replay", status="200") == 1
    stack.when("worker", lambda s: value(s, "memctl_projected_memories_total") >= 2,
               "the fixed memory projected")

    # 5. the scheduler leads, runs its checks and reports the last one.
    scheduler = stack.when(
        "scheduler", lambda s: value(s, "memctl_scheduler_leader") == 1
        and value(s, "memctl_scheduler_task_runs_total", task="check", result="ok") >= 1
        and value(s, "memctl_check_last_timestamp_seconds") > 0, "a check run")
    assert value(scheduler, "memctl_state_up") == 1
    assert ("memctl_check_open_findings", frozenset({("kind", "missing_in_graph")})) \
        in scheduler


def test_a_request_labels_only_bounded_values(settings: Settings) -> None:
    """Invented methods and unknown paths do not become label values."""
    from fastapi.testclient import TestClient

    from app.api import create_app

    with TestClient(create_app(settings)) as client:
        assert client.request("BREW", "/api/health/live").status_code == 405
        assert client.get("/no/such/path/123").status_code == 404
        samples = scrape_text(client.get("/metrics").text)
    assert value(samples, "memctl_http_requests_total", method="other",
                 route="/api/health/live", status="405") == 1
    assert value(samples, "memctl_http_requests_total", method="GET", route="<unmatched>",
                 status="404") >= 1
    assert not any("BREW" in dict(ls).values() or "/no/such/path/123" in dict(ls).values()
                   for _, ls in samples)
