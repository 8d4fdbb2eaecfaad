"""A Python client of the memory-persistence HTTP API: sync and async, typed, with retries.

    from memory_persistence_client import MemoryClient

    with MemoryClient("http://127.0.0.1:8000", api_key) as client:
        memory = client.store("alice", "Meeting with John about Q4 roadmap", importance=7)
        hits = client.search("alice", "roadmap with John", top_k=5)

Retries (``RetryPolicy``) are exponential backoff with full jitter on connection errors, 429,
502, 503 and 504, honouring ``Retry-After``; every store carries one Idempotency-Key for all
its attempts, so a retry never stores a second memory. See ``retry`` for the exact rules.
"""

from memory_persistence_client.client import AsyncMemoryClient, MemoryClient, __version__
from memory_persistence_client.errors import (
    AlreadyResolved,
    APIError,
    Busy,
    Conflict,
    EmbeddingUnavailable,
    Forbidden,
    IdempotencyConflict,
    MemoryClientError,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    StoreUnavailable,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationError,
    VersionConflict,
)
from memory_persistence_client.models import (
    BatchResult,
    Deleted,
    EntitiesResult,
    Entity,
    EntityItem,
    EntityMemoriesResult,
    EntityRef,
    GraphAnswer,
    GraphProjection,
    HistoryEntry,
    HistoryPage,
    Memory,
    MemoryWithGraph,
    NewMemory,
    Page,
    RelatedItem,
    RelatedResult,
    ScoredMemory,
    SearchHit,
    SearchResult,
    StoredMemory,
)
from memory_persistence_client.retry import NO_RETRIES, RetryEvent, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "APIError",
    "AlreadyResolved",
    "AsyncMemoryClient",
    "BatchResult",
    "Busy",
    "Conflict",
    "Deleted",
    "EmbeddingUnavailable",
    "EntitiesResult",
    "Entity",
    "EntityItem",
    "EntityMemoriesResult",
    "EntityRef",
    "Forbidden",
    "GraphAnswer",
    "GraphProjection",
    "HistoryEntry",
    "HistoryPage",
    "IdempotencyConflict",
    "Memory",
    "MemoryClient",
    "MemoryClientError",
    "MemoryWithGraph",
    "NewMemory",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "ProtocolError",
    "RateLimited",
    "RelatedItem",
    "RelatedResult",
    "RetryEvent",
    "RetryPolicy",
    "ScoredMemory",
    "SearchHit",
    "SearchResult",
    "ServerError",
    "StoreUnavailable",
    "StoredMemory",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "VersionConflict",
    "__version__",
]
