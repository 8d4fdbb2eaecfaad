"""Memory history (the audit trail), and an index for a memory's projection status.

- ``memory_history``: one entry per version of a memory (content, metadata, importance, who
  made it and when), written in the transaction of the change; a delete is a final entry
  without content. No foreign key to ``memories``: the trail outlives the tombstone's purge and
  is pruned by HISTORY_RETENTION_DAYS alone (never a memory's latest entry).
- Existing memories get their current version as an entry (no actor: it is not known).
- ``outbox_by_memory``: every outbox row of a memory by version, so a read can tell where its
  projection stands (the open rows had a partial index; done and dead ones had none).

Revision ID: 0007_history
Revises: 0006_trace
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0007_history"
down_revision = "0006_trace"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.execute("""
    CREATE TABLE memory_history (
        id          bigserial PRIMARY KEY,
        memory_id   uuid NOT NULL,
        user_id     text NOT NULL,
        version     bigint NOT NULL CHECK (version >= 1),
        event       text NOT NULL CHECK (event IN ('created', 'updated', 'deleted')),
        content     text,
        metadata    jsonb,
        importance  smallint,
        actor       text CHECK (length(actor) <= 200),
        changed_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (memory_id, version),
        -- A delete keeps no content; other entries lose theirs when the memory is purged.
        CHECK (event <> 'deleted' OR content IS NULL)
    )""")
    op.execute("CREATE INDEX memory_history_changed ON memory_history (changed_at)")
    # The backfill: each memory's current version, as it is now.
    op.execute("""
    INSERT INTO memory_history (memory_id, user_id, version, event, content, metadata,
                                importance, actor, changed_at)
    SELECT id, user_id, version,
           CASE WHEN deleted_at IS NOT NULL THEN 'deleted'
                WHEN version = 1 THEN 'created' ELSE 'updated' END,
           CASE WHEN deleted_at IS NULL THEN content END,
           CASE WHEN deleted_at IS NULL THEN metadata END,
           CASE WHEN deleted_at IS NULL THEN importance END,
           NULL, COALESCE(deleted_at, updated_at)
    FROM memories""")
    op.execute("CREATE INDEX outbox_by_memory ON outbox (memory_id, memory_version)")


def downgrade(**kw: Any) -> None:
    op.execute("DROP INDEX IF EXISTS outbox_by_memory")
    op.execute("DROP TABLE IF EXISTS memory_history")
