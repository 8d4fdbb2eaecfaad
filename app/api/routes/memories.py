"""The memory API: store, read, list, update, delete and search one user's memories.

Every call names its user; a memory of another user answers exactly as a missing one does
(MemoryService scopes every statement by user). The routes are plain ``def`` functions because
the service is synchronous: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from app.api.deps import MemoryServiceDep, RetrievalDep, ServicePrincipal, require_service
from app.api.errors import AUTH_ERRORS, CONFLICT, FORBIDDEN, NOT_FOUND, ErrorBody
from app.api.schemas import (
    BatchResult,
    BatchStoreRequest,
    Deleted,
    EntitiesResult,
    EntityMemoriesResult,
    LegacyStoreRequest,
    RelatedResult,
    SearchRequest,
    SearchResult,
    StoreRequest,
    Text,
    UpdateRequest,
    UserId,
    entities_result,
    entity_memories_result,
    related_result,
    search_result,
)
from app.domain import MAX_GRAPH_WAIT_SECONDS, MAX_PAGE, HistoryPage, Memory, MemoryWithGraph, Page
from app.errors import ValidationError
from app.keys import Principal
from app.store import NewMemory
from app.validation import MAX_BIGINT, parse_json_object

router = APIRouter(prefix="/api", tags=["memories"], dependencies=[Depends(require_service)],
                   responses={**AUTH_ERRORS, **FORBIDDEN})

UserQuery = Annotated[UserId, Query(description="The memory's owner.")]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Retrying with the same key returns the first result (200 with "
                "`Idempotent-Replayed: true`) instead of storing a duplicate; the same key with "
                "a different body is a 422.")]
IfMatch = Annotated[str | None, Header(
    alias="If-Match", description='`"<version>"` (the ETag): refuse with 409 unless current.')]

_ETAG: dict[str, Any] = {
    "ETag": {"description": 'The memory\'s version, `"<version>"`.', "schema": {"type": "string"}},
}
_REPLAY: dict[int | str, dict[str, Any]] = {
    200: {"model": Memory, "description": "An idempotent replay: the first result.",
          "headers": {"Idempotent-Replayed": {"description": "`true`",
                                              "schema": {"type": "string"}}, **_ETAG}},
    404: {"model": ErrorBody, "description": (
        "A retry with an Idempotency-Key whose memory was deleted since (keys are kept for "
        "IDEMPOTENCY_RETENTION_HOURS).")},
}


def _etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


# A strong ETag we sent ("3"), or the bare version; ASCII digits only (str.isdigit takes "²").
_ETAG_VALUE = re.compile(r'"([0-9]{1,19})"|([0-9]{1,19})')


def _if_match(header: str | None) -> int | None:
    """The version an ``If-Match`` header asks for; ``*`` (any) and no header mean no check."""
    if header is None or header.strip() == "*":
        return None
    match = _ETAG_VALUE.fullmatch(header.strip())
    version = int(match.group(1) or match.group(2)) if match is not None else 0
    if not 1 <= version <= MAX_BIGINT:
        raise ValidationError('If-Match must be an ETag this API returned, like "3"', "If-Match")
    return version


def _expected_version(if_match: str | None, expected_version: int | None) -> int | None:
    from_header = _if_match(if_match)
    if from_header is not None and expected_version is not None \
            and from_header != expected_version:
        raise ValidationError("If-Match and expected_version disagree", "If-Match")
    return from_header if from_header is not None else expected_version


def _store(memories: MemoryServiceDep, principal: Principal, response: Response,
           user_id: str, content: str, metadata: dict[str, Any] | None, importance: int,
           key: str | None) -> Memory:
    principal.authorize(user_id)
    memory, created = memories.store(user_id, content, metadata, importance,
                                     idempotency_key=key, idempotency_scope=principal.key_id,
                                     actor=principal.key_id)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    _etag(response, memory.version)
    return memory


@router.post("/memories", status_code=201, response_model=Memory, summary="Store a memory",
             responses={201: {"description": "Stored.", "headers": _ETAG}, **_REPLAY})
def store_memory(body: StoreRequest, response: Response, memories: MemoryServiceDep,
                 principal: ServicePrincipal, idempotency_key: IdempotencyKey = None) -> Memory:
    """Store a memory and queue its projection to the graph, in one transaction."""
    return _store(memories, principal, response, body.user_id, body.content, body.metadata,
                  body.importance, idempotency_key)


@router.post("/memories/batch", status_code=201, response_model=BatchResult,
             summary="Store several memories at once",
             responses={201: {"description": "Stored, all of them."},
                        200: {"model": BatchResult, "description": (
                            "An idempotent replay: the batch the key first stored.")},
                        404: _REPLAY[404]})
def store_batch(body: BatchStoreRequest, response: Response, memories: MemoryServiceDep,
                principal: ServicePrincipal,
                idempotency_key: IdempotencyKey = None) -> BatchResult:
    """Store up to MAX_BATCH_ITEMS memories of one user in one transaction, embedded in
    batches; one Idempotency-Key covers the whole batch."""
    principal.authorize(body.user_id)
    stored, created = memories.store_many(
        body.user_id, [NewMemory(i.content, i.metadata, i.importance) for i in body.items],
        idempotency_key, idempotency_scope=principal.key_id, actor=principal.key_id)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return BatchResult(items=stored)


@router.post("/memory/store", status_code=201, response_model=Memory, tags=["legacy"],
             summary="Store a memory (the old system's request shape)", deprecated=True,
             responses={201: {"description": "Stored.", "headers": _ETAG}, **_REPLAY})
def store_memory_legacy(body: LegacyStoreRequest, response: Response,
                        memories: MemoryServiceDep, principal: ServicePrincipal,
                        idempotency_key: IdempotencyKey = None) -> Memory:
    """``{"userId", "content", "importance", "metadata"?}``; behaves as POST /api/memories."""
    return _store(memories, principal, response, body.user_id, body.content, body.metadata,
                  body.importance, idempotency_key)


# "5", "2.5" or "5s": seconds (MemoryService checks them against MAX_GRAPH_WAIT_SECONDS).
_WAIT = r"^[0-9]{1,3}(\.[0-9]{1,3})?s?$"


@router.get("/memories/{memory_id}", response_model=MemoryWithGraph, summary="Read a memory",
            responses={200: {"description": "The memory.", "headers": _ETAG}, **NOT_FOUND})
async def get_memory(
    memory_id: uuid.UUID, user_id: UserQuery, response: Response,
    memories: MemoryServiceDep, principal: ServicePrincipal,
    wait_for_graph: Annotated[str | None, Query(pattern=_WAIT, description=(
        f"Seconds (`5` or `5s`, at most {MAX_GRAPH_WAIT_SECONDS:g}) to wait until the current "
        "version is projected into the graph (or failed, or dead) before answering; "
        "`graph.timed_out` says whether the time ran out first."))] = None,
) -> MemoryWithGraph:
    """One live memory of this user, with where its projection into the graph stands."""
    principal.authorize(user_id)
    wait = float(wait_for_graph.removesuffix("s")) if wait_for_graph is not None else 0.0
    memory = await memories.get_async(user_id, memory_id, wait_for_graph=wait)
    _etag(response, memory.version)
    return memory


@router.get("/memories/{memory_id}/history", response_model=HistoryPage,
            summary="A memory's history", responses=NOT_FOUND)
def memory_history(
    memory_id: uuid.UUID, user_id: UserQuery, memories: MemoryServiceDep,
    principal: ServicePrincipal,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    before_version: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description=(
        "`next_before_version` of the previous page."))] = None,
) -> HistoryPage:
    """Every kept version of this user's memory, newest first: content, metadata, importance,
    the API key (its id) that made it and when; a delete is the last entry. A deleted memory's
    entries lose their content once its tombstone is purged (TOMBSTONE_RETENTION_HOURS);
    HISTORY_RETENTION_DAYS forgets older entries (never the latest)."""
    principal.authorize(user_id)
    return memories.history(user_id, memory_id, limit=limit, before_version=before_version)


@router.get("/memories", response_model=Page, summary="List memories")
def list_memories(
    user_id: UserQuery,
    memories: MemoryServiceDep,
    principal: ServicePrincipal,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(
        max_length=200, description="`next_cursor` of the previous page.")] = None,
    min_importance: Annotated[int, Query(ge=1, le=10)] = 1,
    metadata: Annotated[str | None, Query(description=(
        'A JSON object the metadata must contain, e.g. `{"project":"x"}` (within the '
        'metadata limits).'))] = None,
) -> Page:
    """A page of this user's live memories, newest first (keyset pagination)."""
    principal.authorize(user_id)
    filters = None
    if metadata is not None:
        filters = parse_json_object(metadata, memories.settings.metadata_limits, "metadata")
    return memories.list(user_id, limit=limit, cursor=cursor, min_importance=min_importance,
                         metadata=filters)


