"""The worker process's entry module: ``dramatiq workers.actors``.

Dramatiq imports this module in each worker process, so this is the one place a worker reads
its settings. The projector (engine, Neo4j driver, extractor) is built lazily per process, after
Dramatiq has started it, and shared by that process's threads.
"""

from __future__ import annotations

import logging
import threading

import dramatiq

from app.db.connector import Database
from app.extraction import make_extractor
from app.graph.neo4j import Neo4jGraph
from app.logs import configure_logging
from app.projection import Projector
from app.settings import load_settings
from workers.broker import build_broker, declare_project_actor

settings = load_settings()
configure_logging(settings)
broker = build_broker(settings)
# The dramatiq CLI uses the global broker unless told ``module:broker``; set both ways.
dramatiq.set_broker(broker)
log = logging.getLogger(__name__)

_lock = threading.Lock()
_projector: Projector | None = None


def projector() -> Projector:
    global _projector
    with _lock:
        if _projector is None:
            graph = Neo4jGraph(settings)
            try:
                graph.ensure_schema()
            except Exception:
                log.warning("graph schema not ensured yet (Neo4j down?)", exc_info=True)
            _projector = Projector(settings, Database(settings), graph, make_extractor(settings))
        return _projector


def project_outbox(outbox_ids: list[int]) -> None:
    """Project a batch of outbox rows; failures are written back to the rows, not raised."""
    outcome = projector().process(outbox_ids)
    log.debug("batch done", extra={"action": "worker.batch", "done": outcome.done,
                                   "failed": outcome.failed, "dead": outcome.dead})


project_actor = declare_project_actor(broker, settings, project_outbox)
