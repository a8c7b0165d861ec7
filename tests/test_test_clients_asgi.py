"""ASGI test clients behave as without the middleware: Starlette's TestClient, httpx's
ASGITransport, FastAPI, Quart's and Falcon's.

Each test runs one scenario twice in-process, on the app wrapped by the middleware and on the
bare app (the control), and expects the same replies from both. The middleware is built with
a short ``timeout``, so a request left waiting for its own session shows as a 503 instead of
a stuck test. A stream is held open by the client not reading it (Starlette's TestClient has
no buffer) or by an event the test sets, never by a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import falcon.asgi
import falcon.testing
import fastapi
import httpx
import itsdangerous
import pytest
import quart
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from sessionlock.asgi import SessionLockMiddleware

with warnings.catch_warnings():  # Starlette >= 1.x would rather have httpx2; not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

pytestmark = pytest.mark.usefixtures("no_blocking")  # nothing blocks a loop (tests/conftest.py)

TIMEOUT = 2.0  # a request stuck behind its own session answers 503 after this, never hangs
WAIT = 10.0  # liveness guard for awaited events; never reached when the code is right
SECRET = "test-clients-secret-0123456789abcdef"
IDENTITY = "sessionlock"  # the middleware's identity cookie (key="identity", the default)
Reply = tuple[int, str, bool]  # status, body, whether the middleware served it


def lock(app: Any, **options: Any) -> SessionLockMiddleware:
    return SessionLockMiddleware(app, backend="memory://", timeout=TIMEOUT, **options)


def expect(texts: list[str], locked: bool) -> list[Reply]:
    return [(200, text, locked) for text in texts]


def reply(response: httpx.Response) -> Reply:
    timing = response.headers.get("server-timing", "")
    return response.status_code, response.text, "sessionlock" in timing


async def quart_visits(client: Any, *paths: str) -> list[Reply]:
    replies = []
    for path in paths:
        response = await client.get(path)
        text = await response.get_data(as_text=True)
        timing = response.headers.get("Server-Timing", "")
        replies.append((response.status_code, text, "sessionlock" in timing))
    return replies


def falcon_reply(result: falcon.testing.Result) -> Reply:
    timing = result.headers.get("Server-Timing") or ""
    return result.status_code, result.text, "sessionlock" in timing


# -- the apps --------------------------------------------------------------------------------


async def count(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))


async def login(request: Request) -> PlainTextResponse:
    request.session["user"] = request.path_params["user"]
    return PlainTextResponse(request.session["user"])


async def whoami(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.session.get("user", "-"))


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            yield chunk  # TestClient's body channel holds no chunk: each waits for a read

    return StreamingResponse(chunks())


async def theme(request: Request) -> PlainTextResponse:
    response = PlainTextResponse("set")
    response.set_cookie("theme", "dark")
    return response


async def cookies(request: Request) -> PlainTextResponse:
    return PlainTextResponse(",".join(sorted(request.cookies)))


def starlette_app(locked: bool, **options: Any) -> Starlette:
    routes = [
        Route("/count", count),
        Route("/login/{user}", login),
        Route("/whoami", whoami),
        Route("/stream", stream),
        Route("/theme", theme),
        Route("/cookies", cookies),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if locked:  # listed first: outermost, outside the session layer
        options.update(backend="memory://", timeout=TIMEOUT)
        middleware.insert(0, Middleware(SessionLockMiddleware, **options))
    return Starlette(routes=routes, middleware=middleware)


def quart_app(locked: bool, release: asyncio.Event | None = None, **options: Any) -> quart.Quart:
    app = quart.Quart(__name__)
    app.secret_key = SECRET

    @app.get("/count")
    async def count() -> str:
        quart.session["n"] = quart.session.get("n", 0) + 1
        return str(quart.session["n"])

    @app.get("/login/<user>")
    async def login(user: str) -> str:
        quart.session["user"] = user
        return user

    @app.get("/whoami")
    async def whoami() -> str:
        return str(quart.session.get("user", "-"))

    @app.get("/stream")
    async def stream() -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"a"
            assert release is not None
            await asyncio.wait_for(release.wait(), WAIT)  # open until the test says
            yield b"bc"

        return chunks()

    @app.get("/theme")
    async def theme() -> quart.Response:
        response = quart.Response("set")
        response.set_cookie("theme", "dark")
        return response

    @app.get("/cookies")
    async def cookies() -> str:
        return ",".join(sorted(quart.request.cookies))

    if locked:
        app.asgi_app = lock(app.asgi_app, **options)  # type: ignore[method-assign]
    return app


def falcon_app(locked: bool, release: asyncio.Event | None = None) -> Any:
    class Theme:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            resp.set_cookie("theme", "dark", secure=False)
            resp.text = "set"

    class Cookies:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            resp.text = ",".join(sorted(req.cookies))

    class Stream:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            async def chunks() -> AsyncIterator[bytes]:
                yield b"a"
                assert release is not None
                await asyncio.wait_for(release.wait(), WAIT)  # open until the test says
                yield b"bc"

            resp.stream = chunks()

    class Echo:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            resp.media = {name: req.get_header(name) for name in ECHOED}

    app = falcon.asgi.App()
    app.add_route("/echo", Echo())
    app.add_route("/theme", Theme())
    app.add_route("/cookies", Cookies())
    app.add_route("/stream", Stream())
    return lock(app) if locked else app


# -- several requests of one client ----------------------------------------------------------

PATHS = ["/theme", "/cookies", "/cookies"]
SEEN = ["set", "theme", "theme"]  # the app sees its own cookie, never the identity cookie


def starlette_testclient(locked: bool) -> list[Reply]:
    client = TestClient(starlette_app(locked))  # a portal (event loop thread) per request
    return [reply(client.get(path)) for path in PATHS]


def starlette_testclient_context(locked: bool) -> list[Reply]:
    with TestClient(starlette_app(locked)) as client:  # one portal for the block
        return [reply(client.get(path)) for path in PATHS]


def httpx_asgi_transport(locked: bool) -> list[Reply]:
    async def run() -> list[Reply]:
        transport = httpx.ASGITransport(app=starlette_app(locked))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [reply(await client.get(path)) for path in PATHS]

    return asyncio.run(run())


def quart_test_client(locked: bool) -> list[Reply]:
    client = quart_app(locked).test_client()  # made off the loop: Quart reads the disk
    return asyncio.run(quart_visits(client, *PATHS))


def falcon_asgi_test_client(locked: bool) -> list[Reply]:
    client = falcon.testing.TestClient(falcon_app(locked))
    jar: dict[str, str] = {}  # Falcon's client keeps no jar: the test hands cookies on
    replies = []
    for path in PATHS:
        result = client.simulate_get(path, cookies=jar)
        jar.update((name, cookie.value) for name, cookie in result.cookies.items())
        replies.append(falcon_reply(result))
    assert (IDENTITY in jar) is locked
    return replies


@pytest.mark.parametrize(
    "visits",
    [
        pytest.param(starlette_testclient, id="starlette-testclient"),
        pytest.param(starlette_testclient_context, id="starlette-testclient-with"),
        pytest.param(httpx_asgi_transport, id="httpx-asgitransport"),
        pytest.param(quart_test_client, id="quart"),
        pytest.param(falcon_asgi_test_client, id="falcon-asgi"),
    ],
)
def test_requests_in_a_row_see_only_their_own_cookies(
    visits: Callable[[bool], list[Reply]],
) -> None:
    assert visits(True) == expect(SEEN, True)
    assert visits(False) == expect(SEEN, False)


ECHOED = ("host", "user-agent", "x-probe", "cookie")


def test_falcon_asgi_app_receives_every_request_header() -> None:
    """Falcon's client hands the app ``scope["headers"]`` as an iterator (ASGI asks for an
    iterable, no more): reading the identity cookie must not use the headers up."""
    seen = {}
    for locked in (True, False):
        client = falcon.testing.TestClient(falcon_app(locked))
        first = client.simulate_get("/echo", headers={"X-Probe": "1"})
        jar = {name: cookie.value for name, cookie in first.cookies.items()}
        jar["theme"] = "dark"
        later = client.simulate_get("/echo", headers={"X-Probe": "1"}, cookies=jar)
        assert (first.status_code, later.status_code) == (200, 200)
        seen[locked] = [first.json, later.json]
    assert seen[True] == seen[False]
    assert [(echo["x-probe"], echo["cookie"]) for echo in seen[False]] == [
        ("1", None),
        ("1", "theme=dark"),
    ]


# -- a stream left open while the next request of the same client runs -------------------------

Opened = tuple[Reply, bytes]  # the request made while the stream was open; the stream's body


def starlette_stream(locked: bool, context: bool) -> Opened:
    client = TestClient(starlette_app(locked))
    with contextlib.ExitStack() as stack:
        if context:
            stack.enter_context(client)
        client.get("/theme")
        with client.stream("GET", "/stream") as streamed:
            chunks = streamed.iter_bytes()
            first = next(chunks)  # the app now waits to hand over its next chunk
            during = reply(client.get("/cookies"))
            body = first + b"".join(chunks)
    return during, body


def quart_stream(locked: bool) -> Opened:
    release = asyncio.Event()
    client = quart_app(locked, release).test_client()

    async def run() -> Opened:
        await client.get("/theme")
        async with client.request("/stream") as connection:
            await connection.send_complete()
            first = await asyncio.wait_for(connection.receive(), WAIT)
            (during,) = await quart_visits(client, "/cookies")
            release.set()
        return during, first + bytes(connection.response_data)  # the rest, read on exit

    return asyncio.run(run())


def falcon_stream(locked: bool) -> Opened:
    release = asyncio.Event()
    app = falcon_app(locked, release)

    async def run() -> Opened:
        async with falcon.testing.ASGIConductor(app) as conductor:
            first_result = await conductor.simulate_get("/theme")
            jar = {name: cookie.value for name, cookie in first_result.cookies.items()}
            async with conductor.simulate_get_stream("/stream", cookies=jar) as streamed:
                first = await asyncio.wait_for(streamed.stream.read(), WAIT)
                result = await conductor.simulate_get("/cookies", cookies=jar)
                release.set()
            body = first + await streamed.stream.read()
        return falcon_reply(result), body

    return asyncio.run(run())


@pytest.mark.parametrize(
    "opened",
    [
        pytest.param(lambda locked: starlette_stream(locked, False), id="starlette-testclient"),
        pytest.param(lambda locked: starlette_stream(locked, True), id="starlette-testclient-with"),
        pytest.param(quart_stream, id="quart"),
        pytest.param(falcon_stream, id="falcon-asgi-conductor"),
    ],
)
def test_stream_left_open_while_the_next_request_runs(opened: Callable[[bool], Opened]) -> None:
    for locked in (True, False):
        during, body = opened(locked)
        assert during == (200, "theme", locked)
        assert body == b"abc"


async def boom(request: Request) -> PlainTextResponse:
    raise LookupError("boom")


def test_starlette_testclient_exception_raised_into_the_test_leaves_the_session_free() -> None:
    """TestClient re-raises an app's error in the test; the client's next request runs."""
    for locked in (True, False):
        app = starlette_app(locked)
        app.add_route("/boom", boom)
        client = TestClient(app)
        assert client.get("/count").text == "1"
        with pytest.raises(LookupError, match="boom"):
            client.get("/boom")
        assert reply(client.get("/count")) == (200, "2", locked)


# -- FastAPI: a cookie-parameter model that forbids unknown cookies ----------------------------


class Prefs(BaseModel):
    """The app's cookies as a model (FastAPI 0.115+): any cookie it does not name is a 422."""

    model_config = ConfigDict(extra="forbid")
    theme: str | None = None


