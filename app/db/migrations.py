"""Run Alembic from code (``memctl migrate``, tests) with settings passed in.

The migration scripts are the repository's top-level ``alembic/`` folder, shipped inside the
package as ``app/migrations`` (a link in the checkout, real files in a wheel), so any installed
copy can migrate its database from any working directory.
"""

from __future__ import annotations

from importlib.resources import files

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from alembic import command
from app.db.connector import convert
from app.errors import StoreError
from app.settings import Settings


def script_location() -> str:
    """Where the migration scripts of this installed copy are."""
    return str(files("app") / "migrations")


def alembic_config(settings: Settings | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


def code_heads() -> frozenset[str]:
    """The head revisions this code's migrations lead to."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def upgrade(settings: Settings, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise _failed(exc) from exc


def downgrade(settings: Settings, revision: str = "base") -> None:
    try:
        command.downgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise _failed(exc) from exc


def _failed(exc: SQLAlchemyError) -> StoreError:
    error = convert(exc)
    return type(error)(f"migration failed: {error}")
