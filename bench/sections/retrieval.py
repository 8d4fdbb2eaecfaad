"""Section: retrieval quality on the project's labelled set (bench/data/retrieval_eval.json).

The set: everyday memories of several users, paraphrased questions that share no content word
with their target memory, and "related" cases answerable only through shared entities. Per
embedder (the default model and the hashing embedder) the memories are stored through
``MemoryService.store_many`` and projected into Neo4j by the projector with the configured
extractor, in a database and graph of their own; then every query runs through
``Retrieval.search`` as the API runs it.

Two kinds of query: ``paraphrase`` (the set's questions) and ``keyword``, made here from the
set: for every second memory, its two longest words that no other memory of its user contains
(what someone types to find a note by a rare term: a name, a place, a thing). Text search
cannot find a paraphrase (they share no word by construction) and embeddings can miss a rare
term; hybrid is meant to do well on both.

Scores, per embedder x query kind x mode:

- ``vector``, ``text``, ``hybrid``: the ranked hits of ``top_k=10``; hit@1, hit@5 (the target
  among the first 1 or 5) and MRR@10 (1/rank of the target, 0 past 10).
- ``hybrid+graph``: ``top_k=5`` with ``expand=graph``, what a client gets when it asks for five
  hits and their neighbours: hit@5 counts the target anywhere in that answer (the five hits and
  up to three neighbours each); hit@1 and MRR@10 are over the list as returned (hits first, then
  neighbours), truncated at 10. The answer's mean length is reported beside it.

Related cases: ``Retrieval.related(memory)``; hit@5 is at least one expected memory in the first
five, recall@5 the share of expected memories there. Answered by the graph, and again by the
Postgres fallback (stored extractions) as when Neo4j is down.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from app.embeddings import HashingEmbedder, make_embedder
from app.embeddings.base import Embedder
from app.errors import GraphUnavailable
from app.retrieval import Retrieval
from app.store import NewMemory
from app.wiring import build_services
from bench.context import Context
from bench.harness import say
from bench.stats import Latencies

DATA = Path(__file__).resolve().parent.parent / "data" / "retrieval_eval.json"
MODES = ("vector", "text", "hybrid", "hybrid+graph")
KINDS = ("paraphrase", "keyword")
TOP_K = 10
GRAPH_TOP_K = 5
DRAIN_SECONDS = 300.0


@dataclass
class Scores:
    hit1: float = 0.0
    hit5: float = 0.0
    rr: float = 0.0
    n: int = 0

    def add(self, rank: int | None, *, whole_answer: bool = False) -> None:
        """``whole_answer``: hit@5 counts the target anywhere in the (expanded) answer."""
        self.n += 1
        if rank is not None:
            self.hit1 += rank == 1
            self.hit5 += whole_answer or rank <= 5
            self.rr += 1.0 / rank if rank <= TOP_K else 0.0

    def as_dict(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"hit_at_1": round(self.hit1 / n, 3), "hit_at_5": round(self.hit5 / n, 3),
                "mrr_at_10": round(self.rr / n, 3), "queries": self.n}


class _DownGraph:
    """A graph store that is unreachable: every read takes Retrieval's Postgres fallback."""

    def __getattr__(self, name: str) -> NoReturn:
        raise GraphUnavailable("bench: the graph is switched off to measure the fallback")


_STOP_WORDS = """about above after again against also among another because been before
being below between both could does doing down during each either every from further have
having here into just like made make many more most much must near need next only other over
same should since some such than that their them then there these they this those through
under until upon very want were what when where which while will with within without would
your"""
STOP = frozenset(_STOP_WORDS.split())
WORD = re.compile(r"[a-z][a-z0-9'-]{3,}")


def load_set() -> dict[str, Any]:
    data = dict(json.loads(DATA.read_text()))
    data["keyword_queries"] = keyword_queries(data["memories"])
    return data