def fastapi_app(locked: bool) -> Any:
    major, minor = (int(part) for part in fastapi.__version__.split(".")[:2])
    if (major, minor) < (0, 115):
        pytest.skip(f"FastAPI {fastapi.__version__} has no cookie-parameter models (0.115+)")
    app = fastapi.FastAPI()

    @app.get("/theme")
    async def set_theme(response: fastapi.Response) -> str:
        response.set_cookie("theme", "dark")
        return "set"

    @app.get("/prefs")
    async def prefs(cookies: Annotated[Prefs, fastapi.Cookie()]) -> dict[str, Any]:
        return cookies.model_dump()

    return lock(app) if locked else app


FASTAPI_PATHS = ["/theme", "/prefs", "/prefs"]


def fastapi_testclient(locked: bool) -> list[Reply]:
    with TestClient(fastapi_app(locked)) as client:
        return [reply(client.get(path)) for path in FASTAPI_PATHS]


def fastapi_httpx(locked: bool) -> list[Reply]:
    async def run() -> list[Reply]:
        transport = httpx.ASGITransport(app=fastapi_app(locked))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [reply(await client.get(path)) for path in FASTAPI_PATHS]

    return asyncio.run(run())


@pytest.mark.parametrize(
    "visits",
    [
        pytest.param(fastapi_testclient, id="starlette-testclient"),
        pytest.param(fastapi_httpx, id="httpx-asgitransport"),
    ],
)
def test_fastapi_cookie_model_with_extra_forbid_accepts_the_requests(
    visits: Callable[[bool], list[Reply]],
) -> None:
    prefs = json.dumps({"theme": "dark"}, separators=(",", ":"))
    assert visits(True) == expect(['"set"', prefs, prefs], True)
    assert visits(False) == expect(['"set"', prefs, prefs], False)


