"""``memctl``: the operator's command line and the processes' entry points.

The commands parse arguments and print; the work is done by the services ``app.wiring``
builds. In a checkout, the development commands (``services``, ``run``) of the ``devtools``
package are added too; an installed wheel does not ship them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from app.cli import backup, jobs, mcp, operator, processes

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="memctl: the operator's command line.")
processes.register(app)
operator.register(app)
backup.register(app)
mcp.register(app)
jobs.register(app)


def _development_commands(cli: typer.Typer) -> None:
    """Add ``devtools``' commands when this is a checkout (``devtools/`` beside ``app/``)."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "devtools" / "cli.py").is_file():
        return  # an installed copy: no development commands
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        module = importlib.import_module("devtools.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("devtools", "devtools.cli"):
            raise
        return
    module.register(cli)


def main() -> None:
    _development_commands(app)  # here, not at import: devtools imports this package
    app()


if __name__ == "__main__":
    main()
