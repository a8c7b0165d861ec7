"""The shells over ``redis://``: no Redis round trip on the event loop; the failure policy.

Every test has a redis-server of its own (tests/redis_server.py).

Event loop. A redis-server paused with SIGSTOP answers nothing: a call to it is stuck until
it resumes (or the socket times out). While an ASGI request's acquire, or its release, is
stuck, a ticker task on the same loop must keep ticking; the test resumes the server only
after the ticker has ticked 100 times during the stuck call. The control forces the old
path (``inline_leases = True``: the lease calls made on the loop): not one tick happens during
the stuck call, which ends only when its socket times out. No timing is asserted: ticks are
counted between the call's start and its end.

Failure policy. redis-server is killed mid-run and started again on the same port: with
``on_backend_error="closed"`` (the default) the requests of the outage get 503; with
``"open"`` they run, serialized within the process, and the outage is logged once, not per
request. Afterwards every request is served and the session is free (nothing stuck).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import sessionlock
from sessionlock import asgi, keys, wsgi
from sessionlock.backends import Backend
from sessionlock.backends.redis import RedisBackend
from tests.queue_probe import probe
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

SECRET = b"redis-core-test-secret-0123456789"
TICKS = 100  # loop steps the ticker must make while a Redis call is stuck
STUCK_FOR = 1.0  # socket timeout (s) of these tests' connections: how long a stuck call lasts
WAIT = 30.0  # liveness guard, never reached when the code is right


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for what another process or thread brings about (a readiness poll)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def _is_stopped(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state in ("T", "t")


def _pause(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    pid = server.process.pid
    _until(lambda: _is_stopped(pid), "redis-server stopped")  # SIGSTOP lands asynchronously


def _resume(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


class Watched(RedisBackend):
    """A RedisBackend whose next Redis call, once ``armed``, is watched: the ticker's count
    at its start and at its end (from whatever thread makes it)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ticks = 0
        self.armed = False
        self.started_at = 0
        self.entered = threading.Event()
        self.exited = threading.Event()
        self.during: list[int] = []  # ticks made while the watched call ran
        self.on_loop: list[bool] = []  # whether it ran on the event loop's thread
        self.loop_thread = 0

    def _call(
        self, script: Any, names: Sequence[str], args: Sequence[str], *, check: bool = True
    ) -> Any:
        if not self.armed:
            return super()._call(script, names, args, check=check)
        self.armed = False
        self.on_loop.append(threading.get_ident() == self.loop_thread)
        self.started_at = self.ticks
        self.entered.set()
        try:
            return super()._call(script, names, args, check=check)
        finally:
            self.during.append(self.ticks - self.started_at)
            self.exited.set()


class OldPath(Watched):
    """The control: Redis's lease calls declared fit for the loop, and the default
    release_async (a plain call of release), as before the shells knew better."""

    inline_leases = True
    release_async = Backend.release_async


def _watched(server: RedisServer, kind: type[Watched]) -> Iterator[Watched]:
    backend = kind(server.url)
    # A stuck call ends after STUCK_FOR (its socket times out) instead of redis-py's 5 s:
    # set before any connection exists, so every connection of the test has it.
    backend._client.connection_pool.connection_kwargs["socket_timeout"] = STUCK_FOR
    yield backend
    backend.close()


@pytest.fixture
def watched(redis_server: RedisServer) -> Iterator[Watched]:
    yield from _watched(redis_server, Watched)


@pytest.fixture
def old_path(redis_server: RedisServer) -> Iterator[Watched]:
    yield from _watched(redis_server, OldPath)


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(sid: str = "s1") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"testserver"), (b"x-s", sid.encode())],
        "query_string": b"",
    }


