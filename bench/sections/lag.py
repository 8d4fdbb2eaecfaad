"""Section 3, convergence lag: commit to graph at a steady offered load.

A paced (open-loop) writer calls MemoryService.store at a fixed rate from 8 threads, whatever
the latency; the relay and one worker process run as deployed. For each memory the writer
records the wall-clock time ``store`` returned (just after the commit). Arrival is the outbox
row's ``done_at``, which a worker sets in the transaction after the Neo4j write committed, so
the graph had that version no later than ``done_at``: a fair, slightly pessimistic proxy. Both
clocks are this machine's. A final query confirms every memory is in the graph at its version.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import text

from app.db.connector import Database
from app.embeddings import HashingEmbedder
from app.wiring import build_services
from bench.context import Context
from bench.corpus import Corpus
from bench.harness import CpuMeter, say, wait_drained, worker_log_stats
from bench.stats import percentile, run_paced

USERS = 10


def _arrivals(db: Database, ids: list[str]) -> dict[str, float]:
    with db.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT memory_id::text AS id, extract(epoch FROM done_at) AS done FROM outbox "
            "WHERE memory_id = ANY(CAST(:ids AS uuid[])) AND status = 'done'"),
            {"ids": ids}).all()
    return {r.id: float(r.done) for r in rows}


def run(ctx: Context) -> dict[str, Any]:
    """Offer each rate for ``lag_seconds``; report commit-to-graph lag percentiles."""
    env, sz = ctx.env, ctx.sizes
    settings = env.fresh_database("lag")
    env.reset_shared()
    services = build_services(settings, embedder=HashingEmbedder(settings.embedding_dim))
    db, service, graph = services.db, services.memories, services.graph
    corpus = Corpus(seed=31)
    results: list[dict[str, Any]] = []
    offset = 0
    worker = env.start_worker(settings)
    relay = env.start_relay(settings)
    try:
        for i in range(20):  # warm the pipeline's pools and caches
            service.store("lag-warmup", corpus.text(1_000_000 + i))
        wait_drained(db, 60)
        for rate in sz.lag_rates:
            say(f"lag: {rate} writes/s offered for {sz.lag_seconds:g}s")
            base = offset

            def op(i: int, base: int = base) -> str:
                n = base + i
                memory, _ = service.store(f"lag-user-{n % USERS}", corpus.text(n))
                return str(memory.id)

            log_mark = len(worker.log(None))
            meter = CpuMeter({**env.server_pids(), "worker": worker.pid, "relay": relay.pid,
                              "bench": os.getpid()})
            meter.start()
            paced = run_paced(op, rate=rate, seconds=sz.lag_seconds, threads=8)
            offset += int(rate * sz.lag_seconds)
            drain = wait_drained(db, 300)
            cpu = meter.stop()
            batches = worker_log_stats(worker.log(None)[log_mark:])
            ids = [r[1] for r in paced.results]
            arrivals = _arrivals(db, ids)
            lags = [arrivals[mid] - finished for _, mid, finished in paced.results
                    if mid in arrivals]
            in_graph = graph.snapshot(ids)
            converged = sum(1 for mid in ids if mid in in_graph and in_graph[mid].version == 1)
            ctx.samples[f"lag at {rate}/s"] = lags
            row = {
                "offered_per_s": rate, "achieved_per_s": round(paced.achieved_rate, 1),
                "writes": len(paced.results), "errors": paced.errors,
                "late_starts": paced.late, "arrived": len(lags), "in_graph": converged,
                "p50_ms": round(percentile(lags, 50) * 1000, 1),
                "p95_ms": round(percentile(lags, 95) * 1000, 1),
                "p99_ms": round(percentile(lags, 99) * 1000, 1),
                "max_ms": round(max(lags) * 1000, 1) if lags else None,
                "drain_after_s": round(drain, 2), "batches": batches, "cpu": cpu,
            }
            results.append(row)
            say(f"  achieved {paced.achieved_rate:.0f}/s; lag p50 {row['p50_ms']} ms, "
                f"p99 {row['p99_ms']} ms; {converged}/{len(ids)} in the graph; "
                f"{batches['mean_rows']} rows per graph batch; "
                f"CPU {cpu['utilisation'] * 100:.0f}% of all cores")
            time.sleep(1)
    finally:
        for proc in (relay, worker):
            env.processes.stop(proc)
        services.close()
        env.drop_database(settings)
    return {"method": "commit time recorded by the writer; arrival = outbox.done_at "
                      "(set after the graph write commits)",
            "pipeline": "relay + 1 worker process (4 threads)", "rates": results}
