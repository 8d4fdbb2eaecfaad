"""Section 7, HTTP writes: memories/s through the web process, one per request against batches.

``python -m app.cli web`` on a free port with the default embedder, as users run it. Clients
send ``POST /api/memories`` (one memory per request) or ``POST /api/memories/batch`` (``BATCH``
memories per request, one transaction, embeddings computed in batches), from 1 and 4 threads,
each configuration bounded by a number of memories and by seconds. Throughput counts memories
stored, not requests; latency is per request.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from bench.context import Context
from bench.corpus import Corpus
from bench.harness import say
from bench.stats import run_closed
from devtools.localservers import free_port

API_KEY = "bench-service-key"
BATCH = 100
THREADS = (1, 4)


def run(ctx: Context) -> dict[str, Any]:
    env = ctx.env
    memories = 600 if ctx.quick else 4000  # per configuration, at most
    seconds = 20.0 if ctx.quick else 60.0
    port = free_port()
    settings = env.fresh_database("http", api_host="127.0.0.1", api_port=port,
                                  api_service_keys=API_KEY, api_admin_keys="bench-admin-key",
                                  log_level="WARNING")
    corpus = Corpus(seed=71)
    serial = itertools.count()
    web = env.start_web(settings)
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        for threads in THREADS:
            for kind, per_request in (("single", 1), ("batch", BATCH)):
                say(f"http: {kind} stores, {threads} thread(s), up to {memories} memories "
                    f"or {seconds:.0f} s")
                row = _measure(ctx, base, kind, per_request, threads, memories, seconds,
                               corpus, serial)
                rows.append(row)
                say(f"  {row['memories_per_s']:.0f} memories/s, request p50 "
                    f"{row['p50_ms']:.1f} ms, {row['errors']} errors")
    finally:
        env.processes.stop(web)
        env.drop_database(settings)
    by = {(r["kind"], r["threads"]): r["memories_per_s"] for r in rows}
    speedup = {str(t): round(by[("batch", t)] / by[("single", t)], 1)
               for t in THREADS if by.get(("single", t))}
    return {"batch_size": BATCH, "rows": rows, "batch_speedup": speedup,
            "embedder": settings.embedding_provider}


def _measure(ctx: Context, base: str, kind: str, per_request: int, threads: int, memories: int,
             seconds: float, corpus: Corpus, serial: Iterator[int]) -> dict[str, Any]:
    """One configuration: ``threads`` clients, each with its own connection."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=60,
                                        headers={"Authorization": f"Bearer {API_KEY}"})
            with lock:
                clients.append(local.client)
        c: httpx.Client = local.client
        return c

    def op(_: int) -> None:
        n = next(serial)
        if per_request == 1:
            r = client().post("/api/memories", json={"user_id": f"h-user-{n % 5}",
                                                     "content": corpus.text(n)})
        else:
            first = 10_000_000 + n * per_request
            items = [{"content": corpus.text(first + k)} for k in range(per_request)]
            r = client().post("/api/memories/batch",
                              json={"user_id": f"h-user-{n % 5}", "items": items})
        r.raise_for_status()

    try:
        result = run_closed(f"http {kind} ({threads} thr)", op, threads=threads,
                            max_ops=max(1, memories // per_request), max_seconds=seconds,
                            warmup=2)
    finally:
        for c in clients:
            c.close()
    ctx.samples[result.label] = result.samples
    stored = result.count * per_request
    rate = stored / result.wall_seconds if result.wall_seconds else 0.0
    return {"kind": kind, "per_request": per_request, "memories": stored,
            "memories_per_s": round(rate, 1), **result.summary()}
