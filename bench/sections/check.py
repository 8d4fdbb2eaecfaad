"""Section 4, check and rebuild: memories per second, at each size in ``check_sizes``.

``app.consistency.Consistency`` as the process builds it (``app.wiring``), on the shared dataset
(bench/dataset.py) with its outbox marked delivered: at the first size a cold rebuild (it
extracts, and caches one memory per transaction, whatever has no cached extraction); at larger
sizes the cache is filled in bulk instead (untimed; a cold rebuild of 100k would take minutes);
then a rebuild from the cache and a full check of the graph that rebuild left consistent.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from bench.context import Context
from bench.dataset import dataset
from bench.harness import say


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
    rows = []
    for i, size in enumerate(ctx.sizes.check_sizes):
        # The first size starts cold; later ones come with extraction cached, as workers
        # would have left it (a cold rebuild of 100k takes minutes on 2 cores).
        ds = dataset(ctx, size, fill_cache=i > 0)
        ctx.env.stack.clear_graph()
        ds.services.graph.ensure_schema()
        cons = ds.services.consistency
        say(f"check: {size} memories")
        cold = None
        if i == 0:
            cold, _ = _timed("rebuild, cold (extracting uncached)", size, cons.rebuild)
        warm, _ = _timed("rebuild, cached extraction", size, cons.rebuild)
        check, report = _timed("check", size, functools.partial(cons.check, store=True))
        rows.append({"memories": size, "rebuild_cold": cold, "rebuild_cached": warm,
                     "check": check, "consistent": bool(getattr(report, "consistent", False))})
    return {"status": "measured", "sizes": rows}
