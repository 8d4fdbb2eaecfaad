"""Section 1, the write path: MemoryService.store against its floor and against a dual write.

Per request, every path computes the embedding with the default embedder (the model users get)
inside the timed call, as the real request does; ``store, hashing embedder`` is ``store`` with
the built-in hashing embedder instead, to show what the model costs on the write path. ``bare
insert`` then runs the memory INSERT alone; ``store`` is the product (validation, INSERT, outbox
row and NOTIFY in one transaction); ``dual write`` is the system we replace (INSERT committed,
then RuleExtractor and a Neo4j MERGE, bench/dualwrite.py).

Three phases: (A) the request paths alone, relay and worker stopped (as when workers run on
other machines); (B) ``store`` again while the relay and one worker process project on the same
2 cores, so it pays for its asynchronous projection in CPU as the dual write pays for its
synchronous one (the outbox is drained after each configuration, so no backlog spills into the
next); (C) Neo4j put 20 ms further away (bench/proxy.py) for the dual write *and* the worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.extraction import RuleExtractor
from app.settings import Settings
from app.store import MemoryService
from app.wiring import build_services
from bench.context import Context
from bench.corpus import Corpus
from bench.dualwrite import DualWriteService, bare_insert
from bench.harness import NEO4J_RETRIES, dead_outbox, open_outbox, say, wait_drained
from bench.stats import Latencies, percentile, run_closed
from devtools.harness import ManagedProcess

THREADS = (1, 8)
USERS = 8
PAUSED = "paused"
RUNNING = "running"


def _max_outbox_id(db: Database) -> int:
    with db.engine.begin() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one())


def _delivery(db: Database, after_id: int) -> dict[str, Any]:
    """Commit-to-done time of the outbox rows written since ``after_id`` (Postgres clocks)."""
    with db.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT extract(epoch FROM done_at - created_at) FROM outbox "
            "WHERE id > :after AND status = 'done'"), {"after": after_id}).scalars().all()
    lags = [float(r) for r in rows]
    return {"rows": len(lags), "lag_p50_ms": round(percentile(lags, 50) * 1000, 1),
            "lag_p99_ms": round(percentile(lags, 99) * 1000, 1)}


def run(ctx: Context) -> dict[str, Any]:
    """Measure bare insert, store and dual write at 1 and 8 threads, then with a slow Neo4j."""
    env, sz = ctx.env, ctx.sizes
    settings = env.fresh_database("write")
    env.reset_shared()
    services = build_services(settings)  # the default embedder
    db, embedder, service = services.db, services.embedder, services.memories
    embedder.load()  # outside the timed calls
    hashing = MemoryService(settings, db, services.outbox,
                            HashingEmbedder(settings.embedding_dim))
    services.graph.ensure_schema()
    corpus = Corpus(seed=11)
    serial = itertools.count()
    auth = (settings.neo4j_user, settings.neo4j_password.get_secret_value())
    proxy, slow_uri = env.start_proxy(sz.slow_ms)
    dual = {"direct": DualWriteService(db, embedder, RuleExtractor(), settings.neo4j_uri, auth),
            "slow": DualWriteService(db, embedder, RuleExtractor(), slow_uri, auth)}
    dual["direct"].ensure_schema()
    slow_label = f"+{sz.slow_ms:g} ms"

    def next_item() -> tuple[str, str]:
        n = next(serial)
        return f"w-user-{n % USERS}", corpus.text(n)

    def op_store(_: int) -> None:
        user, content = next_item()
        service.store(user, content)

    def op_store_hashing(_: int) -> None:
        user, content = next_item()
        hashing.store(user, content)

    def op_insert(_: int) -> None:
        user, content = next_item()
        bare_insert(db, embedder, user, content)

    def op_dual(mode: str) -> Callable[[int], None]:
        def op(_: int) -> None:
            user, content = next_item()
            dual[mode].store(user, content)
        return op

    configs: list[dict[str, Any]] = []
    delivery: list[dict[str, Any]] = []

    def measure(path: str, pipeline: str, neo4j: str, threads: int,
                op: Callable[[int], None], max_ops: int, warmup: int = 20) -> Latencies:
        """One configuration; ``pipeline`` is paused or running, ``neo4j`` where it is for
        whoever talks to it ("-": nobody in this configuration)."""
        before = _max_outbox_id(db)
        where = [f"pipeline {pipeline}"] + ([f"Neo4j {neo4j}"] if neo4j != "-" else [])
        label = f"{path} ({', '.join(where)}, {threads} thr)"
        say(f"write: {label}")
        lat = run_closed(label, op, threads=threads, max_ops=max_ops,
                         max_seconds=sz.write_seconds, warmup=warmup)
        summary = {"path": path, "pipeline": pipeline, "neo4j": neo4j, **lat.summary(),
                   "neo4j_retries": NEO4J_RETRIES.take()}
        configs.append(summary)
        ctx.samples[label] = lat.samples
        say(f"  p50 {lat.ms(50):.2f} ms  p99 {lat.ms(99):.2f} ms  "
            f"{lat.throughput:.0f}/s  ({lat.count} ops, {lat.errors} errors)")
        if path == "store" and pipeline == RUNNING:
            drain = wait_drained(db, 300)
            delivery.append({"neo4j": neo4j, "threads": threads, "drain_after_s": round(drain, 2),
                             **_delivery(db, before)})
            say(f"  outbox drained {drain:.1f}s after the last write")
        return lat

    worker: ManagedProcess | None = None
    relay: ManagedProcess | None = None
    try:
        # A: the request path alone (workers elsewhere, as deployed): nothing else runs.
        for threads in THREADS:
            measure("bare insert", PAUSED, "-", threads, op_insert, sz.write_ops)
            measure("store", PAUSED, "-", threads, op_store, sz.write_ops)
            measure("store, hashing embedder", PAUSED, "-", threads, op_store_hashing,
                    sz.write_ops)
            # The JVM compiles the MERGE path as it runs: warm it before timing.
            measure("dual write", PAUSED, "direct", threads, op_dual("direct"), sz.dual_ops,
                    warmup=sz.dual_warmup)
        worker = env.start_worker(settings)
        relay = env.start_relay(settings)
        say(f"write: pipeline started; {open_outbox(db)} rows waiting from the paused runs")
        drain = wait_drained(db, 600)
        say(f"  drained in {drain:.1f}s")
        # B: the pipeline projects while the requests run, on the same 2 cores.
        for threads in THREADS:
            measure("store", RUNNING, "direct", threads, op_store, sz.write_ops)
        # C: Neo4j 20 ms away, for the dual write and for the worker.
        say(f"write: worker restarted against the proxy ({slow_label} per chunk to Neo4j)")
        env.processes.stop(worker)
        worker = env.start_worker(settings, neo4j_uri=slow_uri)
        for threads in THREADS:
            measure("store", RUNNING, slow_label, threads, op_store, sz.write_ops)
            measure("dual write", RUNNING, slow_label, threads, op_dual("slow"), sz.dual_ops,
                    warmup=sz.dual_warmup // 4)
        dead = dead_outbox(db)
    finally:
        for proc in (relay, worker, proxy):
            if proc is not None:
                env.processes.stop(proc)
        for d in dual.values():
            d.close()
        services.close()
        env.drop_database(settings)
    return {
        "embedder": embedder.identity,
        "included": ("every path computes the embedding inside the timed call; store adds "
                     "validation, the outbox row and NOTIFY; dual write adds RuleExtractor and "
                     "one Neo4j MERGE transaction after the Postgres commit"),
        "pipeline": ("'paused': relay and worker stopped (the request path alone, as when "
                     "workers run on other machines); 'running': relay + 1 worker process "
                     "(4 threads) project while the requests run, on the same cores"),
        "configs": configs,
        "delivery": delivery,
        "dead_rows": dead,
        "settings": _settings_note(settings),
    }


def _settings_note(settings: Settings) -> dict[str, Any]:
    return {"db_pool_size": settings.db_pool_size, "worker_batch_size": settings.worker_batch_size,
            "relay_batch_size": settings.relay_batch_size}
