"""The ASGI middleware in-process: lifecycle, refusals, disconnects, keys, Starlette.

The middleware is called directly with a scope and a fake client (``receive`` fed from a
queue, ``send`` recorded) inside ``asyncio.run``. Requests are ordered with events and a hook
on the lock queue (which tells when a request has been put in line), never with sleeps. Every
concurrency test has a control: the same scenario without the middleware, where the requests
overlap or an update is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionlock import BackendUnavailable, keys
from sessionlock.asgi import SessionLockMiddleware
from sessionlock.backends.memory import MemoryBackend
from tests.queue_probe import probe

pytestmark = pytest.mark.usefixtures("no_blocking")  # nothing may block the event loop

WAIT = 10.0  # liveness guard for awaited events; never reached when the code is right
SID = "raw-session-id-0123456789abcdef"
Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


# -- helpers --------------------------------------------------------------------------------


class Gate:
    """Counts requests in the app and requests put in the lock queue; awaitable changes."""

    def __init__(self) -> None:
        self.in_app = 0  # requests that reached the app
        self.queued = 0  # requests put in the lock queue
        self.inside = 0  # requests in the app right now
        self.peak = 0  # most requests ever in the app at once
        self._changed = asyncio.Event()

    def note(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        self._changed.set()

    @contextlib.asynccontextmanager
    async def visit(self) -> AsyncIterator[None]:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.note("in_app")
        try:
            yield
        finally:
            self.inside -= 1

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async def until() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)


def observed(middleware: SessionLockMiddleware) -> Gate:
    return probe(middleware, Gate())


def wrap(app: ASGIApp, **options: Any) -> SessionLockMiddleware:
    """The middleware over the in-process backend: these are unit tests of the core."""
    options.setdefault("backend", "memory://")
    return SessionLockMiddleware(app, **options)


def by_cookie(app: ASGIApp, **options: Any) -> SessionLockMiddleware:
    return wrap(app, key="cookie:sid", **options)


def hashed(middleware: SessionLockMiddleware, raw: str) -> str:
    return keys.hash_key(middleware.core.secret, raw)


def scope_for(
    path: str = "/",
    *,
    method: str = "GET",
    cookie: str | None = None,
    scheme: str = "http",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    raw_headers = [(b"host", b"testserver"), *(headers or [])]
    if cookie is not None:
        raw_headers.append((b"cookie", cookie.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class Client:
    """One request's client: ``receive`` reads what the test feeds, ``send`` is recorded."""

    def __init__(self, body: list[bytes] | None = None) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        chunks = body if body is not None else [b""]
        for i, chunk in enumerate(chunks):
            self.feed(chunk, more=i < len(chunks) - 1)
        self.sent: list[Message] = []
        self.complete = asyncio.Event()

    def feed(self, chunk: bytes, *, more: bool) -> None:
        self.inbox.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def headers(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.sent[0]["headers"] if k.lower() == wanted]

    def header(self, name: str) -> str | None:
        found = self.headers(name)
        return found[-1] if found else None


async def call(app: ASGIApp, scope: dict[str, Any] | None = None, **client: Any) -> Client:
    """Run one request to completion; the client, with what was sent."""
    peer = Client(**client)
    await app(scope if scope is not None else scope_for(), peer.receive, peer.send)
    return peer


def start(app: ASGIApp, scope: dict[str, Any], peer: Client) -> asyncio.Task[None]:
    return asyncio.ensure_future(app(scope, peer.receive, peer.send))


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 3 * WAIT))


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


