"""What every ``memctl`` command shares: consoles, exit codes, errors, JSON and progress output.

Exit codes: 0 success (and consistent), 1 a check found inconsistencies (health: degraded; or an
operation failed otherwise), 2 bad input or configuration, 3 a server is unreachable. With
--json, stdout carries exactly one JSON object: the result, or nothing when the command fails
(the error goes to stderr). Progress bars and messages always go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from app.consistency import Progress
from app.errors import (
    ConfigError,
    MemoryPersistenceError,
    Misconfigured,
    NotFound,
    ValidationError,
)
from app.settings import Settings, load_settings
from app.wiring import Services, build_services

EXIT_INCONSISTENT, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object on stdout and nothing else.")]


def fail(message: str, code: int) -> NoReturn:
    """Say what went wrong on stderr, then exit with ``code``.

    soft_wrap keeps a one-line message on one line however narrow the terminal (scripts match
    on it); escape keeps brackets in messages and log tails from being read as markup.
    """
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def exit_code_for(exc: MemoryPersistenceError) -> int:
    """The exit code of a failed command: 2 for what the operator must fix, 3 for outages."""
    if isinstance(exc, ConfigError | ValidationError | NotFound | Misconfigured):
        return EXIT_USAGE
    if exc.retryable:
        return EXIT_UNREACHABLE
    return 1


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except MemoryPersistenceError as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def failures() -> Iterator[None]:
    """Our own errors raised inside the block become a one-line message and an exit code."""
    try:
        yield
    except MemoryPersistenceError as exc:
        fail(str(exc), exit_code_for(exc))


@contextmanager
def services() -> Iterator[Services]:
    """The command's parts, built on first use from the settings and closed at the end."""
    settings = settings_or_exit()
    with failures(), build_services(settings, pool_size=2) as parts:
        yield parts


def emit_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def short(value: object, width: int = 60) -> str:
    text = "" if value is None else str(value)
    return escape(text if len(text) <= width else text[:width - 1] + "…")


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """Rich progress bars on stderr, one per phase, fed by a service's ``progress`` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as Bars

    tasks: dict[str, TaskID] = {}
    with Bars(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
              TimeElapsedColumn(), console=err_console) as bars:

        def advance(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.advance(tasks[phase], done)

        yield advance
        for task in bars.tasks:  # phases of unknown size end full
            bars.update(task.id, total=task.completed)
