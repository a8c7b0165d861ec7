"""The Django matrix app: cache sessions (server-side, ``sessionid`` cookie), WSGI or ASGI.

    MATRIX_MODE=locked gunicorn -k gthread --threads 24 'tests.e2e.matrix.django_app:wsgi()'
    MATRIX_MODE=locked uvicorn --factory tests.e2e.matrix.django_app:asgi

Settings are configured in the factory (no settings module, no database: the sessions live
in the process's local-memory cache, one server process). Locked, the MIDDLEWARE is the
README's: ``sessionlock.django.SessionLockMiddleware`` (keyed by ``sessionid``) before
``SessionMiddleware``, ``SessionRulesMiddleware`` after it. The WSGI app has sync views;
the ASGI one async views, so requests of one session really overlap on the event loop
(Django runs sync views on one thread under ASGI).
"""

from __future__ import annotations

import json
from typing import Any

from .logic import ROOMS, SECRET, locked, run, run_async

urlpatterns: list[Any] = []


def _configure(asynchronous: bool) -> None:
    from django.conf import settings
    from django.urls import path

    lock, rules = (
        "sessionlock.django.SessionLockMiddleware",
        "sessionlock.django.SessionRulesMiddleware",
    )
    sessions = "django.contrib.sessions.middleware.SessionMiddleware"
    settings.configure(
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions"]
        + (["sessionlock.django.SessionLockConfig"] if locked() else []),
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        MIDDLEWARE=[lock, sessions, rules] if locked() else [sessions],
        SESSIONLOCK={"key": "cookie:sessionid", "rules": "tests.e2e.matrix.logic.RULES"},
    )
    urlpatterns[:] = [path("<str:op>", _async_view if asynchronous else _sync_view)]


def _reply(body: dict[str, Any]) -> Any:
    from django.http import HttpResponse

    return HttpResponse(json.dumps(body), content_type="application/json")


def _sync_view(request: Any, op: str) -> Any:
    if op == "meet":
        return _reply(ROOMS.meet(request.GET))
    return _reply(run(op, request.session, request.session.flush))


async def _async_view(request: Any, op: str) -> Any:
    if op == "meet":
        return _reply(await ROOMS.meet_async(request.GET))
    # The cache backend's load, save and flush do not touch the database: safe on the loop.
    return _reply(await run_async(op, request.session, request.session.flush))


def wsgi() -> Any:
    from django.core.wsgi import get_wsgi_application

    _configure(asynchronous=False)
    return get_wsgi_application()


def asgi() -> Any:
    from django.core.asgi import get_asgi_application

    _configure(asynchronous=True)
    return get_asgi_application()
