"""Unit tests of the client's pure logic on httpx's MockTransport: the retry schedule, which
failures are retried for which requests, Retry-After, and one Idempotency-Key per logical write.
(The live API is exercised by tests/clients/.)"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from memory_persistence_client import (
    AsyncMemoryClient,
    MemoryClient,
    RateLimited,
    RetryEvent,
    RetryPolicy,
    TransportError,
    Unavailable,
    VersionConflict,
)
from memory_persistence_client.retry import parse_retry_after, retry_delay

MEMORY_ID = "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11"
MEMORY: dict[str, Any] = {"id": MEMORY_ID, "user_id": "alice",
          "content": "Meeting with John", "metadata": {}, "importance": 5, "version": 1,
          "created_at": "2026-01-02T03:04:05.123456Z", "updated_at": "2026-01-02T03:04:05Z",
          "entities": None, "truncated": False,
          "graph": {"status": "pending", "projected_version": None, "since": None}}
POLICY = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=3.0, max_retry_after=10.0)

Step = httpx.Response | Exception


class Script:
    """A fake server answering each request with the next step; records every request."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return step

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=MEMORY if body is None else body, headers=headers)


def error(status: int, code: str, **extra: Any) -> httpx.Response:
    headers = {k: v for k, v in extra.items() if k == "Retry-After"}
    detail = {"code": code, "message": f"{code} happened", "field": None,
              **{k: v for k, v in extra.items() if k != "Retry-After"}}
    return httpx.Response(status, json={"error": detail}, headers=headers)


def client(script: Script, policy: RetryPolicy = POLICY, u: float = 1.0,
           events: list[RetryEvent] | None = None) -> tuple[MemoryClient, list[float]]:
    """A client on ``script`` that records its waits instead of sleeping; jitter draws ``u``."""
    sleeps: list[float] = []
    c = MemoryClient("http://memory.test", "svc-key", retry=policy,
                     transport=httpx.MockTransport(script),
                     on_retry=None if events is None else events.append)
    c._sleep = sleeps.append
    c._random = lambda: u
    return c, sleeps


# -- the pure rules --------------------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_cap_and_jitter_spans_zero_to_the_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    assert [policy.backoff(n, 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.backoff(n, 0.0) for n in range(1, 6)] == [0.0] * 5
    assert policy.backoff(3, 0.25) == 0.5
    assert policy.backoff(10_000, 1.0) == 3.0  # no overflow for absurd attempt numbers


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True),
                             now) == 42.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None
    assert parse_retry_after("²", now) is None


@pytest.mark.parametrize(("safe", "status", "exc", "retried"), [
    (True, 429, None, True), (True, 502, None, True), (True, 503, None, True),
    (True, 504, None, True), (True, 500, None, False), (True, 404, None, False),
    (True, 409, None, False), (True, 422, None, False),
    (False, 429, None, True), (False, 503, None, False), (False, 502, None, False),
    (True, None, httpx.ConnectError("refused"), True),
    (False, None, httpx.ConnectError("refused"), True),
    (False, None, httpx.ConnectTimeout("slow"), True),
    (False, None, httpx.PoolTimeout("pool"), True),
    (True, None, httpx.ReadError("reset"), True),
    (False, None, httpx.ReadError("reset"), False),
    (True, None, httpx.ReadTimeout("slow"), True),
    (False, None, httpx.ReadTimeout("slow"), False),
    (True, None, httpx.RemoteProtocolError("closed"), True),
    (False, None, httpx.RemoteProtocolError("closed"), False),
    (True, None, httpx.UnsupportedProtocol("ftp"), False),
])
def test_which_failures_are_retried(safe: bool, status: int | None, exc: Exception | None,
                                    retried: bool) -> None:
    delay = retry_delay(POLICY, safe=safe, attempt=1, u=1.0, status_code=status, error=exc)
    assert (delay is not None) is retried
    if retried:
        assert delay == 0.5


def test_retry_after_is_a_floor_and_a_long_one_is_not_waited_for() -> None:
    def delay(retry_after: float, attempt: int = 1) -> float | None:
        return retry_delay(POLICY, safe=True, attempt=attempt, u=1.0, status_code=503,
                           retry_after=retry_after)

    assert delay(2.0) == 2.0           # longer than the backoff (0.5): the server's wish
    assert delay(0.0, attempt=3) == 2.0  # shorter: the backoff
    assert delay(10.0) == 10.0
    assert delay(10.5) is None          # past max_retry_after: give up now
    assert retry_delay(POLICY, safe=True, attempt=5, u=1.0, status_code=503) is None


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay=-1)


