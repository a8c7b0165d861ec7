"""The WSGI middleware in-process: lifecycle, refusals, keys, exemptions, identity cookie.

Apps and the middleware run under ``wsgiref.validate`` wherever the test allows it. Concurrent
requests are real threads; they are ordered with events and a hook on the lock queue (which
tells when a request has been put in line), never with sleeps. Every concurrency test has a
control: the same scenario without the middleware, where the requests overlap.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator

import pytest

from sessionlock import keys
from sessionlock.wsgi import SessionLockMiddleware
from tests.queue_probe import probe

WAIT = 10.0  # liveness guard for event waits; never reached when the code is right
SID = "raw-session-id-0123456789abcdef"
App = Callable[[dict[str, Any], Any], Iterable[bytes]]


# -- helpers --------------------------------------------------------------------------------


class Gate:
    """Counts requests that reached the app and requests put in the lock queue."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.in_app = 0  # requests that reached the app
        self.queued = 0  # requests put in the lock queue
        self.inside = 0  # requests in the app right now
        self.peak = 0  # most requests ever in the app at once

    def note(self, what: str) -> None:
        with self.cond:
            setattr(self, what, getattr(self, what) + 1)
            self.cond.notify_all()

    @contextlib.contextmanager
    def visit(self) -> Iterator[None]:
        with self.cond:
            self.in_app += 1
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                self.inside -= 1

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), "never happened"


def observed(middleware: SessionLockMiddleware) -> Gate:
    return probe(middleware, Gate())


