"""Probes for a supervisor, without a key: liveness (the process answers) and readiness.

Readiness needs Postgres only (reachable, schema at this code's Alembic head): the write path
works while Neo4j or Redis is down, so neither may take the API out of a load balancer. The full
status of every server is ``GET /api/persistence/status`` (admin).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.errors import ErrorBody, error_response
from app.api.schemas import Health

router = APIRouter(prefix="/api/health", tags=["health"])


class Ready(Health):
    status: str = "ready"
    revision: str | None = None


@router.get("/live", response_model=Health, summary="Liveness probe")
async def live() -> Health:
    """200 while the process serves requests; touches no backend."""
    return Health()


@router.get("/ready", response_model=Ready, summary="Readiness probe",
            responses={503: {"model": ErrorBody, "description": (
                "Postgres is unreachable or its schema is not migrated to this code's head")}})
def ready(services: ServicesDep) -> Any:
    """200 when Postgres answers and its schema is migrated; never touches Neo4j or Redis."""
    readiness = services.admin.readiness()
    if not readiness.ok:
        return error_response(503, "not_ready", readiness.reason or "not ready",
                              headers={"Retry-After": "1"})
    return Ready(revision=readiness.revision)
