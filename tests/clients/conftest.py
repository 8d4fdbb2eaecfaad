"""A real web process (``python -m app.cli web``) for the clients' tests, restartable on its
port, and a TCP proxy in front of it that can lose one answer."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from devtools.harness import ManagedProcess, child_env
from devtools.localservers import free_port
from tests.conftest import wait_for


class Web:
    """The web process on a fixed port: started, killed and started again by the test."""

    def __init__(self, settings: Settings, log_dir: Path, **env: str) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = env
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = child_env(self.settings, API_PORT=str(self.port), LOG_LEVEL="WARNING", **self.env)
        self.proc = ManagedProcess("web", [sys.executable, "-m", "app.cli", "web"], env,
                                   self.log_dir / f"web-{self.starts}.log")
        wait_for(self.live, 60, "the web process to answer")

    def live(self) -> bool:
        if self.proc is not None and self.proc.proc.poll() is not None:
            pytest.fail(f"the web process exited:\n{self.proc.log()}")
        try:
            return httpx.get(f"{self.url}/api/health/live", timeout=1).is_success
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is answered or flushed."""
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10)


@pytest.fixture
def web(settings: Settings, tmp_path: Path) -> Iterator[Web]:
    process = Web(settings, tmp_path)
    try:
        process.start()
        yield process
    finally:
        process.stop()


class LosingProxy:
    """A TCP proxy to ``upstream_port``. Armed with ``lose_next_answer(then)``, it swallows the
    first bytes the server sends back, runs ``then`` (say, kill the server) and closes the
    client's connection: the server acted on the request, the client never hears of it. While
    the server is down, the proxy accepts and closes at once (no answer)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._then: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next_answer(self, then: Callable[[], None]) -> None:
        with self._lock:
            self._then = then

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers:
                    with self._lock:
                        then, self._then = self._then, None
                    if then is not None:
                        then()
                        self.lost.set()
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
