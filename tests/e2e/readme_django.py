"""Django settings, URLs and views of the README's Django snippets (database sessions).

    DJANGO_SETTINGS_MODULE=tests.e2e.readme_django SL_README_DB=/tmp/x/db.sqlite3 \\
        gunicorn -k gthread --threads 16 'tests.e2e.readme_apps:build()'

Sessions are Django's default engine (``django.contrib.sessions.backends.db``) on SQLite.
The database is a file (SL_README_DB), not ``:memory:``: Django opens one connection per
thread, and an in-memory SQLite database is private to its connection (a shared-cache one
answers "database table is locked" to concurrent writers instead of waiting), while the
servers here run 8 to 16 threads and up to 4 processes. ``python -m tests.e2e.readme_django
migrate`` creates the tables (WAL mode, so readers do not wait for the writer).

SL_README_DJANGO=block: the README's ``settings.py`` block is executed here, its ``...``
completed with ``django.contrib.sessions`` and its ``/var/lib`` directory moved under
SL_README_TMP; SL_README_MODE=control removes the lock middleware it lists.
``GET /state`` writes ``seen`` and answers ``{"n": n}``; ``POST /incr`` reads ``n``, works
SL_README_WORK seconds (default 0.02) and writes ``n + 1``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

SECRET_KEY = "readme-django-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.sessions"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = __name__
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SL_README_DB", ":memory:"),
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def _settings_block() -> None:
    from . import readme

    namespace: dict[str, Any] = {}
    tmp = os.environ.get("SL_README_TMP", "/nonexistent")
    readme.run(readme.localize(readme.find(readme.DJANGO_SETTINGS).source, tmp), namespace)
    globals()["INSTALLED_APPS"] = [
        "django.contrib.sessions" if app is Ellipsis else app for app in namespace["INSTALLED_APPS"]
    ]
    middleware = list(namespace["MIDDLEWARE"])
    if os.environ.get("SL_README_MODE") == "control":
        middleware.remove("sessionlock.django.SessionLockMiddleware")
    globals()["MIDDLEWARE"] = middleware
    globals()["SESSIONLOCK"] = namespace["SESSIONLOCK"]


if os.environ.get("SL_README_DJANGO") == "block":
    _settings_block()


def state(request: HttpRequest) -> JsonResponse:
    request.session["seen"] = True
    return JsonResponse({"n": request.session.get("n", 0)})


def incr(request: HttpRequest) -> JsonResponse:
    n = request.session.get("n", 0)
    time.sleep(float(os.environ.get("SL_README_WORK", "0.02")))
    request.session["n"] = n + 1
    return JsonResponse({"n": n + 1})


urlpatterns = [path("state", state), path("incr", incr)]


def migrate() -> None:
    """Create the session table in SL_README_DB, in WAL mode; run ``manage.py check``."""
    import sqlite3

    import django
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    django.setup()
    call_command("migrate", verbosity=0)
    call_command("check", fail_level="WARNING")
    connection = sqlite3.connect(os.environ["SL_README_DB"])
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


if __name__ == "__main__" and sys.argv[1:] == ["migrate"]:
    migrate()
