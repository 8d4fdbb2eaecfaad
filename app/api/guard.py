"""What stands between a request and the routes: size, rate, and rejected-key noise.

- ``BodyLimit`` (ASGI middleware) refuses a body over MAX_BODY_BYTES with 413 before the body
  is read: by its Content-Length at once, or, for a body without one, as soon as the bytes read
  pass the limit. It runs before authentication, so a client without a key cannot make the
  process buffer a large body.
- ``RequestGuard`` limits each key to API_RATE_LIMIT_PER_SECOND (a token bucket per key and web
  process; 0 turns it off) and aggregates rejected-key log lines to one per
  AUTH_LOG_INTERVAL_SECONDS, so nobody can fill a disk by sending bad keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RateLimited
from app.keys import Principal
from app.settings import Settings

log = logging.getLogger(__name__)
_BUCKETS = 10_000  # keys tracked at once; the least recently used are forgotten


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before it is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing unchanged (anything else
                    # would become a 400) and reaches the app's error handler as a 413.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = (b'{"error":{"code":"payload_too_large","message":"'
                + self._message().encode() + b'","field":null}}')
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Per-key rate limits and aggregated logging of rejected keys, for one web process."""

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.api_rate_limit_per_second
        self.burst = float(settings.api_rate_limit_burst)
        self.log_interval = settings.auth_log_interval_seconds
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._rejected = 0
        self._last_log = -1e18
        self._lock = threading.Lock()

    def admit(self, principal: Principal) -> None:
        """Take one token from the key's bucket; RateLimited (429) when it is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.pop(principal.key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            if tokens < 1.0:
                self._buckets[principal.key_id] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimited(f"this key is over its rate of {self.rate:g} requests per "
                                  f"second; retry after {wait:.2f} s", wait)
            self._buckets[principal.key_id] = (tokens - 1.0, now)
            while len(self._buckets) > _BUCKETS:
                self._buckets.popitem(last=False)

    def rejected(self, request: Request, reason: str) -> None:
        """Count a request with no key or an unknown key; log at most one line per interval."""
        now = time.monotonic()
        with self._lock:
            self._rejected += 1
            if now - self._last_log < self.log_interval:
                return
            count, self._rejected, self._last_log = self._rejected, 0, now
        log.warning("requests refused for a missing or unknown API key", extra={
            "action": "api.auth_rejected", "count": count, "last_reason": reason,
            "last_path": request.url.path,
            "interval_s": self.log_interval})
