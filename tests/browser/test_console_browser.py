"""The operator's day in Chromium: log in, watch dead letters appear, fix, replay, converge.

Everything here goes through a real ``memctl web`` process; the dead letters come from a real
``dramatiq workers.actors`` process whose LLM extractor gets HTTP 400 from a local stand-in
(a permanent error: each row dead-letters at its first attempt), fed by a relay thread.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis as redis_lib
from neo4j import Driver
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect

from app.db.connector import Database
from app.graph.neo4j import Neo4jGraph
from app.outbox import DeadLetterFilter, Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from devtools.harness import ManagedProcess
from tests.browser.conftest import TIMEOUT_MS, Web, log_in, screenshot
from tests.conftest import PoisonExtractor, drain
from tests.faults.conftest import WORKER_ARGV, Relays, process_env

REPO = Path(__file__).resolve().parents[2]
CONVERGE_MS = 60_000


# -- a broken LLM endpoint --------------------------------------------------------------------


class _Refusing(BaseHTTPRequestHandler):
    """Answers every chat completion with HTTP 400, as a provider does for a bad request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"error": {"message": "model 'tiny' does not exist",
                                     "type": "invalid_request_error"}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def broken_llm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Settings], ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start(settings: Settings) -> ManagedProcess:
        proc = ManagedProcess("worker", WORKER_ARGV, process_env(settings),
                              tmp_path / f"worker-{len(started)}.log", cwd=REPO)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(grace=5)


@pytest.fixture
def relays(db: Database, redis_client: redis_lib.Redis) -> Iterator[Relays]:
    running = Relays(db)
    try:
        yield running
    finally:
        running.stop_all()


def accept_next_dialog(page: Page) -> list[str]:
    """Accept the next confirm() dialog; the returned list gets its message."""
    seen: list[str] = []

    def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    return seen


def session_cookie(context: BrowserContext) -> dict[str, object]:
    return next(dict(c) for c in context.cookies() if c["name"] == "memctl_console")


# -- the tests --------------------------------------------------------------------------------


def test_only_an_admin_key_logs_in_and_the_overview_refreshes_itself(
        page: Page, context: BrowserContext, web: Web, admin_key: str, service_key: str
        ) -> None:
    log_in(page, web, service_key)
    expect(page.locator("#login-error")).to_contain_text("only an admin key")
    assert not [c for c in context.cookies() if c["name"] == "memctl_console"]

    log_in(page, web, admin_key)
    expect(page.locator("h1")).to_have_text("Overview")
    cookie = session_cookie(context)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin" and cookie["secure"] is False  # plain http here
    assert admin_key not in str(cookie["value"]) and admin_key not in page.content()
    for server in ("postgres", "neo4j", "redis"):
        expect(page.locator(f"tr[data-server={server}] .badge")).to_have_text("up")
    # The overview refreshes itself (the lag chart gets its samples without a reload).
    expect(page.locator("#overview")).to_have_attribute("data-refreshed", re.compile(r"\d+"))
    expect(page.locator(".chart polyline").first).to_be_attached(timeout=TIMEOUT_MS)

    page.click("header form.logout button")
    expect(page.locator(".flash")).to_have_text("You are logged out.")
    page.goto(web.at("/admin/dead-letters"))
    assert "/admin/login" in page.url


