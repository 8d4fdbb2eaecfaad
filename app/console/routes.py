"""The console's pages: overview, dead letters, consistency, memories; log in and out.

Transport only: every read and every action is a call on the services that ``memctl`` and the
admin API use (``AdminService``, ``Outbox``, ``Consistency`` through the jobs, ``MemoryService``,
``ApiKeys``); nothing here talks to a server or repeats a rule of theirs.

A page renders in full without JavaScript. ``?part=1`` renders only its live region, which the
page's script fetches again every few seconds. Every state-changing form needs the session's
CSRF token and an explicit confirmation (``confirmed=yes``): the script asks with a dialog that
says how many rows the action touches; without the script the server answers with a
confirmation page that says the same.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.consistency import KINDS, OPERATIONS, SyncRequest
from app.console import svg
from app.console.samples import WINDOW_SECONDS
from app.console.session import LOGIN_COOKIE, SESSION_COOKIE
from app.console.web import (
    ConsoleRoute,
    ConsoleUser,
    Post,
    Posted,
    User,
    console_of,
    error_page,
    read_form,
    redirect,
    render,
    same_origin,
    services_of,
    wants_fragment,
)
from app.domain import EventType
from app.errors import JobNotFound, NotFound, ValidationError
from app.jobs import Jobs
from app.outbox import DeadLetterFilter, DeadStatus, ReplaySelection
from app.validation import MAX_BIGINT, check_text

router = APIRouter(prefix="/admin", route_class=ConsoleRoute, include_in_schema=False)

PAGE = 50
HISTORY_PAGE = 20  # the newest versions on a memory's page
EVENT_TYPES: tuple[EventType, ...] = ("upsert", "delete", "resync")
STATUSES: dict[str, DeadStatus | None] = {"dead": "dead", "replayed": "replayed",
                                          "discarded": "discarded", "any": None}
MAX_WATCHED = 200
EXPIRED_GRACE = 3600.0
WINDOWS = {"5": 300.0, "15": 900.0, "60": WINDOW_SECONDS}  # the overview's chart spans, minutes
FLASHES = {
    "replayed": ("ok", "Replayed {n} dead letter{s}; their deliveries are shown below as they "
                       "converge."),
    "none-replayed": ("warn", "Nothing was replayed: no open dead letter was chosen."),
    "discarded": ("ok", "Discarded dead letter {n}."),
    "logged-out": ("ok", "You are logged out."),
}


def _flash(request: Request) -> dict[str, str] | None:
    code = request.query_params.get("flash")
    if code not in FLASHES:
        return None
    kind, text = FLASHES[code]
    n = request.query_params.get("n", "")
    n = n if _digits(n) else "?"
    return {"kind": kind, "text": text.format(n=n, s="" if n == "1" else "s")}


def _digits(value: str) -> bool:
    """Only ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return value.isascii() and value.isdigit()


def _text(value: str | None, field: str, max_chars: int = 500) -> str | None:
    """A form or query field, stripped; None when blank; the input contract's text rules."""
    if value is None or not value.strip():
        return None
    return check_text(value.strip(), field, max_chars=max_chars)


def _int(value: str | None, field: str) -> int | None:
    value = _text(value, field, 20)
    if value is None:
        return None
    if not _digits(value) or not 1 <= int(value) < 2**63:
        raise ValidationError(f"{field}: must be a positive whole number", field)
    return int(value)


def _when(value: str | None, field: str) -> datetime | None:
    """A time from a form (``datetime-local`` or ISO 8601); UTC when no zone is given."""
    value = _text(value, field, 40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{field}: not a date and time like 2026-01-31T12:00",
                              field) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _uuid(value: str | None, field: str) -> uuid.UUID | None:
    value = _text(value, field, 40)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{field}: not a memory id", field) from None


def _jobs(request: Request) -> Jobs:
    """The background sync jobs (in Postgres; the scheduler runs them)."""
    return services_of(request).jobs


def _confirm(request: Request, user: ConsoleUser, action: str, message: str,
             fields: list[tuple[str, str]], cancel: str) -> Response:
    """The confirmation page of a form posted without ``confirmed=yes`` (no script)."""
    return render(request, "confirm.html", {
        "user": user, "title": "Confirm", "section": "", "action": action, "message": message,
        "fields": [(k, v) for k, v in fields if k not in ("csrf", "confirmed")],
        "cancel": cancel})


