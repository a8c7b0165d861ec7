"""Django's test clients behave as without the middleware: ``Client`` and ``AsyncClient``.

The tests run in-process on the project of tests/django_project (its settings, configured
once per process), with ``sessionlock.django.SessionLockMiddleware`` before
``SessionMiddleware``; the control is the same MIDDLEWARE without the lock. Sessions live in
Django's cache engine (local memory), so no database is needed. The lock is built with a
short ``timeout``, so a request left waiting for its own session shows as a 503, not a hang.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

TIMEOUT = 2.0  # a request stuck behind its own session answers 503 after this, never hangs
LOCK = "sessionlock.django.SessionLockMiddleware"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
KEYS = [
    pytest.param("cookie:sessionid", id="key-sessionid"),
    pytest.param("identity", id="key-identity"),
]
Reply = tuple[int, str]  # status, body


# -- the views -------------------------------------------------------------------------------


def count(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


def login(request: HttpRequest, user: str) -> HttpResponse:
    request.session["user"] = user
    return HttpResponse(user)


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.session.get("user", "-"))


def theme(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("set")
    response.set_cookie("theme", "dark")
    return response


def cookies(request: HttpRequest) -> HttpResponse:
    return HttpResponse(",".join(sorted(request.COOKIES)))


def stream_sync(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield from (b"a", b"b", b"c")

    return StreamingHttpResponse(chunks())


def stream_async(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    return StreamingHttpResponse(chunks())


urlpatterns = [
    path("count", count),
    path("login/<str:user>", login),
    path("whoami", whoami),
    path("theme", theme),
    path("cookies", cookies),
    path("stream-sync", stream_sync),
    path("stream-async", stream_async),
]


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    """The test project's settings, once per process (Django cannot be configured twice)."""
    if not settings.configured:
        module = importlib.import_module("tests.django_project.settings")
        settings.configure(
            **{name: getattr(module, name) for name in dir(module) if name.isupper()}
        )
        django.setup()


def django_settings(locked: bool, key: str) -> Any:
    return override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[LOCK, SESSION] if locked else [SESSION],
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        SESSIONLOCK={"backend": "memory://", "key": key, "timeout": TIMEOUT},
    )


def reply(response: Any) -> Reply:
    return response.status_code, response.content.decode()


def ok(*texts: str) -> list[Reply]:
    return [(200, text) for text in texts]


def timed(response: Any) -> bool:
    """Whether the lock served the response (with key cookie:sessionid, only a request that
    carries a session is serialized: each check is made with one in the jar)."""
    return "sessionlock" in response.get("Server-Timing", "")


# -- the clients: one scenario, a sync and an async way to run it ------------------------------


class SyncClient:
    """Django's ``Client``, driven as a test drives it."""

    def __init__(self) -> None:
        self.client = Client()

    def visits(self, *paths: str) -> list[Reply]:
        return [reply(self.client.get(p)) for p in paths]

    def served(self) -> bool:
        assert "sessionid" in self.client.cookies
        return timed(self.client.get("/whoami"))

    def stream(self, during: str) -> tuple[Reply, bytes]:
        streamed = self.client.get("/stream-sync")  # not read, not closed
        happened = reply(self.client.get(during))
        body = b"".join(streamed.streaming_content)
        streamed.close()
        return happened, body


class AsyncDjangoClient(SyncClient):
    """Django's ``AsyncClient`` (the ASGI request path), each request awaited in turn."""

    def __init__(self) -> None:
        self.client = AsyncClient()

    def visits(self, *paths: str) -> list[Reply]:
        async def run() -> list[Reply]:
            return [reply(await self.client.get(p)) for p in paths]

        return asyncio.run(run())

    def served(self) -> bool:
        assert "sessionid" in self.client.cookies
        return timed(asyncio.run(self.client.get("/whoami")))

    def stream(self, during: str) -> tuple[Reply, bytes]:
        async def run() -> tuple[Reply, bytes]:
            streamed = await self.client.get("/stream-async")
            happened = reply(await self.client.get(during))
            body = b"".join([chunk async for chunk in streamed.streaming_content])
            streamed.close()
            return happened, body

        return asyncio.run(run())


CLIENTS = [
    pytest.param(SyncClient, id="Client"),
    pytest.param(AsyncDjangoClient, id="AsyncClient"),
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
def test_django_requests_in_a_row_see_only_their_own_cookies(
    make_client: type[SyncClient], key: str
) -> None:
    """The app sees its own cookies and Django's session cookie, never sessionlock's."""
    for locked in (True, False):
        with django_settings(locked, key):
            client = make_client()
            visits = client.visits("/theme", "/count", "/count", "/cookies")
            assert visits == ok("set", "1", "2", "sessionid,theme")
            assert client.served() is locked


def edited(client: SyncClient, other: SyncClient) -> str:
    session = client.client.session  # a test's way into its session (cache engine: no db)
    session["user"] = "bob"
    session.save()
    return "bob"


def deleted(client: SyncClient, other: SyncClient) -> str:
    del client.client.cookies["sessionid"]
    return "-"


def swapped(client: SyncClient, other: SyncClient) -> str:
    client.client.cookies["sessionid"] = other.client.cookies["sessionid"].value
    return "carol"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(edited, id="client-session"),
        pytest.param(deleted, id="deleted-cookie"),
        pytest.param(swapped, id="other-sessions-cookie"),
    ],
)
def test_django_session_edits_reach_the_app(
    edit: Callable[[SyncClient, SyncClient], str], make_client: type[SyncClient], key: str
) -> None:
    for locked in (True, False):
        with django_settings(locked, key):
            client, other = make_client(), make_client()
            assert other.visits("/login/carol") == ok("carol")
            assert client.visits("/whoami", "/login/alice", "/whoami") == ok("-", "alice", "alice")
            user = edit(client, other)
            assert client.visits("/whoami", "/count", "/whoami") == ok(user, "1", user)
            assert client.served() is locked


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("make_client", CLIENTS)
def test_django_stream_left_open_while_the_next_request_runs(
    make_client: type[SyncClient], key: str
) -> None:
    for locked in (True, False):
        with django_settings(locked, key):
            client = make_client()
            assert client.visits("/count") == ok("1")
            assert client.stream(during="/count") == ((200, "2"), b"abc")
            assert client.served() is locked
