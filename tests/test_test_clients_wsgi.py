"""WSGI test clients behave as without the middleware: Werkzeug/Flask's and Falcon's.

A test client is not a server: Werkzeug's never closes a response unless asked, and a test
edits its own cookie jar. Each test runs one scenario twice in-process, on the app wrapped by
the middleware and on the bare app (the control), and expects the same replies from both. The
middleware is built with a short ``timeout``, so a request left waiting for its own session
shows as a 503 instead of a stuck test. Nothing waits on time: every scenario is sequential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import falcon
import falcon.testing
import pytest
from flask import Flask, Response, redirect, request, session
from flask.testing import FlaskClient
from werkzeug.test import Client, TestResponse

from sessionlock.wsgi import SessionLockMiddleware

TIMEOUT = 2.0  # a request stuck behind its own session answers 503 after this, never hangs
SECRET = "test-clients-secret-0123456789abcdef"
IDENTITY = "sessionlock"  # the middleware's identity cookie (key="identity", the default)
Reply = tuple[int, str, bool]  # status, body, whether the middleware served it


def lock(app: Any, **options: Any) -> SessionLockMiddleware:
    return SessionLockMiddleware(app, backend="memory://", timeout=TIMEOUT, **options)


def expect(texts: list[str], locked: bool) -> list[Reply]:
    return [(200, text, locked) for text in texts]


# -- Werkzeug / Flask ------------------------------------------------------------------------


def flask_app(locked: bool, **options: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = SECRET

    @app.get("/count")
    def count() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/bounce")
    def bounce() -> Any:
        return redirect("/count")

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        return user

    @app.get("/whoami")
    def whoami() -> str:
        return str(session.get("user", "-"))

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            yield from (b"a", b"b", b"c")

        return Response(chunks())

    @app.get("/theme")
    def theme() -> Response:
        response = Response("set")
        response.set_cookie("theme", "dark")
        return response

    @app.get("/cookies")
    def cookies() -> str:
        return ",".join(sorted(request.cookies))

    if locked:
        app.wsgi_app = lock(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def replies(responses: list[TestResponse]) -> list[Reply]:
    """Read only now, after every request was made: reading never closes a response."""
    return [
        (
            r.status_code,
            r.get_data(as_text=True),
            "sessionlock" in r.headers.get("Server-Timing", ""),
        )
        for r in responses
    ]


OPTIONS = [
    pytest.param({}, id="lock"),
    pytest.param({"cookie_session": "session"}, id="cookie-session"),
]


def never_closed(client: FlaskClient) -> list[TestResponse]:
    return [client.get("/count") for _ in range(3)]


def data_read(client: FlaskClient) -> list[TestResponse]:
    responses = []
    for _ in range(3):
        response = client.get("/count")
        assert response.data  # read in full, still never closed
        responses.append(response)
    return responses


def redirects_followed(client: FlaskClient) -> list[TestResponse]:
    responses = [client.get("/bounce", follow_redirects=True) for _ in range(3)]
    assert all(len(r.history) == 1 for r in responses)
    return responses


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    "requests",
    [
        pytest.param(never_closed, id="never-closed"),
        pytest.param(data_read, id="data"),
        pytest.param(redirects_followed, id="follow-redirects"),
    ],
)
def test_werkzeug_requests_in_a_row(
    requests: Callable[[FlaskClient], list[TestResponse]], options: dict[str, Any]
) -> None:
    """Three requests of one client, no response closed: none waits for the one before."""
    for locked in (True, False):
        client = flask_app(locked, **options).test_client()
        assert replies(requests(client)) == expect(["1", "2", "3"], locked)


def lazy_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A generator: it calls start_response at its first iteration, not when it is called."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"ok"


def test_werkzeug_requests_in_a_row_to_an_app_that_starts_lazily() -> None:
    for locked in (True, False):
        client = Client(lock(lazy_app) if locked else lazy_app)  # Werkzeug's own client
        assert replies([client.get("/") for _ in range(3)]) == expect(["ok"] * 3, locked)


def test_werkzeug_exception_raised_into_the_test_leaves_the_session_free() -> None:
    """With ``app.testing``, Flask re-raises a view's error in the test; the next request of
    the client runs at once."""
    for locked in (True, False):
        app = flask_app(locked)
        app.testing = True

        @app.get("/boom")
        def boom() -> str:
            session["n"] = 99  # never saved: the request fails
            raise LookupError("boom")

        client = app.test_client()
        assert client.get("/count").text == "1"
        with pytest.raises(LookupError, match="boom"):
            client.get("/boom")
        assert replies([client.get("/count")]) == expect(["2"], locked)


@pytest.mark.parametrize("options", OPTIONS)
def test_werkzeug_with_client_keeps_contexts_and_waits_for_nothing(options: dict[str, Any]) -> None:
    for locked in (True, False):
        client = flask_app(locked, **options).test_client()
        with client:  # keeps each request's context alive until the next request
            responses = [client.get("/count") for _ in range(3)]
            assert replies(responses) == expect(["1", "2", "3"], locked)
            assert session["n"] == 3  # the kept context is the last request's


@pytest.mark.parametrize("options", OPTIONS)
def test_werkzeug_stream_left_open_while_the_next_request_runs(options: dict[str, Any]) -> None:
    for locked in (True, False):
        client = flask_app(locked, **options).test_client()
        first = client.get("/count")
        streamed = client.get("/stream")  # its body not read yet, the response not closed
        after = client.get("/count")
        assert replies([first, after]) == expect(["1", "2"], locked)
        assert streamed.status_code == 200
        assert streamed.get_data() == b"abc"  # the whole body, read after
        streamed.close()


def transaction(client: FlaskClient, other: FlaskClient) -> str:
    with client.session_transaction() as edited:
        edited["user"] = "bob"
    return "bob"


def deleted(client: FlaskClient, other: FlaskClient) -> str:
    client.delete_cookie("session")
    return "-"


def swapped(client: FlaskClient, other: FlaskClient) -> str:
    cookie = other.get_cookie("session")
    assert cookie is not None
    client.set_cookie("session", cookie.value)
    return "carol"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(transaction, id="session-transaction"),
        pytest.param(deleted, id="delete-cookie"),
        pytest.param(swapped, id="other-sessions-cookie"),
    ],
)
def test_werkzeug_jar_edits_reach_the_app_with_cookie_session(
    edit: Callable[[FlaskClient, FlaskClient], str],
) -> None:
    """What a test does to its own jar is what the app sees, also with cookie tracking on."""
    for locked in (True, False):
        app = flask_app(locked, cookie_session="session")
        client, other = app.test_client(), app.test_client()
        assert other.get("/login/carol").text == "carol"
        visits = [client.get("/whoami"), client.get("/login/alice"), client.get("/whoami")]
        assert replies(visits) == expect(["-", "alice", "alice"], locked)
        user = edit(client, other)
        visits = [client.get("/whoami"), client.get("/count"), client.get("/whoami")]
        assert replies(visits) == expect([user, "1", user], locked)


def test_werkzeug_replayed_older_jar_still_gets_the_latest_session() -> None:
    """The contrast: a jar put back as it was (both cookies) is a stale replay, as from a
    request sent before the last response arrived. The bare app loses the update."""
    finals = {}
    for locked in (True, False):
        client = flask_app(locked, cookie_session="session").test_client()
        assert client.get("/count").text == "1"
        cookies = [client.get_cookie(name) for name in ("session", IDENTITY)]
        older = {c.key: c.value for c in cookies if c is not None}
        assert client.get("/count").text == "2"
        for name, value in older.items():
            client.set_cookie(name, value)
        finals[locked] = client.get("/count").text
    assert finals == {True: "3", False: "2"}


def test_werkzeug_app_never_sees_the_identity_cookie() -> None:
    for locked in (True, False):
        client = flask_app(locked).test_client()
        visits = [client.get("/theme"), client.get("/cookies"), client.get("/cookies")]
        assert replies(visits) == expect(["set", "theme", "theme"], locked)
        assert (client.get_cookie(IDENTITY) is not None) is locked  # the jar does hold it


# -- Falcon (WSGI) ---------------------------------------------------------------------------


class Theme:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_cookie("theme", "dark", secure=False)
        resp.text = "set"


class Cookies:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.text = ",".join(sorted(req.cookies))


def falcon_app(locked: bool) -> Any:
    app = falcon.App()
    app.add_route("/theme", Theme())
    app.add_route("/cookies", Cookies())
    return lock(app) if locked else app


def test_falcon_wsgi_requests_in_a_row_see_only_their_cookies() -> None:
    """Falcon's client keeps no jar: the test hands each request the cookies it was given."""
    for locked in (True, False):
        client = falcon.testing.TestClient(falcon_app(locked))
        first = client.simulate_get("/theme")
        jar = {name: cookie.value for name, cookie in first.cookies.items()}
        assert set(jar) == ({"theme", IDENTITY} if locked else {"theme"})
        results = [first, *(client.simulate_get("/cookies", cookies=jar) for _ in range(2))]
        timed = ["sessionlock" in (r.headers.get("Server-Timing") or "") for r in results]
        assert [(r.status_code, r.text, t) for r, t in zip(results, timed, strict=True)] == expect(
            ["set", "theme", "theme"], locked
        )
