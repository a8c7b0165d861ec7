"""Stale pages (sessionlock.stale): a form from a page older than its session is caught.

The scenario is the seed's: a page shows question 1, the session moves on to question 2
(another tab, or "next" and then the back button), and the old page's answer form is sent.
The app records an answer against the session's *current* question, as the seed's did, so
the old page's answer lands on the wrong question: each test shows the loss without
``stale_pages`` (the control) and its absence with it. Flask runs through Werkzeug's test
client, Starlette through httpx's ASGI transport: real frameworks, real cookie sessions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask import Flask, redirect, render_template_string, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import sessionlock
from sessionlock.asgi import SessionLockMiddleware as AsgiLock
from sessionlock.errors import ConfigurationError
from sessionlock.flask import SessionLock
from sessionlock.options import from_environ
from sessionlock.stale import StalePages, cookie_payload, token_in

SECRET = "stale-pages-test-secret-0123456789abcdef"
PAGE = (
    '<form method="post" action="/answer">{{ session_revision_field() }}'
    '<input name="answer"></form> question={{ q }}'
)


def token_of(html: str) -> str:
    match = re.search(r'name="session_revision" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


# -- Flask: the exam flow ------------------------------------------------------------------


def flask_exam(**options: Any) -> Flask:
    """Questions 1..5; ``/answer`` records against the session's current question."""
    app = Flask(__name__)
    app.secret_key = SECRET
    if options.get("stale_pages") is not None:
        SessionLock(app, backend="memory://", **options)

    @app.get("/q")
    def question() -> str:
        return render_template_string(PAGE, q=session.get("q", 1))

    @app.post("/next")
    def next_() -> Any:
        session["q"] = session.get("q", 1) + 1
        return redirect("/q")

    @app.post("/next-and-show")
    def next_and_show() -> str:  # changes the session and renders the page in one request
        session["q"] = session.get("q", 1) + 1
        return render_template_string(PAGE, q=session["q"])

    @app.post("/answer")
    def answer() -> Any:
        from flask import request

        answers = dict(session.get("answers", {}))
        answers[str(session.get("q", 1))] = request.form["answer"]
        session["answers"] = answers
        return {"stale": sessionlock.is_stale(request), "answers": answers}

    @app.get("/answers")
    def answers() -> Any:
        return dict(session.get("answers", {}))

    if options.get("stale_pages") is None:
        app.jinja_env.globals["session_revision_field"] = lambda: ""  # the page, unprotected
    return app


def back_and_submit(app: Flask) -> tuple[int, dict[str, str]]:
    """Show question 1, go on to 2, then send question 1's form: (status, answers)."""
    client = app.test_client()
    page = client.get("/q").text
    assert "question=1" in page
    client.post("/next")
    form: dict[str, str] = {"answer": "A"}
    token = re.search(r'value="([^"]+)"', page)
    if token is not None:
        form["session_revision"] = token.group(1)
    status = client.post("/answer", data=form).status_code
    return status, client.get("/answers").json or {}


def test_control_the_old_page_answer_lands_on_the_wrong_question() -> None:
    status, answers = back_and_submit(flask_exam())
    assert status == 200
    assert answers == {"2": "A"}  # shown question 1, recorded against question 2


def test_the_old_page_answer_is_refused_and_nothing_is_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        status, answers = back_and_submit(
            flask_exam(stale_pages=StalePages(counter=counted.append))
        )
    assert status == 409
    assert answers == {}
    assert counted == ["refuse"]
    (record,) = [r for r in caplog.records if getattr(r, "sessionlock_stale", None)]
    assert "a stale request" in record.getMessage()
    assert record.sessionlock_stale == "refuse"


def test_redirect_sends_the_browser_to_the_present() -> None:
    app = flask_exam(stale_pages=StalePages(policy="redirect", redirect_to="/q"))
    client = app.test_client()
    old = token_of(client.get("/q").text)
    client.post("/next")
    response = client.post("/answer", data={"answer": "A", "session_revision": old})
    assert (response.status_code, response.headers["Location"]) == (303, "/q")
    assert client.get("/answers").json == {}


