"""``memctl services …`` and ``memctl run``: the local stack, from a checkout only.

``app.cli`` adds these commands when this package is importable (a checkout); an installed
wheel has no ``devtools`` and no such commands.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import typer
from rich.table import Table

from app.cli.output import console, err_console, fail, settings_or_exit
from app.errors import MemoryPersistenceError
from app.settings import Settings
from devtools.localservers import LocalServers, ServerUrls, Status

REPO = Path(__file__).resolve().parent.parent
services_app = typer.Typer(no_args_is_help=True, help="Local Postgres, Redis and Neo4j servers.")


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
    servers = local_servers(settings_or_exit())

    def report(status: Status, seconds: float) -> None:
        err_console.print(
            f"  {status.name:<9} {status.state:<8} {status.address}  ({seconds:.1f}s)")

    try:
        servers.up(report)
    except MemoryPersistenceError as exc:
        fail(str(exc), 1)


@services_app.command("down")
def services_down() -> None:
    """Stop exactly the servers ``up`` started."""
    try:
        local_servers(settings_or_exit()).down()
    except MemoryPersistenceError as exc:
        fail(str(exc), 1)


@services_app.command("status")
def services_status() -> None:
    """Show each local server; exit 1 when a managed one is not running."""
    statuses = local_servers(settings_or_exit()).status()
    console.print(_status_table(statuses))
    if any(s.state == "stopped" for s in statuses):
        raise typer.Exit(1)


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


def run() -> None:
    """Start everything locally: servers, migrations, then the Procfile's processes (honcho)."""
    from app.cli.processes import migrate

    settings = settings_or_exit()
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
    procfile = REPO / "Procfile"
    honcho = Path(sys.executable).with_name("honcho")
    os.execv(str(honcho), [str(honcho), "start", "-f", str(procfile), "-d", str(REPO)])


def register(app: typer.Typer) -> None:
    """Add the development commands to ``memctl``."""
    app.add_typer(services_app, name="services")
    app.command(help=run.__doc__)(run)
