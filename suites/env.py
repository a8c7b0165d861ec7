"""The environment variables the runner hands to the suites' processes."""

from __future__ import annotations

import os

#: The backend URL of a wrapped run; unset in a plain run.
BACKEND = "SESSIONLOCK_SUITE_BACKEND"
#: The lock's ``timeout`` (seconds) in a wrapped run; unset: sessionlock's default.
LOCK_TIMEOUT = "SESSIONLOCK_SUITE_LOCK_TIMEOUT"
#: The lock's ``key`` in a wrapped run; unset: sessionlock's default (``identity``).
KEY = "SESSIONLOCK_SUITE_KEY"
#: Where the recorder writes the run's per-test outcomes (JSON).
RESULTS = "SESSIONLOCK_SUITE_RESULTS"
#: Per-test time limit (seconds) of the Django runner (pytest runs use pytest-timeout).
TEST_TIMEOUT = "SESSIONLOCK_SUITE_TEST_TIMEOUT"


def backend() -> str:
    """The wrapped run's backend URL; a wrapping plugin without one is a harness bug."""
    url = os.environ.get(BACKEND)
    if not url:
        raise RuntimeError(f"{BACKEND} is not set: the wrapping plugins need a backend URL")
    return url


def middleware_options() -> dict[str, object]:
    """The options every wrapped app gets besides ``cookie_session``."""
    options: dict[str, object] = {"backend": backend()}
    if os.environ.get(KEY):
        options["key"] = os.environ[KEY]
    timeout = os.environ.get(LOCK_TIMEOUT)
    if timeout:
        options["timeout"] = float(timeout)
    return options