def test_dead_letters_of_a_broken_worker_are_replayed_from_the_page_and_converge(
        page: Page, web: Web, admin_key: str, settings: Settings, db: Database,
        service: MemoryService, broken_llm: str, workers: Callable[[Settings], ManagedProcess],
        relays: Relays, neo4j_driver: Driver) -> None:
    broken = settings.model_copy(update={"extractor": "llm", "llm_base_url": broken_llm,
                                         "llm_model": "tiny", "llm_timeout_seconds": 5.0})
    worker = workers(broken)
    relays.start(settings)
    log_in(page, web, admin_key, "/admin/dead-letters")
    expect(page.locator("#no-dead")).to_be_visible()

    # Three memories fail to project: their dead letters appear on the open page by themselves.
    ids = [str(service.store("alice", text)[0].id) for text in (
        "Meeting with John Smith about the Q4 roadmap at Acme Corp",
        "Lunch with Sarah Connor and John Smith on Friday",
        "Dr. Jane Doe works at Globex Corporation")]
    rows = page.locator("tr.dead-row")
    expect(rows).to_have_count(3, timeout=CONVERGE_MS)
    expect(page.locator("#matching")).to_contain_text("3 open dead letters match")

    page.fill("input[name=error]", "HTTP 400")
    page.fill("input[name=user]", "alice")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(3)
    screenshot(page, "dead-letters")
    page.locator("tr.dead-row a").first.click()
    expect(page.locator("tr.attempt")).to_have_count(1)
    expect(page.locator("tr.attempt .error-text")).to_contain_text("LLM endpoint answered HTTP 400")
    screenshot(page, "dead-letter")

    # The cause is fixed: the worker restarts with the rules extractor.
    worker.stop(grace=5)
    workers(settings)

    # Discard one with a reason; the dialog says how many rows it touches.
    page.fill("input[name=reason]", "test data, not worth projecting")
    asked = accept_next_dialog(page)
    page.click("#discard-one button")
    expect(page.locator(".flash")).to_contain_text("Discarded dead letter")
    assert asked == [asked[0]] and asked[0].startswith("Discard 1 dead letter")

    # Replay one selected row, then everything matching the filter.
    page.goto(web.at("/admin/dead-letters?error=HTTP+400"))
    expect(rows).to_have_count(2)
    rows.first.locator("input[type=checkbox]").check()
    asked = accept_next_dialog(page)
    page.click("#replay-selected-button")
    expect(page.locator("#watched")).to_be_visible()
    assert asked == ["Replay the 1 selected dead letter(s)? Each goes back to the outbox with "
                     "its attempts reset."]
    expect(page.locator("#converged")).to_have_text("1", timeout=CONVERGE_MS)

    page.goto(web.at("/admin/dead-letters?error=HTTP+400"))
    expect(rows).to_have_count(1)
    asked = accept_next_dialog(page)
    page.click("#replay-matching button")
    assert asked and asked[0].startswith("Replay 1 open dead letter matching this filter?")
    expect(page.locator("tr.watched-row")).to_have_count(1)
    # The watched rows converge on the page by themselves (pending -> done).
    expect(page.locator("#converged")).to_have_text("1", timeout=CONVERGE_MS)
    expect(page.locator("tr.watched-row")).to_have_attribute("data-delivery", "done")
    screenshot(page, "replayed")

    outbox = Outbox(settings, db)
    counts = outbox.dead_letter_counts()
    assert (counts.open, counts.replayed, counts.discarded) == (0, 2, 1)
    resolved = {d["resolved_by"] for d in outbox.dead_letters(DeadLetterFilter(None)).items}
    assert resolved == {"console:admin-key-1"}
    in_graph = Neo4jGraph(settings, driver=neo4j_driver).snapshot(ids)
    assert len(in_graph) == 2  # the two replayed memories; the discarded one stays out

    page.goto(web.at("/admin?window=5"))
    expect(page.locator("#dead-open")).to_have_text("0")
    expect(page.locator("#outbox")).to_contain_text("done2")  # the replayed rows
    screenshot(page, "overview")


def test_csrf_and_a_cross_site_form_are_refused(
        page: Page, browser: Browser, web: Web, admin_key: str, db: Database,
        settings: Settings) -> None:
    log_in(page, web, admin_key, "/admin/consistency")
    expect(page.locator("h1")).to_have_text("Consistency")
    # A tampered token: the form is refused and no job starts.
    page.locator("#job-form input[name=csrf]").evaluate("input => { input.value = 'forged'; }")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#error-message")).to_contain_text("CSRF check failed")
    page.goto(web.at("/admin/consistency"))
    expect(page.locator("#job-list")).to_have_count(0)

    # Another site's page posting to the console: SameSite=Strict keeps the cookie home.
    other = f"http://localhost:{web.url.rsplit(':', 1)[1]}"  # localhost is another site
    attack = page.context.new_page()
    attack.route(other + "/attack", lambda route: route.fulfill(
        content_type="text/html",
        body=f'<form method="post" action="{web.at("/admin/consistency/jobs")}">'
             '<input name="operation" value="rebuild"><input name="confirmed" value="yes">'
             '<button id="go">go</button></form>'))
    attack.goto(other + "/attack")
    attack.click("#go")
    expect(attack.locator("#error-message")).to_contain_text("Log in first")
    page.reload()
    expect(page.locator("#job-list")).to_have_count(0)
    assert Outbox(settings, db).dead_letter_counts().open == 0