# -- the clients ---------------------------------------------------------------------------


def test_a_store_retries_with_backoff_and_resends_one_idempotency_key() -> None:
    script = Script(error(503, "store_unavailable"), httpx.ConnectError("refused"),
                    error(502, "bad_gateway"), answer(200, **{"Idempotent-Replayed": "true"}))
    events: list[RetryEvent] = []
    c, sleeps = client(script, events=events)
    memory = c.store("alice", "Meeting with John", importance=5)
    assert memory.replayed and memory.content == "Meeting with John"
    assert sleeps == [0.5, 1.0, 2.0]
    keys = script.keys()
    assert len(keys) == 4 and keys[0] and len(set(keys)) == 1
    assert len({r.content for r in script.requests}) == 1  # the same body every time
    assert [(e.attempt, e.status_code, type(e.error).__name__) for e in events] == [
        (1, 503, "NoneType"), (2, None, "ConnectError"), (3, 502, "NoneType")]
    # Another logical write gets another key.
    c.store("alice", "Meeting with John")
    assert script.keys()[-1] not in keys


def test_a_given_idempotency_key_is_sent_as_is() -> None:
    script = Script(answer(201, {"items": [MEMORY, MEMORY]}))
    c, _ = client(script)
    assert not c.store_batch("alice", ["one", "two"], idempotency_key="import-2026-01-02").replayed
    assert script.keys() == ["import-2026-01-02"]
    assert json.loads(script.requests[0].content) == {
        "user_id": "alice", "items": [{"content": "one"}, {"content": "two"}]}


def test_retry_after_sets_the_wait_in_seconds_or_as_a_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    script = Script(error(429, "rate_limited", **{"Retry-After": "3"}),
                    error(503, "unavailable", **{"Retry-After": later}), answer(200, MEMORY))
    c, sleeps = client(script, u=0.1)
    c.get("alice", MEMORY_ID)
    assert sleeps[0] == 3.0
    assert 3.5 < sleeps[1] <= 5.0  # the date, less the time the test took to get there


def test_a_retry_after_past_the_limit_is_raised_at_once() -> None:
    script = Script(error(429, "rate_limited", **{"Retry-After": "3600"}))
    c, sleeps = client(script)
    with pytest.raises(RateLimited) as raised:
        c.get("alice", MEMORY_ID)
    assert raised.value.retry_after == 3600.0 and raised.value.attempts == 1
    assert sleeps == [] and len(script.requests) == 1


def test_giving_up_raises_the_last_error_with_the_attempt_count() -> None:
    script = Script(error(503, "embedding_unavailable"))
    c, sleeps = client(script)
    with pytest.raises(Unavailable) as raised:
        c.search("alice", "roadmap")
    assert raised.value.attempts == 5 and raised.value.code == "embedding_unavailable"
    assert len(script.requests) == 5 and sleeps == [0.5, 1.0, 2.0, 3.0]

    script = Script(httpx.ConnectError("refused"))
    c, _ = client(script, RetryPolicy(max_attempts=3, base_delay=0))
    with pytest.raises(TransportError, match="ConnectError") as lost:
        c.get("alice", MEMORY_ID)
    assert lost.value.attempts == 3 and isinstance(lost.value.__cause__, httpx.ConnectError)


def test_an_unconditional_update_is_retried_only_where_it_cannot_have_applied() -> None:
    script = Script(httpx.ReadError("connection reset"))
    c, _ = client(script)
    with pytest.raises(TransportError):
        c.update("alice", MEMORY_ID, content="new")
    assert len(script.requests) == 1

    script = Script(error(503, "store_unavailable"))
    c, _ = client(script)
    with pytest.raises(Unavailable):
        c.update("alice", MEMORY_ID, content="new")
    assert len(script.requests) == 1

    script = Script(httpx.ConnectError("refused"), error(429, "rate_limited"), answer(200))
    c, _ = client(script)
    c.update("alice", MEMORY_ID, content="new")
    assert len(script.requests) == 3