def environ_for(
    path: str = "/", *, method: str = "GET", cookie: str | None = None, https: bool = False
) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    environ.update(QUERY_STRING="", SCRIPT_NAME="")
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    if https:
        environ["wsgi.url_scheme"] = "https"
        environ["HTTPS"] = "on"
    setup_testing_defaults(environ)
    return environ


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def code(self) -> int:
        return int(self.status.split()[0])

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[-1] if found else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def call(app: App, environ: dict[str, Any] | None = None, *, validate: bool = True) -> Response:
    """Run one request to completion as a server would: start, iterate, close."""
    environ = environ if environ is not None else environ_for()
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    wrapped = validator(app) if validate else app
    result = wrapped(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Response(*started[-1], body)


def in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(function())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


HOLD = "tests.hold"


def holdable(app: App) -> App:
    """``app``, except that a request carrying ``environ[HOLD] = (inside, leave)`` works on its
    session (no response started) from ``inside`` until ``leave``: its lock stays held."""

    def held(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        hold = environ.get(HOLD)
        if hold is not None:
            inside, leave = hold
            inside.set()
            assert leave.wait(WAIT)
        return app(environ, start_response)

    return held


def wrap(app: App, **options: Any) -> SessionLockMiddleware:
    """The middleware over the in-process backend: these are unit tests of the core."""
    options.setdefault("backend", "memory://")
    return SessionLockMiddleware(holdable(app), **options)


def by_cookie(app: App, **options: Any) -> SessionLockMiddleware:
    return wrap(validator(app), key="cookie:sid", **options)


def hashed(middleware: SessionLockMiddleware, raw: str) -> str:
    return keys.hash_key(middleware.core.secret, raw)


# -- validate and basics --------------------------------------------------------------------


def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"a"
    yield b"b"


def file_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    wrapper: Any = environ["wsgi.file_wrapper"]
    return wrapper(io.BytesIO(b"file body"), 4)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("app", "cookie", "body"),
    [
        pytest.param(hello, f"sid={SID}", b"hello", id="list"),
        pytest.param(streaming, f"sid={SID}", b"ab", id="generator"),
        pytest.param(file_app, f"sid={SID}", b"file body", id="file-wrapper"),
        pytest.param(hello, None, b"hello", id="no-key-passes-through"),
    ],
)
def test_wsgiref_validate_accepts_the_middleware(app: App, cookie: str | None, body: bytes) -> None:
    middleware = by_cookie(app)
    environ = environ_for(cookie=cookie)
    environ["wsgi.file_wrapper"] = FileWrapper
    response = call(middleware, environ)
    assert response.code == 200
    assert response.body == body
    assert len(middleware.core.queue) == 0


def test_wsgiref_validate_accepts_refusals_and_identity() -> None:
    opened = threading.Event()
    leave = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        opened.set()
        leave.wait(WAIT)
        return hello(environ, start_response)

    middleware = wrap(validator(slow), timeout=0.01, max_waiters=0)
    leave.set()
    first = call(middleware)  # no identity yet: issued
    cookie = first.header("Set-Cookie")
    assert cookie is not None
    identity = cookie.split(";")[0]
    leave.clear()
    opened.clear()
    thread, _ = in_thread(lambda: call(middleware, environ_for(cookie=identity)))
    assert opened.wait(WAIT)
    assert call(middleware, environ_for(cookie=identity)).code == 429
    leave.set()
    thread.join(WAIT)


def test_server_timing_reports_the_wait() -> None:
    response = call(by_cookie(hello), environ_for(cookie=f"sid={SID}"))
    timing = response.header("Server-Timing")
    assert timing is not None
    assert re.fullmatch(r'sessionlock;dur=\d+\.\d;desc="session lock wait"', timing)


def test_a_request_without_a_key_passes_through() -> None:
    seen: list[int] = []
    middleware: SessionLockMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(len(middleware.core.queue))  # nothing held while it runs
        return hello(environ, start_response)

    middleware = by_cookie(app)
    response = call(middleware, environ_for(cookie="other=1"))
    assert response.code == 200
    assert seen == [0]
    assert response.header("Server-Timing") is None


# -- lifecycle: the lock is held until the response is closed ------------------------------


def open_stream(app: App, environ: dict[str, Any]) -> tuple[Iterator[bytes], Any]:
    """Start a request and read its first chunk, leaving the response open."""
    result = app(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(result)
    assert next(iterator) == b"a"
    return iterator, result


@pytest.mark.parametrize(
    ("release", "waits"),
    [
        pytest.param("head", False, id="default-released-at-start-response"),
        pytest.param("end", True, id="release-end-holds-until-close"),
        pytest.param("bare", False, id="control-bare"),
    ],
)
def test_a_response_left_open_holds_nothing_by_default(release: str, waits: bool) -> None:
    """Werkzeug's test client never closes a response it was not asked to: nothing may hang."""
    entered: list[threading.Event] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        event = threading.Event()
        entered.append(event)
        event.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        yield b"b"

    middleware = wrap(app, key="cookie:sid", release="head" if release == "bare" else release)
    gate = observed(middleware)
    target: App = app if release == "bare" else middleware
    environ = environ_for(cookie=f"sid={SID}")
    iterator, first = open_stream(target, environ)
    assert next(iterator) == b"b"  # fully iterated, but not closed
    thread, out = in_thread(lambda: call(target, environ_for(cookie=f"sid={SID}")))
    if waits:
        gate.wait_for(lambda: gate.queued == 1)
        assert len(entered) == 1  # the second request waits in line
        first.close()
        thread.join(WAIT)
    else:
        thread.join(WAIT)  # the second ran to the end with the first still open
        assert len(entered) == 2
        first.close()
    assert len(entered) == 2
    assert out[0].code == 200
    assert len(middleware.core.queue) == 0


class Boom(Exception):
    pass


def fails_before_start(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    raise Boom


def fails_after_start(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise Boom


def fails_while_iterating(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"a"
    raise Boom


class FailsOnClose:
    def __init__(self, environ: dict[str, Any], start_response: Any) -> None:
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self) -> Iterator[bytes]:
        yield b"a"

    def close(self) -> None:
        raise Boom


def calls_start_response(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"x"]


@pytest.mark.parametrize(
    ("app", "start_fails"),
    [
        pytest.param(fails_before_start, False, id="app-raises"),
        pytest.param(fails_after_start, False, id="app-raises-after-start"),
        pytest.param(fails_while_iterating, False, id="iteration-raises"),
        pytest.param(FailsOnClose, False, id="close-raises"),
        pytest.param(calls_start_response, True, id="start-response-raises"),
    ],
)
def test_every_exception_path_releases(app: App, start_fails: bool) -> None:
    middleware = wrap(app, key="cookie:sid", timeout=WAIT)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if start_fails:
            raise Boom
        return lambda data: None

    def serve() -> None:  # as a server does: iterate, and close whatever happens
        result = middleware(environ_for(cookie=f"sid={SID}"), start_response)
        try:
            for _ in result:
                pass
        finally:
            result.close()  # type: ignore[attr-defined]

    with pytest.raises(Boom):
        serve()
    assert len(middleware.core.queue) == 0
    middleware.app = hello  # and the session is usable again at once
    assert call(middleware, environ_for(cookie=f"sid={SID}")).code == 200


def test_an_exception_in_prepare_releases() -> None:
    """A cookie tracker failing under the lease (e.g. its backend is down) must not leak it."""

    class Failing:
        def prepare(self, admission: Any, request: Any) -> None:
            raise Boom

        def finish(self, admission: Any, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return headers

    middleware = wrap(hello, key="cookie:sid")
    middleware.core.cookies = Failing()
    with pytest.raises(Boom):
        middleware(environ_for(cookie=f"sid={SID}"), lambda *a: None)
    assert len(middleware.core.queue) == 0


def test_close_releases_once() -> None:
    middleware = wrap(streaming, key="cookie:sid")
    result: Any = middleware(environ_for(cookie=f"sid={SID}"), lambda *a: None)
    result.close()
    assert len(middleware.core.queue) == 0
    other: Any = middleware(environ_for(cookie=f"sid={SID}"), lambda *a: None)
    result.close()  # a second close of the first response must not release the second's lock
    assert middleware.core.queue.holds(hashed(middleware, SID))
    other.close()
    assert len(middleware.core.queue) == 0


# -- wsgi.file_wrapper --------------------------------------------------------------------


class SlottedWrapper:
    """A server's file wrapper whose instances take no new attributes."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.blksize), b"")

    def close(self) -> None:
        self.filelike.close()


@pytest.mark.parametrize("release", ["head", "end"])
def test_the_file_wrapper_is_returned_as_itself(release: str) -> None:
    made: list[Any] = []
    handle = io.BytesIO(b"file body")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        made.append(environ["wsgi.file_wrapper"](handle))
        return made[0]  # type: ignore[no-any-return]

    middleware = wrap(app, key="cookie:sid", release=release)
    environ = environ_for(cookie=f"sid={SID}")
    environ["wsgi.file_wrapper"] = FileWrapper
    result: Any = middleware(environ, lambda *a: None)
    assert result is made[0]  # the server can still use sendfile
    assert b"".join(result) == b"file body"
    # release="end": held until the server closes it, through the wrapper's own close
    assert middleware.core.queue.holds(hashed(middleware, SID)) is (release == "end")
    result.close()
    assert handle.closed  # the app's close still runs
    assert len(middleware.core.queue) == 0


def test_a_file_wrapper_with_slots_is_wrapped_and_still_releases() -> None:
    handle = io.BytesIO(b"file body")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle)  # type: ignore[no-any-return]

    middleware = wrap(app, key="cookie:sid", release="end")
    environ = environ_for(cookie=f"sid={SID}")
    environ["wsgi.file_wrapper"] = SlottedWrapper
    result: Any = middleware(environ, lambda *a: None)
    assert b"".join(result) == b"file body"
    result.close()
    assert handle.closed
    assert len(middleware.core.queue) == 0


# -- refusals -------------------------------------------------------------------------------


class Held:
    """A request of ``cookie``'s session kept inside the app until :meth:`close`."""

    def __init__(self, middleware: SessionLockMiddleware, cookie: str) -> None:
        inside, self.leave = threading.Event(), threading.Event()
        environ = environ_for(method="PUT", cookie=cookie)
        environ[HOLD] = (inside, self.leave)
        self.thread, self.out = in_thread(lambda: call(middleware, environ))
        assert inside.wait(WAIT)
        assert middleware.core.queue.holds(hashed(middleware, cookie.partition("=")[2]))

    def close(self) -> None:
        self.leave.set()
        self.thread.join(WAIT)
        assert self.out[0].code == 200


def holding(middleware: SessionLockMiddleware, cookie: str) -> Held:
    return Held(middleware, cookie)


def check_refusal(response: Response, code: int) -> None:
    assert response.code == code
    assert response.header("Retry-After") is not None
    assert response.header("Retry-After").isdigit()  # type: ignore[union-attr]
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.header("Content-Length") == str(len(response.body))
    assert response.body.decode().strip()


def test_a_request_that_waits_past_the_timeout_gets_503() -> None:
    middleware = by_cookie(hello, timeout=0.01)
    first = holding(middleware, f"sid={SID}")
    response = call(middleware, environ_for(cookie=f"sid={SID}"))
    check_refusal(response, 503)
    assert middleware.core.queue.waiting(hashed(middleware, SID)) == 0
    first.close()
    assert len(middleware.core.queue) == 0


@pytest.mark.parametrize("max_waiters", [pytest.param(0, id="zero"), pytest.param(2, id="two")])
def test_beyond_max_waiters_gets_429_at_once(max_waiters: int) -> None:
    middleware = by_cookie(hello, timeout=None, max_waiters=max_waiters)
    gate = observed(middleware)
    first = holding(middleware, f"sid={SID}")
    waiters = [
        in_thread(lambda: call(middleware, environ_for(cookie=f"sid={SID}")))
        for _ in range(max_waiters)
    ]
    gate.wait_for(lambda: gate.queued == max_waiters)
    response = call(middleware, environ_for(cookie=f"sid={SID}"))  # timeout None: only 429
    check_refusal(response, 429)
    first.close()
    for thread, out in waiters:
        thread.join(WAIT)
        assert out[0].code == 200
    assert len(middleware.core.queue) == 0


def test_refusals_are_logged_without_the_session_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionlock")
    middleware = by_cookie(hello, timeout=0.01, max_waiters=1)
    gate = observed(middleware)
    first = holding(middleware, f"sid={SID}")
    check_refusal(call(middleware, environ_for(cookie=f"sid={SID}")), 503)
    thread, _ = in_thread(lambda: call(middleware, environ_for(cookie=f"sid={SID}")))
    gate.wait_for(lambda: gate.queued == 2)  # the 503's turn in line, then this one's
    check_refusal(call(middleware, environ_for(cookie=f"sid={SID}")), 429)
    first.close()
    thread.join(WAIT)
    logged = [r for r in caplog.records if r.name == "sessionlock"]
    records = [r for r in logged if r.levelno > logging.INFO]  # not the start-up line
    assert {r.levelno for r in records} == {logging.WARNING}
    assert len(records) >= 2
    assert any("503" in r.getMessage() for r in records)
    assert any("429" in r.getMessage() for r in records)
    for record in logged:
        assert SID not in record.getMessage()
        assert SID not in repr(vars(record))
    assert SID not in caplog.text


# -- exemptions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exempt", "method", "path", "is_exempt"),
    [
        pytest.param(["/static/"], "GET", "/static/app.css", True, id="path-prefix"),
        pytest.param("/static/", "GET", "/static/app.css", True, id="one-prefix-as-str"),
        pytest.param(["/static/"], "GET", "/api/next", False, id="path-not-exempt"),
        pytest.param(["GET", "HEAD"], "GET", "/api/next", True, id="method"),
        pytest.param(["GET"], "POST", "/api/next", False, id="method-not-exempt"),
        pytest.param(
            lambda r: r.get("HTTP_X_READ_ONLY") == "1", "POST", "/x", True, id="predicate"
        ),
        pytest.param(lambda r: False, "POST", "/x", False, id="predicate-false"),
    ],
)
def test_exempt_requests_run_unserialized(
    exempt: Any, method: str, path: str, is_exempt: bool
) -> None:
    middleware = by_cookie(hello, timeout=0.01, exempt=exempt)
    first = holding(middleware, f"sid={SID}")
    environ = environ_for(path, method=method, cookie=f"sid={SID}")
    environ["HTTP_X_READ_ONLY"] = "1"
    response = call(middleware, environ)
    # With the session held: an exempt request runs at once, another one times out.
    assert response.code == (200 if is_exempt else 503)
    first.close()
    assert len(middleware.core.queue) == 0


# -- identity cookie ------------------------------------------------------------------------

IDENTITY = re.compile(
    r"(?P<name>[^=]+)=(?P<value>[A-Za-z0-9_-]{43}\.0\.[A-Za-z0-9_-]{16})"
    r"; Max-Age=\d+; Path=/; HttpOnly; SameSite=Lax"
    r"(?P<secure>; Secure)?"
)


@pytest.mark.parametrize(
    ("https", "name", "secure"),
    [
        pytest.param(False, "sessionlock", False, id="http"),
        pytest.param(True, "__Host-sessionlock", True, id="https-host-prefix"),
    ],
)
def test_an_identity_cookie_is_issued_when_absent(https: bool, name: str, secure: bool) -> None:
    middleware = wrap(validator(hello))
    response = call(middleware, environ_for(https=https))
    cookies = response.all("Set-Cookie")
    assert len(cookies) == 1
    match = IDENTITY.fullmatch(cookies[0])
    assert match is not None, cookies[0]
    assert match["name"] == name
    assert bool(match["secure"]) is secure
    # Sent back, it is reused: no new cookie.
    again = call(middleware, environ_for(cookie=f"{name}={match['value']}", https=https))
    assert again.code == 200
    assert again.all("Set-Cookie") == []


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("sessionlock=short", id="too-short"),
        pytest.param("sessionlock=" + "!" * 43, id="bad-characters"),
        pytest.param("other=" + "a" * 43, id="other-name"),
    ],
)
def test_a_malformed_identity_is_replaced(cookie: str) -> None:
    response = call(wrap(validator(hello)), environ_for(cookie=cookie))
    match = IDENTITY.fullmatch(response.header("Set-Cookie") or "")
    assert match is not None
    assert match["value"] not in cookie


def test_requests_with_one_identity_share_a_lock_and_others_do_not() -> None:
    middleware = wrap(validator(streaming), timeout=0.01)
    issued = call(middleware, environ_for()).header("Set-Cookie")
    assert issued is not None
    mine = issued.split(";")[0]
    first = middleware(environ_for(cookie=mine), lambda *a: None)
    assert call(middleware, environ_for(cookie=mine)).code == 503  # same identity: waits
    other = call(middleware, environ_for())  # a new visitor: its own identity, runs at once
    assert other.code == 200
    first.close()  # type: ignore[attr-defined]
    assert len(middleware.core.queue) == 0


# -- concurrency: no lost update; different keys in parallel -------------------------------


def counter_app(gate: Gate, store: dict[str, int], expected: int) -> App:
    """Read-modify-write of a per-session counter, with every request's read done before any
    write unless the others are queued: bare, that loses updates deterministically."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        sid = keys.read_cookie(environ, "sid") or ""
        value = store.get(sid, 0)  # load
        gate.note("in_app")
        gate.wait_for(lambda: gate.in_app + gate.queued >= expected)
        store[sid] = value + 1  # save
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(value + 1).encode()]

    return app


@pytest.mark.parametrize(
    "locked", [pytest.param(True, id="middleware"), pytest.param(False, id="control-bare")]
)
def test_concurrent_requests_of_one_session_lose_no_update(locked: bool) -> None:
    requests = 4
    store: dict[str, int] = {}
    gate = Gate()
    app = counter_app(gate, store, requests)
    middleware = wrap(validator(app), key="cookie:sid", timeout=WAIT)
    probe(middleware, gate)
    target: App = middleware if locked else app
    threads = [
        in_thread(lambda: call(target, environ_for(cookie=f"sid={SID}"))) for _ in range(requests)
    ]
    for thread, _ in threads:
        thread.join(WAIT)
    bodies = sorted(out[0].body for _, out in threads)
    if locked:
        assert store[SID] == requests
        assert bodies == [b"1", b"2", b"3", b"4"]
        assert len(middleware.core.queue) == 0
    else:
        assert store[SID] == 1  # control: every request read 0, three updates lost
        assert bodies == [b"1"] * requests


@pytest.mark.parametrize(
    ("sids", "peak"),
    [
        pytest.param(("alice", "bob"), 2, id="different-keys-overlap"),
        pytest.param(("alice", "alice"), 1, id="control-same-key-waits"),
    ],
)
def test_different_sessions_run_concurrently(sids: tuple[str, str], peak: int) -> None:
    gate = Gate()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with gate.visit():
            # Each request stays until both reached the app, or the other is in line.
            gate.wait_for(lambda: gate.in_app + gate.queued >= 2)
        return hello(environ, start_response)

    middleware = wrap(validator(app), key="cookie:sid")
    probe(middleware, gate)
    threads = [
        in_thread(lambda sid=sid: call(middleware, environ_for(cookie=f"sid={sid}")))
        for sid in sids
    ]
    for thread, out in threads:
        thread.join(WAIT)
        assert out[0].code == 200
    assert gate.peak == peak  # two sessions were in the app at once; one session never
    assert gate.queued == 2 - peak
    assert len(middleware.core.queue) == 0


@pytest.mark.parametrize(
    ("cache_control", "gets_cookie"),
    [
        pytest.param("public, max-age=600", False, id="public"),
        pytest.param("s-maxage=600", False, id="s-maxage"),
        pytest.param("public, private", True, id="private-wins"),
        pytest.param("no-store", True, id="no-store"),
        pytest.param(None, True, id="control-no-cache-control"),
    ],
)
def test_no_identity_cookie_on_a_response_shared_caches_may_store(
    cache_control: str | None, gets_cookie: bool
) -> None:
    """A shared cache would hand the Set-Cookie to everyone: it waits for a private response."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        headers = [("Content-Type", "text/plain")]
        if cache_control is not None:
            headers.append(("Cache-Control", cache_control))
        start_response("200 OK", headers)
        return [b"page"]

    response = call(wrap(validator(app)), environ_for())
    assert bool(response.all("Set-Cookie")) is gets_cookie
    assert response.header("Server-Timing") is not None  # still serialized
