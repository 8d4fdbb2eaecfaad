"""One large set of memories shared by the check/rebuild and search sections.

Loading 100k memories (embedding plus HNSW maintenance) is the slowest set-up step of the
suite, so it is done once per run and grown on demand: the check section measures at 10k, grows
the set to 100k and measures again, and the search section then reuses it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import text

from app.db.connector import Database
from app.embeddings import make_embedder
from app.extraction import Extractor, RuleExtractor
from app.settings import Settings
from app.store import MemoryService, NewMemory
from app.wiring import Services, build_services
from bench.context import Context
from bench.corpus import Corpus
from bench.embedcache import PrecomputedEmbedder, corpus_vectors
from bench.harness import BenchEnv, say

SEED = 47
PREFIX = "s-user"
PRELOAD_BATCH = 500


def preload(service: MemoryService, corpus: Corpus, n: int, users: int, prefix: str,
            threads: int = 2, batch: int = PRELOAD_BATCH, first: int = 0) -> float:
    """Store memories ``first`` to ``first + n`` with store_many in batches over ``users``
    users (batch ``b`` goes to user ``b % users``); returns the seconds it took."""
    def one(b: int) -> None:
        start = first + b * batch
        count = min(batch, first + n - start)
        service.store_many(f"{prefix}-{(start // batch) % users}",
                           [NewMemory(t) for t in corpus.texts(start, count)])

    batches = (n + batch - 1) // batch
    began = time.monotonic()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(batches)):
            done += 1
            if done % max(1, batches // 5) == 0:
                say(f"  stored {min(done * batch, n)}/{n}")
    return time.monotonic() - began


def vacuum(env: BenchEnv, settings: Settings, *tables: str) -> None:
    with psycopg.connect(env.admin_dsn(settings), autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")


VECTOR_INDEX = "memories_embedding_hnsw"


def drop_vector_index(env: BenchEnv, settings: Settings) -> str:
    """Drop the HNSW index (bulk loads go several times faster); returns its definition."""
    with psycopg.connect(env.admin_dsn(settings), autocommit=True) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                           (VECTOR_INDEX,)).fetchone()
        if row is None:
            raise RuntimeError(f"index {VECTOR_INDEX} not found: has the schema changed?")
        conn.execute(f"DROP INDEX {VECTOR_INDEX}")
    return str(row[0])


def build_index(env: BenchEnv, settings: Settings, definition: str) -> float:
    """Recreate the index from its definition, with memory enough to build it in RAM."""
    began = time.monotonic()
    with psycopg.connect(env.admin_dsn(settings), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        conn.execute(definition)
    return time.monotonic() - began


FILL = text(
    "UPDATE memories m SET entities = CAST(v.entities AS jsonb), extractor = :extractor, "
    "extracted_hash = m.content_hash "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:entities AS text[])) AS v(id, entities) "
    "WHERE m.id = v.id")


def fill_extraction_cache(db: Database, extractor: Extractor, chunk: int = 2000) -> int:
    """Extract every memory without a current cached extraction and cache it in bulk (what the
    workers would have left behind); returns how many were filled."""
    with db.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT id::text AS id, content FROM memories "
            "WHERE extracted_hash IS DISTINCT FROM content_hash")).all()
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        with db.engine.begin() as conn:
            conn.execute(FILL, {
                "ids": [r.id for r in part], "extractor": extractor.identity,
                "entities": [json.dumps(extractor.extract(r.content).model_dump(mode="json"))
                             for r in part]})
    return len(rows)


@dataclass
class Dataset:
    settings: Settings
    services: Services  # the database, the memory service, and (for check) graph and extractor
    users: int
    size: int = 0
    loads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def service(self) -> MemoryService:
        return self.services.memories

    @property
    def user_ids(self) -> list[str]:
        return [f"{PREFIX}-{i}" for i in range(self.users)]


def dataset(ctx: Context, size: int, fill_cache: bool = False) -> Dataset:
    """The run's shared dataset, grown to at least ``size`` memories (store_many).

    ``fill_cache``: also cache the extraction of the new memories (in bulk, while the vector
    index is dropped: an UPDATE of a memories row is not HOT, so with the index in place each
    one would also re-insert the row's vector into the HNSW graph).
    """
    ds: Dataset | None = ctx.shared.get("dataset")
    if ds is None:
        settings = ctx.env.fresh_database("dataset")
        # The embedder users get (the default model), its corpus vectors cached on disk.
        embedder = PrecomputedEmbedder(make_embedder(settings))
        services = build_services(settings, embedder=embedder, extractor=RuleExtractor())
        ds = Dataset(settings, services, ctx.sizes.search_users)
        ctx.shared["dataset"] = ds
    if ds.size < size:
        more = size - ds.size
        say(f"dataset: storing memories {ds.size}..{size} over {ds.users} users "
            "(HNSW index dropped while loading, rebuilt after)")
        embedder = ds.services.embedder
        if isinstance(embedder, PrecomputedEmbedder):
            corpus_vectors(embedder, Corpus(seed=SEED), ds.size, more)
        definition = drop_vector_index(ctx.env, ds.settings)
        seconds = preload(ds.service, Corpus(seed=SEED), more, ds.users, PREFIX, first=ds.size)
        say(f"  {more} stored in {seconds:.1f}s ({more / seconds:.0f}/s)")
        if fill_cache:
            filled = fill_extraction_cache(ds.db, ds.services.extractor)
            say(f"  extraction cached in bulk for {filled} memories (untimed set-up)")
        say("  building the index")
        index_s = build_index(ctx.env, ds.settings, definition)
        say(f"  HNSW index over {size} memories built in {index_s:.1f}s")
        ds.loads.append({"from": ds.size, "to": size, "seconds": round(seconds, 2),
                         "per_s": round(more / seconds, 1), "index_build_s": round(index_s, 2),
                         "method": "store_many, batches of 500, 2 threads, without the HNSW "
                                   "index (vectors of the default embedder computed "
                                   "beforehand or read from the bench cache); then CREATE "
                                   "INDEX with its own definition"})
        ds.size = size
        # The outbox is not under test here: mark it delivered so a check sees nothing in
        # transit, then refresh planner statistics for the new size.
        with ds.db.engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET status = 'done', done_at = now() "
                              "WHERE status <> 'done'"))
        vacuum(ctx.env, ds.settings, "memories", "outbox")
    return ds


def close(ctx: Context) -> None:
    """Close the dataset's pool and driver (its database goes with the servers)."""
    ds: Dataset | None = ctx.shared.pop("dataset", None)
    if ds is not None:
        ds.services.close()
