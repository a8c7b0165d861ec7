"""Option names: one list (core.Options), refused by name with the known ones at every entry
point; every option reachable from the environment (uvicorn factory) and gunicorn's forms."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterable
from typing import Any

import pytest

import sessionlock.uvicorn
from sessionlock import gunicorn
from sessionlock.core import Core, Options
from sessionlock.errors import ConfigurationError
from sessionlock.options import _PARSERS, NAMES, check_names, from_environ

KNOWN = (
    "backend, cookie_session, exempt, key, max_waiters, max_waiting_threads, metrics, "
    "on_backend_error, release, secret, shared, stale_pages, timeout"
)
VARIABLES = (
    "SESSIONLOCK_APP, SESSIONLOCK_BACKEND, SESSIONLOCK_COOKIE_SESSION, SESSIONLOCK_EXEMPT, "
    "SESSIONLOCK_KEY, SESSIONLOCK_MAX_WAITERS, SESSIONLOCK_MAX_WAITING_THREADS, "
    "SESSIONLOCK_METRICS, SESSIONLOCK_ON_BACKEND_ERROR, SESSIONLOCK_RELEASE, SESSIONLOCK_SECRET, "
    "SESSIONLOCK_SHARED, SESSIONLOCK_STALE_PAGES, SESSIONLOCK_TIMEOUT"
)
SECRET = "options-test-secret-0123456789"


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


# -- the names ---------------------------------------------------------------------------------


def test_names_are_the_options_of_the_typed_dict_and_of_the_core() -> None:
    assert set(NAMES) == set(Options.__annotations__)
    keyword_only = [
        name
        for name, parameter in inspect.signature(Core).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert set(NAMES) == set(keyword_only)
    assert list(NAMES) == sorted(NAMES)


def test_every_option_has_an_environment_parser() -> None:
    # One added to Options without one would be read as text: say how to read it.
    assert set(_PARSERS) == set(NAMES)


# -- check_names -------------------------------------------------------------------------------


def test_known_names_pass() -> None:
    check_names(dict.fromkeys(NAMES), "SessionLockMiddleware")
    check_names({}, "SessionLockMiddleware")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"timout": 5},
            f"unknown option 'timout' (did you mean 'timeout'?) for SessionLockMiddleware; "
            f"known: {KNOWN}",
            id="typo",
        ),
        pytest.param(
            {"backend": "memory://", "colour": "red"},
            f"unknown option 'colour' for SessionLockMiddleware; known: {KNOWN}",
            id="nothing-close",
        ),
        pytest.param(
            {"max_waiter": 1, "cookie_sessions": "s"},
            "unknown options 'max_waiter' (did you mean 'max_waiters'?), 'cookie_sessions' "
            f"(did you mean 'cookie_session'?) for SessionLockMiddleware; known: {KNOWN}",
            id="two",
        ),
        pytest.param(
            {1: "x"}, f"unknown option 1 for SessionLockMiddleware; known: {KNOWN}", id="not-str"
        ),
    ],
)
def test_unknown_names_are_refused_with_the_known_ones(
    options: dict[Any, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        check_names(options, "SessionLockMiddleware")
    assert str(raised.value) == message


def test_known_can_be_given() -> None:
    check_names({"rules": []}, "SessionLock", known=(*NAMES, "rules"))
    with pytest.raises(ConfigurationError, match=r"'rule' \(did you mean 'rules'\?\)"):
        check_names({"rule": []}, "SessionLock", known=(*NAMES, "rules"))


# -- from_environ ------------------------------------------------------------------------------

EVERY = {
    "SESSIONLOCK_BACKEND": "memory://",
    "SESSIONLOCK_KEY": "identity",
    "SESSIONLOCK_TIMEOUT": "2.5",
    "SESSIONLOCK_MAX_WAITERS": "3",
    "SESSIONLOCK_MAX_WAITING_THREADS": "1",
    "SESSIONLOCK_EXEMPT": "/static/, OPTIONS,/health",
    "SESSIONLOCK_SECRET": SECRET,
    "SESSIONLOCK_COOKIE_SESSION": "session,remember",
    "SESSIONLOCK_RELEASE": "end",
    "SESSIONLOCK_ON_BACKEND_ERROR": "open",
    "SESSIONLOCK_STALE_PAGES": "redirect:/exam",
    "SESSIONLOCK_SHARED": "GET, HEAD",
    "SESSIONLOCK_METRICS": "prometheus",
}


def test_every_option_is_read_from_its_variable() -> None:
    options = from_environ({**EVERY, "SESSIONLOCK_APP": "pkg:app", "PATH": "/bin"})
    stale = options.pop("stale_pages")
    assert stale is not None
    assert stale.policy_for("/") == ("redirect", "/exam")
    assert {**options, "stale_pages": None} == {
        "backend": "memory://",
        "key": "identity",
        "timeout": 2.5,
        "max_waiters": 3,
        "max_waiting_threads": 1,
        "exempt": ["/static/", "OPTIONS", "/health"],
        "secret": SECRET,
        "cookie_session": ["session", "remember"],
        "release": "end",
        "on_backend_error": "open",
        "stale_pages": None,
        "shared": ["GET", "HEAD"],
        "metrics": "prometheus",
    }
    assert {*options, "stale_pages"} == set(NAMES)  # every option has its variable


def test_what_is_read_builds_the_middleware_it_says() -> None:
    from sessionlock.wsgi import SessionLockMiddleware

    core = SessionLockMiddleware(wsgi_hello, **from_environ(EVERY)).core
    assert (core.timeout, core.max_waiters, core.max_waiting_threads) == (2.5, 3, 1)
    assert not core.release_at_head
    assert core.fail_open
    assert core.cookies is not None
    assert core.is_exempt is not None
    assert core.is_exempt({"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "/x"})
    assert core.is_exempt({"REQUEST_METHOD": "GET", "PATH_INFO": "/static/a.css"})
    assert not core.is_exempt({"REQUEST_METHOD": "GET", "PATH_INFO": "/page"})
    assert type(core.metrics).__name__ == "PrometheusMetrics"


def test_nothing_set_is_nothing_given() -> None:
    assert from_environ({"PATH": "/bin", "SESSIONLOCKED": "1", "sessionlock_timout": "1"}) == {}


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        pytest.param("TIMEOUT", "none", {"timeout": None}, id="timeout-none"),
        pytest.param("TIMEOUT", "None", {"timeout": None}, id="timeout-None"),
        pytest.param("TIMEOUT", "10", {"timeout": 10.0}, id="timeout-int"),
        pytest.param("TIMEOUT", " 0.5 ", {"timeout": 0.5}, id="timeout-spaces"),
        pytest.param("MAX_WAITERS", "0", {"max_waiters": 0}, id="max-waiters-0"),
        pytest.param("MAX_WAITING_THREADS", "none", {"max_waiting_threads": None}, id="mwt"),
        pytest.param("COOKIE_SESSION", "session", {"cookie_session": "session"}, id="cookie"),
        pytest.param("COOKIE_SESSION", "", {"cookie_session": None}, id="cookie-empty"),
        pytest.param("COOKIE_SESSION", "off", {"cookie_session": None}, id="cookie-off"),
        pytest.param("COOKIE_SESSION", "NONE", {"cookie_session": None}, id="cookie-none"),
        pytest.param("EXEMPT", "", {"exempt": None}, id="exempt-empty"),
        pytest.param("EXEMPT", "off", {"exempt": None}, id="exempt-off"),
        pytest.param("EXEMPT", "GET", {"exempt": ["GET"]}, id="exempt-one"),
        pytest.param("RELEASE", "HEAD", {"release": "head"}, id="release-case"),
        pytest.param("ON_BACKEND_ERROR", "Open", {"on_backend_error": "open"}, id="open-case"),
        pytest.param("ON_BACKEND_ERROR", "closed", {"on_backend_error": "closed"}, id="closed"),
        pytest.param("ON_BACKEND_ERROR", "", {}, id="on-backend-error-empty"),
        # An empty scalar is the option's default (a shell's VAR=${UNSET}):
        pytest.param("TIMEOUT", "", {}, id="timeout-empty"),
        pytest.param("BACKEND", "", {}, id="backend-empty"),
        pytest.param("MAX_WAITERS", " ", {}, id="max-waiters-blank"),
        pytest.param("RELEASE", "", {}, id="release-empty"),
    ],
)
def test_values(variable: str, text: str, expected: dict[str, object]) -> None:
    assert from_environ({f"SESSIONLOCK_{variable}": text}) == expected


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        pytest.param(
            "TIMEOUT",
            "abc",
            "SESSIONLOCK_TIMEOUT must be a number of seconds > 0 or 'none' (wait forever), "
            "got 'abc'",
            id="timeout-abc",
        ),
        pytest.param("TIMEOUT", "0", "SESSIONLOCK_TIMEOUT must be a number", id="timeout-0"),
        pytest.param("TIMEOUT", "-1", "SESSIONLOCK_TIMEOUT must be a number", id="timeout-neg"),
        pytest.param("TIMEOUT", "inf", "SESSIONLOCK_TIMEOUT must be a number", id="timeout-inf"),
        pytest.param("TIMEOUT", "nan", "SESSIONLOCK_TIMEOUT must be a number", id="timeout-nan"),
        pytest.param(
            "MAX_WAITERS",
            "many",
            "SESSIONLOCK_MAX_WAITERS must be a whole number >= 0, got 'many'",
            id="max-waiters-word",
        ),
        pytest.param("MAX_WAITERS", "-1", "SESSIONLOCK_MAX_WAITERS must be", id="max-neg"),
        pytest.param("MAX_WAITERS", "2.5", "SESSIONLOCK_MAX_WAITERS must be", id="max-float"),
        pytest.param("MAX_WAITERS", "none", "SESSIONLOCK_MAX_WAITERS must be", id="max-none"),
        pytest.param(
            "MAX_WAITING_THREADS",
            "x",
            "SESSIONLOCK_MAX_WAITING_THREADS must be a whole number >= 0, or 'none' (derived "
            "from the server's threads), got 'x'",
            id="threads-word",
        ),
        pytest.param(
            "RELEASE",
            "later",
            "SESSIONLOCK_RELEASE must be 'head' or 'end', got 'later'",
            id="release-word",
        ),
        pytest.param(
            "ON_BACKEND_ERROR",
            "fail-open",
            "SESSIONLOCK_ON_BACKEND_ERROR must be 'closed' or 'open', got 'fail-open'",
            id="on-backend-error-word",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_variable(variable: str, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_environ({f"SESSIONLOCK_{variable}": text})
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        pytest.param(
            ["SESSIONLOCK_TIMOUT"],
            "unknown variable 'SESSIONLOCK_TIMOUT' (did you mean 'SESSIONLOCK_TIMEOUT'?) in the "
            f"environment; known: {VARIABLES}",
            id="typo",
        ),
        pytest.param(
            ["SESSIONLOCK_Cookie_Session"],
            "'SESSIONLOCK_Cookie_Session' (did you mean 'SESSIONLOCK_COOKIE_SESSION'?)",
            id="case",
        ),
        pytest.param(
            ["SESSIONLOCK_AP"], "'SESSIONLOCK_AP' (did you mean 'SESSIONLOCK_APP'?)", id="app"
        ),
        pytest.param(
            ["SESSIONLOCK_DIR", "SESSIONLOCK_WORKERS"],
            "unknown variables 'SESSIONLOCK_DIR', 'SESSIONLOCK_WORKERS' in the environment; "
            f"known: {VARIABLES}",
            id="two-nothing-close",
        ),
        pytest.param(["SESSIONLOCK_"], "unknown variable 'SESSIONLOCK_' in", id="bare-prefix"),
    ],
)
def test_unknown_variables_are_refused_with_the_known_ones(names: list[str], message: str) -> None:
    environ = {**dict.fromkeys(names, "1"), "SESSIONLOCK_TIMEOUT": "3"}
    with pytest.raises(ConfigurationError) as raised:
        from_environ(environ)
    assert message in str(raised.value)


def test_another_prefix() -> None:
    environ = {"MYAPP_LOCK_TIMEOUT": "4", "SESSIONLOCK_TIMOUT": "ignored", "MYAPP_LOCK_APP": "x"}
    assert from_environ(environ, prefix="MYAPP_LOCK_") == {"timeout": 4.0}
    with pytest.raises(
        ConfigurationError, match="'MYAPP_LOCK_KEYS' \\(did you mean 'MYAPP_LOCK_KEY'"
    ):
        from_environ({"MYAPP_LOCK_KEYS": "identity"}, prefix="MYAPP_LOCK_")


# -- the uvicorn factory -----------------------------------------------------------------------


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """os.environ without any SESSIONLOCK_* variable (nor WEB_CONCURRENCY)."""
    for name in list(os.environ):
        if name.startswith("SESSIONLOCK_") or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    return monkeypatch


def test_uvicorn_factory_takes_every_option(environ: pytest.MonkeyPatch) -> None:
    from sessionlock.asgi import SessionLockMiddleware

    for name, value in {**EVERY, "SESSIONLOCK_APP": "tests.test_options:asgi_hello"}.items():
        environ.setenv(name, value)
    app = sessionlock.uvicorn.app()
    assert isinstance(app, SessionLockMiddleware)
    assert app.app is asgi_hello
    core = app.core
    assert (core.timeout, core.max_waiters, core.max_waiting_threads) == (2.5, 3, 1)
    assert core.cookies is not None
    assert not core.release_at_head
    assert core.revisions is not None


def test_uvicorn_factory_refuses_a_typo_before_anything_else(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("SESSIONLOCK_TIMOUT", "5")  # and no SESSIONLOCK_APP: the typo comes first
    with pytest.raises(ConfigurationError, match="did you mean 'SESSIONLOCK_TIMEOUT'"):
        sessionlock.uvicorn.app()


def test_uvicorn_factory_without_its_app(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("SESSIONLOCK_BACKEND", "memory://")
    with pytest.raises(ConfigurationError, match="set SESSIONLOCK_APP to the app to wrap"):
        sessionlock.uvicorn.app()


def test_uvicorn_factory_refuses_a_bad_value(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("SESSIONLOCK_APP", "tests.test_options:asgi_hello")
    environ.setenv("SESSIONLOCK_TIMEOUT", "abc")
    with pytest.raises(ConfigurationError, match="SESSIONLOCK_TIMEOUT must be a number"):
        sessionlock.uvicorn.app()


@pytest.mark.parametrize("name", ["timout", "workers", "asgi"])
def test_uvicorn_wrap_refuses_an_unknown_keyword_by_name(environ: Any, name: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        sessionlock.uvicorn.wrap("tests.nowhere:app", **{name: 1})  # checked before loading
    assert f"unknown option {name!r}" in str(raised.value)
    assert "for sessionlock.uvicorn.wrap; known: " in str(raised.value)


# -- gunicorn ----------------------------------------------------------------------------------

#: Every option, in gunicorn's literal factory syntax.
GUNICORN_EVERY = (
    'sessionlock.gunicorn:wrap("tests.test_options:wsgi_hello", backend="memory://", '
    'key="identity", timeout=None, max_waiters=2, max_waiting_threads=1, '
    f'exempt=["/static/", "OPTIONS"], secret="{SECRET}", cookie_session="session", '
    'release="end", on_backend_error="open", stale_pages="redirect:/exam", '
    'shared=["GET", "HEAD"], metrics="prometheus")'
)


def test_gunicorn_factory_syntax_reaches_every_option() -> None:
    import ast

    from gunicorn.util import import_app

    from sessionlock.wsgi import SessionLockMiddleware

    call = ast.parse(GUNICORN_EVERY.partition(":")[2], mode="eval").body
    assert isinstance(call, ast.Call)
    assert {keyword.arg for keyword in call.keywords} == set(NAMES)
    app = import_app(GUNICORN_EVERY)
    assert isinstance(app, SessionLockMiddleware)
    core = app.core
    assert (core.timeout, core.max_waiters, core.max_waiting_threads) == (None, 2, 1)
    assert core.cookies is not None
    assert not core.release_at_head
    assert core.fail_open
    assert type(core.metrics).__name__ == "PrometheusMetrics"


@pytest.mark.parametrize(
    ("call", "where"),
    [
        pytest.param(lambda: gunicorn.wrap("tests.nowhere:app", timout=1), "wrap", id="wrap"),
        pytest.param(
            lambda: gunicorn.post_worker_init(timout=1), "post_worker_init", id="post_worker_init"
        ),
        pytest.param(
            lambda: gunicorn.wrap_app(wsgi_hello, asgi=False, workers=1, timout=1),
            "wrap_app",
            id="wrap_app",
        ),
    ],
)
def test_gunicorn_forms_refuse_an_unknown_keyword_by_name(call: Any, where: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        call()  # wrap: before importing its app (tests.nowhere does not exist)
    assert str(raised.value) == (
        f"unknown option 'timout' (did you mean 'timeout'?) for sessionlock.gunicorn.{where}; "
        f"known: {KNOWN}"
    )


def test_a_per_process_backend_under_workers_is_named_by_its_url() -> None:
    with pytest.raises(ConfigurationError) as raised:
        gunicorn.wrap_app(wsgi_hello, asgi=False, workers=4, backend="memory://")
    message = str(raised.value)
    assert message.startswith("backend 'memory://' serializes a session within one process")
    assert "MemoryBackend" not in message
    assert "backend='redis://host:6379/0' (every process of several hosts)" in message


# -- the middleware classes --------------------------------------------------------------------
# Not collected yet: they pass once wsgi.py's and asgi.py's SessionLockMiddleware.__init__ begin
# with ``check_names(options, "SessionLockMiddleware")`` (from sessionlock.options). Then
# rename each ``pending_test_`` to ``test_``.


@pytest.mark.parametrize("shell", ["wsgi", "asgi"])
def test_middleware_refuses_an_unknown_option_with_the_known_ones(shell: str) -> None:
    middleware = _middleware(shell)
    with pytest.raises(ConfigurationError) as raised:
        middleware(wsgi_hello, backend="memory://", timout=5)
    assert str(raised.value) == (
        f"unknown option 'timout' (did you mean 'timeout'?) for SessionLockMiddleware; "
        f"known: {KNOWN}"
    )


def test_asgi_middleware_made_on_the_event_loop_refuses_at_once() -> None:
    # On a running loop the ASGI middleware builds its core at the first request: the names
    # are checked before that, when it is made.
    from sessionlock.asgi import SessionLockMiddleware

    async def make() -> None:
        SessionLockMiddleware(asgi_hello, backend="memory://", timout=5)  # type: ignore[call-arg]

    with pytest.raises(ConfigurationError, match="unknown option 'timout'"):
        asyncio.run(make())


def _middleware(shell: str) -> Any:
    if shell == "wsgi":
        from sessionlock.wsgi import SessionLockMiddleware as WSGIMiddleware

        return WSGIMiddleware
    from sessionlock.asgi import SessionLockMiddleware as ASGIMiddleware

    return ASGIMiddleware
