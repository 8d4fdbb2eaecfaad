"""LLMExtractor against a real HTTP server on loopback that speaks the chat-completions shape.

The server is http.server in a thread, bound to port 0 so the OS picks a free port without a
race. Each test sets the answer it wants; the server records every request it gets.
"""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.errors import (
    ExtractionError,
    ExtractionRetryable,
    ExtractorMisconfigured,
    ExtractorRateLimited,
    ExtractorUnavailable,
)
from app.extraction import SYSTEM_PROMPT, LLMExtractor

KEY = "sk-integration-secret"
MODEL = "tiny-model"


@dataclass
class FakeLLM:
    """What the server answers next, and what it was asked."""

    base_url: str
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def answer(self, content: str, status: int = 200) -> None:
        envelope = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        }
        self.status, self.body = status, json.dumps(envelope)

    def extractor(self, timeout: float = 5.0, max_wait: float = 1.0) -> LLMExtractor:
        return LLMExtractor(self.base_url, MODEL, KEY, timeout, max_wait=max_wait)


class _Server(ThreadingHTTPServer):
    # Join handler threads on close, so no thread outlives the test.
    daemon_threads = False
    fake: FakeLLM


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length", "0"))
        fake.requests.append({
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": json.loads(self.rfile.read(length)),
        })
        if fake.hang:
            # Never answer; the fixture releases us at teardown.
            fake.release.wait(timeout=30)
            return
        data = fake.body.encode()
        self.send_response(fake.status)
        for name, value in fake.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.fake = FakeLLM(base_url=f"http://{host!s}:{port}/v1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.fake
    finally:
        server.fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_good_answer_is_parsed_and_the_request_is_well_formed(fake_llm: FakeLLM) -> None:
    fake_llm.answer(json.dumps({
        "entities": [{"name": "Sarah", "type": "person"},
                     {"name": "Acme Corp", "type": "Organization"}],
        "relations": [{"source": "Sarah", "target": "Acme Corp", "predicate": "works_at"}],
    }))
    with closing(fake_llm.extractor()) as extractor:
        extraction = extractor.extract("Sarah works at Acme Corp.")

    assert [(e.name, e.type) for e in extraction.entities] == [
        ("Sarah", "person"), ("Acme Corp", "organization")
    ]
    assert [(r.source.name, r.predicate, r.target.name) for r in extraction.relations] == [
        ("Sarah", "works_at", "Acme Corp")
    ]
    (request,) = fake_llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == MODEL
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Sarah works at Acme Corp."},
    ]


def test_a_non_json_answer_is_retryable_and_keeps_the_raw_text(fake_llm: FakeLLM) -> None:
    fake_llm.answer("Sure! Sarah is a person and Acme Corp is a company.")
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionRetryable) as info:
        extractor.extract("Sarah works at Acme Corp.")
    assert "Sure! Sarah is a person and Acme Corp is a company." in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        '{"entities": [{"name": "Sarah"}]}',
        '{"entities": {"Sarah": "person"}}',
        '{"people": ["Sarah"]}',
    ],
)
def test_a_wrongly_shaped_answer_is_retryable(fake_llm: FakeLLM, content: str) -> None:
    fake_llm.answer(content)
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionRetryable) as info:
        extractor.extract("Sarah")
    assert content in str(info.value)


def test_a_non_chat_completion_body_is_retryable(fake_llm: FakeLLM) -> None:
    fake_llm.status, fake_llm.body = 200, '{"error": "overloaded"}'
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionRetryable):
        extractor.extract("Sarah")


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_transient_http_errors_are_retryable(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.status, fake_llm.body = status, '{"error": {"message": "try later"}}'
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionRetryable) as info:
        extractor.extract("Sarah")
    assert str(status) in str(info.value)
    # An outage of the endpoint, not a failure of the note: it feeds the extractor's breaker.
    assert isinstance(info.value, ExtractorUnavailable)


@pytest.mark.parametrize(("status", "code"), [
    (401, "invalid_api_key"), (403, "permission_denied"), (404, "model_not_found"),
    (400, "model_not_found"), (429, "insufficient_quota"), (402, "billing")])
def test_refused_settings_are_misconfigured_and_name_them(fake_llm: FakeLLM, status: int,
                                                          code: str) -> None:
    fake_llm.status = status
    fake_llm.body = json.dumps({"error": {"code": code, "message": f"key Bearer {KEY} bad"}})
    with closing(fake_llm.extractor()) as extractor, \
            pytest.raises(ExtractorMisconfigured) as info:
        extractor.extract("Sarah")
    message = str(info.value)
    assert str(status) in message and "LLM_API_KEY" in message and "LLM_MODEL" in message
    assert KEY not in message
    assert not info.value.retryable


