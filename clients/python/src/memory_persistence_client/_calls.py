"""Every API operation as data: the request to send and how to read its answer.

The sync and async clients only differ in how they send a ``Call``; what a route needs (path,
query, body, headers, whether repeating it is harmless) is written once here. A new route is one
function here and a one-line method on each client.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from memory_persistence_client.errors import ProtocolError
from memory_persistence_client.models import (
    BatchResult,
    Deleted,
    EntitiesResult,
    EntityMemoriesResult,
    HistoryPage,
    Memory,
    MemoryWithGraph,
    NewMemory,
    Page,
    RelatedResult,
    SearchResult,
    StoredMemory,
)

T = TypeVar("T")
MemoryId = uuid.UUID | str
SearchMode = Literal["vector", "text", "hybrid"]
Expand = Literal["graph"]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical operation; its retries resend exactly this (same Idempotency-Key)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    safe: bool = True
    """Repeating it has no second effect, so any failure may be retried."""
    extra_time: float = 0.0
    """Seconds the server may take on purpose (a wait it was asked for), added to the read
    timeout of each attempt."""


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError(f"{response.request.method} {response.request.url.path}: "
                            f"answer {response.status_code} is not JSON") from None


def _replayed(response: httpx.Response) -> bool:
    return str(response.headers.get("Idempotent-Replayed", "")).lower() == "true"


def _id(memory_id: MemoryId) -> str:
    # A UUID, or what the caller passed (the server answers 422 for anything else).
    return quote(str(memory_id), safe="")


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _write_key(idempotency_key: str | None) -> dict[str, str]:
    # One key per logical write, generated here once and resent by every retry of it.
    return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def _if_match(expected_version: int | None) -> dict[str, str]:
    return {} if expected_version is None else {"If-Match": f'"{expected_version}"'}


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def store(user_id: str, content: str, metadata: Mapping[str, Any] | None,
          importance: int | None, idempotency_key: str | None) -> Call[StoredMemory]:
    return Call("POST", "/api/memories",
                lambda r: StoredMemory.from_response(_json(r), _replayed(r)),
                body=_without_none(user_id=user_id, content=content, metadata=metadata,
                                   importance=importance),
                headers=_write_key(idempotency_key))


def store_batch(user_id: str, items: Iterable[NewMemory | str],
                idempotency_key: str | None) -> Call[BatchResult]:
    body = [(NewMemory(content=i) if isinstance(i, str) else i).to_json() for i in items]
    return Call("POST", "/api/memories/batch",
                lambda r: BatchResult.from_response(_json(r), _replayed(r)),
                body={"user_id": user_id, "items": body}, headers=_write_key(idempotency_key))


_MAX_EXTRA = 60.0


def _seconds(value: float) -> str:
    # The server takes "5" or "2.5" (up to three decimals), never an exponent.
    return f"{value:.3f}".rstrip("0").rstrip(".")


def get(user_id: str, memory_id: MemoryId,
        wait_for_graph: float | None = None) -> Call[MemoryWithGraph]:
    params: dict[str, str | int] = {"user_id": user_id}
    extra = 0.0
    if wait_for_graph is not None:
        params["wait_for_graph"] = _seconds(wait_for_graph)
        # The server refuses more than 30 s (or nonsense) with a 422: never wait past that.
        extra = min(max(0.0, float(wait_for_graph)), _MAX_EXTRA) \
            if math.isfinite(wait_for_graph) else 0.0
    return Call("GET", f"/api/memories/{_id(memory_id)}",
                lambda r: MemoryWithGraph.from_json(_json(r)), params=params, extra_time=extra)


def history_page(user_id: str, memory_id: MemoryId, limit: int | None,
                 before_version: int | None) -> Call[HistoryPage]:
    return Call("GET", f"/api/memories/{_id(memory_id)}/history",
                lambda r: HistoryPage.from_json(_json(r)),
                params=_without_none(user_id=user_id, limit=limit,
                                     before_version=before_version))


def list_page(user_id: str, limit: int | None, cursor: str | None,
              min_importance: int | None, metadata: Mapping[str, Any] | None) -> Call[Page]:
    params = _without_none(user_id=user_id, limit=limit, cursor=cursor,
                           min_importance=min_importance,
                           metadata=None if metadata is None else _compact(metadata))
    return Call("GET", "/api/memories", lambda r: Page.from_json(_json(r)), params=params)


def update(user_id: str, memory_id: MemoryId, content: str | None,
           metadata: Mapping[str, Any] | None, importance: int | None,
           expected_version: int | None) -> Call[Memory]:
    return Call("PATCH", f"/api/memories/{_id(memory_id)}",
                lambda r: Memory.from_json(_json(r)),
                body=_without_none(user_id=user_id, content=content, metadata=metadata,
                                   importance=importance),
                headers=_if_match(expected_version),
                # With an expected version a second apply is refused (409), never doubled.
                safe=expected_version is not None)


def delete(user_id: str, memory_id: MemoryId, expected_version: int | None) -> Call[Deleted]:
    return Call("DELETE", f"/api/memories/{_id(memory_id)}",
                lambda r: Deleted.from_json(_json(r)), params={"user_id": user_id},
                headers=_if_match(expected_version))


def search(user_id: str, query: str, top_k: int | None, metadata: Mapping[str, Any] | None,
           min_importance: int | None, mode: SearchMode | None = None,
           expand: Expand | None = None) -> Call[SearchResult]:
    # A read, though sent with POST: repeating it is harmless.
    return Call("POST", "/api/memories/search", lambda r: SearchResult.from_json(_json(r)),
                body=_without_none(user_id=user_id, query=query, top_k=top_k,
                                   metadata=metadata, min_importance=min_importance, mode=mode,
                                   expand=expand))


def related(user_id: str, memory_id: MemoryId, limit: int | None) -> Call[RelatedResult]:
    return Call("GET", f"/api/memories/{_id(memory_id)}/related",
                lambda r: RelatedResult.from_json(_json(r)),
                params=_without_none(user_id=user_id, limit=limit))


def entities(user_id: str, query: str | None, entity_type: str | None,
             limit: int | None) -> Call[EntitiesResult]:
    return Call("GET", "/api/entities", lambda r: EntitiesResult.from_json(_json(r)),
                params=_without_none(user_id=user_id, q=query, type=entity_type, limit=limit))


def entity_memories(user_id: str, key: str, limit: int | None) -> Call[EntityMemoriesResult]:
    # The key (type:name) is one path segment: every reserved character is escaped.
    return Call("GET", f"/api/entities/{quote(key, safe='')}/memories",
                lambda r: EntityMemoriesResult.from_json(_json(r)),
                params=_without_none(user_id=user_id, limit=limit))
