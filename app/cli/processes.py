"""The long-running processes of the Procfile, and the migration that precedes them."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Annotated, Protocol

import typer

from app.cli.output import err_console, fail, services, settings_or_exit
from app.errors import MemoryPersistenceError
from app.wiring import Services


def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Upgrade the database schema (Alembic)."""
    from app.db.migrations import upgrade

    try:
        upgrade(settings_or_exit(), revision)
    except MemoryPersistenceError as exc:
        fail(str(exc), 1)
    err_console.print(f"database migrated to {revision}")


def web() -> None:
    """Serve the HTTP API (FastAPI under uvicorn)."""
    from app.api.server import serve

    serve(settings_or_exit())


class _Loop(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _until_signalled(build: Callable[[Services], _Loop]) -> None:
    """Run a loop (relay, scheduler) until SIGTERM/SIGINT asks it to stop."""
    from app.logs import configure_logging

    with services() as parts:
        configure_logging(parts.settings)
        runner = build(parts)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: runner.stop())
        runner.run()


def relay() -> None:
    """Run the outbox relay until SIGTERM/SIGINT (then finish the current batch and exit)."""
    _until_signalled(lambda parts: parts.relay())


def scheduler() -> None:
    """Run the periodic upkeep (lease reclaim, pruning, consistency check) until SIGTERM."""
    _until_signalled(lambda parts: parts.scheduler())


def register(app: typer.Typer) -> None:
    for command in (migrate, web, relay, scheduler):
        app.command()(command)
