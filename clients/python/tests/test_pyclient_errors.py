"""Every error answer becomes the exception of its ``error.code`` (or, failing that, status)."""

from __future__ import annotations

import httpx
import pytest

import memory_persistence_client as mpc
from memory_persistence_client import APIError, MemoryClient, ProtocolError


def raised_by(response: httpx.Response) -> APIError:
    client = MemoryClient("http://memory.test", "k", retry=mpc.NO_RETRIES,
                          transport=httpx.MockTransport(lambda _: response))
    with pytest.raises(APIError) as raised:
        client.get("alice", "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11")
    return raised.value


@pytest.mark.parametrize(("status", "code", "kind"), [
    (422, "validation_error", mpc.ValidationError),
    (422, "idempotency_conflict", mpc.IdempotencyConflict),
    (401, "unauthorized", mpc.Unauthorized),
    (403, "forbidden", mpc.Forbidden),
    (404, "not_found", mpc.NotFound),
    (409, "version_conflict", mpc.VersionConflict),
    (409, "busy", mpc.Busy),
    (409, "already_resolved", mpc.AlreadyResolved),
    (413, "payload_too_large", mpc.PayloadTooLarge),
    (429, "rate_limited", mpc.RateLimited),
    (503, "unavailable", mpc.Unavailable),
    (503, "store_unavailable", mpc.StoreUnavailable),
    (503, "embedding_unavailable", mpc.EmbeddingUnavailable),
    (500, "internal_error", mpc.ServerError),
])
def test_each_code_has_its_class(status: int, code: str, kind: type[APIError]) -> None:
    error = raised_by(httpx.Response(status, json={"error": {
        "code": code, "message": "what went wrong", "field": "metadata.x"}}))
    assert type(error) is kind
    assert (error.status_code, error.code, error.message, error.field) == (
        status, code, "what went wrong", "metadata.x")
    assert str(error) == f"{status} {code}: what went wrong"


def test_families_catch_their_members() -> None:
    assert issubclass(mpc.VersionConflict, mpc.Conflict)
    assert issubclass(mpc.StoreUnavailable, mpc.Unavailable)
    assert issubclass(mpc.Unavailable, mpc.APIError)
    assert issubclass(mpc.APIError, mpc.MemoryClientError)
    assert issubclass(mpc.TransportError, mpc.MemoryClientError)


def test_a_version_conflict_carries_the_current_version() -> None:
    error = raised_by(httpx.Response(409, json={"error": {
        "code": "version_conflict", "message": "stale", "field": "expected_version",
        "current_version": 7}}))
    assert isinstance(error, mpc.VersionConflict) and error.current_version == 7


@pytest.mark.parametrize(("status", "kind", "code"), [
    (502, mpc.Unavailable, "bad_gateway"), (504, mpc.Unavailable, "gateway_timeout"),
    (503, mpc.Unavailable, "unavailable"), (500, mpc.ServerError, "internal_error"),
    (404, mpc.NotFound, "not_found"), (418, mpc.APIError, "http_error"),
    (409, mpc.Conflict, "http_error"),
])
def test_answers_not_in_the_api_shape_map_by_status(status: int, kind: type[APIError],
                                                    code: str) -> None:
    error = raised_by(httpx.Response(status, text="<html>Bad Gateway</html>"))
    assert type(error) is kind and error.code == code and error.field is None


def test_an_unknown_code_maps_by_status() -> None:
    error = raised_by(httpx.Response(409, json={"error": {"code": "new_kind", "message": "m"}}))
    assert type(error) is mpc.Conflict and error.code == "new_kind"


def test_a_success_answer_that_is_not_the_documented_json_is_a_protocol_error() -> None:
    for response in (httpx.Response(200, text="not json"), httpx.Response(200, json=[1]),
                     httpx.Response(200, json={"id": "x"})):
        client = MemoryClient("http://memory.test", "k",
                              transport=httpx.MockTransport(lambda _, r=response: r))
        with pytest.raises(ProtocolError):
            client.get("alice", "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11")
