"""The long-running processes of the Procfile, and the migration that precedes them."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Annotated, Protocol

import typer
from rich.markup import escape

from app.cli.output import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonOpt,
    emit_json,
    err_console,
    fail,
    services,
    settings_or_exit,
)
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


def ready(
    wait: Annotated[float, typer.Option(
        "--wait", min=0, help="Keep asking for up to this many seconds.")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Exit 0 once Postgres answers at this code's schema head (what /api/health/ready checks).

    1 when the database is not migrated, 2 when it refuses the settings, 3 when it is
    unreachable. With --wait it asks again each second until ready or the time is up: an init
    container waits so for the migration Job.
    """
    deadline = time.monotonic() + wait
    with services() as parts:
        while True:
            readiness = parts.admin.readiness()
            left = deadline - time.monotonic()
            if readiness.ok or left <= 0:
                break
            time.sleep(min(1.0, left))
    if as_json:
        emit_json({"ready": readiness.ok, "reason": readiness.reason,
                   "revision": readiness.revision})
    elif readiness.ok:
        err_console.print(f"ready: the database schema is at {readiness.revision}")
    else:
        err_console.print(f"not ready: {escape(readiness.reason or '')}", soft_wrap=True)
    codes = {None: 0, "not_migrated": 1, "misconfigured": EXIT_USAGE,
             "unavailable": EXIT_UNREACHABLE}
    raise typer.Exit(codes[readiness.cause])


def web() -> None:
    """Serve the HTTP API (FastAPI under uvicorn)."""
    from app.api.server import serve

    serve(settings_or_exit())


class _Loop(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _until_signalled(build: Callable[[Services], _Loop], metrics_port: int = 0,
                     state: bool = False) -> None:
    """Run a loop (relay, scheduler) until SIGTERM/SIGINT asks it to stop.

    With ``metrics_port`` its metrics are served there meanwhile (with ``state``, the state
    Postgres holds as well).
    """
    from app import metrics
    from app.logs import configure_logging

    with services() as parts:
        configure_logging(parts.settings)
        runner = build(parts)
        server = None
        if metrics_port:
            if state:
                metrics.register_state(parts.metrics_state)
            server = metrics.serve(parts.settings.metrics_host, metrics_port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: runner.stop())
        try:
            runner.run()
        finally:
            if server is not None:
                server.shutdown()


def relay() -> None:
    """Run the outbox relay until SIGTERM/SIGINT (then finish the current batch and exit)."""
    settings = settings_or_exit()
    _until_signalled(lambda parts: parts.relay(), settings.metrics_port_relay)


class _Together:
    """Several loops in one process: the first on the main thread, the others in threads."""

    def __init__(self, *loops: _Loop) -> None:
        self.loops = loops

    def run(self) -> None:
        threads = [threading.Thread(target=loop.run, daemon=True, name=type(loop).__name__)
                   for loop in self.loops[1:]]
        for thread in threads:
            thread.start()
        try:
            self.loops[0].run()
        finally:
            self.stop()
            for thread in threads:
                thread.join(30)

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()


def _scheduler(parts: Services) -> _Loop:
    if not parts.settings.scheduler_runs_jobs:
        return parts.scheduler()
    return _Together(parts.scheduler(), parts.job_runner())


def scheduler() -> None:
    """Run the periodic upkeep (lease reclaim, pruning, consistency check) and the background
    sync jobs (unless SCHEDULER_RUNS_JOBS=false) until SIGTERM."""
    settings = settings_or_exit()
    _until_signalled(_scheduler, settings.metrics_port_scheduler, state=True)


def job_runner() -> None:
    """Run background sync jobs only (a dedicated runner) until SIGTERM/SIGINT."""
    _until_signalled(lambda parts: parts.job_runner())


def register(app: typer.Typer) -> None:
    for command in (migrate, ready, web, relay, scheduler):
        app.command()(command)
