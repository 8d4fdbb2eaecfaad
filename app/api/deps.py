"""Dependencies of the routes: the services container and bearer-key authentication.

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

from app.api.errors import Forbidden, Unauthorized
from app.db.connector import Database
from app.settings import Settings
from app.store import MemoryService

log = logging.getLogger(__name__)

Scope = Literal["service", "admin"]


@dataclass(frozen=True)
class Services:
    """What the routes need, built once per app by ``create_app`` and kept on ``app.state``."""

    settings: Settings
    db: Database
    memories: MemoryService


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: only the scope of its key, never the key itself."""

    scope: Scope


async def get_services(request: Request) -> Services:
    """The app's Services container."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:  # pragma: no cover - a programming error, not a request error
        raise RuntimeError("the app was not started: use it inside its lifespan")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_memory_service(services: ServicesDep) -> MemoryService:
    """The memory service."""
    return services.memories


MemoryServiceDep = Annotated[MemoryService, Depends(get_memory_service)]

# auto_error=False: a missing key must answer in our error shape, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="`Authorization: Bearer <key>`: a service or admin key.")


def _matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    # Compare against every key, without stopping at a match, so timing says nothing about
    # which key (or how many) there are.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def scope_of(settings: Settings, key: str) -> Scope | None:
    """The scope a key grants, or None for an unknown key."""
    given = key.encode()
    admin = tuple(k.get_secret_value().encode() for k in settings.api_admin_keys)
    service = tuple(k.get_secret_value().encode() for k in settings.api_service_keys)
    is_admin = _matches(given, admin)
    is_service = _matches(given, service)
    if is_admin:
        return "admin"
    if is_service:
        return "service"
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
    scope = scope_of(services.settings, credentials.credentials)
    if scope is None:
        log.warning("unknown API key", extra={"action": "api.auth_rejected",
                                              "path": request.url.path})
        raise Unauthorized("the API key is not valid")
    return Principal(scope)


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
