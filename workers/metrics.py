"""Metrics of dramatiq's worker processes: prometheus_client's multiprocess mode.

The dramatiq CLI forks N worker processes; each counts its projections into files under one
folder per dramatiq parent (``memctl-worker-metrics-<parent pid>`` in the temp folder, or
METRICS_MULTIPROC_DIR), and one process forked by the parent (a middleware ``fork``) serves
their sum on METRICS_HOST:METRICS_PORT_WORKER. With METRICS_PORT_WORKER=0 nothing of this runs.

This module must not import prometheus_client at import time: ``use_multiprocess_dir`` has to
set PROMETHEUS_MULTIPROC_DIR before the library is first imported in a worker process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import dramatiq

from app.settings import Settings, load_settings

log = logging.getLogger(__name__)
PREFIX = "memctl-worker-metrics-"


def multiprocess_dir(settings: Settings, parent_pid: int) -> Path:
    """The folder the worker processes of one dramatiq parent share."""
    base = Path(settings.metrics_multiproc_dir or tempfile.gettempdir())
    return base / f"{PREFIX}{parent_pid}"


def use_multiprocess_dir(settings: Settings) -> bool:
    """In a worker process: count into the parent's folder. Call before importing app.metrics."""
    if not settings.metrics_port_worker:
        return False
    folder = multiprocess_dir(settings, os.getppid())
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return True


def _forget_dead_parents(folder: Path) -> None:
    """Remove the folders of dramatiq parents that are gone (files of an earlier run)."""
    for other in folder.parent.glob(f"{PREFIX}*"):
        pid = other.name.removeprefix(PREFIX)
        if other == folder or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(other, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def serve_worker_metrics() -> int:
    """A dramatiq fork: serve the sum of the worker processes' files until the parent stops."""
    settings = load_settings()
    folder = multiprocess_dir(settings, os.getppid())
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    _forget_dead_parents(folder)
    from prometheus_client import CollectorRegistry, multiprocess

    from app.metrics import serve

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    server = serve(settings.metrics_host, settings.metrics_port_worker, registry)
    stop = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


class WorkerMetrics(dramatiq.Middleware):
    """Asks the dramatiq parent to fork the metrics server (when METRICS_PORT_WORKER is set)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = bool(settings.metrics_port_worker)

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics] if self.enabled else []
