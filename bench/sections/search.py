"""Section: search latency at 100k memories, and recall@10 of the vector index against an exact
scan, with the default embedder (the model users get).

The memories are stored with store_many (batches of 500 over a few users); searches are per
user through ``Retrieval.search``, as the API runs them: hybrid (the default), vector and text.
Two kinds of query, half each:

- ``topic``: short questions in the corpus's vocabulary ("what did Acme Corp say about
  pricing"), close to no memory in particular;
- ``near-duplicate``: a stored memory of that user with three words replaced, the way a user
  looks for something they remember.

Recall is measured for the vector mode (the HNSW index is the approximate part; hybrid fuses its
list with the exact full-text one). The exact answer computes every distance of the user's rows
and sorts: the same filters, with the distance in a subquery behind ``OFFSET 0`` and index scans
disabled, so the HNSW index cannot serve it. Bench-side statements (exact answers, the ef_search
sweep, plans) run on their own connection without prepared statements: psycopg prepares a
statement after five runs, and a cached plan made under ``enable_indexscan = off`` would
otherwise be reused by later searches on that connection (or the reverse), which silently
corrupts both sides of the comparison. Recall counts a returned memory as right when its
distance is within the exact tenth distance, so exact ties at the boundary are not misses.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import psycopg

from app.embeddings import to_pgvector
from app.embeddings.base import Embedder
from app.retrieval import Retrieval
from bench.context import Context
from bench.corpus import FIRST, TOPICS, Corpus
from bench.dataset import PRELOAD_BATCH, SEED, dataset
from bench.harness import say
from bench.stats import Latencies, run_closed

VECTOR_LITERAL = re.compile(r"'\[[^\]]*\]'::vector")
TOP_K = 10
SERVICE_EF = 100  # what Retrieval.search sets for top 10 (min 1000, max 100, 2 x pool)
EF_SWEEP = (40, 100, 200, 400)
EPS = 1e-6
KINDS = ("topic", "near-duplicate")
SETTINGS = ("SELECT set_config('hnsw.iterative_scan', 'strict_order', true), "
            "set_config('hnsw.ef_search', %(ef)s, true)")
# The vector list of search_candidates (app/db/queries.sql), for the sweep and the plan.
INDEXED = ("SELECT id::text, embedding <=> %(q)s::vector AS d FROM memories "
           "WHERE user_id = %(u)s AND deleted_at IS NULL AND embedder = %(e)s "
           "AND metadata @> '{}'::jsonb AND importance >= 1 "
           "ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s")
EXACT = ("SELECT id, d FROM (SELECT id::text AS id, embedding <=> %(q)s::vector AS d "
         "FROM memories WHERE user_id = %(u)s AND deleted_at IS NULL AND embedder = %(e)s "
         "AND metadata @> '{}'::jsonb AND importance >= 1 OFFSET 0) s ORDER BY d LIMIT %(k)s")
DISTANCES = ("SELECT id::text, embedding <=> %(q)s::vector FROM memories "
             "WHERE id = ANY(%(ids)s::uuid[])")

Query = tuple[str, str, str]  # kind, user, text


def make_queries(corpus: Corpus, size: int, users: int, count: int) -> list[Query]:
    """``count`` queries, alternating topic and near-duplicate, for random users."""
    rnd = random.Random(5)
    words = [w.lower() for w in TOPICS] + FIRST
    out: list[Query] = []
    for i in range(count):
        if i % 2 == 0:
            out.append(("topic", f"s-user-{rnd.randrange(users)}", corpus.query(i)))
            continue
        n = rnd.randrange(size)
        tokens = corpus.text(n).split()
        for _ in range(3):
            tokens[rnd.randrange(len(tokens))] = rnd.choice(words)
        out.append(("near-duplicate", f"s-user-{(n // PRELOAD_BATCH) % users}", " ".join(tokens)))
    return out


def _rows(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any],
          ef: int | None = None, exact: bool = False) -> list[tuple[str, float]]:
    with conn.transaction():
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        if ef is not None:
            conn.execute(SETTINGS, {"ef": str(ef)})
        return [(str(r[0]), float(r[1])) for r in conn.execute(sql, params).fetchall()]


def _recall(got: list[str], exact: list[tuple[str, float]],
            distances: dict[str, float]) -> float:
    """Share of the exact top k found, counting ties at the k-th distance as found."""
    if not exact:
        return 1.0
    bound = exact[-1][1] + EPS
    hits = sum(1 for mid in got if distances.get(mid, 2.0) <= bound)
    return min(hits, len(exact)) / len(exact)


def _quality(conn: psycopg.Connection[Any], retrieval: Retrieval, embedder: Embedder,
             queries: list[Query]) -> tuple[dict[str, Any], Latencies]:
    """Recall@10 per query kind of vector search and of its statement at other
    ``hnsw.ef_search`` values, against the exact answer; plus the exact scan's latency."""
    exact_lat = Latencies("exact scan")
    sweep = {ef: Latencies(f"ef_search {ef}") for ef in EF_SWEEP}
    totals: dict[tuple[str, Any], float] = {}
    counts = {kind: 0 for kind in KINDS}
    for kind, user, query in queries:
        vector = to_pgvector(embedder.embed([query])[0])
        params = {"q": vector, "u": user, "k": TOP_K, "e": embedder.identity}
        t0 = time.perf_counter()
        exact = _rows(conn, EXACT, params, exact=True)
        exact_lat.samples.append(time.perf_counter() - t0)
        found = retrieval.search(user, query, mode="vector", top_k=TOP_K).hits
        answers: dict[Any, list[str]] = {"service": [str(h.memory.id) for h in found]}
        for ef in EF_SWEEP:
            t0 = time.perf_counter()
            answers[ef] = [mid for mid, _ in _rows(conn, INDEXED, params, ef=ef)]
            sweep[ef].samples.append(time.perf_counter() - t0)
        ids = sorted({mid for got in answers.values() for mid in got})
        distances = dict(_rows(conn, DISTANCES, {"q": vector, "ids": ids}))
        counts[kind] += 1
        for key, got in answers.items():
            totals[(kind, key)] = totals.get((kind, key), 0.0) + _recall(got, exact, distances)

    def recall(key: Any, kinds: tuple[str, ...] = KINDS) -> float:
        n = sum(counts[k] for k in kinds)
        return round(sum(totals.get((k, key), 0.0) for k in kinds) / n, 4) if n else 1.0

    result = {
        "service": {kind: recall("service", (kind,)) for kind in KINDS} | {
            "all": recall("service")},
        "ef_sweep": [{"ef_search": ef, **{kind: recall(ef, (kind,)) for kind in KINDS},
                      "all": recall(ef), "p50_ms": round(sweep[ef].ms(50), 2),
                      "p99_ms": round(sweep[ef].ms(99), 2)} for ef in EF_SWEEP],
    }
    return result, exact_lat


