"""The admin API: stats, outbox stats, and dead letters (list, read, replay, discard).

Every route needs an admin key (403 for a service key). Replays and discards record the acting
admin as a non-secret label, ``api:admin-key-<n>`` (the key's position in ``API_ADMIN_KEYS``),
never the key. The routes are plain ``def`` functions: AdminService is synchronous, so FastAPI
runs them in its thread pool.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from app.admin import MAX_PAGE, AdminService, DeadLetterFilter
from app.api.deps import AdminPrincipal, AdminServiceDep, require_admin
from app.api.errors import AUTH_ERRORS, FORBIDDEN, ErrorBody, error_response
from app.api.schemas import StrictBody, UserId
from app.errors import NotFound, ValidationError

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={**AUTH_ERRORS, **FORBIDDEN})

DEAD_LETTER_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such dead letter"}}
ALREADY_RESOLVED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The dead letter was already replayed or discarded"}}


# -- response bodies (shared with /api/persistence) ------------------------------------------


class OutboxStats(BaseModel):
    """Outbox rows per status and the projection lag."""

    pending: int
    in_flight: int
    done: int
    dead: int
    expired_leases: int = Field(description="In-flight rows whose lease ran out.")
    lag_seconds: float = Field(description="Age of the oldest open (pending or in-flight) row.")


class MemoryCounts(BaseModel):
    live: int
    deleted: int = Field(description="Tombstones not yet pruned.")
    awaiting_extraction: int
    users: int


class DeadLetterCounts(BaseModel):
    open: int = Field(description="Dead letters waiting for an admin (status `dead`).")
    replayed: int
    discarded: int


class CheckRun(BaseModel):
    """The most recent finished consistency check."""

    id: int
    scope: str
    started_at: datetime
    finished_at: datetime | None
    checked: int | None
    found: int | None
    result: dict[str, Any] | None


class Stats(BaseModel):
    """Everything an operator watches."""

    memories: MemoryCounts
    outbox: OutboxStats
    dead_letters: DeadLetterCounts
    inconsistencies: dict[str, int] = Field(description="Open inconsistencies by kind.")
    graph: dict[str, Any] | None = Field(
        description="Node and edge counts of the graph, or `{\"error\": ...}` when Neo4j is "
                    "unreachable.")
    last_check: CheckRun | None


DeadStatus = Literal["dead", "replayed", "discarded"]


class DeadLetter(BaseModel):
    """An outbox event that ran out of attempts, and what an admin did about it."""

    id: int
    outbox_id: int | None = Field(description="Null once the outbox row was pruned.")
    memory_id: uuid.UUID
    user_id: str
    event_type: str
    memory_version: int
    attempts: int
    last_error: str | None
    status: DeadStatus
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="Who replayed or discarded it, e.g. "
                                                "`api:admin-key-1` or `cli:alice`.")
    resolution_note: str | None = Field(description="`replayed`, or the discard reason.")


class FailedAttempt(BaseModel):
    """One failed attempt in a dead letter's error history."""

    model_config = ConfigDict(extra="allow")

    attempt: int | None = None
    at: datetime | None = None
    error: str | None = None


class DeadLetterDetail(DeadLetter):
    errors: list[FailedAttempt] = Field(description="Every failed attempt, oldest first.")


class DeadLetterPage(BaseModel):
    items: list[DeadLetter] = Field(description="Newest first.")
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next page; null on the last page.")


# -- request bodies -------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


class ReplayFilter(StrictBody):
    """Which dead letters (status `dead`) to replay; at least one criterion."""

    user_id: UserId | None = None
    error: Annotated[StrictStr | None, Field(min_length=1, max_length=500, description=(
        "A substring of the last error (case-insensitive)."))] = None
    event_type: Annotated[StrictStr | None, Field(min_length=1, max_length=50)] = None
    since: datetime | None = Field(default=None, description="Dead since (inclusive).")
    until: datetime | None = Field(default=None, description="Dead before (exclusive).")


