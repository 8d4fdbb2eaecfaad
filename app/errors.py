"""The project's error tree. Adapters convert driver errors into these (``raise ... from exc``).

    MemoryPersistenceError        500 internal_error
    ├── ConfigError               a setting is missing or malformed (CLI exit 2)
    ├── Misconfigured             a server refuses our credentials or lacks our database
    │   ├── StoreMisconfigured    (also a StoreError)
    │   ├── GraphMisconfigured    (also a GraphError)
    │   └── ExtractorMisconfigured  (also an ExtractionError): 401/403, no such model
    ├── DependencyUnavailable     a dependency is out, not the row's fault (no attempt spent)
    │   ├── GraphUnavailable      (also a GraphError)
    │   └── ExtractorUnavailable  (also an ExtractionRetryable)
    │       └── ExtractorRateLimited  429: slow down for ``retry_after`` seconds
    ├── ServiceError              a local development server could not start or stop
    ├── ValidationError           422 validation_error: input the caller must fix
    ├── IdempotencyConflict       422 idempotency_conflict: a key reused with another body
    ├── Unauthorized              401 unauthorized: no key, or an unknown one
    ├── Forbidden                 403 forbidden: the key's scope does not allow it
    ├── NotFound                  404 not_found: no such memory for this user
    │   ├── DeadLetterNotFound    404 not_found: no such dead letter
│   └── JobNotFound           404 not_found: no such sync job
    ├── VersionConflict           409 version_conflict: the expected version is stale
    ├── Busy                      409 busy: a conflicting operation runs (a rebuild)
    ├── AlreadyResolved           409 already_resolved: a dead letter was replayed or discarded
├── JobFinished               409 job_finished: a sync job ended already (cannot be cancelled)
    ├── PayloadTooLarge           413 payload_too_large: a body over MAX_BODY_BYTES
    ├── RateLimited               429 rate_limited: the key is over its rate (Retry-After)
    ├── StoreError                500: Postgres failed
    │   └── StoreUnavailable      503 store_unavailable: cannot reach Postgres (retryable)
    ├── GraphError                500: Neo4j failed
    │   ├── GraphUnavailable      503 unavailable: unreachable, restarting, failing over
    │   └── GraphConflict         503 unavailable: a deadlock or a race with another batch
    ├── QueueError                503 unavailable: Redis / Dramatiq failed (retryable)
    ├── EmbeddingError            503 embedding_unavailable: the embedder failed (retryable)
    └── ExtractionError           the extractor failed on this content (a poison event)
        └── ExtractionRetryable   may pass on a later try (a malformed answer)

Each class carries its HTTP ``status`` and ``code``; ``public`` is the fixed message an HTTP
answer shows instead of ``str(exc)`` where the text may hold internals (driver messages).

The projection sorts failures in two: a ``Misconfigured`` or ``DependencyUnavailable`` error is
an outage of a dependency (it feeds that dependency's circuit breaker, ``app.breakers``, and the
row goes back without spending an attempt); any other error is a failure of the row (it spends
an attempt, and the last one leaves a dead letter).
"""

from __future__ import annotations

from typing import ClassVar


