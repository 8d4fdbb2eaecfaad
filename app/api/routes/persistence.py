"""``/api/persistence/*``: the old system's status and sync routes, on the new machinery.

``status`` is the health of the servers the write path and the projection depend on; ``sync``
reads the operator statistics (GET) or submits a consistency operation (POST): check, repair,
full (check then repair) or rebuild, as a background job a runner (the scheduler) executes; the
answer is 202 with the job and its ``Location``. ``sync/jobs`` lists, shows and cancels jobs. A
small check may still run inside the request (``wait=true``), as the old system's did. The old
system's camelCase names (``userId``, ``dryRun``) and snake_case are both accepted, in the JSON
body or the query string. Every route needs an admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from app.api.deps import AdminPrincipal, AdminServiceDep, ConsistencyDep, JobsDep, require_admin
from app.api.errors import AUTH_ERRORS, FORBIDDEN, ErrorBody, error_response
from app.api.schemas import (
    MAX_FINDINGS,
    HealthReport,
    Stats,
    SyncBody,
    SyncJob,
    SyncJobList,
    SyncResult,
    UserId,
)
from app.consistency import Operation, SyncRequest
from app.domain import MAX_PAGE
from app.errors import ValidationError
from app.jobs import Status
from app.validation import MAX_BIGINT

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


JOB_PATH = "/api/persistence/sync/jobs/{id}"
JobId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The job's id.")]


@router.post("/sync", status_code=202, response_model=SyncJob,
             summary="Submit check, repair, full or rebuild as a background job",
             responses={
                 200: {"model": SyncResult, "description": (
                     "`wait=true`: the check ran inside the request; its report.")},
                 202: {"description": "Queued: the job, and its URL in `Location`."},
                 503: {"model": ErrorBody, "description": (
                     "Postgres (or, with `wait=true`, Neo4j) is unavailable; retry")}})
def run_sync(
    consistency: ConsistencyDep,
    jobs: JobsDep,
    principal: AdminPrincipal,
    body: Annotated[SyncBody | None, Body(description=(
        "The operation; fields here win over the query string."))] = None,
    operation: Annotated[Operation | None, Query(description="See the body.")] = None,
    user_id_camel: Annotated[UserId | None, Query(alias="userId")] = None,
    user_id: Annotated[UserId | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    dry_run_camel: Annotated[bool | None, Query(alias="dryRun")] = None,
    dry_run: Annotated[bool | None, Query()] = None,
    reextract: Annotated[bool | None, Query()] = None,
    wait: Annotated[bool, Query(description=(
        "Run a small `check` inside this request and answer 200 with its report (the old "
        "synchronous contract): refused (422) for other operations and for a check of more "
        "memories than `SYNC_WAIT_MAX_MEMORIES` (give a `limit`, or submit a job)."))] = False,
) -> Any:
    """Queue a consistency operation as a background job: 202 with the job and its
    `Location` (`GET /api/persistence/sync/jobs/{id}` follows it). A runner (the scheduler
    process) executes it, never the web process; a job whose runner dies is resumed by the next
    one. Findings of a check are stored unless `dryRun`.
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
    if wait:
        if request.operation != "check":
            raise ValidationError("wait: only a check runs inside the request; repair, full "
                                  "and rebuild run as background jobs (leave out wait)", "wait")
        bound = consistency.settings.sync_wait_max_memories
        size = consistency.total(request.user_id, request.limit)
        if size > bound:
            raise ValidationError(
                f"wait: this check covers {size} memories, more than SYNC_WAIT_MAX_MEMORIES "
                f"({bound}) run inside a request: give a limit, or submit it as a job (leave "
                "out wait)", "wait")
        report = consistency.run(request).as_dict(max_findings=MAX_FINDINGS)
        return JSONResponse(jsonable_encoder(SyncResult(**report)), status_code=200)
    job = jobs.submit(request, principal.actor)
    return JSONResponse(jsonable_encoder(SyncJob(**job.as_dict())), status_code=202,
                        headers={"Location": JOB_PATH.format(id=job.id)})


@router.get("/sync/jobs", response_model=SyncJobList, summary="Background sync jobs")
def list_jobs(
    jobs: JobsDep,
    status: Annotated[Status | None, Query(description="Only jobs in this state.")] = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description=(
        "The `next_before_id` of the previous page."))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Jobs, newest first, a page at a time."""
    page = jobs.page(status, before_id=before_id, limit=limit)
    return {"items": [j.as_dict() for j in page.items], "next_before_id": page.next_before_id}


@router.get("/sync/jobs/{job_id}", response_model=SyncJob, summary="One background sync job",
            responses={404: {"model": ErrorBody, "description": "No such job."}})
def get_job(jobs: JobsDep, job_id: JobId) -> dict[str, Any]:
    """Status, phase, progress (done of total), timings, attempts and, once done, the report."""
    return jobs.get(job_id).as_dict()


@router.post("/sync/jobs/{job_id}/cancel", response_model=SyncJob,
             summary="Cancel a background sync job",
             responses={404: {"model": ErrorBody, "description": "No such job."},
                        409: {"model": ErrorBody, "description": "The job ended already."}})
def cancel_job(jobs: JobsDep, principal: AdminPrincipal, job_id: JobId) -> dict[str, Any]:
    """A queued job is cancelled at once (`status: cancelled`); a running one keeps running
    until its runner's next page (`cancel_requested_at` is set, then `status: cancelled`)."""
    return jobs.cancel(job_id, principal.actor).as_dict()
