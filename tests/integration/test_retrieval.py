"""Retrieval on the real servers: search modes (with the real model), related memories and
entities from the graph, degraded answers from Postgres, and tenant isolation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.db.connector import Database
from app.domain import MemoryState, content_hash
from app.embeddings import HashingEmbedder, MiniLMEmbedder
from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from app.projection import extraction_record
from app.retrieval import Retrieval
from app.settings import Settings
from app.store import MemoryService
from app.wiring import Services, build_services
from devtools.localservers import free_port
from tests.conftest import bearer, drain

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def hashing(settings: Settings, db: Database, graph: Neo4jGraph) -> Services:
    """Services with the hashing embedder: exact, fast, for the filter and ranking rules."""
    return build_services(settings, db=db, graph=graph, embedder=HashingEmbedder(384),
                          extractor=RuleExtractor())


@pytest.fixture
def real(settings: Settings, db: Database, graph: Neo4jGraph) -> Services:
    """Services as users get them: the real embedding model (the default)."""
    return build_services(settings, db=db, graph=graph, extractor=RuleExtractor())


def project(parts: Services) -> None:
    drain(parts.projector, parts.db)


@pytest.fixture
def down(settings: Settings) -> Iterator[Neo4jGraph]:
    """A graph store pointing at a port nothing listens on: Neo4j is down."""
    store = Neo4jGraph(settings.model_copy(
        update={"neo4j_uri": f"bolt://127.0.0.1:{free_port()}"}))
    yield store
    store.close()


def test_vector_search_is_nearest_first_and_applies_filters(hashing: Services) -> None:
    service, search = hashing.memories, hashing.retrieval.search
    roadmap, _ = service.store("alice", "Meeting with John about the Q4 roadmap",
                               {"project": "apollo", "tags": ["work", "q4"]}, 8)
    budget, _ = service.store("alice", "Q4 budget review with finance",
                              {"project": "apollo", "tags": ["work"]}, 4)
    service.store("alice", "Buy oat milk and bread", {"project": "home"}, 9)
    service.store("alice", "Dentist appointment on Tuesday", {}, 2)
    gone, _ = service.store("alice", "Meeting with John about the Q4 roadmap draft")
    service.delete("alice", gone.id)
    service.store("bob", "Meeting with John about the Q4 roadmap", {"project": "apollo"}, 10)

    hits = search("alice", "John Q4 roadmap meeting", mode="vector", top_k=10).hits
    assert hits[0].memory.id == roadmap.id
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.memory.user_id for h in hits} == {"alice"}
    assert gone.id not in {h.memory.id for h in hits} and len(hits) == 4
    assert [h.memory.id for h in search("alice", "John Q4 roadmap meeting", mode="vector",
                                        top_k=1).hits] == [roadmap.id]
    for mode in ("vector", "hybrid"):
        apollo = search("alice", "anything at all", mode=mode, metadata={"project": "apollo"})
        assert {h.memory.id for h in apollo.hits} == {roadmap.id, budget.id}
        tagged = search("alice", "work", mode=mode, metadata={"tags": ["q4"]})
        assert [h.memory.id for h in tagged.hits] == [roadmap.id]
        important = search("alice", "Q4 roadmap", mode=mode, min_importance=5,
                           metadata={"project": "apollo"})
        assert [h.memory.id for h in important.hits] == [roadmap.id]
        assert search("alice", "Q4", mode=mode, metadata={"project": "nope"}).hits == []


def test_text_mode_matches_words_and_hybrid_explains_both_ranks(hashing: Services) -> None:
    service, search = hashing.memories, hashing.retrieval.search
    invoice, _ = service.store("alice", "Invoice INV-2231 from the plumbing company is overdue")
    service.store("alice", "Plumbers fixed the kitchen sink")
    service.store("alice", "Call mum on Sunday")
    found = search("alice", "overdue invoices", mode="text")
    assert [h.memory.id for h in found.hits] == [invoice.id]  # stemmed: invoices ~ invoice
    assert found.hits[0].text_rank == 1 and found.hits[0].vector_rank is None
    hybrid = search("alice", "overdue invoices", mode="hybrid")
    top = hybrid.hits[0]
    assert top.memory.id == invoice.id and top.text_rank == 1 and top.vector_rank is not None
    assert top.score == pytest.approx(1 / (60 + top.vector_rank) + 1 / (60 + top.text_rank))
    assert search("alice", "the and of", mode="text").hits == []  # only stop words


def test_the_real_model_finds_what_a_paraphrase_means(real: Services) -> None:
    service, search = real.memories, real.retrieval.search
    memories = {
        "roadmap": "Meeting with John about Q4 roadmap",
        "dentist": "Dentist appointment moved to Thursday afternoon",
        "milk": "Buy oat milk and sourdough bread",
        "flight": "Flight to Lisbon leaves at 7:40 on Friday",
        "gym": "Started a new strength training plan at the gym",
    }
    ids = {name: service.store("alice", content)[0].id for name, content in memories.items()}
    for query, want in [("quarterly planning discussion", "roadmap"),
                        ("when do I see the tooth doctor", "dentist"),
                        ("groceries to get", "milk"),
                        ("travel to Portugal", "flight"),
                        ("my workout routine", "gym")]:
        found = search("alice", query)  # hybrid, the default
        assert found.hits[0].memory.id == ids[want], (query, found.hits[0].memory.content)
        assert found.embedder == MiniLMEmbedder.identity and found.pending_reembed == 0


def test_rows_of_another_embedder_are_never_compared(real: Services, db: Database) -> None:
    mine, _ = real.memories.store("alice", "Meeting with John about Q4 roadmap")
    other, _ = real.memories.store("alice", "Quarterly planning with John")
    with db.engine.begin() as conn:  # as if another embedder had made this vector
        conn.execute(text("UPDATE memories SET embedder = 'hashing/v1/384' WHERE id = :id"),
                     {"id": other.id})
    found = real.retrieval.search("alice", "quarterly planning discussion", mode="vector")
    assert [h.memory.id for h in found.hits] == [mine.id]
    assert found.pending_reembed == 1


def test_related_memories_come_from_the_graph_ranked_with_their_shared_entities(
        hashing: Services) -> None:
    store = hashing.memories.store
    source, _ = store("alice", "Lunch with Maria Lopez and Tom Baker at Acme Corp", importance=5)
    both, _ = store("alice", "Maria Lopez and Tom Baker review the contract", importance=3)
    one, _ = store("alice", "Call Maria Lopez about the budget", importance=9)
    store("alice", "Buy milk")
    store("bob", "Maria Lopez and Tom Baker at Acme Corp again")  # another user's: never
    project(hashing)
    found = hashing.retrieval.related("alice", source.id)
    assert not found.answer.degraded and found.answer.source == "graph"
    assert found.graph_version == found.memory_version == 1
    assert [r.memory.id for r in found.items] == [both.id, one.id]
    assert {e.key for e in found.items[0].shared} == {"person:maria lopez", "person:tom baker"}
    assert {e.name for e in found.items[1].shared} == {"Maria Lopez"}


def test_related_answers_from_postgres_when_the_graph_is_down_or_behind(
        hashing: Services, settings: Settings, db: Database, down: Neo4jGraph) -> None:
    store = hashing.memories.store
    source, _ = store("alice", "Lunch with Maria Lopez and Tom Baker")
    both, _ = store("alice", "Maria Lopez and Tom Baker review the contract")
    project(hashing)
    broken = Retrieval(settings, db, hashing.embedder, down)
    found = broken.related("alice", source.id)
    assert found.answer.degraded and found.answer.source == "postgres"
    assert found.answer.reason == "the graph is unavailable" and found.graph_version is None
    assert [r.memory.id for r in found.items] == [both.id]
    assert {e.name for e in found.items[0].shared} == {"Maria Lopez", "Tom Baker"}

    hashing.memories.update("alice", source.id, importance=2)  # not projected yet
    behind = hashing.retrieval.related("alice", source.id)
    assert behind.answer.degraded and (behind.memory_version, behind.graph_version) == (2, 1)


def test_entities_and_their_memories_from_the_graph_and_from_postgres(
        hashing: Services, settings: Settings, db: Database, down: Neo4jGraph) -> None:
    store = hashing.memories.store
    first, _ = store("alice", "Maria Lopez works at Acme Corp", importance=3)
    second, _ = store("alice", "Dinner with Maria Lopez", importance=8)
    store("bob", "Maria Lopez and Globex Corporation")
    project(hashing)
    for retrieval in (hashing.retrieval,
                      Retrieval(settings, db, hashing.embedder, down)):
        listed = retrieval.entities("alice")
        counts = {(i.entity.key, i.entity.name): i.mentions for i in listed.items}
        assert counts[("person:maria lopez", "Maria Lopez")] == 2
        assert ("organization:acme corp", "Acme Corp") in counts
        assert not any("globex" in key for key, _ in counts)  # bob's
        assert [i.entity.name for i in retrieval.entities("alice", query="LOPEZ").items] == [
            "Maria Lopez"]
        assert all(i.entity.type == "organization"
                   for i in retrieval.entities("alice", type_="organization").items)
        memories = retrieval.entity_memories("alice", "person:Maria  Lopez")
        assert [m.id for m in memories.items] == [second.id, first.id]  # most important first
        assert retrieval.entity_memories("bob", "organization:acme corp").items == []
    assert not hashing.retrieval.entities("alice").answer.degraded

    hashing.memories.store("alice", "New note about Maria Lopez")  # not projected: in transit
    behind = hashing.retrieval.entities("alice")
    assert behind.answer.degraded and behind.in_transit == 1


def test_search_can_add_graph_neighbours(hashing: Services) -> None:
    store = hashing.memories.store
    hit, _ = store("alice", "Invoice from Acme Corp is overdue")
    neighbour, _ = store("alice", "Quarterly review meeting at Acme Corp")
    store("alice", "Buy milk")
    project(hashing)
    found = hashing.retrieval.search("alice", "overdue invoice", mode="text", expand="graph")
    assert [h.memory.id for h in found.hits] == [hit.id, neighbour.id]
    added = found.hits[1]
    assert added.via == "graph" and added.neighbour_of == hit.id
    assert [e.name for e in added.shared] == ["Acme Corp"]
    assert found.graph is not None and not found.graph.degraded


# -- HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, service_key: str, db: Database,
           graph: Neo4jGraph) -> Iterator[TestClient]:
    parts = build_services(settings, db=db, graph=graph, extractor=RuleExtractor())
    with TestClient(create_app(settings, services=parts), headers=bearer(service_key)) as c:
        yield c


def stored(client: TestClient, user: str, content: str, **extra: Any) -> str:
    response = client.post("/api/memories", json={"user_id": user, "content": content, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_the_routes_search_relate_and_list_entities(
        client: TestClient, settings: Settings, db: Database, graph: Neo4jGraph) -> None:
    roadmap = stored(client, "alice", "Meeting with John Smith about the Q4 roadmap")
    review = stored(client, "alice", "John Smith sent the Q4 review", importance=7)
    stored(client, "bob", "John Smith visits bob")
    drain(build_services(settings, db=db, graph=graph,
                         extractor=RuleExtractor()).projector, db)
    found = client.post("/api/memories/search",
                        json={"user_id": "alice", "query": "quarterly planning discussion"})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["items"][0]["id"] == roadmap and body["mode"] == "hybrid"
    assert body["items"][0]["vector_rank"] == 1 and body["pending_reembed"] == 0
    for mode in ("vector", "text"):
        assert client.post("/api/memories/search", json={
            "user_id": "alice", "query": "roadmap", "mode": mode}).status_code == 200
    related = client.get(f"/api/memories/{roadmap}/related", params={"user_id": "alice"})
    assert related.status_code == 200, related.text
    assert [i["memory"]["id"] for i in related.json()["items"]] == [review]
    assert related.json()["degraded"] is False
    entities = client.get("/api/entities", params={"user_id": "alice", "type": "person"})
    assert [e["key"] for e in entities.json()["items"]] == ["person:john smith"]
    mentioning = client.get("/api/entities/person:john%20smith/memories",
                            params={"user_id": "alice"})
    assert [m["id"] for m in mentioning.json()["items"]] == [review, roadmap]
    # Another user's memory answers as a missing one; another user's entities are not there.
    assert client.get(f"/api/memories/{roadmap}/related",
                      params={"user_id": "bob"}).status_code == 404
    bobs = client.get("/api/entities/person:john%20smith/memories", params={"user_id": "bob"})
    assert roadmap not in [m["id"] for m in bobs.json()["items"]]
    assert client.get("/api/entities/not-a-key/memories",
                      params={"user_id": "alice"}).status_code == 422
    # A name with a slash, URL-encoded as the clients send it, reaches the route.
    slashed = client.get("/api/entities/organization:ac%2Fdc/memories",
                         params={"user_id": "alice"})
    assert slashed.status_code == 200 and slashed.json()["items"] == [], slashed.text


def test_a_tenant_bound_key_cannot_read_another_namespaces_graph(
        settings: Settings, admin_key: str) -> None:
    with TestClient(create_app(settings), headers=bearer(admin_key)) as admin:
        secret = admin.post("/api/admin/keys", json={"name": "acme", "namespace": "acme"}
                            ).json()["secret"]
        other = stored(admin, "globex:bob", "Meeting with John Smith")
    with TestClient(create_app(settings), headers=bearer(secret)) as acme:
        assert acme.get(f"/api/memories/{other}/related",
                        params={"user_id": "globex:bob"}).status_code == 403
        assert acme.get("/api/entities", params={"user_id": "globex:bob"}).status_code == 403
        assert acme.get("/api/entities/person:john%20smith/memories",
                        params={"user_id": "globex:bob"}).status_code == 403
        assert acme.get("/api/entities", params={"user_id": "acme:alice"}).status_code == 200


def test_the_routes_answer_degraded_with_neo4j_stopped(
        settings: Settings, service_key: str, db: Database) -> None:
    down = settings.model_copy(update={"neo4j_uri": f"bolt://127.0.0.1:{free_port()}"})
    parts = build_services(down, db=db, extractor=RuleExtractor())  # closed by the app
    service: MemoryService = parts.memories
    first, _ = service.store("alice", "Maria Lopez works at Acme Corp")
    second, _ = service.store("alice", "Dinner with Maria Lopez")
    with db.engine.begin() as conn:  # extracted by a worker earlier; the graph is gone now
        conn.execute(text("UPDATE outbox SET status = 'done'"))
    for memory in (first, second):
        extraction = RuleExtractor().extract(memory.content)
        record = extraction_record(MemoryState(memory.id, "alice", 1, False,
                                               content_hash=content_hash(memory.content)),
                                   "rules/1", extraction)
        with db.transaction() as tx:
            tx.execute_many("save_extraction", [record])
    with parts, TestClient(create_app(down, services=parts), headers=bearer(service_key)) as client:
        related = client.get(f"/api/memories/{first.id}/related", params={"user_id": "alice"})
        assert related.status_code == 200, related.text
        assert related.json()["degraded"] is True and related.json()["source"] == "postgres"
        assert [i["memory"]["id"] for i in related.json()["items"]] == [str(second.id)]
        entities = client.get("/api/entities", params={"user_id": "alice"}).json()
        assert entities["degraded"] is True
        assert {e["key"] for e in entities["items"]} >= {"person:maria lopez"}
        expanded = client.post("/api/memories/search", json={
            "user_id": "alice", "query": "Acme", "mode": "text", "expand": "graph"})
        assert expanded.status_code == 200 and expanded.json()["graph"]["degraded"] is True
