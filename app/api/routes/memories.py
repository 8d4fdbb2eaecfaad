"""The memory API: store, read, list, update, delete and search one user's memories.

Every call names its user; a memory of another user answers exactly as a missing one does
(MemoryService scopes every statement by user). The routes are plain ``def`` functions because
the service is synchronous: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response

from app.api.deps import MemoryServiceDep, require_service
from app.api.errors import AUTH_ERRORS, CONFLICT, NOT_FOUND
from app.api.schemas import (
    Deleted,
    LegacyStoreRequest,
    SearchRequest,
    SearchResult,
    StoreRequest,
    UpdateRequest,
    UserId,
)
from app.domain import MAX_PAGE, Memory, Page
from app.errors import ValidationError

router = APIRouter(prefix="/api", tags=["memories"], dependencies=[Depends(require_service)],
                   responses=AUTH_ERRORS)

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
}


def _etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def _if_match(header: str | None) -> int | None:
    """The version an ``If-Match`` header asks for; ``*`` (any) and no header mean no check."""
    if header is None or header.strip() == "*":
        return None
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value.isdigit() or int(value) < 1:
        raise ValidationError('If-Match must be an ETag this API returned, like "3"', "If-Match")
    return int(value)


def _expected_version(if_match: str | None, expected_version: int | None) -> int | None:
    from_header = _if_match(if_match)
    if from_header is not None and expected_version is not None \
            and from_header != expected_version:
        raise ValidationError("If-Match and expected_version disagree", "If-Match")
    return from_header if from_header is not None else expected_version


def _metadata_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationError("metadata must be a JSON object", "metadata") from None
    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", "metadata")
    return value


def _store(memories: MemoryServiceDep, response: Response, user_id: str, content: str,
           metadata: dict[str, Any] | None, importance: int, key: str | None) -> Memory:
    memory, created = memories.store(user_id, content, metadata, importance,
                                     idempotency_key=key)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    _etag(response, memory.version)
    return memory


@router.post("/memories", status_code=201, response_model=Memory, summary="Store a memory",
             responses={201: {"description": "Stored.", "headers": _ETAG}, **_REPLAY})
def store_memory(body: StoreRequest, response: Response, memories: MemoryServiceDep,
                 idempotency_key: IdempotencyKey = None) -> Memory:
    """Store a memory and queue its projection to the graph, in one transaction."""
    return _store(memories, response, body.user_id, body.content, body.metadata,
                  body.importance, idempotency_key)


@router.post("/memory/store", status_code=201, response_model=Memory, tags=["legacy"],
             summary="Store a memory (the old system's request shape)", deprecated=True,
             responses={201: {"description": "Stored.", "headers": _ETAG}, **_REPLAY})
def store_memory_legacy(body: LegacyStoreRequest, response: Response,
                        memories: MemoryServiceDep,
                        idempotency_key: IdempotencyKey = None) -> Memory:
    """``{"userId", "content", "importance", "metadata"?}``; behaves as POST /api/memories."""
    return _store(memories, response, body.user_id, body.content, body.metadata,
                  body.importance, idempotency_key)


@router.get("/memories/{memory_id}", response_model=Memory, summary="Read a memory",
            responses={200: {"description": "The memory.", "headers": _ETAG}, **NOT_FOUND})
def get_memory(memory_id: uuid.UUID, user_id: UserQuery, response: Response,
               memories: MemoryServiceDep) -> Memory:
    """One live memory of this user."""
    memory = memories.get(user_id, memory_id)
    _etag(response, memory.version)
    return memory


@router.get("/memories", response_model=Page, summary="List memories")
def list_memories(
    user_id: UserQuery,
    memories: MemoryServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(
        description="`next_cursor` of the previous page.")] = None,
    min_importance: Annotated[int, Query(ge=1, le=10)] = 1,
    metadata: Annotated[str | None, Query(
        description='A JSON object the metadata must contain, e.g. `{"project":"x"}`.')] = None,
) -> Page:
    """A page of this user's live memories, newest first (keyset pagination)."""
    return memories.list(user_id, limit=limit, cursor=cursor, min_importance=min_importance,
                         metadata=_metadata_filter(metadata))


@router.patch("/memories/{memory_id}", response_model=Memory, summary="Change a memory",
              responses={200: {"description": "The changed memory.", "headers": _ETAG},
                         **NOT_FOUND, **CONFLICT})
def update_memory(memory_id: uuid.UUID, body: UpdateRequest, response: Response,
                  memories: MemoryServiceDep, if_match: IfMatch = None) -> Memory:
    """Change content, metadata or importance; bumps the version and queues re-projection."""
    memory = memories.update(
        body.user_id, memory_id, content=body.content, metadata=body.metadata,
        importance=body.importance,
        expected_version=_expected_version(if_match, body.expected_version))
    _etag(response, memory.version)
    return memory


@router.delete("/memories/{memory_id}", response_model=Deleted, summary="Delete a memory",
               responses={**NOT_FOUND, **CONFLICT})
def delete_memory(
    memory_id: uuid.UUID,
    user_id: UserQuery,
    memories: MemoryServiceDep,
    if_match: IfMatch = None,
    expected_version: Annotated[int | None, Query(ge=1, description=(
        "Refuse with 409 unless this is the current version."))] = None,
    cascade: Annotated[bool, Query(description=(
        "Accepted for compatibility with the old API and ignored: the graph side always "
        "removes entities nothing mentions any more."))] = True,
) -> Deleted:
    """Delete a memory; the graph drops it (and entities left unmentioned) asynchronously."""
    version = memories.delete(user_id, memory_id,
                              expected_version=_expected_version(if_match, expected_version))
    return Deleted(id=memory_id, version=version)


@router.post("/memories/search", response_model=SearchResult, summary="Search memories")
def search_memories(body: SearchRequest, memories: MemoryServiceDep) -> SearchResult:
    """Semantic search over this user's live memories, best first, with cosine scores."""
    items = memories.search(body.user_id, body.query, top_k=body.top_k,
                            metadata=body.metadata, min_importance=body.min_importance)
    return SearchResult(items=items)
