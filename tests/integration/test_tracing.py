"""Tracing (issue 17 item 2): one trace from the HTTP request to the projection.

With an in-memory exporter: the request's span, the outbox row's ``traceparent`` naming it, and
the worker's projection span linked to it. With tracing off (the default) nothing is recorded
and the row carries no trace context.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from app import tracing
from app.api import create_app
from app.db.connector import Database
from app.graph.neo4j import Neo4jGraph
from app.outbox import Outbox
from app.projector import Projector
from app.settings import Settings
from tests.conftest import PoisonExtractor, bearer, drain


@pytest.fixture
def exporter(settings: Settings) -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.configure(settings, exporter=spans)
    yield spans
    tracing.shutdown()


def traceparents(db: Database) -> list[str | None]:
    with db.engine.begin() as conn:
        return [r[0] for r in conn.execute(text("SELECT traceparent FROM outbox ORDER BY id"))]


def store(settings: Settings, content: str) -> str:
    key = settings.api_service_keys[0].get_secret_value()
    with TestClient(create_app(settings), headers=bearer(key)) as client:
        response = client.post("/api/memories", json={"user_id": "alice", "content": content})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_the_projection_span_links_to_the_request_that_wrote_the_memory(
        settings: Settings, db: Database, graph: Neo4jGraph,
        exporter: InMemorySpanExporter) -> None:
    store(settings, "Meeting with John about Q4")
    [request] = [s for s in exporter.get_finished_spans() if s.name == "POST /api/memories"]
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/api/memories"
    assert request.attributes["http.response.status_code"] == 201
    context = request.get_span_context()
    assert context is not None
    assert traceparents(db) == [
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"]

    drain(Projector(db, Outbox(settings, db), graph, PoisonExtractor()), db)
    [projection] = [s for s in exporter.get_finished_spans() if s.name == "projection"]
    assert [(link.context.trace_id, link.context.span_id) for link in projection.links] == \
        [(context.trace_id, context.span_id)]
    assert projection.attributes is not None and projection.attributes["memctl.rows"] == 1


def test_off_by_default_nothing_is_recorded(settings: Settings, db: Database) -> None:
    assert settings.tracing_exporter == "off"
    assert not tracing.configure(settings) and not tracing.enabled()
    with tracing.span("anything") as span:
        assert span is None
    store(settings, "Lunch with Ann")
    assert traceparents(db) == [None]
