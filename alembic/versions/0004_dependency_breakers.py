"""Dependency circuit breakers, and outbox rows held back by them.

``dependency_breakers`` keeps one row per dependency the projection calls (``graph``,
``extractor``): closed, open, half_open (a probe is out) or misconfigured, with its failures,
when it opened, its last error and when to probe next. In Postgres, so every worker and relay
sees the same state and a restart does not forget it.

``outbox.held_by`` names the breaker a pending row waits for: such a row spent no attempt, is
invisible to the relay's claims (the due index leaves it out) and becomes due when that breaker
closes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.execute("""
    CREATE TABLE dependency_breakers (
        name                 text PRIMARY KEY,
        state                text NOT NULL DEFAULT 'closed'
                             CHECK (state IN ('closed', 'open', 'half_open', 'misconfigured')),
        consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
        opened_at            timestamptz,
        last_error           text,
        last_failure_at      timestamptz,
        next_probe_at        timestamptz,
        updated_at           timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("INSERT INTO dependency_breakers (name) VALUES ('graph'), ('extractor')")

    op.execute("ALTER TABLE outbox ADD COLUMN held_by text")
    # Claims scan due rows that no breaker holds; held rows are found by their breaker.
    op.execute("DROP INDEX outbox_pending_due")
    op.execute("CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id)"
               " WHERE status = 'pending' AND held_by IS NULL")
    op.execute("CREATE INDEX outbox_held ON outbox (held_by, created_at, id)"
               " WHERE status = 'pending' AND held_by IS NOT NULL")


def downgrade(**kw: Any) -> None:
    # Held rows must not vanish from the older claims: they become due at once.
    op.execute("UPDATE outbox SET next_attempt_at = now(), held_by = NULL"
               " WHERE held_by IS NOT NULL")
    op.execute("DROP INDEX outbox_held")
    op.execute("DROP INDEX outbox_pending_due")
    op.execute("CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id)"
               " WHERE status = 'pending'")
    op.execute("ALTER TABLE outbox DROP COLUMN held_by")
    op.execute("DROP TABLE dependency_breakers")
