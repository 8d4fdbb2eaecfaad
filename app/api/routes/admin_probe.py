"""``GET /api/admin/whoami``: the smallest admin-scoped route, to check a key's scope."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminPrincipal
from app.api.errors import AUTH_ERRORS, FORBIDDEN
from app.api.schemas import Whoami

router = APIRouter(prefix="/api/admin", tags=["admin"], responses={**AUTH_ERRORS, **FORBIDDEN})


@router.get("/whoami", response_model=Whoami, summary="The scope of the calling key")
async def whoami(principal: AdminPrincipal) -> Whoami:
    """``{"scope": "admin"}`` for an admin key; 403 for a service key."""
    return Whoami(scope=principal.scope)
