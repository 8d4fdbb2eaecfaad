"""Retrieval: the embedder of each vector, full-text search, entity keys in Postgres.

- ``embedder``: the identity (provider/model/dimension) of the embedder that made the row's
  vector; search compares only the configured embedder's vectors, and ``memctl reembed`` moves
  rows from one embedder to another. ``embedding`` may now be NULL (awaiting re-embedding).
  Rows written before this revision were made by the then default, the hashing embedder.
- ``content_tsv`` / ``search_config``: the content as a tsvector (GIN-indexed) and the text
  search configuration it was made with (SEARCH_LANGUAGE).
- ``entity_keys``: the keys of the cached extraction's entities (GIN-indexed), so related
  memories and entity reads can answer from Postgres when the graph cannot.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _entity_key(user_id: str, type_: str, name: str) -> str:
    # Frozen copy of app.domain.entity_key as of this revision.
    normal = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    return f"{user_id}\x1f{type_.lower()}\x1f{normal}"


def upgrade(embedding_dim: int = 384, search_language: str = "english", **kw: Any) -> None:
    conn = op.get_bind()
    known = conn.execute(sa.text("SELECT 1 FROM pg_ts_config WHERE cfgname = :c"),
                         {"c": search_language}).first()
    config = search_language if known else "simple"
    op.execute("ALTER TABLE memories ALTER COLUMN embedding DROP NOT NULL")
    op.execute("ALTER TABLE memories ADD COLUMN embedder text")
    conn.execute(sa.text("UPDATE memories SET embedder = :e"),
                 {"e": f"hashing/v1/{int(embedding_dim)}"})
    op.execute("ALTER TABLE memories ADD COLUMN search_config regconfig")
    op.execute("ALTER TABLE memories ADD COLUMN content_tsv tsvector")
    conn.execute(sa.text("UPDATE memories SET search_config = CAST(:c AS regconfig), "
                         "content_tsv = to_tsvector(CAST(:c AS regconfig), content)"),
                 {"c": config})
    op.execute("CREATE INDEX memories_tsv ON memories USING gin (content_tsv)"
               " WHERE deleted_at IS NULL")
    op.execute("ALTER TABLE memories ADD COLUMN entity_keys text[]")
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = conn.execute(sa.text(
            "SELECT id, user_id, entities FROM memories WHERE id > CAST(:after AS uuid) "
            "AND entities IS NOT NULL ORDER BY id LIMIT 1000"), {"after": after}).all()
        if not rows:
            break
        updates = []
        for mid, user_id, entities in rows:
            data = entities if isinstance(entities, dict) else json.loads(entities or "{}")
            keys = sorted({_entity_key(user_id, e["type"], e["name"])
                           for e in data.get("entities", ()) if isinstance(e, dict)
                           and isinstance(e.get("type"), str) and isinstance(e.get("name"), str)})
            updates.append({"id": mid, "keys": keys})
        conn.execute(sa.text("UPDATE memories SET entity_keys = :keys WHERE id = :id"), updates)
        after = str(rows[-1][0])
    op.execute("CREATE INDEX memories_entity_keys ON memories USING gin (entity_keys)"
               " WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX memories_embedder ON memories (user_id, embedder)"
               " WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX outbox_open_by_user ON outbox (user_id)"
               " WHERE status IN ('pending', 'in_flight')")


def downgrade(embedding_dim: int = 384, **kw: Any) -> None:
    op.execute("DROP INDEX IF EXISTS outbox_open_by_user")
    op.execute("DROP INDEX IF EXISTS memories_embedder")
    op.execute("DROP INDEX IF EXISTS memories_entity_keys")
    op.execute("DROP INDEX IF EXISTS memories_tsv")
    for column in ("entity_keys", "content_tsv", "search_config", "embedder"):
        op.execute(f"ALTER TABLE memories DROP COLUMN IF EXISTS {column}")
    # Rows awaiting re-embedding have no vector: they cannot go back under NOT NULL.
    op.execute("DELETE FROM memories WHERE embedding IS NULL")
    op.execute("ALTER TABLE memories ALTER COLUMN embedding SET NOT NULL")
