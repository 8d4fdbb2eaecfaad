"""The HTTP API: ``create_app(settings)`` builds a FastAPI app with no import-time state.

The app writes memories through MemoryService only, so a request never touches Neo4j or Redis
(DESIGN invariant 1); the relay and workers project the outbox later.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app import console
from app import metrics as app_metrics
from app.api import docs, errors, metrics
from app.api.guard import BodyLimit, RequestGuard
from app.api.routes import admin, health, memories, persistence
from app.settings import Settings
from app.wiring import Services, build_services

__all__ = ["create_app"]


class Background(Protocol):
    """A part of the app that works beside the requests (the console's sampler and jobs)."""

    def start(self, services: Services) -> None: ...

    def stop(self) -> None: ...


log = logging.getLogger(__name__)

DESCRIPTION = """\
A memory layer for AI assistants. Each change commits with its outbox event in one Postgres
transaction; the graph (Neo4j) is a projection that workers bring up to date asynchronously.

Authenticate with `Authorization: Bearer <key>`. Service keys may use the memory API; admin keys
may also use `/api/admin/*` and `/api/persistence/*`, and log in to the admin console at
`/admin`. `/api/health/live` and `/api/health/ready` need no key. Every error has the body
`{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the app; start-up checks the database's embedding dimension against settings.

    ``services`` passed in belong to the caller and are not closed on shutdown. The graph
    store does not connect at start-up (the Neo4j driver connects on first use), so the API
    starts and accepts writes while Neo4j is down.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        parts = services if services is not None else build_services(settings)
        state: app_metrics.StateCollector | None = None
        try:
            # A mismatched EMBEDDING_DIM would fail every write later, a broken model install
            # every search: refuse to start instead.
            await run_in_threadpool(parts.db.check_embedding_dimension)
            await run_in_threadpool(parts.embedder.load)
            app.state.services = parts
            state = (app_metrics.register_state(parts.metrics_state)
                     if settings.metrics_enabled else None)
            for part in background:
                part.start(parts)
            log.info("api started", extra={"action": "api.start"})
            yield
        finally:
            for part in reversed(background):
                await run_in_threadpool(part.stop)
            if state is not None:
                app_metrics.unregister_state(state)
            app.state.services = None
            if own:
                parts.close()
            log.info("api stopped", extra={"action": "api.stop"})

    app = FastAPI(
        title="memory-persistence",
        version="0.1.0",
        summary="Memories for AI assistants: pgvector search, a Neo4j graph that converges.",
        description=DESCRIPTION,
        lifespan=lifespan,
        # The default pages load Swagger UI and ReDoc from a CDN: ours are served locally.
        docs_url=None, redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    background: list[Background] = []
    app.state.guard = RequestGuard(settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    metrics.install(app, settings)
    if settings.api_docs:
        docs.install(app)
    app.include_router(health.router)
    app.include_router(memories.router)
    app.include_router(admin.router)
    app.include_router(persistence.router)
    if settings.console_enabled:
        background.append(console.install(app, settings))
    return app
