"""Run the API under uvicorn with the project's logging (``memctl web``).

uvicorn's access log records the client, request line and status: never a header, so the
Authorization header cannot reach it; the log formatter masks configured keys besides.
"""

from __future__ import annotations

import uvicorn

from app.api import create_app
from app.logs import configure_logging
from app.settings import Settings


def serve(settings: Settings) -> None:
    """Serve the API on ``API_HOST:API_PORT`` until interrupted."""
    configure_logging(settings)
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
