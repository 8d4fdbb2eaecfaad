"""Fault tests: real worker and relay processes, real signals, real server outages.

Shared here: settings tuned for fast recovery (short lease, short backoff, many attempts),
process handles that always stop their whole process group, in-process relays, polling
helpers, and ``assert_graph_matches_postgres``: the exact comparison of the graph with the
projection of Postgres that every fault test ends on (DESIGN invariant 4).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from neo4j import Driver
from sqlalchemy import text

from app.breakers import Breakers
from app.db.connector import Database
from app.domain import entity_key
from app.outbox import Outbox
from app.queue import ProjectionQueue, build_broker
from app.relay import Relay
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import ManagedProcess, child_env
from tests.conftest import TestServers

REPO = Path(__file__).resolve().parents[2]
WORKER_ARGV = [sys.executable, "-m", "dramatiq", "workers.actors", "--processes", "1",
               "--threads", "2"]
RELAY_ARGV = [sys.executable, "-m", "app.cli", "relay"]

# Fast recovery for fault tests: a lost message is re-sent after a few seconds, and a failing
# row is retried within seconds, many times, so an outage ends in convergence, not dead letters.
FAULT_OVERRIDES: dict[str, object] = {
    "lease_seconds": 3,
    "retry_base_seconds": 0.2,
    "retry_cap_seconds": 2,
    "retry_max_attempts": 50,
    "worker_batch_size": 10,
    "relay_poll_seconds": 0.2,
}

# The production defaults of delivery and breakers: outage tests run with these (the point of
# issue #18 is that an outage must not eat the default retry schedule).
DEFAULT_DELIVERY = ("lease_seconds", "retry_base_seconds", "retry_cap_seconds",
                    "retry_max_attempts", "worker_batch_size", "relay_poll_seconds",
                    "breaker_failure_threshold", "breaker_probe_seconds",
                    "breaker_misconfigured_probe_seconds", "breaker_cache_seconds")


def production_delivery() -> dict[str, object]:
    """The default value of every delivery and breaker setting."""
    return {name: Settings.model_fields[name].default for name in DEFAULT_DELIVERY}


def env_seconds(name: str, default: float) -> float:
    """A duration a long fault test takes from the environment (CI keeps the defaults short)."""
    return float(os.environ.get(name, default))


# A bug these tests found (test_entity_race.py; fixed in commit d21e744). Should it come back,
# the failure names it instead of showing a bare dead letter.
ENTITY_RACE_BUG = (
    "REGRESSION of the entity race (app/graph/neo4j.py convert(), app/projection.py _fail()): "
    "two concurrent projections race on one entity: one deletes it as an orphan "
    "(remove_orphan_entities), the other MERGEd it before that commit and then fails with "
    "Neo.ClientError.Statement.EntityNotFound. That error must be retryable; here the row "
    "became a dead letter, although a retry would succeed (DESIGN: concurrent batches "
    "touching shared entities converge; transient conflicts are retryable)."
)

# Sentences whose entities overlap inside a user and across users (same names, other users).
CONTENTS = [
    "Meeting with John Smith about Q4 roadmap at Acme Corp",
    "Lunch with Sarah Connor and John Smith on Friday",
    "Dr. Jane Doe works at Globex Corporation",
    "Email alice@example.com about https://example.com/plan #budget",
    "Sarah Connor met Bob Jones in Berlin",
    "buy milk and eggs",
    "Bob Jones from Initech called about the Q3 2025 report",
    "Alice Smith and Acme Corp sync",
    "Call John Smith and Bob Jones about #hiring",
    "Dr. Jane Doe met Alice Smith on Monday",
]


# -- settings and environments ----------------------------------------------------------------


def database_name(settings: Settings) -> str:
    return settings.database_url.rsplit("/", 1)[1]


@pytest.fixture
def make_settings(settings: Settings, test_servers: TestServers) -> Callable[..., Settings]:
    """Settings on this test's database with the fault overrides (and any given here)."""

    def make(**overrides: object) -> Settings:
        return test_servers.settings(database_name(settings), **{**FAULT_OVERRIDES, **overrides})

    return make


