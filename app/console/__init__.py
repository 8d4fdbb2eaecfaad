"""The admin console: ``/admin``, served by the web process, for the operator's day.

Pages (``app/console/routes.py``) rendered on the server with Jinja2 templates, one stylesheet
and one small script (``static/``), all from this package: no CDN, no build step. Sign-in with an
admin key makes a signed session cookie (``session.py``); the plumbing (headers, CSRF, error
pages) is ``web.py``. Reads and actions go through the same services as ``memctl`` and the admin
API. Consistency jobs are the background sync jobs of ``app.jobs`` (kept in Postgres, run by
the scheduler), so every web process sees them; the lag history (``samples.py``) is interim and
kept in the web process's memory.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.console.routes import router
from app.console.web import HERE, Assets, Console
from app.settings import Settings

__all__ = ["Console", "install"]


def install(app: FastAPI, settings: Settings) -> Console:
    """Mount the console on ``app``; the app's lifespan starts and stops the returned part."""
    console = Console(settings)
    app.state.console = console
    app.include_router(router)
    app.mount("/admin/static", Assets(directory=HERE / "static"), name="console-static")
    return console
