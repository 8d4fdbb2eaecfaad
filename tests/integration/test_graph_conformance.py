"""One suite, two graph stores: the in-memory fake must behave exactly like Neo4j.

Every test that takes ``graph`` runs against ``FakeGraph`` and against ``Neo4jGraph``; the
Neo4j run is marked ``servers``, so ``pytest -m "not servers"`` runs the fake alone. States the
interface cannot make (an entity nothing mentions, an edge across users) are planted by a
per-store ``Tamper``: Cypher through the test driver for Neo4j, the fake's own dicts for the fake.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from typing import Any, Protocol, cast

import pytest
from neo4j import Driver

from app.errors import GraphError, GraphUnavailable
from app.graph.base import (
    EntityRow,
    GraphCounts,
    GraphMemory,
    GraphStore,
    MemoryProjection,
    Neighbourhood,
    ProjectResult,
    RelationRow,
)
from app.graph.neo4j import Neo4jGraph
from app.settings import Settings
from app.testing import FailingGraph, FakeGraph, Related

ALICE, BOB, CAROL = "alice", "bob", "carol"
Edge = tuple[str, str, str, str, str]  # RELATED: source, target, predicate, memory_id, user_id


def ent(user: str, name: str, type_: str = "person") -> EntityRow:
    """An entity row keyed per user, as ``build_projection`` keys them."""
    return EntityRow(key=f"{user}|{type_}|{name.lower()}", name=name, type=type_)


def rel(source: EntityRow, target: EntityRow, predicate: str = "knows") -> RelationRow:
    """A relation row between two entity rows."""
    return RelationRow(source.key, target.key, predicate)


def mem(id_: str, version: int, *entities: EntityRow, user: str = ALICE, deleted: bool = False,
        relations: tuple[RelationRow, ...] = (), force: bool = False) -> MemoryProjection:
    """A projection row of one memory."""
    return MemoryProjection(id=id_, user_id=user, version=version, deleted=deleted,
                            entities=entities, relations=relations, force=force)


def tally(graph: GraphStore) -> tuple[int, int, int, int, int]:
    """The graph's counts as a tuple: memories, tombstones, entities, mentions, relations."""
    c = graph.counts()
    return (c.memories, c.tombstones, c.entities, c.mentions, c.relations)


def by_detail(edges: list[dict[str, str]]) -> list[dict[str, str]]:
    """Cross-user edges in a stable order (neither store promises one)."""
    return sorted(edges, key=lambda e: (e["detail"], e["memory_id"]))


class Tamper(Protocol):
    """Plants states the GraphStore interface cannot make, and reads RELATED edges back."""

    def entity(self, key: str, user_id: str, name: str = "Ghost", type_: str = "person"
               ) -> None: ...

    def mention(self, memory_id: str, key: str) -> None: ...

    def relation(self, source: str, target: str, memory_id: str, user_id: str,
                 predicate: str = "knows") -> None: ...

    def edges(self) -> list[Edge]: ...


class FakeTamper:
    """Tampering with a FakeGraph by mutating its dicts."""

    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph

    def entity(self, key: str, user_id: str, name: str = "Ghost", type_: str = "person"
               ) -> None:
        """Add an entity that nothing mentions."""
        self.graph.entities[key] = {"user_id": user_id, "name": name, "type": type_}

    def mention(self, memory_id: str, key: str) -> None:
        """Add a MENTIONS edge from an existing memory to an existing entity."""
        self.graph.memories[memory_id].mentions.add(key)

    def relation(self, source: str, target: str, memory_id: str, user_id: str,
                 predicate: str = "knows") -> None:
        """Add a RELATED edge stamped with any memory and user."""
        self.graph.relations.append(Related(source, target, predicate, memory_id, user_id))

    def edges(self) -> list[Edge]:
        """Every RELATED edge, sorted."""
        return sorted((r.source, r.target, r.predicate, r.memory_id, r.user_id)
                      for r in self.graph.relations)


