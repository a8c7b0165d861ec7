"""Early release, nested layers and the identity cookie, through both shells.

Each concurrency test has its control: the same requests without the feature under test,
where the second request waits in line (or times out) instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.wrappers import Request as WerkzeugRequest

from sessionlock import ConfigurationError, release_session
from sessionlock.asgi import SessionLockMiddleware as ASGILock
from sessionlock.backends.file import FileBackend
from sessionlock.core import HELD
from sessionlock.wsgi import SessionLockMiddleware as WSGILock
from tests import test_asgi as asgi
from tests import test_wsgi as wsgi
from tests.queue_probe import probe

WAIT = 10.0
SID = "raw-session-id-0123456789abcdef"
IDENTITY = "I" * 43


def issued(core: Any, identity: str = IDENTITY) -> str:
    """The identity cookie ``core`` would issue for ``identity`` (name=value)."""
    return str(core.key_source.issue({"REQUEST_METHOD": "GET"}, identity)).partition(";")[0]


# -- early release: WSGI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("early", "as_object"),
    [
        pytest.param(True, False, id="environ"),
        pytest.param(True, True, id="werkzeug-request-object"),
        pytest.param(False, False, id="control-no-early-release"),
    ],
)
def test_wsgi_early_release_lets_the_next_request_run(early: bool, as_object: bool) -> None:
    released, leave = threading.Event(), threading.Event()
    returned: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            if early:
                target: object = WerkzeugRequest(environ) if as_object else environ
                returned.append(release_session(target))
                returned.append(release_session(target))  # twice: harmless
            released.set()
            assert leave.wait(WAIT)  # long work after the last session access
        return wsgi.hello(environ, start_response)

    middleware = WSGILock(app, key="cookie:sid", backend="memory://", timeout=WAIT)
    gate = probe(middleware, wsgi.Gate())
    slow, slow_out = wsgi.in_thread(
        lambda: wsgi.call(middleware, wsgi.environ_for("/slow", cookie=f"sid={SID}"))
    )
    assert released.wait(WAIT)
    fast, fast_out = wsgi.in_thread(
        lambda: wsgi.call(middleware, wsgi.environ_for("/fast", cookie=f"sid={SID}"))
    )
    if early:
        fast.join(WAIT)  # ran to the end while /slow still works
        assert fast_out[0].code == 200
        assert returned == [True, True]
    else:
        gate.wait_for(lambda: gate.queued == 1)  # control: waits for /slow
        assert not fast_out
    leave.set()
    slow.join(WAIT)
    fast.join(WAIT)
    assert slow_out[0].code == fast_out[0].code == 200
    assert len(middleware.core.queue) == 0


def test_a_second_early_release_never_frees_the_next_holder() -> None:
    """The first request releases twice: the second time, the next request holds the lock."""
    first_released, second_inside, leave_second = (threading.Event() for _ in range(3))
    calls: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        calls.append(environ)
        if environ["PATH_INFO"] == "/first":
            release_session(environ)
            first_released.set()
        else:
            second_inside.set()
            assert leave_second.wait(WAIT)
        return wsgi.hello(environ, start_response)

    middleware = WSGILock(app, key="cookie:sid", backend="memory://", timeout=0.05)
    assert wsgi.call(middleware, wsgi.environ_for("/first", cookie=f"sid={SID}")).code == 200
    second, out = wsgi.in_thread(
        lambda: wsgi.call(middleware, wsgi.environ_for("/second", cookie=f"sid={SID}"))
    )
    assert second_inside.wait(WAIT)
    assert release_session(calls[0]) is True  # the first request's door, once more
    # The session is still the second request's: a third one times out.
    assert wsgi.call(middleware, wsgi.environ_for("/third", cookie=f"sid={SID}")).code == 503
    leave_second.set()
    second.join(WAIT)
    assert out[0].code == 200


@pytest.mark.parametrize(
    "target",
    [
        pytest.param({}, id="empty-environ"),
        pytest.param({"type": "http"}, id="scope-outside"),
        pytest.param(object(), id="any-object"),
        pytest.param({"sessionlock.handle": lambda: None}, id="not-a-handle"),
    ],
)
def test_early_release_outside_the_middleware_is_a_no_op(target: object) -> None:
    assert release_session(target) is False


# -- early release: ASGI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("early", "sync"),
    [
        pytest.param(True, False, id="async-endpoint"),
        pytest.param(True, True, id="sync-endpoint-in-a-thread"),
        pytest.param(False, False, id="control-no-early-release"),
    ],
)
def test_asgi_early_release_lets_the_next_request_run(early: bool, sync: bool) -> None:
    async def main() -> None:
        released, leave = asyncio.Event(), threading.Event()
        loop = asyncio.get_running_loop()

        def work(request: StarletteRequest) -> None:
            if early:
                assert release_session(request)
            loop.call_soon_threadsafe(released.set)

        async def slow(request: StarletteRequest) -> PlainTextResponse:
            if sync:
                await asyncio.to_thread(work, request)  # as Starlette runs sync endpoints
            else:
                work(request)
            await asyncio.to_thread(leave.wait, WAIT)
            return PlainTextResponse("slow")

        async def fast(request: StarletteRequest) -> PlainTextResponse:
            return PlainTextResponse("fast")

        inner = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])
        middleware = ASGILock(inner, key="cookie:sid", backend="memory://", timeout=WAIT)
        gate = probe(middleware, asgi.Gate())
        first, second = asgi.Client(), asgi.Client()
        one = asgi.start(middleware, asgi.scope_for("/slow", cookie=f"sid={SID}"), first)
        await released.wait()
        two = asgi.start(middleware, asgi.scope_for("/fast", cookie=f"sid={SID}"), second)
        if early:
            await asyncio.wait_for(two, WAIT)  # done while /slow still works
            assert second.body == b"fast"
        else:
            await gate.wait_for(lambda: gate.queued == 1)  # control: waits for /slow
            assert second.sent == []
        leave.set()
        await one
        await two
        assert first.body == b"slow"
        assert len(middleware.core.queue) == 0

    asgi.run(main())


# -- nested layers ----------------------------------------------------------------------------


def _drop_held(app: Any) -> Any:
    """Hide the outer layer's mark from the inner one (the control: as before the fix)."""

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ.pop(HELD, None)
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wsgi_app


