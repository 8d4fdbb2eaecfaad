"""The projector tells a dependency's outage from a row's failure, on fakes (no servers).

An outage of the graph or the extractor (unreachable, rate limiting, refusing our settings)
feeds that dependency's breaker and sends rows back without an attempt; a failure of the row
spends an attempt; an open breaker means the dependency is not called at all.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import cast

from app.breakers import EXTRACTOR, GRAPH
from app.db.connector import Database
from app.domain import Extraction, content_hash
from app.errors import (
    ExtractionError,
    ExtractorMisconfigured,
    ExtractorRateLimited,
    ExtractorUnavailable,
    GraphMisconfigured,
    GraphUnavailable,
    MemoryPersistenceError,
)
from app.graph.base import GraphStore, MemoryProjection
from app.outbox import Outbox, WorkItem
from app.projection import extraction_record
from app.projector import DEFERRED, Projector
from app.testing import FailingGraph, FakeGraph
from tests.unit.test_projection_fakes import FakeDb, FakeOutbox, WordsExtractor, row, state


class FakeBreakers:
    """Breakers in memory: which are open, and every failure and success reported."""

    def __init__(self, *open_: str) -> None:
        self.open = set(open_)
        self.failures: list[tuple[str, str]] = []
        self.successes: list[str] = []

    def allows(self, name: str) -> bool:
        return name not in self.open

    def failed(self, name: str, exc: MemoryPersistenceError) -> object:
        self.failures.append((name, type(exc).__name__))
        return None

    def succeeded(self, name: str) -> None:
        self.successes.append(name)

    def invalidate(self) -> None:
        return None


class ScriptedExtractor(WordsExtractor):
    """WordsExtractor, except that text naming an error raises it (and calls are recorded)."""

    def __init__(self, errors: dict[str, Exception]) -> None:
        super().__init__()
        self.errors = errors
        self.texts: list[str] = []

    def extract(self, text: str) -> Extraction:
        self.texts.append(text)
        for word, error in self.errors.items():
            if word in text:
                raise error
        return super().extract(text)


def cached_row(content: str, *, deleted: bool = False) -> WorkItem:
    """A row whose memory already has a current cached extraction (or is deleted)."""
    m = uuid.uuid4()
    record = extraction_record(state(m, 1, content), WordsExtractor.identity,
                               WordsExtractor().extract(content))
    return row(dataclasses.replace(state(m, 1, content, deleted=deleted),
                                   entities=json.loads(record["entities"]),
                                   extractor=WordsExtractor.identity,
                                   extracted_hash=content_hash(content)))


def make(graph: GraphStore, items: list[WorkItem], breakers: FakeBreakers,
         extractor: WordsExtractor | None = None) -> tuple[Projector, FakeOutbox]:
    outbox = FakeOutbox(items)
    projector = Projector(cast(Database, FakeDb([])), cast(Outbox, outbox), graph,
                          extractor or WordsExtractor(), breakers, retry_delay=2.0)
    return projector, outbox


def failing_graph(error: Exception, calls: list[int]) -> FailingGraph:
    def fail(batch: list[MemoryProjection]) -> Exception:
        calls.append(len(batch))
        return error
    return FailingGraph(FakeGraph(), fail)


def test_a_graph_outage_sends_the_batch_back_without_attempts() -> None:
    items = [row(state(uuid.uuid4(), 1, f"Memo {i} about John")) for i in range(3)]
    breakers, calls = FakeBreakers(), list[int]()
    projector, outbox = make(failing_graph(GraphUnavailable("connection refused"), calls), items,
                             breakers)

    outcome = projector.process([i.outbox_id for i in items])
    assert (outcome.done, outcome.failed, outcome.held) == (0, 0, 3)
    assert calls == [3]  # one try of the whole batch: an outage does not split it
    assert outbox.failures == []  # no attempt spent
    assert outbox.released == [([i.outbox_id for i in items],
                                "GraphUnavailable: connection refused", GRAPH, False)]
    assert breakers.failures == [(GRAPH, "GraphUnavailable")]
    assert GRAPH not in breakers.successes


def test_a_graph_misconfiguration_feeds_the_breaker_too() -> None:
    items = [row(state(uuid.uuid4(), 1, "John met Sarah"))]
    breakers, calls = FakeBreakers(), list[int]()
    projector, outbox = make(failing_graph(GraphMisconfigured("Neo4j AuthError: no"), calls),
                             items, breakers)
    assert projector.process([items[0].outbox_id]).held == 1
    assert breakers.failures == [(GRAPH, "GraphMisconfigured")]
    assert outbox.failures == []


def test_an_open_graph_breaker_calls_neither_graph_nor_extractor() -> None:
    items = [row(state(uuid.uuid4(), 1, "John met Sarah"))]
    breakers, calls = FakeBreakers(GRAPH), list[int]()
    extractor = ScriptedExtractor({})
    projector, outbox = make(failing_graph(AssertionError("called"), calls), items, breakers,
                             extractor)
    outbox.open_breakers = {GRAPH}

    outcome = projector.process([items[0].outbox_id])
    assert outcome.held == 1 and calls == [] and extractor.texts == []
    assert outbox.released == [([items[0].outbox_id], "the graph breaker is open", GRAPH, True)]
    assert breakers.failures == []


def test_an_extractor_outage_holds_what_needs_it_and_projects_the_rest() -> None:
    graph = FakeGraph()
    down, later = (row(state(uuid.uuid4(), 1, "DOWN with Bob")),
                   row(state(uuid.uuid4(), 1, "Carol and Dave")))
    cached, deleted = cached_row("Erin met Frank"), row(state(uuid.uuid4(), 2, deleted=True))
    extractor = ScriptedExtractor({"DOWN": ExtractorUnavailable("LLM endpoint answered 503")})
    breakers = FakeBreakers()
    items = [down, later, cached, deleted]
    projector, outbox = make(graph, items, breakers, extractor)

    outcome = projector.process([i.outbox_id for i in items])
    # The extractor was asked once: after an outage it is not called again in this batch.
    assert len(extractor.texts) == 1
    assert (outcome.done, outcome.held, outcome.failed) == (2, 2, 0)
    ((released, error, breaker, _),) = outbox.released
    assert sorted(released) == sorted([down.outbox_id, later.outbox_id])
    assert breaker == EXTRACTOR and "503" in error
    assert outbox.status[cached.outbox_id] == outbox.status[deleted.outbox_id] == "done"
    assert breakers.failures == [(EXTRACTOR, "ExtractorUnavailable")]
    assert breakers.successes == [GRAPH]


def test_an_open_extractor_breaker_projects_only_rows_that_need_no_extraction() -> None:
    fresh, cached = row(state(uuid.uuid4(), 1, "Gina and Hal")), cached_row("Ivan met Judy")
    extractor = ScriptedExtractor({})
    breakers = FakeBreakers(EXTRACTOR)
    projector, outbox = make(FakeGraph(), [fresh, cached], breakers, extractor)

    outcome = projector.process([fresh.outbox_id, cached.outbox_id])
    assert extractor.texts == []
    assert (outcome.done, outcome.held) == (1, 1)
    assert outbox.released[0][0] == [fresh.outbox_id]
    assert outbox.released[0][2] == EXTRACTOR
    assert outbox.status[cached.outbox_id] == "done"


def test_a_misconfigured_extractor_and_a_rate_limit_are_dependency_failures() -> None:
    for error, kind in ((ExtractorMisconfigured("HTTP 401"), "ExtractorMisconfigured"),
                        (ExtractorRateLimited("HTTP 429", 7.5), "ExtractorRateLimited")):
        item = row(state(uuid.uuid4(), 1, "BAD news for Kim"))
        breakers = FakeBreakers()
        projector, outbox = make(FakeGraph(), [item], breakers,
                                 ScriptedExtractor({"BAD": error}))
        assert projector.process([item.outbox_id]).held == 1
        assert breakers.failures == [(EXTRACTOR, kind)]
        assert outbox.failures == []
        if kind == "ExtractorRateLimited":
            assert outbox.delays == [7.5]  # due again when the endpoint said, not sooner
        else:
            assert 1.0 <= outbox.delays[0] <= 2.0  # jittered, up to retry_delay


def test_a_failure_of_the_row_spends_an_attempt_and_leaves_the_breakers_alone() -> None:
    poison, good = row(state(uuid.uuid4(), 1, "POISON Lou")), row(state(uuid.uuid4(), 1, "Max"))
    breakers = FakeBreakers()
    projector, outbox = make(FakeGraph(), [poison, good], breakers,
                             ScriptedExtractor({"POISON": ExtractionError("always fails")}))
    outcome = projector.process([poison.outbox_id, good.outbox_id])
    assert (outcome.done, outcome.failed, outcome.held) == (1, 1, 0)
    assert outbox.failures == [([poison.outbox_id], "ExtractionError: always fails", True)]
    assert breakers.failures == []
    assert set(breakers.successes) == {GRAPH, EXTRACTOR}


def test_rows_left_when_the_lease_runs_short_go_back_due_at_once() -> None:
    # The lease is all but gone: after the first extraction, the rest go back unattempted.
    items = [dataclasses.replace(row(state(uuid.uuid4(), 1, f"Nora {i}")), lease_left=0.0)
             for i in range(3)]
    extractor = ScriptedExtractor({})
    projector, outbox = make(FakeGraph(), items, FakeBreakers(), extractor)
    time.sleep(0.001)  # the deadline (now + 0 s) is behind us before the first extraction
    outcome = projector.process([i.outbox_id for i in items])
    assert len(extractor.texts) == 1  # progress: one extraction, whatever the clock says
    assert (outcome.done, outcome.held, outcome.failed) == (1, 2, 0)
    ((released, why, breaker, held),) = outbox.released
    assert len(released) == 2 and why == DEFERRED and breaker is None and not held
