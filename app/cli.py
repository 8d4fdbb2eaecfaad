"""``memctl``: the operator's command line."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.errors import ConfigError, MemoryPersistenceError, NotFound, ValidationError
from app.localservers import LocalServers, ServerUrls, Status
from app.settings import Settings, load_settings

if TYPE_CHECKING:  # the operator commands import these when they run: start-up stays fast
    from app.admin import AdminService, DeadStatus
    from app.consistency import CheckReport, Consistency
    from app.consistency import Progress as ProgressFn
    from app.db.connector import Database
    from app.graph.neo4j import Neo4jGraph

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
services_app = typer.Typer(no_args_is_help=True, help="Local Postgres, Redis and Neo4j servers.")
app.add_typer(services_app, name="services")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except MemoryPersistenceError as exc:
        _fail(str(exc), EXIT_USAGE)


def local_servers(settings: Settings) -> LocalServers:
    return LocalServers(
        settings.local_dir,
        ServerUrls(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            neo4j_uri=settings.neo4j_uri,
            neo4j_user=settings.neo4j_user,
            neo4j_password=settings.neo4j_password.get_secret_value(),
        ),
    )


def _status_table(statuses: list[Status]) -> Table:
    table = Table("server", "state", "pid", "address", "detail")
    colors = {"running": "green", "stopped": "red", "external": "cyan"}
    for s in statuses:
        table.add_row(s.name, f"[{colors[s.state]}]{s.state}[/]", str(s.pid or "-"), s.address,
                      s.detail)
    return table


@services_app.command("up")
def services_up() -> None:
    """Start the local servers (idempotent) and wait until each answers."""
    servers = local_servers(_settings())

    def report(status: Status, seconds: float) -> None:
        err_console.print(
            f"  {status.name:<9} {status.state:<8} {status.address}  ({seconds:.1f}s)")

    try:
        servers.up(report)
    except MemoryPersistenceError as exc:
        _fail(str(exc), 1)


@services_app.command("down")
def services_down() -> None:
    """Stop exactly the servers ``up`` started."""
    try:
        local_servers(_settings()).down()
    except MemoryPersistenceError as exc:
        _fail(str(exc), 1)


@services_app.command("status")
def services_status() -> None:
    """Show each local server; exit 1 when a managed one is not running."""
    statuses = local_servers(_settings()).status()
    console.print(_status_table(statuses))
    if any(s.state == "stopped" for s in statuses):
        raise typer.Exit(1)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Upgrade the database schema (Alembic)."""
    from app.db.migrations import upgrade

    try:
        upgrade(_settings(), revision)
    except MemoryPersistenceError as exc:
        _fail(str(exc), 1)
    err_console.print(f"database migrated to {revision}")


@app.command()
def web() -> None:
    """Serve the HTTP API (FastAPI under uvicorn)."""
    from app.api.server import serve
    from app.logs import configure_logging

    settings = _settings()
    configure_logging(settings)
    serve(settings)


@app.command()
def relay() -> None:
    """Run the outbox relay until SIGTERM/SIGINT (then finish the current batch and exit)."""
    import signal

    from app.db.connector import Database
    from app.logs import configure_logging
    from workers.broker import build_broker
    from workers.relay import Relay

    settings = _settings()
    configure_logging(settings)
    runner = Relay(settings, Database(settings, pool_size=2), build_broker(settings))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    runner.run()


