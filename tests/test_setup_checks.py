"""Setups that cannot protect sessions are said once, as an ERROR with the fix
(sessionlock/setup_checks.py); each check comes with its control, a setup that is fine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flask
import pytest

from sessionlock.core import Core
from sessionlock.setup_checks import UNMATCHED_LIMIT

SECRET = "setup-checks-secret-0123456789"
SIGNED = "eyJuIjoxfQ.aSgZvQ.Vb5sRkRb3yQ3qN7tX8cW2dE1fHk"  # the shape of Flask's session


def _environ(cookie: str | None = None, **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SCRIPT_NAME": "",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "testserver",
        **extra,
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sessionlock" and r.levelno == logging.ERROR]


def _requests(core: Core, environs: list[dict[str, Any]]) -> None:
    for environ in environs:
        admission = core.admit(environ)
        if admission is not None:
            core.enter(admission)
            core.leave(admission)


@pytest.fixture
def caplog_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="sessionlock")
    return caplog


def test_the_default_setup_checks_nothing(tmp_path: Path) -> None:
    core = Core(backend=f"file://{tmp_path / 'locks'}")
    assert core._checks is None  # no cost on any request


def test_a_per_process_backend_under_several_processes_is_said_once(
    caplog_errors: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    core = Core(backend="memory://")
    _requests(core, [_environ(**{"wsgi.multiprocess": True}) for _ in range(3)])
    (error,) = _errors(caplog_errors)
    assert "wsgi.multiprocess" in error.getMessage()
    assert "file://" in error.getMessage()  # the fix
    caplog_errors.clear()
    # Controls: one process, or a backend shared by the processes.
    _requests(Core(backend="memory://"), [_environ(**{"wsgi.multiprocess": False})])
    shared = Core(backend=f"file://{tmp_path / 'locks'}")
    _requests(shared, [_environ(**{"wsgi.multiprocess": True})])
    assert _errors(caplog_errors) == []


def test_a_key_that_never_matches_is_said_once_with_the_cookie_names_never_values(
    caplog_errors: pytest.LogCaptureFixture,
) -> None:
    typo = Core(backend="memory://", key="cookie:sesionid")
    carried = [_environ(f"sessionid=SECRET{i}; csrftoken=T{i}") for i in range(UNMATCHED_LIMIT)]
    _requests(typo, carried[:-1])
    assert _errors(caplog_errors) == []  # not before the limit
    _requests(typo, carried[-1:] + carried)
    (error,) = _errors(caplog_errors)
    message = error.getMessage()
    assert "cookie('sesionid')" in message
    assert "csrftoken, sessionid" in message
    assert "SECRET" not in message
    caplog_errors.clear()
    # Controls: the right name; requests without cookies are not counted.
    _requests(Core(backend="memory://", key="cookie:sessionid"), carried)
    _requests(typo, [_environ() for _ in range(UNMATCHED_LIMIT)])
    assert _errors(caplog_errors) == []


def test_a_signed_cookie_session_under_another_key_is_said_once(
    caplog_errors: pytest.LogCaptureFixture,
) -> None:
    core = Core(backend="memory://", key="cookie:session")
    _requests(core, [_environ(f"session={SIGNED}") for _ in range(3)])
    (error,) = _errors(caplog_errors)
    assert "signed 'session' cookie" in error.getMessage()
    assert "identity" in error.getMessage()  # the fix
    assert SIGNED not in error.getMessage()
    caplog_errors.clear()
    # Controls: a server-side session's id under that key; the default key, which tracks it.
    _requests(Core(backend="memory://", key="cookie:session"), [_environ("session=0f3a9c2e")])
    _requests(Core(backend="memory://"), [_environ(f"session={SIGNED}")])
    assert _errors(caplog_errors) == []


def _starlette_session_cookie() -> str:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def index(request: Request) -> PlainTextResponse:
        request.session["n"] = {"deep": ["x" * 40]}  # a payload long enough for padding
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", index)], middleware=[Middleware(SessionMiddleware, secret_key=SECRET)]
    )
    with TestClient(app) as client:
        client.get("/")
        value = client.cookies.get("session")
    assert value is not None
    return value


def test_a_real_starlette_session_cookie_has_the_shape_that_is_looked_for(
    caplog_errors: pytest.LogCaptureFixture,
) -> None:
    core = Core(backend="memory://", key="header:x-session")
    _requests(core, [_environ(f"session={_starlette_session_cookie()}")])
    assert len(_errors(caplog_errors)) == 1


def test_a_real_flask_session_cookie_has_the_shape_that_is_looked_for(
    caplog_errors: pytest.LogCaptureFixture,
) -> None:
    app = flask.Flask(__name__)
    app.secret_key = SECRET

    @app.get("/")
    def index() -> str:
        flask.session["n"] = 1
        return "ok"

    client = app.test_client()
    client.get("/")
    cookie = client.get_cookie("session")
    assert cookie is not None
    core = Core(backend="memory://", key="header:x-session")
    _requests(core, [_environ(f"session={cookie.value}")])
    assert len(_errors(caplog_errors)) == 1
