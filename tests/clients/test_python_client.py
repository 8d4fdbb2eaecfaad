"""The Python client (clients/python) against the live API: a real web process on the test's
fresh database. Every memory route, the errors, retries honouring a live 429's Retry-After, a
store retried across a web-process crash and restart (stored once), and the requests the
client sends checked against the live OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import memory_persistence_client as mpc
from app.db.connector import Database
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.settings import Settings
from app.wiring import build_services
from memory_persistence_client import (
    AsyncMemoryClient,
    MemoryClient,
    NewMemory,
    RetryEvent,
    RetryPolicy,
)
from memory_persistence_client.models import SCHEMA_COMPONENTS
from tests.clients.conftest import LosingProxy, Web
from tests.conftest import drain, wait_for

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def rows(db: Database, user_id: str) -> int:
    """Memory rows of a user, deleted ones included: a duplicate cannot hide."""
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM memories WHERE user_id = :u"),
                                {"u": user_id}).scalar_one())


def test_every_memory_route_through_the_sync_client(web: Web, service_key: str,
                                                    db: Database) -> None:
    with MemoryClient(web.url, service_key) as client:
        stored = client.store("alice", "Meeting with John about the Q4 roadmap",
                              metadata={"topic": "work"}, importance=7,
                              idempotency_key="req-1")
        assert not stored.replayed and stored.version == 1 and stored.importance == 7
        again = client.store("alice", "Meeting with John about the Q4 roadmap",
                             metadata={"topic": "work"}, importance=7, idempotency_key="req-1")
        assert again.replayed and again.id == stored.id
        with pytest.raises(mpc.IdempotencyConflict) as reused:
            client.store("alice", "something else", idempotency_key="req-1")
        assert reused.value.field == "Idempotency-Key"

        batch = client.store_batch("alice", [
            NewMemory(content="Lunch with Maria", metadata={"topic": "food"}, importance=3),
            "Call the dentist on Monday",
            NewMemory(content="Q4 planning offsite in Lisbon", metadata={"topic": "work"})])
        assert [m.content for m in batch.items] == [
            "Lunch with Maria", "Call the dentist on Monday", "Q4 planning offsite in Lisbon"]
        assert rows(db, "alice") == 4

        got = client.get("alice", stored.id)
        assert got == mpc.MemoryWithGraph(
            **{f: getattr(stored, f) for f in mpc.Memory.__dataclass_fields__}, graph=got.graph)
        assert got.graph.status == "pending"  # no worker runs here

        every = list(client.list("alice", page_size=3))
        assert len(every) == 4 and len({m.id for m in every}) == 4
        assert [len(p.items) for p in client.pages("alice", page_size=3)] == [3, 1]
        work = list(client.list("alice", metadata={"topic": "work"}, min_importance=5))
        assert {m.content for m in work} == {"Meeting with John about the Q4 roadmap",
                                             "Q4 planning offsite in Lisbon"}

        changed = client.update("alice", stored.id, content="Meeting with John about Q1",
                                expected_version=1)
        assert changed.version == 2 and changed.content == "Meeting with John about Q1"
        with pytest.raises(mpc.VersionConflict) as stale:
            client.update("alice", stored.id, importance=2, expected_version=1)
        assert stale.value.current_version == 2 and stale.value.attempts == 1
        assert client.update("alice", stored.id, importance=9).version == 3

        hits = client.search("alice", "Meeting with John", top_k=2, metadata={"topic": "work"})
        assert len(hits) >= 1 and hits[0].id == stored.id and 0 < hits[0].score <= 1.0001
        assert all(h.metadata == {"topic": "work"} for h in hits)

        with pytest.raises(mpc.VersionConflict):
            client.delete("alice", stored.id, expected_version=2)
        deleted = client.delete("alice", stored.id, expected_version=3)
        assert deleted.id == stored.id and deleted.version == 4 and deleted.deleted
        with pytest.raises(mpc.NotFound) as missing:
            client.get("alice", stored.id)
        assert missing.value.status_code == 404 and missing.value.attempts == 1
        with pytest.raises(mpc.NotFound):
            client.get("bob", batch.items[0].id)  # another user's memory is a missing one

        with pytest.raises(mpc.ValidationError) as invalid:
            client.store("alice", "x", importance=11)
        assert invalid.value.field == "importance"
        with pytest.raises(mpc.ValidationError) as bad_id:
            client.get("alice", "not-a-uuid")
        assert bad_id.value.field == "memory_id"

    with MemoryClient(web.url, "not-a-key") as stranger, pytest.raises(mpc.Unauthorized):
        stranger.get("alice", stored.id)


def test_the_async_client_against_the_live_api(web: Web, service_key: str) -> None:
    async def tour() -> None:
        async with AsyncMemoryClient(web.url, service_key) as client:
            stored = await client.store("carol", "Dinner with Ana in Porto", importance=6)
            batch = await client.store_batch("carol", ["Renew passport", "Book flights"])
            assert len(batch.items) == 2 and not batch.replayed
            assert (await client.get("carol", stored.id)).content == "Dinner with Ana in Porto"
            listed = [m.content async for m in client.list("carol", page_size=2)]
            assert sorted(listed) == ["Book flights", "Dinner with Ana in Porto",
                                      "Renew passport"]
            changed = await client.update("carol", stored.id, importance=8, expected_version=1)
            assert changed.version == 2
            hits = await client.search("carol", "Dinner with Ana", top_k=1)
            assert [h.id for h in hits] == [stored.id]
            await client.delete("carol", stored.id)
            with pytest.raises(mpc.NotFound):
                await client.get("carol", stored.id)

    asyncio.run(tour())


def test_search_modes_related_and_entities_through_the_client(
        web: Web, service_key: str, settings: Settings, db: Database,
        graph: Neo4jGraph) -> None:
    with MemoryClient(web.url, service_key) as client:
        roadmap = client.store("dave", "Meeting with John about the Q4 roadmap",
                               metadata={"topic": "work"}, importance=8)
        review = client.store("dave", "John sent the Q4 review", importance=4)
        client.store("dave", "Buy oat milk", metadata={"topic": "home"})
        client.store("erin", "Meeting with John about the Q4 roadmap")

        for mode in ("vector", "text", "hybrid"):
            found = client.search("dave", "Q4 roadmap meeting with John", mode=mode, top_k=2)
            assert found.mode == mode and found[0].id == roadmap.id, mode
        filtered = client.search("dave", "John", mode="text", metadata={"topic": "work"},
                                 min_importance=5)
        assert [h.id for h in filtered] == [roadmap.id]

        # The worker's part, done here: the rule extractor's entities into the graph.
        with build_services(settings, db=db, graph=graph,
                            extractor=RuleExtractor()) as parts:
            drain(parts.projector, db)

        related = client.related("dave", roadmap.id, limit=5)
        assert [r.memory.id for r in related] == [review.id]
        assert "person:john" in {e.key for e in related.items[0].shared_entities}
        assert related.source == "graph" and not related.degraded
        assert related.graph_version == related.memory_version == 1

        expanded = client.search("dave", "Q4 roadmap meeting with John", top_k=1,
                                 expand="graph")
        assert [(h.id, h.via) for h in expanded] == [(roadmap.id, "search"),
                                                      (review.id, "graph")]
        assert expanded.graph is not None and expanded.graph.source == "graph"

        entities = client.entities("dave", query="jo")
        assert [(e.key, e.mentions) for e in entities] == [("person:john", 2)]
        people = client.entities("dave", entity_type="person")
        assert {e.type for e in people} == {"person"}
        mentioning = client.entity_memories("dave", "person:john")
        assert [m.id for m in mentioning] == [roadmap.id, review.id]
        assert list(client.entity_memories("dave", "person:nobody")) == []

        with pytest.raises(mpc.NotFound):  # erin's memory is not dave's to relate
            client.related("dave", client.search("erin", "John", top_k=1)[0].id)
        with pytest.raises(mpc.ValidationError):
            client.entity_memories("dave", "no-type")


def test_graph_status_wait_and_history_through_the_client(
        web: Web, service_key: str, settings: Settings, db: Database,
        graph: Neo4jGraph) -> None:
    with MemoryClient(web.url, service_key) as client:
        stored = client.store("gina", "Meeting with John about the Q4 roadmap",
                              metadata={"topic": "work"}, importance=6)
        # No worker runs: the wait ends with the version still pending.
        pending = client.get("gina", stored.id, wait_for_graph=0.2)
        assert pending.graph.status == "pending" and pending.graph.timed_out is True
        assert pending.graph.projected_version is None and not pending.graph.settled
        assert client.get("gina", stored.id).graph.timed_out is None  # no wait asked

        # The worker's part, done here (as in the search test above).
        with build_services(settings, db=db, graph=graph,
                            extractor=RuleExtractor()) as parts:
            drain(parts.projector, db)
        projected = client.get("gina", stored.id, wait_for_graph=5)
        assert projected.graph.status == "projected" and projected.graph.timed_out is False
        assert projected.graph.projected_version == projected.version == 1

        changed = client.update("gina", stored.id, content="Meeting with John about Q1",
                                metadata={"topic": "plans"}, expected_version=1)
        assert changed.version == 2
        after = client.get("gina", stored.id)
        assert after.graph.status == "pending" and after.graph.projected_version == 1

        entries = list(client.history("gina", stored.id, page_size=1))  # a page per version
        assert [(e.version, e.event) for e in entries] == [(2, "updated"), (1, "created")]
        assert [e.content for e in entries] == ["Meeting with John about Q1",
                                                "Meeting with John about the Q4 roadmap"]
        assert [e.metadata for e in entries] == [{"topic": "plans"}, {"topic": "work"}]
        # Who made each change: the key's id, never the key.
        assert {e.actor for e in entries} == {"settings:service:1"}
        assert all(e.memory_id == stored.id and e.user_id == "gina" for e in entries)
        page = client.history_page("gina", stored.id, limit=1)
        assert page.next_before_version == 2
        assert client.history_page("gina", stored.id, before_version=2).items == entries[1:]

        client.delete("gina", stored.id)
        assert [e.event for e in client.history("gina", stored.id)] == [
            "deleted", "updated", "created"]
        with pytest.raises(mpc.NotFound):  # another user's memory has no history to read
            client.history_page("hank", stored.id)

    async def tour() -> None:
        async with AsyncMemoryClient(web.url, service_key) as client:
            versions = [e.version async for e in client.history("gina", stored.id)]
            assert versions == [3, 2, 1]
            with pytest.raises(mpc.NotFound):  # deleted: no longer readable
                await client.get("gina", stored.id, wait_for_graph=1)

    asyncio.run(tour())


def test_a_store_retried_across_a_crash_and_restart_is_stored_once(
        web: Web, service_key: str, db: Database) -> None:
    """The web process commits the store, dies before the client reads the answer, and comes
    back while the client is still retrying with the same Idempotency-Key."""
    proxy = LosingProxy(web.port)
    events: list[RetryEvent] = []
    # About a minute of retries, however slowly the web process comes back on a busy machine.
    policy = RetryPolicy(max_attempts=400, base_delay=0.05, max_delay=0.3)
    proxy.lose_next_answer(web.kill)
    try:
        with MemoryClient(proxy.url, service_key, retry=policy,
                          on_retry=events.append) as client, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.store, "dave", "Meeting with John about the Q4 roadmap")
            # The answer was lost, the process is gone, and the client keeps trying.
            wait_for(lambda: proxy.lost.is_set() and len(events) >= 3, 30,
                     "the client to retry against the dead web process")
            assert not pending.done()
            web.start()
            memory = pending.result(timeout=120)
    finally:
        proxy.close()
    assert memory.replayed, "the retry should have replayed the first attempt's memory"
    assert all(e.status_code is None and isinstance(e.error, httpx.TransportError)
               for e in events)
    assert rows(db, "dave") == 1
    with MemoryClient(web.url, service_key) as client:
        assert [m.id for m in client.list("dave")] == [memory.id]


def test_a_live_429_is_retried_after_its_retry_after(settings: Settings, tmp_path: Path,
                                                     service_key: str) -> None:
    web = Web(settings, tmp_path, API_RATE_LIMIT_PER_SECOND="1", API_RATE_LIMIT_BURST="1")
    events: list[RetryEvent] = []
    try:
        web.start()
        with MemoryClient(web.url, service_key, on_retry=events.append) as client:
            for _ in range(3):
                assert client.list_page("erin").items == []
            # The bucket is empty again: without retries, the 429 itself.
            client.retry = mpc.NO_RETRIES
            with pytest.raises(mpc.RateLimited) as limited:
                client.list_page("erin")
            assert limited.value.retry_after == 1.0 and limited.value.attempts == 1
    finally:
        web.stop()
    assert events and all(e.status_code == 429 and e.delay >= 1.0 for e in events)


# -- the client's requests and models against the live OpenAPI document --------------------


def _resolve(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _conforms(doc: Mapping[str, Any], schema: Mapping[str, Any], value: Any,
              where: str) -> list[str]:
    """What in ``value`` the schema does not allow: unknown or missing fields, wrong kinds
    (a small JSON Schema subset: enough for the request bodies of this API)."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        options = [_conforms(doc, s, value, where) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else options[0]
    kind = schema.get("type")
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        problems = [f"{where}.{k}: not in the schema" for k in value
                    if k not in props and schema.get("additionalProperties") is False]
        problems += [f"{where}.{k}: required" for k in schema.get("required", ())
                     if k not in value]
        for k, v in value.items():
            if k in props:
                problems += _conforms(doc, props[k], v, f"{where}.{k}")
        return problems
    if kind == "array" and isinstance(value, list):
        return [p for i, v in enumerate(value)
                for p in _conforms(doc, schema.get("items", {}), v, f"{where}[{i}]")]
    expected = {"object": dict, "array": list, "string": str, "integer": int, "null": type(None),
                "boolean": bool}.get(str(kind))
    if expected is not None and not isinstance(value, expected):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    return []


