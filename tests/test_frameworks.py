"""Every framework the README names, wrapped by the middleware, loses no update; bare, it does.

Each app keeps a per-session counter in a server-side dict with a read-modify-write window
(the app's "work" between load and save). Concurrent same-session calls go through the real
framework in-process: threads released together for WSGI, tasks gathered for ASGI.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sessionlock.asgi import SessionLockMiddleware as ASGILock
from sessionlock.wsgi import SessionLockMiddleware as WSGILock

WORK = 0.003  # seconds between load and save: the app's read-modify-write window
CALLS = 12


class Store:
    """A server-side session store: load, work, save (no lock of its own)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def bump(self, sid: str) -> int:
        count = self.counts.get(sid, 0)
        time.sleep(WORK)
        self.counts[sid] = count + 1
        return count + 1

    async def bump_async(self, sid: str) -> int:
        count = self.counts.get(sid, 0)
        await asyncio.sleep(WORK)
        self.counts[sid] = count + 1
        return count + 1


def flask_app(store: Store) -> Any:
    import flask

    app = flask.Flask(__name__)

    @app.post("/bump")
    def bump() -> str:
        return str(store.bump(flask.request.cookies["sid"]))

    return app


def bottle_app(store: Store) -> Any:
    import bottle

    app = bottle.Bottle()

    @app.post("/bump")
    def bump() -> str:
        return str(store.bump(bottle.request.get_cookie("sid")))

    return app


def falcon_wsgi_app(store: Store) -> Any:
    import falcon

    class Bump:
        def on_post(self, req: Any, resp: Any) -> None:
            resp.text = str(store.bump(req.cookies["sid"]))

    app = falcon.App()
    app.add_route("/bump", Bump())
    return app


def pyramid_app(store: Store) -> Any:
    from pyramid.config import Configurator
    from pyramid.response import Response

    def bump(request: Any) -> Response:
        return Response(str(store.bump(request.cookies["sid"])))

    with Configurator() as config:
        config.add_route("bump", "/bump", request_method="POST")
        config.add_view(bump, route_name="bump")
        return config.make_wsgi_app()


def starlette_app(store: Store) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def bump(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(await store.bump_async(request.cookies["sid"])))

    return Starlette(routes=[Route("/bump", bump, methods=["POST"])])


def fastapi_app(store: Store) -> Any:
    from fastapi import Cookie, FastAPI

    app = FastAPI()

    @app.post("/bump")
    async def bump(sid: str = Cookie()) -> int:
        return await store.bump_async(sid)

    return app


def quart_app(store: Store) -> Any:
    import quart

    app = quart.Quart(__name__)

    @app.post("/bump")
    async def bump() -> str:
        return str(await store.bump_async(quart.request.cookies["sid"]))

    return app


def falcon_asgi_app(store: Store) -> Any:
    import falcon.asgi

    class Bump:
        async def on_post(self, req: Any, resp: Any) -> None:
            resp.text = str(await store.bump_async(req.cookies["sid"]))

    app = falcon.asgi.App()
    app.add_route("/bump", Bump())
    return app


WSGI_APPS = [
    pytest.param(flask_app, id="flask"),
    pytest.param(bottle_app, id="bottle"),
    pytest.param(falcon_wsgi_app, id="falcon-wsgi"),
    pytest.param(pyramid_app, id="pyramid"),
]
ASGI_APPS = [
    pytest.param(starlette_app, id="starlette"),
    pytest.param(fastapi_app, id="fastapi"),
    pytest.param(quart_app, id="quart"),
    pytest.param(falcon_asgi_app, id="falcon-asgi"),
]


def call_wsgi(app: Any, sid: str) -> str:
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/bump",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "0",
        "HTTP_HOST": "testserver",
        "HTTP_COOKIE": f"sid={sid}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    statuses: list[str] = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    assert statuses[-1].startswith("200"), (statuses, body)
    return body.decode()


async def call_asgi(app: Any, sid: str) -> str:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/bump",
        "raw_path": b"/bump",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", f"sid={sid}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent
    return b"".join(m.get("body", b"") for m in sent[1:]).decode()


def run_wsgi_concurrently(app: Callable[..., Any], sid: str) -> None:
    barrier = threading.Barrier(CALLS)
    errors: list[BaseException] = []

    def client() -> None:
        barrier.wait()
        try:
            call_wsgi(app, sid)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize("make_app", WSGI_APPS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["with-lock", "control-bare"])
def test_wsgi_framework_loses_no_update(make_app: Callable[[Store], Any], wrapped: bool) -> None:
    store = Store()
    app = make_app(store)
    if wrapped:
        app = WSGILock(app, key="cookie:sid")
    run_wsgi_concurrently(app, "alice")
    if wrapped:
        assert store.counts["alice"] == CALLS
    else:
        assert store.counts["alice"] < CALLS, "the control should lose updates"


@pytest.mark.usefixtures("no_blocking")  # and blocks no event loop (tests/conftest.py)
@pytest.mark.parametrize("make_app", ASGI_APPS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["with-lock", "control-bare"])
def test_asgi_framework_loses_no_update(make_app: Callable[[Store], Any], wrapped: bool) -> None:
    store = Store()
    app = make_app(store)
    if wrapped:
        app = ASGILock(app, key="cookie:sid")

    async def main() -> None:
        await asyncio.gather(*(call_asgi(app, "alice") for _ in range(CALLS)))

    asyncio.run(main())
    if wrapped:
        assert store.counts["alice"] == CALLS
    else:
        assert store.counts["alice"] < CALLS, "the control should lose updates"
