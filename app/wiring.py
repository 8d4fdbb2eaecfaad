"""The composition root: every process builds its parts here, from settings, and closes them here.

``Services`` builds each part on first use, so a process pays only for what it touches: the
dead-letter commands never start a Neo4j driver, the relay never loads an embedder. Parts given
to the constructor belong to the caller and are not closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

from app.admin import AdminService
from app.backup import Backups
from app.breakers import EXTRACTOR, GRAPH, Breakers, Prober
from app.consistency import Consistency
from app.db.connector import Database
from app.domain import Extraction
from app.embeddings import Embedder, make_embedder
from app.extraction import Extractor, Probed, make_extractor
from app.graph.base import GraphStore
from app.graph.neo4j import Neo4jGraph
from app.jobs import JobRunner, Jobs
from app.keys import ApiKeys
from app.metrics import State, read_state
from app.outbox import Outbox
from app.projector import Projector
from app.queue import ProjectionQueue
from app.reembed import Reembedder
from app.relay import Relay
from app.retrieval import Retrieval
from app.scheduler import Scheduler, default_tasks
from app.settings import Settings
from app.store import MemoryService

log = logging.getLogger(__name__)
T = TypeVar("T")


class Services:
    """The parts of the system for one process, built lazily from one settings object."""

    def __init__(self, settings: Settings, *, db: Database | None = None,
                 graph: GraphStore | None = None, embedder: Embedder | None = None,
                 extractor: Extractor | None = None, queue: ProjectionQueue | None = None,
                 pool_size: int | None = None) -> None:
        self.settings = settings
        self._pool_size = pool_size
        self._given: dict[str, Any] = {k: v for k, v in (
            ("db", db), ("graph", graph), ("embedder", embedder), ("extractor", extractor),
            ("queue", queue)) if v is not None}

    def _given_or(self, name: str, build: Callable[[], T]) -> T:
        given: T | None = self._given.get(name)
        return given if given is not None else build()

    @cached_property
    def db(self) -> Database:
        return self._given_or("db", lambda: Database(self.settings, pool_size=self._pool_size))

    @cached_property
    def graph(self) -> GraphStore:
        """The graph store; the Neo4j driver connects on first use, not here."""
        return self._given_or("graph", lambda: Neo4jGraph(self.settings))

    @cached_property
    def embedder(self) -> Embedder:
        return self._given_or("embedder", lambda: make_embedder(self.settings))

    @cached_property
    def extractor(self) -> Extractor:
        return self._given_or("extractor", lambda: make_extractor(self.settings))

    @cached_property
    def queue(self) -> ProjectionQueue:
        return self._given_or("queue", lambda: ProjectionQueue(self.settings))

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.settings, self.db)

    @cached_property
    def keys(self) -> ApiKeys:
        return ApiKeys(self.settings, self.db)

    @cached_property
    def breakers(self) -> Breakers:
        return Breakers(self.settings, self.db, self.outbox)

    @cached_property
    def memories(self) -> MemoryService:
        return MemoryService(self.settings, self.db, self.outbox, self.embedder)

    @cached_property
    def retrieval(self) -> Retrieval:
        return Retrieval(self.settings, self.db, self.embedder, self.graph)

    @cached_property
    def reembedder(self) -> Reembedder:
        return Reembedder(self.settings, self.db, self.embedder,
                          lambda: self.memories.ts_config)

    @cached_property
    def admin(self) -> AdminService:
        return AdminService(self.settings, self.db, self.outbox, self.breakers,
                            lambda: self.graph, lambda: self.memories)

    @cached_property
    def backups(self) -> Backups:
        return Backups(self.settings, self.db)

    @cached_property
    def consistency(self) -> Consistency:
        # The extractor is only needed when a rebuild finds a stale cache: built on demand.
        return Consistency(self.settings, self.db, self.outbox, self.graph,
                           _LazyExtractor(self), page_size=self.settings.sync_page_size)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self.settings, self.db)

    def job_runner(self) -> JobRunner:
        """Runs background sync jobs (``memctl scheduler``, ``memctl jobs work``)."""
        return JobRunner(self.settings, self.jobs, lambda: self.consistency, self.db)

    @cached_property
    def projector(self) -> Projector:
        return Projector(self.db, self.outbox, self.graph, self.extractor, self.breakers,
                         retry_delay=self.settings.breaker_probe_seconds)

    def prober(self) -> Prober:
        """Probes of the open breakers, with this process's graph and extractor."""
        extractor = self.extractor
        return Prober(self.breakers, {
            GRAPH: self.graph.ping,
            # An extractor without a remote endpoint (the rules) has nothing to be out.
            EXTRACTOR: extractor.probe if isinstance(extractor, Probed) else lambda: None,
        })

    def metrics_state(self) -> State:
        """The state Postgres holds, for the metrics collector (``app.metrics``)."""
        return read_state(self.outbox, self.breakers, self.consistency)

    def relay(self) -> Relay:
        return Relay(self.settings, self.outbox, self.queue, self.breakers)

    def scheduler(self) -> Scheduler:
        return Scheduler(self.db, default_tasks(self.settings, self.outbox, self.consistency,
                                                self.memories, self.breakers,
                                                self.reembedder, jobs=self.jobs))

    def close(self) -> None:
        """Close what this object built (not what it was given)."""
        built = self.__dict__
        for name in ("queue", "graph", "extractor", "db"):
            part = built.get(name)
            if part is None or name in self._given:
                continue
            try:
                if name == "db":
                    part.dispose()
                elif hasattr(part, "close"):
                    part.close()
            except Exception:  # closing must go on for the others
                log.warning("could not close %s", name, exc_info=True,
                            extra={"action": "wiring.close"})

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LazyExtractor:
    """The process's extractor, built the first time a rebuild needs one."""

    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def identity(self) -> str:
        return self._services.extractor.identity

    def extract(self, text: str) -> Extraction:
        return self._services.extractor.extract(text)


def build_services(settings: Settings, **parts: Any) -> Services:
    """The one way every process (web, CLI, relay, scheduler, worker) gets its parts."""
    return Services(settings, **parts)