def test_a_conditional_update_retries_and_surfaces_a_conflict_after_a_lost_answer() -> None:
    # The first attempt applied version 4 but its answer was lost; the retry finds 4 current.
    script = Script(httpx.ReadError("connection reset"),
                    error(409, "version_conflict", current_version=4))
    c, _ = client(script)
    with pytest.raises(VersionConflict) as raised:
        c.update("alice", MEMORY_ID, content="new", expected_version=3)
    assert raised.value.current_version == 4 and raised.value.attempts == 2
    assert [r.headers["If-Match"] for r in script.requests] == ['"3"', '"3"']


def test_timeouts_of_reads_are_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), answer(200, {"items": [], "next_cursor": None}))
    c, sleeps = client(script)
    assert list(c.list("alice")) == []
    assert len(script.requests) == 2 and sleeps == [0.5]


def test_list_follows_cursors_lazily() -> None:
    pages = {None: ("c1", 2), "c1": ("c2", 2), "c2": (None, 1)}

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        nxt, n = pages[cursor]
        handler.seen.append(cursor)  # type: ignore[attr-defined]
        return answer(200, {"items": [MEMORY] * n, "next_cursor": nxt})

    handler.seen = []  # type: ignore[attr-defined]
    c = MemoryClient("http://memory.test", "k", transport=httpx.MockTransport(handler))
    memories = c.list("alice", page_size=2, metadata={"topic": "work"})
    assert handler.seen == []  # type: ignore[attr-defined]
    first = next(memories)
    assert first.user_id == "alice" and handler.seen == [None]  # type: ignore[attr-defined]
    assert len([first, *memories]) == 5
    assert handler.seen == [None, "c1", "c2"]  # type: ignore[attr-defined]


def test_the_async_client_has_the_same_schedule_and_key_reuse() -> None:
    script = Script(httpx.ConnectError("refused"), error(504, "gateway_timeout"), answer(201),
                    answer(200, {"items": [MEMORY], "next_cursor": None}))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> list[str]:
        async with AsyncMemoryClient("http://memory.test", "k", retry=POLICY,
                                     transport=httpx.MockTransport(script)) as c:
            c._sleep = sleep
            c._random = lambda: 1.0
            memory = await c.store("alice", "Meeting with John")
            assert not memory.replayed
            pages = [p async for p in c.pages("alice")]
            return [type(p).__name__ for p in pages]

    assert asyncio.run(run()) == ["Page"]
    assert sleeps == [0.5, 1.0]
    keys = script.keys()[:3]
    assert keys[0] and len(set(keys)) == 1


def test_the_key_and_a_user_agent_go_with_every_request() -> None:
    script = Script(answer(200, {"id": MEMORY_ID, "version": 2, "deleted": True}))
    c, _ = client(script)
    c.delete("alice", MEMORY_ID, expected_version=1)
    request = script.requests[0]
    assert request.headers["Authorization"] == "Bearer svc-key"
    assert request.headers["User-Agent"].startswith("memory-persistence-client/")
    assert request.headers["If-Match"] == '"1"'
    assert request.url.path == f"/api/memories/{MEMORY_ID}"
    assert request.url.params["user_id"] == "alice"


# -- real sockets: the errors httpx really raises ------------------------------------------


FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.001)


def test_even_an_unconditional_update_is_retried_when_the_connection_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # nothing listens there once closed
    with MemoryClient(f"http://127.0.0.1:{port}", "k", retry=FAST) as c, \
            pytest.raises(TransportError) as raised:
        c.update("alice", MEMORY_ID, content="new")
    assert raised.value.attempts == 3
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_a_dropped_connection_retries_a_store_but_not_an_unconditional_update() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def drop_every_request() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)  # the request arrived; close without answering
            accepted.append(1)
            conn.close()

    threading.Thread(target=drop_every_request, daemon=True).start()
    try:
        with MemoryClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "k",
                          retry=FAST) as c:
            with pytest.raises(TransportError) as update:
                c.update("alice", MEMORY_ID, content="new")
            assert update.value.attempts == 1 and len(accepted) == 1
            with pytest.raises(TransportError) as store:
                c.store("alice", "x")
            assert store.value.attempts == 3 and len(accepted) == 4
    finally:
        listener.close()
