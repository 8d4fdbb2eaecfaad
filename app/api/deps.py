"""Dependencies of the routes: the process's services and bearer-key authentication.

Keys come from settings (``API_SERVICE_KEYS``, ``API_ADMIN_KEYS``). An admin key may do
everything a service key may. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.admin import AdminService
from app.consistency import Consistency
from app.errors import Forbidden, Unauthorized
from app.outbox import Outbox
from app.settings import Settings
from app.store import MemoryService
from app.wiring import Services

log = logging.getLogger(__name__)

Scope = Literal["service", "admin"]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: only the scope of its key, never the key itself."""

    scope: Scope
    key_index: int | None = None  # 1-based position of the key in its settings list

    @property
    def actor(self) -> str:
        """A non-secret label for audit records, e.g. ``api:admin-key-2``."""
        return f"api:{self.scope}-key-{self.key_index or 0}"


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


async def get_admin_service(services: ServicesDep) -> AdminService:
    """Health, readiness and stats."""
    return services.admin


async def get_outbox(services: ServicesDep) -> Outbox:
    """The outbox: dead letters and their replay."""
    return services.outbox


async def get_consistency(services: ServicesDep) -> Consistency:
    """Check, repair and rebuild of the graph."""
    return services.consistency


MemoryServiceDep = Annotated[MemoryService, Depends(get_memory_service)]
AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
ConsistencyDep = Annotated[Consistency, Depends(get_consistency)]

# auto_error=False: a missing key must answer in our error shape, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="`Authorization: Bearer <key>`: a service or admin key.")


def _match_index(given: bytes, keys: tuple[bytes, ...]) -> int | None:
    # Compare against every key, without stopping at a match, so timing says nothing about
    # which key (or how many) there are.
    found: int | None = None
    for i, key in enumerate(keys, start=1):
        if hmac.compare_digest(given, key) and found is None:
            found = i
    return found


def identify(settings: Settings, key: str) -> Principal | None:
    """The principal a key stands for (scope and key position), or None for an unknown key."""
    given = key.encode()
    admin = tuple(k.get_secret_value().encode() for k in settings.api_admin_keys)
    service = tuple(k.get_secret_value().encode() for k in settings.api_service_keys)
    admin_index = _match_index(given, admin)
    service_index = _match_index(given, service)
    if admin_index is not None:
        return Principal("admin", admin_index)
    if service_index is not None:
        return Principal("service", service_index)
    return None


async def authenticate(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any configured key: 401 without one."""
    if credentials is None:
        log.info("request without a bearer key", extra={"action": "api.auth_missing",
                                                         "path": request.url.path})
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    principal = identify(services.settings, credentials.credentials)
    if principal is None:
        log.warning("unknown API key", extra={"action": "api.auth_rejected",
                                              "path": request.url.path})
        raise Unauthorized("the API key is not valid")
    return principal


async def require_service(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """A service or admin key (the memory API)."""
    return principal


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """An admin key (``/api/admin/*``, ``/api/persistence/*``): 403 for a service key."""
    if principal.scope != "admin":
        raise Forbidden("this route needs an admin key")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]
