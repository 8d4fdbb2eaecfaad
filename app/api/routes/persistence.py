"""``/api/persistence/*``: the old system's status and sync routes, on the new machinery.

``status`` is the health of the servers the write path and the projection depend on; ``sync``
reads the operator statistics (GET) or runs a consistency operation (POST): check, repair, full
(check then repair) or rebuild. The old system's camelCase names (``userId``, ``dryRun``) and
snake_case are both accepted, in the JSON body or the query string. Every route needs an admin
key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from app.api.deps import AdminServiceDep, ConsistencyDep, require_admin
from app.api.errors import AUTH_ERRORS, FORBIDDEN, ErrorBody, error_response
from app.api.schemas import MAX_FINDINGS, HealthReport, Stats, SyncBody, SyncResult, UserId
from app.consistency import Operation, SyncRequest
from app.errors import ValidationError

router = APIRouter(prefix="/api/persistence", tags=["persistence"],
                   dependencies=[Depends(require_admin)], responses={**AUTH_ERRORS, **FORBIDDEN})


@router.get("/status", response_model=HealthReport, summary="Health of the servers",
            responses={503: {"model": ErrorBody, "description": (
                "Postgres is unreachable: writes fail. `error.health` holds the full report.")}})
def status(admin: AdminServiceDep) -> Any:
    """Reachability and latency of Postgres, Neo4j and Redis, outbox backlog and dead letters.

    200 when `ok` or `degraded` (only Neo4j or Redis down: writes are still accepted), 503 when
    Postgres is down.
    """
    health = admin.health().as_dict()
    if health["status"] == "down":
        return error_response(503, "store_unavailable", "; ".join(health["reasons"]),
                              headers={"Retry-After": "1"}, health=health)
    return HealthReport(**{**health, "outbox": health["outbox"] or None})


@router.get("/sync", response_model=Stats, summary="Sync statistics and the last check")
def sync_stats(admin: AdminServiceDep) -> dict[str, Any]:
    """Memories, outbox, dead letters, open inconsistencies, graph counts and the last check."""
    return admin.stats()


def _one(name: str, camel: Any, snake: Any) -> Any:
    if camel is not None and snake is not None and camel != snake:
        raise ValidationError(f"{name} and its snake_case twin disagree", name)
    return camel if camel is not None else snake


@router.post("/sync", response_model=SyncResult, summary="Run check, repair, full or rebuild",
             responses={503: {"model": ErrorBody, "description": (
                 "Postgres or Neo4j is unavailable; retry")}})
def run_sync(
    consistency: ConsistencyDep,
    body: Annotated[SyncBody | None, Body(description=(
        "The operation; fields here win over the query string."))] = None,
    operation: Annotated[Operation | None, Query(description="See the body.")] = None,
    user_id_camel: Annotated[UserId | None, Query(alias="userId")] = None,
    user_id: Annotated[UserId | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    dry_run_camel: Annotated[bool | None, Query(alias="dryRun")] = None,
    dry_run: Annotated[bool | None, Query()] = None,
    reextract: Annotated[bool | None, Query()] = None,
) -> Any:
    """Run a consistency operation and answer with its report.

    Blocking work runs in the server's thread pool; a large check or rebuild can take a while
    (the scheduler runs checks periodically too). Findings of a check are stored unless
    `dryRun`.
    """
    given = body.model_dump(exclude_none=True) if body is not None else {}
    op = given.get("operation", operation)
    if op is None:
        raise ValidationError("operation: field required (check, repair, full or rebuild)",
                              "operation")
    request = SyncRequest(
        op,
        given.get("user_id", _one("userId", user_id_camel, user_id)),
        given.get("limit", limit),
        bool(given.get("dry_run", _one("dryRun", dry_run_camel, dry_run))),
        bool(given.get("reextract", reextract)))
    return consistency.run(request).as_dict(max_findings=MAX_FINDINGS)