@router.patch("/memories/{memory_id}", response_model=Memory, summary="Change a memory",
              responses={200: {"description": "The changed memory.", "headers": _ETAG},
                         **NOT_FOUND, **CONFLICT})
def update_memory(memory_id: uuid.UUID, body: UpdateRequest, response: Response,
                  memories: MemoryServiceDep, principal: ServicePrincipal,
                  if_match: IfMatch = None) -> Memory:
    """Change content, metadata or importance; bumps the version and queues re-projection."""
    principal.authorize(body.user_id)
    memory = memories.update(
        body.user_id, memory_id, content=body.content, metadata=body.metadata,
        importance=body.importance,
        expected_version=_expected_version(if_match, body.expected_version),
        actor=principal.key_id)
    _etag(response, memory.version)
    return memory


@router.delete("/memories/{memory_id}", response_model=Deleted, summary="Delete a memory",
               responses={**NOT_FOUND, **CONFLICT})
def delete_memory(
    memory_id: uuid.UUID,
    user_id: UserQuery,
    memories: MemoryServiceDep,
    principal: ServicePrincipal,
    if_match: IfMatch = None,
    expected_version: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description=(
        "Refuse with 409 unless this is the current version."))] = None,
    cascade: Annotated[bool, Query(description=(
        "Accepted for compatibility with the old API and ignored: the graph side always "
        "removes entities nothing mentions any more."))] = True,
) -> Deleted:
    """Delete a memory; the graph drops it (and entities left unmentioned) asynchronously."""
    principal.authorize(user_id)
    version = memories.delete(user_id, memory_id,
                              expected_version=_expected_version(if_match, expected_version),
                              actor=principal.key_id)
    return Deleted(id=memory_id, version=version)