# -- cookie sessions: what a test does to its own jar reaches the app --------------------------


def signed(data: dict[str, Any]) -> str:
    """A Starlette session cookie, as a test forges one to start from a given session."""
    payload = b64encode(json.dumps(data).encode())
    return itsdangerous.TimestampSigner(SECRET).sign(payload).decode()


def jar_set(jar: httpx.Cookies, name: str, value: str) -> None:
    """Replace the cookie in place (same domain and path), as a test would edit its jar."""
    (old,) = [cookie for cookie in jar.jar if cookie.name == name]
    jar.set(name, value, domain=old.domain, path=old.path)


JarEdit = Callable[[httpx.Cookies, httpx.Cookies], str]


def forged(jar: httpx.Cookies, other: httpx.Cookies) -> str:
    jar_set(jar, "session", signed({"user": "bob"}))
    return "bob"


def deleted(jar: httpx.Cookies, other: httpx.Cookies) -> str:
    jar.delete("session")
    return "-"


def swapped(jar: httpx.Cookies, other: httpx.Cookies) -> str:
    jar_set(jar, "session", other["session"])
    return "carol"


JAR_EDITS = [
    pytest.param(forged, id="forged-session"),
    pytest.param(deleted, id="deleted"),
    pytest.param(swapped, id="other-sessions-cookie"),
]


