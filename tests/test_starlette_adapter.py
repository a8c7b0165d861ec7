"""Starlette adapter: rules run on scope["session"] before SessionMiddleware writes the cookie;
a lock inside the session layer is detected at its first request."""

from __future__ import annotations

import asyncio
import json
import logging
from base64 import b64decode
from typing import Any

import httpx
import itsdangerous
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionlock.asgi import SessionLockMiddleware
from sessionlock.errors import ConfigurationError
from sessionlock.rules import Ruleset, index_within, required
from sessionlock.starlette import SessionRulesMiddleware

pytestmark = pytest.mark.usefixtures("no_blocking")  # nothing blocks the loop (tests/conftest.py)

SECRET = "starlette-adapter-test-secret-0123456789"
RULES = [required("t", "basic"), index_within("i", "ids")]


async def write(request: Request) -> PlainTextResponse:
    request.session["ids"] = [1, 2, 3]
    request.session["i"] = 9
    return PlainTextResponse("written")


async def none(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no session use")


def make_app(*middleware: Middleware) -> Starlette:
    routes = [Route("/write", write), Route("/none", none)]
    return Starlette(routes=routes, middleware=list(middleware))


def session_cookie(response: Any) -> dict[str, Any]:
    raw = response.cookies["session"].encode()
    data = itsdangerous.TimestampSigner(SECRET).unsign(raw)
    return dict(json.loads(b64decode(data)))


def get(app: Starlette, *paths: str) -> list[httpx.Response]:
    """GET each path in turn with one cookie jar, through httpx's in-process ASGI transport.

    (Starlette's TestClient warns about httpx, and the suite turns warnings into errors.)
    """

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(run())


LOCK = Middleware(SessionLockMiddleware, backend="memory://")
SESSION = Middleware(SessionMiddleware, secret_key=SECRET)


def test_repair_is_in_the_cookie_that_goes_out(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(LOCK, SESSION, Middleware(SessionRulesMiddleware, rules=RULES))
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        (response,) = get(app, "/write")
    assert session_cookie(response) == {"ids": [1, 2, 3], "i": 2, "t": "basic"}
    assert "x-session-repaired" not in response.headers
    assert {getattr(r, "sessionlock_rule", None) for r in caplog.records} == {
        "required:t",
        "index_within:i",
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # order is right


def test_control_without_rules_the_corruption_goes_out() -> None:
    (response,) = get(make_app(LOCK, SESSION), "/write")
    assert session_cookie(response) == {"ids": [1, 2, 3], "i": 9}


def test_header_names_the_rules_when_enabled() -> None:
    rules = Ruleset(RULES, header="X-Session-Repaired")
    app = make_app(SESSION, Middleware(SessionRulesMiddleware, rules=rules))
    (response,) = get(app, "/write")
    assert response.headers["x-session-repaired"] == "required:t, index_within:i"


def test_untouched_session_gets_no_cookie_and_no_vary() -> None:
    app = make_app(SESSION, Middleware(SessionRulesMiddleware, rules=RULES))
    _, response = get(app, "/write", "/none")
    assert "set-cookie" not in response.headers
    assert "cookie" not in response.headers.get("vary", "").lower()


def test_rules_outside_the_session_layer_report_once(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(Middleware(SessionRulesMiddleware, rules=RULES), SESSION)
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        first, _ = get(app, "/write", "/write")
    assert session_cookie(first)["i"] == 9  # it could not repair: the cookie was written
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "no scope['session']" in errors[0].getMessage()


def test_lock_inside_the_session_layer_is_detected_at_first_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(SESSION, LOCK)  # first = outermost: the session loads before the lock
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        get(app, "/none", "/none")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "inside the session layer (scope['session']" in errors[0]


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def test_a_lock_option_given_to_the_rules_middleware_names_the_lock_middleware() -> None:
    with pytest.raises(ConfigurationError) as raised:
        SessionRulesMiddleware(_bare, rules=RULES, backend="memory://", timeout=3)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "SessionRulesMiddleware takes only rules; 'backend' and 'timeout' are options of the "
        "lock, sessionlock.asgi.SessionLockMiddleware, listed before SessionMiddleware"
    )


def test_an_unknown_keyword_of_the_rules_middleware_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError) as raised:
        SessionRulesMiddleware(_bare, rules=RULES, rulez=RULES)  # type: ignore[arg-type]
    message = str(raised.value)
    assert message == (
        "unknown option 'rulez' (did you mean 'rules'?) for SessionRulesMiddleware; known: rules"
    )
    assert "__init__" not in message


def test_a_session_that_is_no_mapping_is_left_alone() -> None:
    """Litestar's clear_session() leaves a sentinel object in scope["session"]: no rules run
    on it (they called .keys() on it: a 500 for the logout)."""
    cleared = object()

    async def logout(scope: Any, receive: Any, send: Any) -> None:
        scope["session"] = cleared
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bye"})

    async def with_session(scope: Any, receive: Any, send: Any) -> None:
        scope["session"] = {"t": "basic"}
        await SessionRulesMiddleware(logout, rules=RULES)(scope, receive, send)

    transport = httpx.ASGITransport(app=with_session)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/logout")

    response = asyncio.run(run())
    assert (response.status_code, response.text) == (200, "bye")