class Neo4jTamper:
    """Tampering with Neo4j in Cypher through the test driver."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def _run(self, cypher: str, **params: Any) -> list[Any]:
        """Run one statement; its records."""
        return list(self.driver.execute_query(cypher, params).records)

    def entity(self, key: str, user_id: str, name: str = "Ghost", type_: str = "person"
               ) -> None:
        """Add an entity that nothing mentions."""
        self._run("CREATE (:Entity {key: $key, user_id: $user_id, name: $name, type: $type})",
                  key=key, user_id=user_id, name=name, type=type_)

    def mention(self, memory_id: str, key: str) -> None:
        """Add a MENTIONS edge from an existing memory to an existing entity."""
        made = self._run("MATCH (m:Memory {id: $id}), (e:Entity {key: $key}) "
                         "CREATE (m)-[:MENTIONS]->(e) RETURN 1 AS made", id=memory_id, key=key)
        assert len(made) == 1

    def relation(self, source: str, target: str, memory_id: str, user_id: str,
                 predicate: str = "knows") -> None:
        """Add a RELATED edge stamped with any memory and user."""
        made = self._run("MATCH (a:Entity {key: $source}), (b:Entity {key: $target}) "
                         "CREATE (a)-[:RELATED {predicate: $predicate, memory_id: $memory_id, "
                         "user_id: $user_id}]->(b) RETURN 1 AS made",
                         source=source, target=target, predicate=predicate,
                         memory_id=memory_id, user_id=user_id)
        assert len(made) == 1

    def edges(self) -> list[Edge]:
        """Every RELATED edge, sorted."""
        return sorted(
            (r["source"], r["target"], r["predicate"], r["memory_id"], r["user_id"])
            for r in self._run("MATCH (a:Entity)-[r:RELATED]->(b:Entity) "
                               "RETURN a.key AS source, b.key AS target, "
                               "r.predicate AS predicate, r.memory_id AS memory_id, "
                               "r.user_id AS user_id"))


@pytest.fixture(params=["fake", pytest.param("neo4j", marks=pytest.mark.servers)])
def graph(request: pytest.FixtureRequest) -> Iterator[GraphStore]:
    """Each store in turn: the fake, then Neo4j on an emptied graph."""
    if request.param == "fake":
        yield FakeGraph()
        return
    settings: Settings = request.getfixturevalue("settings")
    driver: Driver = request.getfixturevalue("neo4j_driver")
    store = Neo4jGraph(settings, driver=driver)
    store.ensure_schema()
    yield store


@pytest.fixture
def tamper(graph: GraphStore, request: pytest.FixtureRequest) -> Tamper:
    """The tamper helper for the store under test."""
    if isinstance(graph, FakeGraph):
        return FakeTamper(graph)
    return Neo4jTamper(request.getfixturevalue("neo4j_driver"))


# -- ensure_schema ------------------------------------------------------------------------------


def test_ensure_schema_is_idempotent_and_keeps_data(graph: GraphStore) -> None:
    graph.ensure_schema()
    john = ent(ALICE, "John")
    graph.project([mem("m1", 1, john)])
    graph.ensure_schema()
    assert graph.snapshot(["m1"])["m1"].entity_keys == {john.key}
    assert tally(graph) == (1, 0, 1, 1, 0)


# -- project ------------------------------------------------------------------------------------


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


def test_project_of_an_empty_batch_does_nothing(graph: GraphStore) -> None:
    assert graph.project([]) == ProjectResult()
    assert tally(graph) == (0, 0, 0, 0, 0)


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


def test_force_reprojects_at_the_same_version_only(graph: GraphStore) -> None:
    john, sarah = ent(ALICE, "John"), ent(ALICE, "Sarah")
    graph.project([mem("m1", 2, john)])
    assert graph.project([mem("m1", 2, sarah)]).fenced == ["m1"]  # equal, not forced
    assert graph.project([mem("m1", 1, sarah, force=True)]).fenced == ["m1"]  # older
    forced = graph.project([mem("m1", 2, sarah, force=True)])
    assert forced.applied == ["m1"] and forced.orphans_removed == 1  # John
    snap = graph.snapshot(["m1"])["m1"]
    assert snap.version == 2 and snap.entity_keys == {sarah.key}
    assert tally(graph) == (1, 0, 1, 1, 0)


def test_force_repairs_a_tampered_memory(graph: GraphStore, tamper: Tamper) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("b1", 1, ent(BOB, "Eve"), user=BOB)])
    graph.project([mem("m1", 3, john, acme, relations=(rel(john, acme),))])
    tamper.mention("m1", ent(BOB, "Eve").key)
    tamper.relation(acme.key, john.key, "m1", ALICE, "owns")
    assert len(graph.cross_user_edges(None, 10)) == 1

    graph.project([mem("m1", 3, john, acme, relations=(rel(john, acme),), force=True)])
    assert graph.cross_user_edges(None, 10) == []
    assert graph.snapshot(["m1"])["m1"].entity_keys == {john.key, acme.key}
    assert tamper.edges() == [(john.key, acme.key, "knows", "m1", ALICE)]


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


def test_project_removes_only_orphans_it_made(graph: GraphStore, tamper: Tamper) -> None:
    tamper.entity(ent(ALICE, "Ghost").key, ALICE)
    result = graph.project([mem("m1", 1, ent(ALICE, "John"))])
    assert result.orphans_removed == 0
    assert graph.orphan_entities(None, 10) == [(ent(ALICE, "Ghost").key, ALICE)]


def test_update_replaces_the_mention_set(graph: GraphStore) -> None:
    john, sarah = ent(ALICE, "John"), ent(ALICE, "Sarah")
    graph.project([mem("m1", 1, john)])
    graph.project([mem("m1", 2, sarah)])
    assert graph.snapshot(["m1"])["m1"].entity_keys == {sarah.key}
    assert graph.counts().entities == 1


def test_update_replaces_the_relation_set(graph: GraphStore, tamper: Tamper) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("m1", 1, john, acme, relations=(rel(john, acme, "works_at"),)),
                   mem("m2", 1, john, acme, relations=(rel(acme, john, "employs"),))])
    graph.project([mem("m1", 2, john, acme, relations=(rel(john, acme, "founded"),))])
    assert tamper.edges() == [(acme.key, john.key, "employs", "m2", ALICE),
                              (john.key, acme.key, "founded", "m1", ALICE)]
    graph.project([mem("m1", 3, deleted=True)])
    assert tamper.edges() == [(acme.key, john.key, "employs", "m2", ALICE)]


def test_relations_only_between_entities_the_memory_mentions(graph: GraphStore,
                                                             tamper: Tamper) -> None:
    john, acme, sarah = ent(ALICE, "John"), ent(ALICE, "Acme", "organization"), ent(ALICE, "Sarah")
    graph.project([mem("m0", 1, sarah)])  # Sarah exists, but m1 does not mention her
    graph.project([mem("m1", 1, john, acme, relations=(
        rel(john, acme), rel(john, sarah), rel(sarah, acme), rel(john, ent(ALICE, "Nobody")),
        rel(john, john, "is")))])
    assert tamper.edges() == [(john.key, acme.key, "knows", "m1", ALICE),
                              (john.key, john.key, "is", "m1", ALICE)]
    assert graph.counts().relations == 2


def test_users_never_share_entities(graph: GraphStore) -> None:
    graph.project([mem("a1", 1, ent(ALICE, "John")), mem("b1", 1, ent(BOB, "John"), user=BOB)])
    assert graph.counts().entities == 2
    graph.project([mem("b1", 2, user=BOB, deleted=True)])
    assert graph.snapshot(["a1"])["a1"].entity_keys == {ent(ALICE, "John").key}
    assert graph.counts().entities == 1


def test_a_relation_never_joins_two_users(graph: GraphStore, tamper: Tamper) -> None:
    bob_john, alice_john = ent(BOB, "John"), ent(ALICE, "John")
    graph.project([mem("b1", 1, bob_john, user=BOB)])
    # A row naming another user's entity key: the mention is made (and reported as crossing),
    # the relation to it never is.
    graph.project([mem("a1", 1, alice_john, bob_john,
                       relations=(rel(alice_john, bob_john), rel(bob_john, alice_john)))])
    assert tamper.edges() == []
    assert graph.cross_user_edges(None, 10) == [
        {"memory_id": "a1", "user_id": ALICE, "other_user": BOB,
         "detail": f"MENTIONS {bob_john.key}"}]


def test_a_memory_never_changes_owner(graph: GraphStore) -> None:
    graph.project([mem("m1", 1, ent(ALICE, "John"))])
    result = graph.project([mem("m1", 2, ent(BOB, "John"), user=BOB)])
    assert result.fenced == ["m1"] and result.applied == []
    snap = graph.snapshot(["m1"])["m1"]
    assert (snap.user_id, snap.version, snap.entity_keys) == (ALICE, 1, {ent(ALICE, "John").key})


def test_a_batch_mixes_applied_and_fenced_rows(graph: GraphStore) -> None:
    graph.project([mem("m1", 5)])
    result = graph.project([mem("m1", 4), mem("m2", 1)])
    assert result.applied == ["m2"] and result.fenced == ["m1"]


def test_applied_rows_come_in_id_order_fenced_in_batch_order(graph: GraphStore) -> None:
    graph.project([mem("m3", 5), mem("m1", 5)])
    result = graph.project([mem("m4", 1), mem("m3", 1), mem("m2", 1), mem("m1", 1)])
    assert result.applied == ["m2", "m4"]
    assert result.fenced == ["m3", "m1"]



def test_a_relation_listed_twice_is_written_twice(graph: GraphStore, tamper: Tamper) -> None:
    # Neither store deduplicates relation rows (CREATE in Cypher); build_projection does.
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("m1", 1, john, acme, relations=(rel(john, acme), rel(john, acme)))])
    assert tamper.edges() == [(john.key, acme.key, "knows", "m1", ALICE)] * 2
    assert graph.counts().relations == 2

# -- snapshot -----------------------------------------------------------------------------------


def test_snapshot_reports_owner_version_tombstone_and_keys(graph: GraphStore) -> None:
    john = ent(ALICE, "John")
    graph.project([mem("m1", 4, john), mem("m2", 2, deleted=True), mem("b1", 1, user=BOB)])
    assert graph.snapshot(["m1", "m2", "b1", "m1", "absent"]) == {
        "m1": GraphMemory("m1", ALICE, 4, False, frozenset({john.key})),
        "m2": GraphMemory("m2", ALICE, 2, True, frozenset()),
        "b1": GraphMemory("b1", BOB, 1, False, frozenset()),
    }
    assert graph.snapshot([]) == {}


# -- prune_tombstones ---------------------------------------------------------------------------


def test_prune_tombstones_removes_only_deleted_nodes(graph: GraphStore) -> None:
    graph.project([mem("m1", 1, ent(ALICE, "John")), mem("m2", 2, deleted=True),
                   mem("m3", 2, deleted=True)])
    assert graph.prune_tombstones(["m1", "m2", "absent", "m2"]) == 1
    assert set(graph.snapshot(["m1", "m2", "m3"])) == {"m1", "m3"}
    assert tally(graph) == (1, 1, 1, 1, 0)
    assert graph.prune_tombstones([]) == 0
    # The fence went with the tombstone: a late version is applied again (why pruning waits).
    assert graph.project([mem("m2", 1)]).applied == ["m2"]


# -- counts -------------------------------------------------------------------------------------


def test_counts_of_every_kind(graph: GraphStore) -> None:
    assert graph.counts() == GraphCounts(0, 0, 0, 0, 0)
    john, acme, sarah = ent(ALICE, "John"), ent(ALICE, "Acme", "organization"), ent(ALICE, "Sarah")
    graph.project([
        mem("m1", 1, john, acme, relations=(rel(john, acme), rel(acme, john, "employs"))),
        mem("m2", 1, john, sarah, relations=(rel(john, sarah),)),
        mem("m3", 3, deleted=True),
        mem("b1", 1, ent(BOB, "John"), user=BOB),
    ])
    assert graph.counts() == GraphCounts(memories=3, tombstones=1, entities=4, mentions=5,
                                         relations=3)


# -- memory_page --------------------------------------------------------------------------------


def test_memory_page_is_keyset_paged_in_id_order(graph: GraphStore) -> None:
    graph.project([mem("m3", 1), mem("b2", 2, user=BOB), mem("m1", 4, ent(ALICE, "John")),
                   mem("b1", 1, user=BOB), mem("m2", 2, deleted=True)])
    first = graph.memory_page("", 2)
    assert first == [GraphMemory("b1", BOB, 1, False), GraphMemory("b2", BOB, 2, False)]
    rest = graph.memory_page(first[-1].id, 10)
    assert [m.id for m in rest] == ["m1", "m2", "m3"]
    assert rest[0] == GraphMemory("m1", ALICE, 4, False)  # entity_keys left empty
    assert rest[1].deleted and rest[1].version == 2
    assert graph.memory_page("m3", 10) == []


def test_memory_page_of_one_user(graph: GraphStore) -> None:
    graph.project([mem("a1", 1), mem("b1", 1, user=BOB), mem("a2", 1), mem("b2", 1, user=BOB),
                   mem("a3", 1)])
    assert [m.id for m in graph.memory_page("", 10, BOB)] == ["b1", "b2"]
    assert [m.id for m in graph.memory_page("a1", 1, ALICE)] == ["a2"]
    assert graph.memory_page("", 10, CAROL) == []



def test_memory_page_compares_ids_by_code_point(graph: GraphStore) -> None:
    ids = ["m-1", "M1", "m1", "10", "9", "m10", "é1"]
    graph.project([mem(i, 1) for i in ids])
    assert [m.id for m in graph.memory_page("", 10)] == sorted(ids)
    assert [m.id for m in graph.memory_page("m1", 10)] == ["m10", "é1"]

# -- orphan_entities ----------------------------------------------------------------------------


def test_orphan_entities_are_those_nothing_mentions(graph: GraphStore, tamper: Tamper) -> None:
    graph.project([mem("m1", 1, ent(ALICE, "John")), mem("b1", 1, ent(BOB, "Eve"), user=BOB)])
    assert graph.orphan_entities(None, 10) == []
    tamper.entity("alice|person|ghost", ALICE)
    tamper.entity("alice|person|spook", ALICE)
    tamper.entity("bob|person|ghost", BOB)
    assert sorted(graph.orphan_entities(None, 10)) == [
        ("alice|person|ghost", ALICE), ("alice|person|spook", ALICE), ("bob|person|ghost", BOB)]
    assert graph.orphan_entities(BOB, 10) == [("bob|person|ghost", BOB)]
    assert graph.orphan_entities(CAROL, 10) == []
    limited = graph.orphan_entities(ALICE, 1)
    assert len(limited) == 1 and limited[0] in {("alice|person|ghost", ALICE),
                                                ("alice|person|spook", ALICE)}


# -- cross_user_edges ---------------------------------------------------------------------------


def test_a_clean_graph_has_no_cross_user_edges(graph: GraphStore) -> None:
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_john, b_acme = ent(BOB, "John"), ent(BOB, "Acme", "organization")
    graph.project([mem("a1", 1, a_john, a_acme, relations=(rel(a_john, a_acme),)),
                   mem("b1", 1, b_john, b_acme, relations=(rel(b_john, b_acme),), user=BOB)])
    assert graph.cross_user_edges(None, 10) == []
    assert graph.cross_user_edges(ALICE, 10) == []


def test_cross_user_mentions_are_found(graph: GraphStore) -> None:
    b_john = ent(BOB, "John")
    graph.project([mem("b1", 1, b_john, user=BOB)])
    graph.project([mem("a1", 1, ent(ALICE, "John"), b_john)])  # made through the interface
    expected = [{"memory_id": "a1", "user_id": ALICE, "other_user": BOB,
                 "detail": f"MENTIONS {b_john.key}"}]
    assert graph.cross_user_edges(None, 10) == expected
    assert graph.cross_user_edges(ALICE, 10) == expected
    assert graph.cross_user_edges(BOB, 10) == expected
    assert graph.cross_user_edges(CAROL, 10) == []


def test_cross_user_relations_are_found(graph: GraphStore, tamper: Tamper) -> None:
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_eve = ent(BOB, "Eve")
    graph.project([mem("a1", 1, a_john, a_acme), mem("b1", 1, b_eve, user=BOB)])
    tamper.relation(a_john.key, b_eve.key, "a1", ALICE)  # between two users' entities
    expected = [{"memory_id": "a1", "user_id": ALICE, "other_user": BOB,
                 "detail": f"RELATED {a_john.key}->{b_eve.key}"}]
    assert graph.cross_user_edges(None, 10) == expected
    assert graph.cross_user_edges(ALICE, 10) == expected
    assert graph.cross_user_edges(BOB, 10) == expected
    assert graph.cross_user_edges(CAROL, 10) == []


def test_a_relation_stamped_with_another_user_is_cross_user(graph: GraphStore,
                                                             tamper: Tamper) -> None:
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("a1", 1, a_john, a_acme), mem("b1", 1, ent(BOB, "Eve"), user=BOB)])
    tamper.relation(a_john.key, a_acme.key, "b1", BOB)  # Bob's memory between Alice's entities
    expected = [{"memory_id": "b1", "user_id": ALICE, "other_user": BOB,
                 "detail": f"RELATED {a_john.key}->{a_acme.key}"}]
    assert graph.cross_user_edges(None, 10) == expected
    assert graph.cross_user_edges(ALICE, 10) == expected
    assert graph.cross_user_edges(BOB, 10) == expected  # Bob's data is on that edge too
    assert graph.cross_user_edges(CAROL, 10) == []


def test_every_cross_user_edge_names_two_users(graph: GraphStore, tamper: Tamper) -> None:
    b_eve, a_john, a_acme = ent(BOB, "Eve"), ent(ALICE, "John"), ent(ALICE, "Acme")
    graph.project([mem("b1", 1, b_eve, user=BOB)])
    graph.project([mem("a1", 1, a_john, a_acme, b_eve)])
    tamper.relation(a_john.key, b_eve.key, "a1", ALICE)
    tamper.relation(b_eve.key, a_acme.key, "b1", BOB)
    tamper.relation(a_acme.key, a_john.key, "b1", BOB)
    found = graph.cross_user_edges(None, 10)
    assert len(found) == 4
    assert all({e["user_id"], e["other_user"]} == {ALICE, BOB} for e in found)
    assert {e["memory_id"] for e in found} == {"a1", "b1"}


def test_the_limit_bounds_each_kind_of_cross_user_edge(graph: GraphStore,
                                                       tamper: Tamper) -> None:
    b_eve, b_max = ent(BOB, "Eve"), ent(BOB, "Max")
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme")
    graph.project([mem("b1", 1, b_eve, b_max, user=BOB)])
    graph.project([mem("a1", 1, a_john, a_acme, b_eve, b_max)])
    tamper.relation(a_john.key, b_eve.key, "a1", ALICE)
    tamper.relation(a_acme.key, b_max.key, "a1", ALICE)
    assert len(graph.cross_user_edges(None, 10)) == 4
    limited = graph.cross_user_edges(None, 1)  # Neo4j: up to `limit` of each kind
    assert sorted(e["detail"].split()[0] for e in limited) == ["MENTIONS", "RELATED"]


# -- remove_memories ----------------------------------------------------------------------------


def test_remove_memories_takes_edges_and_new_orphans(graph: GraphStore, tamper: Tamper) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_eve, b_max = ent(BOB, "Eve"), ent(BOB, "Max")
    graph.project([mem("m1", 1, john, acme, relations=(rel(john, acme),)),
                   mem("m2", 1, john), mem("m3", 2, deleted=True),
                   mem("b1", 1, b_eve, b_max, relations=(rel(b_eve, b_max),), user=BOB)])
    tamper.relation(b_max.key, b_eve.key, "m1", ALICE)  # stamped with m1, between Bob's
    assert graph.remove_memories(["m1", "m3", "absent"]) == 3  # the ids it was given
    assert set(graph.snapshot(["m1", "m2", "m3", "b1"])) == {"m2", "b1"}
    assert graph.snapshot(["m2"])["m2"].entity_keys == {john.key}  # John stays, Acme went
    assert tamper.edges() == [(b_eve.key, b_max.key, "knows", "b1", BOB)]
    assert tally(graph) == (2, 0, 3, 3, 1)
    assert graph.remove_memories([]) == 0


# -- remove_orphan_entities ---------------------------------------------------------------------


def test_remove_orphan_entities_spares_mentioned_ones(graph: GraphStore, tamper: Tamper) -> None:
    john = ent(ALICE, "John")
    graph.project([mem("m1", 1, john)])
    tamper.entity("alice|person|ghost", ALICE)
    tamper.entity("bob|person|ghost", BOB)
    tamper.relation(john.key, "alice|person|ghost", "m1", ALICE)  # goes with the ghost
    assert graph.remove_orphan_entities(["alice|person|ghost", john.key, "absent",
                                         "alice|person|ghost"]) == 1
    assert graph.orphan_entities(None, 10) == [("bob|person|ghost", BOB)]
    assert graph.snapshot(["m1"])["m1"].entity_keys == {john.key}
    assert tamper.edges() == []
    assert tally(graph) == (1, 0, 2, 1, 0)
    assert graph.remove_orphan_entities([]) == 0


# -- remove_cross_user_edges --------------------------------------------------------------------


def test_remove_cross_user_edges_keeps_each_users_own(graph: GraphStore, tamper: Tamper) -> None:
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_eve, b_zed = ent(BOB, "Eve"), ent(BOB, "Zed")
    graph.project([mem("b1", 1, b_eve, b_zed, user=BOB)])
    graph.project([mem("a1", 1, a_john, a_acme, b_zed, relations=(rel(a_john, a_acme),))])
    graph.project([mem("b1", 2, b_eve, user=BOB)])  # Zed stays: a1 still mentions it
    tamper.relation(a_john.key, b_eve.key, "a1", ALICE)
    tamper.relation(b_eve.key, b_eve.key, "a1", ALICE)  # stamped with another user
    tamper.relation(a_acme.key, a_john.key, "b1", BOB)
    assert len(graph.cross_user_edges(None, 10)) == 4

    graph.remove_cross_user_edges()
    assert graph.cross_user_edges(None, 10) == []
    assert graph.snapshot(["a1"])["a1"].entity_keys == {a_john.key, a_acme.key}
    assert tamper.edges() == [(a_john.key, a_acme.key, "knows", "a1", ALICE)]
    # Entities the removal leaves unmentioned stay, as orphans for the next repair step.
    assert graph.orphan_entities(None, 10) == [(b_zed.key, BOB)]
    assert tally(graph) == (2, 0, 4, 3, 1)


# -- clear --------------------------------------------------------------------------------------


def test_clear_everything(graph: GraphStore, tamper: Tamper) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("m1", 1, john, acme, relations=(rel(john, acme),)),
                   mem("m2", 2, deleted=True), mem("b1", 1, ent(BOB, "Eve"), user=BOB)])
    tamper.entity("bob|person|ghost", BOB)
    graph.clear(None)
    assert graph.counts() == GraphCounts(0, 0, 0, 0, 0)
    assert graph.memory_page("", 10) == []
    # The fence went too: a rebuild projects from scratch.
    assert graph.project([mem("m2", 1)]).applied == ["m2"]


def test_clear_one_user_leaves_the_others(graph: GraphStore, tamper: Tamper) -> None:
    a_john, a_acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_eve, b_max = ent(BOB, "Eve"), ent(BOB, "Max")
    graph.project([mem("a1", 1, a_john, a_acme, relations=(rel(a_john, a_acme),)),
                   mem("a2", 2, deleted=True)])
    graph.project([mem("b1", 1, b_eve, b_max, a_john, relations=(rel(b_eve, b_max),),
                       user=BOB)])  # Bob's memory mentions Alice's John (crossing)
    tamper.relation(b_max.key, a_acme.key, "b1", BOB)
    graph.clear(ALICE)
    assert graph.memory_page("", 10) == [GraphMemory("b1", BOB, 1, False)]
    assert graph.snapshot(["b1"])["b1"].entity_keys == {b_eve.key, b_max.key}
    assert tamper.edges() == [(b_eve.key, b_max.key, "knows", "b1", BOB)]
    assert graph.cross_user_edges(None, 10) == []
    assert graph.user_graph(BOB, 10) == [("b1", 1, ["person: Eve", "person: Max"])]
    assert tally(graph) == (1, 0, 2, 2, 1)


# -- user_graph ---------------------------------------------------------------------------------


def test_user_graph_lists_live_memories_by_id(graph: GraphStore) -> None:
    graph.project([
        mem("m3", 1),
        mem("m2", 5, ent(ALICE, "Zed"), ent(ALICE, "Acme", "organization"), ent(ALICE, "Amy"),
            ent(ALICE, "bea"), ent(ALICE, "2024-01-01", "date")),
        mem("m1", 1, ent(ALICE, "John")),
        mem("m0", 2, deleted=True),
        mem("b1", 1, ent(BOB, "Eve"), user=BOB),
    ])
    assert graph.user_graph(ALICE, 10) == [
        ("m1", 1, ["person: John"]),
        ("m2", 5, ["date: 2024-01-01", "organization: Acme", "person: Amy", "person: Zed",
                   "person: bea"]),  # by type, then name, in code point order
        ("m3", 1, []),
    ]
    assert [m for m, _, _ in graph.user_graph(ALICE, 2)] == ["m1", "m2"]
    assert graph.user_graph(BOB, 10) == [("b1", 1, ["person: Eve"])]
    assert graph.user_graph(CAROL, 10) == []


# -- neighbourhood ------------------------------------------------------------------------------


def test_neighbourhood_is_the_memorys_entities_and_one_related_hop(graph: GraphStore) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    berlin, zed = ent(ALICE, "Berlin", "place"), ent(ALICE, "Zed")
    graph.project([
        mem("m1", 1, john, acme, relations=(rel(john, acme, "works_at"),)),
        mem("m2", 1, acme, berlin, relations=(rel(acme, berlin, "located_in"),)),
        mem("m3", 1, berlin, zed, relations=(rel(zed, berlin, "lives_in"),)),  # two hops away
    ])
    assert graph.neighbourhood(ALICE, "m1", 10) == Neighbourhood(
        "m1", entities=(acme, john), neighbours=(berlin,),
        relations=(RelationRow(acme.key, berlin.key, "located_in"),
                   RelationRow(john.key, acme.key, "works_at")))
    # Edges are followed both ways: Zed is reached from Berlin against the arrow.
    around = graph.neighbourhood(ALICE, "m2", 10)
    assert around is not None
    assert around.neighbours == (john, zed)
    assert RelationRow(zed.key, berlin.key, "lives_in") in around.relations
    assert graph.neighbourhood(ALICE, "m4", 10) is None  # not in the graph
    graph.project([mem("m4", 1)])
    assert graph.neighbourhood(ALICE, "m4", 10) == Neighbourhood("m4")


def test_neighbourhood_keeps_the_first_neighbours_by_key_and_their_edges(
        graph: GraphStore) -> None:
    hub = ent(ALICE, "Hub")
    spokes = [ent(ALICE, f"Spoke{i}") for i in range(5)]
    graph.project([mem("m1", 1, hub),
                   mem("m2", 1, hub, *spokes, relations=tuple(rel(hub, s) for s in spokes))])
    first = graph.neighbourhood(ALICE, "m1", 2)
    assert first is not None
    assert first.neighbours == tuple(sorted(spokes, key=lambda e: e.key)[:2])
    assert {r.target for r in first.relations} == {e.key for e in first.neighbours}


def test_neighbourhood_never_crosses_users_or_shows_a_tombstone(graph: GraphStore,
                                                                tamper: Tamper) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    b_eve = ent(BOB, "Eve")
    graph.project([mem("a1", 1, john, acme, relations=(rel(john, acme),)),
                   mem("b1", 1, b_eve, user=BOB), mem("a2", 2, deleted=True)])
    tamper.relation(john.key, b_eve.key, "a1", ALICE)  # onto Bob's entity
    tamper.relation(acme.key, john.key, "b1", BOB, "spies_on")  # stamped with Bob
    assert graph.neighbourhood(ALICE, "a1", 10) == Neighbourhood(
        "a1", entities=(acme, john), relations=(RelationRow(john.key, acme.key, "knows"),))
    assert graph.neighbourhood(BOB, "a1", 10) is None  # another user's memory: as missing
    assert graph.neighbourhood(ALICE, "b1", 10) is None
    assert graph.neighbourhood(ALICE, "a2", 10) is None  # a tombstone


def test_neighbourhood_lists_an_edge_written_twice_once(graph: GraphStore, tamper: Tamper
                                                        ) -> None:
    john, acme = ent(ALICE, "John"), ent(ALICE, "Acme", "organization")
    graph.project([mem("a1", 1, john, acme, relations=(rel(john, acme), rel(john, acme)))])
    tamper.relation(john.key, acme.key, "a9", ALICE)  # the same edge from another memory
    found = graph.neighbourhood(ALICE, "a1", 10)
    assert found is not None and found.relations == (RelationRow(john.key, acme.key, "knows"),)


# -- ping and close -----------------------------------------------------------------------------


def test_ping_answers(graph: GraphStore) -> None:
    assert graph.ping() is None


def test_a_closed_store_is_unavailable(graph: GraphStore) -> None:
    graph.project([mem("m1", 1)])
    graph.close()
    with pytest.raises(GraphUnavailable):
        graph.ping()
    with pytest.raises(GraphUnavailable):
        graph.counts()
    with pytest.raises(GraphUnavailable):
        graph.project([mem("m1", 2)])
    # Calls with nothing to do never reach the store.
    assert graph.project([]) == ProjectResult()
    assert graph.prune_tombstones([]) == 0
    assert graph.remove_memories([]) == 0
    assert graph.remove_orphan_entities([]) == 0
    graph.close()  # closing twice is harmless


def test_a_fake_that_is_down_raises_graph_unavailable_everywhere() -> None:
    fake = FakeGraph()
    fake.project([mem("m1", 1, ent(ALICE, "John"))])
    fake.available = False
    calls: dict[str, Any] = {
        "ensure_schema": lambda: fake.ensure_schema(),
        "project": lambda: fake.project([mem("m1", 2)]),
        "snapshot": lambda: fake.snapshot(["m1"]),
        "prune_tombstones": lambda: fake.prune_tombstones(["m1"]),
        "counts": lambda: fake.counts(),
        "memory_page": lambda: fake.memory_page("", 10),
        "orphan_entities": lambda: fake.orphan_entities(None, 10),
        "cross_user_edges": lambda: fake.cross_user_edges(None, 10),
        "remove_memories": lambda: fake.remove_memories(["m1"]),
        "remove_orphan_entities": lambda: fake.remove_orphan_entities(["k"]),
        "remove_cross_user_edges": lambda: fake.remove_cross_user_edges(),
        "clear": lambda: fake.clear(None),
        "user_graph": lambda: fake.user_graph(ALICE, 10),
        "related": lambda: fake.related(ALICE, ["m1"], 5),
        "entity_mentions": lambda: fake.entity_mentions(ALICE, None, None, 5),
        "entity_memories": lambda: fake.entity_memories(ALICE, "k", 5),
        "entity_neighbourhood": lambda: fake.entity_neighbourhood(ALICE, "k", 5),
        "neighbourhood": lambda: fake.neighbourhood(ALICE, "m1", 10),
        "ping": lambda: fake.ping(),
    }
    assert set(calls) | {"close"} == set(interface_methods())
    for call in calls.values():
        with pytest.raises(GraphUnavailable):
            call()
    fake.available = True
    assert fake.snapshot(["m1"])["m1"].version == 1  # nothing changed while down


# -- reads for retrieval ---------------------------------------------------------------------


def mem_i(id_: str, version: int, importance: int, *entities: EntityRow, user: str = ALICE,
          relations: tuple[RelationRow, ...] = ()) -> MemoryProjection:
    """A projection row with an importance."""
    return MemoryProjection(id=id_, user_id=user, version=version, deleted=False,
                            importance=importance, entities=entities, relations=relations)


def test_related_ranks_by_shared_entities_then_importance_and_stays_in_the_user(
        graph: GraphStore) -> None:
    john, sarah, acme = ent(ALICE, "John"), ent(ALICE, "Sarah"), ent(ALICE, "Acme", "org")
    graph.project([
        mem_i("m1", 3, 5, john, sarah, acme),
        mem_i("m2", 1, 2, john, sarah),          # two shared
        mem_i("m3", 1, 9, john),                  # one shared, important
        mem_i("m4", 1, 1, acme),                  # one shared, unimportant
        mem_i("m5", 1, 9, ent(ALICE, "Other")),   # nothing shared
        mem_i("m6", 2, 9, john), mem_i("b1", 1, 9, ent(BOB, "John"), user=BOB),
    ])
    graph.project([mem("m6", 3, deleted=True)])  # deleted: never related
    found = graph.related(ALICE, ["m1", "m5", "b1", "nope"], 10)
    assert set(found) == {"m1", "m5"}  # bob's memory and unknown ids are absent
    assert (found["m1"].version, found["m1"].deleted) == (3, False)
    assert [r.id for r in found["m1"].related] == ["m2", "m3", "m4"]
    assert [e.key for e in found["m1"].related[0].shared] == sorted([john.key, sarah.key])
    assert found["m1"].related[1].importance == 9
    assert found["m5"].related == ()
    assert [r.id for r in graph.related(ALICE, ["m1"], 1)["m1"].related] == ["m2"]
    assert graph.related(BOB, ["m1"], 10) == {}
    assert graph.related(ALICE, [], 10) == {}


def test_entity_mentions_count_live_memories_and_filter(graph: GraphStore) -> None:
    john, jo, acme = ent(ALICE, "John"), ent(ALICE, "Joanna"), ent(ALICE, "Acme", "org")
    graph.project([mem_i("m1", 1, 5, john, acme), mem_i("m2", 1, 5, john, jo),
                   mem_i("m3", 1, 5, jo), mem_i("m4", 1, 5, acme),
                   mem_i("b1", 1, 5, ent(BOB, "John"), user=BOB)])
    graph.project([mem("m4", 2, deleted=True)])
    found = graph.entity_mentions(ALICE, None, None, 10)
    assert [(m.entity.key, m.mentions) for m in found] == [
        (jo.key, 2), (john.key, 2), (acme.key, 1)]  # most mentioned, then by name
    assert [m.entity.name for m in graph.entity_mentions(ALICE, "JO", None, 10)] == [
        "Joanna", "John"]
    assert [m.entity.name for m in graph.entity_mentions(ALICE, None, "org", 10)] == ["Acme"]
    assert len(graph.entity_mentions(ALICE, None, None, 1)) == 1
    assert [m.entity.key for m in graph.entity_mentions(BOB, None, None, 10)] == [
        ent(BOB, "John").key]


def test_entity_memories_are_the_users_live_ones_most_important_first(
        graph: GraphStore) -> None:
    john = ent(ALICE, "John")
    graph.project([mem_i("m1", 1, 2, john), mem_i("m2", 1, 8, john), mem_i("m3", 1, 8, john),
                   mem_i("m4", 1, 9, john), mem_i("b1", 1, 9, ent(BOB, "John"), user=BOB)])
    graph.project([mem("m4", 2, deleted=True)])
    assert graph.entity_memories(ALICE, john.key, 10) == ["m2", "m3", "m1"]
    assert graph.entity_memories(ALICE, john.key, 1) == ["m2"]
    assert graph.entity_memories(BOB, john.key, 10) == []  # not bob's entity
    assert graph.entity_memories(ALICE, ent(BOB, "John").key, 10) == []


def test_entity_neighbourhood_follows_related_edges_both_ways(graph: GraphStore) -> None:
    john, sarah, acme = ent(ALICE, "John"), ent(ALICE, "Sarah"), ent(ALICE, "Acme", "org")
    graph.project([
        mem_i("m1", 1, 5, john, acme, relations=(rel(john, acme, "works_at"),)),
        mem_i("m2", 1, 5, john, acme, relations=(rel(john, acme, "works_at"),)),
        mem_i("m3", 1, 5, sarah, john, relations=(rel(sarah, john, "met"),)),
        mem_i("b1", 1, 5, ent(BOB, "John"), ent(BOB, "Acme", "org"), user=BOB,
              relations=(rel(ent(BOB, "John"), ent(BOB, "Acme", "org"), "works_at"),)),
    ])
    links = graph.entity_neighbourhood(ALICE, john.key, 10)
    assert [(link.entity.key, link.predicate, link.memories) for link in links] == [
        (acme.key, "works_at", 2), (sarah.key, "met", 1)]
    assert graph.entity_neighbourhood(ALICE, john.key, 1)[0].entity.name == "Acme"
    assert graph.entity_neighbourhood(BOB, john.key, 10) == []


# -- FailingGraph -------------------------------------------------------------------------------


def interface_methods() -> list[str]:
    """The 20 method names of the GraphStore protocol."""
    return sorted(n for n, v in vars(GraphStore).items()
                  if callable(v) and not n.startswith("_"))


class Spy:
    """A stand-in store that records every call and answers with a marker."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any) -> Any:
            self.calls.append((name, args))
            return f"{name}-answer"
        return method


