"""The HTTP API: ``create_app(settings)`` builds a FastAPI app with no import-time state.

The app writes memories through MemoryService only, so a request never touches Neo4j or Redis
(DESIGN invariant 1); the relay and workers project the outbox later.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.admin import AdminService
from app.api import errors
from app.api.deps import Services
from app.api.routes import admin, admin_probe, health, memories, persistence
from app.consistency import Consistency
from app.db.connector import Database
from app.embeddings import Embedder, make_embedder
from app.extraction import make_extractor
from app.graph.neo4j import Neo4jGraph
from app.graph.projector import GraphStore
from app.settings import Settings
from app.store import MemoryService

__all__ = ["Services", "create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
A memory layer for AI assistants. Each change commits with its outbox event in one Postgres
transaction; the graph (Neo4j) is a projection that workers bring up to date asynchronously.

Authenticate with `Authorization: Bearer <key>`. Service keys may use the memory API; admin keys
may also use `/api/admin/*` and `/api/persistence/*`. `/api/health/live` and
`/api/health/ready` need no key. Every error has the body
`{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def create_app(settings: Settings, *, db: Database | None = None,
               embedder: Embedder | None = None, graph: GraphStore | None = None) -> FastAPI:
    """Build the app; start-up checks the database's embedding dimension against settings.

    A ``db`` or ``graph`` passed in belongs to the caller and is not closed on shutdown. The
    app's own graph store does not connect at start-up (the Neo4j driver connects on first
    use), so the API starts and accepts writes while Neo4j is down.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db if db is not None else Database(settings)
        store: GraphStore | None = graph
        try:
            # A mismatched EMBEDDING_DIM would fail every write later; refuse to start instead.
            await run_in_threadpool(database.check_embedding_dimension)
            service = MemoryService(settings, database,
                                    embedder if embedder is not None else make_embedder(settings))
            if store is None:
                store = Neo4jGraph(settings)
            app.state.services = Services(
                settings=settings, db=database, memories=service, graph=store,
                admin=AdminService(settings, database, store),
                consistency=Consistency(settings, database, store, make_extractor(settings)))
            log.info("api started", extra={"action": "api.start"})
            yield
        finally:
            app.state.services = None
            if graph is None and store is not None:
                store.close()
            if db is None:
                database.dispose()

    app = FastAPI(
        title="memory-persistence",
        version="0.1.0",
        summary="Memories for AI assistants: pgvector search, a Neo4j graph that converges.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(memories.router)
    app.include_router(admin_probe.router)
    app.include_router(admin.router)
    app.include_router(persistence.router)
    return app
