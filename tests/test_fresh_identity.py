"""A brand-new identity is held at no cost: no backend call, no place in the local queue.

A request without a valid identity cookie (a first visit, an invented or forged value) is
given a new identity, which nobody else can know before its response head goes out: the core
holds it without asking the backend (on ``file://``, a lock file created and later removed)
or taking a turn in the queue. Everything else is as for any request: the handle, early
release, rotation, cookie tracking. Each test has its control: the same request carrying
the identity it was issued does ask the backend.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sessionlock
from sessionlock import asgi, keys, wsgi
from sessionlock._types import Message, Receive, Scope, Send
from sessionlock.backends import Backend, Lease
from sessionlock.backends.file import FileBackend
from sessionlock.backends.memory import MemoryBackend
from sessionlock.core import HANDLE, Core

SECRET = "fresh-identity-test-secret-0123"
# Well-formed values this server never issued: replaced by a fresh identity, like no cookie.
FORGED = f"sessionlock={'A' * 43}.0.{'B' * 16}"
INVENTED = "sessionlock=invented"


class CountingBackend(MemoryBackend):
    """The memory backend, counting the lock and store calls the core makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def try_acquire(self, key: str) -> Lease:
        self.calls["try_acquire"] += 1
        return super().try_acquire(key)

    def acquire(self, key: str, timeout: float | None) -> Lease:
        self.calls["acquire"] += 1
        return super().acquire(key, timeout)

    async def acquire_async(self, key: str, timeout: float | None) -> Lease:
        self.calls["acquire_async"] += 1
        return await super().acquire_async(key, timeout)

    def release(self, lease: Lease) -> None:
        self.calls["release"] += 1
        super().release(lease)

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.calls["set"] += 1
        super().set(key, value, ttl)


def locking(backend: CountingBackend) -> dict[str, int]:
    """The lock calls counted so far (the value store left out)."""
    return {name: n for name, n in backend.calls.items() if name != "set"}


RETURNING = {"try_acquire": 1, "release": 1}  # the control: one lease taken and given back


# -- WSGI -----------------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def environ_for(cookie: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": ""}
    environ.update(QUERY_STRING="", SERVER_NAME="testserver", SERVER_PORT="80")
    environ["wsgi.url_scheme"] = "http"
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def call(app: WSGIApp, cookie: str | None = None) -> list[tuple[str, str]]:
    """One request to completion; the response headers."""
    started: list[list[tuple[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(headers)
        return lambda data: None

    result = app(environ_for(cookie), start_response)
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started[-1]


def identity_cookie(headers: list[tuple[str, str]]) -> str:
    """The identity the response issued, as the browser sends it back."""
    issued = [v for k, v in headers if k == "Set-Cookie" and v.startswith("sessionlock=")]
    assert len(issued) == 1, headers
    return issued[0].partition(";")[0]


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def wrap_wsgi(app: WSGIApp, backend: Backend, **options: Any) -> wsgi.SessionLockMiddleware:
    return wsgi.SessionLockMiddleware(app, backend=backend, secret=SECRET, **options)


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(None, id="first-visit"),
        pytest.param(FORGED, id="forged"),
        pytest.param(INVENTED, id="invented"),
        pytest.param("theme=dark", id="other-cookies-only"),
    ],
)
def test_wsgi_a_fresh_identity_makes_no_backend_call(cookie: str | None) -> None:
    backend = CountingBackend()
    middleware = wrap_wsgi(hello, backend)
    headers = call(middleware, cookie)
    assert ("Server-Timing", 'sessionlock;dur=0.0;desc="session lock wait"') in headers
    assert locking(backend) == {}

    call(middleware, identity_cookie(headers))  # the control: the browser comes back
    assert locking(backend) == RETURNING


def test_wsgi_a_fresh_identity_takes_no_turn_in_the_local_queue() -> None:
    backend = CountingBackend()
    held: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        held.append(len(middleware.core.queue))  # keys held or waited for, right now
        return hello(environ, start_response)

    middleware = wrap_wsgi(app, backend)
    cookie = identity_cookie(call(middleware))
    call(middleware, cookie)
    assert held == [0, 1]  # fresh: none; returning (the control): its own


def test_wsgi_release_end_still_locks_a_fresh_identity() -> None:
    """``release="end"`` holds past the response head, when the browser knows the identity."""
    backend = CountingBackend()
    call(wrap_wsgi(hello, backend, release="end"))
    assert locking(backend) == RETURNING


def test_wsgi_the_handle_of_a_fresh_identity_releases_once_then_cannot_rotate() -> None:
    answers: list[object] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        answers.append(environ[HANDLE].lease is not None)  # held, as any admitted request
        answers.append(sessionlock.release_session(environ))
        answers.append(sessionlock.release_session(environ))  # idempotent
        answers.append(sessionlock.rotate_identity(environ))  # released: too late
        return hello(environ, start_response)

    backend = CountingBackend()
    headers = call(wrap_wsgi(app, backend), None)
    assert answers == [True, True, True, False]
    identity_cookie(headers)  # still issued
    assert locking(backend) == {}


def test_wsgi_a_fresh_identity_can_be_rotated() -> None:
    rotated: list[bool] = []
    issued: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        issued.append(environ[HANDLE].set_identity)
        rotated.append(sessionlock.rotate_identity(environ))
        return hello(environ, start_response)

    backend = CountingBackend()
    middleware = wrap_wsgi(app, backend)
    cookie = identity_cookie(call(middleware))
    assert rotated == [True]
    assert issued[0] is not None
    assert cookie != issued[0].partition(";")[0]  # another identity than the one admitted
    assert locking(backend) == {}
    call(middleware, cookie)  # the rotated identity is a valid one: a returning browser
    assert locking(backend) == RETURNING


def test_wsgi_cookie_tracking_records_a_fresh_identitys_session_cookie() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Set-Cookie", "session=v1; Path=/; HttpOnly")])
        return [b"ok"]

    backend = CountingBackend()
    headers = call(wrap_wsgi(app, backend, cookie_session="session"))
    assert backend.calls["set"] == 1  # recorded under the (unshared) lease
    assert locking(backend) == {}
    assert identity_cookie(headers).split(".")[1] == "1"  # re-issued at the record's generation


def lock_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".lock")]


