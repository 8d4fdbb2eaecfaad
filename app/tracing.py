"""Tracing with OpenTelemetry: one trace from the HTTP request to the graph write.

Off by default (TRACING_EXPORTER=off) and then free: no provider is built, the web process adds
no middleware, the outbox row's ``traceparent`` stays NULL and the worker starts no span. When
on, the web process opens a span per request; the memory's outbox row carries that span's W3C
``traceparent`` (written in the same transaction as the change), and the worker's projection
span links to the traceparent of every row in its batch (a batch serves many requests, so they
are links, not parents).

The provider is this module's, not OpenTelemetry's global one: a process sets it once from its
settings (``configure``), and tests hand it an in-memory exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.errors import ConfigError
from app.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _provider is not None


def configure(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Build this process's tracer provider from TRACING_EXPORTER (or with ``exporter``).

    Returns whether tracing is on. A test's ``exporter`` is exported synchronously.
    """
    global _provider
    if exporter is None and settings.tracing_exporter == "off":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create(
        {"service.name": settings.tracing_service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.tracing_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError("TRACING_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http"
                              " (pip install 'memory-persistence[otlp]')") from None
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint)))
    _provider = provider
    log.info("tracing on", extra={"action": "tracing.start",
                                  "exporter": "test" if exporter else settings.tracing_exporter})
    return True


def shutdown() -> None:
    """Flush and drop the provider: tracing is off again."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None) -> Iterator[Span | None]:
    """A current span named ``name`` while tracing is on; ``None`` (and nothing done) when off."""
    if _provider is None:
        yield None
        return
    tracer = _provider.get_tracer("memctl")
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None when off or outside a span)."""
    if _provider is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def link(current: Span | None, traceparents: Iterable[str | None]) -> int:
    """Link ``current`` to the spans these traceparents name; returns the links added."""
    if current is None:
        return 0
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    added = 0
    for value in dict.fromkeys(t for t in traceparents if t):
        context = trace.get_current_span(propagator.extract({"traceparent": value}))
        span_context = context.get_span_context()
        if span_context.is_valid:
            current.add_link(span_context)
            added += 1
    return added
