"""``memctl services …`` and ``memctl run``: the local stack, from a checkout only.

``app.cli`` adds these commands when this package is importable (a checkout); an installed
wheel has no ``devtools`` and no such commands.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer
from rich.table import Table

from app.cli.output import console, err_console, fail, settings_or_exit
from app.errors import MemoryPersistenceError
from app.settings import Settings
from devtools.localservers import LocalServers, ServerUrls, Status, write_secret

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
    ensure_local_secrets(settings_or_exit())
    servers = local_servers(settings_or_exit())  # again: with the secrets just written

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


def _parse_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() and not name.startswith("#"):
                values[name.strip()] = value
    return values


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or ''}:{password}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def ensure_local_secrets(settings: Settings) -> dict[str, str]:
    """Generate, once, what the local stack must not run without; kept in LOCAL_DIR/secrets.env.

    API keys when none are configured; the admin console's session secret when none is set
    (so every local web process accepts the same sessions); a Redis password when the local
    Redis URL has none;
    fresh passwords for Postgres' application role and for Neo4j when they are still the
    built-in defaults and their servers have no data yet (an existing data folder keeps the
    password it was made with). Values set in the environment or .env are never replaced.
    Returns what was generated or kept in the file.
    """
    path = settings.local_dir / "secrets.env"
    stored = _parse_env(path)
    defaults = Settings.model_fields
    state = settings.local_dir
    wanted: dict[str, str] = {}
    for name, given in (("API_SERVICE_KEYS", settings.api_service_keys),
                        ("API_ADMIN_KEYS", settings.api_admin_keys)):
        if not given or name in stored:
            prefix = "svc_" if name == "API_SERVICE_KEYS" else "adm_"
            wanted[name] = stored.get(name) or prefix + secrets.token_urlsafe(32)
    if settings.redis_url == defaults["redis_url"].default or "REDIS_URL" in stored:
        wanted["REDIS_URL"] = stored.get("REDIS_URL") or _with_password(
            settings.redis_url, secrets.token_urlsafe(24))
    if (settings.neo4j_password.get_secret_value() == defaults["neo4j_password"].default
            .get_secret_value() and not (state / "neo4j" / "home").exists()) \
            or "NEO4J_PASSWORD" in stored:
        wanted["NEO4J_PASSWORD"] = stored.get("NEO4J_PASSWORD") or secrets.token_urlsafe(24)
    if (settings.database_url == defaults["database_url"].default
            and not (state / "postgres" / "data").exists()) or "DATABASE_URL" in stored:
        wanted["DATABASE_URL"] = stored.get("DATABASE_URL") or _with_password(
            settings.database_url, secrets.token_urlsafe(24))
    if not settings.console_session_secret.get_secret_value() \
            or "CONSOLE_SESSION_SECRET" in stored:
        wanted["CONSOLE_SESSION_SECRET"] = (stored.get("CONSOLE_SESSION_SECRET")
                                            or secrets.token_urlsafe(32))
    if wanted != stored:
        write_secret(path, "# Generated by memctl for the local stack; keep it private.\n"
                     + "".join(f"{k}={v}\n" for k, v in wanted.items()))
    return wanted


def masked(secret: str) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    return secret[:8] + "…" if len(secret) > 12 else "…"


def wait_ready(url: str, stopped: Callable[[], bool], timeout: float = 300.0) -> bool:
    """Poll ``url`` until it answers 200 (True), ``stopped()`` holds or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopped():
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def run() -> None:
    """Start everything locally: servers, migrations, then the Procfile's processes (honcho).

    honcho prints one line per process it starts; once the API answers its readiness probe
    this prints one ready line with the addresses, and Ctrl-C stops every process.
    """
    from app.cli.processes import migrate

    services_up()
    migrate("head")
    settings = settings_or_exit()
    generated = ensure_local_secrets(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    for name in ("API_SERVICE_KEYS", "API_ADMIN_KEYS"):
        if name in generated:
            err_console.print(f"[bold]{name}[/bold] {masked(generated[name])}  (generated; "
                              f"the full value is in {settings.local_dir / 'secrets.env'})")
    sys.stdout.flush()
    env = {**os.environ, **generated}
    # The Procfile's commands (memctl, dramatiq) live beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    honcho = Path(sys.executable).with_name("honcho")
    proc = subprocess.Popen([str(honcho), "start", "-f", str(REPO / "Procfile"),
                             "-d", str(REPO)], env=env)
    # Ctrl-C reaches honcho with the terminal's process group; honcho stops the processes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    if wait_ready(f"{base}/api/health/ready", lambda: proc.poll() is not None):
        console_part = f", console {base}/admin" if settings.console_enabled else ""
        err_console.print(f"[bold green]ready[/bold green]: API {base}/api, docs {base}/docs"
                          f"{console_part}; Ctrl-C stops it ('memctl services down' stops "
                          "the servers)", soft_wrap=True)
    raise typer.Exit(proc.wait())


def register(app: typer.Typer) -> None:
    """Add the development commands to ``memctl``."""
    app.add_typer(services_app, name="services")
    app.command(help=run.__doc__)(run)
