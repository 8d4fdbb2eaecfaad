"""The worker process's entry module: ``dramatiq workers.actors``.

Dramatiq imports this module in each worker process, so this is the one place a worker reads
its settings. The projector (engine, Neo4j driver, extractor) is built lazily per process, after
Dramatiq has started it, and shared by that process's threads. Each worker process also runs the
breakers' prober (``app.breakers.Prober``) from boot to shutdown: while a breaker is open the
relay sends no work, so probing cannot wait for a message.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from app.settings import load_settings
from workers.metrics import WorkerMetrics, use_multiprocess_dir

settings = load_settings()
# Before anything imports prometheus_client: this process counts into the shared folder.
use_multiprocess_dir(settings)

import dramatiq  # noqa: E402

from app import tracing  # noqa: E402
from app.breakers import Prober  # noqa: E402
from app.errors import ConfigError  # noqa: E402
from app.extraction import NlpExtractor  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.projector import Projector  # noqa: E402
from app.queue import build_broker, declare_project_actor  # noqa: E402
from app.wiring import Services, build_services  # noqa: E402

configure_logging(settings)
tracing.configure(settings)
broker = build_broker(settings)
# The dramatiq CLI uses the global broker unless told ``module:broker``; set both ways.
dramatiq.set_broker(broker)
log = logging.getLogger(__name__)

_lock = threading.Lock()
_services: Services | None = None

if settings.extractor == "nlp":
    # The nlp extractor's model loads (and is checked by sha256) before this worker takes any
    # message: a missing or altered model stops the worker here with one line naming the fix.
    try:
        NlpExtractor().load()
    except ConfigError as exc:
        log.critical("worker cannot start: %s", exc, extra={"action": "worker.extractor"})
        sys.exit(2)


def services() -> Services:
    """This process's parts, built on first use and shared by its threads."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(settings)
            try:
                _services.graph.ensure_schema()
            except Exception:
                log.warning("graph schema not ensured yet (Neo4j down?)", exc_info=True)
        return _services


def projector() -> Projector:
    """This process's projector."""
    return services().projector


class BreakerProbes(dramatiq.Middleware):
    """Runs the breakers' prober in each worker process, from boot to shutdown."""

    def __init__(self) -> None:
        self.prober: Prober | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        parts = services()
        try:
            # This worker may carry a fixed setting: probe misconfigured breakers now.
            parts.breakers.reprobe_misconfigured()
        except Exception:
            log.warning("could not ask for a probe (Postgres down?)", exc_info=True,
                        extra={"action": "worker.reprobe"})
        self.prober = parts.prober()
        self.prober.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self.prober is not None:
            self.prober.stop()


def project_outbox(outbox_ids: list[int]) -> None:
    """Project a batch of outbox rows; failures are written back to the rows, not raised."""
    outcome = projector().process(outbox_ids)
    log.debug("batch done", extra={"action": "worker.batch", "done": outcome.done,
                                   "failed": outcome.failed, "dead": outcome.dead})


project_actor = declare_project_actor(broker, settings, project_outbox)
broker.add_middleware(BreakerProbes())
broker.add_middleware(WorkerMetrics(settings))
