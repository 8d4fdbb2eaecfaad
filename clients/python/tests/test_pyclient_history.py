"""Unit tests of a memory's graph status and history on httpx's MockTransport: what ``get``
with ``wait_for_graph`` and ``history`` send, the typed results, paging newest first, the read
timeout grown by the wait, and that both retry like every read. (The live API: tests/clients/.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from memory_persistence_client import (
    AsyncMemoryClient,
    GraphProjection,
    HistoryEntry,
    MemoryClient,
    MemoryWithGraph,
    ProtocolError,
    RetryPolicy,
)

MEMORY_ID = "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11"
MEMORY: dict[str, Any] = {
    "id": MEMORY_ID, "user_id": "alice", "content": "Meeting with John", "metadata": {},
    "importance": 5, "version": 2, "created_at": "2026-01-02T03:04:05Z",
    "updated_at": "2026-01-02T03:05:05Z", "entities": None, "truncated": False,
    "graph": {"status": "projected", "projected_version": 2,
              "since": "2026-01-02T03:05:06Z", "timed_out": False}}


def entry(version: int) -> dict[str, Any]:
    event = "created" if version == 1 else "deleted" if version == 5 else "updated"
    return {"memory_id": MEMORY_ID, "user_id": "alice", "version": version, "event": event,
            "content": None if event == "deleted" else f"v{version}",
            "metadata": None if event == "deleted" else {"n": version},
            "importance": None if event == "deleted" else 5, "actor": "db:7",
            "changed_at": f"2026-01-02T03:0{version}:00Z"}


class Server:
    """GET /api/memories/{id} answers MEMORY; /history pages through versions 5..1, two at
    a time; the first ``fail_first`` requests answer 503. Records requests and timeouts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_first = fail_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.fail_first:
            return httpx.Response(503, json={"error": {"code": "store_unavailable",
                                                       "message": "no", "field": None}})
        if request.url.path.endswith("/history"):
            before = int(request.url.params.get("before_version", "6"))
            limit = int(request.url.params.get("limit", "50"))
            versions = list(range(before - 1, 0, -1))[:limit]
            more = versions[-1] > 1
            return httpx.Response(200, json={"items": [entry(v) for v in versions],
                                             "next_before_version": versions[-1] if more
                                             else None})
        return httpx.Response(200, json=MEMORY)


def sync_client(server: Server, timeout: float | httpx.Timeout = 10.0) -> MemoryClient:
    client = MemoryClient("http://memory.test", "svc-key", transport=httpx.MockTransport(server),
                          timeout=timeout,
                          retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01))
    client._sleep = lambda _: None
    return client


def test_get_reads_the_typed_graph_status() -> None:
    server = Server()
    got = sync_client(server).get("alice", uuid.UUID(MEMORY_ID))
    assert isinstance(got, MemoryWithGraph) and got.version == 2
    assert got.graph == GraphProjection(status="projected", projected_version=2,
                                        since=datetime(2026, 1, 2, 3, 5, 6, tzinfo=UTC),
                                        timed_out=False)
    assert got.graph.settled
    # No wait asked: nothing sent for it, and the configured timeout as it is.
    assert server.requests[0].url.params.get("wait_for_graph") is None
    assert server.requests[0].extensions["timeout"]["read"] == 10.0


def test_wait_for_graph_is_sent_in_seconds_and_extends_the_read_timeout() -> None:
    server = Server()
    client = sync_client(server, timeout=httpx.Timeout(7.0, connect=2.0))
    client.get("alice", MEMORY_ID, wait_for_graph=5)
    client.get("alice", MEMORY_ID, wait_for_graph=2.5)
    client.get("alice", MEMORY_ID, wait_for_graph=0.1234)
    assert [r.url.params["wait_for_graph"] for r in server.requests] == ["5", "2.5", "0.123"]
    first = server.requests[0].extensions["timeout"]
    assert first["read"] == 12.0 and first["connect"] == 2.0  # only reading waits longer
    assert server.requests[1].extensions["timeout"]["read"] == 9.5
    # No read limit stays no read limit.
    unlimited = Server()
    sync_client(unlimited, timeout=httpx.Timeout(None)).get("alice", MEMORY_ID,
                                                             wait_for_graph=5)
    assert unlimited.requests[0].extensions["timeout"]["read"] is None
    # Nonsense is the server's to refuse (422); it never stretches the timeout past a minute.
    for nonsense, read in ((float("inf"), 7.0), (float("nan"), 7.0), (1e9, 67.0), (-1, 7.0)):
        client.get("alice", MEMORY_ID, wait_for_graph=nonsense)
        assert server.requests[-1].extensions["timeout"]["read"] == read


