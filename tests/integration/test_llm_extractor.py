"""LLMExtractor against a real HTTP server on loopback that speaks the chat-completions shape.

The server is http.server in a thread, bound to port 0 so the OS picks a free port without a
race. Each test sets the answer it wants; the server records every request it gets.
"""

from __future__ import annotations

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

from app.errors import ExtractionError, ExtractionRetryable
from app.extraction import SYSTEM_PROMPT, LLMExtractor

KEY = "sk-integration-secret"
MODEL = "tiny-model"


@dataclass
class FakeLLM:
    """What the server answers next, and what it was asked."""

    base_url: str
    status: int = 200
    body: str = ""
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

    def extractor(self, timeout: float = 5.0) -> LLMExtractor:
        return LLMExtractor(self.base_url, MODEL, KEY, timeout)


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


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_permanent(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.status, fake_llm.body = status, f'{{"error": "bad request", "echo": "Bearer {KEY}"}}'
    with closing(fake_llm.extractor()) as extractor, pytest.raises(ExtractionError) as info:
        extractor.extract("Sarah")
    assert not isinstance(info.value, ExtractionRetryable)
    assert str(status) in str(info.value)
    assert KEY not in str(info.value)


def test_a_server_that_never_answers_times_out_as_retryable(fake_llm: FakeLLM) -> None:
    fake_llm.hang = True
    started = time.monotonic()
    with closing(fake_llm.extractor(timeout=0.5)) as extractor, \
            pytest.raises(ExtractionRetryable) as info:
        extractor.extract("Sarah")
    assert time.monotonic() - started < 5.0
    assert "timed out" in str(info.value)
    assert len(fake_llm.requests) == 1


def test_a_refused_connection_is_retryable() -> None:
    # A bound socket that never listens: connections to its port are refused, and holding it
    # keeps anyone else from taking the port during the test.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        extractor = LLMExtractor(f"http://127.0.0.1:{port}/v1", MODEL, KEY, 2.0)
        with closing(extractor), pytest.raises(ExtractionRetryable):
            extractor.extract("Sarah")
