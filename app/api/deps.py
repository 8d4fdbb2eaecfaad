"""Dependencies of the routes: the process's services and bearer-key authentication.

Keys come from settings (``API_SERVICE_KEYS``, ``API_ADMIN_KEYS``). An admin key may do
everything a service key may. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.admin import AdminService
from app.api.guard import RequestGuard
from app.consistency import Consistency
from app.errors import Forbidden, Unauthorized
from app.jobs import Jobs
from app.keys import Principal
from app.outbox import Outbox
from app.retrieval import Retrieval
from app.store import MemoryService
from app.wiring import Services

log = logging.getLogger(__name__)


async def get_services(request: Request) -> Services:
    """The app's services, built by ``create_app``'s lifespan."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:  # pragma: no cover - a programming error, not a request error
        raise RuntimeError("the app was not started: use it inside its lifespan")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_memory_service(services: ServicesDep) -> MemoryService:
    """The memory service."""
    return services.memories


async def get_retrieval(services: ServicesDep) -> Retrieval:
    """Search, related memories and entities."""
    return services.retrieval


async def get_admin_service(services: ServicesDep) -> AdminService:
    """Health, readiness and stats."""
    return services.admin


async def get_outbox(services: ServicesDep) -> Outbox:
    """The outbox: dead letters and their replay."""
    return services.outbox


async def get_consistency(services: ServicesDep) -> Consistency:
    """Check, repair and rebuild of the graph."""
    return services.consistency


async def get_jobs(services: ServicesDep) -> Jobs:
    """Background sync jobs: submit, read, cancel (a runner process executes them)."""
    return services.jobs


MemoryServiceDep = Annotated[MemoryService, Depends(get_memory_service)]
RetrievalDep = Annotated[Retrieval, Depends(get_retrieval)]
AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
ConsistencyDep = Annotated[Consistency, Depends(get_consistency)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]

# auto_error=False: a missing key must answer in our error shape, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="`Authorization: Bearer <key>`: a service or admin key.")


async def authenticate(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any known key: 401 without one; 429 when the key is over its rate."""
    guard: RequestGuard = request.app.state.guard
    if credentials is None:
        guard.rejected(request, "missing")
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    principal = await run_in_threadpool(services.keys.identify, credentials.credentials)
    if principal is None:
        guard.rejected(request, "unknown")
        raise Unauthorized("the API key is not valid")
    guard.admit(principal)
    return principal


async def require_service(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """A service or admin key (the memory API)."""
    return principal


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """An admin key (``/api/admin/*``, ``/api/persistence/*``): 403 for a service key."""
    if principal.scope != "admin":
        raise Forbidden("this route needs an admin key")
    return principal


ServicePrincipal = Annotated[Principal, Depends(require_service)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
