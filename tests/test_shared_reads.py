"""Shared reads (the ``shared`` option): readers of one session run side by side, a writer
runs alone, and a reader that writes is caught.

Flask runs through Werkzeug's test client in threads, Starlette through httpx's ASGI
transport: real frameworks with their real cookie sessions, in process. Overlap is shown
with a barrier the handlers meet at (every reader inside at once), never with timing; its
control, all-exclusive, cannot meet there (the barrier breaks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionlock.asgi import SessionLockMiddleware as AsgiLock
from sessionlock.errors import ConfigurationError
from sessionlock.wsgi import SessionLockMiddleware
from tests.queue_probe import probe

SECRET = "shared-reads-test-secret-0123456789abcdef"
READERS = 4
WAIT = 10.0


class Gate:
    """Counts what the probe queue puts in line; a test waits for the n-th."""

    def __init__(self) -> None:
        self.queued = threading.Semaphore(0)

    def note(self, event: str) -> None:
        self.queued.release()

    def wait_queued(self) -> None:
        assert self.queued.acquire(timeout=WAIT)


class Room:
    """What handlers do while they hold the session: meet at a barrier, or wait to leave."""

    def __init__(self, parties: int, timeout: float = WAIT) -> None:
        self.barrier = threading.Barrier(parties, timeout=timeout)
        self.broken = 0
        self.inside = threading.Semaphore(0)
        self.leave: dict[str, threading.Event] = {}

    def meet(self) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            self.broken += 1


def flask_app(room: Room, **options: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = SECRET

    @app.get("/read")
    def read() -> str:
        n = session.get("n", 0)
        room.meet()
        return str(n)

    @app.get("/hold/<name>")
    def hold(name: str) -> str:  # a reader that stays until told to leave
        n = session.get("n", 0)
        room.inside.release()
        assert room.leave[name].wait(WAIT)
        return str(n)

    @app.post("/write")
    def write() -> str:
        session["n"] = session.get("n", 0) + 1
        room.inside.release()
        assert room.leave["writer"].wait(WAIT)
        return str(session["n"])

    @app.get("/sneaky")
    def sneaky() -> str:  # a "read-only" route that writes anyway
        session["n"] = session.get("n", 0) + 100
        return "wrote"

    app.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, backend="memory://", **options
    )
    return app


def in_threads(client: Any, paths: list[str]) -> list[str]:
    results: list[str] = [""] * len(paths)

    def get(index: int, path: str) -> None:
        results[index] = client.get(path).text

    threads = [threading.Thread(target=get, args=(i, p), daemon=True) for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    return results


@pytest.fixture
def room() -> Iterator[Room]:
    made = Room(READERS)
    yield made
    for event in made.leave.values():
        event.set()  # nothing left waiting, whatever failed


def test_readers_of_one_session_run_side_by_side(room: Room) -> None:
    client = flask_app(room, shared=["GET"]).test_client()
    client.get("/sneaky")  # a first visit (exclusive: nothing to share yet): n = 100
    results = in_threads(client, ["/read"] * READERS)
    assert room.broken == 0  # all four met inside at once
    assert results == ["100"] * READERS


def test_control_all_exclusive_the_readers_run_one_at_a_time() -> None:
    room = Room(2, timeout=1.0)  # two inside at once never happens: the barrier breaks
    client = flask_app(room).test_client()
    client.get("/sneaky")  # the identity, as in the shared case
    in_threads(client, ["/read", "/read"])
    assert room.broken >= 1


def test_a_writer_waits_for_the_readers_and_readers_after_it_wait_for_it(room: Room) -> None:
    room.leave = {name: threading.Event() for name in ("r1", "writer", "r2")}
    app = flask_app(room, shared=["GET"])
    gate = probe(app.wsgi_app, Gate())
    client = app.test_client()
    client.get("/sneaky")  # identity issued, n = 100
    answers: dict[str, str] = {}

    def run(name: str, method: str, path: str) -> threading.Thread:
        def go() -> None:
            answers[name] = client.open(path, method=method).text

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread

    r1 = run("r1", "GET", "/hold/r1")
    assert room.inside.acquire(timeout=WAIT)  # R1 holds, shared
    writer = run("writer", "POST", "/write")
    gate.wait_queued()  # W waits for R1
    r2 = run("r2", "GET", "/hold/r2")
    gate.wait_queued()  # R2 waits too: behind W, though only a reader holds
    room.leave["r1"].set()
    r1.join(WAIT)
    assert room.inside.acquire(timeout=WAIT)  # W is in, alone
    assert "r2" not in answers
    room.leave["writer"].set()
    writer.join(WAIT)
    assert room.inside.acquire(timeout=WAIT)  # then R2
    room.leave["r2"].set()
    r2.join(WAIT)
    assert answers == {"r1": "100", "writer": "101", "r2": "101"}  # R2 saw W's write


def test_a_shared_request_that_writes_is_reported_and_undoes_nothing(
    room: Room, caplog: pytest.LogCaptureFixture
) -> None:
    client = flask_app(room, shared=["GET"]).test_client()
    room.leave["writer"] = threading.Event()
    room.leave["writer"].set()
    assert client.post("/write").text == "1"
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        response = client.get("/sneaky")
    assert response.status_code == 200
    assert not [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    (report,) = [r for r in caplog.records if getattr(r, "sessionlock_shared_write", None)]
    assert "GET /sneaky" in report.getMessage()
    assert client.post("/write").text == "2"  # the reader's +100 was not saved over it


def test_control_without_shared_the_same_write_is_saved(room: Room) -> None:
    client = flask_app(room).test_client()
    room.leave["writer"] = threading.Event()
    room.leave["writer"].set()
    assert client.post("/write").text == "1"
    client.get("/sneaky")
    assert client.post("/write").text == "102"


def test_a_bad_shared_option_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="shared takes"):
        SessionLockMiddleware(lambda e, s: [], shared=["FETCH"])  # type: ignore[arg-type,return-value]


# -- ASGI: Starlette ------------------------------------------------------------------------


def starlette_app(parties: int, wait: float = WAIT, **options: Any) -> tuple[Starlette, list[int]]:
    """``wait``: how long a reader waits at the barrier for the others (long where they
    must all come; short in a control, where they cannot)."""
    broken: list[int] = []

    async def read(request: Request) -> PlainTextResponse:
        n = request.session.get("n", 0)
        try:
            await asyncio.wait_for(barrier.wait(), wait)
        except (asyncio.TimeoutError, asyncio.BrokenBarrierError):
            broken.append(1)
        return PlainTextResponse(str(n))

    async def write(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    barrier = asyncio.Barrier(parties)
    routes = [Route("/read", read), Route("/write", write, methods=["POST"])]
    middleware = [
        Middleware(AsgiLock, backend="memory://", **options),
        Middleware(SessionMiddleware, secret_key=SECRET),
    ]
    return Starlette(routes=routes, middleware=middleware), broken


def run_asgi(app: Starlette, readers: int) -> list[str]:
    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await c.post("/write")
            responses = await asyncio.gather(*(c.get("/read") for _ in range(readers)))
            return [r.text for r in responses]

    return asyncio.run(scenario())


@pytest.mark.usefixtures("no_blocking")
def test_asgi_readers_run_side_by_side() -> None:
    app, broken = starlette_app(READERS, shared=["GET"])
    assert run_asgi(app, READERS) == ["1"] * READERS
    assert broken == []


@pytest.mark.usefixtures("no_blocking")
def test_asgi_control_all_exclusive_the_readers_never_meet() -> None:
    app, broken = starlette_app(2, wait=1.0)
    run_asgi(app, 2)
    assert broken  # one waited at the barrier alone: the other could not come in


# -- per-route marks -------------------------------------------------------------------------


def test_a_flask_view_marked_shared_runs_side_by_side_and_others_do_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sessionlock.flask import SessionLock, shared

    together, alone = Room(2), Room(2, timeout=1.0)
    app = Flask(__name__)
    app.secret_key = SECRET
    SessionLock(app, backend="memory://")

    @app.get("/report")
    @shared
    def report() -> str:
        together.meet()
        return str(session.get("n", 0))

    @app.get("/page")
    def page() -> str:
        alone.meet()
        return "page"

    @app.get("/marked-but-writes")
    @shared
    def marked_but_writes() -> str:
        session["n"] = 5
        return "wrote"

    client = app.test_client()
    client.get("/page")  # the identity (a first visit: alone, the barrier breaks once)
    alone.broken = 0
    in_threads(client, ["/report", "/report"])
    assert together.broken == 0
    in_threads(client, ["/page", "/page"])
    assert alone.broken >= 1  # unmarked: one at a time
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        client.get("/marked-but-writes")
    assert any("'marked_but_writes' modified the session" in r.getMessage() for r in caplog.records)
    assert client.get("/report").text == "0"  # its change was not saved


@pytest.mark.usefixtures("no_blocking")
def test_a_starlette_route_marked_shared_runs_side_by_side() -> None:
    from sessionlock.starlette import marked_routes, shared

    met: list[str] = []

    @shared
    async def report(request: Request) -> PlainTextResponse:
        try:
            await asyncio.wait_for(together.wait(), WAIT)
        except (asyncio.TimeoutError, asyncio.BrokenBarrierError):
            met.append("broken")
        return PlainTextResponse(str(request.session.get("n", 0)))

    async def page(request: Request) -> PlainTextResponse:
        try:
            await asyncio.wait_for(alone.wait(), 0.5)
        except (asyncio.TimeoutError, asyncio.BrokenBarrierError):
            met.append("alone")
        return PlainTextResponse("page")

    together, alone = asyncio.Barrier(2), asyncio.Barrier(2)
    routes = [Route("/report", report), Route("/page", page)]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AsgiLock, backend="memory://", shared=marked_routes(routes)),
            Middleware(SessionMiddleware, secret_key=SECRET),
        ],
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await c.get("/nowhere")  # the identity
            await asyncio.gather(c.get("/report"), c.get("/report"))
            assert met == []
            await asyncio.gather(c.get("/page"), c.get("/page"))

    asyncio.run(scenario())
    assert "alone" in met  # unmarked: the second waited until the first left


@pytest.mark.usefixtures("no_blocking")
def test_asgi_a_shared_request_that_writes_sends_no_session_cookie(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def sneaky(request: Request) -> PlainTextResponse:
        request.session["n"] = 100
        return PlainTextResponse("wrote")

    async def write(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    routes = [Route("/sneaky", sneaky), Route("/write", write, methods=["POST"])]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AsgiLock, backend="memory://", shared=["GET"]),
            Middleware(SessionMiddleware, secret_key=SECRET),
        ],
    )

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            first = (await c.post("/write")).text
            response = await c.get("/sneaky")
            assert "session=" not in str(response.headers.get_list("set-cookie"))
            return [first, (await c.post("/write")).text]

    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        assert asyncio.run(scenario()) == ["1", "2"]  # not 101: the reader's write is gone
    assert any(getattr(r, "sessionlock_shared_write", None) for r in caplog.records)
