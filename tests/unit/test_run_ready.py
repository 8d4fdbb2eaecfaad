"""`memctl run` prints its ready line once the API answers readiness (devtools.cli.wait_ready)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devtools.cli import wait_ready


class _Ready(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Ready]]]:
    handler = type("Handler", (_Ready,), {"status": 503})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api/health/ready", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ready_once_the_probe_answers_200(server: tuple[str, type[_Ready]]) -> None:
    url, handler = server
    asked = []

    def stopped() -> bool:
        asked.append(1)
        if len(asked) == 3:
            handler.status = 200  # the web process comes up after a few polls
        return False

    assert wait_ready(url, stopped, timeout=30)
    assert len(asked) >= 3


def test_not_ready_when_the_processes_stopped_first(server: tuple[str, type[_Ready]]) -> None:
    url, _ = server
    assert not wait_ready(url, lambda: True, timeout=30)
    assert not wait_ready(url, lambda: False, timeout=1.5)  # 503 until the time is up