def test_an_expired_session_is_refused_and_live_updates_stop(
        page: Page, start_web: Callable[..., Web], admin_key: str) -> None:
    web = start_web(CONSOLE_SESSION_SECONDS="6")
    log_in(page, web, admin_key)
    expect(page.locator("h1")).to_have_text("Overview")
    # The open page notices on its next refresh, and says so.
    expect(page.locator("#live-notice")).to_contain_text("session has expired",
                                                         timeout=TIMEOUT_MS)
    page.click("header form.logout button")  # a form post after expiry changes nothing
    expect(page.locator("#error-message")).to_contain_text("session has expired")
    page.goto(web.at("/admin/dead-letters"))
    assert "/admin/login" in page.url
    expect(page.locator(".flash.warn")).to_contain_text("session has expired")


@pytest.fixture
def job_runner_process(settings: Settings, tmp_path: Path) -> Iterator[ManagedProcess]:
    """``memctl jobs work``: runs the consistency jobs the console submits."""
    proc = ManagedProcess("runner", [sys.executable, "-m", "app.cli", "jobs", "work"],
                          process_env(settings), tmp_path / "runner.log", cwd=REPO)
    try:
        yield proc
    finally:
        proc.stop(grace=10)


def test_memories_consistency_and_reading_without_javascript(
        page: Page, browser: Browser, web: Web, admin_key: str, settings: Settings,
        db: Database, service: MemoryService, graph: Neo4jGraph,
        job_runner_process: ManagedProcess) -> None:
    first, _ = service.store("carol", "Dr. Jane Doe works at Globex Corporation",
                             metadata={"topic": "work"}, importance=8)
    service.store("carol", "Globex Corporation opened an office in Berlin with Sarah Connor")
    service.store("carol", "Sarah Connor met Bob Jones in Berlin")
    service.store("dave", "POISON: this note cannot be extracted")  # one dead letter
    drain(Projector(db, Outbox(settings, db), graph, PoisonExtractor()), db)

    log_in(page, web, admin_key, "/admin/memories")
    page.click("#users a:text-is('carol')")
    expect(page.locator("tr.memory-row")).to_have_count(3)
    page.fill("input[name=q]", "Jane Doe Globex")
    page.click("#pick-user button[type=submit]")
    expect(page.locator("tr.memory-row").first).to_contain_text("Dr. Jane Doe works at Globex")
    page.locator("tr.memory-row a").first.click()
    expect(page.locator("#graph-status-value")).to_have_text("current")
    graph_svg = page.locator("svg#entity-graph")
    expect(graph_svg.locator("g.node.entity")).to_have_count(2)  # Jane Doe, Globex
    # one relation on from Globex (through another memory): Berlin and Sarah Connor
    expect(graph_svg.locator("g.node.neighbour title")).to_have_text(
        ["person: Berlin", "person: Sarah Connor"])
    expect(graph_svg.locator("g.node.entity title")).to_have_text(
        ["organization: Globex Corporation", "person: Dr. Jane Doe"])
    expect(graph_svg.locator("g.edge.related text")).to_have_text(
        ["co_mentioned", "co_mentioned", "works_at"])
    expect(graph_svg.locator("g.edge.mentions")).to_have_count(2)
    box = graph_svg.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 150  # drawn, not empty
    screenshot(page, "memory")

    # A check started from the page runs with live progress and lists its run.
    page.goto(web.at("/admin/consistency"))
    page.select_option("#operation", "check")
    page.fill("#job-form input[name=user]", "carol")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-state")).to_have_text("done", timeout=CONVERGE_MS)
    expect(page.locator("#result-consistent")).to_be_visible()
    page.goto(web.at("/admin/consistency"))
    expect(page.locator("tr.run")).to_have_count(1)
    screenshot(page, "consistency")

    # Reading needs no script: the same session in a context with JavaScript off.
    quiet = browser.new_context(java_script_enabled=False,
                                storage_state=page.context.storage_state())
    try:
        plain = quiet.new_page()
        plain.goto(web.at(f"/admin/memories/{first.id}?user=carol"))
        expect(plain.locator("#graph-status-value")).to_have_text("current")
        expect(plain.locator("svg#entity-graph g.node")).to_have_count(5)
        plain.goto(web.at("/admin/memories?user=carol"))
        expect(plain.locator("tr.memory-row")).to_have_count(3)
        plain.goto(web.at("/admin"))
        expect(plain.locator("tr[data-server]")).to_have_count(3)
        plain.goto(web.at("/admin/dead-letters"))
        expect(plain.locator("tr.dead-row")).to_have_count(1)
        plain.locator("tr.dead-row a").first.click()
        expect(plain.locator("tr.attempt .error-text")).to_contain_text("content always fails")
        assert plain.locator("html[data-console-js]").count() == 0  # no script ran
    finally:
        quiet.close()
