"""Console sessions and CSRF tokens: signed cookies, no server-side state.

A session cookie carries ``{key id, key digest, nonce, issued, expires}`` as base64url JSON and
an HMAC-SHA256 of it under CONSOLE_SESSION_SECRET. It never carries the key: the key id names
it (``settings:admin:1`` or ``db:7``) and a 16-hex-digit digest of it tells a bootstrap key that
was replaced at the same position. Every request checks the signature, the expiry, and that the
key still is a valid admin key (``ApiKeys.current``), so a revoked key ends its sessions within
API_KEY_CACHE_SECONDS.

CSRF: every state-changing form carries ``HMAC(secret, "csrf" | nonce)``, a token bound to the
session; the login form carries one bound to a short-lived pre-login cookie. The cookies are
HttpOnly and SameSite=Strict, and Secure when the console is served over TLS.

Each signature is made with its own purpose ("session", "login", "csrf", "login-csrf"), so no
value signed for one purpose is accepted for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SESSION_COOKIE = "memctl_console"
LOGIN_COOKIE = "memctl_console_login"
LOGIN_SECONDS = 3600.0  # how long a login form stays usable
_MAX_COOKIE = 1024


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A signed-in admin: which key (never the key itself), and until when."""

    key_id: str
    key_digest: str
    nonce: str
    issued: float
    expires: float


class Expired(Exception):
    """A well-signed session past its expiry."""


class Signer:
    """Signs and reads the console's cookies and tokens with one secret."""

    def __init__(self, secret: bytes, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the session secret must be at least 32 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self.clock = clock

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}|{value}".encode(),
                             hashlib.sha256).digest())

    def _seal(self, purpose: str, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def _open(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        if not value or len(value) > _MAX_COOKIE or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            return None
        return payload if isinstance(payload, dict) else None

    # -- sessions -------------------------------------------------------------------------

    def issue(self, key_id: str, key_digest: str) -> tuple[str, Session]:
        """A new session (a fresh nonce) and its cookie value."""
        now = self.clock()
        session = Session(key_id, key_digest, secrets.token_urlsafe(16), now,
                          now + self.lifetime)
        return self._seal("session", {"k": key_id, "d": key_digest, "n": session.nonce,
                                      "i": int(now), "e": session.expires}), session

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie holds; None when absent or not ours; Expired when it ran out."""
        payload = self._open("session", cookie)
        if payload is None:
            return None
        try:
            session = Session(str(payload["k"]), str(payload["d"]), str(payload["n"]),
                              float(payload["i"]), float(payload["e"]))
        except (KeyError, TypeError, ValueError):
            return None
        if session.expires <= self.clock():
            raise Expired
        return session

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session's forms."""
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))

    # -- the login form ---------------------------------------------------------------------

    def login_cookie(self) -> tuple[str, str]:
        """A pre-login cookie value and the token its login form carries."""
        nonce = secrets.token_urlsafe(16)
        cookie = self._seal("login", {"n": nonce, "e": self.clock() + LOGIN_SECONDS})
        return cookie, self._mac("login-csrf", nonce)

    def login_token(self, cookie: str | None) -> str | None:
        """The login form's token for an unexpired pre-login cookie, else None."""
        payload = self._open("login", cookie)
        if payload is None or not isinstance(payload.get("e"), int | float) \
                or payload["e"] <= self.clock():
            return None
        return self._mac("login-csrf", str(payload.get("n")))

    def login_ok(self, cookie: str | None, token: str | None) -> bool:
        expected = self.login_token(cookie)
        return expected is not None and token is not None and hmac.compare_digest(token,
                                                                                  expected)
