"""Run Alembic from code (``memctl migrate``, tests) with settings passed in.

The migration scripts are the repository's top-level ``alembic/`` folder, shipped inside the
package as ``app/migrations`` (a link in the checkout, real files in a wheel), so any installed
copy can migrate its database from any working directory.

Alembic is imported when first used, not with this module: importing it logs its plugin set-up
at INFO, which processes that never migrate (workers, the web process) need not print.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from app.db.connector import convert
from app.errors import StoreError
from app.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config


def script_location() -> str:
    """Where the migration scripts of this installed copy are."""
    return str(files("app") / "migrations")


def alembic_config(settings: Settings | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


@cache
def code_heads() -> frozenset[str]:
    """The head revisions this code's migrations lead to (read once: they are this code's).

    Reading the scripts makes Alembic log its plugin set-up lines at INFO; the readiness probe
    asks on every call, so once per process is enough.
    """
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def upgrade(settings: Settings, revision: str = "head") -> None:
    from alembic import command

    try:
        command.upgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise _failed(exc) from exc


def downgrade(settings: Settings, revision: str = "base") -> None:
    from alembic import command

    try:
        command.downgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise _failed(exc) from exc


def _failed(exc: SQLAlchemyError) -> StoreError:
    error = convert(exc)
    return type(error)(f"migration failed: {error}")