@pytest.fixture
def fault_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def process_env(settings: Settings) -> dict[str, str]:
    """The environment a worker or relay process reads its settings from."""
    return child_env(settings, LOG_LEVEL="INFO")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[str, list[str], Settings], ManagedProcess]]:
    """Start processes that are always killed (whole group) and reaped when the test ends."""
    started: list[ManagedProcess] = []
    counter = iter(range(1000))

    def start(name: str, argv: list[str], settings: Settings) -> ManagedProcess:
        log_path = tmp_path / f"{name}-{next(counter)}.log"
        proc = ManagedProcess(name, argv, process_env(settings), log_path, cwd=REPO)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def start_worker(processes: Callable[[str, list[str], Settings], ManagedProcess],
                 fault_settings: Settings) -> Callable[..., ManagedProcess]:
    """A real ``dramatiq workers.actors`` process (1 process, 2 threads)."""

    def start(settings: Settings | None = None) -> ManagedProcess:
        return processes("worker", WORKER_ARGV, settings or fault_settings)

    return start


# -- relays in threads ----------------------------------------------------------------------


@dataclass
class RelayRunner:
    relay: Relay
    thread: threading.Thread
    broker: RedisBroker


@dataclass
class Relays:
    db: Database
    running: list[RelayRunner] = field(default_factory=list)

    def start(self, settings: Settings) -> Relay:
        broker = build_broker(settings)
        outbox = Outbox(settings, self.db)
        relay = Relay(settings, outbox, ProjectionQueue(settings, broker),
                      Breakers(settings, self.db, outbox))
        thread = threading.Thread(target=relay.run, name="relay", daemon=True)
        thread.start()
        self.running.append(RelayRunner(relay, thread, broker))
        return relay

    def stop_all(self) -> None:
        for r in self.running:
            r.relay.stop()
        for r in self.running:
            r.thread.join(timeout=15)
            assert not r.thread.is_alive(), "a relay thread did not stop"
            r.broker.close()
        self.running.clear()


@pytest.fixture
def relays(db: Database, redis_client: redis_lib.Redis) -> Iterator[Relays]:
    """Relays running in threads of the test process; stopped and their brokers closed after."""
    r = Relays(db)
    try:
        yield r
    finally:
        r.stop_all()


# -- Postgres and Redis probes --------------------------------------------------------------


def outbox_counts(db: Database) -> dict[str, int]:
    with db.engine.begin() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM outbox GROUP BY status")).all()
    counts = {"pending": 0, "in_flight": 0, "done": 0, "dead": 0}
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def outbox_rows(db: Database) -> list[Any]:
    with db.engine.begin() as conn:
        return list(conn.execute(text("SELECT * FROM outbox ORDER BY id")).all())


def dead_letters(db: Database) -> list[Any]:
    with db.engine.begin() as conn:
        return list(conn.execute(text("SELECT * FROM dead_letters ORDER BY id")).all())


def wait_drained(db: Database, timeout: float = 60, what: str = "outbox drained",
                 logs: Callable[[], str] | None = None,
                 allow_empty: bool = False) -> dict[str, int]:
    """Wait until no row is pending or in flight; fail at once if any row went dead."""
    last: dict[str, int] = {}

    def drained() -> bool:
        nonlocal last
        last = outbox_counts(db)
        if last["dead"] or dead_letters(db):
            dead = [(r.id, r.attempts, r.last_error) for r in outbox_rows(db)
                    if r.status == "dead"][:5]
            known = ENTITY_RACE_BUG + "\n" if any(
                "EntityNotFound" in (e or "") for _, _, e in dead) else ""
            pytest.fail(f"{known}rows went dead while draining: {last} {dead}"
                        + (f"\n{logs()}" if logs else ""))
        return ((allow_empty or sum(last.values()) > 0)
                and last["pending"] == 0 and last["in_flight"] == 0)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if drained():
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}: {last}"
                + (f"\n{logs()}" if logs else ""))


