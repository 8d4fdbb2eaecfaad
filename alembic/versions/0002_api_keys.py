"""API keys kept hashed in Postgres; Idempotency-Keys scoped per API key and prunable.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade(**kw: Any) -> None:
    op.execute("""
    CREATE TABLE api_keys (
        id          bigserial PRIMARY KEY,
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        -- The first characters of the secret, to tell keys apart in lists and logs.
        prefix      text NOT NULL,
        -- sha256 of the secret: a key is 32 random bytes, so a fast hash is enough.
        key_hash    text NOT NULL UNIQUE,
        scope       text NOT NULL CHECK (scope IN ('service', 'admin')),
        -- A tenant-bound service key acts only on user ids starting with '<namespace>:'.
        namespace   text CHECK (namespace IS NULL OR scope = 'service'),
        created_at  timestamptz NOT NULL DEFAULT now(),
        created_by  text NOT NULL,
        revoked_at  timestamptz,
        revoked_by  text
    )""")
    op.execute("ALTER TABLE idempotency_keys ADD COLUMN scope text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute("ALTER TABLE idempotency_keys ADD PRIMARY KEY (scope, user_id, key)")
    op.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)")


def downgrade(**kw: Any) -> None:
    op.execute("DROP INDEX IF EXISTS idempotency_keys_created")
    op.execute("ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute("DELETE FROM idempotency_keys WHERE scope <> ''")
    op.execute("ALTER TABLE idempotency_keys ADD PRIMARY KEY (user_id, key)")
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN scope")
    op.execute("DROP TABLE IF EXISTS api_keys")