class MemoryPersistenceError(Exception):
    """Base of every error this project raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    public: ClassVar[str | None] = "internal error"
    retryable: ClassVar[bool] = False
    field: str | None = None

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class ConfigError(MemoryPersistenceError):
    """A setting is missing or malformed."""


class Misconfigured(MemoryPersistenceError):
    """A server refuses our credentials, or lacks the database or schema we were told to use.

    Not an outage: retrying cannot help until an operator fixes a setting.
    """


class DependencyUnavailable(MemoryPersistenceError):
    """A dependency (Neo4j, the extractor's endpoint) is unreachable, timing out, overloaded or
    rate limiting: an outage of the dependency, not a failure of the work asked of it."""

    retryable = True


class ServiceError(MemoryPersistenceError):
    """A local development server could not be started, reached or stopped."""


class ValidationError(MemoryPersistenceError):
    """Input the caller must fix; ``field`` names the offending field."""

    status = 422
    code = "validation_error"
    public: ClassVar[str | None] = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)


class IdempotencyConflict(MemoryPersistenceError):
    """An Idempotency-Key was reused with a different request."""

    status = 422
    code = "idempotency_conflict"
    public: ClassVar[str | None] = None
    field = "Idempotency-Key"


class Unauthorized(MemoryPersistenceError):
    """No API key, or one that is not known (HTTP 401)."""

    status = 401
    code = "unauthorized"
    public: ClassVar[str | None] = None


class Forbidden(MemoryPersistenceError):
    """A valid key whose scope does not allow this operation (HTTP 403)."""

    status = 403
    code = "forbidden"
    public: ClassVar[str | None] = None


class NotFound(MemoryPersistenceError):
    """No such memory for this user (another user's memory is reported the same way)."""

    status = 404
    code = "not_found"
    public: ClassVar[str | None] = None


class DeadLetterNotFound(NotFound):
    """No dead letter with this id."""

    public: ClassVar[str | None] = "dead letter not found"


class JobNotFound(NotFound):
    """No sync job with this id."""

    public: ClassVar[str | None] = "sync job not found"


class VersionConflict(MemoryPersistenceError):
    """The caller's expected version is not the current one."""

    status = 409
    code = "version_conflict"
    public: ClassVar[str | None] = None
    field = "expected_version"

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class Busy(MemoryPersistenceError):
    """A conflicting operation is running (a rebuild during a check, two rebuilds)."""

    status = 409
    code = "busy"
    public: ClassVar[str | None] = None


class AlreadyResolved(MemoryPersistenceError):
    """A dead letter was already replayed or discarded."""

    status = 409
    code = "already_resolved"
    public: ClassVar[str | None] = None


class JobFinished(MemoryPersistenceError):
    """A sync job already ended (done, failed or cancelled): there is nothing to cancel."""

    status = 409
    code = "job_finished"
    public: ClassVar[str | None] = None


class PayloadTooLarge(MemoryPersistenceError):
    """A request body over the limit, refused before it is read."""

    status = 413
    code = "payload_too_large"
    public: ClassVar[str | None] = None


class RateLimited(MemoryPersistenceError):
    """The key sent more requests than its rate allows; ``retry_after`` seconds to wait."""

    status = 429
    code = "rate_limited"
    public: ClassVar[str | None] = None

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(MemoryPersistenceError):
    """Postgres failed."""


class StoreUnavailable(StoreError):
    """Postgres cannot be reached."""

    status = 503
    code = "store_unavailable"
    public = "the database is unavailable; retry"
    retryable = True


class StoreMisconfigured(StoreError, Misconfigured):
    """Postgres refused our login, or the database or its schema is missing."""


class GraphError(MemoryPersistenceError):
    """Neo4j failed."""


class GraphUnavailable(GraphError, DependencyUnavailable):
    """Neo4j is unreachable, restarting, or has no writable leader (a failover)."""

    status = 503
    code = "unavailable"
    public = "a backend is unavailable; retry"
    retryable = True


class GraphConflict(GraphError):
    """A transient conflict of this transaction with another (a deadlock, an entity race).

    Retrying clears it, but it is about the work, not an outage: the row spends an attempt.
    """

    status = 503
    code = "unavailable"
    public = "a backend is unavailable; retry"
    retryable = True


class GraphMisconfigured(GraphError, Misconfigured):
    """Neo4j refused our credentials, or the URI or database is wrong."""


class QueueError(MemoryPersistenceError):
    """Redis or Dramatiq failed."""

    status = 503
    code = "unavailable"
    public = "a backend is unavailable; retry"
    retryable = True


class EmbeddingError(MemoryPersistenceError):
    """The embedding backend failed."""

    status = 503
    code = "embedding_unavailable"
    public = "the embedding backend is unavailable; retry"
    retryable = True


class ExtractionError(MemoryPersistenceError):
    """The entity extractor failed on this content (a poison event unless retryable)."""


class ExtractionRetryable(ExtractionError):
    """The extractor failed in a way that may pass on a later try."""

    retryable = True


class ExtractorUnavailable(ExtractionRetryable, DependencyUnavailable):
    """The extractor's endpoint is unreachable, timed out or answered 5xx/408."""


class ExtractorRateLimited(ExtractorUnavailable):
    """The endpoint asked us to slow down (429), or we still wait out its last Retry-After.

    ``retry_after`` is how many seconds to wait; ``asked`` is False when the endpoint was not
    contacted this time (the process still honours an earlier answer), so it is no new
    evidence against the endpoint.
    """

    def __init__(self, message: str, retry_after: float, *, asked: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.asked = asked


class ExtractorMisconfigured(ExtractionError, Misconfigured):
    """The extractor's endpoint rejects our credentials (401/403), lacks our model, or our
    account has no quota left: nothing passes until an operator fixes a setting."""