def queued_messages(client: redis_lib.Redis, settings: Settings) -> list[list[int]]:
    """The row ids of every projection message Redis holds (queued or being worked on)."""
    raw = client.hvals(f"memctl:{settings.queue_name}.msgs")
    return [list(decode(m).args[0]) for m in raw]


def decode(raw: bytes | str) -> dramatiq.Message[Any]:
    """A dramatiq message as Redis holds it (our clients return bytes)."""
    return dramatiq.Message.decode(raw.encode() if isinstance(raw, str) else raw)


# -- writes -----------------------------------------------------------------------------------


@dataclass
class Model:
    """What the test wrote: per memory, its user and every version's (content, importance)."""

    history: dict[str, list[tuple[int, str, int, bool]]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)

    def live(self, user: str | None = None) -> list[str]:
        return [m for m, h in self.history.items()
                if not h[-1][3] and (user is None or self.users[m] == user)]


def random_writes(service: MemoryService, rng: random.Random, count: int,
                  users: tuple[str, ...] = ("alice", "bob", "carol"),
                  model: Model | None = None) -> Model:
    """``count`` interleaved stores, updates and deletes across ``users``."""
    model = model or Model()
    for _ in range(count):
        user = rng.choice(users)
        live = model.live(user)
        roll = rng.random()
        if not live or roll < 0.5:
            content, importance = rng.choice(CONTENTS), rng.randint(1, 10)
            m, _ = service.store(user, content, importance=importance)
            model.history[str(m.id)] = [(1, content, importance, False)]
            model.users[str(m.id)] = user
        elif roll < 0.85:
            mid = rng.choice(live)
            version, content, importance, _ = model.history[mid][-1]
            if rng.random() < 0.6:
                content = rng.choice(CONTENTS)
                new = service.update(user, mid, content=content)
            else:
                importance = rng.randint(1, 10)
                new = service.update(user, mid, importance=importance)
            assert new.version == version + 1
            model.history[mid].append((new.version, content, importance, False))
        else:
            mid = rng.choice(live)
            version, content, importance, _ = model.history[mid][-1]
            assert service.delete(user, mid) == version + 1
            model.history[mid].append((version + 1, content, importance, True))
    return model


@dataclass
class SteadyWriter:
    """Writes through the HTTP API at a steady rate, in a thread: stores, some updates and
    deletes. Keeps every answer's status, so a test can assert that no write failed."""

    client: Any  # fastapi.testclient.TestClient, used from the writer thread only
    key: str
    rate: float  # writes per second
    statuses: list[int] = field(default_factory=list)
    written: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> SteadyWriter:
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive(), "the writer did not stop"

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        live: list[tuple[str, str]] = []  # (memory id, user)
        started = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            user = ("alice", "bob", "carol")[i % 3]
            if i % 11 == 10 and live:
                mid, owner = live.pop(0)
                response = self.client.delete(f"/api/memories/{mid}",
                                              params={"user_id": owner}, headers=headers)
            elif i % 7 == 6 and live:
                mid, owner = live[-1]
                response = self.client.patch(f"/api/memories/{mid}", headers=headers, json={
                    "user_id": owner, "content": f"{CONTENTS[i % len(CONTENTS)]} (edit {i})"})
            else:
                response = self.client.post("/api/memories", headers=headers, json={
                    "user_id": user, "content": f"{CONTENTS[i % len(CONTENTS)]} (note {i})"})
                if response.status_code == 201:
                    live.append((response.json()["id"], user))
            self.statuses.append(response.status_code)
            self.written += 1
            i += 1
            # Keep the rate: the i-th write is due i/rate seconds after the start.
            self.stop_event.wait(max(0.0, started + i / self.rate - time.monotonic()))

    def failures(self) -> list[int]:
        """Statuses other than 200/201."""
        return [s for s in self.statuses if s not in (200, 201)]