def _plan(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any],
          exact: bool = False) -> str:
    """The first plan lines of a statement (index or not), vector literals elided."""
    with conn.transaction():
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute(SETTINGS, {"ef": str(SERVICE_EF)})
        lines = [str(r[0]) for r in conn.execute("EXPLAIN " + sql, params).fetchall()]
    return VECTOR_LITERAL.sub("'[...]'::vector", " / ".join(x.strip() for x in lines[:4]))


def run(ctx: Context) -> dict[str, Any]:
    """Time per-user searches on the shared dataset and compare them with exact answers."""
    sz = ctx.sizes
    ds = dataset(ctx, sz.search_n)
    retrieval = ds.services.retrieval
    embedder = ds.services.embedder
    queries = make_queries(Corpus(seed=SEED), ds.size, ds.users, sz.search_queries)
    say(f"search: embedder {embedder.identity}")

    def op(mode: Any) -> Any:
        def one(i: int) -> None:
            _, user, query = queries[i % len(queries)]
            retrieval.search(user, query, mode=mode, top_k=TOP_K)
        return one

    latency: dict[str, Any] = {}
    for label, mode, threads in (("hybrid", "hybrid", 1), ("hybrid", "hybrid", 4),
                                 ("vector", "vector", 1), ("text", "text", 1)):
        name = f"search {label} ({threads} thr)"
        say(f"{name}: {len(queries)} searches ({', '.join(KINDS)})")
        lat = run_closed(name, op(mode), threads=threads, max_ops=len(queries),
                         max_seconds=300)
        say(f"  p50 {lat.ms(50):.2f} ms  p99 {lat.ms(99):.2f} ms  {lat.throughput:.0f}/s")
        latency[name] = lat.summary()
        ctx.samples[name] = lat.samples
    say("search: exact answers (index unusable) and recall@10 of vector search")
    with psycopg.connect(ctx.env.admin_dsn(ds.settings), autocommit=True,
                         prepare_threshold=None) as conn:
        quality, exact_lat = _quality(conn, retrieval, embedder, queries)
        _, user, query = queries[0]
        params = {"q": to_pgvector(embedder.embed([query])[0]), "u": user, "k": TOP_K,
                  "e": embedder.identity}
        plans = {"search": _plan(conn, INDEXED, params),
                 "exact": _plan(conn, EXACT, params, exact=True)}
    for row in quality["ef_sweep"]:
        say(f"  hnsw.ef_search {row['ef_search']}: recall@10 topic {row['topic']:.3f}, "
            f"near-duplicate {row['near-duplicate']:.3f}; p50 {row['p50_ms']:.1f} ms")
    svc = quality["service"]
    say(f"  vector search recall@10: topic {svc['topic']:.3f}, near-duplicate "
        f"{svc['near-duplicate']:.3f}; exact scan p50 {exact_lat.ms(50):.1f} ms")
    return {"memories": ds.size, "users": ds.users, "queries": len(queries),
            "top_k": TOP_K, "load": ds.loads, "embedder": embedder.identity,
            "latency": latency, "exact_scan": exact_lat.summary(), "recall_at_10": svc,
            "service_ef_search": SERVICE_EF, "ef_sweep": quality["ef_sweep"], "plans": plans}
