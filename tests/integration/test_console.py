"""The admin console over HTTP on the real servers: sign-in, sessions, CSRF, headers, actions.

The browser tests (tests/browser) drive the same pages in Chromium; these check what a browser
cannot show directly: cookie attributes, status codes, refusals, and that every action is the
service layer's (dead letters resolved by ``console:admin-key-1``, check runs stored).
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from app.api import create_app
from app.console.session import SESSION_COOKIE
from app.db.connector import Database
from app.graph.neo4j import Neo4jGraph
from app.jobs import JobRunner
from app.keys import ApiKeys
from app.outbox import DeadLetterFilter, Outbox
from app.projector import Projector
from app.settings import Settings
from app.store import MemoryService
from tests.conftest import PoisonExtractor, drain, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.servers
ORIGIN = "http://testserver"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # The embedder of the `service` fixture, so the console's search finds what it stored.
    web = settings.model_copy(update={"embedding_provider": "hashing"})
    with TestClient(create_app(web), follow_redirects=False) as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def login(client: TestClient, key: str) -> Any:
    form = client.get("/admin/login")
    assert form.status_code == 200
    return client.post("/admin/login", data={"key": key, "csrf": csrf_of(form.text),
                                             "next": "/admin/dead-letters"})


@pytest.fixture
def admin(client: TestClient, admin_key: str) -> TestClient:
    """The client, logged in with the admin key."""
    assert login(client, admin_key).status_code == 303
    return client


def csrf(client: TestClient, page: str = "/admin") -> str:
    return csrf_of(client.get(page).text)


@pytest.fixture
def projector(settings: Settings, db: Database, graph: Neo4jGraph) -> Projector:
    return Projector(db, Outbox(settings, db), graph, PoisonExtractor())


def dead_world(service: MemoryService, projector: Projector, db: Database) -> list[str]:
    """Three memories of alice whose projection failed permanently (dead letters), one fine."""
    ids = [str(service.store("alice", f"POISON note {i} about Acme Corp")[0].id)
           for i in range(3)]
    service.store("alice", "Meeting with John Smith about the Q4 roadmap at Acme Corp")
    drain(projector, db)
    return ids


def test_pages_need_a_session_and_send_a_strict_csp(client: TestClient) -> None:
    answer = client.get("/admin/dead-letters?user=alice")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/login?next=%2Fadmin%2Fdead-letters%3Fuser%3Dalice"
    page = client.get("/admin/login")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script src=\"/admin/static/console.js\"" in page.text
    assert "<script>" not in page.text and " style=" not in page.text
    assert client.get("/admin/static/console.js").headers["content-security-policy"] == csp
    # a fragment request (the live updates) is refused, not redirected
    assert client.get("/admin?part=1").status_code == 401


def test_an_admin_key_logs_in_to_a_session_cookie_that_never_holds_the_key(
        client: TestClient, admin_key: str) -> None:
    answer = login(client, admin_key)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/dead-letters"
    cookie = next(h for h in answer.headers.get_list("set-cookie")
                  if h.startswith(SESSION_COOKIE + "="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/admin" in cookie.lower()
    assert "secure" not in attributes  # plain http here; Secure when served over TLS
    assert admin_key not in cookie
    for path in ("/admin", "/admin/dead-letters", "/admin/consistency", "/admin/memories"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert admin_key not in page.text
        assert "console:admin-key-1" in page.text


def test_over_tls_the_cookies_are_secure(settings: Settings, admin_key: str) -> None:
    with TestClient(create_app(settings), base_url="https://testserver",
                    follow_redirects=False) as tls:
        form = tls.get("/admin/login")
        assert "secure" in form.headers["set-cookie"].lower()  # the login cookie
        answer = tls.post("/admin/login", data={"key": admin_key, "csrf": csrf_of(form.text)},
                          headers={"Origin": "https://testserver"})
        cookie = next(h for h in answer.headers.get_list("set-cookie")
                      if h.startswith(SESSION_COOKIE + "="))
        assert "secure" in {a.strip().lower() for a in cookie.split(";")}


def test_a_service_key_or_a_wrong_key_cannot_log_in(client: TestClient, service_key: str
                                                    ) -> None:
    refused = login(client, service_key)
    assert refused.status_code == 403 and "only an admin key" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    assert service_key not in refused.text
    wrong = login(client, "adm_not-a-key")
    assert wrong.status_code == 401 and "not a valid API key" in wrong.text
    assert client.get("/admin").status_code == 303


def test_login_needs_the_forms_own_token(client: TestClient, admin_key: str) -> None:
    client.get("/admin/login")
    answer = client.post("/admin/login", data={"key": admin_key, "csrf": "forged"})
    assert answer.status_code == 403
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_forms_without_the_sessions_csrf_token_change_nothing(
        admin: TestClient, service: MemoryService, projector: Projector, db: Database) -> None:
    dead_world(service, projector, db)
    outbox = Outbox(admin.app.state.services.settings, db)  # type: ignore[attr-defined]
    letter = outbox.dead_letters().items[0]["id"]
    form = {"mode": "filter", "user": "alice", "confirmed": "yes"}
    assert admin.post("/admin/dead-letters/replay", data=form).status_code == 403
    assert admin.post("/admin/dead-letters/replay",
                      data={**form, "csrf": "x" * 43}).status_code == 403
    token = csrf(admin)
    # the right token from another site's page
    assert admin.post("/admin/dead-letters/replay", data={**form, "csrf": token},
                      headers={"Origin": "http://evil.example"}).status_code == 403
    assert admin.post(f"/admin/dead-letters/{letter}/discard",
                      data={"reason": "x", "confirmed": "yes"}).status_code == 403
    assert admin.post("/admin/logout", data={}).status_code == 403
    assert outbox.dead_letter_counts().open == 3  # nothing was replayed or discarded
    assert admin.post("/admin/dead-letters/replay", data={**form, "csrf": token},
                      headers={"Origin": ORIGIN}).status_code == 303
    assert outbox.dead_letter_counts().open == 0


def test_an_expired_session_is_refused(admin: TestClient) -> None:
    token = csrf(admin)
    signer = admin.app.state.console.signer  # type: ignore[attr-defined]
    signer.clock = lambda: 4e9  # far past the session's expiry
    answer = admin.get("/admin/consistency")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/admin/login?next=")
    assert "reason=expired" in answer.headers["location"]
    posted = admin.post("/admin/consistency/jobs", data={"operation": "check", "csrf": token})
    assert posted.status_code == 401 and "session has expired" in posted.text
    assert admin.get("/admin?part=1").status_code == 401


def test_a_revoked_key_ends_its_sessions(settings: Settings, db: Database) -> None:
    keys = ApiKeys(settings, db)
    new = keys.create("console user", "admin", actor="test")
    uncached = settings.model_copy(update={"api_key_cache_seconds": 0.0})
    with TestClient(create_app(uncached), follow_redirects=False) as client:
        assert login(client, new.secret).status_code == 303
        assert f"console:key-{new.record['id']}" in client.get("/admin").text
        keys.revoke(int(new.record["id"]), actor="test")
        refused = client.get("/admin")
        assert refused.status_code == 303 and "reason=revoked" in refused.headers["location"]


def test_logout_ends_the_session(admin: TestClient) -> None:
    answer = admin.post("/admin/logout", data={"csrf": csrf(admin)})
    assert answer.status_code == 303
    assert 'memctl_console=""' in answer.headers["set-cookie"]
    assert admin.get("/admin").status_code == 303


def test_replay_asks_how_many_then_goes_through_the_outbox(
        admin: TestClient, service: MemoryService, projector: Projector, db: Database,
        settings: Settings) -> None:
    ids = dead_world(service, projector, db)
    page = admin.get("/admin/dead-letters?error=always+fails")
    assert page.status_code == 200
    assert page.text.count('class="dead-row"') == 3
    assert "<strong>3</strong> open dead letters match this filter" in page.text
    outbox = Outbox(settings, db)
    letters = [d["id"] for d in outbox.dead_letters().items]
    token = csrf_of(page.text)
    # without the script: a confirmation page that says how many rows
    asked = admin.post("/admin/dead-letters/replay", data={
        "csrf": token, "mode": "ids", "ids": [str(letters[0]), str(letters[1])]})
    assert asked.status_code == 200
    assert "Replay the selected 2 dead letters?" in asked.text
    asked = admin.post("/admin/dead-letters/replay", data={
        "csrf": token, "mode": "filter", "error": "always fails", "user": "alice"})
    assert "Replay 3 open dead letters matching the filter?" in asked.text
    assert outbox.dead_letter_counts().open == 3
    detail = admin.get(f"/admin/dead-letters/{letters[0]}")
    assert detail.text.count('class="attempt"') == 1  # permanent: one attempt, then dead
    assert "this content always fails" in detail.text
    done = admin.post(f"/admin/dead-letters/{letters[0]}/replay",
                      data={"csrf": token, "confirmed": "yes"})
    assert done.status_code == 303 and f"watch={letters[0]}" in done.headers["location"]
    assert outbox.dead_letter(letters[0])["resolved_by"] == "console:admin-key-1"
    watching = admin.get(done.headers["location"])
    assert "Replayed 1 dead letter;" in watching.text and 'data-delivery="pending"' in watching.text
    refused = admin.post(f"/admin/dead-letters/{letters[1]}/discard",
                         data={"csrf": token, "reason": " ", "confirmed": "yes"})
    assert refused.status_code == 422 and "reason" in refused.text
    gone = admin.post(f"/admin/dead-letters/{letters[1]}/discard",
                      data={"csrf": token, "reason": "test data", "confirmed": "yes"})
    assert gone.status_code == 303
    assert outbox.dead_letter(letters[1])["status"] == "discarded"
    again = admin.post(f"/admin/dead-letters/{letters[1]}/replay",
                       data={"csrf": token, "confirmed": "yes"})
    assert again.status_code == 409 and "already discarded" in again.text
    assert admin.get("/admin/dead-letters/999999").status_code == 404
    every = outbox.dead_letters(DeadLetterFilter(None)).items
    assert {str(d["memory_id"]) for d in every} == set(ids)


def test_a_check_runs_as_a_job_and_its_run_is_listed(
        admin: TestClient, service: MemoryService, projector: Projector, db: Database,
        job_runner: JobRunner) -> None:
    service.store("bob", "Lunch with Sarah Connor in Berlin")
    drain(projector, db)
    token = csrf(admin, "/admin/consistency")
    rebuild = admin.post("/admin/consistency/jobs", data={"csrf": token,
                                                          "operation": "rebuild"})
    assert "re-project 1 memory from Postgres?" in rebuild.text  # asks first
    started = admin.post("/admin/consistency/jobs", data={"csrf": token, "operation": "check",
                                                          "user": "bob"})
    assert started.status_code == 303
    job_url = started.headers["location"]
    wait_for(lambda: 'data-state="done"' in admin.get(job_url + "?part=1").text, 30,
             "the check job to finish")
    page = admin.get(job_url)
    assert 'id="result-consistent"' in page.text and "Checked 1 memories" in page.text
    runs = admin.get("/admin/consistency")
    assert runs.text.count('class="run"') == 1 and "console:admin-key-1" in runs.text


def test_a_queued_job_is_cancelled_from_its_page(admin: TestClient) -> None:
    token = csrf(admin, "/admin/consistency")
    started = admin.post("/admin/consistency/jobs", data={"csrf": token, "operation": "check"})
    job_url = started.headers["location"]
    page = admin.get(job_url)  # no runner here: the job waits in the queue
    assert 'data-state="queued"' in page.text and 'id="job-cancel"' in page.text
    assert admin.post(job_url + "/cancel", data={"csrf": "forged"}).status_code == 403
    assert 'data-state="queued"' in admin.get(job_url).text
    cancelled = admin.post(job_url + "/cancel", data={"csrf": token})
    assert cancelled.status_code == 303 and cancelled.headers["location"] == job_url
    after = admin.get(job_url)
    assert 'data-state="cancelled"' in after.text and 'id="job-cancel"' not in after.text
    assert "console:admin-key-1" in after.text
    again = admin.post(job_url + "/cancel", data={"csrf": token})
    assert again.status_code == 409
    assert admin.post("/admin/consistency/jobs/424242/cancel",
                      data={"csrf": token}).status_code == 404


def test_the_memory_page_shows_graph_status_and_the_entity_graph(
        admin: TestClient, service: MemoryService, projector: Projector, db: Database) -> None:
    first, _ = service.store("carol", "Dr. Jane Doe works at Globex Corporation")
    service.store("carol", "Globex Corporation opened an office in Berlin")
    behind, _ = service.store("carol", "Email Jane Doe about the budget")
    drain(projector, db)
    service.update("carol", behind.id, content="Email Jane Doe about the Q3 budget")
    users = admin.get("/admin/memories?prefix=car")
    assert ">carol</a>" in users.text
    listed = admin.get("/admin/memories?user=carol")
    assert listed.text.count('class="memory-row"') == 3
    found = admin.get("/admin/memories?user=carol&q=Globex office")
    assert found.text.count('class="memory-row"') == 3 and "score" in found.text
    page = admin.get(f"/admin/memories/{first.id}?user=carol")
    assert 'id="graph-status-value">current<' in page.text
    assert 'id="entity-graph"' in page.text
    assert re.search(r'class="node entity type-person"[^>]*>\s*<title>person: Dr. Jane Doe',
                     page.text)
    # Berlin is one relation away (through Globex, mentioned by another memory)
    assert re.search(r'class="node neighbour type-person"[^>]*>\s*<title>person: Berlin',
                     page.text)
    assert "co_mentioned" in page.text and "works_at" in page.text
    lagging = admin.get(f"/admin/memories/{behind.id}?user=carol")
    assert 'id="graph-status-value">behind<' in lagging.text
    assert "outbox" in lagging.text  # its update waits in the outbox
    trail = lagging.text[lagging.text.index('id="history"'):]
    assert trail.count('class="history-entry"') == 2  # both versions, newest first
    assert trail.index("about the Q3 budget") < trail.index("about the budget")
    assert admin.get(f"/admin/memories/{first.id}?user=alice").status_code == 404
    assert admin.get(f"/admin/memories/{uuid.uuid4()}?user=carol").status_code == 404


def test_the_overview_reads_every_server(admin: TestClient, db: Database) -> None:
    page = admin.get("/admin")
    for server in ("postgres", "neo4j", "redis"):
        assert f'data-server="{server}"' in page.text
    assert 'id="dead-open">0<' in page.text
    assert page.text.count('class="chart"') == 3
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 0


def test_the_console_can_be_turned_off(test_servers: Any, settings: Settings) -> None:
    off = settings.model_copy(update={"console_enabled": False})
    with TestClient(create_app(off), follow_redirects=False) as plain:
        assert plain.get("/admin").status_code == 404
        assert plain.get("/admin/static/console.js").status_code == 404


@pytest.mark.parametrize(("path", "status"), [
    ("/admin/dead-letters?user=%00", 422),
    ("/admin/dead-letters?error=" + "e" * 501, 422),
    ("/admin/dead-letters?before_id=%C2%B2", 422),  # a digit to str.isdigit, not to int
    ("/admin/dead-letters?before_id=99999999999999999999", 422),
    ("/admin/dead-letters?since=yesterday", 422),
    ("/admin/dead-letters?status=weird", 422),
    ("/admin/dead-letters?event_type=insert", 422),
    ("/admin/dead-letters?memory=nope", 422),
    ("/admin/dead-letters?watch=%C2%B2,abc,1", 200),  # unknown ids are not watched
    ("/admin/dead-letters/99999999999999999999", 404),
    ("/admin/memories?user=%00", 422),
    ("/admin/memories?user=" + "x" * 200, 422),
    ("/admin/memories/not-a-uuid?user=alice", 422),
    (f"/admin/memories/{uuid.uuid4()}", 422),  # whose memory is not said
    ("/admin/memories?user=alice&cursor=garbage", 422),
    ("/admin/consistency/jobs/7", 404),
    ("/admin?window=7", 200),  # an unknown chart span falls back to an hour
])
def test_hostile_input_answers_4xx_never_5xx(admin: TestClient, path: str, status: int) -> None:
    answer = admin.get(path)
    assert answer.status_code == status, answer.text[-500:]
    assert answer.headers["content-type"].startswith("text/html")


def test_login_never_sends_the_browser_to_another_site(client: TestClient, admin_key: str
                                                       ) -> None:
    for target in ("//evil.example/admin", "https://evil.example/admin", "/admin\\@evil",
                   "/api/admin/stats"):
        form = client.get("/admin/login")
        answer = client.post("/admin/login", data={"key": admin_key, "next": target,
                                                   "csrf": csrf_of(form.text)})
        assert answer.headers["location"] == "/admin", target
