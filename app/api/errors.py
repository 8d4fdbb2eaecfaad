"""Map the project's error tree (and FastAPI's own errors) onto one JSON error shape.

Every error answer has the body ``{"error": {"code": ..., "message": ..., "field": ...}}``;
``field`` is null when no single input is at fault. Messages never echo request values, so a key
or a piece of content sent by mistake cannot come back in a body (or a log line built from it).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import MemoryPersistenceError, RateLimited, VersionConflict

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong; names the offending field if any.")
    field: str | None = Field(default=None, description="The input at fault, if one is.")
    current_version: int | None = Field(
        default=None, description="On version_conflict: the memory's current version.")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str, field: str | None = None, *,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """One error answer in the common shape."""
    detail: dict[str, Any] = {"code": code, "message": message, "field": field, **extra}
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def _responses(*pairs: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": text} for status, text in pairs}


# OpenAPI documentation of the error answers, for the routes to pick from.
AUTH_ERRORS = _responses((401, "Missing or unknown API key"),
                         (413, "The body is larger than MAX_BODY_BYTES"),
                         (422, "Invalid input; `field` names it"),
                         (429, "The key is over its rate; wait `Retry-After` seconds"),
                         (503, "Postgres (or the embedding backend) is unavailable; retry"))
NOT_FOUND = _responses((404, "No such memory for this user"))
CONFLICT = _responses((409, "Stale version; the body carries `current_version`"))
FORBIDDEN = _responses((403, "The key's scope (or namespace) does not allow this request"))


def _field_of(loc: Sequence[int | str]) -> str | None:
    """``("body", "metadata", "x")`` -> ``"metadata.x"``; the location kind is dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        kind, parts = parts[0], parts[1:]
        if kind == "header":
            parts = ["-".join(w.capitalize() for w in p.split("-")) for p in parts]
    return ".".join(parts) or ("body" if loc and loc[0] == "body" else None)


def _describe(error: dict[str, Any]) -> tuple[str | None, str]:
    field = _field_of(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field"
    if kind == "json_invalid":
        return "body", "body: not valid JSON"
    if kind == "missing":
        return field, f"{field}: field required"
    # pydantic's message describes the rule, never the value, so it is safe to pass on.
    return field, f"{field or 'request'}: {error.get('msg', 'invalid value')}"


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    described = [_describe(e) for e in exc.errors()]
    if not described:  # pragma: no cover - FastAPI always reports at least one
        return error_response(422, "validation_error", "invalid request")
    field = described[0][0]
    message = "; ".join(text for _, text in described)
    return error_response(422, "validation_error", message, field)


async def _memory_error(request: Request, exc: Exception) -> JSONResponse:
    """Our own errors answer with their class's status and code; internals stay in the log."""
    assert isinstance(exc, MemoryPersistenceError)
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status == 503:
        headers["Retry-After"] = "1"
        log.warning("backend unavailable: %s", exc, extra={"action": "api.unavailable",
                                                          "code": exc.code,
                                                          "path": request.url.path})
    elif exc.status >= 500:
        log.error("request failed: %s", exc, extra={"action": "api.error",
                                                    "path": request.url.path})
    extra: dict[str, Any] = {}
    if isinstance(exc, VersionConflict):
        extra["current_version"] = exc.current_version
    message = exc.public if exc.public is not None else str(exc)
    return error_response(exc.status, exc.code, message, exc.field, headers=headers or None,
                          **extra)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
               415: "unsupported_media_type"}


def _allowed(request: Request) -> list[str]:
    """Every method the API documents for this path (Starlette's Allow names one route's).

    Built from the OpenAPI paths once per app, so it agrees with the documented contract.
    """
    index: list[tuple[re.Pattern[str], set[str]]] | None = getattr(request.app.state,
                                                                    "allowed_methods", None)
    if index is None:
        index = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            index.append((re.compile(f"^{regex}$"), {m.upper() for m in operations}))
        request.app.state.allowed_methods = index
    methods: set[str] = set()
    for path, verbs in index:
        if path.match(request.url.path):
            methods |= verbs
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"}) if methods else []


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method, a body it could not read) in the
    common shape; OPTIONS answers with the methods the path allows."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed(request)
        headers["Allow"] = ", ".join(allowed)
        if request.method == "OPTIONS" and allowed:
            return Response(status_code=204, headers=headers)
    if exc.status_code == 400:
        # FastAPI's answer to a body it could not decode (not UTF-8, nested past the parser's
        # recursion): an input the caller must fix, documented as 422 like every other.
        return error_response(422, "validation_error", "body: could not be decoded as JSON",
                              "body")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"action": "api.unhandled", "path": request.url.path})
    return error_response(500, "internal_error", "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(MemoryPersistenceError, _memory_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
