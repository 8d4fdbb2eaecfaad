"""The admin API: stats, outbox stats, and dead letters (list, read, replay, discard).

Every route needs an admin key (403 for a service key). Replays and discards record the acting
admin as a non-secret label, ``api:admin-key-<n>`` (the key's position in ``API_ADMIN_KEYS``),
never the key. The routes are plain ``def`` functions: the services are synchronous, so FastAPI
runs them in its thread pool.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from app.api.deps import AdminPrincipal, AdminServiceDep, OutboxDep, ServicesDep, require_admin
from app.api.errors import AUTH_ERRORS, FORBIDDEN, ErrorBody
from app.api.schemas import (
    ApiKey,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRequest,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    DiscardRequest,
    DiscardResult,
    IsoDateTime,
    OutboxStats,
    ReembedStatus,
    ReplayRequest,
    ReplayResult,
    Stats,
    Text,
    UserId,
    Whoami,
)
from app.domain import MAX_PAGE
from app.errors import Busy, MemoryPersistenceError, ValidationError
from app.outbox import DeadLetterFilter, ReplaySelection
from app.reembed import Reembedder
from app.validation import MAX_BIGINT

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={**AUTH_ERRORS, **FORBIDDEN})

DEAD_LETTER_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such dead letter"}}
ALREADY_RESOLVED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The dead letter was already replayed or discarded"}}
DeadLetterId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The dead letter's id.")]


def utc(value: datetime | None) -> datetime | None:
    """A timestamp without a zone is taken as UTC (not the database session's zone)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@router.get("/whoami", response_model=Whoami, summary="The scope of the calling key")
async def whoami(principal: AdminPrincipal) -> Whoami:
    """``{"scope": "admin"}`` for an admin key; 403 for a service key."""
    return Whoami(scope=principal.scope)


@router.get("/stats", response_model=Stats, summary="Operator statistics")
def stats(admin: AdminServiceDep) -> dict[str, Any]:
    """Memories, outbox, dead letters, open inconsistencies, graph counts and the last check.

    The same answer as `GET /api/persistence/sync`, kept as a documented alias.
    """
    return admin.stats()


@router.get("/outbox/stats", response_model=OutboxStats, summary="Outbox statistics")
def outbox_stats(outbox: OutboxDep) -> dict[str, Any]:
    """Rows per status, expired leases and the age of the oldest open row."""
    return dataclasses.asdict(outbox.stats())


@router.get("/dead-letters", response_model=DeadLetterPage, summary="List dead letters")
def list_dead_letters(
    outbox: OutboxDep,
    user_id: Annotated[UserId | None, Query(description="Only this user's.")] = None,
    error: Annotated[Text | None, Query(min_length=1, max_length=500, description=(
        "A substring of the last error (case-insensitive)."))] = None,
    event_type: Annotated[Text | None, Query(min_length=1, max_length=50, description=(
        "`upsert`, `delete` or `resync`."))] = None,
    since: Annotated[IsoDateTime | None, Query(description=(
        "Created at or after (ISO 8601; UTC when no zone is given)."))] = None,
    until: Annotated[IsoDateTime | None, Query(description="Created before.")] = None,
    status: Annotated[Literal["dead", "replayed", "discarded", "any"], Query(description=(
        "`dead` (open, the default), `replayed`, `discarded` or `any`."))] = "dead",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description=(
        "`next_before_id` of the previous page."))] = None,
) -> DeadLetterPage:
    """A page of dead letters, newest first (keyset pagination on id)."""
    filters = DeadLetterFilter(None if status == "any" else status, user_id, event_type, error,
                               utc(since), utc(until))
    page = outbox.dead_letters(filters, limit=limit, before_id=before_id)
    return DeadLetterPage(items=[DeadLetter.model_validate(i) for i in page.items],
                          next_before_id=page.next_before_id)


@router.get("/dead-letters/{dead_letter_id}", response_model=DeadLetterDetail,
            summary="Read a dead letter", responses=DEAD_LETTER_NOT_FOUND)
def get_dead_letter(dead_letter_id: DeadLetterId, outbox: OutboxDep) -> Any:
    """One dead letter with its full error history."""
    return outbox.dead_letter(dead_letter_id)


@router.post("/dead-letters/replay", response_model=ReplayResult,
             summary="Replay dead letters by ids, by filter, or all",
             responses=DEAD_LETTER_NOT_FOUND)
def replay_dead_letters(body: ReplayRequest, principal: AdminPrincipal,
                        outbox: OutboxDep) -> ReplayResult:
    """Send the chosen open dead letters back to the outbox, attempts reset.

    Exactly one of `ids`, `filter` (at least one criterion) or `all: true`. Letters already
    replayed or discarded are skipped; an unknown id is a 404 and replays nothing.
    """
    f = body.filter
    selection = ReplaySelection(
        ids=tuple(body.ids) if body.ids is not None else None,
        filter=DeadLetterFilter("dead", f.user_id, f.event_type, f.error, utc(f.since),
                                utc(f.until)) if f is not None else None,
        everything=body.everything)
    result = outbox.replay(selection, principal.actor)
    return ReplayResult(replayed=result.replayed, count=len(result.replayed),
                        skipped=result.skipped)


