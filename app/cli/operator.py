"""The operator's commands: sync, dead letters, outbox, health, graph.

They parse arguments, call the same services as the admin API, and print; nothing here talks
to a server directly.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

from app.cli.jobs import submit_and_follow
from app.cli.output import (
    EXIT_INCONSISTENT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonOpt,
    console,
    emit_json,
    fail,
    progress_bars,
    services,
    short,
)
from app.consistency import CheckReport, SyncReport, SyncRequest
from app.errors import ValidationError
from app.outbox import DeadLetterFilter, DeadStatus, ReplaySelection
from app.retrieval import parse_key, public_key

sync_app = typer.Typer(no_args_is_help=True,
                       help="Consistency of the graph with Postgres: check, repair, full, rebuild.")
dead_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, replay, discard.")
outbox_app = typer.Typer(no_args_is_help=True, help="The transactional outbox.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys kept in Postgres: create, list, "
                                                  "revoke.")

UserOpt = Annotated[str | None, typer.Option("--user", help="Only this user's memories.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Report only: store nothing and change nothing.")]
BackgroundOpt = Annotated[bool, typer.Option(
    "--background", help="Run it as a background job (the scheduler runs it) and follow it "
                         "with a progress bar; Ctrl-C stops following, not the job.")]


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
        fail(f"{option}: not an ISO 8601 timestamp (like 2025-01-31 or 2025-01-31T12:00:00Z)",
             EXIT_USAGE)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- sync ------------------------------------------------------------------------------------


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


def _summary_table(title: str, summary: dict[str, Any]) -> None:
    table = Table("", "", title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


def _print_sync(report: SyncReport) -> None:
    if report.check is not None:
        _check_tables(report.check)
    dry = " (dry run)" if report.request.dry_run else ""
    if report.repair is not None:
        _summary_table("repair" + dry, report.repair.summary())
    if report.rebuild is not None:
        _summary_table("rebuild", report.rebuild.summary())


def _sync(request_args: dict[str, Any], as_json: bool, background: bool = False) -> None:
    """Run one consistency operation, show its report, exit with its code.

    With ``background``, submit it as a job a runner (the scheduler) runs, and follow it.
    """
    with services() as parts:
        request = SyncRequest(**request_args)
        if background:
            submit_and_follow(parts, request, _actor(), as_json)
        with progress_bars(not as_json) as progress:
            report = parts.consistency.run(request, progress)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_sync(report)
    if report.failed:
        raise typer.Exit(EXIT_INCONSISTENT)


@sync_app.command("check")
def sync_check(user: UserOpt = None,
               limit: Annotated[int | None, typer.Option(
                   min=1, help="Compare at most this many memories.")] = None,
               dry_run: DryRunOpt = False, background: BackgroundOpt = False,
               as_json: JsonOpt = False) -> None:
    """Compare the graph with Postgres and store the findings; exit 1 when there are any."""
    _sync({"operation": "check", "user_id": user, "limit": limit, "dry_run": dry_run}, as_json,
          background)


@sync_app.command("repair")
def sync_repair(user: UserOpt = None,
                limit: Annotated[int | None, typer.Option(
                    min=1, help="Repair at most this many stored findings.")] = None,
                dry_run: DryRunOpt = False, background: BackgroundOpt = False,
                as_json: JsonOpt = False) -> None:
    """Repair the stored open findings (re-project through the outbox, remove orphans)."""
    _sync({"operation": "repair", "user_id": user, "limit": limit, "dry_run": dry_run},
          as_json, background)


@sync_app.command("full")
def sync_full(user: UserOpt = None,
              limit: Annotated[int | None, typer.Option(
                  min=1, help="Compare at most this many memories.")] = None,
              dry_run: DryRunOpt = False, background: BackgroundOpt = False,
              as_json: JsonOpt = False) -> None:
    """Check, then repair what the check found (exit 1 only on a dry run that found some)."""
    _sync({"operation": "full", "user_id": user, "limit": limit, "dry_run": dry_run}, as_json,
          background)


@sync_app.command("rebuild")
def sync_rebuild(user: UserOpt = None,
                 reextract: Annotated[bool, typer.Option(
                     "--reextract", help="Run the extractor again instead of the cache.")
                 ] = False,
                 background: BackgroundOpt = False, as_json: JsonOpt = False) -> None:
    """Clear the graph (of one user or all) and re-project it from Postgres."""
    _sync({"operation": "rebuild", "user_id": user, "reextract": reextract}, as_json,
          background)


# -- dead letters ----------------------------------------------------------------------------


def _filter(status: DeadStatus | None, user: str | None, event_type: str | None,
            error: str | None, since: str | None, until: str | None) -> DeadLetterFilter:
    return DeadLetterFilter(status, user, event_type, error, _when(since, "--since"),
                            _when(until, "--until"))


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
        fail("--status: must be dead, replayed, discarded or any", EXIT_USAGE)
    filters = _filter(None if status == "any" else cast("DeadStatus", status), user,
                      event_type, error, since, until)
    with services() as parts:
        page = parts.outbox.dead_letters(filters, limit=limit, before_id=before_id)
    if as_json:
        emit_json({"items": page.items, "next_before_id": page.next_before_id})
        return
    table = Table("id", "created", "user", "memory", "event", "v", "tries", "status",
                  "last error", title=f"dead letters ({status})")
    for d in page.items:
        table.add_row(str(d["id"]), str(d["created_at"])[:19], short(d["user_id"], 20),
                      str(d["memory_id"])[:8], d["event_type"], str(d["memory_version"]),
                      str(d["attempts"]), d["status"], short(d["last_error"]))
    console.print(table)
    if page.next_before_id is not None:
        console.print(f"next page: --before-id {page.next_before_id}")


@dead_app.command("show")
def dead_show(dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
              as_json: JsonOpt = False) -> None:
    """One dead letter with its full error history."""
    with services() as parts:
        letter = parts.outbox.dead_letter(dead_letter_id)
    if as_json:
        emit_json(letter)
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
    filters = _filter("dead", user, event_type, error, since, until)
    try:
        selection = ReplaySelection(ids=tuple(ids) if ids else None,
                                    filter=filters if filters.criteria else None,
                                    everything=everything)
    except ValidationError as exc:  # the same rule, in this command's words
        fail(f"{exc}; as options: IDs, a filter (--user, --error, --event-type, --since, "
             "--until) or --all", EXIT_USAGE)
    with services() as parts:
        result = parts.outbox.replay(selection, _actor())
    done = result.replayed
    if as_json:
        emit_json({"replayed": done, "count": len(done), "skipped": result.skipped})
        return
    listed = f": {', '.join(map(str, done))}" if done and len(done) <= 50 else ""
    console.print(f"replayed {len(done)} dead letter{'' if len(done) == 1 else 's'}{listed}")
    if result.skipped:
        console.print("skipped (already replayed or discarded): "
                      + ", ".join(map(str, result.skipped)))


@dead_app.command("discard")
def dead_discard(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why the event is given up (required; kept on the record).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a dead letter without replaying it; --reason is required."""
    if reason is None or not reason.strip():
        fail(f"--reason is required: say why dead letter {dead_letter_id} is discarded",
             EXIT_USAGE)
    actor = _actor()
    with services() as parts:
        parts.outbox.discard(dead_letter_id, reason, actor)
    if as_json:
        emit_json({"id": dead_letter_id, "status": "discarded", "resolved_by": actor,
                   "reason": reason})
        return
    console.print(f"discarded dead letter {dead_letter_id} ({actor})")


