"""Run Alembic from code (``memctl migrate``, tests) with settings passed in."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from alembic import command
from app.errors import StoreError
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {exc.__class__.__name__}: {exc.args[0]}") from exc


def downgrade(settings: Settings, revision: str = "base") -> None:
    try:
        command.downgrade(alembic_config(settings), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {exc.__class__.__name__}: {exc.args[0]}") from exc