async def session_edit_scenario(
    get: Callable[[str], Awaitable[httpx.Response]],
    jar: httpx.Cookies,
    other: httpx.Cookies,
    edit: JarEdit,
    locked: bool,
) -> None:
    visits = [reply(await get(path)) for path in ("/whoami", "/login/alice", "/whoami")]
    assert visits == expect(["-", "alice", "alice"], locked)
    user = edit(jar, other)
    visits = [reply(await get(path)) for path in ("/whoami", "/count", "/whoami")]
    assert visits == expect([user, "1", user], locked)


@pytest.mark.parametrize("edit", JAR_EDITS)
def test_starlette_testclient_jar_edits_reach_the_app(edit: JarEdit) -> None:
    for locked in (True, False):
        app = starlette_app(locked, cookie_session="session")
        with TestClient(app) as client, TestClient(app) as other:
            assert other.get("/login/carol").text == "carol"

            async def get(path: str, client: TestClient = client) -> httpx.Response:
                return await asyncio.to_thread(client.get, path)  # it blocks: off the loop

            asyncio.run(session_edit_scenario(get, client.cookies, other.cookies, edit, locked))


@pytest.mark.parametrize("edit", JAR_EDITS)
def test_httpx_asgitransport_jar_edits_reach_the_app(edit: JarEdit) -> None:
    async def run(locked: bool) -> None:
        transport = httpx.ASGITransport(app=starlette_app(locked, cookie_session="session"))
        base = "http://testserver"
        async with (
            httpx.AsyncClient(transport=transport, base_url=base) as client,
            httpx.AsyncClient(transport=transport, base_url=base) as other,
        ):
            assert (await other.get("/login/carol")).text == "carol"
            await session_edit_scenario(client.get, client.cookies, other.cookies, edit, locked)

    for locked in (True, False):
        asyncio.run(run(locked))


async def quart_transaction(client: Any, other: Any) -> str:
    async with client.session_transaction() as edited:
        edited["user"] = "bob"
    return "bob"


async def quart_deleted(client: Any, other: Any) -> str:
    client.delete_cookie("localhost", "session")
    return "-"


async def quart_swapped(client: Any, other: Any) -> str:
    (cookie,) = [cookie for cookie in other.cookie_jar if cookie.name == "session"]
    client.set_cookie("localhost", "session", cookie.value)
    return "carol"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(quart_transaction, id="session-transaction"),
        pytest.param(quart_deleted, id="delete-cookie"),
        pytest.param(quart_swapped, id="other-sessions-cookie"),
    ],
)
def test_quart_jar_edits_reach_the_app(edit: Callable[[Any, Any], Awaitable[str]]) -> None:
    async def run(client: Any, other: Any, locked: bool) -> None:
        assert await quart_visits(other, "/login/carol") == expect(["carol"], locked)
        visits = await quart_visits(client, "/whoami", "/login/alice", "/whoami")
        assert visits == expect(["-", "alice", "alice"], locked)
        user = await edit(client, other)
        visits = await quart_visits(client, "/whoami", "/count", "/whoami")
        assert visits == expect([user, "1", user], locked)

    for locked in (True, False):
        app = quart_app(locked, cookie_session="session")  # made off the loop
        asyncio.run(run(app.test_client(), app.test_client(), locked))
