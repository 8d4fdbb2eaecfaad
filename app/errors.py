"""The project's error tree. Adapters convert driver errors into these (``raise ... from exc``).

    MemoryPersistenceError
    ├── ConfigError            a setting is missing or malformed
    ├── ServiceError           a local server could not be started or stopped
    ├── ValidationError        input the caller must fix (HTTP 422)
    ├── NotFound               no such memory for this user (HTTP 404)
    ├── VersionConflict        expected version is stale (HTTP 409)
    ├── IdempotencyConflict    an Idempotency-Key reused with another body (HTTP 422)
    ├── Busy                   a conflicting operation is running, e.g. a rebuild (HTTP 409)
    ├── StoreError             Postgres failed
    │   └── StoreUnavailable   Postgres cannot be reached (retryable)
    ├── GraphError             Neo4j failed
    │   └── GraphUnavailable   Neo4j unreachable or a transient error (retryable)
    ├── QueueError             Redis / Dramatiq failed
    └── ExtractionError        the extractor failed
        └── ExtractionRetryable  e.g. a malformed LLM answer or a timeout
"""

from __future__ import annotations


class MemoryPersistenceError(Exception):
    """Base of every error this project raises on purpose."""

    retryable = False


class ConfigError(MemoryPersistenceError):
    """A setting is missing or malformed."""


class ServiceError(MemoryPersistenceError):
    """A local server could not be started, reached or stopped."""


class ValidationError(MemoryPersistenceError):
    """Input the caller must fix; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(MemoryPersistenceError):
    """No such memory for this user (another user's memory is reported the same way)."""


class VersionConflict(MemoryPersistenceError):
    """The caller's expected version is not the current one."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class IdempotencyConflict(MemoryPersistenceError):
    """An Idempotency-Key was reused with a different request."""


class Busy(MemoryPersistenceError):
    """A conflicting operation is running (a rebuild during a check, two rebuilds)."""


class StoreError(MemoryPersistenceError):
    """Postgres failed."""


class StoreUnavailable(StoreError):
    """Postgres cannot be reached."""

    retryable = True


class GraphError(MemoryPersistenceError):
    """Neo4j failed."""


class GraphUnavailable(GraphError):
    """Neo4j is unreachable or answered with a transient error (deadlock, leader switch)."""

    retryable = True


class QueueError(MemoryPersistenceError):
    """Redis or Dramatiq failed."""

    retryable = True


class ExtractionError(MemoryPersistenceError):
    """The entity extractor failed on this content (a poison event unless retryable)."""


class ExtractionRetryable(ExtractionError):
    """The extractor failed in a way that may pass on a later try."""

    retryable = True
