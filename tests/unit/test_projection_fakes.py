"""Projection and repair over fakes: fencing, batch splitting and repair order, no servers.

The Projector and Consistency.repair run against ``FakeGraph`` (held to Neo4j by the conformance
suite) and small in-test stand-ins for the outbox and the database.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest

from app.consistency import Consistency, Finding
from app.db.connector import Database
from app.domain import Entity, Extraction, MemoryState, Relation, content_hash, entity_key
from app.errors import GraphConflict, GraphError
from app.graph.base import EntityRow, GraphStore, MemoryProjection
from app.outbox import Failed, Outbox, WorkItem
from app.projector import Projector
from app.settings import Settings
from app.testing import FailingGraph, FakeGraph

ALICE, BOB = "alice", "bob"
Journal = list[tuple[str, str, Any]]  # (who, what, arguments) in call order


class WordsExtractor:
    """Capitalised words are people, related in pairs; counts its calls."""

    identity = "test-words/1"

    def __init__(self) -> None:
        self.calls = 0

    def extract(self, text: str) -> Extraction:
        """The capitalised words of ``text`` as people."""
        self.calls += 1
        people = [Entity(name=n, type="person")
                  for n in dict.fromkeys(re.findall(r"\b[A-Z][a-z]+\b", text))]
        return Extraction(entities=people, relations=[
            Relation(source=a, target=b, predicate="met") for a, b in itertools.pairwise(people)])


class FakeTx:
    """A transaction that journals each statement; answers ``queue_resync`` with its ids."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def execute_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        """Journal a statement run once per parameter set."""
        self.journal.append(("tx", name, list(params)))

    def all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Journal a query; ``queue_resync`` returns a row per id, as the real one does."""
        self.journal.append(("tx", name, params))
        ids = (params or {}).get("ids", [])
        return [{"id": i} for i in ids] if name == "queue_resync" else []

    def execute(self, name: str, params: dict[str, Any] | None = None) -> int:
        """Journal a statement."""
        self.journal.append(("tx", name, params))
        return 0


class FakeDb:
    """The database calls projection and repair make, journalled; knows some memory ids."""

    def __init__(self, journal: Journal, known: Sequence[uuid.UUID] = ()) -> None:
        self.journal = journal
        self.known = {str(i) for i in known}

    @contextmanager
    def transaction(self) -> Iterator[FakeTx]:
        """A journalled transaction."""
        yield FakeTx(self.journal)

    def all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Journal a query; ``memories_known`` answers with the ids Postgres has."""
        self.journal.append(("db", name, params))
        if name == "memories_known":
            return [{"id": uuid.UUID(i)} for i in (params or {})["ids"] if i in self.known]
        return []

    def execute(self, name: str, params: dict[str, Any] | None = None) -> int:
        """Journal a statement."""
        self.journal.append(("db", name, params))
        return 0


class FakeOutbox:
    """The outbox methods the Projector uses, over rows held in memory."""

    def __init__(self, items: Sequence[WorkItem]) -> None:
        # A row names the version its memory had when it was read (state.version).
        self.items = {i.outbox_id: i for i in items}
        self.status = dict.fromkeys(self.items, "pending")
        self.done: list[list[tuple[str, int]]] = []
        self.failures: list[tuple[list[int], str, bool]] = []
        self.released: list[tuple[list[int], str, str | None, bool]] = []
        self.open_breakers: set[str] = set()
        self.delays: list[float] = []

    def work(self, outbox_ids: Sequence[int]) -> list[WorkItem]:
        """The pending rows among these."""
        return [self.items[i] for i in dict.fromkeys(outbox_ids)
                if self.status.get(i) == "pending"]

    def mark_done(self, projected: Sequence[tuple[str, int]]) -> None:
        """Every pending row of these memories up to the version is done."""
        self.done.append(list(projected))
        for memory_id, version in projected:
            for oid, item in self.items.items():
                if (str(item.memory_id) == memory_id and item.state.version <= version
                        and self.status[oid] == "pending"):
                    self.status[oid] = "done"

    def record_failure(self, items: Sequence[WorkItem], error: str, *,
                       permanent: bool = False) -> Failed:
        """Record the attempt; the rows stay pending (none goes dead here)."""
        self.failures.append(([i.outbox_id for i in items], error, permanent))
        return Failed([i.outbox_id for i in items], [])

    def release(self, items: Sequence[WorkItem], error: str, *, breaker: str | None,
                delay: float = 0.0) -> bool:
        """Record rows sent back without an attempt; held while ``open_breakers`` has it."""
        held = breaker in self.open_breakers
        self.released.append(([i.outbox_id for i in items], error, breaker, held))
        self.delays.append(delay)
        return held


_ids = itertools.count(1)


def state(memory: uuid.UUID, version: int, content: str = "", *, user: str = ALICE,
          deleted: bool = False) -> MemoryState:
    """A memory as Postgres had it when a worker read it (no cached extraction)."""
    return MemoryState(id=memory, user_id=user, version=version, deleted=deleted,
                       content=content, content_hash=content_hash(content))


def row(memory_state: MemoryState, event: str = "upsert", attempts: int = 0) -> WorkItem:
    """An outbox row carrying a memory's state."""
    return WorkItem(next(_ids), memory_state.id, memory_state.user_id, cast(Any, event),
                    attempts, memory_state)


