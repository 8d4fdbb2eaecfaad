"""Request and response bodies of the HTTP API.

Requests forbid unknown fields and use strict types (``"5"`` is not an importance), so a caller's
typo is a 422 naming the field rather than a silently ignored value. Limits that depend on
settings (content length) are checked by MemoryService, the one place every caller goes through.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.domain import Memory, ScoredMemory
from app.store import MAX_TOP_K, MAX_USER_ID


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


UserId = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_USER_ID, description="The memory's owner."),
    AfterValidator(_not_blank),
]
Content = Annotated[
    StrictStr,
    Field(min_length=1, description="The text to remember (at most MAX_CONTENT_CHARS)."),
    AfterValidator(_not_blank),
]
Importance = Annotated[StrictInt, Field(ge=1, le=10, description="1 (trivial) to 10 (vital).")]
Metadata = Annotated[dict[str, Any], Field(description="A JSON object.")]
Version = Annotated[StrictInt, Field(ge=1, description="A memory version.")]


class StrictBody(BaseModel):
    """Unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class StoreRequest(StrictBody):
    """A new memory."""

    user_id: UserId
    content: Content
    metadata: Metadata | None = None
    importance: Importance = 5

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": "user-1", "content": "Meeting with John about the Q4 roadmap",
        "metadata": {"source": "calendar"}, "importance": 7}]})


class LegacyStoreRequest(StrictBody):
    """The old system's ``/api/memory/store`` body, kept so existing callers work unchanged."""

    user_id: UserId = Field(alias="userId")
    content: Content
    importance: Importance = 5
    metadata: Metadata | None = None


class UpdateRequest(StrictBody):
    """A change to a memory; fields left out keep their value."""

    user_id: UserId
    content: Content | None = None
    metadata: Metadata | None = Field(default=None, description="Replaces the whole object.")
    importance: Importance | None = None
    expected_version: Version | None = Field(
        default=None, description="Refuse with 409 unless this is the current version "
                                  "(the `If-Match` header does the same).")


class SearchRequest(StrictBody):
    """A semantic search over one user's memories."""

    user_id: UserId
    query: Content
    top_k: Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K)] = 10
    metadata: Metadata | None = Field(
        default=None, description="Only memories whose metadata contains this object.")
    min_importance: Importance = 1


class SearchResult(BaseModel):
    """Matches, best first."""

    items: list[ScoredMemory]


class Deleted(BaseModel):
    """The answer to a delete."""

    id: uuid.UUID
    version: int = Field(description="The version the delete created.")
    deleted: bool = True


class Health(BaseModel):
    status: str = "ok"


class Whoami(BaseModel):
    scope: str


__all__ = [
    "Deleted",
    "Health",
    "LegacyStoreRequest",
    "Memory",
    "ScoredMemory",
    "SearchRequest",
    "SearchResult",
    "StoreRequest",
    "UpdateRequest",
    "Whoami",
]