def held_app(
    leave: asyncio.Event, entered: list[str] | None = None, *, inside: asyncio.Event | None = None
) -> ASGIApp:
    """An app whose first request works on the session (no response yet) until ``leave``.

    ``inside`` is set when that request is in the app: its session is held from then on.
    Later requests answer at once.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if entered is not None:
            entered.append(scope["path"])
        if inside is None or not inside.is_set():
            if inside is not None:
                inside.set()
            await leave.wait()
        await hello(scope, receive, send)

    return app


# -- basics ---------------------------------------------------------------------------------


def test_server_timing_and_no_key_pass_through() -> None:
    async def main() -> None:
        middleware = by_cookie(hello)
        peer = await call(middleware, scope_for(cookie=f"sid={SID}"))
        assert peer.status == 200
        timing = peer.header("Server-Timing")
        assert timing is not None
        assert re.fullmatch(r'sessionlock;dur=\d+\.\d;desc="session lock wait"', timing)
        bare = await call(middleware, scope_for(cookie="other=1"))
        assert bare.status == 200
        assert bare.header("Server-Timing") is None
        assert len(middleware.core.queue) == 0

    run(main())


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_websocket_and_lifespan_scopes_pass_through_untouched(kind: str) -> None:
    async def main() -> None:
        seen: list[tuple[Any, Any, Any]] = []
        leave = asyncio.Event()
        inside = asyncio.Event()
        holder_app = held_app(leave, inside=inside)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                await holder_app(scope, receive, send)
            else:
                seen.append((scope, receive, send))

        middleware = by_cookie(app, timeout=0.01)
        holder = Client()
        held = start(middleware, scope_for(cookie=f"sid={SID}"), holder)
        await inside.wait()  # the session is held now
        scope = {"type": kind, "headers": [(b"cookie", f"sid={SID}".encode())]}
        if kind == "websocket":
            scope.update(path="/ws", scheme="ws")

        async def receive() -> Message:
            return {"type": f"{kind}.connect"}

        async def send(message: Message) -> None:
            pass

        await middleware(scope, receive, send)
        assert len(seen) == 1
        assert seen[0][0] is scope  # the very objects, not wrappers
        assert seen[0][1] is receive
        assert seen[0][2] is send
        assert middleware.core.queue.waiting(hashed(middleware, SID)) == 0
        leave.set()
        await held
        assert len(middleware.core.queue) == 0

    run(main())


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "locked", [pytest.param(True, id="middleware"), pytest.param(False, id="control-bare")]
)
def test_the_lock_is_held_until_the_response_starts(locked: bool) -> None:
    """The app works on the session: the next request waits until its response starts."""

    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        entered: list[str] = []
        app = held_app(leave, entered, inside=inside)
        middleware = by_cookie(app)
        gate = observed(middleware)
        target: ASGIApp = middleware if locked else app
        first, second = Client(), Client()
        one = start(target, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        two = start(target, scope_for("/2", cookie=f"sid={SID}"), second)
        if locked:
            await gate.wait_for(lambda: gate.queued == 1)
            assert entered == ["/1"]  # the second waits in line...
            leave.set()
            await one
            await asyncio.wait_for(second.complete.wait(), WAIT)  # ...until the first answered
        else:
            await asyncio.wait_for(second.complete.wait(), WAIT)  # control: ran meanwhile
            assert not one.done()
            leave.set()
            await one
        await two
        assert entered == ["/1", "/2"]
        assert len(middleware.core.queue) == 0

    run(main())


class Boom(Exception):
    pass


async def raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise Boom


async def raises_after_response(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await hello(scope, receive, send)
    raise Boom


async def send_raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await hello(scope, receive, send)  # the client's send fails (connection closed)


@pytest.mark.parametrize(
    ("app", "send_fails"),
    [
        pytest.param(raises, False, id="app-raises"),
        pytest.param(raises_after_response, False, id="app-raises-after-response"),
        pytest.param(send_raises, True, id="send-raises-oserror"),
    ],
)
def test_an_exception_releases(app: ASGIApp, send_fails: bool) -> None:
    async def main() -> None:
        middleware = by_cookie(app)

        async def send(message: Message) -> None:
            if send_fails:
                raise OSError("connection closed")

        with pytest.raises((Boom, OSError)):
            await middleware(scope_for(cookie=f"sid={SID}"), Client().receive, send)
        assert len(middleware.core.queue) == 0
        middleware.app = hello
        assert (await call(middleware, scope_for(cookie=f"sid={SID}"))).status == 200

    run(main())


def test_an_exception_in_prepare_releases() -> None:
    class Failing:
        def prepare(self, admission: Any, request: Any) -> None:
            raise Boom

        def finish(self, admission: Any, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return headers

    async def main() -> None:
        middleware = by_cookie(hello)
        middleware.core.cookies = Failing()
        with pytest.raises(Boom):
            await call(middleware, scope_for(cookie=f"sid={SID}"))
        assert len(middleware.core.queue) == 0

    run(main())


def test_a_backend_failure_on_the_fast_path_answers_503_and_keeps_nothing() -> None:
    """A backend that fails once (EMFILE, a closed backend) must not leave the turn taken."""

    class FailsOnce(MemoryBackend):
        failed = False

        def try_acquire(self, key: str) -> Any:
            if not self.failed:
                self.failed = True
                raise BackendUnavailable("file lock failed: too many open files")
            return super().try_acquire(key)

    async def main() -> None:
        middleware = by_cookie(hello, backend=FailsOnce())
        assert (await call(middleware, scope_for(cookie=f"sid={SID}"))).status == 503
        assert len(middleware.core.queue) == 0
        assert (await call(middleware, scope_for(cookie=f"sid={SID}"))).status == 200

    run(main())


@pytest.mark.parametrize(
    "where", [pytest.param("in-app", id="holder"), pytest.param("waiting", id="waiter")]
)
def test_a_cancellation_releases(where: str) -> None:
    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        middleware = by_cookie(held_app(leave, inside=inside))
        gate = observed(middleware)
        first, second = Client(), Client()
        one = start(middleware, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        two = start(middleware, scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        victim = one if where == "in-app" else two
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        key = hashed(middleware, SID)
        assert middleware.core.queue.waiting(key) == 0
        if where == "in-app":  # the waiter got the turn
            await asyncio.wait_for(second.complete.wait(), WAIT)
            leave.set()
            await two
        else:  # the waiter left the line; the holder finishes normally
            assert second.sent == []
            leave.set()
            await one
        assert len(middleware.core.queue) == 0

    run(main())


# -- waiting: disconnects and body replay -----------------------------------------------


def test_a_client_that_disconnects_while_waiting_leaves_the_queue() -> None:
    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        entered: list[str] = []
        middleware = by_cookie(held_app(leave, entered, inside=inside))
        gate = observed(middleware)
        first, second = Client(), Client()
        one = start(middleware, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        two = start(middleware, scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        second.disconnect()
        await asyncio.wait_for(two, WAIT)  # it returns without waiting for the holder
        assert not one.done()
        assert second.sent == []  # nobody to answer
        assert middleware.core.queue.waiting(hashed(middleware, SID)) == 0
        leave.set()
        await one
        assert entered == ["/1"]  # the app never ran for the gone client
        assert len(middleware.core.queue) == 0

    run(main())


def holder_then_reader(
    leave: asyncio.Event, inside: asyncio.Event, received: list[Message]
) -> ASGIApp:
    """``/1`` holds the session until ``leave``; any other path reads its whole body into
    ``received``, then answers."""
    holder_app = held_app(leave, inside=inside)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/1":
            await holder_app(scope, receive, send)
            return
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body", False):
                break
        await hello(scope, receive, send)

    return app


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param([b"abc", b"", b"\x00\xff" * 1000, b"end"], [], id="all-while-waiting"),
        pytest.param([b"first"], [b"second", b"third"], id="some-while-waiting"),
        pytest.param([], [b"later"], id="none-while-waiting"),
    ],
)
def test_body_chunks_read_while_waiting_reach_the_app_intact(
    before: list[bytes], after: list[bytes]
) -> None:
    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        received: list[Message] = []
        middleware = by_cookie(holder_then_reader(leave, inside, received))
        gate = observed(middleware)
        first, second = Client(), Client(body=[])
        one = start(middleware, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        two = start(middleware, scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        chunks = before + after
        for i, chunk in enumerate(before):
            second.feed(chunk, more=i < len(chunks) - 1)
        await asyncio.wait_for(_drained(second), WAIT)  # the waiting request read them all
        leave.set()
        await one
        for i, chunk in enumerate(after, start=len(before)):
            second.feed(chunk, more=i < len(chunks) - 1)
        await asyncio.wait_for(two, WAIT)
        assert [m["body"] for m in received] == chunks
        assert [m["more_body"] for m in received] == [True] * (len(chunks) - 1) + [False]
        assert second.status == 200
        assert len(middleware.core.queue) == 0

    run(main())


@pytest.mark.parametrize(
    ("limit", "read_ahead"),
    [
        pytest.param(None, 4, id="bounded-64KiB"),
        pytest.param(10**9, 40, id="control-unbounded-reads-everything"),
    ],
)
def test_a_waiting_request_reads_at_most_a_bounded_body_ahead(
    limit: int | None, read_ahead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 640 KiB upload waiting for its turn: 64 KiB are read ahead, the rest stays with the
    server (flow control), and the app still gets every byte in order."""
    import sessionlock.asgi

    if limit is not None:
        monkeypatch.setattr(sessionlock.asgi, "_MAX_KEPT", limit)
    chunks = [bytes([i]) * 16384 for i in range(40)]

    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()
        received: list[Message] = []
        middleware = by_cookie(holder_then_reader(leave, inside, received))
        gate = observed(middleware)
        first, second = Client(), Client(body=chunks)
        one = start(middleware, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()
        two = start(middleware, scope_for("/2", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 1)
        for _ in range(200):  # let the waiting request read all it will; loop turns only
            await asyncio.sleep(0)
        assert len(chunks) - second.inbox.qsize() == read_ahead
        leave.set()
        await one
        await asyncio.wait_for(two, WAIT)
        assert [m["body"] for m in received] == chunks
        assert second.status == 200

    run(main())


async def _drained(peer: Client) -> None:
    while not peer.inbox.empty():
        await asyncio.sleep(0)  # yield to the reader; no wall-clock wait


# -- refusals -------------------------------------------------------------------------------


def check_refusal(peer: Client, code: int) -> None:
    assert peer.status == code
    retry = peer.header("Retry-After")
    assert retry is not None
    assert retry.isdigit()
    assert peer.header("Content-Type") == "text/plain; charset=utf-8"
    assert peer.header("Content-Length") == str(len(peer.body))
    assert peer.body.decode().strip()
    assert not peer.sent[-1].get("more_body", False)


def test_timeout_503_and_full_queue_429_logged_without_the_session_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionlock")

    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        middleware = by_cookie(held_app(leave, inside=inside), timeout=0.01, max_waiters=1)
        gate = observed(middleware)
        first = Client()
        one = start(middleware, scope_for("/1", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        check_refusal(await call(middleware, scope_for("/2", cookie=f"sid={SID}")), 503)
        assert middleware.core.queue.waiting(hashed(middleware, SID)) == 0
        middleware.core.timeout = None  # the next waiter stays in line
        second = Client()
        two = start(middleware, scope_for("/3", cookie=f"sid={SID}"), second)
        await gate.wait_for(lambda: gate.queued == 2)
        check_refusal(await call(middleware, scope_for("/4", cookie=f"sid={SID}")), 429)
        leave.set()
        await one
        await two
        assert second.status == 200
        assert len(middleware.core.queue) == 0

    run(main())
    records = [r for r in caplog.records if r.name == "sessionlock"]
    assert any("503" in r.getMessage() for r in records)
    assert any("429" in r.getMessage() for r in records)
    for record in records:
        assert SID not in record.getMessage()
        assert SID not in repr(vars(record))


# -- exemptions and identity ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exempt", "method", "path", "is_exempt"),
    [
        pytest.param(["/static/"], "GET", "/static/app.css", True, id="path-prefix"),
        pytest.param(["/static/"], "GET", "/api/next", False, id="path-not-exempt"),
        pytest.param(["GET", "HEAD"], "HEAD", "/api/next", True, id="method"),
        pytest.param(["GET"], "POST", "/api/next", False, id="method-not-exempt"),
        pytest.param(lambda s: s["path"] == "/ro", "POST", "/ro", True, id="predicate"),
        pytest.param(lambda s: False, "POST", "/ro", False, id="predicate-false"),
    ],
)
def test_exempt_requests_run_unserialized(
    exempt: Any, method: str, path: str, is_exempt: bool
) -> None:
    async def main() -> None:
        leave = asyncio.Event()
        inside = asyncio.Event()
        holder_app = held_app(leave, inside=inside)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["path"] == "/hold":
                await holder_app(scope, receive, send)
            else:
                await hello(scope, receive, send)

        middleware = by_cookie(app, timeout=0.01, exempt=exempt)
        first = Client()
        one = start(middleware, scope_for("/hold", method="PUT", cookie=f"sid={SID}"), first)
        await inside.wait()  # the session is held now
        peer = await call(middleware, scope_for(path, method=method, cookie=f"sid={SID}"))
        assert peer.status == (200 if is_exempt else 503)
        leave.set()
        await one
        assert len(middleware.core.queue) == 0

    run(main())


IDENTITY = re.compile(
    r"(?P<name>[^=]+)=(?P<value>[A-Za-z0-9_-]{43}\.0\.[A-Za-z0-9_-]{16})"
    r"; Max-Age=\d+; Path=/; HttpOnly; SameSite=Lax"
    r"(?P<secure>; Secure)?"
)


@pytest.mark.parametrize(
    ("scheme", "name", "secure"),
    [
        pytest.param("http", "sessionlock", False, id="http"),
        pytest.param("https", "__Host-sessionlock", True, id="https-host-prefix"),
    ],
)
def test_an_identity_cookie_is_issued_when_absent_and_reused(
    scheme: str, name: str, secure: bool
) -> None:
    async def main() -> None:
        middleware = wrap(hello)
        peer = await call(middleware, scope_for(scheme=scheme))
        cookies = peer.headers("Set-Cookie")
        assert len(cookies) == 1
        match = IDENTITY.fullmatch(cookies[0])
        assert match is not None, cookies[0]
        assert match["name"] == name
        assert bool(match["secure"]) is secure
        again = await call(middleware, scope_for(scheme=scheme, cookie=f"{name}={match['value']}"))
        assert again.status == 200
        assert again.headers("Set-Cookie") == []

    run(main())


# -- concurrency: no lost update; different keys in parallel -------------------------------


@pytest.mark.parametrize(
    "locked", [pytest.param(True, id="middleware"), pytest.param(False, id="control-bare")]
)
def test_concurrent_requests_of_one_session_lose_no_update(locked: bool) -> None:
    async def main() -> None:
        requests = 4
        store: dict[str, int] = {}
        gate = Gate()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            sid = keys.read_cookie(scope, "sid") or ""
            async with gate.visit():
                value = store.get(sid, 0)  # load
                await gate.wait_for(lambda: gate.in_app + gate.queued >= requests)
                store[sid] = value + 1  # save
            await hello(scope, receive, send)

        middleware = by_cookie(app)
        probe(middleware, gate)
        target: ASGIApp = middleware if locked else app
        peers = [Client() for _ in range(requests)]
        await asyncio.gather(
            *(target(scope_for(cookie=f"sid={SID}"), p.receive, p.send) for p in peers)
        )
        if locked:
            assert store[SID] == requests
            assert gate.peak == 1
            assert len(middleware.core.queue) == 0
        else:
            assert store[SID] == 1  # control: every request read 0, three updates lost
            assert gate.peak == requests

    run(main())


@pytest.mark.parametrize(
    ("sids", "peak"),
    [
        pytest.param(("alice", "bob"), 2, id="different-keys-overlap"),
        pytest.param(("alice", "alice"), 1, id="control-same-key-waits"),
    ],
)
def test_different_sessions_run_concurrently(sids: tuple[str, str], peak: int) -> None:
    async def main() -> None:
        gate = Gate()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            async with gate.visit():
                await gate.wait_for(lambda: gate.in_app + gate.queued >= 2)
            await hello(scope, receive, send)

        middleware = by_cookie(app)
        probe(middleware, gate)
        peers = [Client() for _ in sids]
        await asyncio.gather(
            *(
                middleware(scope_for(cookie=f"sid={sid}"), p.receive, p.send)
                for sid, p in zip(sids, peers, strict=True)
            )
        )
        assert [p.status for p in peers] == [200, 200]
        assert gate.peak == peak
        assert gate.queued == 2 - peak
        assert len(middleware.core.queue) == 0

    run(main())


# -- Starlette ------------------------------------------------------------------------------


def starlette_app(log: list[str], release_background: asyncio.Event, release: str) -> Starlette:
    """A page with a background task; ``release``: the middleware's option, or "bare"."""

    async def page(request: StarletteRequest) -> PlainTextResponse:
        n = request.query_params["n"]
        log.append(f"handler-{n}")

        async def background() -> None:
            log.append(f"background-start-{n}")
            if n == "1":
                await release_background.wait()
            log.append(f"background-end-{n}")

        return PlainTextResponse("ok", background=BackgroundTask(background))

    app = Starlette(routes=[Route("/", page)])
    if release != "bare":
        app.add_middleware(
            SessionLockMiddleware, key="cookie:sid", backend="memory://", release=release
        )
    return app


def lock_in(app: Starlette) -> SessionLockMiddleware:
    """The middleware instance Starlette built from ``add_middleware``."""
    app.middleware_stack = app.build_middleware_stack()
    node: Any = app.middleware_stack
    while not isinstance(node, SessionLockMiddleware):
        node = node.app
    return node


@pytest.mark.parametrize(
    ("release", "overlap"),
    [
        pytest.param("head", True, id="default-released-at-the-head"),
        pytest.param("end", False, id="release-end-holds-through-the-task"),
        pytest.param("bare", True, id="control-bare"),
    ],
)
def test_starlette_background_task_runs_outside_the_lock(release: str, overlap: bool) -> None:
    """The user's next page does not wait for the previous page's background task."""

    async def main() -> None:
        log: list[str] = []
        done = asyncio.Event()
        app = starlette_app(log, done, release)
        lock = lock_in(app) if release != "bare" else None
        gate = observed(lock) if lock is not None else None
        first, second = Client(), Client()
        one = start(app, scope_for(cookie=f"sid={SID}", query=b"n=1"), first)
        await first.complete.wait()  # the response is out; its background task still runs
        assert first.status == 200
        assert log == ["handler-1", "background-start-1"]
        two = start(app, scope_for(cookie=f"sid={SID}", query=b"n=2"), second)
        if overlap:
            await asyncio.wait_for(second.complete.wait(), WAIT)  # ran meanwhile
            assert "background-end-1" not in log
        else:
            assert gate is not None
            await gate.wait_for(lambda: gate.queued == 1)
            assert "handler-2" not in log  # waits for the task
        done.set()
        await one
        await two
        assert second.status == 200
        if overlap:
            assert log.index("handler-2") < log.index("background-end-1")
        else:
            assert log.index("background-end-1") < log.index("handler-2")
        if lock is not None:
            assert len(lock.core.queue) == 0

    run(main())


# -- nothing blocks the event loop, even on file:// with cookie sessions ----------------------


@pytest.mark.usefixtures("registry")
def test_a_lazily_built_stack_with_cookie_sessions_on_file_never_blocks_the_loop(
    tmp_path: Any,
) -> None:
    """Starlette builds the middleware (so the backend) at the first request, on the loop;
    cookie records on file:// are read and written at every request: all of it off the loop.
    """
    from starlette.middleware.sessions import SessionMiddleware

    async def incr(request: StarletteRequest) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    app = Starlette(routes=[Route("/", incr)])
    app.add_middleware(SessionMiddleware, secret_key="k" * 32)
    backend = f"file://{tmp_path}/locks"
    app.add_middleware(SessionLockMiddleware, backend=backend, cookie_session="session")

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [(await client.get("/")).text for _ in range(3)]

    assert asyncio.run(main()) == ["1", "2", "3"]


@pytest.mark.usefixtures("registry")
def test_control_building_the_file_backend_on_the_loop_is_caught(tmp_path: Any) -> None:
    """The fixture does catch the construction the lazy build avoids."""
    from blockbuster import BlockingError

    from sessionlock.core import Core

    async def main() -> None:
        Core(backend=f"file://{tmp_path}/locks")

    with pytest.raises(BlockingError):
        asyncio.run(main())
