"""The MCP server's HTTP gate (app.mcp.serve.RequireServiceKey) without servers: which keys pass,
which answers the others get, the rate limit, and the lifespan passed through untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from app.api.guard import RequestGuard
from app.errors import StoreUnavailable
from app.keys import Principal
from app.mcp.serve import RequireServiceKey
from app.settings import Settings


class Keys:
    """Known keys by secret; ``down`` makes every lookup fail as Postgres would."""

    down = False
    known = {"svc": Principal("settings:service:1", "service"),
             "adm": Principal("settings:admin:1", "admin"),
             "acme": Principal("db:7", "service", "acme"),
             "tenant": Principal("db:8", "service", "tenant")}

    def identify(self, secret: str) -> Principal | None:
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.known.get(secret)


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        inner.lifespans += 1  # type: ignore[attr-defined]
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"mcp"})


def gate(user: str = "tenant:alice", keys: Keys | None = None, rate: float = 0,
         burst: int = 50) -> RequireServiceKey:
    settings = Settings(_env_file=None, api_rate_limit_per_second=rate,  # type: ignore[call-arg]
                        api_rate_limit_burst=burst)
    return RequireServiceKey(inner, keys or Keys(), user, RequestGuard(settings))  # type: ignore[arg-type]


def post(app: Any, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1") as client:
            return await client.post("/mcp", headers=headers, json={})
    return asyncio.run(go())


def test_only_a_known_key_that_may_act_for_the_user_passes() -> None:
    app = gate()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic c3Zj"},
                    {"Authorization": "Bearer "}):
        refused = post(app, headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert post(app, {"Authorization": "Bearer acme"}).status_code == 403  # other namespace
    for key in ("svc", "adm", "tenant"):
        passed = post(app, {"Authorization": f"Bearer {key}"})
        assert (passed.status_code, passed.text) == (200, "mcp")


def test_a_key_over_its_rate_gets_429_with_retry_after() -> None:
    app = gate(rate=0.5, burst=2)
    statuses = [post(app, {"Authorization": "Bearer svc"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = post(app, {"Authorization": "Bearer svc"})
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert post(app, {"Authorization": "Bearer adm"}).status_code == 200  # per key


def test_postgres_down_is_503_not_a_crash_and_lifespan_passes_through() -> None:
    keys = Keys()
    keys.down = True
    down = post(gate(keys=keys), {"Authorization": "Bearer svc"})
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    inner.lifespans = 0  # type: ignore[attr-defined]

    async def lifespan() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            pass

        await gate()({"type": "lifespan"}, receive, send)

    asyncio.run(lifespan())
    assert inner.lifespans == 1  # type: ignore[attr-defined]
