"""Run the API under uvicorn with the project's logging (``memctl web``).

uvicorn's access log records the client, request line and status: never a header, so the
Authorization header cannot reach it; the log formatter masks configured keys besides.

uvicorn has no deadline for receiving a request (its keep-alive timer is reset by every byte),
so a client trickling a header a byte at a time could hold a connection forever. The protocol
below closes a connection whose request (headers and body) is not complete within
API_REQUEST_TIMEOUT_SECONDS of its first byte (or of the connection opening).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app import tracing
from app.api import create_app
from app.logs import configure_logging
from app.settings import Settings

log = logging.getLogger(__name__)


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with an absolute deadline for receiving each request."""

    request_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request is complete (or the connection is closing)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            log.info("request not received in time; connection closed", extra={
                "action": "api.request_timeout", "timeout_s": self.request_timeout})
            self.transport.close()


def protocol_for(settings: Settings) -> type[DeadlineProtocol]:
    """The protocol class with this process's deadline."""
    return type("DeadlineProtocol", (DeadlineProtocol,),
                {"request_timeout": settings.api_request_timeout_seconds})


def serve(settings: Settings) -> None:
    """Serve the API on ``API_HOST:API_PORT`` until interrupted."""
    configure_logging(settings)
    tracing.configure(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        http=protocol_for(settings),
        # None: keep the logging configured above instead of uvicorn's own dictConfig.
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=True,
        server_header=False,
        # Headers beyond 16 KiB are refused by h11 with a 400 before the app sees them.
        h11_max_incomplete_event_size=16 * 1024,
    )
