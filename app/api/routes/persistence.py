"""``/api/persistence/*``: the old system's status and sync routes, on the new machinery.

``status`` is the health of the servers the write path and the projection depend on; ``sync``
reads the operator statistics (GET) or runs a consistency operation (POST): check, repair, full
(check then repair) or rebuild. The old system's camelCase names (``userId``, ``dryRun``) and
snake_case are both accepted, in the JSON body or the query string. Every route needs an admin
key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import AliasChoices, BaseModel, Field, StrictBool, StrictInt

from app.api.deps import AdminServiceDep, ConsistencyDep, require_admin
from app.api.errors import AUTH_ERRORS, FORBIDDEN, ErrorBody, error_response
from app.api.routes.admin import OutboxStats, Stats
from app.api.schemas import StrictBody, UserId
from app.consistency import Consistency, Finding
from app.errors import ValidationError

router = APIRouter(prefix="/api/persistence", tags=["persistence"],
                   dependencies=[Depends(require_admin)], responses={**AUTH_ERRORS, **FORBIDDEN})

Operation = Literal["check", "repair", "full", "rebuild"]
MAX_FINDINGS = 1000  # findings listed in a sync answer; all of them are stored


class ServerProbe(BaseModel):
    ok: bool
    latency_ms: float | None
    error: str | None = Field(description="Why the server is unreachable.")


class HealthReport(BaseModel):
    """`ok`; `degraded` when only Neo4j or Redis is down (writes are still accepted, the graph
    lags); `down` (HTTP 503) when Postgres is."""

    status: Literal["ok", "degraded", "down"]
    reasons: list[str] = Field(description="One line per unreachable server, naming it.")
    servers: dict[str, ServerProbe] = Field(description="`postgres`, `neo4j` and `redis`.")
    outbox: OutboxStats | None = Field(description="Null when Postgres is down.")
    dead_letters: int = Field(description="Open dead letters.")


class SyncBody(StrictBody):
    """A consistency operation; every field may also come from the query string."""

    operation: Operation | None = Field(default=None, description=(
        "`check` (compare and store findings), `repair` (fix the stored open findings), "
        "`full` (check, then repair what it found) or `rebuild` (re-project the graph)."))
    user_id: UserId | None = Field(
        default=None, validation_alias=AliasChoices("userId", "user_id"),
        description="Only this user's memories (`userId` or `user_id`).")
    limit: Annotated[StrictInt | None, Field(ge=1, description=(
        "check/full: at most this many memories; repair: at most this many findings."))] = None
    dry_run: StrictBool | None = Field(
        default=None, validation_alias=AliasChoices("dryRun", "dry_run"),
        description="check/repair/full: report only, store and change nothing "
                    "(`dryRun` or `dry_run`).")
    reextract: StrictBool | None = Field(default=None, description=(
        "rebuild: run the extractor again instead of using the cached extraction."))


class CheckSummary(BaseModel):
    checked: int = Field(description="Memories compared.")
    graph_nodes_checked: int
    in_transit: int = Field(description="Memories with an outbox event open: not judged.")
    found: int
    by_kind: dict[str, int]
    stored: bool = Field(description="Findings were stored (false on a dry run).")
    complete: bool = Field(description="False when `limit` stopped the check early.")
    seconds: float
    run_id: int | None


class RepairSummary(BaseModel):
    queued: int = Field(description="Outbox events queued to re-project memories.")
    removed_memories: int
    removed_entities: int
    removed_cross_user_edges: bool
    dry_run: bool


class RebuildSummary(BaseModel):
    projected: int
    skipped_deleted: int
    extracted: int
    seconds: float


class FindingOut(BaseModel):
    kind: str
    user_id: str | None
    memory_id: str | None
    entity_key: str | None
    details: dict[str, Any]


class SyncResult(BaseModel):
    operation: Operation
    consistent: bool | None = Field(default=None, description=(
        "check/full: whether the check found nothing."))
    check: CheckSummary | None = None
    repair: RepairSummary | None = None
    rebuild: RebuildSummary | None = None
    findings: list[FindingOut] = Field(default_factory=list, description=(
        f"check/full: what the check found (the first {MAX_FINDINGS})."))


def finding_out(f: Finding) -> FindingOut:
    return FindingOut(kind=f.kind, user_id=f.user_id, memory_id=f.memory_id,
                      entity_key=f.entity_key, details=f.details)


def run_operation(consistency: Consistency, op: Operation, user_id: str | None,
                  limit: int | None, dry_run: bool, reextract: bool) -> SyncResult:
    """Run one consistency operation (blocking) and describe it."""
    if op == "rebuild" and dry_run:
        raise ValidationError("dryRun: rebuild has no dry run", "dryRun")
    if op == "rebuild" and limit is not None:
        raise ValidationError("limit: rebuild always covers every memory in scope", "limit")
    if op != "rebuild" and reextract:
        raise ValidationError("reextract: applies to rebuild only", "reextract")
    # Fail fast (503) when Neo4j is down, rather than after the driver's retries.
    consistency.graph.ping()
    if op == "rebuild":
        rebuilt = consistency.rebuild(user_id, reextract=reextract)
        return SyncResult(operation=op, rebuild=RebuildSummary(**rebuilt.summary()))
    if op == "repair":
        repaired = consistency.repair(user_id=user_id, limit=limit, dry_run=dry_run)
        return SyncResult(operation=op, repair=RepairSummary(**repaired.summary()))
    if op == "check":
        checked = consistency.check(user_id, limit=limit, store=not dry_run)
        repair = None
    else:
        checked, repaired = consistency.full(user_id, limit=limit, dry_run=dry_run)
        repair = RepairSummary(**repaired.summary())
    return SyncResult(operation=op, consistent=checked.consistent,
                      check=CheckSummary(**checked.summary()), repair=repair,
                      findings=[finding_out(f) for f in checked.findings[:MAX_FINDINGS]])


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
) -> SyncResult:
    """Run a consistency operation and answer with its report.

    Blocking work runs in the server's thread pool; a large check or rebuild can take a while
    (the scheduler runs checks periodically too). Findings of a check are stored unless
    `dryRun`.
    """
    if user_id_camel is not None and user_id is not None and user_id_camel != user_id:
        raise ValidationError("userId and user_id disagree", "userId")
    if dry_run_camel is not None and dry_run is not None and dry_run_camel != dry_run:
        raise ValidationError("dryRun and dry_run disagree", "dryRun")
    given = body.model_dump(exclude_none=True) if body is not None else {}
    op = given.get("operation", operation)
    if op is None:
        raise ValidationError("operation: field required (check, repair, full or rebuild)",
                              "operation")
    return run_operation(
        consistency, op,
        given.get("user_id", user_id_camel if user_id_camel is not None else user_id),
        given.get("limit", limit),
        bool(given.get("dry_run", dry_run_camel if dry_run_camel is not None else dry_run)),
        bool(given.get("reextract", reextract)))
