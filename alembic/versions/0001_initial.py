"""Initial schema: memories, outbox, dead letters, inconsistencies, idempotency keys, check runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(embedding_dim: int = 384, **kw: Any) -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(f"""
    CREATE TABLE memories (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
        content         text NOT NULL CHECK (length(content) > 0),
        embedding       vector({int(embedding_dim)}) NOT NULL,
        metadata        jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(metadata) = 'object'),
        importance      smallint NOT NULL DEFAULT 5 CHECK (importance BETWEEN 1 AND 10),
        version         bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
        content_hash    text NOT NULL,
        entities        jsonb,
        extractor       text,
        extracted_hash  text,
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        deleted_at      timestamptz
    )""")
    op.execute("CREATE INDEX memories_user_live ON memories (user_id, created_at DESC, id DESC)"
               " WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX memories_embedding_hnsw ON memories"
               " USING hnsw (embedding vector_cosine_ops)")
    op.execute("CREATE INDEX memories_metadata ON memories USING gin (metadata jsonb_path_ops)")

    op.execute("""
    CREATE TABLE outbox (
        id               bigserial PRIMARY KEY,
        memory_id        uuid NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
        user_id          text NOT NULL,
        memory_version   bigint NOT NULL,
        event_type       text NOT NULL CHECK (event_type IN ('upsert', 'delete', 'resync')),
        status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'in_flight', 'done', 'dead')),
        attempts         integer NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        lease_expires_at timestamptz,
        last_error       text,
        errors           jsonb NOT NULL DEFAULT '[]',
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        done_at          timestamptz
    )""")
    # What the relay scans: due pending rows, and in-flight rows whose lease ran out.
    op.execute("CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id)"
               " WHERE status = 'pending'")
    op.execute("CREATE INDEX outbox_in_flight_lease ON outbox (lease_expires_at)"
               " WHERE status = 'in_flight'")
    op.execute("CREATE INDEX outbox_open_by_memory ON outbox (memory_id, memory_version)"
               " WHERE status IN ('pending', 'in_flight')")
    op.execute("CREATE INDEX outbox_done_at ON outbox (done_at) WHERE status = 'done'")

    op.execute("""
    CREATE TABLE dead_letters (
        id              bigserial PRIMARY KEY,
        -- The outbox row may be pruned after a replay succeeds; the dead letter stays.
        outbox_id       bigint REFERENCES outbox (id) ON DELETE SET NULL,
        memory_id       uuid NOT NULL,
        user_id         text NOT NULL,
        event_type      text NOT NULL,
        memory_version  bigint NOT NULL,
        attempts        integer NOT NULL,
        last_error      text,
        errors          jsonb NOT NULL DEFAULT '[]',
        status          text NOT NULL DEFAULT 'dead'
                        CHECK (status IN ('dead', 'replayed', 'discarded')),
        created_at      timestamptz NOT NULL DEFAULT now(),
        resolved_at     timestamptz,
        resolved_by     text,
        resolution_note text
    )""")
    op.execute("CREATE INDEX dead_letters_open ON dead_letters (created_at, id)"
               " WHERE status = 'dead'")
    op.execute("CREATE INDEX dead_letters_user ON dead_letters (user_id, created_at)")

    op.execute("""
    CREATE TABLE inconsistencies (
        id           bigserial PRIMARY KEY,
        kind         text NOT NULL CHECK (kind IN ('missing_in_graph', 'stale_version',
                       'orphan_memory', 'entity_mismatch', 'orphan_entity', 'cross_user')),
        user_id      text,
        memory_id    uuid,
        entity_key   text,
        fingerprint  text NOT NULL,
        details      jsonb NOT NULL DEFAULT '{}',
        detected_at  timestamptz NOT NULL DEFAULT now(),
        last_seen_at timestamptz NOT NULL DEFAULT now(),
        resolved_at  timestamptz
    )""")
    op.execute("CREATE UNIQUE INDEX inconsistencies_open ON inconsistencies (fingerprint)"
               " WHERE resolved_at IS NULL")

    op.execute("""
    CREATE TABLE check_runs (
        id          bigserial PRIMARY KEY,
        scope       text NOT NULL,
        started_at  timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        checked     bigint NOT NULL DEFAULT 0,
        found       bigint NOT NULL DEFAULT 0,
        result      jsonb NOT NULL DEFAULT '{}'
    )""")

    op.execute("""
    CREATE TABLE idempotency_keys (
        user_id      text NOT NULL,
        key          text NOT NULL,
        request_hash text NOT NULL,
        memory_id    uuid NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, key)
    )""")


def downgrade(**kw: Any) -> None:
    for table in ("idempotency_keys", "check_runs", "inconsistencies", "dead_letters", "outbox",
                  "memories"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP EXTENSION IF EXISTS vector")