def person(name: str, user: str = ALICE) -> str:
    """The entity key of a person."""
    return entity_key(user, "person", name)


def projector_over(graph: GraphStore, outbox: FakeOutbox, journal: Journal) -> Projector:
    """A Projector over ``graph``, ``outbox`` and a FakeDb writing to ``journal``."""
    return Projector(cast(Database, FakeDb(journal)), cast(Outbox, outbox), graph,
                     WordsExtractor())


def racing(graph: GraphStore, other: Callable[[], object]) -> FailingGraph:
    """``graph``, on which ``other`` runs once just before the first batch is written."""
    waiting = [other]

    def interleave(_: list[MemoryProjection]) -> Exception | None:
        while waiting:
            waiting.pop()()
        return None
    return FailingGraph(graph, interleave)


# -- (a) fencing through the Projector -------------------------------------------------------


def test_a_late_older_version_is_fenced_and_its_row_still_done() -> None:
    m = uuid.uuid4()
    stale, fresh = row(state(m, 1, "John met Sarah")), row(state(m, 2, "Sarah met Acme"))
    graph, outbox, journal = FakeGraph(), FakeOutbox([stale, fresh]), []
    other = projector_over(graph, outbox, journal)
    # This worker read version 1; another one projects version 2 before it writes.
    late_worker = projector_over(racing(graph, lambda: other.process([fresh.outbox_id])),
                                 outbox, journal)

    late = late_worker.process([stale.outbox_id])
    assert (late.done, late.fenced, late.failed) == (1, 1, 0)
    assert outbox.done == [[(str(m), 2)], [(str(m), 1)]]  # the other's, then the late one's
    assert outbox.failures == []
    assert outbox.status == {stale.outbox_id: "done", fresh.outbox_id: "done"}
    snap = graph.snapshot([str(m)])[str(m)]
    assert snap.version == 2 and snap.entity_keys == {person("Sarah"), person("Acme")}
    assert graph.counts().entities == 2  # John never came back
    saved = [call for call in journal if call[1] == "save_extraction"]
    assert len(saved) == 2  # each fresh extraction cached, fenced or not


def test_duplicate_deliveries_change_nothing() -> None:
    m = uuid.uuid4()
    first, dup1, dup2 = (row(state(m, 1, "John met Sarah")) for _ in range(3))
    graph, outbox = FakeGraph(), FakeOutbox([first])
    projector = projector_over(graph, outbox, [])
    assert projector.process([first.outbox_id]).done == 1
    before = (graph.counts(), graph.snapshot([str(m)]))

    redelivered = FakeOutbox([dup1, dup2])  # the same event sent again (at least once)
    again = projector_over(graph, redelivered, []).process(
        [dup1.outbox_id, dup2.outbox_id, dup1.outbox_id])
    assert (again.done, again.fenced, again.failed) == (2, 1, 0)  # one memory, two rows
    assert (graph.counts(), graph.snapshot([str(m)])) == before
    assert set(redelivered.status.values()) == {"done"}
    assert projector.process([first.outbox_id]).skipped == 1  # already done