async def _call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.get_running_loop().create_future()  # until cancelled: no disconnect
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _stuck_call_on_the_loop(
    server: RedisServer, backend: Watched, where: str
) -> tuple[int, int, bool]:
    """One ASGI request whose acquire (``where="acquire"``) or release (``"release"``) meets
    a paused redis-server. The server resumes once the loop ticked TICKS times during the
    stuck call, or once the call ended (its socket timed out). (status, ticks, on loop)."""
    inside = threading.Event()
    go = asyncio.Event()  # the server is paused and the next call watched
    warmed = False

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if warmed and where == "release":  # holding the session until the server is paused
            inside.set()
            await go.wait()
        await _hello(scope, receive, send)

    middleware = asgi.SessionLockMiddleware(app, backend=backend, key="header:X-S", secret=SECRET)

    def control(loop: asyncio.AbstractEventLoop) -> None:
        if where == "release":
            inside.wait(WAIT)
        _pause(server)
        try:
            backend.armed = True
            loop.call_soon_threadsafe(go.set)
            assert backend.entered.wait(WAIT)
            _until(
                lambda: backend.ticks - backend.started_at >= TICKS or backend.exited.is_set(),
                "the loop ticks, or the stuck call ends",
            )
        finally:
            _resume(server)

    async def main() -> int:
        backend.loop_thread = threading.get_ident()

        async def ticker() -> None:
            while True:
                backend.ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        controller = threading.Thread(target=control, args=(asyncio.get_running_loop(),))
        controller.start()
        try:
            if where == "acquire":
                await go.wait()
            sent = await _call(middleware, _scope())
        finally:
            ticking.cancel()
            await asyncio.to_thread(controller.join, WAIT)
        return int(sent[0]["status"])

    warm = asyncio.run(_call(middleware, _scope()))  # a pooled connection, as in a live server
    assert warm[0]["status"] == 200
    warmed = True
    status = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert backend.exited.is_set()
    return status, backend.during[0], backend.on_loop[0]


@pytest.mark.parametrize("where", ["acquire", "release"])
def test_the_loop_keeps_running_while_a_redis_call_is_stuck(
    redis_server: RedisServer,
    watched: Watched,
    where: str,
    request: pytest.FixtureRequest,
) -> None:
    request.getfixturevalue("no_blocking")  # and nothing else blocks it either
    status, ticks, on_loop = _stuck_call_on_the_loop(redis_server, watched, where)
    assert status == 200  # served once the server resumed
    assert not on_loop
    assert ticks >= TICKS  # the loop ran on while the call was stuck


@pytest.mark.parametrize("where", ["acquire", "release"])
def test_control_lease_calls_on_the_loop_stall_it(
    redis_server: RedisServer, old_path: Watched, where: str
) -> None:
    status, ticks, on_loop = _stuck_call_on_the_loop(redis_server, old_path, where)
    assert on_loop
    assert ticks == 0  # not one loop step while the call was stuck
    # A stuck acquire ends in a 503 (the socket timed out); a stuck release is logged, and
    # the response (sent after the release, as before) is the app's.
    assert status == (503 if where == "acquire" else 200)


# -- the failure policy: Redis killed mid-run, then started again -----------------------------


def _outage_records(caplog: pytest.LogCaptureFixture) -> list[bool]:
    """The outage notes logged (True: began, False: ended), in order."""
    return [r.sessionlock_outage for r in caplog.records if hasattr(r, "sessionlock_outage")]