def _operation(doc: Mapping[str, Any], method: str, path: str) -> Mapping[str, Any] | None:
    """The documented operation for a request; a literal path wins over a template
    (``/api/memories/search`` over ``/api/memories/{memory_id}``)."""
    matches = []
    for template, operations in doc["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            matches.append((template.count("{"), operations[method.lower()]))
    return min(matches, key=lambda m: m[0])[1] if matches else None


EXAMPLE_MEMORY = {"id": str(uuid.uuid4()), "user_id": "alice", "content": "c", "metadata": {},
                  "importance": 5, "version": 1, "created_at": "2026-01-01T00:00:00Z",
                  "updated_at": "2026-01-01T00:00:00Z", "entities": [
                      {"name": "John", "type": "person"}], "truncated": False}
EXAMPLE_ENTITY = {"key": "person:john", "name": "John", "type": "person"}
EXAMPLES: dict[str, Any] = {
    "Memory": EXAMPLE_MEMORY,
    "BatchResult": {"items": [EXAMPLE_MEMORY]},
    "Page": {"items": [EXAMPLE_MEMORY], "next_cursor": None},
    "SearchResult": {"items": [{**EXAMPLE_MEMORY, "score": 0.5}]},
    "Deleted": {"id": EXAMPLE_MEMORY["id"], "version": 2, "deleted": True},
    "RelatedResult": {"memory_id": EXAMPLE_MEMORY["id"], "memory_version": 1,
                      "graph_version": 1, "items": [{"memory": EXAMPLE_MEMORY,
                                                     "shared_entities": [EXAMPLE_ENTITY]}],
                      "degraded": False, "source": "graph", "reason": None},
    "EntitiesResult": {"items": [{**EXAMPLE_ENTITY, "mentions": 1}], "degraded": False,
                       "source": "graph", "reason": None, "in_transit": 0},
    "EntityMemoriesResult": {"items": [EXAMPLE_MEMORY], "degraded": False, "source": "graph",
                             "reason": None, "in_transit": 0},
    "MemoryWithGraph": {**EXAMPLE_MEMORY, "graph": {
        "status": "projected", "projected_version": 1, "since": "2026-01-01T00:00:01Z",
        "timed_out": False}},
    "HistoryPage": {"items": [{"memory_id": EXAMPLE_MEMORY["id"], "user_id": "alice",
                               "version": 1, "event": "created", "content": "c",
                               "metadata": {}, "importance": 5, "actor": "db:1",
                               "changed_at": "2026-01-01T00:00:00Z", "truncated": False}],
                    "next_before_version": None},
}


def test_the_client_sends_what_the_live_openapi_document_describes(
        web: Web, service_key: str) -> None:
    doc = httpx.get(f"{web.url}/openapi.json", timeout=10).json()
    sent: list[tuple[httpx.Request, str]] = []

    def documented(request: httpx.Request) -> httpx.Response:
        """Answer each request with an example of the component its operation documents."""
        operation = _operation(doc, request.method, request.url.path)
        assert operation is not None, f"{request.method} {request.url.path} is not in the API"
        status = min(s for s in operation["responses"] if s.startswith("2"))
        ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        component = ref.rsplit("/", 1)[1]
        sent.append((request, component))
        return httpx.Response(int(status), json=EXAMPLES[component])

    client = MemoryClient("http://api.test", "k", transport=httpx.MockTransport(documented))
    some = uuid.uuid4()
    client.store("alice", "c", metadata={"a": 1}, importance=3, idempotency_key="k1")
    client.store_batch("alice", [NewMemory(content="c", metadata={"a": 1}, importance=2), "d"],
                       idempotency_key="k2")
    client.get("alice", some)
    client.get("alice", some, wait_for_graph=2.5)
    client.history_page("alice", some, limit=10, before_version=3)
    client.list_page("alice", limit=10, cursor="abc", min_importance=2, metadata={"a": 1})
    client.update("alice", some, content="c", metadata={"a": 2}, importance=4,
                  expected_version=1)
    client.delete("alice", some, expected_version=1)
    client.search("alice", "q", top_k=3, metadata={"a": 1}, min_importance=2, mode="text",
                  expand="graph")
    client.related("alice", some, limit=3)
    client.entities("alice", query="jo", entity_type="person", limit=3)
    client.entity_memories("alice", "person:john", limit=3)
    assert {c for _, c in sent} == set(EXAMPLES)  # every documented answer was read

    problems: list[str] = []
    standard = {"host", "accept", "accept-encoding", "connection", "user-agent",
                "authorization", "content-length", "content-type"}
    for request, _ in sent:
        operation = _operation(doc, request.method, request.url.path)
        assert operation is not None
        where = f"{request.method} {request.url.path}"
        params = {(p["in"], p["name"].lower()) for p in operation.get("parameters", ())}
        problems += [f"{where}: query {name}" for name in request.url.params
                     if ("query", name.lower()) not in params]
        problems += [f"{where}: header {name}" for name in request.headers
                     if name.lower() not in standard and ("header", name.lower()) not in params]
        if request.content:
            body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            problems += _conforms(doc, body_schema, httpx.Response(200, content=request.content)
                                  .json(), where)
        else:
            assert "requestBody" not in operation or not operation["requestBody"].get("required")
    assert not problems, problems

    # The models read the documented fields, all the required ones, and no others.
    for name, (model, client_only) in SCHEMA_COMPONENTS.items():
        schema = doc["components"]["schemas"][name]
        fields = {f.name for f in dataclasses.fields(model)} - client_only
        assert fields <= set(schema["properties"]), (name, fields - set(schema["properties"]))
        assert set(schema.get("required", ())) <= fields, name
