"""A real HTTP server on loopback standing in for an OpenAI-compatible LLM endpoint.

Worker processes talk to it over TCP exactly as they would to a provider. The test switches its
``mode`` to inject real faults: ``unavailable`` answers 503, ``rate_limited`` answers 429 with a
Retry-After, and a request without the expected key answers 401 (as providers do). In ``ok``
mode it extracts capitalised words as people, and content holding POISON gets a malformed answer
(the row's failure, not the endpoint's). Every request is recorded with its time and answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "unavailable", "rate_limited"]
MODEL = "stub-model"


@dataclass(frozen=True)
class Seen:
    """One request as the stub answered it."""

    at: float  # time.monotonic() in the test process
    mode: str
    status: int
    probe: bool  # the breaker's one-token probe, not an extraction


@dataclass
class StubLLM:
    base_url: str
    key: str
    mode: Mode = "ok"
    retry_after: float = 5.0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, status: int | None = None, since: float = 0.0) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen
                    if s.at >= since and (status is None or s.status == status)]


def _extraction(text: str) -> str:
    names = list(dict.fromkeys(re.findall(r"\b[A-Z][a-z]+\b", text)))[:5]
    return json.dumps({"entities": [{"name": n, "type": "person"} for n in names],
                       "relations": []})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: StubLLM


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        stub = self.server.stub
        body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        probe = body.get("max_tokens") == 1
        headers: dict[str, str] = {}
        if self.headers.get("Authorization") != f"Bearer {stub.key}":
            status, payload = 401, {"error": {"code": "invalid_api_key",
                                              "message": "Incorrect API key provided"}}
        elif stub.mode == "unavailable":
            status, payload = 503, {"error": {"message": "the model is overloaded"}}
        elif stub.mode == "rate_limited":
            status, payload = 429, {"error": {"code": "rate_limit_exceeded",
                                              "message": "Rate limit reached"}}
            headers["Retry-After"] = f"{stub.retry_after:g}"
        else:
            text = body["messages"][-1]["content"]
            content = ("Sure! Here are the entities you asked for." if "POISON" in text
                       else _extraction(text))
            status, payload = 200, {"id": "chatcmpl-stub", "object": "chat.completion",
                                    "model": MODEL, "choices": [{
                                        "index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}]}
        with stub.lock:
            stub.seen.append(Seen(time.monotonic(), stub.mode, status, probe))
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@contextmanager
def running(key: str) -> Iterator[StubLLM]:
    """The stub on a free loopback port (the OS picks it), stopped when the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.stub = StubLLM(base_url=f"http://{host!s}:{port}/v1", key=key)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