def keyword_queries(memories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every second memory: its two longest words found in no other memory of its user."""
    words = {m["id"]: {w.strip("'-") for w in WORD.findall(m["content"].lower())} - STOP
             for m in memories}
    seen: dict[str, dict[str, int]] = {}
    for m in memories:
        counts = seen.setdefault(m["user_id"], {})
        for w in words[m["id"]]:
            counts[w] = counts.get(w, 0) + 1
    out = []
    for m in memories[::2]:
        rare = sorted((w for w in words[m["id"]] if seen[m["user_id"]][w] == 1),
                      key=lambda w: (-len(w), w))
        if len(rare) >= 2:
            out.append({"id": f"k-{m['id']}", "user_id": m["user_id"],
                        "query": f"{rare[0]} {rare[1]}", "target": m["id"]})
    return out


def _drain(services: Any, deadline: float) -> None:
    """Project every open outbox row in this process (no relay, no Redis)."""
    from sqlalchemy import text

    while time.monotonic() < deadline:
        with services.db.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(text(
                "SELECT id FROM outbox WHERE status IN ('pending', 'in_flight') ORDER BY id "
                "LIMIT 200"))]
            conn.execute(text("UPDATE outbox SET next_attempt_at = now() "
                              "WHERE status = 'pending'"))
        if not ids:
            return
        services.projector.process(ids)
    raise TimeoutError("the eval set did not project in time")


def _rank(ids: list[str], target: str) -> int | None:
    return ids.index(target) + 1 if target in ids else None


def evaluate(ctx: Context, name: str, embedder: Embedder, data: dict[str, Any]) -> dict[str, Any]:
    settings = ctx.env.fresh_database(f"eval_{name}")
    services = build_services(settings, embedder=embedder)
    try:
        suffix = f"-{name}"  # users of their own: the graph is shared by the runs
        ids: dict[str, str] = {}  # eval id -> memory uuid
        began = time.monotonic()
        by_user: dict[str, list[dict[str, Any]]] = {}
        for m in data["memories"]:
            by_user.setdefault(m["user_id"], []).append(m)
        for user, items in by_user.items():
            stored, _ = services.memories.store_many(user + suffix, [
                NewMemory(m["content"], m.get("metadata"), m.get("importance", 5))
                for m in items])
            ids.update({m["id"]: str(s.id) for m, s in zip(items, stored, strict=True)})
        stored_s = time.monotonic() - began
        _drain(services, time.monotonic() + DRAIN_SECONDS)
        projected_s = time.monotonic() - began - stored_s
        back = {v: k for k, v in ids.items()}
        retrieval = services.retrieval
        scores = {(kind, mode): Scores() for kind in KINDS for mode in MODES}
        latency = {mode: Latencies(f"{name} {mode}") for mode in MODES}
        answer_sizes: list[int] = []
        misses: list[dict[str, Any]] = []
        asked = [("paraphrase", q) for q in data["queries"]] + [
            ("keyword", q) for q in data["keyword_queries"]]
        for kind, q in asked:
            user, target = q["user_id"] + suffix, q["target"]
            for mode in MODES:
                graph = mode == "hybrid+graph"
                t0 = time.perf_counter()
                result = retrieval.search(user, q["query"], mode="hybrid" if graph else mode,
                                          top_k=GRAPH_TOP_K if graph else TOP_K,
                                          expand="graph" if graph else None)
                latency[mode].samples.append(time.perf_counter() - t0)
                got = [back.get(str(h.memory.id), "?") for h in result.hits]
                rank = _rank(got, target)
                scores[(kind, mode)].add(rank, whole_answer=graph)
                if graph:
                    answer_sizes.append(len(got))
                elif mode == "hybrid" and (rank is None or rank > 5) and len(misses) < 20:
                    misses.append({"kind": kind, "query": q["query"], "target": target,
                                   "rank": rank, "top": got[:3]})
        related = {"graph": Scores(), "postgres": Scores()}
        recall = {"graph": 0.0, "postgres": 0.0}
        fallback = Retrieval(settings, services.db, embedder, _DownGraph())  # type: ignore[arg-type]
        for case in data["related"]:
            user = case["user_id"] + suffix
            for source, r in (("graph", retrieval), ("postgres", fallback)):
                result = r.related(user, ids[case["memory"]], limit=TOP_K)
                if source == "graph" and result.answer.degraded:
                    raise RuntimeError(f"related answered degraded: {result.answer.reason}")
                got = [back.get(str(x.memory.id), "?") for x in result.items]
                ranks = [_rank(got, want) for want in case["related"]]
                found = [rk for rk in ranks if rk is not None]
                related[source].add(min(found) if found else None)
                recall[source] += sum(1 for rk in found if rk <= 5) / len(case["related"])
        n_related = max(len(data["related"]), 1)
        return {
            "embedder": embedder.identity,
            "extractor": services.extractor.identity,
            "store_s": round(stored_s, 2), "project_s": round(projected_s, 2),
            "scores": {kind: {mode: scores[(kind, mode)].as_dict() for mode in MODES}
                       for kind in KINDS},
            "latency": {mode: {"p50_ms": round(latency[mode].ms(50), 2),
                               "p99_ms": round(latency[mode].ms(99), 2)} for mode in MODES},
            "graph_answer_mean_len": round(sum(answer_sizes) / max(len(answer_sizes), 1), 2),
            "related": {source: related[source].as_dict() | {
                "recall_at_5": round(recall[source] / n_related, 3)} for source in related},
            "hybrid_misses": misses,
        }
    finally:
        services.close()
        ctx.env.drop_database(settings)


def run(ctx: Context) -> dict[str, Any]:
    data = load_set()
    say(f"retrieval: {len(data['memories'])} memories, {len(data['queries'])} paraphrase "
        f"queries, {len(data['related'])} related cases")
    settings = ctx.env.fresh_database("eval_probe")
    default = make_embedder(settings)  # what users get (EMBEDDING_PROVIDER's default)
    ctx.env.drop_database(settings)
    runs = []
    for name, embedder in (("default", default),
                           ("hashing", HashingEmbedder(settings.embedding_dim))):
        say(f"  {name}: {embedder.identity}")
        result = evaluate(ctx, name, embedder, data)
        for kind, modes in result["scores"].items():
            for mode, s in modes.items():
                say(f"    {kind:10s} {mode:13s} hit@1 {s['hit_at_1']:.3f}  hit@5 "
                    f"{s['hit_at_5']:.3f}  MRR@10 {s['mrr_at_10']:.3f}")
        for source, s in result["related"].items():
            say(f"    related ({source}) hit@5 {s['hit_at_5']:.3f} recall@5 "
                f"{s['recall_at_5']:.3f}")
        runs.append({"name": name} | result)
    return {"memories": len(data["memories"]), "queries": len(data["queries"]),
            "keyword_queries": len(data["keyword_queries"]),
            "related_cases": len(data["related"]),
            "users": len({m["user_id"] for m in data["memories"]}), "runs": runs}