def test_flag_lets_the_app_decide() -> None:
    app = flask_exam(stale_pages=StalePages(policy="flag"))
    client = app.test_client()
    old = token_of(client.get("/q").text)
    client.post("/next")
    stale = client.post("/answer", data={"answer": "A", "session_revision": old}).json
    assert stale == {"stale": True, "answers": {"2": "A"}}
    fresh = token_of(client.get("/q").text)
    assert client.post("/answer", data={"answer": "B", "session_revision": fresh}).json == {
        "stale": False,
        "answers": {"2": "B"},
    }


def test_a_route_policy_overrides_the_app_policy() -> None:
    pages = StalePages(policy="refuse", routes={"/answer": "redirect:/q?late=1"})
    app = flask_exam(stale_pages=pages)
    client = app.test_client()
    old = token_of(client.get("/q").text)
    client.post("/next")
    response = client.post("/answer", data={"answer": "A", "session_revision": old})
    assert (response.status_code, response.headers["Location"]) == (303, "/q?late=1")
    assert client.post("/next", data={"session_revision": old}).status_code == 409


def test_a_page_is_fresh_until_the_session_changes() -> None:
    app = flask_exam(stale_pages=StalePages())
    client = app.test_client()
    first = client.get("/q")
    token = token_of(first.text)
    again = client.get("/q")  # reading moves nothing: both pages are current
    assert first.headers["Session-Revision"] == again.headers["Session-Revision"]
    assert (
        client.post("/answer", data={"answer": "A", "session_revision": token}).status_code == 200
    )
    # ... that answer changed the session: the page it came from is now one revision behind
    assert (
        client.post("/answer", data={"answer": "B", "session_revision": token}).status_code == 409
    )
    assert client.get("/answers").json == {"1": "A"}


def test_the_page_of_the_request_that_changed_the_session_is_current() -> None:
    app = flask_exam(stale_pages=StalePages())
    client = app.test_client()
    before = int(client.get("/q").headers["Session-Revision"])
    shown = client.post("/next-and-show")  # rendered before its own change was saved
    assert "question=2" in shown.text
    assert int(shown.headers["Session-Revision"]) == before + 1
    token = token_of(shown.text)
    response = client.post("/answer", data={"answer": "A", "session_revision": token})
    assert response.status_code == 200
    assert client.get("/answers").json == {"2": "A"}


def test_a_page_of_the_session_before_a_new_identity_is_stale() -> None:
    """A login gives the browser a new identity (a new key): its revision starts afresh,
    yet a page shown before the login must not pass for current (both would start at 0 if
    a new key's revision were not random)."""
    app = flask_exam(stale_pages=StalePages())

    @app.post("/login")
    def login() -> str:
        from flask import request

        assert sessionlock.rotate_identity(request)
        return "in"

    client = app.test_client()
    before_login = token_of(client.get("/q").text)
    assert client.post("/login").status_code == 200
    late = client.post("/answer", data={"answer": "A", "session_revision": before_login})
    assert late.status_code == 409
    assert client.get("/answers").json == {}


def test_the_header_carries_the_token_for_fetch() -> None:
    app = flask_exam(stale_pages=StalePages())
    client = app.test_client()
    revision = client.get("/q").headers["Session-Revision"]
    client.post("/next")
    late = client.post("/answer", data={"answer": "A"}, headers={"Session-Revision": revision})
    assert late.status_code == 409
    current = client.get("/q").headers["Session-Revision"]
    on_time = client.post("/answer", data={"answer": "B"}, headers={"Session-Revision": current})
    assert on_time.status_code == 200


def test_no_token_is_never_stale_and_a_malformed_one_always_is() -> None:
    app = flask_exam(stale_pages=StalePages())
    client = app.test_client()
    client.get("/q")
    client.post("/next")
    assert client.post("/answer", data={"answer": "A"}).status_code == 200
    for hostile in ("x", "1.ZZZZ", "9" * 40, "1\r\nSet-Cookie: a=b", ""):
        response = client.post("/answer", data={"answer": "B", "session_revision": hostile})
        assert response.status_code == 409, hostile
        assert "a=b" not in str(response.headers)
    assert client.get("/answers").json == {"2": "A"}


def test_responses_that_used_the_session_are_not_stored() -> None:
    client = flask_exam(stale_pages=StalePages()).test_client()
    assert "no-store" in client.get("/q").headers["Cache-Control"]
    kept = flask_exam(stale_pages=StalePages(no_store=False)).test_client()
    assert "Cache-Control" not in kept.get("/q").headers
    assert "Cache-Control" not in flask_exam().test_client().get("/q").headers  # control


