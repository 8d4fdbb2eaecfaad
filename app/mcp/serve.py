"""Serving the MCP server: over stdio, and over streamable HTTP behind the API's keys.

Every request needs ``Authorization: Bearer <key>``: a service or admin key the API accepts
(``app.keys``: the bootstrap keys and the keys kept in Postgres, revocation included). A key
bound to a namespace is refused (403) unless the configured user is in it. Requests without a
valid key are answered 401 before the MCP layer sees them, and counted in one aggregated log
line per AUTH_LOG_INTERVAL_SECONDS; each key is held to API_RATE_LIMIT_PER_SECOND (429): the
API's own ``RequestGuard``. Keys never reach a log.
"""

from __future__ import annotations

import json
import logging
import math

import anyio.to_thread
import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.guard import RequestGuard
from app.api.server import protocol_for
from app.errors import MemoryPersistenceError, RateLimited
from app.keys import ApiKeys
from app.logs import configure_logging
from app.mcp.tools import build_server
from app.validation import check_user_id
from app.wiring import Services

log = logging.getLogger(__name__)


class RequireServiceKey:
    """ASGI middleware: 401 without a known key, 403 when the key may not act for the user,
    429 (with Retry-After) when the key is over API_RATE_LIMIT_PER_SECOND."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, user_id: str, guard: RequestGuard) -> None:
        self.app = app
        self.keys = keys
        self.user_id = user_id
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the session manager starts and stops with it
            await self.app(scope, receive, send)
            return
        secret = _bearer(scope)
        try:
            principal = (await anyio.to_thread.run_sync(self.keys.identify, secret)
                         if secret else None)
        except MemoryPersistenceError as exc:  # Postgres, for a key kept there
            await _refuse(send, 503, exc.code, exc.public or "unavailable; retry",
                          [(b"retry-after", b"1")])
            return
        if principal is None:
            self.guard.rejected(Request(scope), "missing" if secret is None else "unknown")
            await _refuse(send, 401, "unauthorized",
                          "an API key is required: Authorization: Bearer <service key>",
                          [(b"www-authenticate", b"Bearer")])
            return
        if not principal.may_act_for(self.user_id):
            await _refuse(send, 403, "forbidden",
                          "this key may not act for the user this MCP server serves")
            return
        try:
            self.guard.admit(principal)
        except RateLimited as exc:
            wait = str(max(1, math.ceil(exc.retry_after))).encode()
            await _refuse(send, 429, exc.code, str(exc), [(b"retry-after", wait)])
            return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def _refuse(send: Send, status: int, code: str, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """An answer in the HTTP API's error shape, before the MCP layer sees the request."""
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(services: Services, user_id: str, host: str = "127.0.0.1") -> ASGIApp:
    """The MCP server's streamable HTTP app at ``/mcp``, behind the service keys."""
    settings = services.settings
    server = build_server(services, user_id)
    app = server.streamable_http_app(host=host, max_request_body_size=settings.max_body_bytes)
    return RequireServiceKey(app, services.keys, check_user_id(user_id),
                             RequestGuard(settings))


def serve_http(services: Services, user_id: str, host: str, port: int) -> None:
    """Serve ``http://host:port/mcp`` until interrupted."""
    settings = services.settings
    app = http_app(services, user_id, host)
    configure_logging(settings)
    log.info("MCP server listening", extra={"action": "mcp.listen", "host": host, "port": port,
                                            "user_id": user_id})
    uvicorn.run(app, host=host, port=port, http=protocol_for(settings), log_config=None,
                log_level=settings.log_level.lower(), access_log=True, server_header=False,
                h11_max_incomplete_event_size=16 * 1024)


def serve_stdio(services: Services, user_id: str) -> None:
    """Serve over stdin/stdout until the client closes them (logs go to stderr)."""
    server = build_server(services, user_id)
    configure_logging(services.settings)
    server.run("stdio")
