"""Options are checked when the middleware is built, with errors that say what to write instead.

A bad option must fail at start-up with ConfigurationError, never as a TypeError deep in the
first request or, worse, as a silent misbehaviour (a secret of zero bytes, a timeout that
overflows the lock primitive under load).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from sessionlock import asgi, wsgi
from sessionlock.backends import Backend, Lease, from_url
from sessionlock.backends.memory import MemoryBackend
from sessionlock.core import Admission, Core
from sessionlock.errors import ConfigurationError, QueueFull, SessionLockError
from sessionlock.fairness import waiting_threads_for
from sessionlock.gunicorn import worker_threads, wrap_app

MIDDLEWARE = [
    pytest.param(wsgi.SessionLockMiddleware, id="wsgi"),
    pytest.param(asgi.SessionLockMiddleware, id="asgi"),
]


def app(*args: Any) -> Any:  # never called: these tests only build the middleware
    raise AssertionError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
        pytest.param({"timeout": -1}, "timeout", id="timeout-negative"),
        pytest.param({"timeout": math.nan}, "timeout", id="timeout-nan"),
        pytest.param({"timeout": math.inf}, "timeout", id="timeout-infinite"),
        pytest.param({"timeout": "5"}, "timeout", id="timeout-string"),
        pytest.param({"timeout": True}, "timeout", id="timeout-bool"),
        pytest.param({"max_waiters": -1}, "max_waiters", id="max-waiters-negative"),
        pytest.param({"max_waiters": 1.5}, "max_waiters", id="max-waiters-float"),
        pytest.param({"max_waiters": "3"}, "max_waiters", id="max-waiters-string"),
        pytest.param({"max_waiters": True}, "max_waiters", id="max-waiters-bool"),
        pytest.param({"max_waiting_threads": -1}, "max_waiting_threads", id="threads-negative"),
        pytest.param({"max_waiting_threads": 2.0}, "max_waiting_threads", id="threads-float"),
        pytest.param({"max_waiting_threads": "4"}, "max_waiting_threads", id="threads-string"),
        pytest.param({"max_waiting_threads": False}, "max_waiting_threads", id="threads-bool"),
        pytest.param({"backend": "nope://x"}, "unknown backend scheme 'nope'", id="backend-scheme"),
        pytest.param({"backend": "memory"}, "has no scheme", id="backend-no-scheme"),
        pytest.param({"backend": ""}, "has no scheme", id="backend-empty"),
        pytest.param({"backend": "memory://host/x"}, "memory://", id="backend-memory-with-path"),
        pytest.param({"backend": 42}, "backend must be", id="backend-not-url-or-object"),
        pytest.param({"exempt": ["static/"]}, "path prefixes", id="exempt-prefix-without-slash"),
        pytest.param({"exempt": ["get"]}, "path prefixes", id="exempt-lowercase-method"),
        pytest.param({"exempt": "FETCH"}, "path prefixes", id="exempt-unknown-method"),
        pytest.param({"exempt": [""]}, "path prefixes", id="exempt-empty-entry"),
        pytest.param({"exempt": [1]}, "exempt", id="exempt-not-a-string"),
        pytest.param({"exempt": b"/static/"}, "exempt", id="exempt-bytes"),
        pytest.param({"exempt": 5}, "exempt", id="exempt-number"),
        pytest.param({"secret": "too short"}, "at least 16 bytes", id="secret-short-str"),
        pytest.param({"secret": b"x" * 15}, "at least 16 bytes", id="secret-short-bytes"),
        pytest.param({"secret": 100}, "secret", id="secret-int"),
        pytest.param({"key": "cookie:"}, "key spec", id="key-spec-empty-name"),
        pytest.param({"key": "sessionid"}, "key spec", id="key-spec-bare-name"),
        pytest.param({"key": 3}, "key must be", id="key-not-spec-or-callable"),
        pytest.param({"on_backend_error": "fail"}, "'closed' or 'open'", id="on-error-word"),
        pytest.param({"on_backend_error": True}, "'closed' or 'open'", id="on-error-bool"),
    ],
)
@pytest.mark.parametrize("middleware", MIDDLEWARE)
def test_bad_options_raise_configuration_error(
    middleware: Any, options: dict[str, Any], message: str
) -> None:
    options.setdefault("backend", "memory://")
    with pytest.raises(ConfigurationError, match=message) as caught:
        middleware(app, **options)
    # One catchable family, and a ValueError for code that expects one.
    assert isinstance(caught.value, SessionLockError)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"timeout": None}, id="wait-forever"),
        pytest.param({"timeout": 0.001}, id="tiny-timeout"),
        pytest.param({"timeout": 3}, id="int-timeout"),
        pytest.param({"max_waiters": 0}, id="no-waiting"),
        pytest.param({"max_waiting_threads": 0}, id="no-waiting-threads"),
        pytest.param({"max_waiting_threads": None}, id="waiting-threads-derived"),
        pytest.param({"exempt": "/static/"}, id="one-prefix"),
        pytest.param({"exempt": ["/static/", "GET", "HEAD"]}, id="prefixes-and-methods"),
        pytest.param({"exempt": {"OPTIONS"}}, id="a-set"),
        pytest.param({"exempt": lambda request: False}, id="predicate"),
        pytest.param({"secret": "sixteen chars!!!"}, id="secret-str"),
        pytest.param({"secret": b"\x00" * 64 + b"more"}, id="secret-long-bytes"),
        pytest.param({"key": "header:Authorization"}, id="key-spec"),
        pytest.param({"key": lambda request: None}, id="key-callable"),
        pytest.param({"backend": MemoryBackend()}, id="backend-object"),
    ],
)
@pytest.mark.parametrize("middleware", MIDDLEWARE)
def test_good_options_are_accepted(middleware: Any, options: dict[str, Any]) -> None:
    options.setdefault("backend", "memory://")
    middleware(app, **options)


@pytest.mark.parametrize("middleware", MIDDLEWARE)
def test_options_are_keyword_only_and_unknown_ones_are_named(middleware: Any) -> None:
    with pytest.raises(TypeError):
        middleware(app, "memory://")
    with pytest.raises(ConfigurationError, match=r"unknown option 'timout' .*'timeout'"):
        middleware(app, timout=5)


def test_the_same_secret_hashes_a_session_alike_in_both_shells() -> None:
    """A WSGI and an ASGI app sharing a backend must name one session's lock the same."""
    secret = "one secret for every worker"
    one = wsgi.SessionLockMiddleware(app, backend="memory://", secret=secret, key="cookie:s")
    two = asgi.SessionLockMiddleware(app, backend="memory://", secret=secret, key="cookie:s")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": "s=abc"}
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", b"s=abc")]}
    first, second = one.core.admit(environ), two.core.admit(scope)
    assert first is not None
    assert second is not None
    assert first.key == second.key
    other = Core(backend="memory://", secret="another secret, as long", key="cookie:s")
    third = other.admit(environ)
    assert third is not None
    assert third.key != first.key