@pytest.mark.parametrize("status", [400, 422])
def test_other_client_errors_are_permanent(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.status, fake_llm.body = status, f'{{"error": "bad request", "echo": "Bearer {KEY}"}}'
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionError) as info:
        extractor.extract("Sarah")
    assert not isinstance(info.value, ExtractionRetryable | ExtractorMisconfigured)
    assert str(status) in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.parametrize("retry_after", ["2", "HTTP-DATE"])
def test_a_429_pauses_every_thread_for_its_retry_after(fake_llm: FakeLLM,
                                                       retry_after: str) -> None:
    if retry_after == "HTTP-DATE":
        retry_after = email.utils.formatdate(time.time() + 3, usegmt=True)
    fake_llm.status, fake_llm.body = 429, '{"error": {"message": "slow down"}}'
    fake_llm.headers = {"Retry-After": retry_after}
    with closing(fake_llm.extractor(max_wait=0.5)) as extractor:
        with pytest.raises(ExtractorRateLimited) as first:
            extractor.extract("Sarah")
        assert first.value.asked and 1.0 <= first.value.retry_after <= 3.0
        fake_llm.answer('{"entities": []}')  # the endpoint would answer now...
        seen: list[BaseException] = []

        def other_thread() -> None:
            try:
                extractor.extract("Sarah")
            except BaseException as exc:
                seen.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        # ...but no thread of this process asks before the pause is over.
        assert len(seen) == 1 and isinstance(seen[0], ExtractorRateLimited)
        assert not seen[0].asked and 0 < seen[0].retry_after <= first.value.retry_after
        assert len(fake_llm.requests) == 1


def test_a_short_pause_is_waited_out_and_a_long_one_doubles_without_retry_after(
        fake_llm: FakeLLM) -> None:
    fake_llm.status, fake_llm.body = 429, "{}"
    with closing(fake_llm.extractor(max_wait=1.5)) as extractor:
        with pytest.raises(ExtractorRateLimited) as first:
            extractor.extract("Sarah")
        assert first.value.retry_after == 1.0  # no Retry-After: 1 s, then 2 s, ...
        started = time.monotonic()
        with pytest.raises(ExtractorRateLimited) as second:  # waits 1 s, asks, 429 again
            extractor.extract("Sarah")
        assert time.monotonic() - started >= 0.9
        assert second.value.asked and second.value.retry_after == 2.0
        assert len(fake_llm.requests) == 2
        fake_llm.answer('{"entities": [{"name": "Sarah", "type": "person"}]}')
        time.sleep(0.6)  # 1.4 s of the 2 s pause left: within max_wait, so it waits
        assert [e.name for e in extractor.extract("Sarah").entities] == ["Sarah"]
        assert len(fake_llm.requests) == 3


def test_probe_asks_for_one_token_and_classifies_like_extract(fake_llm: FakeLLM) -> None:
    with closing(fake_llm.extractor()) as extractor:
        fake_llm.answer("ignored: a probe does not parse the answer")
        extractor.probe()
        assert fake_llm.requests[-1]["body"]["max_tokens"] == 1
        fake_llm.status = 401
        with pytest.raises(ExtractorMisconfigured):
            extractor.probe()
        fake_llm.status = 503
        with pytest.raises(ExtractorUnavailable):
            extractor.probe()


def test_a_server_that_never_answers_times_out_as_retryable(fake_llm: FakeLLM) -> None:
    fake_llm.hang = True
    started = time.monotonic()
    with closing(fake_llm.extractor(timeout=0.5)) as extractor, \
            pytest.raises(ExtractionRetryable) as info:
        extractor.extract("Sarah")
    assert time.monotonic() - started < 5.0
    assert "timed out" in str(info.value)
    assert isinstance(info.value, ExtractorUnavailable)
    assert len(fake_llm.requests) == 1


def test_a_refused_connection_is_retryable() -> None:
    # A bound socket that never listens: connections to its port are refused, and holding it
    # keeps anyone else from taking the port during the test.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        extractor = LLMExtractor(f"http://127.0.0.1:{port}/v1", MODEL, KEY, 2.0)
        with closing(extractor), pytest.raises(ExtractorUnavailable):
            extractor.extract("Sarah")
