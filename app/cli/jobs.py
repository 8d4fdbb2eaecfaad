"""``memctl jobs``: background sync jobs (list, show, cancel, work), and the follower that
``memctl sync … --background`` uses to watch a job it submitted."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from app.cli.output import (
    EXIT_INCONSISTENT,
    EXIT_USAGE,
    JsonOpt,
    console,
    emit_json,
    err_console,
    fail,
    services,
    short,
)
from app.cli.processes import job_runner
from app.jobs import STATUSES, Job, Jobs
from app.wiring import Services

jobs_app = typer.Typer(no_args_is_help=True,
                       help="Background sync jobs: list, show, cancel, and run them (work).")
FOLLOW_SECONDS = 0.5


def exit_code(job: Job) -> int:
    """0 when the job did what was asked (a check found nothing, a repair/rebuild ran), else 1."""
    if job.status != "done":
        return 1
    result = job.result or {}
    found = result.get("consistent") is False
    return EXIT_INCONSISTENT if found and (job.kind == "check" or job.request.dry_run) else 0


def print_job(job: Job) -> None:
    """A job's state, progress and report, for people."""
    r = job.request
    scope = r.user_id or "every user"
    console.print(f"job {job.id}: {job.kind}{' (dry run)' if r.dry_run else ''} of "
                  f"{escape(scope)}, by {escape(job.requested_by)}: [bold]{job.status}[/] "
                  f"(attempt {job.attempts} of {job.max_attempts}"
                  + (f", {job.seconds} s" if job.seconds is not None else "") + ")")
    for p in job.phases:
        console.print(f"  {p.name}: {p.done}" + (f" / {p.total}" if p.total is not None else ""))
    if job.error:
        console.print(f"[red]error:[/] {escape(job.error)}", soft_wrap=True)
    result = job.result or {}
    for section in ("check", "repair", "rebuild"):
        summary = result.get(section)
        if isinstance(summary, dict):
            table = Table("", "", title=section, show_header=False)
            for key, value in summary.items():
                table.add_row(key.replace("_", " "), escape(json.dumps(value)))
            console.print(table)
    findings = result.get("findings") or []
    if findings:
        shown = Table("kind", "user", "memory / entity", title="findings")
        for f in findings[:20]:
            shown.add_row(f["kind"], escape(f.get("user_id") or "-"),
                          escape(f.get("memory_id") or f.get("entity_key") or "-"))
        console.print(shown)
    if "consistent" in result:
        console.print("[green]consistent[/]" if result["consistent"]
                      else f"[red]{len(findings)} inconsistencies[/]")


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """SIGINT sets an event instead of raising wherever the main thread happens to be.

    A KeyboardInterrupt raised inside a Postgres round trip or inside rich's live display can
    leave either stuck; the follower checks the event between polls instead.
    """
    pressed = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.set())
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(jobs: Jobs, job_id: int, show_progress: bool) -> Job:
    """Poll a job until it ends, drawing a progress bar per phase on stderr.

    Ctrl-C stops following (KeyboardInterrupt reaches the caller); the job goes on.
    """
    with _ctrl_c() as pressed:
        job = _follow(jobs, job_id, show_progress, pressed)
    if job is None:
        raise KeyboardInterrupt
    return job


def _follow(jobs: Jobs, job_id: int, show_progress: bool,
            pressed: threading.Event) -> Job | None:
    """The job once it ended, or None when Ctrl-C was pressed first."""
    if not show_progress:
        while not pressed.is_set():
            job = jobs.get(job_id)
            if job.finished:
                return job
            pressed.wait(FOLLOW_SECONDS)
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    bars: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console) as progress:
        status = progress.add_task("queued", total=None)
        while not pressed.is_set():
            job = jobs.get(job_id)
            progress.update(status, description=job.status)
            for p in job.phases:
                if p.name not in bars:
                    bars[p.name] = progress.add_task(p.name, total=p.total)
                progress.update(bars[p.name], completed=p.done, total=p.total)
            if job.finished:
                for task in progress.tasks:  # phases of unknown size end full
                    if task.total is None:
                        progress.update(task.id, total=task.completed or 1,
                                        completed=task.completed or 1)
                return job
            pressed.wait(FOLLOW_SECONDS)
    return None


def submit_and_follow(parts: Services, request: Any, actor: str, as_json: bool) -> None:
    """``memctl sync … --background``: submit, follow with a progress bar, print the report."""
    job = parts.jobs.submit(request, actor)
    try:
        err_console.print(f"submitted job {job.id}; Ctrl-C stops following (the job goes on)")
        job = follow(parts.jobs, job.id, not as_json)
    except KeyboardInterrupt:
        err_console.print(f"stopped following job {job.id}; it goes on: "
                          f"'memctl jobs show {job.id}', 'memctl jobs cancel {job.id}'")
        if as_json:
            emit_json(parts.jobs.get(job.id).as_dict())
        raise typer.Exit(130) from None
    if as_json:
        emit_json(job.as_dict())
    else:
        print_job(job)
    raise typer.Exit(exit_code(job))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(
        "--status", help=f"Only jobs in this state: {', '.join(STATUSES)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 20,
    before_id: Annotated[int | None, typer.Option(
        "--before-id", min=1, help="The 'next' id the previous page printed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List sync jobs, newest first."""
    if status is not None and status not in STATUSES:
        fail(f"--status: must be one of {', '.join(STATUSES)}", EXIT_USAGE)
    with services() as parts:
        page = parts.jobs.page(status, before_id=before_id, limit=limit)
    if as_json:
        emit_json({"items": [j.as_dict() for j in page.items],
                   "next_before_id": page.next_before_id})
        return
    table = Table("id", "kind", "user", "status", "phase", "progress", "by", "created")
    for j in page.items:
        table.add_row(str(j.id), j.kind + (" (dry run)" if j.request.dry_run else ""),
                      short(j.request.user_id or "every user", 30), j.status, j.phase or "-",
                      f"{j.done}" + (f"/{j.total}" if j.total is not None else ""),
                      short(j.requested_by, 30), j.created_at.isoformat(timespec="seconds"))
    console.print(table)
    if page.next_before_id is not None:
        console.print(f"next: --before-id {page.next_before_id}")


@jobs_app.command("show")
def jobs_show(job_id: Annotated[int, typer.Argument(min=1, help="The job's id.")],
              follow_it: Annotated[bool, typer.Option(
                  "--follow", help="Follow it to its end with a progress bar.")] = False,
              as_json: JsonOpt = False) -> None:
    """One job: state, progress, timings and report."""
    with services() as parts:
        if follow_it:
            try:
                job = follow(parts.jobs, job_id, not as_json)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
        else:
            job = parts.jobs.get(job_id)
    if as_json:
        emit_json(job.as_dict())
    else:
        print_job(job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(min=1, help="The job's id.")],
                as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once, a running one at its runner's next page."""
    from app.cli.operator import _actor

    with services() as parts:
        job = parts.jobs.cancel(job_id, _actor())
    if as_json:
        emit_json(job.as_dict())
    elif job.status == "cancelled":
        console.print(f"job {job.id} cancelled")
    else:
        console.print(f"job {job.id}: cancel asked; its runner stops at its next page")


jobs_app.command("work")(job_runner)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
