"""The web process's metrics: request counts and latencies by route template, and ``/metrics``.

The route label is the matched route's template (``/api/memories/{memory_id}``), never the raw
path, so ids never become label values; a request no route matched is ``<unmatched>``.

``/metrics`` needs no key unless METRICS_KEYS is set; then one of those keys as a bearer token
(keys that open nothing else, so a Prometheus server never holds an admin key). The series carry
no user ids and no memory content either way.
"""

from __future__ import annotations

import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics, tracing
from app.api.errors import error_response
from app.settings import Settings

UNMATCHED = "<unmatched>"
# Any token is a method to HTTP: a client inventing methods must not invent label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The template of the route that answered, from what the router left in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return f"{path}/{{path}}" if isinstance(route, Mount) else path or "/"


class RequestMetrics:
    """ASGI middleware: in-flight gauge, count and duration of each request, and (while
    tracing is on) the request's span, current while the app answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception with no response sent is answered 500 by the server
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            with tracing.span(f"HTTP {scope['method']}", {
                    "http.request.method": scope["method"]}) as span:
                try:
                    await self.app(scope, receive, observed)
                finally:
                    if span is not None:
                        route = route_template(scope)
                        span.update_name(f"{scope['method']} {route}")
                        span.set_attribute("http.route", route)
                        span.set_attribute("http.response.status_code", status)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, route_template(scope), str(status))
            metrics.HTTP_REQUESTS.labels(*labels).inc()
            metrics.HTTP_DURATION.labels(*labels).observe(time.perf_counter() - started)


def install(app: FastAPI, settings: Settings) -> None:
    """Count every request, and serve ``GET /metrics`` when METRICS_ENABLED."""
    app.add_middleware(RequestMetrics)
    if not settings.metrics_enabled:
        return
    keys = [k.get_secret_value().encode() for k in settings.metrics_keys]

    @app.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        if keys:
            given = request.headers.get("authorization", "")
            token = given[7:].encode() if given[:7].lower() == "bearer " else b""
            if not any(hmac.compare_digest(token, k) for k in keys):
                return error_response(401, "unauthorized", "a metrics key is required",
                                      headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
