"""Which published suites run, at which version, and how each is started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Pinned to the versions installed in the project's venv: a suite only proves something about
#: the code it was written for. ``python -m suites`` refuses to run when they differ.
FLASK_VERSION = "3.1.3"
STARLETTE_VERSION = "1.10.0"
DJANGO_VERSION = "5.2.19"

#: Django's test apps that build requests through the test client, sessions and middleware;
#: about 25 s a run. Left out for the budget: admin_views (60 s) and the rest of auth_tests
#: (password hashing, 30 s).
DJANGO_LABELS = (
    "sessions_tests",
    "test_client",
    "test_client_regress",
    "middleware",
    "middleware_exceptions",
    "messages_tests",
    "csrf_tests",
    "requests_tests",
    "handlers",
    "asgi",
    "view_tests",
    "generic_views",
    "flatpages_tests",
    "redirects_tests",
    "signed_cookies_tests",
    "conditional_processing",
    "shortcuts",
    "file_uploads",
    "decorators",
    "auth_tests.test_views",
    "auth_tests.test_middleware",
    "auth_tests.test_remote_user",
    "auth_tests.test_decorators",
    "auth_tests.test_mixins",
    "auth_tests.test_signals",
    "auth_tests.test_login",
    "auth_tests.test_auth_backends",
)


@dataclass(frozen=True)
class Suite:
    """One upstream test suite: where it lives in its sdist and how to run it."""

    name: str
    package: str  # the distribution pip downloads
    version: str
    runner: Literal["pytest", "django"]
    workdir: str  # relative to the extracted sdist; tests run from here
    args: tuple[str, ...]  # pytest arguments, or runtests.py labels
    wrapper: str | None = None  # the pytest plugin that wraps every app (pytest runner)
    pythonpath: tuple[str, ...] = ()  # relative to the sdist: what upstream pip-installs
    key: str | None = None  # the lock's key in wrapped runs; None: sessionlock's default
    plain_of: str | None = None  # a variant compares with this suite's plain run

    @property
    def plain(self) -> str:
        """The name of the suite whose plain run this one's wrapped runs compare with."""
        return self.plain_of or self.name


SUITES: tuple[Suite, ...] = (
    Suite("flask", "flask", FLASK_VERSION, "pytest", ".", ("tests",), "suites.wrap_flask"),
    Suite(
        "flaskr",
        "flask",
        FLASK_VERSION,
        "pytest",
        "examples/tutorial",
        ("tests",),
        "suites.wrap_flask",
        pythonpath=("examples/tutorial",),
    ),
    # Upstream runs every async test on asyncio and on trio.
    Suite(
        "starlette",
        "starlette",
        STARLETTE_VERSION,
        "pytest",
        ".",
        ("tests",),
        "suites.wrap_starlette",
    ),
    # The default key (identity) serializes every request the test client sends ...
    Suite("django", "django", DJANGO_VERSION, "django", "tests", DJANGO_LABELS),
    # ... README's Django configuration only those carrying a session cookie.
    Suite(
        "django-sessionid",
        "django",
        DJANGO_VERSION,
        "django",
        "tests",
        DJANGO_LABELS,
        key="cookie:sessionid",
        plain_of="django",
    ),
)


def named(name: str) -> Suite:
    return next(suite for suite in SUITES if suite.name == name)


def by_name(names: list[str] | None) -> list[Suite]:
    """The suites asked for, in the order above; all of them when ``names`` is empty."""
    if not names:
        return list(SUITES)
    known = {suite.name: suite for suite in SUITES}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; known: {sorted(known)}")
    return [suite for suite in SUITES if suite.name in names]
