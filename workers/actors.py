"""The worker process's entry module: ``dramatiq workers.actors``.

Dramatiq imports this module in each worker process, so this is the one place a worker reads
its settings. The projector (engine, Neo4j driver, extractor) is built lazily per process, after
Dramatiq has started it, and shared by that process's threads.
"""

from __future__ import annotations

import logging
import threading

import dramatiq

from app.logs import configure_logging
from app.projector import Projector
from app.queue import build_broker, declare_project_actor
from app.settings import load_settings
from app.wiring import Services, build_services

settings = load_settings()
configure_logging(settings)
broker = build_broker(settings)
# The dramatiq CLI uses the global broker unless told ``module:broker``; set both ways.
dramatiq.set_broker(broker)
log = logging.getLogger(__name__)

_lock = threading.Lock()
_services: Services | None = None


def projector() -> Projector:
    """This process's projector, built on first use and shared by its threads."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(settings)
            try:
                _services.graph.ensure_schema()
            except Exception:
                log.warning("graph schema not ensured yet (Neo4j down?)", exc_info=True)
        return _services.projector


def project_outbox(outbox_ids: list[int]) -> None:
    """Project a batch of outbox rows; failures are written back to the rows, not raised."""
    outcome = projector().process(outbox_ids)
    log.debug("batch done", extra={"action": "worker.batch", "done": outcome.done,
                                   "failed": outcome.failed, "dead": outcome.dead})


project_actor = declare_project_actor(broker, settings, project_outbox)
