"""The console's HTTP plumbing: templates, security headers, sign-in, CSRF, forms, error pages.

Every console response carries a strict Content-Security-Policy (only the project's own files,
no inline script, no framing). Errors of the service layer become an HTML page with the error's
own status; a missing or expired session sends a page view to the login form, and refuses a
form post or a live-update request with 401.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from app.console.samples import OutboxSampler
from app.console.session import SESSION_COOKIE, Expired, Session, Signer
from app.errors import MemoryPersistenceError, ValidationError
from app.keys import Principal
from app.settings import Settings
from app.wiring import Services

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "object-src 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}
MAX_FORM_FIELDS = 2000


class Console:
    """The console of one web process: its signer, and (once started) its sampler."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.console_session_secret.get_secret_value()
        if not secret:
            log.warning("console: CONSOLE_SESSION_SECRET is not set; sessions are signed with "
                        "a random secret and work only with this web process",
                        extra={"action": "console.random_secret"})
            secret = secrets.token_urlsafe(32)
        self.settings = settings
        self.signer = Signer(secret.encode(), settings.console_session_seconds)
        self.templates = environment()
        self.sampler: OutboxSampler | None = None

    def start(self, services: Services) -> None:
        """Begin sampling the outbox."""
        self.sampler = OutboxSampler(services.outbox, self.settings.console_sample_seconds)
        self.sampler.start()

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()


def _when(value: object) -> str:
    """A timestamp (ISO text or datetime) as ``2026-01-31 12:00:05`` in UTC."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if not isinstance(value, datetime):
        return str(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def environment() -> Environment:
    """The console's templates, autoescaped; an undefined name is an error, not a blank."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str,
                                                 ensure_ascii=False)
    return env


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def services_of(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:  # pragma: no cover - a programming error, not a request error
        raise RuntimeError("the app was not started: use it inside its lifespan")
    return services


# -- responses --------------------------------------------------------------------------------


def secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def render(request: Request, template: str, context: Mapping[str, Any],
           status: int = 200) -> HTMLResponse:
    """A page (or a fragment, for templates named ``_*.html``) with the security headers."""
    html = console_of(request).templates.get_template(template).render(
        {"request": request, "user": None, "flash": None, **context})
    response = HTMLResponse(html, status_code=status)
    secured(response)
    return response


def redirect(url: str) -> Response:
    """See other (303): after a form post, the browser GETs ``url``."""
    return secured(RedirectResponse(url, status_code=303))


def wants_fragment(request: Request) -> bool:
    return request.query_params.get("part") == "1"


# -- sign-in -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleUser:
    """The admin behind a request: the key's principal and the session (never the key)."""

    principal: Principal
    session: Session
    csrf: str

    @property
    def actor(self) -> str:
        """Recorded on replays, discards and jobs: ``console:admin-key-1``, ``console:key-7``."""
        return "console:" + self.principal.actor.removeprefix("api:")


class LoginRequired(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "login", "expired" or "revoked"


class CsrfRefused(Exception):
    pass


async def console_user(request: Request) -> ConsoleUser:
    """The signed-in admin; LoginRequired without a valid, unexpired session of a valid key."""
    console = console_of(request)
    try:
        session = console.signer.session(request.cookies.get(SESSION_COOKIE))
    except Expired:
        raise LoginRequired("expired") from None
    if session is None:
        raise LoginRequired("login")
    principal = await run_in_threadpool(services_of(request).keys.current, session.key_id,
                                        session.key_digest)
    if principal is None or principal.scope != "admin":
        raise LoginRequired("revoked")
    return ConsoleUser(principal, session, console.signer.csrf(session))


User = Annotated[ConsoleUser, Depends(console_user)]


# -- forms -------------------------------------------------------------------------------------


class Form:
    """A url-encoded form body: every field's values as text."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str) -> str | None:
        """The field's first value, stripped; None when absent or blank."""
        values = self.fields.get(name)
        value = values[0].strip() if values else ""
        return value or None

    def values(self, name: str) -> list[str]:
        return [v for v in self.fields.get(name, []) if v.strip()]


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def read_form(request: Request) -> Form:
    """The posted form (url-encoded only; the body size is bounded by the app's BodyLimit)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if not body:
        return Form({})
    if kind != "application/x-www-form-urlencoded":
        raise ValidationError("the console accepts url-encoded forms only", "body")
    try:
        text = body.decode("utf-8")
        fields = urllib.parse.parse_qs(text, keep_blank_values=True,
                                       max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("the form could not be read", "body") from None
    return Form(fields)


@dataclass(frozen=True)
class Posted:
    """A state-changing form that passed the CSRF check, and who sent it."""

    user: ConsoleUser
    form: Form


async def posted(request: Request, user: User) -> Posted:
    """The form of a signed-in admin, refused unless it carries the session's CSRF token and
    comes from this console's own origin."""
    form = await read_form(request)
    if not same_origin(request) or not console_of(request).signer.csrf_ok(
            user.session, form.get("csrf")):
        raise CsrfRefused
    return Posted(user, form)


Post = Annotated[Posted, Depends(posted)]


# -- errors ------------------------------------------------------------------------------------


def _login_url(request: Request, reason: str) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = {"next": target} if request.method == "GET" and not wants_fragment(request) else {}
    if reason != "login":
        query["reason"] = reason
    return "/admin/login" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message}, status)


class ConsoleRoute(APIRoute):
    """Console routes answer in HTML: service errors, sign-in and CSRF refusals included."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                if request.method == "GET" and not wants_fragment(request):
                    return redirect(_login_url(request, exc.reason))
                message = {"expired": "Your session has expired: log in again.",
                           "revoked": "The key of this session is no longer valid."}.get(
                               exc.reason, "Log in first.")
                return error_page(request, 401, "Not signed in", message)
            except CsrfRefused:
                log.warning("console: form refused (CSRF check failed)", extra={
                    "action": "console.csrf_refused", "path": request.url.path})
                return error_page(request, 403, "Refused",
                                  "This form did not come from your console session (the "
                                  "CSRF check failed). Reload the page and try again.")
            except MemoryPersistenceError as exc:
                message = exc.public if exc.public is not None else str(exc)
                if exc.status >= 500:
                    log.warning("console: %s", exc, extra={"action": "console.error",
                                                           "path": request.url.path})
                return error_page(request, exc.status, exc.code.replace("_", " "), message)

        return handle


class Assets(StaticFiles):
    """The console's CSS and JS, with the console's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        return secured(await super().get_response(path, scope))