def test_a_deletes_tombstone_fences_a_late_upsert() -> None:
    m = uuid.uuid4()
    upsert, delete = row(state(m, 1, "John met Sarah")), row(state(m, 2, deleted=True))
    graph, outbox, journal = FakeGraph(), FakeOutbox([upsert, delete]), []
    deleter = projector_over(graph, outbox, journal)
    late_worker = projector_over(racing(graph, lambda: deleter.process([delete.outbox_id])),
                                 outbox, journal)

    late = late_worker.process([upsert.outbox_id])
    assert (late.done, late.fenced, late.failed) == (1, 1, 0)
    assert outbox.done == [[(str(m), 2)], [(str(m), 1)]]
    snap = graph.snapshot([str(m)])[str(m)]
    assert snap.deleted and snap.version == 2 and snap.entity_keys == frozenset()
    counts = graph.counts()
    assert (counts.memories, counts.tombstones, counts.entities) == (0, 1, 0)
    assert set(outbox.status.values()) == {"done"}


def test_a_resync_reprojects_at_the_same_version() -> None:
    m, b = uuid.uuid4(), uuid.uuid4()
    upsert = row(state(m, 3, "John met Sarah"))
    resync = row(state(m, 3, "John met Sarah"), "resync")
    bobs = row(state(b, 1, "Eve", user=BOB))
    graph, outbox = FakeGraph(), FakeOutbox([upsert, bobs])
    projector_over(graph, outbox, []).process([upsert.outbox_id, bobs.outbox_id])
    graph.memories[str(m)].mentions.add(person("Eve", BOB))  # tampered: crosses users
    assert graph.cross_user_edges(None, 10) != []

    outcome = projector_over(graph, FakeOutbox([resync]), []).process([resync.outbox_id])
    assert (outcome.done, outcome.fenced) == (1, 0)
    assert graph.cross_user_edges(None, 10) == []
    assert graph.snapshot([str(m)])[str(m)].entity_keys == {person("John"), person("Sarah")}


# -- (b) batch splitting --------------------------------------------------------------------


def poison_graph(inner: FakeGraph, poison: uuid.UUID, error: GraphError,
                 batches: list[list[str]]) -> FailingGraph:
    """Fails every batch holding ``poison`` with ``error``; records each batch's ids."""
    def fail(batch: list[MemoryProjection]) -> Exception | None:
        ids = [p.id for p in batch]
        batches.append(ids)
        return error if str(poison) in ids else None
    return FailingGraph(inner, fail)


def test_a_permanent_error_splits_the_batch_and_fails_only_the_poison() -> None:
    good = [uuid.uuid4() for _ in range(3)]
    poison = uuid.uuid4()
    items = [row(state(m, 1, f"Memo {i} about John")) for i, m in enumerate(good)]
    poison_rows = [row(state(poison, 1, "Bad Memo")), row(state(poison, 1, "Bad Memo"))]
    inner, batches = FakeGraph(), list[list[str]]()
    graph = poison_graph(inner, poison, GraphError("constraint violated"), batches)
    outbox = FakeOutbox([*items, *poison_rows])
    projector = projector_over(graph, outbox, [])

    outcome = projector.process([i.outbox_id for i in [*items[:2], *poison_rows, items[2]]])
    assert (outcome.done, outcome.failed, outcome.dead) == (3, 2, 0)
    assert len(batches) == 5 and len(batches[0]) == 4  # the batch, then one by one
    assert sorted(b[0] for b in batches[1:]) == sorted(str(m) for m in [*good, poison])
    assert outbox.failures == [([r.outbox_id for r in poison_rows],
                                "GraphError: constraint violated", False)]
    assert sorted(inner.snapshot([str(m) for m in [*good, poison]])) == sorted(
        str(m) for m in good)
    assert [outbox.status[r.outbox_id] for r in poison_rows] == ["pending", "pending"]
    assert all(outbox.status[i.outbox_id] == "done" for i in items)


def test_a_retryable_error_fails_the_whole_batch_without_splitting() -> None:
    memories = [uuid.uuid4() for _ in range(3)]
    items = [row(state(m, 1, "John met Sarah")) for m in memories]
    inner, batches = FakeGraph(), list[list[str]]()
    graph = poison_graph(inner, memories[1], GraphConflict("deadlock detected"), batches)
    outbox = FakeOutbox(items)
    projector = projector_over(graph, outbox, [])

    outcome = projector.process([i.outbox_id for i in items])
    assert (outcome.done, outcome.failed) == (0, 3)
    assert len(batches) == 1
    assert outbox.failures == [([i.outbox_id for i in items],
                                "GraphConflict: deadlock detected", False)]
    assert outbox.done == []
    assert inner.counts().memories == 0


# -- (c) repair order -----------------------------------------------------------------------


