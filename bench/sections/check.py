"""Section 4, check and rebuild: memories per second, at each size in ``check_sizes``.

Runs only when ``app.consistency`` exists and has the API this was written against
(``Consistency(settings, db, graph, extractor)``, ``.rebuild()``, ``.check()``); otherwise the
section is recorded as not measured, with the reason. On the shared dataset (bench/dataset.py),
with its outbox marked delivered: at the first size a cold rebuild (it extracts, and caches
one memory per transaction, whatever has no cached extraction); at larger sizes the cache is
filled in bulk instead (untimed; a cold rebuild of 100k would take minutes); then a rebuild from
the cache and a full check of the graph that rebuild left consistent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time
from typing import Any

from app.extraction import RuleExtractor
from app.graph.neo4j import Neo4jGraph
from bench.context import Context
from bench.dataset import dataset
from bench.harness import say

NOT_AVAILABLE = "not measured (consistency check not available yet)"

def availability() -> str | None:
    """None when the section can run, else why not."""
    if importlib.util.find_spec("app.consistency") is None:
        return NOT_AVAILABLE
    try:
        module = importlib.import_module("app.consistency")
    except Exception as exc:
        return f"not measured (app.consistency did not import: {type(exc).__name__}: {exc})"
    cls = getattr(module, "Consistency", None)
    if cls is None or not all(hasattr(cls, m) for m in ("check", "rebuild")):
        return "not measured (app.consistency has no Consistency.check/rebuild)"
    return None


def _timed(label: str, n: int, call: Any) -> tuple[dict[str, Any], Any]:
    began = time.monotonic()
    report = call()
    seconds = time.monotonic() - began
    rate = n / seconds
    say(f"  {label}: {rate:.0f} memories/s ({seconds:.1f}s)")
    return {"seconds": round(seconds, 2), "per_s": round(rate, 1),
            "report": report.summary() if hasattr(report, "summary") else None}, report


def run(ctx: Context) -> dict[str, Any]:
    """At each size: rebuild (cold at the first size only), rebuild from cache, check."""
    reason = availability()
    if reason is not None:
        say(f"check: {reason}")
        return {"status": reason, "sizes": []}
    from app.consistency import Consistency

    rows = []
    for i, size in enumerate(ctx.sizes.check_sizes):
        # The first size starts cold; later ones come with extraction cached, as workers
        # would have left it (a cold rebuild of 100k takes minutes on 2 cores).
        ds = dataset(ctx, size, fill_cache=i > 0)
        ctx.env.clear_graph()
        graph = Neo4jGraph(ds.settings)
        graph.ensure_schema()
        try:
            cons = Consistency(ds.settings, ds.db, graph, RuleExtractor())
            say(f"check: {size} memories")
            cold = None
            if i == 0:
                cold, _ = _timed("rebuild, cold (extracting uncached)", size, cons.rebuild)
            warm, _ = _timed("rebuild, cached extraction", size, cons.rebuild)
            check, report = _timed("check", size, functools.partial(cons.check, store=True))
        finally:
            graph.close()
        rows.append({"memories": size, "rebuild_cold": cold, "rebuild_cached": warm,
                     "check": check, "consistent": bool(getattr(report, "consistent", False))})
    return {"status": "measured", "sizes": rows}
