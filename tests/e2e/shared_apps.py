"""Apps for the shared-reads e2e tests: a default cookie session and an in-app probe.

    SL_SHARED_MODE=shared SL_SHARED_BACKEND=file:///tmp/x/locks SL_SHARED_PROBE=127.0.0.1:PORT \\
        gunicorn -w 2 -k gthread --threads 16 'tests.e2e.shared_apps:flask_app()'
    SL_SHARED_MODE=bare SL_SHARED_PROBE=127.0.0.1:PORT \\
        uvicorn --factory tests.e2e.shared_apps:starlette_app

SL_SHARED_MODE: ``shared`` (the middleware with ``shared=["GET"]``), ``exclusive`` (the
middleware with no ``shared``: every request alone) or ``bare`` (no middleware).
SL_SHARED_BACKEND: the backend URL (default ``memory://``). SL_SHARED_PROBE: ``host:port`` of
the test's probe server (:class:`tests.e2e.test_shared_reads.Room`), which may be in another
process than the server's workers, so it counts readers and writers across processes.

Flask uses its default signed-cookie session, Starlette its ``SessionMiddleware``. Routes
(JSON answers, with the worker's pid): ``GET /pid`` (nothing else), ``POST /init`` (n = 0:
the session exists, and the middleware issues its identity), ``GET /read`` (a reader:
reports n to the probe, waits there for what the probe tells it, leaves), ``POST /write``
(the writer: reads n, reports to the probe, waits there, saves n + 1, leaves). Each request
names itself with an ``X-Probe`` header (its tag). Each worker process reports once it has
built its app (``boot``): the test knows when both of gunicorn's workers take connections.

The probe also hears of every tagged request that has to wait for its session: ``queue``,
a line of the in-process queue joined (the key is held here in a mode it cannot share, or
a writer waits), or ``line``, the file backend's cross-process line enlisted in (its
non-waiting try failed: held elsewhere, someone queued, or another request's own try at
that instant). The test orders its requests on those events, never on time. Those hooks
replace two methods on the instances this app uses (``KeyedQueue._enqueue``,
``Line._enlist`` of the file backend's waiting line), as tests/queue_probe.py does in
process.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

SECRET = "shared-e2e-secret-0123456789abcdef"
TIMEOUT = 60.0  # seconds a handler waits for the probe's answer, at most

_TAG: contextvars.ContextVar[str | None] = contextvars.ContextVar("sl_probe_tag", default=None)


def _mode() -> str:
    mode = os.environ.get("SL_SHARED_MODE", "shared")
    if mode not in ("shared", "exclusive", "bare"):
        raise ValueError(f"SL_SHARED_MODE must be shared, exclusive or bare, not {mode!r}")
    return mode


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"backend": os.environ.get("SL_SHARED_BACKEND", "memory://")}
    if _mode() == "shared":
        options["shared"] = ["GET"]
    return options


def _address() -> tuple[str, int]:
    host, _, port = os.environ["SL_SHARED_PROBE"].rpartition(":")
    return host, int(port)


def _message(op: str, tag: str, **more: Any) -> bytes:
    return (json.dumps({"op": op, "tag": tag, "pid": os.getpid(), **more}) + "\n").encode()


def ask(op: str, tag: str, **more: Any) -> dict[str, Any]:
    """One round trip to the probe (a thread's)."""
    with socket.create_connection(_address(), timeout=TIMEOUT) as sock:
        sock.sendall(_message(op, tag, **more))
        with sock.makefile("rb") as answers:
            answer: dict[str, Any] = json.loads(answers.readline())
    return answer


async def ask_async(op: str, tag: str, **more: Any) -> dict[str, Any]:
    """One round trip to the probe (a task's: the event loop never blocks on it)."""
    reader, writer = await asyncio.open_connection(*_address())
    try:
        writer.write(_message(op, tag, **more))
        await writer.drain()
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))
    finally:
        writer.close()
        await writer.wait_closed()
    return answer


def _waits(where: str) -> None:
    """The tagged request being handled has to wait for its session: tell the probe."""
    tag = _TAG.get()
    if tag is not None:
        ask("waits", tag, where=where)  # answered at once: a few hundred µs