class Recording:
    """Wraps a store; journals each interface call before making it."""

    def __init__(self, inner: GraphStore, journal: Journal) -> None:
        self.inner = inner
        self.journal = journal

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any) -> Any:
            self.journal.append(("graph", name, args))
            return method(*args)
        return call


@dataclass
class World:
    """A tampered fake graph, the findings a check reported on it, and what Postgres has."""

    graph: FakeGraph
    findings: list[Finding]
    postgres: list[uuid.UUID]
    known: str  # in both, with a crossing mention
    stale: str  # in both
    unknown: str  # a UUID only the graph has


@pytest.fixture
def world() -> World:
    """A graph with a crossing mention, memories Postgres never had and an orphan entity."""
    known, stale, unknown, bobs = (uuid.uuid4() for _ in range(4))
    graph = FakeGraph()
    graph.project([build(bobs, BOB, "Eve")])
    graph.project([build(known, ALICE, "John"), build(stale, ALICE, "Sarah"),
                   build(unknown, ALICE, "Max")])
    graph.memories[str(known)].mentions.add(person("Eve", BOB))
    graph.project([MemoryProjection("ghost-1", ALICE, 1, False)])
    graph.entities[person("Ghost")] = {"user_id": ALICE, "name": "Ghost", "type": "person"}
    findings = [
        Finding("cross_user", ALICE, str(known), f"MENTIONS {person('Eve', BOB)}",
                {"other_user": BOB}),
        Finding("orphan_memory", ALICE, "ghost-1",
                details={"reason": "not in Postgres", "graph_id": "ghost-1"}),
        Finding("orphan_entity", ALICE, None, person("Ghost")),
        Finding("stale_version", ALICE, str(stale)),
        Finding("stale_version", ALICE, str(unknown)),  # the graph's, Postgres lacks it
    ]
    return World(graph, findings, [known, stale, bobs], str(known), str(stale), str(unknown))


def build(memory: uuid.UUID, user: str, *names: str) -> MemoryProjection:
    """A projection of a memory mentioning people."""
    return MemoryProjection(str(memory), user, 1, False, entities=tuple(
        EntityRow(person(n, user), n, "person") for n in names))


def repair_over(world: World, journal: Journal) -> Consistency:
    """Consistency over the recorded fake graph, a FakeDb and the real Outbox on it."""
    db = cast(Database, FakeDb(journal, world.postgres))
    settings = Settings(_env_file=None)
    graph = cast(GraphStore, Recording(world.graph, journal))
    return Consistency(settings, db, Outbox(settings, db), graph)


def test_repair_removes_from_the_graph_before_queueing_resyncs(world: World) -> None:
    journal: Journal = []
    report = repair_over(world, journal).repair(world.findings)

    known, stale, unknown = world.known, world.stale, world.unknown
    assert [(who, what) for who, what, _ in journal] == [
        ("db", "memories_known"),
        ("graph", "remove_cross_user_edges"),
        ("graph", "remove_memories"),
        ("graph", "remove_orphan_entities"),
        ("tx", "queue_resync"),
        ("tx", "notify_outbox"),
        ("db", "resolve_fingerprints"),
    ]
    calls = {what: args for _, what, args in journal}
    assert calls["remove_memories"] == (sorted(["ghost-1", unknown]),)
    assert calls["remove_orphan_entities"] == ([person("Ghost")],)
    assert calls["queue_resync"] == {"ids": sorted([known, stale])}  # only what Postgres has
    assert calls["resolve_fingerprints"] == {"fingerprints": [
        "orphan_memory|ghost-1|", f"orphan_entity||{person('Ghost')}"]}
    assert (report.queued, report.removed_memories, report.removed_entities,
            report.removed_cross_user_edges) == (2, 2, 1, True)

    graph = world.graph
    assert graph.cross_user_edges(None, 10) == []
    assert set(graph.snapshot(["ghost-1", unknown, known, stale])) == {known, stale}
    assert graph.orphan_entities(None, 10) == []  # the ghost, and Max with his memory


def test_a_dry_run_repair_touches_nothing(world: World) -> None:
    journal: Journal = []
    before = world.graph.counts()
    report = repair_over(world, journal).repair(world.findings, dry_run=True)
    assert [(who, what) for who, what, _ in journal] == [("db", "memories_known")]
    assert (report.queued, report.removed_memories, report.removed_entities,
            report.removed_cross_user_edges, report.dry_run) == (2, 2, 1, True, True)
    assert world.graph.counts() == before
