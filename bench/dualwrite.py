"""The baseline: the naive in-request dual write of the system this project replaces.

Inside the request it commits the memory row to Postgres, then extracts entities and writes
them to Neo4j with MERGE, and only then answers. It lives here, in bench/, only to be measured
against; nothing in app/ does this (DESIGN invariant 1).

It is written to be a *fair* baseline, if anything generous: the Neo4j write is one parameterised
statement in one transaction (one round trip for the query), on a driver pool shared by all
request threads, with uniqueness constraints so MERGE is an index lookup. Its nodes use their own
labels (``LegacyMemory``, ``LegacyEntity``) so they never mix with the outbox projection.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from neo4j import Driver, GraphDatabase, ManagedTransaction

from app.db.connector import Database
from app.domain import content_hash, entity_key
from app.embeddings import Embedder, to_pgvector
from app.extraction import Extractor

SCHEMA = [
    "CREATE CONSTRAINT legacy_memory_id IF NOT EXISTS "
    "FOR (m:LegacyMemory) REQUIRE m.id IS UNIQUE",
    "CREATE CONSTRAINT legacy_entity_key IF NOT EXISTS "
    "FOR (e:LegacyEntity) REQUIRE e.key IS UNIQUE",
]

WRITE = """
MERGE (m:LegacyMemory {id: $id})
SET m.user_id = $user_id, m.importance = $importance, m.content_hash = $content_hash,
    m.created_at = datetime()
WITH m
CALL (m) {
  UNWIND $entities AS ent
  MERGE (e:LegacyEntity {key: ent.key})
    ON CREATE SET e.user_id = $user_id, e.name = ent.name, e.type = ent.type
  MERGE (m)-[:MENTIONS]->(e)
}
CALL (m) {
  UNWIND $relations AS rel
  MATCH (a:LegacyEntity {key: rel.source}), (b:LegacyEntity {key: rel.target})
  MERGE (a)-[r:RELATED {predicate: rel.predicate}]->(b)
}
RETURN m.id AS id
"""


class DualWriteService:
    """Postgres INSERT, then extraction and a Neo4j MERGE, all inside ``store``."""

    def __init__(self, db: Database, embedder: Embedder, extractor: Extractor,
                 neo4j_uri: str, auth: tuple[str, str], database: str = "neo4j") -> None:
        self.db = db
        self.embedder = embedder
        self.extractor = extractor
        self.database = database
        self.driver: Driver = GraphDatabase.driver(neo4j_uri, auth=auth,
                                                   max_connection_pool_size=50)

    def ensure_schema(self) -> None:
        for statement in SCHEMA:
            self.driver.execute_query(statement, database_=self.database)

    def store(self, user_id: str, content: str, metadata: dict[str, Any] | None = None,
              importance: int = 5) -> uuid.UUID:
        """Write Postgres, then Neo4j, before answering; a Neo4j failure raises to the caller."""
        vector = self.embedder.embed([content])[0]
        digest = content_hash(content)
        memory_id = _insert(self.db, self.embedder.identity, user_id, content,
                            to_pgvector(vector), json.dumps(metadata or {}), importance, digest)
        extraction = self.extractor.extract(content)
        entities = sorted(
            ({"key": entity_key(user_id, e.type, e.name), "name": e.name, "type": e.type}
             for e in extraction.entities), key=lambda e: e["key"])
        relations = [
            {"source": entity_key(user_id, r.source.type, r.source.name),
             "target": entity_key(user_id, r.target.type, r.target.name),
             "predicate": r.predicate}
            for r in extraction.relations
        ]
        params = {"id": str(memory_id), "user_id": user_id, "importance": importance,
                  "content_hash": digest, "entities": entities, "relations": relations}

        def tx(t: ManagedTransaction) -> None:
            t.run(WRITE, params).consume()

        with self.driver.session(database=self.database) as session:
            session.execute_write(tx)
        return memory_id

    def close(self) -> None:
        self.driver.close()


def bare_insert(db: Database, embedder: Embedder, user_id: str, content: str,
                importance: int = 5) -> uuid.UUID:
    """The floor: the same memory row as ``MemoryService.store`` writes, and nothing else.

    Same embedding computation, same SQL (``insert_memory``), one transaction; no validation,
    no outbox row, no NOTIFY.
    """
    vector = embedder.embed([content])[0]
    return _insert(db, embedder.identity, user_id, content, to_pgvector(vector), "{}",
                   importance, content_hash(content))


def _insert(db: Database, embedder: str, user_id: str, content: str, embedding: str,
            metadata: str, importance: int, digest: str) -> uuid.UUID:
    """The memory row, with the app's own named statement (``insert_memory``), one transaction.

    Full-text indexing uses ``english``, the default SEARCH_LANGUAGE, as the product does."""
    with db.transaction() as tx:
        row = tx.one("insert_memory", {
            "user_id": user_id, "content": content, "embedding": embedding,
            "embedder": embedder, "metadata": metadata, "importance": importance,
            "content_hash": digest, "ts_config": "english",
        })
    if row is None:
        raise RuntimeError("insert_memory returned no row")
    memory_id: uuid.UUID = row["id"]
    return memory_id
