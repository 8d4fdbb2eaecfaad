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

from app.api import errors
from app.api.deps import Services
from app.api.routes import admin_probe, health, memories
from app.db.connector import Database
from app.embeddings import Embedder, make_embedder
from app.settings import Settings
from app.store import MemoryService

__all__ = ["Services", "create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
A memory layer for AI assistants. Each change commits with its outbox event in one Postgres
transaction; the graph (Neo4j) is a projection that workers bring up to date asynchronously.

Authenticate with `Authorization: Bearer <key>`. Service keys may use the memory API; admin keys
may also use `/api/admin/*`. Every error has the body
`{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def create_app(settings: Settings, *, db: Database | None = None,
               embedder: Embedder | None = None) -> FastAPI:
    """Build the app; start-up checks the database's embedding dimension against settings.

    A ``db`` passed in belongs to the caller and is not disposed on shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db if db is not None else Database(settings)
        try:
            # A mismatched EMBEDDING_DIM would fail every write later; refuse to start instead.
            await run_in_threadpool(database.check_embedding_dimension)
            service = MemoryService(settings, database,
                                    embedder if embedder is not None else make_embedder(settings))
            app.state.services = Services(settings=settings, db=database, memories=service)
            log.info("api started", extra={"action": "api.start"})
            yield
        finally:
            app.state.services = None
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
    return app
