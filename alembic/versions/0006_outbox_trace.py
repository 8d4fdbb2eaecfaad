"""Tracing: the outbox row carries the W3C trace context of the change that wrote it.

- ``outbox.traceparent``: the ``traceparent`` of the request span (NULL while tracing is off),
  so the worker's projection span can link to it (app/tracing.py).

Revision ID: 0006_trace
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0006_trace"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.add_column("outbox", sa.Column("traceparent", sa.Text(), nullable=True))


def downgrade(**kw: Any) -> None:
    op.drop_column("outbox", "traceparent")
