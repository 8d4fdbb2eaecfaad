"""An Idempotency-Key may cover a batch: the ids of every memory it created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.execute("ALTER TABLE idempotency_keys ADD COLUMN memory_ids uuid[]")


def downgrade(**kw: Any) -> None:
    op.execute("DELETE FROM idempotency_keys WHERE memory_ids IS NOT NULL")
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN memory_ids")