@router.post("/memories/search", response_model=SearchResult, summary="Search memories")
def search_memories(body: SearchRequest, retrieval: RetrievalDep,
                    principal: ServicePrincipal) -> SearchResult:
    """This user's live memories that best match the query, best first: by meaning, by words,
    or both fused (the default); each hit says where it ranked. With `expand: "graph"`, the
    hits' graph neighbours follow, marked `via: "graph"`."""
    principal.authorize(body.user_id)
    return search_result(retrieval.search(
        body.user_id, body.query, mode=body.mode, top_k=body.top_k, metadata=body.metadata,
        min_importance=body.min_importance, expand=body.expand))


@router.get("/memories/{memory_id}/related", response_model=RelatedResult,
            summary="Memories related through shared entities", responses=NOT_FOUND)
def related_memories(
    memory_id: uuid.UUID, user_id: UserQuery, retrieval: RetrievalDep,
    principal: ServicePrincipal,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many.")] = 10,
) -> RelatedResult:
    """The user's live memories that share entities with this one (from the graph; from the
    extractions cached in Postgres, marked `degraded`, when the graph is down or behind)."""
    principal.authorize(user_id)
    return related_result(retrieval.related(user_id, memory_id, limit=limit))


@router.get("/entities", response_model=EntitiesResult, summary="A user's entities")
def list_entities(
    user_id: UserQuery, retrieval: RetrievalDep, principal: ServicePrincipal,
    q: Annotated[Text | None, Query(min_length=1, max_length=200, description=(
        "Part of the name (any case)."))] = None,
    entity_type: Annotated[str | None, Query(alias="type", pattern=r"^[a-z_]{1,40}$",
                                             description="Only this type, e.g. person.")
                           ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> EntitiesResult:
    """Names, types and mention counts of the user's entities, most mentioned first."""
    principal.authorize(user_id)
    return entities_result(retrieval.entities(user_id, query=q, type_=entity_type,
                                              limit=limit))


# `{key:path}`: the server decodes %2F before routing, so a name with a slash ("AC/DC") must
# still reach this route rather than answer 404.
@router.get("/entities/{key:path}/memories", response_model=EntityMemoriesResult,
            summary="Memories that mention an entity")
def entity_memories(
    key: Annotated[str, Path(max_length=300, description=(
        "The entity's key, `type:name` (as /api/entities lists it), URL-encoded."))],
    user_id: UserQuery, retrieval: RetrievalDep, principal: ServicePrincipal,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> EntityMemoriesResult:
    """The user's live memories that mention this entity, most important first."""
    principal.authorize(user_id)
    return entity_memories_result(retrieval.entity_memories(user_id, key, limit=limit))