@app.command()
def scheduler() -> None:
    """Run the periodic upkeep (lease reclaim, pruning, consistency check) until SIGTERM."""
    import signal

    from app.db.connector import Database
    from app.graph.neo4j import Neo4jGraph
    from app.logs import configure_logging
    from workers.scheduler import Scheduler, default_tasks

    settings = _settings()
    configure_logging(settings)
    db = Database(settings, pool_size=2)
    graph = Neo4jGraph(settings)
    from app.consistency import Consistency

    checker = Consistency(settings, db, graph)
    runner = Scheduler(settings, db, default_tasks(
        settings, db, graph, check=lambda: checker.check().summary()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    try:
        runner.run()
    finally:
        graph.close()
        db.dispose()


def ensure_api_keys(settings: Settings) -> dict[str, str]:
    """Keys from the environment are used as they are; otherwise generate local ones once."""
    env: dict[str, str] = {}
    keyfile = settings.local_dir / "api-keys.env"
    stored: dict[str, str] = {}
    if keyfile.exists():
        for line in keyfile.read_text().splitlines():
            name, _, value = line.partition("=")
            stored[name] = value
    for name, given in (("API_SERVICE_KEYS", settings.api_service_keys),
                        ("API_ADMIN_KEYS", settings.api_admin_keys)):
        if given:
            continue
        prefix = "svc_" if name == "API_SERVICE_KEYS" else "adm_"
        env[name] = stored.get(name) or prefix + secrets.token_urlsafe(24)
    if env:
        settings.local_dir.mkdir(parents=True, exist_ok=True)
        keyfile.write_text("".join(f"{k}={v}\n" for k, v in {**stored, **env}.items()))
        keyfile.chmod(0o600)
    return env


@app.command()
def run() -> None:
    """Start everything locally: servers, migrations, then the Procfile's processes (honcho)."""
    settings = _settings()
    services_up()
    migrate("head")
    generated = ensure_api_keys(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    err_console.print(f"\n[bold]API[/bold]      {base}/api")
    err_console.print(f"[bold]API docs[/bold] {base}/docs")
    for name, value in generated.items():
        err_console.print(f"[bold]{name}[/bold] {value}  (generated, kept in "
                          f"{settings.local_dir / 'api-keys.env'})")
    err_console.print("Stop with Ctrl-C; 'memctl services down' stops the servers.\n")
    sys.stdout.flush()
    os.environ.update(generated)
    # The Procfile's commands (memctl, dramatiq) live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    procfile = Path(__file__).resolve().parent.parent / "Procfile"
    honcho = Path(sys.executable).with_name("honcho")
    os.execv(str(honcho), [str(honcho), "start", "-f", str(procfile), "-d", str(procfile.parent)])


# -- operator commands: sync, dead letters, outbox, health ---------------------------------------
#
# Exit codes: 0 success (and consistent), 1 a check found inconsistencies (health: degraded;
# or an operation failed otherwise), 2 bad input or configuration, 3 a server is unreachable.
# With --json, stdout carries exactly one JSON object: the result, or nothing when the command
# fails (the error goes to stderr). Progress bars and messages always go to stderr.

sync_app = typer.Typer(no_args_is_help=True,
                       help="Consistency of the graph with Postgres: check, repair, full, rebuild.")
dead_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, replay, discard.")
outbox_app = typer.Typer(no_args_is_help=True, help="The transactional outbox.")
app.add_typer(sync_app, name="sync")
app.add_typer(dead_app, name="dead")
app.add_typer(outbox_app, name="outbox")

EXIT_INCONSISTENT, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object on stdout and nothing else.")]
UserOpt = Annotated[str | None, typer.Option("--user", help="Only this user's memories.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Report only: store nothing and change nothing.")]


@dataclass
class Operator:
    """What the operator commands need, built from the settings and closed at the end."""

    settings: Settings
    db: Database
    graph: Neo4jGraph
    consistency: Consistency


def _emit_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int) -> NoReturn:
    """Say what went wrong on stderr, then exit with ``code``.

    soft_wrap keeps a one-line message on one line however narrow the terminal (scripts match
    on it); escape keeps brackets in messages and log tails from being read as markup.
    """
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


# libpq reports a refused login without a SQLSTATE, so the message is all there is to go on.
_PG_CONFIG_FAULTS = ("password authentication failed", "no pg_hba.conf entry",
                     "does not exist")


def _is_configuration_fault(exc: BaseException) -> bool:
    """A wrong password, a missing database or an unmigrated schema: not a transient outage."""
    import neo4j.exceptions

    cause = exc.__cause__
    sqlstate = getattr(getattr(cause, "orig", None), "sqlstate", None) or ""
    return (sqlstate.startswith(("28", "3D", "42P01"))
            or any(text in str(exc) for text in _PG_CONFIG_FAULTS)
            or isinstance(cause, neo4j.exceptions.AuthError
                          | neo4j.exceptions.ConfigurationError))


def exit_code_for(exc: MemoryPersistenceError) -> int:
    """The exit code of a failed operator command."""
    if isinstance(exc, ConfigError | ValidationError | NotFound) \
            or _is_configuration_fault(exc):
        return EXIT_USAGE
    if exc.retryable:
        return EXIT_UNREACHABLE
    return 1


@contextmanager
def _failures() -> Iterator[None]:
    """Our own errors raised inside the block become a one-line message and an exit code."""
    try:
        yield
    except MemoryPersistenceError as exc:
        _fail(str(exc), exit_code_for(exc))


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    from sqlalchemy.exc import ArgumentError

    from app.db.connector import Database

    try:
        db = Database(settings, pool_size=2)
    except (ArgumentError, ValueError) as exc:
        _fail(f"DATABASE_URL: {exc}", EXIT_USAGE)
    try:
        yield db
    finally:
        db.dispose()


@contextmanager
def _graph(settings: Settings) -> Iterator[Neo4jGraph]:
    from app.graph.neo4j import Neo4jGraph

    try:
        graph = Neo4jGraph(settings)  # connects on first use
    except Exception as exc:  # the driver rejects a malformed URI or auth at construction
        _fail(f"NEO4J_URI: {exc}", EXIT_USAGE)
    try:
        yield graph
    finally:
        graph.close()


@contextmanager
def _admin(*, with_graph: bool = False) -> Iterator[AdminService]:
    """The admin service, on Postgres only unless ``with_graph``; closed when the block ends."""
    from app.admin import AdminService

    settings = _settings()
    with _database(settings) as db:
        if not with_graph:  # dead letters and the outbox live in Postgres: no Neo4j driver
            with _failures():
                yield AdminService(settings, db)
            return
        with _graph(settings) as graph, _failures():
            yield AdminService(settings, db, graph)


@contextmanager
def _operator() -> Iterator[Operator]:
    """Database, graph and consistency checker; closed when the block ends."""
    from app.consistency import Consistency
    from app.extraction import make_extractor

    settings = _settings()
    with _database(settings) as db, _graph(settings) as graph, _failures():
        yield Operator(settings, db, graph,
                       Consistency(settings, db, graph, make_extractor(settings)))


def _actor() -> str:
    """The acting operator recorded on replays and discards: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "cli:unknown"


def _when(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 timestamp; without a zone it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option}: not an ISO 8601 timestamp (like 2025-01-31 or 2025-01-31T12:00:00Z)",
              EXIT_USAGE)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@contextmanager
def _progress_bars(enabled: bool, totals: dict[str, int | None]) -> Iterator[ProgressFn | None]:
    """Rich progress bars on stderr, one per phase, fed by the ``progress`` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console) as bars:

        def advance(phase: str, done: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=totals.get(phase))
            bars.advance(tasks[phase], done)

        yield advance
        for task in bars.tasks:  # phases of unknown size end full
            bars.update(task.id, total=task.completed)


def _memory_total(op: Operator, user: str | None, limit: int | None) -> int:
    row = op.db.one("memory_stats", {"user_id": user})
    total = int(row.live) + int(row.deleted) if row is not None else 0
    return min(total, limit) if limit is not None else total


def _check_tables(report: CheckReport) -> None:
    console.print(f"checked {report.checked} memories and {report.graph_nodes_checked} graph "
                  f"nodes ({report.in_transit} in transit, skipped)")
    table = Table("finding", "count", title="findings by kind")
    for kind, n in report.by_kind.items():
        table.add_row(kind, f"[red]{n}[/]" if n else "0")
    table.add_row("[bold]total[/]", f"[bold]{len(report.findings)}[/]")
    console.print(table)
    if report.findings:
        shown = Table("kind", "user", "memory / entity", "details", title="findings")
        for f in report.findings[:20]:
            shown.add_row(f.kind, escape(f.user_id or "-"),
                          escape(f.memory_id or f.entity_key or "-"),
                          escape(json.dumps(f.details, default=str)))
        console.print(shown)
        if len(report.findings) > 20:
            console.print(f"... and {len(report.findings) - 20} more (--json lists them all)")
    where = (f"stored as check run {report.run_id}" if report.stored
             else "not stored: dry run")
    if not report.complete:
        where += "; stopped early at --limit"
    if report.consistent:
        console.print(f"[green]consistent[/green] ({where})")
    else:
        console.print(f"[red]{len(report.findings)} inconsistencies[/red] ({where})")


def _summary_table(title: str, summary: dict[str, object]) -> None:
    table = Table("", "", title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


def _sync(operation: str, user: str | None, limit: int | None, dry_run: bool,
          reextract: bool, as_json: bool) -> None:
    """Run one consistency operation, show its report, exit with its code."""
    result: dict[str, object] = {"operation": operation}
    check: CheckReport | None = None
    with _operator() as op:
        op.graph.ping()  # fail fast (exit 3) rather than after the driver's retries
        if operation in ("check", "full"):
            totals: dict[str, int | None] = {"memories": _memory_total(op, user, limit)}
            with _progress_bars(not as_json, totals) as progress:
                if operation == "check":
                    check = op.consistency.check(user, limit=limit, store=not dry_run,
                                                 progress=progress)
                else:
                    check, repaired = op.consistency.full(user, limit=limit, dry_run=dry_run,
                                                          progress=progress)
                    result["repair"] = repaired.summary()
            result["consistent"] = check.consistent
            result["check"] = check.summary()
            result["findings"] = [dataclasses.asdict(f) for f in check.findings]
        elif operation == "repair":
            result["repair"] = op.consistency.repair(user_id=user, limit=limit,
                                                     dry_run=dry_run).summary()
        else:
            totals = {"rebuild": _memory_total(op, user, None)}
            with _progress_bars(not as_json, totals) as progress:
                result["rebuild"] = op.consistency.rebuild(user, reextract=reextract,
                                                           progress=progress).summary()
    if as_json:
        _emit_json(result)
    else:
        if check is not None:
            _check_tables(check)
        for part in ("repair", "rebuild"):
            if part in result:
                summary = result[part]
                assert isinstance(summary, dict)
                _summary_table(part + (" (dry run)" if dry_run else ""), summary)
    # A check that found something is the failure a monitor looks for; a full run that
    # repaired what it found succeeded (the repair is queued through the outbox).
    if check is not None and not check.consistent and (operation == "check" or dry_run):
        raise typer.Exit(EXIT_INCONSISTENT)


@sync_app.command("check")
def sync_check(user: UserOpt = None,
               limit: Annotated[int | None, typer.Option(
                   min=1, help="Compare at most this many memories.")] = None,
               dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Compare the graph with Postgres and store the findings; exit 1 when there are any."""
    _sync("check", user, limit, dry_run, False, as_json)


@sync_app.command("repair")
def sync_repair(user: UserOpt = None,
                limit: Annotated[int | None, typer.Option(
                    min=1, help="Repair at most this many stored findings.")] = None,
                dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Repair the stored open findings (re-project through the outbox, remove orphans)."""
    _sync("repair", user, limit, dry_run, False, as_json)


@sync_app.command("full")
def sync_full(user: UserOpt = None,
              limit: Annotated[int | None, typer.Option(
                  min=1, help="Compare at most this many memories.")] = None,
              dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Check, then repair what the check found (exit 1 only on a dry run that found some)."""
    _sync("full", user, limit, dry_run, False, as_json)


@sync_app.command("rebuild")
def sync_rebuild(user: UserOpt = None,
                 reextract: Annotated[bool, typer.Option(
                     "--reextract", help="Run the extractor again instead of the cache.")
                 ] = False,
                 as_json: JsonOpt = False) -> None:
    """Clear the graph (of one user or all) and re-project it from Postgres."""
    _sync("rebuild", user, None, False, reextract, as_json)


def _short(value: object, width: int = 60) -> str:
    text = "" if value is None else str(value)
    return escape(text if len(text) <= width else text[:width - 1] + "…")


@dead_app.command("list")
def dead_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's.")] = None,
    error: Annotated[str | None, typer.Option(
        "--error", help="A substring of the last error (case-insensitive).")] = None,
    event_type: Annotated[str | None, typer.Option(
        "--event-type", help="upsert, delete or resync.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Created at or after (ISO 8601; UTC without a zone).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Created before.")] = None,
    status: Annotated[str, typer.Option(
        "--status", help="dead (open), replayed, discarded or any.")] = "dead",
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    before_id: Annotated[int | None, typer.Option(
        "--before-id", min=1, help="The 'next' id the previous page printed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, newest first."""
    if status not in ("dead", "replayed", "discarded", "any"):
        _fail("--status: must be dead, replayed, discarded or any", EXIT_USAGE)
    from app.admin import DeadLetterFilter

    filters = DeadLetterFilter(
        None if status == "any" else cast("DeadStatus", status), user, event_type, error,
        _when(since, "--since"), _when(until, "--until"))
    with _admin() as admin:
        items = admin.list_dead_letters(filters, limit=limit, before_id=before_id)
        more = len(items) == limit and bool(admin.list_dead_letters(
            filters, limit=1, before_id=items[-1]["id"]))
    next_before_id = items[-1]["id"] if more else None
    if as_json:
        _emit_json({"items": items, "next_before_id": next_before_id})
        return
    table = Table("id", "created", "user", "memory", "event", "v", "tries", "status",
                  "last error", title=f"dead letters ({status})")
    for d in items:
        table.add_row(str(d["id"]), str(d["created_at"])[:19], _short(d["user_id"], 20),
                      str(d["memory_id"])[:8], d["event_type"], str(d["memory_version"]),
                      str(d["attempts"]), d["status"], _short(d["last_error"]))
    console.print(table)
    if next_before_id is not None:
        console.print(f"next page: --before-id {next_before_id}")


@dead_app.command("show")
def dead_show(dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
              as_json: JsonOpt = False) -> None:
    """One dead letter with its full error history."""
    with _admin() as admin:
        letter = admin.get_dead_letter(dead_letter_id)
    if as_json:
        _emit_json(letter)
        return
    fields = Table("", "", show_header=False, title=f"dead letter {dead_letter_id}")
    for key, value in letter.items():
        if key != "errors":
            fields.add_row(key.replace("_", " "), escape("-" if value is None else str(value)))
    console.print(fields)
    history = Table("attempt", "at", "error", title="error history")
    for entry in letter.get("errors") or []:
        history.add_row(str(entry.get("attempt", "")), str(entry.get("at", ""))[:26],
                        escape(str(entry.get("error", ""))))
    console.print(history)


@dead_app.command("replay")
def dead_replay(
    ids: Annotated[list[int] | None, typer.Argument(
        metavar="ID", help="Dead letters to replay.", show_default=False)] = None,
    everything: Annotated[bool, typer.Option("--all", help="Replay every open one.")] = False,
    user: Annotated[str | None, typer.Option("--user", help="Filter: this user's.")] = None,
    error: Annotated[str | None, typer.Option(
        "--error", help="Filter: a substring of the last error.")] = None,
    event_type: Annotated[str | None, typer.Option(
        "--event-type", help="Filter: upsert, delete or resync.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Filter: dead since.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Filter: dead before.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send dead letters back to the outbox (attempts reset): by ids, by filter, or --all."""
    filtered = any(v is not None for v in (user, error, event_type, since, until))
    modes = [name for name, given in (("ids", bool(ids)), ("a filter", filtered),
                                      ("--all", everything)) if given]
    if len(modes) != 1:
        _fail("choose the dead letters: give ids, a filter (--user, --error, --event-type, "
              "--since, --until) or --all" + (f", not {' and '.join(modes)}" if modes else ""),
              EXIT_USAGE)
    from app.admin import DeadLetterFilter

    filters = DeadLetterFilter("dead", user, event_type, error,
                               _when(since, "--since"),
                               _when(until, "--until")) if filtered else None
    with _admin() as admin:
        done = admin.replay(ids=list(ids) if ids else None, filters=filters,
                               everything=everything, actor=_actor())
    skipped = sorted(set(ids or ()) - set(done))
    if as_json:
        _emit_json({"replayed": done, "count": len(done), "skipped": skipped})
        return
    listed = f": {', '.join(map(str, done))}" if done and len(done) <= 50 else ""
    console.print(f"replayed {len(done)} dead letter{'' if len(done) == 1 else 's'}{listed}")
    if skipped:
        console.print(f"skipped (already replayed or discarded): {', '.join(map(str, skipped))}")


@dead_app.command("discard")
def dead_discard(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why the event is given up (required; kept on the record).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a dead letter without replaying it; --reason is required."""
    if reason is None or not reason.strip():
        _fail(f"--reason is required: say why dead letter {dead_letter_id} is discarded",
              EXIT_USAGE)
    actor = _actor()
    with _admin() as admin:
        admin.discard(dead_letter_id, reason, actor=actor)
    if as_json:
        _emit_json({"id": dead_letter_id, "status": "discarded", "resolved_by": actor,
                    "reason": reason})
        return
    console.print(f"discarded dead letter {dead_letter_id} ({actor})")


@outbox_app.command("stats")
def outbox_stats(as_json: JsonOpt = False) -> None:
    """Outbox rows per status, expired leases and the projection lag."""
    with _admin() as admin:
        stats = admin.outbox_stats()
    if as_json:
        _emit_json(stats)
        return
    _summary_table("outbox", stats)


@app.command()
def graph(
    user: Annotated[str, typer.Argument(help="whose memories to show")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show what Neo4j has for one user: each memory's version and the entities it mentions."""
    settings = _settings()
    with _failures(), _graph(settings) as store:
        rows = store.user_graph(user, limit)
    if as_json:
        _emit_json([{"id": i, "version": v, "entities": e} for i, v, e in rows])
        return
    table = Table("memory", "version", "entities", title=f"graph of {user}")
    for memory_id, version, entities in rows:
        table.add_row(memory_id, str(version), ", ".join(entities))
    console.print(table)


@app.command()
def health(as_json: JsonOpt = False) -> None:
    """Reachability of Postgres, Neo4j and Redis; exit 0 ok, 1 degraded, 3 down."""
    with _admin(with_graph=True) as admin:
        report = admin.health().as_dict()
    if as_json:
        _emit_json(report)
    else:
        table = Table("server", "state", "latency", "error", title="health")
        for name, probe in report["servers"].items():
            state = "[green]up[/]" if probe["ok"] else "[red]down[/]"
            latency = f"{probe['latency_ms']} ms" if probe["latency_ms"] is not None else "-"
            table.add_row(name, state, latency, _short(probe["error"], 70))
        console.print(table)
        if report["outbox"]:
            outbox = report["outbox"]
            console.print(f"outbox: {outbox['pending']} pending, {outbox['in_flight']} in "
                          f"flight, {outbox['dead']} dead, lag {outbox['lag_seconds']}s; "
                          f"{report['dead_letters']} open dead letters")
        color = {"ok": "green", "degraded": "yellow", "down": "red"}[report["status"]]
        console.print(f"[{color}]{report['status']}[/]")
    raise typer.Exit({"ok": 0, "degraded": 1, "down": EXIT_UNREACHABLE}[report["status"]])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
