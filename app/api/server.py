"""Run the API under uvicorn with the project's logging (``python -m app.api.server``).

uvicorn's access log records the client, request line and status: never a header, so the
Authorization header cannot reach it. As a second line of defence every log line passes a filter
that masks the configured API keys wherever they appear.
"""

from __future__ import annotations

import logging

import uvicorn

from app.api import create_app
from app.logs import configure_logging
from app.settings import Settings, load_settings

MASK = "***"


class KeyRedactor(logging.Filter):
    """Replace any configured API key in a record's message by ``***``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        keys = (*settings.api_service_keys, *settings.api_admin_keys)
        self._keys = sorted({k.get_secret_value() for k in keys if k.get_secret_value()},
                            key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._keys:
            return True
        message = record.getMessage()
        redacted = message
        for key in self._keys:
            redacted = redacted.replace(key, MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_api_logging(settings: Settings) -> None:
    """The project's log format plus key redaction on every root handler."""
    configure_logging(settings)
    redactor = KeyRedactor(settings)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)


def serve(settings: Settings) -> None:
    """Serve the API on ``API_HOST:API_PORT`` until interrupted."""
    configure_api_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        # None: keep the logging configured above instead of uvicorn's own dictConfig.
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=True,
        server_header=False,
    )


if __name__ == "__main__":
    serve(load_settings())
