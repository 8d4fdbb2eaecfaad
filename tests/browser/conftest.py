"""The admin console in a real browser: Debian's Chromium driven by Playwright.

``devtools.browser.ensure_chromium`` installs Chromium with apt-get when it is missing (as the
local servers install redis-server); Playwright's Python package only drives it, through
``executable_path``: no browser is downloaded. Each test gets a real web process
(``memctl web``) on its own database and a fresh browser context (no cookies). Screenshots go
to ``screenshots/`` (git-ignored).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from app.settings import Settings
from devtools.browser import FLAGS, ensure_chromium
from devtools.harness import ManagedProcess, child_env
from devtools.localservers import free_port
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "screenshots"
SESSION_SECRET = "browser-tests-session-secret-0123456789"
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)  # each expect polls up to this deadline


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every browser test is slow (a web process, often a worker, and a browser)."""
    for item in items:
        if "tests/browser/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)


# Module scope, not session: the sync API keeps an asyncio loop running on the main thread while
# it is open, and later tests that call asyncio.run() (the async clients) would fail.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless Chromium from Debian's package, with a fresh profile Playwright makes."""
    chromium = playwright.chromium.launch(executable_path=ensure_chromium(), args=FLAGS,
                                          headless=True)
    yield chromium
    chromium.close()


@dataclass
class Web:
    """A running ``memctl web`` process."""

    process: ManagedProcess
    url: str
    settings: Settings

    def at(self, path: str) -> str:
        return self.url + path


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/health/live", timeout=1).is_success
    except httpx.TransportError:
        return False


@pytest.fixture
def start_web(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Web]]:
    """Start web processes on this test's database; each is stopped when the test ends."""
    started: list[ManagedProcess] = []

    def start(**env: str) -> Web:
        port = free_port()
        values = {"API_PORT": str(port), "CONSOLE_SESSION_SECRET": SESSION_SECRET,
                  "CONSOLE_SAMPLE_SECONDS": "1", "API_KEY_CACHE_SECONDS": "0",
                  "LOG_LEVEL": "INFO", **env}
        proc = ManagedProcess("web", [sys.executable, "-m", "app.cli", "web"],
                              child_env(settings, **values),
                              tmp_path / f"web-{len(started)}.log", cwd=REPO)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.proc.poll() is None and _answers(url), 60,
                 "the web process to answer")
        return Web(proc, url, settings)

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(grace=10)


@pytest.fixture
def web(start_web: Callable[..., Web]) -> Web:
    return start_web()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context: no cookies, JavaScript on."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot under screenshots/ (git-ignored)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, web: Web, key: str, path: str = "/admin") -> None:
    """Open ``path``, land on the login form, and log in with ``key``."""
    page.goto(web.at(path))
    assert "/admin/login" in page.url
    page.fill("#key", key)
    page.click("form[action='/admin/login'] button[type=submit]")
