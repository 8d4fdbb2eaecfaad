"""Serving the MCP server: over stdio, and over streamable HTTP behind the API's keys.

Every request needs ``Authorization: Bearer <key>``: a service or admin key the API accepts
(``app.keys``: the bootstrap keys and the keys kept in Postgres, revocation included). A key
bound to a namespace is refused (403) unless the configured user is in it. Requests without a
valid key are answered 401 before the MCP layer sees them, and counted in one aggregated log
line per AUTH_LOG_INTERVAL_SECONDS, as the API does. Keys never reach a log.
"""

from __future__ import annotations

import json
import logging
import time

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.server import protocol_for
from app.keys import ApiKeys
from app.logs import configure_logging
from app.mcp.tools import build_server
from app.validation import check_user_id
from app.wiring import Services

log = logging.getLogger(__name__)


class RequireServiceKey:
    """ASGI middleware: 401 without a known key, 403 when the key may not act for the user."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, user_id: str,
                 log_interval: float = 60.0) -> None:
        self.app = app
        self.keys = keys
        self.user_id = user_id
        self.log_interval = log_interval
        self._refused = 0
        self._last_log = -1e18

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the session manager starts and stops with it
            await self.app(scope, receive, send)
            return
        secret = _bearer(scope)
        principal = (await anyio.to_thread.run_sync(self.keys.identify, secret)
                     if secret else None)
        if principal is None:
            self._count_refused()
            await _refuse(send, 401, "unauthorized",
                          "an API key is required: Authorization: Bearer <service key>")
            return
        if not principal.may_act_for(self.user_id):
            await _refuse(send, 403, "forbidden",
                          "this key may not act for the user this MCP server serves")
            return
        await self.app(scope, receive, send)

    def _count_refused(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_interval:
            log.warning("MCP requests refused for a missing or unknown API key", extra={
                "action": "mcp.auth_rejected", "count": self._refused})
            self._refused, self._last_log = 0, now


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(services: Services, user_id: str, host: str = "127.0.0.1") -> ASGIApp:
    """The MCP server's streamable HTTP app at ``/mcp``, behind the service keys."""
    settings = services.settings
    server = build_server(services, user_id)
    app = server.streamable_http_app(host=host, max_request_body_size=settings.max_body_bytes)
    return RequireServiceKey(app, services.keys, check_user_id(user_id),
                             settings.auth_log_interval_seconds)


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
