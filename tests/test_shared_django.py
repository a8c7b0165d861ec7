"""Shared reads in Django: ``@sessionlock.django.shared`` on a view, and the ``shared``
setting; the side-by-side behaviour itself is Core's (tests/test_shared_reads.py).

In-process, on the project settings and database sessions that tests/test_stale_django.py
sets up (its module fixture is reused here).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from sessionlock.django import shared
from tests.test_stale_django import CSRF, DB_SESSIONS, LOCK, SESSION, database  # noqa: F401


def where(request: HttpRequest) -> HttpResponse:
    request.session["seen"] = True  # a session, so the next request carries its key
    return HttpResponse(str(bool(request.META.get("sessionlock.shared"))))


@shared
def report(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(bool(request.META.get("sessionlock.shared"))))


@shared
def report_that_writes(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse("wrote")


urlpatterns = [
    path("where", where),
    path("report", report),
    path("report-that-writes", report_that_writes),
]


def settings_for(**more: Any) -> Any:
    lock = {"backend": "memory://", "key": "cookie:sessionid", **more}
    return override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[LOCK, SESSION, CSRF],
        SESSION_ENGINE=DB_SESSIONS,
        SESSIONLOCK=lock,
    )


@pytest.mark.usefixtures("registry")
def test_a_marked_view_holds_its_session_shared_and_others_do_not() -> None:
    with settings_for():
        client = Client()
        client.get("/where")  # the session (no key yet: not serialized)
        assert client.get("/report").content == b"True"
        assert client.get("/where").content == b"False"


@pytest.mark.usefixtures("registry")
def test_the_shared_setting_names_methods_and_prefixes() -> None:
    with settings_for(shared=["GET"]):
        client = Client()
        client.get("/where")
        assert client.get("/where").content == b"True"
        assert client.post("/where").content == b"False"


@pytest.mark.usefixtures("registry")
def test_a_shared_view_that_modifies_the_session_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with settings_for():
        client = Client()
        client.get("/where")
        with caplog.at_level(logging.WARNING, logger="sessionlock"):
            client.get("/report-that-writes")
    assert any(
        "a shared request (GET '/report-that-writes')" in r.getMessage() for r in caplog.records
    )
