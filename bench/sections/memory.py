"""Section 6, memory: peak RSS of a worker process and of the web process under load.

Worker RSS is sampled (psutil, every 50 ms, the dramatiq process tree) during the end-to-end
projection runs of section 2; when that section did not run, a small projection run is made
here. The web process is ``python -m app.cli web`` on a free port, sent store and search
requests over HTTP from 4 threads while its RSS is polled.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx

from app.embeddings import HashingEmbedder
from app.wiring import build_services
from bench.context import Context
from bench.corpus import Corpus
from bench.dataset import preload
from bench.harness import RssSampler, say
from bench.sections import projection
from bench.stats import Latencies, run_closed
from devtools.localservers import free_port

API_KEY = "bench-service-key"
THREADS = 4
STORE_SHARE = 0.6


def _worker_rss(ctx: Context) -> list[dict[str, Any]]:
    if "worker_rss" not in ctx.shared:
        env = ctx.env
        settings = env.fresh_database("memory_worker")
        env.reset_shared()
        services = build_services(settings, pool_size=4,
                                  embedder=HashingEmbedder(settings.embedding_dim))
        n = min(ctx.sizes.projection_n, 5000)
        try:
            say(f"memory: no projection run yet; projecting {n} memories for worker RSS")
            preload(services.memories, Corpus(seed=23), n, 10, "m-user")
            projection._end_to_end(ctx, settings, services.db, n, 1)
        finally:
            services.close()
            env.drop_database(settings)
    rows: list[dict[str, Any]] = ctx.shared["worker_rss"]
    return rows


def run(ctx: Context) -> dict[str, Any]:
    """Worker RSS (from projection runs) and web RSS under ~``web_requests`` requests."""
    env, sz = ctx.env, ctx.sizes
    worker = _worker_rss(ctx)
    port = free_port()
    settings = env.fresh_database("web", api_host="127.0.0.1", api_port=port,
                                  api_service_keys=API_KEY, api_admin_keys="bench-admin-key",
                                  log_level="WARNING")
    corpus = Corpus(seed=59)
    web = env.start_web(settings)
    base = f"http://127.0.0.1:{port}"
    serial = itertools.count()
    try:
        time.sleep(0.5)
        with RssSampler(web.pid) as rss:
            time.sleep(0.3)
            idle = rss.peak_total
            clients = [httpx.Client(base_url=base, timeout=30,
                                    headers={"Authorization": f"Bearer {API_KEY}"})
                       for _ in range(THREADS)]
            stores = int(sz.web_requests * STORE_SHARE)
            latencies = {"store": Latencies("http store"), "search": Latencies("http search")}

            def op(i: int) -> None:
                n = next(serial)
                client = clients[n % THREADS]
                user = f"web-user-{n % 5}"
                t0 = time.perf_counter()
                if n < stores:
                    kind = "store"
                    r = client.post("/api/memories", json={"user_id": user,
                                                           "content": corpus.text(n)})
                else:
                    kind = "search"
                    r = client.post("/api/memories/search",
                                    json={"user_id": user, "query": corpus.query(n)})
                r.raise_for_status()
                latencies[kind].samples.append(time.perf_counter() - t0)

            say(f"memory: {sz.web_requests} HTTP requests to the web process "
                f"({stores} store, then searches), {THREADS} threads")
            total = run_closed("http", op, threads=THREADS, max_ops=sz.web_requests,
                               max_seconds=600, warmup=0)
            for c in clients:
                c.close()
            time.sleep(0.3)
        say(f"  web RSS idle {idle / 2**20:.0f} MiB, peak {rss.peak_total / 2**20:.0f} MiB; "
            f"{total.throughput:.0f} requests/s, {total.errors} errors")
    finally:
        env.processes.stop(web)
        env.drop_database(settings)
    return {
        "worker": worker,
        "web": {"requests": total.count, "errors": total.errors,
                "requests_per_s": round(total.throughput, 1),
                "idle_mib": round(idle / 2**20, 1),
                "peak_mib": round(rss.peak_total / 2**20, 1),
                "store": latencies["store"].summary(), "search": latencies["search"].summary()},
    }