def _wsgi_statuses(
    server: RedisServer, on_backend_error: str, steps: list[str]
) -> tuple[list[int], wsgi.SessionLockMiddleware]:
    """One session's WSGI requests; ``"down"``/``"up"`` in ``steps`` kill and restart Redis."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = wsgi.SessionLockMiddleware(
        app,
        backend=RedisBackend(server.url),
        key="header:X-S",
        secret=SECRET,
        on_backend_error=on_backend_error,  # type: ignore[typeddict-item]
    )
    statuses: list[int] = []

    def start_response(status: str, headers: Any, *_: Any) -> Callable[[bytes], object]:
        statuses.append(int(status.split()[0]))
        return lambda data: None

    for step in steps:
        if step == "down":
            server.stop()
        elif step == "up":
            server.start()
        else:
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_S": "s1"}
            b"".join(middleware(environ, start_response))
    return statuses, middleware


async def _asgi_statuses(
    server: RedisServer, middleware: asgi.SessionLockMiddleware, steps: list[str]
) -> list[int]:
    statuses = []
    for step in steps:
        if step == "down":
            await asyncio.to_thread(server.stop)
        elif step == "up":
            await asyncio.to_thread(server.start)
        else:
            sent = await _call(middleware, _scope())
            statuses.append(int(sent[0]["status"]))
    return statuses


STEPS = ["get", "down", "get", "get", "get", "up", "get", "get"]


def _free_afterwards(core: Any, backend: RedisBackend) -> None:
    """Nothing stuck: no turn left in the process, and the session free in Redis."""
    assert len(core.queue) == 0
    lease = backend.try_acquire(keys.hash_key(core.secret, "s1"))
    assert lease is not None
    backend.release(lease)


@pytest.mark.parametrize(
    ("policy", "during"),
    [
        pytest.param("open", [200, 200, 200], id="open"),
        pytest.param("closed", [503, 503, 503], id="control-closed"),
    ],
)
def test_wsgi_redis_killed_mid_run(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    during: list[int],
) -> None:
    caplog.set_level(logging.INFO, logger="sessionlock")
    statuses, middleware = _wsgi_statuses(redis_server, policy, STEPS)
    try:
        assert statuses == [200, *during, 200, 200]
        # "open": the outage is said once for three requests, and its end once.
        assert _outage_records(caplog) == ([True, False] if policy == "open" else [])
        _free_afterwards(middleware.core, middleware.core.backend)  # type: ignore[arg-type]
    finally:
        middleware.core.backend.close()


@pytest.mark.parametrize(
    ("policy", "during"),
    [
        pytest.param("open", [200, 200, 200], id="open"),
        pytest.param("closed", [503, 503, 503], id="control-closed"),
    ],
)
def test_asgi_redis_killed_mid_run(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    during: list[int],
) -> None:
    caplog.set_level(logging.INFO, logger="sessionlock")
    backend = RedisBackend(redis_server.url)
    middleware = asgi.SessionLockMiddleware(
        _hello,
        backend=backend,
        key="header:X-S",
        secret=SECRET,
        on_backend_error=policy,  # type: ignore[typeddict-item]
    )
    try:
        statuses = asyncio.run(_asgi_statuses(redis_server, middleware, STEPS))
        assert statuses == [200, *during, 200, 200]
        assert _outage_records(caplog) == ([True, False] if policy == "open" else [])
        _free_afterwards(middleware.core, backend)
    finally:
        backend.close()


def test_open_still_serializes_within_the_process_during_an_outage(
    redis_server: RedisServer,
) -> None:
    """Two requests of one session while Redis is down: one in the app at a time."""
    inside = 0
    most = 0
    first_in = asyncio.Event()
    leave = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        first_in.set()
        await leave.wait()
        inside -= 1
        await _hello(scope, receive, send)

    backend = RedisBackend(redis_server.url)
    middleware = asgi.SessionLockMiddleware(
        app, backend=backend, key="header:X-S", secret=SECRET, on_backend_error="open"
    )

    async def main() -> list[int]:
        queued = asyncio.Event()

        class Gate:
            def note(self, event: str) -> None:
                queued.set()

        probe(middleware, Gate())
        await asyncio.to_thread(redis_server.stop)
        first = asyncio.ensure_future(_call(middleware, _scope()))
        await first_in.wait()
        second = asyncio.ensure_future(_call(middleware, _scope()))
        await queued.wait()  # the second is in this process's line, behind the first
        leave.set()
        return [int((await task)[0]["status"]) for task in (first, second)]

    try:
        assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [200, 200]
        assert most == 1
        assert len(middleware.core.queue) == 0
    finally:
        backend.close()


# -- the fence, exposed to the app -------------------------------------------------------------


def test_the_app_reads_a_fence_that_grows_with_every_grant(redis_server: RedisServer) -> None:
    seen: list[object] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(sessionlock.session_fence(environ))
        start_response("200 OK", [])
        seen.append(sessionlock.session_fence(environ))  # released with the head: none held
        return [b"ok"]

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(sessionlock.session_fence(scope))
        await _hello(scope, receive, send)

    backend = RedisBackend(redis_server.url)
    options: Any = {"backend": backend, "key": "header:X-S", "secret": SECRET}
    try:
        threads = wsgi.SessionLockMiddleware(app, **options)
        tasks = asgi.SessionLockMiddleware(asgi_app, **options)
        b"".join(threads({"REQUEST_METHOD": "GET", "HTTP_X_S": "s1"}, lambda *_: None))
        asyncio.run(_call(tasks, _scope()))
        b"".join(threads({"REQUEST_METHOD": "GET", "HTTP_X_S": "s1"}, lambda *_: None))
    finally:
        backend.close()
    first, after_head, second, third, _ = seen
    assert after_head is None
    assert [type(fence) for fence in (first, second, third)] == [int, int, int]
    assert first < second < third  # type: ignore[operator]  # one session, three grants, on two shells


def test_control_no_fence_without_a_backend_that_keeps_one() -> None:
    seen: list[object] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(sessionlock.session_fence(environ))
        start_response("200 OK", [])
        return [b"ok"]

    middleware = wsgi.SessionLockMiddleware(app, backend="memory://", key="header:X-S")
    b"".join(middleware({"REQUEST_METHOD": "GET", "HTTP_X_S": "s1"}, lambda *_: None))
    assert seen == [None]
    assert sessionlock.session_fence({"REQUEST_METHOD": "GET"}) is None  # no layer at all