def test_without_a_secret_each_memory_core_hashes_differently() -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": "s=abc"}
    admissions = [Core(backend="memory://", key="cookie:s").admit(environ) for _ in range(3)]
    assert len({a.key for a in admissions if a is not None}) == 3


def test_an_infinite_wait_is_spelled_none_and_works() -> None:
    """``timeout=None`` waits for the holder however long it takes (no overflow)."""
    core = Core(backend="memory://", timeout=None, key="cookie:s")
    core.queue.acquire("k", timeout=None, max_waiters=1)
    entered = threading.Event()

    def waiter() -> None:
        core.queue.acquire("k", timeout=None, max_waiters=1)
        entered.set()
        core.queue.release("k")

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    core.queue.release("k")
    assert entered.wait(10)
    thread.join(10)
    assert len(core.queue) == 0


# -- backend registry -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("nope://host", "unknown backend scheme 'nope'", id="unknown"),
        pytest.param("MEMORY2://", "unknown backend scheme", id="unknown-upper"),
        pytest.param("memcached://127.0.0.1:11211", "unknown backend scheme", id="memcached"),
        pytest.param("/var/lib/locks", "has no scheme", id="bare-path"),
        pytest.param("memory:", "has no scheme", id="no-slashes"),
    ],
)
def test_the_registry_refuses_unknown_schemes_and_names_the_known_ones(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        from_url(url)
    if "unknown" in message:
        assert "memory://" in str(caught.value)  # the error lists what would work


def test_the_registry_builds_the_memory_backend() -> None:
    backend = from_url("memory://")
    assert isinstance(backend, MemoryBackend)
    assert backend.shared is False


# -- the cap on waiting threads (fairness to other sessions) --------------------------------


@pytest.mark.parametrize(("threads", "cap"), [(1, 0), (2, 0), (3, 1), (4, 1), (8, 3), (16, 7)])
def test_the_derived_cap_leaves_a_thread_for_other_sessions(threads: int, cap: int) -> None:
    assert waiting_threads_for(threads) == cap
    # w waiters and the (at most w) holders they wait for leave at least one thread free.
    assert 2 * cap <= threads - 1 or threads == 1


class ElsewhereBackend(Backend):
    """A shared backend whose key ``k`` another process holds until ``free`` is set."""

    def __init__(self) -> None:
        self.free = threading.Event()
        self.waits = 0

    def secret(self) -> bytes:
        return b"s" * 32

    def try_acquire(self, key: str) -> Lease | None:
        return Lease(key) if self.free.is_set() else None

    def acquire(self, key: str, timeout: float | None) -> Lease | None:
        self.waits += 1
        return Lease(key) if self.free.wait(timeout) else None

    def release(self, lease: Lease) -> None:
        pass

    def get(self, key: str) -> str | None:
        return None

    def set(self, key: str, value: str, ttl: float | None) -> None:
        pass

    def delete(self, key: str) -> None:
        pass


def test_cap_zero_refuses_at_once_when_another_process_holds_the_session() -> None:
    """One thread per process: a busy session is answered 429, the worker is not blocked."""
    backend = ElsewhereBackend()
    core = Core(backend=backend, key="cookie:s", max_waiting_threads=0, timeout=None)
    with pytest.raises(QueueFull, match="busy in another process"):
        core.enter(Admission("k", None))
    assert backend.waits == 0  # never blocked in the backend
    assert len(core.queue) == 0  # the turn was given back
    assert core.queue.threads_waiting == 0
    backend.free.set()
    admission = Admission("k", None)
    core.enter(admission)  # free again: taken at once, cap 0 or not
    core.leave(admission)
    assert len(core.queue) == 0


def test_control_without_a_cap_the_thread_waits_for_the_other_process() -> None:
    backend = ElsewhereBackend()
    core = Core(backend=backend, key="cookie:s", timeout=None)
    assert core._waiting_threads() is None  # no server that tells its threads: no cap
    entered = threading.Event()
    admission = Admission("k", None)

    def enter() -> None:
        core.enter(admission)
        entered.set()

    waiting = threading.Thread(target=enter)
    waiting.start()
    backend.free.set()  # the other process leaves: only this lets the waiter in
    assert entered.wait(10)
    waiting.join(10)
    core.leave(admission)


def test_cap_in_process_refuses_the_thread_beyond_it() -> None:
    core = Core(backend="memory://", key="cookie:s", max_waiting_threads=0)
    holder = Admission("k", None)
    core.enter(holder)
    with pytest.raises(QueueFull):
        core.enter(Admission("k", None))
    other = Admission("other", None)
    core.enter(other)  # another session is not concerned
    core.leave(other)
    core.leave(holder)
    assert len(core.queue) == 0


class _FakeAdj:
    threads = 6


class _FakeServer:
    adj = _FakeAdj()


class _FakeChannel:
    server = _FakeServer()


class _FakeTask:
    """Stands for waitress's WSGITask up the stack (its module name is what is checked)."""

    channel = _FakeChannel()

    def execute(self, core: Core) -> int | None:
        return core._waiting_threads()


_FakeTask.__module__ = "waitress.task"


def test_the_cap_is_derived_from_waitress_threads_once() -> None:
    core = Core(backend="memory://", key="cookie:s")
    assert _FakeTask().execute(core) == waiting_threads_for(6) == 2
    assert core._waiting_threads() == 2  # cached: no frame walk on later requests


def test_an_explicit_cap_wins_over_the_server() -> None:
    core = Core(backend="memory://", key="cookie:s", max_waiting_threads=5)
    assert _FakeTask().execute(core) == 5


class _Config:
    def __init__(self, worker_class: str, threads: int) -> None:
        self.worker_class_str = worker_class
        self.threads = threads


@pytest.mark.parametrize(
    ("worker_class", "threads", "expected"),
    [
        ("sync", 1, 1),
        ("gthread", 8, 8),
        ("gunicorn.workers.sync.SyncWorker", 1, 1),
        ("gunicorn.workers.gthread.ThreadWorker", 4, 4),
        ("gevent", 1, None),
        ("uvicorn_worker.UvicornWorker", 1, None),
    ],
)
def test_gunicorn_worker_threads(worker_class: str, threads: int, expected: int | None) -> None:
    assert worker_threads(_Config(worker_class, threads)) == expected


@pytest.mark.parametrize(("threads", "cap"), [(1, 0), (8, 3), (None, None)])
def test_gunicorn_wrap_app_passes_the_derived_cap(threads: int | None, cap: int | None) -> None:
    wrapped = wrap_app(app, asgi=False, workers=1, threads=threads, backend="memory://")
    assert wrapped.core._waiting_threads() == cap
    mine = wrap_app(
        app, asgi=False, workers=1, threads=1, backend="memory://", max_waiting_threads=9
    )
    assert mine.core.max_waiting_threads == 9


def test_one_info_line_at_start_says_what_the_layer_does(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    secret = "a-secret-that-must-never-be-logged"
    with caplog.at_level("INFO", logger="sessionlock"):
        wsgi.SessionLockMiddleware(
            app, backend=f"file://{tmp_path}/locks", cookie_session="session", secret=secret
        )
        asgi.SessionLockMiddleware(app, backend="memory://", key="cookie:sid", timeout=None)
    lines = [r.getMessage() for r in caplog.records if r.name == "sessionlock"]
    assert len(lines) == 2
    assert f"file://{tmp_path}/locks (shared by this host's processes)" in lines[0]
    assert "key identity('sessionlock')" in lines[0]
    assert "tracked cookie sessions: session" in lines[0]
    assert "timeout 25 s" in lines[0]
    assert "memory:// (this process only)" in lines[1]
    assert "key cookie('sid')" in lines[1]
    assert "timeout none (wait forever)" in lines[1]
    assert all(secret not in line for line in lines)