def _fields(post: Posted) -> list[tuple[str, str]]:
    return [(k, v) for k, values in post.form.fields.items() for v in values]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- log in and out ----------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a console path of this site (never another host) is followed after logging in."""
    if target and target.startswith("/admin") and not target.startswith("//") \
            and "\\" not in target and "://" not in target:
        return target
    return "/admin"


def _login_page(request: Request, status: int = 200, error: str | None = None) -> Response:
    signer = console_of(request).signer
    cookie = request.cookies.get(LOGIN_COOKIE)
    token = signer.login_token(cookie)
    fresh = None
    if token is None:
        fresh, token = signer.login_cookie()
    reason = request.query_params.get("reason")
    notice = {"expired": "Your session has expired: log in again.",
              "revoked": "The key of your session is no longer valid: log in again."}.get(
                  reason or "")
    response = render(request, "login.html", {
        "title": "Log in", "section": "", "token": token, "error": error, "notice": notice,
        "flash": _flash(request), "next": _safe_next(request.query_params.get("next"))},
        status)
    if fresh is not None:
        _set_cookie(request, response, LOGIN_COOKIE, fresh, 3600)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str,
                max_age: float) -> None:
    response.set_cookie(name, value, max_age=int(max_age), path="/admin", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """An admin key, posted in the form body (never in a URL), becomes a session cookie."""
    form = await read_form(request)
    signer = console_of(request).signer
    if not same_origin(request) or not signer.login_ok(request.cookies.get(LOGIN_COOKIE),
                                                       form.get("csrf")):
        return error_page(request, 403, "Refused", "This login form has expired or did not "
                          "come from this console. Reload the page and try again.")
    key = form.get("key") or ""
    services = services_of(request)
    principal = await run_in_threadpool(services.keys.identify, key) if key else None
    if principal is None:
        request.app.state.guard.rejected(request, "console login")
        return _login_page(request, 401, "That is not a valid API key.")
    if principal.scope != "admin":
        return _login_page(request, 403, "That is a service key: only an admin key can log "
                                         "in to the console.")
    cookie, _ = signer.issue(principal.key_id, services.keys.digest(key))
    response = redirect(_safe_next(form.get("next")))
    # The signed expiry inside is what counts; the cookie outlives it by a grace period so the
    # console can say "your session has expired" rather than "log in first".
    _set_cookie(request, response, SESSION_COOKIE, cookie, signer.lifetime + EXPIRED_GRACE)
    response.delete_cookie(LOGIN_COOKIE, path="/admin")
    return response


@router.post("/logout")
def logout(post: Post) -> Response:
    response = redirect("/admin/login?flash=logged-out")
    response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


# -- overview ----------------------------------------------------------------------------------


@router.get("")
def overview(request: Request, user: User) -> Response:
    services = services_of(request)
    health = services.admin.health().as_dict()
    stats = services.admin.stats()
    done_per_second = round(services.outbox.done_within(60) / 60, 2)
    window = WINDOWS.get(request.query_params.get("window") or "60", WINDOW_SECONDS)
    sampler = console_of(request).sampler
    samples = sampler.samples(window) if sampler is not None else []
    now = time.time()
    charts = [
        svg.line_chart("Lag", "s", [(s.at, s.lag_seconds) for s in samples], now, window),
        svg.line_chart("Backlog", "rows", [(s.at, float(s.backlog)) for s in samples], now,
                       window),
        svg.line_chart("Throughput", "rows/s", [(s.at, s.done_per_second) for s in samples],
                       now, window),
    ]
    last = stats["last_check"]
    context = {"user": user, "title": "Overview", "section": "overview", "health": health,
               "stats": stats, "done_per_second": done_per_second, "charts": charts,
               "last_check": last, "last_by_kind": (last or {}).get("result", {}).get(
                   "by_kind", {}),
               "window_minutes": int(window / 60), "windows": list(WINDOWS),
               "kept_minutes": int(WINDOW_SECONDS / 60),
               "sample_seconds": console_of(request).settings.console_sample_seconds}
    if wants_fragment(request):
        return render(request, "_overview.html", context)
    return render(request, "overview.html", context)


# -- dead letters ------------------------------------------------------------------------------


def _dead_filter(params: Any) -> tuple[DeadLetterFilter, dict[str, str]]:
    """The filter of the list (query) or of a replay (form), and its fields for links."""
    status = params.get("status") or "dead"
    if status not in STATUSES:
        raise ValidationError("status: dead, replayed, discarded or any", "status")
    event_type = _text(params.get("event_type"), "event_type", 20)
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ValidationError("event_type: upsert, delete or resync", "event_type")
    f = DeadLetterFilter(STATUSES[status], _text(params.get("user"), "user", 128), event_type,
                         _text(params.get("error"), "error"),
                         _when(params.get("since"), "since"), _when(params.get("until"), "until"),
                         _uuid(params.get("memory"), "memory"))
    shown = {"status": status}
    for name in ("user", "event_type", "error", "since", "until", "memory"):
        value = _text(params.get(name), name)
        if value is not None:
            shown[name] = value
    return f, shown


def _watched(request: Request) -> list[int]:
    raw = request.query_params.get("watch", "")
    ids = [int(i) for i in raw.split(",") if _digits(i) and len(i) < 19]
    return list(dict.fromkeys(ids))[:MAX_WATCHED]


@router.get("/dead-letters")
def dead_letters(request: Request, user: User) -> Response:
    outbox = services_of(request).outbox
    f, shown = _dead_filter(request.query_params)
    before_id = _int(request.query_params.get("before_id"), "before_id")
    page = outbox.dead_letters(f, limit=PAGE, before_id=before_id)
    matching = outbox.count_dead_letters(f)
    open_matching = matching if f.status == "dead" else outbox.count_dead_letters(f.open())
    watch = _watched(request)
    watched = outbox.deliveries(watch)
    states = {d["id"]: d["delivery"] for d in outbox.deliveries(
        [int(d["id"]) for d in page.items if d["status"] != "dead"])}
    rows = [{**d, "delivery": states.get(d["id"])} for d in page.items]
    query = urllib.parse.urlencode(shown)
    context = {
        "user": user, "title": "Dead letters", "section": "dead", "rows": rows,
        "shown": shown, "query": query, "matching": matching, "open_matching": open_matching,
        "everything": not f.criteria, "next_before_id": page.next_before_id,
        "before_id": before_id, "watched": watched, "watch": ",".join(map(str, watch)),
        "converged": sum(1 for w in watched if w["delivery"] in ("done", None)),
        "failed_again": sum(1 for w in watched if w["delivery"] == "dead"),
        "event_types": EVENT_TYPES, "statuses": list(STATUSES), "flash": _flash(request),
        "refresh_url": request.url.path + "?" + urllib.parse.urlencode(
            {**shown, **({"before_id": before_id} if before_id else {}),
             **({"watch": ",".join(map(str, watch))} if watch else {}), "part": "1"}),
    }
    if wants_fragment(request):
        return render(request, "_dead_letters.html", context)
    return render(request, "dead_letters.html", context)


@router.get("/dead-letters/{dead_letter_id}")
def dead_letter(request: Request, user: User, dead_letter_id: int) -> Response:
    outbox = services_of(request).outbox
    letter = outbox.dead_letter(dead_letter_id)
    delivery = outbox.deliveries([dead_letter_id])[0]
    return render(request, "dead_letter.html", {
        "user": user, "title": f"Dead letter {dead_letter_id}", "section": "dead",
        "letter": letter, "delivery": delivery})


def _replayed(ids: list[int]) -> Response:
    if not ids:
        return redirect("/admin/dead-letters?flash=none-replayed")
    return redirect(f"/admin/dead-letters?flash=replayed&n={len(ids)}&watch="
                    + ",".join(map(str, ids[:MAX_WATCHED])))


@router.post("/dead-letters/replay")
def replay_dead_letters(request: Request, post: Post) -> Response:
    """Replay the selected ids, every open letter matching the filter, or all open ones."""
    outbox = services_of(request).outbox
    mode = post.form.get("mode")
    if mode == "ids":
        ids = [_int(i, "ids") for i in post.form.values("ids")]
        selection = ReplaySelection(ids=tuple(i for i in ids if i is not None))
        count = len(set(selection.ids or ()))
        what = f"the selected {_plural(count, 'dead letter')}"
    elif mode == "filter":
        f, _ = _dead_filter(post.form)
        selection = (ReplaySelection(filter=f.open()) if f.criteria
                     else ReplaySelection(everything=True))
        count = outbox.count_dead_letters(f.open())
        what = (f"{_plural(count, 'open dead letter')} matching the filter" if f.criteria
                else f"all {_plural(count, 'open dead letter')}")
    else:
        raise ValidationError("mode: ids or filter", "mode")
    if post.form.get("confirmed") != "yes":
        return _confirm(request, post.user, "/admin/dead-letters/replay",
                        f"Replay {what}? Each goes back to the outbox with its attempts reset.",
                        _fields(post), "/admin/dead-letters")
    result = outbox.replay(selection, post.user.actor)
    return _replayed(result.replayed)


@router.post("/dead-letters/{dead_letter_id}/replay")
def replay_dead_letter(request: Request, post: Post, dead_letter_id: int) -> Response:
    if post.form.get("confirmed") != "yes":
        return _confirm(request, post.user, f"/admin/dead-letters/{dead_letter_id}/replay",
                        f"Replay 1 dead letter (#{dead_letter_id})?", _fields(post),
                        f"/admin/dead-letters/{dead_letter_id}")
    result = services_of(request).outbox.replay_one(dead_letter_id, post.user.actor)
    return _replayed(result.replayed)


@router.post("/dead-letters/{dead_letter_id}/discard")
def discard_dead_letter(request: Request, post: Post, dead_letter_id: int) -> Response:
    reason = _text(post.form.get("reason"), "reason", 1000)
    if reason is None:
        raise ValidationError("reason: say why this dead letter is discarded", "reason")
    if post.form.get("confirmed") != "yes":
        return _confirm(request, post.user, f"/admin/dead-letters/{dead_letter_id}/discard",
                        f"Discard 1 dead letter (#{dead_letter_id})? Its event is given up "
                        "and will not be delivered.", _fields(post),
                        f"/admin/dead-letters/{dead_letter_id}")
    services_of(request).outbox.discard(dead_letter_id, reason, post.user.actor)
    return redirect(f"/admin/dead-letters?flash=discarded&n={dead_letter_id}")


# -- consistency -------------------------------------------------------------------------------


def _by_kind(run: dict[str, Any]) -> dict[str, int]:
    result = run.get("result") or {}
    by_kind = result.get("by_kind") if isinstance(result, dict) else None
    return by_kind if isinstance(by_kind, dict) else {}


@router.get("/consistency")
def consistency(request: Request, user: User) -> Response:
    services = services_of(request)
    who = _text(request.query_params.get("user"), "user", 128)
    context: dict[str, Any] = {
        "user": user, "title": "Consistency", "section": "consistency",
        "jobs": _jobs(request).page(limit=20).items, "kinds": KINDS, "operations": OPERATIONS,
        "finding_user": who or ""}
    if not wants_fragment(request):
        runs = services.consistency.runs(20)
        context.update({
            "runs": [{**r, "by_kind": _by_kind(r)} for r in runs],
            "open_by_kind": services.admin.stats()["inconsistencies"],
            "findings": services.consistency.open_findings(who, 100)})
        return render(request, "consistency.html", context)
    return render(request, "_jobs.html", context)


@router.post("/consistency/jobs")
def start_job(request: Request, post: Post) -> Response:
    form = post.form
    operation = form.get("operation") or ""
    rebuild = operation == "rebuild"
    request_ = SyncRequest(
        operation,  # type: ignore[arg-type]  # SyncRequest validates it
        _text(form.get("user"), "user", 128),
        None if rebuild else _int(form.get("limit"), "limit"),
        not rebuild and form.get("dry_run") == "yes",
        rebuild and form.get("reextract") == "yes")
    changes = operation in ("repair", "full", "rebuild") and not request_.dry_run
    if changes and form.get("confirmed") != "yes":
        services = services_of(request)
        scope = f"user {request_.user_id}" if request_.user_id else "every user"
        if operation == "repair":
            n = len(services.consistency.open_findings(request_.user_id, 1_000_000))
            message = f"Repair {_plural(n, 'open finding')} of {scope}?"
        else:
            n = services.consistency.total(request_.user_id, request_.limit)
            message = (f"Clear the graph of {scope} and re-project {_plural(n, 'memory')} "
                       "from Postgres?" if rebuild else
                       f"Check {_plural(n, 'memory')} of {scope}, then repair what it finds?")
        return _confirm(request, post.user, "/admin/consistency/jobs", message, _fields(post),
                        "/admin/consistency")
    job = _jobs(request).submit(request_, post.user.actor)
    return redirect(f"/admin/consistency/jobs/{job.id}")


@router.post("/consistency/jobs/{job_id}/cancel")
def cancel_job(request: Request, post: Post, job_id: int) -> Response:
    if not 1 <= job_id <= MAX_BIGINT:
        return error_page(request, 404, "not found", f"No job {job_id}.")
    try:
        _jobs(request).cancel(job_id, post.user.actor)
    except JobNotFound:
        return error_page(request, 404, "not found", f"No job {job_id}.")
    return redirect(f"/admin/consistency/jobs/{job_id}")


@router.get("/consistency/jobs/{job_id}")
def job(request: Request, user: User, job_id: int) -> Response:
    try:
        found = _jobs(request).get(job_id) if 1 <= job_id <= MAX_BIGINT else None
    except JobNotFound:
        found = None
    if found is None:
        return error_page(request, 404, "not found", f"No job {job_id}.")
    context = {"user": user, "title": f"Job {job_id}", "section": "consistency", "job": found}
    if wants_fragment(request):
        return render(request, "_job.html", context)
    return render(request, "job.html", context)


# -- memories ----------------------------------------------------------------------------------


@router.get("/memories")
def memories(request: Request, user: User) -> Response:
    services = services_of(request)
    q = request.query_params
    who = _text(q.get("user"), "user", 128)
    prefix = _text(q.get("prefix"), "prefix", 128)
    after = _text(q.get("after"), "after", 128)
    context: dict[str, Any] = {"user": user, "title": "Memories", "section": "memories",
                               "who": who, "prefix": prefix or "", "query": "", "items": None,
                               "scored": False, "next_cursor": None, "users": None}
    if who is None:
        users = services.admin.users(prefix, after=after, limit=PAGE + 1)
        context["users"] = users[:PAGE]
        context["next_after"] = users[PAGE - 1]["user_id"] if len(users) > PAGE else None
        return render(request, "memories.html", context)
    search = _text(q.get("q"), "q", services.settings.max_content_chars)
    if search is not None:
        found = services.retrieval.search(who, search, top_k=20).hits
        context.update({"items": [h.memory for h in found], "scores": [h.score for h in found],
                        "scored": True, "query": search})
    else:
        page = services.memories.list(who, limit=PAGE, cursor=_text(q.get("cursor"), "cursor"))
        context.update({"items": page.items, "next_cursor": page.next_cursor})
    return render(request, "memories.html", context)


@router.get("/memories/{memory_id}")
def memory(request: Request, user: User, memory_id: str) -> Response:
    who = _text(request.query_params.get("user"), "user", 128)
    if who is None:
        raise ValidationError("user: whose memory (the user id) is required", "user")
    services = services_of(request)
    view = services.admin.memory_view(who, memory_id)
    try:
        history = services.memories.history(who, view.memory.id, limit=HISTORY_PAGE).items
    except NotFound:  # a row written around the API has none
        history = []
    around = view.neighbourhood
    picture = svg.entity_graph(around, view.memory.content) if around is not None else None
    names = ({e.key: f"{e.type}: {e.name}" for e in (*around.entities, *around.neighbours)}
             if around is not None else {})
    return render(request, "memory.html", {
        "user": user, "title": "Memory", "section": "memories", "view": view,
        "m": view.memory, "picture": picture, "names": names, "history": history,
        "history_page": HISTORY_PAGE})