@router.post("/dead-letters/{dead_letter_id}/replay", response_model=ReplayResult,
             summary="Replay one dead letter", responses={**DEAD_LETTER_NOT_FOUND,
                                                          **ALREADY_RESOLVED})
def replay_dead_letter(dead_letter_id: DeadLetterId, principal: AdminPrincipal,
                       outbox: OutboxDep) -> ReplayResult:
    """Its outbox row returns to pending with attempts reset; the letter records who did it."""
    result = outbox.replay_one(dead_letter_id, principal.actor)
    return ReplayResult(replayed=result.replayed, count=len(result.replayed))


@router.post("/dead-letters/{dead_letter_id}/discard", response_model=DiscardResult,
             summary="Discard a dead letter", responses={**DEAD_LETTER_NOT_FOUND,
                                                         **ALREADY_RESOLVED})
def discard_dead_letter(dead_letter_id: DeadLetterId, body: DiscardRequest,
                        principal: AdminPrincipal, outbox: OutboxDep) -> DiscardResult:
    """Close it without replaying; the reason (required) and the acting admin are kept."""
    outbox.discard(dead_letter_id, body.reason, principal.actor)
    return DiscardResult(id=dead_letter_id, resolved_by=principal.actor, reason=body.reason)


@router.get("/keys", response_model=ApiKeyList, summary="List API keys")
def list_keys(services: ServicesDep, include_revoked: Annotated[bool, Query(
        description="Also the revoked ones.")] = False) -> ApiKeyList:
    """The keys kept in Postgres, newest first, without their secrets."""
    return ApiKeyList(items=[ApiKey.model_validate(k) for k in
                             services.keys.list(include_revoked=include_revoked)])


@router.post("/keys", status_code=201, response_model=ApiKeyCreated, summary="Create an API key")
def create_key(body: ApiKeyRequest, principal: AdminPrincipal,
               services: ServicesDep) -> ApiKeyCreated:
    """A new key; the answer carries its secret, which is never shown again."""
    new = services.keys.create(body.name, body.scope, body.namespace, actor=principal.actor)
    return ApiKeyCreated(**new.record, secret=new.secret)


@router.delete("/keys/{key_id}", response_model=ApiKey, summary="Revoke an API key",
               responses={404: {"model": ErrorBody, "description": "No such key"}})
def revoke_key(key_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)], principal: AdminPrincipal,
               services: ServicesDep) -> ApiKey:
    """Every web process refuses the key within API_KEY_CACHE_SECONDS; revoking twice is
    harmless."""
    return ApiKey.model_validate(services.keys.revoke(key_id, actor=principal.actor))


class _ReembedRuns:
    """The re-embedding started from this web process, in a thread of its own.

    Progress is in the rows (resumable anywhere); this only remembers the last outcome.
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, job: Reembedder) -> None:
        def work() -> None:
            try:
                self.last = dataclasses.asdict(job.run())
            except MemoryPersistenceError as exc:
                self.last = {"error": str(exc), "code": exc.code}

        self.thread = threading.Thread(target=work, name="reembed", daemon=True)
        self.thread.start()


def _runs(request: Request) -> _ReembedRuns:
    if not hasattr(request.app.state, "reembed_runs"):
        request.app.state.reembed_runs = _ReembedRuns()
    runs: _ReembedRuns = request.app.state.reembed_runs
    return runs


def _reembed_status(services: ServicesDep, runs: _ReembedRuns) -> ReembedStatus:
    status = services.reembedder.status()
    return ReembedStatus(**dataclasses.asdict(status), dimension_ok=status.dimension_ok,
                         running=runs.running, last_run=runs.last)


@router.get("/reembed", response_model=ReembedStatus, summary="Re-embedding status")
def reembed_status(services: ServicesDep, request: Request) -> ReembedStatus:
    """How many memories still have another embedder's vector (the scheduler moves them in the
    background, REEMBED_PER_MINUTE at most; `memctl reembed` does it at once)."""
    return _reembed_status(services, _runs(request))


@router.post("/reembed", status_code=202, response_model=ReembedStatus,
             summary="Re-embed every memory now, in the background",
             responses={409: {"model": ErrorBody, "description": "A run is going on"}})
def start_reembed(services: ServicesDep, request: Request) -> ReembedStatus:
    """Start moving every pending memory to the configured embedder in this web process;
    `GET /api/admin/reembed` follows it. A dimension change needs `memctl reembed
    --change-dimension` (it changes the column)."""
    status = services.reembedder.status()
    if not status.dimension_ok:
        raise ValidationError(
            f"the vector column is vector({status.column_dimension}) but the embedder makes "
            f"{status.dimension}: run 'memctl reembed --change-dimension'", "embedder")
    runs = _runs(request)
    if runs.running:
        raise Busy("a re-embedding started here is still running")
    runs.start(services.reembedder)
    return _reembed_status(services, runs)
