"""Serve an ASGI app wrapped in the middleware from ``uvicorn --factory``.

    SESSIONLOCK_APP=pkg.asgi:app SESSIONLOCK_KEY=cookie:sessionid \\
        uvicorn --factory sessionlock.uvicorn:app --workers 4

uvicorn calls a factory without arguments, so the options come from the environment:
``SESSIONLOCK_APP`` (required), ``SESSIONLOCK_BACKEND`` (a URL; default ``file://``, a
private directory shared by all workers of the host), ``SESSIONLOCK_KEY`` (a key spec),
``SESSIONLOCK_TIMEOUT`` (seconds), ``SESSIONLOCK_MAX_WAITERS``. Or write your own factory::

    def create_app():
        return sessionlock.uvicorn.wrap("pkg.asgi:app", backend="file:///var/lib/app/locks")

A per-process backend (``memory://``) under ``--workers`` > 1 (or ``WEB_CONCURRENCY``) is
refused with ConfigurationError at start, as under gunicorn.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ._types import ASGIApp
from .errors import ConfigurationError
from .gunicorn import load, wrap_app

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core import Options

__all__ = ["app", "wrap"]


def wrap(target: str, **options: Unpack[Options]) -> ASGIApp:
    """The ASGI app at ``target``, wrapped, checked against uvicorn's worker count."""
    wrapped: ASGIApp = wrap_app(load(target), asgi=True, workers=_workers(), **options)
    return wrapped


def app() -> ASGIApp:
    """The ``--factory`` entry point, configured by ``SESSIONLOCK_*`` variables."""
    env = os.environ
    target = env.get("SESSIONLOCK_APP")
    if not target:
        raise ConfigurationError("set SESSIONLOCK_APP to the app to wrap, e.g. 'pkg.asgi:app'")
    options: dict[str, Any] = {}
    if env.get("SESSIONLOCK_BACKEND"):
        options["backend"] = env["SESSIONLOCK_BACKEND"]
    if env.get("SESSIONLOCK_KEY"):
        options["key"] = env["SESSIONLOCK_KEY"]
    if env.get("SESSIONLOCK_TIMEOUT"):
        options["timeout"] = _number("SESSIONLOCK_TIMEOUT", float)
    if env.get("SESSIONLOCK_MAX_WAITERS"):
        options["max_waiters"] = _number("SESSIONLOCK_MAX_WAITERS", int)
    return wrap(target, **options)


def _number(name: str, kind: type[float] | type[int]) -> Any:
    try:
        return kind(os.environ[name])
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {os.environ[name]!r}") from None


def _workers() -> int:
    """uvicorn's worker count, from its command line (also in spawned workers) or env."""
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == "--workers" and index + 1 < len(argv):
            return _int(argv[index + 1])
        if arg.startswith("--workers="):
            return _int(arg.partition("=")[2])
    return _int(os.environ.get("WEB_CONCURRENCY", "1"))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1