ARGS: dict[str, tuple[Any, ...]] = {
    "ensure_schema": (),
    "project": ([mem("m1", 1)],),
    "snapshot": (["m1"],),
    "prune_tombstones": (["m1"],),
    "counts": (),
    "memory_page": ("m0", 7, BOB),
    "orphan_entities": (ALICE, 3),
    "cross_user_edges": (None, 4),
    "remove_memories": (["m1", "m2"],),
    "remove_orphan_entities": (["k1"],),
    "remove_cross_user_edges": (),
    "clear": (BOB,),
    "user_graph": (ALICE, 9),
    "related": (ALICE, ["m1"], 4),
    "entity_mentions": (ALICE, "jo", "person", 6),
    "entity_memories": (ALICE, "k1", 7),
    "entity_neighbourhood": (ALICE, "k1", 8),
    "neighbourhood": (ALICE, "m1", 8),
    "ping": (),
    "close": (),
}


def test_the_suite_knows_every_interface_method() -> None:
    methods = interface_methods()
    assert len(methods) == 20 and set(ARGS) == set(methods)
    source = inspect.getsource(sys.modules[__name__])
    untested = [m for m in methods if f"graph.{m}(" not in source]
    assert untested == []


@pytest.mark.parametrize("name", sorted(ARGS))
def test_failing_graph_delegates_every_method(name: str) -> None:
    spy = Spy()
    wrapper = FailingGraph(cast(GraphStore, spy), lambda _: None)
    answer = getattr(wrapper, name)(*ARGS[name])
    assert spy.calls == [(name, ARGS[name])]
    returns_none = inspect.signature(getattr(GraphStore, name)).return_annotation == "None"
    assert answer == (None if returns_none else f"{name}-answer")


def test_failing_graph_raises_what_fail_decides_instead_of_projecting() -> None:
    inner = FakeGraph()
    seen: list[list[MemoryProjection]] = []

    def fail(batch: list[MemoryProjection]) -> Exception | None:
        seen.append(batch)
        return GraphError("poison") if any(p.id == "bad" for p in batch) else None

    wrapper = FailingGraph(inner, fail)
    with pytest.raises(GraphError, match="poison"):
        wrapper.project([mem("ok", 1), mem("bad", 1)])
    assert inner.snapshot(["ok", "bad"]) == {}  # nothing reached the store
    assert wrapper.project([mem("ok", 1)]).applied == ["ok"]
    assert [[p.id for p in b] for b in seen] == [["ok", "bad"], ["ok"]]