class ReplayRequest(StrictBody):
    """Exactly one of `ids`, `filter` or `all: true`."""

    ids: Annotated[list[StrictInt] | None, Field(min_length=1, max_length=MAX_PAGE * 20)] = None
    filter: ReplayFilter | None = None
    everything: StrictBool = Field(default=False, alias="all",
                                   description="Replay every open dead letter.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ids": [12, 13]}, {"filter": {"error": "timeout", "user_id": "user-1"}},
        {"all": True}]})


class ReplayResult(BaseModel):
    replayed: list[int] = Field(description="Dead letters whose outbox row is pending again.")
    count: int
    skipped: list[int] = Field(default_factory=list, description=(
        "Requested ids that were already replayed or discarded."))


class DiscardRequest(StrictBody):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=2000, description=(
        "Why the event is given up; kept on the dead letter.")), AfterValidator(_not_blank)]


class DiscardResult(BaseModel):
    id: int
    status: Literal["discarded"] = "discarded"
    resolved_by: str
    reason: str


# -- helpers --------------------------------------------------------------------------------


def utc(value: datetime | None) -> datetime | None:
    """A timestamp without a zone is taken as UTC (not the database session's zone)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def dead_letter_missing() -> JSONResponse:
    return error_response(404, "not_found", "dead letter not found")


def already_resolved(status: str) -> JSONResponse:
    return error_response(409, "already_resolved", f"the dead letter was already {status}")


def _open_dead_letter(admin: AdminService, dead_letter_id: int) -> JSONResponse | None:
    """None when the dead letter exists and is open, else the error answer."""
    try:
        row = admin.get_dead_letter(dead_letter_id)
    except NotFound:
        return dead_letter_missing()
    if row["status"] != "dead":
        return already_resolved(row["status"])
    return None


DeadLetterId = Annotated[int, Path(ge=1, description="The dead letter's id.")]


# -- routes ---------------------------------------------------------------------------------


@router.get("/stats", response_model=Stats, summary="Operator statistics")
def stats(admin: AdminServiceDep) -> dict[str, Any]:
    """Memories, outbox, dead letters, open inconsistencies, graph counts and the last check."""
    return admin.stats()


@router.get("/outbox/stats", response_model=OutboxStats, summary="Outbox statistics")
def outbox_stats(admin: AdminServiceDep) -> dict[str, Any]:
    """Rows per status, expired leases and the age of the oldest open row."""
    return admin.outbox_stats()


@router.get("/dead-letters", response_model=DeadLetterPage, summary="List dead letters")
def list_dead_letters(
    admin: AdminServiceDep,
    user_id: Annotated[UserId | None, Query(description="Only this user's.")] = None,
    error: Annotated[str | None, Query(min_length=1, max_length=500, description=(
        "A substring of the last error (case-insensitive)."))] = None,
    event_type: Annotated[str | None, Query(min_length=1, max_length=50, description=(
        "`upsert`, `delete` or `resync`."))] = None,
    since: Annotated[datetime | None, Query(description=(
        "Created at or after (ISO 8601; UTC when no zone is given)."))] = None,
    until: Annotated[datetime | None, Query(description="Created before.")] = None,
    status: Annotated[Literal["dead", "replayed", "discarded", "any"], Query(description=(
        "`dead` (open, the default), `replayed`, `discarded` or `any`."))] = "dead",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    before_id: Annotated[int | None, Query(ge=1, description=(
        "`next_before_id` of the previous page."))] = None,
) -> DeadLetterPage:
    """A page of dead letters, newest first (keyset pagination on id)."""
    filters = DeadLetterFilter(None if status == "any" else status, user_id, event_type, error,
                               utc(since), utc(until))
    items = admin.list_dead_letters(filters, limit=limit, before_id=before_id)
    next_before_id = None
    if len(items) == limit:
        # One row past the page tells whether there is a next one, so the last page says so.
        more = admin.list_dead_letters(filters, limit=1, before_id=items[-1]["id"])
        next_before_id = items[-1]["id"] if more else None
    return DeadLetterPage(items=[DeadLetter.model_validate(i) for i in items],
                          next_before_id=next_before_id)


@router.get("/dead-letters/{dead_letter_id}", response_model=DeadLetterDetail,
            summary="Read a dead letter", responses=DEAD_LETTER_NOT_FOUND)
def get_dead_letter(dead_letter_id: DeadLetterId, admin: AdminServiceDep) -> Any:
    """One dead letter with its full error history."""
    try:
        return admin.get_dead_letter(dead_letter_id)
    except NotFound:
        return dead_letter_missing()


@router.post("/dead-letters/replay", response_model=ReplayResult,
             summary="Replay dead letters by ids, by filter, or all",
             responses=DEAD_LETTER_NOT_FOUND)
def replay_dead_letters(body: ReplayRequest, principal: AdminPrincipal,
                        admin: AdminServiceDep) -> Any:
    """Send the chosen open dead letters back to the outbox, attempts reset.

    Exactly one of `ids`, `filter` (at least one criterion) or `all: true`. Letters already
    replayed or discarded are skipped; an unknown id is a 404 and replays nothing.
    """
    chosen = [name for name, given in (("ids", body.ids is not None),
                                       ("filter", body.filter is not None),
                                       ("all", body.everything)) if given]
    if len(chosen) != 1:
        raise ValidationError("give exactly one of ids, filter or all: true",
                              chosen[1] if len(chosen) > 1 else "ids")
    if body.ids is not None:
        try:
            done = admin.replay(ids=body.ids, actor=principal.actor)
        except NotFound:
            return dead_letter_missing()
        skipped = sorted(set(body.ids) - set(done))
        return ReplayResult(replayed=done, count=len(done), skipped=skipped)
    if body.filter is not None:
        f = body.filter
        if all(v is None for v in f.model_dump().values()):
            raise ValidationError("a filter needs at least one criterion (or use all: true)",
                                  "filter")
        done = admin.replay(filters=DeadLetterFilter("dead", f.user_id, f.event_type, f.error,
                                                     utc(f.since), utc(f.until)),
                            actor=principal.actor)
        return ReplayResult(replayed=done, count=len(done))
    done = admin.replay(everything=True, actor=principal.actor)
    return ReplayResult(replayed=done, count=len(done))


@router.post("/dead-letters/{dead_letter_id}/replay", response_model=ReplayResult,
             summary="Replay one dead letter", responses={**DEAD_LETTER_NOT_FOUND,
                                                          **ALREADY_RESOLVED})
def replay_dead_letter(dead_letter_id: DeadLetterId, principal: AdminPrincipal,
                       admin: AdminServiceDep) -> Any:
    """Its outbox row returns to pending with attempts reset; the letter records who did it."""
    refused = _open_dead_letter(admin, dead_letter_id)
    if refused is not None:
        return refused
    done = admin.replay(ids=[dead_letter_id], actor=principal.actor)
    if not done:  # resolved by someone else in the meantime
        return already_resolved("resolved")
    return ReplayResult(replayed=done, count=len(done))


@router.post("/dead-letters/{dead_letter_id}/discard", response_model=DiscardResult,
             summary="Discard a dead letter", responses={**DEAD_LETTER_NOT_FOUND,
                                                         **ALREADY_RESOLVED})
def discard_dead_letter(dead_letter_id: DeadLetterId, body: DiscardRequest,
                        principal: AdminPrincipal, admin: AdminServiceDep) -> Any:
    """Close it without replaying; the reason (required) and the acting admin are kept."""
    refused = _open_dead_letter(admin, dead_letter_id)
    if refused is not None:
        return refused
    try:
        admin.discard(dead_letter_id, body.reason, actor=principal.actor)
    except ValidationError as exc:
        if exc.field != "id":
            raise
        return already_resolved("resolved")  # by someone else in the meantime
    return DiscardResult(id=dead_letter_id, resolved_by=principal.actor, reason=body.reason)
