"""Backup and restore: ``memctl backup FILE`` and ``memctl restore FILE`` (app.backup does it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.cli.output import JsonOpt, console, emit_json, progress_bars, services

FileArg = Annotated[Path, typer.Argument(metavar="FILE", show_default=False)]


def _table(title: str, values: dict[str, object]) -> None:
    table = Table("", "", title=title, show_header=False)
    for key, value in values.items():
        table.add_row(key.replace("_", " "), escape(str(value)))
    console.print(table)


def backup(file: FileArg, as_json: JsonOpt = False) -> None:
    """Dump the database (the only source of truth) to a new FILE, readable by you only."""
    with services() as parts, progress_bars(not as_json) as progress:
        report = parts.backups.dump(file, progress)
    if as_json:
        emit_json(report.as_dict())
        return
    _table("backup", report.as_dict())
    console.print(f"[green]backup written[/green]: {escape(report.path)} "
                  f"({report.entries} entries, {report.bytes} bytes)")


def restore(file: FileArg, as_json: JsonOpt = False) -> None:
    """Restore FILE into the configured database, which must be empty (one transaction).

    Then: 'memctl migrate' (when the backup is older than this code), 'memctl sync rebuild'
    to project the graph again, and 'memctl sync check' to prove it consistent.
    """
    with services() as parts, progress_bars(not as_json) as progress:
        report = parts.backups.restore(file, progress)
    if as_json:
        emit_json(report.as_dict())
        return
    _table("restore", report.as_dict())
    steps = [] if report.at_code_head else ["memctl migrate"]
    steps += ["memctl sync rebuild", "memctl sync check"]
    console.print(f"[green]restored[/green] {report.live_memories} memories of "
                  f"{report.users} users; next: {'; then '.join(steps)}")


def register(app: typer.Typer) -> None:
    app.command()(backup)
    app.command()(restore)
