"""Unit tests of search modes and filters, related memories and entities on httpx's
MockTransport: what each method sends, the typed results it reads, and that these reads retry
like every safe call. (The live API is exercised by tests/clients/.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from memory_persistence_client import (
    AsyncMemoryClient,
    EntitiesResult,
    EntityItem,
    EntityMemoriesResult,
    EntityRef,
    GraphAnswer,
    MemoryClient,
    NotFound,
    ProtocolError,
    RelatedResult,
    RetryPolicy,
)

MEMORY_ID = "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11"
OTHER_ID = "0b6f3a1e-2c44-4f0e-8d7a-5b8e9c0d1e22"


def memory(mid: str = MEMORY_ID, content: str = "Meeting with John") -> dict[str, Any]:
    return {"id": mid, "user_id": "alice", "content": content, "metadata": {}, "importance": 5,
            "version": 1, "created_at": "2026-01-02T03:04:05Z",
            "updated_at": "2026-01-02T03:04:05Z", "entities": [{"name": "John",
                                                                 "type": "person"}]}


JOHN = {"key": "person:john", "name": "John", "type": "person"}
ANSWERS: dict[str, Any] = {
    "/api/memories/search": {
        "items": [{**memory(), "score": 0.03, "similarity": 0.41, "vector_rank": 1,
                   "text_rank": None},
                  {**memory(OTHER_ID, "John sent the Q4 review"), "score": 0.0, "via": "graph",
                   "neighbour_of": MEMORY_ID, "shared_entities": [JOHN]}],
        "mode": "vector", "embedder": "hashing/384", "pending_reembed": 0,
        "graph": {"source": "postgres", "degraded": True, "reason": "the graph is behind"}},
    f"/api/memories/{MEMORY_ID}/related": {
        "memory_id": MEMORY_ID, "memory_version": 2, "graph_version": 2,
        "items": [{"memory": memory(OTHER_ID, "John sent the Q4 review"),
                   "shared_entities": [JOHN]}],
        "degraded": False, "source": "graph", "reason": None},
    "/api/entities": {"items": [{**JOHN, "mentions": 2}], "degraded": False, "source": "graph",
                      "in_transit": 0},
    "/api/entities/person%3Ajohn%2Fsmith/memories": {
        "items": [memory()], "degraded": True, "source": "postgres",
        "reason": "1 changes are not in the graph yet", "in_transit": 1},
}


class Server:
    """Answers each path with its canned body; records every request."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_first = fail_first
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.fail_first:
            return httpx.Response(self.status, json={"error": {
                "code": "not_found" if self.status == 404 else "store_unavailable",
                "message": "no", "field": None}})
        return httpx.Response(200, json=ANSWERS[request.url.raw_path.decode().split("?")[0]])


def sync_client(server: Server) -> MemoryClient:
    client = MemoryClient("http://memory.test", "svc-key", transport=httpx.MockTransport(server),
                          retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01))
    client._sleep = lambda _: None
    return client


def test_search_sends_mode_filters_and_expansion_and_reads_typed_hits() -> None:
    server = Server()
    found = sync_client(server).search("alice", "John", top_k=3, metadata={"topic": "work"},
                                       min_importance=2, mode="vector", expand="graph")
    assert json.loads(server.requests[0].content) == {
        "user_id": "alice", "query": "John", "top_k": 3, "metadata": {"topic": "work"},
        "min_importance": 2, "mode": "vector", "expand": "graph"}
    assert found.mode == "vector"
    assert found.graph == GraphAnswer(source="postgres", degraded=True,
                                      reason="the graph is behind")
    hit, neighbour = found
    assert hit.vector_rank == 1 and hit.text_rank is None and hit.via == "search"
    assert neighbour.via == "graph" and neighbour.neighbour_of == uuid.UUID(MEMORY_ID)
    assert neighbour.shared_entities == (EntityRef(key="person:john", name="John",
                                                   type="person"),)
    # Left out, the server's defaults apply: nothing is sent for them.
    sync_client(server).search("alice", "John")
    assert json.loads(server.requests[1].content) == {"user_id": "alice", "query": "John"}


def test_related_entities_and_entity_memories_requests_and_models() -> None:
    server = Server()
    client = sync_client(server)
    related = client.related("alice", uuid.UUID(MEMORY_ID), limit=5)
    assert isinstance(related, RelatedResult) and len(related) == 1
    assert related.memory_version == related.graph_version == 2 and not related.degraded
    assert related.items[0].memory.content == "John sent the Q4 review"
    assert related.items[0].shared_entities[0].key == "person:john"

    entities = client.entities("alice", query="jo", entity_type="person", limit=10)
    assert isinstance(entities, EntitiesResult)
    assert list(entities) == [EntityItem(key="person:john", name="John", type="person",
                                         mentions=2)]

    mentioning = client.entity_memories("alice", "person:john/smith", limit=7)
    assert isinstance(mentioning, EntityMemoriesResult)
    assert [m.id for m in mentioning] == [uuid.UUID(MEMORY_ID)]
    assert mentioning.degraded and mentioning.in_transit == 1 and mentioning.source == "postgres"

    sent = [(r.method, r.url.raw_path.decode()) for r in server.requests]
    assert sent == [
        ("GET", f"/api/memories/{MEMORY_ID}/related?user_id=alice&limit=5"),
        ("GET", "/api/entities?user_id=alice&q=jo&type=person&limit=10"),
        # the key is one path segment: ':' and '/' are escaped
        ("GET", "/api/entities/person%3Ajohn%2Fsmith/memories?user_id=alice&limit=7")]


def test_graph_reads_are_retried_like_every_read_and_map_errors() -> None:
    flaky = Server(fail_first=2)
    assert len(sync_client(flaky).related("alice", MEMORY_ID)) == 1
    assert len(flaky.requests) == 3
    missing = Server(fail_first=1, status=404)
    with pytest.raises(NotFound):
        sync_client(missing).related("alice", MEMORY_ID)
    assert len(missing.requests) == 1  # a 404 is an answer, not retried


def test_a_graph_answer_missing_its_fields_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        RelatedResult.from_json({"memory_id": MEMORY_ID, "items": []})
    with pytest.raises(ProtocolError):
        EntitiesResult.from_json({"items": [{"key": "person:john"}], "degraded": False,
                                  "source": "graph"})


def test_the_async_client_has_the_same_methods() -> None:
    server = Server(fail_first=1)

    async def tour() -> None:
        async with AsyncMemoryClient(
                "http://memory.test", "svc-key", transport=httpx.MockTransport(server),
                retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01)) as client:
            found = await client.search("alice", "John", mode="text", expand="graph")
            assert [h.via for h in found] == ["search", "graph"]
            assert len(await client.related("alice", MEMORY_ID, limit=5)) == 1
            assert (await client.entities("alice")).items[0].mentions == 2
            assert len(await client.entity_memories("alice", "person:john/smith")) == 1

    asyncio.run(tour())
    assert len(server.requests) == 5  # one 503 retried
    assert json.loads(server.requests[1].content)["mode"] == "text"