def not_done_before(db: Database, when: Any) -> int:
    """Rows created at or before ``when`` (a Postgres timestamp) that are not done yet."""
    with db.engine.begin() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM outbox WHERE created_at <= :t AND status <> 'done'"),
            {"t": when}).scalar_one())


def db_now(db: Database) -> Any:
    with db.engine.begin() as conn:
        return conn.execute(text("SELECT now()")).scalar_one()


def breaker_state(db: Database, name: str) -> dict[str, Any]:
    with db.engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM dependency_breakers WHERE name = :n"),
                           {"n": name}).one()
    return dict(row._mapping)


def attempts_and_errors(db: Database) -> tuple[int, list[str]]:
    """The highest attempt count of any row, and every error recorded against a row."""
    with db.engine.begin() as conn:
        top = int(conn.execute(text("SELECT coalesce(max(attempts), 0) FROM outbox"))
                  .scalar_one())
        errors = [str(e) for (e,) in conn.execute(text(
            "SELECT jsonb_array_elements(errors)->>'error' FROM outbox")).all()]
    return top, errors


# -- the convergence check ------------------------------------------------------------------


def _expected(row: Any) -> tuple[set[str], Counter[tuple[str, str, str]]]:
    """Entity keys and relations a live memory's cached extraction implies."""
    extraction = row.entities or {}
    keys = {entity_key(row.user_id, e["type"], e["name"]) for e in extraction.get("entities", [])}
    relations: Counter[tuple[str, str, str]] = Counter()
    for r in extraction.get("relations", []):
        src = entity_key(row.user_id, r["source"]["type"], r["source"]["name"])
        dst = entity_key(row.user_id, r["target"]["type"], r["target"]["name"])
        if src in keys and dst in keys and src != dst:
            relations[(src, dst, r["predicate"])] = 1
    return keys, relations


