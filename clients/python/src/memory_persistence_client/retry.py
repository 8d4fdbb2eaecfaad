"""When to retry a request and how long to wait: one pure function both clients call.

- Which failures: no answer at all (connection refused, reset or lost, a timeout), and the
  answers 429, 502, 503 and 504. Other answers are final.
- Which requests: a request that may be repeated without a second effect ("safe": GET, DELETE,
  search, a store carrying its Idempotency-Key, a PATCH with an expected version) is retried on
  all of them. Any other request (an unconditional PATCH) is retried only when the server
  cannot have acted on it: the connection was never made, or the answer is 429.
- How long: exponential backoff with full jitter, ``uniform(0, min(max_delay, base_delay *
  2**(n-1)))`` before retry ``n``, but never sooner than the answer's ``Retry-After`` (seconds or
  an HTTP date). A ``Retry-After`` beyond ``max_retry_after`` is not waited for: the error is
  raised at once, carrying ``retry_after``.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

RETRY_STATUSES = frozenset({429, 502, 503, 504})

# The request never left the client: repeating it cannot apply it twice.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The connection failed after the request may have been sent.
_LOST = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a call is retried."""

    max_attempts: int = 5
    """Requests per call, the first included; 1 turns retries off."""
    base_delay: float = 0.5
    """Seconds; the ceiling of the first backoff."""
    max_delay: float = 8.0
    """Seconds; no backoff ceiling grows past this."""
    max_retry_after: float = 60.0
    """Seconds; a longer ``Retry-After`` is not waited for."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def backoff(self, retry: int, u: float) -> float:
        """Seconds before retry number ``retry`` (1-based), for ``u`` uniform in [0, 1)."""
        return u * min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, 62))


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, kw_only=True)
class RetryEvent:
    """What ``on_retry`` receives before the client waits ``delay`` seconds and tries again."""

    method: str
    path: str
    attempt: int
    """The attempt that failed, 1-based."""
    delay: float
    status_code: int | None
    """The answer's status, or None when there was no answer."""
    error: Exception | None
    """httpx's error when there was no answer."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(policy: RetryPolicy, *, safe: bool, attempt: int, u: float,
                status_code: int | None = None, error: Exception | None = None,
                retry_after: float | None = None) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    ``attempt`` is the 1-based attempt that just failed, with either an answer's
    ``status_code`` (and its ``retry_after``) or the transport ``error``.
    """
    if attempt >= policy.max_attempts:
        return None
    if error is not None:
        if not isinstance(error, _NOT_SENT) and not (safe and isinstance(error, _LOST)):
            return None
    elif status_code not in RETRY_STATUSES or (status_code != 429 and not safe):
        return None
    delay = policy.backoff(attempt, u)
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        delay = max(delay, retry_after)
    return delay
