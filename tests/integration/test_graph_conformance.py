"""One suite, two graph stores: the in-memory fake must behave exactly like Neo4j."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from neo4j import Driver

from app.graph.neo4j import Neo4jGraph
from app.graph.projector import EntityRow, GraphStore, MemoryProjection, RelationRow
from app.settings import Settings
from app.testing import FakeGraph

ALICE, BOB = "alice", "bob"


def ent(user: str, name: str, type_: str = "person") -> EntityRow:
    return EntityRow(key=f"{user}|{type_}|{name.lower()}", name=name, type=type_)


def mem(id_: str, version: int, *entities: EntityRow, user: str = ALICE, deleted: bool = False,
        relations: tuple[RelationRow, ...] = ()) -> MemoryProjection:
    return MemoryProjection(id=id_, user_id=user, version=version, deleted=deleted,
                            entities=entities, relations=relations)


@pytest.fixture(params=["fake", "neo4j"])
def graph(request: pytest.FixtureRequest) -> Iterator[GraphStore]:
    if request.param == "fake":
        yield FakeGraph()
        return
    settings: Settings = request.getfixturevalue("settings")
    driver: Driver = request.getfixturevalue("neo4j_driver")
    store = Neo4jGraph(settings, driver=driver)
    store.ensure_schema()
    yield store


def test_project_creates_memory_mentions_and_relations(graph: GraphStore) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    result = graph.project([mem("m1", 1, john, acme,
                                relations=(RelationRow(john.key, acme.key, "works_at"),))])
    assert result.applied == ["m1"]
    snap = graph.snapshot(["m1", "nope"])
    assert set(snap) == {"m1"}
    assert snap["m1"].version == 1
    assert snap["m1"].entity_keys == {john.key, acme.key}
    counts = graph.counts()
    assert (counts.memories, counts.entities, counts.mentions, counts.relations) == (1, 2, 2, 1)


def test_duplicate_delivery_is_harmless(graph: GraphStore) -> None:
    john = ent(ALICE, "John")
    graph.project([mem("m1", 1, john)])
    before = graph.counts()
    again = graph.project([mem("m1", 1, john)])
    assert again.applied == [] and again.fenced == ["m1"]
    assert graph.counts() == before


def test_an_older_version_never_overwrites_a_newer_one(graph: GraphStore) -> None:
    john, sarah = ent(ALICE, "John"), ent(ALICE, "Sarah")
    graph.project([mem("m1", 3, sarah)])
    result = graph.project([mem("m1", 2, john)])
    assert result.fenced == ["m1"]
    snap = graph.snapshot(["m1"])["m1"]
    assert snap.version == 3 and snap.entity_keys == {sarah.key}
    assert graph.counts().entities == 1


def test_delete_leaves_a_tombstone_that_fences_late_versions(graph: GraphStore) -> None:
    john = ent(ALICE, "John")
    graph.project([mem("m1", 1, john)])
    graph.project([mem("m1", 2, deleted=True)])
    late = graph.project([mem("m1", 1, john)])
    assert late.fenced == ["m1"]
    snap = graph.snapshot(["m1"])["m1"]
    assert snap.deleted and snap.version == 2 and snap.entity_keys == frozenset()
    counts = graph.counts()
    assert (counts.memories, counts.tombstones, counts.entities) == (0, 1, 0)


def test_entities_nothing_mentions_are_removed_shared_ones_stay(graph: GraphStore) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("m1", 1, john, acme), mem("m2", 1, john)])
    result = graph.project([mem("m1", 2, deleted=True)])
    assert result.orphans_removed == 1  # Acme; John is still mentioned by m2
    assert graph.counts().entities == 1
    assert graph.snapshot(["m2"])["m2"].entity_keys == {john.key}


def test_update_replaces_the_mention_set(graph: GraphStore) -> None:
    john, sarah = ent(ALICE, "John"), ent(ALICE, "Sarah")
    graph.project([mem("m1", 1, john)])
    graph.project([mem("m1", 2, sarah)])
    assert graph.snapshot(["m1"])["m1"].entity_keys == {sarah.key}
    assert graph.counts().entities == 1


def test_users_never_share_entities(graph: GraphStore) -> None:
    graph.project([mem("a1", 1, ent(ALICE, "John")), mem("b1", 1, ent(BOB, "John"), user=BOB)])
    assert graph.counts().entities == 2
    graph.project([mem("b1", 2, user=BOB, deleted=True)])
    assert graph.snapshot(["a1"])["a1"].entity_keys == {ent(ALICE, "John").key}
    assert graph.counts().entities == 1


def test_a_batch_mixes_applied_and_fenced_rows(graph: GraphStore) -> None:
    graph.project([mem("m1", 5)])
    result = graph.project([mem("m1", 4), mem("m2", 1)])
    assert result.applied == ["m2"] and result.fenced == ["m1"]