def test_a_wait_is_a_read_retried_with_the_same_request() -> None:
    server = Server(fail_first=2)
    got = sync_client(server).get("alice", MEMORY_ID, wait_for_graph=3)
    assert got.graph.status == "projected" and len(server.requests) == 3
    assert {str(r.url) for r in server.requests} == {
        f"http://memory.test/api/memories/{MEMORY_ID}?user_id=alice&wait_for_graph=3"}
    assert {r.extensions["timeout"]["read"] for r in server.requests} == {13.0}


def test_history_pages_newest_first_following_next_before_version() -> None:
    server = Server()
    client = sync_client(server)
    entries = list(client.history("alice", MEMORY_ID, page_size=2))
    assert [e.version for e in entries] == [5, 4, 3, 2, 1]
    assert [e.event for e in entries] == ["deleted", "updated", "updated", "updated", "created"]
    deleted, *_, created = entries
    assert isinstance(created, HistoryEntry) and created.content == "v1"
    assert created.metadata == {"n": 1} and created.actor == "db:7"
    assert created.memory_id == uuid.UUID(MEMORY_ID)
    assert deleted.content is None and deleted.metadata is None and deleted.importance is None
    sent = [r.url.raw_path.decode().split("?")[1] for r in server.requests]
    assert sent == ["user_id=alice&limit=2", "user_id=alice&limit=2&before_version=4",
                    "user_id=alice&limit=2&before_version=2"]

    # One page, or the pages themselves, from a given version down.
    page = client.history_page("alice", MEMORY_ID, limit=3, before_version=5)
    assert [e.version for e in page.items] == [4, 3, 2] and page.next_before_version == 2
    pages = list(client.history_pages("alice", MEMORY_ID, page_size=3, before_version=5))
    assert [[e.version for e in p.items] for p in pages] == [[4, 3, 2], [1]]
    assert pages[-1].next_before_version is None


def test_history_is_fetched_lazily_and_retried_like_any_read() -> None:
    server = Server(fail_first=1)
    entries = sync_client(server).history("alice", MEMORY_ID, page_size=2)
    assert server.requests == []
    assert next(entries).version == 5
    assert len(server.requests) == 2  # one 503, retried; the second page not yet asked for


def test_malformed_graph_and_history_answers_are_protocol_errors() -> None:
    without = {k: v for k, v in MEMORY.items() if k != "graph"}
    for body in (without, {**MEMORY, "graph": {"status": "lost", "projected_version": None,
                                               "since": None}},
                 {**MEMORY, "graph": {"projected_version": 1, "since": None}}):
        client = MemoryClient("http://memory.test", "k", transport=httpx.MockTransport(
            lambda _, b=body: httpx.Response(200, json=b)))
        with pytest.raises(ProtocolError):
            client.get("alice", MEMORY_ID)
    for history in ({"items": [{**entry(1), "event": "moved"}]},
                    {"items": [{k: v for k, v in entry(1).items() if k != "version"}]},
                    {"items": None}):
        client = MemoryClient("http://memory.test", "k", transport=httpx.MockTransport(
            lambda _, b=history: httpx.Response(200, json=b)))
        with pytest.raises(ProtocolError):
            client.history_page("alice", MEMORY_ID)


def test_the_async_client_has_the_same_methods() -> None:
    server = Server(fail_first=1)

    async def tour() -> None:
        async with AsyncMemoryClient(
                "http://memory.test", "svc-key", transport=httpx.MockTransport(server),
                timeout=4.0,
                retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01)) as client:
            got = await client.get("alice", MEMORY_ID, wait_for_graph=1.5)
            assert got.graph.projected_version == 2
            versions = [e.version async for e in client.history("alice", MEMORY_ID,
                                                                 page_size=4)]
            assert versions == [5, 4, 3, 2, 1]
            page = await client.history_page("alice", MEMORY_ID, before_version=2)
            assert [e.version for e in page.items] == [1]

    asyncio.run(tour())
    assert len(server.requests) == 5  # one 503 retried, the get; two history pages; one page
    assert server.requests[1].extensions["timeout"]["read"] == 5.5