def test_a_change_changes_the_cookie_that_empties_the_back_forward_cache() -> None:
    """Chromium keeps no-store pages in its back-forward cache unless a cookie changed: a
    change of the revision sets ``sessionlock_rev``; a read sets nothing."""
    client = flask_exam(stale_pages=StalePages()).test_client()
    assert "sessionlock_rev" not in str(client.get("/q").headers.getlist("Set-Cookie"))
    changed = client.post("/next").headers.getlist("Set-Cookie")
    (eviction,) = [c for c in changed if c.startswith("sessionlock_rev=")]
    assert "HttpOnly" in eviction
    assert "Path=/" in eviction
    assert eviction.startswith(f"sessionlock_rev={client.get('/q').headers['Session-Revision']};")
    kept = flask_exam(stale_pages=StalePages(no_store=False)).test_client()
    kept.get("/q")
    assert "sessionlock_rev" not in str(kept.post("/next").headers.getlist("Set-Cookie"))


def test_a_public_response_stays_public() -> None:
    app = flask_exam(stale_pages=StalePages())

    @app.get("/public")
    def public() -> Any:
        return "shared", 200, {"Cache-Control": "public, max-age=60"}

    assert app.test_client().get("/public").headers["Cache-Control"] == "public, max-age=60"


def test_the_form_body_reaches_the_app_whole_after_the_token_was_read() -> None:
    app = flask_exam(stale_pages=StalePages())

    @app.post("/upload")
    def upload() -> Any:
        from flask import request

        return {"size": len(request.files["file"].read()), "note": request.form["note"]}

    client = app.test_client()
    token = token_of(client.get("/q").text)
    big = b"x" * 200_000  # beyond the bytes read ahead: the rest comes from the server's stream
    data = {"session_revision": token, "note": "hi", "file": (__import__("io").BytesIO(big), "f")}
    response = client.post("/upload", data=data, content_type="multipart/form-data")
    assert response.json == {"size": 200_000, "note": "hi"}
    client.post("/next")
    data = {"session_revision": token, "note": "hi", "file": (__import__("io").BytesIO(big), "f")}
    assert client.post("/upload", data=data, content_type="multipart/form-data").status_code == 409


# -- Starlette: a cookie re-signed on every response is no change -----------------------------


async def st_page(request: Request) -> HTMLResponse:
    field = sessionlock.hidden_field(request)
    return HTMLResponse(f"<form>{field}</form> question={request.session.get('q', 1)}")


async def st_next(request: Request) -> Response:
    request.session["q"] = request.session.get("q", 1) + 1
    return RedirectResponse("/q", status_code=303)


async def st_answer(request: Request) -> JSONResponse:
    form = await request.form()
    answers = dict(request.session.get("answers", {}))
    answers[str(request.session.get("q", 1))] = str(form["answer"])
    request.session["answers"] = answers
    return JSONResponse(answers)


def starlette_exam(stale_pages: StalePages | None, backend: str = "memory://") -> Starlette:
    routes = [Route("/q", st_page), Route("/next", st_next, methods=["POST"])]
    routes.append(Route("/answer", st_answer, methods=["POST"]))
    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if stale_pages is not None:
        middleware.insert(0, Middleware(AsgiLock, backend=backend, stale_pages=stale_pages))
    return Starlette(routes=routes, middleware=middleware)


def run_client(app: Starlette, steps: Callable[[httpx.AsyncClient], Any]) -> Any:
    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await steps(c)

    return asyncio.run(run())


async def st_back_and_submit(client: httpx.AsyncClient) -> tuple[list[str], int, Any]:
    await client.post("/next")  # a session to re-sign from now on
    page = await client.get("/q")
    again = await client.get("/q")  # SessionMiddleware sets the cookie again: same payload
    revisions = [
        page.headers.get("session-revision", ""),
        again.headers.get("session-revision", ""),
    ]
    token = re.search(r'value="([^"]+)"', page.text)
    await client.post("/next")
    form = {"answer": "A", **({"session_revision": token.group(1)} if token else {})}
    late = await client.post("/answer", data=form)
    return revisions, late.status_code, late.json() if late.status_code == 200 else None