@pytest.mark.parametrize(
    ("hide", "code"),
    [
        pytest.param(False, 200, id="inner-passes-through"),
        pytest.param(True, 503, id="control-inner-waits-on-itself"),
    ],
)
def test_wsgi_a_nested_layer_on_the_same_session_passes_through(
    hide: bool, code: int, tmp_path: Path
) -> None:
    # file://: two layers of one process exclude each other there (memory's lease is free)
    backend = FileBackend(tmp_path / "locks")
    inner = WSGILock(wsgi.hello, backend=backend, timeout=0.05)
    between = _drop_held(inner) if hide else inner
    outer = WSGILock(between, backend=backend, timeout=0.05)
    response = wsgi.call(outer, wsgi.environ_for(cookie=issued(outer.core)), validate=False)
    assert response.code == code
    assert len(outer.core.queue) == len(inner.core.queue) == 0
    backend.close()


@pytest.mark.parametrize(
    ("hide", "code"),
    [
        pytest.param(False, 200, id="mounted-app-passes-through"),
        pytest.param(True, 503, id="control-waits-on-itself"),
    ],
)
def test_asgi_a_nested_layer_on_the_same_session_passes_through(
    hide: bool, code: int, tmp_path: Path
) -> None:
    backend = FileBackend(tmp_path / "locks")

    async def main() -> None:
        inner = ASGILock(asgi.hello, backend=backend, timeout=0.05)

        async def between(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if hide:
                scope = {k: v for k, v in scope.items() if k != HELD}
            await inner(scope, receive, send)

        outer = ASGILock(between, backend=backend, timeout=0.05)
        peer = await asgi.call(outer, asgi.scope_for(cookie=issued(outer.core)))
        assert peer.status == code
        assert len(outer.core.queue) == 0

    asgi.run(main())
    backend.close()


# -- the identity cookie never reaches the app -------------------------------------------------


def test_wsgi_app_never_sees_the_identity_cookie() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append((environ.get("HTTP_COOKIE"), environ.get("sessionlock.original_cookie")))
        return wsgi.hello(environ, start_response)

    middleware = WSGILock(app, backend="memory://")
    mine = issued(middleware.core)
    sent = f"a=1; {mine}; b=2"
    response = wsgi.call(middleware, wsgi.environ_for(cookie=sent))
    assert response.all("Set-Cookie") == []  # the identity was recognized: none issued
    alone = wsgi.call(middleware, wsgi.environ_for(cookie=mine))
    assert alone.all("Set-Cookie") == []
    assert seen == [("a=1; b=2", sent), (None, mine)]


def test_asgi_app_never_sees_the_identity_cookie() -> None:
    async def main() -> None:
        seen: list[list[bytes]] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append([v for k, v in scope["headers"] if k == b"cookie"])
            await asgi.hello(scope, receive, send)

        middleware = ASGILock(app, backend="memory://")
        cookie = f"a=1; {issued(middleware.core)}; b=2"
        peer = await asgi.call(middleware, asgi.scope_for(cookie=cookie))
        assert peer.headers("set-cookie") == []
        assert seen == [[b"a=1; b=2"]]

    asgi.run(main())


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["start", "", None, "END"])
def test_release_takes_head_or_end(release: Any) -> None:
    with pytest.raises(ConfigurationError, match="release"):
        WSGILock(wsgi.hello, backend="memory://", release=release)


def test_nothing_of_ours_in_the_environ_shows_a_credential_in_a_debug_page() -> None:
    """Debug pages print the environ (Django's filters HTTP_COOKIE, not our keys): the kept
    original header and the doors must not repr the cookie."""
    kept: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        kept.append(dict(environ))
        return wsgi.hello(environ, start_response)

    middleware = WSGILock(app, backend="memory://", cookie_session="session")
    secret = "super_secret_value"
    cookie = f"{issued(middleware.core)}; session={secret}"
    assert wsgi.call(middleware, wsgi.environ_for(cookie=cookie)).code == 200
    ours = {k: v for k, v in kept[0].items() if k.startswith("sessionlock.")}
    assert {"sessionlock.original_cookie", "sessionlock.handle"} <= set(ours)
    assert ours["sessionlock.original_cookie"] == cookie  # still the header, as a str
    for value in ours.values():
        assert secret not in repr(value)
        assert IDENTITY not in repr(value)
