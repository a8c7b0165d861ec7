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
from sessionlock.backends import from_url
from sessionlock.backends.memory import MemoryBackend
from sessionlock.core import Core
from sessionlock.errors import ConfigurationError, SessionLockError

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
    with pytest.raises(TypeError, match="timout"):
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