@pytest.fixture
def file_backend(tmp_path: Path) -> Iterator[FileBackend]:
    backend = FileBackend(tmp_path / "locks")
    yield backend
    backend.close()


def test_a_fresh_identity_leaves_no_lock_file(file_backend: FileBackend) -> None:
    seen: list[list[str]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(lock_files(Path(file_backend.directory)))
        return hello(environ, start_response)

    middleware = wrap_wsgi(app, file_backend)
    cookie = identity_cookie(call(middleware))
    assert seen == [[]]
    assert lock_files(Path(file_backend.directory)) == []
    call(middleware, cookie)  # the control: the returning browser's lock is a file
    assert len(seen[1]) == 1


# -- ASGI -----------------------------------------------------------------------------------


def scope_for(cookie: str | None) -> dict[str, Any]:
    headers = [(b"host", b"testserver")]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    return {"type": "http", "method": "GET", "scheme": "http", "path": "/", "headers": headers}


async def asgi_hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def asgi_call(app: asgi.SessionLockMiddleware, cookie: str | None = None) -> list[tuple[str, str]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope_for(cookie), receive, send))
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in sent[0]["headers"]]


def asgi_identity(headers: list[tuple[str, str]]) -> str:
    return identity_cookie([(k.title(), v) for k, v in headers])


@pytest.mark.parametrize(
    "cookie", [pytest.param(None, id="first-visit"), pytest.param(FORGED, id="forged")]
)
def test_asgi_a_fresh_identity_makes_no_backend_call(cookie: str | None) -> None:
    backend = CountingBackend()
    middleware = asgi.SessionLockMiddleware(asgi_hello, backend=backend, secret=SECRET)
    headers = asgi_call(middleware, cookie)
    assert locking(backend) == {}

    asgi_call(middleware, asgi_identity(headers))  # the control: the browser comes back
    assert locking(backend) == RETURNING


def test_asgi_release_end_still_locks_a_fresh_identity() -> None:
    backend = CountingBackend()
    middleware = asgi.SessionLockMiddleware(
        asgi_hello, backend=backend, secret=SECRET, release="end"
    )
    asgi_call(middleware)
    assert locking(backend) == RETURNING


# -- the core, as the Django adapter and other shells use it --------------------------------


def test_every_way_in_holds_a_fresh_identity_without_the_backend() -> None:
    backend = CountingBackend()
    core = Core(backend=backend, secret=SECRET)

    async def enter_async() -> None:
        admission = core.admit(environ_for(None))
        assert admission is not None
        await core.enter_async(admission, asyncio.Event().wait)
        assert admission.lease is not None
        await core.leave_async(admission)

    for enter in (core.enter, core.try_enter):
        admission = core.admit(environ_for(None))
        assert admission is not None
        assert admission.set_identity is not None
        enter(admission)
        assert admission.lease is not None  # held: the handle and cookie tracking rely on it
        core.leave(admission)
        core.leave(admission)  # idempotent
        assert admission.lease is None
    asyncio.run(enter_async())
    assert locking(backend) == {}
    assert len(core.queue) == 0

    issued = keys.identity().bind(core.secret).issue_for(False, "q" * 43)
    admission = core.admit(environ_for(issued.partition(";")[0]))  # the control
    assert admission is not None
    assert admission.set_identity is None
    core.enter(admission)
    core.leave(admission)
    assert locking(backend) == RETURNING
