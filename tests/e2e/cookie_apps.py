"""Apps whose session is the framework's default signed cookie, for real servers and a browser.

    SL_COOKIE_MODE=tracked gunicorn -k gthread --threads 16 'tests.e2e.cookie_apps:flask_app()'
    SL_COOKIE_MODE=bare uvicorn --factory tests.e2e.cookie_apps:starlette_app
    SL_COOKIE_MODE=tracked gunicorn -k gthread --threads 8 'tests.e2e.cookie_apps:exam_app()'

SL_COOKIE_MODE: ``tracked`` (the middleware with no option: it tracks the ``session`` cookie
by default), ``lock-only`` (``cookie_session=None``: serialized, yet each request starts
from the cookie it carries) or ``bare`` (no middleware). SL_COOKIE_BACKEND: the backend URL (default
``memory://``). SL_COOKIE_WORK: seconds of "work" inside each handler between the session
load and its save (default 0.05): the window in which concurrent requests read the same state.

Flask uses its default ``SecureCookieSessionInterface``; Starlette its ``SessionMiddleware``.
Routes (all return the session as JSON): ``GET /state``; ``POST /set?k=K&v=V``;
``POST /incr`` (n += 1); ``POST /login`` (user = alice, identity rotated); ``POST /touch``
(if logged in: seen += 1, after a longer piece of work); ``POST /logout`` (session cleared).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import sessionlock

SECRET = "cookie-e2e-secret-0123456789abcdef"
QUESTIONS = 10


def _mode() -> str:
    mode = os.environ.get("SL_COOKIE_MODE", "tracked")
    if mode not in ("tracked", "lock-only", "bare"):
        raise ValueError(f"SL_COOKIE_MODE must be tracked, lock-only or bare, not {mode!r}")
    return mode


def _work() -> float:
    return float(os.environ.get("SL_COOKIE_WORK", "0.05"))


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"backend": os.environ.get("SL_COOKIE_BACKEND", "memory://")}
    if _mode() == "lock-only":
        options["cookie_session"] = None  # tracking off; "tracked" relies on the default
    return options


def _wrap_wsgi(app: Any) -> None:
    if _mode() != "bare":
        from sessionlock.wsgi import SessionLockMiddleware

        app.wsgi_app = SessionLockMiddleware(app.wsgi_app, **_options())


def flask_app() -> Any:
    import flask

    app = flask.Flask(__name__)
    app.secret_key = SECRET
    work = _work()

    def state() -> flask.Response:
        return flask.jsonify(dict(flask.session))

    @app.get("/state")
    def get_state() -> flask.Response:
        return state()

    @app.post("/set")
    def set_key() -> flask.Response:
        time.sleep(work)
        flask.session[flask.request.args["k"]] = flask.request.args["v"]
        return state()

    @app.post("/incr")
    def incr() -> flask.Response:
        n = flask.session.get("n", 0)
        time.sleep(work)
        flask.session["n"] = n + 1
        return state()

    @app.post("/login")
    def login() -> flask.Response:
        flask.session["user"] = "alice"
        sessionlock.rotate_identity(flask.request)  # as the README says; False when bare
        return state()

    @app.post("/touch")
    def touch() -> flask.Response:
        if "user" in flask.session:
            seen = flask.session.get("seen", 0)
            time.sleep(4 * work)
            flask.session["seen"] = seen + 1
        return state()

    @app.post("/logout")
    def logout() -> flask.Response:
        flask.session.clear()
        return state()

    _wrap_wsgi(app)
    return app


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    work = _work()

    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    async def set_key(request: Request) -> JSONResponse:
        await asyncio.sleep(work)
        request.session[request.query_params["k"]] = request.query_params["v"]
        return JSONResponse(dict(request.session))

    async def incr(request: Request) -> JSONResponse:
        n = request.session.get("n", 0)
        await asyncio.sleep(work)
        request.session["n"] = n + 1
        return JSONResponse(dict(request.session))

    async def login(request: Request) -> JSONResponse:
        request.session["user"] = "alice"
        sessionlock.rotate_identity(request)  # as the README says; False when bare
        return JSONResponse(dict(request.session))

    async def touch(request: Request) -> JSONResponse:
        if "user" in request.session:
            seen = request.session.get("seen", 0)
            await asyncio.sleep(4 * work)
            request.session["seen"] = seen + 1
        return JSONResponse(dict(request.session))

    async def logout(request: Request) -> JSONResponse:
        request.session.clear()
        return JSONResponse(dict(request.session))

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if _mode() != "bare":
        from sessionlock.asgi import SessionLockMiddleware

        middleware.insert(0, Middleware(SessionLockMiddleware, **_options()))  # outermost
    routes = [
        Route("/state", get_state),
        Route("/set", set_key, methods=["POST"]),
        Route("/incr", incr, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/touch", touch, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=middleware)


_EXAM_PAGE = """<!doctype html>
<html><head><title>Exam</title></head><body>
<p>Question <span id="current">{current}</span> of <span id="total">{total}</span></p>
<p id="label">Question {shown} of {total}</p>
<form method="post" action="/next"><button id="next" type="submit">next</button></form>
<pre id="session">{session}</pre>
</body></html>
"""


def exam_app() -> Any:
    """A small exam: a list of questions, ``exam_current`` its index, "next" moves on.

    "next" is bounded (it stops at the last question), but it reads the index from the
    session the request carries: with two tabs, stale cookies make clicks vanish.
    """
    import flask

    app = flask.Flask(__name__)
    app.secret_key = SECRET
    work = _work()

    def page() -> str:
        ids = flask.session.setdefault("exam_question_ids", list(range(100, 100 + QUESTIONS)))
        current = flask.session.setdefault("exam_current", 0)
        return _EXAM_PAGE.format(
            current=current,
            shown=current + 1,
            total=len(ids),
            session=json.dumps(dict(flask.session), sort_keys=True),
        )

    @app.get("/")
    def index() -> str:
        return page()

    @app.post("/next")
    def next_question() -> flask.Response:
        ids = flask.session.get("exam_question_ids", list(range(100, 100 + QUESTIONS)))
        current = flask.session.get("exam_current", 0)
        time.sleep(work)  # grading the answer, loading the next question...
        flask.session["exam_question_ids"] = ids
        flask.session["exam_current"] = min(current + 1, len(ids) - 1)
        return flask.redirect("/", code=303)

    _wrap_wsgi(app)
    return app