def graph_problems(db: Database, driver: Driver) -> list[str]:
    """Every difference between the graph and the projection of Postgres (empty: they match)."""
    with db.engine.begin() as conn:
        pg = {str(r.id): r for r in conn.execute(text(
            "SELECT id, user_id, version, deleted_at, entities, content_hash, extracted_hash "
            "FROM memories")).all()}
    memories, _, _ = driver.execute_query(
        "MATCH (m:Memory) OPTIONAL MATCH (m)-[:MENTIONS]->(e) "
        "RETURN m.id AS id, m.user_id AS user_id, m.version AS version, "
        "coalesce(m.deleted, false) AS deleted, collect(e.key) AS keys, "
        "collect(labels(e)) AS labels")
    entities, _, _ = driver.execute_query(
        "MATCH (e:Entity) RETURN e.key AS key, e.user_id AS user_id, "
        "COUNT { (e)<-[:MENTIONS]-(:Memory) } AS mentioned")
    related, _, _ = driver.execute_query(
        "MATCH (a)-[r:RELATED]->(b) RETURN a.key AS source, b.key AS target, "
        "a.user_id AS a_user, b.user_id AS b_user, r.user_id AS user_id, "
        "r.memory_id AS memory_id, r.predicate AS predicate")
    other, _, _ = driver.execute_query(
        "MATCH (n) WHERE NOT n:Memory AND NOT n:Entity RETURN labels(n) AS labels LIMIT 5")
    other_rels, _, _ = driver.execute_query(
        "MATCH ()-[r]->() WHERE NOT type(r) IN ['MENTIONS', 'RELATED'] "
        "RETURN type(r) AS t LIMIT 5")

    problems: list[str] = []
    problems += [f"unexpected node labels {r['labels']}" for r in other]
    problems += [f"unexpected relationship type {r['t']}" for r in other_rels]
    graph = {r["id"]: r for r in memories}
    entity_user = {r["key"]: r["user_id"] for r in entities}

    for mid, row in pg.items():
        node = graph.get(mid)
        if row.deleted_at is not None:
            if node is None:
                continue  # a tombstone may be pruned; absent is a correct delete
            if not node["deleted"]:
                problems.append(f"{mid}: deleted in Postgres (v{row.version}) but live in graph "
                                f"(v{node['version']})")
            if node["version"] != row.version:
                problems.append(f"{mid}: tombstone at v{node['version']}, Postgres v{row.version}")
            if node["keys"]:
                problems.append(f"{mid}: tombstone still MENTIONS {sorted(node['keys'])}")
            continue
        if node is None:
            problems.append(f"{mid}: live in Postgres (v{row.version}) but missing in graph")
            continue
        if node["deleted"]:
            problems.append(f"{mid}: live in Postgres but a tombstone in graph")
        if node["version"] != row.version:
            problems.append(f"{mid}: graph v{node['version']}, Postgres v{row.version}")
        if node["user_id"] != row.user_id:
            problems.append(f"{mid}: graph user {node['user_id']!r}, Postgres {row.user_id!r}")
        if row.entities is None or row.extracted_hash != row.content_hash:
            problems.append(f"{mid}: no cached extraction for the current content")
        keys, _ = _expected(row)
        if set(node["keys"]) != keys or len(node["keys"]) != len(set(node["keys"])):
            problems.append(f"{mid}: MENTIONS {sorted(node['keys'])} != expected {sorted(keys)}")
        if any(labels != ["Entity"] for labels in node["labels"]):
            problems.append(f"{mid}: MENTIONS a non-Entity node {node['labels']}")

    for mid, node in graph.items():
        if mid not in pg:
            problems.append(f"{mid}: in graph (v{node['version']}) but not in Postgres")

    for e in entities:
        if e["mentioned"] == 0:
            problems.append(f"orphan entity {e['key']!r}")
        if e["key"].split("\x1f", 1)[0] != e["user_id"]:
            problems.append(f"entity {e['key']!r} has user_id {e['user_id']!r}")

    for mid, node in graph.items():
        for key in node["keys"]:
            if entity_user.get(key) != node["user_id"]:
                problems.append(f"cross-user MENTIONS: {mid} ({node['user_id']}) -> {key!r}")

    actual: dict[str, Counter[tuple[str, str, str]]] = {}
    for r in related:
        users = {r["a_user"], r["b_user"], r["user_id"]}
        owner = pg.get(r["memory_id"])
        if len(users) != 1 or owner is None or owner.user_id not in users:
            problems.append(f"cross-user or dangling RELATED {dict(r)}")
        actual.setdefault(r["memory_id"], Counter())[(r["source"], r["target"],
                                                      r["predicate"])] += 1
    for mid, row in pg.items():
        expected = _expected(row)[1] if row.deleted_at is None else Counter()
        got = actual.get(mid, Counter())
        if got != expected:
            problems.append(f"{mid}: RELATED {sorted(got.items())} != expected "
                            f"{sorted(expected.items())}")
    return problems


def assert_graph_matches_postgres(db: Database, driver: Driver) -> None:
    """The graph equals the projection of Postgres exactly (DESIGN invariant 4).

    Live memories: same id, user and version, MENTIONS exactly the entity keys of the cached
    extraction, RELATED exactly its relations. Deleted memories: absent or a tombstone at the
    delete's version with no edges. No memory Postgres lacks, no entity nothing mentions, no
    edge joining two users.
    """
    problems = graph_problems(db, driver)
    if problems:
        shown = "\n  ".join(problems[:25])
        pytest.fail(f"graph differs from Postgres ({len(problems)} problems):\n  {shown}")

