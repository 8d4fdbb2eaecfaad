"""The write path (MemoryService) on the real Postgres: atomic memory + outbox, versions, reads."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text

from app.db.connector import Database
from app.domain import Memory
from app.embeddings import HashingEmbedder
from app.errors import NotFound, ValidationError, VersionConflict
from app.outbox import Outbox
from app.retrieval import Retrieval
from app.settings import Settings
from app.store import MemoryService, NewMemory
from app.testing import FakeGraph
from devtools.localservers import free_port

pytestmark = pytest.mark.servers


class Injected(Exception):
    """A failure the test put between the memory write and the outbox write."""


def outbox(db: Database, memory_id: uuid.UUID | None = None) -> list[tuple[int, str]]:
    """(memory_version, event_type) of the outbox rows, oldest first."""
    where = "memory_id = :id" if memory_id else "true"
    with db.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT memory_version, event_type FROM outbox WHERE {where}"
                                 " ORDER BY id"), {"id": memory_id}).all()
    return [(int(r[0]), str(r[1])) for r in rows]


def memory_rows(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, content, importance, version, deleted_at"
                                 " FROM memories ORDER BY created_at, id")).all()
    return [dict(r._mapping) for r in rows]


def fail_on_call(n: int) -> Callable[[Connection], None]:
    """A before_outbox hook that raises on its n-th call (1-based)."""
    calls = 0

    def hook(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            raise Injected(f"injected failure before outbox write #{n}")

    return hook


# -- atomicity --------------------------------------------------------------------------------


def test_failure_between_memory_and_outbox_leaves_neither(service: MemoryService,
                                                          db: Database) -> None:
    service.before_outbox = fail_on_call(1)
    with pytest.raises(Injected):
        service.store("alice", "never half-written", {"k": "v"}, 6)
    assert memory_rows(db) == []
    assert outbox(db) == []


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_failed_change_keeps_the_previous_state(service: MemoryService, db: Database,
                                                operation: str) -> None:
    memory, _ = service.store("alice", "the original", importance=3)
    before = memory_rows(db)
    change: Callable[[], object] = {
        "update": lambda: service.update("alice", memory.id, content="changed", importance=9),
        "delete": lambda: service.delete("alice", memory.id),
    }[operation]
    service.before_outbox = fail_on_call(1)
    with pytest.raises(Injected):
        change()
    assert memory_rows(db) == before
    assert outbox(db) == [(1, "upsert")]
    assert Memory(**service.get("alice", memory.id).model_dump(exclude={"graph"})) == memory


def test_store_many_is_all_or_nothing(service: MemoryService, db: Database) -> None:
    items = [NewMemory(f"memory {i}") for i in range(4)]
    service.before_outbox = fail_on_call(3)  # the third memory's event fails
    with pytest.raises(Injected):
        service.store_many("alice", items)
    assert memory_rows(db) == []
    assert outbox(db) == []

    service.before_outbox = None
    with pytest.raises(ValidationError) as invalid:
        service.store_many("alice", [NewMemory("fine"), NewMemory("  "), NewMemory("fine too")])
    assert invalid.value.field == "items.1.content"  # names the item
    assert memory_rows(db) == []

    stored, _ = service.store_many("alice", items)
    assert [m.content for m in stored] == [i.content for i in items]
    assert len(memory_rows(db)) == 4


# -- Redis and Neo4j are not on the write path ------------------------------------------------


class ConnectSpy:
    """Records every Python-level socket connect (redis-py and the neo4j driver use these)."""

    def __init__(self) -> None:
        self.targets: list[object] = []

    def __call__(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def connect(sock: socket.socket, address: Any) -> Any:
            self.targets.append(address)
            return original(sock, address)

        return connect


def test_writes_succeed_while_redis_and_neo4j_are_unreachable(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_port, bolt_port = free_port(), free_port()
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{redis_port}/0",
                                       "neo4j_uri": f"bolt://127.0.0.1:{bolt_port}"})
    spy = ConnectSpy()
    monkeypatch.setattr(socket.socket, "connect", spy(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", spy(socket.socket.connect_ex))
    service = MemoryService(down, db, Outbox(down, db), HashingEmbedder(down.embedding_dim))

    memory, created = service.store("alice", "written while the graph is down",
                                    idempotency_key="k1")
    assert created
    updated = service.update("alice", memory.id, importance=9)
    batch, _ = service.store_many("alice", [NewMemory("one"), NewMemory("two")])
    version = service.delete("alice", batch[0].id)
    found = Retrieval(down, db, service.embedder, FakeGraph()).search("alice", "graph down")
    assert found.hits and found.graph is None  # no graph read without expand
    assert service.list("alice").items

    assert (updated.version, version) == (2, 2)
    assert len(outbox(db)) == 5
    # Postgres goes through libpq (C), so any Python-level connect would be Redis or Neo4j:
    # not one was even attempted.
    assert spy.targets == []


# -- one event per write ----------------------------------------------------------------------


def test_every_write_leaves_one_event_with_the_new_version(service: MemoryService,
                                                           db: Database) -> None:
    memory, _ = service.store("alice", "first", importance=2)
    assert outbox(db, memory.id) == [(1, "upsert")]

    updated = service.update("alice", memory.id, content="second")
    assert updated.version == 2
    assert outbox(db, memory.id) == [(1, "upsert"), (2, "upsert")]

    updated = service.update("alice", memory.id, metadata={"a": 1}, expected_version=2)
    assert updated.version == 3
    assert outbox(db, memory.id)[-1] == (3, "upsert")

    assert service.delete("alice", memory.id) == 4
    assert outbox(db, memory.id) == [(1, "upsert"), (2, "upsert"), (3, "upsert"),
                                     (4, "delete")]

    batch, _ = service.store_many("bob", [NewMemory("x"), NewMemory("y", {"k": 1}, 7)])
    for stored in batch:
        assert stored.version == 1
        assert outbox(db, stored.id) == [(1, "upsert")]
    assert len(outbox(db)) == 6

    # Refused writes add no event.
    with pytest.raises(VersionConflict) as conflict:
        service.update("bob", batch[0].id, importance=1, expected_version=5)
    assert conflict.value.current_version == 1
    with pytest.raises(NotFound):
        service.update("alice", memory.id, importance=1)  # deleted
    with pytest.raises(NotFound):
        service.delete("alice", batch[0].id)  # bob's
    assert len(outbox(db)) == 6


def test_idempotent_store_adds_no_second_event(service: MemoryService, db: Database) -> None:
    first, created = service.store("alice", "once", idempotency_key="key-1")
    again, created_again = service.store("alice", "once", idempotency_key="key-1")
    assert (created, created_again) == (True, False)
    assert again == first
    assert outbox(db) == [(1, "upsert")]


# -- concurrency ------------------------------------------------------------------------------

THREADS = 8
UPDATES_PER_THREAD = 5


def run_threads(work: Callable[[int], None]) -> None:
    """Run ``work(i)`` on THREADS threads started together; re-raise the first failure."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            work(i)
        except BaseException as exc:  # collected and re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]


