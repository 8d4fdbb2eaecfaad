"""``memctl mcp``: the MCP server, over stdio (for a desktop host) or streamable HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.output import EXIT_USAGE, fail, services
from app.errors import ValidationError
from app.validation import check_user_id


def mcp(
    transport: Annotated[str, typer.Option(
        "--transport", help="stdio (an MCP host starts this command) or http.")] = "stdio",
    user_id: Annotated[str | None, typer.Option(
        "--user-id", help="The user whose memories the tools act on (default: MCP_USER_ID).")
    ] = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="http: the address to bind (default: MCP_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, help="http: the port (default: MCP_PORT, 8765).")] = None,
) -> None:
    """Serve one user's memories as MCP tools (add, search, get, update, delete, related,
    entities). Over http every request needs a service API key (Authorization: Bearer)."""
    from app.mcp.serve import serve_http, serve_stdio

    if transport not in ("stdio", "http"):
        fail("--transport must be stdio or http", EXIT_USAGE)
    with services() as parts:
        user = user_id if user_id is not None else parts.settings.mcp_user_id
        if not user:
            fail("no user: set MCP_USER_ID or pass --user-id", EXIT_USAGE)
        try:
            check_user_id(user)
        except ValidationError as exc:
            fail(f"--user-id / MCP_USER_ID: {exc}", EXIT_USAGE)
        if transport == "stdio":
            serve_stdio(parts, user)
        else:
            serve_http(parts, user, host or parts.settings.mcp_host,
                       port or parts.settings.mcp_port)


def register(app: typer.Typer) -> None:
    app.command()(mcp)
