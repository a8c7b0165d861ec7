"""Identity fixation: a planted identity, then the victim logs in.

An attacker who can plant cookies in the victim's browser (a sibling subdomain, plain http)
plants an identity the server issued to the attacker. The control shows what that buys without
rotation: replaying the planted identity is a stale replay of the victim's jar, and is handed
the victim's logged-in session. With ``sessionlock.rotate_identity()`` at login it gets nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import flask
import pytest

import sessionlock
from sessionlock.asgi import SessionLockMiddleware as ASGISessionLockMiddleware
from sessionlock.wsgi import SessionLockMiddleware


def exam_app(*, rotate_at_login: bool) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "fixation-test-secret-0123456789"

    @app.get("/form")
    def form() -> str:
        flask.session["csrf"] = "token"  # the login page writes the session first
        return "form"

    @app.post("/login")
    def login() -> str:
        flask.session["user"] = "victim"
        if rotate_at_login:
            assert sessionlock.rotate_identity(flask.request)
        return "welcome"

    @app.get("/me")
    def me() -> str:
        return str(flask.session.get("user", "anonymous"))

    app.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, backend="memory://", cookie_session="session"
    )
    return app


@pytest.mark.parametrize(
    ("rotate_at_login", "attacker_sees"),
    [
        pytest.param(True, "anonymous", id="rotated-at-login"),
        pytest.param(False, "victim", id="control-without-rotation"),
    ],
)
def test_a_planted_identity_is_handed_nothing_after_login(
    rotate_at_login: bool, attacker_sees: str
) -> None:
    app = exam_app(rotate_at_login=rotate_at_login)
    attacker = app.test_client()
    assert attacker.get("/me").text == "anonymous"
    planted = attacker.get_cookie("sessionlock")
    assert planted is not None
    victim = app.test_client()
    victim.set_cookie("sessionlock", planted.value)  # planted through a sibling subdomain
    victim.get("/form")
    victim.post("/login")
    assert victim.get("/me").text == "victim"
    assert attacker.get("/me").text == attacker_sees  # the attacker replays its own jar
    assert victim.get("/me").text == "victim"  # the victim keeps the session


def test_the_victims_own_tabs_stay_serialized_and_tracked_after_rotation() -> None:
    app = exam_app(rotate_at_login=True)
    victim = app.test_client()
    victim.get("/form")
    victim.post("/login")
    identity = victim.get_cookie("sessionlock")
    session = victim.get_cookie("session")
    assert identity is not None
    assert session is not None
    other_tab = app.test_client()  # the same jar, as a second tab sends it
    other_tab.set_cookie("sessionlock", identity.value)
    other_tab.set_cookie("session", session.value)
    assert other_tab.get("/me").text == "victim"


@pytest.mark.parametrize(
    "target",
    [pytest.param({}, id="outside-the-middleware"), pytest.param(object(), id="any-object")],
)
def test_rotation_outside_the_middleware_is_a_no_op(target: Any) -> None:
    assert sessionlock.rotate_identity(target) is False


def test_rotation_after_the_response_started_is_refused() -> None:
    kept: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        kept.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = SessionLockMiddleware(app, backend="memory://")
    list(middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None))
    assert sessionlock.rotate_identity(kept[0]) is False


def test_rotation_without_cookie_tracking_issues_a_new_identity() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/login":
            assert sessionlock.rotate_identity(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = SessionLockMiddleware(app, backend="memory://")
    sent: list[list[tuple[str, str]]] = []

    def get(path: str, cookie: str | None) -> str | None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        list(middleware(environ, lambda status, headers, exc_info=None: sent.append(headers)))
        found = [v.partition(";")[0] for k, v in sent[-1] if k == "Set-Cookie"]
        return found[0] if found else None

    first = get("/", None)
    assert first is not None
    assert get("/", first) is None  # control: kept, nothing issued
    rotated = get("/login", first)
    assert rotated is not None
    assert rotated.partition(".")[0] != first.partition(".")[0]


def test_rotation_without_cookie_tracking_issues_a_new_identity_on_asgi() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/login":
            assert sessionlock.rotate_identity(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = ASGISessionLockMiddleware(app, backend="memory://")

    def get(path: str, cookie: str | None) -> str | None:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"cookie", cookie.encode())] if cookie else []
        scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
        asyncio.run(middleware(scope, receive, send))
        found = [v.decode() for k, v in sent[0]["headers"] if k == b"set-cookie"]
        return found[0].partition(";")[0] if found else None

    first = get("/", None)
    assert first is not None
    assert get("/", first) is None  # control: kept, nothing issued
    rotated = get("/login", first)
    assert rotated is not None
    assert rotated.partition(".")[0] != first.partition(".")[0]