def test_concurrent_updates_get_gap_free_versions(service: MemoryService, db: Database) -> None:
    memory, _ = service.store("alice", "start", importance=1)
    results: dict[int, list[tuple[int, str, int]]] = {i: [] for i in range(THREADS)}

    def work(i: int) -> None:
        for n in range(UPDATES_PER_THREAD):
            content, importance = f"thread {i} update {n}", 1 + (i + n) % 10
            updated = service.update("alice", memory.id, content=content, importance=importance)
            results[i].append((updated.version, content, importance))

    run_threads(work)
    total = THREADS * UPDATES_PER_THREAD
    versions = sorted(v for rs in results.values() for v, _, _ in rs)
    assert versions == list(range(2, total + 2))  # every update got its own version, no gaps
    for rs in results.values():  # each thread saw its own writes in order
        assert [v for v, _, _ in rs] == sorted(v for v, _, _ in rs)
    assert [v for v, _ in outbox(db, memory.id)] == list(range(1, total + 2))

    # The stored state is exactly the last committed update's: nothing was lost or mixed.
    final = service.get("alice", memory.id)
    last = max((r for rs in results.values() for r in rs), key=lambda r: r[0])
    assert (final.version, final.content, final.importance) == last


def test_compare_and_set_updates_lose_nothing(service: MemoryService, db: Database) -> None:
    memory, _ = service.store("alice", "counter=0")
    conflicts = 0
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal conflicts
        for _ in range(UPDATES_PER_THREAD):
            while True:
                current = service.get("alice", memory.id)
                value = int(current.content.removeprefix("counter="))
                try:
                    service.update("alice", memory.id, content=f"counter={value + 1}",
                                   expected_version=current.version)
                    break
                except VersionConflict:
                    with lock:
                        conflicts += 1

    run_threads(work)
    total = THREADS * UPDATES_PER_THREAD
    final = service.get("alice", memory.id)
    assert final.content == f"counter={total}"  # every increment survived
    assert final.version == total + 1
    assert [v for v, _ in outbox(db, memory.id)] == list(range(1, total + 2))


# -- reads ------------------------------------------------------------------------------------


def test_list_paginates_without_duplicates_or_gaps(service: MemoryService) -> None:
    # store_many's rows share one created_at (one transaction): the id breaks the ties.
    batch, _ = service.store_many("alice", [NewMemory(f"batch {i}", {"n": i}, 1 + i % 10)
                                         for i in range(7)])
    singles = [service.store("alice", f"single {i}", importance=9)[0] for i in range(4)]
    deleted = service.store("alice", "deleted one")[0]
    service.delete("alice", deleted.id)
    service.store("bob", "not alice's")

    def walk(**filters: Any) -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        cursor = None
        for _ in range(50):
            page = service.list("alice", limit=3, cursor=cursor, **filters)
            assert len(page.items) <= 3
            seen += [m.id for m in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return seen
        pytest.fail("pagination did not end")

    everything = walk()
    assert len(everything) == len(set(everything)) == 11
    assert set(everything) == {m.id for m in batch + singles}
    # Newest first, in (created_at, id) order, the same order as one unpaginated page.
    assert everything == [m.id for m in service.list("alice", limit=500).items]

    assert walk(min_importance=9) == [m.id for m in reversed(singles)]
    assert walk(metadata={"n": 3}) == [batch[3].id]


def test_list_rejects_a_foreign_cursor(service: MemoryService) -> None:
    with pytest.raises(ValidationError) as bad:
        service.list("alice", cursor="definitely-not-a-cursor")
    assert bad.value.field == "cursor"

