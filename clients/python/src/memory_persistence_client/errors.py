"""Exceptions: one class per ``error.code`` of the API's error body.

Every error answer of the API has the body ``{"error": {"code", "message", "field", ...}}``;
``APIError.from_response`` picks the class by ``code``, and by HTTP status when the code is
unknown or the body is not the API's (a proxy's 502 page, say).

    MemoryClientError
    ├── TransportError          no HTTP answer (connection refused or lost, timeout)
    ├── ProtocolError           an answer the client cannot read (not the documented JSON)
    └── APIError                an HTTP error answer; .status .code .message .field
        ├── ValidationError         422 validation_error (.field names the input)
        ├── IdempotencyConflict     422 idempotency_conflict (a key reused with another body)
        ├── Unauthorized            401 unauthorized
        ├── Forbidden               403 forbidden
        ├── NotFound                404 not_found
        ├── Conflict                409
        │   ├── VersionConflict         version_conflict (.current_version)
        │   ├── Busy                    busy
        │   └── AlreadyResolved         already_resolved
        ├── PayloadTooLarge         413 payload_too_large
        ├── RateLimited             429 rate_limited (.retry_after)
        ├── Unavailable             503 unavailable, 502, 504 (retryable)
        │   ├── StoreUnavailable        503 store_unavailable
        │   └── EmbeddingUnavailable    503 embedding_unavailable
        └── ServerError             other 5xx (internal_error)

``attempts`` on every error says how many requests the call made: an error after a retry
(``attempts > 1``) may follow an earlier attempt the server applied but whose answer was lost,
e.g. a ``VersionConflict`` whose ``current_version`` is the caller's ``expected_version + 1``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import httpx


class MemoryClientError(Exception):
    """Base of every error the client raises."""

    attempts: int = 1


class TransportError(MemoryClientError):
    """No HTTP answer after the retries the policy allows (``__cause__`` is httpx's error)."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ProtocolError(MemoryClientError):
    """A success answer whose body is not what the API documents."""


class APIError(MemoryClientError):
    """An error answer of the API."""

    status_code: int
    code: str
    message: str
    field: str | None
    body: dict[str, Any]
    retry_after: float | None
    codes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None,
                 body: dict[str, Any] | None = None, retry_after: float | None = None,
                 attempts: int = 1) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.body = body or {}
        self.retry_after = retry_after
        self.attempts = attempts

    @classmethod
    def from_response(cls, response: httpx.Response, attempts: int = 1,
                      retry_after: float | None = None) -> APIError:
        """The exception for an error answer, by its ``error.code`` or else its status."""
        detail: dict[str, Any] = {}
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            detail = payload["error"]
        status = response.status_code
        code = detail.get("code")
        if not isinstance(code, str):
            code = _STATUS_CODES.get(status, "http_error")
        message = detail.get("message")
        if not isinstance(message, str):
            message = response.reason_phrase or code
        field = detail.get("field") if isinstance(detail.get("field"), str) else None
        kind = _BY_CODE.get(code) or _by_status(status)
        return kind(status, code, message, field, detail, retry_after, attempts)


class ValidationError(APIError):
    codes = ("validation_error",)


class IdempotencyConflict(APIError):
    codes = ("idempotency_conflict",)


class Unauthorized(APIError):
    codes = ("unauthorized",)


class Forbidden(APIError):
    codes = ("forbidden",)


class NotFound(APIError):
    codes = ("not_found",)


class Conflict(APIError):
    """A 409: the request conflicts with the current state."""


class VersionConflict(Conflict):
    """The expected version is stale; ``current_version`` is the memory's version now."""

    codes = ("version_conflict",)

    @property
    def current_version(self) -> int | None:
        value = self.body.get("current_version")
        return value if isinstance(value, int) else None


class Busy(Conflict):
    codes = ("busy",)


class AlreadyResolved(Conflict):
    codes = ("already_resolved",)


class PayloadTooLarge(APIError):
    codes = ("payload_too_large",)


class RateLimited(APIError):
    codes = ("rate_limited",)


class Unavailable(APIError):
    """A backend (or a gateway in front of the API) is unavailable; worth retrying later."""

    codes: ClassVar[tuple[str, ...]] = ("unavailable", "not_ready", "bad_gateway",
                                        "gateway_timeout")


class StoreUnavailable(Unavailable):
    codes = ("store_unavailable",)


class EmbeddingUnavailable(Unavailable):
    codes = ("embedding_unavailable",)


class ServerError(APIError):
    codes = ("internal_error",)


_BY_CODE: dict[str, type[APIError]] = {
    code: kind
    for kind in (ValidationError, IdempotencyConflict, Unauthorized, Forbidden, NotFound,
                 VersionConflict, Busy, AlreadyResolved, PayloadTooLarge, RateLimited,
                 Unavailable, StoreUnavailable, EmbeddingUnavailable, ServerError)
    for code in kind.codes
}
_STATUS_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 413: "payload_too_large", 422: "validation_error", 429: "rate_limited",
                 500: "internal_error", 502: "bad_gateway", 503: "unavailable",
                 504: "gateway_timeout"}
_BY_STATUS: dict[int, type[APIError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: PayloadTooLarge,
                                         422: ValidationError, 429: RateLimited,
                                         502: Unavailable, 503: Unavailable, 504: Unavailable}


def _by_status(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIError
