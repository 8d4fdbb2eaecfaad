"""The real web process (uvicorn) at its edges: huge bodies without a key, slow clients."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.settings import Settings
from devtools.harness import ManagedProcess, child_env
from devtools.localservers import free_port
from tests.conftest import wait_for

MB = 1024 * 1024


@pytest.fixture
def web(settings: Settings, tmp_path: Path) -> Iterator[tuple[ManagedProcess, int]]:
    port = free_port()
    env = child_env(settings, API_PORT=str(port), API_REQUEST_TIMEOUT_SECONDS="2",
                    LOG_LEVEL="INFO")
    proc = ManagedProcess("web", [sys.executable, "-m", "app.cli", "web"], env,
                          tmp_path / "web.log")
    try:
        wait_for(lambda: _live(port), 60, "the web process to answer")
        yield proc, port
    finally:
        proc.stop(grace=10)


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health/live", timeout=1).is_success
    except httpx.TransportError:
        return False


def _send_huge(port: int, chunked: bool, results: list[str]) -> None:
    """100 MB towards the server with no key: with a Content-Length, or chunked without one."""
    head = (b"POST /api/memories HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (b"Transfer-Encoding: chunked\r\n" if chunked
               else f"Content-Length: {100 * MB}\r\n".encode()) + b"\r\n")
    block = b"x" * (64 * 1024)
    piece = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for _ in range(100 * MB // len(block)):
                sock.sendall(piece)
        except OSError:  # the server answered and closed: what should happen
            pass
        sock.settimeout(10)
        try:
            results.append(sock.recv(200).decode(errors="replace"))
        except OSError as exc:
            results.append(f"closed: {exc}")


def test_huge_bodies_without_a_key_cost_the_web_process_almost_nothing(
        web: tuple[ManagedProcess, int]) -> None:
    proc, port = web
    process = psutil.Process(proc.pid)
    for _ in range(20):  # warm up: imports, pools, first requests
        httpx.get(f"http://127.0.0.1:{port}/api/memories", params={"user_id": "a"}, timeout=10)
    before = process.memory_info().rss
    results: list[str] = []
    senders = [threading.Thread(target=_send_huge, args=(port, chunked, results))
               for chunked in (False, True, False, True)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    grown = process.memory_info().rss - before
    assert grown < 5 * MB, f"web RSS grew by {grown / MB:.1f} MB for 4 x 100 MB bodies"
    answered = [r for r in results if r.startswith("HTTP/1.1 413")]
    assert answered, results  # refused with 413, not read
    assert _live(port)


def test_a_client_trickling_its_request_is_cut_off(web: tuple[ManagedProcess, int]) -> None:
    _, port = web
    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        sock.sendall(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < 30:  # one byte a second would take forever
            try:
                sock.sendall(b"X")
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the server kept a trickling connection open for 30 s"
    finally:
        sock.close()
    assert _live(port)  # other clients are unaffected
