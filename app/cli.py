"""``memctl``: the operator's command line."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.errors import MemoryPersistenceError
from app.localservers import LocalServers, ServerUrls, Status
from app.settings import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
services_app = typer.Typer(no_args_is_help=True, help="Local Postgres, Redis and Neo4j servers.")
app.add_typer(services_app, name="services")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except MemoryPersistenceError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


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
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@services_app.command("down")
def services_down() -> None:
    """Stop exactly the servers ``up`` started."""
    try:
        local_servers(_settings()).down()
    except MemoryPersistenceError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


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
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
