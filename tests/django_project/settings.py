"""A tiny Django project for the sessionlock adapter tests, shaped by environment variables.

    SESSIONLOCK_TEST_DB=/tmp/x.sqlite3 DJANGO_SETTINGS_MODULE=tests.django_project.settings \
        python -m django check

SESSIONLOCK_TEST_ORDER picks the MIDDLEWARE list: "good" (lock, session, rules), "lock-after"
(lock after SessionMiddleware), "rules-before" (rules before it), "no-session" (rules only),
"no-lock" (session and rules: the control of the lock test).
"""

from __future__ import annotations

import os

SECRET_KEY = "sessionlock-tests-not-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.django_project.urls"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "sessionlock.django.SessionLockConfig",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SESSIONLOCK_TEST_DB", ":memory:"),
    }
}
SESSION_ENGINE = os.environ.get("SESSIONLOCK_TEST_ENGINE", "django.contrib.sessions.backends.db")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_LOCK = "sessionlock.django.SessionLockMiddleware"
_SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
_RULES = "sessionlock.django.SessionRulesMiddleware"
MIDDLEWARE = {
    "good": [_LOCK, _SESSION, _RULES],
    "lock-after": [_SESSION, _LOCK, _RULES],
    "rules-before": [_LOCK, _RULES, _SESSION],
    "no-session": [_RULES],
    "no-lock": [_SESSION, _RULES],
}[os.environ.get("SESSIONLOCK_TEST_ORDER", "good")]

SESSIONLOCK = {
    "backend": "memory://",
    "key": "cookie:sessionid",
    "rules": os.environ.get("SESSIONLOCK_TEST_RULES", "tests.e2e.exam_app.EXAM_RULES"),
}
if os.environ.get("SESSIONLOCK_TEST_BAD_SETTING"):
    SESSIONLOCK["bogus"] = 1