def _probe(core: Any) -> None:
    """Report each tagged request that joins a line: the in-process queue's, or the file
    backend's cross-process one (``Line._enlist``: the contender takes a ticket for it)."""
    queue = core.queue
    enqueue = queue._enqueue

    def enqueue_and_tell(*args: Any, **kwargs: Any) -> Any:
        waiter = enqueue(*args, **kwargs)
        if waiter is not None:  # None: it holds the key at once (free, or readers only)
            _waits("queue")  # under the queue's mutex: in line for sure
        return waiter

    queue._enqueue = enqueue_and_tell
    from sessionlock.backends.file import FileBackend

    if isinstance(core.backend, FileBackend):  # never silently unhooked: the gates need it
        line = core.backend._line
        enlist = line._enlist

        def enlist_and_tell(key: str, slot: Any) -> None:
            enlist(key, slot)
            _waits("line")

        line._enlist = enlist_and_tell


# -- Flask (WSGI) -----------------------------------------------------------------------------


class _Tagged:
    """Outermost WSGI layer: the request's tag, for the probe hooks inside the middleware."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        token = _TAG.set(environ.get("HTTP_X_PROBE"))
        try:
            return self.app(environ, start_response)
        finally:
            _TAG.reset(token)


def flask_app() -> Any:
    import flask

    app = flask.Flask(__name__)
    app.secret_key = SECRET

    def answer(n: object) -> flask.Response:
        return flask.jsonify(n=n, pid=os.getpid())

    @app.get("/pid")
    def pid() -> flask.Response:  # which worker a connection reached; the session untouched
        return answer(None)

    @app.post("/init")
    def init() -> flask.Response:
        flask.session["n"] = 0
        return answer(0)

    @app.get("/read")
    def read() -> flask.Response:
        tag = flask.request.headers["X-Probe"]
        n = flask.session.get("n")
        ask("enter", tag, role="reader", seen=n)  # answered once the probe lets it go on
        ask("leave", tag)
        return answer(n)

    @app.post("/write")
    def write() -> flask.Response:
        tag = flask.request.headers["X-Probe"]
        n = flask.session.get("n", 0)
        ask("enter", tag, role="writer", seen=n)
        flask.session["n"] = n + 1
        ask("leave", tag)  # Flask saves the session after this, still under the lock
        return answer(n + 1)

    if _mode() != "bare":
        from sessionlock.flask import SessionLock

        SessionLock(app, **_options())
        _probe(app.extensions["sessionlock"].core)
    app.wsgi_app = _Tagged(app.wsgi_app)  # type: ignore[method-assign]
    ask("boot", "boot")  # this worker serves from now on
    return app


# -- Starlette (ASGI) -------------------------------------------------------------------------


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def answer(n: object) -> JSONResponse:
        return JSONResponse({"n": n, "pid": os.getpid()})

    async def pid(request: Request) -> JSONResponse:
        return answer(None)

    async def init(request: Request) -> JSONResponse:
        request.session["n"] = 0
        return answer(0)

    async def read(request: Request) -> JSONResponse:
        tag = request.headers["X-Probe"]
        n = request.session.get("n")
        await ask_async("enter", tag, role="reader", seen=n)
        await ask_async("leave", tag)
        return answer(n)

    async def write(request: Request) -> JSONResponse:
        tag = request.headers["X-Probe"]
        n = request.session.get("n", 0)
        await ask_async("enter", tag, role="writer", seen=n)
        request.session["n"] = n + 1
        await ask_async("leave", tag)
        return answer(n + 1)

    routes = [
        Route("/pid", pid),
        Route("/init", init, methods=["POST"]),
        Route("/read", read),
        Route("/write", write, methods=["POST"]),
    ]
    app: Any = Starlette(
        routes=routes, middleware=[Middleware(SessionMiddleware, secret_key=SECRET)]
    )
    if _mode() != "bare":
        from sessionlock.asgi import SessionLockMiddleware

        app = SessionLockMiddleware(app, **_options())  # outermost of the session: as README
        _probe(app.core)
    inner = app

    async def tagged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tag = None
        if scope["type"] == "http":
            tag = dict(scope["headers"]).get(b"x-probe", b"").decode() or None
        _TAG.set(tag)  # this request's task has a context of its own
        await inner(scope, receive, send)

    ask("boot", "boot")  # this worker serves from now on (uvicorn calls us before it listens)
    return tagged