# -- outbox, health, graph -------------------------------------------------------------------


@outbox_app.command("stats")
def outbox_stats(as_json: JsonOpt = False) -> None:
    """Outbox rows per status, expired leases and the projection lag."""
    with services() as parts:
        stats = dataclasses.asdict(parts.outbox.stats())
    if as_json:
        emit_json(stats)
        return
    _summary_table("outbox", stats)


def graph(
    user: Annotated[str, typer.Argument(help="whose memories to show")],
    entity: Annotated[str | None, typer.Option(
        "--entity", help="Show this entity's neighbourhood instead (type:name, e.g. "
                         "'person:john smith').")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show what Neo4j has for one user: each memory's version and the entities it mentions,
    or (--entity) the entities one is related to and the memories that mention it."""
    if entity is not None:
        _neighbourhood(user, entity, limit, as_json)
        return
    with services() as parts:
        rows = parts.graph.user_graph(user, limit)
    if as_json:
        emit_json([{"id": i, "version": v, "entities": e} for i, v, e in rows])
        return
    table = Table("memory", "version", "entities", title=f"graph of {user}")
    for memory_id, version, entities in rows:
        table.add_row(memory_id, str(version), ", ".join(entities))
    console.print(table)


def _neighbourhood(user: str, key: str, limit: int, as_json: bool) -> None:
    with services() as parts:
        full = parse_key(user, key)
        links = parts.graph.entity_neighbourhood(user, full, limit)
        memories = parts.retrieval.entity_memories(user, key, limit=limit)
    if as_json:
        emit_json({"entity": key, "links": [
            {"key": public_key(link.entity.key), "name": link.entity.name,
             "type": link.entity.type, "predicate": link.predicate,
             "memories": link.memories} for link in links],
            "memories": [{"id": str(m.id), "content": m.content} for m in memories.items]})
        return
    table = Table("related entity", "type", "relation", "memories", title=f"{key} ({user})")
    for link in links:
        table.add_row(escape(link.entity.name), link.entity.type, link.predicate,
                      str(link.memories))
    console.print(table)
    mentioned = Table("memory", "content", title="memories that mention it")
    for m in memories.items:
        mentioned.add_row(str(m.id), short(m.content, 70))
    console.print(mentioned)


def reembed(
    change_dimension: Annotated[bool, typer.Option(
        "--change-dimension", help="First give the vector column the configured embedder's "
                                   "dimension (drops every vector; search falls back to text "
                                   "until the run ends).")] = False,
    status_only: Annotated[bool, typer.Option("--status", help="Only report what is pending.")
                           ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move every memory to the configured embedder (resumable: run it again after a stop)."""
    with services() as parts:
        job = parts.reembedder
        status = job.status()
        if status_only:
            report = {**status.__dict__, "dimension_ok": status.dimension_ok}
            if as_json:
                emit_json(report)
            else:
                _summary_table("re-embedding", report)
            return
        if change_dimension and not status.dimension_ok:
            job.change_dimension()
        parts.embedder.load()
        with progress_bars(not as_json) as progress:
            result = job.run(progress=(lambda done, total: progress("reembed", done, total))
                             if progress else None)
    if as_json:
        emit_json({"embedder": status.embedder, **result.__dict__})
    else:
        _summary_table(f"re-embedded with {status.embedder}", result.__dict__)


def health(as_json: JsonOpt = False) -> None:
    """Servers, dependency breakers and the outbox; exit 0 ok, 1 degraded, 3 down.

    Degraded: Neo4j or Redis unreachable, or a breaker open or misconfigured.
    """
    with services() as parts:
        report = parts.admin.health().as_dict()
    if as_json:
        emit_json(report)
    else:
        table = Table("server", "state", "latency", "error", title="health")
        for name, probe in report["servers"].items():
            state = "[green]up[/]" if probe["ok"] else "[red]down[/]"
            latency = f"{probe['latency_ms']} ms" if probe["latency_ms"] is not None else "-"
            table.add_row(name, state, latency, short(probe["error"], 70))
        console.print(table)
        if report["breakers"]:
            breakers = Table("breaker", "state", "since", "held", "last error",
                             title="dependency breakers")
            for name, b in report["breakers"].items():
                color = "green" if b["state"] == "closed" else "red"
                breakers.add_row(name, f"[{color}]{b['state']}[/]",
                                 str(b["opened_at"] or "-")[:19], str(b["held"]),
                                 short(b["last_error"], 70) if b["state"] != "closed" else "")
            console.print(breakers)
        if report["outbox"]:
            outbox = report["outbox"]
            console.print(f"outbox: {outbox['pending']} pending ({outbox['held']} held by "
                          f"breakers), {outbox['in_flight']} in flight, {outbox['dead']} dead, "
                          f"lag {outbox['lag_seconds']}s; {report['dead_letters']} open dead "
                          "letters")
        for reason in report["reasons"]:
            console.print(f"- {escape(reason)}", soft_wrap=True)
        color = {"ok": "green", "degraded": "yellow", "down": "red"}[report["status"]]
        console.print(f"[{color}]{report['status']}[/]")
    raise typer.Exit({"ok": 0, "degraded": 1, "down": EXIT_UNREACHABLE}[report["status"]])


# -- API keys --------------------------------------------------------------------------------


def _key_row(k: dict[str, Any]) -> dict[str, Any]:
    return {name: (v.isoformat() if isinstance(v, datetime) else v) for name, v in k.items()}


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    scope: Annotated[str, typer.Option("--scope", help="service or admin.")] = "service",
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help="Bind a service key to user ids '<namespace>:…'.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; its secret is printed once, on stdout, and never stored."""
    with services() as parts:
        new = parts.keys.create(name, scope, namespace, actor=_actor())
    if as_json:
        emit_json({**_key_row(new.record), "secret": new.secret})
        return
    bound = f", bound to '{namespace}:…'" if namespace else ""
    console.print(f"created {scope} key {new.record['id']} ({escape(name)}{bound}); its "
                  "secret, shown only now:")
    print(new.secret)  # plain stdout: no wrapping or markup in a secret


@keys_app.command("list")
def keys_list(everything: Annotated[bool, typer.Option(
                  "--all", help="Also the revoked keys.")] = False,
              as_json: JsonOpt = False) -> None:
    """Keys kept in Postgres, without their secrets (settings' bootstrap keys are not listed)."""
    with services() as parts:
        rows = [_key_row(k) for k in parts.keys.list(include_revoked=everything)]
    if as_json:
        emit_json({"items": rows})
        return
    table = Table("id", "name", "scope", "namespace", "prefix", "created", "revoked",
                  title="API keys")
    for k in rows:
        table.add_row(str(k["id"]), short(k["name"], 30), k["scope"], k["namespace"] or "-",
                      k["prefix"] + "…", str(k["created_at"])[:19],
                      str(k["revoked_at"] or "-")[:19])
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID")],
                as_json: JsonOpt = False) -> None:
    """Revoke a key: every web process refuses it within API_KEY_CACHE_SECONDS."""
    with services() as parts:
        row = _key_row(parts.keys.revoke(key_id, actor=_actor()))
    if as_json:
        emit_json(row)
        return
    console.print(f"revoked key {key_id} ({escape(row['name'])}) at {row['revoked_at']}")


def register(app: typer.Typer) -> None:
    app.add_typer(sync_app, name="sync")
    app.add_typer(dead_app, name="dead")
    app.add_typer(outbox_app, name="outbox")
    app.add_typer(keys_app, name="keys")
    app.command()(graph)
    app.command()(reembed)
    app.command()(health)
