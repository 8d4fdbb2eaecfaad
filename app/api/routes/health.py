"""Liveness (no auth): the process answers. Readiness and status come with the admin routes."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.schemas import Health

router = APIRouter(prefix="/api/health", tags=["health"])


@router.get("/live", response_model=Health, summary="Liveness probe")
async def live() -> Health:
    """200 while the process serves requests; touches no backend."""
    return Health()
