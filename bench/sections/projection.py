"""Section 2, projection throughput: outbox to graph end to end, against the raw UNWIND limit.

End to end: N memories are stored (store_many) with no relay running, so N outbox rows wait.
Then dramatiq worker processes start (the Procfile's command) and, once they are ready, the
relay; the clock runs from the relay's start until no outbox row is open. That includes
extraction, the extraction cache write, the graph write and marking rows done.

Replay: the same run once more with every extraction already cached in Postgres (as after a
dead-letter replay or a resync), which isolates what extracting and caching cost the worker.

Raw limit: the same memories' entity sets (extracted beforehand, untimed) upserted straight into
an empty graph with Neo4jGraph.project in batches: no Postgres, no Redis, no Dramatiq.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import text

from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.extraction import RuleExtractor
from app.graph.base import MemoryProjection
from app.graph.neo4j import Neo4jGraph
from app.projection import build_projection
from app.wiring import build_services
from bench.context import Context
from bench.corpus import Corpus
from bench.dataset import PRELOAD_BATCH, preload, vacuum
from bench.harness import (
    NEO4J_RETRIES,
    CpuMeter,
    RssSampler,
    dead_outbox,
    open_outbox,
    say,
    worker_log_stats,
)
from devtools.harness import wait_for

RAW_CONFIGS = ((50, 1), (50, 4), (500, 1))  # (batch size, threads)


def reset_pending(db: Database, keep_extraction: bool = False) -> None:
    """Back to the pre-loaded state: every row pending again, no cached extraction (unless
    ``keep_extraction``: a replay, where workers find every extraction cached)."""
    with db.engine.begin() as conn:
        if not keep_extraction:
            conn.execute(text("UPDATE memories SET entities = NULL, extractor = NULL, "
                              "extracted_hash = NULL"))
        conn.execute(text(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(), "
            "lease_expires_at = NULL, done_at = NULL, last_error = NULL, errors = '[]', "
            "updated_at = now()"))


def _end_to_end(ctx: Context, settings: Any, db: Database, n: int, processes: int,
                label: str = "cold") -> dict[str, Any]:
    """Workers up, then the relay; time until no outbox row is open."""
    env = ctx.env
    say(f"projection: end to end ({label}), {processes} worker process(es) x 4 threads, "
        f"{n} memories")
    worker = env.start_worker(settings, processes=processes)
    try:
        with RssSampler(worker.pid) as rss:
            meter = CpuMeter({**env.server_pids(), "worker": worker.pid,
                              "bench": os.getpid()})
            relay = env.start_relay(settings)
            meter.pids["relay"] = relay.pid
            meter.start()
            began = time.monotonic()
            last = began

            def finished() -> bool:
                nonlocal last
                left = open_outbox(db)
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    say(f"  {n - left}/{n} projected")
                return left == 0

            wait_for(finished, 1800, "the projection to finish", interval=0.1)
            seconds = time.monotonic() - began
            cpu = meter.stop()
            env.processes.stop(relay)
    finally:
        env.processes.stop(worker)
    batches = worker_log_stats(worker.log(None))
    with db.engine.begin() as conn:
        span = conn.execute(text(
            "SELECT extract(epoch FROM max(done_at) - min(done_at)), "
            "count(*) FILTER (WHERE status = 'done') FROM outbox")).one()
    graph = Neo4jGraph(settings)
    try:
        counts = graph.counts()
    finally:
        graph.close()
    rate = n / seconds
    if label == "cold":
        ctx.shared.setdefault("worker_rss", []).append({
            "processes": processes, "peak_tree_mib": round(rss.peak_total / 2**20, 1),
            "peak_single_mib": round(rss.peak_single / 2**20, 1)})
    say(f"  {rate:.0f} memories/s ({seconds:.1f}s); graph has {counts.memories} memories, "
        f"{counts.entities} entities; CPU {cpu['utilisation'] * 100:.0f}% of all cores "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in cpu['cpu_s'].items())})")
    return {"run": label, "processes": processes, "threads": 4, "memories": n,
            "seconds": round(seconds, 2), "per_s": round(rate, 1),
            "done_span_s": round(float(span[0] or 0), 2), "done_rows": int(span[1]),
            "dead_rows": dead_outbox(db), "graph_memories": counts.memories,
            "graph_entities": counts.entities, "graph_mentions": counts.mentions,
            "graph_relations": counts.relations, "batches": batches, "cpu": cpu,
            "neo4j_retries": NEO4J_RETRIES.take()}


def projections_of(db: Database, n: int) -> list[MemoryProjection]:
    """The projection of every memory, extracted here (untimed) exactly as a worker would."""
    extractor = RuleExtractor()
    with db.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT id, user_id, version, importance, content_hash, content FROM memories "
            "ORDER BY id")).all()
    return [build_projection(str(r.id), r.user_id, int(r.version), int(r.importance),
                             r.content_hash, extractor.extract(r.content)) for r in rows[:n]]


def _raw(ctx: Context, settings: Any, projections: list[MemoryProjection], batch: int,
         threads: int) -> dict[str, Any]:
    say(f"projection: raw Neo4jGraph.project, batches of {batch}, {threads} thread(s)")
    ctx.env.stack.clear_graph()
    graph = Neo4jGraph(settings)
    graph.ensure_schema()
    batches = [projections[i:i + batch] for i in range(0, len(projections), batch)]
    lock = threading.Lock()
    applied = 0

    def one(chunk: list[MemoryProjection]) -> None:
        nonlocal applied
        result = graph.project(chunk)
        with lock:
            applied += len(result.applied)

    meter = CpuMeter({"neo4j": ctx.env.server_pids()["neo4j"], "bench": os.getpid()})
    try:
        meter.start()
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, batches))
        seconds = time.monotonic() - began
        cpu = meter.stop()
    finally:
        graph.close()
    rate = len(projections) / seconds
    say(f"  {rate:.0f} memories/s ({seconds:.1f}s, {applied} applied)")
    return {"batch": batch, "threads": threads, "memories": len(projections),
            "seconds": round(seconds, 2), "per_s": round(rate, 1), "applied": applied,
            "neo4j_retries": NEO4J_RETRIES.take(), "cpu": cpu}


def warm_neo4j(ctx: Context, settings: Any, n: int = 3000) -> None:
    """Run the projection statement a few thousand times on throwaway memories, then empty the
    graph: the JVM compiles its hot paths as it runs, and the first timed run should not pay."""
    say(f"projection: warming Neo4j up ({n} throwaway memories)")
    extractor = RuleExtractor()
    corpus = Corpus(seed=99)
    projections = [build_projection(f"00000000-0000-4000-8000-{i:012d}", f"warm-{i % 10}", 1,
                                    5, "", extractor.extract(corpus.text(i)))
                   for i in range(n)]
    graph = Neo4jGraph(settings)
    try:
        graph.ensure_schema()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(graph.project, [projections[i:i + 50] for i in range(0, n, 50)]))
    finally:
        graph.close()
    NEO4J_RETRIES.take()
    ctx.env.stack.clear_graph()


def run(ctx: Context) -> dict[str, Any]:
    """End-to-end runs with 1 and 2 worker processes, then the raw limit, and their ratio."""
    env, sz = ctx.env, ctx.sizes
    n = sz.projection_n
    settings = env.fresh_database("projection")
    env.reset_shared()
    services = build_services(settings, pool_size=4,
                              embedder=HashingEmbedder(settings.embedding_dim))
    db, service = services.db, services.memories
    try:
        say(f"projection: pre-loading {n} memories over {sz.projection_users} users "
            "(relay stopped)")
        load_s = preload(service, Corpus(seed=23), n, sz.projection_users, "p-user")
        say(f"  stored in {load_s:.1f}s ({n / load_s:.0f}/s with store_many)")
        vacuum(env, settings, "memories", "outbox")
        warm_neo4j(ctx, settings)
        runs = []
        for i, processes in enumerate(sz.worker_processes):
            if i:
                reset_pending(db)
                vacuum(env, settings, "memories", "outbox")
                env.reset_shared()
            runs.append(_end_to_end(ctx, settings, db, n, processes))
        # A replay: extraction cached in Postgres, so the worker skips extracting and saving.
        reset_pending(db, keep_extraction=True)
        vacuum(env, settings, "memories", "outbox")
        env.reset_shared()
        replay = _end_to_end(ctx, settings, db, n, 1, label="replay, extraction cached")
        projections = projections_of(db, n)
        raw = [_raw(ctx, settings, projections, b, t) for b, t in RAW_CONFIGS]
    finally:
        services.close()
        env.drop_database(settings)
        env.stack.clear_graph()
    best = max(runs, key=lambda r: r["per_s"])
    limit = max(raw, key=lambda r: r["per_s"])
    same = next((r for r in raw if (r["batch"], r["threads"])
                 == (settings.worker_batch_size, 4)), None)
    return {
        "memories": n, "users": sz.projection_users,
        "preload": {"seconds": round(load_s, 2), "per_s": round(n / load_s, 1),
                    "method": f"store_many, batches of {PRELOAD_BATCH}, 2 threads"},
        "end_to_end": runs, "replay": replay, "raw": raw,
        "best_end_to_end_per_s": best["per_s"], "raw_limit_per_s": limit["per_s"],
        "ratio": round(best["per_s"] / limit["per_s"], 3),
        # One worker process does what raw (worker batch size, 4 threads) does, plus the rest.
        "ratio_one_process_same_shape": (round(runs[0]["per_s"] / same["per_s"], 3)
                                         if same else None),
    }