def test_starlette_control_the_old_page_answer_lands_on_the_wrong_question() -> None:
    _, status, answers = run_client(starlette_exam(None), st_back_and_submit)
    assert (status, answers) == (200, {"3": "A"})


@pytest.mark.usefixtures("no_blocking", "registry")
@pytest.mark.parametrize("backend", ["memory://", "file"])
def test_starlette_refuses_the_old_page(backend: str, tmp_path: Any) -> None:
    url = f"file://{tmp_path}/locks" if backend == "file" else backend
    app = starlette_exam(StalePages(), url)
    revisions, status, answers = run_client(app, st_back_and_submit)
    assert revisions[0] == revisions[1]  # re-signed with a new timestamp, same session
    assert (status, answers) == (409, None)


def test_a_cookie_only_re_signed_is_no_change_and_a_new_payload_is() -> None:
    """As older Starlette's SessionMiddleware does: the cookie set again on every response,
    with the same payload and a new timestamp; a raw WSGI app, so nothing else says what
    changed (no adapter)."""
    from werkzeug.test import Client

    from sessionlock.wsgi import SessionLockMiddleware

    signed = iter(range(10**6))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        payload = "bmV3" if environ["REQUEST_METHOD"] == "POST" else "b2xk"
        cookie = f"session={payload}.{next(signed)}.sig; Path=/"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", cookie)])
        return [b"ok"]

    client = Client(SessionLockMiddleware(app, backend="memory://", stale_pages=StalePages()))
    seen = [int(client.get("/").headers["Session-Revision"]) for _ in range(3)]
    seen.append(int(client.post("/").headers["Session-Revision"]))
    seen.append(int(client.post("/").headers["Session-Revision"]))
    first = seen[0]
    assert seen == [first, first, first, first + 1, first + 1]  # the same payload, a new one


# -- units ----------------------------------------------------------------------------------


def test_the_token_is_found_in_header_query_and_form_bodies() -> None:
    urlencoded = "application/x-www-form-urlencoded"
    assert token_in(" 3.abc ", "", "", None) == "3.abc"
    assert token_in(None, "a=1&session_revision=4.00ff00ff00ff", "", None) == "4.00ff00ff00ff"
    assert token_in(None, "", urlencoded, b"a=1&session_revision=5&b=2") == "5"
    body = b'--B\r\nContent-Disposition: form-data; name="session_revision"\r\n\r\n6\r\n--B--'
    assert token_in(None, "", "multipart/form-data; boundary=B", body) == "6"
    assert token_in(None, "", "application/json", b'{"session_revision": 7}') is None
    assert token_in(None, "", urlencoded, b"a=1") is None


def test_a_cookie_payload_ignores_when_it_was_signed() -> None:
    assert cookie_payload("eyJhIjoxfQ==.Zx1.sig") == cookie_payload("eyJhIjoxfQ==.Zx2.sog")
    assert cookie_payload(".eJwz.Zx1.sig") == ".eJwz"  # Flask's compressed form
    assert cookie_payload("opaque") == "opaque"
    assert cookie_payload("") is None


@pytest.mark.parametrize(
    "options",
    [
        {"policy": "ignore"},
        {"policy": "redirect"},
        {"policy": "redirect", "redirect_to": "/x\r\nSet-Cookie: a=b"},
        {"routes": {"api": "flag"}},
        {"routes": {"/api": "redirect:"}},
        {"methods": "POST"},
        {"ttl": 0},
    ],
)
def test_bad_configurations_are_refused_by_name(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        StalePages(**options)


def test_the_environment_form() -> None:
    chosen = from_environ({"SESSIONLOCK_STALE_PAGES": "redirect:/exam"})["stale_pages"]
    assert chosen is not None
    assert chosen.policy_for("/any") == ("redirect", "/exam")
    assert "stale_pages" not in from_environ({"SESSIONLOCK_STALE_PAGES": "off"})
    with pytest.raises(ConfigurationError, match="SESSIONLOCK_STALE_PAGES"):
        from_environ({"SESSIONLOCK_STALE_PAGES": "ignore"})


def test_without_a_layer_the_helpers_say_so() -> None:
    environ: dict[str, Any] = {}
    assert sessionlock.page_token(environ) is None
    assert sessionlock.hidden_field(environ) == ""
    assert not sessionlock.is_stale(environ)
    assert not sessionlock.session_changed(environ)
